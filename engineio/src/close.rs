//! Why connections end, and how.

/// Why a connection ended, whatever its protocol: Engine.IO sessions and plain WebSockets
/// (the Phoenix adapter's) end for these reasons, and [`DisconnectReason::label`] is the one
/// label set of the embedding server's disconnect metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed the connection.
    TransportClose,
    /// The connection failed, or the client broke the protocol.
    TransportError,
    /// No pong within the ping timeout (Engine.IO).
    HeartbeatTimeout,
    /// No frame from the client within the idle timeout (plain WebSocket).
    IdleTimeout,
    /// The client closed on purpose: Engine.IO's close packet, or a WebSocket close frame.
    ClientClose,
    /// The server closed the connection (a kick, a removal it could not queue).
    ServerClose,
    /// The outbound queue stayed full.
    SlowConsumer,
    /// A message or polling body over [`Config::max_payload`](crate::Config::max_payload).
    TooBig,
    /// The server is draining.
    Draining,
    /// A packet the protocol's parser refuses (the reference server's `parse error`).
    ParseError,
    /// No namespace connected within the connect timeout (Socket.IO).
    ConnectTimeout,
}

impl DisconnectReason {
    /// Every reason, for documentation tests and for metrics that pre-create their labels.
    pub const ALL: [DisconnectReason; 11] = [
        DisconnectReason::TransportClose,
        DisconnectReason::TransportError,
        DisconnectReason::HeartbeatTimeout,
        DisconnectReason::IdleTimeout,
        DisconnectReason::ClientClose,
        DisconnectReason::ServerClose,
        DisconnectReason::SlowConsumer,
        DisconnectReason::TooBig,
        DisconnectReason::Draining,
        DisconnectReason::ParseError,
        DisconnectReason::ConnectTimeout,
    ];

    /// A short stable name, for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            DisconnectReason::TransportClose => "transport_close",
            DisconnectReason::TransportError => "transport_error",
            DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::ClientClose => "client_close",
            DisconnectReason::ServerClose => "server_close",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::TooBig => "message_too_big",
            DisconnectReason::Draining => "draining",
            DisconnectReason::ParseError => "parse_error",
            DisconnectReason::ConnectTimeout => "connect_timeout",
        }
    }
}

/// How a close proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Write what is queued first (after a server disconnect packet).
    Flush(DisconnectReason),
    /// Drop what is queued.
    Now(DisconnectReason),
    /// The client sent Engine.IO's close: a pending poll ends with a noop.
    Client,
}

impl Closing {
    pub(crate) fn reason(self) -> DisconnectReason {
        match self {
            Closing::Flush(r) | Closing::Now(r) => r,
            Closing::Client => DisconnectReason::ClientClose,
        }
    }
}
