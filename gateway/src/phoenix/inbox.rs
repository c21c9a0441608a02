//! A socket's inbox, and its worker run only while the inbox has work: an idle socket holds
//! no task besides its WebSocket's, and no worker future (whose state is sized for the
//! largest domain call).
//!
//! The reader (the WebSocket's callback) puts frames in; a worker run takes them out one
//! after the other, so they run in order, and ends when the inbox is empty, leaving the
//! worker's state (its channels) behind for the next run. A full inbox pauses reading from
//! the client — TCP backpressure, as a blocking reader gave — rather than closing it.

use super::SocketHandle;
use super::worker::{Input, Worker};
use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard, PoisonError};
use tracing::Instrument;

/// Frames a socket may have waiting for its worker; at this many, reading pauses.
const INBOX: usize = 64;
/// Inputs beyond which a removal no longer queues and closes the socket instead.
const HARD_LIMIT: usize = 4 * INBOX;

#[derive(Default)]
pub(super) struct Inbox {
    queue: VecDeque<Input>,
    /// The worker's state while no run holds it.
    worker: Option<Worker>,
    /// A worker run is under way.
    running: bool,
    /// Reading was paused for a full inbox.
    paused: bool,
    /// The socket closed: nothing more is queued.
    closed: bool,
}

impl SocketHandle {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands the worker its state, before the first input.
    pub(super) fn set_worker(&self, worker: Worker) {
        self.inbox().worker = Some(worker);
    }

    /// Queues a client frame, starting a worker run if none is under way; pauses reading
    /// when the inbox is full.
    pub(super) fn enqueue(self: &Arc<Self>, input: Input) {
        let mut inbox = self.inbox();
        if inbox.closed {
            return;
        }
        inbox.queue.push_back(input);
        if inbox.queue.len() >= INBOX && !inbox.paused {
            inbox.paused = true;
            self.socket.pause_reading();
        }
        self.start(inbox);
    }

    /// Queues a removal behind the frames already queued (a join in flight must not win over
    /// it); a socket whose inbox is far over its bound is closed instead.
    pub(super) fn enqueue_removal(self: &Arc<Self>, input: Input) -> bool {
        let mut inbox = self.inbox();
        if inbox.closed {
            return true;
        }
        if inbox.queue.len() >= HARD_LIMIT {
            return false;
        }
        inbox.queue.push_back(input);
        self.start(inbox);
        true
    }

    fn start(self: &Arc<Self>, mut inbox: MutexGuard<'_, Inbox>) {
        if inbox.running {
            return;
        }
        let Some(worker) = inbox.worker.take() else {
            return;
        };
        inbox.running = true;
        drop(inbox);
        let span = tracing::info_span!("phx_socket", conn = %self.local.id, user = %self.user);
        let domain = worker.domain().clone();
        domain.spawn(self.clone().work(worker).instrument(span));
    }

    /// One worker run: the inputs, in order, until the inbox is empty.
    async fn work(self: Arc<Self>, mut worker: Worker) {
        loop {
            let input = {
                let mut inbox = self.inbox();
                let next = inbox.queue.pop_front();
                if inbox.paused && inbox.queue.len() < INBOX / 2 {
                    inbox.paused = false;
                    self.socket.resume_reading();
                }
                match next {
                    Some(input) => input,
                    None => {
                        inbox.worker = Some(worker);
                        inbox.running = false;
                        drop(inbox);
                        self.idle.notify_one();
                        return;
                    }
                }
            };
            // The worker catches its own panics, so the run always gets here to hand it back.
            worker.input(input).await;
        }
    }

    /// After the socket closed: drops what is queued, waits for a run under way to finish its
    /// input, and returns the worker's state for [`Worker::finish`].
    pub(super) async fn stop(&self) -> Option<Worker> {
        loop {
            let idle = self.idle.notified();
            {
                let mut inbox = self.inbox();
                inbox.closed = true;
                inbox.queue.clear();
                if !inbox.running {
                    return inbox.worker.take();
                }
            }
            idle.await;
        }
    }
}
