//! The outbound side every WebSocket shares, Engine.IO's or plain: a frame goes straight to
//! the TCP socket when nothing is queued before it; what the kernel does not take at once is
//! queued, up to a bound, and the owning task writes the queue later, a batch per `writev`.

use crate::packet::Packet;
use std::collections::VecDeque;
use std::io;
use tokio::net::TcpStream;

/// Queued frames written by one system call.
const FLUSH_BATCH: usize = 64;

/// Frames not yet written, the first perhaps partly.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Frames not yet written (WebSocket) or not yet polled (polling).
    pub(crate) queue: VecDeque<Packet>,
    /// Bytes of the first queued frame already written.
    pub(crate) written: usize,
}

/// What became of a frame given to [`Outbox::push`].
pub(crate) enum Pushed {
    /// Written whole, or queued behind others: nobody needs waking.
    Done,
    /// Queued first: the task that writes must be woken.
    Queued,
    /// The queue is full: the client is a slow consumer.
    Full,
    /// The socket failed.
    Failed,
}

/// What a flush left.
pub(crate) enum Flushed {
    /// Nothing queued.
    Empty,
    /// The socket's send buffer is full.
    Blocked,
}

impl Outbox {
    /// Writes `packet` through to `tcp` when given and nothing waits before it; queues it
    /// otherwise, at most `max` frames.
    pub(crate) fn push(&mut self, tcp: Option<&TcpStream>, packet: Packet, max: usize) -> Pushed {
        if let Some(tcp) = tcp
            && self.queue.is_empty()
        {
            let frame = packet.frame();
            match write(tcp, frame) {
                Ok(n) if n == frame.len() => return Pushed::Done,
                Ok(n) => self.written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.written = 0,
                Err(_) => return Pushed::Failed,
            }
            self.queue.push_back(packet);
            return Pushed::Queued;
        }
        if self.queue.len() >= max {
            return Pushed::Full;
        }
        self.queue.push_back(packet);
        if self.queue.len() == 1 {
            Pushed::Queued
        } else {
            Pushed::Done
        }
    }

    /// Forgets what is queued, except the rest of a partly written frame: cutting a frame
    /// short would leave the client's stream unreadable, and a close frame must follow whole.
    pub(crate) fn drop_unstarted(&mut self) {
        let keep = usize::from(self.written > 0);
        self.queue.truncate(keep);
    }

    /// Writes queued frames until the queue is empty or the socket would block.
    pub(crate) fn flush(&mut self, tcp: &TcpStream) -> io::Result<Flushed> {
        loop {
            if self.queue.is_empty() {
                // A drained queue gives its buffer back: an idle connection keeps none.
                if self.queue.capacity() > 0 {
                    self.queue = VecDeque::new();
                }
                return Ok(Flushed::Empty);
            }
            // What waited goes out together: one writev for up to FLUSH_BATCH frames, so a
            // consumer that fell behind costs fewer system calls per frame, not more.
            let written = self.written;
            let mut slices = [io::IoSlice::new(&[]); FLUSH_BATCH];
            let mut count = 0;
            for (slot, packet) in slices.iter_mut().zip(self.queue.iter()) {
                let frame = packet.frame();
                *slot = io::IoSlice::new(if count == 0 { &frame[written..] } else { frame });
                count += 1;
            }
            match tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    n += written;
                    self.written = 0;
                    while let Some(front) = self.queue.front() {
                        let len = front.frame().len();
                        if n < len {
                            self.written = n;
                            break;
                        }
                        n -= len;
                        self.queue.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// One `send(2)`, without waiting: through tokio, so that a full socket clears the
/// write readiness the owning task then waits on.
fn write(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    tcp.try_io(tokio::io::Interest::WRITABLE, || {
        socket2::SockRef::from(tcp).send(bytes)
    })
}
