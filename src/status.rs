//! Mailbox states, and the board where every mailbox task reports them.
//!
//! Every state change goes through [`Reporter::set_state`], which updates the board, the metric
//! gauges and logs once. The board also lets tests (and later `/status`) await a condition
//! without sleeping.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::MailboxMetrics;

/// Where a mailbox task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxState {
    /// TCP and TLS.
    Connecting,
    /// LOGIN.
    Authenticating,
    /// SELECT and catch-up fetch.
    Syncing,
    /// In IDLE, waiting for the server.
    Idling,
    /// Fetching and storing new messages.
    Fetching,
    /// Waiting to reconnect after an error.
    Backoff,
    /// Waiting (long) after the server refused the credentials.
    AuthFailed,
    /// Shutting down.
    Stopping,
}

impl MailboxState {
    /// Every state, for registering gauges.
    pub const ALL: [MailboxState; 8] = [
        MailboxState::Connecting,
        MailboxState::Authenticating,
        MailboxState::Syncing,
        MailboxState::Idling,
        MailboxState::Fetching,
        MailboxState::Backoff,
        MailboxState::AuthFailed,
        MailboxState::Stopping,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Connecting => "connecting",
            MailboxState::Authenticating => "authenticating",
            MailboxState::Syncing => "syncing",
            MailboxState::Idling => "idling",
            MailboxState::Fetching => "fetching",
            MailboxState::Backoff => "backoff",
            MailboxState::AuthFailed => "auth_failed",
            MailboxState::Stopping => "stopping",
        }
    }
}

/// What the board knows of one mailbox.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxStatus {
    /// Account id.
    pub account: String,
    /// Mailbox name.
    pub mailbox: String,
    /// Current state.
    pub state: MailboxState,
    /// Highest UID stored.
    pub last_uid: Option<u32>,
    /// Kind of the last error, if any.
    pub last_error: Option<&'static str>,
    /// Reconnects since start.
    pub reconnects: u64,
}

/// Shared by all mailbox tasks of a daemon.
#[derive(Debug)]
pub struct StatusBoard {
    mailboxes: Mutex<BTreeMap<(String, String), MailboxStatus>>,
    changed: watch::Sender<u64>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            mailboxes: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl StatusBoard {
    /// A copy of every mailbox's status, ordered by account and mailbox.
    pub fn snapshot(&self) -> Vec<MailboxStatus> {
        self.lock().values().cloned().collect()
    }

    /// Waits until `pred` holds for the snapshot, or `timeout` passes. Returns whether it held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[MailboxStatus]) -> bool,
    ) -> bool {
        let mut rx = self.changed.subscribe();
        let check = async {
            loop {
                if pred(&self.snapshot()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, check).await.is_ok() && pred(&self.snapshot())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), MailboxStatus>> {
        // A panic while holding this lock cannot leave the map inconsistent (plain field
        // writes), so a poisoned lock is still usable.
        self.mailboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, key: &(String, String), f: impl FnOnce(&mut MailboxStatus)) {
        {
            let mut map = self.lock();
            let entry = map.entry(key.clone()).or_insert_with(|| MailboxStatus {
                account: key.0.clone(),
                mailbox: key.1.clone(),
                state: MailboxState::Connecting,
                last_uid: None,
                last_error: None,
                reconnects: 0,
            });
            f(entry);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Forgets a mailbox (when it is removed from the config).
    pub fn remove(&self, account: &str, mailbox: &str) {
        self.lock()
            .remove(&(account.to_string(), mailbox.to_string()));
        self.changed.send_modify(|v| *v += 1);
    }
}

/// One mailbox's way to report: board, metrics and log, together.
#[derive(Debug, Clone)]
pub struct Reporter {
    board: Arc<StatusBoard>,
    key: (String, String),
    /// The mailbox's metric handles.
    pub metrics: MailboxMetrics,
}

impl Reporter {
    /// Registers the mailbox on the board and in the metrics.
    pub fn new(board: Arc<StatusBoard>, account: &str, mailbox: &str) -> Self {
        let r = Self {
            board,
            key: (account.to_string(), mailbox.to_string()),
            metrics: MailboxMetrics::new(account, mailbox),
        };
        r.board.update(&r.key, |_| {});
        r.metrics.state(MailboxState::Connecting);
        r
    }

    /// The single place a state changes.
    pub fn set_state(&self, state: MailboxState) {
        // Gauges first: whoever the board wakes sees metrics that agree with it.
        self.metrics.state(state);
        let mut previous = state;
        self.board.update(&self.key, |s| {
            previous = s.state;
            s.state = state;
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
            .map_or(MailboxState::Connecting, |s| s.state)
    }

    /// Records the highest stored UID.
    pub fn set_last_uid(&self, uid: u32) {
        self.board.update(&self.key, |s| s.last_uid = Some(uid));
    }

    /// Records an error of a bounded kind (board and metric).
    pub fn error(&self, kind: &'static str) {
        self.metrics.error(kind);
        self.board.update(&self.key, |s| s.last_error = Some(kind));
    }

    /// Records a reconnect.
    pub fn reconnect(&self) {
        self.metrics.reconnect();
        self.board.update(&self.key, |s| s.reconnects += 1);
    }
}
