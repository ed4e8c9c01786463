//! Live reload of the account list against real Dovecot: added accounts start, removed ones
//! stop and leave /status and /metrics, changed ones restart, untouched mailboxes keep their
//! connection, an invalid edit changes nothing, and non-reloadable sections are reported.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use common::daemon::{config_toml, mail, AccountSpec};
use common::db::TestDb;
use common::dovecot::Dovecot;
use common::proxy::Proxy;
use common::redis;
use idlesync::status::MailboxState;
use idlesync::{Config, Daemon};

const WAIT: Duration = Duration::from_secs(15);
const PW: &str = "reload-pw-1";

fn acc<'a>(id: &'a str, user: &'a str, port: u16, mailboxes: &'a [&'a str]) -> AccountSpec<'a> {
    AccountSpec::implicit(id, user, PW, port, mailboxes)
}

/// Writes the file as editors do: a temp file renamed over the old one.
fn save(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The set of `account/mailbox` idling on the board equals `want`.
async fn wait_idling_exactly(board: &idlesync::status::StatusBoard, want: &[&str]) -> Result<()> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let ok = board
        .wait_for(WAIT, |s| {
            let mut have: Vec<String> = s
                .iter()
                .map(|m| format!("{}/{}", m.account, m.mailbox))
                .collect();
            have.sort();
            have == want && s.iter().all(|m| m.state == MailboxState::Idling)
        })
        .await;
    anyhow::ensure!(ok, "want {want:?} idling, have {:?}", board.snapshot());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_restarts_only_what_changed() -> Result<()> {
    let dc = Dovecot::start(&[("ra", PW), ("rb", PW), ("rc", PW), ("rd", PW)])?;
    dc.create_mailbox("ra", "Work").await?;
    dc.create_mailbox("ra", "Archive").await?;
    let proxy_a = Proxy::start(dc.imaps_addr()).await?;
    let proxy_b = Proxy::start(dc.imaps_addr()).await?;
    let db = TestDb::sqlite()?;
    let channel = redis::unique_channel("reload");
    let mut sub = redis::subscribe(&redis::url(), &channel).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("idlesync.toml");
    let reload = "[reload]\nwatch_interval = \"200ms\"\n\n";
    let text = |accounts: &[AccountSpec<'_>]| {
        format!(
            "{reload}{}",
            config_toml(
                &db.url,
                Some((&redis::url(), &channel)),
                dc.ca_file(),
                accounts
            )
        )
    };
    let first = text(&[
        acc("rl-a", "ra", proxy_a.addr().port(), &["INBOX", "Work"]),
        acc("rl-b", "rb", proxy_b.addr().port(), &["INBOX"]),
        acc("rl-c", "rc", dc.imaps_port(), &["INBOX"]),
    ]);
    save(&path, &first)?;
    common::init_logs();
    let d = Daemon::start(Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
    let board = d.board().clone();
    let admin = d.admin_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(d.run(Some(path.clone()), async {
        let _ = stop_rx.await;
    }));
    wait_idling_exactly(
        &board,
        &["rl-a/INBOX", "rl-a/Work", "rl-b/INBOX", "rl-c/INBOX"],
    )
    .await?;
    let metrics = common::http_get(admin, "/metrics").await?;
    assert!(metrics.contains(r#"account="rl-c""#));

    // A gains a mailbox, B changes (its address), C goes, D comes.
    let second = text(&[
        acc(
            "rl-a",
            "ra",
            proxy_a.addr().port(),
            &["INBOX", "Work", "Archive"],
        ),
        acc("rl-b", "rb", proxy_b.addr().port(), &["INBOX"]),
        acc("rl-d", "rd", dc.imaps_port(), &["INBOX"]),
    ])
    .replace(
        "email = \"rb@example.test\"",
        "email = \"rb-new@example.test\"",
    );
    assert_ne!(second, first);
    save(&path, &second)?;
    wait_idling_exactly(
        &board,
        &[
            "rl-a/Archive",
            "rl-a/INBOX",
            "rl-a/Work",
            "rl-b/INBOX",
            "rl-d/INBOX",
        ],
    )
    .await?;
    assert_eq!(
        proxy_a.connections(),
        3,
        "A's INBOX and Work kept their connections; Archive is new"
    );
    assert_eq!(proxy_b.connections(), 2, "B restarted once");
    let metrics = common::http_get(admin, "/metrics").await?;
    assert!(
        !metrics.contains(r#"account="rl-c""#),
        "C's series left /metrics"
    );
    assert!(metrics.contains(r#"account="rl-d""#));
    let uid = dc.append("rb", "INBOX", &mail("after-reload")).await?;
    let rec = sub.next(WAIT).await?;
    assert_eq!(rec["emailAddress"], "rb-new@example.test", "{rec}");
    assert_eq!(rec["uids"], serde_json::json!([uid]));

    // An invalid edit changes nothing, and is counted.
    let errors_before = reload_errors(admin).await?;
    let invalid = second.replace("[imap]\n", "[imap]\nbogus_key = 1\n");
    assert_ne!(invalid, second);
    save(&path, &invalid)?;
    common::wait_until(WAIT, || async {
        Ok(reload_errors(admin).await? > errors_before)
    })
    .await
    .context("the invalid edit was not counted")?;
    assert_eq!((proxy_a.connections(), proxy_b.connections()), (3, 2));
    assert_eq!(board.snapshot().len(), 5);

    // A section that needs a restart is reported, and the accounts are left alone.
    save(
        &path,
        &second.replace("max_connections = 4", "max_connections = 5"),
    )?;
    common::wait_until(WAIT, || async {
        let m = common::http_get(admin, "/metrics").await?;
        Ok(m.contains("idlesync_config_restart_required 1"))
    })
    .await?;
    assert_eq!((proxy_a.connections(), proxy_b.connections()), (3, 2));

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), running).await??;
    Ok(())
}

async fn reload_errors(admin: std::net::SocketAddr) -> Result<u64> {
    let m = common::http_get(admin, "/metrics").await?;
    Ok(m.lines()
        .find_map(|l| l.strip_prefix("idlesync_config_reload_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// With the file watch off, SIGHUP alone applies an edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() -> Result<()> {
    // Our own handler first, so a SIGHUP can never take the default action (exit).
    let _guard = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let dc = Dovecot::start(&[("rh", PW)])?;
    dc.create_mailbox("rh", "Work").await?;
    let db = TestDb::sqlite()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("idlesync.toml");
    let text = |mbs: &[&str]| {
        format!(
            "[reload]\nwatch_interval = \"0s\"\n\n{}",
            config_toml(
                &db.url,
                None,
                dc.ca_file(),
                &[acc("rl-hup", "rh", dc.imaps_port(), mbs)]
            )
        )
    };
    save(&path, &text(&["INBOX"]))?;
    let d = Daemon::start(Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
    let board = d.board().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(d.run(Some(path.clone()), async {
        let _ = stop_rx.await;
    }));
    wait_idling_exactly(&board, &["rl-hup/INBOX"]).await?;
    save(&path, &text(&["INBOX", "Work"]))?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()?;
    assert!(status.success());
    wait_idling_exactly(&board, &["rl-hup/INBOX", "rl-hup/Work"]).await?;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), running).await??;
    Ok(())
}
