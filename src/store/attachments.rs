//! The rows that hang off a message: its attachments and its raw bytes. Both are multi-row
//! inserts, split by row count and by bytes.

use sqlx::{AssertSqlSafe, Transaction};

use super::chunk::{insert_sql, runs};
use super::messages::NewRow;
use crate::message::Attachment;

/// Bytes of content per statement (a few parts, or one big one).
const BYTES_PER_STATEMENT: usize = 32 * 1024 * 1024;

const ATTACHMENT_COLUMNS: &[&str] = &[
    "message_row_id",
    "account_id",
    "part_index",
    "filename",
    "content_type",
    "size",
    "content_id",
    "is_inline",
    "content_stored",
    "content",
];
/// Keeps parameters far below SQLite's 32,766.
const ATTACHMENT_ROWS: usize = 2000;

/// Inserts the attachments of the new messages.
pub(super) async fn insert_attachments(
    tx: &mut Transaction<'_, sqlx::Any>,
    account_id: &str,
    rows: &[NewRow<'_>],
) -> Result<(), sqlx::Error> {
    let parts: Vec<(i64, i32, &Attachment)> = rows
        .iter()
        .flat_map(|r| {
            r.rec
                .attachments
                .iter()
                .enumerate()
                .map(move |(i, a)| (r.id, i32::try_from(i).unwrap_or(i32::MAX), a))
        })
        .collect();
    for run in runs(&parts, ATTACHMENT_ROWS, BYTES_PER_STATEMENT, |(_, _, a)| {
        a.content.as_ref().map_or(0, Vec::len)
    }) {
        let sql = insert_sql("attachments", ATTACHMENT_COLUMNS, run.len(), "");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (row_id, index, a) in run {
            q = q
                .bind(*row_id)
                .bind(account_id)
                .bind(*index)
                .bind(a.filename.as_deref())
                .bind(a.content_type.as_str())
                .bind(a.size)
                .bind(a.content_id.as_deref())
                .bind(a.inline)
                .bind(a.content.is_some())
                .bind(a.content.as_deref());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Inserts the raw bytes of the new messages that keep them.
pub(super) async fn insert_raw(
    tx: &mut Transaction<'_, sqlx::Any>,
    rows: &[NewRow<'_>],
) -> Result<(), sqlx::Error> {
    let raws: Vec<(i64, &[u8])> = rows
        .iter()
        .filter_map(|r| r.rec.raw.as_deref().map(|raw| (r.id, raw)))
        .collect();
    for run in runs(&raws, 1000, BYTES_PER_STATEMENT, |(_, raw)| raw.len()) {
        let sql = insert_sql("message_raw", &["message_row_id", "raw"], run.len(), "");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (row_id, raw) in run {
            q = q.bind(*row_id).bind(*raw);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}
