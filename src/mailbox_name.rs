//! Mailbox names on the wire (pure). Used by the IMAP side to send them and by the API to
//! compare a move's target with the names the server listed; `crate::imap::mailbox_name`
//! re-exports it.
//!
//! The operator writes a name in UTF-8 (`Entwürfe`, `Входящие`, `受信トレイ`, `Archive "2024"`),
//! and that name is what the config, the store, the records and the metrics keep. Only the
//! argument of `SELECT` differs:
//! - IMAP4rev1 wants modified UTF-7 (RFC 3501 §5.1.3): [`utf7`];
//! - a server that offers `UTF8=ACCEPT` (RFC 6855), once it is enabled, takes UTF-8 as it is
//!   ([`crate::imap::caps::Caps::utf8_accept`]: [`crate::imap::caps::negotiate`] enables it).
//!
//! Either way the name goes as a quoted string ([`quoted`]). async-imap's `select()` would
//! quote again, so [`crate::imap::connect::select`] sends its own command: each name is quoted
//! once.
//! A name of printable ASCII without `&` is the same in both forms ([`is_plain`]).

/// Whether `name` reads the same in modified UTF-7 and in UTF-8: printable ASCII without `&`.
pub fn is_plain(name: &str) -> bool {
    name.chars().all(|c| (' '..='~').contains(&c) && c != '&')
}

/// Whether `name` can go as UTF-8 in a quoted string: it has no control characters (modified
/// UTF-7 encodes those; a quoted string cannot hold them).
pub fn utf8_quotable(name: &str) -> bool {
    !name.chars().any(char::is_control)
}

/// The `SELECT` argument for `name`: UTF-8 when the session has `UTF8=ACCEPT` enabled (and the
/// name is [`utf8_quotable`]), modified UTF-7 otherwise; quoted either way.
pub fn argument(name: &str, utf8: bool) -> String {
    if utf8 && utf8_quotable(name) {
        quoted(name)
    } else {
        quoted(&utf7(name))
    }
}

/// An IMAP quoted string: `"` and `\` escaped. `s` must hold no CR, LF or NUL (nothing
/// [`utf7`] produces, nor a [`utf8_quotable`] name).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Modified UTF-7 (RFC 3501 §5.1.3): printable ASCII stands for itself, except `&`, which
/// becomes `&-`; every other run of characters becomes `&`, the modified BASE64 (`,` for `/`,
/// no padding) of its UTF-16BE form, and `-`.
pub fn utf7(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut run);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            run.extend_from_slice(c.encode_utf16(&mut [0; 2]));
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Writes a pending run of UTF-16 units as `&…-` and empties it.
fn flush(out: &mut String, run: &mut Vec<u16>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    if run.is_empty() {
        return;
    }
    let bytes: Vec<u8> = run.drain(..).flat_map(u16::to_be_bytes).collect();
    out.push('&');
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // 1, 2 or 3 bytes make 2, 3 or 4 characters.
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out.push('-');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_examples() {
        // §5.1.3: "~peter/mail/台北/日本語".
        assert_eq!(
            utf7("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        // The example of what is not to be sent; its correct form.
        assert_eq!(utf7("Hi Mom -☺-!"), "Hi Mom -&Jjo--!");
        assert_eq!(utf7("&"), "&-");
        assert_eq!(utf7("A&B&&"), "A&-B&-&-");
    }

    #[test]
    fn names_from_the_issue() {
        assert_eq!(utf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(utf7("Входящие"), "&BBIERQQ+BDQETwRJBDgENQ-");
        assert_eq!(utf7("受信トレイ"), "&U9dP4TDIMOwwpA-");
        assert_eq!(utf7("Archive \"2024\""), "Archive \"2024\"");
        assert_eq!(argument("Archive \"2024\"", false), r#""Archive \"2024\"""#);
        assert_eq!(argument("Entwürfe", false), r#""Entw&APw-rfe""#);
        assert_eq!(argument("Entwürfe", true), r#""Entwürfe""#);
        assert_eq!(argument(r"a\b", true), r#""a\\b""#);
    }

    #[test]
    fn astral_planes_and_controls() {
        // A surrogate pair, and control characters, which a quoted string cannot hold.
        assert_eq!(utf7("😀"), "&2D3eAA-");
        assert_eq!(utf7("tab\there"), "tab&AAk-here");
        assert!(!utf8_quotable("tab\there"));
        assert_eq!(argument("tab\there", true), r#""tab&AAk-here""#);
        assert_eq!(utf7(""), "");
    }

    #[test]
    fn plain_names_need_no_capability() {
        for plain in ["INBOX", "Sent Items", "Archive \"2024\"", "a/b.c"] {
            assert!(is_plain(plain), "{plain}");
            assert_eq!(utf7(plain), plain);
        }
        for not in ["A&B", "Entwürfe", "tab\there"] {
            assert!(!is_plain(not), "{not}");
        }
    }
}
