//! The cluster bus over Redis pub/sub: one channel per topic, subscribed while the node has a
//! local member, one MessagePack envelope per event.

use super::{Bus, BusError, LocalSink};
use crate::metrics::{METRICS, Metrics};
use crate::redis::{COMMAND_TIMEOUT, Redis};
use crate::telemetry;
use async_trait::async_trait;
use fred::prelude::*;
use shared::event::{ENVELOPE_VERSION, Received};
use shared::{Delivery, Envelope, NodeId, Topic};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Publishes to and receives from Redis channels `<prefix>:ch:c:<id>`, `<prefix>:ch:u:<id>` and
/// `<prefix>:ch:all`.
pub struct RedisBus {
    redis: Redis,
    node_id: NodeId,
    sink: Arc<dyn LocalSink>,
    /// Topics the node wants: subscribed again whenever the subscriber reconnects.
    subscribed: Mutex<HashSet<Topic>>,
    /// `redis_command_duration_seconds{command="publish"}`.
    publish_seconds: prometheus::Histogram,
}

fn channel(prefix: &str, topic: &Topic) -> String {
    match topic {
        Topic::Conversation(c) => format!("{prefix}:ch:c:{c}"),
        Topic::User(u) => format!("{prefix}:ch:u:{u}"),
        Topic::All => format!("{prefix}:ch:all"),
    }
}

impl RedisBus {
    /// Subscribes to the broadcast channel and starts the receiving task.
    pub async fn start(
        redis: Redis,
        node_id: NodeId,
        sink: Arc<dyn LocalSink>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let bus = Arc::new(Self {
            redis,
            node_id,
            sink,
            subscribed: Mutex::default(),
            publish_seconds: METRICS.redis_duration.with_label_values(&["publish"]),
        });
        let all = channel(&bus.redis.prefix, &Topic::All);
        bus.redis
            .subscriber
            .subscribe(all)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        tasks.spawn(receive(bus.clone(), shutdown.clone()));
        tasks.spawn(resubscribe_on_reconnect(bus.clone(), shutdown));
        Ok(bus)
    }
}

/// Reads the subscriber connection on its own task and hands each event to the local fan-out.
async fn receive(bus: Arc<RedisBus>, shutdown: CancellationToken) {
    let mut messages = bus.redis.subscriber.message_rx();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            m = messages.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                METRICS.bus_dropped.with_label_values(&["lagged"]).inc_by(n);
                tracing::warn!(lost = n, "bus receiver lagged; events were dropped");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let bytes: &[u8] = match &message.value {
            fred::types::Value::Bytes(b) => b,
            fred::types::Value::String(s) => s.as_bytes(),
            _ => continue,
        };
        match Envelope::receive(bytes) {
            // The origin delivered to its own sockets when it published.
            Ok(Received::Envelope(env)) if env.origin == bus.node_id => {}
            Ok(Received::Envelope(env)) => {
                let kind = env.delivery.event.kind_index();
                if let Some(received) = METRICS.bus_received.get(kind) {
                    received.inc();
                }
                Metrics::observe_since_ms(&METRICS.bus_lag, env.ts_ms);
                let span = if env.delivery.event.traced() {
                    telemetry::delivery_span(env.trace.as_deref(), env.delivery.event.kind(), &env.origin.0)
                } else {
                    tracing::Span::none()
                };
                bus.sink.deliver(Arc::new(env.delivery)).instrument(span).await;
                Metrics::observe_since_ms(&METRICS.fanout_remote, env.ts_ms);
            }
            Ok(Received::Newer(version)) => {
                METRICS.bus_dropped.with_label_values(&["newer_version"]).inc();
                tracing::warn!(
                    version,
                    "envelope of a newer, incompatible version dropped (a deploy in progress?)"
                );
            }
            Ok(Received::UnknownKind(kind)) => {
                METRICS.bus_dropped.with_label_values(&["unknown_kind"]).inc();
                tracing::debug!(%kind, "event of a kind this version does not know dropped");
            }
            Err(e) => {
                METRICS.bus_dropped.with_label_values(&["undecodable"]).inc();
                tracing::warn!(error = %e, channel = %message.channel, "undecodable envelope dropped");
            }
        }
    }
}

/// After Redis comes back, subscribes again to every topic this node tracks: automatic
/// resubscription is not trusted alone.
async fn resubscribe_on_reconnect(bus: Arc<RedisBus>, shutdown: CancellationToken) {
    let mut reconnects = bus.redis.subscriber.reconnect_rx();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = reconnects.recv() => if r.is_err() { return },
        }
        let mut channels: Vec<String> = bus
            .subscribed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|t| channel(&bus.redis.prefix, t))
            .collect();
        channels.push(channel(&bus.redis.prefix, &Topic::All));
        let n = channels.len();
        match bus.redis.subscriber.subscribe(channels).await {
            Ok(()) => {
                METRICS.bus_resubscribes.inc();
                tracing::info!(channels = n, "resubscribed after reconnect");
                bus.sink.resumed().await;
            }
            Err(e) => tracing::warn!(error = %e, "resubscribe failed; retrying on next reconnect"),
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, delivery: Delivery) -> Result<(), BusError> {
        let started = Instant::now();
        let kind = delivery.event.kind_index();
        let span = if telemetry::enabled() && delivery.event.traced() {
            tracing::info_span!("bus.publish", kind = delivery.event.kind())
        } else {
            tracing::Span::none()
        };
        let envelope = Envelope {
            v: ENVELOPE_VERSION,
            origin: self.node_id.clone(),
            ts_ms: chrono::Utc::now().timestamp_millis(),
            trace: span.in_scope(telemetry::traceparent),
            delivery,
        };
        let bytes = envelope
            .encode()
            .map_err(|e| BusError::Unavailable(format!("cannot encode: {e}")))?;
        let name = channel(&self.redis.prefix, &envelope.delivery.topic);
        // Local sockets first: they do not wait for Redis, and still get the event without it.
        self.sink
            .deliver(Arc::new(envelope.delivery))
            .instrument(span.clone())
            .await;
        METRICS.fanout_local.observe(started.elapsed().as_secs_f64());
        let sent = Instant::now();
        let published = tokio::time::timeout(COMMAND_TIMEOUT, self.redis.client.publish::<i64, _, _>(name, bytes))
            .instrument(span)
            .await;
        self.publish_seconds.observe(sent.elapsed().as_secs_f64());
        match published {
            Ok(Ok(_)) => {
                if let Some(published) = METRICS.bus_published.get(kind) {
                    published.inc();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("publish timed out".into())),
        }
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let added = self
            .subscribed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.clone());
        if added {
            METRICS.bus_subscribed_topics.inc();
            let name = channel(&self.redis.prefix, topic);
            let done = tokio::time::timeout(COMMAND_TIMEOUT, self.redis.subscriber.subscribe(name)).await;
            if !matches!(done, Ok(Ok(()))) {
                // Kept in the tracked set: the reconnect task subscribes it when Redis is back.
                tracing::warn!(?topic, "subscribe failed; will retry after reconnect");
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let removed = self
            .subscribed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
        if removed {
            METRICS.bus_subscribed_topics.dec();
            let name = channel(&self.redis.prefix, topic);
            let done = tokio::time::timeout(COMMAND_TIMEOUT, self.redis.subscriber.unsubscribe(name)).await;
            if !matches!(done, Ok(Ok(()))) {
                tracing::debug!(?topic, "unsubscribe failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::tests::{Recorder, conformance};
    use crate::redis::test_server::TestRedis;
    use shared::Event;
    use shared::event::Direct;
    use std::time::Duration;

    #[tokio::test]
    async fn redis_bus_conforms_and_crosses_nodes_once() -> Result<(), Box<dyn std::error::Error>> {
        let server = TestRedis::start().await?;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let start = |node: &'static str, tx| {
            let url = server.url.clone();
            let (tasks, shutdown) = (tasks.clone(), shutdown.clone());
            async move {
                let redis = Redis::connect(&url, "bus", Duration::from_secs(5)).await?;
                let bus = RedisBus::start(redis, node.into(), Arc::new(Recorder(tx)), &tasks, shutdown).await?;
                Ok::<_, Box<dyn std::error::Error>>(bus)
            }
        };
        let (tx_a, mut rx_a) = tokio::sync::mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
        let a = start("a", tx_a).await?;
        let b = start("b", tx_b).await?;
        conformance(a.as_ref(), &mut rx_a).await;
        // b heard the conformance run's broadcast to everyone, once.
        let all = tokio::time::timeout(Duration::from_secs(2), rx_b.recv()).await?;
        assert_eq!(all.map(|d| d.topic.clone()), Some(Topic::All));

        // Node b hears node a's events on topics b subscribes to, once each; a hears its own once.
        let topic = Topic::Conversation("shared".into());
        a.subscribe(&topic).await?;
        b.subscribe(&topic).await?;
        let event = Event::Direct(Direct {
            event: "hello".into(),
            data: serde_json::json!({"n": 1}),
        });
        a.publish(Delivery::to(topic.clone(), event.clone())).await?;
        let got_b = tokio::time::timeout(Duration::from_secs(2), rx_b.recv()).await?;
        assert_eq!(got_b.map(|d| d.event.clone()), Some(event.clone()));
        let got_a = tokio::time::timeout(Duration::from_secs(2), rx_a.recv()).await?;
        assert_eq!(got_a.map(|d| d.event.clone()), Some(event));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx_a.try_recv().is_err() && rx_b.try_recv().is_err());
        shutdown.cancel();
        Ok(())
    }
}
