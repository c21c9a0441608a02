//! The reference test suite's server, on this crate: an Engine.IO echo server at `/engine.io/`
//! with the heartbeat the suite expects (`pingInterval` 300 ms, `pingTimeout` 200 ms). The
//! official `socketio/engine.io-protocol` test suite runs against it unchanged but for its
//! URL (`scripts/protocol-suites`).
//!
//! Usage: `cargo run -p engineio --example echo -- 127.0.0.1:3000`

use engineio::net::{ClosableListener, ConnInfo};
use engineio::{Config, DisconnectReason, Engine, Handler, Packet, Session};
use std::sync::Arc;
use std::time::Duration;

struct Echo {
    engine: Engine<()>,
}

impl Handler for Echo {
    type Data = ();

    fn engine(&self) -> &Engine<()> {
        &self.engine
    }

    fn on_message(self: &Arc<Self>, session: &Arc<Session<()>>, text: &str) {
        let mut packet = b"4".to_vec();
        packet.extend_from_slice(text.as_bytes());
        session.send(Packet::new(&packet));
    }

    fn on_binary(self: &Arc<Self>, session: &Arc<Session<()>>, data: &[u8]) {
        session.send(Packet::binary(data));
    }

    fn on_close(self: &Arc<Self>, _session: &Arc<Session<()>>, _reason: DisconnectReason) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let config = Config::default()
        .with_ping_interval(Duration::from_millis(300))
        .with_ping_timeout(Duration::from_millis(200));
    let echo = Arc::new(Echo {
        engine: Engine::new(config),
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = engineio::routes_at(echo, "/engine.io").into_make_service_with_connect_info::<ConnInfo>();
    axum::serve(ClosableListener::new(listener), app).await?;
    Ok(())
}
