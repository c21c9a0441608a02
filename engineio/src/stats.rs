//! Counters of every engine in the process, for the embedding server's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

static OUTBOUND_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Packets refused because a session's outbound queue was full, since the process started:
/// one per slow consumer, which is closed at once.
pub fn outbound_dropped() -> u64 {
    OUTBOUND_DROPPED.load(Ordering::Relaxed)
}

pub(crate) fn count_outbound_dropped() {
    OUTBOUND_DROPPED.fetch_add(1, Ordering::Relaxed);
}
