//! Storage: migrations, sync state, the batch transaction and the outbox.
//!
//! One code path serves PostgreSQL and SQLite through `sqlx::Any`: the SQL is portable, times are
//! Unix milliseconds, and the only dialect difference (identity columns) lives in two migration
//! folders, `migrations/postgres` and `migrations/sqlite`, picked at run time. `$N` placeholders
//! work on both.
//!
//! - [`state`]: per-mailbox sync state, UIDVALIDITY epochs, present rows.
//! - [`batch`]: the batch transaction.
//! - [`changes`]: flag changes and expunges of stored rows ([`changes_plan`]: what they change,
//!   computed in memory).
//! - [`attachments`]: attachment and raw-message rows of a batch.
//! - [`threads`]: conversation assignment inside the batch transaction ([`thread_model`]: the
//!   in-memory aggregates and grouping; [`thread_writes`]: its multi-row writes).
//! - [`outbox`]: records waiting to be published (in cluster mode, per lease holder).
//! - [`leases`]: cluster mode's heartbeats and mailbox leases; [`fence`]: the lease check in
//!   every mailbox write.
//! - [`actions`]: the queue of actions the API accepted (#19), per mailbox, and outcomes.
//! - [`search`]: the full-text index rows of each batch, their backfill, and running a query.
//! - [`stmt`]: statements built first and run grouped (one round trip on PostgreSQL).
//!
//! Imports between the files go one way (batch → threads → thread_writes → thread_model;
//! everything → stmt and chunk), with one cycle kept on purpose: each file adds its
//! `impl Store` methods and uses the shared [`Store`], [`StoreError`] and row types from this
//! one, while this one only declares the files and re-exports their public types.

mod actions;
mod attachments;
mod batch;
mod changes;
mod changes_plan;
mod chunk;
mod fence;
mod leases;
mod outbox;
mod search;
mod state;
mod stmt;
mod thread_model;
mod thread_writes;
mod threads;

pub use actions::{
    ActionKind, ActionRow, Enqueued, MessageRef, NewAction, NewStep, StepOutcome, StepRow,
};
pub use batch::{BatchTarget, BatchTx, Committed};
pub use changes::Applied;
pub use fence::Fence;
pub use leases::{Acquired, Lease, Membership, NodeRow, Takeover, TakeoverReason, CLUSTER_CHANNEL};
pub use outbox::OutboxRow;
pub use search::{Cursor, Hit, BACKFILL_BATCH};
pub use state::SyncState;

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::changes::ExpungeMode;
use crate::config::StorageConfig;
use crate::message::{ExtractOptions, MessageRecord};

/// Database failures. A mailbox meeting one pauses without advancing `last_uid` and tries
/// again; [`StoreError::is_transient`] says whether trying again soon can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connecting, querying or committing failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Cluster mode: the mailbox's lease is no longer this replica's at this epoch (it expired
    /// and another replica took it). The transaction rolled back; the mailbox must be dropped,
    /// never retried.
    #[error("lease of {account}/{mailbox} lost (epoch {epoch}): another replica owns it")]
    Fenced {
        /// Account id.
        account: String,
        /// Mailbox name.
        mailbox: String,
        /// The epoch this writer held.
        epoch: i64,
    },
}

impl StoreError {
    /// A bounded label for metrics, by cause (never the error text):
    /// - `database_pool_timeout`: no pooled connection within the acquire timeout (10 s):
    ///   every one stayed busy, or the database is unreachable (sqlx keeps retrying a refused
    ///   connect until then, and reports only the timeout);
    /// - `database_connection`: an open connection broke (reset, TLS, protocol);
    /// - `database_constraint`: a write broke a constraint (a bug or a schema mismatch);
    /// - `database_schema`: a column or type the code expects is missing or undecodable;
    /// - `migration`: the embedded migrations failed;
    /// - `database`: any other error the database reported (a deadlock, a full disk, …).
    pub fn kind(&self) -> &'static str {
        let e = match self {
            StoreError::Db(e) => e,
            StoreError::Migrate(_) => return "migration",
            StoreError::Fenced { .. } => return "fenced",
        };
        match e {
            sqlx::Error::PoolTimedOut => "database_pool_timeout",
            sqlx::Error::Migrate(_) => "migration",
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => "database_connection",
            sqlx::Error::Database(db) if db.kind() != sqlx::error::ErrorKind::Other => {
                "database_constraint"
            }
            sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_) => "database_schema",
            _ => "database",
        }
    }

    /// Cluster mode: the write was rolled back because the lease is another replica's.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }

    /// Whether the same work may succeed if tried again soon: an unreachable or overloaded
    /// database, a broken connection, a deadlock. Not a broken constraint, a schema that does
    /// not match the code, a bad URL or a failed migration: those fail the same way every
    /// time until someone changes the code, the schema or the config.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Migrate(_) | StoreError::Fenced { .. } => false,
            StoreError::Db(sqlx::Error::Configuration(_) | sqlx::Error::InvalidArgument(_)) => {
                false
            }
            StoreError::Db(_) => !matches!(
                self.kind(),
                "database_constraint" | "database_schema" | "migration"
            ),
        }
    }
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// The pool plus which backend it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Limits for parsing what this store will hold (raw, attachments, message size).
    extract: ExtractOptions,
    /// `storage.thread_by_subject`: subject may link messages that no Message-ID links.
    thread_by_subject: bool,
    /// `storage.expunged`: what becomes of a row whose message left the mailbox.
    expunged: ExpungeMode,
    /// Cluster mode: the lease every mailbox write checks ([`Store::fenced`]).
    fence: Option<std::sync::Arc<Fence>>,
    /// Whether batches write search index rows (#21); off only to measure what they cost.
    index_search: bool,
}

impl Store {
    /// This store without search index rows in its batches: for measuring what the index
    /// costs at ingest (`examples/search`), never for running.
    #[doc(hidden)]
    pub fn without_search_index(mut self) -> Store {
        self.index_search = false;
        self
    }
}

/// A message row this batch inserted: its `messages.id` and its record.
#[derive(Debug, Clone, Copy)]
struct NewRow<'a> {
    /// `messages.id`.
    pub id: i64,
    /// What was inserted.
    pub rec: &'a MessageRecord,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Connects (creating a missing SQLite file) and sets SQLite up for concurrent writers.
    pub async fn connect(cfg: &StorageConfig) -> Result<Store, StoreError> {
        Self::connect_with(cfg, None).await
    }

    /// [`Store::connect`]; on PostgreSQL, `idle_in_transaction` also bounds how long a session
    /// may sit idle inside a transaction before the server ends it. Cluster mode sets it: a
    /// replica paused in the middle of a commit (SIGSTOP, a GC pause, a cut network) holds
    /// its mailbox's lease row `FOR KEY SHARE`, and the lease cannot change hands until that
    /// transaction ends.
    pub async fn connect_with(
        cfg: &StorageConfig,
        idle_in_transaction: Option<Duration>,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if cfg.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = cfg.url.clone();
        if backend == Backend::Sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let opts = AnyPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(Duration::from_secs(10));
        // Run on every new pooled connection.
        let session_setup: &'static [&'static str] = match backend {
            // sqlx prepares every statement, and after five runs PostgreSQL may switch to a
            // generic plan made without the values. For `IN ($2, …, $501)` over a table that
            // grew since, that plan scanned the whole account and rebuilt the list for every
            // row: most of the database's CPU in the catch-up profile of #5. Custom plans see
            // the values and the table as it is now.
            Backend::Postgres => &["SET plan_cache_mode = force_custom_plan"],
            // WAL lets the publisher read while a mailbox writes; NORMAL is durable across a
            // process crash (kill -9), which is what we need.
            Backend::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 10000",
            ],
        };
        let idle_tx = match (backend, idle_in_transaction) {
            (Backend::Postgres, Some(d)) => Some(format!(
                "SET idle_in_transaction_session_timeout = {}",
                d.as_millis().max(1)
            )),
            _ => None,
        };
        let opts = opts.after_connect(move |conn, _| {
            let idle_tx = idle_tx.clone();
            Box::pin(async move {
                for sql in session_setup {
                    sqlx::query(*sql).execute(&mut *conn).await?;
                }
                if let Some(sql) = idle_tx {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        });
        let pool = opts.connect(&url).await?;
        Ok(Store {
            pool,
            backend,
            extract: ExtractOptions::from(cfg),
            thread_by_subject: cfg.thread_by_subject,
            expunged: cfg.expunged,
            fence: None,
            index_search: true,
        })
    }

    /// The parsing limits messages for this store are extracted with.
    pub fn extract_options(&self) -> &ExtractOptions {
        &self.extract
    }

    /// The backend behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for tests and tools that read the tables directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies the embedded migrations for this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
        }
        Ok(())
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// UIDs and UIDVALIDITY are u32 on the wire and BIGINT in the database.
pub(crate) fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_have_bounded_kinds_by_cause() {
        let cases = [
            (sqlx::Error::PoolTimedOut, "database_pool_timeout", true),
            (
                sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
                "database_connection",
                true,
            ),
            (sqlx::Error::PoolClosed, "database_connection", true),
            (
                sqlx::Error::ColumnNotFound("x".into()),
                "database_schema",
                false,
            ),
            (sqlx::Error::RowNotFound, "database", true),
            (
                sqlx::Error::Configuration("bad url".into()),
                "database",
                false,
            ),
        ];
        for (e, kind, transient) in cases {
            let e = StoreError::from(e);
            assert_eq!((e.kind(), e.is_transient()), (kind, transient), "{e}");
        }
    }
}
