//! Raw RFC 5322 bytes to the record we store. Pure: no IO, so it is unit-tested and fuzzable.
//!
//! mail-parser sits behind this module, so its 1.0 upgrade (which needs a newer Rust) stays
//! local.
//!
//! - [`address`]: address lists as JSON `[{"name","address"}]`.
//! - [`text`]: bodies, snippet, NUL stripping, thread keys (Message-IDs, normalized subject).
//! - [`attachment`]: attachment and inline parts, with sanitised file names.
//!
//! [`extract`] never fails and never panics: mail the parser cannot read becomes a record with
//! `parse_error` set and whatever could be read (the raw text as the body, for a start).

pub mod address;
pub mod attachment;
pub mod text;

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};

pub use attachment::Attachment;

use crate::config::{RawRetention, StorageConfig};

/// Most References kept per message: the nearest ancestors, enough for any real thread.
const MAX_REFERENCES: usize = 100;
/// Body text kept for a message the parser could not read at all.
const FALLBACK_BODY_BYTES: usize = 1024 * 1024;

/// One parsed message, ready for the `messages`, `attachments` and `message_raw` tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRecord {
    /// IMAP UID in its mailbox.
    pub uid: u32,
    /// Message-ID without angle brackets (capped in length so it can be indexed).
    pub message_id: Option<String>,
    /// Decoded Subject.
    pub subject: Option<String>,
    /// From, as a JSON array of `{"name","address"}`.
    pub from: String,
    /// Sender, same shape.
    pub sender: String,
    /// Reply-To, same shape.
    pub reply_to: String,
    /// To, same shape.
    pub to: String,
    /// Cc, same shape.
    pub cc: String,
    /// Bcc, same shape (only present on copies the account sent itself).
    pub bcc: String,
    /// The Date header, Unix milliseconds.
    pub sent_at_ms: Option<i64>,
    /// IMAP INTERNALDATE (arrival at the server), Unix milliseconds.
    pub received_at_ms: Option<i64>,
    /// The first In-Reply-To Message-ID, without angle brackets.
    pub in_reply_to: Option<String>,
    /// References Message-IDs, oldest first, without angle brackets.
    pub references: Vec<String>,
    /// Plain-text body (derived from HTML when the message has no text part).
    pub text_body: Option<String>,
    /// HTML body, when there is one.
    pub html_body: Option<String>,
    /// About 200 characters of readable text, whitespace collapsed.
    pub snippet: String,
    /// RFC822.SIZE, or the raw length.
    pub size: i64,
    /// IMAP flags, space-separated.
    pub flags: String,
    /// At least one part offered as a download (what a paperclip icon means): see
    /// [`Attachment::is_download`].
    pub has_attachments: bool,
    /// Attachment and inline parts, in message order.
    pub attachments: Vec<Attachment>,
    /// The parser could not read the message; what could be read is filled in.
    pub parse_error: bool,
    /// The message was larger than `max_message_size`: only its headers were read.
    pub truncated: bool,
    /// The original bytes, when `raw = "db"` and they fit `raw_max_bytes`.
    pub raw: Option<Vec<u8>>,
    /// Subject without reply/forward prefixes, lower-cased; for opt-in subject threading.
    pub subject_key: String,
    /// MODSEQ when fetched, where the server has CONDSTORE (`messages.modseq`).
    pub modseq: Option<u64>,
    /// The server's id for the message across mailboxes (`messages.email_id`).
    pub email_id: Option<String>,
    /// The server's conversation id (`messages.server_thread_id`).
    pub server_thread_id: Option<String>,
}

impl MessageRecord {
    /// `\Seen` is among the flags.
    pub fn is_seen(&self) -> bool {
        self.flags
            .split(' ')
            .any(|f| f.eq_ignore_ascii_case("\\Seen"))
    }

    /// Approximate bytes held, so a batch can be committed before it grows too large.
    pub fn approx_bytes(&self) -> usize {
        self.text_body.as_ref().map_or(0, String::len)
            + self.html_body.as_ref().map_or(0, String::len)
            + self.raw.as_ref().map_or(0, Vec::len)
            + self
                .attachments
                .iter()
                .map(|a| a.content.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
            + 1024
    }

    /// The Message-IDs this message links to a thread by: its own, In-Reply-To, References.
    pub fn thread_keys(&self) -> impl Iterator<Item = &str> {
        self.message_id
            .iter()
            .chain(self.in_reply_to.iter())
            .chain(self.references.iter())
            .map(String::as_str)
    }

    /// Time the message sorts by in its thread: INTERNALDATE, else the Date header.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.received_at_ms.or(self.sent_at_ms)
    }
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
    /// RFC822.SIZE. When it exceeds the bytes fetched, the message was truncated.
    pub size: Option<u32>,
    /// MODSEQ, where the server has CONDSTORE.
    pub modseq: Option<u64>,
    /// RFC 8474 EMAILID, or Gmail's X-GM-MSGID: the same in every mailbox holding the message.
    pub email_id: Option<String>,
    /// RFC 8474 THREADID, or Gmail's X-GM-THRID.
    pub server_thread_id: Option<String>,
}

/// The limits [`extract`] applies; from `[storage]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Keep the raw bytes.
    pub keep_raw: bool,
    /// Largest raw message kept.
    pub raw_max_bytes: usize,
    /// Largest attachment content kept, per part.
    pub attachment_max_bytes: usize,
    /// Larger messages are fetched partially and keep only their headers.
    pub max_message_size: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions::from(&StorageConfig::default())
    }
}

impl From<&StorageConfig> for ExtractOptions {
    fn from(c: &StorageConfig) -> Self {
        ExtractOptions {
            keep_raw: c.raw == RawRetention::Db,
            raw_max_bytes: c.raw_max_bytes,
            attachment_max_bytes: c.attachment_max_bytes,
            max_message_size: c.max_message_size,
        }
    }
}

/// Parses `raw`. Never fails: unreadable mail becomes a record with `parse_error` set.
///
/// A parser panic is caught and treated as a parse error, so one hostile message can never
/// take its mailbox task down (and then stall it forever on the same UID).
pub fn extract(raw: &[u8], meta: &ImapMeta, opts: &ExtractOptions) -> MessageRecord {
    // Cut by the partial fetch: exactly max_message_size bytes arrived and the server says the
    // message is larger (or more than the limit arrived at all). RFC822.SIZE alone is not
    // trusted: some servers report it inexactly.
    let truncated = raw.len() > opts.max_message_size
        || (raw.len() == opts.max_message_size && meta.size.is_none_or(|s| s as usize > raw.len()));
    let mut rec = MessageRecord {
        uid: meta.uid,
        received_at_ms: meta.internal_date_ms,
        size: meta.size.map_or(raw.len() as i64, i64::from),
        flags: text::clean(&meta.flags),
        modseq: meta.modseq,
        email_id: meta.email_id.clone(),
        server_thread_id: meta.server_thread_id.clone(),
        from: "[]".into(),
        sender: "[]".into(),
        reply_to: "[]".into(),
        to: "[]".into(),
        cc: "[]".into(),
        bcc: "[]".into(),
        truncated,
        ..MessageRecord::default()
    };
    let parsed = std::panic::catch_unwind(|| {
        let mut rec = rec.clone();
        parse_into(&mut rec, raw, opts).then_some(rec)
    });
    let mut rec = match parsed {
        Ok(Some(parsed)) => parsed,
        Ok(None) | Err(_) => {
            fallback(&mut rec, raw);
            rec
        }
    };
    if opts.keep_raw && !truncated && raw.len() <= opts.raw_max_bytes {
        rec.raw = Some(raw.to_vec());
    }
    rec
}

/// Fills `rec` from the parsed message. `false` when the parser found no header at all.
fn parse_into(rec: &mut MessageRecord, raw: &[u8], opts: &ExtractOptions) -> bool {
    let parser = MessageParser::default();
    let msg = if rec.truncated {
        // Only the header block: the body was cut at max_message_size.
        parser.parse_headers(header_block(raw))
    } else {
        parser.parse(raw)
    };
    let Some(msg) = msg else {
        return false;
    };
    // Bytes with no header at all are not a mail: marked, though the body is still read.
    rec.parse_error = msg.headers().is_empty();
    rec.message_id = msg.message_id().and_then(text::message_id);
    rec.subject = msg.subject().map(text::clean);
    rec.subject_key = rec
        .subject
        .as_deref()
        .map(text::subject_key)
        .unwrap_or_default();
    rec.from = address::json(msg.from());
    rec.sender = address::json(msg.sender());
    rec.reply_to = address::json(msg.reply_to());
    rec.to = address::json(msg.to());
    rec.cc = address::json(msg.cc());
    rec.bcc = address::json(msg.bcc());
    rec.sent_at_ms = msg
        .date()
        .filter(|d| d.is_valid())
        .map(|d| d.to_timestamp().saturating_mul(1000));
    rec.in_reply_to = ids(msg.in_reply_to()).into_iter().next();
    let mut refs = ids(msg.references());
    if refs.len() > MAX_REFERENCES {
        refs.drain(..refs.len() - MAX_REFERENCES);
    }
    rec.references = refs;
    if !rec.truncated {
        bodies(rec, &msg);
        rec.attachments = attachment::collect(&msg, opts.attachment_max_bytes);
        rec.has_attachments = rec.attachments.iter().any(Attachment::is_download);
    }
    rec.snippet = text::snippet(rec.text_body.as_deref().unwrap_or_default());
    true
}

/// Text and HTML bodies: every inline text part, joined; text derived from HTML when the
/// message has no text part (mail-parser lists the HTML part as the text body then).
fn bodies(rec: &mut MessageRecord, msg: &Message<'_>) {
    let mut texts = Vec::new();
    for i in 0..msg.text_body_count() {
        if let Some(t) = msg.body_text(i) {
            texts.push(t);
        }
    }
    if !texts.is_empty() {
        rec.text_body = Some(text::clean(&texts.join("\n")));
    }
    // body_html() would render a text-only message as HTML; keep only real HTML parts.
    let htmls: Vec<&str> = msg
        .html_bodies()
        .filter(|p| p.is_text_html())
        .filter_map(|p| p.text_contents())
        .collect();
    if !htmls.is_empty() {
        rec.html_body = Some(text::clean(&htmls.join("\n")));
    }
    // Broken structure (a multipart without a usable boundary, an unknown text type): the
    // parser files the text as a nameless attachment. It is still the readable body.
    if rec.text_body.is_none() && rec.html_body.is_none() {
        rec.text_body = msg
            .attachments()
            .find(|p| {
                let textual = p.content_type().is_none_or(|ct| {
                    ct.ctype().eq_ignore_ascii_case("text")
                        || ct.ctype().eq_ignore_ascii_case("multipart")
                });
                textual && !p.is_message() && p.attachment_name().is_none()
            })
            .map(|p| match &p.body {
                PartType::Text(t) | PartType::Html(t) => text::clean(t),
                _ => text::clean(&String::from_utf8_lossy(p.contents())),
            });
    }
}

/// A message the parser could not read: its bytes, as lossy UTF-8, are the readable part.
fn fallback(rec: &mut MessageRecord, raw: &[u8]) {
    rec.parse_error = true;
    let cut = raw.get(..FALLBACK_BODY_BYTES).unwrap_or(raw);
    let body = text::clean(&String::from_utf8_lossy(cut));
    rec.snippet = text::snippet(&body);
    if !body.trim().is_empty() {
        rec.text_body = Some(body);
    }
}

/// The header block of a (possibly cut) message: up to and including the first empty line.
fn header_block(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(raw.len());
    raw.get(..end).unwrap_or(raw)
}

/// Message-IDs of an In-Reply-To or References header.
fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => text::message_id(t).into_iter().collect(),
        HeaderValue::TextList(l) => l.iter().filter_map(|t| text::message_id(t)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
