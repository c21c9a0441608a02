//! A plain WebSocket echo server on this crate's [`engineio::websocket`] (the socket Phoenix
//! Channels runs on, over the same RFC 6455 reader as Engine.IO's WebSocket transport), for
//! the Autobahn TestSuite's fuzzingclient (`scripts/autobahn`): text and binary messages are
//! echoed.
//!
//! Usage: `cargo run -p engineio --example ws_echo -- 127.0.0.1:9001`

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engineio::Packet;
use engineio::net::{ClosableListener, ConnInfo};
use engineio::websocket::{self, Message, WsConfig, WsServer};
use std::sync::{Arc, LazyLock};

/// Echoes up to 16 MiB, never closes an idle socket.
static SERVER: LazyLock<Arc<WsServer>> = LazyLock::new(|| {
    Arc::new(WsServer::new(WsConfig {
        max_payload: 16 << 20,
        idle_timeout: None,
        ..WsConfig::default()
    }))
});

async fn echo(ConnectInfo(info): ConnectInfo<ConnInfo>, mut request: Request) -> Response {
    let (response, upgrade) = match websocket::accept(&mut request, &info, &[]) {
        Ok(accepted) => accepted,
        Err(e) => return (e.status(), e.to_string()).into_response(),
    };
    tokio::spawn(async move {
        if let Some((socket, reading)) = upgrade.open(&SERVER).await {
            let sender = socket.clone();
            reading
                .run_messages(move |m| match m {
                    Message::Text(text) => sender.send(Packet::new(text.as_bytes())),
                    Message::Binary(data) => sender.send(Packet::binary(data)),
                })
                .await;
        }
    });
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new()
        .fallback(get(echo))
        .into_make_service_with_connect_info::<ConnInfo>();
    axum::serve(ClosableListener::new(listener), app).await?;
    Ok(())
}
