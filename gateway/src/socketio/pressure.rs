//! How busy the Socket.IO fan-out has been lately, to choose between writing each frame
//! straight to its socket and queueing frames for batched writes.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The fan-out's load, measured over windows of this length: short, so that an overload is
/// answered within a few of them.
const PRESSURE_WINDOW: Duration = Duration::from_millis(20);
/// Share of a window spent fanning out above which frames are queued for each session's
/// task to write in batches, and below which they are written straight again.
const PRESSURE_HIGH: f64 = 0.7;
const PRESSURE_LOW: f64 = 0.4;

/// How busy the fan-out has been lately. Writing each frame straight to its socket is the
/// cheapest path and the fastest while the node keeps up; when it does not, frames wait in
/// the sessions' queues and each session's task writes them together (one writev for many),
/// so throughput grows with load instead of collapsing at one system call per delivery.
pub(super) struct Pressure {
    state: Mutex<PressureState>,
}

struct PressureState {
    since: tokio::time::Instant,
    busy: Duration,
    batching: bool,
}

impl Pressure {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(PressureState {
                since: tokio::time::Instant::now(),
                busy: Duration::ZERO,
                batching: false,
            }),
        }
    }

    /// Whether to batch now; closes the window when it is over.
    pub(super) fn batching(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = st.since.elapsed();
        if elapsed >= PRESSURE_WINDOW {
            let share = st.busy.as_secs_f64() / elapsed.as_secs_f64();
            let was = st.batching;
            st.batching = if was {
                share > PRESSURE_LOW
            } else {
                share > PRESSURE_HIGH
            };
            if st.batching != was {
                tracing::debug!(share, batching = st.batching, "fan-out pressure changed");
            }
            st.since = tokio::time::Instant::now();
            st.busy = Duration::ZERO;
        }
        st.batching
    }

    pub(super) fn record(&self, busy: Duration) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).busy += busy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pressure_batches_above_high_and_stops_below_low() {
        let p = Pressure::new();
        assert!(!p.batching(), "an idle node writes straight");
        let share = |f: f64| PRESSURE_WINDOW.mul_f64(f);
        // 90 % of a window spent fanning out: above HIGH.
        p.record(share(0.9));
        tokio::time::advance(PRESSURE_WINDOW).await;
        assert!(p.batching());
        // Between LOW and HIGH: batching holds (hysteresis).
        p.record(share((PRESSURE_LOW + PRESSURE_HIGH) / 2.0));
        tokio::time::advance(PRESSURE_WINDOW).await;
        assert!(p.batching());
        // Below LOW: straight writes again.
        p.record(share(PRESSURE_LOW / 2.0));
        tokio::time::advance(PRESSURE_WINDOW).await;
        assert!(!p.batching());
        // A window still open keeps the decision.
        p.record(share(0.95));
        tokio::time::advance(PRESSURE_WINDOW / 2).await;
        assert!(!p.batching());
    }
}
