//! Issue #11, after a gap: what changed while idlesync was stopped is caught up at the next
//! connection, by QRESYNC, by CONDSTORE alone, or by a full flag enumeration, chosen from what
//! Dovecot advertises (`imap_capability` hides extensions). Also an expunge racing a large
//! fetch, and live changes by sequence number. The first import is in `tests/mirror_import.rs`.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::daemon::{mail, wait_idling, AccountSpec};
use common::db::Kind;
use common::mirror::{
    import_under_way, ok, other_client, server_flags, setup, slow_import, stored_flags, uid_list,
    Advertised,
};
use common::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(15);

/// (c) With idlesync stopped, flags are set and cleared, messages expunged and new ones
/// appended. After a restart the store equals the server, UID by UID and flag by flag, and the
/// commands on the wire show which path was taken.
async fn catch_up(kind: Kind, path: Advertised) -> Result<()> {
    let s = setup("erin", kind, path, "mirror-catchup").await?;
    // Plain IMAP on loopback, so that the proxy can read the commands idlesync sends.
    let proxy = Proxy::start(s.dc.imap_addr()).await?;
    let id = format!("mirror-c-{kind:?}-{path:?}");
    let acc = AccountSpec {
        tls: "none",
        ..AccountSpec::implicit(&id, "erin", "secret-pw-1", proxy.addr().port(), &["INBOX"])
    };
    let config = s.implicit(s.config(), &acc);
    let mut sync = s.subscribe().await?;
    let d = s.start(&config).await?;
    wait_idling(&d, 1, WAIT).await?;
    let mut uids = Vec::new();
    for i in 0..6 {
        uids.push(
            s.dc.append("erin", "INBOX", &mail(&format!("c-{i}")))
                .await?,
        );
    }
    sync.collect_messages(6, WAIT).await?;
    let mut other = other_client(&s.dc, "erin", "INBOX").await?;
    ok(
        &mut other,
        &format!("UID STORE {} +FLAGS (\\Seen)", uids[5]),
    )
    .await?;
    common::wait_until(WAIT, || async {
        Ok(
            stored_flags(&s.db, &id, "INBOX").await?
                == server_flags(&s.dc, "erin", "INBOX").await?,
        )
    })
    .await?;
    d.shutdown().await;

    // While stopped.
    let lines_before = proxy.client_lines().len();
    ok(
        &mut other,
        &format!("UID STORE {} +FLAGS (\\Seen)", uid_list(&uids[0..2])),
    )
    .await?;
    ok(
        &mut other,
        &format!("UID STORE {} +FLAGS (\\Flagged $Work)", uids[2]),
    )
    .await?;
    ok(
        &mut other,
        &format!("UID STORE {} -FLAGS (\\Seen)", uids[5]),
    )
    .await?;
    ok(
        &mut other,
        &format!(
            "UID STORE {} +FLAGS.SILENT (\\Deleted)",
            uid_list(&uids[3..5])
        ),
    )
    .await?;
    ok(&mut other, "EXPUNGE").await?;
    other.logout().await;
    let new1 = s.dc.append("erin", "INBOX", &mail("c-new-1")).await?;
    let new2 = s.dc.append("erin", "INBOX", &mail("c-new-2")).await?;

    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&config).await?;
    let got = sync.collect_messages(2, WAIT).await?;
    assert_eq!(
        got.last().map(|r| r["uids"].clone()),
        Some(serde_json::json!([new1, new2]))
    );
    // Changes are committed before the new mail is fetched: the store is complete now.
    let server = server_flags(&s.dc, "erin", "INBOX").await?;
    assert_eq!(stored_flags(&s.db, &id, "INBOX").await?, server);
    assert_eq!(server.len(), 6, "{server:?}");
    changes.collect_kind("messagesExpunged", 2, WAIT).await?;

    let lines = proxy.client_lines()[lines_before..].join("\n");
    let select = lines
        .lines()
        .find(|l| l.contains("SELECT"))
        .unwrap_or_default()
        .to_string();
    match path {
        Advertised::Qresync => {
            assert!(select.contains("QRESYNC"), "{lines}");
            assert!(!lines.contains("CHANGEDSINCE"), "{lines}");
        }
        Advertised::CondstoreOnly => {
            assert!(!lines.contains("QRESYNC"), "{lines}");
            assert!(lines.contains("CHANGEDSINCE"), "{lines}");
        }
        Advertised::Neither => {
            assert!(
                !lines.contains("QRESYNC") && !lines.contains("CONDSTORE"),
                "{lines}"
            );
            assert!(!lines.contains("CHANGEDSINCE"), "{lines}");
            assert!(lines.contains("(UID FLAGS)"), "{lines}");
        }
    }
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_qresync_postgres() -> Result<()> {
    catch_up(Kind::Postgres, Advertised::Qresync).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_qresync_sqlite() -> Result<()> {
    catch_up(Kind::Sqlite, Advertised::Qresync).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_condstore_only_postgres() -> Result<()> {
    catch_up(Kind::Postgres, Advertised::CondstoreOnly).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_condstore_only_sqlite() -> Result<()> {
    catch_up(Kind::Sqlite, Advertised::CondstoreOnly).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_neither_postgres() -> Result<()> {
    catch_up(Kind::Postgres, Advertised::Neither).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_neither_sqlite() -> Result<()> {
    catch_up(Kind::Sqlite, Advertised::Neither).await
}

/// (f) Messages are expunged by another client while a slow first import is being fetched:
/// the store ends equal to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunge_during_a_large_fetch() -> Result<()> {
    const N: usize = 40;
    let s = setup("hank", Kind::Postgres, Advertised::Qresync, "mirror-race").await?;
    // About 8 MB at 1 MB/s: the fetch is in flight for seconds.
    let slow = slow_import(&s, "hank", "mirror-race", N, 200).await?;
    let (id, uids) = ("mirror-race", &slow.uids);
    let d = s.start(&slow.config).await?;
    import_under_way(&d, WAIT).await?;
    // Early and late UIDs: some stored already, some not fetched yet.
    let gone: Vec<u32> = uids.iter().copied().step_by(4).collect();
    let mut other = other_client(&s.dc, "hank", "INBOX").await?;
    ok(
        &mut other,
        &format!("UID STORE {} +FLAGS.SILENT (\\Deleted)", uid_list(&gone)),
    )
    .await?;
    ok(&mut other, "EXPUNGE").await?;
    other.logout().await;
    slow.proxy.set_server_pace(None);
    common::wait_until(Duration::from_secs(60), || async {
        Ok(stored_flags(&s.db, id, "INBOX").await? == server_flags(&s.dc, "hank", "INBOX").await?)
    })
    .await?;
    assert_eq!(
        stored_flags(&s.db, id, "INBOX").await?.len(),
        N - gone.len()
    );
    d.shutdown().await;
    Ok(())
}

/// Live changes on a server without QRESYNC (and without CONDSTORE): `* N EXPUNGE` and
/// `* N FETCH (FLAGS …)` carry sequence numbers only, and the connection's sequence map turns
/// them into UIDs. An expunge in the middle shifts every later number.
async fn live_by_sequence_numbers(kind: Kind) -> Result<()> {
    let s = setup("ivan", kind, Advertised::Neither, "mirror-seq").await?;
    let id = format!("mirror-s-{kind:?}");
    let acc = AccountSpec::implicit(&id, "ivan", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&s.implicit(s.config(), &acc)).await?;
    wait_idling(&d, 1, WAIT).await?;
    let mut uids = Vec::new();
    for i in 0..6 {
        uids.push(
            s.dc.append("ivan", "INBOX", &mail(&format!("q-{i}")))
                .await?,
        );
    }
    sync.collect_messages(6, WAIT).await?;
    let mut other = other_client(&s.dc, "ivan", "INBOX").await?;
    ok(
        &mut other,
        &format!(
            "UID STORE {} +FLAGS.SILENT (\\Deleted)",
            uid_list(&uids[1..3])
        ),
    )
    .await?;
    ok(&mut other, "EXPUNGE").await?;
    changes.collect_kind("messagesExpunged", 2, WAIT).await?;
    // Sequence numbers 3 and 4 are UIDs 5 and 6 now.
    ok(&mut other, "STORE 3:4 +FLAGS (\\Flagged)").await?;
    let got = changes.collect_kind("flagsChanged", 2, WAIT).await?;
    let flagged: Vec<u64> = got
        .iter()
        .filter(|r| r["kind"] == "flagsChanged")
        .flat_map(|r| r["changes"].as_array().cloned().unwrap_or_default())
        .filter(|c| {
            c["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "\\Flagged"))
        })
        .filter_map(|c| c["uid"].as_u64())
        .collect();
    assert_eq!(
        flagged,
        vec![u64::from(uids[4]), u64::from(uids[5])],
        "{got:?}"
    );
    assert_eq!(
        stored_flags(&s.db, &id, "INBOX").await?,
        server_flags(&s.dc, "ivan", "INBOX").await?
    );
    other.logout().await;
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_by_sequence_numbers_postgres() -> Result<()> {
    live_by_sequence_numbers(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_by_sequence_numbers_sqlite() -> Result<()> {
    live_by_sequence_numbers(Kind::Sqlite).await
}
