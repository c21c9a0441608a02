//! One benchmark client: Engine.IO v4 / Socket.IO over a raw WebSocket, kept to the few
//! frames the benchmark needs so that the driver costs little per delivery.

use crate::stats::{HIST_MAX_US, SHARDS, Shared, lock};
use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The frame prefix of a benchmark delivery.
const BENCH_PREFIX: &str = "42[\"bench\",";
/// The driver's own WebSocket read buffer: small, it holds thousands of connections.
const WS_READ_BUFFER: usize = 4096;
/// How many times a client asks to join before giving up.
const JOIN_ATTEMPTS: u32 = 10;
/// Pause before asking again after a refused join.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(1000);

/// What the clients are to do next, set by the main task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Join,
    Quit,
}

/// One client: which node, which room, which token.
pub struct ClientSpec {
    pub id: usize,
    pub node: usize,
    pub url: String,
    pub token: String,
    /// The room's index and id.
    pub room: Option<(usize, String)>,
}

/// How far a client got, to count a failure in the right place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Connected,
    Joining,
    Joined,
}

/// Runs one client until the main task says quit; a failure is counted by the stage it ended.
pub async fn run_client(spec: ClientSpec, shared: Arc<Shared>, phase: watch::Receiver<Phase>, gate: Arc<Semaphore>) {
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

pub fn ws_url(node: &str) -> String {
    let base = node.trim_end_matches('/');
    let base = base
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .unwrap_or_else(|| base.to_owned());
    format!("{base}/socket.io/?EIO=4&transport=websocket")
}

pub fn sign(secret: &str, user: &str) -> Result<String> {
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
