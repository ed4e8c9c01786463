//! The daemon as a whole: what starts in which order, live reload, and how it stops.
//!
//! Start: store (+ migrations) → metrics → admin listener → publisher → one supervised task per
//! mailbox. Reload (SIGHUP or a changed file): the account list is diffed and only what changed
//! is touched. Stop: cancel the mailboxes (they leave IDLE with DONE and LOGOUT), wait up to a
//! grace period, abort what remains, then let the publisher make a last pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::{Account, Config};
use crate::handoff::Handoff;
use crate::imap::connect::Endpoint;
use crate::imap::ImapError;
use crate::limiter::ConnectLimiter;
use crate::mailbox::MailboxCtx;
use crate::publish::{PublishError, Publisher, Sink};
use crate::status::{Reporter, StatusBoard};
use crate::store::{Store, StoreError};
use crate::supervisor;

/// How long mailboxes get to leave IDLE and log out on shutdown (and on removal).
const MAILBOX_GRACE: Duration = Duration::from_secs(6);

/// Start-up failures. Once started, nothing stops the daemon but shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The database is unreachable or its migrations failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The admin listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Redis URL is unusable.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An account's TLS setup (its `ca_file`) is unusable.
    #[error("account {account}: {source}")]
    Account {
        /// Account id.
        account: String,
        /// Why.
        source: ImapError,
    },
}

/// One running mailbox task.
struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Mailboxes started, as `account/mailbox`.
    pub started: Vec<String>,
    /// Mailboxes stopped.
    pub stopped: Vec<String>,
    /// Sections whose changes wait for a restart.
    pub restart_required: Vec<&'static str>,
}

/// A running daemon.
pub struct Daemon {
    /// The config in force: accounts as last reloaded, everything else as started.
    config: Config,
    mailboxes: BTreeMap<(String, String), Running>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    store: Store,
    handoff: Handoff,
    board: Arc<StatusBoard>,
    limiter: Arc<ConnectLimiter>,
    publisher: JoinHandle<()>,
    publisher_cancel: CancellationToken,
    admin_cancel: CancellationToken,
    admin_addr: SocketAddr,
}

impl Daemon {
    /// Starts everything. Returns once the admin listener is bound and every mailbox task is
    /// spawned (not yet connected: see [`Daemon::board`]).
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        let store = Store::connect(&config.storage).await?;
        store.migrate().await?;
        let metrics = crate::metrics::install();
        let board = Arc::new(StatusBoard::default());

        let listen = config.metrics.listen;
        let bind_error = |source| DaemonError::Listen {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let admin_addr = listener.local_addr().map_err(bind_error)?;
        let admin_cancel = CancellationToken::new();
        tokio::spawn(admin::serve(
            listener,
            AdminState {
                metrics,
                board: board.clone(),
                store: store.clone(),
            },
            admin_cancel.clone(),
        ));

        let (handoff, inbox) = crate::handoff::handoff();
        let publisher_cancel = CancellationToken::new();
        let publisher = tokio::spawn(
            Publisher {
                store: store.clone(),
                sink: Sink::from_config(config.redis.as_ref())?,
                inbox,
                board: board.clone(),
                backoff: crate::publish::retry_schedule(&config.backoff, config.redis.as_ref()),
                bounds: config.outbox.clone(),
            }
            .run(publisher_cancel.clone()),
        );

        let mut daemon = Daemon {
            limiter: Arc::new(ConnectLimiter::new(
                config.imap.connects_per_second,
                config.imap.max_connecting,
            )),
            config: config.clone(),
            mailboxes: BTreeMap::new(),
            endpoints: HashMap::new(),
            store,
            handoff,
            board,
            publisher,
            publisher_cancel,
            admin_cancel,
            admin_addr,
        };
        for account in &config.accounts {
            let endpoint = Arc::new(Endpoint::from_account(account).map_err(|source| {
                DaemonError::Account {
                    account: account.id.clone(),
                    source,
                }
            })?);
            daemon.endpoints.insert(account.id.clone(), endpoint);
            for mailbox in &account.mailboxes {
                daemon.spawn_mailbox(account, mailbox);
            }
        }
        tracing::info!(mailboxes = daemon.mailboxes.len(), admin = %admin_addr, "idlesync started");
        Ok(daemon)
    }

    /// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The mailbox states.
    pub fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    /// The store the daemon writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn spawn_mailbox(&mut self, account: &Account, mailbox: &str) {
        let Some(endpoint) = self.endpoints.get(&account.id).cloned() else {
            return;
        };
        let cancel = CancellationToken::new();
        let ctx = MailboxCtx {
            account_id: account.id.clone(),
            email: account.email.clone(),
            mailbox: mailbox.to_string(),
            endpoint,
            timers: self.config.imap.clone(),
            store: self.store.clone(),
            handoff: self.handoff.clone(),
            reporter: Reporter::new(self.board.clone(), &account.id, mailbox),
            limiter: self.limiter.clone(),
        };
        let handle = supervisor::spawn_mailbox(ctx, self.config.backoff.clone(), cancel.clone());
        self.mailboxes.insert(
            (account.id.clone(), mailbox.to_string()),
            Running { cancel, handle },
        );
    }

    /// Stops these mailboxes together (DONE, LOGOUT), bounded by the grace period, and takes
    /// them off the board and out of `/metrics`.
    async fn stop_mailboxes(&mut self, keys: &[(String, String)]) {
        let mut handles = Vec::new();
        for key in keys {
            if let Some(r) = self.mailboxes.remove(key) {
                r.cancel.cancel();
                handles.push(r.handle);
            }
        }
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let all = futures::future::join_all(handles);
        if tokio::time::timeout(MAILBOX_GRACE, all).await.is_err() {
            tracing::warn!("mailboxes did not stop in time; aborting them");
            aborts.iter().for_each(|a| a.abort());
        }
        for (account, mailbox) in keys {
            self.board.remove(account, mailbox);
        }
    }

    /// Applies a new config: accounts added, removed or changed are started, stopped or
    /// restarted; mailboxes added to or removed from an unchanged account are started or
    /// stopped alone; everything else keeps its connection. Sections that only a restart can
    /// change are reported, and otherwise ignored.
    pub async fn reload(&mut self, new: Config) -> ReloadOutcome {
        let mut outcome = ReloadOutcome::default();
        let old = &self.config;
        for (name, changed) in [
            ("storage", old.storage != new.storage),
            ("redis", old.redis != new.redis),
            ("metrics", old.metrics != new.metrics),
            ("imap", old.imap != new.imap),
            ("backoff", old.backoff != new.backoff),
            ("outbox", old.outbox != new.outbox),
        ] {
            if changed {
                outcome.restart_required.push(name);
            }
        }
        let old_accounts: HashMap<&str, &Account> =
            old.accounts.iter().map(|a| (a.id.as_str(), a)).collect();
        let new_ids: BTreeSet<&str> = new.accounts.iter().map(|a| a.id.as_str()).collect();

        let mut to_stop: Vec<(String, String)> = Vec::new();
        let mut to_start: Vec<(Account, String)> = Vec::new();
        let mut new_endpoints: Vec<(String, Option<Endpoint>)> = Vec::new();
        for a in &old.accounts {
            if !new_ids.contains(a.id.as_str()) {
                to_stop.extend(a.mailboxes.iter().map(|m| (a.id.clone(), m.clone())));
                new_endpoints.push((a.id.clone(), None));
            }
        }
        for a in &new.accounts {
            match old_accounts.get(a.id.as_str()) {
                Some(o) if *o == a => {}
                Some(o) if same_but_mailboxes(o, a) => {
                    let before: BTreeSet<&String> = o.mailboxes.iter().collect();
                    let after: BTreeSet<&String> = a.mailboxes.iter().collect();
                    to_stop.extend(
                        before
                            .difference(&after)
                            .map(|m| (a.id.clone(), (*m).clone())),
                    );
                    to_start.extend(after.difference(&before).map(|m| (a.clone(), (*m).clone())));
                }
                previous => {
                    if let Some(o) = previous {
                        to_stop.extend(o.mailboxes.iter().map(|m| (o.id.clone(), m.clone())));
                    }
                    match Endpoint::from_account(a) {
                        Ok(ep) => {
                            new_endpoints.push((a.id.clone(), Some(ep)));
                            to_start.extend(a.mailboxes.iter().map(|m| (a.clone(), m.clone())));
                        }
                        Err(e) => {
                            tracing::error!(account = %a.id, error = %format!("{e:#}"), "account not started");
                            new_endpoints.push((a.id.clone(), None));
                        }
                    }
                }
            }
        }

        self.stop_mailboxes(&to_stop).await;
        for (id, ep) in new_endpoints {
            match ep {
                Some(ep) => self.endpoints.insert(id, Arc::new(ep)),
                None => self.endpoints.remove(&id),
            };
        }
        for (account, mailbox) in &to_start {
            self.spawn_mailbox(account, mailbox);
        }
        self.config.accounts = new.accounts;
        outcome.stopped = to_stop.iter().map(|(a, m)| format!("{a}/{m}")).collect();
        outcome.started = to_start
            .iter()
            .map(|(a, m)| format!("{}/{m}", a.id))
            .collect();
        metrics::gauge!(crate::metrics::CONFIG_RESTART_REQUIRED).set(
            if outcome.restart_required.is_empty() {
                0.0
            } else {
                1.0
            },
        );
        if !outcome.restart_required.is_empty() {
            tracing::warn!(
                sections = ?outcome.restart_required,
                "config changes in these sections need a restart; the running values stay"
            );
        }
        tracing::info!(started = ?outcome.started, stopped = ?outcome.stopped, "config reloaded");
        outcome
    }

    /// Reads `path` and reloads it. An invalid file changes nothing: the error is logged with
    /// file, line and key, and counted in `idlesync_config_reload_errors_total`.
    pub async fn reload_file(&mut self, path: &Path) -> Option<ReloadOutcome> {
        match Config::load(path) {
            Ok(c) => Some(self.reload(c).await),
            Err(errors) => {
                metrics::counter!(crate::metrics::CONFIG_RELOAD_ERRORS).increment(1);
                tracing::error!(errors = %errors, "config reload refused; the running config stays");
                None
            }
        }
    }

    /// Runs until `shutdown` resolves, reloading `config_path` on SIGHUP and when the file
    /// changes on disk; then stops.
    pub async fn run(
        mut self,
        config_path: Option<PathBuf>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let interval = self.config.reload.watch_interval;
        let mut watch = config_path
            .as_deref()
            .filter(|_| !interval.is_zero())
            .map(|p| FileWatch::new(p, interval));
        let mut hup = hangup_signal();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = recv_hangup(&mut hup) => {
                    if let Some(p) = &config_path {
                        tracing::info!("SIGHUP: reloading the config");
                        self.reload_file(p).await;
                    }
                }
                Some(()) = changed(&mut watch) => {
                    if let Some(p) = &config_path {
                        tracing::info!("config file changed: reloading");
                        self.reload_file(p).await;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// Stops everything, within about 10 s whatever the servers do.
    pub async fn shutdown(mut self) {
        let keys: Vec<_> = self.mailboxes.keys().cloned().collect();
        self.stop_mailboxes(&keys).await;
        self.publisher_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.publisher).await;
        self.publisher.abort();
        self.admin_cancel.cancel();
        tracing::info!("idlesync stopped");
    }
}

/// Whether two accounts differ only in their mailbox lists.
fn same_but_mailboxes(a: &Account, b: &Account) -> bool {
    let mut b = b.clone();
    b.mailboxes.clone_from(&a.mailboxes);
    *a == b
}

/// Watches a path by its metadata (mtime, size, inode), so a save by rename is seen. A change
/// is reported once it has been stable for one interval, so a half-written file is not read.
struct FileWatch {
    path: PathBuf,
    tick: tokio::time::Interval,
    seen: Option<Fingerprint>,
    pending: Option<Fingerprint>,
}

type Fingerprint = (Option<std::time::SystemTime>, u64, u64);

impl FileWatch {
    fn new(path: &Path, every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            path: path.to_path_buf(),
            tick,
            seen: fingerprint(path),
            pending: None,
        }
    }

    async fn changed(&mut self) {
        loop {
            self.tick.tick().await;
            let now = fingerprint(&self.path);
            if now == self.seen {
                self.pending = None;
            } else if self.pending.is_some() && now == self.pending {
                self.seen = now;
                self.pending = None;
                return;
            } else {
                self.pending = now;
            }
        }
    }
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

async fn changed(watch: &mut Option<FileWatch>) -> Option<()> {
    match watch {
        Some(w) => {
            w.changed().await;
            Some(())
        }
        None => std::future::pending().await,
    }
}

fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

async fn recv_hangup(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
