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

use clap::Parser;
use loadtest::args::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loadtest::run::run(Args::parse()).await
}
