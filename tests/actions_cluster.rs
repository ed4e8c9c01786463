//! Issue #19 (d): actions in cluster mode, with real replica processes (the cluster rig of
//! tests/cluster.rs, each replica with its API on). An action sent to a replica that does not
//! hold the mailbox is run by the one that does; actions queued while the holder is dead
//! (kill -9) run once after the takeover.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::actions::act;
use common::api::Client;
use common::cluster::{account, user, Rig};
use common::mirror::server_flags;
use serde_json::json;
use sqlx::Row;

const SETTLE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

/// The node holding `account`'s INBOX lease and the message id of its only stored message.
async fn holder_and_message(rig: &Rig, account: &str) -> Result<(String, i64)> {
    let pool = rig.pool().await?;
    common::wait_until(WAIT, || async {
        Ok(
            sqlx::query("SELECT id FROM messages WHERE account_id = $1 AND expunged_at IS NULL")
                .bind(account)
                .fetch_optional(&pool)
                .await?
                .is_some(),
        )
    })
    .await?;
    let found: i64 = sqlx::query("SELECT id FROM messages WHERE account_id = $1")
        .bind(account)
        .fetch_one(&pool)
        .await?
        .get(0);
    let owner: String = sqlx::query("SELECT owner FROM mailbox_leases WHERE account_id = $1")
        .bind(account)
        .fetch_one(&pool)
        .await?
        .get(0);
    pool.close().await;
    Ok((owner, found))
}

fn replica_of(rig: &Rig, node: &str) -> usize {
    rig.replicas
        .iter()
        .position(|r| r.node == node)
        .expect("a replica")
}

#[tokio::test]
async fn actions_run_on_the_lease_holder_and_survive_its_death() -> Result<()> {
    let mut rig = Rig::start(3, false).await?;
    rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    rig.append(&[0, 1], 1).await?;

    // Sent to a replica that does not hold the mailbox: the holder runs it.
    let (owner, msg) = holder_and_message(&rig, &account(0)).await?;
    let holder = replica_of(&rig, &owner);
    let other = (holder + 1) % 3;
    let api = Client::new(rig.replicas[other].api);
    let a = act(
        &api,
        "PATCH",
        &format!("/v1/messages/{msg}"),
        Some(json!({"seen": true})),
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let flags = server_flags(&rig.dc, &user(0), "INBOX").await?;
    assert!(flags.values().all(|f| f.contains("\\Seen")), "{flags:?}");
    let ran_on = |r: usize| rig.replicas[r].log_tail(400).contains("ran actions");
    assert!(
        ran_on(holder) && !ran_on(other),
        "run by the holder only\n{}",
        rig.logs()
    );

    // The holder of another mailbox dies; actions queued meanwhile run once, after takeover.
    let (owner, msg) = holder_and_message(&rig, &account(1)).await?;
    let holder = replica_of(&rig, &owner);
    rig.replicas[holder].kill9().await?;
    let survivor = Client::new(rig.replicas[(holder + 1) % 3].api);
    let mut ids = Vec::new();
    for body in [
        json!({"flagged": true}),
        json!({"addFlags": ["$Once"]}),
        json!({"seen": true}),
    ] {
        let a = survivor
            .call(
                "PATCH",
                &format!("/v1/messages/{msg}"),
                &[],
                body.to_string().as_bytes(),
            )
            .await?;
        assert_eq!(
            (a.status, a.body["action"]["status"].as_str()),
            (202, Some("queued")),
            "{}",
            a.body
        );
        ids.push(a.body["action"]["id"].clone());
    }
    for id in &ids {
        let path = format!("/v1/actions/{id}");
        common::wait_until(WAIT, || async {
            Ok(survivor.get(&path).await?.body["action"]["status"] == "done")
        })
        .await
        .with_context(|| rig.logs())?;
    }
    let flags = server_flags(&rig.dc, &user(1), "INBOX").await?;
    let want: std::collections::BTreeSet<String> =
        ["\\Flagged", "$Once", "\\Seen"].map(String::from).into();
    assert!(flags.values().all(|f| *f == want), "{flags:?}");
    let pool = rig.pool().await?;
    let steps: i64 = sqlx::query("SELECT COUNT(*) FROM action_steps WHERE account_id = $1")
        .bind(account(1))
        .fetch_one(&pool)
        .await?
        .get(0);
    pool.close().await;
    assert_eq!(steps, 3, "one step each, none repeated");
    Ok(())
}
