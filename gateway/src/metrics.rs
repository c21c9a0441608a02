//! Every Prometheus metric of the node, registered here once and served at `/metrics`.
//! Labels come from small fixed sets: never a user, conversation or connection id.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, MetricFamily};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::LazyLock;

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open Socket.IO connections (one per namespace socket).
    pub connections: IntGauge,
    /// Open Phoenix sockets.
    pub phoenix_connections: IntGauge,
    /// Connections closed, by reason: one label set for both protocols,
    /// [`engineio::DisconnectReason::label`] (`transport_close`, `transport_error`,
    /// `heartbeat_timeout`, `idle_timeout`, `client_close`, `server_close`, `slow_consumer`,
    /// `message_too_big`, `draining`).
    pub disconnects: IntCounterVec,
    /// Frames not written because a connection's outbound queue was full.
    pub outbound_dropped: IntCounter,
    /// Inbound events answered with an error, by code.
    pub inbound_errors: IntCounterVec,
    /// Events published on the bus.
    pub bus_published: IntCounter,
    /// Events received from other nodes.
    pub bus_received: IntCounter,
    /// Bus envelopes dropped: undecodable, of another version, or lost by a lagging receiver.
    pub bus_dropped: IntCounter,
    /// Times the bus subscribed again to its topics after Redis came back.
    pub bus_resubscribes: IntCounter,
    /// Messages read from the store after the bus resumed (published while it was cut off).
    pub bus_recovered: IntCounter,
    /// Connections of dead nodes removed by this node's reaper.
    pub presence_reaped: IntCounter,
    /// Batches of message appends stored by the SQL store (one statement or transaction each).
    pub append_batches: IntCounter,
    /// Message appends those batches carried (divided by the batches: the mean batch size).
    pub appends_batched: IntCounter,
    /// Membership checks answered from the node's recent answers, without the database.
    pub membership_cache_hits: IntCounter,
}

/// The metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    c
}

/// `outbound_dropped_total`: what the gateway counts (sheds by the hub), plus what the
/// `engineio` crate counts for full queues of its sockets, Socket.IO sessions and Phoenix's
/// plain WebSockets alike (it keeps its own count, knowing nothing of this registry).
fn outbound_dropped(registry: &Registry) -> IntCounter {
    let name = "outbound_dropped_total";
    let c = IntCounter::new(name, "Frames dropped because a connection's outbound queue was full")
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(WithEngineIo(c.clone())));
    c
}

struct WithEngineIo(IntCounter);

impl Collector for WithEngineIo {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        // A count below 2^53: exact as f64.
        let engine = engineio::stats::outbound_dropped() as f64;
        for metric in families.iter_mut().flat_map(MetricFamily::mut_metric) {
            let mut counter = Counter::default();
            counter.set_value(metric.get_counter().get_value() + engine);
            metric.set_counter(counter);
        }
        families
    }
}

/// Metric definitions are constants: a failure here is a typo caught by the first test run.
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("switchboard".into()), None).unwrap_or_default();
        let connections = IntGauge::new("connections", "Open Socket.IO connections")
            .unwrap_or_else(|e| unreachable_metric("connections", e));
        let _ = registry.register(Box::new(connections.clone()));
        let phoenix_connections = IntGauge::new("phoenix_connections", "Open Phoenix sockets")
            .unwrap_or_else(|e| unreachable_metric("phoenix_connections", e));
        let _ = registry.register(Box::new(phoenix_connections.clone()));
        Self {
            connections,
            phoenix_connections,
            disconnects: counter_vec(
                &registry,
                "disconnects_total",
                "Connections closed, by reason",
                "reason",
            ),
            outbound_dropped: outbound_dropped(&registry),
            inbound_errors: counter_vec(
                &registry,
                "inbound_errors_total",
                "Inbound events refused, by code",
                "code",
            ),
            bus_published: counter(&registry, "bus_published_total", "Events published on the bus"),
            bus_received: counter(&registry, "bus_received_total", "Events received from other nodes"),
            bus_dropped: counter(&registry, "bus_dropped_total", "Bus envelopes dropped"),
            bus_resubscribes: counter(
                &registry,
                "bus_resubscribes_total",
                "Resubscriptions after Redis reconnected",
            ),
            bus_recovered: counter(
                &registry,
                "bus_recovered_total",
                "Messages read from the store after the bus resumed, published while it was cut off",
            ),
            presence_reaped: counter(
                &registry,
                "presence_reaped_total",
                "Connections of dead nodes reaped by this node",
            ),
            append_batches: counter(
                &registry,
                "store_append_batches_total",
                "Batches of message appends stored by the SQL store",
            ),
            appends_batched: counter(
                &registry,
                "store_appends_batched_total",
                "Message appends carried by the SQL store's batches",
            ),
            membership_cache_hits: counter(
                &registry,
                "membership_cache_hits_total",
                "Membership checks answered without the database",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_prefix() {
        METRICS.bus_published.inc();
        METRICS.disconnects.with_label_values(&["transport_close"]).inc();
        let text = METRICS.render();
        assert!(text.contains("switchboard_bus_published_total"), "{text}");
        assert!(
            text.contains("switchboard_disconnects_total{reason=\"transport_close\"}"),
            "{text}"
        );
    }

    /// One label set for both protocols, and every label of it documented where the metrics
    /// are listed: a new reason cannot reach the metric undocumented.
    #[test]
    fn every_disconnect_reason_is_documented() {
        let docs = include_str!("../../docs/cluster.md");
        let row = docs
            .lines()
            .find(|l| l.starts_with("| `switchboard_disconnects_total{reason}`"))
            .unwrap_or_default();
        for reason in engineio::DisconnectReason::ALL {
            let label = format!("`{}`", reason.label());
            assert!(row.contains(&label), "{label} missing from docs/cluster.md");
        }
        let engine_docs = include_str!("../../docs/engineio.md");
        for reason in engineio::DisconnectReason::ALL {
            assert!(
                engine_docs.contains(&format!("| `{}` |", reason.label())),
                "{} missing from docs/engineio.md",
                reason.label()
            );
        }
    }
}
