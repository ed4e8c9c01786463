//! The writes of thread assignment: merges, `messages.thread_id`, nodes and aggregates. Each is
//! one multi-row statement (per 1,000 values).

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::chunk::{insert_sql, placeholders};
use super::messages::NewRow;
use super::thread_model::Thread;
use super::threads::{Tx, PER_STATEMENT};
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
pub(super) async fn set_message_threads(
    tx: &mut Tx<'_>,
    rows: &[NewRow<'_>],
    thread_of_row: &[i64],
) -> Result<(), sqlx::Error> {
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
        let sql = format!(
            "UPDATE messages SET thread_id = {case} WHERE id IN ({})",
            placeholders(1 + 2 * chunk.len(), chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (id, t) in chunk {
            q = q.bind(*id).bind(*t);
        }
        for (id, _) in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Every Message-ID the new rows name now points at their thread; their own ids are present.
pub(super) async fn upsert_refs(
    tx: &mut Tx<'_>,
    account_id: &str,
    rows: &[NewRow<'_>],
    thread_of_row: &[i64],
    known: &HashMap<String, (i64, bool)>,
) -> Result<(), sqlx::Error> {
    let mut refs: HashMap<&str, (i64, bool)> = HashMap::new();
    for (r, &t) in rows.iter().zip(thread_of_row) {
        for k in r.rec.thread_keys() {
            let own = r.rec.message_id.as_deref() == Some(k);
            let e = refs.entry(k).or_insert((t, false));
            e.1 |= own;
        }
    }
    // Unchanged nodes need no write.
    let mut refs: Vec<(&str, i64, bool)> = refs
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
        let sql = insert_sql(
            "thread_refs",
            &["account_id", "message_id", "thread_id", "present"],
            chunk.len(),
            "ON CONFLICT (account_id, message_id) DO UPDATE SET thread_id = excluded.thread_id, \
             present = (thread_refs.present OR excluded.present)",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (k, t, p) in chunk {
            q = q.bind(account_id).bind(*k).bind(*t).bind(*p);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes the threads' new aggregates.
pub(super) async fn upsert_threads(
    tx: &mut Tx<'_>,
    account_id: &str,
    threads: &[Thread],
    now: i64,
) -> Result<(), sqlx::Error> {
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
        let sql = insert_sql(
            "threads",
            COLS,
            chunk.len(),
            "ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, \
             subject_key = excluded.subject_key, started_at = excluded.started_at, \
             last_message_at = excluded.last_message_at, message_count = excluded.message_count, \
             unread_count = excluded.unread_count, participants = excluded.participants, \
             updated_at = excluded.updated_at",
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for t in chunk {
            q = q
                .bind(t.id)
                .bind(account_id)
                .bind(t.subject.as_deref())
                .bind(t.subject_key.as_str())
                .bind(t.started_at)
                .bind(if t.last_message_at == i64::MIN {
                    now
                } else {
                    t.last_message_at
                })
                .bind(t.message_count)
                .bind(t.unread_count)
                .bind(address::to_json(&t.participants))
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}
