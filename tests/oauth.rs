//! OAuth2 against real Dovecot: XOAUTH2 and OAUTHBEARER with tokens from `oauth2_token_command`,
//! checked by Dovecot's `oauth2` passdb against a token-introspection endpoint this test serves
//! on 127.0.0.1 (tests/common/oauth.rs). No scripted IMAP server is involved.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::daemon::{start, wait_idling, AccountSpec};
use common::db::TestDb;
use common::dovecot::{Dovecot, DovecotOptions};
use common::oauth::{runs, token_script, Introspection};
use common::setup::ConfigToml;
use idlesync::status::MailboxState;

const WAIT: Duration = Duration::from_secs(15);

fn dovecot(users: &[(&str, &str)], idp: &Introspection) -> Result<Dovecot> {
    Dovecot::start_with(DovecotOptions {
        users: users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect(),
        extra_config: idp.dovecot_config(),
        ..DovecotOptions::default()
    })
}

fn config(
    db: &str,
    dc: &Dovecot,
    id: &str,
    user: &str,
    auth: &str,
    command: &str,
    mailboxes: &[&str],
) -> String {
    let account = AccountSpec::implicit(id, user, "", dc.imaps_port(), mailboxes);
    ConfigToml::new(db)
        .set("backoff", "max", "1s")
        .set("backoff", "auth_failed", "1h")
        .account(&account, Some(dc.ca_file()))
        .account_unset("password")
        .account_set("auth", auth)
        .account_set("oauth2_token_command", command)
        .render()
}

/// XOAUTH2: two mailboxes share one token (the command runs once); when the server stops
/// accepting it, the next login fetches a new one at once instead of waiting `auth_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_token_command_is_cached_and_refreshed_after_a_refusal() -> Result<()> {
    let idp = Introspection::start().await?;
    let dc = dovecot(&[("carol", "carol-password")], &idp)?;
    dc.create_mailbox("carol", "Work").await?;
    let db = TestDb::sqlite()?;
    let dir = tempfile::tempdir()?;
    let (script, counter) = token_script(dir.path(), "carol", "tok-carol", true)?;
    idp.accept("tok-carol-1", "carol");
    idp.accept("tok-carol-2", "carol");

    let toml = config(
        &db.url,
        &dc,
        "oauth-x-1",
        "carol",
        "xoauth2",
        &script.display().to_string(),
        &["INBOX", "Work"],
    );
    let d = start(&toml).await?;
    wait_idling(&d, 2, WAIT).await?;
    ensure!(
        runs(&counter) == 1,
        "the token command ran {} times for two mailboxes",
        runs(&counter)
    );
    ensure!(
        idp.requests() >= 2,
        "Dovecot never asked the introspection endpoint"
    );

    // Revoke the cached token and drop the connections: both mailboxes log in again.
    idp.revoke("tok-carol-1");
    dc.doveadm(&["kick", "carol"])?;
    let back = d
        .board()
        .wait_for(WAIT, |s| {
            s.len() == 2
                && s.iter()
                    .all(|m| m.reconnects >= 1 && m.state == MailboxState::Idling)
        })
        .await;
    ensure!(
        back,
        "not back to idling: {:?}\n{}",
        d.board().snapshot(),
        dc.log()
    );
    ensure!(
        runs(&counter) == 2,
        "token command ran {} times, wanted 2",
        runs(&counter)
    );
    ensure!(
        d.board()
            .snapshot()
            .iter()
            .all(|m| m.last_error != Some("auth")),
        "{:?}",
        d.board().snapshot()
    );

    // New mail arrives through the OAuth2 session.
    let uid = dc
        .append("carol", "INBOX", &common::daemon::mail("oauth-1"))
        .await?;
    let stored = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter()
                .any(|m| m.mailbox == "INBOX" && m.last_uid == Some(uid))
        })
        .await;
    ensure!(stored, "{:?}", d.board().snapshot());
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await?;
    Ok(())
}

/// OAUTHBEARER with a bare token; a token the server refuses even when fresh puts the mailbox in
/// `auth_failed` (the slow schedule), with the error counted as `auth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_bare_token_and_a_refused_token() -> Result<()> {
    let idp = Introspection::start().await?;
    let dc = dovecot(&[("dave", "dave-password")], &idp)?;
    let db = TestDb::sqlite()?;
    let dir = tempfile::tempdir()?;
    let (script, counter) = token_script(dir.path(), "dave", "bare-dave", false)?;
    idp.accept("bare-dave-1", "dave");

    let toml = config(
        &db.url,
        &dc,
        "oauth-b-1",
        "dave",
        "oauthbearer",
        &script.display().to_string(),
        &["INBOX"],
    );
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;
    ensure!(runs(&counter) == 1);

    // Every token is refused now: cached one refused, a fresh one refused too → auth_failed.
    idp.revoke("bare-dave-1");
    dc.doveadm(&["kick", "dave"])?;
    let failed = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter()
                .all(|m| m.state == MailboxState::AuthFailed && m.last_error == Some("auth"))
        })
        .await;
    ensure!(failed, "{:?}\n{}", d.board().snapshot(), dc.log());
    ensure!(
        runs(&counter) == 2,
        "token command ran {} times, wanted 2",
        runs(&counter)
    );
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await?;
    Ok(())
}
