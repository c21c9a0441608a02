//! The settings every session of an [`Engine`](crate::Engine) shares.

use std::time::Duration;

/// Heartbeat, size limit and queue bound, the same for every session. Build it with
/// [`Config::default`] and the `with_*` methods, or as a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How often the server pings a client (sent in the open packet as `pingInterval`).
    /// Default 25 s, Engine.IO's own. The first ping of a session comes after a random half to
    /// nine tenths of it, so that clients that connected together are not pinged together.
    pub ping_interval: Duration,
    /// How long a pinged client has to answer before it is closed with
    /// [`DisconnectReason::HeartbeatTimeout`](crate::DisconnectReason::HeartbeatTimeout) (`pingTimeout`).
    /// Default 20 s.
    pub ping_timeout: Duration,
    /// The largest message (WebSocket) or request body (polling) a client may send, in bytes
    /// (`maxPayload`). Beyond it the session closes with
    /// [`DisconnectReason::TooBig`](crate::DisconnectReason::TooBig). Default 1,000,000.
    pub max_payload: usize,
    /// Packets a session may hold that the client has not taken yet: on WebSocket what the
    /// kernel did not accept at once, on polling what waits for the next poll. A packet that
    /// finds the queue full closes the session with
    /// [`DisconnectReason::SlowConsumer`](crate::DisconnectReason::SlowConsumer). At least 1; default 1024.
    pub max_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            max_queue: 1024,
        }
    }
}

impl Config {
    /// Sets [`Config::ping_interval`].
    #[must_use]
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`Config::ping_timeout`].
    #[must_use]
    pub fn with_ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// Sets [`Config::max_payload`].
    #[must_use]
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`Config::max_queue`].
    #[must_use]
    pub fn with_max_queue(mut self, packets: usize) -> Self {
        self.max_queue = packets;
        self
    }
}
