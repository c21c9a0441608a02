//! The kernel's floor under the fan-out's unit of work: one small WebSocket frame written with
//! one `send(2)` to one of N loopback TCP connections, whose other ends a reader drains as the
//! `fanout` driver does. The sender thread's CPU time per write (from
//! `/proc/thread-self/stat`, so the loopback receive work the kernel does in the sender's
//! context is in it, as it is in a node's) is what a node cannot go below at one frame per
//! write on this machine, whatever its own code costs.

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(Parser)]
#[command(about = "CPU per small loopback TCP write: the floor under a node's cost per delivery")]
struct Args {
    /// Loopback connections written to in turn.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Writes per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// How long to write.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload bytes per frame (a typing event is ≈ 90, a message ≈ 300).
    #[arg(long, default_value_t = 120)]
    size: usize,
    /// Reader threads.
    #[arg(long, default_value_t = 1)]
    readers: usize,
}

#[derive(Serialize)]
struct Report {
    connections: usize,
    size: usize,
    writes: u64,
    writes_per_s: f64,
    sender_cpu_us_per_write: f64,
    readers_cpu_us_per_write: f64,
    loadavg_before: String,
}

fn thread_ticks() -> Result<u64> {
    loadtest::cpu_ticks("/proc/thread-self/stat").context("read /proc/thread-self/stat")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.rate < 1000 {
        bail!("--connections must be positive and --rate at least 1000");
    }
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.readers)
        .enable_io()
        .build()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        // As a node's sockets are: small frames leave at once.
        server.set_nodelay(true)?;
        streams.push(server);
        client.set_nonblocking(true)?;
        let received = received.clone();
        runtime.spawn(async move {
            let Ok(mut client) = tokio::net::TcpStream::from_std(client) else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    // A server text frame: FIN + text opcode, a 7- or 16-bit length, the payload.
    let mut frame = vec![0x81];
    match u16::try_from(args.size) {
        Ok(n) if n < 126 => frame.push(n as u8),
        Ok(n) => {
            frame.push(126);
            frame.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => bail!("--size must be below 65536"),
    }
    frame.extend(std::iter::repeat_n(b'x', args.size));

    let readers_before = loadtest::cpu_ticks("/proc/self/stat").context("read /proc/self/stat")?;
    let sender_before = thread_ticks()?;
    let total = args.rate * args.seconds;
    let per_ms = args.rate / 1000;
    let start = Instant::now();
    let mut next = start;
    let mut written = 0u64;
    let mut i = 0;
    while written < total {
        for _ in 0..per_ms {
            streams[i].write_all(&frame)?;
            i = (i + 1) % streams.len();
            written += 1;
        }
        next += Duration::from_millis(1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let elapsed = start.elapsed();
    let sender = thread_ticks()? - sender_before;
    let expected = written * frame.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let process = loadtest::cpu_ticks("/proc/self/stat").context("read /proc/self/stat")? - readers_before;
    let us_per_tick = 1e6 / loadtest::clock_ticks_per_s() as f64;
    let report = Report {
        connections: args.connections,
        size: args.size,
        writes: written,
        writes_per_s: written as f64 / elapsed.as_secs_f64(),
        sender_cpu_us_per_write: sender as f64 * us_per_tick / written as f64,
        readers_cpu_us_per_write: process.saturating_sub(sender) as f64 * us_per_tick / written as f64,
        loadavg_before,
    };
    println!("{}", serde_json::to_string(&report)?);
    drop(streams);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
