//! A user marks 10,000 messages read at once (#11), against the store alone: how fast
//! `apply_changes` takes the storm on PostgreSQL and SQLite (printed, never asserted), and that
//! it ends right.

mod common;

use anyhow::{ensure, Result};
use common::db::Kind;

fn storage(db: &common::db::TestDb) -> idlesync::config::StorageConfig {
    idlesync::config::StorageConfig {
        url: db.url.clone(),
        max_connections: 4,
        ..idlesync::config::StorageConfig::default()
    }
}

/// A user marks 10,000 messages read at once (#11): five sets of 2,000 `\Seen` changes, as the
/// IMAP side batches them. Checks the end state, and prints the rate (never asserted: the
/// machine is shared). Messages are seeded with commit_batch, 500 at a time.
async fn seen_storm(kind: Kind) -> Result<()> {
    use idlesync::changes::{ChangeSet, FlagUpdate, Topic};
    use idlesync::message::{extract, ExtractOptions, ImapMeta};
    use idlesync::store::{BatchTarget, Store};
    const N: u32 = 10_000;
    const SET: u32 = 2_000;
    let db = common::db::TestDb::new(kind).await?;
    let store = Store::connect(&storage(&db)).await?;
    store.migrate().await?;
    store
        .start_epoch("storm", "INBOX", 1, None, None, None)
        .await?;
    let target = BatchTarget {
        account_id: "storm",
        mailbox: "INBOX",
        uidvalidity: 1,
    };
    for first in (1..=N).step_by(500) {
        let recs: Vec<_> = (first..first + 500)
            .map(|uid| {
                let raw = format!(
                    "From: s@x.test\r\nSubject: n{uid}\r\nMessage-ID: <s{uid}@x>\r\n\
                     References: <t{}@x>\r\n\r\nx\r\n",
                    uid % 100
                );
                let meta = ImapMeta {
                    uid,
                    modseq: Some(1),
                    ..ImapMeta::default()
                };
                extract(raw.as_bytes(), &meta, &ExtractOptions::default())
            })
            .collect();
        store
            .commit_batch(None, target, &recs, first + 499, None, |_| {
                vec![(Topic::Sync, "{}".into())]
            })
            .await?;
    }
    let unread = || async {
        anyhow::Ok(
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE(SUM(unread_count), 0) AS BIGINT) FROM threads \
                 WHERE account_id = 'storm'",
            )
            .fetch_one(store.pool())
            .await?,
        )
    };
    ensure!(unread().await? == i64::from(N));
    // Every other UID of a range: read as one range select, rows between them left alone.
    let gaps = ChangeSet {
        flags: (1..=1200)
            .step_by(2)
            .map(|uid| FlagUpdate {
                uid,
                flags: "\\Flagged".into(),
                modseq: None,
            })
            .collect(),
        ..ChangeSet::default()
    };
    let a = store.apply_changes(target, &gaps, |_| vec![]).await?;
    ensure!(a.flags.len() == 600 && a.flags.iter().all(|(u, _)| u % 2 == 1));
    let flagged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE account_id = 'storm' AND flags <> ''",
    )
    .fetch_one(store.pool())
    .await?;
    ensure!(flagged == 600, "{flagged} rows flagged");
    let started = std::time::Instant::now();
    let mut announced = 0;
    for first in (1..=N).step_by(SET as usize) {
        let set = ChangeSet {
            flags: (first..first + SET)
                .map(|uid| FlagUpdate {
                    uid,
                    flags: "\\Seen".into(),
                    modseq: Some(u64::from(uid) + 1),
                })
                .collect(),
            expunged: vec![],
            highest_modseq: Some(u64::from(first + SET)),
        };
        let a = store
            .apply_changes(target, &set, |a| vec![format!("{}", a.flags.len())])
            .await?;
        ensure!(a.flags.len() == SET as usize && a.outbox.len() == 1);
        announced += a.outbox.len();
    }
    let took = started.elapsed();
    eprintln!(
        "seen storm {kind:?}: {N} changes in {took:?} ({:.0} changes/s, {announced} records)",
        f64::from(N) / took.as_secs_f64()
    );
    ensure!(unread().await? == 0);
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_storm_sqlite() -> Result<()> {
    seen_storm(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_storm_postgres() -> Result<()> {
    seen_storm(Kind::Postgres).await
}
