//! The outbox: records committed with their messages, waiting for the publisher.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::chunk::insert_sql;
use super::stmt::Stmt;
use super::{now_ms, Store, StoreError};
use crate::changes::Topic;

/// A record waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Publication order.
    pub id: i64,
    /// For metric labels.
    pub account_id: String,
    /// For metric labels.
    pub mailbox: String,
    /// Which channel it goes to.
    pub topic: Topic,
    /// The JSON record.
    pub payload: String,
    /// When the EXISTS behind it was read (Unix µs), for the latency histogram.
    pub exists_at_us: Option<i64>,
    /// When it was committed (Unix ms).
    pub created_at: i64,
}

impl OutboxRow {
    /// A record about to be committed (its id comes from the insert).
    pub(super) fn new(
        account_id: &str,
        mailbox: &str,
        topic: Topic,
        payload: String,
        exists_at_us: Option<i64>,
    ) -> OutboxRow {
        OutboxRow {
            id: 0,
            account_id: account_id.to_string(),
            mailbox: mailbox.to_string(),
            topic,
            payload,
            exists_at_us,
            created_at: now_ms(),
        }
    }
}

impl Store {
    /// The oldest records waiting, in publication order.
    pub async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account_id, mailbox, payload, exists_at_us, created_at, topic FROM outbox \
             ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(outbox_row).collect())
    }

    /// Outbox records of the mailboxes whose lease `node` holds unexpired, in publication
    /// order: what a replica's publisher drains in cluster mode, including records that a dead
    /// owner committed but never published.
    ///
    /// Records of a mailbox with no lease row at all (removed from every replica's config, so
    /// nobody will ever hold it) go to one replica, the live one with the lowest node id: one
    /// drainer, so they are neither orphaned until the retention nor published twice.
    pub async fn outbox_pending_owned(
        &self,
        node: &str,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.id, o.account_id, o.mailbox, o.payload, o.exists_at_us, o.created_at, \
             o.topic FROM outbox o LEFT JOIN mailbox_leases l \
             ON l.account_id = o.account_id AND l.mailbox = o.mailbox \
             WHERE (l.owner = $1 AND l.expires_at > now()) \
             OR (l.account_id IS NULL AND $1 = (SELECT min(node_id) FROM cluster_nodes \
             WHERE expires_at > now())) ORDER BY o.id LIMIT $2",
        )
        .bind(node)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(outbox_row).collect())
    }

    /// Removes published records.
    ///
    /// By exact ids, never by range: with several mailboxes committing at once, a lower id can
    /// become visible after a higher one was already read, and a range would delete it unsent.
    pub async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM outbox WHERE id IN ({})",
            super::chunk::placeholders(1, ids.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// Deletes records older than `max_age_ms` and the oldest beyond `max_rows`. Returns how
    /// many were deleted.
    pub async fn outbox_prune(&self, max_age_ms: i64, max_rows: i64) -> Result<u64, StoreError> {
        let old = sqlx::query("DELETE FROM outbox WHERE created_at < $1")
            .bind(now_ms().saturating_sub(max_age_ms))
            .execute(&self.pool)
            .await?
            .rows_affected();
        // Keeps the newest `max_rows` by count: the cut is the id of the first record past
        // them (none when fewer wait). Not `MAX(id) - max_rows`: published records leave gaps.
        let over = sqlx::query(
            "DELETE FROM outbox WHERE id <= \
             (SELECT id FROM outbox ORDER BY id DESC LIMIT 1 OFFSET $1)",
        )
        .bind(max_rows.max(0))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(old + over)
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

/// A row of `SELECT id, account_id, mailbox, payload, exists_at_us, created_at, topic`.
pub(super) fn outbox_row(r: &AnyRow) -> OutboxRow {
    OutboxRow {
        id: r.get(0),
        account_id: r.get(1),
        mailbox: r.get(2),
        topic: Topic::parse(&r.get::<String, _>(6)),
        payload: r.get(3),
        exists_at_us: r.get(4),
        created_at: r.get(5),
    }
}

/// Adds records to the outbox in one statement, which returns their ids (in any order: see
/// [`fill_ids`]). `rows` must not be empty.
pub(super) fn insert_outbox<'a>(rows: &'a [OutboxRow]) -> Stmt<'a> {
    let mut q = Stmt::new(insert_sql(
        "outbox",
        &[
            "account_id",
            "mailbox",
            "topic",
            "payload",
            "created_at",
            "exists_at_us",
        ],
        rows.len(),
        "RETURNING id",
    ));
    for row in rows {
        q.push(row.account_id.as_str());
        q.push(row.mailbox.as_str());
        q.push(row.topic.as_str());
        q.push(row.payload.as_str());
        q.push(row.created_at);
        q.push(row.exists_at_us);
    }
    q
}

/// Gives `rows` the ids [`insert_outbox`] returned. Ids ascend in insertion order on both
/// backends, but `RETURNING` promises no row order (SQLite says so), so they are sorted first.
pub(super) fn fill_ids(rows: &mut [OutboxRow], returned: &[AnyRow]) {
    let mut ids: Vec<i64> = returned.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    for (row, id) in rows.iter_mut().zip(ids) {
        row.id = id;
    }
}
