//! Storage: migrations, sync state, the batch transaction and the outbox.
//!
//! One code path serves PostgreSQL and SQLite through `sqlx::Any`: the SQL is portable, times are
//! Unix milliseconds, and the only dialect difference (identity columns) lives in two migration
//! folders, `migrations/postgres` and `migrations/sqlite`, picked at run time. `$N` placeholders
//! work on both.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::config::StorageConfig;
use crate::message::MessageRecord;

/// Database failures. All are retryable from a mailbox's point of view: it pauses without
/// advancing `last_uid` and tries again.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connecting, querying or committing failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        "database"
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

/// The per-mailbox sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncState {
    /// UIDVALIDITY the `last_uid` belongs to.
    pub uidvalidity: u32,
    /// Highest UID stored.
    pub last_uid: u32,
}

/// A record waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Publication order.
    pub id: i64,
    /// For metric labels.
    pub account_id: String,
    /// For metric labels.
    pub mailbox: String,
    /// The JSON record.
    pub payload: String,
    /// When the EXISTS behind it was read (Unix µs), for the latency histogram.
    pub exists_at_us: Option<i64>,
    /// When it was committed (Unix ms).
    pub created_at: i64,
}

/// Where one batch goes.
#[derive(Debug, Clone, Copy)]
pub struct BatchTarget<'a> {
    /// Account id.
    pub account_id: &'a str,
    /// Mailbox name.
    pub mailbox: &'a str,
    /// UIDVALIDITY of the UIDs in the batch.
    pub uidvalidity: u32,
}

/// The pool plus which backend it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

const MESSAGE_COLUMNS: &[&str] = &[
    "account_id",
    "mailbox",
    "uidvalidity",
    "uid",
    "message_id",
    "subject",
    "from_addr",
    "to_addrs",
    "sent_at",
    "received_at",
    "text_body",
    "html_body",
    "size",
    "flags",
    "parse_error",
    "stored_at",
];

/// Rows per INSERT statement; keeps placeholders far below SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 500;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Connects (creating a missing SQLite file) and sets SQLite up for concurrent writers.
    pub async fn connect(cfg: &StorageConfig) -> Result<Store, StoreError> {
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
        let mut opts = AnyPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets the publisher read while a mailbox writes; NORMAL is durable
                    // across a process crash (kill -9), which is what we need.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        Ok(Store { pool, backend })
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

    /// The sync state of a mailbox, if it was ever selected.
    pub async fn sync_state(
        &self,
        account_id: &str,
        mailbox: &str,
    ) -> Result<Option<SyncState>, StoreError> {
        let row = sqlx::query("SELECT uidvalidity, last_uid FROM mailbox_state WHERE account_id = $1 AND mailbox = $2")
            .bind(account_id)
            .bind(mailbox)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| SyncState {
            uidvalidity: to_u32(r.get::<i64, _>(0)),
            last_uid: to_u32(r.get::<i64, _>(1)),
        }))
    }

    /// Records a mailbox seen for the first time, or a UIDVALIDITY change: `last_uid` starts
    /// again from 0. Rows of the old UIDVALIDITY stay, told apart by their `uidvalidity`.
    /// `reset_record`, when given, goes to the outbox in the same transaction.
    pub async fn start_epoch(
        &self,
        account_id: &str,
        mailbox: &str,
        uidvalidity: u32,
        reset_record: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO mailbox_state (account_id, mailbox, uidvalidity, last_uid, updated_at) VALUES ($1, $2, $3, 0, $4) \
             ON CONFLICT (account_id, mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity, last_uid = 0, updated_at = excluded.updated_at",
        )
        .bind(account_id)
        .bind(mailbox)
        .bind(i64::from(uidvalidity))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(payload) = reset_record {
            insert_outbox(&mut tx, account_id, mailbox, payload, None).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a batch and advances `last_uid` to `new_last_uid` in one transaction. When any row
    /// is new, `record(uids)` builds the announcement, which joins the outbox in the same
    /// transaction. Returns the UIDs actually inserted (a re-fetch inserts nothing).
    pub async fn commit_batch(
        &self,
        target: BatchTarget<'_>,
        messages: &[MessageRecord],
        new_last_uid: u32,
        exists_at_us: Option<i64>,
        record: impl FnOnce(&[u32]) -> String,
    ) -> Result<Vec<u32>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut inserted = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql(chunk.len());
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for m in chunk {
                q = q
                    .bind(target.account_id)
                    .bind(target.mailbox)
                    .bind(i64::from(target.uidvalidity))
                    .bind(i64::from(m.uid))
                    .bind(m.message_id.as_deref())
                    .bind(m.subject.as_deref())
                    .bind(m.from.as_str())
                    .bind(m.to.as_str())
                    .bind(m.sent_at_ms)
                    .bind(m.received_at_ms)
                    .bind(m.text_body.as_deref())
                    .bind(m.html_body.as_deref())
                    .bind(m.size)
                    .bind(m.flags.as_str())
                    .bind(m.parse_error)
                    .bind(now);
            }
            let rows: Vec<AnyRow> = q.fetch_all(&mut *tx).await?;
            inserted.extend(rows.iter().map(|r| to_u32(r.get::<i64, _>(0))));
        }
        sqlx::query(
            "UPDATE mailbox_state SET last_uid = $1, updated_at = $2 \
             WHERE account_id = $3 AND mailbox = $4 AND uidvalidity = $5 AND last_uid < $1",
        )
        .bind(i64::from(new_last_uid))
        .bind(now)
        .bind(target.account_id)
        .bind(target.mailbox)
        .bind(i64::from(target.uidvalidity))
        .execute(&mut *tx)
        .await?;
        if !inserted.is_empty() {
            inserted.sort_unstable();
            let payload = record(&inserted);
            insert_outbox(
                &mut tx,
                target.account_id,
                target.mailbox,
                &payload,
                exists_at_us,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// The oldest records waiting, in publication order.
    pub async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account_id, mailbox, payload, exists_at_us, created_at FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                account_id: r.get(1),
                mailbox: r.get(2),
                payload: r.get(3),
                exists_at_us: r.get(4),
                created_at: r.get(5),
            })
            .collect())
    }

    /// Removes published records (everything up to and including `up_to_id`).
    pub async fn outbox_delete_through(&self, up_to_id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id <= $1")
            .bind(up_to_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records waiting, and the age of the oldest in ms.
    pub async fn outbox_depth(&self) -> Result<(i64, Option<i64>), StoreError> {
        let row = sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox")
            .fetch_one(&self.pool)
            .await?;
        let oldest: Option<i64> = row.get(1);
        Ok((row.get(0), oldest.map(|t| now_ms() - t)))
    }
}

async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    account_id: &str,
    mailbox: &str,
    payload: &str,
    exists_at_us: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (account_id, mailbox, payload, created_at, exists_at_us) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(account_id)
    .bind(mailbox)
    .bind(payload)
    .bind(now_ms())
    .bind(exists_at_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `INSERT … VALUES ($1, …), (…) ON CONFLICT DO NOTHING RETURNING uid` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let cols = MESSAGE_COLUMNS.len();
    let mut sql = format!(
        "INSERT INTO messages ({}) VALUES ",
        MESSAGE_COLUMNS.join(", ")
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * cols + c + 1).to_string());
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (account_id, mailbox, uidvalidity, uid) DO NOTHING RETURNING uid");
    sql
}

/// UIDs and UIDVALIDITY are u32 on the wire and BIGINT in the database.
fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_placeholders() {
        let sql = insert_sql(2);
        let n = MESSAGE_COLUMNS.len();
        assert!(sql.contains(&format!("${n}), (${}", n + 1)), "{sql}");
        assert!(sql.ends_with(&format!(
            "${}) ON CONFLICT (account_id, mailbox, uidvalidity, uid) DO NOTHING RETURNING uid",
            2 * n
        )));
    }
}
