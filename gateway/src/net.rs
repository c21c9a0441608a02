//! Accepted TCP connections that the node can close from outside: a drain closes each
//! client's transport itself, so that clients see a lost connection and reconnect by
//! themselves (a Socket.IO disconnect packet would tell them not to).

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener whose connections carry a [`Closer`].
pub struct ClosableListener {
    inner: TcpListener,
}

impl ClosableListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl Listener for ClosableListener {
    type Io = ClosableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small frames must leave at once: without NODELAY, back-to-back frames stall ~40 ms.
                    let _ = stream.set_nodelay(true);
                    return (ClosableStream(Arc::new(stream)), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; the stream is shared with its [`Closer`].
pub struct ClosableStream(Arc<TcpStream>);

/// Closes one accepted connection from outside: readers see end of stream at once.
#[derive(Clone, Debug)]
pub struct Closer(Arc<TcpStream>);

impl Closer {
    /// Whether both close the same connection.
    pub fn same(&self, other: &Closer) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The connection itself, for a transport that reads and writes it after an upgrade.
    pub fn stream(&self) -> Arc<TcpStream> {
        self.0.clone()
    }

    /// Shuts the connection down in both directions.
    pub fn close(&self) {
        let _ = SockRef::from(self.0.as_ref()).shutdown(Shutdown::Both);
    }
}

/// What handlers learn about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer.
    pub remote: SocketAddr,
    /// Closes the connection.
    pub closer: Closer,
}

impl Connected<IncomingStream<'_, ClosableListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, ClosableListener>) -> Self {
        Self {
            remote: *stream.remote_addr(),
            closer: Closer(stream.io().0.clone()),
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
        Poll::Ready(SockRef::from(self.0.as_ref()).shutdown(Shutdown::Write))
    }
}
