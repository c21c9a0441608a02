//! Group commit for the node: the appends that arrive while one batch is being stored wait,
//! and the next batch stores them all, whatever their conversations, with one statement
//! (PostgreSQL) or transaction (SQLite) and one commit, rather than one per message.

use super::super::idempotent::Failed;
use super::{SqlStore, not_taking_writes, unavailable};
use crate::metrics::METRICS;
use crate::store::{Appended, NewMessage, StoreError};
use shared::{ConversationId, UserId};
use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// Most appends one batch stores (one statement on PostgreSQL, one transaction on SQLite).
const MAX_BATCH: usize = 256;

/// What makes an append a retry: (conversation, sender, client ref).
pub(super) type RefKey = (ConversationId, UserId, String);

/// An append waiting for the next batch.
struct Pending {
    new: NewMessage,
    done: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The node's queue of appends.
#[derive(Default)]
pub(super) struct Batches {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// A flusher task is serving the queue.
    flushing: bool,
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an append; true when no flusher serves the queue yet (the caller starts one).
    fn push(&self, pending: Pending) -> bool {
        let mut queue = self.lock();
        queue.waiting.push_back(pending);
        !std::mem::replace(&mut queue.flushing, true)
    }

    /// The next batch, oldest first; `None` (and the flusher's end) when nothing waits. A
    /// second append with the same (conversation, sender, client ref) as one in the batch waits
    /// for the next batch, where it finds the first stored.
    fn take(&self) -> Option<Vec<Pending>> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.flushing = false;
            return None;
        }
        let mut batch = Vec::with_capacity(queue.waiting.len().min(MAX_BATCH));
        let mut refs: HashSet<RefKey> = HashSet::new();
        let mut later = VecDeque::new();
        while let Some(pending) = queue.waiting.pop_front() {
            if batch.len() == MAX_BATCH {
                later.push_back(pending);
                later.append(&mut queue.waiting);
                break;
            }
            let new = &pending.new;
            let fresh = match &new.client_ref {
                Some(r) => refs.insert((new.conversation_id.clone(), new.sender_id.clone(), r.clone())),
                None => true,
            };
            if fresh {
                batch.push(pending);
            } else {
                later.push_back(pending);
            }
        }
        queue.waiting = later;
        Some(batch)
    }

    /// Every waiting append, taken out of the queue.
    fn drain(&self) -> VecDeque<Pending> {
        std::mem::take(&mut self.lock().waiting)
    }

    /// After a flusher died: its waiting appends are answered `unavailable` (their senders
    /// dropped), and the next append starts a new flusher.
    fn abandon(&self) {
        let mut queue = self.lock();
        queue.waiting.clear();
        queue.flushing = false;
    }
}

/// Frees the queue if its flusher ends without emptying it (a panic): otherwise every later
/// append would wait for a flusher that never comes.
struct FlusherGuard<'a> {
    batches: &'a Batches,
    finished: bool,
}

impl Drop for FlusherGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.batches.abandon();
        }
    }
}

/// Whether a text the batch statements read from JSON holds a NUL (attachments and metadata
/// travel as JSON text already, their NULs escaped).
fn has_nul(new: &NewMessage) -> bool {
    let text = |s: &str| s.contains('\0');
    text(&new.conversation_id.0)
        || text(&new.sender_id.0)
        || text(&new.content)
        || text(&new.kind)
        || new.client_ref.as_deref().is_some_and(text)
}

impl SqlStore {
    /// Queues an append for the next batch and waits for its answer.
    pub(super) async fn append_batched(&self, new: NewMessage) -> Result<Appended, StoreError> {
        let (done, answer) = oneshot::channel();
        if self.batches.push(Pending { new, done }) {
            // A task rather than this caller: the batch must not be dropped half-way with its
            // caller (a closed connection) while it also carries other senders' messages.
            tokio::spawn(self.clone().flush());
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the append's batch was abandoned".into()))?
    }

    /// Serves the queue until it is empty.
    async fn flush(self) {
        let mut guard = FlusherGuard {
            batches: &self.batches,
            finished: false,
        };
        while let Some(batch) = self.batches.take() {
            let news: Vec<&NewMessage> = batch.iter().map(|p| &p.new).collect();
            let started = std::time::Instant::now();
            let stored = self.append_batch(&news).await;
            let result = if stored.is_ok() { "ok" } else { "unavailable" };
            // Once per batch: a label lookup here is shared by the batch's messages.
            METRICS
                .store_duration
                .with_label_values(&["append_batch", result])
                .observe(started.elapsed().as_secs_f64());
            match stored {
                Ok(answers) => {
                    for (pending, answer) in batch.into_iter().zip(answers) {
                        // The sender may have gone; its message is stored all the same.
                        let _ = pending.done.send(answer);
                    }
                }
                // The appends queued behind this batch would each wait out the pool's (or
                // SQLite's busy) timeout in turn: they fail now, as the breaker in front of the
                // store would make them.
                Err(e) => {
                    for pending in batch.into_iter().chain(self.batches.drain()) {
                        let _ = pending.done.send(Err(StoreError::Unavailable(e.clone())));
                    }
                }
            }
        }
        guard.finished = true;
    }

    /// Stores a batch; one answer per message, in order. `Err` when the database did not take
    /// the batch statement because it cannot be reached or (SQLite) stayed locked by another
    /// process past the busy timeout: nothing of the batch is stored.
    pub(super) async fn append_batch(
        &self,
        batch: &[&NewMessage],
    ) -> Result<Vec<Result<Appended, StoreError>>, String> {
        METRICS.append_batches.inc();
        METRICS.appends_batched.inc_by(batch.len() as u64);
        METRICS.store_batch_size.observe(batch.len() as f64);
        // JSON cannot carry a NUL into the batch statements (PostgreSQL's jsonb refuses it,
        // SQLite's json_extract stops at it): such a message is stored (SQLite) or refused
        // (PostgreSQL) on its own, as any message was before batches.
        let (alone, together): (Vec<usize>, Vec<usize>) = (0..batch.len()).partition(|&i| has_nul(batch[i]));
        let mut answers: Vec<Option<Result<Appended, StoreError>>> = batch.iter().map(|_| None).collect();
        // The messages that take the one-message path, in the order they are stored.
        let mut one_by_one = Vec::new();
        if together.len() == 1 {
            one_by_one.push(together[0]);
        } else if !together.is_empty() {
            let news: Vec<&NewMessage> = together.iter().map(|&i| batch[i]).collect();
            match self.insert_batch(&news).await {
                Ok(stored) => {
                    for (&i, answer) in together.iter().zip(stored) {
                        match answer {
                            Some(answer) => answers[i] = Some(Ok(answer)),
                            None => one_by_one.push(i),
                        }
                    }
                }
                // Each message alone would wait as long again (up to 256 times): the batch
                // fails at once.
                Err(e) if not_taking_writes(&e) => return Err(e.to_string()),
                // The database answered, but refused the statement (a retry racing its
                // original past the batch's check, or a value it cannot take), or the batch
                // could not be encoded: nothing of it is stored, so take the messages one by
                // one, and only the culprit fails.
                Err(e @ (sqlx::Error::Database(_) | sqlx::Error::Encode(_))) => {
                    tracing::debug!(error = %e, "batch refused, storing its messages one by one");
                    one_by_one.extend_from_slice(&together);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        one_by_one.extend(alone);
        // Once the database stops taking writes, the rest of the batch is answered at once
        // rather than each waiting out the same timeout.
        let mut stopped: Option<String> = None;
        for i in one_by_one {
            answers[i] = Some(match &stopped {
                Some(e) => Err(StoreError::Unavailable(e.clone())),
                None => match self.append_one(batch[i]).await {
                    Ok(appended) => Ok(appended),
                    Err(Failed::Insert(e)) if not_taking_writes(&e) => {
                        stopped = Some(e.to_string());
                        Err(unavailable(e))
                    }
                    Err(failed) => Err(failed.into_store(unavailable)),
                },
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::Unavailable("batch answer missing".into()))))
            .collect())
    }
}
