//! Flag changes and expunges of stored rows, one [`ChangeSet`] per transaction.
//!
//! Round trips on PostgreSQL for a set of up to 2,000 changes: BEGIN, the account lock, one
//! select per 500 UIDs (the rows and, joined, the present rows sharing their Message-ID), every
//! write as one grouped statement, COMMIT. What changes is computed in memory
//! ([`super::changes_plan`]); the writes are multi-row `UPDATE … FROM (VALUES …)` statements.

use sqlx::{AssertSqlSafe, Row};

use super::actions::{outcome_stmts, StepOutcome};
use super::batch::BatchTarget;
use super::changes_plan::{plan, Loaded, Plan, RowState};
use super::chunk::placeholders;
use super::outbox::{fill_ids, insert_outbox, OutboxRow};
use super::state::modseq_to_db;
use super::stmt::{run_all, Stmt, Tx};
use super::threads::lock_account;
use super::{now_ms, to_u32, Store, StoreError};
use crate::changes::{ChangeSet, ExpungeMode, Topic};

/// UIDs per select.
const UIDS_PER_SELECT: usize = 500;
/// Rows per multi-row write (three or four values each).
const ROWS_PER_WRITE: usize = 1000;

/// What one [`Store::apply_changes`] committed.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// `(uid, flags)` of the rows whose flags changed (compared as sets), ascending by UID;
    /// flags space-separated in the server's order.
    pub flags: Vec<(u32, String)>,
    /// UIDs of the rows newly marked expunged (`keep`) or removed (`delete`), ascending.
    pub expunged: Vec<u32>,
    /// The announcements added to the outbox, ids filled, in publication order.
    pub outbox: Vec<OutboxRow>,
}

impl Applied {
    /// Whether any row changed (then records were asked for).
    pub fn changed_any(&self) -> bool {
        !self.flags.is_empty() || !self.expunged.is_empty()
    }
}

impl Store {
    /// Applies one set of changes to the mailbox's stored rows in one transaction, which first
    /// takes the account's lock (thread counts are per account, and [`Store::commit_batch`]
    /// writes them too):
    /// - flags of present rows; a report whose MODSEQ is older than the row's is ignored;
    /// - expunges, by `storage.expunged`: `keep` sets `expunged_at`, `delete` removes the
    ///   rows with their attachments and raw copies; UIDs with no row are ignored;
    /// - `threads.message_count` and `unread_count`, which count present messages only;
    /// - `mailbox_state.highest_modseq` = `set.highest_modseq`, only upward and only for the
    ///   same UIDVALIDITY;
    /// - last, when any row changed, the [`Topic::Changes`] records `records(&applied)`.
    pub async fn apply_changes(
        &self,
        target: BatchTarget<'_>,
        set: &ChangeSet,
        records: impl FnOnce(&Applied) -> Vec<String>,
    ) -> Result<Applied, StoreError> {
        self.apply_changes_with_outcomes(target, set, &[], records)
            .await
    }

    /// [`Store::apply_changes`], also storing the outcomes of the actions (#19) whose effect
    /// these changes are, in the same transaction: an action never shows done before its
    /// effect is in the store. Runs even when `set` is empty if there are outcomes.
    pub async fn apply_changes_with_outcomes(
        &self,
        target: BatchTarget<'_>,
        set: &ChangeSet,
        outcomes: &[StepOutcome],
        records: impl FnOnce(&Applied) -> Vec<String>,
    ) -> Result<Applied, StoreError> {
        if set.is_empty() && outcomes.is_empty() {
            return Ok(Applied::default());
        }
        let now = now_ms();
        let tx = self.pool.begin().await?;
        // Cluster mode: the lease first (see [`Store::fenced`]).
        let mut tx = self
            .fence_check(tx, target.account_id, target.mailbox)
            .await?;
        // Its own statement: the reads after it must see every commit made before it.
        run_all(&mut tx, self.backend, vec![lock_account(target.account_id)]).await?;
        let loaded = load(&mut tx, target, set).await?;
        let plan = plan(&loaded, set, self.expunged);
        let mut applied = Applied {
            flags: plan.changed.clone(),
            expunged: plan.expunged.clone(),
            outbox: Vec::new(),
        };
        if applied.changed_any() {
            applied.outbox = records(&applied)
                .into_iter()
                .map(|p| OutboxRow::new(target.account_id, target.mailbox, Topic::Changes, p, None))
                .collect();
        }
        let mut writes = writes(self.backend, target, &plan, self.expunged, now);
        let (outcome_writes, rollups) = outcome_stmts(outcomes, now);
        writes.extend(outcome_writes);
        if let Some(h) = set.highest_modseq {
            writes.push(
                Stmt::new(
                    "UPDATE mailbox_state SET highest_modseq = $4, updated_at = $5 \
                     WHERE account_id = $1 AND mailbox = $2 AND uidvalidity = $3 \
                     AND (highest_modseq IS NULL OR highest_modseq < $4)",
                )
                .bind(target.account_id)
                .bind(target.mailbox)
                .bind(i64::from(target.uidvalidity))
                .bind(modseq_to_db(h))
                .bind(now),
            );
        }
        if !applied.outbox.is_empty() {
            // Last, so that the grouped statement returns the records' ids.
            writes.push(insert_outbox(&applied.outbox));
        }
        let returned = if writes.is_empty() {
            Vec::new()
        } else {
            run_all(&mut tx, self.backend, writes).await?
        };
        if !applied.outbox.is_empty() {
            fill_ids(&mut applied.outbox, &returned);
        }
        if !rollups.is_empty() {
            run_all(&mut tx, self.backend, rollups).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }
}

/// Reads the target's rows for the set's UIDs and the present rows sharing their Message-IDs
/// (in any mailbox of the account), one select per [`UIDS_PER_SELECT`] UIDs.
async fn load(
    tx: &mut Tx<'_>,
    target: BatchTarget<'_>,
    set: &ChangeSet,
) -> Result<Loaded, sqlx::Error> {
    let mut uids: Vec<u32> = set.flags.iter().map(|f| f.uid).collect();
    uids.extend(&set.expunged);
    uids.sort_unstable();
    uids.dedup();
    // A dense set (a storm over consecutive UIDs) is one range select: index-backed like the
    // lists, and one round trip instead of one per 500 UIDs.
    let dense = match (uids.first(), uids.last()) {
        (Some(&lo), Some(&hi)) => {
            uids.len() > UIDS_PER_SELECT && (hi - lo) as usize <= 2 * uids.len()
        }
        _ => false,
    };
    let selects: Vec<&[u32]> = if dense {
        vec![&uids[..]]
    } else {
        uids.chunks(UIDS_PER_SELECT).collect()
    };
    let mut out = Loaded::default();
    for chunk in selects {
        let which = if dense {
            "m.uid >= $4 AND m.uid <= $5".to_string()
        } else {
            format!("m.uid IN ({})", placeholders(4, chunk.len()))
        };
        let sql = format!(
            "SELECT m.id, m.uid, m.thread_id, m.message_id, m.flags, m.modseq, \
             CASE WHEN m.expunged_at IS NULL THEN 1 ELSE 0 END, o.id, o.thread_id, o.flags, o.modseq \
             FROM messages m LEFT JOIN messages o ON m.expunged_at IS NULL \
             AND o.account_id = m.account_id AND o.message_id = m.message_id AND o.id <> m.id \
             AND o.expunged_at IS NULL \
             WHERE m.account_id = $1 AND m.mailbox = $2 AND m.uidvalidity = $3 AND {which}"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(target.account_id)
            .bind(target.mailbox)
            .bind(i64::from(target.uidvalidity));
        if dense {
            let (lo, hi) = (chunk.first(), chunk.last());
            q = q.bind(lo.map_or(0, |u| i64::from(*u)));
            q = q.bind(hi.map_or(0, |u| i64::from(*u)));
        } else {
            for uid in chunk {
                q = q.bind(i64::from(*uid));
            }
        }
        for r in q.fetch_all(&mut **tx).await? {
            let id: i64 = r.get(0);
            let uid = to_u32(r.get::<i64, _>(1));
            if dense && uids.binary_search(&uid).is_err() {
                continue; // in the range, not in the set
            }
            let message_id: Option<String> = r.get(3);
            out.by_uid.insert(uid, id);
            out.rows.entry(id).or_insert_with(|| RowState {
                thread_id: r.get(2),
                message_id: message_id.clone(),
                flags: r.get(4),
                modseq: r.get(5),
                present: r.get::<i64, _>(6) != 0,
            });
            if let Some(other) = r.get::<Option<i64>, _>(7) {
                out.rows.entry(other).or_insert_with(|| RowState {
                    thread_id: r.get(8),
                    message_id,
                    flags: r.get(9),
                    modseq: r.get(10),
                    present: true,
                });
            }
        }
    }
    Ok(out)
}

/// The multi-row writes of a plan, in an order that is safe to run as one statement (no row
/// written twice).
fn writes<'a>(
    backend: super::Backend,
    target: BatchTarget<'a>,
    plan: &'a Plan,
    mode: ExpungeMode,
    now: i64,
) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
    for chunk in plan.flag_writes.chunks(ROWS_PER_WRITE) {
        let mut q = Stmt::new(format!(
            "UPDATE messages SET flags = v.column2, modseq = COALESCE(v.column3, messages.modseq) \
             FROM (VALUES {}) AS v WHERE messages.id = v.column1",
            values(1, chunk.len(), &["BIGINT", "TEXT", "BIGINT"])
        ));
        for (id, flags, modseq) in chunk {
            q.push(*id);
            q.push(flags.as_str());
            q.push(*modseq);
        }
        out.push(q);
    }
    for chunk in plan.expunge_ids.chunks(ROWS_PER_WRITE) {
        let list = placeholders(1, chunk.len());
        let ids = |sql: String| {
            let mut q = Stmt::new(sql);
            for id in chunk {
                q.push(*id);
            }
            q
        };
        match mode {
            ExpungeMode::Keep => out.push(
                ids(format!(
                    "UPDATE messages SET expunged_at = ${} WHERE id IN ({list}) AND expunged_at IS NULL",
                    chunk.len() + 1
                ))
                .bind(now),
            ),
            ExpungeMode::Delete => {
                // Children first: SQLite checks the foreign keys statement by statement.
                out.push(ids(format!("DELETE FROM attachments WHERE message_row_id IN ({list})")));
                out.push(ids(format!("DELETE FROM message_raw WHERE message_row_id IN ({list})")));
                out.push(ids(super::search::delete_docs_sql(backend, &list)));
                out.push(ids(format!("DELETE FROM messages WHERE id IN ({list})")));
            }
        }
    }
    let deltas: Vec<(i64, (i64, i64))> = plan.thread_deltas.iter().map(|(t, d)| (*t, *d)).collect();
    for chunk in deltas.chunks(ROWS_PER_WRITE) {
        // Never below zero, whatever an older version of the counts held.
        let mut q = Stmt::new(format!(
            "UPDATE threads SET \
             message_count = CASE WHEN message_count + v.column2 < 0 THEN 0 ELSE message_count + v.column2 END, \
             unread_count = CASE WHEN unread_count + v.column3 < 0 THEN 0 ELSE unread_count + v.column3 END, \
             updated_at = $1 FROM (VALUES {}) AS v WHERE threads.id = v.column1",
            values(2, chunk.len(), &["BIGINT", "BIGINT", "BIGINT"])
        ));
        q.push(now);
        for (t, (count, unread)) in chunk {
            q.push(*t);
            q.push(*count);
            q.push(*unread);
        }
        out.push(q);
    }
    for chunk in plan.refs_cleared.chunks(ROWS_PER_WRITE) {
        let mut q = Stmt::new(format!(
            "UPDATE thread_refs SET present = FALSE WHERE account_id = $1 AND message_id IN ({})",
            placeholders(2, chunk.len())
        ));
        q.push(target.account_id);
        for m in chunk {
            q.push(m.as_str());
        }
        out.push(q);
    }
    out
}

/// `(CAST($first AS t0), CAST($first+1 AS t1), …), (…)` for `rows` rows: typed, so that
/// PostgreSQL knows each column's type (a NULL in the first row would say nothing).
fn values(first: usize, rows: usize, types: &[&str]) -> String {
    let mut sql = String::new();
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, t) in types.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("CAST(${n} AS {t})"));
            n += 1;
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_and_numbered() {
        assert_eq!(
            values(2, 2, &["BIGINT", "TEXT"]),
            "(CAST($2 AS BIGINT), CAST($3 AS TEXT)), (CAST($4 AS BIGINT), CAST($5 AS TEXT))"
        );
    }
}
