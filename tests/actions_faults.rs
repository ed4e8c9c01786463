//! Issue #19 (b) and (c): the capability paths and the conflicts of actions, against real
//! Dovecot.
//! - (b) A Dovecot that hides MOVE: a move is UID COPY + `\Deleted` + UID EXPUNGE of that UID
//!   only, and another client's `\Deleted` message survives it.
//! - (c) An action on a message another client expunged meanwhile ends `failed`/`gone`; a flag
//!   another client set between the request and its execution survives a `-FLAGS` of another
//!   flag; an action accepted before a restart runs once after it.
//!
//! The conflicts need an action accepted while its mailbox is not connected: the account goes
//! through a plaintext proxy that refuses connections for a while.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::actions::{act, ids, next_of, to};
use common::api::{token_file, Client};
use common::daemon::{mail, wait_idling, AccountSpec};
use common::db::{Kind, TestDb};
use common::dovecot::{Dovecot, DovecotOptions};
use common::mirror::{ok, other_client, server_flags};
use common::proxy::{Mode, Proxy};
use common::setup::{ConfigToml, Setup};
use idlesync::status::MailboxState;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// Dovecot's capabilities after login, without MOVE.
const NO_MOVE: &str = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
                       LITERAL+ UIDPLUS NAMESPACE UNSELECT CHILDREN CONDSTORE QRESYNC\n";

async fn setup(kind: Kind, extra: &str, test: &str) -> Result<Setup> {
    Ok(Setup {
        dc: Dovecot::start_with(DovecotOptions {
            users: vec![("bob".into(), "secret-pw-1".into())],
            extra_config: extra.into(),
            ..DovecotOptions::default()
        })?,
        db: TestDb::new(kind).await?,
        channel: common::redis::unique_channel(test),
    })
}

/// The config of account `id` through `proxy` (plain IMAP on loopback, so that the proxy reads
/// the commands), watching INBOX, with the API on.
fn config(s: &Setup, id: &str, proxy: &Proxy, dir: &std::path::Path) -> ConfigToml {
    let acc = AccountSpec {
        tls: "none",
        ..AccountSpec::implicit(id, "bob", "secret-pw-1", proxy.addr().port(), &["INBOX"])
    };
    s.implicit(s.config(), &acc).api(&token_file(dir))
}

async fn without_move(kind: Kind) -> Result<()> {
    let s = setup(kind, NO_MOVE, "actions-no-move").await?;
    s.dc.create_mailbox("bob", "Archive").await?;
    let proxy = Proxy::start(s.dc.imap_addr()).await?;
    let dir = tempfile::tempdir()?;
    let id = format!("nomove-{kind:?}");
    let mut sync = s.subscribe().await?;
    let d = s.start(&config(&s, &id, &proxy, dir.path())).await?;
    wait_idling(&d, 1, WAIT).await?;
    let api = Client::new(d.api_addr().expect("api"));
    let doomed = s.dc.append("bob", "INBOX", &mail("doomed")).await?;
    let kept = s.dc.append("bob", "INBOX", &mail("kept")).await?;
    sync.collect_messages(2, WAIT).await?;
    // Another client marks a message \Deleted and leaves it for its own EXPUNGE.
    let mut other = other_client(&s.dc, "bob", "INBOX").await?;
    ok(
        &mut other,
        &format!("UID STORE {doomed} +FLAGS (\\Deleted)"),
    )
    .await?;
    let rows = ids(&s.db, &id, "INBOX").await?;
    let kept_id = rows.iter().find(|r| r.1 == kept).expect("kept stored").0;

    let a = act(
        &api,
        "POST",
        &format!("/v1/messages/{kept_id}/move"),
        to("Archive"),
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    assert_eq!(proxy.count_commands("UID MOVE"), 0);
    assert_eq!(proxy.count_commands("UID COPY"), 1);
    assert_eq!(proxy.count_commands("UID EXPUNGE"), 1);
    assert_eq!(proxy.count_commands("EXPUNGE"), 0, "never a bare EXPUNGE");
    let inbox = server_flags(&s.dc, "bob", "INBOX").await?;
    assert_eq!(
        inbox.keys().copied().collect::<Vec<_>>(),
        [doomed],
        "the other client's \\Deleted mail survives"
    );
    assert!(inbox[&doomed].contains("\\Deleted"));
    assert_eq!(server_flags(&s.dc, "bob", "Archive").await?.len(), 1);
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn without_move_postgres() -> Result<()> {
    without_move(Kind::Postgres).await
}

#[tokio::test]
async fn without_move_sqlite() -> Result<()> {
    without_move(Kind::Sqlite).await
}

/// Waits until the daemon's only mailbox is not idling (its connection refused).
async fn disconnected(d: &idlesync::Daemon) -> Result<()> {
    let ok = d
        .board()
        .wait_for(WAIT, |s| s.iter().all(|m| m.state != MailboxState::Idling))
        .await;
    anyhow::ensure!(ok, "still idling: {:?}", d.board().snapshot());
    Ok(())
}

/// `GET /v1/actions/{id}` until it is finished.
async fn finished(api: &Client, id: &Value) -> Result<Value> {
    let path = format!("/v1/actions/{id}");
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let a = api.get(&path).await?.body["action"].clone();
        if matches!(a["status"].as_str(), Some("done" | "failed")) {
            return Ok(a);
        }
        anyhow::ensure!(tokio::time::Instant::now() < end, "not finished: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn conflicts(kind: Kind) -> Result<()> {
    let s = setup(kind, "", "actions-conflicts").await?;
    let proxy = Proxy::start(s.dc.imap_addr()).await?;
    let dir = tempfile::tempdir()?;
    let id = format!("conflict-{kind:?}");
    let cfg = config(&s, &id, &proxy, dir.path());
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&cfg).await?;
    wait_idling(&d, 1, WAIT).await?;
    let api = Client::new(d.api_addr().expect("api"));
    let gone = s.dc.append("bob", "INBOX", &mail("gone")).await?;
    let starred = s.dc.append("bob", "INBOX", &mail("starred")).await?;
    let later = s.dc.append("bob", "INBOX", &mail("later")).await?;
    sync.collect_messages(3, WAIT).await?;
    let mut other = other_client(&s.dc, "bob", "INBOX").await?;
    ok(
        &mut other,
        &format!("UID STORE {starred} +FLAGS (\\Flagged)"),
    )
    .await?;
    common::wait_until(WAIT, || async {
        Ok(
            common::mirror::stored_flags(&s.db, &id, "INBOX").await?[&starred]
                .contains("\\Flagged"),
        )
    })
    .await?;
    let rows = ids(&s.db, &id, "INBOX").await?;
    let id_of = |uid: u32| rows.iter().find(|r| r.1 == uid).expect("stored").0;

    // The mailbox loses its connection and cannot get another.
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    disconnected(&d).await?;
    let queued = |v: &common::api::Answer| {
        assert_eq!(v.status, 202, "{}", v.body);
        assert_eq!(v.body["action"]["status"], "queued", "{}", v.body);
        v.body["action"]["id"].clone()
    };
    let seen = json!({"seen": true}).to_string();
    let on_gone = queued(
        &api.call(
            "PATCH",
            &format!("/v1/messages/{}", id_of(gone)),
            &[],
            seen.as_bytes(),
        )
        .await?,
    );
    let unflag = json!({"flagged": false}).to_string();
    let on_starred = queued(
        &api.call(
            "PATCH",
            &format!("/v1/messages/{}", id_of(starred)),
            &[],
            unflag.as_bytes(),
        )
        .await?,
    );
    // Meanwhile another client expunges one message and labels the other.
    ok(&mut other, &format!("UID STORE {gone} +FLAGS (\\Deleted)")).await?;
    ok(&mut other, &format!("UID EXPUNGE {gone}")).await?;
    ok(
        &mut other,
        &format!("UID STORE {starred} +FLAGS ($Important)"),
    )
    .await?;
    proxy.set_mode(Mode::Forward);
    let a = finished(&api, &on_gone).await?;
    assert_eq!(
        (a["status"].as_str(), a["error"]["code"].as_str()),
        (Some("failed"), Some("gone")),
        "{a}"
    );
    let a = finished(&api, &on_starred).await?;
    assert_eq!(a["status"], "done", "{a}");
    let server = server_flags(&s.dc, "bob", "INBOX").await?;
    assert!(!server.contains_key(&gone));
    let want: std::collections::BTreeSet<String> = ["$Important".to_string()].into();
    assert_eq!(
        server[&starred], want,
        "the other client's flag survives -FLAGS \\Flagged"
    );

    // Accepted, then the daemon restarts before it runs: it runs once, after the restart.
    wait_idling(&d, 1, WAIT).await?;
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    disconnected(&d).await?;
    let across = queued(
        &api.call(
            "PATCH",
            &format!("/v1/messages/{}", id_of(later)),
            &[],
            seen.as_bytes(),
        )
        .await?,
    );
    d.shutdown().await;
    proxy.set_mode(Mode::Forward);
    let stores_before = proxy.count_commands("UID STORE");
    let d = s.start(&cfg).await?;
    let api = Client::new(d.api_addr().expect("api"));
    let a = finished(&api, &across).await?;
    assert_eq!(a["status"], "done", "{a}");
    assert!(server_flags(&s.dc, "bob", "INBOX").await?[&later].contains("\\Seen"));
    let rec = next_of(&mut changes, "flagsChanged", WAIT).await;
    // Records of the earlier steps may come first; the one of this action comes once.
    let mut of_action = 0;
    let mut rec = rec?;
    loop {
        if rec["actionId"] == across {
            of_action += 1;
        }
        match changes.next(Duration::from_secs(1)).await {
            Ok(r) => rec = r,
            Err(_) => break,
        }
    }
    assert_eq!(of_action, 1, "one flagsChanged for the action");
    assert_eq!(
        proxy.count_commands("UID STORE") - stores_before,
        1,
        "run once"
    );
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn conflicts_postgres() -> Result<()> {
    conflicts(Kind::Postgres).await
}

#[tokio::test]
async fn conflicts_sqlite() -> Result<()> {
    conflicts(Kind::Sqlite).await
}

/// Actions run between the windows of a first import, not after the whole history: a message
/// of the first window is marked read while the rest is still being fetched.
#[tokio::test]
async fn actions_run_during_a_first_import() -> Result<()> {
    const N: usize = 120;
    let s = Setup::new(&[("kim", "secret-pw-1")], Kind::Sqlite, "actions-import").await?;
    let slow = common::mirror::slow_import(&s, "kim", "act-import", N, 10).await?;
    let dir = tempfile::tempdir()?;
    let d = s
        .start(&slow.config.clone().api(&token_file(dir.path())))
        .await?;
    common::mirror::import_under_way(&d, WAIT).await?;
    let first = ids(&s.db, "act-import", "INBOX").await?[0];
    let api = Client::new(d.api_addr().expect("api"));
    let a = common::actions::act(
        &api,
        "PATCH",
        &format!("/v1/messages/{}", first.0),
        Some(json!({"seen": true})),
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let import = d.board().snapshot()[0].import.clone().expect("import");
    assert!(
        import.stored < import.total,
        "done while the import goes on: {import:?}"
    );
    assert!(server_flags(&s.dc, "kim", "INBOX").await?[&first.1].contains("\\Seen"));
    slow.proxy.set_server_pace(None);
    common::wait_until(WAIT, || async {
        Ok(ids(&s.db, "act-import", "INBOX").await?.len() == N)
    })
    .await?;
    d.shutdown().await;
    Ok(())
}
