//! The `switchboard` command line: subcommands and every option, kept as strings.

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;

/// The `switchboard` command line.
#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard: a realtime messaging gateway (Socket.IO and Phoenix Channels over one cluster)",
    after_help = "Every flag may also come from its SWITCHBOARD_* environment variable or from the \
                  TOML file given to --config (keys are the flag names without dashes, e.g. \
                  `jwt-secret = \"...\"`). Precedence: flag > env > file > default."
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub options: Options,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one gateway node (the default).
    Serve,
    /// Print a user JWT signed with --jwt-secret or --jwt-private-key-file.
    Token(TokenArgs),
    /// Apply database migrations to --database-url and exit.
    Migrate,
}

/// Flags of `switchboard token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the `sub` claim, or the claim named by --jwt-user-claim).
    #[arg(long)]
    pub user: String,
    /// Lifetime of the token, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Extra claim as key=value; repeatable. `conversations=a,b` gives a list, `admin=true` a boolean.
    #[arg(long = "claim", value_name = "KEY=VALUE")]
    pub claims: Vec<String>,
}

/// Every option of PROTOCOL.md section 1, as given on the command line or in the environment.
/// Values stay strings here so that each one is validated once, with an error naming its flag.
#[derive(Debug, Default, Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Options {
    /// TOML file with any of these options (keys are the flag names).
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// HTTP/WebSocket address [default: 127.0.0.1:3000]
    #[arg(long, global = true, env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,

    /// Redis URL (redis:// or rediss://); unset: a single node with in-process bus and presence [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_REDIS_URL", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, to share one Redis between deployments [default: switchboard]
    #[arg(long, global = true, env = "SWITCHBOARD_REDIS_PREFIX", value_name = "PREFIX")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,

    /// Database for conversations and messages [default: sqlite://switchboard.db]
    #[arg(long, global = true, env = "SWITCHBOARD_DATABASE_URL", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,

    /// MongoDB URL for messages, receipts and reactions [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_MONGODB_URL", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb_url: Option<String>,

    /// HS256 secret that signs user JWTs [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_SECRET", value_name = "SECRET")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,

    /// RS256/ES256 PEM public key file that verifies user JWTs [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<String>,

    /// RS256/ES256 PEM private key file, used only by `switchboard token` [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_PRIVATE_KEY_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_private_key_file: Option<String>,

    /// Required `iss` claim [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_ISSUER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_AUDIENCE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on exp/nbf [default: 5s]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_LEEWAY", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub jwt_leeway: Option<String>,

    /// Accept tokens without an `exp` claim (tokens of `switchboard token` always carry one) [default: off]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_ALLOW_NO_EXP", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_allow_no_exp: Option<bool>,

    /// JWT claim holding the user id [default: sub]
    #[arg(long, global = true, env = "SWITCHBOARD_JWT_USER_CLAIM", value_name = "CLAIM")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_user_claim: Option<String>,

    /// Secret for the server-to-server REST API [default: unset]
    #[arg(long, global = true, env = "SWITCHBOARD_API_KEY", value_name = "KEY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,

    /// Who may join, read and send: members, claims or open [default: members]
    #[arg(long, global = true, env = "SWITCHBOARD_ACCESS", value_name = "MODE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,

    /// Let unauthenticated Socket.IO connections `register` a user id (trusted networks only) [default: off]
    #[arg(long, global = true, env = "SWITCHBOARD_ALLOW_REGISTER", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_register: Option<bool>,

    /// Development mode: generated credentials, open access, register allowed, CORS * [default: off]
    #[arg(long, global = true, env = "SWITCHBOARD_DEV", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<bool>,

    /// In --dev, allow listening on a non-loopback address [default: off]
    #[arg(long, global = true, env = "SWITCHBOARD_DEV_ALLOW_REMOTE", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_allow_remote: Option<bool>,

    /// Serve the built-in pages: the operator console at /console and the demo chat at /demo [default: true]
    #[arg(long, global = true, env = "SWITCHBOARD_CONSOLE", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<bool>,

    /// This node's id in the cluster [default: hostname + random suffix]
    #[arg(long, global = true, env = "SWITCHBOARD_NODE_ID", value_name = "ID")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,

    /// How long presence entries survive without a heartbeat [default: 30s]
    #[arg(long, global = true, env = "SWITCHBOARD_PRESENCE_TTL", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub presence_ttl: Option<String>,

    /// Delay before `user offline` is announced after a user's last connection closes, so that
    /// a page reload sends neither offline nor online (lists show the user offline at once) [default: 3s]
    #[arg(long, global = true, env = "SWITCHBOARD_OFFLINE_GRACE", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub offline_grace: Option<String>,

    /// A Phoenix socket with no inbound frame (not even a heartbeat) for this long is closed [default: 60s]
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_PHOENIX_IDLE_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub phoenix_idle_timeout: Option<String>,

    /// How long a SIGTERM drain may take [default: 30s]
    #[arg(long, global = true, env = "SWITCHBOARD_SHUTDOWN_GRACE", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub shutdown_grace: Option<String>,

    /// Threads that run connections and requests [default: the CPUs this process may use]
    #[arg(long, global = true, env = "SWITCHBOARD_WORKER_THREADS", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub worker_threads: Option<String>,

    /// Outbound vocabulary per Socket.IO namespace, e.g. /=bam; entries replace the defaults
    /// for the namespaces they name [default: /=alt,/chat=chat]
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SOCKETIO_PROFILE",
        value_name = "NS=PROFILE,…"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socketio_profile: Option<String>,

    /// Largest inbound frame or polling body [default: 1MB]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_PAYLOAD", value_name = "SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_payload: Option<String>,

    /// Largest stored message: content and metadata together [default: 8KiB]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", value_name = "SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_message_bytes: Option<String>,

    /// Frames queued per connection before it counts as a slow consumer [default: 1024]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_OUTBOUND_QUEUE", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_outbound_queue: Option<String>,

    /// Engine.IO ping interval, announced to clients as pingInterval [default: 25s]
    #[arg(long, global = true, env = "SWITCHBOARD_PING_INTERVAL", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_interval: Option<String>,

    /// Engine.IO ping timeout: a client silent this long after a ping is closed [default: 20s]
    #[arg(long, global = true, env = "SWITCHBOARD_PING_TIMEOUT", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_timeout: Option<String>,

    /// An Engine.IO session that connects no Socket.IO namespace this long is closed [default: 45s]
    #[arg(long, global = true, env = "SWITCHBOARD_CONNECT_TIMEOUT", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,

    /// Open connections past which new ones get only /health, /ready and /metrics [default: the file-descriptor limit minus 256]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_CONNECTIONS", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_connections: Option<String>,

    /// How long a connection may take to send a request's head before it is closed [default: 10s]
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,

    /// Inbound events per connection, e.g. 50/s,burst=200 [default: 50/s,burst=200]
    #[arg(long, global = true, env = "SWITCHBOARD_RATE_LIMIT", value_name = "RATE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,

    /// Inbound events per user, across all their connections on a node [default: 100/s,burst=400]
    #[arg(long, global = true, env = "SWITCHBOARD_USER_RATE_LIMIT", value_name = "RATE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_rate_limit: Option<String>,

    /// REST requests per user token; the API key is not limited [default: 20/s,burst=100]
    #[arg(long, global = true, env = "SWITCHBOARD_REST_RATE_LIMIT", value_name = "RATE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_rate_limit: Option<String>,

    /// Conversations one connection may be joined to at once [default: 1000]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_ROOMS_PER_CONNECTION", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_rooms_per_connection: Option<String>,

    /// Connections one user may hold on one node [default: 50]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_connections_per_user: Option<String>,

    /// Bytes of one history page or join recovery (at least --max-message-bytes) [default: 1MiB]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_PAGE_BYTES", value_name = "SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_page_bytes: Option<String>,

    /// Allowed CORS origins: a comma list, or * [default: none (same-origin)]
    #[arg(long, global = true, env = "SWITCHBOARD_CORS_ORIGINS", value_name = "ORIGINS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<String>,

    /// Log filter, e.g. info or gateway=debug,socketioxide=info [default: info]
    #[arg(long, global = true, env = "SWITCHBOARD_LOG", value_name = "FILTER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// Log format: text or json [default: text]
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,

    /// OTLP/HTTP collector to export traces to, e.g. http://127.0.0.1:4318; tracing is on
    /// exactly when set (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER[_ARG]
    /// are honoured) [default: unset, no tracing]
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// Accepts a string or a number in the TOML file (`max-outbound-queue = 1024`).
fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        F(f64),
    }
    Ok(Option::<Raw>::deserialize(d)?.map(|r| match r {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::F(f) => f.to_string(),
    }))
}
