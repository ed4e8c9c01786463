//! A draft → the RFC 5322 bytes sent, the envelope and the Message-ID (pure).
//!
//! `mail-builder` writes the structure and the encodings (RFC 2047 for non-ASCII header text,
//! quoted-printable or base64 bodies). What is ours: refusing CR/LF (and NUL) in anything that
//! becomes a header, checking addresses and header names, the threading headers taken from the
//! stored message replied to, `Re: ` on the subject, the recipient limit, Bcc kept out of the
//! bytes (it is only in the envelope), and attachment names written as RFC 2231 `filename*`.

use mail_builder::headers::address::Address;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

/// The most recipients (to + cc + bcc) one submission may have.
pub const MAX_RECIPIENTS: usize = 100;
/// How many Message-IDs a reply's `References` keeps (the most recent ones).
pub const MAX_REFERENCES: usize = 20;

/// The longest attachment name, in bytes: its RFC 2231 form stays within a header line.
pub const MAX_FILENAME: usize = 255;

/// Headers a caller may not set through `headers`: we write them, or they would change
/// the structure or the routing.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "return-path",
    "received",
];

/// A name and an address, as given by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

/// One attachment, its content already decoded from base64.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
    /// Set for an inline image the HTML refers to as `cid:...`.
    pub content_id: Option<String>,
}

/// What the reply needs of the stored message it answers.
#[derive(Debug, Clone, Default)]
pub struct Parent {
    /// Its Message-ID, without angle brackets (as the store keeps it).
    pub message_id: Option<String>,
    /// Its `References`, oldest first, without angle brackets.
    pub references: Vec<String>,
}

/// A message to send, as the API received it (validated here, not there).
#[derive(Debug, Clone)]
pub struct Draft {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Extra headers, in order (e.g. `X-Campaign`).
    pub headers: Vec<(String, String)>,
    pub in_reply_to: Option<Parent>,
}

/// The built message.
#[derive(Debug, Clone)]
pub struct Built {
    /// Without angle brackets.
    pub message_id: String,
    /// The exact bytes sent, and appended to Sent.
    pub bytes: Vec<u8>,
    pub envelope_from: String,
    /// to, cc and bcc, in that order, duplicates removed (case-insensitively).
    pub recipients: Vec<String>,
}

/// Why a draft is refused. `field` names the request's field (e.g. `to[3].address`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MimeError {
    #[error("{field}: line breaks are not allowed in a header")]
    HeaderInjection { field: String },
    #[error("{field}: not an email address")]
    BadAddress { field: String },
    #[error("{field}: not a valid header name")]
    BadHeaderName { field: String },
    #[error("{field}: this header is set by idlesync")]
    ReservedHeader { field: String },
    #[error("{field}: not a MIME type")]
    BadContentType { field: String },
    #[error("{field}: too long")]
    TooLong { field: String },
    #[error("no recipient")]
    NoRecipients,
    #[error("{count} recipients, at most {MAX_RECIPIENTS}")]
    TooManyRecipients { count: usize },
    #[error("the message could not be written")]
    Write,
}

impl MimeError {
    /// The request field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            MimeError::HeaderInjection { field }
            | MimeError::BadAddress { field }
            | MimeError::BadHeaderName { field }
            | MimeError::ReservedHeader { field }
            | MimeError::BadContentType { field }
            | MimeError::TooLong { field } => Some(field),
            MimeError::NoRecipients | MimeError::TooManyRecipients { .. } => None,
            MimeError::Write => None,
        }
    }
}

/// Builds the message. `message_id` is ours (without brackets); `date` is seconds since the epoch.
pub fn build(draft: &Draft, message_id: &str, date: i64) -> Result<Built, MimeError> {
    no_break("messageId", message_id)?;
    check_mailbox("from", &draft.from)?;
    let count = draft.to.len() + draft.cc.len() + draft.bcc.len();
    if count == 0 {
        return Err(MimeError::NoRecipients);
    }
    if count > MAX_RECIPIENTS {
        return Err(MimeError::TooManyRecipients { count });
    }
    let mut recipients: Vec<String> = Vec::with_capacity(count);
    for (list, name) in [(&draft.to, "to"), (&draft.cc, "cc"), (&draft.bcc, "bcc")] {
        for (i, m) in list.iter().enumerate() {
            check_mailbox(&format!("{name}[{i}]"), m)?;
            if !recipients
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&m.address))
            {
                recipients.push(m.address.clone());
            }
        }
    }
    if let Some(r) = &draft.reply_to {
        check_mailbox("replyTo", r)?;
    }
    no_break("subject", &draft.subject)?;
    for (name, value) in &draft.headers {
        let field = format!("headers.{name}");
        no_break(&field, name)?;
        no_break(&field, value)?;
        let valid = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !valid {
            return Err(MimeError::BadHeaderName { field });
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("content-") {
            return Err(MimeError::ReservedHeader { field });
        }
    }
    for (i, a) in draft.attachments.iter().enumerate() {
        let field = format!("attachments[{i}].filename");
        no_break(&field, &a.filename)?;
        if a.filename.len() > MAX_FILENAME {
            return Err(MimeError::TooLong { field });
        }
        check_content_type(&format!("attachments[{i}].contentType"), &a.content_type)?;
        if let Some(cid) = &a.content_id {
            let field = format!("attachments[{i}].contentId");
            no_break(&field, cid)?;
            if cid.is_empty() || cid.bytes().any(|b| b <= b' ' || b == b'<' || b == b'>') {
                return Err(MimeError::HeaderInjection { field });
            }
        }
    }

    let mut b = MessageBuilder::new()
        .from(address(&draft.from))
        .message_id(MessageId::new(message_id.to_string()))
        .date(date)
        .subject(Text::new(subject(draft)));
    if !draft.to.is_empty() {
        b = b.to(list(&draft.to));
    }
    if !draft.cc.is_empty() {
        b = b.cc(list(&draft.cc));
    }
    if let Some(r) = &draft.reply_to {
        b = b.reply_to(address(r));
    }
    if let Some(parent) = &draft.in_reply_to {
        let refs = references(parent);
        if let Some(id) = &parent.message_id {
            b = b.in_reply_to(MessageId::new(id.clone()));
        }
        if !refs.is_empty() {
            b = b.references(MessageId::new_list(refs.into_iter()));
        }
    }
    for (name, value) in &draft.headers {
        b = b.header(name.clone(), Text::new(value.clone()));
    }
    let bytes = b
        .body(body(draft))
        .write_to_vec()
        .map_err(|_| MimeError::Write)?;
    Ok(Built {
        message_id: message_id.to_string(),
        bytes,
        envelope_from: draft.from.address.clone(),
        recipients,
    })
}

/// The subject sent: `Re: ` added for a reply unless it already starts so.
fn subject(draft: &Draft) -> String {
    let s = draft.subject.trim();
    let is_re = s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:"));
    if draft.in_reply_to.is_some() && !is_re {
        format!("Re: {s}")
    } else {
        s.to_string()
    }
}

/// The parent's References plus its Message-ID, the last [`MAX_REFERENCES`] kept.
pub fn references(parent: &Parent) -> Vec<String> {
    let mut refs: Vec<String> = parent
        .references
        .iter()
        .filter(|r| !r.is_empty() && !r.contains(['\r', '\n', '<', '>', ' ']))
        .cloned()
        .collect();
    if let Some(id) = &parent.message_id {
        if !refs.contains(id) {
            refs.push(id.clone());
        }
    }
    let skip = refs.len().saturating_sub(MAX_REFERENCES);
    refs.into_iter().skip(skip).collect()
}

fn body(draft: &Draft) -> MimePart<'static> {
    let text = draft
        .text
        .clone()
        .map(|t| MimePart::new("text/plain", BodyPart::Text(t.into())));
    let (inline, attached): (Vec<&Attachment>, Vec<&Attachment>) = draft
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some() && draft.html.is_some());
    let html = draft.html.clone().map(|h| {
        let html = MimePart::new("text/html", BodyPart::Text(h.into()));
        if inline.is_empty() {
            html
        } else {
            let mut parts = vec![html];
            parts.extend(inline.iter().map(|a| part(a)));
            MimePart::new("multipart/related", parts)
        }
    });
    let main = match (text, html) {
        (Some(t), Some(h)) => Some(MimePart::new("multipart/alternative", vec![t, h])),
        (Some(t), None) => Some(t),
        (None, Some(h)) => Some(h),
        (None, None) => None,
    };
    match (main, attached.is_empty()) {
        (Some(m), true) => m,
        (None, true) => MimePart::new("text/plain", BodyPart::Text("".into())),
        (main, false) => {
            let mut parts: Vec<MimePart<'static>> = main.into_iter().collect();
            parts.extend(attached.iter().map(|a| part(a)));
            MimePart::new("multipart/mixed", parts)
        }
    }
}

/// One attachment's part; its name as RFC 2231 `filename*` when it is not plain ASCII.
fn part(a: &Attachment) -> MimePart<'static> {
    let p = MimePart::new(
        a.content_type.clone(),
        BodyPart::Binary(a.content.clone().into()),
    );
    let disposition = if a.content_id.is_some() {
        "inline"
    } else {
        "attachment"
    };
    let p = p.header(
        "Content-Disposition",
        Raw::new(format!("{disposition}; {}", filename_param(&a.filename))),
    );
    match &a.content_id {
        Some(cid) => p.cid(cid.clone()),
        None => p,
    }
}

/// `filename="plain.txt"` for a safe ASCII name, else `filename*=utf-8''%..` (RFC 2231).
pub fn filename_param(name: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(|b| plain(b) || b == b' ') {
        return format!("filename=\"{name}\"");
    }
    let mut out = String::from("filename*=utf-8''");
    for b in name.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn address(m: &Mailbox) -> Address<'static> {
    match &m.name {
        Some(n) if !n.trim().is_empty() => Address::new_address(Some(n.clone()), m.address.clone()),
        _ => Address::new_address(None::<String>, m.address.clone()),
    }
}

fn list(ms: &[Mailbox]) -> Address<'static> {
    Address::new_list(ms.iter().map(address).collect())
}

fn no_break(field: &str, value: &str) -> Result<(), MimeError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(MimeError::HeaderInjection {
            field: field.to_string(),
        });
    }
    Ok(())
}

fn check_mailbox(field: &str, m: &Mailbox) -> Result<(), MimeError> {
    if let Some(n) = &m.name {
        no_break(&format!("{field}.name"), n)?;
    }
    let field = format!("{field}.address");
    no_break(&field, &m.address)?;
    if !is_address(&m.address) {
        return Err(MimeError::BadAddress { field });
    }
    Ok(())
}

/// A plain `local@domain` (no display name, comments or route), as an API caller gives it.
pub fn is_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\@".contains(c);
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && a.len() <= 254
        && !local.contains(bad)
        && !domain.contains(bad)
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

fn check_content_type(field: &str, ct: &str) -> Result<(), MimeError> {
    no_break(field, ct)?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match ct.split_once('/') {
        Some((t, s)) if token(t) && token(s) => Ok(()),
        _ => Err(MimeError::BadContentType {
            field: field.to_string(),
        }),
    }
}

#[cfg(test)]
#[path = "mime_tests.rs"]
mod tests;
