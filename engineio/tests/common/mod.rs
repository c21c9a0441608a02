//! A real server on 127.0.0.1:0 with a tiny echo [`Handler`], and minimal clients: raw HTTP/1.1
//! for long-polling, tokio-tungstenite for WebSocket.
//!
//! The echo handler answers a message `m` with `4m`, except for a few commands:
//! `bye` (sends `4bye`, then closes after flushing), `drop` (closes at once, as a drain does),
//! `token` (sends `4token:` and the handshake's token),
//! `flood:N:SIZE` (sends N packets of SIZE bytes at once).

#![allow(dead_code)]

use engineio::net::{ClosableListener, ConnInfo};
use engineio::{Config, DisconnectReason, Engine, Handler, Packet, Session};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Echo {
    engine: Engine<()>,
    closes: mpsc::UnboundedSender<(Box<str>, DisconnectReason)>,
}

impl Handler for Echo {
    type Data = ();

    fn engine(&self) -> &Engine<()> {
        &self.engine
    }

    fn on_message(self: &Arc<Self>, session: &Arc<Session<()>>, text: &str) {
        match text {
            "bye" => {
                session.send(Packet::new(b"4bye"));
                session.close_after_flush(DisconnectReason::ServerClose);
            }
            "drop" => session.close_now(DisconnectReason::Draining),
            "token" => {
                let token = session.token.as_deref().unwrap_or("none");
                session.send(Packet::new(format!("4token:{token}").as_bytes()));
            }
            _ => {
                if let Some(flood) = text.strip_prefix("flood:") {
                    let mut parts = flood.split(':').map(str::parse::<usize>);
                    if let (Some(Ok(count)), Some(Ok(size))) = (parts.next(), parts.next()) {
                        let mut text = vec![b'x'; size];
                        text[0] = b'4';
                        let packet = Packet::new(&text);
                        for _ in 0..count {
                            session.send(packet.clone());
                        }
                    }
                    return;
                }
                session.send(Packet::new(format!("4{text}").as_bytes()));
            }
        }
    }

    fn on_binary(self: &Arc<Self>, session: &Arc<Session<()>>, data: &[u8]) {
        session.send(Packet::new(format!("4binary:{}", data.len()).as_bytes()));
    }

    fn on_close(self: &Arc<Self>, session: &Arc<Session<()>>, reason: DisconnectReason) {
        let _ = self.closes.send((session.sid.clone(), reason));
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub handler: Arc<Echo>,
    closes: Mutex<mpsc::UnboundedReceiver<(Box<str>, DisconnectReason)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(config: Config) -> Res<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Arc::new(Echo {
            engine: Engine::new(config),
            closes: tx,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = engineio::routes(handler.clone()).into_make_service_with_connect_info::<ConnInfo>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(ClosableListener::new(listener), app).await;
        });
        Ok(Self {
            addr,
            handler,
            closes: Mutex::new(rx),
            task,
        })
    }

    /// The next session to end, and why.
    pub async fn next_close(&self) -> Res<(Box<str>, DisconnectReason)> {
        let mut rx = self.closes.lock().await;
        Ok(tokio::time::timeout(WAIT, rx.recv()).await?.ok_or("server gone")?)
    }

    /// Waits for `sid` to end; its reason.
    pub async fn closed(&self, sid: &str) -> Res<DisconnectReason> {
        loop {
            let (closed, reason) = self.next_close().await?;
            if &*closed == sid {
                return Ok(reason);
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.handler.engine().sessions().len()
    }

    /// One HTTP/1.1 request on its own connection: the status, content type and body.
    pub async fn http(&self, method: &str, query: &str, body: &[u8]) -> Res<Response> {
        http(self.addr, method, query, body).await
    }

    /// A polling handshake: the sid and the open packet's JSON.
    pub async fn handshake(&self) -> Res<(String, Value)> {
        let r = self.http("GET", "EIO=4&transport=polling", b"").await?;
        if r.status != 200 {
            return Err(format!("handshake answered {}", r.status).into());
        }
        let open = open_packet(&r.body)?;
        let sid = open["sid"].as_str().ok_or("no sid")?.to_owned();
        Ok((sid, open))
    }

    pub async fn poll(&self, sid: &str) -> Res<Response> {
        self.http("GET", &format!("EIO=4&transport=polling&sid={sid}"), b"")
            .await
    }

    pub async fn post(&self, sid: &str, body: &[u8]) -> Res<Response> {
        self.http("POST", &format!("EIO=4&transport=polling&sid={sid}"), body)
            .await
    }

    /// A WebSocket on `/socket.io/?EIO=4&transport=websocket` plus `extra` query parameters.
    pub async fn websocket(&self, extra: &str) -> Res<Ws> {
        let tcp = TcpStream::connect(self.addr).await?;
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket{extra}", self.addr);
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
        Ok(ws)
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// The JSON of an open packet (`0{…}`).
pub fn open_packet(body: &[u8]) -> Res<Value> {
    let json = body.strip_prefix(b"0").ok_or("not an open packet")?;
    Ok(serde_json::from_slice(json)?)
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Engine.IO's refusal: `{ code, message }`.
    pub fn refusal(&self) -> Res<(u64, String)> {
        let v: Value = serde_json::from_slice(&self.body)?;
        let code = v["code"].as_u64().ok_or("no code")?;
        let message = v["message"].as_str().ok_or("no message")?.to_owned();
        Ok((code, message))
    }
}

pub async fn http(addr: std::net::SocketAddr, method: &str, query: &str, body: &[u8]) -> Res<Response> {
    http_with(addr, method, query, "", body).await
}

/// [`http`] with extra header lines, each ending in `\r\n`.
pub async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    query: &str,
    headers: &str,
    body: &[u8],
) -> Res<Response> {
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} /socket.io/?{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await??;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Res<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .ok_or("no status line")?
        .parse()?;
    let mut content_type = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_owned()),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Ok(Response {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Res<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end])?.trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("short chunk")?);
        rest = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

/// A config whose heartbeat is fast enough for tests.
pub fn fast_heartbeat() -> Config {
    Config::default()
        .with_ping_interval(Duration::from_millis(200))
        .with_ping_timeout(Duration::from_millis(200))
}
