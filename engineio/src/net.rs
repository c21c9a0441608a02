//! Accepted TCP connections whose stream handlers can reach: after a WebSocket upgrade the
//! Engine.IO transport reads and writes the stream itself (hyper hands it over wrapped in
//! types that cannot be unwrapped), and shuts it down to close it — which is how a drain makes
//! clients see a lost connection and reconnect by themselves.

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Open connections of a server, counted from accept to the last handle's drop (a WebSocket
/// session holds its connection past hyper's).
#[derive(Clone, Default, Debug)]
pub struct OpenCount(Arc<AtomicUsize>);

impl OpenCount {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn track(&self, tcp: TcpStream) -> TcpConn {
        self.0.fetch_add(1, Ordering::Relaxed);
        TcpConn {
            tcp,
            open: self.clone(),
        }
    }
}

/// An accepted TCP connection, counted in its server's [`OpenCount`] while it lives.
#[derive(Debug)]
pub struct TcpConn {
    tcp: TcpStream,
    open: OpenCount,
}

impl Deref for TcpConn {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.open.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts one connection; a failure (out of file descriptors and the like) waits a moment
/// instead of spinning, and is logged at most once a second.
pub async fn accept(listener: &TcpListener, open: &OpenCount) -> (Arc<TcpConn>, SocketAddr) {
    let mut failures = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if failures > 1 {
                    tracing::warn!(failures, "accepting again after failures");
                }
                // Small frames must leave at once: without NODELAY, back-to-back frames stall ~40 ms.
                let _ = stream.set_nodelay(true);
                return (Arc::new(open.track(stream)), addr);
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                failures += 1;
                // Backoff up to 1 s: a full fd table frees up as connections close.
                let pause = 10u64.saturating_mul(1 << failures.min(7)).min(1000);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
        }
    }
}

/// A TCP listener whose connections' streams are shared with [`ConnInfo`], for
/// `axum::serve` (tests and examples; the gateway serves through [`crate::serve`]).
pub struct ClosableListener {
    inner: TcpListener,
    open: OpenCount,
}

impl ClosableListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            open: OpenCount::default(),
        }
    }
}

impl Listener for ClosableListener {
    type Io = ClosableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (conn, addr) = accept(&self.inner, &self.open).await;
        (ClosableStream(conn), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; the stream is shared with its [`ConnInfo`].
pub struct ClosableStream(pub(crate) Arc<TcpConn>);

/// What handlers learn about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer.
    pub remote: SocketAddr,
    /// The connection itself.
    pub stream: Arc<TcpConn>,
}

impl Connected<IncomingStream<'_, ClosableListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, ClosableListener>) -> Self {
        Self {
            remote: *stream.remote_addr(),
            stream: stream.io().0.clone(),
        }
    }
}

impl AsyncRead for ClosableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClosableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&**self.0).shutdown(Shutdown::Write))
    }
}
