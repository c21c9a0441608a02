//! The bus carries domain events between nodes.
//!
//! Contract, for every implementation:
//! - `publish` hands one [`Delivery`] to every node subscribed to its topic, this node
//!   included; each subscribed node passes it once to its [`LocalSink`].
//! - `subscribe`/`unsubscribe` count local members of a topic: the node receives a topic's
//!   events while the count is above zero. [`Topic::All`] is always received.
//! - Events of one topic published by one node arrive in the order they were published.
//! - Delivery is at most once: the database, not the bus, is the record.

mod memory;
mod redis;

pub use memory::MemoryBus;
pub use redis::RedisBus;

use async_trait::async_trait;
use shared::{Delivery, Topic};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

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
    /// Counts one more local member of `topic`.
    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError>;
    /// Counts one fewer local member of `topic`.
    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError>;
}

/// Receives the events this node is subscribed to, to write them to local connections.
#[async_trait]
pub trait LocalSink: Send + Sync + 'static {
    /// Renders and writes one event to the local connections of its topic.
    async fn deliver(&self, delivery: Arc<Delivery>);
}

/// The node's local fan-out: every protocol adapter registers here once at start-up.
#[derive(Default)]
pub struct LocalFanout {
    sinks: RwLock<Vec<Arc<dyn LocalSink>>>,
}

impl LocalFanout {
    /// Adds a protocol adapter.
    pub fn register(&self, sink: Arc<dyn LocalSink>) {
        self.sinks.write().unwrap_or_else(PoisonError::into_inner).push(sink);
    }
}

#[async_trait]
impl LocalSink for LocalFanout {
    async fn deliver(&self, delivery: Arc<Delivery>) {
        let sinks = self.sinks.read().unwrap_or_else(PoisonError::into_inner).clone();
        for sink in sinks {
            sink.deliver(delivery.clone()).await;
        }
    }
}

/// Reference counts of local members per topic, shared by the bus implementations.
#[derive(Default)]
pub(crate) struct Subscriptions {
    counts: Mutex<HashMap<Topic, usize>>,
}

impl Subscriptions {
    /// Counts a member; true when it is the topic's first.
    pub(crate) fn add(&self, topic: &Topic) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(topic.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Uncounts a member; true when it was the topic's last.
    pub(crate) fn remove(&self, topic: &Topic) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(topic) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                counts.remove(topic);
                true
            }
            None => false,
        }
    }

    /// Every topic with a local member.
    pub(crate) fn topics(&self) -> Vec<Topic> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Whether the node has a local member of `topic`.
    pub(crate) fn contains(&self, topic: &Topic) -> bool {
        *topic == Topic::All
            || self
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(topic)
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

    /// Runs the conformance checks against a bus whose sink is `rx`.
    pub(crate) async fn conformance(bus: &dyn Bus, rx: &mut mpsc::UnboundedReceiver<Arc<Delivery>>) {
        let topic = Topic::Conversation("c1".into());
        // Not subscribed: nothing arrives.
        bus.publish(typing("c1", 0)).await.ok();
        // Subscribed twice, unsubscribed once: still receiving, in order, once each.
        bus.subscribe(&topic).await.ok();
        bus.subscribe(&topic).await.ok();
        bus.unsubscribe(&topic).await.ok();
        for n in 1..=3 {
            bus.publish(typing("c1", n)).await.ok();
        }
        for n in 1..=3 {
            let got = rx.recv().await.map(|d| d.event.clone());
            assert_eq!(got, Some(typing("c1", n).event));
        }
        // Last member gone: nothing more.
        bus.unsubscribe(&topic).await.ok();
        bus.publish(typing("c1", 4)).await.ok();
        // `All` is always received.
        bus.publish(Delivery::to(Topic::All, typing("c1", 5).event)).await.ok();
        let got = rx.recv().await.map(|d| d.topic.clone());
        assert_eq!(got, Some(Topic::All));
        assert!(rx.try_recv().is_err());
    }
}
