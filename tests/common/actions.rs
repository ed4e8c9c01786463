//! What the action tests (#19) share: ids of stored rows, an action call that waits for its
//! outcome, and waiting for the store to catch up with the server.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sqlx::Row;

use super::api::{Answer, Client};
use super::db::TestDb;

/// `(messages.id, uid, thread_id)` of the present rows of `mailbox`, by UID.
pub async fn ids(db: &TestDb, account: &str, mailbox: &str) -> Result<Vec<(i64, u32, i64)>> {
    let pool = db.pool().await?;
    let rows = sqlx::query(
        "SELECT id, uid, thread_id FROM messages WHERE account_id = $1 AND mailbox = $2 \
         AND expunged_at IS NULL ORDER BY uid",
    )
    .bind(account)
    .bind(mailbox)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<i64, _>(1) as u32, r.get(2)))
        .collect())
}

/// Calls the API with `Prefer: wait=20` and returns the finished action; fails unless it
/// answered 200 with a finished action.
pub async fn act(api: &Client, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let a = call_waiting(api, method, path, body).await?;
    if a.status != 200 {
        bail!("{method} {path}: {} {}", a.status, a.body);
    }
    Ok(a.body["action"].clone())
}

/// Like [`act`], the raw answer.
pub async fn call_waiting(
    api: &Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Answer> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    api.call(method, path, &[("Prefer", "wait=20")], body.as_bytes())
        .await
}

/// `{"seen": true}` and the like.
pub fn flags(v: Value) -> Option<Value> {
    Some(v)
}

/// `{"to": mailbox}`.
pub fn to(mailbox: &str) -> Option<Value> {
    Some(json!({ "to": mailbox }))
}

/// The next record on `sub` of `kind`, skipping others (returned too).
pub async fn next_of(
    sub: &mut super::redis::Subscriber,
    kind: &str,
    timeout: Duration,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let rec = sub.next(left).await.with_context(|| format!("no {kind}"))?;
        if rec["kind"] == kind {
            return Ok(rec);
        }
    }
}
