//! Sync state and the batch transaction: messages (with attachments, raw bytes and threads),
//! `last_uid` and the outbox record commit together.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::attachments::{insert_attachments, insert_raw};
use super::chunk::{insert_sql, runs};
use super::outbox::insert_outbox;
use super::threads::assign_threads;
use super::{now_ms, to_u32, Store, StoreError};
use crate::message::MessageRecord;

/// The per-mailbox sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncState {
    /// UIDVALIDITY the `last_uid` belongs to.
    pub uidvalidity: u32,
    /// Highest UID stored.
    pub last_uid: u32,
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
];

/// A message row this batch inserted: its `messages.id` and its record.
#[derive(Debug, Clone, Copy)]
pub(super) struct NewRow<'a> {
    /// `messages.id`.
    pub id: i64,
    /// What was inserted.
    pub rec: &'a MessageRecord,
}

/// Rows per INSERT statement; keeps placeholders far below SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 500;
/// Body bytes per INSERT statement.
const BYTES_PER_STATEMENT: usize = 32 * 1024 * 1024;

impl Store {
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

    /// Stores a batch and advances `last_uid` to `new_last_uid` in one transaction: the messages,
    /// their attachments and raw bytes, their threads, the sync state and, when any row is new,
    /// the announcement `record(uids)` in the outbox. Returns the UIDs actually inserted (a
    /// re-fetch inserts nothing).
    pub async fn commit_batch(
        &self,
        target: BatchTarget<'_>,
        messages: &[MessageRecord],
        new_last_uid: u32,
        exists_at_us: Option<i64>,
        record: impl FnOnce(&[u32]) -> String,
    ) -> Result<Vec<u32>, StoreError> {
        let now = now_ms();
        let by_uid: HashMap<u32, &MessageRecord> = messages.iter().map(|m| (m.uid, m)).collect();
        let mut tx = self.pool.begin().await?;
        let mut new_rows = Vec::with_capacity(messages.len());
        for chunk in runs(messages, ROWS_PER_STATEMENT, BYTES_PER_STATEMENT, |m| {
            m.approx_bytes()
        }) {
            let sql = insert_sql(
                "messages",
                MESSAGE_COLUMNS,
                chunk.len(),
                "ON CONFLICT (account_id, mailbox, uidvalidity, uid) DO NOTHING RETURNING id, uid",
            );
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
                    .bind(m.sender.as_str())
                    .bind(m.reply_to.as_str())
                    .bind(m.to.as_str())
                    .bind(m.cc.as_str())
                    .bind(m.bcc.as_str())
                    .bind(m.in_reply_to.as_deref())
                    .bind(serde_json::to_string(&m.references).unwrap_or_else(|_| "[]".into()))
                    .bind(m.sent_at_ms)
                    .bind(m.received_at_ms)
                    .bind(m.text_body.as_deref())
                    .bind(m.html_body.as_deref())
                    .bind(m.snippet.as_str())
                    .bind(m.size)
                    .bind(m.flags.as_str())
                    .bind(m.has_attachments)
                    .bind(m.truncated)
                    .bind(m.parse_error)
                    .bind(now);
            }
            let rows: Vec<AnyRow> = q.fetch_all(&mut *tx).await?;
            for r in &rows {
                let uid = to_u32(r.get::<i64, _>(1));
                if let Some(rec) = by_uid.get(&uid) {
                    new_rows.push(NewRow { id: r.get(0), rec });
                }
            }
        }
        if !new_rows.is_empty() {
            // Row ids ascend with insertion order: threads are founded by their first message.
            new_rows.sort_by_key(|r| r.id);
            insert_attachments(&mut tx, target.account_id, &new_rows).await?;
            insert_raw(&mut tx, &new_rows).await?;
            assign_threads(
                &mut tx,
                target.account_id,
                &new_rows,
                self.thread_by_subject,
                now,
            )
            .await?;
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
        let mut inserted: Vec<u32> = new_rows.iter().map(|r| r.rec.uid).collect();
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
