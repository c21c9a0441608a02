//! Taking the next seq and inserting the message: in a transaction with the counter, or after
//! the newest stored message on a standalone server (see the module's documentation).

use super::{MessageDoc, MongoStore, as_i64, error_code, is_duplicate_key, unavailable};
use crate::store::idempotent::Insert;
use crate::store::{NewMessage, StoreError};
use chrono::Utc;
use mongodb::ClientSession;
use mongodb::bson::{self, doc};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::ReturnDocument;
use shared::event::Message;
use std::time::Duration;

/// How often one append raises a counter that lags the stored messages before it gives up.
/// One raise repairs it; more are only needed if another writer keeps storing messages past
/// the counter (a standalone node beside a replica set's, which is no supported setup).
const MAX_COUNTER_REPAIRS: u32 = 3;

/// How one transaction attempt of an append failed.
enum Attempt {
    /// It lost a race the server reported (a write conflict on the counter): run it again.
    Retry,
    /// The insert hit a unique index: the client ref is stored (a retry), or the counter gave
    /// a seq that is taken (it lags the messages).
    Duplicate(mongodb::error::Error),
    /// Give up.
    Fail(mongodb::error::Error),
}

impl Attempt {
    /// Network and server selection errors also carry the transient label, but retrying them
    /// would only delay the `unavailable` answer: only conflicts the server reported are retried.
    fn new(e: mongodb::error::Error) -> Self {
        if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && error_code(&e).is_some() {
            Self::Retry
        } else {
            Self::Fail(e)
        }
    }
}

/// A short random pause before retrying a lost race, growing with the attempts.
async fn backoff(attempt: u32) {
    let ceiling = u64::from(attempt.min(10)) * 4;
    tokio::time::sleep(Duration::from_millis(1 + rand::random_range(0..=ceiling))).await;
}

impl Insert for MongoStore {
    type Error = mongodb::error::Error;

    async fn insert(&self, new: &NewMessage) -> Result<Message, mongodb::error::Error> {
        let at = Utc::now().timestamp_millis();
        let mut message = MessageDoc {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: new.conversation_id.0.to_string(),
            seq: 0,
            sender_id: new.sender_id.0.to_string(),
            content: new.content.clone(),
            kind: new.kind.clone(),
            attachments: new.attachments.clone(),
            metadata: new.metadata.as_ref().map(|m| m.to_string()),
            client_ref: new.client_ref.clone(),
            sent_at: bson::DateTime::from_millis(at),
        };
        if self.transactions {
            let mut attempt: u32 = 0;
            let mut repairs: u32 = 0;
            loop {
                let mut session = self.db.client().start_session().await?;
                match self.insert_in_transaction(&mut session, &mut message).await {
                    Ok(()) => break,
                    Err(Attempt::Retry) => {
                        // Bounded by the caller's OPERATION_TIMEOUT.
                        attempt = attempt.saturating_add(1);
                        backoff(attempt).await;
                    }
                    Err(Attempt::Duplicate(e)) => {
                        // A stored client ref is the caller's to answer. Otherwise the seq was
                        // taken: left as it is, the counter would refuse every later append to
                        // the conversation.
                        if repairs == MAX_COUNTER_REPAIRS || self.find_existing(new).await?.is_some() {
                            return Err(e);
                        }
                        repairs += 1;
                        self.raise_counter_to_newest(&message.conversation_id).await?;
                    }
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
        } else {
            self.insert_after_newest(new, &mut message).await?;
        }
        Ok(new.stored(message.id, message.seq, at))
    }

    async fn existing(&self, new: &NewMessage) -> Result<Option<Message>, StoreError> {
        let found = self.find_existing(new).await.map_err(unavailable)?;
        Ok(found.map(MessageDoc::into_message))
    }

    fn is_duplicate(e: &mongodb::error::Error) -> bool {
        is_duplicate_key(e)
    }
}

impl MongoStore {
    async fn find_existing(&self, message: &NewMessage) -> Result<Option<MessageDoc>, mongodb::error::Error> {
        let Some(client_ref) = &message.client_ref else {
            return Ok(None);
        };
        self.messages
            .find_one(doc! {
                "conversation_id": message.conversation_id.as_str(),
                "sender_id": message.sender_id.as_str(),
                "client_ref": client_ref,
            })
            .await
    }

    /// Takes the next seq and inserts the message in one transaction; on any error the
    /// transaction is aborted, so the counter is not moved.
    async fn insert_in_transaction(
        &self,
        session: &mut ClientSession,
        message: &mut MessageDoc,
    ) -> Result<(), Attempt> {
        session.start_transaction().await.map_err(Attempt::Fail)?;
        let written = async {
            message.seq = match self.next_seq(&mut *session, &message.conversation_id).await {
                // Two first appends to a conversation raced to create its counter.
                Err(e) if is_duplicate_key(&e) => return Err(Attempt::Retry),
                seq => seq.map_err(Attempt::new)?,
            };
            self.messages
                .insert_one(&*message)
                .session(&mut *session)
                .await
                .map_err(|e| {
                    if is_duplicate_key(&e) {
                        Attempt::Duplicate(e)
                    } else {
                        Attempt::new(e)
                    }
                })?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            // The server aborts a transaction whose write failed; this only tells it so when
            // it did not (and is harmless when it did).
            let _ = session.abort_transaction().await;
            return Err(e);
        }
        let mut commits = 0;
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(()),
                // The commit's outcome is unknown but the server answered: committing again
                // is safe and tells which it was.
                Err(e)
                    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && error_code(&e).is_some()
                        && commits < 3 =>
                {
                    commits += 1;
                }
                Err(e) => return Err(Attempt::new(e)),
            }
        }
    }

    /// Raises the conversation's counter to its newest stored seq (never lowers it), outside
    /// any transaction.
    async fn raise_counter_to_newest(&self, conversation: &str) -> Result<(), mongodb::error::Error> {
        let newest = self.newest_seq(None, conversation).await?;
        tracing::warn!(
            conversation,
            newest,
            "the seq counter lagged the stored messages: raised"
        );
        match self
            .counters
            .update_one(doc! { "_id": conversation }, doc! { "$max": { "last_seq": newest } })
            .upsert(true)
            .await
        {
            // Another append created the counter meanwhile: the next attempt raises it.
            Err(e) if !is_duplicate_key(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Without transactions: inserts the message with the seq after the newest stored one,
    /// again after a fresh read when a concurrent append took that seq first.
    async fn insert_after_newest(
        &self,
        new: &NewMessage,
        message: &mut MessageDoc,
    ) -> Result<(), mongodb::error::Error> {
        let mut attempt: u32 = 0;
        loop {
            message.seq = self.newest_seq(None, &message.conversation_id).await? + 1;
            match self.messages.insert_one(&*message).await {
                Ok(_) => break,
                Err(e) if is_duplicate_key(&e) => {
                    // The same client ref stored meanwhile: the caller answers that message.
                    if self.find_existing(new).await?.is_some() {
                        return Err(e);
                    }
                    // Bounded by the caller's OPERATION_TIMEOUT.
                    attempt = attempt.saturating_add(1);
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
        let raised = self
            .counters
            .update_one(
                doc! { "_id": &message.conversation_id },
                doc! { "$max": { "last_seq": message.seq } },
            )
            .upsert(true)
            .await;
        if let Err(e) = raised
            && !is_duplicate_key(&e)
        {
            // The message is stored: only a later switch to transactions needs the counter,
            // and it repairs a missing or lagging one from the messages.
            tracing::warn!(conversation = %message.conversation_id, "cannot raise the seq counter: {}", e.kind);
        }
        Ok(())
    }

    /// In a transaction: increments the conversation's counter and answers its new value. A
    /// missing counter is created first at the conversation's newest stored seq, by an upsert
    /// that increments nothing (the increment itself is never an upsert, whose answer some
    /// servers lose when two race); two such creations conflict and the caller retries.
    async fn next_seq(&self, session: &mut ClientSession, conversation: &str) -> Result<i64, mongodb::error::Error> {
        let id = doc! { "_id": conversation };
        for _ in 0..2 {
            let counter = self
                .counters
                .find_one_and_update(id.clone(), doc! { "$inc": { "last_seq": 1_i64 } })
                .return_document(ReturnDocument::After)
                .session(&mut *session)
                .await?;
            if let Some(seq) = as_i64(counter.as_ref().and_then(|c| c.get("last_seq"))) {
                return Ok(seq);
            }
            let newest = self.newest_seq(Some(&mut *session), conversation).await?;
            self.counters
                .update_one(id.clone(), doc! { "$setOnInsert": { "last_seq": newest } })
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        Err(mongodb::error::Error::custom(format!(
            "no seq counter for conversation {conversation}"
        )))
    }
}
