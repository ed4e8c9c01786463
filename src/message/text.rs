//! Text helpers: NUL stripping, the snippet, Message-IDs and the normalized subject.

/// Characters in a snippet.
pub const SNIPPET_CHARS: usize = 200;
/// Longest Message-ID kept, in bytes. PostgreSQL cannot index a B-tree entry much above 2,700
/// bytes, and no honest Message-ID comes near this.
pub const MAX_MESSAGE_ID_BYTES: usize = 512;
/// Longest normalized subject kept for subject threading (it is indexed too).
pub const MAX_SUBJECT_KEY_BYTES: usize = 256;

/// PostgreSQL TEXT cannot hold NUL; nobody reading mail needs it.
pub fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_string()
    }
}

/// The first [`SNIPPET_CHARS`] characters of readable text: quoted lines (`>`) skipped,
/// whitespace and control characters collapsed to single spaces.
pub fn snippet(body: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    let mut pending_space = false;
    for line in body.lines() {
        if line.trim_start().starts_with('>') {
            continue;
        }
        for c in line.chars().chain(std::iter::once(' ')) {
            if c.is_whitespace() || c.is_control() {
                pending_space = !out.is_empty();
                continue;
            }
            if pending_space {
                out.push(' ');
                chars += 1;
                pending_space = false;
            }
            if chars >= SNIPPET_CHARS {
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// A Message-ID as stored: angle brackets, whitespace and NUL removed, capped in length.
/// `None` when nothing is left.
pub fn message_id(raw: &str) -> Option<String> {
    let t = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let t: String = t.chars().filter(|c| !c.is_control()).collect();
    if t.is_empty() {
        return None;
    }
    Some(truncate_bytes(&t, MAX_MESSAGE_ID_BYTES).to_string())
}

/// The subject without `Re:`/`Fwd:`/`Fw:`/`Aw:`/`Sv:` prefixes (repeated, with `[n]` counters)
/// and `[list]` tags, whitespace collapsed, lower-cased. Empty for an empty subject.
pub fn subject_key(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let before = s.len();
        if s.starts_with('[') {
            if let Some(end) = s.find(']') {
                s = s.get(end + 1..).unwrap_or("").trim_start();
            }
        }
        for prefix in ["re", "fwd", "fw", "aw", "sv", "wg", "tr"] {
            let Some(head) = s.get(..prefix.len()) else {
                continue;
            };
            if !head.eq_ignore_ascii_case(prefix) {
                continue;
            }
            let rest = s.get(prefix.len()..).unwrap_or("");
            // Re: / Re[2]: / Re(2):
            let rest = match rest.chars().next() {
                Some('[') | Some('(') => rest
                    .find([']', ')'])
                    .and_then(|i| rest.get(i + 1..))
                    .unwrap_or(rest),
                _ => rest,
            };
            if let Some(r) = rest.trim_start().strip_prefix(':') {
                s = r.trim_start();
                break;
            }
        }
        if s.len() == before {
            break;
        }
    }
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_bytes(&collapsed.to_lowercase(), MAX_SUBJECT_KEY_BYTES).to_string()
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_collapses_and_skips_quotes() {
        assert_eq!(
            snippet("Hello\r\n\r\n  world\t!\n> quoted\nbye"),
            "Hello world ! bye"
        );
        let long = "é".repeat(500);
        assert_eq!(snippet(&long).chars().count(), SNIPPET_CHARS);
        assert_eq!(snippet(""), "");
    }

    #[test]
    fn subject_keys() {
        assert_eq!(subject_key("Re: RE: Fwd: Plan"), "plan");
        assert_eq!(subject_key("[list] Re[2]:  The   Plan "), "the plan");
        assert_eq!(subject_key("Regarding"), "regarding");
        assert_eq!(subject_key(""), "");
    }

    #[test]
    fn message_ids() {
        assert_eq!(message_id(" <a@b> ").as_deref(), Some("a@b"));
        assert_eq!(message_id("<>"), None);
        assert_eq!(
            message_id(&"x".repeat(5000)).map(|s| s.len()),
            Some(MAX_MESSAGE_ID_BYTES)
        );
    }
}
