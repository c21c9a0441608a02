//! What the driver prints: one JSON line per measured step on stdout, and their shapes.

use crate::stats::{Shared, lock};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

pub fn latency_ms(h: &Histogram<u64>) -> Latency {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        count: h.len(),
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub clients: usize,
    pub connected: usize,
    pub failed: usize,
    pub seconds: f64,
    pub per_s: f64,
    pub handshake_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    pub pid: u32,
    pub connections: usize,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    pub rss_bytes_per_connection: f64,
}

#[derive(Debug, Serialize)]
pub struct NodeCpu {
    pub pid: u32,
    pub cpu_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub label: String,
    pub mode: &'static str,
    pub nodes: usize,
    pub clients: usize,
    pub rooms: usize,
    pub connect: ConnectReport,
    pub joined: usize,
    pub join_failed: usize,
    pub join_refusals: usize,
    pub first_join_refusal: Option<String>,
    pub join_s: f64,
    pub rate_msgs_per_s: f64,
    pub duration_s: f64,
    pub offered_deliveries_per_s: f64,
    pub published: u64,
    pub publish_failed: u64,
    pub publish_max_lag_ms: f64,
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub lost_deliveries: i64,
    pub lost_connections: usize,
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    /// Deliveries to clients connected to the node that took the POST (no Redis hop).
    pub latency_on_post_node_ms: Latency,
    /// Deliveries to clients on other nodes (through Redis).
    pub latency_on_other_nodes_ms: Latency,
    /// Per message: its first delivery (HTTP, bus, first socket) and its last one; the
    /// difference is the time one message takes to reach every member of its room.
    pub first_delivery_ms: Latency,
    pub last_delivery_ms: Latency,
    /// Highest delivery latency received in each second of the window (and its drain), ms.
    pub max_latency_ms_by_second: Vec<f64>,
    pub post_latency_ms: Option<Latency>,
    pub server_cpu: Vec<NodeCpu>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub redis_cpu_us_per_delivery: Option<f64>,
    pub driver_cpu_us_per_delivery: f64,
    /// Every process and kernel thread of the machine over the window, per delivery (the
    /// all-in cost when the machine runs nothing else).
    pub machine_cpu_us_per_delivery: f64,
    /// Share of the machine's CPUs busy over the window, and in softirq (network) alone.
    pub machine_busy_pct: f64,
    pub machine_softirq_pct: f64,
    pub memory_after_join: Vec<NodeMemory>,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ConnectModeReport {
    pub label: String,
    pub mode: &'static str,
    pub nodes: usize,
    pub connect: ConnectReport,
    pub lost_connections: usize,
    pub hold_s: f64,
    pub memory: Vec<NodeMemory>,
    pub rss_bytes_per_connection: Option<f64>,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub first_error: Option<String>,
}

pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub fn connect_report(shared: &Shared, clients: usize, took: Duration) -> ConnectReport {
    let connected = shared.connected.load(Ordering::Relaxed);
    ConnectReport {
        clients,
        connected,
        failed: shared.connect_failed.load(Ordering::Relaxed),
        seconds: secs(took),
        per_s: (connected as f64 / took.as_secs_f64()).round(),
        handshake_ms: latency_ms(&lock(&shared.connect_latency)),
    }
}

pub fn emit_json<T: Serialize>(report: &T) -> Result<()> {
    println!("{}", serde_json::to_string(report).context("serialise report")?);
    Ok(())
}

impl ConnectModeReport {
    /// The human summary on stderr.
    pub fn print_summary(&self) {
        for m in &self.memory {
            eprintln!(
                "node pid {}: {} connections, RSS {} → {} KiB: {:.0} B per idle connection",
                m.pid, m.connections, m.rss_kib_before, m.rss_kib_after, m.rss_bytes_per_connection
            );
        }
    }
}

impl StepReport {
    /// The human summary on stderr; `avg_members` is the clients joined per room.
    pub fn print_summary(&self, rate: f64, avg_members: f64) {
        eprintln!(
            "rate {rate} msg/s × {avg_members:.0} = {:.0} offered/s: {:.0} deliveries/s; latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; lost {}; server CPU {} µs/delivery; driver {} µs/delivery; machine {} µs/delivery, {}% busy",
            self.offered_deliveries_per_s,
            self.deliveries_per_s,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
            self.lost_deliveries,
            self.server_cpu_us_per_delivery
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}")),
            self.driver_cpu_us_per_delivery,
            self.machine_cpu_us_per_delivery,
            self.machine_busy_pct,
        );
        eprintln!(
            "  same node p50/p99 {:.1}/{:.1} ms, other node {:.1}/{:.1} ms; per message: first delivery p50 {:.1} ms, last delivery p50 {:.1} ms (p99 {:.1})",
            self.latency_on_post_node_ms.p50,
            self.latency_on_post_node_ms.p99,
            self.latency_on_other_nodes_ms.p50,
            self.latency_on_other_nodes_ms.p99,
            self.first_delivery_ms.p50,
            self.last_delivery_ms.p50,
            self.last_delivery_ms.p99,
        );
        eprintln!(
            "  max latency by second (ms): {}",
            self.max_latency_ms_by_second
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}
