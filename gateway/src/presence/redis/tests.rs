use super::*;
use crate::presence::tests::conformance;
use crate::presence::{CirclePage, Departure};
use crate::redis::test_server::{TestRedis, run};
use chrono::TimeZone;

/// Claims and reaps everything this node may reap, a small chunk at a time.
async fn reap_all(p: &RedisPresence) -> Result<Vec<Departure>, PresenceError> {
    let mut out = Vec::new();
    for claim in p.claim_dead().await? {
        loop {
            let chunk = p.reap(&claim, 2).await?;
            out.extend(chunk.departures);
            if chunk.done {
                break;
            }
        }
    }
    Ok(out)
}

/// The connected members of a circle, every page read.
async fn members(p: &RedisPresence, circle: &str) -> Result<Vec<UserId>, PresenceError> {
    let (mut out, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let CirclePage { members, next } = p.circle_page(circle, cursor.as_deref(), 1).await?;
        out.extend(members);
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn entry(conn: &str, user: &str) -> ConnectionEntry {
    ConnectionEntry {
        conn: conn.into(),
        user: user.into(),
        circles: vec!["team".into()],
    }
}

#[tokio::test]
async fn redis_presence_conforms() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestRedis::start().await?;
    let redis = Redis::connect(&server.url, "conformance", Duration::from_secs(5)).await?;
    let presence = RedisPresence::start(redis, "n1".into(), Duration::from_secs(30)).await?;
    conformance(&presence).await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_node_is_reaped_once_and_a_lost_node_registers_again() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestRedis::start().await?;
    let connect = || Redis::connect(&server.url, "reap", Duration::from_secs(5));
    let ttl = Duration::from_millis(300);
    let dead = RedisPresence::start(connect().await?, "dead".into(), ttl).await?;
    let a = RedisPresence::start(connect().await?, "a".into(), Duration::from_secs(30)).await?;
    let b = RedisPresence::start(connect().await?, "b".into(), Duration::from_secs(30)).await?;
    let joined_at = Utc.timestamp_millis_opt(1_700_000_000_000).single().ok_or("bad time")?;
    dead.connect(entry("d1", "dora")).await?;
    dead.join(&"d1".into(), &"room".into(), joined_at).await?;
    dead.join(&"d1".into(), &"side".into(), joined_at).await?;
    dead.set_status(&"dora".into(), Status::Busy).await?;
    a.connect(entry("a1", "amy")).await?;
    a.join(&"a1".into(), &"room".into(), joined_at).await?;
    assert_eq!(a.roster(&"room".into()).await?.len(), 2);
    assert_eq!(a.stats().await?.nodes.len(), 3);
    // `dead` stops heartbeating; after its TTL exactly one survivor reaps it.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let (from_a, from_b) = (reap_all(&a).await?, reap_all(&b).await?);
    let mut reaped: Vec<_> = from_a.into_iter().chain(from_b).collect();
    for d in &mut reaped {
        d.left.sort();
        d.joined.sort();
        if let Some(c) = d.offline_circles.as_mut() {
            c.sort();
        }
    }
    assert_eq!(
        reaped,
        vec![Departure {
            user: "dora".into(),
            left: vec!["room".into(), "side".into()],
            offline_circles: Some(vec!["room".into(), "side".into(), "team".into()]),
            conn: "d1".into(),
            joined: vec!["room".into(), "side".into()],
            status: Status::Busy,
        }]
    );
    // Her contacts, read from her circles: amy (in `team` and `room`), not dora herself.
    let mut contacts = Vec::new();
    for circle in ["room", "side", "team"] {
        contacts.extend(members(&a, circle).await?);
    }
    contacts.sort();
    contacts.dedup();
    assert_eq!(contacts, vec![UserId::from("amy")]);
    assert_eq!(a.connections(&"dora".into()).await?, 0);
    assert_eq!(a.conversation_online(&"room".into()).await?, vec![UserId::from("amy")]);
    assert_eq!(
        a.roster(&"room".into()).await?,
        vec![RosterEntry {
            conn_id: "a1".into(),
            user_id: "amy".into(),
            status: Status::Online,
            since: joined_at,
        }]
    );
    assert!(a.roster(&"side".into()).await?.is_empty());
    assert!(a.user_roster(&"dora".into()).await?.is_empty());
    assert_eq!(a.stats().await?.nodes.len(), 2);

    // A node whose entries vanished (a Redis restart) registers its connections again.
    let flush: Value = a.redis.client.flushall(false).await?;
    drop(flush);
    assert_eq!(a.connections(&"amy".into()).await?, 0);
    assert!(b.roster(&"room".into()).await?.is_empty());
    a.heartbeat().await?;
    assert_eq!(a.connections(&"amy".into()).await?, 1);
    assert_eq!(b.online_users(None, 10).await?.users, vec![UserId::from("amy")]);
    // Its roster entries come back with their original `since`.
    let amy = RosterEntry {
        conn_id: "a1".into(),
        user_id: "amy".into(),
        status: Status::Online,
        since: joined_at,
    };
    assert_eq!(b.roster(&"room".into()).await?, vec![amy.clone()]);
    assert_eq!(b.user_roster(&"amy".into()).await?, vec![("room".into(), amy)]);
    Ok(())
}

/// Finding 2: a heartbeat that timed out (Redis paused) is not a loss of data; only Redis
/// forgetting this process's registration makes the node register everything again.
#[tokio::test]
async fn a_timed_out_heartbeat_does_not_register_everything_again() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestRedis::start().await?;
    let connect = || Redis::connect(&server.url, "pause", Duration::from_secs(5));
    let admin = connect().await?;
    let a = RedisPresence::start(connect().await?, "a".into(), Duration::from_secs(30)).await?;
    a.connect(entry("a1", "amy")).await?;
    a.heartbeat().await?;
    assert_eq!(a.registrations(), 0);
    run(&admin, "CLIENT", &["PAUSE", "2500", "ALL"]).await?;
    assert!(
        a.heartbeat().await.is_err(),
        "a paused Redis answered within the timeout"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.heartbeat().await?;
    assert_eq!(a.registrations(), 0, "one failed heartbeat registered everything again");
    // A real loss does.
    run(&admin, "FLUSHALL", &[]).await?;
    a.heartbeat().await?;
    assert_eq!(a.registrations(), 1);
    assert_eq!(a.connections(&"amy".into()).await?, 1);
    Ok(())
}

/// Finding 4: a connect that timed out is still executed by Redis afterwards; the node undoes
/// it on its next heartbeat, so no ghost stays online.
#[tokio::test]
async fn a_timed_out_connect_leaves_no_ghost() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestRedis::start().await?;
    let connect = || Redis::connect(&server.url, "ghost", Duration::from_secs(5));
    let admin = connect().await?;
    let a = RedisPresence::start(connect().await?, "a".into(), Duration::from_secs(30)).await?;
    run(&admin, "CLIENT", &["PAUSE", "2500", "WRITE"]).await?;
    assert!(a.connect(entry("g1", "gus")).await.is_err());
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Redis ran the connect once the pause ended.
    assert_eq!(a.connections(&"gus".into()).await?, 1);
    a.heartbeat().await?;
    assert_eq!(a.connections(&"gus".into()).await?, 0);
    assert!(a.online_users(None, 10).await?.users.is_empty());
    Ok(())
}

/// Finding 3: a join in the window between Redis losing its data and the next heartbeat
/// registers the connection again from the node's own record instead of being dropped.
#[tokio::test]
async fn a_join_after_redis_lost_the_connection_registers_it_again() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestRedis::start().await?;
    let connect = || Redis::connect(&server.url, "window", Duration::from_secs(5));
    let admin = connect().await?;
    let a = RedisPresence::start(connect().await?, "a".into(), Duration::from_secs(30)).await?;
    a.connect(entry("a1", "amy")).await?;
    run(&admin, "FLUSHALL", &[]).await?;
    let change = a.join(&"a1".into(), &"room".into(), Utc::now()).await?;
    assert!(change.connection && change.user);
    assert_eq!(a.conversation_online(&"room".into()).await?, vec![UserId::from("amy")]);
    assert_eq!(a.connections(&"amy".into()).await?, 1);
    // A disconnect releases what the node's record holds, whatever Redis says.
    run(&admin, "FLUSHALL", &[]).await?;
    let gone = a.disconnect(&"a1".into()).await?;
    assert_eq!(gone.map(|d| d.joined), Some(vec![ConversationId::from("room")]));
    Ok(())
}
