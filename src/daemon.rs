//! The daemon as a whole: what starts in which order, and how it stops.
//!
//! Start: store (+ migrations) → metrics → everything that can fail (the admin listener's
//! bind, the Redis URL, every account's TLS setup) → then the tasks: mailboxes (through the
//! [`Supervisor`]), publisher, admin listener. Nothing is spawned before the last fallible
//! step, and every task hangs off one root token, so a failed start leaves nothing running.
//! Reload: [`crate::reload`] says when, the [`Supervisor`] applies the new account list.
//! Stop: the supervisor stops the mailboxes (DONE, LOGOUT, bounded by a grace period), then
//! the publisher makes a last pass, then the admin listener closes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::api::{ApiState, Tokens};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::imap::ImapError;
use crate::limiter::ConnectLimiter;
use crate::publish::{PublishError, Publisher, Sink};
use crate::reload::{Trigger, Triggers};
use crate::status::StatusBoard;
use crate::store::{Store, StoreError};
use crate::supervisor::{Shared, Stopped, Supervisor};

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
    /// The API's bearer tokens could not be read.
    #[error("api.{key}: {source}")]
    ApiToken {
        /// The key of the source.
        key: &'static str,
        /// Why (never the token).
        source: crate::secrets::SecretError,
    },
    /// An account's TLS setup (its `ca_file`) is unusable.
    #[error("account {account}: {source}")]
    Account {
        /// Account id.
        account: String,
        /// Why.
        source: ImapError,
    },
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
    /// The config as started; the account list in force is the supervisor's.
    config: Config,
    supervisor: Supervisor,
    store: Store,
    board: Arc<StatusBoard>,
    publisher: JoinHandle<()>,
    publisher_cancel: CancellationToken,
    admin_cancel: CancellationToken,
    admin_addr: SocketAddr,
    /// Cluster mode's lease loop, driven by [`Daemon::run`].
    cluster: Option<Cluster>,
    /// The web app's API, when `[api]` is configured.
    api: Option<Api>,
}

/// The API listener of a running daemon.
struct Api {
    state: ApiState,
    cancel: CancellationToken,
    addr: SocketAddr,
}

impl Daemon {
    /// Starts everything. Returns once the admin listener is bound and every mailbox task is
    /// spawned (not yet connected: see [`Daemon::board`]). On error nothing is left running.
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        Self::start_with_grace(config, MAILBOX_GRACE).await
    }

    /// [`Daemon::start`] with another grace period for mailboxes to stop (tests).
    pub async fn start_with_grace(config: Config, grace: Duration) -> Result<Daemon, DaemonError> {
        let cluster_cfg = config.cluster.enabled.then_some(&config.cluster);
        // A transaction idle this long belongs to a paused replica: see Store::connect_with.
        let idle_tx = cluster_cfg.map(|c| (c.lease_ttl / 3).max(Duration::from_millis(200)));
        let store = Store::connect_with(&config.storage, idle_tx).await?;
        store.migrate().await?;
        let metrics = crate::metrics::install();
        let board = Arc::new(StatusBoard::default());

        // Every fallible step before the first task.
        let listen = config.metrics.listen;
        let bind_error = |source| DaemonError::Listen {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let admin_addr = listener.local_addr().map_err(bind_error)?;
        let api_listener = match &config.api {
            Some(api) => {
                let tokens = api
                    .tokens()
                    .await
                    .map_err(|(key, source)| DaemonError::ApiToken { key, source })?;
                let bind_error = |source| DaemonError::Listen {
                    addr: api.listen,
                    source,
                };
                let l = tokio::net::TcpListener::bind(api.listen)
                    .await
                    .map_err(bind_error)?;
                let addr = l.local_addr().map_err(bind_error)?;
                Some((l, addr, Tokens::new(tokens)))
            }
            None => None,
        };
        let sink = Sink::from_config(config.redis.as_ref())?;
        let (handoff, inbox) = crate::handoff::handoff();
        let root = CancellationToken::new();
        let (cluster, link) = match cluster_cfg {
            Some(c) => {
                let (cluster, link) =
                    Cluster::new(c, &config.storage.url, store.clone(), handoff.clone());
                (Some(cluster), Some(link))
            }
            None => (None, None),
        };
        let node = link.as_ref().map(|l| l.node.clone());
        let signals = crate::actions::Signals::new(cluster_cfg.map(|_| store.clone()));

        let mut supervisor = Supervisor::new(
            Shared {
                store: store.clone(),
                handoff,
                board: board.clone(),
                limiter: Arc::new(ConnectLimiter::new(
                    config.imap.connects_per_second,
                    config.imap.max_connecting,
                )),
                imap: config.imap.clone(),
                backoff: config.backoff.clone(),
                import_since: config.storage.import_since,
                grace,
                cluster: link,
                signals: signals.clone(),
            },
            root.child_token(),
        );
        supervisor
            .start(&config.accounts)
            .map_err(|(account, source)| DaemonError::Account { account, source })?;

        let publisher_cancel = root.child_token();
        tokio::spawn(crate::search::backfill::run(
            store.clone(),
            publisher_cancel.clone(),
        ));
        if cluster_cfg.is_some() {
            // Wake-ups from the API of any replica, completions for waiting requests; ends
            // with the publisher, once the mailboxes are stopped.
            let listen = signals.clone().listen(config.storage.url.clone());
            let cancel = publisher_cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = listen => {}
                    () = cancel.cancelled() => {}
                }
            });
        }
        let publisher = tokio::spawn(
            Publisher {
                store: store.clone(),
                sink,
                inbox,
                board: board.clone(),
                backoff: crate::publish::retry_schedule(&config.backoff, config.redis.as_ref()),
                bounds: config.outbox.clone(),
                owner: node.clone(),
            }
            .run(publisher_cancel.clone()),
        );
        let admin_cancel = root.child_token();
        tokio::spawn(admin::serve(
            listener,
            AdminState {
                metrics,
                board: board.clone(),
                store: store.clone(),
                node: node.clone(),
                heartbeat: cluster.as_ref().map(Cluster::heartbeat),
            },
            admin_cancel.clone(),
        ));
        let api = api_listener.map(|(listener, addr, tokens)| {
            let cancel = root.child_token();
            let timeout = config
                .api
                .as_ref()
                .map_or(Duration::from_secs(300), |a| a.action_timeout);
            let state = ApiState::new(
                store.clone(),
                &config.accounts,
                tokens,
                CancellationToken::new(),
                signals.clone(),
                timeout,
            );
            tokio::spawn(crate::api::serve(listener, state.clone(), cancel.clone()));
            let every = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
            tokio::spawn(crate::actions::sweeper::run(
                store.clone(),
                signals.clone(),
                every,
                cancel.clone(),
            ));
            tracing::info!(api = %addr, "API listening");
            Api {
                state,
                cancel,
                addr,
            }
        });
        match &node {
            Some(node) => tracing::info!(
                mailboxes = supervisor.mailboxes().len(),
                node = %node,
                admin = %admin_addr,
                "idlesync started in cluster mode: mailboxes start as their leases are taken"
            ),
            None => {
                tracing::info!(mailboxes = supervisor.len(), admin = %admin_addr, "idlesync started")
            }
        }
        Ok(Daemon {
            config,
            supervisor,
            store,
            board,
            publisher,
            publisher_cancel,
            admin_cancel,
            admin_addr,
            cluster,
            api,
        })
    }

    /// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where the web app's API is served, when `[api]` is configured.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|a| a.addr)
    }

    /// The mailbox states.
    pub fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    /// The store the daemon writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies a new config: the account list through the supervisor; sections that only a
    /// restart can change are reported, and otherwise ignored.
    pub async fn reload(&mut self, new: Config) -> ReloadOutcome {
        let old = &self.config;
        let restart_required: Vec<&'static str> = [
            ("storage", old.storage != new.storage),
            ("redis", old.redis != new.redis),
            ("metrics", old.metrics != new.metrics),
            ("imap", old.imap != new.imap),
            ("backoff", old.backoff != new.backoff),
            ("outbox", old.outbox != new.outbox),
            ("cluster", old.cluster != new.cluster),
            (
                "api",
                old.api.as_ref().map(|a| (a.listen, a.action_timeout))
                    != new.api.as_ref().map(|a| (a.listen, a.action_timeout)),
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if let (Some(api), Some(cfg)) = (&self.api, &new.api) {
            api.state.set_accounts(&new.accounts);
            // Token rotation: the new sources are read now; on failure the old tokens stay.
            match cfg.tokens().await {
                Ok(tokens) => api.state.tokens().replace(tokens),
                Err((key, e)) => tracing::error!(
                    key = %format!("api.{key}"), error = %e,
                    "API tokens not reloaded; the running tokens stay"
                ),
            }
        }
        let applied = self.supervisor.apply(new.accounts).await;
        metrics::gauge!(crate::metrics::CONFIG_RESTART_REQUIRED).set(
            if restart_required.is_empty() {
                0.0
            } else {
                1.0
            },
        );
        if !restart_required.is_empty() {
            tracing::warn!(
                sections = ?restart_required,
                "config changes in these sections need a restart; the running values stay"
            );
        }
        if self.supervisor.accounts().is_empty() {
            tracing::warn!("the reloaded config has no [[accounts]]: no mailbox is watched");
        }
        tracing::info!(started = ?applied.started, stopped = ?applied.stopped, "config reloaded");
        ReloadOutcome {
            started: applied.started,
            stopped: applied.stopped,
            restart_required,
        }
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
        let mut triggers = Triggers::new(config_path.as_deref(), self.config.reload.watch_interval);
        let mut cluster = self.cluster.take();
        loop {
            let lease_round = async {
                match cluster.as_mut() {
                    Some(c) => c.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                () = lease_round => {
                    if let Some(c) = cluster.as_mut() {
                        c.tick(&mut self.supervisor).await;
                    }
                }
                trigger = triggers.next() => {
                    let Some(p) = &config_path else { continue };
                    match trigger {
                        Trigger::Hangup => tracing::info!("SIGHUP: reloading the config"),
                        Trigger::FileChanged => tracing::info!("config file changed: reloading"),
                    }
                    self.reload_file(p).await;
                    // Lease rows for added mailboxes, releases for removed ones, at once.
                    if let Some(c) = cluster.as_mut() {
                        c.tick(&mut self.supervisor).await;
                    }
                }
            }
        }
        self.cluster = cluster;
        self.shutdown().await;
    }

    /// Stops everything, within about 10 s whatever the servers do. Returns how the mailboxes
    /// stopped.
    pub async fn shutdown(mut self) -> Stopped {
        // New work is refused (503) from here on; reads go on until the listener closes.
        if let Some(api) = &self.api {
            api.state.stopping().cancel();
        }
        let stopped = self.supervisor.shutdown().await;
        self.publisher_cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(3), &mut self.publisher)
            .await
            .is_err()
        {
            self.publisher.abort();
            let _ = (&mut self.publisher).await;
        }
        // Only now, with every mailbox logged out and the outbox drained: the others take over
        // at once instead of after lease_ttl.
        if let Some(c) = self.cluster.take() {
            c.leave().await;
        }
        self.admin_cancel.cancel();
        if let Some(api) = &self.api {
            api.cancel.cancel();
        }
        tracing::info!("idlesync stopped");
        stopped
    }
}
