//! The `switchboard` binary.

use clap::Parser;
use gateway::auth::parse_claim;
use gateway::config::{Cli, Command, Config, ConfigError, LogFormat, Options, TokenArgs, jwt_settings, parse_duration};
use gateway::dev::DevCredentials;
use gateway::telemetry::{self, Logs};
use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Freed pages go back to the system ~10 s later from jemalloc's own thread, not only when
    // a later allocation happens to pass by: an idle node's RSS is what it holds.
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: jemalloc background thread not started: {e}");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap's message spans several lines (tips, usage); the first names the problem.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let options = match cli.options.layered() {
        Ok(o) => o,
        Err(e) => return fail(&e.to_string()),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(args) => match token(&options, &args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Serve => serve(&options),
        Command::Migrate => migrate(&options),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn serve(options: &Options) -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let config = match Config::from_options(options, &cwd) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(options.log.as_deref().unwrap_or("info")) {
        Ok(f) => f,
        Err(e) => return fail(&format!("invalid value for --log: {e}")),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let logs = match config.log_format {
        LogFormat::Json => Logs::Json,
        LogFormat::Text => Logs::Text,
    };
    // The trace exporter sends its batches from a task of this runtime.
    let telemetry = {
        let _inside = runtime.enter();
        match telemetry::init(filter, logs, config.otlp_endpoint.as_deref(), &config.node_id.0) {
            Ok(t) => t,
            Err(e) => return fail(&e),
        }
    };
    let served = runtime.block_on(gateway::server::run(config));
    // Flushes the spans still buffered, while the runtime still runs the exporter.
    drop(telemetry);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn migrate(options: &Options) -> ExitCode {
    let url = options.database_url.as_deref().unwrap_or("sqlite://switchboard.db");
    if !["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return fail("invalid value for --database-url: expected sqlite://…, sqlite::memory: or postgres://…");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let mongodb = options.mongodb_url.clone();
    let done = runtime.block_on(async {
        let store = gateway::store::SqlStore::connect(url).await?;
        store.migrate().await?;
        // Connecting creates the MongoDB collections' indexes.
        if let Some(mongodb) = mongodb {
            gateway::store::MongoStore::connect(&mongodb).await?;
        }
        Ok::<_, gateway::store::StoreError>(())
    });
    match done {
        Ok(()) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn token(options: &Options, args: &TokenArgs) -> Result<String, String> {
    let dev = if options.dev.unwrap_or(false) {
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        Some(DevCredentials::load_or_create(&cwd).map_err(|e| format!("--dev: {e}"))?)
    } else {
        None
    };
    let jwt = jwt_settings(options, dev.as_ref())
        .map_err(|e: ConfigError| e.to_string())?
        .ok_or("no signing key: pass --jwt-secret or --jwt-private-key-file (or --dev)")?;
    let ttl = parse_duration("ttl", &args.ttl).map_err(|e| e.to_string())?;
    let mut claims = serde_json::Map::new();
    for c in &args.claims {
        let (k, v) = parse_claim(c)?;
        claims.insert(k, v);
    }
    jwt.sign(&args.user, ttl, claims)
}
