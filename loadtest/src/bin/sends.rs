//! Persisted-and-fanned-out messages per second: N concurrent Socket.IO senders spread over C
//! conversations (created over REST, `members` access), each sending M messages with
//! `message:send` and waiting for each ack (the ack comes after the message is stored and
//! handed to the fan-out). Prints one JSON line with messages/s, ack latency percentiles, and
//! the CPU time spent over the window by the node (`--node-pid`), the database server's
//! processes (`--db-process`, e.g. `postgres`), the driver itself and the whole machine.

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use loadtest::proc::{loadavg, machine_cpu};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;

#[derive(Parser, Debug)]
#[command(about = "Persisted-and-fanned-out messages per second from concurrent senders")]
struct Args {
    /// Node base URL, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    node: String,
    /// HS256 secret of the node.
    #[arg(long, default_value = "S")]
    secret: String,
    /// API key of the node (to create conversations).
    #[arg(long, default_value = "K")]
    api_key: String,
    /// Concurrent senders.
    #[arg(long, default_value_t = 100)]
    senders: usize,
    /// Conversations the senders are spread over.
    #[arg(long, default_value_t = 10)]
    conversations: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Label for the report (e.g. the database).
    #[arg(long, default_value = "")]
    label: String,
    /// The node's process id, to report its CPU time over the window.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Command name of the database server's processes (all of them are summed), e.g.
    /// `postgres`.
    #[arg(long)]
    db_process: Option<String>,
}

#[derive(Serialize)]
struct Report {
    label: String,
    senders: usize,
    conversations: usize,
    messages: usize,
    seconds: f64,
    messages_per_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    ack_max_ms: f64,
    load_before: String,
    load_after: String,
    cpu: CpuReport,
}

/// CPU time over the window, in seconds of one core, and per message in microseconds.
#[derive(Serialize, Default)]
struct CpuReport {
    /// Cores the machine has.
    cores: usize,
    /// Busy share of the whole machine (all cores, kernel threads included), 0..1.
    machine_busy: f64,
    node_s: Option<f64>,
    db_s: Option<f64>,
    driver_s: f64,
    node_us_per_message: Option<f64>,
    db_us_per_message: Option<f64>,
    driver_us_per_message: f64,
}

/// utime + stime of `/proc/<pid>/stat`, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    loadtest::cpu_ticks(&format!("/proc/{pid}/stat"))
}

/// Per process named `name`: its CPU ticks. Processes started during the window count from
/// zero, which is right for the database's backends opened by the run.
fn ticks_by_name(name: &str) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name
            && let Some(t) = cpu_ticks(&pid)
        {
            out.insert(pid, t);
        }
    }
    out
}

/// (busy, total) ticks of the machine from /proc/stat's `cpu` line.
fn machine_ticks() -> (u64, u64) {
    let machine = machine_cpu();
    (machine.busy, machine.total)
}

fn clock_ticks_per_s() -> f64 {
    loadtest::clock_ticks_per_s() as f64
}

struct CpuSample {
    node: Option<u64>,
    db: std::collections::HashMap<String, u64>,
    driver: u64,
    machine: (u64, u64),
}

fn sample(args: &Args) -> CpuSample {
    CpuSample {
        node: args.node_pid.and_then(|p| cpu_ticks(&p.to_string())),
        db: args.db_process.as_deref().map(ticks_by_name).unwrap_or_default(),
        driver: cpu_ticks("self").unwrap_or(0),
        machine: machine_ticks(),
    }
}

fn cpu_report(args: &Args, before: &CpuSample, after: &CpuSample, messages: usize) -> CpuReport {
    let hz = clock_ticks_per_s();
    let per = |s: f64| s * 1e6 / messages.max(1) as f64;
    let node_s = match (before.node, after.node) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / hz),
        _ => None,
    };
    let db_s = args.db_process.as_ref().map(|_| {
        after
            .db
            .iter()
            .map(|(pid, a)| a.saturating_sub(before.db.get(pid).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / hz
    });
    let driver_s = after.driver.saturating_sub(before.driver) as f64 / hz;
    let busy = after.machine.0.saturating_sub(before.machine.0) as f64;
    let total = after.machine.1.saturating_sub(before.machine.1) as f64;
    CpuReport {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        machine_busy: if total > 0.0 { busy / total } else { 0.0 },
        node_s,
        db_s,
        driver_s,
        node_us_per_message: node_s.map(per),
        db_us_per_message: db_s.map(per),
        driver_us_per_message: per(driver_s),
    }
}

fn token(secret: &str, user: &str) -> Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

async fn create_conversation(args: &Args, id: &str, members: &[String]) -> Result<()> {
    let body = serde_json::json!({ "id": id, "members": members }).to_string();
    let host = args.node.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await?;
    let request = format!(
        "POST /api/conversations HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        args.api_key,
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    if !(response.starts_with("HTTP/1.1 201") || response.contains("exists already")) {
        bail!("creating {id}: {}", response.lines().next().unwrap_or_default());
    }
    Ok(())
}

/// One sender: connect, join, then send and wait for each ack.
async fn sender(
    args: Arc<Args>,
    user: String,
    conversation: String,
    latencies: Arc<Mutex<Histogram<u64>>>,
) -> Result<()> {
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        args.node.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let auth = format!("40{}", serde_json::json!({ "token": token(&args.secret, &user)? }));
    ws.send(Frame::text(auth)).await?;
    let mut next_ack = 0u64;
    let mut request = |ws_event: &str, payload: serde_json::Value| {
        next_ack += 1;
        (
            next_ack,
            format!("42{next_ack}{}", serde_json::json!([ws_event, payload])),
        )
    };
    let (join_id, join) = request("room:join", serde_json::json!({ "roomId": conversation }));
    let mut sent_join = false;
    let mut local = Vec::with_capacity(args.messages);
    let mut pending: Option<(u64, Instant)> = None;
    let mut sent = 0usize;
    loop {
        let frame = ws.next().await.ok_or_else(|| anyhow!("{user}: connection closed"))??;
        let Frame::Text(text) = frame else { continue };
        let text = text.as_str();
        if text == "2" {
            ws.send(Frame::text("3")).await?;
            continue;
        }
        if text.starts_with("44") {
            bail!("{user}: connect refused: {text}");
        }
        if text.starts_with("40") && !sent_join {
            ws.send(Frame::text(join.clone())).await?;
            sent_join = true;
            continue;
        }
        let Some(rest) = text.strip_prefix("43") else { continue };
        let id: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .context("ack without id")?;
        if !rest.contains("\"success\":true") {
            bail!("{user}: refused: {text}");
        }
        if id == join_id {
            // Joined: start sending.
        } else if let Some((waiting, at)) = pending.take() {
            if waiting != id {
                bail!("{user}: ack {id} while waiting for {waiting}");
            }
            local.push(at.elapsed().as_micros() as u64);
        }
        if sent == args.messages {
            break;
        }
        let (id, frame) = request(
            "message:send",
            serde_json::json!({
                "conversationId": conversation,
                "content": format!("message {sent} from {user}"),
                "tempId": format!("{user}-{sent}"),
            }),
        );
        pending = Some((id, Instant::now()));
        ws.send(Frame::text(frame)).await?;
        sent += 1;
    }
    let _ = ws.close(None).await;
    let mut h = latencies.lock().map_err(|_| anyhow!("poisoned"))?;
    for l in local {
        h.record(l.max(1))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let run = format!("{:x}", Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    let users: Vec<String> = (0..args.senders).map(|i| format!("sender-{run}-{i}")).collect();
    let conversations: Vec<String> = (0..args.conversations).map(|c| format!("bench-{run}-{c}")).collect();
    for (c, id) in conversations.iter().enumerate() {
        let members: Vec<String> = users
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.conversations == c)
            .map(|(_, u)| u.clone())
            .collect();
        create_conversation(&args, id, &members).await?;
    }
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let load_before = loadavg();
    let cpu_before = sample(&args);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let conversation = conversations[i % args.conversations].clone();
        tasks.push(tokio::spawn(sender(
            args.clone(),
            user.clone(),
            conversation,
            latencies.clone(),
        )));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = sample(&args);
    let h = latencies.lock().map_err(|_| anyhow!("poisoned"))?;
    let total = args.senders * args.messages;
    let report = Report {
        label: args.label.clone(),
        senders: args.senders,
        conversations: args.conversations,
        messages: total,
        seconds,
        messages_per_s: total as f64 / seconds,
        ack_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        ack_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        ack_max_ms: h.max() as f64 / 1000.0,
        load_before,
        load_after: loadavg(),
        cpu: cpu_report(&args, &cpu_before, &cpu_after, total),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
