//! One node's life: wire the components, listen, serve, and drain on SIGTERM.

use crate::bus::{Bus, Inlet, LocalSink, MemoryBus, RedisBus};
use crate::config::Config;
use crate::domain::{Backends, Domain, Health, Rules};
use crate::http::{self, AppState, Readiness, ReadinessCheck};
use crate::metrics::METRICS;
use crate::phoenix::PhoenixAdapter;
use crate::presence::{MemoryPresence, Presence, RedisPresence};
use crate::redis::Redis;
use crate::socketio::SocketIoAdapter;
use crate::store::{ConversationStore, Guarded, MessageStore, MongoStore, SqlStore};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a starting node waits for Redis before giving up.
const REDIS_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address of --listen.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A component failed to start.
    #[error("{0}")]
    Startup(String),
    /// The server stopped with an I/O error.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A node's components, wired and ready to serve.
pub struct Node {
    /// The HTTP application (REST, Socket.IO and Phoenix).
    pub router: axum::Router,
    /// Shared REST state, readiness included.
    pub state: Arc<AppState>,
    socketio: Arc<SocketIoAdapter>,
    phoenix: Arc<PhoenixAdapter>,
    redis: Option<Redis>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// Wires a node from its configuration: bus, presence, domain, adapters, routes. In
    /// cluster mode this connects to Redis and registers the node.
    pub async fn build(config: &Config) -> Result<Node, ServeError> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let inlet = Arc::new(Inlet::default());
        let (bus, presence, redis): (Arc<dyn Bus>, Arc<dyn Presence>, _) = match &config.redis {
            None => (
                Arc::new(MemoryBus::new(inlet.clone())),
                Arc::new(MemoryPresence::new(config.node_id.clone())),
                None,
            ),
            Some(settings) => {
                let redis = Redis::connect(&settings.url, &settings.prefix, REDIS_STARTUP_WAIT)
                    .await
                    .map_err(|e| ServeError::Startup(e.to_string()))?;
                let bus = RedisBus::start(
                    redis.clone(),
                    config.node_id.clone(),
                    inlet.clone(),
                    &tasks,
                    shutdown.clone(),
                )
                .await
                .map_err(|e| ServeError::Startup(e.to_string()))?;
                watch_redis(&redis);
                let presence = RedisPresence::start(redis.clone(), config.node_id.clone(), config.presence_ttl)
                    .await
                    .map_err(|e| ServeError::Startup(e.to_string()))?;
                (
                    bus as Arc<dyn Bus>,
                    Arc::new(presence) as Arc<dyn Presence>,
                    Some(redis),
                )
            }
        };
        let sql = SqlStore::connect(&config.database_url)
            .await
            .map_err(|e| ServeError::Startup(e.to_string()))?;
        sql.migrate().await.map_err(|e| ServeError::Startup(e.to_string()))?;
        let store = Arc::new(Guarded::new(sql, "sql"));
        let messages: Arc<dyn MessageStore> = match &config.mongodb_url {
            None => store.clone(),
            Some(url) => Arc::new(Guarded::new(
                MongoStore::connect(url)
                    .await
                    .map_err(|e| ServeError::Startup(e.to_string()))?,
                "mongodb",
            )),
        };
        let backends = Backends {
            bus,
            presence,
            conversations: store.clone(),
            messages: messages.clone(),
        };
        let rules = Rules {
            access: config.access,
            offline_grace: config.offline_grace,
            max_message_bytes: config.max_message_bytes,
            limits: config.limits,
        };
        let domain = Arc::new(Domain::new(backends, rules, tasks.clone(), shutdown.clone()));
        inlet.connect(&(domain.clone() as Arc<dyn LocalSink>));
        crate::runtime::register_metrics();
        let socketio = SocketIoAdapter::build(config, domain.clone()).map_err(ServeError::Startup)?;
        let phoenix = PhoenixAdapter::build(config, domain.clone()).map_err(ServeError::Startup)?;

        let jwt = config
            .auth
            .jwt
            .clone()
            .ok_or_else(|| ServeError::Startup("no JWT settings".into()))?;
        let state = Arc::new(AppState {
            domain,
            jwt,
            api_key: config.auth.api_key.clone(),
            loopback_trusted: config.auth.loopback_trusted,
            readiness: Readiness::new(readiness_checks(redis.clone(), store.clone(), messages)),
            dev: config.dev.is_some(),
            console: config.console,
        });
        state
            .domain
            .report_to_cluster(config.node_id.clone(), state.clone() as Arc<dyn Health>);
        let max_body = usize::try_from(config.socketio.max_payload).unwrap_or(usize::MAX);
        let router = http::router(
            state.clone(),
            socketio.routes(),
            phoenix.routes(),
            &config.cors,
            max_body,
        );
        Ok(Node {
            router,
            state,
            socketio,
            phoenix,
            redis,
            shutdown,
            tasks,
        })
    }
}

/// `redis_connected{client}`, read at each scrape.
fn watch_redis(redis: &Redis) {
    let (client, subscriber) = (redis.client.clone(), redis.subscriber.clone());
    let commands = METRICS.redis_connected.with_label_values(&["commands"]);
    let pubsub = METRICS.redis_connected.with_label_values(&["subscriber"]);
    METRICS.on_scrape(move || {
        use fred::interfaces::ClientLike;
        commands.set(i64::from(client.is_connected()));
        pubsub.set(i64::from(subscriber.is_connected()));
    });
}

/// Connections the kernel may hold for the node before it accepts them. tokio's default (1,024)
/// overflowed in a connect storm of 10,000 clients (512 at a time, 2 nodes, one worker thread
/// each): the kernel dropped SYNs and those clients waited out the 1 s retransmit. The kernel
/// caps it at `net.core.somaxconn` (4,096 on these machines).
const LISTEN_BACKLOG: u32 = 4096;

/// Runs a node until SIGTERM or Ctrl-C, then drains within `--shutdown-grace`.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let bind = |addr: SocketAddr| {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As TcpListener::bind does: a restarted node binds while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let listener = bind(config.listen).map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    serve(config, listener, wait_for_signal()).await
}

/// Serves on `listener` until `shutdown` resolves, then drains: `/ready` turns 503, client
/// transports close in batches, the departed users' offline grace runs out, the node leaves
/// the cluster. The whole drain is bounded by `--shutdown-grace`; past it the node stops with
/// whatever is still open. Every task the node started has ended when this returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Node {
        router,
        state,
        socketio,
        phoenix,
        redis,
        shutdown: stop_tasks,
        tasks,
    } = Node::build(&config).await?;
    let addr = listener.local_addr()?;
    announce(addr, &config);
    tracing::info!(%addr, node = %config.node_id, "listening");

    let grace = config.shutdown_grace;
    let signalled = CancellationToken::new();
    let drain = {
        let state = state.clone();
        let offline_grace = config.offline_grace;
        let clustered = redis.is_some();
        let signalled = signalled.clone();
        async move {
            shutdown.await;
            signalled.cancel();
            tracing::info!(?grace, "draining");
            state.readiness.start_draining();
            // HTTP keeps serving meanwhile: load balancers see /ready 503 and move traffic.
            let window = drain_window(grace);
            tokio::join!(socketio.drain(window), phoenix.drain(window));
            if clustered {
                // Let the offline grace of the users just disconnected run out, so that those
                // who did not come back elsewhere are announced, then leave the cluster.
                tokio::time::sleep(offline_grace).await;
                state.domain.depart().await;
            }
        }
    };
    let limits = engineio::serve::Limits {
        header_read_timeout: config.server.header_read_timeout,
        max_connections: config.server.max_connections,
        probes: &["/health", "/ready", "/metrics"],
    };
    let served = engineio::serve::serve(listener, router, limits, drain);
    let deadline = async {
        signalled.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = served => {}
        () = deadline => tracing::warn!(?grace, "shutdown grace exceeded; stopping with connections still open"),
    }

    stop_tasks.cancel();
    tasks.close();
    if tokio::time::timeout(TASKS_STOP_WAIT, tasks.wait()).await.is_err() {
        tracing::warn!(left = tasks.len(), "background tasks still running at exit");
    }
    if let Some(redis) = redis {
        redis.quit().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long background tasks (heartbeat, offline graces, typing timers) get to finish once
/// the node is told to stop.
const TASKS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What `/ready` requires: Redis in cluster mode, then the stores (one database, or SQL and
/// MongoDB), each answering within [`READY_TIMEOUT`].
fn readiness_checks(
    redis: Option<Redis>,
    conversations: Arc<dyn ConversationStore>,
    messages: Arc<dyn MessageStore>,
) -> Vec<Box<dyn ReadinessCheck>> {
    let mut checks: Vec<Box<dyn ReadinessCheck>> = Vec::new();
    if let Some(redis) = redis {
        checks.push(Box::new(RedisCheck(redis)));
    }
    checks.push(Box::new(StoreCheck {
        conversations,
        messages,
    }));
    checks
}

/// How long a store may take to answer a readiness ping.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

struct RedisCheck(Redis);

#[async_trait::async_trait]
impl ReadinessCheck for RedisCheck {
    async fn check(&self) -> Result<(), &'static str> {
        if self.0.reachable().await {
            Ok(())
        } else {
            Err("redis unreachable")
        }
    }
}

struct StoreCheck {
    conversations: Arc<dyn ConversationStore>,
    messages: Arc<dyn MessageStore>,
}

#[async_trait::async_trait]
impl ReadinessCheck for StoreCheck {
    async fn check(&self) -> Result<(), &'static str> {
        let pings = async { (self.conversations.ping().await, self.messages.ping().await) };
        match tokio::time::timeout(READY_TIMEOUT, pings).await {
            Ok((Ok(()), Ok(()))) => Ok(()),
            _ => Err("database unreachable"),
        }
    }
}

/// How long a drain spreads the closing of client transports: a few seconds, well inside
/// the shutdown grace.
fn drain_window(grace: std::time::Duration) -> std::time::Duration {
    (grace / 4).min(std::time::Duration::from_secs(5))
}

/// The one stdout line scripts wait for, and in --dev how to connect.
fn announce(addr: SocketAddr, config: &Config) {
    println!("Switchboard node {} listening on http://{addr}", config.node_id);
    let Some(dev) = &config.dev else { return };
    if config.console {
        // First thing a newcomer sees: where to chat, then where to watch.
        println!("\n  Try it: open http://{addr}/demo in two browser tabs and chat.\n  Console: http://{addr}/console");
    }
    let token = config
        .auth
        .jwt
        .as_ref()
        .and_then(|j| {
            j.sign(
                "dev-user",
                std::time::Duration::from_secs(24 * 3600),
                Default::default(),
            )
            .ok()
        })
        .unwrap_or_default();
    println!(
        "\nDevelopment mode (credentials kept in {file}):\n\
         \x20 API key:                {key}\n\
         \x20 token for \"dev-user\":   {token}\n\
         \x20 another user's token:   switchboard token --dev --user alice\n\
         \x20 connect (socket.io):    io(\"http://{addr}\", {{ auth: {{ token: \"<token>\" }} }})\n\
         \x20 try:                    curl http://{addr}/api/users\n",
        file = crate::dev::DEV_FILE,
        key = dev.api_key,
    );
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
