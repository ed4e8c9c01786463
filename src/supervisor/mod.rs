//! Supervision: the set of mailbox tasks, each restarted with its error class's schedule after
//! errors and panics.
//!
//! The [`Supervisor`] owns every mailbox task: it spawns them under one root
//! `CancellationToken` (each task gets a child token) and a `TaskTracker`, applies the reload
//! diff, and stops them: cancel, let them leave IDLE with `DONE` and `LOGOUT`, wait up to a
//! grace period, then abort what remains and await it, so no task outlives its entry on the
//! status board.
//!
//! A panic in a mailbox is caught here (`catch_unwind`) and treated like any other failure: it is
//! a bug, never a crash of the daemon, and it never touches the other mailboxes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Account, BackoffConfig, ImapTimers};
use crate::handoff::Handoff;
use crate::imap::connect::Endpoint;
use crate::imap::ImapError;
use crate::limiter::ConnectLimiter;
use crate::mailbox::MailboxCtx;
use crate::status::{Reporter, StatusBoard};
use crate::store::{Fence, Store};

mod plan;
mod task;
use plan::plan;
use task::{stop_all, supervise};

/// What every mailbox task shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Where batches go.
    pub store: Store,
    /// Takes committed records to the publisher.
    pub handoff: Handoff,
    /// Status board (and per-mailbox metrics).
    pub board: Arc<StatusBoard>,
    /// Connection attempts per host.
    pub limiter: Arc<ConnectLimiter>,
    /// Protocol timers, as started.
    pub imap: ImapTimers,
    /// Retry schedules, as started.
    pub backoff: BackoffConfig,
    /// `storage.import_since`, as started.
    pub import_since: Option<Duration>,
    /// How long mailboxes get to leave IDLE and log out when stopped.
    pub grace: Duration,
    /// Cluster mode: mailboxes start only when the cluster loop hands them a lease.
    pub cluster: Option<ClusterLink>,
    /// Wake-ups and completions of the API's actions.
    pub signals: crate::actions::Signals,
}

/// What the supervisor of a replica in cluster mode shares with its cluster loop.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    /// This replica's `node_id`, the owner in lease rows.
    pub node: Arc<str>,
    /// A mailbox task whose write was fenced (its lease is gone) sends its key here and ends.
    pub lost: tokio::sync::mpsc::UnboundedSender<Key>,
}

/// A mailbox, by account id and mailbox name.
pub type Key = (String, String);

/// One running mailbox task.
struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    /// Cluster mode: the lease epoch its writes are fenced with.
    epoch: Option<i64>,
}

/// What a stop did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that ended on their own within the grace period.
    pub clean: usize,
    /// Tasks that had to be aborted after it.
    pub aborted: usize,
}

/// What applying a new account list changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Mailboxes started, as `account/mailbox`.
    pub started: Vec<String>,
    /// Mailboxes stopped.
    pub stopped: Vec<String>,
}

/// The set of mailbox tasks.
pub struct Supervisor {
    shared: Shared,
    root: CancellationToken,
    tracker: TaskTracker,
    tasks: BTreeMap<Key, Running>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    accounts: Vec<Account>,
    /// Account id → its index in `accounts`.
    by_id: HashMap<String, usize>,
}

impl Supervisor {
    /// A supervisor with no mailboxes; `root` cancels them all.
    pub fn new(shared: Shared, root: CancellationToken) -> Self {
        Self {
            shared,
            root,
            tracker: TaskTracker::new(),
            tasks: BTreeMap::new(),
            endpoints: HashMap::new(),
            accounts: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    /// Builds every account's endpoint (reads its `ca_file`) and only then spawns the mailboxes:
    /// an unusable account fails the start before any task runs.
    pub fn start(&mut self, accounts: &[Account]) -> Result<(), (String, ImapError)> {
        let mut endpoints = HashMap::new();
        for a in accounts {
            let ep = Endpoint::from_account(a).map_err(|e| (a.id.clone(), e))?;
            endpoints.insert(a.id.clone(), Arc::new(ep));
        }
        self.endpoints = endpoints;
        self.set_accounts(accounts.to_vec());
        for a in accounts {
            for m in &a.mailboxes {
                if self.shared.cluster.is_some() {
                    self.shared.board.set_elsewhere(&a.id, m);
                } else {
                    self.spawn(a, m, None);
                }
            }
        }
        Ok(())
    }

    /// Every configured mailbox, in account order.
    pub fn mailboxes(&self) -> Vec<Key> {
        self.accounts
            .iter()
            .flat_map(|a| a.mailboxes.iter().map(|m| (a.id.clone(), m.clone())))
            .collect()
    }

    /// Cluster mode: starts the mailbox under the lease taken at `epoch` (its writes are
    /// fenced with it). `false` when it is not configured (any more) or its account could not
    /// be set up; the caller then releases the lease.
    pub fn take(&mut self, key: &Key, epoch: i64) -> bool {
        if !self.is_configured(key) || !self.endpoints.contains_key(&key.0) {
            return false;
        }
        let Some(account) = self.account(&key.0).cloned() else {
            return false;
        };
        self.spawn(&account, &key.1, Some(epoch));
        true
    }

    fn set_accounts(&mut self, accounts: Vec<Account>) {
        self.by_id = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        self.accounts = accounts;
    }

    fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(*self.by_id.get(id)?)
    }

    /// Whether the account list in force has this mailbox.
    fn is_configured(&self, key: &Key) -> bool {
        self.account(&key.0)
            .is_some_and(|a| a.mailboxes.contains(&key.1))
    }

    /// Cluster mode: stops these mailboxes (DONE, LOGOUT, bounded by the grace period) but
    /// keeps them on the board as `elsewhere`: their leases are about to go to another replica.
    pub async fn hand_off(&mut self, keys: &[Key]) -> Stopped {
        let stopped = self.cancel_and_wait(keys).await;
        for key in keys.iter().filter(|k| self.is_configured(k)) {
            self.shared.board.set_elsewhere(&key.0, &key.1);
        }
        stopped
    }

    /// How many mailbox tasks run.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no mailbox task runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The account list in force.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    fn spawn(&mut self, account: &Account, mailbox: &str, epoch: Option<i64>) {
        let Some(endpoint) = self.endpoints.get(&account.id).cloned() else {
            return;
        };
        let key = (account.id.clone(), mailbox.to_string());
        if self.tasks.contains_key(&key) {
            return;
        }
        let s = &self.shared;
        let (store, lost) = match (&s.cluster, epoch) {
            (Some(c), Some(epoch)) => (
                s.store.fenced(Fence {
                    node: c.node.clone(),
                    epoch,
                }),
                Some(c.lost.clone()),
            ),
            _ => (s.store.clone(), None),
        };
        let ctx = MailboxCtx {
            account_id: account.id.clone(),
            email: account.email.clone(),
            mailbox: mailbox.to_string(),
            endpoint,
            timers: s.imap.clone(),
            store,
            handoff: s.handoff.clone(),
            reporter: Reporter::new(s.board.clone(), &account.id, mailbox),
            limiter: s.limiter.clone(),
            import_since: s.import_since,
            signals: s.signals.clone(),
            lists_mailboxes: account.mailboxes.first().is_some_and(|m| m == mailbox),
        };
        if let Some(c) = &s.cluster {
            s.board.set_owner(&key.0, &key.1, Some(&c.node));
        }
        let cancel = self.root.child_token();
        let span =
            tracing::info_span!("mailbox", account = %ctx.account_id, mailbox = %ctx.mailbox);
        let handle = self
            .tracker
            .spawn(supervise(ctx, s.backoff.clone(), cancel.clone(), lost).instrument(span));
        self.tasks.insert(
            key,
            Running {
                cancel,
                handle,
                epoch,
            },
        );
    }

    /// Stops these mailboxes together (DONE, LOGOUT), bounded by the grace period; aborts and
    /// awaits what is left, and only then takes them off the board and out of `/metrics`.
    pub async fn stop(&mut self, keys: &[Key]) -> Stopped {
        let stopped = self.cancel_and_wait(keys).await;
        for (account, mailbox) in keys {
            self.shared.board.remove(account, mailbox);
            self.shared.signals.forget(account, mailbox);
        }
        stopped
    }

    /// Cancels these mailboxes' tasks and waits for them ([`stop_all`]); the board is the
    /// caller's.
    async fn cancel_and_wait(&mut self, keys: &[Key]) -> Stopped {
        let mut handles = Vec::new();
        for key in keys {
            if let Some(r) = self.tasks.remove(key) {
                r.cancel.cancel();
                handles.push(r.handle);
            }
        }
        stop_all(handles, self.shared.grace).await
    }

    /// Applies a new account list: accounts added, removed or changed are started, stopped or
    /// restarted; mailboxes added to or removed from an otherwise unchanged account are started
    /// or stopped alone; everything else keeps its connection. An account whose endpoint cannot
    /// be built (unreadable `ca_file`) is logged and left stopped.
    pub async fn apply(&mut self, new: Vec<Account>) -> Applied {
        let plan = plan(&self.accounts, &new);
        // Cluster mode: a mailbox restarted (its account changed) keeps its lease.
        let epochs: HashMap<Key, i64> = plan
            .stop
            .iter()
            .filter_map(|k| Some((k.clone(), self.tasks.get(k)?.epoch?)))
            .collect();
        self.stop(&plan.stop).await;
        for id in &plan.forget {
            self.endpoints.remove(id);
        }
        let mut started = Vec::new();
        for a in &new {
            let Some(mailboxes) = plan.start.get(&a.id) else {
                continue;
            };
            if plan.rebuild.contains(&a.id) {
                match Endpoint::from_account(a) {
                    Ok(ep) => {
                        self.endpoints.insert(a.id.clone(), Arc::new(ep));
                    }
                    Err(e) => {
                        tracing::error!(account = %a.id, error = %format!("{e:#}"), "account not started");
                        self.endpoints.remove(&a.id);
                        continue;
                    }
                }
            }
            for m in mailboxes {
                if self.shared.cluster.is_some() {
                    let key = (a.id.clone(), m.clone());
                    match epochs.get(&key) {
                        Some(&epoch) => self.spawn(a, m, Some(epoch)),
                        // Started once the cluster loop takes its lease.
                        None => {
                            self.shared.board.set_elsewhere(&a.id, m);
                            continue;
                        }
                    }
                } else {
                    self.spawn(a, m, None);
                }
                started.push(format!("{}/{m}", a.id));
            }
        }
        self.set_accounts(new);
        Applied {
            started,
            stopped: plan.stop.iter().map(|(a, m)| format!("{a}/{m}")).collect(),
        }
    }

    /// Stops every mailbox (see [`Supervisor::stop`]) and waits for the tracker to drain.
    pub async fn shutdown(mut self) -> Stopped {
        self.root.cancel();
        let keys: Vec<Key> = self.tasks.keys().cloned().collect();
        let stopped = self.stop(&keys).await;
        self.tracker.close();
        self.tracker.wait().await;
        stopped
    }
}
