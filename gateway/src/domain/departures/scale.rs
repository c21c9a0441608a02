//! The reaper at scale. CI runs it small (500 users in circles of 100, TTL 1 s);
//! `loadtest/presence_reap.sh` runs it at 10,000 users and prints the measurement.
//!
//! A fake node registers `USERS` connections in circles of `CIRCLE` users (each connection
//! also joined to its circle's conversation) and dies; a surviving node, a `Domain` over a
//! real Redis with a real `RedisBus`, reaps it. One watcher per circle on the survivor counts
//! the *user offline* it is sent. Measured: time from the dead node's expiry to the last
//! announcement, announcements per (user, watcher), and Redis's slowest command (SLOWLOG).

use super::super::{Backends, Domain, Rules};
use crate::bus::{Bus, BusError, Inlet, RedisBus};
use crate::config::AccessMode;
use crate::presence::{ConnectionEntry, Presence, RedisPresence};
use crate::redis::Redis;
use crate::redis::test_server::{TestRedis, run, slow_commands, watch_slow};
use crate::store::SqlStore;
use futures::{StreamExt, TryStreamExt};
use shared::{Delivery, Event, Topic, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// *User offline* per (watcher, user), and when the last one was published.
type Told = (HashMap<(UserId, UserId), usize>, Option<Instant>);

/// Counts *user offline* per (watcher, user), then publishes for real.
struct Counting {
    inner: Arc<RedisBus>,
    offline: Mutex<Told>,
}

#[async_trait::async_trait]
impl Bus for Counting {
    async fn publish(&self, delivery: Delivery) -> Result<(), BusError> {
        if let (Topic::User(to), Event::UserOffline(p)) = (&delivery.topic, &delivery.event) {
            let mut seen = self.offline.lock().unwrap_or_else(PoisonError::into_inner);
            *seen.0.entry((to.clone(), p.user_id.clone())).or_insert(0) += 1;
            seen.1 = Some(Instant::now());
        }
        self.inner.publish(delivery).await
    }
    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
        self.inner.subscribe(topic).await
    }
    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
        self.inner.unsubscribe(topic).await
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reap_scale() -> Result<(), Box<dyn std::error::Error>> {
    let users = env("PRESENCE_REAP_USERS", 500);
    let circle = env("PRESENCE_REAP_CIRCLE", 100).max(1);
    let ttl = Duration::from_millis(env("PRESENCE_REAP_TTL_MS", 1_000) as u64);
    let server = TestRedis::start().await?;
    let connect = || Redis::connect(&server.url, "scale", Duration::from_secs(5));
    let admin = connect().await?;
    run(&admin, "CONFIG", &["SET", "latency-monitor-threshold", "1"]).await?;

    let dead = RedisPresence::start(connect().await?, "dead".into(), ttl).await?;
    let setup = Instant::now();
    futures::stream::iter(0..users)
        .map(|i| {
            let dead = &dead;
            async move {
                let group = format!("circle-{}", i / circle);
                let conn: shared::ConnId = format!("dead:/:{i}").into();
                dead.connect(ConnectionEntry {
                    conn: conn.clone(),
                    user: format!("u{i}").into(),
                    circles: vec![group.clone()],
                })
                .await?;
                dead.join(&conn, &group.into(), chrono::Utc::now()).await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let registered = setup.elapsed();
    drop(dead);

    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let redis = connect().await?;
    let inner = RedisBus::start(
        redis.clone(),
        "alive".into(),
        Arc::new(Inlet::default()),
        &tasks,
        shutdown.clone(),
    )
    .await?;
    let bus = Arc::new(Counting {
        inner,
        offline: Mutex::new((HashMap::new(), None)),
    });
    let presence = Arc::new(RedisPresence::start(redis, "alive".into(), ttl).await?);
    let circles = users.div_ceil(circle);
    for c in 0..circles {
        presence
            .connect(ConnectionEntry {
                conn: format!("alive:/:w{c}").into(),
                user: format!("watcher{c}").into(),
                circles: vec![format!("circle-{c}")],
            })
            .await?;
    }
    let store = Arc::new(SqlStore::connect("sqlite::memory:").await?);
    store.migrate().await?;
    watch_slow(&admin, 1_000).await?;
    // The dead node's expiry, by Redis's clock: its last heartbeat was its start.
    let expired_at = Instant::now() + ttl.saturating_sub(registered);
    let _domain = Domain::new(
        Backends {
            bus: bus.clone(),
            presence: presence.clone(),
            conversations: store.clone(),
            messages: store,
        },
        Rules {
            access: AccessMode::Claims,
            offline_grace: Duration::from_millis(300),
            max_message_bytes: 8192,
            limits: crate::config::Limits::default(),
        },
        tasks,
        shutdown.clone(),
    );
    let deadline = Instant::now() + ttl * 2 + Duration::from_secs(120);
    loop {
        let told = bus.offline.lock().unwrap_or_else(PoisonError::into_inner).0.len();
        if told >= users || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(ttl).await;
    shutdown.cancel();
    let (counts, last) = {
        let seen = bus.offline.lock().unwrap_or_else(PoisonError::into_inner);
        (seen.0.clone(), seen.1)
    };
    let total: usize = counts.values().sum();
    let twice = counts.values().filter(|n| **n > 1).count();
    let slow = slow_commands(&admin).await?;
    let slowest = slow.iter().max_by_key(|(_, us)| *us);
    let fcalls = slow.iter().filter(|(c, _)| c.starts_with("FCALL")).count();
    let latency = run(&admin, "LATENCY", &["LATEST"]).await?;
    let all_offline = last.map(|l| l.saturating_duration_since(expired_at));
    println!(
        "presence_reap users={users} circle={circle} ttl_ms={} registered_in_ms={} \
         all_offline_after_expiry_ms={:?} users_announced={} announcements={total} duplicates={twice} \
         slowest_command={slowest:?} fcalls_over_1ms={fcalls} latency_latest={latency:?}",
        ttl.as_millis(),
        registered.as_millis(),
        all_offline.map(|d| d.as_millis()),
        counts.len(),
    );
    assert_eq!((counts.len(), twice), (users, 0));
    Ok(())
}
