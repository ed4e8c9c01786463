//! The API's front door (#19): tokens, error shapes, the body cap, the OpenAPI document.
//! The actions themselves are in `tests/actions*.rs`.

mod common;

use anyhow::Result;
use common::api::{token_file, Client};
use common::db::{Kind, TestDb};
use common::setup::ConfigToml;

async fn daemon(dir: &tempfile::TempDir) -> Result<(TestDb, idlesync::Daemon)> {
    let db = TestDb::new(Kind::Sqlite).await?;
    let config = ConfigToml::new(&db.url).api(&token_file(dir.path()));
    let d = common::daemon::start(&config.render()).await?;
    Ok((db, d))
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_the_same_401() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_db, d) = daemon(&dir).await?;
    let addr = d.api_addr().expect("api configured");
    let good = Client::new(addr);
    assert_eq!(good.get("/v1/openapi.json").await?.status, 200);
    let mut answers = Vec::new();
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some("test-token-0123456789abcdeX"),
    ] {
        let c = Client {
            addr,
            token: token.map(str::to_string),
        };
        let a = c.get("/v1/openapi.json").await?;
        assert_eq!(a.status, 401, "{token:?}");
        assert_eq!(a.code(), "unauthorized");
        answers.push(a.body.to_string());
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "no hint of what was wrong: {answers:?}");
    // A wrong scheme is as wrong as a wrong token.
    let a = Client { addr, token: None }
        .call(
            "GET",
            "/v1/openapi.json",
            &[("Authorization", "Basic dGVzdA==")],
            b"",
        )
        .await?;
    assert_eq!(a.status, 401);
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_routes_are_json_404s_and_the_document_lists_the_paths() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_db, d) = daemon(&dir).await?;
    let c = Client::new(d.api_addr().expect("api configured"));
    let a = c.get("/v1/nothing-here").await?;
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "not_found");
    let doc = c.get("/v1/openapi.json").await?;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap_or("").starts_with("3."));
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    d.shutdown().await;
    Ok(())
}

/// No token in any log line at `RUST_LOG=trace`: the real binary, a right and a wrong token,
/// an action run on Dovecot, then a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_a_log_line() -> Result<()> {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;

    const TOKEN: &str = "tok-LEAKCHECK-0123456789abcdef";
    const WRONG: &str = "tok-LEAKCHECK-wrong-0123456789";
    let s = common::setup::Setup::new(&[("tina", "secret-pw-1")], Kind::Sqlite, "api-leak").await?;
    let dir = tempfile::tempdir()?;
    let port = common::servers::free_port()?;
    let acc = common::daemon::AccountSpec::implicit(
        "leak",
        "tina",
        "secret-pw-1",
        s.dc.imaps_port(),
        &["INBOX"],
    );
    let config = s
        .implicit(s.config(), &acc)
        .set("api", "listen", format!("127.0.0.1:{port}"))
        .set("api", "token_env", "IDLESYNC_API_TEST_TOKEN");
    let path = dir.path().join("idlesync.toml");
    std::fs::write(&path, config.render())?;
    s.dc.append("tina", "INBOX", &common::daemon::mail("leak"))
        .await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idlesync"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "trace")
        .env(
            "IDLESYNC_API_TEST_TOKEN",
            format!("{TOKEN} other-token-0123456789"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    // The message is imported as history; wait until it is stored.
    let mut id = None;
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while id.is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < end, "not stored");
        // The database file appears once the daemon has migrated it.
        id = common::actions::ids(&s.db, "leak", "INBOX")
            .await
            .ok()
            .and_then(|rows| rows.first().map(|r| r.0));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let good = Client {
        addr,
        token: Some(TOKEN.into()),
    };
    let bad = Client {
        addr,
        token: Some(WRONG.into()),
    };
    let path_ = format!("/v1/messages/{}", id.expect("id"));
    let a = good
        .call(
            "PATCH",
            &path_,
            &[("Prefer", "wait=10")],
            br#"{"seen": true}"#,
        )
        .await?;
    assert_eq!(
        (a.status, a.body["action"]["status"].as_str()),
        (200, Some("done")),
        "{}",
        a.body
    );
    assert_eq!(
        bad.call("PATCH", &path_, &[], br#"{"seen": true}"#)
            .await?
            .status,
        401
    );
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    tokio::time::timeout(std::time::Duration::from_secs(15), child.wait()).await??;
    let all = reader.await?;
    assert!(
        all.iter().any(|l| l.contains("ran actions")),
        "the action ran"
    );
    assert!(all.len() > 50, "trace logging was on: {} lines", all.len());
    let leaked: Vec<&String> = all.iter().filter(|l| l.contains("LEAKCHECK")).collect();
    assert!(leaked.is_empty(), "a token in the log: {leaked:?}");
    Ok(())
}
