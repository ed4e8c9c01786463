//! Attachment and inline parts: metadata always, content up to a per-part limit.

use mail_parser::{Message, MimeHeaders, PartType};

use super::text::{clean, truncate_bytes};

/// Longest file name kept, in bytes (most file systems stop at 255).
const MAX_FILENAME_BYTES: usize = 255;
/// Longest Content-ID kept, in bytes.
const MAX_CONTENT_ID_BYTES: usize = 512;

/// One attachment or inline part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attachment {
    /// File name, decoded (RFC 2231 and RFC 2047, by mail-parser) and sanitised: no path
    /// separators, no control or bidirectional-override characters.
    pub filename: Option<String>,
    /// `type/subtype`, lower-cased.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: i64,
    /// Content-ID without angle brackets, for `cid:` links in the HTML body.
    pub content_id: Option<String>,
    /// Shown in the body (inline image) rather than offered as a download.
    pub inline: bool,
    /// The decoded content; `None` when it exceeded `attachment_max_bytes` (not stored).
    pub content: Option<Vec<u8>>,
}

impl Attachment {
    /// A part the reader downloads: not inline, and either named or of a non-text type. A
    /// nameless text or multipart part is a body the parser could not place (a multipart
    /// without its boundary, say), not a file.
    pub fn is_download(&self) -> bool {
        !self.inline
            && (self.filename.is_some()
                || !(self.content_type.starts_with("text/")
                    || self.content_type.starts_with("multipart/")))
    }
}

/// The attachment and inline parts of `msg`, in order. A nested message (message/rfc822) is
/// one attachment holding its raw bytes.
pub fn collect(msg: &Message<'_>, max_bytes: usize) -> Vec<Attachment> {
    msg.attachments()
        .map(|part| {
            let bytes = part.contents();
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .map(|t| clean(&t).to_ascii_lowercase())
                .unwrap_or_else(|| {
                    match part.body {
                        PartType::Text(_) => "text/plain",
                        PartType::Html(_) => "text/html",
                        PartType::Message(_) => "message/rfc822",
                        _ => "application/octet-stream",
                    }
                    .to_string()
                });
            let disposition_inline = part
                .content_disposition()
                .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline"));
            Attachment {
                filename: part.attachment_name().and_then(sanitize_filename),
                content_type,
                size: bytes.len() as i64,
                content_id: part
                    .content_id()
                    .and_then(super::text::message_id)
                    .map(|c| truncate_bytes(&c, MAX_CONTENT_ID_BYTES).to_string()),
                inline: matches!(part.body, PartType::InlineBinary(_)) || disposition_inline,
                content: (bytes.len() <= max_bytes).then(|| bytes.to_vec()),
            }
        })
        .collect()
}

/// A file name safe to offer for download: path separators become `_`; control characters
/// (NUL included) and bidirectional overrides (which disguise `gpj.exe` as `exe.jpg`) are
/// dropped; leading dots and surrounding spaces are trimmed. `None` when nothing is left.
pub fn sanitize_filename(name: &str) -> Option<String> {
    let s: String = name
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    let s = s.trim().trim_start_matches('.').trim();
    if s.is_empty() {
        return None;
    }
    Some(truncate_bytes(s, MAX_FILENAME_BYTES).to_string())
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_sanitised() {
        assert_eq!(
            sanitize_filename("../../etc/passwd").as_deref(),
            Some("_.._etc_passwd")
        );
        assert_eq!(
            sanitize_filename("a\\b\0c\r\n.txt").as_deref(),
            Some("a_bc.txt")
        );
        assert_eq!(
            sanitize_filename("photo\u{202E}gpj.exe").as_deref(),
            Some("photogpj.exe")
        );
        assert_eq!(sanitize_filename(" .. "), None);
        assert_eq!(
            sanitize_filename(&"é".repeat(300)).map(|s| s.len()),
            Some(254)
        );
    }
}
