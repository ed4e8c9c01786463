//! Issue #19 (e): bad input to the actions API gets its documented status and error shape,
//! nothing is applied twice, and the daemon stays fine: wrong tokens, unknown ids, bad JSON,
//! a body over the cap, an unknown target mailbox, 1,000 requests at once (and 1,000 retries of
//! one request with one Idempotency-Key).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::actions::{ids, to};
use common::api::{token_file, Answer, Client};
use common::daemon::{mail, wait_idling, AccountSpec};
use common::db::Kind;
use common::mirror::server_flags;
use common::setup::Setup;
use futures::future::join_all;
use serde_json::json;
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(30);

fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.code(), code, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
}

async fn count(db: &common::db::TestDb, sql: &'static str) -> Result<i64> {
    let pool = db.pool().await?;
    let n: i64 = sqlx::query(sql).fetch_one(&pool).await?.get(0);
    pool.close().await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_changes_nothing() -> Result<()> {
    let s = Setup::new(&[("carol", "secret-pw-1")], Kind::Postgres, "actions-input").await?;
    s.dc.create_mailbox("carol", "Archive").await?;
    let dir = tempfile::tempdir()?;
    let acc = AccountSpec::implicit(
        "input",
        "carol",
        "secret-pw-1",
        s.dc.imaps_port(),
        &["INBOX"],
    );
    let mut sync = s.subscribe().await?;
    let d = s
        .start(&s.implicit(s.config(), &acc).api(&token_file(dir.path())))
        .await?;
    wait_idling(&d, 1, WAIT).await?;
    let addr = d.api_addr().expect("api");
    let api = Client::new(addr);
    let uid = s.dc.append("carol", "INBOX", &mail("one")).await?;
    sync.collect_messages(1, WAIT).await?;
    let id = ids(&s.db, "input", "INBOX").await?[0].0;
    let path = format!("/v1/messages/{id}");
    let seen = json!({"seen": true});

    let wrong = Client {
        addr,
        token: Some("x".repeat(26)),
    };
    assert_error(
        &wrong.json("PATCH", &path, &seen).await?,
        401,
        "unauthorized",
    );
    let none = Client { addr, token: None };
    assert_error(
        &none.json("DELETE", &path, &json!({})).await?,
        401,
        "unauthorized",
    );

    assert_error(
        &api.json("PATCH", "/v1/messages/99999999", &seen).await?,
        404,
        "not_found",
    );
    assert_error(
        &api.json("PATCH", "/v1/threads/99999999", &seen).await?,
        404,
        "not_found",
    );
    assert_error(&api.get("/v1/actions/99999999").await?, 404, "not_found");
    assert_error(
        &api.json("PATCH", "/v1/messages/abc", &seen).await?,
        400,
        "bad_request",
    );
    assert_error(
        &api.json("PATCH", "/v1/messages/-1", &seen).await?,
        400,
        "bad_request",
    );
    assert_error(
        &api.call("PUT", &path, &[], b"{}").await?,
        405,
        "method_not_allowed",
    );

    let bad = api.call("PATCH", &path, &[], b"{\"seen\": tru").await?;
    assert_error(&bad, 400, "bad_request");
    let bad = api.json("PATCH", &path, &json!({"seen": "yes"})).await?;
    assert_error(&bad, 400, "bad_request");
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("seen"),
        "names the field: {}",
        bad.body
    );
    let bad = api
        .json("PATCH", &path, &json!({"addFlags": ["ok", "not ok"]}))
        .await?;
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("addFlags[1]"),
        "{}",
        bad.body
    );
    assert_error(
        &api.json("PATCH", &path, &json!({"sen": true})).await?,
        400,
        "bad_request",
    );
    assert_error(
        &api.json("PATCH", &path, &json!({})).await?,
        400,
        "bad_request",
    );
    assert_error(
        &api.call(
            "PATCH",
            &path,
            &[("Prefer", "wait=99")],
            seen.to_string().as_bytes(),
        )
        .await?,
        400,
        "bad_request",
    );
    assert_error(
        &api.call("DELETE", &format!("{path}?permanent=maybe"), &[], b"")
            .await?,
        400,
        "bad_request",
    );
    let huge = format!("{{\"addFlags\": [\"{}\"]}}", "a".repeat(2 << 20));
    assert_error(
        &api.call("PATCH", &path, &[], huge.as_bytes()).await?,
        413,
        "too_large",
    );
    assert_error(
        &api.json("POST", &format!("{path}/move"), &json!({"to": "Nowhere"}))
            .await?,
        422,
        "no_such_mailbox",
    );
    assert_error(
        &api.json("POST", &format!("{path}/move"), &json!({"to": "a\r\nb"}))
            .await?,
        400,
        "bad_request",
    );
    // No Trash known: deleting is refused rather than guessed.
    assert_error(&api.call("DELETE", &path, &[], b"").await?, 422, "no_trash");
    assert_eq!(
        count(&s.db, "SELECT COUNT(*) FROM actions").await?,
        0,
        "nothing was queued"
    );
    assert!(
        server_flags(&s.dc, "carol", "INBOX").await?[&uid].is_empty(),
        "nothing was applied"
    );

    // 1,000 retries of one request at once, with one key: one action, applied once.
    let body = json!({"flagged": true}).to_string();
    let calls = (0..1000).map(|_| {
        api.call(
            "PATCH",
            &path,
            &[("Idempotency-Key", "star-once")],
            body.as_bytes(),
        )
    });
    let answers: Vec<Answer> = join_all(calls)
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("1,000 retries")?;
    let mut ids_seen: Vec<i64> = answers
        .iter()
        .map(|a| {
            assert!(matches!(a.status, 200 | 202), "{}", a.body);
            a.body["action"]["id"].as_i64().expect("id")
        })
        .collect();
    ids_seen.dedup();
    assert_eq!(ids_seen.len(), 1, "one action for one key");
    let reused = api
        .call(
            "PATCH",
            &path,
            &[("Idempotency-Key", "star-once")],
            seen.to_string().as_bytes(),
        )
        .await?;
    assert_error(&reused, 400, "bad_request");

    // 1,000 different requests at once: each accepted, each finished, the daemon fine.
    let calls = (0..1000).map(|i| {
        let body = json!({"addFlags": [format!("$K{i}")]}).to_string();
        let api = api.clone();
        let path = path.clone();
        async move { api.call("PATCH", &path, &[], body.as_bytes()).await }
    });
    let answers: Vec<Answer> = join_all(calls)
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("1,000 requests")?;
    assert!(answers.iter().all(|a| a.status == 202 || a.status == 200));
    common::wait_until(WAIT, || async {
        Ok(count(
            &s.db,
            "SELECT COUNT(*) FROM actions WHERE status NOT IN ('done', 'failed')",
        )
        .await?
            == 0)
    })
    .await?;
    assert_eq!(
        count(&s.db, "SELECT COUNT(*) FROM actions WHERE status = 'done'").await?,
        1001
    );
    let flags = &server_flags(&s.dc, "carol", "INBOX").await?[&uid];
    assert_eq!(flags.len(), 1001, "\\Flagged and 1,000 keywords");
    assert!(common::http_get(d.admin_addr(), "/healthz").await.is_ok());
    let _ = to("x");
    d.shutdown().await;
    Ok(())
}
