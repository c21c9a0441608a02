//! Who may join, read, type and send in a conversation (PROTOCOL.md 2.4).

use super::DomainError;
use crate::auth::Identity;
use crate::config::AccessMode;
use crate::metrics::METRICS;
use crate::store::ConversationStore;
use shared::{ConversationId, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a "yes, a member" answer is reused without asking the store again. A removal
/// clears the answer at once on the node that removes and on every node where the user is
/// connected (the `MemberRemoved` event); a node that misses the event (the user has no
/// connection there, or the bus dropped it) may go on allowing the user this long.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(2);

/// Most remembered answers; past it, the expired ones go, then all if that is not enough.
const MEMBERSHIP_CACHE_MAX: usize = 100_000;

/// Recent positive membership answers of `members` mode. Only "member" is remembered: an
/// added member and a created conversation take effect at once because a "no" is always
/// asked again.
#[derive(Default)]
pub struct Memberships {
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    confirmed: HashMap<(ConversationId, UserId), Instant>,
    /// Counts removals: an answer read from the store before a removal is not remembered
    /// after it (it may be the removed membership).
    removals: u64,
}

impl Memberships {
    fn lock(&self) -> MutexGuard<'_, Remembered> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_member(&self, conversation: &ConversationId, user: &UserId) -> bool {
        // The key is a pair of owned ids: a look-up clones them, still far cheaper than a
        // database round trip.
        self.lock()
            .confirmed
            .get(&(conversation.clone(), user.clone()))
            .is_some_and(|at| at.elapsed() < MEMBERSHIP_TTL)
    }

    /// The removal count, read before asking the store.
    fn removals(&self) -> u64 {
        self.lock().removals
    }

    /// Remembers a "member" answer the store gave after `removals` removals.
    fn confirm(&self, conversation: &ConversationId, user: &UserId, removals: u64) {
        let mut inner = self.lock();
        if inner.removals != removals {
            return;
        }
        let confirmed = &mut inner.confirmed;
        if confirmed.len() >= MEMBERSHIP_CACHE_MAX {
            confirmed.retain(|_, at| at.elapsed() < MEMBERSHIP_TTL);
            if confirmed.len() >= MEMBERSHIP_CACHE_MAX {
                confirmed.clear();
            }
        }
        confirmed.insert((conversation.clone(), user.clone()), Instant::now());
    }

    /// Forgets that `user` is a member of `conversation` (they were removed).
    pub fn forget(&self, conversation: &ConversationId, user: &UserId) {
        let mut inner = self.lock();
        inner.removals += 1;
        inner.confirmed.remove(&(conversation.clone(), user.clone()));
    }
}

/// The access rule of this deployment.
#[derive(Clone)]
pub struct Access {
    mode: AccessMode,
    conversations: Arc<dyn ConversationStore>,
    memberships: Arc<Memberships>,
}

impl Access {
    /// The rule for `mode`; `members` asks the conversation store.
    pub fn new(mode: AccessMode, conversations: Arc<dyn ConversationStore>) -> Self {
        Self {
            mode,
            conversations,
            memberships: Arc::default(),
        }
    }

    /// The deployment's mode.
    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// The remembered membership answers (to forget a removal).
    pub fn memberships(&self) -> Arc<Memberships> {
        self.memberships.clone()
    }

    /// Whether `who` may use `conversation`; `None` is the server, which, like an admin
    /// token, may use every conversation. In `members` mode a conversation that does not exist
    /// is `not_found`, for everyone.
    pub async fn check(&self, who: Option<&Identity>, conversation: &ConversationId) -> Result<(), DomainError> {
        let privileged = who.is_none_or(|w| w.admin);
        let allowed = match (self.mode, who) {
            (AccessMode::Members, Some(user)) if self.memberships.is_member(conversation, &user.user_id) => {
                METRICS.membership_cache_hits.inc();
                true
            }
            (AccessMode::Members, _) => {
                let user = who.map(|w| w.user_id.clone()).unwrap_or_else(|| "".into());
                let removals = self.memberships.removals();
                match self.conversations.is_member(conversation, &user).await? {
                    None => return Err(DomainError::NotFound(format!("no conversation {conversation}"))),
                    Some(member) => {
                        if member && who.is_some() {
                            self.memberships.confirm(conversation, &user, removals);
                        }
                        member || privileged
                    }
                }
            }
            (AccessMode::Open, _) | (_, None) => true,
            (AccessMode::Claims, Some(who)) => {
                who.admin || who.conversations.as_ref().is_some_and(|c| c.allows(conversation))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!(
                "no access to conversation {conversation}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_members_until_forgotten_or_expired() {
        let m = Memberships::default();
        let (c, u) = (ConversationId::from("c"), UserId::from("u"));
        assert!(!m.is_member(&c, &u));
        m.confirm(&c, &u, m.removals());
        assert!(m.is_member(&c, &u));
        assert!(!m.is_member(&c, &UserId::from("v")));
        m.forget(&c, &u);
        assert!(!m.is_member(&c, &u));
        // An answer read before a removal is not remembered after it.
        let before = m.removals();
        m.forget(&c, &UserId::from("v"));
        m.confirm(&c, &u, before);
        assert!(!m.is_member(&c, &u));
        m.confirm(&c, &u, m.removals());
        let expired = Instant::now().checked_sub(MEMBERSHIP_TTL);
        if let (Some(at), Some(expired)) = (m.lock().confirmed.get_mut(&(c.clone(), u.clone())), expired) {
            *at = expired;
        }
        assert!(!m.is_member(&c, &u));
    }
}
