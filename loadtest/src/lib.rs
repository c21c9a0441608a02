//! The Switchboard benchmark drivers' library: the `fanout` driver's parts, and the /proc
//! readings every driver (`fanout`, `sends`, `sendfloor`) shares.
//!
//! - [`args`]: the `fanout` command line.
//! - [`run`]: the `fanout` phases: connect, join, then one measured step per rate.
//! - `client`: one Socket.IO client over a raw WebSocket.
//! - `publish`: the REST publisher.
//! - `stats`: counters and histograms the clients share with the main task.
//! - `report`: the JSON lines printed on stdout.
//! - [`proc`]: RSS, CPU time and load of the nodes, Redis, the driver and the machine.

pub mod args;
mod client;
pub mod proc;
mod publish;
mod report;
pub mod run;
mod stats;

pub use proc::{clock_ticks_per_s, cpu_ticks};
