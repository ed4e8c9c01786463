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
