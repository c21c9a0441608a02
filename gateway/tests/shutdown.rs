//! A node's shutdown, driven in process: the shutdown future resolves, the node drains its
//! client sessions and `serve` returns within the grace, its port closed.

use gateway::config::{Config, Options};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String, std::io::Error> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn a_drain_is_bounded_by_the_grace_and_closes_the_port() -> TestResult {
    let options = Options {
        jwt_secret: Some("s".into()),
        database_url: Some("sqlite::memory:".into()),
        shutdown_grace: Some("2s".into()),
        ..Options::default()
    };
    let config = Config::from_options(&options, &std::env::temp_dir())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(gateway::server::serve(config, listener, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if node.is_finished() {
        return Err(format!("the node did not start: {:?}", node.await?).into());
    }
    let ready = get(addr, "/ready")
        .await
        .map_err(|e| format!("before the drain: {e}"))?;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // An open Engine.IO session (long-polling handshake) for the drain to close.
    let open = get(addr, "/socket.io/?EIO=4&transport=polling").await?;
    assert!(open.contains("\"sid\""), "{open}");
    let started = Instant::now();
    let _ = stop.send(());
    let served = tokio::time::timeout(Duration::from_secs(10), node).await??;
    served?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the drain took {took:?}, past the 2 s grace"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after serve returned"
    );
    Ok(())
}
