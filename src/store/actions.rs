//! The queue of actions (#19): what the API accepted, per mailbox in id order, and outcomes.
//!
//! An action is one request (`actions`); what each mailbox's task does for it is a step
//! (`action_steps`). A request is accepted once both are committed. The mailbox task reads
//! its queued steps ([`Store::pending_steps`]), marks them running ([`Store::start_steps`]),
//! runs them, and stores each step's outcome in the same transaction as the changes the
//! server answered with ([`Store::apply_changes_with_outcomes`]), so the store never shows an
//! action done before its effect. The action's own status follows its steps
//! ([`rollup`]): failed as soon as one fails, done once all are done.

use sqlx::{AssertSqlSafe, Row};

use super::action_outcomes::{rollup, rollups};
use super::chunk::placeholders;
use super::stmt::{run_all, Stmt};
use super::{now_ms, to_u32, Store, StoreError};

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// `UID STORE ±FLAGS`; params `{"add": [..], "remove": [..]}`.
    Flags,
    /// `UID MOVE`; params `{"to": "Archive"}`.
    Move,
    /// A move to the Trash (params `{"to": trash}`), or, for mail already in it, an expunge.
    Delete,
    /// `\Deleted` and `UID EXPUNGE` of these UIDs only.
    Expunge,
}

impl ActionKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Flags => "flags",
            ActionKind::Move => "move",
            ActionKind::Delete => "delete",
            ActionKind::Expunge => "expunge",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "flags" => ActionKind::Flags,
            "move" => ActionKind::Move,
            "delete" => ActionKind::Delete,
            "expunge" => ActionKind::Expunge,
            _ => return None,
        })
    }
}

/// A new action: the request and its steps, one per mailbox.
#[derive(Debug, Clone)]
pub struct NewAction {
    /// The account acted on.
    pub account_id: String,
    /// What it does.
    pub kind: ActionKind,
    /// What was addressed: `message:ID` or `thread:ID`.
    pub target: String,
    /// The kind's parameters (JSON).
    pub params: String,
    /// The request's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// What the key was used for (method, path and body, hashed).
    pub fingerprint: String,
    /// Unix ms after which a step nobody ran fails with `timeout`.
    pub deadline_at: i64,
    /// One per mailbox: the UIDs acted on there.
    pub steps: Vec<NewStep>,
}

/// One mailbox's part of a [`NewAction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    /// The mailbox.
    pub mailbox: String,
    /// The UIDVALIDITY of `uids`.
    pub uidvalidity: u32,
    /// The UIDs, ascending.
    pub uids: Vec<u32>,
}

/// An action as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRow {
    /// `actions.id`.
    pub id: i64,
    /// The account.
    pub account_id: String,
    /// `flags`, `move`, `delete` or `expunge`.
    pub kind: String,
    /// `message:ID` or `thread:ID`.
    pub target: String,
    /// The parameters (JSON).
    pub params: String,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    /// When failed: `gone`, `no_such_mailbox`, `refused`, `timeout`, `stale_uidvalidity`.
    pub error_code: Option<String>,
    /// When failed: what happened (the server's text bounded).
    pub error_message: Option<String>,
    /// Per-step detail (JSON array), once finished.
    pub result: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl ActionRow {
    /// Whether it will not change any more.
    pub fn is_finished(&self) -> bool {
        self.status == "done" || self.status == "failed"
    }
}

/// What [`Store::enqueue_action`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored now.
    New(ActionRow),
    /// The `Idempotency-Key` was used before for the same request: that action.
    Replayed(ActionRow),
    /// The `Idempotency-Key` was used before for another request.
    KeyReused,
}

/// A queued or running step, for its mailbox's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// `action_steps.id`.
    pub id: i64,
    /// Its action.
    pub action_id: i64,
    /// The action's kind.
    pub kind: ActionKind,
    /// The action's parameters (JSON).
    pub params: String,
    /// The UIDVALIDITY of `uids`.
    pub uidvalidity: u32,
    /// The UIDs.
    pub uids: Vec<u32>,
    /// Whether an earlier connection started it (its effect may or may not have happened).
    pub was_running: bool,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The step.
    pub step_id: i64,
    /// Its action.
    pub action_id: i64,
    /// `None` when done; the error code and message when failed.
    pub error: Option<(&'static str, String)>,
    /// Detail (JSON object), e.g. `{"gone": [..], "moved": [[old, new], ..]}`.
    pub result: Option<String>,
}

const ACTION_COLUMNS: &str = "id, account_id, kind, target, params, status, error_code, \
                              error_message, result, created_at, updated_at";

fn action_row(r: &sqlx::any::AnyRow) -> ActionRow {
    ActionRow {
        id: r.get(0),
        account_id: r.get(1),
        kind: r.get(2),
        target: r.get(3),
        params: r.get(4),
        status: r.get(5),
        error_code: r.get(6),
        error_message: r.get(7),
        result: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
    }
}

/// Space-separated UIDs, as `action_steps.uids` keeps them.
fn uids_text(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_uids(s: &str) -> Vec<u32> {
    s.split_ascii_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect()
}

impl Store {
    /// Stores an action and its steps in one transaction. With an idempotency key used
    /// before, returns that action instead (or [`Enqueued::KeyReused`] for another request).
    pub async fn enqueue_action(&self, a: &NewAction) -> Result<Enqueued, StoreError> {
        if let Some(found) = self.replay(a).await? {
            return Ok(found);
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO actions (account_id, kind, target, params, status, idempotency_key, \
             fingerprint, created_at, updated_at, deadline_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $7, $8) RETURNING {ACTION_COLUMNS}"
        )))
        .bind(&a.account_id)
        .bind(a.kind.as_str())
        .bind(&a.target)
        .bind(&a.params)
        .bind(a.idempotency_key.as_deref())
        .bind(&a.fingerprint)
        .bind(now)
        .bind(a.deadline_at)
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Ok(r) => action_row(&r),
            // Two requests with one key at once: the other committed first.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                return Ok(self.replay(a).await?.unwrap_or(Enqueued::KeyReused));
            }
            Err(e) => return Err(e.into()),
        };
        let mut stmts = Vec::new();
        for s in &a.steps {
            stmts.push(
                Stmt::new(
                    "INSERT INTO action_steps (action_id, account_id, mailbox, uidvalidity, uids, \
                     status, deadline_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6)",
                )
                .bind(row.id)
                .bind(a.account_id.as_str())
                .bind(s.mailbox.as_str())
                .bind(i64::from(s.uidvalidity))
                .bind(uids_text(&s.uids))
                .bind(a.deadline_at),
            );
        }
        if a.steps.is_empty() {
            // Nothing to do anywhere (e.g. a thread with no message left): done at once.
            stmts.push(rollup(row.id, now));
        }
        run_all(&mut tx, self.backend, stmts).await?;
        tx.commit().await?;
        if a.steps.is_empty() {
            return Ok(Enqueued::New(self.action(row.id).await?.unwrap_or(row)));
        }
        Ok(Enqueued::New(row))
    }

    async fn replay(&self, a: &NewAction) -> Result<Option<Enqueued>, StoreError> {
        let Some(key) = &a.idempotency_key else {
            return Ok(None);
        };
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACTION_COLUMNS}, fingerprint FROM actions WHERE idempotency_key = $1"
        )))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|r| {
            let fingerprint: Option<String> = r.get(11);
            if fingerprint.as_deref() == Some(a.fingerprint.as_str()) {
                Enqueued::Replayed(action_row(&r))
            } else {
                Enqueued::KeyReused
            }
        }))
    }

    /// The action `id`.
    pub async fn action(&self, id: i64) -> Result<Option<ActionRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(action_row))
    }

    /// The mailbox's queued and running steps, oldest first, at most `limit`.
    pub async fn pending_steps(
        &self,
        account_id: &str,
        mailbox: &str,
        limit: i64,
    ) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.id, s.action_id, a.kind, a.params, s.uidvalidity, s.uids, s.status \
             FROM action_steps s JOIN actions a ON a.id = s.action_id \
             WHERE s.account_id = $1 AND s.mailbox = $2 AND s.status IN ('queued', 'running') \
             ORDER BY s.id LIMIT $3",
        )
        .bind(account_id)
        .bind(mailbox)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(StepRow {
                    id: r.get(0),
                    action_id: r.get(1),
                    kind: ActionKind::parse(&r.get::<String, _>(2))?,
                    params: r.get(3),
                    uidvalidity: to_u32(r.get(4)),
                    uids: parse_uids(&r.get::<String, _>(5)),
                    was_running: r.get::<String, _>(6) == "running",
                })
            })
            .collect())
    }

    /// Marks steps running (and their actions), and records the messages a move will bring
    /// into `arrivals`' mailboxes, before any command is sent. Fenced in cluster mode.
    pub async fn start_steps(
        &self,
        account_id: &str,
        mailbox: &str,
        steps: &[&StepRow],
        arrivals: &[(String, String, i64)],
    ) -> Result<(), StoreError> {
        if steps.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let tx = self.pool.begin().await?;
        let mut tx = self.fence_check(tx, account_id, mailbox).await?;
        let ids: Vec<i64> = steps.iter().map(|s| s.id).collect();
        let mut set = Stmt::new(format!(
            "UPDATE action_steps SET status = 'running' WHERE id IN ({}) AND status = 'queued'",
            placeholders(1, ids.len())
        ));
        for id in &ids {
            set.push(*id);
        }
        let mut stmts = vec![set];
        for (dest, message_id, action_id) in arrivals {
            stmts.push(
                Stmt::new(
                    "INSERT INTO expected_arrivals (account_id, mailbox, message_id, action_id, \
                     created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(account_id)
                .bind(dest.as_str())
                .bind(message_id.as_str())
                .bind(*action_id)
                .bind(now),
            );
        }
        run_all(&mut tx, self.backend, stmts).await?;
        let ups = rollups(steps.iter().map(|s| s.action_id), now);
        run_all(&mut tx, self.backend, ups).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails the steps nobody ran before their deadline (`timeout`), with their actions, and
    /// forgets finished actions older than `keep_ms` and expected arrivals older than an hour.
    /// Any replica may run it: each statement is idempotent.
    pub async fn expire_actions(&self, keep_ms: i64) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let expired = sqlx::query(
            "UPDATE action_steps SET status = 'failed', error_code = 'timeout', \
             error_message = 'no replica holding the mailbox ran it within api.action_timeout' \
             WHERE status = 'queued' AND deadline_at < $1 RETURNING action_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut stmts = rollups(expired.iter().map(|r| r.get(0)), now);
        stmts.push(
            Stmt::new("DELETE FROM expected_arrivals WHERE created_at < $1").bind(now - 3_600_000),
        );
        run_all(&mut tx, self.backend, stmts).await?;
        sqlx::query(
            "DELETE FROM action_steps WHERE action_id IN (SELECT id FROM actions \
             WHERE status IN ('done', 'failed') AND updated_at < $1)",
        )
        .bind(now - keep_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM actions WHERE status IN ('done', 'failed') AND updated_at < $1")
            .bind(now - keep_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(expired.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_lists_round_trip() {
        assert_eq!(
            parse_uids(&uids_text(&[1, 5, 4_000_000_000])),
            [1, 5, 4_000_000_000]
        );
        assert_eq!(parse_uids(""), Vec::<u32>::new());
    }
}
