//! Starting the daemon in-process against test servers, from a real TOML config.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use idlesync::status::MailboxState;
use idlesync::{Config, Daemon};

use super::setup::ConfigToml;

/// One `[[accounts]]` entry for a test config.
pub struct AccountSpec<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// `implicit`, `starttls` or `none`
    pub tls: &'a str,
    pub port: u16,
    pub mailboxes: &'a [&'a str],
}

impl<'a> AccountSpec<'a> {
    /// An account over implicit TLS.
    pub fn implicit(
        id: &'a str,
        user: &'a str,
        password: &'a str,
        port: u16,
        mailboxes: &'a [&'a str],
    ) -> Self {
        AccountSpec {
            id,
            user,
            password,
            tls: "implicit",
            port,
            mailboxes,
        }
    }
}

/// A config file's text. `redis` is `(url, channel)`; without it records go to stdout. A
/// shorthand for [`ConfigToml`], which tests that need other keys use directly.
pub fn config_toml(
    db_url: &str,
    redis: Option<(&str, &str)>,
    ca_file: &Path,
    accounts: &[AccountSpec<'_>],
) -> String {
    let mut c = ConfigToml::new(db_url);
    if let Some((url, channel)) = redis {
        c = c.redis(url, channel);
    }
    for a in accounts {
        c = c.account(a, Some(ca_file));
    }
    c.render()
}

/// Parses `toml` exactly as `idlesync run` would, and starts the daemon.
pub async fn start(toml: &str) -> Result<Daemon> {
    super::init_logs();
    let config = Config::parse(Path::new("test.toml"), toml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Daemon::start(config).await.context("daemon start")
}

/// Waits until `n` mailboxes are idling.
pub async fn wait_idling(d: &Daemon, n: usize, timeout: Duration) -> Result<()> {
    let ok = d
        .board()
        .wait_for(timeout, |s| {
            s.iter().filter(|m| m.state == MailboxState::Idling).count() >= n
        })
        .await;
    anyhow::ensure!(
        ok,
        "not all idling within {timeout:?}: {:?}",
        d.board().snapshot()
    );
    Ok(())
}

/// A reply to `parent`'s [`mail`], so that the two share a thread.
pub fn reply(subject: &str, parent: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.test>\r\nTo: rcpt@example.test\r\nSubject: Re: {parent}\r\n\
         Message-ID: <{subject}@example.test>\r\nIn-Reply-To: <{parent}@example.test>\r\n\
         Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n\r\nBody of {subject}\r\n"
    )
    .into_bytes()
}

/// A small RFC 5322 message with a recognisable subject.
pub fn mail(subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.test>\r\nTo: rcpt@example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.test>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nBody of {subject}\r\n"
    )
    .into_bytes()
}

/// Waits until the only mailbox has reconnected at least once and is idling again.
pub async fn wait_reconnected_idling(d: &Daemon, timeout: Duration) -> Result<()> {
    let back = d
        .board()
        .wait_for(timeout, |s| {
            s.first()
                .is_some_and(|m| m.reconnects >= 1 && m.state == MailboxState::Idling)
        })
        .await;
    anyhow::ensure!(back, "not back to idling: {:?}", d.board().snapshot());
    Ok(())
}
