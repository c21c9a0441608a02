//! The idempotent append every store shares: a message already stored under its
//! (conversation, sender, client ref) is answered as [`Appended::Existing`]; otherwise it is
//! inserted with the next seq, and when the unique (conversation, sender, client ref) index
//! refuses the insert, a concurrent append with the same client ref won the race and its
//! message is the answer.

use super::{Appended, NewMessage, StoreError};
use shared::event::Message;
use std::future::Future;

/// What a store brings to the shared append.
pub(crate) trait Insert: Sync {
    /// The backend's error, kept so the caller can tell why an insert failed.
    type Error: Send;

    /// Stores `new` with the conversation's next seq.
    fn insert(&self, new: &NewMessage) -> impl Future<Output = Result<Message, Self::Error>> + Send;

    /// The message stored under `new`'s (conversation, sender, client ref); `None` without a
    /// client ref.
    fn existing(&self, new: &NewMessage) -> impl Future<Output = Result<Option<Message>, StoreError>> + Send;

    /// Whether the insert was refused by a unique index.
    fn is_duplicate(e: &Self::Error) -> bool;
}

/// Why an append failed.
pub(crate) enum Failed<E> {
    /// The insert failed (and no message stored under the client ref explains it).
    Insert(E),
    /// The look-up of the stored message failed.
    Lookup(StoreError),
}

impl<E> Failed<E> {
    pub(crate) fn into_store(self, unavailable: impl FnOnce(E) -> StoreError) -> StoreError {
        match self {
            Failed::Insert(e) => unavailable(e),
            Failed::Lookup(e) => e,
        }
    }
}

/// Looks for the stored message first, then inserts: for a store whose insert does not skip
/// a stored client ref by itself.
pub(crate) async fn append<S: Insert>(store: &S, new: &NewMessage) -> Result<Appended, Failed<S::Error>> {
    if let Some(existing) = store.existing(new).await.map_err(Failed::Lookup)? {
        return Ok(Appended::Existing(existing));
    }
    insert_or_existing(store, new).await
}

/// Inserts; a retry (or a concurrent one that won the race) is answered with the stored
/// message.
pub(crate) async fn insert_or_existing<S: Insert>(store: &S, new: &NewMessage) -> Result<Appended, Failed<S::Error>> {
    match store.insert(new).await {
        Ok(message) => Ok(Appended::Created(message)),
        Err(e) if S::is_duplicate(&e) && new.client_ref.is_some() => match store.existing(new).await {
            Ok(Some(message)) => Ok(Appended::Existing(message)),
            Ok(None) => Err(Failed::Insert(e)),
            Err(lookup) => Err(Failed::Lookup(lookup)),
        },
        Err(e) => Err(Failed::Insert(e)),
    }
}
