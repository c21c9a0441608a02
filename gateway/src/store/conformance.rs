//! The store conformance suites, run against every implementation: `conversations_conform`
//! on SQLite (file and memory) and PostgreSQL; `messages_conform` and `check_all` on those
//! and on MongoDB (a replica set and a standalone server). A store that passes them keeps the
//! contract written on `store/mod.rs`.

use super::*;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub(crate) fn new_message(conversation: &str, sender: &str, content: &str, client_ref: Option<&str>) -> NewMessage {
    NewMessage {
        conversation_id: conversation.into(),
        sender_id: sender.into(),
        content: content.into(),
        kind: "text".into(),
        attachments: vec!["https://example.com/a.png".into()],
        client_ref: client_ref.map(str::to_owned),
        metadata: None,
    }
}

/// Runs the message store contract against `store` (which must be empty).
pub(crate) async fn messages_conform(store: Arc<dyn MessageStore>) -> Result<(), StoreError> {
    store.ping().await?;
    // Concurrent senders: seqs 1..=N, no gap, no duplicate.
    let mut tasks = Vec::new();
    for sender in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..25 {
                let m = new_message("busy", &format!("u{sender}"), &format!("m{n}"), None);
                seqs.push(store.append(m).await?.message().seq);
            }
            Ok::<_, StoreError>(seqs)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| StoreError::Unavailable(e.to_string()))??);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());

    // Idempotency, also when retries race each other.
    let first = store.append(new_message("c", "alice", "hello", Some("t1"))).await?;
    let Appended::Created(first) = first else {
        panic!("first append must create")
    };
    assert_eq!(first.seq, 1);
    assert_eq!(first.temp_id.as_deref(), Some("t1"));
    let again = store.append(new_message("c", "alice", "hello", Some("t1"))).await?;
    assert_eq!(again, Appended::Existing(first.clone()));
    let mut racers = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            store.append(new_message("c", "bob", "race", Some("same"))).await
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for racer in racers {
        let appended = racer.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
        created += usize::from(matches!(appended, Appended::Created(_)));
        ids.insert(appended.message().id.clone());
    }
    assert_eq!((created, ids.len()), (1, 1));
    // Another sender may reuse the same client ref.
    let other = store.append(new_message("c", "carol", "hi", Some("t1"))).await?;
    assert!(matches!(other, Appended::Created(ref m) if m.seq == 3));
    assert_eq!(store.message(&first.id).await?, Some(first.clone()));
    assert_eq!(store.message("no-such-id").await?, None);

    // History: pages by seq, oldest first.
    for n in 4..=10 {
        store.append(new_message("c", "dave", &format!("n{n}"), None)).await?;
    }
    let seqs = |p: &HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let q = |before, after, limit| HistoryQuery { before, after, limit };
    let newest = store.history(&"c".into(), q(None, None, 3)).await?;
    assert_eq!((seqs(&newest), newest.has_more), (vec![8, 9, 10], true));
    let older = store.history(&"c".into(), q(Some(8), None, 5)).await?;
    assert_eq!((seqs(&older), older.has_more), (vec![3, 4, 5, 6, 7], true));
    let oldest = store.history(&"c".into(), q(Some(3), None, 5)).await?;
    assert_eq!((seqs(&oldest), oldest.has_more), (vec![1, 2], false));
    let after = store.history(&"c".into(), q(None, Some(7), 2)).await?;
    assert_eq!((seqs(&after), after.has_more), (vec![8, 9], true));
    let rest = store.history(&"c".into(), q(None, Some(9), 50)).await?;
    assert_eq!((seqs(&rest), rest.has_more), (vec![10], false));
    let empty = store.history(&"nothing".into(), q(None, None, 50)).await?;
    assert_eq!((empty.messages.len(), empty.has_more), (0, false));
    assert_eq!(
        newest.messages[0].attachments,
        vec!["https://example.com/a.png".to_owned()]
    );

    // Receipts are idempotent; reads move the read mark; unread counts others' messages.
    let now = chrono::Utc::now();
    assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 9);
    assert!(
        store
            .record_receipt(&first, &"bob".into(), ReceiptStatus::Delivered, now)
            .await?
    );
    assert!(
        !store
            .record_receipt(&first, &"bob".into(), ReceiptStatus::Delivered, now)
            .await?
    );
    let fifth = store.history(&"c".into(), q(Some(6), Some(4), 1)).await?;
    let fifth = fifth
        .messages
        .first()
        .cloned()
        .ok_or(StoreError::Unavailable("no seq 5".into()))?;
    assert!(
        store
            .record_receipt(&fifth, &"alice".into(), ReceiptStatus::Read, now)
            .await?
    );
    // Others' messages with seq 6..=10 remain unread.
    assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 5);
    // A read of an older message does not move the mark back.
    store
        .record_receipt(&first, &"alice".into(), ReceiptStatus::Read, now)
        .await?;
    assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 5);
    store.mark_all_read(&"c".into(), &"alice".into()).await?;
    assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 0);

    // Reactions: one per (message, user, reaction).
    assert!(store.react(&first, &"bob".into(), "👍", true).await?);
    assert!(!store.react(&first, &"bob".into(), "👍", true).await?);
    assert!(store.react(&first, &"carol".into(), "👍", true).await?);
    assert!(store.react(&first, &"bob".into(), "👍", false).await?);
    assert!(!store.react(&first, &"bob".into(), "👍", false).await?);
    Ok(())
}

/// Runs the conversation store contract against `store` (which must be empty).
pub(crate) async fn conversations_conform(store: &dyn ConversationStore) -> Result<(), StoreError> {
    let members = [UserId::from("bob"), UserId::from("alice")];
    let created = store.create(&"room".into(), Some("Room"), &members).await?;
    assert_eq!(created.members, vec![UserId::from("alice"), UserId::from("bob")]);
    assert_eq!((created.title.as_deref(), created.last_seq), (Some("Room"), 0));
    assert!(matches!(
        store.create(&"room".into(), None, &[]).await,
        Err(StoreError::Exists(_))
    ));
    assert_eq!(store.is_member(&"room".into(), &"alice".into()).await?, Some(true));
    assert_eq!(store.is_member(&"room".into(), &"eve".into()).await?, Some(false));
    assert_eq!(store.is_member(&"nowhere".into(), &"alice".into()).await?, None);
    assert!(store.add_member(&"room".into(), &"eve".into()).await?);
    assert!(!store.add_member(&"room".into(), &"eve".into()).await?);
    assert!(store.remove_member(&"room".into(), &"bob".into()).await?);
    assert!(!store.remove_member(&"room".into(), &"bob".into()).await?);
    assert!(matches!(
        store.add_member(&"nowhere".into(), &"eve".into()).await,
        Err(StoreError::NoConversation(_))
    ));
    store.create(&"other".into(), None, &[UserId::from("eve")]).await?;
    assert_eq!(
        store.conversations_of(&"eve".into()).await?,
        vec![ConversationId::from("other"), ConversationId::from("room")]
    );
    let got = store.get(&"room".into()).await?.map(|c| c.members);
    assert_eq!(got, Some(vec![UserId::from("alice"), UserId::from("eve")]));
    assert_eq!(store.get(&"nowhere".into()).await?, None);
    Ok(())
}

/// A plain text message without attachments.
pub(crate) fn plain_message(conversation: &str, sender: &str, client_ref: Option<&str>) -> NewMessage {
    NewMessage {
        conversation_id: ConversationId(conversation.into()),
        sender_id: UserId(sender.into()),
        content: format!("hello from {sender}"),
        kind: "text".into(),
        attachments: vec![],
        client_ref: client_ref.map(Into::into),
        metadata: None,
    }
}

// The checks below go further than `messages_conform`: more senders, every history window,
// metadata and attachments round trips, receipts and reactions in detail.

pub(crate) fn created(appended: Appended) -> Result<Message, String> {
    match appended {
        Appended::Created(m) => Ok(m),
        Appended::Existing(m) => Err(format!("expected a new message, got existing seq {}", m.seq)),
    }
}

pub(crate) async fn all_seqs(store: &dyn MessageStore, conversation: &str) -> Result<Vec<i64>, StoreError> {
    let mut seqs = vec![];
    let mut after = 0;
    loop {
        let page = store
            .history(
                &ConversationId(conversation.into()),
                HistoryQuery {
                    before: None,
                    after: Some(after),
                    limit: 100,
                },
            )
            .await?;
        seqs.extend(page.messages.iter().map(|m| m.seq));
        match page.messages.last() {
            Some(last) if page.has_more => after = last.seq,
            _ => return Ok(seqs),
        }
    }
}

/// `senders` tasks each append `per_sender` messages to one conversation at once: the
/// seqs are 1..=n, without gap or duplicate, in the acks and in history.
async fn check_contiguous_seqs(store: Arc<dyn MessageStore>, senders: usize, per_sender: usize) -> TestResult {
    let conversation = "seq-race";
    let mut tasks = vec![];
    for s in 0..senders {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = vec![];
            for i in 0..per_sender {
                let tag = format!("s{s}-{i}");
                let message = created(
                    store
                        .append(plain_message(conversation, &format!("user{s}"), Some(&tag)))
                        .await
                        .map_err(|e| e.to_string())?,
                )?;
                seqs.push(message.seq);
            }
            Ok::<_, String>(seqs)
        }));
    }
    let mut acked = vec![];
    for task in tasks {
        acked.extend(task.await??);
    }
    acked.sort_unstable();
    let expected: Vec<i64> = (1..=(senders * per_sender) as i64).collect();
    assert_eq!(acked, expected, "acked seqs are 1..=n");
    assert_eq!(
        all_seqs(store.as_ref(), conversation).await?,
        expected,
        "stored seqs are 1..=n"
    );
    Ok(())
}

/// A retry answers the first message and stores nothing, also when retries race.
async fn check_idempotency(store: Arc<dyn MessageStore>) -> TestResult {
    let conversation = "idem";
    let first = created(store.append(plain_message(conversation, "alice", Some("t1"))).await?)?;
    let Appended::Existing(again) = store.append(plain_message(conversation, "alice", Some("t1"))).await? else {
        return Err("a retry was stored again".into());
    };
    assert_eq!((again.id.as_str(), again.seq), (first.id.as_str(), first.seq));
    assert_eq!(again, first);
    // The key is (conversation, sender, client ref).
    let other_sender = created(store.append(plain_message(conversation, "bob", Some("t1"))).await?)?;
    let other_conversation = created(store.append(plain_message("idem-2", "alice", Some("t1"))).await?)?;
    assert_eq!((other_sender.seq, other_conversation.seq), (2, 1));
    // Without a client ref nothing is deduplicated.
    let a = created(store.append(plain_message(conversation, "alice", None)).await?)?;
    let b = created(store.append(plain_message(conversation, "alice", None)).await?)?;
    assert_eq!((a.seq, b.seq, a.temp_id.clone()), (3, 4, None));
    // Racing retries: one stored, all answer it.
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.append(plain_message(conversation, "carol", Some("race"))).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut created_count = 0;
    for racer in racers {
        let appended = racer.await??;
        if matches!(appended, Appended::Created(_)) {
            created_count += 1;
        }
        ids.insert(appended.message().id.clone());
    }
    assert_eq!(
        (created_count, ids.len()),
        (1, 1),
        "one racer stored, all got its message"
    );
    assert_eq!(all_seqs(store.as_ref(), conversation).await?, vec![1, 2, 3, 4, 5]);
    Ok(())
}

async fn check_history(store: &dyn MessageStore) -> TestResult {
    let conversation = ConversationId("history".into());
    let started = Utc::now();
    let mut sent = vec![];
    for i in 1..=10 {
        let mut new = plain_message(&conversation.0, if i % 2 == 0 { "alice" } else { "bob" }, None);
        new.content = format!("message {i}");
        if i == 1 {
            new.kind = "image".into();
            new.attachments = vec!["https://example.com/a.png".into(), "https://example.com/b.png".into()];
            new.client_ref = Some("first".into());
            new.metadata = Some(serde_json::json!({"a": [1, 2.5, "x", null], "$b": {"c.d": true}}));
        }
        sent.push(created(store.append(new).await?)?);
    }
    let first = &sent[0];
    assert_eq!(first.attachments.len(), 2);
    assert_eq!(first.temp_id.as_deref(), Some("first"));
    assert!(first.sent_at >= started - chrono::Duration::seconds(1) && first.sent_at <= Utc::now());
    // Stored exactly as acked.
    assert_eq!(store.message(&first.id).await?.as_ref(), Some(first));
    assert_eq!(store.message("no-such-message").await?, None);

    let page = |before: Option<i64>, after: Option<i64>, limit: u32| HistoryQuery { before, after, limit };
    let seqs = |p: &HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = store.history(&conversation, page(None, None, 3)).await?;
    assert_eq!((seqs(&newest), newest.has_more), (vec![8, 9, 10], true));
    assert_eq!(newest.messages[2], sent[9]);
    let older = store.history(&conversation, page(Some(8), None, 3)).await?;
    assert_eq!((seqs(&older), older.has_more), (vec![5, 6, 7], true));
    let oldest = store.history(&conversation, page(Some(3), None, 5)).await?;
    assert_eq!((seqs(&oldest), oldest.has_more), (vec![1, 2], false));
    assert_eq!(oldest.messages[0], sent[0]);
    let from_start = store.history(&conversation, page(None, Some(0), 4)).await?;
    assert_eq!((seqs(&from_start), from_start.has_more), (vec![1, 2, 3, 4], true));
    let missed = store.history(&conversation, page(None, Some(8), 5)).await?;
    assert_eq!((seqs(&missed), missed.has_more), (vec![9, 10], false));
    let between = store.history(&conversation, page(Some(6), Some(2), 10)).await?;
    assert_eq!((seqs(&between), between.has_more), (vec![3, 4, 5], false));
    let exact = store.history(&conversation, page(None, Some(7), 3)).await?;
    assert_eq!((seqs(&exact), exact.has_more), (vec![8, 9, 10], false));
    let up_to_date = store.history(&conversation, page(None, Some(10), 5)).await?;
    assert_eq!((seqs(&up_to_date), up_to_date.has_more), (vec![], false));
    // A zero limit counts as one.
    let one = store.history(&conversation, page(None, None, 0)).await?;
    assert_eq!((seqs(&one), one.has_more), (vec![10], true));
    let empty = store
        .history(&ConversationId("no-such-conversation".into()), page(None, None, 10))
        .await?;
    assert_eq!((empty.messages.len(), empty.has_more), (0, false));
    Ok(())
}

async fn check_receipts_and_unread(store: &dyn MessageStore) -> TestResult {
    let conversation = ConversationId("receipts".into());
    let (alice, bob, carol) = (UserId("alice".into()), UserId("bob".into()), UserId("carol".into()));
    let mut sent = vec![];
    for sender in ["alice", "alice", "bob", "alice", "alice", "bob", "alice"] {
        sent.push(created(
            store.append(plain_message(&conversation.0, sender, None)).await?,
        )?);
    }
    assert_eq!(store.unread(&conversation, &bob).await?, 5, "alice's five");
    assert_eq!(store.unread(&conversation, &alice).await?, 2, "bob's two");
    assert_eq!(store.unread(&conversation, &carol).await?, 7, "everything");
    assert_eq!(store.unread(&ConversationId("nothing".into()), &bob).await?, 0);

    let now = Utc::now();
    let third = &sent[2];
    assert!(
        store
            .record_receipt(third, &carol, ReceiptStatus::Delivered, now)
            .await?
    );
    assert!(
        !store
            .record_receipt(third, &carol, ReceiptStatus::Delivered, now)
            .await?
    );
    assert_eq!(store.unread(&conversation, &carol).await?, 7, "delivered is not read");
    assert!(store.record_receipt(third, &carol, ReceiptStatus::Read, now).await?);
    assert!(!store.record_receipt(third, &carol, ReceiptStatus::Read, now).await?);
    assert_eq!(store.unread(&conversation, &carol).await?, 4, "seqs 4..=7");
    // Reading an older message never lowers the mark.
    assert!(store.record_receipt(&sent[0], &carol, ReceiptStatus::Read, now).await?);
    assert_eq!(store.unread(&conversation, &carol).await?, 4);
    assert!(store.record_receipt(&sent[4], &bob, ReceiptStatus::Read, now).await?);
    assert_eq!(store.unread(&conversation, &bob).await?, 1, "alice's seq 7");
    // Up to now, for a reader with and without a mark.
    store.mark_all_read(&conversation, &bob).await?;
    store.mark_all_read(&conversation, &alice).await?;
    assert_eq!(store.unread(&conversation, &bob).await?, 0);
    assert_eq!(store.unread(&conversation, &alice).await?, 0);
    // A new message counts again, for the others only.
    created(store.append(plain_message(&conversation.0, "alice", None)).await?)?;
    assert_eq!(store.unread(&conversation, &bob).await?, 1);
    assert_eq!(store.unread(&conversation, &alice).await?, 0);
    // mark_all_read never lowers a mark either, and is harmless on an unknown conversation.
    assert!(store.record_receipt(&sent[6], &carol, ReceiptStatus::Read, now).await?);
    store.mark_all_read(&ConversationId("nothing".into()), &carol).await?;
    assert_eq!(store.unread(&conversation, &carol).await?, 1);
    Ok(())
}

async fn check_reactions(store: &dyn MessageStore) -> TestResult {
    let message = created(store.append(plain_message("reactions", "alice", None)).await?)?;
    let bob = UserId("bob".into());
    assert!(store.react(&message, &bob, "👍", true).await?);
    assert!(!store.react(&message, &bob, "👍", true).await?, "added twice");
    assert!(store.react(&message, &bob, "🎉", true).await?, "another reaction");
    assert!(
        store.react(&message, &UserId("carol".into()), "👍", true).await?,
        "another user"
    );
    assert!(store.react(&message, &bob, "👍", false).await?);
    assert!(!store.react(&message, &bob, "👍", false).await?, "removed twice");
    assert!(!store.react(&message, &bob, "❤️", false).await?, "never added");
    assert!(
        store.react(&message, &bob, "👍", true).await?,
        "added again after removal"
    );
    Ok(())
}

/// Every check, on one store (which must not hold the conversations they use).
pub(crate) async fn check_all(store: Arc<dyn MessageStore>, senders: usize, per_sender: usize) -> TestResult {
    store.ping().await?;
    check_contiguous_seqs(store.clone(), senders, per_sender).await?;
    check_idempotency(store.clone()).await?;
    check_history(store.as_ref()).await?;
    check_receipts_and_unread(store.as_ref()).await?;
    check_reactions(store.as_ref()).await?;
    Ok(())
}
