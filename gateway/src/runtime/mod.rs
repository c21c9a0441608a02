//! The connection runtime both protocol adapters run on, protocol-neutral: each connection's
//! ordered, bounded inbox and the worker that runs it ([`inbox`]), the panic guard around a
//! command, and the drain that closes a node's connections in batches at shutdown. The
//! transports (WebSocket, long-polling, the bounded outbox with its slow-consumer close) are
//! the `engineio` crate's; the rules are the domain's.

pub mod inbox;

pub use inbox::{Inbox, Reading, Worker};

use crate::commands::Verb;
use crate::domain::DomainError;
use crate::metrics::{METRICS, Protocol};
use futures::FutureExt;
use prometheus::{Histogram, IntCounter};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How many batches a drain closes a node's connections in.
const DRAIN_BATCHES: usize = 10;

/// Runs one command under `span`; a panic becomes [`DomainError::Internal`] (logged), so that
/// the client gets an error answer and the connection still leaves the hub and presence.
pub async fn guarded<T>(
    command: impl Future<Output = Result<T, DomainError>>,
    span: &tracing::Span,
) -> Result<T, DomainError> {
    crate::telemetry::new_trace(span);
    AssertUnwindSafe(command)
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| {
            tracing::error!(parent: span, "command handler panicked");
            Err(DomainError::Internal)
        })
}

/// An event's children: its count per protocol and its handling time.
struct EventCells {
    count: [IntCounter; 2],
    seconds: Histogram,
}

/// One row per verb in [`Verb::ALL`] order, then `other` (names no verb maps, Socket.IO's
/// registration): resolved once,
/// so an event costs two atomic updates, not a label lookup.
static EVENTS: LazyLock<Vec<EventCells>> = LazyLock::new(|| {
    let labels = Verb::ALL.iter().map(|v| snake(&format!("{v:?}")));
    labels
        .chain(std::iter::once("other".to_owned()))
        .map(|event| EventCells {
            count: Protocol::ALL.map(|p| METRICS.inbound_events.with_label_values(&[p.label(), &event])),
            seconds: METRICS.event_duration.with_label_values(&[&event]),
        })
        .collect()
});

fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Creates every event's series at 0, so that the first events after start-up show in a
/// `rate()` (a series that appears with its first count has no increase).
pub fn register_metrics() {
    LazyLock::force(&EVENTS);
}

/// Counts one inbound event of `protocol` and times its handling since `started` (`verb`:
/// what the protocol's name table mapped it to). Failures are counted where each adapter
/// renders them.
pub fn record(protocol: Protocol, verb: Option<Verb>, started: Instant) {
    let row = verb
        .and_then(|v| Verb::ALL.iter().position(|x| *x == v))
        .unwrap_or(Verb::ALL.len());
    if let Some(cells) = EVENTS.get(row) {
        cells.count[protocol.index()].inc();
        cells.seconds.observe(started.elapsed().as_secs_f64());
    }
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
