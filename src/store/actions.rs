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

/// A stored message, as an action addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// `messages.id`.
    pub id: i64,
    /// Its account.
    pub account_id: String,
    /// Its mailbox.
    pub mailbox: String,
    /// The UIDVALIDITY of `uid`.
    pub uidvalidity: u32,
    /// Its UID.
    pub uid: u32,
    /// Whether it already left the mailbox.
    pub expunged: bool,
    /// Its Message-ID header.
    pub message_id: Option<String>,
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

/// Brings an action's status in line with its steps: `failed` (with the first failed step's
/// error) as soon as one step failed, `done` when every step is, `running` while one runs.
fn rollup(action_id: i64, now: i64) -> Stmt<'static> {
    Stmt::new(
        "UPDATE actions SET \
         status = CASE \
           WHEN EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.id \
                        AND s.status = 'failed') THEN 'failed' \
           WHEN NOT EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.id \
                            AND s.status <> 'done') THEN 'done' \
           WHEN EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.id \
                        AND s.status = 'running') THEN 'running' \
           ELSE 'queued' END, \
         error_code = (SELECT s.error_code FROM action_steps s WHERE s.action_id = actions.id \
                       AND s.status = 'failed' ORDER BY s.id LIMIT 1), \
         error_message = (SELECT s.error_message FROM action_steps s \
                          WHERE s.action_id = actions.id AND s.status = 'failed' \
                          ORDER BY s.id LIMIT 1), \
         updated_at = $2 \
         WHERE id = $1 AND status NOT IN ('done', 'failed')",
    )
    .bind(action_id)
    .bind(now)
}

impl Store {
    /// The message `id`, if stored.
    pub async fn message_ref(&self, id: i64) -> Result<Option<MessageRef>, StoreError> {
        let row = sqlx::query(
            "SELECT id, account_id, mailbox, uidvalidity, uid, \
             CASE WHEN expunged_at IS NULL THEN 0 ELSE 1 END, message_id \
             FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| message_ref(&r)))
    }

    /// The account of thread `id` and its messages still in a mailbox, if the thread exists.
    pub async fn thread_refs(
        &self,
        id: i64,
    ) -> Result<Option<(String, Vec<MessageRef>)>, StoreError> {
        let Some(account) = sqlx::query("SELECT account_id FROM threads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let account: String = account.get(0);
        let rows = sqlx::query(
            "SELECT id, account_id, mailbox, uidvalidity, uid, 0, message_id FROM messages \
             WHERE account_id = $1 AND thread_id = $2 AND expunged_at IS NULL ORDER BY id",
        )
        .bind(&account)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((account, rows.iter().map(message_ref).collect())))
    }

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

    /// The Message-IDs of these UIDs of the mailbox (present rows only).
    pub async fn message_ids(
        &self,
        account_id: &str,
        mailbox: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<Vec<(u32, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in uids.chunks(500) {
            let sql = format!(
                "SELECT uid, message_id FROM messages WHERE account_id = $1 AND mailbox = $2 \
                 AND uidvalidity = $3 AND message_id IS NOT NULL AND uid IN ({})",
                placeholders(4, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(account_id)
                .bind(mailbox)
                .bind(i64::from(uidvalidity));
            for u in chunk {
                q = q.bind(i64::from(*u));
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((to_u32(r.get(0)), r.get(1)));
            }
        }
        Ok(out)
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

    /// Cluster mode: `NOTIFY channel, payload` on PostgreSQL, a hint to the other replicas
    /// (nothing on SQLite). A failure is only logged: the receivers also poll on connect.
    pub async fn notify(&self, channel: &str, payload: &str) {
        if self.backend != super::Backend::Postgres {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "NOTIFY failed");
        }
    }

    /// The server's mailboxes of the account as last listed: `(name, special_use)`. Empty
    /// when never listed.
    pub async fn server_mailboxes(
        &self,
        account_id: &str,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, special_use FROM server_mailboxes WHERE account_id = $1 ORDER BY name",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Replaces the account's list of server mailboxes.
    pub async fn set_server_mailboxes(
        &self,
        account_id: &str,
        list: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Its own statement: grouped with the inserts (one snapshot on PostgreSQL), the
        // inserts would still meet the old rows.
        sqlx::query("DELETE FROM server_mailboxes WHERE account_id = $1")
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        let mut stmts = Vec::new();
        for (name, special) in list {
            stmts.push(
                Stmt::new(
                    "INSERT INTO server_mailboxes (account_id, name, special_use, seen_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(account_id)
                .bind(name.as_str())
                .bind(special.as_deref())
                .bind(now),
            );
        }
        run_all(&mut tx, self.backend, stmts).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The statements that store step outcomes, for the change transaction that carries their
/// effect, and (second) the roll-ups of their actions. Run the roll-ups after the rest: on
/// PostgreSQL grouped statements share one snapshot, so a roll-up in the same group would not
/// see the steps' new states.
pub(super) fn outcome_stmts(
    outcomes: &[StepOutcome],
    now: i64,
) -> (Vec<Stmt<'_>>, Vec<Stmt<'static>>) {
    let mut stmts = Vec::new();
    for o in outcomes {
        let (status, code, message) = match &o.error {
            None => ("done", None, None),
            Some((code, message)) => ("failed", Some(*code), Some(message.as_str())),
        };
        stmts.push(
            Stmt::new(
                "UPDATE action_steps SET status = $2, error_code = $3, error_message = $4, \
                 result = $5 WHERE id = $1",
            )
            .bind(o.step_id)
            .bind(status)
            .bind(code)
            .bind(message)
            .bind(o.result.as_deref()),
        );
        if o.error.is_some() {
            // A failed move brings nothing: its expected arrivals go.
            stmts.push(
                Stmt::new("DELETE FROM expected_arrivals WHERE action_id = $1").bind(o.action_id),
            );
        }
    }
    (stmts, rollups(outcomes.iter().map(|o| o.action_id), now))
}

/// One [`rollup`] per distinct action.
fn rollups(actions: impl Iterator<Item = i64>, now: i64) -> Vec<Stmt<'static>> {
    let mut actions: Vec<i64> = actions.collect();
    actions.sort_unstable();
    actions.dedup();
    actions.into_iter().map(|a| rollup(a, now)).collect()
}

fn message_ref(r: &sqlx::any::AnyRow) -> MessageRef {
    MessageRef {
        id: r.get(0),
        account_id: r.get(1),
        mailbox: r.get(2),
        uidvalidity: to_u32(r.get(3)),
        uid: to_u32(r.get(4)),
        expunged: r.get::<i64, _>(5) != 0,
        message_id: r.get(6),
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
