//! Mailbox names that are not plain ASCII (#12 item 12), end to end on Dovecot: each is selected
//! by its modified UTF-7 form, and the name the operator wrote is what the records, the store,
//! the status board and the metrics show. A scripted server offering `UTF8=ACCEPT` gets UTF-8.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::daemon::{mail, start, wait_idling, AccountSpec};
use common::db::{Kind, TestDb};
use common::scripted::{self, Behaviour};
use common::setup::{ConfigToml, Setup};

const WAIT: Duration = Duration::from_secs(15);
const PW: &str = "secret-pw-1";

/// The operator's names and their modified UTF-7 forms, worked out independently of the code
/// under test (Python: UTF-16BE, base64 with `,` for `/`, no padding).
const NAMES: [(&str, &str); 4] = [
    ("Entwürfe", "Entw&APw-rfe"),
    ("Входящие", "&BBIERQQ+BDQETwRJBDgENQ-"),
    ("受信トレイ", "&U9dP4TDIMOwwpA-"),
    ("Archive \"2024\"", "Archive \"2024\""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_mailbox_names_receive_mail() -> Result<()> {
    let s = Setup::new(&[("names", PW)], Kind::Sqlite, "mailbox-names").await?;
    let (dc, db) = (&s.dc, &s.db);
    for (_, wire) in NAMES {
        dc.create_mailbox("names", wire).await?;
    }
    let mut sub = s.subscribe().await?;
    let id = "acc-mailbox-names";
    let names = NAMES.map(|(name, _)| name);
    let account = AccountSpec::implicit(id, "names", PW, dc.imaps_port(), &names);
    let d = s.start(&s.implicit(s.config(), &account)).await?;
    wait_idling(&d, NAMES.len(), WAIT).await?;

    for (name, wire) in NAMES {
        let uid = dc
            .append("names", wire, &mail(&format!("to-{wire}")))
            .await?;
        let rec = sub.next(WAIT).await.with_context(|| name.to_string())?;
        assert_eq!(
            (rec["mailbox"].as_str(), rec["uids"].clone()),
            (Some(name), serde_json::json!([uid])),
            "{rec}"
        );
    }
    assert_eq!(db.messages(id).await?.len(), NAMES.len());
    let pool = db.pool().await?;
    let mut stored: Vec<(String,)> =
        sqlx::query_as("SELECT mailbox FROM messages WHERE account_id = 'acc-mailbox-names'")
            .fetch_all(&pool)
            .await?;
    stored.sort();
    let mut want: Vec<(String,)> = NAMES.iter().map(|(n, _)| (n.to_string(),)).collect();
    want.sort();
    assert_eq!(stored, want);
    pool.close().await;

    let mut board: Vec<String> = d
        .board()
        .snapshot()
        .into_iter()
        .map(|m| m.mailbox)
        .collect();
    board.sort();
    assert_eq!(board, want.into_iter().map(|(n,)| n).collect::<Vec<_>>());
    let metrics = common::http_get(d.admin_addr(), "/metrics").await?;
    assert!(
        metrics.contains(&format!(
            r#"idlesync_messages_stored_total{{account="{id}",mailbox="Entwürfe"}} 1"#
        )),
        "{metrics}"
    );
    d.shutdown().await;
    Ok(())
}

/// Where the server offers `UTF8=ACCEPT`, it is enabled and the name goes as UTF-8, quoted once.
/// A plain ASCII name costs no ENABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_accept_is_used_where_offered() -> Result<()> {
    let server = scripted::start_with(
        vec![mail("utf8")],
        Behaviour {
            capabilities: Some("ENABLE UTF8=ACCEPT".into()),
            ..Behaviour::default()
        },
    )
    .await?;
    let db = TestDb::sqlite()?;
    let account = AccountSpec {
        tls: "none",
        ..AccountSpec::implicit(
            "acc-utf8",
            "user",
            "pw",
            server.port,
            &["受信トレイ", "Archive \"2024\""],
        )
    };
    let toml = ConfigToml::new(&db.url).account(&account, None).render();
    let d = start(&toml).await?;
    wait_idling(&d, 2, WAIT).await?;
    let lines = server.lines();
    let commands = |conn: u64| -> Vec<String> {
        lines
            .iter()
            .filter(|(c, _)| *c == conn)
            .filter_map(|(_, l)| l.split_once(' ').map(|(_, rest)| rest.to_string()))
            .filter(|l| !l.starts_with("LOGIN") && !l.starts_with("UID") && !l.starts_with("IDLE"))
            .collect()
    };
    let mut seen = [commands(0), commands(1)];
    seen.sort();
    assert_eq!(
        seen,
        [
            vec![
                "CAPABILITY".to_string(),
                "ENABLE UTF8=ACCEPT".into(),
                // The account's first mailbox lists the server's mailboxes (#19).
                "LIST \"\" \"*\"".into(),
                "SELECT \"受信トレイ\"".into()
            ],
            // Every connection reads CAPABILITY (#11: CONDSTORE/QRESYNC are chosen from it);
            // a plain ASCII name needs no ENABLE.
            vec![
                "CAPABILITY".to_string(),
                r#"SELECT "Archive \"2024\"""#.into()
            ],
        ],
        "{lines:?}"
    );
    d.shutdown().await;
    Ok(())
}
