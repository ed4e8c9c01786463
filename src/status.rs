//! Mailbox states, and the board where every mailbox task reports them.
//!
//! Every state change goes through [`Reporter::set_state`], which updates the board, the metric
//! gauges and logs once. The board also lets tests (and later `/status`) await a condition
//! without sleeping. An import's progress ([`Reporter::import_started`] and the rest) is kept
//! per connection: a new connection (state `connecting`) starts without one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{MailboxRow, MailboxSeries};

mod import;
mod reporter;

pub use import::ImportProgress;
use import::ImportRun;
pub use reporter::Reporter;

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
    /// Waiting (long) after an error that retrying cannot fix: the mailbox does not exist, the
    /// certificate does not verify, TLS is refused. An operator must act.
    Failed,
    /// Shutting down.
    Stopping,
    /// Cluster mode: another replica holds this mailbox's lease (or nobody does yet); this one
    /// does not connect to it. Not among [`MailboxState::ALL`]: its owner exports its series.
    Elsewhere,
}

impl MailboxState {
    /// Every state, for registering gauges.
    pub const ALL: [MailboxState; 9] = [
        MailboxState::Connecting,
        MailboxState::Authenticating,
        MailboxState::Syncing,
        MailboxState::Idling,
        MailboxState::Fetching,
        MailboxState::Backoff,
        MailboxState::AuthFailed,
        MailboxState::Failed,
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
            MailboxState::Failed => "failed",
            MailboxState::Stopping => "stopping",
            MailboxState::Elsewhere => "elsewhere",
        }
    }
}

impl MailboxStatus {
    /// A mailbox just registered: connecting, nothing known yet.
    pub fn new(account: &str, mailbox: &str) -> Self {
        Self {
            account: account.to_string(),
            mailbox: mailbox.to_string(),
            state: MailboxState::Connecting,
            state_since: rfc3339(SystemTime::now()),
            last_uid: None,
            last_message_at: None,
            last_error: None,
            error_class: None,
            reconnects: 0,
            next_retry_at: None,
            import: None,
            owner: None,
        }
    }

    /// Whether `/readyz` counts this mailbox as ready: idling (or fetching what IDLE
    /// announced), or in an expected backoff: waiting to retry after a transient error, or
    /// connecting again after one. Not ready: the first connection and catch-up still under way,
    /// credentials refused (`auth_failed`) or a permanent error (`failed`): the operator must
    /// act; or stopping.
    pub fn is_ready(&self) -> bool {
        match self.state {
            MailboxState::Idling
            | MailboxState::Fetching
            | MailboxState::Backoff
            | MailboxState::Elsewhere => true,
            MailboxState::Connecting | MailboxState::Authenticating | MailboxState::Syncing => {
                self.reconnects > 0
            }
            MailboxState::AuthFailed | MailboxState::Failed | MailboxState::Stopping => false,
        }
    }
}

/// RFC 3339 UTC with milliseconds, as `/status` shows times.
fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    /// Since when (RFC 3339 UTC) the mailbox is in `state`.
    pub state_since: String,
    /// Highest UID stored.
    pub last_uid: Option<u32>,
    /// When (RFC 3339 UTC) this daemon last stored a new message of the mailbox.
    pub last_message_at: Option<String>,
    /// Kind of the last error, if any (the metrics' bounded `error_type`).
    pub last_error: Option<&'static str>,
    /// Class of the last error (`transient`, `credentials`, `secret_source`,
    /// `config_or_server`): which retry schedule is in force.
    pub error_class: Option<&'static str>,
    /// Reconnects since start.
    pub reconnects: u64,
    /// When (RFC 3339 UTC) the next connection attempt is due, while in `backoff`,
    /// `auth_failed` or `failed`.
    pub next_retry_at: Option<String>,
    /// The import (first one, or re-import after UIDVALIDITY changed) of this connection;
    /// `None` when none ran on it.
    pub import: Option<ImportProgress>,
    /// Cluster mode: the replica (`node_id`) holding the mailbox's lease: this one, another
    /// (state `elsewhere`), or `null` when nobody holds it or it is not known. Always `null`
    /// in single-node mode.
    pub owner: Option<String>,
}

/// One mailbox on the board: what `/status` shows and what `/metrics` counts.
#[derive(Debug, Clone)]
struct Entry {
    status: MailboxStatus,
    series: MailboxSeries,
    import: Option<ImportRun>,
}

impl Entry {
    /// The `/status` view, with the counters that live in the series.
    fn status(&self) -> MailboxStatus {
        MailboxStatus {
            reconnects: self.series.reconnects,
            import: self
                .import
                .as_ref()
                .map(|i| i.progress(std::time::Instant::now())),
            ..self.status.clone()
        }
    }
}

/// Shared by all mailbox tasks of a daemon.
#[derive(Debug)]
pub struct StatusBoard {
    mailboxes: Mutex<BTreeMap<(String, String), Entry>>,
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
        self.lock().values().map(Entry::status).collect()
    }

    /// How many mailboxes are in each state (every state listed, zeros included).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out: BTreeMap<&'static str, usize> =
            MailboxState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for e in self.lock().values() {
            if e.status.state == MailboxState::Elsewhere {
                *out.entry(MailboxState::Elsewhere.as_str()).or_default() += 1;
                continue;
            }
            *out.entry(e.status.state.as_str()).or_default() += 1;
        }
        out
    }

    /// The per-mailbox series in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let map = self.lock();
        // A mailbox held elsewhere is exported by its owner: here it would only repeat (and,
        // with its state gauge, fire the not-idling alert).
        let rows: Vec<_> = map
            .values()
            .filter(|e| e.status.state != MailboxState::Elsewhere)
            .map(|e| MailboxRow {
                account: &e.status.account,
                mailbox: &e.status.mailbox,
                state: e.status.state.as_str(),
                series: &e.series,
            })
            .collect();
        let states = MailboxState::ALL.map(MailboxState::as_str);
        crate::metrics::render_mailboxes(&rows, &states)
    }

    /// A record of this mailbox was published; `latency_s` is EXISTS → PUBLISH acknowledged.
    /// Records of a mailbox no longer on the board (removed by a reload) are not counted.
    pub fn published(&self, account: &str, mailbox: &str, latency_s: Option<f64>) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&(account.to_string(), mailbox.to_string())) {
            e.series.published += 1;
            if let Some(l) = latency_s {
                e.series.latency.observe(l);
            }
        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (plain field
        // writes), so a poisoned lock is still usable.
        self.mailboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, key: &(String, String), f: impl FnOnce(&mut MailboxStatus)) {
        self.update_entry(key, |e| f(&mut e.status));
    }

    /// Updates an entry that is on the board. A mailbox that was removed stays removed: a late
    /// report from its task never brings it back into `/status` and `/metrics`.
    fn update_entry(&self, key: &(String, String), f: impl FnOnce(&mut Entry)) {
        {
            let mut map = self.lock();
            let Some(entry) = map.get_mut(key) else {
                return;
            };
            f(entry);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Puts a mailbox on the board (afresh, if it was there).
    fn register(&self, key: &(String, String)) {
        self.lock().insert(
            key.clone(),
            Entry {
                status: MailboxStatus::new(&key.0, &key.1),
                series: MailboxSeries::default(),
                import: None,
            },
        );
        self.changed.send_modify(|v| *v += 1);
    }

    /// Cluster mode: this replica does not hold the mailbox. Puts it on the board as
    /// `elsewhere` (keeping its counters, should it come back) with no owner known.
    pub fn set_elsewhere(&self, account: &str, mailbox: &str) {
        let key = (account.to_string(), mailbox.to_string());
        {
            let mut map = self.lock();
            let entry = map.entry(key).or_insert_with_key(|k| Entry {
                status: MailboxStatus::new(&k.0, &k.1),
                series: MailboxSeries::default(),
                import: None,
            });
            if entry.status.state != MailboxState::Elsewhere {
                entry.status.state_since = rfc3339(SystemTime::now());
            }
            entry.status.state = MailboxState::Elsewhere;
            entry.status.owner = None;
            entry.status.next_retry_at = None;
            entry.import = None;
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Cluster mode: the mailbox's owner as `/status` shows it.
    pub fn set_owner(&self, account: &str, mailbox: &str, owner: Option<&str>) {
        let key = (account.to_string(), mailbox.to_string());
        self.update(&key, |s| s.owner = owner.map(str::to_string));
    }

    /// Forgets a mailbox (when it is removed from the config): it leaves `/status` and its
    /// series leave `/metrics`.
    pub fn remove(&self, account: &str, mailbox: &str) {
        self.lock()
            .remove(&(account.to_string(), mailbox.to_string()));
        self.changed.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests;
