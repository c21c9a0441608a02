//! Why sessions end, and how.

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection.
    TransportClose,
    /// The connection failed, or the client broke the protocol.
    TransportError,
    /// No pong within the ping timeout.
    HeartbeatTimeout,
    /// The client sent Engine.IO's close packet.
    ClientClose,
    /// The layer above closed the session.
    ServerClose,
    /// The outbound queue stayed full.
    SlowConsumer,
    /// A message or polling body over [`Config::max_payload`](crate::Config::max_payload).
    TooBig,
    /// The server is draining.
    Draining,
}

impl CloseReason {
    /// A short stable name, for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport_close",
            CloseReason::TransportError => "transport_error",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::ClientClose => "client_disconnect",
            CloseReason::ServerClose => "server_disconnect",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooBig => "message_too_big",
            CloseReason::Draining => "closing_server",
        }
    }
}

/// How a close proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Write what is queued first (after a server disconnect packet).
    Flush(CloseReason),
    /// Drop what is queued.
    Now(CloseReason),
}

impl Closing {
    pub(crate) fn reason(self) -> CloseReason {
        match self {
            Closing::Flush(r) | Closing::Now(r) => r,
        }
    }
}
