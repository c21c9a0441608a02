//! Serving HTTP over the accepted connections with the limits one client must not be able to
//! break: a deadline for a request's head (an idle or slowloris connection is closed), a cap
//! on open connections past which only the probes are served (so a full server still answers
//! its health checks), accept-error backoff ([`crate::net::accept`]), and a graceful stop.

use crate::net::{ClosableStream, ConnInfo, OpenCount, accept};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// What one server allows its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a connection may take to send a request's head (the first one, or the next
    /// one on a kept-alive connection) before it is closed.
    pub header_read_timeout: Duration,
    /// Open connections (WebSocket sessions included) beyond which a new connection is only
    /// served the `probes` paths, and refused (503) anything else.
    pub max_connections: usize,
    /// Paths served whatever the connection count: health and readiness checks, metrics.
    pub probes: &'static [&'static str],
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests under way end
/// (upgraded connections are the application's to close).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let open = OpenCount::default();
    // Told to stop, each connection finishes the request under way; each holds a sender, so
    // the receiver ends when the last one has.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Some(limits.header_read_timeout));
    tokio::pin!(shutdown);
    loop {
        let (conn, remote) = tokio::select! {
            accepted = accept(&listener, &open) => accepted,
            () = &mut shutdown => break,
        };
        let over = open.get() > limits.max_connections;
        if over {
            tracing::debug!(open = open.get(), "over the connection cap: probes only");
        }
        let info = ConnInfo {
            remote,
            stream: conn.clone(),
        };
        let app = app.clone();
        let probes = limits.probes;
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(info.clone()));
            let app = app.clone();
            async move {
                if over && !probes.contains(&request.uri().path()) {
                    return Ok::<_, std::convert::Infallible>(at_capacity());
                }
                app.oneshot(request).await
            }
        });
        let connection = http
            .serve_connection(TokioIo::new(ClosableStream(conn)), service)
            .with_upgrades();
        let (mut stopping, alive) = (stopping.clone(), alive.clone());
        tokio::spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    let _ = all_done.recv().await;
}

fn at_capacity() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONNECTION, "close"), (header::RETRY_AFTER, "1")],
        "at the connection limit",
    )
        .into_response()
}
