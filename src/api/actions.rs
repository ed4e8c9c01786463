//! Actions on messages and threads: flags, moves, deletes, and reading an action's state.
//!
//! A request is validated against the store (the message exists and is still in its mailbox,
//! the target mailbox exists on the server), stored as an action with one step per mailbox,
//! and answered `202` once committed; the mailbox's task is woken to run it. With
//! `Prefer: wait=N` the answer waits up to N seconds for the outcome (`200`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::action_view::{envelope, ActionEnvelope, DeleteQuery, FlagsPatch, MoveBody};
use super::extract::{Body, Id, Params};
use super::flags::flag_params;
use super::wait::{idempotency_key, prefer_wait};
use super::{ApiError, ApiState};
use crate::config::Account;
use crate::store::{ActionKind, ActionRow, Enqueued, MessageRef, NewAction, NewStep};

type Answer = Result<(StatusCode, Json<ActionEnvelope>), ApiError>;

#[utoipa::path(patch, path = "/v1/messages/{id}", tag = "actions",
    params(("id" = i64, Path, description = "messages.id")),
    request_body = FlagsPatch,
    responses(
        (status = 202, description = "queued", body = ActionEnvelope),
        (status = 200, description = "done or failed within Prefer: wait", body = ActionEnvelope),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, description = "the message already left its mailbox", body = super::error::ErrorBody)))]
/// Sets or clears flags of one message.
pub async fn patch_message(
    State(api): State<ApiState>,
    Id(id): Id,
    headers: HeaderMap,
    Body(body): Body<FlagsPatch>,
) -> Answer {
    let params = flag_params(&body)?;
    let t = Target::message(&api, id).await?;
    submit(&api, &headers, t, ActionKind::Flags, params, None).await
}

#[utoipa::path(patch, path = "/v1/threads/{id}", tag = "actions",
    params(("id" = i64, Path, description = "threads.id")),
    request_body = FlagsPatch,
    responses((status = 202, body = ActionEnvelope), (status = 200, body = ActionEnvelope),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
/// Sets or clears flags of every message of a conversation, in every watched mailbox.
pub async fn patch_thread(
    State(api): State<ApiState>,
    Id(id): Id,
    headers: HeaderMap,
    Body(body): Body<FlagsPatch>,
) -> Answer {
    let params = flag_params(&body)?;
    let t = Target::thread(&api, id).await?;
    submit(&api, &headers, t, ActionKind::Flags, params, None).await
}

#[utoipa::path(post, path = "/v1/messages/{id}/move", tag = "actions",
    params(("id" = i64, Path, description = "messages.id")),
    request_body = MoveBody,
    responses((status = 202, body = ActionEnvelope), (status = 200, body = ActionEnvelope),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody),
        (status = 422, description = "the server has no such mailbox", body = super::error::ErrorBody)))]
/// Moves one message (`UID MOVE`, or COPY + `UID EXPUNGE`).
pub async fn move_message(
    State(api): State<ApiState>,
    Id(id): Id,
    headers: HeaderMap,
    Body(body): Body<MoveBody>,
) -> Answer {
    let t = Target::message(&api, id).await?;
    let to = checked_target(&api, &t.account, &body.to).await?;
    let params = serde_json::json!({ "to": to }).to_string();
    submit(&api, &headers, t, ActionKind::Move, params, Some(&to)).await
}

#[utoipa::path(post, path = "/v1/threads/{id}/move", tag = "actions",
    params(("id" = i64, Path, description = "threads.id")),
    request_body = MoveBody,
    responses((status = 202, body = ActionEnvelope), (status = 200, body = ActionEnvelope),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
/// Moves every message of a conversation (archiving it, typically).
pub async fn move_thread(
    State(api): State<ApiState>,
    Id(id): Id,
    headers: HeaderMap,
    Body(body): Body<MoveBody>,
) -> Answer {
    let t = Target::thread(&api, id).await?;
    let to = checked_target(&api, &t.account, &body.to).await?;
    let params = serde_json::json!({ "to": to }).to_string();
    submit(&api, &headers, t, ActionKind::Move, params, Some(&to)).await
}

#[utoipa::path(delete, path = "/v1/messages/{id}", tag = "actions",
    params(("id" = i64, Path, description = "messages.id"), DeleteQuery),
    responses((status = 202, body = ActionEnvelope), (status = 200, body = ActionEnvelope),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, description = "no Trash mailbox", body = super::error::ErrorBody)))]
/// Moves one message to the Trash; mail already in the Trash, or `?permanent=true`, is
/// deleted for good (`\Deleted` + `UID EXPUNGE` of that UID only).
pub async fn delete_message(
    State(api): State<ApiState>,
    Id(id): Id,
    headers: HeaderMap,
    Params(q): Params<DeleteQuery>,
) -> Answer {
    let t = Target::message(&api, id).await?;
    delete(&api, &headers, t, q.permanent.unwrap_or(false)).await
}

#[utoipa::path(delete, path = "/v1/threads/{id}", tag = "actions",
    params(("id" = i64, Path, description = "threads.id"), DeleteQuery),
    responses((status = 202, body = ActionEnvelope), (status = 200, body = ActionEnvelope),
        (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
/// Moves every message of a conversation to the Trash (its copies already there stay), or
/// with `?permanent=true` deletes them all for good.
pub async fn delete_thread(
    State(api): State<ApiState>,
    Id(id): Id,
    headers: HeaderMap,
    Params(q): Params<DeleteQuery>,
) -> Answer {
    let t = Target::thread(&api, id).await?;
    delete(&api, &headers, t, q.permanent.unwrap_or(false)).await
}

#[utoipa::path(get, path = "/v1/actions/{id}", tag = "actions",
    params(("id" = i64, Path, description = "actions.id")),
    responses((status = 200, body = ActionEnvelope), (status = 404, body = super::error::ErrorBody)))]
/// An action's state.
pub async fn get_action(State(api): State<ApiState>, Id(id): Id) -> Answer {
    let row = api
        .store()
        .action(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("action {id}")))?;
    Ok((StatusCode::OK, Json(envelope(&row))))
}

/// The messages a request addresses, with their account.
struct Target {
    /// `message:ID` or `thread:ID`.
    name: String,
    account: std::sync::Arc<Account>,
    messages: Vec<MessageRef>,
    /// A single message (a delete of it in the Trash is permanent).
    single: bool,
}

impl Target {
    async fn message(api: &ApiState, id: i64) -> Result<Target, ApiError> {
        api.accepting()?;
        let m = api
            .store()
            .message_ref(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("message {id}")))?;
        let account = watched(api, &m.account_id, id, "message")?;
        if m.expunged || !account.mailboxes.contains(&m.mailbox) {
            return Err(ApiError::conflict(
                "gone",
                format!("message {id} already left {}", m.mailbox),
            ));
        }
        Ok(Target {
            name: format!("message:{id}"),
            account,
            messages: vec![m],
            single: true,
        })
    }

    async fn thread(api: &ApiState, id: i64) -> Result<Target, ApiError> {
        api.accepting()?;
        let (account_id, messages) = api
            .store()
            .thread_refs(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("thread {id}")))?;
        let account = watched(api, &account_id, id, "thread")?;
        let messages = messages
            .into_iter()
            .filter(|m| account.mailboxes.contains(&m.mailbox))
            .collect();
        Ok(Target {
            name: format!("thread:{id}"),
            account,
            messages,
            single: false,
        })
    }
}

/// The configured account of a stored message or thread; one no longer configured is a 404.
fn watched(
    api: &ApiState,
    account_id: &str,
    id: i64,
    what: &str,
) -> Result<std::sync::Arc<Account>, ApiError> {
    api.account(account_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "{what} {id} (its account {account_id:?} is no longer configured)"
        ))
    })
}

/// A `to` mailbox checked against the account's LIST (when known): `422` when the server
/// has no such mailbox.
async fn checked_target(api: &ApiState, account: &Account, to: &str) -> Result<String, ApiError> {
    if to.is_empty() || to.len() > 1000 || to.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "to",
            "must be a mailbox name of 1 to 1000 characters without control characters",
        ));
    }
    let listed = api.store().server_mailboxes(&account.id).await?;
    let utf7 = crate::mailbox_name::utf7(to);
    if !listed.is_empty() && !listed.iter().any(|(n, _)| n == to || *n == utf7) {
        return Err(ApiError::unprocessable(
            "no_such_mailbox",
            format!("the server has no mailbox {to:?}"),
        ));
    }
    Ok(to.to_string())
}

/// The account's Trash: `accounts[].trash`, else the mailbox the server marks `\Trash`.
async fn trash(api: &ApiState, account: &Account) -> Result<String, ApiError> {
    if let Some(t) = &account.trash {
        return Ok(t.clone());
    }
    let listed = api.store().server_mailboxes(&account.id).await?;
    listed
        .into_iter()
        .find(|(_, special)| special.as_deref() == Some("\\Trash"))
        .map(|(name, _)| name)
        .ok_or_else(|| {
            ApiError::unprocessable(
                "no_trash",
                format!(
                    "account {:?} has no Trash: the server marks no mailbox \\Trash; set \
                     accounts[].trash, or delete with ?permanent=true",
                    account.id
                ),
            )
        })
}

async fn delete(api: &ApiState, headers: &HeaderMap, mut t: Target, permanent: bool) -> Answer {
    if permanent {
        return submit(api, headers, t, ActionKind::Expunge, "{}".into(), None).await;
    }
    let trash = trash(api, &t.account).await?;
    if !t.single {
        // A conversation's copies already in the Trash stay there: deleting a conversation
        // never destroys mail for good unless asked.
        t.messages.retain(|m| m.mailbox != trash);
    }
    let params = serde_json::json!({ "to": trash }).to_string();
    submit(api, headers, t, ActionKind::Delete, params, None).await
}

/// Stores the action (steps by mailbox), wakes the tasks and answers, waiting if asked.
async fn submit(
    api: &ApiState,
    headers: &HeaderMap,
    t: Target,
    kind: ActionKind,
    params: String,
    skip_in: Option<&str>,
) -> Answer {
    let wait = prefer_wait(headers)?;
    let key = idempotency_key(headers)?;
    let mut by_mailbox: BTreeMap<(String, u32), Vec<u32>> = BTreeMap::new();
    for m in &t.messages {
        // A move to where the message already is has nothing to do.
        if skip_in == Some(m.mailbox.as_str()) {
            continue;
        }
        by_mailbox
            .entry((m.mailbox.clone(), m.uidvalidity))
            .or_default()
            .push(m.uid);
    }
    let steps: Vec<NewStep> = by_mailbox
        .into_iter()
        .map(|((mailbox, uidvalidity), mut uids)| {
            uids.sort_unstable();
            uids.dedup();
            NewStep {
                mailbox,
                uidvalidity,
                uids,
            }
        })
        .collect();
    let mailboxes: Vec<String> = steps.iter().map(|s| s.mailbox.clone()).collect();
    let timeout = api.action_timeout();
    let new = NewAction {
        account_id: t.account.id.clone(),
        kind,
        fingerprint: fingerprint(kind, &t.name, &params),
        target: t.name,
        params,
        idempotency_key: key,
        deadline_at: crate::store::now_ms()
            .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
        steps,
    };
    // Subscribed before anything can finish, so that no completion is missed.
    let mut finished = api.signals().subscribe();
    let row = match api.store().enqueue_action(&new).await? {
        Enqueued::New(row) => {
            api.signals().queued(&new.account_id, &mailboxes).await;
            row
        }
        Enqueued::Replayed(row) => row,
        Enqueued::KeyReused => {
            return Err(ApiError::bad_request(
                "Idempotency-Key",
                "already used for another request",
            ))
        }
    };
    let Some(wait) = wait else {
        return Ok(answer(&row));
    };
    let until = tokio::time::Instant::now() + wait;
    let mut row = row;
    // Bounded by `until`.
    while !row.is_finished() {
        let got = tokio::time::timeout_at(until, finished.recv()).await;
        match got {
            Err(_) => break,
            Ok(Ok(id)) if id != row.id && id != 0 => continue,
            // Ours, a sweep, or missed completions (lagged): read the row again.
            Ok(_) => {
                if let Some(r) = api.store().action(row.id).await? {
                    row = r;
                }
            }
        }
    }
    Ok(answer(&row))
}

/// `200` once finished, `202` while queued or running.
fn answer(row: &ActionRow) -> (StatusCode, Json<ActionEnvelope>) {
    let status = if row.is_finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(envelope(row)))
}

/// What an idempotency key was first used for.
fn fingerprint(kind: ActionKind, target: &str, params: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (kind.as_str(), target, params).hash(&mut h);
    format!("{:016x}", h.finish())
}
