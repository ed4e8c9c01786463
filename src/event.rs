//! The `email:sync` record: the contract with the web app's Socket.IO server.
//!
//! `accountId`, `emailAddress`, `count` and `timestamp` keep the old worker's names and meaning.
//! The rest is extra, and ignored by the web app as it stands.

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

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let t = timestamp_now();
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
        assert!(t.ends_with('Z'), "{t}");
    }
}
