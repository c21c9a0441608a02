//! The conformance suites (`store/conformance.rs`) on a replica set and a standalone
//! server, and the MongoDB store's own checks: indexes, failed writes, a lagging counter, a
//! server that goes away.

use super::test_server::TestMongo;
use super::*;
use crate::store::conformance::{TestResult, all_seqs, check_all, created, messages_conform, plain_message};
use mongodb::error::TRANSIENT_TRANSACTION_ERROR;
use std::sync::Arc;
use std::time::Instant;

/// The suite every store runs (store/conformance.rs), on a replica set and on a standalone server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms() -> TestResult {
    let server = TestMongo::start("conformance").await?;
    messages_conform(Arc::new(MongoStore::connect(&server.url).await?)).await?;
    let standalone = TestMongo::start_standalone("conformance").await?;
    messages_conform(Arc::new(MongoStore::connect(&standalone.url).await?)).await?;
    Ok(())
}

// The richer checks of `conformance` (more senders on a replica set, where appends conflict on
// the counter).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_store_contract_on_a_replica_set() -> TestResult {
    let server = TestMongo::start("contract").await?;
    let store = MongoStore::connect(&server.url).await?;
    assert!(store.transactions, "secantusd advertises a single-node replica set");
    check_all(Arc::new(store), 8, 50).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_store_contract_on_a_standalone_server() -> TestResult {
    let server = TestMongo::start_standalone("standalone").await?;
    let store = MongoStore::connect(&server.url).await?;
    assert!(!store.transactions, "a standalone server runs no transactions");
    check_all(Arc::new(store), 4, 25).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_creates_the_indexes_once_and_reads_the_database_from_the_url() -> TestResult {
    let server = TestMongo::start("named").await?;
    let store = MongoStore::connect(&server.url).await?;
    // Connecting again (a second node, a restart) finds the indexes there.
    let again = MongoStore::connect(&server.url).await?;
    created(store.append(plain_message("c", "alice", Some("x"))).await?)?;
    assert!(matches!(
        again.append(plain_message("c", "alice", Some("x"))).await?,
        Appended::Existing(_)
    ));
    assert_eq!(store.db.name(), "named");
    let names = store.messages.list_index_names().await?;
    for name in ["conversation_seq", "conversation_sender_client_ref"] {
        assert!(names.iter().any(|n| n == name), "index {name} in {names:?}");
    }
    // A lost counter starts again from the newest stored message (with transactions, as
    // here, and after a standalone period, whose appends do not need it).
    created(store.append(plain_message("c", "bob", None)).await?)?;
    store.counters.delete_many(doc! {}).await?;
    assert_eq!(created(store.append(plain_message("c", "bob", None)).await?)?.seq, 3);
    let default = MongoStore::connect(&server.url.replace("/named", "/")).await?;
    assert_eq!(default.db.name(), DEFAULT_DATABASE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_retried_and_a_failed_insert_leaves_no_gap() -> TestResult {
    let server = TestMongo::start("failpoints").await?;
    let store = MongoStore::connect(&server.url).await?;
    let fail = |command: &str, times: i32, code: i32, labels: Vec<&str>| {
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": times },
            "data": { "failCommands": [command], "errorCode": code, "errorLabels": labels },
        }
    };
    let admin = store.db.client().database("admin");
    assert_eq!(created(store.append(plain_message("c", "alice", None)).await?)?.seq, 1);
    // A write conflict on the counter (what concurrent appends meet on MongoDB): retried.
    admin
        .run_command(fail("findAndModify", 3, 112, vec![TRANSIENT_TRANSACTION_ERROR]))
        .await?;
    assert_eq!(
        created(store.append(plain_message("c", "alice", Some("t"))).await?)?.seq,
        2
    );
    // An insert that fails after the counter moved: the transaction takes the move back.
    admin.run_command(fail("insert", 1, 2, vec![])).await?;
    let failed = store.append(plain_message("c", "alice", Some("u"))).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    assert_eq!(
        created(store.append(plain_message("c", "alice", Some("u"))).await?)?.seq,
        3
    );
    // So does a failed commit.
    admin.run_command(fail("commitTransaction", 1, 2, vec![])).await?;
    let failed = store.append(plain_message("c", "bob", None)).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    assert_eq!(created(store.append(plain_message("c", "bob", None)).await?)?.seq, 4);
    assert_eq!(all_seqs(&store, "c").await?, vec![1, 2, 3, 4]);
    Ok(())
}

/// Issue 11: a counter behind the stored messages (an older backup restored, a standalone
/// period that could not raise it) gave seqs that were taken, and every later append to the
/// conversation failed. The append raises it to the newest stored seq and goes on, contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_behind_the_messages_is_raised_by_the_next_append() -> TestResult {
    let server = TestMongo::start("lagging").await?;
    let store = Arc::new(MongoStore::connect(&server.url).await?);
    assert!(store.transactions, "the counter is the seq authority with transactions");
    for _ in 0..3 {
        created(store.append(plain_message("c", "alice", None)).await?)?;
    }
    store
        .counters
        .update_one(doc! { "_id": "c" }, doc! { "$set": { "last_seq": 1_i64 } })
        .await?;
    assert_eq!(
        created(store.append(plain_message("c", "alice", Some("after-lag"))).await?)?.seq,
        4
    );
    assert!(matches!(
        store.append(plain_message("c", "alice", Some("after-lag"))).await?,
        Appended::Existing(ref m) if m.seq == 4
    ));
    // Behind again, then concurrent senders: one of them repairs it, all go on.
    store
        .counters
        .update_one(doc! { "_id": "c" }, doc! { "$set": { "last_seq": 0_i64 } })
        .await?;
    let mut tasks = Vec::new();
    for sender in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..5 {
                let client_ref = format!("{sender}-{n}");
                created(
                    store
                        .append(plain_message("c", &format!("s{sender}"), Some(&client_ref)))
                        .await
                        .map_err(|e| e.to_string())?,
                )?;
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(all_seqs(store.as_ref(), "c").await?, (1..=24).collect::<Vec<i64>>());
    let counter = store.counters.find_one(doc! { "_id": "c" }).await?;
    assert_eq!(as_i64(counter.as_ref().and_then(|c| c.get("last_seq"))), Some(24));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_is_unavailable_within_the_bounds() -> TestResult {
    let server = TestMongo::start("frozen").await?;
    let store = MongoStore::connect(&server.url).await?;
    let stored = created(store.append(plain_message("c", "alice", None)).await?)?;
    server.freeze(true)?;
    let started = Instant::now();
    let ping = store.ping().await;
    let ping_took = started.elapsed();
    let started = Instant::now();
    let read = store.message(&stored.id).await;
    let read_took = started.elapsed();
    server.freeze(false)?;
    assert!(matches!(ping, Err(StoreError::Unavailable(_))), "ping: {ping:?}");
    assert!(
        ping_took < PING_TIMEOUT + Duration::from_secs(2),
        "ping took {ping_took:?}"
    );
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "read: {read:?}");
    assert!(
        read_took < OPERATION_TIMEOUT + Duration::from_secs(2),
        "read took {read_took:?}"
    );
    // Thawed, it answers again.
    let started = Instant::now();
    while store.ping().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.message(&stored.id).await?, Some(stored));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_answers_unavailable_quickly_and_the_store_recovers() -> TestResult {
    let mut server = TestMongo::start("faults").await?;
    let store = MongoStore::connect(&server.url).await?;
    let stored = created(store.append(plain_message("c", "alice", Some("before"))).await?)?;
    server.kill();

    // Each call fails within the server selection timeout (3 s), with room for a slow machine.
    let quick = Duration::from_secs(6);
    let started = Instant::now();
    let ping = store.ping().await;
    assert!(matches!(ping, Err(StoreError::Unavailable(_))), "ping: {ping:?}");
    assert!(started.elapsed() < quick, "ping took {:?}", started.elapsed());
    let started = Instant::now();
    let append = store.append(plain_message("c", "alice", Some("during"))).await;
    assert!(matches!(append, Err(StoreError::Unavailable(_))), "append: {append:?}");
    assert!(started.elapsed() < quick, "append took {:?}", started.elapsed());
    let started = Instant::now();
    let query = HistoryQuery {
        before: None,
        after: None,
        limit: 10,
    };
    let history = store.history(&ConversationId("c".into()), query).await;
    assert!(
        matches!(history, Err(StoreError::Unavailable(_))),
        "history: {history:?}"
    );
    assert!(started.elapsed() < quick, "history took {:?}", started.elapsed());

    // Nothing listens: connecting fails, quickly.
    let started = Instant::now();
    let refused = MongoStore::connect(&server.url).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))));
    assert!(started.elapsed() < quick, "connect took {:?}", started.elapsed());

    // The server returns with its data: the same store answers again by itself.
    server.restart().await?;
    let started = Instant::now();
    while store.ping().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.message(&stored.id).await?, Some(stored.clone()));
    let Appended::Existing(retried) = store.append(plain_message("c", "alice", Some("before"))).await? else {
        return Err("a retry after the restart was stored again".into());
    };
    assert_eq!(retried.id, stored.id);
    let next = created(store.append(plain_message("c", "alice", Some("after"))).await?)?;
    assert_eq!(next.seq, 2, "no gap from the failed append");
    Ok(())
}
