//! What the guard refuses, and how much server data its errors may quote.

use std::fmt;
use std::io;
use std::time::Duration;

use super::EXCERPT;

/// Why the guard refused the server's bytes.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A response's lines hold more than the line limit ([`MAX_LINE`](super::MAX_LINE) unless
    /// raised for the command) bytes.
    #[error("response line longer than {limit} bytes (starts \"{excerpt}\")")]
    LineTooLong {
        /// The limit.
        limit: usize,
        /// The line's start, escaped.
        excerpt: Excerpt,
    },
    /// A literal was announced larger than the session's limit.
    #[error("literal of {announced} bytes announced, at most {limit} accepted")]
    LiteralTooLarge {
        /// What the server announced.
        announced: u64,
        /// The limit.
        limit: usize,
    },
    /// More than [`MAX_LITERALS`](super::MAX_LITERALS) literals in one response.
    #[error("more than {limit} literals in one response")]
    TooManyLiterals {
        /// The limit.
        limit: usize,
    },
    /// The response would exceed its budget.
    #[error("response larger than its budget of {limit} bytes")]
    ResponseTooLarge {
        /// The budget.
        limit: usize,
    },
    /// The response is complete (or its literal announced) but does not parse.
    #[error("response does not parse: \"{excerpt}\"")]
    Malformed {
        /// The response's start, escaped, literals shown as `""`.
        excerpt: Excerpt,
    },
    /// No byte arrived for `progress` while a command waited for its answer.
    #[error("no bytes from the server for {0:?} while a command was in flight")]
    Stalled(Duration),
}

impl GuardError {
    /// Finds a guard error inside an `io::Error` (as async-imap hands it back).
    pub fn find(e: &io::Error) -> Option<&GuardError> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

/// At most [`EXCERPT`] bytes of server data, escaped (`\r`, `\x00`, `\"` …), cut with `…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt(String);

impl Excerpt {
    /// The escaped start of `bytes`.
    pub fn of(bytes: &[u8]) -> Excerpt {
        let cut = bytes.len().min(EXCERPT);
        let mut s: String = bytes
            .get(..cut)
            .unwrap_or_default()
            .escape_ascii()
            .to_string();
        if cut < bytes.len() {
            s.push('…');
        }
        Excerpt(s)
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
