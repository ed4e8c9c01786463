//! The rows that hang off a message: its attachments and its raw bytes. Both are multi-row
//! inserts, split by row count and by bytes, built here and run with the batch's other writes.

use super::chunk::{insert_sql, runs};
use super::stmt::Stmt;
use super::NewRow;
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
pub(super) fn insert_attachments<'a>(account_id: &'a str, rows: &[NewRow<'a>]) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
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
        let mut q = Stmt::new(insert_sql("attachments", ATTACHMENT_COLUMNS, run.len(), ""));
        for (row_id, index, a) in run {
            q.push(*row_id);
            q.push(account_id);
            q.push(*index);
            q.push(a.filename.as_deref());
            q.push(a.content_type.as_str());
            q.push(a.size);
            q.push(a.content_id.as_deref());
            q.push(a.inline);
            q.push(a.content.is_some());
            q.push(a.content.as_deref());
        }
        out.push(q);
    }
    out
}

/// Inserts the raw bytes of the new messages that keep them.
pub(super) fn insert_raw<'a>(rows: &[NewRow<'a>]) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
    let raws: Vec<(i64, &[u8])> = rows
        .iter()
        .filter_map(|r| r.rec.raw.as_deref().map(|raw| (r.id, raw)))
        .collect();
    for run in runs(&raws, 1000, BYTES_PER_STATEMENT, |(_, raw)| raw.len()) {
        let mut q = Stmt::new(insert_sql(
            "message_raw",
            &["message_row_id", "raw"],
            run.len(),
            "",
        ));
        for (row_id, raw) in run {
            q.push(*row_id);
            q.push(*raw);
        }
        out.push(q);
    }
    out
}
