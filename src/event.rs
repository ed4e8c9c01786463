//! The records idlesync publishes: the contract with the web app's Socket.IO server.
//!
//! - [`SyncRecord`] goes on `redis.channel` (`email:sync`): `newMail` and `mailboxReset`.
//!   `accountId`, `emailAddress`, `count` and `timestamp` keep the old worker's names and
//!   meaning. The rest is extra, and ignored by the web app as it stands.
//! - [`flags_changed`], [`messages_expunged`] and [`imported`] build the records for
//!   `redis.changes_channel` (`email:changes`), kept apart so that the web app's "new email"
//!   badge never counts them. They carry the same common fields as [`SyncRecord`], `kind`
//!   first:
//!
//! ```json
//! {"kind":"flagsChanged","accountId":"abc123","emailAddress":"joe@example.com","mailbox":"INBOX",
//!  "uidValidity":7,"timestamp":"…","count":2,
//!  "changes":[{"uid":41,"flags":["\\Seen"]},{"uid":42,"flags":["\\Seen","\\Flagged"]}]}
//! {"kind":"messagesExpunged", …,"count":3,"uids":[7,8,9]}
//! {"kind":"imported", …,"count":500,"uids":[…],"progress":{"stored":1500,"total":10300}}
//! ```

use serde::Serialize;

/// What a record announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordKind {
    /// New messages were stored.
    NewMail,
    /// UIDVALIDITY changed: the mailbox is being resynced; earlier rows belong to an old epoch.
    MailboxReset,
}

/// One record, serialised as a single JSON object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord<'a> {
    /// The web app's account id (the `id` in the config).
    pub account_id: &'a str,
    /// The account's address.
    pub email_address: &'a str,
    /// Messages stored by this batch.
    pub count: usize,
    /// RFC 3339 UTC, millisecond precision.
    pub timestamp: String,
    /// What happened.
    pub kind: RecordKind,
    /// The mailbox the messages are in.
    pub mailbox: &'a str,
    /// UIDVALIDITY of `uids`.
    pub uid_validity: u32,
    /// The UIDs stored, ascending.
    pub uids: &'a [u32],
}

impl SyncRecord<'_> {
    /// The JSON text that goes on the wire.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where a change record's messages are: the fields every record shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The web app's account id (the `id` in the config), sent as `accountId`.
    pub account_id: &'a str,
    /// The account's address, sent as `emailAddress`.
    pub email_address: &'a str,
    /// The mailbox the messages are (or were) in.
    pub mailbox: &'a str,
    /// UIDVALIDITY of the UIDs in the record.
    pub uid_validity: u32,
}

/// How far a first import (or a re-import after a UIDVALIDITY change) has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Messages of the import stored so far, this record's included.
    pub stored: u64,
    /// Messages the import fetches in all.
    pub total: u64,
}

/// What a record on `redis.changes_channel` announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    /// Stored messages' flags changed; `changes` lists each one's flags now.
    FlagsChanged,
    /// Messages left the mailbox (expunged or moved away); `uids` lists them.
    MessagesExpunged,
    /// Mail that was in the mailbox before idlesync first selected it was stored: history,
    /// not new mail.
    Imported,
    /// An action moved messages to `to`; `uids` pairs each old UID with its new one (from the
    /// server's COPYUID). Never new mail: nothing goes to `email:sync` for it.
    MessagesMoved,
}

/// The fields every change record starts with, in wire order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Common<'a> {
    kind: ChangeKind,
    account_id: &'a str,
    email_address: &'a str,
    mailbox: &'a str,
    uid_validity: u32,
    timestamp: &'a str,
    count: usize,
    /// The API action (#19) whose effect this record is, so the web app can settle its
    /// optimistic UI.
    #[serde(skip_serializing_if = "Option::is_none")]
    action_id: Option<i64>,
}

impl<'a> Common<'a> {
    fn new(kind: ChangeKind, o: &Origin<'a>, timestamp: &'a str, count: usize) -> Self {
        Self {
            kind,
            account_id: o.account_id,
            email_address: o.email_address,
            mailbox: o.mailbox,
            uid_validity: o.uid_validity,
            timestamp,
            count,
            action_id: None,
        }
    }
}

/// A change record: the common fields, then the kind's own.
#[derive(Serialize)]
struct ChangeRecord<'a, B> {
    #[serde(flatten)]
    common: Common<'a>,
    #[serde(flatten)]
    body: B,
}

/// One message's flags in a `flagsChanged` record.
#[derive(Serialize)]
struct FlagChange<'a> {
    uid: u32,
    flags: Vec<&'a str>,
}

#[derive(Serialize)]
struct FlagsBody<'a> {
    changes: Vec<FlagChange<'a>>,
}

#[derive(Serialize)]
struct UidsBody<'a> {
    uids: &'a [u32],
}

#[derive(Serialize)]
struct ImportedBody<'a> {
    uids: &'a [u32],
    progress: Progress,
}

fn to_json<B: Serialize>(common: Common<'_>, body: B) -> String {
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(&ChangeRecord { common, body }).unwrap_or_default()
}

/// A `flagsChanged` record: each `(uid, flags)` with the flags the message has now,
/// space-separated as `messages.flags` keeps them (sent as an array; `""` is `[]`).
pub fn flags_changed(o: &Origin<'_>, changes: &[(u32, String)]) -> String {
    flags_changed_at(o, changes, &timestamp_now())
}

fn flags_changed_at(o: &Origin<'_>, changes: &[(u32, String)], timestamp: &str) -> String {
    flags_changed_as(o, changes, timestamp, None)
}

fn flags_changed_as(
    o: &Origin<'_>,
    changes: &[(u32, String)],
    timestamp: &str,
    action: Option<i64>,
) -> String {
    let changes = changes
        .iter()
        .map(|(uid, flags)| FlagChange {
            uid: *uid,
            flags: flags.split_ascii_whitespace().collect(),
        })
        .collect::<Vec<_>>();
    let mut common = Common::new(ChangeKind::FlagsChanged, o, timestamp, changes.len());
    common.action_id = action;
    to_json(common, FlagsBody { changes })
}

/// A `messagesExpunged` record: `uids` (ascending) left the mailbox.
pub fn messages_expunged(o: &Origin<'_>, uids: &[u32]) -> String {
    messages_expunged_at(o, uids, &timestamp_now())
}

fn messages_expunged_at(o: &Origin<'_>, uids: &[u32], timestamp: &str) -> String {
    let common = Common::new(ChangeKind::MessagesExpunged, o, timestamp, uids.len());
    to_json(common, UidsBody { uids })
}

/// An `imported` record: `uids` (ascending) of mail already in the mailbox were stored, and
/// the import stands at `progress`.
pub fn imported(o: &Origin<'_>, uids: &[u32], progress: Progress) -> String {
    imported_at(o, uids, progress, &timestamp_now())
}

fn imported_at(o: &Origin<'_>, uids: &[u32], progress: Progress, timestamp: &str) -> String {
    let common = Common::new(ChangeKind::Imported, o, timestamp, uids.len());
    to_json(common, ImportedBody { uids, progress })
}

/// `flagsChanged` of an action: [`flags_changed`] with `actionId`.
pub fn flags_changed_by(o: &Origin<'_>, changes: &[(u32, String)], action: i64) -> String {
    flags_changed_as(o, changes, &timestamp_now(), Some(action))
}

/// `messagesExpunged` of an action: [`messages_expunged`] with `actionId`.
pub fn messages_expunged_by(o: &Origin<'_>, uids: &[u32], action: i64) -> String {
    let ts = timestamp_now();
    let mut common = Common::new(ChangeKind::MessagesExpunged, o, &ts, uids.len());
    common.action_id = Some(action);
    to_json(common, UidsBody { uids })
}

#[derive(Serialize)]
struct MovedBody<'a> {
    from: &'a str,
    to: &'a str,
    uids: Vec<[u32; 2]>,
}

/// `messagesMoved`: action `action` moved messages from `o.mailbox` to `to`, each
/// `(old UID, new UID)`.
pub fn messages_moved(o: &Origin<'_>, to: &str, pairs: &[(u32, u32)], action: i64) -> String {
    let ts = timestamp_now();
    let mut common = Common::new(ChangeKind::MessagesMoved, o, &ts, pairs.len());
    common.action_id = Some(action);
    to_json(
        common,
        MovedBody {
            from: o.mailbox,
            to,
            uids: pairs.iter().map(|(a, b)| [*a, *b]).collect(),
        },
    )
}

/// The current time as RFC 3339 UTC (`2025-10-03T00:00:00.000Z`).
pub fn timestamp_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_matches_the_old_worker() {
        let r = SyncRecord {
            account_id: "abc123",
            email_address: "joe@example.com",
            count: 2,
            timestamp: "2025-10-03T00:00:00.000Z".into(),
            kind: RecordKind::NewMail,
            mailbox: "INBOX",
            uid_validity: 7,
            uids: &[41, 42],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["accountId"], "abc123");
        assert_eq!(v["emailAddress"], "joe@example.com");
        assert_eq!(v["count"], 2);
        assert_eq!(v["timestamp"], "2025-10-03T00:00:00.000Z");
        assert_eq!(v["kind"], "newMail");
        assert_eq!(v["mailbox"], "INBOX");
        assert_eq!(v["uidValidity"], 7);
        assert_eq!(v["uids"], serde_json::json!([41, 42]));
    }

    const T: &str = "2025-10-03T00:00:00.000Z";

    fn origin() -> Origin<'static> {
        Origin {
            account_id: "abc123",
            email_address: "joe@example.com",
            mailbox: "INBOX",
            uid_validity: 1795634158,
        }
    }

    const COMMON: &str = r#""accountId":"abc123","emailAddress":"joe@example.com","mailbox":"INBOX","uidValidity":1795634158,"timestamp":"2025-10-03T00:00:00.000Z""#;

    #[test]
    fn flags_changed_wire_shape() {
        let json = flags_changed_at(
            &origin(),
            &[
                (41, "\\Seen".into()),
                (42, " \\Seen  \\Flagged ".into()),
                (43, String::new()),
            ],
            T,
        );
        assert_eq!(
            json,
            format!(
                r#"{{"kind":"flagsChanged",{COMMON},"count":3,"changes":[{{"uid":41,"flags":["\\Seen"]}},{{"uid":42,"flags":["\\Seen","\\Flagged"]}},{{"uid":43,"flags":[]}}]}}"#
            )
        );
    }

    #[test]
    fn messages_expunged_wire_shape() {
        let json = messages_expunged_at(&origin(), &[7, 8, 9], T);
        assert_eq!(
            json,
            format!(r#"{{"kind":"messagesExpunged",{COMMON},"count":3,"uids":[7,8,9]}}"#)
        );
    }

    #[test]
    fn imported_wire_shape() {
        let progress = Progress {
            stored: 1500,
            total: 10300,
        };
        let json = imported_at(&origin(), &[1, 2], progress, T);
        assert_eq!(
            json,
            format!(
                r#"{{"kind":"imported",{COMMON},"count":2,"uids":[1,2],"progress":{{"stored":1500,"total":10300}}}}"#
            )
        );
    }

    #[test]
    fn public_builders_stamp_the_time_and_parse_as_json() {
        let o = origin();
        for json in [
            flags_changed(&o, &[(1, "\\Seen".into())]),
            messages_expunged(&o, &[1]),
            imported(
                &o,
                &[1],
                Progress {
                    stored: 1,
                    total: 1,
                },
            ),
        ] {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let t = v["timestamp"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{json}");
            assert_eq!(v["count"], 1, "{json}");
        }
    }

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let t = timestamp_now();
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
        assert!(t.ends_with('Z'), "{t}");
    }
}
