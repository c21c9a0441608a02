//! The bus carries domain events between nodes.
//!
//! Contract, for every implementation:
//! - `publish` hands one [`Delivery`] to this node's [`LocalSink`] at once, whatever it is
//!   subscribed to (the sink knows its local members), and to every other node subscribed to
//!   its topic; each passes it once to its sink.
//! - `subscribe`/`unsubscribe` say whether the node receives a topic's events; both are
//!   idempotent (the domain's hub counts local members and calls them one topic at a time).
//!   [`Topic::All`] is always received.
//! - Events of one topic published by one node arrive in the order they were published.
//! - Delivery is at most once: the database, not the bus, is the record.

mod memory;
mod redis;

pub use memory::MemoryBus;
pub use redis::RedisBus;

use async_trait::async_trait;
use shared::{Delivery, Topic};
use std::sync::{Arc, OnceLock, Weak};

/// A bus failure: nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The transport (Redis) is unreachable.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Carries events to the nodes that have local members of their topic.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends `delivery` to every node subscribed to its topic, this one included.
    async fn publish(&self, delivery: Delivery) -> Result<(), BusError>;
    /// Starts receiving `topic` (again: a no-op).
    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError>;
    /// Stops receiving `topic`.
    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError>;
}

/// Receives the events this node is subscribed to, to write them to local connections.
#[async_trait]
pub trait LocalSink: Send + Sync + 'static {
    /// Hands one event to the node (the domain, which delivers it to local connections).
    async fn deliver(&self, delivery: Arc<Delivery>);
    /// The bus was cut off and is receiving again: what was published meanwhile is lost to
    /// this node, and the record (the store) must fill it in.
    async fn resumed(&self) {}
}

/// The node's receiving end, given to the bus before the domain that listens on it exists;
/// connected once at start-up. Held weakly: the domain owns the bus, not the other way round.
#[derive(Default)]
pub struct Inlet {
    sink: OnceLock<Weak<dyn LocalSink>>,
}

impl Inlet {
    /// Connects the listener; later calls are ignored.
    pub fn connect(&self, sink: &Arc<dyn LocalSink>) {
        let _ = self.sink.set(Arc::downgrade(sink));
    }
}

#[async_trait]
impl LocalSink for Inlet {
    async fn deliver(&self, delivery: Arc<Delivery>) {
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.deliver(delivery).await;
        }
    }

    async fn resumed(&self) {
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.resumed().await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The bus conformance suite, run against every implementation.
    use super::*;
    use shared::Event;
    use shared::event::Typing;
    use tokio::sync::mpsc;

    /// A sink that records what it receives.
    pub(crate) struct Recorder(pub mpsc::UnboundedSender<Arc<Delivery>>);

    #[async_trait]
    impl LocalSink for Recorder {
        async fn deliver(&self, delivery: Arc<Delivery>) {
            let _ = self.0.send(delivery);
        }
    }

    fn typing(conv: &str, n: usize) -> Delivery {
        Delivery::to(
            Topic::Conversation(conv.into()),
            Event::Typing(Typing {
                conversation_id: conv.into(),
                user_id: format!("u{n}").into(),
                is_typing: true,
            }),
        )
    }

    /// Runs the single-node conformance checks against a bus whose sink is `rx`.
    pub(crate) async fn conformance(bus: &dyn Bus, rx: &mut mpsc::UnboundedReceiver<Arc<Delivery>>) {
        let topic = Topic::Conversation("c1".into());
        // The publishing node's sink hears everything it publishes, subscribed or not, in
        // order, once each; subscribing twice is subscribing.
        bus.publish(typing("c1", 0)).await.ok();
        bus.subscribe(&topic).await.ok();
        bus.subscribe(&topic).await.ok();
        for n in 1..=3 {
            bus.publish(typing("c1", n)).await.ok();
        }
        for n in 0..=3 {
            let got = rx.recv().await.map(|d| d.event.clone());
            assert_eq!(got, Some(typing("c1", n).event));
        }
        bus.unsubscribe(&topic).await.ok();
        bus.publish(Delivery::to(Topic::All, typing("c1", 5).event)).await.ok();
        let got = rx.recv().await.map(|d| d.topic.clone());
        assert_eq!(got, Some(Topic::All));
        assert!(rx.try_recv().is_err());
    }
}
