//! Fault injection against real servers: Redis and PostgreSQL stopped (our own instances, never
//! the machine's), a blackholed connection, wrong credentials, a panicking mailbox task, EOF
//! after LOGIN, a UIDVALIDITY change and a start-up storm.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use common::daemon::{config_toml, mail, start, wait_idling, AccountSpec};
use common::db::{Kind, TestDb};
use common::dovecot::{Dovecot, DovecotOptions};
use common::proxy::{Mode, Pace, Proxy};
use common::redis;
use common::servers::{OwnPostgres, OwnRedis};
use idlesync::publish::{Publisher, Sink};
use idlesync::status::MailboxState;
use idlesync::store::OutboxRow;

const WAIT: Duration = Duration::from_secs(15);
const PW: &str = "secret-pw-1";

fn account<'a>(id: &'a str, user: &'a str, port: u16, mailboxes: &'a [&'a str]) -> AccountSpec<'a> {
    AccountSpec::implicit(id, user, PW, port, mailboxes)
}

/// Writes `n` messages straight into the user's Maildir, as an MDA would (faster than APPEND,
/// and one EXISTS for all of them).
fn deliver_to_maildir(dc: &Dovecot, user: &str, prefix: &str, n: usize) -> Result<()> {
    let new = dc.maildir(user).join("new");
    for i in 0..n {
        let p = new.join(format!(
            "{}.M{i}P{}.{prefix}",
            1_700_000_000 + i,
            std::process::id()
        ));
        std::fs::write(&p, mail(&format!("{prefix}-{i:04}")))?;
        std::os::unix::fs::chown(&p, Some(8), Some(8))?;
    }
    Ok(())
}

/// [`deliver_to_maildir`] for several users at once: `(user, n)` each.
fn deliver_to_users(dc: &Dovecot, users: &[&str], prefix: &str, n: usize) -> Result<()> {
    for user in users {
        deliver_to_maildir(dc, user, &format!("{prefix}-{user}"), n)?;
    }
    Ok(())
}

/// Every `newMail` uid in a Redis Stream written by the daemon.
async fn stream_uids(url: &str, stream: &str) -> Result<BTreeSet<u64>> {
    let mut uids = BTreeSet::new();
    for rec in redis::stream_records(url, stream).await? {
        if rec["kind"] == "newMail" {
            uids.extend(
                rec["uids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u.as_u64()),
            );
        }
    }
    Ok(uids)
}

/// Redis stopped for 30 s while mail arrives: ingestion carries on, records wait in the outbox
/// (its depth is visible in /metrics), and every one is delivered once Redis returns. The Redis
/// Stream is checked too: it holds every record, whoever was subscribed at the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_30s() -> Result<()> {
    let dc = Dovecot::start(&[("rd", PW)])?;
    let db = TestDb::sqlite()?;
    let mut own = OwnRedis::start()?;
    let channel = redis::unique_channel("redis-down");
    let stream = format!("{channel}:stream");
    let mut toml = config_toml(
        &db.url,
        Some((&own.url(), &channel)),
        dc.ca_file(),
        &[account("acc-redis-down", "rd", dc.imaps_port(), &["INBOX"])],
    );
    toml = toml.replace(
        &format!("channel = \"{channel}\"\n"),
        &format!(
            "channel = \"{channel}\"\nstream = \"{stream}\"\nstream_maxlen = 1000\nretry_max = \"2s\"\n"
        ),
    );
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;
    let first = dc.append("rd", "INBOX", &mail("before-outage")).await?;
    common::wait_until(WAIT, || async {
        Ok(stream_uids(&own.url(), &stream)
            .await?
            .contains(&u64::from(first)))
    })
    .await?;

    own.stop()?;
    let outage = tokio::time::Instant::now();
    let mut during = Vec::new();
    for i in 0..3 {
        during.push(
            dc.append("rd", "INBOX", &mail(&format!("during-outage-{i}")))
                .await?,
        );
    }
    let last = *during.last().context("uids")?;
    // Stored while Redis is down.
    let stored = d
        .board()
        .wait_for(WAIT, |s| s.iter().all(|m| m.last_uid >= Some(last)))
        .await;
    assert!(stored, "{:?}", d.board().snapshot());
    common::wait_until(WAIT, || async {
        let m = common::http_get(d.admin_addr(), "/metrics").await?;
        Ok(m.lines()
            .any(|l| l.starts_with("idlesync_outbox_depth ") && !l.ends_with(" 0")))
    })
    .await
    .context("outbox depth never rose")?;
    assert_eq!(db.messages("acc-redis-down").await?.len(), 4);

    // The outage lasts 30 s, as the issue asks; mail arrived during it.
    tokio::time::sleep_until(outage + Duration::from_secs(30)).await;
    own.resume()?;
    let want: BTreeSet<u64> = during.iter().map(|u| u64::from(*u)).collect();
    common::wait_until(Duration::from_secs(30), || async {
        let got = stream_uids(&own.url(), &stream).await.unwrap_or_default();
        Ok(want.is_subset(&got))
    })
    .await
    .context("records of the outage were not delivered after Redis returned")?;
    d.shutdown().await;
    Ok(())
}

/// PostgreSQL (our own cluster) killed in the middle of a 200-message catch-up committed in
/// batches of 20: the mailbox pauses, resumes, and every message is stored exactly once and
/// announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_batch() -> Result<()> {
    let dc = Dovecot::start(&[("pg", PW)])?;
    let mut pg = OwnPostgres::start()?;
    let channel = redis::unique_channel("pg-restart");
    let mut sub = redis::subscribe(&redis::url(), &channel).await?;
    let toml = config_toml(
        &pg.url(),
        Some((&redis::url(), &channel)),
        dc.ca_file(),
        &[account("acc-pg-restart", "pg", dc.imaps_port(), &["INBOX"])],
    )
    .replace(
        "connect_timeout = \"10s\"",
        "connect_timeout = \"10s\"\nfetch_batch = 20",
    );
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;

    deliver_to_maildir(&dc, "pg", "bulk", 200)?;
    // Stop the database once some batches are in, and well before all are.
    let some = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter().any(|m| m.last_uid.is_some_and(|u| u >= 20))
        })
        .await;
    assert!(some, "{:?}", d.board().snapshot());
    pg.stop()?;
    let paused = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter()
                .any(|m| m.last_error.is_some_and(|k| k.starts_with("database")))
        })
        .await;
    assert!(
        paused,
        "the database outage was not noticed: {:?}",
        d.board().snapshot()
    );
    pg.resume()?;

    // At least once: a record whose DELETE failed with the database is published again, so
    // count distinct UIDs, not the records' counts.
    let mut announced = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while announced.len() < 200 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = sub
            .next(left)
            .await
            .with_context(|| format!("{} of 200 uids announced", announced.len()))?;
        announced.extend(
            r["uids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_u64()),
        );
    }
    assert_eq!(announced.len(), 200, "every uid announced");
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await?;
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT uid) FROM messages WHERE account_id = 'acc-pg-restart'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!((rows, distinct), (200, 200));
    pool.close().await;
    d.shutdown().await;
    Ok(())
}

/// A peer that stops answering without closing TCP: detected within `dead_after` +
/// `done_timeout` (Dovecot has sent no keepalive yet, so the silence is probed with DONE),
/// reconnected, and mail flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_connection_is_detected() -> Result<()> {
    let dc = Dovecot::start(&[("bh", PW)])?;
    let proxy = Proxy::start(dc.imaps_addr()).await?;
    let db = TestDb::sqlite()?;
    let channel = redis::unique_channel("blackhole");
    let mut sub = redis::subscribe(&redis::url(), &channel).await?;
    let toml = config_toml(
        &db.url,
        Some((&redis::url(), &channel)),
        dc.ca_file(),
        &[account(
            "acc-blackhole",
            "bh",
            proxy.addr().port(),
            &["INBOX"],
        )],
    )
    .replace(
        "dead_after = \"5m\"",
        "dead_after = \"2s\"\ndone_timeout = \"2s\"",
    );
    let d = start(&toml).await?;
    wait_idling(&d, 1, WAIT).await?;

    proxy.set_mode(Mode::Blackhole);
    let dead = d
        .board()
        .wait_for(WAIT, |s| s[0].last_error == Some("dead_connection"))
        .await;
    assert!(dead, "blackhole not detected: {:?}", d.board().snapshot());
    // Found by the silence deadline (dead_after + done_timeout), once, and counted as such. (No wall-clock bound on how
    // soon: on a busy machine that only measures the machine.)
    let metrics = common::http_get(d.admin_addr(), "/metrics").await?;
    assert!(
        metrics.contains(r#"idlesync_errors_total{account="acc-blackhole",mailbox="INBOX",error_type="dead_connection"} 1"#),
        "{metrics}"
    );

    proxy.set_mode(Mode::Forward);
    proxy.cut_all();
    common::daemon::wait_reconnected_idling(&d, WAIT).await?;
    assert!(proxy.connections() >= 2);
    let uid = dc.append("bh", "INBOX", &mail("after-blackhole")).await?;
    let rec = sub.next(WAIT).await?;
    assert_eq!(rec["uids"], serde_json::json!([uid]));
    d.shutdown().await;
    Ok(())
}

/// Sixteen mailboxes share a pool of 4 connections. Four of them fetch 200 messages each from a
/// slow server (the proxy passes 512 bytes every 150 ms: about 20 s per fetch), and while they
/// do, the other twelve get one message each. No commit may wait out the pool's 10 s acquire
/// timeout: a mailbox waiting on a slow server must not hold a pooled connection meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_transactions_do_not_starve_the_pool() -> Result<()> {
    const SLOW: [&str; 4] = ["s0", "s1", "s2", "s3"];
    let boxes: Vec<String> = (0..12).map(|i| format!("Box{i:02}")).collect();
    let mut users: Vec<(&str, &str)> = SLOW.iter().map(|u| (*u, PW)).collect();
    users.push(("fast", PW));
    let dc = Dovecot::start(&users)?;
    for b in &boxes {
        dc.doveadm(&["mailbox", "create", "-u", "fast", b])?;
    }
    let proxy = Proxy::start(dc.imaps_addr()).await?;
    let db = TestDb::new(Kind::Postgres).await?;
    let fast_boxes: Vec<&str> = boxes.iter().map(String::as_str).collect();
    let mut accounts: Vec<AccountSpec<'_>> = SLOW
        .iter()
        .map(|u| account(u, u, proxy.addr().port(), &["INBOX"]))
        .collect();
    accounts.push(account("fast", "fast", dc.imaps_port(), &fast_boxes));
    // config_toml's pool has max_connections = 4.
    let toml = config_toml(&db.url, None, dc.ca_file(), &accounts);
    assert!(toml.contains("max_connections = 4\n"), "{toml}");
    let d = start(&toml).await?;
    wait_idling(&d, 16, Duration::from_secs(30)).await?;

    // Four idle pooled connections, as a daemon has after any busy moment.
    let pool = d.store().pool();
    drop(futures::future::try_join_all((0..4).map(|_| pool.acquire())).await?);
    proxy.set_server_pace(Some(Pace {
        bytes: 512,
        every: Duration::from_millis(150),
    }));
    deliver_to_users(&dc, &SLOW, "slow", 200)?;
    let slow_fetching = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter()
                .filter(|m| m.account.starts_with('s') && m.state == MailboxState::Fetching)
                .count()
                == SLOW.len()
        })
        .await;
    assert!(slow_fetching, "{:?}", d.board().snapshot());
    for b in &boxes {
        dc.append("fast", b, &mail(&format!("fast-{b}"))).await?;
    }
    let all_stored = d
        .board()
        .wait_for(Duration::from_secs(90), |s| {
            s.iter().all(|m| {
                let want = if m.account == "fast" { 1 } else { 200 };
                m.last_uid >= Some(want)
            })
        })
        .await;
    let snap = d.board().snapshot();
    assert!(all_stored, "{snap:?}");
    let failed: Vec<_> = snap
        .iter()
        .filter(|m| m.reconnects > 0 || m.last_error.is_some())
        .map(|m| (m.account.as_str(), m.mailbox.as_str(), m.last_error))
        .collect();
    assert!(failed.is_empty(), "commits failed: {failed:?}");
    d.shutdown().await;
    Ok(())
}

/// Wrong password: `auth_failed`, distinct from network errors, with the long backoff: one
/// attempt, then none for a while (at most 4 an hour with the default 15 min).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_auth_failed_and_not_hammered() -> Result<()> {
    let dc = Dovecot::start(&[("wp", PW)])?;
    let proxy = Proxy::start(dc.imaps_addr()).await?;
    let db = TestDb::sqlite()?;
    let toml = config_toml(
        &db.url,
        None,
        dc.ca_file(),
        &[AccountSpec {
            password: "not-the-password",
            ..account("acc-wrong-pw", "wp", proxy.addr().port(), &["INBOX"])
        }],
    );
    let d = start(&toml).await?;
    let failed = d
        .board()
        .wait_for(WAIT, |s| {
            s[0].state == MailboxState::AuthFailed
                && s[0].last_error == Some("auth")
                && s[0].next_retry_at.is_some()
        })
        .await;
    let snap = d.board().snapshot();
    assert!(failed, "{snap:?}");
    let metrics = common::http_get(d.admin_addr(), "/metrics").await?;
    assert!(metrics.contains(
        r#"idlesync_mailbox_state{account="acc-wrong-pw",mailbox="INBOX",state="auth_failed"} 1"#
    ));
    // The next attempt is scheduled on the slow schedule (auth_failed, 15 min by default), not
    // the network one (100 ms to 2 s here).
    let next_retry = snap[0].next_retry_at.as_deref().context("next_retry_at")?;
    let wait =
        chrono::DateTime::parse_from_rfc3339(next_retry)?.signed_duration_since(chrono::Utc::now());
    assert!(
        wait > chrono::TimeDelta::minutes(10),
        "next attempt at {next_retry}, in {wait}"
    );
    assert_eq!(proxy.connections(), 1, "retried a refused login");
    d.shutdown().await;
    Ok(())
}

/// A panic in one mailbox task is caught and that task restarted; the account's other mailbox
/// keeps its connection and keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_one_mailbox_spares_the_others() -> Result<()> {
    let dc = Dovecot::start(&[("pn", PW)])?;
    dc.create_mailbox("pn", "Work").await?;
    let db = TestDb::sqlite()?;
    let channel = redis::unique_channel("panic");
    let mut sub = redis::subscribe(&redis::url(), &channel).await?;
    let toml = config_toml(
        &db.url,
        Some((&redis::url(), &channel)),
        dc.ca_file(),
        &[account(
            "acc-panic",
            "pn",
            dc.imaps_port(),
            &["INBOX", "Work"],
        )],
    );
    idlesync::fault::inject_panic("acc-panic", "Work");
    let d = start(&toml).await?;
    wait_idling(&d, 2, WAIT).await?;
    let snap = d.board().snapshot();
    let inbox = snap
        .iter()
        .find(|m| m.mailbox == "INBOX")
        .context("INBOX")?;
    let work = snap.iter().find(|m| m.mailbox == "Work").context("Work")?;
    assert_eq!((inbox.reconnects, inbox.last_error), (0, None), "{snap:?}");
    assert_eq!(
        (work.reconnects, work.last_error),
        (1, Some("panic")),
        "{snap:?}"
    );
    for mb in ["INBOX", "Work"] {
        let uid = dc.append("pn", mb, &mail(&format!("to-{mb}"))).await?;
        let rec = sub.next(WAIT).await?;
        assert_eq!(
            (rec["mailbox"].as_str(), rec["uids"].clone()),
            (Some(mb), serde_json::json!([uid]))
        );
    }
    d.shutdown().await;
    Ok(())
}

/// Dovecot at its process limit closes the connection right after LOGIN: a retryable error
/// (`closed`), never mistaken for a refused password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_after_login_is_retryable() -> Result<()> {
    let dc = Dovecot::start_with(DovecotOptions {
        users: vec![("pl".into(), PW.into())],
        process_limit: 1,
        // Logins are accepted; only the imap process after LOGIN is refused.
        extra_config: "service imap-login {\n  process_limit = 10\n}\n".into(),
        ..DovecotOptions::default()
    })?;
    dc.create_mailbox("pl", "Work").await?;
    let db = TestDb::sqlite()?;
    let toml = config_toml(
        &db.url,
        None,
        dc.ca_file(),
        &[account(
            "acc-proc-limit",
            "pl",
            dc.imaps_port(),
            &["INBOX", "Work"],
        )],
    );
    let d = start(&toml).await?;
    let seen = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter().filter(|m| m.state == MailboxState::Idling).count() == 1
                && s.iter()
                    .any(|m| m.last_error.is_some() && m.reconnects >= 2)
        })
        .await;
    let snap = d.board().snapshot();
    assert!(seen, "{snap:?}");
    let refused = snap
        .iter()
        .find(|m| m.state != MailboxState::Idling)
        .context("one refused")?;
    assert_ne!(refused.state, MailboxState::AuthFailed, "{snap:?}");
    // Over TLS the EOF surfaces as a closed stream or as an unexpected-EOF IO error: both are
    // connection errors on the network schedule.
    assert!(
        matches!(refused.last_error, Some("closed" | "io")),
        "EOF after LOGIN: {snap:?}"
    );
    d.shutdown().await;
    Ok(())
}

/// UIDVALIDITY changes (the mailbox is deleted and recreated): a `mailboxReset` record, the
/// mailbox resynced, and the old epoch's rows kept under their own uidvalidity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_change_resyncs() -> Result<()> {
    let dc = Dovecot::start(&[("uv", PW)])?;
    dc.create_mailbox("uv", "Work").await?;
    let db = TestDb::new(Kind::Postgres).await?;
    let channel = redis::unique_channel("uidvalidity");
    let mut sub = redis::subscribe(&redis::url(), &channel).await?;
    let changes_channel = common::setup::changes_channel(&channel);
    let mut changes = redis::subscribe(&redis::url(), &changes_channel).await?;
    let toml = config_toml(
        &db.url,
        Some((&redis::url(), &channel)),
        dc.ca_file(),
        &[account("acc-uidvalidity", "uv", dc.imaps_port(), &["Work"])],
    );
    dc.append("uv", "Work", &mail("old-1")).await?;
    dc.append("uv", "Work", &mail("old-2")).await?;
    let d = start(&toml).await?;
    // Mail already there at the first start is history (#11): imported, not new mail.
    let old = changes.next(WAIT).await?;
    assert_eq!(
        (old["kind"].clone(), old["count"].clone()),
        ("imported".into(), 2.into())
    );
    wait_idling(&d, 1, WAIT).await?;
    d.shutdown().await;

    // A selected mailbox deleted underneath an IDLE session is only noticed at Dovecot's next
    // poll; the change is seen for sure at the next SELECT, which is what this test drives.
    dc.doveadm(&["mailbox", "delete", "-u", "uv", "Work"])?;
    dc.doveadm(&["mailbox", "create", "-u", "uv", "Work"])?;
    let uid = dc.append("uv", "Work", &mail("new-1")).await?;
    let d = start(&toml).await?;

    let reset = sub.next(WAIT).await?;
    assert_eq!(reset["kind"], "mailboxReset", "{reset}");
    assert_ne!(reset["uidValidity"], old["uidValidity"]);
    // The new epoch is re-imported as history too, never as new mail on `email:sync`.
    let fresh = changes.next(WAIT).await?;
    assert_eq!(
        (fresh["kind"].clone(), fresh["uids"].clone()),
        ("imported".into(), serde_json::json!([uid]))
    );
    assert_eq!(fresh["uidValidity"], reset["uidValidity"]);

    let pool = db.pool().await?;
    let epochs: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT uidvalidity, COUNT(*) FROM messages WHERE account_id = 'acc-uidvalidity' GROUP BY uidvalidity ORDER BY COUNT(*) DESC",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        epochs.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![2, 1],
        "{epochs:?}"
    );
    pool.close().await;
    d.shutdown().await;
    Ok(())
}

/// Twenty mailboxes on one host at `connects_per_second = 10`: the connections are spread over
/// at least 1.9 s instead of arriving in the same instant. With `max_connecting = 2` all twenty
/// still come online: each permit goes back once its mailbox is selected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_connections_are_rate_limited() -> Result<()> {
    let dc = Dovecot::start(&[("rl", PW)])?;
    let names: Vec<String> = (0..20).map(|i| format!("Box{i:02}")).collect();
    for n in &names {
        dc.doveadm(&["mailbox", "create", "-u", "rl", n])?;
    }
    let proxy = Proxy::start(dc.imaps_addr()).await?;
    let db = TestDb::sqlite()?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let toml = config_toml(
        &db.url,
        None,
        dc.ca_file(),
        &[account("acc-rate", "rl", proxy.addr().port(), &refs)],
    )
    .replace(
        "connect_timeout = \"10s\"",
        "connect_timeout = \"10s\"\nconnects_per_second = 10\nmax_connecting = 2",
    );
    let d = start(&toml).await?;
    wait_idling(&d, 20, Duration::from_secs(30)).await?;
    let chunks = proxy.client_chunks();
    let mut first_by_conn = std::collections::BTreeMap::new();
    for c in &chunks {
        first_by_conn.entry(c.conn).or_insert(c.at);
    }
    assert_eq!(first_by_conn.len(), 20);
    let earliest = first_by_conn.values().min().context("conns")?;
    let latest = first_by_conn.values().max().context("conns")?;
    let span = latest.duration_since(*earliest);
    assert!(
        span >= Duration::from_millis(1850),
        "20 connections within {span:?}"
    );
    d.shutdown().await;
    Ok(())
}

/// A store of our own on `db`, migrated, for tests that drive it directly.
async fn migrated_store(db: &TestDb) -> Result<idlesync::store::Store> {
    let store = idlesync::store::Store::connect(&idlesync::config::StorageConfig {
        url: db.url.clone(),
        max_connections: 2,
        ..Default::default()
    })
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// One outbox record of `account` as the store commits it, its payload `{"n":n}`.
async fn commit_numbered(
    store: &idlesync::store::Store,
    account: &str,
    n: u32,
) -> Result<OutboxRow> {
    store
        .start_epoch(
            account,
            "INBOX",
            n,
            None,
            None,
            Some(&format!("{{\"n\":{n}}}")),
        )
        .await?
        .context("a committed record")
}

/// The payloads waiting in the outbox, oldest first.
async fn outbox_payloads(store: &idlesync::store::Store) -> Result<Vec<String>> {
    Ok(store
        .outbox_pending(100)
        .await?
        .into_iter()
        .map(|r| r.payload)
        .collect())
}

/// The outbox is bounded: beyond `max_records` (or `retention`) the oldest records go, so a
/// Redis outage of weeks cannot fill the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_is_bounded() -> Result<()> {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let db = TestDb::new(kind).await?;
        let store = migrated_store(&db).await?;
        for i in 0..5 {
            commit_numbered(&store, "acc-bounded", i).await?;
        }
        assert_eq!(store.outbox_depth().await?.0, 5);
        // Nothing is old yet; only the row bound applies: the 3 oldest go.
        assert_eq!(store.outbox_prune(3_600_000, 2).await?, 3, "{kind:?}");
        assert_eq!(
            outbox_payloads(&store).await?,
            vec![r#"{"n":3}"#, r#"{"n":4}"#],
            "{kind:?}"
        );
        // A zero retention drops the rest.
        assert_eq!(store.outbox_prune(-1, 1_000_000).await?, 2, "{kind:?}");
        store.pool().close().await;
    }
    Ok(())
}

/// Pruning by count keeps the newest `max_records` waiting records, whatever gaps published
/// (deleted) records left in the ids: with 3 of 5 waiting and a bound of 3, none goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_prune_keeps_the_newest_by_count_across_id_gaps() -> Result<()> {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let db = TestDb::new(kind).await?;
        let store = migrated_store(&db).await?;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(commit_numbered(&store, "acc-gaps", i).await?.id);
        }
        // Records 1 and 2 were published: 0, 3 and 4 wait.
        store.outbox_delete(ids.get(1..3).context("ids")?).await?;
        assert_eq!(store.outbox_prune(3_600_000, 3).await?, 0, "{kind:?}");
        assert_eq!(
            outbox_payloads(&store).await?,
            vec![r#"{"n":0}"#, r#"{"n":3}"#, r#"{"n":4}"#],
            "{kind:?}"
        );
        // Over the bound by one: only the oldest goes.
        assert_eq!(store.outbox_prune(3_600_000, 2).await?, 1, "{kind:?}");
        assert_eq!(
            outbox_payloads(&store).await?,
            vec![r#"{"n":3}"#, r#"{"n":4}"#],
            "{kind:?}"
        );
        store.pool().close().await;
    }
    Ok(())
}

/// A tagged NO to `UID FETCH` (from a scripted server: Dovecot cannot be made to send one):
/// what arrived before it is stored, the mailbox reconnects as after any retryable error, and
/// the rest is fetched from the last stored UID. Each message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_no_on_fetch_is_retried_from_what_was_stored() -> Result<()> {
    let server =
        common::scripted::start((1..=3).map(|i| mail(&format!("scripted-{i}"))).collect()).await?;
    let db = TestDb::sqlite()?;
    let dc_ca = Dovecot::start(&[])?; // only for a CA file path the config can name
    let toml = config_toml(
        &db.url,
        None,
        dc_ca.ca_file(),
        &[AccountSpec {
            tls: "none",
            ..account("acc-fetch-no", "user", server.port, &["INBOX"])
        }],
    );
    let d = start(&toml).await?;
    let done = d
        .board()
        .wait_for(WAIT, |s| {
            s[0].state == MailboxState::Idling && s[0].last_uid == Some(3) && s[0].reconnects >= 1
        })
        .await;
    assert!(done, "{:?}", d.board().snapshot());
    assert!(server.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let metrics = common::http_get(d.admin_addr(), "/metrics").await?;
    assert!(
        metrics.contains(r#"idlesync_errors_total{account="acc-fetch-no",mailbox="INBOX",error_type="fetch_refused"} 1"#),
        "{metrics}"
    );
    let subjects: Vec<_> = db
        .messages("acc-fetch-no")
        .await?
        .into_iter()
        .map(|(uid, s)| (uid, s.unwrap_or_default()))
        .collect();
    assert_eq!(
        subjects,
        vec![
            (1, "scripted-1".to_string()),
            (2, "scripted-2".to_string()),
            (3, "scripted-3".to_string())
        ]
    );
    d.shutdown().await;
    Ok(())
}

/// The number of the next record published.
async fn next_numbered(sub: &mut redis::Subscriber) -> Result<u64> {
    let rec = sub.next(WAIT).await?;
    rec["n"].as_u64().with_context(|| format!("{rec}"))
}

/// The hand-off queue (2 records here) overflows while the publisher is live: one mailbox's
/// records still reach Redis in commit order. Each round commits five records, hands four over
/// back to back (the third and fourth overflow: only the table has them), waits until the first
/// is published, and hands the fifth over, which now fits in the queue but must not overtake
/// the third and fourth.
#[tokio::test(flavor = "current_thread")]
async fn publish_order_holds_when_the_handoff_queue_overflows() -> Result<()> {
    const ROUNDS: u32 = 16;
    let db = TestDb::sqlite()?;
    let store = migrated_store(&db).await?;
    let channel = redis::unique_channel("publish-order");
    let mut sub = redis::subscribe(&redis::url(), &channel).await?;
    let redis_config = idlesync::config::RedisConfig {
        url: redis::url(),
        channel: channel.clone(),
        changes_channel: format!("{channel}:changes"),
        stream: None,
        stream_maxlen: 1000,
        retry_max: Duration::from_secs(1),
    };
    let (handoff, inbox) = idlesync::handoff::with_capacity(2);
    let cancel = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(
        Publisher {
            store: store.clone(),
            sink: Sink::from_config(Some(&redis_config))?,
            inbox,
            board: Default::default(),
            backoff: Default::default(),
            bounds: Default::default(),
            owner: None,
        }
        .run(cancel.clone()),
    );
    let mut published = Vec::new();
    for round in 0..ROUNDS {
        let mut rows = Vec::new();
        for i in 0..5 {
            rows.push(commit_numbered(&store, "acc-order", round * 5 + i).await?);
        }
        let fifth = rows.pop().context("five rows")?;
        for row in rows {
            handoff.committed(row);
        }
        published.push(next_numbered(&mut sub).await?);
        handoff.committed(fifth);
        while published.len() < (round as usize + 1) * 5 {
            published.push(next_numbered(&mut sub).await?);
        }
    }
    cancel.cancel();
    publisher.await?;
    let want: Vec<u64> = (0..u64::from(ROUNDS) * 5).collect();
    assert_eq!(published, want, "records out of commit order");
    Ok(())
}
