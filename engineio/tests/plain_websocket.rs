//! Plain WebSockets (`engineio::websocket`) against a real server: a tiny echo handler that
//! answers a text `m` with `m`, except `close:CODE` (closes after flushing, with CODE) and
//! `flood:N:SIZE` (sends N frames of SIZE bytes at once) and `pause` (reads nothing more for
//! 300 ms).

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engineio::net::{ClosableListener, ConnInfo};
use engineio::websocket::{self, WsConfig, WsServer};
use engineio::{DisconnectReason, Packet};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(5);

struct Echo {
    server: WsServer,
    closes: mpsc::UnboundedSender<DisconnectReason>,
}

async fn echo(
    State(echo): State<Arc<Echo>>,
    ConnectInfo(info): ConnectInfo<ConnInfo>,
    mut request: Request,
) -> Response {
    let (response, upgrade) = match websocket::accept(&mut request, &info, &["echo"]) {
        Ok(accepted) => accepted,
        Err(e) => return e.status().into_response(),
    };
    tokio::spawn(async move {
        let Some((socket, reading)) = upgrade.open(&echo.server).await else {
            return;
        };
        let reason = reading
            .run(|text| {
                if text == "pause" {
                    socket.pause_reading();
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        socket.resume_reading();
                    });
                } else if let Some(code) = text.strip_prefix("close:") {
                    socket.close(DisconnectReason::ServerClose, code.parse().unwrap_or(1000));
                } else if let Some(flood) = text.strip_prefix("flood:") {
                    let mut parts = flood.split(':').map(str::parse::<usize>);
                    if let (Some(Ok(count)), Some(Ok(size))) = (parts.next(), parts.next()) {
                        let packet = Packet::new(&vec![b'x'; size]);
                        for _ in 0..count {
                            socket.send(packet.clone());
                        }
                    }
                } else {
                    socket.send(Packet::new(text.as_bytes()));
                }
            })
            .await;
        let _ = echo.closes.send(reason);
    });
    response
}

struct Server {
    addr: std::net::SocketAddr,
    closes: Mutex<mpsc::UnboundedReceiver<DisconnectReason>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(config: WsConfig) -> Res<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Echo {
            server: WsServer::new(config),
            closes: tx,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/ws", get(echo))
            .with_state(state)
            .into_make_service_with_connect_info::<ConnInfo>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(ClosableListener::new(listener), app).await;
        });
        Ok(Self {
            addr,
            closes: Mutex::new(rx),
            task,
        })
    }

    async fn connect(&self) -> Res<Ws> {
        let tcp = TcpStream::connect(self.addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", self.addr), tcp).await?;
        Ok(ws)
    }

    /// Why the next socket ended.
    async fn next_close(&self) -> Res<DisconnectReason> {
        let mut rx = self.closes.lock().await;
        Ok(tokio::time::timeout(WAIT, rx.recv()).await?.ok_or("server gone")?)
    }
}

async fn next(ws: &mut Ws) -> Res<Message> {
    Ok(tokio::time::timeout(WAIT, ws.next()).await?.ok_or("stream ended")??)
}

async fn next_text(ws: &mut Ws) -> Res<String> {
    match next(ws).await? {
        Message::Text(t) => Ok(t.as_str().to_owned()),
        other => Err(format!("expected text, got {other:?}").into()),
    }
}

/// Reads until the server's close frame; its code and how many text messages came before.
async fn close_code(ws: &mut Ws) -> Res<(Option<CloseCode>, usize)> {
    let mut texts = 0;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(Message::Close(frame))) => return Ok((frame.map(|f| f.code), texts)),
            Some(Ok(Message::Text(_))) => texts += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("no close frame: {e}").into()),
            None => return Err("no close frame".into()),
        }
    }
}

#[tokio::test]
async fn echoes_text_and_selects_the_offered_subprotocol() -> TestResult {
    let server = Server::start(WsConfig::default()).await?;
    let mut request = format!("ws://{}/ws", server.addr).into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "other, echo".parse()?);
    let tcp = TcpStream::connect(server.addr).await?;
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
    assert_eq!(
        response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()),
        Some(&b"echo"[..])
    );
    ws.send(Message::text("hello")).await?;
    assert_eq!(next_text(&mut ws).await?, "hello");
    let long = "é".repeat(40_000);
    ws.send(Message::text(long.clone())).await?;
    assert_eq!(next_text(&mut ws).await?, long);

    // Without a subprotocol offered, none is answered.
    let mut plain = server.connect().await?;
    plain.send(Message::text("x")).await?;
    assert_eq!(next_text(&mut plain).await?, "x");

    // A plain GET is not a handshake.
    let tcp = TcpStream::connect(server.addr).await?;
    let mut tcp = tcp;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await??;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

#[tokio::test]
async fn answers_pings_and_a_client_close() -> TestResult {
    let server = Server::start(WsConfig::default()).await?;
    let mut ws = server.connect().await?;
    ws.send(Message::Ping(b"are you there".to_vec().into())).await?;
    match next(&mut ws).await? {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => return Err(format!("expected a pong, got {other:?}").into()),
    }
    ws.close(None).await?;
    assert_eq!(close_code(&mut ws).await?.0, Some(CloseCode::Normal));
    assert_eq!(server.next_close().await?, DisconnectReason::ClientClose);
    Ok(())
}

#[tokio::test]
async fn closes_an_idle_client_but_not_one_that_pings() -> TestResult {
    let config = WsConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..WsConfig::default()
    };
    let server = Server::start(config).await?;
    let mut ws = server.connect().await?;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(Message::Ping(Vec::new().into())).await?;
        assert!(matches!(next(&mut ws).await?, Message::Pong(_)));
    }
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut ws).await?.0, Some(CloseCode::Away));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(server.next_close().await?, DisconnectReason::IdleTimeout);
    Ok(())
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() -> TestResult {
    let config = WsConfig {
        max_payload: 100,
        ..WsConfig::default()
    };
    let server = Server::start(config).await?;
    let mut ws = server.connect().await?;
    ws.send(Message::text("a".repeat(100))).await?;
    assert_eq!(next_text(&mut ws).await?.len(), 100);
    ws.send(Message::text("a".repeat(101))).await?;
    assert_eq!(close_code(&mut ws).await?.0, Some(CloseCode::Size));
    assert_eq!(server.next_close().await?, DisconnectReason::TooBig);
    Ok(())
}

#[tokio::test]
async fn a_full_queue_closes_a_slow_consumer() -> TestResult {
    let config = WsConfig {
        max_queue: 8,
        slow_consumer_code: 4013,
        ..WsConfig::default()
    };
    let server = Server::start(config).await?;
    let mut ws = server.connect().await?;
    // Far more at once than the kernel's buffers take; the client reads on, so the close
    // frame behind what the kernel took can reach it.
    ws.send(Message::text("flood:2000:65536")).await?;
    let (code, texts) = close_code(&mut ws).await?;
    assert_eq!(code, Some(CloseCode::from(4013)));
    assert_eq!(server.next_close().await?, DisconnectReason::SlowConsumer);
    assert!(texts < 2000, "the queue was dropped, not written: {texts} frames came");
    Ok(())
}

#[tokio::test]
async fn a_server_close_flushes_then_sends_its_code() -> TestResult {
    let server = Server::start(WsConfig::default()).await?;
    let mut ws = server.connect().await?;
    ws.send(Message::text("flood:50:1000")).await?;
    ws.send(Message::text("close:4001")).await?;
    let (code, texts) = close_code(&mut ws).await?;
    assert_eq!(code, Some(CloseCode::from(4001)));
    assert_eq!(texts, 50, "what was queued before the close is written");
    assert_eq!(server.next_close().await?, DisconnectReason::ServerClose);
    // Then the connection ends.
    assert!(matches!(
        tokio::time::timeout(WAIT, ws.next()).await?,
        None | Some(Err(_))
    ));
    Ok(())
}

#[tokio::test]
async fn a_paused_socket_reads_nothing_until_resumed() -> TestResult {
    let config = WsConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..WsConfig::default()
    };
    let server = Server::start(config).await?;
    let mut ws = server.connect().await?;
    let started = std::time::Instant::now();
    ws.send(Message::text("pause")).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws.send(Message::text("after")).await?;
    assert_eq!(next_text(&mut ws).await?, "after");
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "answered while paused, after {:?}",
        started.elapsed()
    );
    // The idle timeout did not run while paused (300 ms > 200 ms), and runs again after.
    assert_eq!(close_code(&mut ws).await?.0, Some(CloseCode::Away));
    Ok(())
}
