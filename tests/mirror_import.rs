//! Issue #11, the first import: mail already in a mailbox when idlesync first selects it is
//! history, announced as `imported` on the changes channel with its progress, never as new mail;
//! `import_since` leaves old mail unfetched; mail delivered during the import is new mail.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::daemon::{mail, wait_idling, AccountSpec};
use common::db::Kind;
use common::mirror::{import_under_way, ok, setup, slow_import, stored_flags, Advertised};

const WAIT: Duration = Duration::from_secs(15);

/// (g) A mailbox holding 30 messages before idlesync first starts: they are announced as
/// `imported` on the changes channel with their progress, never on `email:sync`; the next
/// message is `newMail`.
async fn first_import(kind: Kind) -> Result<()> {
    let s = setup("frank", kind, Advertised::Qresync, "mirror-import").await?;
    let mut w = common::dovecot::wire::Wire::login(&s.dc, "frank").await?;
    for i in 0..30 {
        w.append("INBOX", &mail(&format!("old-{i}"))).await?;
    }
    w.logout().await;
    let id = format!("mirror-g-{kind:?}");
    let acc = AccountSpec::implicit(&id, "frank", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&s.implicit(s.config(), &acc)).await?;
    let got = changes.collect_kind("imported", 30, WAIT).await?;
    let last = got.last().expect("a record");
    assert_eq!(last["progress"]["stored"], 30, "{last}");
    assert_eq!(last["progress"]["total"], 30, "{last}");
    wait_idling(&d, 1, WAIT).await?;

    let uid = s.dc.append("frank", "INBOX", &mail("fresh")).await?;
    // The first record on email:sync is the new message: none came for the 30.
    let rec = sync.next(WAIT).await?;
    assert_eq!(rec["kind"], "newMail", "{rec}");
    assert_eq!(rec["uids"], serde_json::json!([uid]), "{rec}");
    assert_eq!(stored_flags(&s.db, &id, "INBOX").await?.len(), 31);
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_import_postgres() -> Result<()> {
    first_import(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_import_sqlite() -> Result<()> {
    first_import(Kind::Sqlite).await
}

/// (g) `import_since = "90d"`: messages APPENDed with an INTERNALDATE in 2020 are never
/// fetched; recent ones are imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_since_skips_old_mail() -> Result<()> {
    let s = setup("gina", Kind::Sqlite, Advertised::Qresync, "mirror-since").await?;
    let mut w = common::dovecot::wire::Wire::login(&s.dc, "gina").await?;
    let mut recent = Vec::new();
    for i in 0..3 {
        let raw = mail(&format!("ancient-{i}"));
        let r = w
            .command("APPEND INBOX () \"01-Jan-2020 10:00:00 +0000\"", Some(&raw))
            .await?;
        anyhow::ensure!(r.starts_with("OK"), "APPEND: {r}");
        recent.push(w.append("INBOX", &mail(&format!("recent-{i}"))).await?);
    }
    w.logout().await;
    let id = "mirror-since";
    let acc = AccountSpec::implicit(id, "gina", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let mut changes = s.subscribe_changes().await?;
    let config = s
        .implicit(s.config(), &acc)
        .set("storage", "import_since", "90d");
    let d = s.start(&config).await?;
    changes.collect_kind("imported", 3, WAIT).await?;
    wait_idling(&d, 1, WAIT).await?;
    let stored: Vec<u32> = stored_flags(&s.db, id, "INBOX")
        .await?
        .into_keys()
        .collect();
    assert_eq!(stored, recent);
    let subjects = s.db.messages(id).await?;
    assert!(
        subjects
            .iter()
            .all(|(_, s)| s.as_deref().is_some_and(|s| s.starts_with("recent-"))),
        "{subjects:?}"
    );
    d.shutdown().await;
    Ok(())
}

/// The newest messages of the history were expunged before the first start: UIDNEXT (the
/// import boundary) lies above every message left. The import still ends: `/status` says done,
/// and the next connection does not start it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_ends_when_the_newest_history_is_gone() -> Result<()> {
    let s = setup(
        "judy",
        Kind::Sqlite,
        Advertised::Qresync,
        "mirror-import-end",
    )
    .await?;
    let mut w = common::dovecot::wire::Wire::login(&s.dc, "judy").await?;
    for i in 0..5 {
        w.append("INBOX", &mail(&format!("h-{i}"))).await?;
    }
    ok(&mut w, "SELECT INBOX").await?;
    ok(&mut w, "STORE 4:5 +FLAGS.SILENT (\\Deleted)").await?;
    ok(&mut w, "EXPUNGE").await?;
    w.logout().await;
    let id = "mirror-import-end";
    let acc = AccountSpec::implicit(id, "judy", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let config = s.implicit(s.config(), &acc);
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&config).await?;
    changes.collect_kind("imported", 3, WAIT).await?;
    wait_idling(&d, 1, WAIT).await?;
    let status = d.board().snapshot();
    let import = status[0].import.clone().expect("an import ran");
    assert!(import.done, "{import:?}");
    assert_eq!(
        status[0].last_uid,
        Some(5),
        "the import ends at the boundary"
    );
    d.shutdown().await;

    let d = s.start(&config).await?;
    wait_idling(&d, 1, WAIT).await?;
    assert!(d.board().snapshot()[0].import.is_none(), "no import again");
    d.shutdown().await;
    Ok(())
}

/// (g) A message delivered while a slow first import is being fetched is new mail: it arrives
/// on `email:sync` as `newMail`, while the history goes on as `imported`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_arriving_during_the_import_is_new_mail() -> Result<()> {
    const N: usize = 30;
    let s = setup("kate", Kind::Sqlite, Advertised::Qresync, "mirror-during").await?;
    let id = "mirror-during";
    let slow = slow_import(&s, "kate", id, N, 100).await?;
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&slow.config).await?;
    import_under_way(&d, WAIT).await?;
    let uid = s.dc.append("kate", "INBOX", &mail("during")).await?;
    slow.proxy.set_server_pace(None);
    let rec = sync.next(WAIT).await?;
    assert_eq!(rec["kind"], "newMail", "{rec}");
    assert_eq!(rec["uids"], serde_json::json!([uid]), "{rec}");
    changes.collect_kind("imported", N, WAIT).await?;
    assert_eq!(stored_flags(&s.db, id, "INBOX").await?.len(), N + 1);
    d.shutdown().await;
    Ok(())
}
