//! What every connection task shares with the main task: counters, latency histograms and
//! the per-message first/last delivery times.

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Latency histograms are sharded by connection to keep lock contention negligible.
pub const SHARDS: usize = 16;
/// Highest latency the histograms hold, in µs (larger values are clamped).
pub const HIST_MAX_US: u64 = 300_000_000;
/// Messages whose first and last delivery are tracked (by seq modulo this).
const RING: usize = 1 << 17;
/// Seconds of the per-second latency series.
const SERIES_SECONDS: usize = 600;

/// What every connection task shares with the main task.
pub struct Shared {
    pub start: Instant,
    pub connected: AtomicUsize,
    pub connect_failed: AtomicUsize,
    pub joined: AtomicUsize,
    pub join_failed: AtomicUsize,
    pub lost_connections: AtomicUsize,
    pub join_refusals: AtomicUsize,
    /// Clients whose join was acknowledged, per room.
    pub room_members: Vec<AtomicU64>,
    pub received: AtomicU64,
    /// Per shard: deliveries to clients on the node that took the POST, and on other nodes.
    pub latency: Vec<Mutex<[Histogram<u64>; 2]>>,
    /// Per message (seq mod RING): latency of its first and of its last delivery.
    pub first: Vec<AtomicU64>,
    pub last: Vec<AtomicU64>,
    /// Highest latency of the deliveries received in each second of the measured window.
    pub max_by_second: Vec<AtomicU64>,
    pub series_origin_us: AtomicU64,
    pub rooms: u64,
    pub nodes: u64,
    pub connect_latency: Mutex<Histogram<u64>>,
    pub first_error: Mutex<Option<String>>,
    pub first_join_refusal: Mutex<Option<String>>,
    pub join_gate: Arc<Semaphore>,
}

pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(rooms: usize, nodes: usize, join_concurrency: usize) -> Result<Self> {
        Ok(Self {
            start: Instant::now(),
            connected: AtomicUsize::new(0),
            connect_failed: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            join_failed: AtomicUsize::new(0),
            lost_connections: AtomicUsize::new(0),
            join_refusals: AtomicUsize::new(0),
            room_members: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            latency: (0..SHARDS)
                .map(|_| Ok(Mutex::new([histogram()?, histogram()?])))
                .collect::<Result<_>>()?,
            first: (0..RING).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last: (0..RING).map(|_| AtomicU64::new(0)).collect(),
            max_by_second: (0..SERIES_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            series_origin_us: AtomicU64::new(u64::MAX),
            rooms: rooms as u64,
            nodes: nodes as u64,
            connect_latency: Mutex::new(histogram()?),
            first_error: Mutex::new(None),
            first_join_refusal: Mutex::new(None),
            join_gate: Arc::new(Semaphore::new(join_concurrency.max(1))),
        })
    }

    /// Microseconds since the driver started, on the monotonic clock.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// One delivery of message `seq` to a client on node `node`.
    pub fn record(&self, shard: usize, node: usize, seq: u64, now_us: u64, latency_us: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let latency_us = latency_us.clamp(1, HIST_MAX_US);
        let second = (now_us.saturating_sub(self.series_origin_us.load(Ordering::Relaxed)) / 1_000_000) as usize;
        if let Some(max) = self.max_by_second.get(second) {
            max.fetch_max(latency_us, Ordering::Relaxed);
        }
        let origin = (seq / self.rooms) % self.nodes;
        let remote = usize::from(origin != node as u64);
        lock(&self.latency[shard % SHARDS])[remote].saturating_record(latency_us);
        let slot = (seq % RING as u64) as usize;
        self.first[slot].fetch_min(latency_us, Ordering::Relaxed);
        self.last[slot].fetch_max(latency_us, Ordering::Relaxed);
    }

    pub fn reset_latency(&self) {
        for max in &self.max_by_second {
            max.store(0, Ordering::Relaxed);
        }
        self.series_origin_us.store(self.now_us(), Ordering::Relaxed);
        for h in &self.latency {
            let mut h = lock(h);
            h[0].reset();
            h[1].reset();
        }
    }

    pub fn reset_spread(&self, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            let slot = (seq % RING as u64) as usize;
            self.first[slot].store(u64::MAX, Ordering::Relaxed);
            self.last[slot].store(0, Ordering::Relaxed);
        }
    }

    /// All deliveries, those on the POST's node, those on other nodes.
    pub fn merged_latency(&self) -> Result<[Histogram<u64>; 3]> {
        let mut out = [histogram()?, histogram()?, histogram()?];
        for h in &self.latency {
            let h = lock(h);
            for (i, part) in h.iter().enumerate() {
                out[0].add(part).map_err(|e| anyhow!("histogram merge: {e}"))?;
                out[i + 1].add(part).map_err(|e| anyhow!("histogram merge: {e}"))?;
            }
        }
        Ok(out)
    }

    /// The per-second maxima, in ms, up to the last second that received anything.
    pub fn max_by_second(&self) -> Vec<f64> {
        let all: Vec<u64> = self.max_by_second.iter().map(|m| m.load(Ordering::Relaxed)).collect();
        let end = all.iter().rposition(|&m| m > 0).map_or(0, |i| i + 1);
        all[..end]
            .iter()
            .map(|&us| (us as f64 / 100.0).round() / 10.0)
            .collect()
    }

    /// Per message of `seqs`: latency of its first delivery and of its last one.
    pub fn spread(&self, seqs: std::ops::Range<u64>) -> Result<[Histogram<u64>; 2]> {
        let mut out = [histogram()?, histogram()?];
        for seq in seqs {
            let slot = (seq % RING as u64) as usize;
            let first = self.first[slot].load(Ordering::Relaxed);
            let last = self.last[slot].load(Ordering::Relaxed);
            if first != u64::MAX {
                out[0].saturating_record(first);
                out[1].saturating_record(last);
            }
        }
        Ok(out)
    }

    pub fn note_error(&self, e: &anyhow::Error) {
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }
}
