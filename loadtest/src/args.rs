//! The `fanout` command line.

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Connect, join rooms, publish at one or more rates, measure deliveries and latency.
    Fanout,
    /// Connect N idle clients: connects/s, then RSS per idle connection on each node.
    Connect,
}

/// Switchboard fan-out benchmark driver.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Node base URLs, comma-separated (http://127.0.0.1:PORT); clients go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// HS256 secret the nodes verify tokens with.
    #[arg(long)]
    pub jwt_secret: String,
    /// Server API key for the REST emit.
    #[arg(long)]
    pub api_key: String,
    /// What to run.
    #[arg(long, value_enum, default_value = "fanout")]
    pub mode: Mode,
    /// Number of clients.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Number of rooms; client i joins room i mod R.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Published messages per second over all rooms; a comma-separated list runs one step per
    /// rate on the same connections (a saturation ramp).
    #[arg(long, value_delimiter = ',', default_value = "50")]
    pub rate: Vec<f64>,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds published before each step's measurement starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Joins in flight at once (each waits for its ack).
    #[arg(long, default_value_t = 64)]
    pub join_concurrency: usize,
    /// POSTs in flight at most; the publisher falls behind its schedule beyond that.
    #[arg(long, default_value_t = 256)]
    pub max_inflight_posts: usize,
    /// Node PIDs, in the order of --nodes, for RSS and CPU accounting (same host only).
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// The Redis server's PID: its CPU is reported beside the nodes', and waited on to go quiet.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Connect mode: seconds to hold the idle connections before reading RSS.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Longest wait for the nodes to go quiet after connecting/joining, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub quiet_timeout: f64,
    /// Stop a rate ramp when deliveries/s grew by less than this fraction over the previous
    /// step, or when p99 exceeds --max-p99-ms.
    #[arg(long, default_value_t = false)]
    pub stop_when_saturated: bool,
    /// Growth below which a ramp counts as saturated.
    #[arg(long, default_value_t = 0.03)]
    pub min_growth: f64,
    /// p99 above which a ramp counts as saturated, in ms.
    #[arg(long, default_value_t = 1000.0)]
    pub max_p99_ms: f64,
    /// Seconds a step waits at most for late deliveries after publishing ends.
    #[arg(long, default_value_t = 15.0)]
    pub drain_timeout: f64,
    /// Prefix of room ids (room i is PREFIX-i).
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Free-form label copied into the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
}
