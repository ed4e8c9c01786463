//! IDLE and protocol details against the scripted server (tests/common/scripted.rs): an EXISTS
//! parked before `+ idling` (#12 item 1), servers silent during IDLE and half-open connections
//! (item 16), and server throttling (item 13). Against Dovecot: changes pushed into IDLE
//! reach the connection's view whole (#11).

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use common::daemon::{mail, start, wait_idling, AccountSpec};
use common::db::TestDb;
use common::proxy::{Mode, Proxy};
use common::scripted::{self, Behaviour, Scripted};
use common::setup::ConfigToml;
use idlesync::status::MailboxState;

/// Generous; every wait here is for an event, never a measured duration.
const WAIT: Duration = Duration::from_secs(15);

/// A config for one plain-TCP account on `port` (no TLS, so no CA file), with these `[imap]`
/// timers over the test defaults.
fn toml(db: &TestDb, id: &str, port: u16, timers: &[(&str, &str)]) -> String {
    let account = AccountSpec {
        tls: "none",
        ..AccountSpec::implicit(id, "user", "pw", port, &["INBOX"])
    };
    let config = ConfigToml::new(&db.url).account(&account, None);
    timers
        .iter()
        .fold(config, |c, (key, value)| c.set("imap", key, *value))
        .render()
}

fn messages(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| mail(&format!("{prefix}-{i}"))).collect()
}

/// Item 1: `* 2 EXISTS` written before `+ idling` lands on async-imap's unsolicited channel
/// during `init()`. It must be fetched at once, with no further event: both timers are ten
/// minutes, the wait fifteen seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_wakeup_exists_before_idling_is_fetched() -> Result<()> {
    let server = scripted::start_with(
        messages("early", 2),
        Behaviour {
            exists_before_idling: true,
            ..Behaviour::default()
        },
    )
    .await?;
    let db = TestDb::sqlite()?;
    let d = start(&toml(
        &db,
        "acc-lost-wakeup",
        server.port,
        &[("dead_after", "10m"), ("idle_renew", "10m")],
    ))
    .await?;
    let fetched = d.board().wait_for(WAIT, |s| s[0].last_uid == Some(2)).await;
    assert!(fetched, "{:?}", d.board().snapshot());
    assert_eq!(db.messages("acc-lost-wakeup").await?.len(), 2);
    assert_eq!(server.connections(), 1);
    d.shutdown().await;
    Ok(())
}

/// Waits until the server has seen `n` DONEs and, after the last, the next IDLE.
async fn wait_reentered(server: &Scripted, n: usize) -> Result<()> {
    common::wait_until(WAIT, || async {
        let dones = server.count("DONE");
        Ok(dones >= n && server.count("IDLE") == dones + 1)
    })
    .await
}

/// Item 16: a server that sends nothing during IDLE (Cyrus, Courier, Stalwart) keeps its
/// connection past `dead_after`: the client leaves IDLE with DONE, the server answers, and
/// the same connection idles again. No error, no reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_server_keeps_its_connection() -> Result<()> {
    let server = scripted::start_with(messages("quiet", 1), Behaviour::default()).await?;
    let db = TestDb::sqlite()?;
    let d = start(&toml(
        &db,
        "acc-quiet",
        server.port,
        &[("dead_after", "1s"), ("idle_renew", "10m")],
    ))
    .await?;
    wait_idling(&d, 1, WAIT).await?;
    // Three silences of dead_after each, all answered on the first connection.
    wait_reentered(&server, 3).await?;
    assert_eq!(server.connections(), 1);
    let snap = d.board().snapshot();
    assert_eq!(
        (snap[0].last_error, snap[0].reconnects),
        (None, 0),
        "{snap:?}"
    );
    d.shutdown().await;
    Ok(())
}

/// Item 16: once a server has shown it sends keepalives on a connection (`* OK Still here`
/// during IDLE), silence past `dead_after` there means a dead connection, without a DONE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_after_keepalives_is_a_dead_connection() -> Result<()> {
    let server = scripted::start_with(
        messages("keepalive", 1),
        Behaviour {
            keepalive_on_first_idle: true,
            ..Behaviour::default()
        },
    )
    .await?;
    let db = TestDb::sqlite()?;
    let d = start(&toml(
        &db,
        "acc-keepalive",
        server.port,
        &[("dead_after", "1s"), ("idle_renew", "10m")],
    ))
    .await?;
    let dead = d
        .board()
        .wait_for(WAIT, |s| {
            s[0].last_error == Some("dead_connection") && s[0].reconnects >= 1
        })
        .await;
    assert!(dead, "{:?}", d.board().snapshot());
    let first_dones = server
        .lines()
        .iter()
        .filter(|(conn, l)| *conn == 0 && l == "DONE")
        .count();
    assert_eq!(
        first_dones, 0,
        "no DONE probe on a connection with keepalives"
    );
    d.shutdown().await;
    Ok(())
}

/// Item 16: a half-open connection to a quiet server (the proxy stops forwarding and hides
/// the close) is found within `dead_after` + `done_timeout`: after the silence, one DONE goes
/// out, nothing answers it, and the connection is declared dead and replaced. idle_renew is
/// ten minutes, so the renew timer plays no part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_quiet_connection_is_found() -> Result<()> {
    let server = scripted::start_with(messages("half-open", 1), Behaviour::default()).await?;
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], server.port))).await?;
    let db = TestDb::sqlite()?;
    let d = start(&toml(
        &db,
        "acc-half-open",
        proxy.addr().port(),
        &[
            ("dead_after", "2s"),
            ("done_timeout", "1s"),
            ("idle_renew", "10m"),
        ],
    ))
    .await?;
    wait_idling(&d, 1, WAIT).await?;
    // Right after a probe was answered, so the next one is a whole dead_after away.
    wait_reentered(&server, 1).await?;
    proxy.set_mode(Mode::Blackhole);
    let answered = server.count("DONE");
    let dead = d
        .board()
        .wait_for(WAIT, |s| s[0].last_error == Some("dead_connection"))
        .await;
    assert!(dead, "{:?}", d.board().snapshot());
    assert_eq!(
        proxy.count_commands("DONE") - answered,
        1,
        "exactly one unanswered DONE before the connection was given up"
    );
    proxy.set_mode(Mode::Forward);
    proxy.cut_all();
    common::daemon::wait_reconnected_idling(&d, WAIT).await?;
    assert!(server.connections() >= 2);
    d.shutdown().await;
    Ok(())
}
/// Starts a daemon on a scripted server with `behaviour`, waits until the first connection's
/// error is on the board and the second connection idles, and returns the metrics page.
async fn throttled_then_idling(id: &str, behaviour: Behaviour) -> Result<String> {
    let server = scripted::start_with(messages(id, 1), behaviour).await?;
    let db = TestDb::sqlite()?;
    let d = start(&toml(&db, id, server.port, &[])).await?;
    let recovered = d
        .board()
        .wait_for(WAIT, |s| {
            s[0].last_error.is_some() && s[0].state == MailboxState::Idling
        })
        .await;
    let snap = d.board().snapshot();
    assert!(recovered, "{snap:?}");
    assert_eq!(snap[0].last_error, Some("throttled"), "{snap:?}");
    assert_eq!(server.connections(), 2);
    let metrics = common::http_get(d.admin_addr(), "/metrics").await?;
    d.shutdown().await;
    Ok(metrics)
}

/// Item 13: RFC 5530 `[UNAVAILABLE]` on SELECT is throttling, not a missing mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_select_unavailable_is_classified() -> Result<()> {
    let metrics = throttled_then_idling(
        "acc-throttle-select",
        Behaviour {
            first_select_reply: Some("NO [UNAVAILABLE] backend down, try later".into()),
            ..Behaviour::default()
        },
    )
    .await?;
    assert!(
        metrics.contains(r#"idlesync_errors_total{account="acc-throttle-select",mailbox="INBOX",error_type="throttled"} 1"#),
        "{metrics}"
    );
    Ok(())
}

/// Item 13: Microsoft 365's throttling text on LOGIN is throttling, not a refused password
/// (which would park the mailbox in `auth_failed` for 15 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_login_microsoft_text_is_classified() -> Result<()> {
    throttled_then_idling(
        "acc-throttle-login",
        Behaviour {
            first_login_reply: Some(
                "NO Request is throttled. Suggested Backoff Time: 200 milliseconds".into(),
            ),
            ..Behaviour::default()
        },
    )
    .await?;
    Ok(())
}

/// Item 13: `[LIMIT]` on `UID FETCH` is throttling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_fetch_limit_is_classified() -> Result<()> {
    throttled_then_idling(
        "acc-throttle-fetch",
        Behaviour {
            first_fetch_reply: Some("NO [LIMIT] too many fetches".into()),
            ..Behaviour::default()
        },
    )
    .await?;
    Ok(())
}

/// Item 13: the suggested delay travels in the error, for the supervisor to use in place of its
/// schedule: Microsoft's text on LOGIN and on SELECT, and none for a bare `[UNAVAILABLE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_errors_carry_the_suggested_delay() -> Result<()> {
    use idlesync::imap::connect::{self, Endpoint};
    let ms = "Request is throttled. Suggested Backoff Time: 1500 milliseconds";
    let on_login = scripted::start_with(
        messages("delay", 1),
        Behaviour {
            first_login_reply: Some(format!("NO {ms}")),
            ..Behaviour::default()
        },
    )
    .await?;
    let on_select = scripted::start_with(
        messages("delay", 1),
        Behaviour {
            first_select_reply: Some(format!("BAD {ms}")),
            ..Behaviour::default()
        },
    )
    .await?;
    let bare = scripted::start_with(
        messages("delay", 1),
        Behaviour {
            first_select_reply: Some("NO [UNAVAILABLE] later".into()),
            ..Behaviour::default()
        },
    )
    .await?;
    let db = TestDb::sqlite()?;
    let t = Duration::from_secs(10);
    let mut found = Vec::new();
    for server in [&on_login, &on_select, &bare] {
        let config = idlesync::Config::parse(
            Path::new("test.toml"),
            toml(&db, "acc-delay", server.port, &[]).as_bytes(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ep = Endpoint::from_account(&config.accounts[0])?;
        let client = connect::open(&ep, t).await?;
        let err = match connect::login(client, &ep, t).await {
            Err(e) => e,
            Ok(mut session) => connect::select(
                &mut session,
                "INBOX",
                Default::default(),
                None,
                &mut idlesync::imap::view::View::new(false),
                t,
            )
            .await
            .expect_err("the first SELECT is refused"),
        };
        assert_eq!(err.kind(), "throttled", "{err:?}");
        assert!(!err.is_auth(), "{err:?}");
        found.push(err.retry_after());
    }
    let suggested = Some(Duration::from_millis(1500));
    assert_eq!(found, vec![suggested, suggested, None]);
    Ok(())
}

/// Item 13, through the supervisor: Microsoft's suggested 20 minutes replace the schedule
/// (whose longest delay is 2 s in this config), in the `transient` class, not `auth_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_login_waits_the_suggested_delay() -> Result<()> {
    let server = scripted::start_with(
        messages("wait", 1),
        Behaviour {
            first_login_reply: Some(
                "NO Request is throttled. Suggested Backoff Time: 1200000 milliseconds".into(),
            ),
            ..Behaviour::default()
        },
    )
    .await?;
    let db = TestDb::sqlite()?;
    let d = start(&toml(&db, "acc-throttle-wait", server.port, &[])).await?;
    let waiting = d
        .board()
        .wait_for(WAIT, |s| s[0].next_retry_at.is_some())
        .await;
    let m = d.board().snapshot().remove(0);
    assert!(waiting, "{m:?}");
    assert_eq!(
        (m.state, m.last_error, m.error_class),
        (MailboxState::Backoff, Some("throttled"), Some("transient")),
        "{m:?}"
    );
    let at = chrono::DateTime::parse_from_rfc3339(m.next_retry_at.as_deref().unwrap_or(""))?;
    let left = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(left.num_minutes() >= 19, "retry in {left}: {m:?}");
    assert_eq!(server.connections(), 1);
    d.shutdown().await;
    Ok(())
}

/// #11: a flag storm and expunges pushed into IDLE by a real server reach the view whole, by
/// sequence number (no QRESYNC), in batches; async-imap's 100-entry channel would drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_flag_storm_and_expunges_reach_the_view() -> Result<()> {
    use async_imap::imap_proto::{MailboxDatum, Response};
    use idlesync::imap::idle::{self, IdleEvent, IdleTimers, Liveness};
    use idlesync::imap::view::View;
    use idlesync::imap::Io;
    use tokio_util::sync::CancellationToken;

    const N: u32 = 600;
    let dc = common::dovecot::Dovecot::start(&[("storm", "storm-pw")])?;
    let mut other = common::dovecot::Wire::login(&dc, "storm").await?;
    let mut uids = Vec::new();
    for raw in messages("storm", N as usize) {
        uids.push(other.append("INBOX", &raw).await?);
    }

    let mut client = async_imap::Client::new(Box::new(dc.connect_tls().await?) as Box<dyn Io>);
    client.read_response().await?;
    let mut session = client
        .login("storm", "storm-pw")
        .await
        .map_err(|(e, _)| e)?;
    let mailbox = session.select("INBOX").await?;
    let mut view = View::new(false);
    view.absorb(&Response::MailboxData(MailboxDatum::Exists(mailbox.exists)));
    for (seq, uid) in (1..).zip(&uids) {
        view.place(seq, *uid);
    }
    // The catch-up's `UID FETCH n:*` would have taken SELECT's EXISTS; nothing is new.
    assert!(view.take_new_mail().is_some());
    let timers = IdleTimers {
        renew: Duration::from_secs(600),
        dead_after: Duration::from_secs(600),
        done_timeout: WAIT,
    };
    let mut idling = idle::enter(session, &mut view, timers, || {}).await?;

    let r = other.command("SELECT INBOX", None).await?;
    anyhow::ensure!(r.starts_with("OK"), "SELECT: {r}");
    let r = other
        .command("STORE 1:* +FLAGS.SILENT (\\Seen)", None)
        .await?;
    anyhow::ensure!(r.starts_with("OK"), "STORE: {r}");
    let r = other
        .command("STORE 1:3 +FLAGS.SILENT (\\Deleted)", None)
        .await?;
    anyhow::ensure!(r.starts_with("OK"), "STORE: {r}");
    let r = other.command("EXPUNGE", None).await?;
    anyhow::ensure!(r.starts_with("OK"), "EXPUNGE: {r}");

    let (cancel, mut live) = (CancellationToken::new(), Liveness::default());
    let (mut flagged, mut expunged) = (std::collections::BTreeSet::new(), Vec::new());
    // One batch per wait; a storm of N changes is at most N batches.
    for _ in 0..N {
        let ev = tokio::time::timeout(
            WAIT,
            idling.wait(
                &mut view,
                timers,
                &mut live,
                &cancel,
                &tokio::sync::Notify::new(),
            ),
        )
        .await??;
        anyhow::ensure!(ev == IdleEvent::Changed, "{ev:?}");
        let set = view.pending.take_batch(usize::MAX);
        flagged.extend(
            set.flags
                .iter()
                .filter(|f| f.flags.contains("\\Seen"))
                .map(|f| f.uid),
        );
        expunged.extend(set.expunged);
        if expunged.len() == 3 {
            break;
        }
    }
    let session = idling.done(&mut view, timers).await?;
    assert_eq!(expunged, uids[..3].to_vec());
    // Every message still there was reported \Seen (an expunge cancels its flag report).
    let rest: std::collections::BTreeSet<u32> = uids[3..].iter().copied().collect();
    assert!(
        rest.is_subset(&flagged),
        "{} of {} reported",
        flagged.len(),
        rest.len()
    );
    assert_eq!(view.exists(), N - 3);
    assert!(!view.lost());
    drop(session);
    other.logout().await;
    Ok(())
}
