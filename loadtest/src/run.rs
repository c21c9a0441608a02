//! The `fanout` phases: connect every client, then either hold them idle (connect mode) or
//! join them to their rooms and run one measured publishing step per rate.

use crate::args::{Args, Mode};
use crate::client::{ClientSpec, Phase, run_client, sign, ws_url};
use crate::proc::{
    MachineCpu, Proc, clock_ticks_per_s, cpu_ticks_of, loadavg, machine_cpu, memory, rss_all, wait_quiet,
};
use crate::publish::{Published, Publisher};
use crate::report::{
    ConnectModeReport, ConnectReport, NodeCpu, NodeMemory, StepReport, connect_report, emit_json, latency_ms, pct, secs,
};
use crate::stats::{Shared, lock};
use anyhow::{Context, Result, bail};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Runs the driver as `args` asks; the JSON lines go to stdout, the summary to stderr.
pub async fn run(args: Args) -> Result<()> {
    if args.nodes.is_empty() || args.clients == 0 || args.rooms == 0 {
        bail!("need at least one node, one client and one room");
    }
    if !args.server_pids.is_empty() && args.server_pids.len() != args.nodes.len() {
        bail!("--server-pids must list one PID per node, in the order of --nodes");
    }
    let procs: Vec<Proc> = args.server_pids.iter().map(|&pid| Proc { pid }).collect();
    let redis = args.redis_pid.map(|pid| Proc { pid });
    let shared = Arc::new(Shared::new(args.rooms, args.nodes.len(), args.join_concurrency)?);
    let (phase, _) = watch::channel(Phase::Connect);
    let driver = Driver {
        phase,
        ticks_per_s: clock_ticks_per_s(),
        quiet: procs.iter().copied().chain(redis).collect(),
        procs,
        redis,
        shared,
        args,
    };
    let outcome = driver.drive().await;
    // Every client task closes its connection, whatever the outcome.
    let _ = driver.phase.send_replace(Phase::Quit);
    outcome
}

/// What every phase of one driver run reads.
struct Driver {
    args: Args,
    /// The nodes, in the order of --nodes.
    procs: Vec<Proc>,
    redis: Option<Proc>,
    /// The processes that must go quiet before a measurement: the nodes and Redis.
    quiet: Vec<Proc>,
    shared: Arc<Shared>,
    ticks_per_s: u64,
    /// What the client tasks are to do next.
    phase: watch::Sender<Phase>,
}

/// The connect phase's outcome, copied into every report.
struct Connected {
    took: Duration,
    /// Clients per node, in the order of --nodes.
    per_node: Vec<usize>,
    rss_before: Vec<u64>,
    load_before: String,
}

/// The join phase's outcome, copied into every step's report.
struct Joined {
    joined: usize,
    took: Duration,
    memory: Vec<NodeMemory>,
}

impl Driver {
    async fn drive(&self) -> Result<()> {
        let args = &self.args;
        let with_rooms = args.mode == Mode::Fanout;
        let rooms: Vec<String> = (0..args.rooms).map(|r| format!("{}-{r}", args.room_prefix)).collect();
        let (specs, per_node) = self.plan(&rooms, with_rooms)?;
        let connected = self.connect(specs, per_node).await;
        if args.mode == Mode::Connect {
            return self.hold(&connected).await;
        }
        let joined = self.join(&connected).await;
        self.ramp(rooms, &connected, &joined).await
    }

    /// Client i joins room i mod R, on node (i div R) mod nodes, so that every room has
    /// members on every node; also how many clients each node gets.
    fn plan(&self, rooms: &[String], with_rooms: bool) -> Result<(Vec<ClientSpec>, Vec<usize>)> {
        let args = &self.args;
        let n_nodes = args.nodes.len();
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
        Ok((specs, per_node))
    }

    /// Starts every client and waits until each has connected or failed.
    async fn connect(&self, specs: Vec<ClientSpec>, per_node: Vec<usize>) -> Connected {
        let args = &self.args;
        let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
        let load_before = loadavg();
        let rss_before = rss_all(&self.procs);
        eprintln!("connecting {} clients to {} node(s)…", args.clients, args.nodes.len());
        for spec in specs {
            tokio::spawn(run_client(
                spec,
                self.shared.clone(),
                self.phase.subscribe(),
                gate.clone(),
            ));
        }
        let took = {
            let s = self.shared.clone();
            wait_for(args.clients, Duration::from_secs(300), move || {
                s.connected.load(Ordering::Relaxed) + s.connect_failed.load(Ordering::Relaxed)
            })
            .await
        };
        let connect = self.connect_report(took);
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
        Connected {
            took,
            per_node,
            rss_before,
            load_before,
        }
    }

    fn connect_report(&self, took: Duration) -> ConnectReport {
        connect_report(&self.shared, self.args.clients, took)
    }

    /// Connect mode: holds the idle connections, then reports RSS per connection.
    async fn hold(&self, connected: &Connected) -> Result<()> {
        let args = &self.args;
        wait_quiet(
            &self.quiet,
            self.ticks_per_s,
            Duration::from_secs_f64(args.quiet_timeout),
        )
        .await;
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        let memory = memory(&self.procs, &connected.rss_before, &connected.per_node);
        let total_conns: usize = memory.iter().map(|m| m.connections).sum();
        let total_delta: f64 = memory
            .iter()
            .map(|m| (m.rss_kib_after as f64 - m.rss_kib_before as f64) * 1024.0)
            .sum();
        let report = ConnectModeReport {
            label: args.label.clone(),
            mode: "connect",
            nodes: args.nodes.len(),
            lost_connections: self.shared.lost_connections.load(Ordering::Relaxed),
            hold_s: args.hold,
            rss_bytes_per_connection: (!memory.is_empty() && total_conns > 0)
                .then(|| (total_delta / total_conns as f64).round()),
            memory,
            connect: self.connect_report(connected.took),
            loadavg_before: connected.load_before.clone(),
            loadavg_after: loadavg(),
            first_error: lock(&self.shared.first_error).clone(),
        };
        report.print_summary();
        emit_json(&report)
    }

    /// Joins every connected client to its room, then waits for the nodes to go quiet.
    async fn join(&self, connected: &Connected) -> Joined {
        let args = &self.args;
        let shared = &self.shared;
        let ready = shared.connected.load(Ordering::Relaxed);
        let _ = self.phase.send_replace(Phase::Join);
        let took = {
            let s = shared.clone();
            wait_for(ready, Duration::from_secs(300), move || {
                s.joined.load(Ordering::Relaxed)
                    + s.join_failed.load(Ordering::Relaxed)
                    + s.lost_connections.load(Ordering::Relaxed)
            })
            .await
        };
        let joined = shared.joined.load(Ordering::Relaxed);
        eprintln!(
            "joined {joined}/{ready} to {} room(s) in {:.2} s; waiting for the nodes to go quiet…",
            args.rooms,
            took.as_secs_f64()
        );
        wait_quiet(
            &self.quiet,
            self.ticks_per_s,
            Duration::from_secs_f64(args.quiet_timeout),
        )
        .await;
        let memory = memory(&self.procs, &connected.rss_before, &connected.per_node);
        if joined < ready {
            eprintln!("warning: only {joined} of {ready} clients joined; expected counts assume every join");
        }
        Joined { joined, took, memory }
    }

    /// One measured step per rate on the same connections; a saturated ramp stops early when
    /// --stop-when-saturated asks.
    async fn ramp(&self, rooms: Vec<String>, connected: &Connected, joined: &Joined) -> Result<()> {
        let args = &self.args;
        let publisher = Arc::new(Publisher {
            http: Client::builder(TokioExecutor::new()).build_http(),
            nodes: args.nodes.iter().map(|n| n.trim_end_matches('/').to_owned()).collect(),
            api_key: args.api_key.clone(),
            rooms,
        });
        let mut seq: u64 = 0;
        let mut previous_rate: Option<f64> = None;
        for &rate in &args.rate {
            if rate <= 0.0 {
                bail!("rates must be positive");
            }
            let count = ((args.warmup + args.duration) * rate).round() as u64;
            let report = self.step(&publisher, rate, seq, count, connected, joined).await?;
            seq += count;
            report.print_summary(rate, joined.joined as f64 / args.rooms as f64);
            emit_json(&report)?;
            let saturated = previous_rate.is_some_and(|prev| report.deliveries_per_s < prev * (1.0 + args.min_growth))
                || report.latency_ms.p99 > args.max_p99_ms;
            previous_rate = Some(report.deliveries_per_s);
            if args.stop_when_saturated && saturated {
                eprintln!("saturated: stopping the ramp");
                break;
            }
        }
        Ok(())
    }

    /// Publishes `count` messages from seq `first` at `rate`/s: a warm-up, the measured window,
    /// then a wait for late deliveries.
    async fn step(
        &self,
        publisher: &Arc<Publisher>,
        rate: f64,
        first: u64,
        count: u64,
        connected: &Connected,
        joined: &Joined,
    ) -> Result<StepReport> {
        let args = &self.args;
        let shared = &self.shared;
        let load_before = loadavg();
        let received_at_start = shared.received.load(Ordering::Relaxed);
        let warm_count = (args.warmup * rate).round() as u64;
        let window_seqs = first + warm_count.min(count)..first + count;
        shared.reset_spread(first..first + count);
        let step_start = Instant::now();
        let publishing =
            tokio::spawn(
                publisher
                    .clone()
                    .run(shared.clone(), rate, count, first, args.max_inflight_posts),
            );
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        // The measured window.
        shared.reset_latency();
        let window_start = Instant::now();
        let start = self.cpu_sample();
        let received_start = shared.received.load(Ordering::Relaxed);
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            step_start + Duration::from_secs_f64(args.warmup + args.duration),
        ))
        .await;
        let received_end = shared.received.load(Ordering::Relaxed);
        let end = self.cpu_sample();
        let window = window_start.elapsed();
        let published = publishing.await.context("publisher task")?;
        self.drain(received_at_start, &published).await;
        let received = shared.received.load(Ordering::Relaxed) - received_at_start;
        let in_window = received_end - received_start;
        let [all, local, remote] = shared.merged_latency()?;
        let [first_delivery, last_delivery] = shared.spread(window_seqs)?;
        let ticks_to_us = 1_000_000.0 / self.ticks_per_s as f64;
        let server_cpu: Vec<NodeCpu> = self
            .procs
            .iter()
            .zip(start.nodes.iter().zip(&end.nodes))
            .map(|(p, (a, b))| NodeCpu {
                pid: p.pid,
                cpu_ms: (b.saturating_sub(*a)) as f64 * ticks_to_us / 1000.0,
            })
            .collect();
        let server_cpu_total_us: f64 = server_cpu.iter().map(|c| c.cpu_ms * 1000.0).sum();
        let per_delivery = |us: f64| ((us / in_window.max(1) as f64) * 100.0).round() / 100.0;
        let machine_total = end.machine.total.saturating_sub(start.machine.total);
        Ok(StepReport {
            label: args.label.clone(),
            mode: "fanout",
            nodes: args.nodes.len(),
            clients: args.clients,
            rooms: args.rooms,
            connect: self.connect_report(connected.took),
            joined: joined.joined,
            join_failed: shared.join_failed.load(Ordering::Relaxed),
            join_refusals: shared.join_refusals.load(Ordering::Relaxed),
            first_join_refusal: lock(&shared.first_join_refusal).clone(),
            join_s: secs(joined.took),
            rate_msgs_per_s: rate,
            duration_s: secs(window),
            offered_deliveries_per_s: (rate * (joined.joined as f64 / args.rooms as f64)).round(),
            published: published.sent,
            publish_failed: published.failed,
            publish_max_lag_ms: published.max_lag_us as f64 / 1000.0,
            expected_deliveries: published.expected,
            received_deliveries: received,
            lost_deliveries: published.expected as i64 - received as i64,
            lost_connections: shared.lost_connections.load(Ordering::Relaxed),
            deliveries_per_s: (in_window as f64 / window.as_secs_f64()).round(),
            latency_ms: latency_ms(&all),
            latency_on_post_node_ms: latency_ms(&local),
            latency_on_other_nodes_ms: latency_ms(&remote),
            first_delivery_ms: latency_ms(&first_delivery),
            last_delivery_ms: latency_ms(&last_delivery),
            max_latency_ms_by_second: shared.max_by_second(),
            post_latency_ms: published.post_latency.as_ref().map(latency_ms),
            server_cpu_us_per_delivery: (!self.procs.is_empty()).then(|| per_delivery(server_cpu_total_us)),
            server_cpu,
            redis_cpu_us_per_delivery: self
                .redis
                .map(|_| per_delivery(end.redis.saturating_sub(start.redis) as f64 * ticks_to_us)),
            machine_cpu_us_per_delivery: per_delivery(
                end.machine.busy.saturating_sub(start.machine.busy) as f64 * ticks_to_us,
            ),
            machine_busy_pct: pct(end.machine.busy.saturating_sub(start.machine.busy), machine_total),
            machine_softirq_pct: pct(end.machine.softirq.saturating_sub(start.machine.softirq), machine_total),
            driver_cpu_us_per_delivery: per_delivery(end.driver.saturating_sub(start.driver) as f64 * ticks_to_us),
            memory_after_join: joined.memory.clone(),
            loadavg_before: load_before,
            loadavg_after: loadavg(),
            first_error: published.first_error.or_else(|| lock(&shared.first_error).clone()),
        })
    }

    /// Waits for late deliveries: until everything expected arrived, progress stops for 3 s,
    /// or --drain-timeout passes.
    async fn drain(&self, received_at_start: u64, published: &Published) {
        let shared = &self.shared;
        let drain_began = Instant::now();
        let mut last = shared.received.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        while drain_began.elapsed() < Duration::from_secs_f64(self.args.drain_timeout) {
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
    }

    /// CPU time of the nodes, the driver, Redis and the machine, in clock ticks; a process
    /// that cannot be read counts 0.
    fn cpu_sample(&self) -> CpuSample {
        CpuSample {
            nodes: self.procs.iter().map(|p| p.cpu_ticks().unwrap_or(0)).collect(),
            driver: cpu_ticks_of("/proc/self/stat").unwrap_or(0),
            redis: self.redis.map_or(0, |r| r.cpu_ticks().unwrap_or(0)),
            machine: machine_cpu(),
        }
    }
}

/// CPU time at one edge of the measured window, in clock ticks.
struct CpuSample {
    nodes: Vec<u64>,
    driver: u64,
    redis: u64,
    machine: MachineCpu,
}

/// Waits until `done()` reaches `target` or `timeout` passes; the time it took.
async fn wait_for(target: usize, timeout: Duration, done: impl Fn() -> usize) -> Duration {
    let began = Instant::now();
    while done() < target && began.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    began.elapsed()
}
