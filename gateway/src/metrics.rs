//! Every Prometheus metric of the node, registered here once and served at `/metrics`
//! (docs/observability.md lists them with their labels and meaning).
//!
//! Labels come from small fixed sets: never a user, conversation or connection id. The node id
//! is not a label either: Prometheus adds it as a target label (`instance`). Hot paths use
//! children resolved once (fields such as [`Metrics::fanout_remote`], or tables indexed like
//! [`Metrics::bus_published`]), never a label lookup per event.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, MetricFamily};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use shared::Event;
use shared::node::{ProtocolCounts, Totals};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Group-commit batch sizes.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The protocol a connection speaks, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Socket.IO over Engine.IO.
    SocketIo,
    /// Phoenix Channels over a WebSocket.
    Phoenix,
}

impl Protocol {
    /// Both protocols, in [`Protocol::index`] order.
    pub const ALL: [Protocol; 2] = [Protocol::SocketIo, Protocol::Phoenix];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::SocketIo => "socketio",
            Protocol::Phoenix => "phoenix",
        }
    }

    /// Position in [`Protocol::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a handshake was refused, as a label of `auth_failures_total`; a registration the domain
/// refused counts under its error code (`unavailable`, `internal`…).
pub const AUTH_CAUSES: &[&str] = &[
    "missing_token",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "no_user",
    "malformed",
    "no_expiry",
    "bad_claim",
    "bad_version",
];

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Process metrics (CPU, RSS, fds, threads) under their standard `process_` names.
    process: Registry,
    /// Work done at each scrape (gauges read from elsewhere), registered by the components.
    samplers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// Open connections by protocol and namespace (Socket.IO namespace, Phoenix `/socket`),
    /// kept by the hub.
    pub connections: IntGaugeVec,
    /// Connections opened (the namespace connected, the Phoenix socket registered), by protocol.
    pub connects: Vec<IntCounter>,
    /// Connections closed, by reason: one label set for both protocols,
    /// [`engineio::DisconnectReason::label`].
    pub disconnects: IntCounterVec,
    /// Handshakes refused, by protocol and cause ([`AUTH_CAUSES`]).
    pub auth_failures: IntCounterVec,
    /// Inbound events, by protocol and event (the command's verb; `unknown` otherwise).
    pub inbound_events: IntCounterVec,
    /// Time to handle an inbound event, from its turn in the connection's inbox to its
    /// answer written, by event.
    pub event_duration: HistogramVec,
    /// Inbound events answered with an error, by code.
    pub inbound_errors: IntCounterVec,
    /// Event frames written to connections (one per recipient socket).
    pub outbound_frames: IntCounter,
    /// Bytes of those frames.
    pub outbound_bytes: IntCounter,
    /// Frames not written because a connection's outbound queue was full.
    pub outbound_dropped: IntCounter,
    /// From publish on the origin node to the local write on this node, published here.
    pub fanout_local: Histogram,
    /// From publish on the origin node to the local write on this node, received from the bus
    /// (includes the clock difference between the two nodes).
    pub fanout_remote: Histogram,
    /// REST request duration by method, route template and status.
    pub http_duration: HistogramVec,
    /// Store operations by operation and result (`ok`, `error`, `unavailable`, `refused`).
    pub store_duration: HistogramVec,
    /// Messages per group-commit batch.
    pub store_batch_size: Histogram,
    /// 1 while a store's breaker refuses calls, by store.
    pub store_breaker_open: IntGaugeVec,
    /// Batches of message appends stored by the SQL store (one statement or transaction each).
    pub append_batches: IntCounter,
    /// Message appends those batches carried.
    pub appends_batched: IntCounter,
    /// Redis command latency by command (presence functions, `publish`).
    pub redis_duration: HistogramVec,
    /// 1 while a Redis connection is up, by client (`commands`, `subscriber`).
    pub redis_connected: IntGaugeVec,
    /// Events published on the bus, by kind ([`Event::KINDS`] order).
    pub bus_published: Vec<IntCounter>,
    /// Events received from other nodes, by kind ([`Event::KINDS`] order).
    pub bus_received: Vec<IntCounter>,
    /// Bus envelopes dropped, by reason.
    pub bus_dropped: IntCounterVec,
    /// From publish on the origin node to receipt here, before delivery.
    pub bus_lag: Histogram,
    /// Topics the bus is subscribed to.
    pub bus_subscribed_topics: IntGauge,
    /// Times the bus subscribed again to its topics after Redis came back.
    pub bus_resubscribes: IntCounter,
    /// Messages read from the store after the bus resumed (published while it was cut off).
    pub bus_recovered: IntCounter,
    /// Seconds since this node's last successful presence heartbeat.
    pub presence_heartbeat_age: Gauge,
    /// Unix time (ms) of the last successful presence heartbeat; 0 before the first.
    pub presence_heartbeat_ms: AtomicI64,
    /// Connections of dead nodes removed by this node's reaper.
    pub presence_reaped: IntCounter,
    /// Dead nodes this node claimed and reaped.
    pub presence_reaped_nodes: IntCounter,
    /// Live nodes in the cluster, as this node last read them.
    pub presence_nodes: IntGauge,
    /// Membership checks answered from the node's recent answers, without the database.
    pub membership_cache_hits: IntCounter,
    /// Always 1, with the version and git commit as labels.
    pub build_info: IntGaugeVec,
}

/// The metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Metric definitions are constants: a failure here is a typo caught by the first test run.
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, name: &str, made: Result<C, prometheus::Error>) -> C {
    let c = made.unwrap_or_else(|e| unreachable_metric(name, e));
    if let Err(e) = registry.register(Box::new(c.clone())) {
        unreachable_metric(name, e);
    }
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, name, IntCounter::new(name, help))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, name, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, name, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        r,
        name,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
    )
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, name, HistogramVec::new(opts, labels))
}

/// One child per label value, resolved now: what hot paths index.
fn children(family: &IntCounterVec, values: &[&str]) -> Vec<IntCounter> {
    values.iter().map(|v| family.with_label_values(&[v])).collect()
}

/// `outbound_dropped_total`: what the gateway counts (sheds by the hub), plus what the
/// `engineio` crate counts for full queues of its sockets, Socket.IO sessions and Phoenix's
/// plain WebSockets alike (it keeps its own count, knowing nothing of this registry).
fn outbound_dropped(registry: &Registry) -> IntCounter {
    let name = "outbound_dropped_total";
    let c = IntCounter::new(name, "Frames dropped because a connection's outbound queue was full")
        .unwrap_or_else(|e| unreachable_metric(name, e));
    if let Err(e) = registry.register(Box::new(WithEngineIo(c.clone()))) {
        unreachable_metric(name, e);
    }
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

impl Metrics {
    fn new() -> Self {
        let r = Registry::new_custom(Some("switchboard".into()), None).unwrap_or_default();
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        let _ = process.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        let protocols: Vec<&str> = Protocol::ALL.iter().map(|p| p.label()).collect();
        let connects = counter_vec(&r, "connects_total", "Connections opened, by protocol", &["protocol"]);
        let fanout = histogram_vec(
            &r,
            "fanout_latency_seconds",
            "From publish on the origin node to the local write on this node",
            &["origin"],
            LATENCY,
        );
        let published = counter_vec(
            &r,
            "bus_published_total",
            "Events published on the bus, by kind",
            &["kind"],
        );
        let received = counter_vec(
            &r,
            "bus_received_total",
            "Events received from other nodes, by kind",
            &["kind"],
        );
        let build_info = gauge_vec(
            &r,
            "build_info",
            "Always 1: the running version and git commit",
            &["version", "commit"],
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("SWITCHBOARD_GIT_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        // Counters of rare events exist at 0 from start-up, so that a rate() over them sees the
        // first one (a series that appears at 1 has no increase).
        let disconnects = counter_vec(&r, "disconnects_total", "Connections closed, by reason", &["reason"]);
        for reason in engineio::DisconnectReason::ALL {
            disconnects.with_label_values(&[reason.label()]);
        }
        let auth_failures = counter_vec(
            &r,
            "auth_failures_total",
            "Handshakes refused, by protocol and cause",
            &["protocol", "cause"],
        );
        for p in &protocols {
            for cause in AUTH_CAUSES {
                auth_failures.with_label_values(&[p, cause]);
            }
        }
        let bus_dropped = counter_vec(&r, "bus_dropped_total", "Bus envelopes dropped, by reason", &["reason"]);
        for reason in ["undecodable", "newer_version", "unknown_kind", "lagged"] {
            bus_dropped.with_label_values(&[reason]);
        }
        Self {
            connections: gauge_vec(
                &r,
                "connections",
                "Open connections, by protocol and namespace",
                &["protocol", "namespace"],
            ),
            connects: children(&connects, &protocols),
            disconnects,
            auth_failures,
            inbound_events: counter_vec(
                &r,
                "inbound_events_total",
                "Inbound events, by protocol and event",
                &["protocol", "event"],
            ),
            event_duration: histogram_vec(
                &r,
                "event_duration_seconds",
                "Inbound event handling time, by event",
                &["event"],
                LATENCY,
            ),
            inbound_errors: counter_vec(&r, "inbound_errors_total", "Inbound events refused, by code", &["code"]),
            outbound_frames: counter(&r, "outbound_frames_total", "Event frames written to connections"),
            outbound_bytes: counter(&r, "outbound_bytes_total", "Bytes of the event frames written"),
            outbound_dropped: outbound_dropped(&r),
            fanout_local: fanout.with_label_values(&["local"]),
            fanout_remote: fanout.with_label_values(&["remote"]),
            http_duration: histogram_vec(
                &r,
                "http_request_duration_seconds",
                "REST request duration, by method, route template and status",
                &["method", "route", "status"],
                LATENCY,
            ),
            store_duration: histogram_vec(
                &r,
                "store_operation_duration_seconds",
                "Store operations, by operation and result",
                &["operation", "result"],
                LATENCY,
            ),
            store_batch_size: histogram(&r, "store_append_batch_size", "Messages per group-commit batch", BATCH),
            store_breaker_open: gauge_vec(
                &r,
                "store_breaker_open",
                "1 while the store's breaker refuses calls",
                &["store"],
            ),
            append_batches: counter(
                &r,
                "store_append_batches_total",
                "Batches of message appends stored by the SQL store",
            ),
            appends_batched: counter(
                &r,
                "store_appends_batched_total",
                "Message appends carried by the SQL store's batches",
            ),
            redis_duration: histogram_vec(
                &r,
                "redis_command_duration_seconds",
                "Redis command latency, by command",
                &["command"],
                LATENCY,
            ),
            redis_connected: gauge_vec(&r, "redis_connected", "1 while the Redis connection is up", &["client"]),
            bus_published: children(&published, &Event::KINDS),
            bus_received: children(&received, &Event::KINDS),
            bus_dropped,
            bus_lag: histogram(
                &r,
                "bus_lag_seconds",
                "From publish on the origin node to receipt from the bus",
                LATENCY,
            ),
            bus_subscribed_topics: register(
                &r,
                "bus_subscribed_topics",
                IntGauge::new("bus_subscribed_topics", "Topics the bus is subscribed to"),
            ),
            bus_resubscribes: counter(&r, "bus_resubscribes_total", "Resubscriptions after Redis reconnected"),
            bus_recovered: counter(
                &r,
                "bus_recovered_total",
                "Messages read from the store after the bus resumed, published while it was cut off",
            ),
            presence_heartbeat_age: register(
                &r,
                "presence_heartbeat_age_seconds",
                Gauge::new(
                    "presence_heartbeat_age_seconds",
                    "Seconds since the node's last successful presence heartbeat",
                ),
            ),
            presence_heartbeat_ms: AtomicI64::new(0),
            presence_reaped: counter(
                &r,
                "presence_reaped_total",
                "Connections of dead nodes reaped by this node",
            ),
            presence_reaped_nodes: counter(
                &r,
                "presence_reaped_nodes_total",
                "Dead nodes claimed and reaped by this node",
            ),
            presence_nodes: register(
                &r,
                "presence_nodes",
                IntGauge::new("presence_nodes", "Live nodes in the cluster, as last read"),
            ),
            membership_cache_hits: counter(
                &r,
                "membership_cache_hits_total",
                "Membership checks answered without the database",
            ),
            build_info,
            registry: r,
            process,
            samplers: Mutex::default(),
        }
    }

    /// Runs `sample` before each scrape (a gauge read from a component's own state).
    pub fn on_scrape(&self, sample: impl Fn() + Send + Sync + 'static) {
        self.samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(sample));
    }

    /// A refused handshake.
    pub fn auth_failed(&self, protocol: Protocol, cause: &str) {
        self.auth_failures.with_label_values(&[protocol.label(), cause]).inc();
    }

    /// A refused token, by [`AUTH_CAUSES`].
    pub fn token_refused(&self, protocol: Protocol, e: &crate::auth::AuthError) {
        use crate::auth::AuthError;
        let cause = match e {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::NoUser(_) => "no_user",
            AuthError::Malformed => "malformed",
            AuthError::NoExpiry => "no_expiry",
            AuthError::BadClaim(..) => "bad_claim",
        };
        self.auth_failed(protocol, cause);
    }

    /// A successful presence heartbeat, now.
    pub fn heartbeat_done(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        self.presence_heartbeat_ms.store(now, Ordering::Relaxed);
    }

    /// Observes a latency measured from a publish time in ms since the Unix epoch (another
    /// node's clock: a negative difference counts as 0).
    pub fn observe_since_ms(histogram: &Histogram, ts_ms: i64) {
        let ms = chrono::Utc::now().timestamp_millis().saturating_sub(ts_ms).max(0);
        histogram.observe(ms as f64 / 1000.0);
    }

    /// The node's running totals and open connections, for its report to the cluster.
    pub fn totals(&self) -> (ProtocolCounts, Totals) {
        let families = self.connections.collect();
        let open = |p: Protocol| -> u64 {
            families
                .iter()
                .flat_map(|f| f.get_metric())
                .filter(|m| m.get_label().iter().any(|l| l.value() == p.label()))
                .map(|m| m.get_gauge().get_value().max(0.0) as u64)
                .sum()
        };
        let sum_vec = |v: &IntCounterVec| -> u64 {
            v.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        };
        let sum = |v: &[IntCounter]| v.iter().map(IntCounter::get).sum::<u64>();
        let counts = ProtocolCounts {
            socketio: open(Protocol::SocketIo),
            phoenix: open(Protocol::Phoenix),
        };
        let totals = Totals {
            connects: sum(&self.connects),
            disconnects: sum_vec(&self.disconnects),
            events_in: sum_vec(&self.inbound_events),
            frames_out: self.outbound_frames.get(),
            published: sum(&self.bus_published),
            received: sum(&self.bus_received),
            drops: self.outbound_dropped.get() + sum_vec(&self.bus_dropped),
        };
        (counts, totals)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for sample in self.samplers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            sample();
        }
        let last = self.presence_heartbeat_ms.load(Ordering::Relaxed);
        if last > 0 {
            let age = chrono::Utc::now().timestamp_millis().saturating_sub(last).max(0);
            self.presence_heartbeat_age.set(age as f64 / 1000.0);
        }
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_prefix() {
        METRICS.bus_published[0].inc();
        METRICS.disconnects.with_label_values(&["transport_close"]).inc();
        let text = METRICS.render();
        assert!(
            text.contains("switchboard_bus_published_total{kind=\"member_joined\"}"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_disconnects_total{reason=\"transport_close\"}"),
            "{text}"
        );
        assert!(text.contains("switchboard_build_info{commit="), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }

    /// Every metric family the node registers is documented in docs/observability.md.
    #[test]
    fn every_metric_is_documented() {
        let docs = include_str!("../../docs/observability.md");
        for family in METRICS.registry.gather() {
            let name = family.name();
            assert!(
                docs.contains(&format!("`{name}")),
                "{name} missing from docs/observability.md"
            );
        }
    }

    /// One label set for both protocols, and every label of it documented where the metrics
    /// are listed: a new reason cannot reach the metric undocumented.
    #[test]
    fn every_disconnect_reason_is_documented() {
        let docs = include_str!("../../docs/observability.md");
        let row = docs
            .lines()
            .find(|l| l.starts_with("| `switchboard_disconnects_total`"))
            .unwrap_or_default();
        for reason in engineio::DisconnectReason::ALL {
            let label = format!("`{}`", reason.label());
            assert!(row.contains(&label), "{label} missing from docs/observability.md");
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
