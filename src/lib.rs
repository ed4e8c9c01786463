//! idlesync: new mail in a web app the instant it reaches the mailbox.
//!
//! # Layout
//! - [`config`]: the operator's TOML file, validation with file/line/key, secrets.
//! - [`daemon`]: start-up and shutdown of the whole: store, publisher, admin listener, mailboxes.
//! - [`supervisor`]: owns the mailbox tasks: spawn, reload diff, stop; restarts, panics caught.
//! - [`cluster`]: cluster mode: leases in PostgreSQL, fair shares, handover, fencing epochs.
//! - [`backoff`]: error classes and their retry schedules (pure).
//! - [`reload`]: SIGHUP and the config file watch.
//! - [`mailbox`]: one connection's life: connect → select → catch up → idle ⇄ fetch → commit.
//! - [`imap`]: TLS, login, IDLE with its timers, `UID FETCH`.
//! - [`message`]: raw bytes → [`message::MessageRecord`] (pure).
//! - [`store`]: migrations, sync state, the batch transaction, the outbox (PostgreSQL or SQLite).
//! - [`event`]: the `email:sync` record (the web app's contract).
//! - [`handoff`]: the queue of committed records from the mailboxes to the publisher.
//! - [`publish`]: drains the outbox to Redis or stdout.
//! - [`status`] and [`metrics`]: mailbox states, metric names and handles.
//! - [`secrets`]: passwords and OAuth2 tokens from env, files and commands, never shown.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/status` and a status page.
//! - [`limiter`]: connection attempts per host; [`fault`]: test-only fault injection.

pub mod actions;
pub mod admin;
pub mod api;
pub mod backoff;
pub mod changes;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod event;
pub mod fault;
pub mod handoff;
pub mod imap;
pub mod limiter;
pub mod mailbox;
pub mod mailbox_name;
pub mod message;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod search;
pub mod secrets;
pub mod status;
pub mod store;
pub mod submit;
pub mod supervisor;

pub use config::Config;
pub use daemon::{Daemon, DaemonError};
