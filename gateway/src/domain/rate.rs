//! Inbound rate limits, token buckets all: per connection (`--rate-limit`), per user across
//! their connections (`--user-rate-limit`, so that reconnecting does not refill anything),
//! and per user on the REST API (`--rest-rate-limit`).

use crate::config::RateLimit;
use shared::UserId;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// One bucket: tokens left, when they were counted.
#[derive(Debug)]
struct Bucket(Mutex<(f64, Instant)>);

impl Bucket {
    fn full(limit: RateLimit) -> Self {
        Self(Mutex::new((f64::from(limit.burst), Instant::now())))
    }

    fn take(&self, limit: RateLimit) -> bool {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() * limit.per_second;
        *tokens = (*tokens + refill).min(f64::from(limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it has refilled to the brim: forgetting it changes nothing.
    fn is_full(&self, limit: RateLimit) -> bool {
        let (tokens, last) = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tokens + last.elapsed().as_secs_f64() * limit.per_second >= f64::from(limit.burst)
    }
}

/// One connection's limit: its own bucket, and its user's, shared by all their connections.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    own: Bucket,
    user: Option<(RateLimit, Arc<Bucket>)>,
}

impl RateLimiter {
    /// A full bucket of the connection's own (no user bucket).
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            own: Bucket::full(limit),
            user: None,
        }
    }

    /// Takes one token from the connection's bucket, then from its user's; false when either
    /// is empty (an event refused by the first takes nothing from the second).
    pub fn allow(&self) -> bool {
        self.own.take(self.limit) && self.user.as_ref().is_none_or(|(limit, b)| b.take(*limit))
    }
}

/// Buckets by user, remembered while they are not full (a full one is as good as new), in
/// shards so that users on different threads do not wait for each other.
pub(super) struct UserBuckets {
    limit: RateLimit,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<UserId, Arc<Bucket>>,
    /// Past this many buckets, the full ones nobody holds are forgotten first.
    prune_at: usize,
}

const SHARDS: usize = 16;
const PRUNE_AT: usize = 1024;

impl UserBuckets {
    pub(super) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn bucket(&self, user: &UserId) -> Arc<Bucket> {
        let n = self.hasher.hash_one(user) as usize % SHARDS;
        let Some(shard) = self.shards.get(n) else {
            return Arc::new(Bucket::full(self.limit));
        };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = shard.buckets.get(user) {
            return b.clone();
        }
        if shard.buckets.len() >= shard.prune_at.max(PRUNE_AT) {
            let limit = self.limit;
            shard
                .buckets
                .retain(|_, b| Arc::strong_count(b) > 1 || !b.is_full(limit));
            shard.prune_at = shard.buckets.len() * 2;
        }
        let b = Arc::new(Bucket::full(self.limit));
        shard.buckets.insert(user.clone(), b.clone());
        b
    }

    /// Takes one token of `user`'s.
    pub(super) fn allow(&self, user: &UserId) -> bool {
        self.bucket(user).take(self.limit)
    }

    /// A connection's limiter: `own`, and `user`'s bucket when it has a user.
    pub(super) fn limiter(&self, own: RateLimit, user: Option<&UserId>) -> RateLimiter {
        RateLimiter {
            user: user.map(|u| (self.limit, self.bucket(u))),
            ..RateLimiter::new(own)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const fn rate(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let r = RateLimiter::new(rate(2.0, 3));
        assert!((0..3).all(|_| r.allow()));
        assert!(!r.allow());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(r.allow());
        assert!(!r.allow());
    }

    /// Issue 12, item 9: a new connection of the same user (a namespace reconnected) gets a
    /// fresh bucket of its own, but not a fresh user bucket.
    #[tokio::test(start_paused = true)]
    async fn the_user_bucket_outlives_a_reconnection() {
        let users = UserBuckets::new(rate(1.0, 8));
        let alice = UserId::from("alice");
        let first = users.limiter(rate(1.0, 5), Some(&alice));
        assert_eq!((0..10).filter(|_| first.allow()).count(), 5);
        drop(first);
        let second = users.limiter(rate(1.0, 5), Some(&alice));
        assert_eq!((0..10).filter(|_| second.allow()).count(), 3);
        // Another user is not affected.
        let bob = users.limiter(rate(1.0, 5), Some(&"bob".into()));
        assert_eq!((0..10).filter(|_| bob.allow()).count(), 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!((0..10).filter(|_| second.allow()).count(), 2);
    }

    /// Full buckets nobody holds are forgotten, so the map stays as large as its active users.
    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_forgotten() {
        let users = UserBuckets::new(rate(10.0, 2));
        for n in 0..(SHARDS * PRUNE_AT * 3) {
            assert!(users.allow(&UserId::from(format!("u{n}"))));
            if n % 1000 == 0 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        let kept: usize = users
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0))
            .sum();
        assert!(kept < SHARDS * PRUNE_AT * 2, "{kept} buckets kept");
    }
}
