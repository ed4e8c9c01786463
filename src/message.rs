//! Raw RFC 5322 bytes to the record we store. Pure: no IO, so it is unit-tested and fuzzable.
//!
//! mail-parser sits behind this one module, so its 1.0 upgrade (which needs a newer Rust) stays
//! local.

use mail_parser::{Address, MessageParser};
use serde::Serialize;

/// One parsed message, ready for the `messages` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRecord {
    /// IMAP UID in its mailbox.
    pub uid: u32,
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// Decoded Subject.
    pub subject: Option<String>,
    /// From, as a JSON array of `{"name","address"}`.
    pub from: String,
    /// To, as a JSON array of `{"name","address"}`.
    pub to: String,
    /// The Date header, Unix milliseconds.
    pub sent_at_ms: Option<i64>,
    /// IMAP INTERNALDATE (arrival at the server), Unix milliseconds.
    pub received_at_ms: Option<i64>,
    /// Plain-text body (derived from HTML when the message has no text part).
    pub text_body: Option<String>,
    /// HTML body, when there is one.
    pub html_body: Option<String>,
    /// RFC822.SIZE, or the raw length.
    pub size: i64,
    /// IMAP flags, space-separated.
    pub flags: String,
    /// The parser could not read the message; only IMAP metadata is filled in.
    pub parse_error: bool,
}

/// IMAP facts that come with the raw bytes.
#[derive(Debug, Clone, Default)]
pub struct ImapMeta {
    /// UID.
    pub uid: u32,
    /// FLAGS, space-separated.
    pub flags: String,
    /// INTERNALDATE, Unix ms.
    pub internal_date_ms: Option<i64>,
    /// RFC822.SIZE.
    pub size: Option<u32>,
}

#[derive(Serialize)]
struct AddrJson<'a> {
    name: Option<&'a str>,
    address: Option<&'a str>,
}

/// Parses `raw`. Never fails: unreadable mail becomes a record with `parse_error` set.
pub fn extract(raw: &[u8], meta: &ImapMeta) -> MessageRecord {
    let mut rec = MessageRecord {
        uid: meta.uid,
        received_at_ms: meta.internal_date_ms,
        size: meta.size.map_or(raw.len() as i64, i64::from),
        flags: clean(&meta.flags),
        from: "[]".into(),
        to: "[]".into(),
        ..MessageRecord::default()
    };
    let Some(msg) = MessageParser::default().parse(raw) else {
        rec.parse_error = true;
        return rec;
    };
    rec.message_id = msg.message_id().map(clean);
    rec.subject = msg.subject().map(clean);
    rec.from = addresses_json(msg.from());
    rec.to = addresses_json(msg.to());
    rec.sent_at_ms = msg.date().map(|d| d.to_timestamp().saturating_mul(1000));
    rec.text_body = msg.body_text(0).map(|b| clean(&b));
    // body_html() would render a text-only message as HTML; keep only real HTML parts.
    rec.html_body = msg
        .html_part(0)
        .filter(|p| p.is_text_html())
        .and_then(|p| p.text_contents())
        .map(clean);
    rec
}

fn addresses_json(addr: Option<&Address<'_>>) -> String {
    let list: Vec<AddrJson<'_>> = addr
        .map(|a| {
            a.iter()
                .map(|a| AddrJson {
                    name: a.name(),
                    address: a.address(),
                })
                .collect()
        })
        .unwrap_or_default();
    clean(&serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()))
}

/// PostgreSQL TEXT cannot hold NUL; nobody reading mail needs it.
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32) -> ImapMeta {
        ImapMeta {
            uid,
            flags: "\\Seen".into(),
            internal_date_ms: Some(1_700_000_000_000),
            size: None,
        }
    }

    #[test]
    fn plain_message() {
        let raw = b"From: Joe <joe@example.com>\r\nTo: a@x.org, \"B\" <b@x.org>\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\nMessage-ID: <m1@x>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nHello\r\n";
        let r = extract(raw, &meta(5));
        assert_eq!(r.uid, 5);
        assert_eq!(r.subject.as_deref(), Some("Café"));
        assert_eq!(r.message_id.as_deref(), Some("m1@x"));
        assert_eq!(r.from, r#"[{"name":"Joe","address":"joe@example.com"}]"#);
        assert_eq!(
            r.to,
            r#"[{"name":null,"address":"a@x.org"},{"name":"B","address":"b@x.org"}]"#
        );
        assert_eq!(r.sent_at_ms, Some(1_700_000_000_000));
        assert_eq!(r.text_body.as_deref(), Some("Hello\r\n"));
        assert_eq!(r.html_body, None);
        assert_eq!(r.size, raw.len() as i64);
        assert!(!r.parse_error);
    }

    #[test]
    fn html_only_gets_text() {
        let raw = b"Content-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>";
        let r = extract(raw, &meta(1));
        assert!(r.html_body.unwrap().contains("<b>there</b>"));
        assert!(r.text_body.unwrap().contains("Hi there"));
    }

    #[test]
    fn nul_bytes_are_removed() {
        let raw = b"Subject: a\0b\r\n\r\nbo\0dy";
        let r = extract(raw, &meta(1));
        assert_eq!(r.subject.as_deref(), Some("ab"));
        assert_eq!(r.text_body.as_deref(), Some("body"));
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [&b""[..], b"\xff\xfe\x00", b"\r\n\r\n", b":::\r\n"] {
            let r = extract(raw, &meta(9));
            assert_eq!(r.uid, 9);
        }
    }
}
