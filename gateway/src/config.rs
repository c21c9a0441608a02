//! Configuration: command-line flags, their `SWITCHBOARD_*` env twins, and a `--config` TOML
//! file, merged once at start-up into typed structs (precedence flag > env > file > default).
//! Nothing else in the gateway reads the environment.

use crate::auth::{JwtKeys, JwtSettings};
use crate::dev::DevCredentials;
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};
use shared::NodeId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: one line, naming the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag (or its env twin, or its key in the file) has a value that cannot be used.
    #[error("invalid value for --{flag}: {reason}")]
    Invalid {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// A combination of flags that cannot start a node.
    #[error("{0}")]
    Refused(String),
    /// The `--config` file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file given to `--config`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

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

    /// Largest message content [default: 8KiB]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", value_name = "SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_message_bytes: Option<String>,

    /// Frames queued per connection before it counts as a slow consumer [default: 1024]
    #[arg(long, global = true, env = "SWITCHBOARD_MAX_OUTBOUND_QUEUE", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub max_outbound_queue: Option<String>,

    /// Inbound events per connection, e.g. 50/s,burst=200 [default: 50/s,burst=200]
    #[arg(long, global = true, env = "SWITCHBOARD_RATE_LIMIT", value_name = "RATE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,

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

impl Options {
    /// Merges the `--config` file under the flags and env values clap already resolved.
    pub fn layered(self) -> Result<Options, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file_error = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(file_error("no such file".into()));
        }
        let mut merged: Options = Figment::new()
            .merge(Toml::file_exact(&path))
            .merge(Serialized::defaults(&self))
            .extract()
            .map_err(|e| file_error(e.to_string().replace('\n', " ")))?;
        merged.config = Some(path);
        Ok(merged)
    }
}

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
    /// Loopback REST callers need no credentials (in --dev, or when no API key is set).
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
    /// Largest message content, in bytes.
    pub max_message_bytes: u64,
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
    /// Log format.
    pub log_format: LogFormat,
}

/// `--listen` default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
const DEFAULT_PROFILES: &str = "/=alt,/chat=chat";

impl Config {
    /// Validates merged options into a node configuration; `dev_dir` is where --dev keeps its
    /// generated credentials (the working directory).
    pub fn from_options(o: &Options, dev_dir: &Path) -> Result<Config, ConfigError> {
        let listen: SocketAddr = o
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|_| invalid("listen", "expected IP:PORT, e.g. 127.0.0.1:3000"))?;

        let redis = match &o.redis_url {
            None => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                let prefix = o.redis_prefix.clone().unwrap_or_else(|| "switchboard".into());
                if prefix.is_empty() || prefix.contains(char::is_whitespace) {
                    return Err(invalid("redis-prefix", "must be non-empty, without spaces"));
                }
                Some(RedisSettings {
                    url: url.clone(),
                    prefix,
                })
            }
            Some(_) => return Err(invalid("redis-url", "expected a redis:// or rediss:// URL")),
        };
        let database_url = o
            .database_url
            .clone()
            .unwrap_or_else(|| "sqlite://switchboard.db".into());
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| database_url.starts_with(scheme))
        {
            return Err(invalid(
                "database-url",
                "expected sqlite://…, sqlite::memory: or postgres://…",
            ));
        }
        let mongodb_url = match &o.mongodb_url {
            Some(url) if !(url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")) => {
                return Err(invalid("mongodb-url", "expected a mongodb:// or mongodb+srv:// URL"));
            }
            other => other.clone(),
        };

        let dev_mode = o.dev.unwrap_or(false);
        let dev = if dev_mode {
            if !listen.ip().is_loopback() && !o.dev_allow_remote.unwrap_or(false) {
                return Err(invalid(
                    "listen",
                    format!("--dev refuses to listen on non-loopback {listen}; add --dev-allow-remote if you mean it"),
                ));
            }
            Some(DevCredentials::load_or_create(dev_dir).map_err(|e| {
                ConfigError::Refused(format!("--dev: cannot keep credentials in {}: {e}", dev_dir.display()))
            })?)
        } else {
            None
        };

        let jwt = jwt_settings(o, dev.as_ref())?;
        if jwt.as_ref().is_none_or(|j| !j.can_verify()) {
            return Err(ConfigError::Refused(
                "no authentication configured: pass --jwt-secret (or --jwt-public-key-file) to verify user tokens, or --dev for local development".into(),
            ));
        }
        let api_key = o.api_key.clone().or_else(|| dev.as_ref().map(|d| d.api_key.clone()));
        if api_key.as_deref() == Some("") {
            return Err(invalid("api-key", "must not be empty"));
        }

        let access = match (o.access.as_deref(), dev_mode) {
            (None, true) => AccessMode::Open,
            (None, false) => AccessMode::Members,
            (Some(s), _) => parse_access(s)?,
        };

        let cors = match o.cors_origins.as_deref() {
            None if dev_mode => CorsOrigins::Any,
            None => CorsOrigins::None,
            Some(s) => parse_cors(s)?,
        };

        let namespaces = parse_profiles(o.socketio_profile.as_deref())?;
        let max_payload = parse_size("max-payload", o.max_payload.as_deref().unwrap_or("1MB"))?;
        if max_payload < 1024 {
            return Err(invalid("max-payload", "must be at least 1KiB"));
        }
        let max_message_bytes = parse_size("max-message-bytes", o.max_message_bytes.as_deref().unwrap_or("8KiB"))?;
        if max_message_bytes == 0 {
            return Err(invalid("max-message-bytes", "must be positive"));
        }
        let max_outbound_queue: usize = o
            .max_outbound_queue
            .as_deref()
            .unwrap_or("1024")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid("max-outbound-queue", "expected a positive integer"))?;
        let rate_limit = parse_rate_limit(o.rate_limit.as_deref().unwrap_or("50/s,burst=200"))?;

        let node_id = match &o.node_id {
            Some(id) if id.trim().is_empty() => return Err(invalid("node-id", "must not be empty")),
            Some(id) => NodeId(id.clone()),
            None => default_node_id(),
        };
        let log_format = match o.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log-format", format!("'{other}' is not text or json"))),
        };

        let presence_ttl = parse_duration("presence-ttl", o.presence_ttl.as_deref().unwrap_or("30s"))?;
        if presence_ttl < std::time::Duration::from_millis(300) {
            return Err(invalid("presence-ttl", "must be at least 300ms"));
        }
        Ok(Config {
            listen,
            node_id,
            redis,
            database_url,
            mongodb_url,
            auth: AuthConfig {
                jwt,
                loopback_trusted: dev_mode || api_key.is_none(),
                api_key,
                allow_register: o.allow_register.unwrap_or(false) || dev_mode,
            },
            access,
            cors,
            socketio: SocketIoSettings {
                namespaces,
                max_payload,
                max_outbound_queue,
                rate_limit,
            },
            max_message_bytes,
            presence_ttl,
            offline_grace: parse_duration("offline-grace", o.offline_grace.as_deref().unwrap_or("3s"))?,
            phoenix_idle_timeout: parse_duration(
                "phoenix-idle-timeout",
                o.phoenix_idle_timeout.as_deref().unwrap_or("60s"),
            )?,
            shutdown_grace: parse_duration("shutdown-grace", o.shutdown_grace.as_deref().unwrap_or("30s"))?,
            worker_threads: o
                .worker_threads
                .as_deref()
                .map(|n| {
                    n.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| invalid("worker-threads", "expected a whole number from 1 to 1024"))
                })
                .transpose()?,
            dev,
            log_format,
        })
    }
}

/// JWT settings from the flags, or from the --dev credentials when none are given.
pub fn jwt_settings(o: &Options, dev: Option<&DevCredentials>) -> Result<Option<JwtSettings>, ConfigError> {
    let secret = o.jwt_secret.clone().or_else(|| dev.map(|d| d.jwt_secret.clone()));
    let read = |flag: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| invalid(flag, format!("cannot read {path}: {e}")))
    };
    let public_pem = o
        .jwt_public_key_file
        .as_deref()
        .map(|p| read("jwt-public-key-file", p))
        .transpose()?;
    let private_pem = o
        .jwt_private_key_file
        .as_deref()
        .map(|p| read("jwt-private-key-file", p))
        .transpose()?;
    if secret.as_deref() == Some("") {
        return Err(invalid("jwt-secret", "must not be empty"));
    }
    let keys = JwtKeys::new(secret.as_deref(), public_pem.as_deref(), private_pem.as_deref())
        .map_err(|(flag, reason)| invalid(flag, reason))?;
    let Some(keys) = keys else { return Ok(None) };
    let user_claim = o.jwt_user_claim.clone().unwrap_or_else(|| "sub".into());
    if user_claim.is_empty() {
        return Err(invalid("jwt-user-claim", "must not be empty"));
    }
    Ok(Some(JwtSettings {
        keys,
        issuer: o.jwt_issuer.clone(),
        audience: o.jwt_audience.clone(),
        leeway: parse_duration("jwt-leeway", o.jwt_leeway.as_deref().unwrap_or("5s"))?,
        user_claim,
    }))
}

fn parse_access(s: &str) -> Result<AccessMode, ConfigError> {
    match s {
        "members" => Ok(AccessMode::Members),
        "claims" => Ok(AccessMode::Claims),
        "open" => Ok(AccessMode::Open),
        other => Err(invalid("access", format!("'{other}' is not members, claims or open"))),
    }
}

fn parse_cors(s: &str) -> Result<CorsOrigins, ConfigError> {
    let s = s.trim();
    if s == "*" {
        return Ok(CorsOrigins::Any);
    }
    if s.is_empty() {
        return Ok(CorsOrigins::None);
    }
    let origins: Vec<String> = s
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .collect();
    for o in &origins {
        let ok =
            (o.starts_with("http://") || o.starts_with("https://")) && axum::http::HeaderValue::from_str(o).is_ok();
        if !ok {
            return Err(invalid(
                "cors-origins",
                format!("'{o}' is not an origin like https://app.example.com"),
            ));
        }
    }
    Ok(CorsOrigins::List(origins))
}

/// Parses `/=alt,/chat=chat`; entries replace the defaults for the namespaces they name.
fn parse_profiles(s: Option<&str>) -> Result<Vec<(String, ProfileName)>, ConfigError> {
    let mut out = Vec::new();
    let mut apply = |entry: &str| -> Result<(), ConfigError> {
        let entry = entry.trim();
        let (ns, profile) = entry
            .split_once('=')
            .ok_or_else(|| invalid("socketio-profile", format!("'{entry}' is not NAMESPACE=PROFILE")))?;
        let ns = ns.trim();
        if !ns.starts_with('/') || ns.contains(char::is_whitespace) {
            return Err(invalid(
                "socketio-profile",
                format!("namespace '{ns}' must start with /"),
            ));
        }
        let profile = match profile.trim() {
            "alt" => ProfileName::Alt,
            "chat" => ProfileName::Chat,
            "bam" => ProfileName::Bam,
            other => {
                return Err(invalid(
                    "socketio-profile",
                    format!("profile '{other}' is not alt, chat or bam"),
                ));
            }
        };
        match out.iter_mut().find(|(n, _): &&mut (String, ProfileName)| n == ns) {
            Some(slot) => slot.1 = profile,
            None => out.push((ns.to_owned(), profile)),
        }
        Ok(())
    };
    for entry in DEFAULT_PROFILES.split(',') {
        apply(entry)?;
    }
    if let Some(s) = s {
        for entry in s.split(',').filter(|e| !e.trim().is_empty()) {
            apply(entry)?;
        }
    }
    Ok(out)
}

fn parse_size(flag: &'static str, s: &str) -> Result<u64, ConfigError> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| invalid(flag, format!("'{s}' is not a size like 1MB or 8KiB")))
}

/// Parses a duration like `30s`, `500ms`, `1h`.
pub fn parse_duration(flag: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|_| invalid(flag, format!("'{s}' is not a duration like 30s or 500ms")))
}

fn parse_rate_limit(s: &str) -> Result<RateLimit, ConfigError> {
    let bad = || invalid("rate-limit", format!("'{s}' is not like 50/s,burst=200"));
    let mut parts = s.split(',');
    let rate = parts.next().ok_or_else(bad)?.trim();
    let (n, unit) = rate.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per_second = match unit.trim() {
        "s" => n,
        "m" => n / 60.0,
        _ => return Err(bad()),
    };
    let mut burst = per_second.ceil().max(1.0) as u32;
    for part in parts {
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        if k.trim() != "burst" {
            return Err(bad());
        }
        burst = v.trim().parse().map_err(|_| bad())?;
    }
    if !(per_second.is_finite() && per_second > 0.0) || burst == 0 {
        return Err(bad());
    }
    Ok(RateLimit { per_second, burst })
}

fn default_node_id() -> NodeId {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into());
    let suffix: u32 = rand::random();
    NodeId(format!("{host}-{:06x}", suffix & 0xff_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(f: impl FnOnce(&mut Options)) -> Options {
        let mut o = Options {
            jwt_secret: Some("s".into()),
            access: Some("open".into()),
            ..Options::default()
        };
        f(&mut o);
        o
    }

    fn config(o: Options) -> Result<Config, ConfigError> {
        Config::from_options(&o, Path::new("/nonexistent"))
    }

    #[test]
    fn defaults() -> Result<(), ConfigError> {
        let c = config(opts(|_| {}))?;
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.socketio.max_payload, 1_000_000);
        assert_eq!(c.max_message_bytes, 8192);
        assert_eq!(
            c.socketio.rate_limit,
            RateLimit {
                per_second: 50.0,
                burst: 200
            }
        );
        assert_eq!(
            c.socketio.namespaces,
            vec![
                ("/".to_owned(), ProfileName::Alt),
                ("/chat".to_owned(), ProfileName::Chat)
            ]
        );
        assert!(c.auth.loopback_trusted);
        Ok(())
    }

    #[test]
    fn profile_entries_replace_named_namespaces_only() -> Result<(), ConfigError> {
        let c = config(opts(|o| o.socketio_profile = Some("/=bam,/x=alt".into())))?;
        assert_eq!(
            c.socketio.namespaces,
            vec![
                ("/".to_owned(), ProfileName::Bam),
                ("/chat".to_owned(), ProfileName::Chat),
                ("/x".to_owned(), ProfileName::Alt)
            ]
        );
        Ok(())
    }

    #[test]
    fn errors_name_their_flag() {
        let cases: Vec<(&str, Options)> = vec![
            ("--listen", opts(|o| o.listen = Some("nowhere".into()))),
            ("--access", opts(|o| o.access = Some("everyone".into()))),
            ("--max-payload", opts(|o| o.max_payload = Some("lots".into()))),
            ("--rate-limit", opts(|o| o.rate_limit = Some("fast".into()))),
            (
                "--socketio-profile",
                opts(|o| o.socketio_profile = Some("/=xyz".into())),
            ),
            ("--cors-origins", opts(|o| o.cors_origins = Some("example.com".into()))),
            ("--presence-ttl", opts(|o| o.presence_ttl = Some("soon".into()))),
            ("--worker-threads", opts(|o| o.worker_threads = Some("0".into()))),
            ("--worker-threads", opts(|o| o.worker_threads = Some("many".into()))),
            ("--jwt-secret", opts(|o| o.jwt_secret = Some(String::new()))),
        ];
        for (flag, o) in cases {
            let err = config(o).map(|_| ()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(flag), "{flag}: {err}");
            assert!(!err.contains('\n'), "{flag}: {err}");
        }
    }

    #[test]
    fn no_auth_is_refused_naming_the_flags() {
        let err = config(opts(|o| o.jwt_secret = None))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--jwt-secret") && err.contains("--dev"), "{err}");
    }

    #[test]
    fn members_mode_is_the_default() -> Result<(), ConfigError> {
        assert_eq!(config(opts(|o| o.access = None))?.access, AccessMode::Members);
        Ok(())
    }

    #[test]
    fn rate_limit_forms() -> Result<(), ConfigError> {
        assert_eq!(
            parse_rate_limit("10/s")?,
            RateLimit {
                per_second: 10.0,
                burst: 10
            }
        );
        assert_eq!(
            parse_rate_limit("120/m,burst=5")?,
            RateLimit {
                per_second: 2.0,
                burst: 5
            }
        );
        assert!(parse_rate_limit("0/s").is_err());
        Ok(())
    }

    #[test]
    fn file_sits_under_flags_and_env() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("switchboard.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:4000\"\nmax-outbound-queue = 64\naccess = \"claims\"\n",
        )?;
        let o = opts(|o| {
            o.config = Some(file.clone());
            o.access = Some("open".into());
        })
        .layered()?;
        let c = config(o)?;
        assert_eq!(c.listen.port(), 4000);
        assert_eq!(c.socketio.max_outbound_queue, 64);
        assert_eq!(c.access, AccessMode::Open);

        std::fs::write(&file, "listne = \"x\"\n")?;
        let err = opts(|o| o.config = Some(file.clone()))
            .layered()
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("listne")));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
