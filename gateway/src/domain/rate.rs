//! The per-connection inbound rate limit: a token bucket (`--rate-limit`).

use crate::config::RateLimit;
use std::sync::{Mutex, PoisonError};
use tokio::time::Instant;

/// One connection's bucket.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            state: Mutex::new((f64::from(limit.burst), Instant::now())),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() * self.limit.per_second;
        *tokens = (*tokens + refill).min(f64::from(self.limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let r = RateLimiter::new(RateLimit {
            per_second: 2.0,
            burst: 3,
        });
        assert!((0..3).all(|_| r.allow()));
        assert!(!r.allow());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(r.allow());
        assert!(!r.allow());
    }
}
