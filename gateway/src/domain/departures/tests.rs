//! Departures in a cluster, against a real Redis: every node here is a `Domain` over a
//! `RedisPresence`, with a bus that records what it publishes.

use super::super::Domain;
use crate::bus::{Bus, BusError};
use crate::domain::tests::claims_domain;
use crate::presence::{ConnectionEntry, Presence, RedisPresence};
use crate::redis::Redis;
use crate::redis::test_server::{TestRedis, run, slow_commands, watch_slow};
use futures::{StreamExt, TryStreamExt};
use shared::{Delivery, Event, Topic, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Records every delivery published on it.
#[derive(Default)]
struct Recording(Mutex<Vec<Delivery>>);

#[async_trait::async_trait]
impl Bus for Recording {
    async fn publish(&self, delivery: Delivery) -> Result<(), BusError> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(delivery);
        Ok(())
    }
    async fn subscribe(&self, _: &Topic) -> Result<(), BusError> {
        Ok(())
    }
    async fn unsubscribe(&self, _: &Topic) -> Result<(), BusError> {
        Ok(())
    }
}

impl Recording {
    /// How many *user offline* of each user reached `contact`.
    fn offline_at(&self, contact: &str) -> HashMap<UserId, usize> {
        let mut out = HashMap::new();
        for d in self.0.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            if let (Topic::User(to), Event::UserOffline(p)) = (&d.topic, &d.event)
                && to.as_str() == contact
            {
                *out.entry(p.user_id.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

struct Node {
    presence: Arc<RedisPresence>,
    bus: Arc<Recording>,
    _domain: Domain,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn node(
    url: &str,
    prefix: &str,
    id: &str,
    ttl: Duration,
    grace: Duration,
) -> Result<Node, Box<dyn std::error::Error>> {
    let redis = Redis::connect(url, prefix, Duration::from_secs(5)).await?;
    let presence = Arc::new(RedisPresence::start(redis, id.into(), ttl).await?);
    let bus = Arc::new(Recording::default());
    let shutdown = CancellationToken::new();
    let domain = claims_domain(
        bus.clone(),
        presence.clone(),
        grace,
        TaskTracker::new(),
        shutdown.clone(),
    )
    .await?;
    Ok(Node {
        presence,
        bus,
        _domain: domain,
        shutdown,
    })
}

fn entry(conn: String, user: String) -> ConnectionEntry {
    ConnectionEntry {
        conn: conn.into(),
        user: user.into(),
        circles: vec!["team".into()],
    }
}

/// Waits until `done` holds or `within` passed; answers how long it took.
async fn until(within: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done().then(|| start.elapsed())
}

/// Finding 1: a dead node with many users in one large circle. Today's single reap call walks
/// the circle once per user (O(users × circle)), outlives the command timeout and loses every
/// announcement; reaping must instead go in calls that each stay under 50 ms, and announce
/// each user offline exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_dead_node_is_reaped_in_bounded_calls_announcing_each_user_once() -> TestResult {
    const USERS: usize = 1500;
    let server = TestRedis::start().await?;
    let admin = Redis::connect(&server.url, "big", Duration::from_secs(5)).await?;
    let ttl = Duration::from_millis(600);
    let dead = RedisPresence::start(
        Redis::connect(&server.url, "big", Duration::from_secs(5)).await?,
        "dead".into(),
        ttl,
    )
    .await?;
    futures::stream::iter(0..USERS)
        .map(|i| {
            let dead = &dead;
            async move {
                let conn = format!("dead:/:{i}");
                dead.connect(entry(conn.clone(), format!("u{i}"))).await?;
                dead.join(&conn.into(), &"room".into(), chrono::Utc::now()).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    drop(dead);
    watch_slow(&admin, 50_000).await?;
    let alive = node(&server.url, "big", "alive", ttl, Duration::from_millis(300)).await?;
    alive.presence.connect(entry("w1".into(), "watcher".into())).await?;

    let announced = until(ttl * 4 + Duration::from_secs(10), || {
        alive.bus.offline_at("watcher").len() == USERS
    })
    .await;
    assert!(
        announced.is_some(),
        "only {} of {USERS} users announced offline",
        alive.bus.offline_at("watcher").len()
    );
    tokio::time::sleep(ttl).await;
    let told = alive.bus.offline_at("watcher");
    assert_eq!(told.len(), USERS);
    assert!(told.values().all(|n| *n == 1), "a user was announced offline twice");
    assert_eq!(alive.presence.connections(&"u0".into()).await?, 0);
    let slow: Vec<_> = slow_commands(&admin)
        .await?
        .into_iter()
        .filter(|(cmd, _)| cmd.starts_with("FCALL"))
        .collect();
    assert!(
        slow.is_empty(),
        "presence calls blocked Redis for more than 50 ms: {slow:?}"
    );
    Ok(())
}

/// Finding 2: after Redis lost its data, a node with many connections registers them again
/// without ever letting its own expiry pass: no node reaps it (itself included), nobody is
/// announced offline, and every connection and join is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_data_registers_again_in_chunks_without_a_false_offline() -> TestResult {
    const CONNS: usize = 2000;
    let server = TestRedis::start().await?;
    let admin = Redis::connect(&server.url, "lost", Duration::from_secs(5)).await?;
    let ttl = Duration::from_millis(300);
    let grace = Duration::from_millis(100);
    let a = node(&server.url, "lost", "a", ttl, grace).await?;
    let b = node(&server.url, "lost", "b", ttl, grace).await?;
    b.presence.connect(entry("w1".into(), "watcher".into())).await?;
    futures::stream::iter(0..CONNS)
        .map(|i| {
            let a = &a;
            async move {
                let conn: shared::ConnId = format!("a:/:{i}").into();
                a.presence.connect(entry(conn.0.to_string(), format!("u{i}"))).await?;
                for room in ["r0", "r1", "r2"] {
                    a.presence.join(&conn, &room.into(), chrono::Utc::now()).await?;
                }
                Ok::<_, crate::presence::PresenceError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    tokio::time::sleep(ttl).await;
    run(&admin, "FLUSHALL", &[]).await?;
    tokio::time::sleep(ttl * 12).await;

    let false_offline = a.bus.offline_at("watcher").len() + b.bus.offline_at("watcher").len();
    assert_eq!(false_offline, 0, "live users were announced offline");
    let stats = b.presence.stats().await?;
    let row = stats.nodes.iter().find(|n| n.node_id.as_str() == "a");
    assert_eq!(row.map(|n| (n.connections, n.users, n.rooms)), Some((CONNS, CONNS, 3)));
    assert_eq!(b.presence.roster(&"r2".into()).await?.len(), CONNS);
    assert_eq!(b.presence.conversation_online(&"r0".into()).await?.len(), CONNS);
    Ok(())
}

/// Finding 6: a node restarted with the same id (a StatefulSet pod) does not adopt the
/// connections its crashed predecessor left: they are reaped and announced offline within
/// the TTL plus one heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_the_same_id_reaps_its_previous_incarnation() -> TestResult {
    let server = TestRedis::start().await?;
    let ttl = Duration::from_secs(1);
    let grace = Duration::from_millis(100);
    let b = node(&server.url, "again", "b", ttl, grace).await?;
    b.presence.connect(entry("w1".into(), "watcher".into())).await?;
    let crashed = RedisPresence::start(
        Redis::connect(&server.url, "again", Duration::from_secs(5)).await?,
        "n".into(),
        ttl,
    )
    .await?;
    crashed.connect(entry("n:/:old".into(), "zed".into())).await?;
    crashed
        .join(&"n:/:old".into(), &"room".into(), chrono::Utc::now())
        .await?;
    drop(crashed);
    let n = node(&server.url, "again", "n", ttl, grace).await?;
    let told = || b.bus.offline_at("watcher").len() + n.bus.offline_at("watcher").len();
    let took = until(ttl + ttl / 3 + Duration::from_secs(1), || told() == 1).await;
    assert!(
        took.is_some(),
        "the previous incarnation's user was never announced offline"
    );
    tokio::time::sleep(ttl).await;
    assert_eq!(told(), 1);
    assert_eq!(b.presence.connections(&"zed".into()).await?, 0);
    assert!(b.presence.roster(&"room".into()).await?.is_empty());
    Ok(())
}

/// Finding 7: a user whose node died during their offline grace is settled by a sweeper:
/// announced offline once, forgotten, and their next connection is a new arrival that does
/// not inherit the old status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_nobody_settles_is_swept_and_the_next_connection_starts_afresh() -> TestResult {
    let server = TestRedis::start().await?;
    let ttl = Duration::from_millis(600);
    let grace = Duration::from_millis(200);
    let b = node(&server.url, "linger", "b", ttl, grace).await?;
    b.presence.connect(entry("w1".into(), "watcher".into())).await?;
    let x = RedisPresence::start(
        Redis::connect(&server.url, "linger", Duration::from_secs(5)).await?,
        "x".into(),
        ttl,
    )
    .await?;
    x.set_offline_grace(grace);
    x.connect(entry("x:/:1".into(), "ivy".into())).await?;
    x.set_status(&"ivy".into(), shared::Status::Busy).await?;
    // Her last connection closes, and her node dies before its grace runs out.
    x.disconnect(&"x:/:1".into()).await?;
    drop(x);
    let took = until(grace + ttl * 2 + Duration::from_secs(2), || {
        b.bus.offline_at("watcher").len() == 1
    })
    .await;
    assert!(took.is_some(), "a departure nobody settled was never announced");
    tokio::time::sleep(ttl).await;
    assert_eq!(b.bus.offline_at("watcher").get(&UserId::from("ivy")), Some(&1));
    assert!(b.presence.connect(entry("b:/:2".into(), "ivy".into())).await?);
    assert_eq!(b.presence.user(&"ivy".into()).await?.status, shared::Status::Online);
    Ok(())
}
