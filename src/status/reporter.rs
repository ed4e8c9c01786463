//! [`Reporter`]: one mailbox task's handle on the board. Every state change, error, import
//! step and stored batch goes through it, so that `/status`, `/metrics` and the log agree.

use std::sync::Arc;
use std::time::SystemTime;

use super::{rfc3339, ImportRun, MailboxState, StatusBoard};

/// One mailbox's way to report: board (status and metrics) and log, together.
#[derive(Debug, Clone)]
pub struct Reporter {
    board: Arc<StatusBoard>,
    key: (String, String),
}

impl Reporter {
    /// Registers the mailbox on the board and in the metrics.
    pub fn new(board: Arc<StatusBoard>, account: &str, mailbox: &str) -> Self {
        let r = Self {
            board,
            key: (account.to_string(), mailbox.to_string()),
        };
        r.board.register(&r.key);
        r
    }

    /// Cluster mode: the lease is gone; the mailbox shows as `elsewhere`.
    pub fn set_elsewhere(&self) {
        self.board.set_elsewhere(&self.key.0, &self.key.1);
    }

    /// The single place a state changes. Entering `connecting` begins a new connection, which
    /// has run no import yet.
    pub fn set_state(&self, state: MailboxState) {
        let mut previous = state;
        self.board.update_entry(&self.key, |e| {
            if state == MailboxState::Connecting && e.status.state != state {
                e.import = None;
            }
            let s = &mut e.status;
            previous = s.state;
            if s.state != state {
                s.state_since = rfc3339(SystemTime::now());
            }
            s.state = state;
            if !matches!(
                state,
                MailboxState::Backoff | MailboxState::AuthFailed | MailboxState::Failed
            ) {
                s.next_retry_at = None;
            }
        });
        if previous != state {
            tracing::debug!(
                from = previous.as_str(),
                to = state.as_str(),
                "mailbox state"
            );
        }
    }

    /// The current state.
    pub fn state(&self) -> MailboxState {
        self.board
            .lock()
            .get(&self.key)
            .map_or(MailboxState::Stopping, |e| e.status.state)
    }

    /// Records the highest stored UID. When it grows past a known one, a new message was
    /// stored now: that is `last_message_at`.
    pub fn set_last_uid(&self, uid: u32) {
        self.board.update(&self.key, |s| {
            if s.last_uid.is_some_and(|old| uid > old) {
                s.last_message_at = Some(rfc3339(SystemTime::now()));
            }
            s.last_uid = Some(uid);
        });
    }

    /// Records when the next connection attempt is due (`None`: none scheduled). The
    /// supervisor calls it with `Some(now + delay)` before it sleeps in `backoff` or
    /// `auth_failed`; any later state other than those two clears it.
    pub fn set_next_retry(&self, at: Option<SystemTime>) {
        self.board
            .update(&self.key, |s| s.next_retry_at = at.map(rfc3339));
    }

    /// Records an error of a bounded kind and its retry class (board and metric).
    pub fn error(&self, kind: &'static str, class: &'static str) {
        self.board.update_entry(&self.key, |e| {
            e.status.last_error = Some(kind);
            e.status.error_class = Some(class);
            *e.series.errors.entry(kind).or_insert(0) += 1;
        });
    }

    /// Records a reconnect.
    pub fn reconnect(&self) {
        self.board
            .update_entry(&self.key, |e| e.series.reconnects += 1);
    }

    /// A first import (or a re-import after UIDVALIDITY changed) starts: `total` messages to
    /// fetch. It replaces any earlier import of this connection.
    pub fn import_started(&self, total: u64) {
        self.board
            .update_entry(&self.key, |e| e.import = Some(ImportRun::start(total)));
    }

    /// `n` more imported messages stored. Report them to [`Reporter::stored`] too:
    /// `idlesync_imported_total` is the part of `idlesync_messages_stored_total` that is
    /// history.
    pub fn imported(&self, n: u64) {
        self.board.update_entry(&self.key, |e| {
            e.series.imported += n;
            if let Some(i) = &mut e.import {
                i.add(n);
            }
        });
    }

    /// The import is complete (or abandoned on disconnect): its figures stay on `/status`,
    /// marked done, until the next connection.
    pub fn import_done(&self) {
        self.board.update_entry(&self.key, |e| {
            if let Some(i) = &mut e.import {
                i.end();
            }
        });
    }

    /// Changes applied to stored messages: `flags` messages' flags changed, `expunged`
    /// messages left the mailbox.
    pub fn changes_applied(&self, flags: u64, expunged: u64) {
        self.board.update_entry(&self.key, |e| {
            e.series.flags_changed += flags;
            e.series.expunged += expunged;
        });
    }

    /// `n` messages stored, the newest having arrived (INTERNALDATE) at `newest_ms`.
    pub fn stored(&self, n: u64, newest_ms: Option<i64>) {
        self.board.update_entry(&self.key, |e| {
            e.series.stored += n;
            if let Some(ms) = newest_ms {
                e.series.last_message = Some(ms as f64 / 1000.0);
            }
        });
    }
}
