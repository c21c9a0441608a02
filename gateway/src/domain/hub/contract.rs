//! What the hub and the protocol adapters agree on: the [`Connection`] an adapter attaches for
//! each socket, the [`Outlet`] that renders for a group of them and what it [`Written`], and the
//! answers the hub gives ([`Local`], [`Gone`], [`Refused`]).

use super::ConnKey;
use crate::metrics::{METRICS, Protocol};
use prometheus::IntCounter;
use shared::event::Message;
use shared::{ConnId, ConversationId, Delivery, UserId};
use std::any::Any;

/// A local socket, as the hub sees it. Adapters implement it; what it does is theirs.
pub trait Connection: Any + Send + Sync {
    /// The outlet that renders for it ([`Hub::add_outlet`](super::Hub::add_outlet)).
    fn outlet(&self) -> usize;
    /// Its user, once known.
    fn user(&self) -> Option<&UserId>;
    /// Closes it from the server side (REST disconnect): the client does not reconnect.
    fn kick(&self);
    /// Closes it as a slow consumer: the client reconnects and recovers with `lastSeq`.
    fn shed(&self);
    /// Its user was removed from `conversation`: leave it, after the commands already queued
    /// on the connection (a join in flight must not win over the removal).
    fn removed(&self, conversation: &ConversationId);
}

/// Renders events for a group of connections and writes them.
pub trait Outlet: Send + Sync {
    /// The protocol and namespace its connections are counted under (metric labels).
    fn labels(&self) -> (Protocol, &str);
    /// Writes `delivery` to `to`, all of this outlet: rendered once.
    fn push(&self, delivery: &Delivery, to: &[&dyn Connection]) -> Written;
    /// A message in a conversation `to`'s user channel watches, with each user's unread count.
    fn push_watched(&self, message: &Message, to: &[(&dyn Connection, i64)]) -> Written {
        let _ = (message, to);
        Written::default()
    }
}

/// What an outlet wrote: frames (one per recipient socket) and their bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Frames handed to sockets.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Written {
    /// `frames` copies of one frame of `bytes` bytes.
    pub fn copies(frames: usize, bytes: usize) -> Self {
        Self {
            frames: frames as u64,
            bytes: (frames * bytes) as u64,
        }
    }

    /// Counts it: one atomic add per outlet push, not per recipient.
    pub(super) fn count(self) {
        if self.frames > 0 {
            OUTBOUND.0.inc_by(self.frames);
            OUTBOUND.1.inc_by(self.bytes);
        }
    }
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Self) {
        self.frames += other.frames;
        self.bytes += other.bytes;
    }
}

static OUTBOUND: std::sync::LazyLock<(IntCounter, IntCounter)> =
    std::sync::LazyLock::new(|| (METRICS.outbound_frames.clone(), METRICS.outbound_bytes.clone()));

/// A local connection as the domain knows it: its key here and its cluster-wide id.
#[derive(Debug, Clone)]
pub struct Local {
    /// Key in the hub.
    pub key: ConnKey,
    /// Id in presence.
    pub id: ConnId,
}

/// The connection is gone (closed while a command was in flight).
#[derive(Debug, thiserror::Error)]
#[error("connection closed")]
pub struct Gone;

/// Why [`Hub::join`](super::Hub::join) did not file a connection.
#[derive(Debug)]
pub enum Refused {
    /// The connection is gone.
    Gone,
    /// The join's cap was reached.
    Full,
}

impl From<Gone> for Refused {
    fn from(_: Gone) -> Self {
        Refused::Gone
    }
}
