//! Issue #11, live: flags and expunges made by another client reach the store while idlesync
//! idles, on real Dovecot, PostgreSQL or SQLite, and Redis. Changes go to the changes channel,
//! never to `email:sync`.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::daemon::{mail, reply, wait_idling, AccountSpec};
use common::db::Kind;
use common::mirror::{
    expunged_uids, ok, other_client, rows, server_flags, stored_flags, thread_counts, uid_list,
};
use common::proxy::Proxy;
use common::setup::Setup;

/// Generous: Dovecot itself takes ~0.5 s to announce a change to another session.
const WAIT: Duration = Duration::from_secs(10);

/// (a) Another session stores `\Seen` and `\Flagged`: the rows and the thread's unread count
/// follow, one `flagsChanged` record arrives on the changes channel, nothing on `email:sync`,
/// and idlesync writes nothing to the server meanwhile (it stays in IDLE while it applies).
async fn live_flags(kind: Kind) -> Result<()> {
    let s = Setup::new(&[("alice", "secret-pw-1")], kind, "mirror-flags").await?;
    let proxy = Proxy::start(s.dc.imaps_addr()).await?;
    let id = format!("mirror-a-{kind:?}");
    let acc = AccountSpec::implicit(&id, "alice", "secret-pw-1", proxy.addr().port(), &["INBOX"]);
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&s.implicit(s.config(), &acc)).await?;
    wait_idling(&d, 1, WAIT).await?;

    let root = s.dc.append("alice", "INBOX", &mail("m-root")).await?;
    let second =
        s.dc.append("alice", "INBOX", &reply("m-re1", "m-root"))
            .await?;
    let _third =
        s.dc.append("alice", "INBOX", &reply("m-re2", "m-root"))
            .await?;
    sync.collect_messages(3, WAIT).await?;
    let thread = rows(&s.db, &id, "INBOX").await?[0].1;
    assert_eq!(thread_counts(&s.db, thread).await?, (3, 3), "three unread");

    wait_idling(&d, 1, WAIT).await?;
    let before = proxy.client_bytes();
    let mut other = other_client(&s.dc, "alice", "INBOX").await?;
    ok(
        &mut other,
        &format!(
            "UID STORE {} +FLAGS (\\Seen \\Flagged)",
            uid_list(&[root, second])
        ),
    )
    .await?;
    let rec = changes.next(WAIT).await?;
    assert_eq!(rec["kind"], "flagsChanged", "{rec}");
    assert_eq!(rec["accountId"], id.as_str(), "{rec}");
    assert_eq!(rec["mailbox"], "INBOX", "{rec}");
    assert_eq!(rec["count"], 2, "{rec}");
    let uids: Vec<u64> = rec["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["uid"].as_u64().expect("uid"))
        .collect();
    assert_eq!(uids, vec![u64::from(root), u64::from(second)], "{rec}");
    for c in rec["changes"].as_array().expect("changes") {
        let flags: Vec<&str> = c["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(
            flags.contains(&"\\Seen") && flags.contains(&"\\Flagged"),
            "{rec}"
        );
    }
    // The record is committed with its rows: they are there once it arrives.
    assert_eq!(
        stored_flags(&s.db, &id, "INBOX").await?,
        server_flags(&s.dc, "alice", "INBOX").await?
    );
    assert_eq!(
        thread_counts(&s.db, thread).await?,
        (3, 1),
        "one unread left"
    );
    sync.expect_silence(Duration::from_secs(1)).await?;
    assert_eq!(
        proxy.client_bytes(),
        before,
        "idlesync wrote to the server to follow a flag change"
    );
    assert_eq!(proxy.connections(), 1, "no reconnect");
    other.logout().await;
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_flags_postgres() -> Result<()> {
    live_flags(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_flags_sqlite() -> Result<()> {
    live_flags(Kind::Sqlite).await
}

/// (b) EXPUNGE of 3 messages marks exactly those rows (`keep`) or removes them with their raw
/// copies (`delete`), and a `messagesExpunged` record arrives.
async fn live_expunge(kind: Kind, mode: &str) -> Result<()> {
    let s = Setup::new(&[("bob", "secret-pw-1")], kind, "mirror-expunge").await?;
    let id = format!("mirror-b-{kind:?}-{mode}");
    let acc = AccountSpec::implicit(&id, "bob", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let config = s
        .implicit(s.config(), &acc)
        .set("storage", "expunged", mode);
    let d = s.start(&config).await?;
    wait_idling(&d, 1, WAIT).await?;
    let mut uids = Vec::new();
    for i in 0..5 {
        uids.push(
            s.dc.append("bob", "INBOX", &mail(&format!("x-{i}")))
                .await?,
        );
    }
    sync.collect_messages(5, WAIT).await?;

    let gone = [uids[0], uids[2], uids[4]];
    let mut other = other_client(&s.dc, "bob", "INBOX").await?;
    ok(
        &mut other,
        &format!("UID STORE {} +FLAGS.SILENT (\\Deleted)", uid_list(&gone)),
    )
    .await?;
    ok(&mut other, "EXPUNGE").await?;
    let got = changes.collect_kind("messagesExpunged", 3, WAIT).await?;
    let expunged: Vec<u64> = got
        .iter()
        .filter(|r| r["kind"] == "messagesExpunged")
        .flat_map(|r| r["uids"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_u64())
        .collect();
    assert_eq!(expunged, gone.map(u64::from).to_vec(), "{got:?}");

    let present: Vec<u32> = stored_flags(&s.db, &id, "INBOX")
        .await?
        .into_keys()
        .collect();
    assert_eq!(present, vec![uids[1], uids[3]]);
    let all: Vec<u32> = rows(&s.db, &id, "INBOX")
        .await?
        .iter()
        .map(|r| r.0)
        .collect();
    match mode {
        "keep" => {
            assert_eq!(expunged_uids(&s.db, &id, "INBOX").await?, gone.to_vec());
            assert_eq!(all, uids);
        }
        _ => {
            assert_eq!(all, vec![uids[1], uids[3]], "rows removed");
            let pool = s.db.pool().await?;
            let (orphans,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM message_raw WHERE message_row_id NOT IN (SELECT id FROM messages)",
            )
            .fetch_one(&pool)
            .await?;
            assert_eq!(orphans, 0, "raw copies removed with their rows");
        }
    }
    sync.expect_silence(Duration::from_secs(1)).await?;
    other.logout().await;
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_expunge_keep_postgres() -> Result<()> {
    live_expunge(Kind::Postgres, "keep").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_expunge_delete_postgres() -> Result<()> {
    live_expunge(Kind::Postgres, "delete").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_expunge_keep_sqlite() -> Result<()> {
    live_expunge(Kind::Sqlite, "keep").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_expunge_delete_sqlite() -> Result<()> {
    live_expunge(Kind::Sqlite, "delete").await
}

/// (b) MOVE of 2 messages from INBOX to a watched Archive: INBOX's rows are marked, Archive's
/// rows are present, and all stay in one thread that still counts two messages.
async fn live_move(kind: Kind) -> Result<()> {
    let s = Setup::new(&[("carol", "secret-pw-1")], kind, "mirror-move").await?;
    s.dc.create_mailbox("carol", "Archive").await?;
    let id = format!("mirror-m-{kind:?}");
    let boxes = ["INBOX", "Archive"];
    let acc = AccountSpec::implicit(&id, "carol", "secret-pw-1", s.dc.imaps_port(), &boxes);
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&s.implicit(s.config(), &acc)).await?;
    wait_idling(&d, 2, WAIT).await?;
    let root = s.dc.append("carol", "INBOX", &mail("mv-root")).await?;
    let re =
        s.dc.append("carol", "INBOX", &reply("mv-re", "mv-root"))
            .await?;
    sync.collect_messages(2, WAIT).await?;
    let thread = rows(&s.db, &id, "INBOX").await?[0].1;

    let mut other = other_client(&s.dc, "carol", "INBOX").await?;
    ok(
        &mut other,
        &format!("UID MOVE {} Archive", uid_list(&[root, re])),
    )
    .await?;
    // Archive's new placements are new mail there; INBOX's are expunged.
    sync.collect_messages(2, WAIT).await?;
    changes.collect_kind("messagesExpunged", 2, WAIT).await?;

    assert!(stored_flags(&s.db, &id, "INBOX").await?.is_empty());
    assert_eq!(expunged_uids(&s.db, &id, "INBOX").await?, vec![root, re]);
    let archive = rows(&s.db, &id, "Archive").await?;
    assert_eq!(archive.len(), 2, "{archive:?}");
    assert!(
        archive.iter().all(|r| r.1 == thread),
        "same thread: {archive:?}"
    );
    assert_eq!(stored_flags(&s.db, &id, "Archive").await?.len(), 2);
    assert_eq!(thread_counts(&s.db, thread).await?, (2, 2));
    other.logout().await;
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_move_postgres() -> Result<()> {
    live_move(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_move_sqlite() -> Result<()> {
    live_move(Kind::Sqlite).await
}

/// (d, small) A storm: `STORE 1:N +FLAGS (\Seen)` on a 2,000-message mailbox. Every row
/// follows, and the changes come as a handful of records, not one per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_storm_is_batched() -> Result<()> {
    const N: usize = 2000;
    let s = Setup::new(&[("dan", "secret-pw-1")], Kind::Postgres, "mirror-storm").await?;
    let id = "mirror-storm";
    let mut w = common::dovecot::wire::Wire::login(&s.dc, "dan").await?;
    for i in 0..N {
        w.append("INBOX", &mail(&format!("s-{i}"))).await?;
    }
    w.logout().await;
    let acc = AccountSpec::implicit(id, "dan", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&s.implicit(s.config(), &acc)).await?;
    changes
        .collect_kind("imported", N, Duration::from_secs(120))
        .await?;
    wait_idling(&d, 1, WAIT).await?;

    let mut other = other_client(&s.dc, "dan", "INBOX").await?;
    ok(&mut other, "STORE 1:* +FLAGS.SILENT (\\Seen)").await?;
    let got = changes
        .collect_kind("flagsChanged", N, Duration::from_secs(60))
        .await?;
    let records = got.iter().filter(|r| r["kind"] == "flagsChanged").count();
    eprintln!("{N} flag changes came as {records} records");
    assert!(records <= 20, "{records} records for {N} changes");
    assert_eq!(
        stored_flags(&s.db, id, "INBOX").await?,
        server_flags(&s.dc, "dan", "INBOX").await?
    );
    other.logout().await;
    d.shutdown().await;
    Ok(())
}
