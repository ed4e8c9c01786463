//! Strict TLS against real Dovecot: a certificate from the wrong CA is refused, and so is a
//! STARTTLS that a man in the middle strips or fakes. In every case no credentials leave.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::daemon::AccountSpec;
use common::dovecot::Dovecot;
use common::setup::ConfigToml;
use idlesync::imap::connect::{self, Endpoint};
use idlesync::imap::ImapError;
use idlesync::status::MailboxState;
use idlesync::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);
const PASSWORD: &str = "tls-test-password-9";

fn account_toml(db: &str, id: &str, port: u16, tls: &str, ca_file: Option<&Path>) -> String {
    let erin = AccountSpec {
        tls,
        ..AccountSpec::implicit(id, "erin", PASSWORD, port, &["INBOX"])
    };
    ConfigToml::new(db)
        .set("backoff", "max", "1s")
        .account(&erin, ca_file)
        .render()
}

fn endpoint(toml: &str) -> Result<Endpoint> {
    let config = Config::parse(Path::new("tls.toml"), toml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Endpoint::from_account(&config.accounts[0])?)
}

/// A CA that signed nothing Dovecot serves.
fn other_ca(dir: &Path) -> Result<std::path::PathBuf> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other-ca.pem",
            "-days",
            "30",
        ])
        .args([
            "-subj",
            "/CN=some other CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ])
        .output()?;
    ensure!(out.status.success(), "openssl: {out:?}");
    Ok(dir.join("other-ca.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_the_wrong_ca_is_refused() -> Result<()> {
    let dc = Dovecot::start(&[("erin", PASSWORD)])?;
    let dir = tempfile::tempdir()?;
    let wrong = other_ca(dir.path())?;
    let db = common::db::TestDb::sqlite()?;

    // With the wrong CA, and with the public roots alone: both refused at the handshake.
    for (ca, what) in [
        (Some(wrong.as_path()), "wrong ca_file"),
        (None, "webpki roots only"),
    ] {
        for (tls, port) in [("implicit", dc.imaps_port()), ("starttls", dc.imap_port())] {
            let ep = endpoint(&account_toml(&db.url, "tls-ca-x", port, tls, ca))?;
            match connect::open(&ep, T).await {
                Err(e @ ImapError::Tls { .. }) => {
                    let msg = e.to_string();
                    ensure!(
                        msg.contains("certificate") && msg.contains("127.0.0.1"),
                        "{what}/{tls}: unclear error: {msg}"
                    );
                    ensure!(e.kind() == "tls");
                }
                Err(e) => bail!("{what}/{tls}: wrong error: {e:?}"),
                Ok(_) => bail!("{what}/{tls}: connected despite an untrusted certificate"),
            }
        }
    }
    // The right CA connects, so the refusals above were about the CA.
    let ep = endpoint(&account_toml(
        &db.url,
        "tls-ca-x",
        dc.imaps_port(),
        "implicit",
        Some(dc.ca_file()),
    ))?;
    connect::open(&ep, T).await.context("with the right CA")?;

    // The daemon reports it as a `tls` error of class config_or_server: state `failed`, retried
    // slowly (retrying soon cannot make the certificate verify).
    let toml = account_toml(
        &db.url,
        "tls-ca-1",
        dc.imaps_port(),
        "implicit",
        Some(&wrong),
    );
    let d = common::daemon::start(&toml).await?;
    let reported = d
        .board()
        .wait_for(T, |s| {
            s.iter()
                .all(|m| m.last_error == Some("tls") && m.state == MailboxState::Failed)
        })
        .await;
    ensure!(reported, "{:?}", d.board().snapshot());
    ensure!(
        !dc.log().contains("erin"),
        "a login reached Dovecot:\n{}",
        dc.log()
    );
    tokio::time::timeout(T, d.shutdown()).await?;
    Ok(())
}

/// What the man in the middle does to STARTTLS.
#[derive(Clone, Copy, PartialEq)]
enum Attack {
    /// Removes STARTTLS from the capabilities and answers the command with BAD.
    Strip,
    /// Answers OK, then keeps talking plaintext.
    FakeOk,
}

/// A one-connection man in the middle in front of Dovecot's plain port. Returns its address
/// and a task that yields every line the client sent.
async fn mitm(
    upstream: SocketAddr,
    attack: Attack,
) -> Result<(SocketAddr, JoinHandle<Vec<String>>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let Ok((client, _)) = listener.accept().await else {
            return seen;
        };
        let Ok(server) = TcpStream::connect(upstream).await else {
            return seen;
        };
        let (cr, mut cw) = client.into_split();
        let mut server = BufReader::new(server);
        let mut greeting = String::new();
        if server.read_line(&mut greeting).await.is_err() {
            return seen;
        }
        let _ = cw
            .write_all(greeting.replace(" STARTTLS", "").as_bytes())
            .await;
        let mut lines = BufReader::new(cr).lines();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(T, lines.next_line()).await {
            let tag = line.split(' ').next().unwrap_or("").to_string();
            let starttls = line.to_ascii_uppercase().ends_with(" STARTTLS");
            seen.push(line);
            if starttls {
                let reply = match attack {
                    Attack::Strip => {
                        format!("{tag} BAD Error in IMAP command received by server.\r\n")
                    }
                    Attack::FakeOk => {
                        format!("{tag} OK Begin TLS negotiation now.\r\n* OK plaintext, gotcha\r\n")
                    }
                };
                let _ = cw.write_all(reply.as_bytes()).await;
            }
        }
        seen
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripped_or_faked_starttls_is_refused_before_login() -> Result<()> {
    let dc = Dovecot::start(&[("erin", PASSWORD)])?;
    let db = common::db::TestDb::sqlite()?;
    for attack in [Attack::Strip, Attack::FakeOk] {
        let (addr, seen) = mitm(dc.imap_addr(), attack).await?;
        let ep = endpoint(&account_toml(
            &db.url,
            "tls-strip-x",
            addr.port(),
            "starttls",
            Some(dc.ca_file()),
        ))?;
        let result = connect::open(&ep, T).await;
        match (attack, &result) {
            (Attack::Strip, Err(e @ ImapError::StarttlsRefused(_))) => {
                ensure!(
                    e.to_string().contains("refusing to continue without TLS"),
                    "{e}"
                );
            }
            (Attack::FakeOk, Err(ImapError::Tls { .. })) => {}
            (_, Err(e)) => bail!("wrong error: {e:?}"),
            (_, Ok(_)) => bail!("connected over a downgraded STARTTLS"),
        }
        ensure!(result.as_ref().err().map(ImapError::kind) == Some("tls"));
        drop(result);
        let seen = tokio::time::timeout(T, seen).await??;
        ensure!(
            seen.len() == 1 && seen[0].ends_with("STARTTLS"),
            "client sent {seen:?}"
        );
    }

    // Through the daemon: the mailbox backs off with a `tls` error; the password never crosses.
    let (addr, seen) = mitm(dc.imap_addr(), Attack::Strip).await?;
    let toml = account_toml(
        &db.url,
        "tls-strip-1",
        addr.port(),
        "starttls",
        Some(dc.ca_file()),
    );
    let d = common::daemon::start(&toml).await?;
    let reported = d
        .board()
        .wait_for(T, |s| s.iter().all(|m| m.last_error == Some("tls")))
        .await;
    ensure!(reported, "{:?}", d.board().snapshot());
    tokio::time::timeout(T, d.shutdown()).await?;
    let seen = tokio::time::timeout(T, seen).await??;
    ensure!(
        !seen
            .iter()
            .any(|l| l.to_ascii_uppercase().contains("LOGIN") || l.contains(PASSWORD)),
        "credentials sent in plaintext: {seen:?}"
    );
    Ok(())
}

#[test]
fn plaintext_to_a_remote_host_is_refused_by_the_config() {
    let toml = account_toml("sqlite://x.db", "tls-none-1", 143, "none", None)
        .replace("host = \"127.0.0.1\"", "host = \"imap.example.com\"");
    let err = Config::parse(Path::new("t.toml"), toml.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("key `accounts[0].tls`"), "{err}");
    let allowed = toml.replace("mailboxes =", "allow_insecure = true\nmailboxes =");
    assert!(Config::parse(Path::new("t.toml"), allowed.as_bytes()).is_ok());
}
