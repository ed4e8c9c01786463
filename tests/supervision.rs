//! The supervisor against real Dovecot and a scripted server: each error class gets its own
//! schedule and state, a failed start leaves nothing running, and shutdown during a long first
//! import stops between messages instead of being aborted.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use common::daemon::{config_toml, mail, start, AccountSpec};
use common::db::TestDb;
use common::dovecot::Dovecot;
use common::setup::ConfigToml;
use idlesync::status::MailboxStatus;
use idlesync::{Config, Daemon};

const T: Duration = Duration::from_secs(30);

fn parse(toml: &str) -> Result<Config> {
    Config::parse(Path::new("test.toml"), toml.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Waits until the only mailbox on the board satisfies `pred`; returns its status.
async fn wait_mailbox(d: &Daemon, pred: impl Fn(&MailboxStatus) -> bool) -> Result<MailboxStatus> {
    let ok = d
        .board()
        .wait_for(T, |s| s.first().is_some_and(&pred))
        .await;
    anyhow::ensure!(ok, "condition not met: {:?}", d.board().snapshot());
    d.board()
        .snapshot()
        .into_iter()
        .next()
        .context("no mailbox")
}

/// Seconds from now until an RFC 3339 time.
fn secs_until(rfc3339: &str) -> Result<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339)?;
    let now: chrono::DateTime<chrono::Utc> = SystemTime::now().into();
    Ok((at.with_timezone(&chrono::Utc) - now).num_seconds())
}

#[tokio::test]
async fn retry_classes_missing_mailbox_is_failed_and_retried_slowly() -> Result<()> {
    let dc = Dovecot::start(&[("cls1", "cls-pw-1")])?;
    let db = TestDb::sqlite()?;
    let acct = AccountSpec::implicit("cls1", "cls1", "cls-pw-1", dc.imaps_port(), &["NoSuchBox"]);
    let d = start(&config_toml(&db.url, None, dc.ca_file(), &[acct])).await?;
    let m = wait_mailbox(&d, |m| m.last_error.is_some()).await?;
    // Before: state "backoff", retried on the fast schedule (2 s here) for ever.
    assert_eq!(m.state.as_str(), "failed", "{m:?}");
    assert_eq!(m.error_class, Some("config_or_server"), "{m:?}");
    assert_eq!(m.last_error, Some("select"), "{m:?}");
    let retry = secs_until(m.next_retry_at.as_deref().context("next retry")?)?;
    assert!(retry > 14 * 60, "retried in {retry} s: {m:?}");
    assert!(!m.is_ready(), "a failed mailbox is not ready");
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn retry_classes_failing_token_command_is_secret_source_not_auth_failed() -> Result<()> {
    let dc = Dovecot::start(&[("cls2", "cls-pw-2")])?;
    let db = TestDb::sqlite()?;
    let acct = AccountSpec::implicit("cls2", "cls2", "cls-pw-2", dc.imaps_port(), &["INBOX"]);
    let toml = config_toml(&db.url, None, dc.ca_file(), &[acct])
        .replace("password = \"cls-pw-2\"", "password_command = \"exit 3\"");
    let d = start(&toml).await?;
    let m = wait_mailbox(&d, |m| m.last_error.is_some()).await?;
    // Before: "auth_failed", parked for 15 minutes as if the password were wrong.
    assert_eq!(m.state.as_str(), "backoff", "{m:?}");
    assert_eq!(m.error_class, Some("secret_source"), "{m:?}");
    assert_eq!(m.last_error, Some("secret"), "{m:?}");
    let retry = secs_until(m.next_retry_at.as_deref().context("next retry")?)?;
    assert!(retry <= 5 * 60, "retried in {retry} s: {m:?}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn retry_classes_wrong_password_is_credentials() -> Result<()> {
    let dc = Dovecot::start(&[("cls3", "cls-pw-3")])?;
    let db = TestDb::sqlite()?;
    let acct = AccountSpec::implicit("cls3", "cls3", "wrong", dc.imaps_port(), &["INBOX"]);
    let d = start(&config_toml(&db.url, None, dc.ca_file(), &[acct])).await?;
    let m = wait_mailbox(&d, |m| m.last_error.is_some()).await?;
    assert_eq!(m.state.as_str(), "auth_failed", "{m:?}");
    assert_eq!(m.error_class, Some("credentials"), "{m:?}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn leaked_tasks_on_failed_start_up_release_the_admin_port() -> Result<()> {
    let dc = Dovecot::start(&[("leak1", "leak-pw-1")])?;
    let db = TestDb::sqlite()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    std::fs::copy(dc.ca_file(), &ca)?;
    let acct = AccountSpec::implicit("leak1", "leak1", "leak-pw-1", dc.imaps_port(), &["INBOX"]);
    let toml = ConfigToml::new(&db.url)
        .set("metrics", "listen", format!("127.0.0.1:{port}"))
        .account(&acct, Some(&ca));
    let config = parse(&toml.render())?;
    // Between validation and start the CA file goes bad (an operator's edit, a rotation).
    std::fs::write(&ca, "not a certificate")?;
    let err = match Daemon::start(config).await {
        Ok(_) => anyhow::bail!("start must fail on an unusable ca_file"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("leak1"), "{err}");
    // Before: the admin listener (and the publisher) were already spawned and kept running.
    std::net::TcpListener::bind(("127.0.0.1", port))
        .context("the failed start still holds the admin port")?;
    Ok(())
}

#[tokio::test]
async fn cancellation_ignored_during_import_shutdown_stops_between_messages() -> Result<()> {
    let messages: Vec<Vec<u8>> = (0..2000).map(|i| mail(&format!("slow-{i}"))).collect();
    // 2,000 × 20 ms: the import takes at least 40 s, longer than the grace period below.
    let server = common::scripted::start_slow(messages, Duration::from_millis(20)).await?;
    let db = TestDb::sqlite()?;
    let acct = AccountSpec {
        id: "slow1",
        user: "slow1",
        password: "pw",
        tls: "none",
        port: server.port,
        mailboxes: &["INBOX"],
    };
    let toml = ConfigToml::new(&db.url)
        .set("imap", "fetch_batch", 20u32)
        .account(&acct, None);
    common::init_logs();
    let d = Daemon::start_with_grace(parse(&toml.render())?, Duration::from_secs(30)).await?;
    wait_mailbox(&d, |m| m.last_uid.is_some_and(|u| u >= 60)).await?;
    let stopped = tokio::time::timeout(Duration::from_secs(60), d.shutdown())
        .await
        .context("shutdown did not end")?;
    // Before: the fetch went on until the grace period ran out, and the task was aborted.
    assert_eq!(stopped.aborted, 0, "{stopped:?}");
    assert_eq!(stopped.clean, 1, "{stopped:?}");
    let rows = db.messages("slow1").await?;
    assert!(rows.len() >= 60 && rows.len() < 2000, "{} rows", rows.len());
    Ok(())
}
