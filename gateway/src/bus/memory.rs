//! The in-process bus of a single node: a publish is a local delivery.

use super::{Bus, BusError, LocalSink};
use crate::metrics::METRICS;
use async_trait::async_trait;
use shared::{Delivery, Topic};
use std::sync::Arc;

/// Delivers every publish to this node's sink, which knows its local members.
pub struct MemoryBus {
    sink: Arc<dyn LocalSink>,
}

impl MemoryBus {
    /// A bus that delivers to `sink`.
    pub fn new(sink: Arc<dyn LocalSink>) -> Self {
        Self { sink }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, delivery: Delivery) -> Result<(), BusError> {
        let started = std::time::Instant::now();
        if let Some(published) = METRICS.bus_published.get(delivery.event.kind_index()) {
            published.inc();
        }
        self.sink.deliver(Arc::new(delivery)).await;
        METRICS.fanout_local.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn subscribe(&self, _topic: &Topic) -> Result<(), BusError> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &Topic) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::tests::{Recorder, conformance};

    #[tokio::test]
    async fn memory_bus_conforms() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let bus = MemoryBus::new(Arc::new(Recorder(tx)));
        conformance(&bus, &mut rx).await;
    }
}
