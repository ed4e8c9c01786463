//! A mailbox's import: the first one (or the re-import after UIDVALIDITY changed), as
//! `/status` and the status page show it.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// An import's progress in `/status` (`import`), `null` when none ran on this connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportProgress {
    /// Messages of the import stored so far.
    pub stored: u64,
    /// Messages the import fetches in all (the server's count when it started).
    pub total: u64,
    /// Messages stored per second since the import started (until it ended, once done), to
    /// one decimal.
    pub rate_per_sec: f64,
    /// When (RFC 3339 UTC) the import started.
    pub started_at: String,
    /// The import is over: complete, or abandoned when the connection ended (then `stored` is
    /// below `total`, and the next connection starts another).
    pub done: bool,
}

/// An import under way or ended, on the board.
#[derive(Debug, Clone)]
pub(super) struct ImportRun {
    stored: u64,
    total: u64,
    started_at: SystemTime,
    started: Instant,
    ended: Option<Instant>,
}

impl ImportRun {
    /// An import of `total` messages starts now.
    pub(super) fn start(total: u64) -> Self {
        Self {
            stored: 0,
            total,
            started_at: SystemTime::now(),
            started: Instant::now(),
            ended: None,
        }
    }

    /// `n` more messages stored; nothing once the import is over.
    pub(super) fn add(&mut self, n: u64) {
        if self.ended.is_none() {
            self.stored = self.stored.saturating_add(n);
        }
    }

    /// The import is over; its figures stay.
    pub(super) fn end(&mut self) {
        self.ended.get_or_insert_with(Instant::now);
    }

    /// The `/status` view at `now`.
    pub(super) fn progress(&self, now: Instant) -> ImportProgress {
        let until = self.ended.unwrap_or(now);
        ImportProgress {
            stored: self.stored,
            total: self.total,
            rate_per_sec: rate(self.stored, until.saturating_duration_since(self.started)),
            started_at: super::rfc3339(self.started_at),
            done: self.ended.is_some(),
        }
    }
}

/// `stored` messages over `elapsed`, per second, to one decimal; 0 before any time passed.
fn rate(stored: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (stored as f64 / secs * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_per_second_to_one_decimal_and_zero_at_the_start() {
        assert_eq!(rate(1500, Duration::from_secs(60)), 25.0);
        assert_eq!(rate(10, Duration::from_secs(3)), 3.3);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
    }

    #[test]
    fn figures_freeze_when_the_import_ends() {
        let mut run = ImportRun::start(10);
        run.add(4);
        let t0 = run.started;
        let now = t0 + Duration::from_secs(2);
        assert_eq!(run.progress(now).rate_per_sec, 2.0);
        assert!(!run.progress(now).done);
        run.ended = Some(t0 + Duration::from_secs(4));
        run.add(3);
        let later = run.progress(t0 + Duration::from_secs(100));
        assert_eq!((later.stored, later.total, later.done), (4, 10, true));
        assert_eq!(later.rate_per_sec, 1.0, "rate over the import's own time");
    }
}
