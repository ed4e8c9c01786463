//! The writes of thread assignment: merges, `messages.thread_id`, nodes and aggregates. Each is
//! one multi-row statement (per 1,000 values). Merges run at once; the other three are built
//! here and run with the batch's last writes (one round trip on PostgreSQL).

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::chunk::{insert_sql, placeholders, PER_STATEMENT};
use super::stmt::{Stmt, Tx};
use super::thread_model::Thread;
use super::NewRow;
use crate::message::address;

/// Moves messages and nodes of merged threads to the thread they merged into, and deletes the
/// merged `threads` rows. Three statements for any number of merges (they are rare).
pub(super) async fn merge(
    tx: &mut Tx<'_>,
    account_id: &str,
    merges: &[(i64, i64)],
) -> Result<(), sqlx::Error> {
    for chunk in merges.chunks(PER_STATEMENT / 2) {
        let mut case = String::from("CASE thread_id");
        for i in 0..chunk.len() {
            case.push_str(&format!(" WHEN ${} THEN ${}", 2 + 2 * i, 3 + 2 * i));
        }
        case.push_str(" ELSE thread_id END");
        let list = placeholders(2 + 2 * chunk.len(), chunk.len());
        for table in ["messages", "thread_refs"] {
            let sql = format!(
                "UPDATE {table} SET thread_id = {case} WHERE account_id = $1 AND thread_id IN ({list})"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
            for (loser, keep) in chunk {
                q = q.bind(*loser).bind(*keep);
            }
            for (loser, _) in chunk {
                q = q.bind(*loser);
            }
            q.execute(&mut **tx).await?;
        }
        let sql = format!(
            "DELETE FROM threads WHERE account_id = $1 AND id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
        for (loser, _) in chunk {
            q = q.bind(*loser);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `UPDATE messages SET thread_id = CASE id WHEN … END WHERE id IN (…)`.
pub(super) fn set_message_threads(
    rows: &[NewRow<'_>],
    thread_of_row: &[i64],
) -> Vec<Stmt<'static>> {
    let mut out = Vec::new();
    let pairs: Vec<(i64, i64)> = rows
        .iter()
        .zip(thread_of_row)
        .map(|(r, t)| (r.id, *t))
        .collect();
    for chunk in pairs.chunks(PER_STATEMENT) {
        let mut case = String::from("CASE id");
        for i in 0..chunk.len() {
            case.push_str(&format!(" WHEN ${} THEN ${}", 1 + 2 * i, 2 + 2 * i));
        }
        case.push_str(" END");
        let mut q = Stmt::new(format!(
            "UPDATE messages SET thread_id = {case} WHERE id IN ({})",
            placeholders(1 + 2 * chunk.len(), chunk.len())
        ));
        for (id, t) in chunk {
            q.push(*id);
            q.push(*t);
        }
        for (id, _) in chunk {
            q.push(*id);
        }
        out.push(q);
    }
    out
}

/// Every Message-ID the new rows name now points at their thread; their own ids are present.
pub(super) fn upsert_refs<'a>(
    account_id: &'a str,
    rows: &[NewRow<'a>],
    thread_of_row: &[i64],
    known: &HashMap<String, (i64, bool)>,
) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
    let mut refs: HashMap<&'a str, (i64, bool)> = HashMap::new();
    for (r, &t) in rows.iter().zip(thread_of_row) {
        for k in r.rec.thread_keys() {
            let own = r.rec.message_id.as_deref() == Some(k);
            let e = refs.entry(k).or_insert((t, false));
            e.1 |= own;
        }
    }
    // Unchanged nodes need no write.
    let mut refs: Vec<(&'a str, i64, bool)> = refs
        .into_iter()
        .filter(|(k, (t, p))| {
            !known
                .get(*k)
                .is_some_and(|(kt, kp)| kt == t && (*kp || !*p))
        })
        .map(|(k, (t, p))| (k, t, p))
        .collect();
    refs.sort_unstable();
    for chunk in refs.chunks(PER_STATEMENT) {
        let mut q = Stmt::new(insert_sql(
            "thread_refs",
            &["account_id", "message_id", "thread_id", "present"],
            chunk.len(),
            "ON CONFLICT (account_id, message_id) DO UPDATE SET thread_id = excluded.thread_id, \
             present = (thread_refs.present OR excluded.present)",
        ));
        for (k, t, p) in chunk {
            q.push(account_id);
            q.push(*k);
            q.push(*t);
            q.push(*p);
        }
        out.push(q);
    }
    out
}

/// Writes the threads' new aggregates.
pub(super) fn upsert_threads<'a>(
    account_id: &'a str,
    threads: &[Thread],
    now: i64,
) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
    const COLS: &[&str] = &[
        "id",
        "account_id",
        "subject",
        "subject_key",
        "started_at",
        "last_message_at",
        "message_count",
        "unread_count",
        "participants",
        "updated_at",
    ];
    for chunk in threads.chunks(PER_STATEMENT) {
        let mut q = Stmt::new(insert_sql(
            "threads",
            COLS,
            chunk.len(),
            "ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, \
             subject_key = excluded.subject_key, started_at = excluded.started_at, \
             last_message_at = excluded.last_message_at, message_count = excluded.message_count, \
             unread_count = excluded.unread_count, participants = excluded.participants, \
             updated_at = excluded.updated_at",
        ));
        for t in chunk {
            q.push(t.id);
            q.push(account_id);
            q.push(t.subject.clone());
            q.push(t.subject_key.clone());
            q.push(t.started_at);
            q.push(if t.last_message_at == i64::MIN {
                now
            } else {
                t.last_message_at
            });
            q.push(t.message_count);
            q.push(t.unread_count);
            q.push(address::to_json(&t.participants));
            q.push(now);
        }
        out.push(q);
    }
    out
}
