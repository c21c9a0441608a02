//! `fanout`: the Switchboard fan-out benchmark driver.
//!
//! Opens N Socket.IO clients (Engine.IO v4 over raw WebSocket) spread round-robin over the
//! nodes, joins them to R rooms, publishes through `POST /api/conversations/:id/emit` at a
//! fixed rate on alternating nodes, and measures each delivery's latency: receive time minus
//! the send time carried in the payload (one process, one monotonic clock).
//!
//! Prints one JSON line per measured step on stdout and a human summary on stderr. With
//! `--server-pids` it also samples the nodes' RSS (`VmRSS`) and CPU time (`utime + stime`)
//! at the exact phase boundaries it controls.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Latency histograms are sharded by connection to keep lock contention negligible.
const SHARDS: usize = 16;
/// Highest latency the histograms hold, in µs (larger values are clamped).
const HIST_MAX_US: u64 = 300_000_000;
/// The frame prefix of a benchmark delivery.
const BENCH_PREFIX: &str = "42[\"bench\",";
/// Messages whose first and last delivery are tracked (by seq modulo this).
const RING: usize = 1 << 17;
/// Seconds of the per-second latency series.
const SERIES_SECONDS: usize = 600;
/// The driver's own WebSocket read buffer: small, it holds thousands of connections.
const WS_READ_BUFFER: usize = 4096;
/// How many times a client asks to join before giving up.
const JOIN_ATTEMPTS: u32 = 10;
/// Pause before asking again after a refused join.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Connect, join rooms, publish at one or more rates, measure deliveries and latency.
    Fanout,
    /// Connect N idle clients: connects/s, then RSS per idle connection on each node.
    Connect,
}

/// Switchboard fan-out benchmark driver.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Node base URLs, comma-separated (http://127.0.0.1:PORT); clients go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// HS256 secret the nodes verify tokens with.
    #[arg(long)]
    jwt_secret: String,
    /// Server API key for the REST emit.
    #[arg(long)]
    api_key: String,
    /// What to run.
    #[arg(long, value_enum, default_value = "fanout")]
    mode: Mode,
    /// Number of clients.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Number of rooms; client i joins room i mod R.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Published messages per second over all rooms; a comma-separated list runs one step per
    /// rate on the same connections (a saturation ramp).
    #[arg(long, value_delimiter = ',', default_value = "50")]
    rate: Vec<f64>,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds published before each step's measurement starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Joins in flight at once (each waits for its ack).
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
    /// POSTs in flight at most; the publisher falls behind its schedule beyond that.
    #[arg(long, default_value_t = 256)]
    max_inflight_posts: usize,
    /// Node PIDs, in the order of --nodes, for RSS and CPU accounting (same host only).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// The Redis server's PID: its CPU is reported beside the nodes', and waited on to go quiet.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Connect mode: seconds to hold the idle connections before reading RSS.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Longest wait for the nodes to go quiet after connecting/joining, in seconds.
    #[arg(long, default_value_t = 60.0)]
    quiet_timeout: f64,
    /// Stop a rate ramp when deliveries/s grew by less than this fraction over the previous
    /// step, or when p99 exceeds --max-p99-ms.
    #[arg(long, default_value_t = false)]
    stop_when_saturated: bool,
    /// Growth below which a ramp counts as saturated.
    #[arg(long, default_value_t = 0.03)]
    min_growth: f64,
    /// p99 above which a ramp counts as saturated, in ms.
    #[arg(long, default_value_t = 1000.0)]
    max_p99_ms: f64,
    /// Seconds a step waits at most for late deliveries after publishing ends.
    #[arg(long, default_value_t = 15.0)]
    drain_timeout: f64,
    /// Prefix of room ids (room i is PREFIX-i).
    #[arg(long, default_value = "bench")]
    room_prefix: String,
    /// Free-form label copied into the JSON output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Join,
    Quit,
}

/// What every connection task shares with the main task.
struct Shared {
    start: Instant,
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    joined: AtomicUsize,
    join_failed: AtomicUsize,
    lost_connections: AtomicUsize,
    join_refusals: AtomicUsize,
    /// Clients whose join was acknowledged, per room.
    room_members: Vec<AtomicU64>,
    received: AtomicU64,
    /// Per shard: deliveries to clients on the node that took the POST, and on other nodes.
    latency: Vec<Mutex<[Histogram<u64>; 2]>>,
    /// Per message (seq mod RING): latency of its first and of its last delivery.
    first: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    /// Highest latency of the deliveries received in each second of the measured window.
    max_by_second: Vec<AtomicU64>,
    series_origin_us: AtomicU64,
    rooms: u64,
    nodes: u64,
    connect_latency: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    first_join_refusal: Mutex<Option<String>>,
    join_gate: Arc<Semaphore>,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(rooms: usize, nodes: usize, join_concurrency: usize) -> Result<Self> {
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
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// One delivery of message `seq` to a client on node `node`.
    fn record(&self, shard: usize, node: usize, seq: u64, now_us: u64, latency_us: u64) {
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

    fn reset_latency(&self) {
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

    fn reset_spread(&self, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            let slot = (seq % RING as u64) as usize;
            self.first[slot].store(u64::MAX, Ordering::Relaxed);
            self.last[slot].store(0, Ordering::Relaxed);
        }
    }

    /// All deliveries, those on the POST's node, those on other nodes.
    fn merged_latency(&self) -> Result<[Histogram<u64>; 3]> {
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
    fn max_by_second(&self) -> Vec<f64> {
        let all: Vec<u64> = self.max_by_second.iter().map(|m| m.load(Ordering::Relaxed)).collect();
        let end = all.iter().rposition(|&m| m > 0).map_or(0, |i| i + 1);
        all[..end]
            .iter()
            .map(|&us| (us as f64 / 100.0).round() / 10.0)
            .collect()
    }

    /// Per message of `seqs`: latency of its first delivery and of its last one.
    fn spread(&self, seqs: std::ops::Range<u64>) -> Result<[Histogram<u64>; 2]> {
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

    fn note_error(&self, e: &anyhow::Error) {
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }
}

/// One client: which node, which room, which token.
struct ClientSpec {
    id: usize,
    node: usize,
    url: String,
    token: String,
    /// The room's index and id.
    room: Option<(usize, String)>,
}

/// How far a client got, to count a failure in the right place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Connected,
    Joining,
    Joined,
}

async fn run_client(spec: ClientSpec, shared: Arc<Shared>, phase: watch::Receiver<Phase>, gate: Arc<Semaphore>) {
    let mut stage = Stage::Connecting;
    if let Err(e) = session(&spec, &shared, phase, &gate, &mut stage).await {
        shared.note_error(&e);
        let counter = match stage {
            Stage::Connecting => &shared.connect_failed,
            Stage::Joining => &shared.join_failed,
            Stage::Connected | Stage::Joined => &shared.lost_connections,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame; pings are answered on the way.
async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            None => bail!("connection closed by the server"),
            Some(m) => match m.context("websocket read")? {
                Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.context("pong")?,
                Message::Text(t) => return Ok(t.as_str().to_owned()),
                Message::Close(_) => bail!("connection closed by the server"),
                _ => {}
            },
        }
    }
}

/// The unsigned integer right after `key` in `s`.
fn field_u64(s: &str, key: &str) -> Option<u64> {
    let at = s.find(key)? + key.len();
    let digits = &s.as_bytes()[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &digits[..end] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

async fn session(
    spec: &ClientSpec,
    shared: &Shared,
    mut phase: watch::Receiver<Phase>,
    gate: &Semaphore,
    stage: &mut Stage,
) -> Result<()> {
    let permit = gate.acquire().await.context("connect gate closed")?;
    let began = Instant::now();
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(spec.url.as_str(), Some(config), true)
        .await
        .context("websocket connect")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with("0{") {
        bail!("expected an Engine.IO open packet, got {open:.60}");
    }
    ws.send(Message::text(format!("40{{\"token\":\"{}\"}}", spec.token)))
        .await
        .context("send connect")?;
    loop {
        let frame = next_text(&mut ws).await?;
        if frame.starts_with("40") {
            break;
        }
        if frame.starts_with("44") {
            bail!("connect refused: {frame:.200}");
        }
    }
    drop(permit);
    let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
    lock(&shared.connect_latency).saturating_record(took.clamp(1, HIST_MAX_US));
    shared.connected.fetch_add(1, Ordering::Relaxed);
    *stage = Stage::Connected;

    let shard = spec.id % SHARDS;
    let join = spec
        .room
        .as_ref()
        .map(|(_, room)| format!("421[\"room:join\",{{\"roomId\":\"{room}\"}}]"));
    // Joins pass a gate (a bounded number in flight); a refused join is asked again after a
    // pause on the same connection, and a client refused every time stays connected but out
    // of its room (counted in `join_failed`).
    let mut attempts = 0u32;
    let mut want_join = false;
    let mut in_flight: Option<OwnedSemaphorePermit> = None;
    let retry = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(retry);
    let mut retry_armed = false;
    loop {
        tokio::select! {
            frame = ws.next() => {
                let message = match frame {
                    None => bail!("connection closed by the server"),
                    Some(m) => m.context("websocket read")?,
                };
                let text = match message {
                    Message::Text(t) => t,
                    Message::Close(_) => bail!("connection closed by the server"),
                    _ => continue,
                };
                let s = text.as_str();
                if let Some(rest) = s.strip_prefix(BENCH_PREFIX) {
                    let now = shared.now_us();
                    if let (Some(sent), Some(seq)) = (field_u64(rest, "\"t\":"), field_u64(rest, "\"seq\":")) {
                        shared.record(shard, spec.node, seq, now, now.saturating_sub(sent));
                    }
                } else if s == "2" {
                    ws.send(Message::text("3")).await.context("pong")?;
                } else if let Some(ack) = s.strip_prefix("431[") {
                    in_flight = None;
                    if ack.starts_with("{\"success\":true") {
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                        if let Some((room, _)) = &spec.room {
                            shared.room_members[*room].fetch_add(1, Ordering::Relaxed);
                        }
                        *stage = Stage::Joined;
                    } else {
                        shared.join_refusals.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut first = lock(&shared.first_join_refusal);
                            if first.is_none() {
                                *first = Some(s.chars().take(300).collect());
                            }
                        }
                        if attempts >= JOIN_ATTEMPTS {
                            shared.join_failed.fetch_add(1, Ordering::Relaxed);
                            *stage = Stage::Connected;
                        } else {
                            retry.as_mut().reset(tokio::time::Instant::now() + JOIN_RETRY_PAUSE);
                            retry_armed = true;
                        }
                    }
                } else if s.starts_with("41") {
                    bail!("disconnected by the server: {s:.200}");
                }
            }
            permit = shared.join_gate.clone().acquire_owned(), if want_join && in_flight.is_none() => {
                want_join = false;
                let permit = permit.context("join gate closed")?;
                if let Some(join) = &join {
                    attempts += 1;
                    *stage = Stage::Joining;
                    ws.send(Message::text(join.as_str())).await.context("send join")?;
                    in_flight = Some(permit);
                }
            }
            () = &mut retry, if retry_armed => {
                retry_armed = false;
                want_join = true;
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Quit => return Ok(()),
                    Phase::Join if *stage == Stage::Connected && attempts == 0 && join.is_some() => want_join = true,
                    Phase::Join | Phase::Connect => {}
                }
            }
        }
    }
}

/// A node process on this host.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: u32,
}

impl Proc {
    fn rss_kib(self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("read /proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS for pid {}", self.pid))
    }

    /// utime + stime, in clock ticks.
    fn cpu_ticks(self) -> Result<u64> {
        cpu_ticks_of(&format!("/proc/{}/stat", self.pid))
    }
}

fn cpu_ticks_of(path: &str) -> Result<u64> {
    loadtest::cpu_ticks(path).ok_or_else(|| anyhow!("cannot read CPU time from {path}"))
}

use loadtest::clock_ticks_per_s;

/// The machine's CPU time from the `cpu` line of /proc/stat, in clock ticks: (busy, softirq,
/// total), all CPUs. Busy counts everything but idle and iowait, kernel threads included
/// (ksoftirqd takes over network receive work under load).
#[derive(Debug, Clone, Copy, Default)]
struct MachineCpu {
    busy: u64,
    softirq: u64,
    total: u64,
}

fn machine_cpu() -> MachineCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return MachineCpu::default();
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    MachineCpu {
        busy: total - get(3) - get(4),
        softirq: get(6),
        total,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Posts events to the nodes' REST emit.
struct Publisher {
    http: Client<HttpConnector, Full<Bytes>>,
    nodes: Vec<String>,
    api_key: String,
    rooms: Vec<String>,
}

#[derive(Debug, Default)]
struct Published {
    sent: u64,
    failed: u64,
    expected: u64,
    post_latency: Option<Histogram<u64>>,
    max_lag_us: u64,
    first_error: Option<String>,
}

impl Publisher {
    /// One POST: which room it went to, and whether the node accepted it.
    async fn post(&self, shared: &Shared, seq: u64) -> (usize, Result<u64>) {
        let rooms = self.rooms.len() as u64;
        let room = (seq % rooms) as usize;
        let node = ((seq / rooms) % self.nodes.len() as u64) as usize;
        let uri = format!("{}/api/conversations/{}/emit", self.nodes[node], self.rooms[room]);
        let sent = shared.now_us();
        let body = format!("{{\"event\":\"bench\",\"data\":{{\"t\":{sent},\"seq\":{seq}}}}}");
        let request = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("x-api-key", &self.api_key)
            .body(Full::new(Bytes::from(body)));
        let result = async {
            let request = request.context("build request")?;
            let response = self.http.request(request).await.context("POST emit")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("read response")?
                .to_bytes();
            if !status.is_success() {
                bail!("emit answered {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(shared.now_us().saturating_sub(sent))
        }
        .await;
        (room, result)
    }

    /// Publishes `count` messages at `rate`/s starting at seq `first`, each in its own task.
    async fn run(
        self: Arc<Self>,
        shared: Arc<Shared>,
        rate: f64,
        count: u64,
        first: u64,
        max_inflight: usize,
    ) -> Published {
        let mut out = Published::default();
        let mut post_latency = histogram().ok();
        let inflight = Arc::new(Semaphore::new(max_inflight.max(1)));
        let mut tasks: JoinSet<(usize, Result<u64>)> = JoinSet::new();
        let t0 = tokio::time::Instant::now();
        let mut record = |out: &mut Published, done: (usize, Result<u64>)| match done.1 {
            Ok(us) => {
                out.expected += shared.room_members[done.0].load(Ordering::Relaxed);
                if let Some(h) = post_latency.as_mut() {
                    h.saturating_record(us.clamp(1, HIST_MAX_US));
                }
            }
            Err(e) => {
                out.failed += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        };
        for k in 0..count {
            let due = t0 + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(due).await;
            let lag = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            out.max_lag_us = out.max_lag_us.max(lag);
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            let shared = shared.clone();
            tasks.spawn(async move {
                let done = me.post(&shared, first + k).await;
                drop(permit);
                done
            });
            out.sent += 1;
            while let Some(Ok(done)) = tasks.try_join_next() {
                record(&mut out, done);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(done) => record(&mut out, done),
                Err(_) => out.failed += 1,
            }
        }
        out.post_latency = post_latency;
        out
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
    count: u64,
}

fn latency_ms(h: &Histogram<u64>) -> Latency {
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
struct ConnectReport {
    clients: usize,
    connected: usize,
    failed: usize,
    seconds: f64,
    per_s: f64,
    handshake_ms: Latency,
}

#[derive(Debug, Serialize)]
struct NodeMemory {
    pid: u32,
    connections: usize,
    rss_kib_before: u64,
    rss_kib_after: u64,
    rss_bytes_per_connection: f64,
}

#[derive(Debug, Serialize)]
struct NodeCpu {
    pid: u32,
    cpu_ms: f64,
}

#[derive(Debug, Serialize)]
struct StepReport {
    label: String,
    mode: &'static str,
    nodes: usize,
    clients: usize,
    rooms: usize,
    connect: ConnectReport,
    joined: usize,
    join_failed: usize,
    join_refusals: usize,
    first_join_refusal: Option<String>,
    join_s: f64,
    rate_msgs_per_s: f64,
    duration_s: f64,
    offered_deliveries_per_s: f64,
    published: u64,
    publish_failed: u64,
    publish_max_lag_ms: f64,
    expected_deliveries: u64,
    received_deliveries: u64,
    lost_deliveries: i64,
    lost_connections: usize,
    deliveries_per_s: f64,
    latency_ms: Latency,
    /// Deliveries to clients connected to the node that took the POST (no Redis hop).
    latency_on_post_node_ms: Latency,
    /// Deliveries to clients on other nodes (through Redis).
    latency_on_other_nodes_ms: Latency,
    /// Per message: its first delivery (HTTP, bus, first socket) and its last one; the
    /// difference is the time one message takes to reach every member of its room.
    first_delivery_ms: Latency,
    last_delivery_ms: Latency,
    /// Highest delivery latency received in each second of the window (and its drain), ms.
    max_latency_ms_by_second: Vec<f64>,
    post_latency_ms: Option<Latency>,
    server_cpu: Vec<NodeCpu>,
    server_cpu_us_per_delivery: Option<f64>,
    redis_cpu_us_per_delivery: Option<f64>,
    driver_cpu_us_per_delivery: f64,
    /// Every process and kernel thread of the machine over the window, per delivery (the
    /// all-in cost when the machine runs nothing else).
    machine_cpu_us_per_delivery: f64,
    /// Share of the machine's CPUs busy over the window, and in softirq (network) alone.
    machine_busy_pct: f64,
    machine_softirq_pct: f64,
    memory_after_join: Vec<NodeMemory>,
    loadavg_before: String,
    loadavg_after: String,
    first_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ConnectModeReport {
    label: String,
    mode: &'static str,
    nodes: usize,
    connect: ConnectReport,
    lost_connections: usize,
    hold_s: f64,
    memory: Vec<NodeMemory>,
    rss_bytes_per_connection: Option<f64>,
    loadavg_before: String,
    loadavg_after: String,
    first_error: Option<String>,
}

fn ws_url(node: &str) -> String {
    let base = node.trim_end_matches('/');
    let base = base
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .unwrap_or_else(|| base.to_owned());
    format!("{base}/socket.io/?EIO=4&transport=websocket")
}

fn sign(secret: &str, user: &str) -> Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs()
        + 24 * 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("sign token")
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Waits until `done()` reaches `target` or `timeout` passes; the time it took.
async fn wait_for(target: usize, timeout: Duration, done: impl Fn() -> usize) -> Duration {
    let began = Instant::now();
    while done() < target && began.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    began.elapsed()
}

/// Waits until the nodes use less than 5% of a core over half a second (join storms, presence
/// writes, first pings) or `timeout` passes.
async fn wait_quiet(procs: &[Proc], ticks_per_s: u64, timeout: Duration) {
    let began = Instant::now();
    let sample = Duration::from_millis(500);
    let threshold = (ticks_per_s / 40).max(1);
    let total = || procs.iter().filter_map(|p| p.cpu_ticks().ok()).sum::<u64>();
    let mut last = total();
    while began.elapsed() < timeout {
        tokio::time::sleep(sample).await;
        let now = total();
        if now.saturating_sub(last) <= threshold {
            return;
        }
        last = now;
    }
}

fn rss_all(procs: &[Proc]) -> Vec<u64> {
    procs.iter().map(|p| p.rss_kib().unwrap_or(0)).collect()
}

fn memory(procs: &[Proc], before: &[u64], per_node: &[usize]) -> Vec<NodeMemory> {
    procs
        .iter()
        .zip(before)
        .zip(per_node)
        .map(|((p, &before), &connections)| {
            let after = p.rss_kib().unwrap_or(0);
            NodeMemory {
                pid: p.pid,
                connections,
                rss_kib_before: before,
                rss_kib_after: after,
                rss_bytes_per_connection: if connections == 0 {
                    0.0
                } else {
                    ((after as f64 - before as f64) * 1024.0 / connections as f64).round()
                },
            }
        })
        .collect()
}

fn connect_report(shared: &Shared, clients: usize, took: Duration) -> ConnectReport {
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

fn emit_json<T: Serialize>(report: &T) -> Result<()> {
    println!("{}", serde_json::to_string(report).context("serialise report")?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.nodes.is_empty() || args.clients == 0 || args.rooms == 0 {
        bail!("need at least one node, one client and one room");
    }
    if !args.server_pids.is_empty() && args.server_pids.len() != args.nodes.len() {
        bail!("--server-pids must list one PID per node, in the order of --nodes");
    }
    let ticks_per_s = clock_ticks_per_s();
    let procs: Vec<Proc> = args.server_pids.iter().map(|&pid| Proc { pid }).collect();
    let redis = args.redis_pid.map(|pid| Proc { pid });
    let quiet: Vec<Proc> = procs.iter().copied().chain(redis).collect();
    let shared = Arc::new(Shared::new(args.rooms, args.nodes.len(), args.join_concurrency)?);
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let n_nodes = args.nodes.len();
    let with_rooms = args.mode == Mode::Fanout;

    // The plan: client i joins room i mod R, on node (i div R) mod nodes, so that every room
    // has members on every node.
    let rooms: Vec<String> = (0..args.rooms).map(|r| format!("{}-{r}", args.room_prefix)).collect();
    let mut per_node = vec![0usize; n_nodes];
    let mut specs = Vec::with_capacity(args.clients);
    let urls: Vec<String> = args.nodes.iter().map(|n| ws_url(n)).collect();
    for id in 0..args.clients {
        let room = id % args.rooms;
        let node = (id / args.rooms) % n_nodes;
        per_node[node] += 1;
        specs.push(ClientSpec {
            id,
            node,
            url: urls[node].clone(),
            token: sign(&args.jwt_secret, &format!("bench-u{id}"))?,
            room: with_rooms.then(|| (room, rooms[room].clone())),
        });
    }

    let load_before = loadavg();
    let rss_before = rss_all(&procs);
    eprintln!("connecting {} clients to {} node(s)…", args.clients, n_nodes);
    for spec in specs {
        tokio::spawn(run_client(spec, shared.clone(), phase_rx.clone(), gate.clone()));
    }
    let connect_took = {
        let s = shared.clone();
        wait_for(args.clients, Duration::from_secs(300), move || {
            s.connected.load(Ordering::Relaxed) + s.connect_failed.load(Ordering::Relaxed)
        })
        .await
    };
    let connect = connect_report(&shared, args.clients, connect_took);
    eprintln!(
        "connected {}/{} in {:.2} s: {:.0} connects/s (handshake p50 {:.1} ms, p99 {:.1} ms), {} failed",
        connect.connected,
        args.clients,
        connect.seconds,
        connect.per_s,
        connect.handshake_ms.p50,
        connect.handshake_ms.p99,
        connect.failed
    );

    if args.mode == Mode::Connect {
        wait_quiet(&quiet, ticks_per_s, Duration::from_secs_f64(args.quiet_timeout)).await;
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        let memory = memory(&procs, &rss_before, &per_node);
        let total_conns: usize = memory.iter().map(|m| m.connections).sum();
        let total_delta: f64 = memory
            .iter()
            .map(|m| (m.rss_kib_after as f64 - m.rss_kib_before as f64) * 1024.0)
            .sum();
        let report = ConnectModeReport {
            label: args.label.clone(),
            mode: "connect",
            nodes: n_nodes,
            lost_connections: shared.lost_connections.load(Ordering::Relaxed),
            hold_s: args.hold,
            rss_bytes_per_connection: (!memory.is_empty() && total_conns > 0)
                .then(|| (total_delta / total_conns as f64).round()),
            memory,
            connect,
            loadavg_before: load_before,
            loadavg_after: loadavg(),
            first_error: lock(&shared.first_error).clone(),
        };
        for m in &report.memory {
            eprintln!(
                "node pid {}: {} connections, RSS {} → {} KiB: {:.0} B per idle connection",
                m.pid, m.connections, m.rss_kib_before, m.rss_kib_after, m.rss_bytes_per_connection
            );
        }
        emit_json(&report)?;
        let _ = phase_tx.send(Phase::Quit);
        return Ok(());
    }

    // Join every connected client to its room.
    let connected = shared.connected.load(Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Join);
    let join_took = {
        let s = shared.clone();
        wait_for(connected, Duration::from_secs(300), move || {
            s.joined.load(Ordering::Relaxed)
                + s.join_failed.load(Ordering::Relaxed)
                + s.lost_connections.load(Ordering::Relaxed)
        })
        .await
    };
    let joined = shared.joined.load(Ordering::Relaxed);
    eprintln!(
        "joined {joined}/{connected} to {} room(s) in {:.2} s; waiting for the nodes to go quiet…",
        args.rooms,
        join_took.as_secs_f64()
    );
    wait_quiet(&quiet, ticks_per_s, Duration::from_secs_f64(args.quiet_timeout)).await;
    let memory_after_join = memory(&procs, &rss_before, &per_node);
    if joined < connected {
        eprintln!("warning: only {joined} of {connected} clients joined; expected counts assume every join");
    }

    let publisher = Arc::new(Publisher {
        http: Client::builder(TokioExecutor::new()).build_http(),
        nodes: args.nodes.iter().map(|n| n.trim_end_matches('/').to_owned()).collect(),
        api_key: args.api_key.clone(),
        rooms,
    });
    let avg_members = joined as f64 / args.rooms as f64;
    let mut seq: u64 = 0;
    let mut previous_rate: Option<f64> = None;
    for &rate in &args.rate {
        if rate <= 0.0 {
            bail!("rates must be positive");
        }
        let count = ((args.warmup + args.duration) * rate).round() as u64;
        let load_before = loadavg();
        let received_at_start = shared.received.load(Ordering::Relaxed);
        let warm_count = (args.warmup * rate).round() as u64;
        let window_seqs = seq + warm_count.min(count)..seq + count;
        shared.reset_spread(seq..seq + count);
        let step_start = Instant::now();
        let publishing = tokio::spawn(
            publisher
                .clone()
                .run(shared.clone(), rate, count, seq, args.max_inflight_posts),
        );
        seq += count;
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        // The measured window.
        shared.reset_latency();
        let window_start = Instant::now();
        let cpu_start: Vec<u64> = procs.iter().map(|p| p.cpu_ticks().unwrap_or(0)).collect();
        let self_start = cpu_ticks_of("/proc/self/stat").unwrap_or(0);
        let redis_start = redis.map_or(0, |r| r.cpu_ticks().unwrap_or(0));
        let machine_start = machine_cpu();
        let received_start = shared.received.load(Ordering::Relaxed);
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            step_start + Duration::from_secs_f64(args.warmup + args.duration),
        ))
        .await;
        let received_end = shared.received.load(Ordering::Relaxed);
        let self_end = cpu_ticks_of("/proc/self/stat").unwrap_or(0);
        let redis_end = redis.map_or(0, |r| r.cpu_ticks().unwrap_or(0));
        let machine_end = machine_cpu();
        let cpu_end: Vec<u64> = procs.iter().map(|p| p.cpu_ticks().unwrap_or(0)).collect();
        let window = window_start.elapsed();
        let published = publishing.await.context("publisher task")?;
        // Late deliveries: wait until everything expected arrived, or progress stops.
        let drain_began = Instant::now();
        let mut last = shared.received.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        while drain_began.elapsed() < Duration::from_secs_f64(args.drain_timeout) {
            let got = shared.received.load(Ordering::Relaxed) - received_at_start;
            if got >= published.expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = shared.received.load(Ordering::Relaxed);
            if now != last {
                last = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let received = shared.received.load(Ordering::Relaxed) - received_at_start;
        let in_window = received_end - received_start;
        let [all, local, remote] = shared.merged_latency()?;
        let latency = latency_ms(&all);
        let [first_delivery, last_delivery] = shared.spread(window_seqs)?;
        let ticks_to_us = 1_000_000.0 / ticks_per_s as f64;
        let server_cpu: Vec<NodeCpu> = procs
            .iter()
            .zip(cpu_start.iter().zip(&cpu_end))
            .map(|(p, (a, b))| NodeCpu {
                pid: p.pid,
                cpu_ms: (b.saturating_sub(*a)) as f64 * ticks_to_us / 1000.0,
            })
            .collect();
        let server_cpu_total_us: f64 = server_cpu.iter().map(|c| c.cpu_ms * 1000.0).sum();
        let per_delivery = |us: f64| ((us / in_window.max(1) as f64) * 100.0).round() / 100.0;
        let deliveries_per_s = (in_window as f64 / window.as_secs_f64()).round();
        let report = StepReport {
            label: args.label.clone(),
            mode: "fanout",
            nodes: n_nodes,
            clients: args.clients,
            rooms: args.rooms,
            connect: connect_report(&shared, args.clients, connect_took),
            joined,
            join_failed: shared.join_failed.load(Ordering::Relaxed),
            join_refusals: shared.join_refusals.load(Ordering::Relaxed),
            first_join_refusal: lock(&shared.first_join_refusal).clone(),
            join_s: secs(join_took),
            rate_msgs_per_s: rate,
            duration_s: secs(window),
            offered_deliveries_per_s: (rate * avg_members).round(),
            published: published.sent,
            publish_failed: published.failed,
            publish_max_lag_ms: published.max_lag_us as f64 / 1000.0,
            expected_deliveries: published.expected,
            received_deliveries: received,
            lost_deliveries: published.expected as i64 - received as i64,
            lost_connections: shared.lost_connections.load(Ordering::Relaxed),
            deliveries_per_s,
            latency_ms: latency,
            latency_on_post_node_ms: latency_ms(&local),
            latency_on_other_nodes_ms: latency_ms(&remote),
            first_delivery_ms: latency_ms(&first_delivery),
            last_delivery_ms: latency_ms(&last_delivery),
            max_latency_ms_by_second: shared.max_by_second(),
            post_latency_ms: published.post_latency.as_ref().map(latency_ms),
            server_cpu_us_per_delivery: (!procs.is_empty()).then(|| per_delivery(server_cpu_total_us)),
            server_cpu,
            redis_cpu_us_per_delivery: redis
                .map(|_| per_delivery(redis_end.saturating_sub(redis_start) as f64 * ticks_to_us)),
            machine_cpu_us_per_delivery: per_delivery(
                machine_end.busy.saturating_sub(machine_start.busy) as f64 * ticks_to_us,
            ),
            machine_busy_pct: pct(
                machine_end.busy.saturating_sub(machine_start.busy),
                machine_end.total.saturating_sub(machine_start.total),
            ),
            machine_softirq_pct: pct(
                machine_end.softirq.saturating_sub(machine_start.softirq),
                machine_end.total.saturating_sub(machine_start.total),
            ),
            driver_cpu_us_per_delivery: per_delivery(self_end.saturating_sub(self_start) as f64 * ticks_to_us),
            memory_after_join: memory_after_join
                .iter()
                .map(|m| NodeMemory {
                    pid: m.pid,
                    connections: m.connections,
                    rss_kib_before: m.rss_kib_before,
                    rss_kib_after: m.rss_kib_after,
                    rss_bytes_per_connection: m.rss_bytes_per_connection,
                })
                .collect(),
            loadavg_before: load_before,
            loadavg_after: loadavg(),
            first_error: published.first_error.or_else(|| lock(&shared.first_error).clone()),
        };
        eprintln!(
            "rate {rate} msg/s × {avg_members:.0} = {:.0} offered/s: {:.0} deliveries/s; latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; lost {}; server CPU {} µs/delivery; driver {} µs/delivery; machine {} µs/delivery, {}% busy",
            report.offered_deliveries_per_s,
            report.deliveries_per_s,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.p999,
            report.latency_ms.max,
            report.lost_deliveries,
            report
                .server_cpu_us_per_delivery
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}")),
            report.driver_cpu_us_per_delivery,
            report.machine_cpu_us_per_delivery,
            report.machine_busy_pct,
        );
        eprintln!(
            "  same node p50/p99 {:.1}/{:.1} ms, other node {:.1}/{:.1} ms; per message: first delivery p50 {:.1} ms, last delivery p50 {:.1} ms (p99 {:.1})",
            report.latency_on_post_node_ms.p50,
            report.latency_on_post_node_ms.p99,
            report.latency_on_other_nodes_ms.p50,
            report.latency_on_other_nodes_ms.p99,
            report.first_delivery_ms.p50,
            report.last_delivery_ms.p50,
            report.last_delivery_ms.p99,
        );
        eprintln!(
            "  max latency by second (ms): {}",
            report
                .max_latency_ms_by_second
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        emit_json(&report)?;
        let saturated = previous_rate.is_some_and(|prev| report.deliveries_per_s < prev * (1.0 + args.min_growth))
            || report.latency_ms.p99 > args.max_p99_ms;
        previous_rate = Some(report.deliveries_per_s);
        if args.stop_when_saturated && saturated {
            eprintln!("saturated: stopping the ramp");
            break;
        }
    }
    let _ = phase_tx.send(Phase::Quit);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_send_time() {
        assert_eq!(field_u64("{\"seq\":7,\"t\":123456}]", "\"t\":"), Some(123_456));
        assert_eq!(field_u64("{\"t\":9,\"seq\":1}]", "\"t\":"), Some(9));
        assert_eq!(field_u64("{\"t\":\"x\"}", "\"t\":"), None);
        assert_eq!(field_u64("{}", "\"t\":"), None);
    }

    #[test]
    fn websocket_url() {
        assert_eq!(
            ws_url("http://127.0.0.1:4000/"),
            "ws://127.0.0.1:4000/socket.io/?EIO=4&transport=websocket"
        );
    }
}
