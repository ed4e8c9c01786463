//! The bodies the actions API takes and the action it answers with (#19).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::store::ActionRow;

/// `PATCH /v1/messages/{id}` and `/v1/threads/{id}`: the flags to set or clear.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlagsPatch {
    /// `\Seen`: read (`true`) or unread.
    pub seen: Option<bool>,
    /// `\Flagged`: starred.
    pub flagged: Option<bool>,
    /// `\Answered`.
    pub answered: Option<bool>,
    /// Other flags or keywords to add (`$Label1`, `\Draft`).
    pub add_flags: Option<Vec<String>>,
    /// Other flags or keywords to remove.
    pub remove_flags: Option<Vec<String>>,
}

/// `POST /v1/messages/{id}/move` and `/v1/threads/{id}/move`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The target mailbox, as the server names it (`Archive`, `Projects/2025`).
    pub to: String,
}

/// `DELETE` options.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// `true`: set `\Deleted` and `UID EXPUNGE` instead of moving to the Trash.
    pub permanent: Option<bool>,
}

/// What was addressed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TargetView {
    /// `message` or `thread`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `messages.id` or `threads.id`.
    pub id: i64,
}

/// An action's failure.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionError {
    /// `gone`, `no_such_mailbox`, `refused`, `timeout` or `stale_uidvalidity`.
    pub code: String,
    /// What happened; the server's text, bounded, for `refused`.
    pub message: String,
}

/// An action's state.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionView {
    /// `actions.id`: `GET /v1/actions/{id}`, and `actionId` in the records it causes.
    pub id: i64,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    /// `flags`, `move`, `delete` or `expunge`.
    pub kind: String,
    /// The account acted on.
    pub account_id: String,
    /// What was addressed.
    pub target: TargetView,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// When failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ActionError>,
}

/// `{"action": {...}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionEnvelope {
    /// The action.
    pub action: ActionView,
}

pub(super) fn envelope(row: &ActionRow) -> ActionEnvelope {
    let (kind, id) = row.target.split_once(':').unwrap_or(("message", "0"));
    ActionEnvelope {
        action: ActionView {
            id: row.id,
            status: row.status.clone(),
            kind: row.kind.clone(),
            account_id: row.account_id.clone(),
            target: TargetView {
                kind: kind.to_string(),
                id: id.parse().unwrap_or(0),
            },
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            error: row.error_code.as_ref().map(|code| ActionError {
                code: code.clone(),
                message: row.error_message.clone().unwrap_or_default(),
            }),
        },
    }
}

/// Unix ms as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
