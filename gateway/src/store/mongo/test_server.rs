//! A private `secantusd-py` (a MongoDB wire-protocol server; MongoDB itself is not
//! installable here) on a free port, for tests that need a real server. scripts/test
//! installs it; `SECANTUSD_PY` names the executable when it is not on `PATH`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server, killed (and its data removed) on drop.
pub(crate) struct TestMongo {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    standalone: bool,
    /// `mongodb://127.0.0.1:PORT/DB`.
    pub(crate) url: String,
}

fn executable() -> String {
    std::env::var("SECANTUSD_PY").unwrap_or_else(|_| "secantusd-py".into())
}

impl TestMongo {
    /// A single-node replica set (transactions available), database `db`.
    pub(crate) async fn start(db: &str) -> Result<Self, String> {
        Self::start_with(db, false).await
    }

    /// A standalone server: the driver sees no replica set, so no transactions.
    pub(crate) async fn start_standalone(db: &str) -> Result<Self, String> {
        Self::start_with(db, true).await
    }

    async fn start_with(db: &str, standalone: bool) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = std::env::temp_dir().join(format!("switchboard-mongo-{}-{port}", std::process::id()));
        let mut server = Self {
            child: None,
            port,
            dir,
            standalone,
            url: format!("mongodb://127.0.0.1:{port}/{db}"),
        };
        server.restart().await?;
        Ok(server)
    }

    /// Starts the server (again) on the same port and data directory.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut command = Command::new(executable());
        command
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--log-level",
                "WARNING",
                // Acknowledged writes survive a SIGKILL, as with a journaled mongod.
                "--sync-on-commit",
                // configureFailPoint, to make the server fail chosen commands.
                "--enable-test-commands",
            ])
            .arg("--storage-path")
            .arg(&self.dir)
            .stdout(Stdio::null());
        if self.standalone {
            command.arg("--standalone");
        }
        let child = command.spawn().map_err(|e| {
            format!(
                "cannot start {} (scripts/test installs it: pip install secantusdb==0.7.0b3): {e}",
                executable()
            )
        })?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("{} exited at start: {status}", executable()));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{} did not listen on port {} within 60 s",
            executable(),
            self.port
        ))
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: it keeps its connections but
    /// answers nothing while frozen.
    pub(crate) fn freeze(&self, frozen: bool) -> Result<(), String> {
        let pid = self.child.as_ref().ok_or("the server is not running")?.id();
        let status = Command::new("kill")
            .args([if frozen { "-STOP" } else { "-CONT" }, &pid.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("kill failed: {status}"));
        }
        // The signal takes effect asynchronously: wait until every thread is stopped.
        let stopped = |status: &str| status.lines().any(|l| l.starts_with("State:") && l.contains("stopped"));
        for _ in 0..200 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
            if stopped(&status) == frozen {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "the server did not {}",
            if frozen { "stop" } else { "continue" }
        ))
    }

    /// Kills the server at once (SIGKILL), keeping its data directory.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestMongo {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
