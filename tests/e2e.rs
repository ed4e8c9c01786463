//! End to end, on real servers: Dovecot (implicit TLS and STARTTLS), PostgreSQL or SQLite, Redis.
//! Each test has its own Dovecot, database and Redis channel.

mod common;

use std::os::unix::fs::chown;
use std::time::Duration;

use anyhow::Result;
use common::daemon::{config_toml, mail, start, wait_idling, AccountSpec};
use common::db::{Kind, TestDb};
use common::dovecot::Dovecot;
use common::proxy::Proxy;
use common::setup::Setup;

/// Generous: Dovecot itself takes ~0.5 s to announce a delivery.
const WAIT: Duration = Duration::from_secs(10);

fn account<'a>(id: &'a str, user: &'a str, tls: &'a str, port: u16) -> AccountSpec<'a> {
    AccountSpec {
        tls,
        ..AccountSpec::implicit(id, user, "secret-pw-1", port, &["INBOX"])
    }
}

fn assert_record(rec: &serde_json::Value, account: &str, email: &str, uids: &[u32]) {
    assert_eq!(rec["accountId"], account, "{rec}");
    assert_eq!(rec["emailAddress"], email, "{rec}");
    assert_eq!(rec["count"], uids.len(), "{rec}");
    assert_eq!(rec["uids"], serde_json::json!(uids), "{rec}");
    assert_eq!(rec["mailbox"], "INBOX", "{rec}");
    assert_eq!(rec["kind"], "newMail", "{rec}");
    let ts = rec["timestamp"].as_str().expect("timestamp is a string");
    let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("timestamp is RFC 3339");
    assert_eq!(
        parsed.offset().local_minus_utc(),
        0,
        "timestamp is UTC: {ts}"
    );
}

/// (a) APPEND → row in `messages` and a record on Redis, within 10 s.
async fn append_is_stored_and_announced(kind: Kind, tls: &str) -> Result<()> {
    let s = Setup::new(&[("alice", "secret-pw-1")], kind, "append").await?;
    let mut sub = s.subscribe().await?;
    let port = if tls == "implicit" {
        s.dc.imaps_port()
    } else {
        s.dc.imap_port()
    };
    // Metrics are process-wide: a distinct account id per test keeps their series apart.
    let id = format!("acc-a-{kind:?}-{tls}");
    let toml = s
        .implicit(s.config(), &account(&id, "alice", tls, port))
        .render();
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;

    let uid = s.dc.append("alice", "INBOX", &mail("hello-1")).await?;
    let rec = sub.next(WAIT).await?;
    assert_record(&rec, &id, "alice@example.test", &[uid]);
    assert_eq!(
        s.db.messages(&id).await?,
        vec![(i64::from(uid), Some("hello-1".into()))]
    );

    let uid2 = s.dc.append("alice", "INBOX", &mail("hello-2")).await?;
    let rec = sub.next(WAIT).await?;
    assert_record(&rec, &id, "alice@example.test", &[uid2]);

    wait_idling(&d, 1, WAIT).await?;
    let metrics = common::http_get(d.admin_addr(), "/metrics").await?;
    assert!(
        metrics.contains(&format!(
            r#"idlesync_messages_stored_total{{account="{id}",mailbox="INBOX"}} 2"#
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        r#"idlesync_mailbox_state{{account="{id}",mailbox="INBOX",state="idling"}} 1"#
    )));
    assert!(metrics.contains("idlesync_exists_to_publish_seconds_bucket"));
    assert_eq!(common::http_get(d.admin_addr(), "/healthz").await?, "ok\n");
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_sqlite_implicit_tls() -> Result<()> {
    append_is_stored_and_announced(Kind::Sqlite, "implicit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_postgres_implicit_tls() -> Result<()> {
    append_is_stored_and_announced(Kind::Postgres, "implicit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_postgres_starttls() -> Result<()> {
    append_is_stored_and_announced(Kind::Postgres, "starttls").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_sqlite_starttls() -> Result<()> {
    append_is_stored_and_announced(Kind::Sqlite, "starttls").await
}

/// (b) Mail appended while idlesync is stopped is stored exactly once and announced at start;
/// what was announced before is not announced again.
async fn catch_up_after_stop(kind: Kind) -> Result<()> {
    let s = Setup::new(&[("bob", "secret-pw-1")], kind, "catchup").await?;
    let mut sub = s.subscribe().await?;
    let toml = s
        .implicit(
            s.config(),
            &account("acc-b", "bob", "implicit", s.dc.imaps_port()),
        )
        .render();
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;
    let u1 = s.dc.append("bob", "INBOX", &mail("before-stop")).await?;
    assert_record(&sub.next(WAIT).await?, "acc-b", "bob@example.test", &[u1]);
    d.shutdown().await;

    let u2 =
        s.dc.append("bob", "INBOX", &mail("while-stopped-1"))
            .await?;
    let u3 =
        s.dc.append("bob", "INBOX", &mail("while-stopped-2"))
            .await?;

    let d = start(&toml).await?;
    let rec = sub.next(WAIT).await?;
    assert_record(&rec, "acc-b", "bob@example.test", &[u2, u3]);
    wait_idling(&d, 1, WAIT).await?;
    // Nothing else is announced: u1 was announced before the stop.
    sub.expect_silence(Duration::from_secs(1)).await?;
    assert_eq!(
        s.db.messages("acc-b").await?,
        vec![
            (i64::from(u1), Some("before-stop".into())),
            (i64::from(u2), Some("while-stopped-1".into())),
            (i64::from(u3), Some("while-stopped-2".into())),
        ]
    );
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_stop_sqlite() -> Result<()> {
    catch_up_after_stop(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_stop_postgres() -> Result<()> {
    catch_up_after_stop(Kind::Postgres).await
}

/// (d) Dovecot restarted mid-run: idlesync reconnects, and every message delivered before,
/// during (straight into the Maildir) and after the restart is stored once.
async fn dovecot_restart(kind: Kind) -> Result<()> {
    let mut s = Setup::new(&[("carol", "secret-pw-1")], kind, "restart").await?;
    let mut sub = s.subscribe().await?;
    let toml = s
        .implicit(
            s.config(),
            &account("acc-c", "carol", "implicit", s.dc.imaps_port()),
        )
        .render();
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;
    s.dc.append("carol", "INBOX", &mail("before-restart"))
        .await?;
    sub.collect_messages(1, WAIT).await?;

    s.dc.stop()?;
    // Delivered while the server is down, as an MDA would: straight into Maildir/new.
    let new_dir = s.dc.maildir("carol").join("new");
    let file = new_dir.join("1700000000.M1P1.idlesync-test");
    std::fs::write(&file, mail("during-restart"))?;
    chown(&file, Some(8), Some(8))?;
    s.dc.restart()?;

    sub.collect_messages(1, WAIT).await?;
    wait_idling(&d, 1, WAIT).await?;
    s.dc.append("carol", "INBOX", &mail("after-restart"))
        .await?;
    sub.collect_messages(1, WAIT).await?;

    let subjects: Vec<_> =
        s.db.messages("acc-c")
            .await?
            .into_iter()
            .map(|(_, s)| s.unwrap_or_default())
            .collect();
    assert_eq!(
        subjects,
        vec!["before-restart", "during-restart", "after-restart"]
    );
    let status = d.board().snapshot();
    assert!(status[0].reconnects >= 1, "{status:?}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_restart_postgres() -> Result<()> {
    dovecot_restart(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_restart_sqlite() -> Result<()> {
    dovecot_restart(Kind::Sqlite).await
}

/// (e) Across 60 s of idling, idlesync sends the server nothing at all: counted byte for byte
/// by a proxy between the two. The connection is then still alive and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sends_no_command_for_60s() -> Result<()> {
    let s = Setup::new(&[("dave", "secret-pw-1")], Kind::Sqlite, "silence").await?;
    let proxy = Proxy::start(s.dc.imaps_addr()).await?;
    let mut sub = s.subscribe().await?;
    let toml = s
        .implicit(
            s.config(),
            &account("acc-d", "dave", "implicit", proxy.addr().port()),
        )
        .render();
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;
    let before = proxy.client_bytes();
    assert!(before > 0, "the login went through the proxy");

    // The observation window is the point of the test, not a stand-in for an event.
    tokio::time::sleep(Duration::from_secs(60)).await;

    assert_eq!(
        proxy.client_bytes(),
        before,
        "idlesync wrote to the server while idle"
    );
    assert_eq!(proxy.connections(), 1, "no reconnect happened");
    let uid = s.dc.append("dave", "INBOX", &mail("after-silence")).await?;
    assert_record(&sub.next(WAIT).await?, "acc-d", "dave@example.test", &[uid]);
    d.shutdown().await;
    Ok(())
}

/// Shutdown leaves IDLE, logs out (Dovecot logs "Logged out") and finishes within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_logs_out() -> Result<()> {
    let dc = Dovecot::start(&[("erin", "secret-pw-1")])?;
    let db = TestDb::sqlite()?;
    let toml = config_toml(
        &db.url,
        None,
        dc.ca_file(),
        &[AccountSpec {
            mailboxes: &["INBOX", "Archive"],
            ..account("acc-e", "erin", "implicit", dc.imaps_port())
        }],
    );
    dc.create_mailbox("erin", "Archive").await?;
    let d = start(&toml).await?;
    wait_idling(&d, 2, WAIT).await?;
    let before = dc.log().matches("Logged out").count();
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await?;
    let log = dc.log();
    assert_eq!(log.matches("Logged out").count(), before + 2, "{log}");
    Ok(())
}

/// The absolute re-IDLE timer fires although Dovecot's keepalives reset async-imap's own
/// timer: with `idle_renew = 1s`, IDLE is re-issued every second on the same connection, and
/// nothing else is sent (no NOOP, no polling). Plain IMAP on loopback so the proxy can read
/// the commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_is_renewed_on_the_absolute_timer() -> Result<()> {
    let dc = Dovecot::start(&[("rn", "secret-pw-1")])?;
    let proxy = Proxy::start(dc.imap_addr()).await?;
    let db = TestDb::sqlite()?;
    let toml = config_toml(
        &db.url,
        None,
        dc.ca_file(),
        &[account("acc-renew", "rn", "none", proxy.addr().port())],
    )
    .replace("[imap]\n", "[imap]\nidle_renew = \"1s\"\n");
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;
    proxy
        .wait_until(WAIT, |p| p.count_commands("IDLE") >= 4)
        .await?;
    assert!(proxy.count_commands("DONE") >= 3);
    assert_eq!(proxy.count_commands("NOOP"), 0);
    assert_eq!(proxy.count_commands("STATUS"), 0);
    assert_eq!(proxy.connections(), 1, "renewing IDLE needs no reconnect");
    d.shutdown().await;
    Ok(())
}
