//! Conversations, assigned inside the batch transaction.
//!
//! The core idea of JWZ threading, kept per account (not per mailbox): every Message-ID a
//! message names (its own, In-Reply-To, References) is a node in `thread_refs`, pointing at a
//! thread. A message joins the thread of any node it names, so a reply joins its parent's thread
//! whether the parent came first, comes later (the reply left the parent's node behind), or sits
//! in another mailbox. A message naming nodes of two threads links them: the threads merge into
//! the older one (lower id). Subject links only with `thread_by_subject`.
//!
//! A thread's id is the `messages.id` of the message that started it, so new threads need no
//! id round trip. Statements per batch are constant: lock, look up the nodes, read the threads
//! touched, (merge: three), set `thread_id`, upsert nodes, upsert threads. The lock goes with
//! the message insert and the last three with the batch's last writes, so on PostgreSQL a new
//! thread costs one round trip of its own (the lookup) and joining one a second.
//!
//! Two mailboxes of one account commit concurrently. Each batch first takes the account's row
//! in `account_locks` (a row lock on PostgreSQL; SQLite has one writer anyway), so lookups and
//! counts are never computed from a stale view.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::{AssertSqlSafe, Row};

use super::chunk::{placeholders, PER_STATEMENT};
use super::stmt::{Stmt, Tx};
use super::thread_model::{Group, Thread, UnionFind};
use super::thread_writes::{merge, set_message_threads, upsert_refs, upsert_threads};
use super::NewRow;
use crate::message::address;

/// Gives every new row its `thread_id`, creating, extending and merging threads. Reads and
/// merges run at once; the writes that remain are returned, to run with the batch's last
/// statements. The caller holds the account's lock ([`lock_account`]).
pub(super) async fn assign_threads<'a>(
    tx: &mut Tx<'_>,
    account_id: &'a str,
    rows: &[NewRow<'a>],
    by_subject: bool,
    now: i64,
) -> Result<Vec<Stmt<'a>>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }

    let keys: BTreeSet<&str> = rows.iter().flat_map(|r| r.rec.thread_keys()).collect();
    let known = lookup_refs(tx, account_id, &keys).await?;

    // Rows naming a common Message-ID, or nodes of a common thread, belong together.
    let mut uf = UnionFind((0..rows.len()).collect());
    let mut row_of_key: HashMap<&str, usize> = HashMap::new();
    let mut row_of_thread: HashMap<i64, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        for k in r.rec.thread_keys() {
            match row_of_key.get(k) {
                Some(&j) => uf.union(i, j),
                None => {
                    row_of_key.insert(k, i);
                }
            }
            if let Some(&(t, _)) = known.get(k) {
                match row_of_thread.get(&t) {
                    Some(&j) => uf.union(i, j),
                    None => {
                        row_of_thread.insert(t, i);
                    }
                }
            }
        }
    }
    if by_subject {
        link_by_subject(tx, account_id, rows, &mut uf, &mut row_of_thread).await?;
    }
    let mut groups: HashMap<usize, Group> = HashMap::new();
    for i in 0..rows.len() {
        groups.entry(uf.find(i)).or_default().rows.push(i);
    }
    for (&t, &i) in &row_of_thread {
        groups.entry(uf.find(i)).or_default().threads.insert(t);
    }

    let touched: BTreeSet<i64> = groups
        .values()
        .flat_map(|g| g.threads.iter().copied())
        .collect();
    let mut existing = load_threads(tx, account_id, &touched).await?;

    let mut merges: Vec<(i64, i64)> = Vec::new();
    let mut thread_of_row: Vec<i64> = vec![0; rows.len()];
    let mut out: Vec<Thread> = Vec::new();
    let mut counted: HashSet<&str> = HashSet::new();
    let mut group_list: Vec<Group> = groups.into_values().collect();
    group_list.sort_by_key(|g| g.rows.first().copied());
    for g in group_list {
        let first_row_id = g
            .rows
            .iter()
            .filter_map(|&i| rows.get(i).map(|r| r.id))
            .min()
            .unwrap_or(0);
        let keep = g.threads.first().copied().unwrap_or(first_row_id);
        let mut thread = existing.remove(&keep).unwrap_or_else(|| Thread::new(keep));
        for &loser in g.threads.iter().skip(1) {
            merges.push((loser, keep));
            if let Some(t) = existing.remove(&loser) {
                thread.absorb(t);
            }
        }
        for &i in &g.rows {
            let Some(r) = rows.get(i) else { continue };
            let dup = r.rec.message_id.as_deref().is_some_and(|m| {
                known.get(m).is_some_and(|(_, present)| *present) || !counted.insert(m)
            });
            thread.add(r.rec, !dup, now);
            if let Some(slot) = thread_of_row.get_mut(i) {
                *slot = keep;
            }
        }
        out.push(thread);
    }

    if !merges.is_empty() {
        merge(tx, account_id, &merges).await?;
    }
    let mut writes = set_message_threads(rows, &thread_of_row);
    writes.extend(upsert_refs(account_id, rows, &thread_of_row, &known));
    writes.extend(upsert_threads(account_id, &out, now));
    Ok(writes)
}

/// Serializes the batches of one account: a row lock held until commit on PostgreSQL (SQLite
/// has one writer anyway). It must be taken by a statement before the lookups, which then see
/// every batch committed before it.
pub(super) fn lock_account(account_id: &str) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO account_locks (account_id, batches) VALUES ($1, 1) \
         ON CONFLICT (account_id) DO UPDATE SET batches = account_locks.batches + 1",
    )
    .bind(account_id)
}

/// `Message-ID → (thread_id, a message with this id is stored)` for the ids already known.
async fn lookup_refs(
    tx: &mut Tx<'_>,
    account_id: &str,
    keys: &BTreeSet<&str>,
) -> Result<HashMap<String, (i64, bool)>, sqlx::Error> {
    let keys: Vec<&str> = keys.iter().copied().collect();
    let mut out = HashMap::new();
    for chunk in keys.chunks(PER_STATEMENT) {
        let sql = format!(
            "SELECT message_id, thread_id, CASE WHEN present THEN 1 ELSE 0 END FROM thread_refs \
             WHERE account_id = $1 AND message_id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
        for k in chunk {
            q = q.bind(*k);
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.insert(r.get(0), (r.get(1), r.get::<i64, _>(2) != 0));
        }
    }
    Ok(out)
}

/// Opt-in: groups that no Message-ID links anywhere join the newest thread with the same
/// normalized subject, and each other.
async fn link_by_subject(
    tx: &mut Tx<'_>,
    account_id: &str,
    rows: &[NewRow<'_>],
    uf: &mut UnionFind,
    row_of_thread: &mut HashMap<i64, usize>,
) -> Result<(), sqlx::Error> {
    let linked: HashSet<usize> = row_of_thread.values().map(|&i| uf.find(i)).collect();
    let mut row_of_subject: HashMap<&str, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let key = r.rec.subject_key.as_str();
        if key.is_empty() || linked.contains(&uf.find(i)) {
            continue;
        }
        match row_of_subject.get(key) {
            Some(&j) => uf.union(i, j),
            None => {
                row_of_subject.insert(key, i);
            }
        }
    }
    let subjects: Vec<&str> = row_of_subject.keys().copied().collect();
    for chunk in subjects.chunks(PER_STATEMENT) {
        let sql = format!(
            "SELECT subject_key, id FROM threads WHERE account_id = $1 AND subject_key IN ({}) \
             ORDER BY last_message_at, id",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
        for k in chunk {
            q = q.bind(*k);
        }
        // Ascending: the newest thread of each subject is the last one written.
        let mut newest: HashMap<String, i64> = HashMap::new();
        for r in q.fetch_all(&mut **tx).await? {
            newest.insert(r.get(0), r.get(1));
        }
        for (key, t) in newest {
            if let Some(&i) = row_of_subject.get(key.as_str()) {
                match row_of_thread.get(&t) {
                    Some(&j) => uf.union(i, j),
                    None => {
                        row_of_thread.insert(t, i);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The current rows of the threads a batch touches.
async fn load_threads(
    tx: &mut Tx<'_>,
    account_id: &str,
    ids: &BTreeSet<i64>,
) -> Result<HashMap<i64, Thread>, sqlx::Error> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    let mut out = HashMap::new();
    for chunk in ids.chunks(PER_STATEMENT) {
        let sql = format!(
            "SELECT id, subject, subject_key, started_at, last_message_at, message_count, \
             unread_count, participants FROM threads WHERE account_id = $1 AND id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(account_id);
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut **tx).await? {
            let id: i64 = r.get(0);
            let participants: String = r.get(7);
            out.insert(
                id,
                Thread {
                    id,
                    subject: r.get(1),
                    subject_key: r.get(2),
                    started_at: r.get(3),
                    last_message_at: r.get(4),
                    message_count: r.get(5),
                    unread_count: r.get(6),
                    participants: address::from_json(&participants),
                },
            );
        }
    }
    Ok(out)
}
