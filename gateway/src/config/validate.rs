//! Merged [`Options`] → [`Config`]: defaults, --dev, and one error per flag at fault.

use super::jwt::jwt_settings;
use super::parse::{
    default_node_id, parse_access, parse_cors, parse_duration, parse_profiles, parse_rate_limit, parse_size,
};
use super::settings::DEFAULT_LISTEN;
use super::{
    AccessMode, AuthConfig, Config, ConfigError, CorsOrigins, Limits, LogFormat, Options, RedisSettings, ServerLimits,
    SocketIoSettings, invalid,
};
use crate::dev::DevCredentials;
use shared::NodeId;
use std::net::SocketAddr;
use std::path::Path;

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
            if !listen.ip().to_canonical().is_loopback() && !o.dev_allow_remote.unwrap_or(false) {
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
        let rate_limit = parse_rate_limit("rate-limit", o.rate_limit.as_deref().unwrap_or("50/s,burst=200"))?;
        let limits = limits(o, max_message_bytes)?;
        let ping_interval = parse_duration("ping-interval", o.ping_interval.as_deref().unwrap_or("25s"))?;
        let ping_timeout = parse_duration("ping-timeout", o.ping_timeout.as_deref().unwrap_or("20s"))?;
        let connect_timeout = parse_duration("connect-timeout", o.connect_timeout.as_deref().unwrap_or("45s"))?;
        let max_connections = match o.max_connections.as_deref() {
            None => default_max_connections(),
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("max-connections", "expected a positive integer"))?,
        };
        let header_read_timeout =
            parse_duration("header-read-timeout", o.header_read_timeout.as_deref().unwrap_or("10s"))?;
        for (flag, d) in [
            ("header-read-timeout", header_read_timeout),
            ("ping-interval", ping_interval),
            ("ping-timeout", ping_timeout),
            ("connect-timeout", connect_timeout),
        ] {
            if d < std::time::Duration::from_millis(50) {
                return Err(invalid(flag, "must be at least 50ms"));
            }
        }

        let node_id = match &o.node_id {
            Some(id) if id.trim().is_empty() => return Err(invalid("node-id", "must not be empty")),
            Some(id) => NodeId::from(id.clone()),
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
                ping_interval,
                ping_timeout,
                connect_timeout,
            },
            server: ServerLimits {
                max_connections,
                header_read_timeout,
            },
            max_message_bytes,
            limits,
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
            console: o.console.unwrap_or(true),
            log_format,
            otlp_endpoint: match o.otlp_endpoint.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(url) if url.starts_with("http://") => Some(url.to_owned()),
                Some(_) => return Err(invalid("otlp-endpoint", "expected an http:// URL (OTLP over HTTP)")),
            },
        })
    }
}

/// The file descriptors this process may open, less room for the store, Redis, logs and the
/// probes: past it a node would fail to accept at all.
fn default_max_connections() -> usize {
    const RESERVED: u64 = 256;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    usize::try_from(limit.saturating_sub(RESERVED).max(64)).unwrap_or(usize::MAX)
}

/// A positive count flag.
fn count(flag: &'static str, value: Option<&str>, default: usize) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid(flag, "expected a positive integer")),
    }
}

/// The per-client bounds; `max_message_bytes` is the floor of a history page's bytes.
fn limits(o: &Options, max_message_bytes: u64) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let max_page_bytes = match o.max_page_bytes.as_deref() {
        None => d.max_page_bytes,
        Some(s) => parse_size("max-page-bytes", s)?,
    };
    if max_page_bytes < max_message_bytes {
        return Err(invalid("max-page-bytes", "must be at least --max-message-bytes"));
    }
    Ok(Limits {
        max_page_bytes,
        max_rooms_per_connection: count(
            "max-rooms-per-connection",
            o.max_rooms_per_connection.as_deref(),
            d.max_rooms_per_connection,
        )?,
        max_connections_per_user: count(
            "max-connections-per-user",
            o.max_connections_per_user.as_deref(),
            d.max_connections_per_user,
        )?,
        user_rate_limit: match o.user_rate_limit.as_deref() {
            None => d.user_rate_limit,
            Some(s) => parse_rate_limit("user-rate-limit", s)?,
        },
        rest_rate_limit: match o.rest_rate_limit.as_deref() {
            None => d.rest_rate_limit,
            Some(s) => parse_rate_limit("rest-rate-limit", s)?,
        },
    })
}
