//! The connection runtime both protocol adapters run on, protocol-neutral: each connection's
//! ordered, bounded inbox and the worker that runs it ([`inbox`]), the panic guard around a
//! command, and the drain that closes a node's connections in batches at shutdown. The
//! transports (WebSocket, long-polling, the bounded outbox with its slow-consumer close) are
//! the `engineio` crate's; the rules are the domain's.

pub mod inbox;

pub use inbox::{Inbox, Reading, Worker};

use crate::domain::DomainError;
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tracing::Instrument;

/// How many batches a drain closes a node's connections in.
const DRAIN_BATCHES: usize = 10;

/// Runs one command under `span`; a panic becomes [`DomainError::Internal`] (logged), so that
/// the client gets an error answer and the connection still leaves the hub and presence.
pub async fn guarded<T>(
    command: impl Future<Output = Result<T, DomainError>>,
    span: &tracing::Span,
) -> Result<T, DomainError> {
    AssertUnwindSafe(command)
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| {
            tracing::error!(parent: span, "command handler panicked");
            Err(DomainError::Internal)
        })
}

/// Closes `connections` in batches spread over `window`, so that clients reconnect elsewhere
/// by themselves and not all at once.
pub async fn drain<T>(what: &'static str, connections: &[T], window: Duration, close: impl Fn(&T)) {
    let per_batch = connections.len().div_ceil(DRAIN_BATCHES).max(1);
    let pause = window / DRAIN_BATCHES as u32;
    tracing::info!(
        connections = connections.len(),
        per_batch,
        what,
        "closing client connections"
    );
    for batch in connections.chunks(per_batch) {
        batch.iter().for_each(&close);
        tokio::time::sleep(pause).await;
    }
}
