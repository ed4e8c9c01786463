//! The admin listener as an operator meets it, through the real binary: `/readyz`, `/status`,
//! the HTML page in headless Chromium, `--log-format json`, and no secret anywhere in what the
//! daemon prints or serves, even at `RUST_LOG=trace`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::dovecot::{Dovecot, DovecotOptions};
use common::oauth::{token_script, Introspection};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_idlesync");
const WAIT: Duration = Duration::from_secs(20);
/// The secrets the test greps for.
const PASSWORD: &str = "pw-LEAKCHECK-alice-1";
const TOKEN_PREFIX: &str = "tok-LEAKCHECK-carol";
const WRONG_PASSWORD: &str = "pw-LEAKCHECK-wrong-2";

/// `(status code, body)` of a GET.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf)).await??;
    let (head, body) = buf.split_once("\r\n\r\n").context("no HTTP head")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_string()))
}

/// A line stream of a child's pipe, kept in full, with a counter that changes per line.
#[derive(Clone)]
struct Lines {
    all: Arc<Mutex<Vec<String>>>,
    changed: watch::Sender<usize>,
}

impl Lines {
    fn follow(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Lines {
        let lines = Lines {
            all: Arc::default(),
            changed: watch::Sender::new(0),
        };
        let l = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                l.all.lock().unwrap().push(line);
                l.changed.send_modify(|n| *n += 1);
            }
        });
        lines
    }

    fn snapshot(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the lines so far; re-checked on each new line.
    async fn wait_for<T>(&self, what: &str, pred: impl Fn(&[String]) -> Option<T>) -> Result<T> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if let Some(t) = pred(&self.snapshot()) {
                    return Ok(t);
                }
                if rx.changed().await.is_err() {
                    bail!("the stream ended");
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(r) => r.with_context(|| format!("waiting for {what}")),
            Err(_) => bail!(
                "no {what} within {WAIT:?}; last lines:\n{}",
                tail(&self.snapshot())
            ),
        }
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn json(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line).ok()
}

/// Spawns `idlesync --log-format json run --config CONFIG` at `RUST_LOG=trace`, with one
/// extra environment variable; its stderr and stdout followed.
fn spawn_traced(
    config: &Path,
    (var, value): (&str, &str),
) -> Result<(tokio::process::Child, Lines, Lines)> {
    let mut child = tokio::process::Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "trace")
        .env(var, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = Lines::follow(child.stderr.take().context("stderr")?);
    let stdout = Lines::follow(child.stdout.take().context("stdout")?);
    Ok((child, stderr, stdout))
}

/// SIGTERM, then a clean exit and the daemon's last log line.
async fn stop(child: &mut tokio::process::Child, stderr: &Lines) -> Result<()> {
    let pid = child.id().context("child pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    ensure!(
        exit.success(),
        "exit {exit:?}:\n{}",
        tail(&stderr.snapshot())
    );
    stderr
        .wait_for("the last line", |l| {
            l.iter()
                .any(|l| l.contains("idlesync stopped"))
                .then_some(())
        })
        .await?;
    Ok(())
}

/// (account, mailbox) of every mailbox that logged a transition to `state`.
fn reached(lines: &[String], state: &str) -> BTreeSet<(String, String)> {
    lines
        .iter()
        .filter_map(|l| json(l))
        .filter(|v| v["fields"]["message"] == "mailbox state" && v["fields"]["to"] == state)
        .filter_map(|v| {
            let span = &v["span"];
            Some((
                span["account"].as_str()?.to_string(),
                span["mailbox"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Runs headless Chromium on `url`: (the rendered DOM, a screenshot PNG's bytes).
async fn chromium(url: &str, dir: &Path) -> Result<(String, Vec<u8>)> {
    let shot = dir.join("status.png");
    let run = |extra: Vec<String>, profile: &str| {
        let mut cmd = tokio::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,720",
        ])
        .arg(format!("--user-data-dir={}", dir.join(profile).display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
        cmd
    };
    let dom = tokio::time::timeout(
        Duration::from_secs(60),
        run(vec!["--dump-dom".into()], "profile-dom").output(),
    )
    .await
    .context("chromium --dump-dom timed out")?
    .context("starting chromium (Debian package `chromium`; scripts/test installs it)")?;
    ensure!(dom.status.success(), "chromium --dump-dom: {dom:?}");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            vec![format!("--screenshot={}", shot.display())],
            "profile-shot",
        )
        .output(),
    )
    .await
    .context("chromium --screenshot timed out")??;
    ensure!(out.status.success(), "chromium --screenshot: {out:?}");
    let png = std::fs::read(&shot).context("no screenshot written")?;
    // For a human (or a CI artifact): IDLESYNC_TEST_SCREENSHOT=path keeps a copy.
    if let Some(keep) = std::env::var_os("IDLESYNC_TEST_SCREENSHOT") {
        std::fs::write(keep, &png)?;
    }
    Ok((String::from_utf8_lossy(&dom.stdout).into_owned(), png))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_json_logs_and_no_secret_anywhere() -> Result<()> {
    let idp = Introspection::start().await?;
    let dc = Dovecot::start_with(DovecotOptions {
        users: vec![
            ("alice".into(), PASSWORD.into()),
            ("carol".into(), "carol-unused-pw".into()),
            ("bob".into(), "bob-right-pw".into()),
        ],
        extra_config: idp.dovecot_config(),
        ..DovecotOptions::default()
    })?;
    dc.create_mailbox("alice", "Sent").await?;
    let dir = tempfile::tempdir()?;
    let (script, _runs) = token_script(dir.path(), "carol", TOKEN_PREFIX, true)?;
    idp.accept(&format!("{TOKEN_PREFIX}-1"), "carol");
    let db = common::db::TestDb::sqlite()?;
    let ca = dc.ca_file().display().to_string();
    let config = format!(
        r#"[storage]
url = "{db}"

[metrics]
listen = "127.0.0.1:0"

[backoff]
initial = "100ms"
max = "1s"
auth_failed = "1h"

[[accounts]]
id = "adm-pw-1"
email = "alice@example.test"
host = "127.0.0.1"
port = {imaps}
username = "alice"
password_command = "printf '%s\n' '{PASSWORD}'"
mailboxes = ["INBOX", "Sent"]
ca_file = "{ca}"

[[accounts]]
id = "adm-oauth-1"
email = "carol@example.test"
host = "127.0.0.1"
port = {imap}
tls = "starttls"
username = "carol"
oauth2_token_command = "{script}"
mailboxes = ["INBOX"]
ca_file = "{ca}"

[[accounts]]
id = "adm-bad-1"
email = "bob@example.test"
host = "localhost"
port = {imaps}
username = "bob"
password_env = "IDLESYNC_ADMIN_TEST_BAD_PW"
mailboxes = ["INBOX"]
ca_file = "{ca}"
"#,
        db = db.url,
        imaps = dc.imaps_port(),
        imap = dc.imap_port(),
        script = script.display(),
    );
    let config_path = dir.path().join("idlesync.toml");
    std::fs::write(&config_path, &config)?;

    let (mut child, stderr, stdout) =
        spawn_traced(&config_path, ("IDLESYNC_ADMIN_TEST_BAD_PW", WRONG_PASSWORD))?;

    let admin: SocketAddr = stderr
        .wait_for("the start-up line", |lines| {
            lines.iter().filter_map(|l| json(l)).find_map(|v| {
                (v["fields"]["message"] == "idlesync started")
                    .then(|| v["fields"]["admin"].as_str()?.parse().ok())?
            })
        })
        .await?;
    stderr
        .wait_for("three mailboxes idling and one auth_failed", |lines| {
            (reached(lines, "idling").len() == 3 && reached(lines, "auth_failed").len() == 1)
                .then_some(())
        })
        .await?;

    // New mail: stored, announced on stdout (no [redis]), and visible in /status.
    let uid = dc
        .append("alice", "INBOX", &common::daemon::mail("admin-1"))
        .await?;
    stdout
        .wait_for("the email:sync record", |lines| {
            lines
                .iter()
                .filter_map(|l| json(l))
                .find(|v| v["accountId"] == "adm-pw-1" && v["uids"] == serde_json::json!([uid]))
        })
        .await?;

    // The record can come out before the mailbox is back in IDLE: wait for that too.
    stderr
        .wait_for("adm-pw-1/INBOX idling again", |lines| {
            let idled = lines
                .iter()
                .filter_map(|l| json(l))
                .filter(|v| {
                    v["fields"]["message"] == "mailbox state"
                        && v["fields"]["to"] == "idling"
                        && v["span"]["account"] == "adm-pw-1"
                        && v["span"]["mailbox"] == "INBOX"
                })
                .count();
            (idled >= 2).then_some(())
        })
        .await?;
    let (code, status) = get(admin, "/status").await?;
    ensure!(code == 200, "/status: {code}");
    let status: Vec<serde_json::Value> = serde_json::from_str(&status)?;
    let by_key = |a: &str, m: &str| {
        status
            .iter()
            .find(|s| s["account"] == a && s["mailbox"] == m)
            .cloned()
            .with_context(|| format!("{a}/{m} missing from /status: {status:?}"))
    };
    ensure!(status.len() == 4, "{status:?}");
    let (code, summary) = get(admin, "/status/summary").await?;
    ensure!(code == 200, "/status/summary: {code}");
    let summary: serde_json::Value = serde_json::from_str(&summary)?;
    let states = summary["states"].as_object().context("states")?;
    ensure!(
        summary["mailboxes"] == 4
            && states.len() == idlesync::status::MailboxState::ALL.len()
            && states.values().filter_map(|v| v.as_u64()).sum::<u64>() == 4
            && states["auth_failed"].as_u64() >= Some(1),
        "{summary}"
    );
    let inbox = by_key("adm-pw-1", "INBOX")?;
    ensure!(
        inbox["state"] == "idling" && inbox["last_uid"] == uid,
        "{inbox}"
    );
    ensure!(inbox["last_message_at"].is_string(), "{inbox}");
    ensure!(
        inbox["next_retry_at"].is_null() && inbox["reconnects"] == 0,
        "{inbox}"
    );
    let bad = by_key("adm-bad-1", "INBOX")?;
    ensure!(
        bad["state"] == "auth_failed" && bad["last_error"] == "auth",
        "{bad}"
    );
    for key in [
        "state_since",
        "last_uid",
        "last_message_at",
        "last_error",
        "reconnects",
        "next_retry_at",
        "import",
    ] {
        ensure!(bad.get(key).is_some(), "/status lacks {key}: {bad}");
    }

    // Not ready: one mailbox's credentials are refused.
    let (code, body) = get(admin, "/readyz").await?;
    ensure!(
        code == 503 && body.contains("adm-bad-1/INBOX: auth_failed"),
        "{code} {body}"
    );
    ensure!(!body.contains("adm-pw-1"), "{body}");
    let (code, body) = get(admin, "/healthz").await?;
    ensure!(code == 200 && body == "ok\n", "{code} {body}");

    // The page, rendered by a real browser.
    let (code, html) = get(admin, "/").await?;
    ensure!(
        code == 200 && html.contains("http-equiv=\"refresh\""),
        "{code} {html}"
    );
    let (dom, png) = chromium(&format!("http://{admin}/"), dir.path()).await?;
    for (account, mailbox, state) in [
        ("adm-pw-1", "INBOX", "idling"),
        ("adm-pw-1", "Sent", "idling"),
        ("adm-oauth-1", "INBOX", "idling"),
        ("adm-bad-1", "INBOX", "auth_failed"),
    ] {
        let row =
            format!("data-account=\"{account}\" data-mailbox=\"{mailbox}\" data-state=\"{state}\"");
        ensure!(dom.contains(&row), "the rendered page lacks {row}:\n{dom}");
    }
    ensure!(dom.contains("3 of 4 mailboxes idling"), "{dom}");
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "not a screenshot: {} bytes",
        png.len()
    );
    // IHDR: width and height, big-endian, at bytes 16..24.
    let dims = (
        u32::from_be_bytes(png[16..20].try_into()?),
        u32::from_be_bytes(png[20..24].try_into()?),
    );
    ensure!(dims == (1280, 720), "screenshot is {dims:?}");

    let (_, metrics) = get(admin, "/metrics").await?;
    ensure!(
        metrics.contains(
            r#"idlesync_mailbox_state{account="adm-oauth-1",mailbox="INBOX",state="idling"} 1"#
        ),
        "{metrics}"
    );

    // SIGTERM: a clean stop.
    stop(&mut child, &stderr).await?;

    // --log-format json: every line on stderr is a JSON object with the usual fields.
    let lines = stderr.snapshot();
    ensure!(lines.len() > 20, "only {} log lines at trace", lines.len());
    for line in &lines {
        let v = json(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(
            v["timestamp"].is_string() && v["level"].is_string() && v["fields"].is_object(),
            "odd JSON log line: {line}"
        );
    }

    // No secret anywhere: logs, records, /status, /metrics, the page, the DOM.
    let everything = [
        lines.join("\n"),
        stdout.snapshot().join("\n"),
        serde_json::to_string(&status)?,
        metrics,
        html,
        dom,
        body,
    ]
    .join("\n");
    let xoauth2 = base64(format!("user=carol\x01auth=Bearer {TOKEN_PREFIX}-1\x01\x01").as_bytes());
    for secret in [
        PASSWORD,
        TOKEN_PREFIX,
        WRONG_PASSWORD,
        "LEAKCHECK",
        xoauth2.as_str(),
    ] {
        ensure!(!everything.contains(secret), "{secret:?} leaked");
    }
    Ok(())
}

/// In-process: ready once idling, and still ready while the server is down and the mailbox
/// is in its expected backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tolerates_an_expected_backoff() -> Result<()> {
    let mut dc = Dovecot::start(&[("frank", "frank-pw")])?;
    let db = common::db::TestDb::sqlite()?;
    let toml = common::daemon::config_toml(
        &db.url,
        None,
        dc.ca_file(),
        &[common::daemon::AccountSpec {
            id: "adm-ready-1",
            user: "frank",
            password: "frank-pw",
            tls: "implicit",
            port: dc.imaps_port(),
            mailboxes: &["INBOX"],
        }],
    );
    let d = common::daemon::start(&toml).await?;
    common::daemon::wait_idling(&d, 1, WAIT).await?;
    let (code, body) = get(d.admin_addr(), "/readyz").await?;
    ensure!(code == 200 && body == "ready\n", "{code} {body}");

    dc.stop()?;
    let backing_off = d
        .board()
        .wait_for(WAIT, |s| {
            s.iter()
                .all(|m| m.state == idlesync::status::MailboxState::Backoff && m.reconnects >= 1)
        })
        .await;
    ensure!(backing_off, "{:?}", d.board().snapshot());
    let (code, body) = get(d.admin_addr(), "/readyz").await?;
    ensure!(code == 200, "{code} {body}");
    tokio::time::timeout(Duration::from_secs(10), d.shutdown()).await?;
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Output of `idlesync ARGS`, stdout and stderr together.
async fn binary_output(args: &[&str], config: &Path) -> Result<(Option<i32>, String)> {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("IDLESYNC_ADMIN_TEST_URL_PW", "dave-pw")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await??;
    Ok((
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// #12 item 9: passwords in `storage.url` and `redis.url` reach no log line (at trace, through
/// start-up, a delivery and Redis refusing the password), no error, and no output of `check`
/// or `migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_passwords_never_leak() -> Result<()> {
    const PG_PW: &str = "pg-LEAKCHECK-url-3";
    const REDIS_PW: &str = "redis-LEAKCHECK-url-4";
    let dc = Dovecot::start(&[("dave", "dave-pw")])?;
    let db = common::db::TestDb::postgres().await?;
    // Trust auth: PostgreSQL never asks for the password, so the daemon runs with it in its URL.
    let pg_url = db
        .url
        .replacen("://postgres@", &format!("://postgres:{PG_PW}@"), 1);
    ensure!(
        pg_url.contains(PG_PW),
        "unexpected test database URL {}",
        db.url
    );
    // The machine's Redis has no password: it refuses AUTH, so publishing fails and is logged.
    let redis_url = common::redis::url().replacen("redis://", &format!("redis://:{REDIS_PW}@"), 1);
    let config = |pg: &str, redis: &str| {
        format!(
            r#"[storage]
url = "{pg}"

[redis]
url = "{redis}"
channel = "{channel}"

[metrics]
listen = "127.0.0.1:0"

[backoff]
initial = "100ms"
max = "1s"

[[accounts]]
id = "adm-url-1"
email = "dave@example.test"
host = "127.0.0.1"
port = {port}
username = "dave"
password_env = "IDLESYNC_ADMIN_TEST_URL_PW"
mailboxes = ["INBOX"]
ca_file = "{ca}"
"#,
            channel = common::redis::unique_channel("url-leak"),
            port = dc.imaps_port(),
            ca = dc.ca_file().display(),
        )
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("idlesync.toml");
    let mut everything = Vec::new();

    // check, valid and with URLs its parsers refuse; migrate.
    for (name, pg, redis, want) in [
        ("valid", pg_url.clone(), redis_url.clone(), Some(0)),
        (
            "bad PostgreSQL port",
            pg_url.replacen(":5432/", ":99999/", 1),
            redis_url.clone(),
            Some(2),
        ),
        (
            "bad Redis port",
            pg_url.clone(),
            redis_url.replacen(":6379", ":port", 1),
            Some(2),
        ),
    ] {
        ensure!(
            pg.contains(PG_PW) && redis.contains(REDIS_PW),
            "{name}: {pg} {redis}"
        );
        std::fs::write(&path, config(&pg, &redis))?;
        let (code, out) = binary_output(&["check"], &path).await?;
        ensure!(code == want, "check, {name}: exit {code:?}: {out}");
        everything.push(out);
    }
    std::fs::write(&path, config(&pg_url, &redis_url))?;
    let (code, out) = binary_output(&["migrate"], &path).await?;
    ensure!(
        code == Some(0) && out.contains("migrations applied to"),
        "{out}"
    );
    everything.push(out);

    // A database that does not exist: start-up fails with a storage error.
    let missing_db = pg_url.replacen(
        &format!("/{}", db.url.rsplit('/').next().unwrap_or_default()),
        "/idlesync_no_such_database",
        1,
    );
    std::fs::write(&path, config(&missing_db, &redis_url))?;
    let (code, out) = binary_output(&["run"], &path).await?;
    ensure!(code == Some(1) && out.contains("storage"), "{code:?} {out}");
    everything.push(out);

    // The daemon at trace: start-up, a delivery, Redis refusing the password, shutdown.
    std::fs::write(&path, config(&pg_url, &redis_url))?;
    let (mut child, stderr, stdout) =
        spawn_traced(&path, ("IDLESYNC_ADMIN_TEST_URL_PW", "dave-pw"))?;
    stderr
        .wait_for("the mailbox idling", |lines| {
            (!reached(lines, "idling").is_empty()).then_some(())
        })
        .await?;
    dc.append("dave", "INBOX", &common::daemon::mail("url-leak-1"))
        .await?;
    stderr
        .wait_for("publishing paused on Redis refusing AUTH", |lines| {
            lines
                .iter()
                .filter_map(|l| json(l))
                .any(|v| {
                    v["level"] == "WARN"
                        && v["fields"]["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("publishing paused"))
                })
                .then_some(())
        })
        .await?;
    stop(&mut child, &stderr).await?;
    everything.push(stderr.snapshot().join("\n"));
    everything.push(stdout.snapshot().join("\n"));

    let everything = everything.join("\n");
    for secret in [PG_PW, REDIS_PW, "LEAKCHECK"] {
        ensure!(
            !everything.contains(secret),
            "{secret:?} leaked:\n{}",
            everything
                .lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}
