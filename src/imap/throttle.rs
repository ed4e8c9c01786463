//! Server throttling: a tagged `NO` (or `BAD`) that means "slow down", not "refused".
//!
//! Two signals, and nothing else:
//! - RFC 5530's `[UNAVAILABLE]` and `[LIMIT]` response codes. imap-proto has no variants for
//!   them, so an unknown code stays at the start of the response text, and [`response_code`]
//!   reads it by the grammar (`"[" atom [SP text] "]"`): structure, not a text search.
//! - Microsoft 365's `Request is throttled. Suggested Backoff Time: N milliseconds`, which comes
//!   with no response code at all. Text is the only signal there, so it is matched in exactly
//!   one function, [`microsoft_backoff`].
//!
//! The suggested delay (Microsoft's; RFC 5530 suggests none) travels in
//! [`ImapError::Throttled`], and [`ImapError::retry_after`] hands it to the supervisor.

use std::time::Duration;

use async_imap::imap_proto::Outcome;

use super::ImapError;

/// Longest delay taken from a server: Microsoft's are up to about 5 minutes; anything far
/// beyond that is more likely garbage than advice.
pub const MAX_DELAY: Duration = Duration::from_secs(60 * 60);

/// The throttling error for a tagged refusal of `command`, or `None` when the refusal is not
/// throttling.
pub fn refusal(command: &'static str, outcome: &Outcome<'_>) -> Option<ImapError> {
    let text = outcome.information.as_deref().unwrap_or("");
    // A code imap-proto recognised is none of RFC 5530's.
    let rfc5530 = outcome.code.is_none()
        && response_code(text).is_some_and(|c| {
            c.eq_ignore_ascii_case("UNAVAILABLE") || c.eq_ignore_ascii_case("LIMIT")
        });
    let delay = microsoft_backoff(text);
    (rfc5530 || delay.is_some()).then(|| ImapError::Throttled {
        command,
        delay,
        text: text.to_string(),
    })
}

/// The atom of the response code that opens `text` (`[UNAVAILABLE] try later` →
/// `UNAVAILABLE`), if it opens with one.
fn response_code(text: &str) -> Option<&str> {
    let (code, _) = text.strip_prefix('[')?.split_once(']')?;
    let atom = code.split(' ').next()?;
    let atom_char = |b: u8| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b);
    (!atom.is_empty() && atom.bytes().all(atom_char)).then_some(atom)
}

/// Microsoft 365's throttling text, `Request is throttled. Suggested Backoff Time: N
/// milliseconds`, and its delay (at most [`MAX_DELAY`]). The only place in idlesync where a
/// server's text decides anything: Microsoft sends no response code with it.
pub fn microsoft_backoff(text: &str) -> Option<Duration> {
    let (before, after) = text.split_once("Suggested Backoff Time: ")?;
    if !before.contains("Request is throttled") {
        return None;
    }
    let (n, unit) = after.split_once(' ')?;
    if !unit.starts_with("milliseconds") {
        return None;
    }
    let ms: u64 = n.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::imap_proto::{Response, Status};

    /// The error for a tagged reply line, as the readers see it.
    fn tagged(line: &str) -> Option<ImapError> {
        let (_, r) = Response::parse(line.as_bytes()).expect("parses");
        let Response::Done {
            status, outcome, ..
        } = r
        else {
            panic!("not tagged: {line}")
        };
        assert_ne!(status, Status::Ok);
        refusal("SELECT", &outcome)
    }

    fn delay(e: Option<ImapError>) -> Option<Option<Duration>> {
        match e {
            Some(ImapError::Throttled { delay, .. }) => Some(delay),
            Some(e) => panic!("{e:?}"),
            None => None,
        }
    }

    #[test]
    fn rfc5530_codes_are_throttling_without_a_delay() {
        assert_eq!(
            delay(tagged("a1 NO [UNAVAILABLE] backend down\r\n")),
            Some(None)
        );
        assert_eq!(
            delay(tagged("a1 NO [LIMIT] too many sessions\r\n")),
            Some(None)
        );
        assert_eq!(delay(tagged("a1 NO [unavailable]\r\n")), Some(None));
        // Other codes, known to imap-proto or not, and text that merely mentions one.
        assert_eq!(delay(tagged("a1 NO [TRYCREATE] no such mailbox\r\n")), None);
        assert_eq!(
            delay(tagged("a1 NO [NONEXISTENT] no such mailbox\r\n")),
            None
        );
        assert_eq!(delay(tagged("a1 NO [SERVERBUG] oops\r\n")), None);
        assert_eq!(
            delay(tagged("a1 NO mailbox [UNAVAILABLE] in text\r\n")),
            None
        );
        assert_eq!(
            delay(tagged("a1 NO [LIMITED] not a code of RFC 5530\r\n")),
            None
        );
        assert_eq!(delay(tagged("a1 NO\r\n")), None);
    }

    #[test]
    fn microsoft_text_carries_its_delay() {
        let ms = |n| Some(Some(Duration::from_millis(n)));
        assert_eq!(
            delay(tagged(
                "a1 NO Request is throttled. Suggested Backoff Time: 299961 milliseconds\r\n"
            )),
            ms(299_961)
        );
        assert_eq!(
            delay(tagged(
                "a1 BAD Request is throttled. Suggested Backoff Time: 190 milliseconds\r\n"
            )),
            ms(190)
        );
        // Both signals at once: the delay is kept.
        assert_eq!(
            delay(tagged(
                "a1 NO [UNAVAILABLE] Request is throttled. Suggested Backoff Time: 5 milliseconds\r\n"
            )),
            ms(5)
        );
    }

    #[test]
    fn microsoft_backoff_is_exact() {
        let text = "Request is throttled. Suggested Backoff Time: 1200 milliseconds";
        assert_eq!(microsoft_backoff(text), Some(Duration::from_millis(1200)));
        // As async-imap's LOGIN error carries it (a Debug rendering around the text).
        let login = format!("code: None, info: Some({text:?})");
        assert_eq!(microsoft_backoff(&login), Some(Duration::from_millis(1200)));
        assert_eq!(
            microsoft_backoff(
                "Request is throttled. Suggested Backoff Time: 99999999999 milliseconds"
            ),
            Some(MAX_DELAY)
        );
        for not in [
            "Suggested Backoff Time: 1200 milliseconds",
            "Request is throttled. Suggested Backoff Time: soon milliseconds",
            "Request is throttled. Suggested Backoff Time: 12 seconds",
            "Request is throttled. Suggested Backoff Time: -3 milliseconds",
            "Request is throttled.",
            "LOGIN failed.",
        ] {
            assert_eq!(microsoft_backoff(not), None, "{not}");
        }
    }
}
