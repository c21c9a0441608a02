//! Sending, history, receipts and reactions: validate → authorize → store → fan out.

use super::{Domain, DomainError};
use crate::auth::Identity;
use crate::store::{Appended, HistoryPage, HistoryQuery, NewMessage, StoreError};
use chrono::Utc;
use shared::event::{Message, MessageStatus, Reaction, ReceiptStatus};
use shared::{ConversationId, Delivery, Event, Topic, UserId};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Message types a client may send.
pub const MESSAGE_TYPES: &[&str] = &["text", "image", "file", "audio", "video", "system"];
/// Most attachments per message.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest attachment URL, in bytes.
pub const MAX_ATTACHMENT_URL: usize = 2048;
/// Longest `tempId` / `clientRandom`, in bytes.
pub const MAX_CLIENT_REF: usize = 64;
/// Longest reaction, in bytes.
pub const MAX_REACTION: usize = 32;
/// History page size when none is asked.
pub const DEFAULT_PAGE: u32 = 50;
/// The most a history page may hold.
pub const MAX_PAGE: u32 = 200;

/// A message as a client asks to send it (shapes already read by the adapter).
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Where.
    pub conversation_id: ConversationId,
    /// The text.
    pub content: String,
    /// `type`; `text` when absent.
    pub kind: Option<String>,
    /// Attachment URLs.
    pub attachments: Vec<String>,
    /// `tempId` / `clientRandom`.
    pub client_ref: Option<String>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
}

/// A page of history as a client asks for it.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    /// Which conversation.
    pub conversation_id: ConversationId,
    /// Only seqs below.
    pub before: Option<i64>,
    /// Only seqs above.
    pub after: Option<i64>,
    /// Page size; [`DEFAULT_PAGE`] when absent, at most [`MAX_PAGE`].
    pub limit: Option<u32>,
}

/// A stored message, and whether this request stored it (false for a retry).
#[derive(Debug, Clone)]
pub struct Sent {
    /// The stored message.
    pub message: Message,
    /// Stored by this request.
    pub created: bool,
}

/// How long a send answered `unavailable` stays in doubt.
const IN_DOUBT_FOR: Duration = Duration::from_secs(600);
/// Most sends in doubt remembered; past it, the expired go, then the older half.
const IN_DOUBT_MAX: usize = 10_000;

/// A send's identity for retries: (conversation, sender, client ref).
type SendKey = (ConversationId, UserId, String);

/// Sends (with a client ref) whose store answered `unavailable`. Mostly nothing was stored, but
/// a connection lost after the database committed and before it answered leaves the message
/// stored and never fanned out; the retry then finds it stored (`Existing`) and, being in
/// doubt, fans it out — once. A retry of a send that was acknowledged fans out nothing, as
/// always. Node-local: a retry through another node finds nothing in doubt there.
#[derive(Default)]
pub(super) struct InDoubt {
    sends: Mutex<HashMap<SendKey, Instant>>,
}

impl InDoubt {
    fn note(&self, key: SendKey) {
        let mut sends = self.sends.lock().unwrap_or_else(PoisonError::into_inner);
        if sends.len() >= IN_DOUBT_MAX {
            sends.retain(|_, at| at.elapsed() < IN_DOUBT_FOR);
            if sends.len() >= IN_DOUBT_MAX {
                let mut ages: Vec<Instant> = sends.values().copied().collect();
                ages.sort_unstable();
                if let Some(&middle) = ages.get(ages.len() / 2) {
                    sends.retain(|_, at| *at > middle);
                }
            }
        }
        sends.insert(key, Instant::now());
    }

    /// Whether the send was in doubt (and no longer is).
    fn settle(&self, key: &SendKey) -> bool {
        self.sends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .is_some_and(|at| at.elapsed() < IN_DOUBT_FOR)
    }
}

/// The length of `value` as JSON, when it is at most `max` bytes: counted while writing, and
/// given up as soon as it passes `max`, so a large value costs no more than `max` bytes' work.
pub(super) fn json_len_within(value: &serde_json::Value, max: u64) -> Option<u64> {
    struct Counter {
        n: u64,
        max: u64,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len() as u64;
            if self.n > self.max {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, max };
    serde_json::to_writer(&mut counter, value).ok().map(|()| counter.n)
}

/// About how many bytes a message takes in a page: its texts, its metadata, and a fixed
/// allowance for ids, seq, times and keys.
fn page_bytes(m: &Message) -> u64 {
    const FIXED: u64 = 256;
    let texts = m.content.len() + m.attachments.iter().map(String::len).sum::<usize>();
    let ids = m.id.len() + m.conversation_id.as_str().len() + m.sender_id.as_str().len();
    let metadata = m
        .metadata
        .as_ref()
        .map_or(0, |v| json_len_within(v, u64::MAX).unwrap_or(u64::MAX));
    FIXED + (texts + ids + m.temp_id.as_ref().map_or(0, String::len)) as u64 + metadata
}

/// A page cut to `max_bytes`: from its oldest message up when it was read `forward`, from its
/// newest down otherwise, always keeping one; `has_more` when anything was cut.
pub(super) fn bound_page(mut page: HistoryPage, forward: bool, max_bytes: u64) -> HistoryPage {
    let sizes: Vec<u64> = page.messages.iter().map(page_bytes).collect();
    let reading: Box<dyn Iterator<Item = &u64>> = if forward {
        Box::new(sizes.iter())
    } else {
        Box::new(sizes.iter().rev())
    };
    let mut total = 0u64;
    let keep = reading
        .take_while(|n| {
            total = total.saturating_add(**n);
            total <= max_bytes
        })
        .count()
        .max(1);
    let len = page.messages.len();
    if keep < len {
        if forward {
            page.messages.truncate(keep);
        } else {
            page.messages.drain(..len - keep);
        }
        page.has_more = true;
    }
    page
}

fn bad(msg: impl Into<String>) -> DomainError {
    DomainError::BadRequest(msg.into())
}

impl Domain {
    fn validate(&self, request: &SendRequest) -> Result<(), DomainError> {
        if request.content.is_empty() {
            return Err(bad("content must not be empty"));
        }
        if request.content.len() as u64 > self.rules.max_message_bytes {
            return Err(DomainError::PayloadTooLarge(format!(
                "content is longer than {} bytes",
                self.rules.max_message_bytes
            )));
        }
        if let Some(kind) = &request.kind
            && !MESSAGE_TYPES.contains(&kind.as_str())
        {
            return Err(bad(format!(
                "unknown type '{kind}': expected one of {}",
                MESSAGE_TYPES.join(", ")
            )));
        }
        if request.attachments.len() > MAX_ATTACHMENTS {
            return Err(bad(format!("at most {MAX_ATTACHMENTS} attachments")));
        }
        for url in &request.attachments {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.len() > MAX_ATTACHMENT_URL {
                return Err(bad(format!(
                    "attachments must be http(s) URLs of at most {MAX_ATTACHMENT_URL} bytes"
                )));
            }
        }
        if request
            .client_ref
            .as_ref()
            .is_some_and(|r| r.is_empty() || r.len() > MAX_CLIENT_REF)
        {
            return Err(bad(format!("tempId must be 1 to {MAX_CLIENT_REF} bytes")));
        }
        // The whole stored message: content and metadata (as JSON) share the one bound.
        let max = self.rules.max_message_bytes;
        let room = max.saturating_sub(request.content.len() as u64);
        if let Some(metadata) = &request.metadata
            && json_len_within(metadata, room).is_none()
        {
            return Err(DomainError::PayloadTooLarge(format!(
                "content and metadata are longer than {max} bytes"
            )));
        }
        Ok(())
    }

    /// Stores a message and tells the conversation. A retry with the same client ref stores
    /// nothing, tells no one, and answers the first message.
    pub async fn send(&self, who: &Identity, request: SendRequest) -> Result<Sent, DomainError> {
        self.validate(&request)?;
        self.access.check(Some(who), &request.conversation_id).await?;
        let key: Option<SendKey> = request
            .client_ref
            .as_ref()
            .map(|r| (request.conversation_id.clone(), who.user_id.clone(), r.clone()));
        let appended = self
            .messages
            .append(NewMessage {
                conversation_id: request.conversation_id,
                sender_id: who.user_id.clone(),
                content: request.content,
                kind: request.kind.unwrap_or_else(|| "text".into()),
                attachments: request.attachments,
                client_ref: request.client_ref,
                metadata: request.metadata,
            })
            .await;
        let (message, created) = match (appended, key) {
            (Err(e @ StoreError::Unavailable(_)), Some(key)) => {
                self.in_doubt.note(key);
                return Err(e.into());
            }
            (Err(e), _) => return Err(e.into()),
            (Ok(Appended::Created(message)), key) => {
                if let Some(key) = key {
                    self.in_doubt.settle(&key);
                }
                (message, true)
            }
            (Ok(Appended::Existing(message)), key) => {
                // Told before, unless the first attempt's answer was lost.
                if !key.is_some_and(|k| self.in_doubt.settle(&k)) {
                    return Ok(Sent {
                        message,
                        created: false,
                    });
                }
                (message, false)
            }
        };
        let topic = Topic::Conversation(message.conversation_id.clone());
        // Stored is what counts: a bus failure leaves the message to history and `lastSeq`.
        if let Err(e) = self
            .bus
            .publish(Delivery::to(topic, Event::MessageCreated(message.clone())))
            .await
        {
            tracing::warn!(error = %e, "stored message not fanned out");
        }
        Ok(Sent { message, created })
    }

    /// A page of a conversation's history.
    pub async fn history(&self, who: Option<&Identity>, request: HistoryRequest) -> Result<HistoryPage, DomainError> {
        let HistoryRequest {
            conversation_id: conversation,
            before,
            after,
            limit,
        } = request;
        self.access.check(who, &conversation).await?;
        if before.is_some_and(|b| b < 0) || after.is_some_and(|a| a < 0) {
            return Err(bad("before and after must be non-negative"));
        }
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(bad(format!("limit must be 1 to {MAX_PAGE}")));
        }
        let page = self
            .messages
            .history(&conversation, HistoryQuery { before, after, limit })
            .await?;
        Ok(bound_page(page, after.is_some(), self.rules.limits.max_page_bytes))
    }

    async fn readable_message(&self, who: &Identity, message_id: &str) -> Result<Message, DomainError> {
        let message = self
            .messages
            .message(message_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no message {message_id}")))?;
        self.access.check(Some(who), &message.conversation_id).await?;
        Ok(message)
    }

    /// Records that `who` received or read a message; its sender hears of it once.
    pub async fn receipt(&self, who: &Identity, message_id: &str, status: ReceiptStatus) -> Result<(), DomainError> {
        let message = self.readable_message(who, message_id).await?;
        let at = Utc::now();
        let new = self.messages.record_receipt(&message, &who.user_id, status, at).await?;
        if new && message.sender_id != who.user_id {
            let event = Event::MessageStatus(MessageStatus {
                message_id: message.id.clone(),
                conversation_id: message.conversation_id.clone(),
                user_id: who.user_id.clone(),
                status,
                at,
                read_by: (status == ReceiptStatus::Read).then(|| who.user_id.clone()),
            });
            self.bus
                .publish(Delivery::to(Topic::User(message.sender_id.clone()), event))
                .await
                .ok();
        }
        Ok(())
    }

    /// Marks everything read up to now in each conversation.
    pub async fn mark_all_read(&self, who: &Identity, conversations: &[ConversationId]) -> Result<(), DomainError> {
        for conversation in conversations {
            self.access.check(Some(who), conversation).await?;
        }
        for conversation in conversations {
            self.messages.mark_all_read(conversation, &who.user_id).await?;
        }
        Ok(())
    }

    /// Adds or removes a reaction; the conversation hears of each change once.
    pub async fn react(&self, who: &Identity, message_id: &str, reaction: &str, add: bool) -> Result<(), DomainError> {
        if reaction.is_empty() || reaction.len() > MAX_REACTION {
            return Err(bad(format!("reaction must be 1 to {MAX_REACTION} bytes")));
        }
        let message = self.readable_message(who, message_id).await?;
        if !self.messages.react(&message, &who.user_id, reaction, add).await? {
            return Ok(());
        }
        let payload = Reaction {
            message_id: message.id.clone(),
            conversation_id: message.conversation_id.clone(),
            user_id: who.user_id.clone(),
            reaction: reaction.to_owned(),
        };
        let event = if add {
            Event::ReactionAdded(payload)
        } else {
            Event::ReactionRemoved(payload)
        };
        self.bus
            .publish(Delivery::to(Topic::Conversation(message.conversation_id), event))
            .await
            .ok();
        Ok(())
    }
}
