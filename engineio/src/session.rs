//! One client's session, whatever its transport: the outbound queue, the heartbeat and the
//! close state that both transports drive.
//!
//! Senders (a fan-out, an ack) write a frame straight to the TCP socket of a WebSocket
//! session when nothing is queued before it; only what the kernel does not take at once is
//! queued, up to [`Config::max_queue`] packets, beyond which the client is a slow consumer
//! and is closed.

use crate::close::{Closing, DisconnectReason};
use crate::config::Config;
use crate::net::TcpConn;
use crate::outbox::{Outbox, Pushed};
use crate::packet::Packet;
use crate::stats;
use crate::timers::after;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) enum Transport {
    Polling,
    WebSocket(Arc<TcpConn>),
}

pub(crate) struct Heartbeat {
    /// When the next ping is due, or when the awaited pong is late.
    pub(crate) next: Instant,
    awaiting_pong: bool,
}

pub(crate) struct Inner {
    pub(crate) transport: Transport,
    /// Packets not yet written (WebSocket) or not yet polled (polling).
    pub(crate) out: Outbox,
    pub(crate) closing: Option<Closing>,
    /// A polling session whose client probes a WebSocket: polls are answered at once.
    pub(crate) upgrading: bool,
    /// A GET request is waiting on the session.
    pub(crate) polling: bool,
    /// The layer above asked for no more messages until it resumes reading.
    pub(crate) paused: bool,
    pub(crate) heartbeat: Heartbeat,
    /// The WebSocket task, waiting for something to write, a close or reading to resume.
    task: Option<Waker>,
}

impl Inner {
    /// Forgets the WebSocket task, which ended (its waker would keep it allocated).
    pub(crate) fn unpark(&mut self) {
        self.task = None;
    }

    /// Has the WebSocket task woken by [`Session::wake_writer`]; with the state locked, so
    /// that no wake between the task's last look and this goes unseen.
    pub(crate) fn park(&mut self, cx: &Context<'_>) {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.task = Some(cx.waker().clone());
        }
    }
}

/// One client connection, whatever its transport.
pub struct Session<D> {
    /// The Engine.IO session id, 20 URL-safe characters.
    pub sid: Box<str>,
    /// The token from the handshake's `token` query parameter or `Authorization: Bearer`.
    pub token: Option<Box<str>>,
    /// The layer above's state.
    pub data: D,
    state: Mutex<Inner>,
    /// Wakes a pending poll: something to send, a close, an upgrade. (The WebSocket task
    /// waits on the waker in its state instead: no future to keep.)
    pub(crate) wake: Notify,
    /// Wakes a polling session's heartbeat task: the session closed or upgraded, or a pong
    /// moved the next ping.
    pub(crate) closed: Notify,
    /// Wakes the requests that wait for reading to resume (polling POSTs).
    pub(crate) resumed: Notify,
    max_queue: usize,
}

impl<D> Session<D> {
    pub(crate) fn new(sid: Box<str>, token: Option<Box<str>>, transport: Transport, config: &Config) -> Self
    where
        D: Default,
    {
        Self {
            sid,
            token,
            data: D::default(),
            state: Mutex::new(Inner {
                transport,
                out: Outbox::default(),
                closing: None,
                upgrading: false,
                polling: false,
                paused: false,
                heartbeat: Heartbeat {
                    // The first ping comes after half to nine tenths of the interval, at random:
                    // clients that connected together (a reconnect storm, a load test) would
                    // otherwise be pinged together, every interval, for as long as they stay.
                    // Never later than the reference server's, which a client may time.
                    next: after(
                        Instant::now(),
                        config.ping_interval.mul_f64(rand::random_range(0.5..=0.9)),
                    ),
                    awaiting_pong: false,
                },
                task: None,
            }),
            wake: Notify::new(),
            closed: Notify::new(),
            resumed: Notify::new(),
            max_queue: config.max_queue.max(1),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one Engine.IO text packet: written to the socket at once when nothing waits
    /// before it, queued otherwise. A full queue closes the session (slow consumer).
    pub fn send(&self, packet: Packet) {
        self.push(packet, true);
    }

    /// Queues one packet for the session's task, which writes whatever is queued together:
    /// fewer system calls per packet than [`Session::send`] when a server is behind, at the
    /// cost of a task wake-up.
    pub fn enqueue(&self, packet: Packet) {
        self.push(packet, false);
    }

    fn push(&self, packet: Packet, write_through: bool) {
        let mut st = self.state();
        if st.closing.is_some() {
            return;
        }
        let inner = &mut *st;
        let tcp = match &inner.transport {
            Transport::WebSocket(tcp) if write_through => Some(&***tcp),
            _ => None,
        };
        match inner.out.push(tcp, packet, self.max_queue) {
            Pushed::Done => {}
            // Whoever writes is told when the queue stops being empty.
            Pushed::Queued => self.wake_writer(st),
            Pushed::Full => {
                stats::count_outbound_dropped();
                tracing::info!(sid = %self.sid, "closing a slow consumer");
                st.closing = Some(Closing::Now(DisconnectReason::SlowConsumer));
                drop(st);
                self.wake_all();
            }
            Pushed::Failed => {
                st.closing = Some(Closing::Now(DisconnectReason::TransportError));
                drop(st);
                self.wake_all();
            }
        }
    }

    /// Closes the session after writing what is queued (the client gets a server disconnect
    /// packet sent just before).
    pub fn close_after_flush(&self, reason: DisconnectReason) {
        self.close(Closing::Flush(reason));
    }

    /// Closes the session at once: for a WebSocket, the TCP connection is shut down, which
    /// clients treat as a lost connection and reconnect.
    pub fn close_now(&self, reason: DisconnectReason) {
        self.close(Closing::Now(reason));
    }

    fn close(&self, closing: Closing) {
        let mut st = self.state();
        if st.closing.is_none() {
            st.closing = Some(closing);
        }
        drop(st);
        self.wake_all();
    }

    pub(crate) fn wake_all(&self) {
        self.wake_writer(self.state());
        self.closed.notify_one();
    }

    /// Wakes whoever writes for the session: the WebSocket task, or a pending poll.
    pub(crate) fn wake_writer(&self, mut st: MutexGuard<'_, Inner>) {
        let task = st.task.take();
        drop(st);
        self.wake.notify_one();
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Whether the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.state().closing.is_some()
    }

    /// Stops handing the client's messages up (after those already read) until
    /// [`Session::resume_reading`]: backpressure for a layer above whose own queue is full.
    /// A WebSocket stops reading its TCP stream; a polling POST waits before its next packet.
    pub fn pause_reading(&self) {
        self.state().paused = true;
    }

    /// Hands the client's messages up again.
    pub fn resume_reading(&self) {
        let mut st = self.state();
        st.paused = false;
        self.wake_writer(st);
        self.resumed.notify_waiters();
    }

    /// Waits until reading is not paused, or the session closes.
    pub(crate) async fn reading_allowed(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            {
                let st = self.state();
                if !st.paused || st.closing.is_some() {
                    return;
                }
            }
            resumed.await;
        }
    }

    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self.state().transport, Transport::WebSocket(_))
    }

    /// A pong: the next ping is due an interval from now, as the reference server schedules
    /// it. A polling session's heartbeat task (asleep until the pong deadline) is told; the
    /// engine's heartbeat wheel reads the new deadline when the old one comes.
    pub(crate) fn on_pong(&self, config: &Config) {
        let mut st = self.state();
        if st.heartbeat.awaiting_pong {
            st.heartbeat.awaiting_pong = false;
            st.heartbeat.next = after(Instant::now(), config.ping_interval);
            let polling = matches!(st.transport, Transport::Polling);
            drop(st);
            if polling {
                self.closed.notify_one();
            }
        }
    }

    /// Runs when the heartbeat timer fires: pings when due, and returns when to look again;
    /// an error when the pong is late.
    pub(crate) fn heartbeat(&self, config: &Config) -> Result<Instant, DisconnectReason> {
        let now = Instant::now();
        let mut st = self.state();
        if now < st.heartbeat.next {
            return Ok(st.heartbeat.next);
        }
        if st.heartbeat.awaiting_pong {
            if st.paused {
                // The pong may sit unread behind the backpressure: not the client's fault.
                st.heartbeat.next = after(now, config.ping_timeout);
                return Ok(st.heartbeat.next);
            }
            return Err(DisconnectReason::HeartbeatTimeout);
        }
        st.heartbeat.awaiting_pong = true;
        st.heartbeat.next = after(now, config.ping_timeout);
        let next = st.heartbeat.next;
        drop(st);
        static PING: LazyLock<Packet> = LazyLock::new(|| Packet::new(b"2"));
        self.send(PING.clone());
        Ok(next)
    }
}
