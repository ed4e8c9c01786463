//! The batch transaction: messages (with attachments, raw bytes and threads), `last_uid` and
//! the outbox records commit together.

use std::collections::HashMap;

use sqlx::Row;

use super::attachments::{insert_attachments, insert_raw};
use super::chunk::{insert_sql, runs};
use super::outbox::{fill_ids, insert_outbox, OutboxRow};
use super::state::modseq_to_db;
use super::stmt::{run_all, Stmt};
use super::threads::{assign_threads, lock_account};
use super::{now_ms, to_u32, Backend, NewRow, Store, StoreError};
use crate::changes::Topic;
use crate::message::MessageRecord;

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

const MESSAGE_COLUMNS: &[&str] = &[
    "account_id",
    "mailbox",
    "uidvalidity",
    "uid",
    "message_id",
    "subject",
    "from_addr",
    "sender_addr",
    "reply_to_addrs",
    "to_addrs",
    "cc_addrs",
    "bcc_addrs",
    "in_reply_to",
    "references_ids",
    "sent_at",
    "received_at",
    "text_body",
    "html_body",
    "snippet",
    "size",
    "flags",
    "has_attachments",
    "truncated",
    "parse_error",
    "stored_at",
    "modseq",
    "email_id",
    "server_thread_id",
];

/// Rows per INSERT statement; keeps placeholders far below SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 500;
/// Body bytes per INSERT statement.
const BYTES_PER_STATEMENT: usize = 32 * 1024 * 1024;

impl Store {
    /// Opens a batch transaction ahead of [`Store::commit_batch`], so that BEGIN's round trip
    /// overlaps waiting for the server. Only on a pooled connection that is idle now and that
    /// no commit is queued for (the pool hands released connections to waiters first), never
    /// by opening one or waiting; `None` otherwise and on any error: the commit then opens its
    /// own and reports the failure. The caller must bound how long it holds the transaction
    /// while waiting on the server: every other mailbox's commit may need the connection.
    ///
    /// PostgreSQL only. There BEGIN is a round trip, and opening it early took 0.3–1.2 ms off
    /// a one-message commit (`commit_one_message` in benches/hot_paths.rs); on SQLite, where
    /// BEGIN never leaves the process, the same bench measured it 0.2–0.5 ms slower.
    pub async fn begin_early(&self) -> Option<BatchTx> {
        if self.backend == Backend::Sqlite {
            return None;
        }
        self.pool.try_begin().await.ok().flatten().map(BatchTx)
    }

    /// Stores a batch and advances `last_uid` to `new_last_uid` in one transaction: the messages,
    /// their attachments and raw bytes, their threads, the sync state and, when any row is new,
    /// the announcements `records(uids)` in the outbox (`uids`: those inserted, ascending; the
    /// caller may split them, e.g. into `imported` and `newMail`). Returns the UIDs actually
    /// inserted (a re-fetch inserts nothing) and the outbox records as committed, in
    /// publication order.
    ///
    /// Round trips on PostgreSQL, whatever the batch size (up to 500 messages): BEGIN, the lock
    /// with the message insert, the thread lookup (and the touched threads, when a message joins
    /// one), every remaining write as one statement, COMMIT.
    ///
    /// `tx` is a transaction from [`Store::begin_early`], or `None` to open one here.
    ///
    /// A [`Store::fenced`] store first checks its lease in the transaction (one more round
    /// trip) and fails with [`StoreError::Fenced`], writing nothing, when it is lost.
    pub async fn commit_batch(
        &self,
        tx: Option<BatchTx>,
        target: BatchTarget<'_>,
        messages: &[MessageRecord],
        new_last_uid: u32,
        exists_at_us: Option<i64>,
        records: impl FnOnce(&[u32]) -> Vec<(Topic, String)>,
    ) -> Result<Committed, StoreError> {
        let now = now_ms();
        let by_uid: HashMap<u32, &MessageRecord> = messages.iter().map(|m| (m.uid, m)).collect();
        let tx = match tx {
            Some(BatchTx(tx)) => tx,
            None => self.pool.begin().await?,
        };
        // Cluster mode: the lease first, inside this transaction (also one opened early).
        let mut tx = self
            .fence_check(tx, target.account_id, target.mailbox)
            .await?;
        let mut new_rows = Vec::with_capacity(messages.len());
        let chunks = runs(messages, ROWS_PER_STATEMENT, BYTES_PER_STATEMENT, |m| {
            m.approx_bytes()
        });
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut stmts = Vec::with_capacity(2);
            if i == 0 {
                stmts.push(lock_account(target.account_id));
            }
            stmts.push(insert_messages(target, chunk, now));
            for r in run_all(&mut tx, self.backend, stmts).await? {
                let uid = to_u32(r.get::<i64, _>(1));
                if let Some(rec) = by_uid.get(&uid) {
                    new_rows.push(NewRow { id: r.get(0), rec });
                }
            }
        }
        let mut writes = Vec::new();
        if !new_rows.is_empty() {
            // Row ids ascend with insertion order: threads are founded by their first message.
            new_rows.sort_by_key(|r| r.id);
            writes.extend(insert_attachments(target.account_id, &new_rows));
            writes.extend(insert_raw(&new_rows));
            if self.index_search {
                writes.extend(super::search::doc_writes(self.backend, target, &new_rows));
            }
            let threads = assign_threads(
                &mut tx,
                target.account_id,
                &new_rows,
                self.thread_by_subject,
                now,
            )
            .await?;
            writes.extend(threads);
        }
        // An upsert: a mailbox's first batch creates its state row, so a new mailbox costs no
        // write until it has mail. A row of another UIDVALIDITY is left alone.
        writes.push(
            Stmt::new(
                "INSERT INTO mailbox_state (account_id, mailbox, uidvalidity, last_uid, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, mailbox) DO UPDATE \
                 SET last_uid = excluded.last_uid, updated_at = excluded.updated_at \
                 WHERE mailbox_state.uidvalidity = excluded.uidvalidity \
                 AND mailbox_state.last_uid < excluded.last_uid",
            )
            .bind(target.account_id)
            .bind(target.mailbox)
            .bind(i64::from(target.uidvalidity))
            .bind(i64::from(new_last_uid))
            .bind(now),
        );
        let mut inserted: Vec<u32> = new_rows.iter().map(|r| r.rec.uid).collect();
        inserted.sort_unstable();
        // Messages an action moved here (#19) are stored like any other, but not announced:
        // the move's own record (messagesMoved) did that.
        let moved_in = take_expected_arrivals(&mut tx, target, &new_rows).await?;
        let announced: Vec<u32> = inserted
            .iter()
            .copied()
            .filter(|u| !moved_in.contains(u))
            .collect();
        let mut outbox: Vec<OutboxRow> = if announced.is_empty() {
            Vec::new()
        } else {
            records(&announced)
                .into_iter()
                .map(|(topic, payload)| {
                    OutboxRow::new(
                        target.account_id,
                        target.mailbox,
                        topic,
                        payload,
                        exists_at_us,
                    )
                })
                .collect()
        };
        if !outbox.is_empty() {
            // Last, so that the grouped statement returns the records' ids.
            writes.push(insert_outbox(&outbox));
        }
        let rows = run_all(&mut tx, self.backend, writes).await?;
        if !outbox.is_empty() {
            fill_ids(&mut outbox, &rows);
        }
        tx.commit().await?;
        Ok(Committed { inserted, outbox })
    }
}

/// Takes the expected arrivals (written by a move action before its `UID MOVE`) that these new
/// rows fulfil, by Message-ID; their UIDs.
async fn take_expected_arrivals(
    tx: &mut super::stmt::Tx<'_>,
    target: BatchTarget<'_>,
    new_rows: &[NewRow<'_>],
) -> Result<Vec<u32>, sqlx::Error> {
    let with_id: Vec<(&str, u32)> = new_rows
        .iter()
        .filter_map(|r| Some((r.rec.message_id.as_deref()?, r.rec.uid)))
        .collect();
    let mut out = Vec::new();
    for chunk in with_id.chunks(500) {
        let sql = format!(
            "DELETE FROM expected_arrivals WHERE account_id = $1 AND mailbox = $2 \
             AND message_id IN ({}) RETURNING message_id",
            super::chunk::placeholders(3, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(target.account_id)
            .bind(target.mailbox);
        for (id, _) in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut **tx).await? {
            let id: String = r.get(0);
            out.extend(chunk.iter().filter(|(m, _)| *m == id).map(|(_, u)| *u));
        }
    }
    Ok(out)
}

/// A batch transaction opened early; dropping it rolls it back.
#[derive(Debug)]
pub struct BatchTx(sqlx::Transaction<'static, sqlx::Any>);

/// What one batch transaction committed.
#[derive(Debug, Default)]
pub struct Committed {
    /// UIDs inserted, ascending (a re-fetch inserts none).
    pub inserted: Vec<u32>,
    /// The announcements added to the outbox (none when no row was new), ids filled, in
    /// publication order.
    pub outbox: Vec<OutboxRow>,
}

/// The multi-row `messages` insert of one chunk; returns `id, uid` of the rows it added.
fn insert_messages<'a>(target: BatchTarget<'a>, chunk: &'a [MessageRecord], now: i64) -> Stmt<'a> {
    let mut q = Stmt::new(insert_sql(
        "messages",
        MESSAGE_COLUMNS,
        chunk.len(),
        "ON CONFLICT (account_id, mailbox, uidvalidity, uid) DO NOTHING RETURNING id, uid",
    ));
    for m in chunk {
        q.push(target.account_id);
        q.push(target.mailbox);
        q.push(i64::from(target.uidvalidity));
        q.push(i64::from(m.uid));
        q.push(m.message_id.as_deref());
        q.push(m.subject.as_deref());
        q.push(m.from.as_str());
        q.push(m.sender.as_str());
        q.push(m.reply_to.as_str());
        q.push(m.to.as_str());
        q.push(m.cc.as_str());
        q.push(m.bcc.as_str());
        q.push(m.in_reply_to.as_deref());
        q.push(serde_json::to_string(&m.references).unwrap_or_else(|_| "[]".into()));
        q.push(m.sent_at_ms);
        q.push(m.received_at_ms);
        q.push(m.text_body.as_deref());
        q.push(m.html_body.as_deref());
        q.push(m.snippet.as_str());
        q.push(m.size);
        q.push(m.flags.as_str());
        q.push(m.has_attachments);
        q.push(m.truncated);
        q.push(m.parse_error);
        q.push(now);
        q.push(m.modseq.map(modseq_to_db));
        q.push(m.email_id.as_deref());
        q.push(m.server_thread_id.as_deref());
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_placeholders() {
        let sql = insert_sql("messages", MESSAGE_COLUMNS, 2, "");
        let n = MESSAGE_COLUMNS.len();
        assert!(sql.contains(&format!("${n}), (${}", n + 1)), "{sql}");
        assert!(sql.ends_with(&format!("${})", 2 * n)), "{sql}");
    }
}
