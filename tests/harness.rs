//! Tests of the test harness itself (`tests/common`): the throwaway Dovecot and the proxy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{MailboxDatum, Response};
use common::dovecot::{Dovecot, DovecotOptions};
use common::proxy::{Mode, Proxy};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;

const USER: &str = "alice";
const PASS: &str = "secret";
/// Generous bound for things that normally take well under a second.
const DEADLINE: Duration = Duration::from_secs(10);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

type TlsSession = async_imap::Session<TlsStream<TcpStream>>;

/// Logs in over implicit TLS the way the daemon does: greeting first, then LOGIN.
async fn login_tls(dovecot: &Dovecot, user: &str) -> Result<TlsSession> {
    let mut client = async_imap::Client::new(dovecot.connect_tls().await?);
    let greeting = client.read_response().await?.context("no greeting")?;
    ensure!(
        matches!(greeting.parsed(), Response::Data { .. }),
        "greeting {:?}",
        greeting.parsed()
    );
    let pass = dovecot.password(user).context("no such user")?;
    client.login(user, pass).await.map_err(|(e, _)| e.into())
}

fn exists(response: &Response<'_>) -> Option<u32> {
    match response {
        Response::MailboxData(MailboxDatum::Exists(n)) => Some(*n),
        _ => None,
    }
}

/// IDLEs on the selected mailbox until the first push, and returns its EXISTS count.
async fn idle_for_exists(session: TlsSession) -> Result<(u32, TlsSession)> {
    let mut idle = session.idle();
    idle.init().await?;
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(60));
    let n = match timeout(DEADLINE, wait)
        .await
        .context("no push within 10 s")??
    {
        IdleResponse::NewData(data) => {
            exists(data.parsed()).with_context(|| format!("pushed {:?}", data.parsed()))?
        }
        other => bail!("IDLE ended with {other:?}"),
    };
    let session = timeout(DEADLINE, idle.done()).await??;
    Ok((n, session))
}

#[tokio::test]
async fn login_over_implicit_tls() -> Result<()> {
    let started = std::time::Instant::now();
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    eprintln!("Dovecot started in {:?}", started.elapsed());

    let mut session = login_tls(&dovecot, USER).await?;
    let caps = session.capabilities().await?;
    for cap in ["IDLE", "UIDPLUS", "CONDSTORE", "QRESYNC"] {
        ensure!(caps.has_str(cap), "missing {cap}");
    }
    let inbox = session.select("INBOX").await?;
    assert_eq!(inbox.exists, 0);
    session.logout().await?;

    let mut bad = async_imap::Client::new(dovecot.connect_tls().await?);
    bad.read_response().await?;
    assert!(bad.login(USER, "wrong").await.is_err());
    // Failed logins are not delayed (auth_failure_delay off, loopback exempt from anvil's
    // penalty), so the fault tests' wrong-password rounds are quick. Checked in the config
    // Dovecot runs with, not with a stopwatch.
    let settings = dovecot.doveadm(&[
        "config",
        "-h",
        "auth_failure_delay",
        "login_trusted_networks",
    ])?;
    let mut lines = settings.lines();
    assert_eq!(lines.next(), Some("0"), "{settings}");
    assert!(
        lines.next().is_some_and(|l| l.contains("127.0.0.0/8")),
        "{settings}"
    );
    Ok(())
}

#[tokio::test]
async fn login_via_starttls_on_the_plain_port() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    let tcp = TcpStream::connect(dovecot.imap_addr()).await?;
    let mut plain = async_imap::Client::new(tcp);
    plain.read_response().await?.context("no greeting")?;
    plain.run_command_and_check_ok("STARTTLS", None).await?;
    let tcp = plain.into_inner();
    // A config built from ca_file, as the daemon builds its own.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dovecot.ca_file())? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    // No greeting after STARTTLS.
    let client = async_imap::Client::new(tls);
    let mut session = client.login(USER, PASS).await.map_err(|(e, _)| e)?;
    session.select("INBOX").await?;
    session.logout().await?;

    // The certificate is also valid for the IP address.
    let tcp = TcpStream::connect(dovecot.imaps_addr()).await?;
    tokio_rustls::TlsConnector::from(dovecot.tls_config())
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    Ok(())
}

#[tokio::test]
async fn append_returns_increasing_uids_and_creates_mailboxes() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS), ("bob", "pw2")])?;
    for expected in 1..=3 {
        let uid = dovecot
            .append(USER, "INBOX", &message(&format!("m{expected}")))
            .await?;
        assert_eq!(uid, expected);
    }
    assert_eq!(dovecot.append(USER, "Archive", &message("a1")).await?, 1);
    assert_eq!(dovecot.append("bob", "INBOX", &message("b1")).await?, 1);
    dovecot.create_mailbox(USER, "Empty").await?;
    dovecot.create_mailbox(USER, "Empty").await?;

    let mut session = login_tls(&dovecot, USER).await?;
    assert_eq!(session.select("INBOX").await?.exists, 3);
    assert_eq!(session.select("Archive").await?.exists, 1);
    assert_eq!(session.select("Empty").await?.exists, 0);
    session.logout().await?;

    assert!(dovecot.maildir(USER).join("cur").is_dir());
    assert!(dovecot.maildir(USER).join(".Archive").is_dir());
    assert!(dovecot.append("nobody", "INBOX", b"x").await.is_err());
    let status = dovecot.doveadm(&["mailbox", "status", "-u", USER, "messages", "INBOX"])?;
    assert_eq!(status.trim(), "INBOX messages=3");
    Ok(())
}

#[tokio::test]
async fn idle_is_pushed_exists_after_an_append() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    dovecot.append(USER, "INBOX", &message("before")).await?;
    let mut session = login_tls(&dovecot, USER).await?;
    assert_eq!(session.select("INBOX").await?.exists, 1);

    let mut idle = session.idle();
    idle.init().await?;
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(60));
    let appended = async {
        let uid = dovecot.append(USER, "INBOX", &message("pushed")).await?;
        anyhow::Ok((uid, Instant::now()))
    };
    let (pushed, appended) = tokio::join!(timeout(DEADLINE, wait), appended);
    let (uid, appended_at) = appended?;
    assert_eq!(uid, 2);
    match pushed.context("no EXISTS within 10 s")?? {
        IdleResponse::NewData(data) => assert_eq!(exists(data.parsed()), Some(2)),
        other => panic!("IDLE ended with {other:?}"),
    }
    eprintln!(
        "EXISTS arrived {:?} after the APPEND completed",
        appended_at.elapsed()
    );
    let mut session = timeout(DEADLINE, idle.done()).await??;
    session.logout().await?;
    Ok(())
}

/// With the default client_limit = 1, two sessions IDLE on one mailbox are both pushed
/// (crate-notes, "Shared watches").
#[tokio::test]
async fn two_idle_sessions_on_one_mailbox_are_both_pushed() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    let mut a = login_tls(&dovecot, USER).await?;
    let mut b = login_tls(&dovecot, USER).await?;
    a.select("INBOX").await?;
    b.select("INBOX").await?;
    let started = Instant::now();
    let raw = message("both");
    let (a, b, uid) = tokio::join!(
        idle_for_exists(a),
        idle_for_exists(b),
        dovecot.append(USER, "INBOX", &raw)
    );
    assert_eq!(uid?, 1);
    assert_eq!(a?.0, 1);
    assert_eq!(b?.0, 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn restart_keeps_mail_ports_and_uidvalidity() -> Result<()> {
    let mut dovecot = Dovecot::start(&[(USER, PASS)])?;
    let (imap, imaps) = (dovecot.imap_port(), dovecot.imaps_port());
    assert_eq!(dovecot.append(USER, "INBOX", &message("one")).await?, 1);
    let mut session = login_tls(&dovecot, USER).await?;
    let before = session.select("INBOX").await?;

    let started = std::time::Instant::now();
    dovecot.stop()?;
    eprintln!("Dovecot stopped in {:?}", started.elapsed());
    // The IDLE-capable imap process outlives the master unless stop ends it: the old session
    // must see the server go away.
    let gone = timeout(DEADLINE, async {
        // `* BYE Server shutting down.`, then EOF (or a reset).
        while session.read_response().await?.is_some() {}
        anyhow::Ok(())
    });
    if gone.await.is_err() {
        bail!("the old connection is still open after stop");
    }
    assert!(
        TcpStream::connect(("127.0.0.1", imap)).await.is_err(),
        "port still open"
    );
    dovecot.stop()?; // idempotent

    let started = std::time::Instant::now();
    dovecot.restart()?;
    eprintln!("Dovecot restarted in {:?}", started.elapsed());
    assert_eq!((dovecot.imap_port(), dovecot.imaps_port()), (imap, imaps));
    assert_eq!(dovecot.append(USER, "INBOX", &message("two")).await?, 2);
    let mut session = login_tls(&dovecot, USER).await?;
    let after = session.select("INBOX").await?;
    assert_eq!(after.uid_validity, before.uid_validity);
    assert!(after.uid_validity.is_some());
    assert_eq!(after.exists, 2);
    session.logout().await?;
    Ok(())
}

#[tokio::test]
async fn instances_run_in_parallel_with_larger_limits() -> Result<()> {
    let dovecots: Vec<Dovecot> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                s.spawn(move || {
                    Dovecot::start_with(DovecotOptions {
                        users: vec![(USER.into(), PASS.into())],
                        client_limit: if i == 0 { 1 } else { 50 },
                        process_limit: 20,
                        extra_config: "mailbox_idle_check_interval = 5s\n".into(),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .collect::<Result<_>>()?;
    let mut ports: Vec<u16> = dovecots
        .iter()
        .flat_map(|d| [d.imap_port(), d.imaps_port()])
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6);
    for dovecot in &dovecots {
        assert_eq!(dovecot.append(USER, "INBOX", &message("p")).await?, 1);
        let sessions =
            futures::future::try_join_all((0..5).map(|_| login_tls(dovecot, USER))).await?;
        for mut session in sessions {
            session.logout().await?;
        }
        assert!(!dovecot.log().contains("Error"), "{}", dovecot.log());
    }
    Ok(())
}

/// A raw plain-IMAP connection through the proxy: exact byte counts are easy to predict.
async fn raw(proxy: &Proxy) -> Result<BufReader<TcpStream>> {
    Ok(BufReader::new(TcpStream::connect(proxy.addr()).await?))
}

async fn line(conn: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    let n = timeout(DEADLINE, conn.read_line(&mut line)).await??;
    ensure!(n > 0, "connection closed");
    Ok(line)
}

async fn reply(conn: &mut BufReader<TcpStream>, tag: &str) -> Result<String> {
    loop {
        let l = line(conn).await?;
        if l.starts_with(&format!("{tag} ")) {
            return Ok(l);
        }
    }
}

#[tokio::test]
async fn proxy_forwards_and_counts_client_bytes_exactly() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    let proxy = Proxy::start(dovecot.imap_addr()).await?;
    let mut conn = raw(&proxy).await?;
    assert!(line(&mut conn).await?.starts_with("* OK [CAPABILITY"));
    assert_eq!(proxy.client_bytes(), 0);
    let t0 = Instant::now();
    conn.get_mut()
        .write_all(b"a1 LOGIN alice secret\r\n")
        .await?;
    assert!(reply(&mut conn, "a1").await?.starts_with("a1 OK"));
    conn.get_mut().write_all(b"a2 NOOP\r\n").await?;
    assert!(reply(&mut conn, "a2").await?.starts_with("a2 OK"));
    assert_eq!(proxy.client_bytes(), 23 + 9);
    assert_eq!(proxy.client_bytes_since(t0), 23 + 9);
    let t1 = Instant::now();
    assert_eq!(proxy.client_bytes_since(t1), 0);
    assert_eq!(proxy.count_commands("LOGIN"), 1);
    assert_eq!(proxy.count_commands("noop"), 1);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.open_connections(), 1);
    assert!(proxy.server_bytes() > 0);

    // A whole async-imap session through the proxy, including IDLE and DONE.
    let mut client = async_imap::Client::new(TcpStream::connect(proxy.addr()).await?);
    client.read_response().await?;
    let mut session = client.login(USER, PASS).await.map_err(|(e, _)| e)?;
    session.select("INBOX").await?;
    let raw = message("via proxy");
    let (idled, uid) = tokio::join!(idle_plain(session), dovecot.append(USER, "INBOX", &raw));
    assert_eq!(uid?, 1);
    let (n, mut session) = idled?;
    assert_eq!(n, 1);
    session.logout().await?;
    proxy.wait_connections(2, DEADLINE).await?;
    assert_eq!(proxy.count_commands("LOGIN"), 2);
    assert_eq!(proxy.count_commands("IDLE"), 1);
    assert_eq!(proxy.count_commands("DONE"), 1);
    let logged: u64 = proxy
        .client_chunks()
        .iter()
        .map(|c| c.data.len() as u64)
        .sum();
    assert_eq!(logged, proxy.client_bytes());

    conn.get_mut().write_all(b"a3 LOGOUT\r\n").await?;
    assert!(reply(&mut conn, "a3").await?.starts_with("a3 OK"));
    proxy
        .wait_until(DEADLINE, |p| p.open_connections() == 0)
        .await?;
    Ok(())
}

async fn idle_plain(
    session: async_imap::Session<TcpStream>,
) -> Result<(u32, async_imap::Session<TcpStream>)> {
    let mut idle = session.idle();
    idle.init().await?;
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(60));
    let n = match timeout(DEADLINE, wait).await.context("no push")?? {
        IdleResponse::NewData(data) => exists(data.parsed()).context("not EXISTS")?,
        other => bail!("IDLE ended with {other:?}"),
    };
    Ok((n, timeout(DEADLINE, idle.done()).await??))
}

#[tokio::test]
async fn proxy_blackhole_stops_traffic_both_ways() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    let proxy = Proxy::start(dovecot.imap_addr()).await?;
    let mut conn = raw(&proxy).await?;
    line(&mut conn).await?;

    proxy.set_mode(Mode::Blackhole);
    let server_before = proxy.server_bytes();
    conn.get_mut().write_all(b"b1 NOOP\r\n").await?;
    proxy
        .wait_until(DEADLINE, |p| p.client_bytes() == 9)
        .await?;
    // Nothing comes back: a silent network. (Waiting for an absence needs a window.)
    let mut buf = [0u8; 64];
    assert!(timeout(Duration::from_millis(700), conn.read(&mut buf))
        .await
        .is_err());
    assert_eq!(proxy.server_bytes(), server_before);

    // A new connection is accepted but its greeting is swallowed.
    let mut fresh = raw(&proxy).await?;
    proxy.wait_connections(2, DEADLINE).await?;
    assert!(timeout(Duration::from_millis(300), fresh.read(&mut buf))
        .await
        .is_err());

    // Back to forwarding: the swallowed NOOP is gone, but the connection works again.
    proxy.set_mode(Mode::Forward);
    conn.get_mut().write_all(b"b2 NOOP\r\n").await?;
    assert!(reply(&mut conn, "b2").await?.starts_with("b2 OK"));
    Ok(())
}

#[tokio::test]
async fn proxy_refuses_new_and_cuts_open_connections() -> Result<()> {
    let dovecot = Dovecot::start(&[(USER, PASS)])?;
    let proxy = Proxy::start(dovecot.imap_addr()).await?;
    let mut open = raw(&proxy).await?;
    line(&mut open).await?;

    proxy.set_mode(Mode::Refuse);
    let mut refused = raw(&proxy).await?;
    let mut buf = [0u8; 64];
    let read = timeout(DEADLINE, refused.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "refused connection read {read:?}"
    );
    assert_eq!(proxy.connections(), 2);
    // The open connection still forwards.
    open.get_mut().write_all(b"c1 NOOP\r\n").await?;
    assert!(reply(&mut open, "c1").await?.starts_with("c1 OK"));

    proxy.set_mode(Mode::Forward);
    proxy.cut_all();
    let read = timeout(DEADLINE, open.read(&mut buf)).await?;
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "cut connection read {read:?}"
    );
    proxy
        .wait_until(DEADLINE, |p| p.open_connections() == 0)
        .await?;

    // New connections work after a cut.
    let mut again = raw(&proxy).await?;
    assert!(line(&mut again).await?.starts_with("* OK"));

    // With the server down, a connection is accepted and then reset.
    drop(dovecot);
    let mut down = raw(&proxy).await?;
    let read = timeout(DEADLINE, down.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");
    Ok(())
}
