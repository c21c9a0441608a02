//! The conformance suites (`store/conformance.rs`) on SQLite (file and memory) and
//! PostgreSQL, and the SQL store's own: group commit, and a busy SQLite file.

use super::*;
use crate::store::conformance::{TestResult, check_all, conversations_conform, messages_conform, new_message};
use crate::store::{Appended, HistoryQuery, MessageStore, NewMessage};
use shared::ConversationId;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

async fn conform(url: &str) -> TestResult {
    let store = SqlStore::connect(url).await?;
    store.migrate().await?;
    // Migrating twice is a no-op.
    store.migrate().await?;
    conversations_conform(&store).await?;
    messages_conform(Arc::new(store.clone())).await?;
    // An in-memory database cannot be shared: there, the second "node" is the same store.
    let other = if url.contains(":memory:") {
        store.clone()
    } else {
        SqlStore::connect(url).await?
    };
    batches_conform(&store, &other).await?;
    // The checks use conversations of their own, so the same database serves.
    check_all(Arc::new(store), 8, 50).await
}

fn seqs_of(answers: &[Result<Appended, StoreError>]) -> Vec<Option<(bool, i64)>> {
    answers
        .iter()
        .map(|a| {
            a.as_ref()
                .ok()
                .map(|a| (matches!(a, Appended::Created(_)), a.message().seq))
        })
        .collect()
}

/// Group commit, on two stores sharing one database (two nodes): batches built by hand
/// (two conversations interleaved, retries of stored messages, a duplicate inside the
/// batch, conversations without a row), then bursts of concurrent senders in three
/// conversations whose every message is sent twice at once, on both nodes. Seqs stay
/// 1..=N per conversation with no gap, and every retry answers the first message.
async fn batches_conform(a: &SqlStore, b: &SqlStore) -> Result<(), StoreError> {
    let m = |sender: &str, client_ref: Option<&str>| new_message("batched", sender, "hi", client_ref);
    let o = |sender: &str, client_ref: Option<&str>| new_message("other", sender, "hi", client_ref);
    // The first batch also creates both conversations' rows.
    let (m1, m2, m3) = (m("u1", Some("r1")), m("u2", Some("r1")), m("u1", None));
    let (o1, o2) = (o("u1", Some("r1")), o("u2", None));
    let answers = a
        .append_batch(&[&m1, &o1, &m2, &m3, &o2])
        .await
        .map_err(StoreError::Unavailable)?;
    assert_eq!(
        seqs_of(&answers),
        vec![
            Some((true, 1)),
            Some((true, 1)),
            Some((true, 2)),
            Some((true, 3)),
            Some((true, 2))
        ]
    );
    // Retries of stored messages are skipped; the fresh ones get the next seqs.
    let (m4, m5, o3) = (m("u3", Some("r1")), m("u1", None), o("u3", Some("r9")));
    let answers = b
        .append_batch(&[&m1, &m4, &o1, &m2, &o3, &m5])
        .await
        .map_err(StoreError::Unavailable)?;
    assert_eq!(
        seqs_of(&answers),
        vec![
            Some((false, 1)),
            Some((true, 4)),
            Some((false, 1)),
            Some((false, 2)),
            Some((true, 3)),
            Some((true, 5))
        ]
    );
    // Only retries: nothing stored.
    let answers = a
        .append_batch(&[&m2, &o3, &m4])
        .await
        .map_err(StoreError::Unavailable)?;
    assert_eq!(
        seqs_of(&answers),
        vec![Some((false, 2)), Some((false, 3)), Some((false, 4))]
    );
    // The same message twice in one batch (`take` keeps them apart; the fallback copes).
    let m6 = m("u4", Some("r1"));
    let answers = a
        .append_batch(&[&m6, &o2, &m6])
        .await
        .map_err(StoreError::Unavailable)?;
    assert_eq!(
        seqs_of(&answers),
        vec![Some((true, 6)), Some((true, 4)), Some((false, 6))]
    );

    // What a batch stores is what it answers, odd text included; a NUL (which JSON cannot
    // carry to the batch statements) is stored alone after the batch on SQLite and refused
    // alone on PostgreSQL, while the rest of its batch is stored.
    let mut odd = m("u5", Some("odd \"ref\" \\ ☃"));
    odd.content = "quotes \" and \\ backslashes, emoji 😀, new\nline, \u{2028}, tab\t".into();
    odd.kind = "image".into();
    odd.attachments = vec!["https://example.com/a?b=\"c\"".into(), "https://example.com/é".into()];
    odd.metadata = Some(serde_json::json!({ "nested": { "n": 1.5, "s": "\u{0}x" }, "list": [1, null] }));
    let mut nul = o("u5", Some("nul"));
    nul.content = "before\0after".into();
    let plain = o("u5", None);
    let answers = a
        .append_batch(&[&odd, &nul, &plain])
        .await
        .map_err(StoreError::Unavailable)?;
    let [
        Ok(Appended::Created(odd_stored)),
        nul_answer,
        Ok(Appended::Created(plain_stored)),
    ] = &answers[..]
    else {
        panic!("unexpected answers {answers:?}");
    };
    assert_eq!(
        (odd_stored.content.as_str(), odd_stored.seq, plain_stored.seq),
        (odd.content.as_str(), 7, 5)
    );
    assert_eq!(b.message(&odd_stored.id).await?.as_ref(), Some(odd_stored));
    assert_eq!(b.message(&plain_stored.id).await?.as_ref(), Some(plain_stored));
    match nul_answer {
        Ok(Appended::Created(m)) if !a.postgres => {
            assert_eq!((m.content.as_str(), m.seq), ("before\0after", 6));
            assert_eq!(b.message(&m.id).await?.as_ref(), Some(m));
        }
        Err(StoreError::Unavailable(_)) if a.postgres => {}
        other => panic!("NUL message answered {other:?}"),
    }

    let mut tasks = Vec::new();
    for sender in 0..12 {
        for store in [a.clone(), b.clone()] {
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..10 {
                    let client_ref = format!("r{n}");
                    let conversation = format!("burst{}", sender % 3);
                    let new = new_message(&conversation, &format!("s{sender}"), "x", Some(&client_ref));
                    let (first, second) = tokio::join!(store.append(new.clone()), store.append(new));
                    answers.push((n, first?));
                    answers.push((n, second?));
                }
                Ok::<_, StoreError>((sender, answers))
            }));
        }
    }
    let mut by_ref: HashMap<(i32, i32), Vec<Appended>> = HashMap::new();
    for task in tasks {
        let (sender, answers) = task.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
        for (n, answer) in answers {
            by_ref.entry((sender, n)).or_default().push(answer);
        }
    }
    let mut seqs: HashMap<i32, Vec<i64>> = HashMap::new();
    for ((sender, _), answers) in &by_ref {
        let created = answers.iter().filter(|a| matches!(a, Appended::Created(_))).count();
        let ids: HashSet<&str> = answers.iter().map(|a| a.message().id.as_str()).collect();
        assert_eq!((answers.len(), created, ids.len()), (4, 1, 1));
        seqs.entry(sender % 3).or_default().push(answers[0].message().seq);
    }
    for (c, mut seqs) in seqs {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=40).collect::<Vec<i64>>());
        let conversation = ConversationId::from(format!("burst{c}"));
        let page = a
            .history(
                &conversation,
                HistoryQuery {
                    before: None,
                    after: None,
                    limit: 200,
                },
            )
            .await?;
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<i64>>()
        );
    }

    // Batches of both nodes spanning the same conversations, met in opposite orders: the
    // row locks are taken in id order, so they queue instead of deadlocking.
    let mut tasks = Vec::new();
    for sender in 0..16 {
        for (node, store) in [a.clone(), b.clone()].into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                for n in 0..14 {
                    let c = if node == 0 {
                        (sender + n) % 7
                    } else {
                        6 - (sender + n) % 7
                    };
                    store
                        .append(new_message(&format!("ring{c}"), &format!("s{sender}"), "x", None))
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
    }
    for task in tasks {
        task.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
    }
    let mut total = 0;
    for c in 0..7 {
        let page = a
            .history(
                &ConversationId::from(format!("ring{c}")),
                HistoryQuery {
                    before: None,
                    after: None,
                    limit: 200,
                },
            )
            .await?;
        let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<i64>>());
        total += seqs.len();
    }
    assert_eq!(total, 16 * 2 * 14);
    Ok(())
}

#[tokio::test]
async fn sqlite_file_conforms() -> TestResult {
    let dir = std::env::temp_dir().join(format!("sb-store-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    conform(&format!("sqlite://{}", dir.join("conformance.db").display())).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn sqlite_memory_conforms() -> TestResult {
    conform("sqlite::memory:").await
}

/// Against the PostgreSQL of `SWITCHBOARD_TEST_POSTGRES` (default: the machine's, trust
/// auth), in a fresh database created and dropped by the test.
#[tokio::test]
async fn postgres_conforms() -> TestResult {
    let server =
        std::env::var("SWITCHBOARD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = SqlStore::connect(&format!("{server}/postgres")).await?;
    let name = format!("sb_conformance_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin.pool)
        .await?;
    let result = conform(&format!("{server}/{name}")).await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin.pool)
        .await?;
    result
}

/// Issue 11: another process holds a SQLite file's write lock past the busy timeout. A batch
/// waits it out once and fails whole, `unavailable`, and so do the messages that take the
/// one-message path, rather than each of them waiting it out again in turn.
#[tokio::test]
async fn a_busy_sqlite_file_fails_a_batch_after_one_wait() -> TestResult {
    let dir = std::env::temp_dir().join(format!("sb-busy-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("busy.db").display());
    let busy = Duration::from_millis(500);
    let node = SqlStore::open(&url, busy).await?;
    node.migrate().await?;
    let other_process = SqlStore::open(&url, busy).await?;
    // The conversations' rows exist, so the batch statement takes every message.
    for c in ["b0", "b1"] {
        node.append(new_message(c, "alice", "first", None)).await?;
    }
    let batch: Vec<NewMessage> = (0..16)
        .map(|n| new_message(&format!("b{}", n % 2), "alice", "x", Some(&format!("r{n}"))))
        .collect();
    let batch: Vec<&NewMessage> = batch.iter().collect();
    let mut nuls: Vec<NewMessage> = (0..6)
        .map(|n| new_message("b0", "bob", "x", Some(&format!("n{n}"))))
        .collect();
    for new in &mut nuls {
        new.content = "before\0after".into();
    }
    let nuls: Vec<&NewMessage> = nuls.iter().collect();

    let mut lock = other_process.pool.begin().await?;
    sqlx::query("UPDATE conversations SET title = 'locked' WHERE id = 'b0'")
        .execute(&mut *lock)
        .await?;
    let started = Instant::now();
    let refused = node.append_batch(&batch).await;
    let batch_took = started.elapsed();
    // Messages with a NUL take the one-message path, one after the other.
    let started = Instant::now();
    let alone = node.append_batch(&nuls).await;
    let alone_took = started.elapsed();
    lock.rollback().await?;

    assert!(refused.is_err(), "a busy batch fails whole: {refused:?}");
    let alone = alone.map_err(StoreError::Unavailable)?;
    assert!(
        alone.iter().all(|a| matches!(a, Err(StoreError::Unavailable(_)))),
        "{alone:?}"
    );
    // Before the bound: one wait for the batch statement, then one per message (17 and 6).
    assert!(batch_took < busy * 3, "the busy batch took {batch_took:?}");
    assert!(alone_took < busy * 3, "the busy one-message path took {alone_took:?}");

    // Nothing of it was stored: with the lock gone, the same batch stores every message.
    let answers = node.append_batch(&batch).await.map_err(StoreError::Unavailable)?;
    let mut seqs = seqs_of(&answers);
    seqs.sort_unstable();
    let expected: Vec<_> = (2..=9).flat_map(|seq| [Some((true, seq)); 2]).collect();
    assert_eq!(seqs, expected);
    let answers = node.append_batch(&nuls).await.map_err(StoreError::Unavailable)?;
    assert_eq!(
        seqs_of(&answers),
        (10..=15).map(|seq| Some((true, seq))).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
