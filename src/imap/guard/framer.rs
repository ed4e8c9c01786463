//! The reader's framing: lines, literal announcements and literal bytes, response by
//! response, with the bounds checked as the bytes arrive and each complete response validated
//! once on its skeleton.

use async_imap::imap_proto::Response;

use super::{Excerpt, GuardError, Limits, EXCERPT, MAX_LITERALS};

/// How many bytes of a chunk may be handed on, and whether the rest is refused.
pub(super) struct Scan {
    /// The prefix of the chunk that may be handed on.
    pub(super) ready: usize,
    /// The chunk broke a bound after `ready`.
    pub(super) error: Option<GuardError>,
}

/// The reader's framing state, per response.
#[derive(Debug, Default)]
pub(super) struct Framer {
    /// Literal bytes still to pass through; 0 while in a line.
    pub(super) literal_left: u64,
    /// The response's lines so far with literals as `""`; the current line in full.
    pub(super) skeleton: Vec<u8>,
    /// Literals in this response so far.
    pub(super) literals: usize,
    /// Bytes of this response so far.
    pub(super) bytes: usize,
}

/// What a complete response was, for the command-in-flight tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Untagged,
    Continuation,
    Tagged,
}

impl Framer {
    /// Scans `data` (each byte once), returning how much of it is ready to hand on.
    /// `ended` is called for every response completed in it.
    pub(super) fn scan(
        &mut self,
        data: &[u8],
        limits: &Limits,
        mut ended: impl FnMut(Ended),
    ) -> Scan {
        let mut at = 0;
        let mut ready = 0;
        while at < data.len() {
            let rest = data.get(at..).unwrap_or_default();
            if self.literal_left > 0 {
                let n = usize::try_from(self.literal_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.literal_left -= n as u64;
                at += n;
                ready = at;
                continue;
            }
            // In a line: up to and including its LF.
            let (run, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (rest.len(), false),
            };
            if self.skeleton.len() + run > limits.max_line {
                let mut line = std::mem::take(&mut self.skeleton);
                line.extend_from_slice(rest.get(..run.min(EXCERPT)).unwrap_or_default());
                return Scan {
                    ready,
                    error: Some(GuardError::LineTooLong {
                        limit: limits.max_line,
                        excerpt: Excerpt::of(&line),
                    }),
                };
            }
            self.skeleton
                .extend_from_slice(rest.get(..run).unwrap_or_default());
            self.bytes += run;
            at += run;
            if !complete {
                break;
            }
            if let Err(e) = self.line_ended(limits, &mut ended) {
                return Scan {
                    ready,
                    error: Some(e),
                };
            }
            ready = at;
        }
        Scan { ready, error: None }
    }

    /// The current line got its LF: a literal announcement or the end of the response.
    pub(super) fn line_ended(
        &mut self,
        limits: &Limits,
        ended: &mut impl FnMut(Ended),
    ) -> Result<(), GuardError> {
        if let Some((announced, start)) = literal_announced(&self.skeleton) {
            let limit = limits.max_literal;
            if announced > limit as u64 {
                return Err(GuardError::LiteralTooLarge { announced, limit });
            }
            self.literals += 1;
            if self.literals > MAX_LITERALS {
                return Err(GuardError::TooManyLiterals {
                    limit: MAX_LITERALS,
                });
            }
            // `announced <= max_literal`, a usize.
            let n = usize::try_from(announced).unwrap_or(usize::MAX);
            if self.bytes.saturating_add(n) > limits.max_response() {
                return Err(GuardError::ResponseTooLarge {
                    limit: limits.max_response(),
                });
            }
            self.skeleton.truncate(start);
            // What async-imap is about to be given must at least be a valid beginning.
            if Response::parse(&self.skeleton).is_err_and(|e| !e.is_incomplete()) {
                return Err(self.malformed());
            }
            self.skeleton.extend_from_slice(b"\"\"");
            self.bytes += n;
            self.literal_left = announced;
            return Ok(());
        }
        if !self.skeleton.ends_with(b"\r\n") {
            // A bare LF inside a line: IMAP lines end in CRLF.
            return Ok(());
        }
        match Response::parse(&self.skeleton) {
            Ok(_) => {}
            Err(_) => return Err(self.malformed()),
        }
        ended(match self.skeleton.first() {
            Some(b'*') => Ended::Untagged,
            Some(b'+') => Ended::Continuation,
            _ => Ended::Tagged,
        });
        *self = Framer::default();
        Ok(())
    }

    pub(super) fn malformed(&mut self) -> GuardError {
        GuardError::Malformed {
            excerpt: Excerpt::of(&std::mem::take(&mut self.skeleton)),
        }
    }
}

/// `{n}CRLF` or `~{n}CRLF` at the end of `line`: `n` and where the announcement starts.
pub(super) fn literal_announced(line: &[u8]) -> Option<(u64, usize)> {
    let body = line.strip_suffix(b"}\r\n")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = body.get(open + 1..)?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        // More digits than a u64 holds: larger than any limit.
        .unwrap_or(u64::MAX);
    let start = match open.checked_sub(1).and_then(|i| body.get(i)) {
        Some(b'~') => open - 1,
        _ => open,
    };
    Some((n, start))
}
