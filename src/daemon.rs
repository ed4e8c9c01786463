//! The daemon as a whole: what starts in which order, and how it stops.
//!
//! Start: store (+ migrations) → metrics → admin listener → publisher → one supervised task per
//! mailbox. Stop: cancel the mailboxes (they leave IDLE with DONE and LOGOUT), wait up to a
//! grace period, abort what remains, then let the publisher make a last pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::imap::connect::Endpoint;
use crate::imap::ImapError;
use crate::mailbox::MailboxCtx;
use crate::publish::{self, PublishError, Sink};
use crate::status::{Reporter, StatusBoard};
use crate::store::{Store, StoreError};
use crate::supervisor;

/// How long mailboxes get to leave IDLE and log out on shutdown.
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

/// A running daemon.
pub struct Daemon {
    mailboxes: JoinSet<()>,
    mailbox_cancel: CancellationToken,
    publisher: JoinHandle<()>,
    publisher_cancel: CancellationToken,
    admin_cancel: CancellationToken,
    admin_addr: SocketAddr,
    board: Arc<StatusBoard>,
    store: Store,
}

impl Daemon {
    /// Starts everything. Returns once the admin listener is bound and every mailbox task is
    /// spawned (not yet connected: see [`Daemon::board`]).
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        let store = Store::connect(&config.storage).await?;
        store.migrate().await?;
        let metrics = crate::metrics::install();
        let board = Arc::new(StatusBoard::default());

        let listener = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: config.metrics.listen,
                source,
            })?;
        let admin_addr = listener
            .local_addr()
            .map_err(|source| DaemonError::Listen {
                addr: config.metrics.listen,
                source,
            })?;
        let admin_cancel = CancellationToken::new();
        tokio::spawn(admin::serve(
            listener,
            AdminState {
                metrics,
                board: board.clone(),
            },
            admin_cancel.clone(),
        ));

        let sink = Sink::from_config(config.redis.as_ref())?;
        let wake = Arc::new(Notify::new());
        let publisher_cancel = CancellationToken::new();
        let publisher = tokio::spawn(publish::run(
            store.clone(),
            sink,
            wake.clone(),
            config.backoff.clone(),
            publisher_cancel.clone(),
        ));

        let mailbox_cancel = CancellationToken::new();
        let mut mailboxes = JoinSet::new();
        for account in &config.accounts {
            let endpoint = Arc::new(Endpoint::from_account(account).map_err(|source| {
                DaemonError::Account {
                    account: account.id.clone(),
                    source,
                }
            })?);
            for mailbox in &account.mailboxes {
                let ctx = MailboxCtx {
                    account_id: account.id.clone(),
                    email: account.email.clone(),
                    mailbox: mailbox.clone(),
                    endpoint: endpoint.clone(),
                    timers: config.imap.clone(),
                    store: store.clone(),
                    outbox: wake.clone(),
                    reporter: Reporter::new(board.clone(), &account.id, mailbox),
                };
                supervisor::spawn_mailbox(
                    &mut mailboxes,
                    ctx,
                    config.backoff.clone(),
                    mailbox_cancel.child_token(),
                );
            }
        }
        tracing::info!(
            mailboxes = mailboxes.len(),
            admin = %admin_addr,
            "idlesync started"
        );
        Ok(Daemon {
            mailboxes,
            mailbox_cancel,
            publisher,
            publisher_cancel,
            admin_cancel,
            admin_addr,
            board,
            store,
        })
    }

    /// Where `/metrics`, `/healthz` and `/status` are served.
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

    /// Stops everything, within about 10 s whatever the servers do.
    pub async fn shutdown(mut self) {
        self.mailbox_cancel.cancel();
        let all_done = async { while self.mailboxes.join_next().await.is_some() {} };
        if tokio::time::timeout(MAILBOX_GRACE, all_done).await.is_err() {
            tracing::warn!(
                left = self.mailboxes.len(),
                "mailboxes did not stop in time; aborting them"
            );
            self.mailboxes.shutdown().await;
        }
        self.publisher_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.publisher).await;
        self.publisher.abort();
        self.admin_cancel.cancel();
        tracing::info!("idlesync stopped");
    }

    /// Runs until `shutdown` resolves, then stops.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        self.shutdown().await;
    }
}
