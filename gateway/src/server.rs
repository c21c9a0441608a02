//! One node's life: wire the components, listen, serve, and drain on SIGTERM.

use crate::bus::{Bus, LocalFanout, MemoryBus};
use crate::config::Config;
use crate::domain::{Access, Domain};
use crate::http::{self, AppState, Readiness};
use crate::presence::{MemoryPresence, Presence};
use crate::socketio::SocketIoAdapter;
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// The HTTP application (REST and Socket.IO).
    pub router: axum::Router,
    /// Shared REST state, readiness included.
    pub state: Arc<AppState>,
    socketio: Arc<SocketIoAdapter>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// Wires a node from its configuration: bus, presence, domain, adapters, routes.
    pub fn build(config: &Config) -> Result<Node, ServeError> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let fanout = Arc::new(LocalFanout::default());
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(fanout.clone()));
        let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new(config.node_id.clone()));
        let domain = Arc::new(Domain::new(
            Access::new(config.access),
            bus,
            presence,
            config.offline_grace,
            tasks.clone(),
            shutdown.clone(),
        ));
        let (sio_layer, socketio) = SocketIoAdapter::build(config, domain.clone()).map_err(ServeError::Startup)?;
        fanout.register(socketio.clone());

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
            readiness: Readiness::default(),
        });
        let max_body = usize::try_from(config.socketio.max_payload).unwrap_or(usize::MAX);
        let router = http::router(state.clone(), sio_layer, &config.cors, max_body);
        Ok(Node {
            router,
            state,
            socketio,
            shutdown,
            tasks,
        })
    }
}

/// Runs a node until SIGTERM or Ctrl-C, then drains within `--shutdown-grace`.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let Node {
        router,
        state,
        socketio,
        shutdown,
        tasks,
    } = Node::build(&config)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    announce(addr, &config);
    tracing::info!(%addr, node = %config.node_id, "listening");

    let grace = config.shutdown_grace;
    let drain = {
        let state = state.clone();
        let socketio = socketio.clone();
        async move {
            wait_for_signal().await;
            tracing::info!(?grace, "draining");
            state.readiness.start_draining();
            // A hard deadline for the whole drain, whatever hangs.
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::warn!("shutdown grace exceeded, exiting");
                std::process::exit(1);
            });
            socketio.close().await;
        }
    };
    // Small frames must leave at once: without NODELAY, back-to-back frames stall ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(drain)
        .await?;

    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// The one stdout line scripts wait for, and in --dev how to connect.
fn announce(addr: SocketAddr, config: &Config) {
    println!("Switchboard node {} listening on http://{addr}", config.node_id);
    let Some(dev) = &config.dev else { return };
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
