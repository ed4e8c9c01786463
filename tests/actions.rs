//! Issue #19 (a): every call of the actions API against real Dovecot, on both databases: the
//! server changes (checked by a second IMAP client), the store equals the server, and exactly
//! the records of the contract arrive, `actionId` included; a move into a watched mailbox is
//! never new mail.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::actions::{act, flags, ids, next_of, to};
use common::api::{token_file, Client};
use common::daemon::{mail, wait_idling, AccountSpec};
use common::db::Kind;
use common::mirror::{server_flags, stored_flags};
use common::setup::Setup;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn reply(subject: &str, parent: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.test>\r\nTo: rcpt@example.test\r\nSubject: Re: {parent}\r\n\
         Message-ID: <{subject}@example.test>\r\nIn-Reply-To: <{parent}@example.test>\r\n\
         Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n\r\nBody of {subject}\r\n"
    )
    .into_bytes()
}

async fn same(s: &Setup, id: &str, mailbox: &str) -> Result<()> {
    let server = server_flags(&s.dc, "alice", mailbox).await?;
    let stored = stored_flags(&s.db, id, mailbox).await?;
    anyhow::ensure!(
        server == stored,
        "{mailbox}: server {server:?} store {stored:?}"
    );
    Ok(())
}

async fn every_call(kind: Kind) -> Result<()> {
    let s = Setup::new(&[("alice", "secret-pw-1")], kind, "actions-e2e").await?;
    for m in ["Archive", "Trash"] {
        s.dc.create_mailbox("alice", m).await?;
    }
    let dir = tempfile::tempdir()?;
    let id = format!("act-{kind:?}");
    let acc = AccountSpec::implicit(
        &id,
        "alice",
        "secret-pw-1",
        s.dc.imaps_port(),
        &["INBOX", "Archive"],
    );
    let config = s
        .implicit(s.config(), &acc)
        .account_set("trash", "Trash")
        .api(&token_file(dir.path()));
    let mut sync = s.subscribe().await?;
    let mut changes = s.subscribe_changes().await?;
    let d = s.start(&config).await?;
    wait_idling(&d, 2, WAIT).await?;
    let api = Client::new(d.api_addr().expect("api"));

    s.dc.append("alice", "INBOX", &mail("root")).await?;
    s.dc.append("alice", "INBOX", &reply("re1", "root")).await?;
    s.dc.append("alice", "INBOX", &mail("other")).await?;
    sync.collect_messages(3, WAIT).await?;
    let inbox = ids(&s.db, &id, "INBOX").await?;
    let [(root, root_uid, thread), (re1, _, thread2), (other, other_uid, _)] = inbox[..] else {
        anyhow::bail!("three rows: {inbox:?}");
    };
    assert_eq!(thread, thread2, "root and its reply share a thread");

    // PATCH: seen, flagged and a keyword, then one flag off; another flag survives.
    let path = format!("/v1/messages/{root}");
    let a = act(
        &api,
        "PATCH",
        &path,
        flags(json!({"seen": true, "flagged": true, "addFlags": ["$Label1"]})),
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let rec = next_of(&mut changes, "flagsChanged", WAIT).await?;
    assert_eq!(rec["actionId"], a["id"], "{rec}");
    assert_eq!(rec["changes"][0]["uid"], root_uid, "{rec}");
    let server = server_flags(&s.dc, "alice", "INBOX").await?;
    let want: std::collections::BTreeSet<String> =
        ["\\Seen", "\\Flagged", "$Label1"].map(String::from).into();
    assert_eq!(server[&root_uid], want);
    same(&s, &id, "INBOX").await?;
    let a = act(&api, "PATCH", &path, flags(json!({"flagged": false}))).await?;
    assert_eq!(a["status"], "done", "{a}");
    let rec = next_of(&mut changes, "flagsChanged", WAIT).await?;
    assert_eq!(rec["actionId"], a["id"], "{rec}");
    let server = server_flags(&s.dc, "alice", "INBOX").await?;
    assert!(!server[&root_uid].contains("\\Flagged") && server[&root_uid].contains("\\Seen"));
    same(&s, &id, "INBOX").await?;
    let got = api.get(&format!("/v1/actions/{}", a["id"])).await?;
    assert_eq!(
        (got.status, got.body["action"]["status"].as_str()),
        (200, Some("done"))
    );

    // A move into a watched mailbox: expunged here, moved there, never new mail.
    let a = act(
        &api,
        "POST",
        &format!("/v1/messages/{other}/move"),
        to("Archive"),
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let gone = next_of(&mut changes, "messagesExpunged", WAIT).await?;
    assert_eq!(
        (&gone["actionId"], &gone["uids"]),
        (&a["id"], &json!([other_uid]))
    );
    let moved = next_of(&mut changes, "messagesMoved", WAIT).await?;
    assert_eq!(moved["actionId"], a["id"], "{moved}");
    assert_eq!(
        (moved["from"].as_str(), moved["to"].as_str()),
        (Some("INBOX"), Some("Archive"))
    );
    let new_uid = moved["uids"][0][1].as_u64().expect("new uid") as u32;
    assert_eq!(moved["uids"][0][0], other_uid, "{moved}");
    assert!(server_flags(&s.dc, "alice", "Archive")
        .await?
        .contains_key(&new_uid));
    assert!(!server_flags(&s.dc, "alice", "INBOX")
        .await?
        .contains_key(&other_uid));
    common::wait_until(WAIT, || async {
        Ok(ids(&s.db, &id, "Archive")
            .await?
            .iter()
            .any(|r| r.1 == new_uid))
    })
    .await?;

    // The whole conversation archived: one action, both messages.
    let a = act(
        &api,
        "POST",
        &format!("/v1/threads/{thread}/move"),
        to("Archive"),
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let moved = next_of(&mut changes, "messagesMoved", WAIT).await?;
    assert_eq!(
        (moved["actionId"].clone(), moved["count"].clone()),
        (a["id"].clone(), json!(2))
    );
    common::wait_until(WAIT, || async {
        Ok(ids(&s.db, &id, "Archive").await?.len() == 3)
    })
    .await?;
    assert!(server_flags(&s.dc, "alice", "INBOX").await?.is_empty());
    same(&s, &id, "INBOX").await?;
    same(&s, &id, "Archive").await?;

    // DELETE moves to the Trash (not watched); ?permanent=true expunges that UID only.
    let archive = ids(&s.db, &id, "Archive").await?;
    let a = act(
        &api,
        "DELETE",
        &format!("/v1/messages/{}", archive[0].0),
        None,
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let rec = next_of(&mut changes, "messagesExpunged", WAIT).await?;
    assert_eq!(rec["actionId"], a["id"], "{rec}");
    assert_eq!(server_flags(&s.dc, "alice", "Trash").await?.len(), 1);
    let a = act(
        &api,
        "DELETE",
        &format!("/v1/messages/{}?permanent=true", archive[1].0),
        None,
    )
    .await?;
    assert_eq!(a["status"], "done", "{a}");
    let rec = next_of(&mut changes, "messagesExpunged", WAIT).await?;
    assert_eq!(
        (&rec["actionId"], &rec["uids"]),
        (&a["id"], &json!([archive[1].1]))
    );
    let left = server_flags(&s.dc, "alice", "Archive").await?;
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), [archive[2].1]);
    assert_eq!(
        server_flags(&s.dc, "alice", "Trash").await?.len(),
        1,
        "not moved to Trash"
    );
    same(&s, &id, "Archive").await?;
    let _ = re1;

    // Not one of these was new mail.
    sync.expect_silence(Duration::from_secs(1)).await?;
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn every_call_postgres() -> Result<()> {
    every_call(Kind::Postgres).await
}

#[tokio::test]
async fn every_call_sqlite() -> Result<()> {
    every_call(Kind::Sqlite).await
}
