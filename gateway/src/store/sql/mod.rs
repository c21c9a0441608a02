//! SQLite (the embedded default) and PostgreSQL through sqlx's `Any` driver: one portable
//! schema (migrations/), one set of queries.
//!
//! - `batch`: group commit, the node's queue of appends and what a batch does when the
//!   database refuses it.
//! - `append`: the statements that store messages (one message, or a batch), per dialect.
//! - `messages`: reading messages back (the one row mapping), receipts, read marks, reactions.
//! - `conversations`: conversations and members.

use super::StoreError;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::sync::Arc;
use std::time::Duration;

/// The columns of `messages`, in the order every INSERT lists its values and every SELECT
/// reads them. A macro, not a const, because `concat!` builds the statements at compile time
/// and takes literals only.
macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, sender_id, content, kind, attachments, metadata, client_ref, sent_at"
    };
}

mod append;
mod batch;
mod conversations;
mod messages;
#[cfg(test)]
mod tests;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a query waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long SQLite waits for another process's write lock before answering `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQL store.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    postgres: bool,
    batches: Arc<batch::Batches>,
    /// SQLite has one writer at a time: writers of this process queue here rather than in
    /// SQLite's busy handler, which sleeps (1, 2, 5, 10… ms) between attempts.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

impl SqlStore {
    /// Connects to `sqlite://FILE` (created when missing), `sqlite::memory:` or
    /// `postgres://…`, without migrating.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, BUSY_TIMEOUT).await
    }

    /// [`SqlStore::connect`], with SQLite waiting `busy_timeout` for another process's write
    /// lock (tests shorten it).
    async fn open(url: &str, busy_timeout: Duration) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let memory = url.contains(":memory:");
        let url = if sqlite && !memory && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_owned()
        };
        let busy_pragma = format!("PRAGMA busy_timeout = {}", busy_timeout.as_millis());
        let pool = AnyPoolOptions::new()
            // An in-memory SQLite database lives in its one connection.
            .max_connections(if memory {
                1
            } else if sqlite {
                4
            } else {
                16
            })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                let busy_pragma = busy_pragma.clone();
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers work beside the writer; the busy timeout lets two
                        // processes share the file.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(busy_pragma.as_str()).await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            pool,
            postgres: !sqlite,
            batches: Arc::default(),
            sqlite_writer: Arc::default(),
        })
    }

    /// Applies the migrations not applied yet. PostgreSQL serialises concurrent migrators
    /// with a lock; SQLite does not, so nodes starting together on a fresh file may collide:
    /// the loser tries again and finds the work done.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut attempts = 0;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempts < 5 => {
                    attempts += 1;
                    tracing::debug!(error = %e, attempts, "migration collided, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
                }
                Err(e) => return Err(StoreError::Unavailable(format!("migration failed: {e}"))),
            }
        }
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

/// Whether the database did not take a statement for a reason that is not the statement's
/// own: it cannot be reached, or (SQLite) another process held the write lock past the busy
/// timeout. The next statement would fail the same way, after the same wait.
fn not_taking_writes(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .and_then(|_| d.code())
            .and_then(|code| code.parse::<i32>().ok())
            // The primary result code is the low byte of the extended one: SQLITE_BUSY (5)
            // and SQLITE_LOCKED (6), with their variants (BUSY_SNAPSHOT, …).
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
