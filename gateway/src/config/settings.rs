//! The typed, validated configuration of a node.

use crate::auth::JwtSettings;
use crate::dev::DevCredentials;
use shared::NodeId;
use std::net::SocketAddr;
use std::time::Duration;

/// Who may join, read and send in a conversation (PROTOCOL.md 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// Stored membership (needs the database).
    Members,
    /// The token's `conversations` claim: ids or glob patterns.
    Claims,
    /// Any authenticated user.
    Open,
}

/// Allowed CORS origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Same-origin only: no CORS headers.
    None,
    /// Any origin.
    Any,
    /// These origins.
    List(Vec<String>),
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

/// What one client may ask of a node: the bounds of issue 12, each with its flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of one history page or join recovery (`--max-page-bytes`); a page stops before
    /// the message that would pass it (it always holds one).
    pub max_page_bytes: u64,
    /// Conversations one connection may be joined to at once (`--max-rooms-per-connection`).
    pub max_rooms_per_connection: usize,
    /// Connections one user may hold on one node (`--max-connections-per-user`).
    pub max_connections_per_user: usize,
    /// Inbound events per user, across their connections (`--user-rate-limit`).
    pub user_rate_limit: RateLimit,
    /// REST requests per user token (`--rest-rate-limit`).
    pub rest_rate_limit: RateLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_page_bytes: 1 << 20,
            max_rooms_per_connection: 1000,
            max_connections_per_user: 50,
            user_rate_limit: RateLimit {
                per_second: 100.0,
                burst: 400,
            },
            rest_rate_limit: RateLimit {
                per_second: 20.0,
                burst: 100,
            },
        }
    }
}

/// The vocabularies a Socket.IO namespace may speak (PROTOCOL.md 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileName {
    /// Seed 001.
    Alt,
    /// Seed 002.
    Chat,
    /// Seed 003.
    Bam,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// JWT verification (and signing, when a secret or private key is known).
    pub jwt: Option<JwtSettings>,
    /// The server-to-server API key.
    pub api_key: Option<String>,
    /// Anonymous Socket.IO connections may `register` a user id.
    pub allow_register: bool,
    /// Loopback REST callers (`127.0.0.0/8`, `::1`, and IPv4-mapped `::ffff:127.0.0.0/104`)
    /// need no credentials (in --dev, or when no API key is set).
    pub loopback_trusted: bool,
}

/// Socket.IO settings.
#[derive(Debug, Clone)]
pub struct SocketIoSettings {
    /// Namespace path → vocabulary, in the order they were given.
    pub namespaces: Vec<(String, ProfileName)>,
    /// Largest inbound frame or polling body, in bytes.
    pub max_payload: u64,
    /// Packets buffered per connection.
    pub max_outbound_queue: usize,
    /// Inbound events per connection.
    pub rate_limit: RateLimit,
    /// Engine.IO heartbeat: how often clients are pinged.
    pub ping_interval: Duration,
    /// Engine.IO heartbeat: how long a pinged client has to answer.
    pub ping_timeout: Duration,
    /// How long a session may stay without a connected namespace.
    pub connect_timeout: Duration,
}

/// What the HTTP server allows one client.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Open connections past which new ones are served the probes only.
    pub max_connections: usize,
    /// Deadline for a request's head.
    pub header_read_timeout: Duration,
}

/// Cluster mode.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL, with password if any.
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
}

/// The whole, validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// This node's id.
    pub node_id: NodeId,
    /// Cluster mode; `None` for a single node.
    pub redis: Option<RedisSettings>,
    /// The SQL database (`sqlite://…`, `sqlite::memory:`, `postgres://…`).
    pub database_url: String,
    /// MongoDB for messages, receipts and reactions; `None`: they live in the SQL database.
    pub mongodb_url: Option<String>,
    /// Authentication.
    pub auth: AuthConfig,
    /// Access rule for conversations.
    pub access: AccessMode,
    /// CORS.
    pub cors: CorsOrigins,
    /// Socket.IO.
    pub socketio: SocketIoSettings,
    /// What the HTTP server allows one client.
    pub server: ServerLimits,
    /// Largest stored message (content and metadata), in bytes.
    pub max_message_bytes: u64,
    /// Per-client bounds.
    pub limits: Limits,
    /// Presence entry lifetime without heartbeat.
    pub presence_ttl: Duration,
    /// Delay before announcing a user offline.
    pub offline_grace: Duration,
    /// Idle Phoenix sockets are closed after this.
    pub phoenix_idle_timeout: Duration,
    /// Longest SIGTERM drain.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; `None`: one per CPU this process may use.
    pub worker_threads: Option<usize>,
    /// Development mode (prints a token and a curl line at start).
    pub dev: Option<DevCredentials>,
    /// Serve the operator console (/console) and the demo chat (/demo).
    pub console: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint traces are exported to; `None`: tracing is off.
    pub otlp_endpoint: Option<String>,
}

/// `--listen` default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
pub(super) const DEFAULT_PROFILES: &str = "/=alt,/chat=chat";
