//! The Redis connections of a cluster node, shared by the bus and presence: one client for
//! commands and publishes, one dedicated subscriber connection. Both reconnect by themselves;
//! every command is bounded by a timeout so that nothing queues without bound while Redis is
//! away.

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{Config as FredConfig, ReconnectPolicy};
use std::time::Duration;

/// How long one Redis command may take before it counts as failed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pub/sub messages that may wait for the bus's receiving task.
const BUS_BACKLOG: usize = 16_384;
/// Commands fred may hold while disconnected; beyond this they fail at once.
const MAX_BUFFERED_COMMANDS: usize = 10_000;

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Bad URL or options.
    #[error("invalid --redis-url: {0}")]
    Config(String),
    /// Unreachable at start-up.
    #[error("cannot reach Redis: {0}")]
    Connect(String),
}

/// The node's Redis connections.
#[derive(Clone)]
pub struct Redis {
    /// Commands, scripts and publishes.
    pub client: Client,
    /// The dedicated pub/sub connection.
    pub subscriber: SubscriberClient,
    /// Prefix of every key and channel.
    pub prefix: String,
}

impl Redis {
    /// Connects both connections; fails when Redis cannot be reached within `wait`.
    pub async fn connect(url: &str, prefix: &str, wait: Duration) -> Result<Self, RedisError> {
        let config = FredConfig::from_url(url).map_err(|e| RedisError::Config(e.to_string()))?;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                c.max_command_buffer_len = MAX_BUFFERED_COMMANDS;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 500));
        let client = builder.build().map_err(|e| RedisError::Config(e.to_string()))?;
        // The bus reads pub/sub messages through this channel: a burst larger than it is lost
        // (and counted), so leave room for bursts. Only the subscriber needs it: fred
        // preallocates every broadcast channel of a client at this capacity.
        builder.with_performance_config(|p| {
            p.broadcast_channel_capacity = BUS_BACKLOG;
        });
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| RedisError::Config(e.to_string()))?;
        // `init` listens for the first connection before starting it, so its outcome cannot
        // be missed; later reconnects are fred's.
        let ready = async {
            client.init().await?;
            subscriber.init().await
        };
        match tokio::time::timeout(wait, ready).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RedisError::Connect(e.to_string())),
            Err(_) => return Err(RedisError::Connect(format!("no answer within {wait:?}"))),
        }
        let redis = Self {
            client,
            subscriber,
            prefix: prefix.to_owned(),
        };
        // A refused AUTH can still count as connected: make sure commands are answered.
        let ping: Result<fred::types::Value, _> = redis.client.ping(None).await;
        if let Err(e) = ping {
            redis.quit().await;
            return Err(RedisError::Connect(e.to_string()));
        }
        Ok(redis)
    }

    /// Whether both connections answer now. A connection known to be down answers at once,
    /// so that readiness probes get their 503 without waiting.
    pub async fn reachable(&self) -> bool {
        if !(self.client.is_connected() && self.subscriber.is_connected()) {
            return false;
        }
        let ping = async {
            let a: Result<fred::types::Value, _> = self.client.ping(None).await;
            let b: Result<fred::types::Value, _> = self.subscriber.ping(None).await;
            a.is_ok() && b.is_ok()
        };
        tokio::time::timeout(Duration::from_secs(1), ping)
            .await
            .unwrap_or(false)
    }

    /// Closes both connections.
    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.client.quit().await;
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A private `redis-server` on a free port, for tests that need a real Redis.
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A running Redis, killed on drop.
    pub(crate) struct TestRedis {
        child: Child,
        /// `redis://127.0.0.1:PORT`.
        pub(crate) url: String,
    }

    impl TestRedis {
        pub(crate) async fn start() -> Result<Self, String> {
            Self::start_with(&[]).await
        }

        /// With extra `redis-server` arguments (e.g. `--requirepass`).
        pub(crate) async fn start_with(extra: &[&str]) -> Result<Self, String> {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server (scripts/test installs it): {e}"))?;
            let mut server = Self {
                child,
                url: format!("redis://127.0.0.1:{port}"),
            };
            for _ in 0..100 {
                // Exited: the port was taken meanwhile; whatever answers there is not ours.
                if !matches!(server.child.try_wait(), Ok(None)) {
                    return Err(format!("redis-server exited (port {port} taken?)"));
                }
                if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let mut buf = [0u8; 7];
                    // `-NOAUTH` also proves a password-protected server is up.
                    if s.write_all(b"PING\r\n").await.is_ok()
                        && s.read_exact(&mut buf).await.is_ok()
                        && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
                    {
                        return Ok(server);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err("redis-server did not answer".into())
        }
    }

    /// Runs one command on `redis`'s command connection (for CONFIG, SLOWLOG, CLIENT PAUSE...).
    pub(crate) async fn run(
        redis: &crate::redis::Redis,
        command: &'static str,
        args: &[&str],
    ) -> Result<fred::types::Value, fred::error::Error> {
        use fred::interfaces::ClientLike;
        let cmd = fred::types::CustomCommand::new_static(command, None, false);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        redis.client.custom(cmd, args).await
    }

    /// Logs every command slower than `micros` from now on.
    pub(crate) async fn watch_slow(redis: &crate::redis::Redis, micros: u64) -> Result<(), fred::error::Error> {
        run(
            redis,
            "CONFIG",
            &["SET", "slowlog-log-slower-than", &micros.to_string()],
        )
        .await?;
        run(redis, "CONFIG", &["SET", "slowlog-max-len", "1024"]).await?;
        run(redis, "SLOWLOG", &["RESET"]).await.map(drop)
    }

    /// The commands logged by [`watch_slow`]: (command and first argument, microseconds).
    pub(crate) async fn slow_commands(redis: &crate::redis::Redis) -> Result<Vec<(String, i64)>, fred::error::Error> {
        use fred::types::Value;
        let Value::Array(entries) = run(redis, "SLOWLOG", &["GET", "-1"]).await? else {
            return Ok(Vec::new());
        };
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let Value::Array(fields) = entry else { return None };
                let micros = fields.get(2).and_then(|d| d.as_i64())?;
                let Some(Value::Array(argv)) = fields.get(3) else {
                    return None;
                };
                let name: Vec<String> = argv.iter().take(2).filter_map(|a| a.as_string()).collect();
                Some((name.join(" "), micros))
            })
            .collect())
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::TestRedis;
    use super::*;

    #[tokio::test]
    async fn a_password_in_the_url_authenticates() -> Result<(), Box<dyn std::error::Error>> {
        let server = TestRedis::start_with(&["--requirepass", "s3cret"]).await?;
        let with_password = server.url.replace("redis://", "redis://:s3cret@");
        let redis = Redis::connect(&with_password, "auth", Duration::from_secs(5)).await?;
        assert!(redis.reachable().await);
        let wrong = server.url.replace("redis://", "redis://:wrong@");
        assert!(Redis::connect(&wrong, "auth", Duration::from_secs(2)).await.is_err());
        // Commands really go through the authenticated connection.
        let set: fred::types::Value = redis.client.set("auth:probe", "1", None, None, false).await?;
        drop(set);
        let got: Option<String> = redis.client.get("auth:probe").await?;
        assert_eq!(got.as_deref(), Some("1"));
        redis.quit().await;
        Ok(())
    }
}
