//! The store mirrors the mailbox (#11): flag changes, expunges (`keep` and `delete`), thread
//! counts of present messages, HIGHESTMODSEQ, the outbox topic and the new message columns, on
//! PostgreSQL and SQLite alike. The store is driven directly, without a server.

mod common;

use std::cell::Cell;

use anyhow::{ensure, Context, Result};
use common::db::{Kind, TestDb};
use idlesync::changes::{ChangeSet, ExpungeMode, FlagUpdate, Topic};
use idlesync::config::StorageConfig;
use idlesync::message::{extract, ExtractOptions, ImapMeta, MessageRecord};
use idlesync::store::{BatchTarget, Store};

const ACCOUNT: &str = "acct";
const INBOX: BatchTarget<'static> = BatchTarget {
    account_id: ACCOUNT,
    mailbox: "INBOX",
    uidvalidity: 7,
};

async fn store(db: &TestDb, expunged: ExpungeMode) -> Result<Store> {
    let cfg = StorageConfig {
        url: db.url.clone(),
        max_connections: 4,
        expunged,
        ..StorageConfig::default()
    };
    let store = Store::connect(&cfg).await?;
    store.migrate().await?;
    store
        .start_epoch(ACCOUNT, "INBOX", 7, Some(100), None, None)
        .await?;
    Ok(store)
}

/// Message `uid` of one thread (all reply to `<root@x>`, uid 1 is the root), with an
/// attachment and its raw bytes kept.
fn mail(uid: u32, mid: &str, flags: &str, modseq: Option<u64>) -> MessageRecord {
    let refs = if uid == 1 {
        String::new()
    } else {
        "In-Reply-To: <root@x>\r\n".to_string()
    };
    let raw = format!(
        "From: A <a@x.test>\r\nSubject: s{uid}\r\nMessage-ID: <{mid}>\r\n{refs}MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
         --b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\n\
         data\r\n--b--\r\n"
    );
    let meta = ImapMeta {
        uid,
        flags: flags.into(),
        modseq,
        email_id: Some(format!("E{mid}")),
        server_thread_id: Some("T1".into()),
        ..ImapMeta::default()
    };
    extract(raw.as_bytes(), &meta, &ExtractOptions::default())
}

async fn commit(store: &Store, target: BatchTarget<'_>, recs: &[MessageRecord]) -> Result<()> {
    let last = recs.iter().map(|r| r.uid).max().unwrap_or(0);
    store
        .commit_batch(None, target, recs, last, None, |u| {
            vec![(Topic::Sync, format!("{u:?}"))]
        })
        .await?;
    Ok(())
}

/// Three unread messages in one thread: uids 1 (root), 2, 3, MODSEQ 10.
async fn three(store: &Store) -> Result<()> {
    let recs: Vec<_> = (1..=3)
        .map(|u| {
            let mid = if u == 1 {
                "root@x".to_string()
            } else {
                format!("m{u}@x")
            };
            mail(u, &mid, "", Some(10))
        })
        .collect();
    commit(store, INBOX, &recs).await
}

fn flags(uid: u32, f: &str, modseq: Option<u64>) -> FlagUpdate {
    FlagUpdate {
        uid,
        flags: f.into(),
        modseq,
    }
}

/// `(message_count, unread_count)` of the account's only thread.
async fn counts(store: &Store) -> Result<(i64, i64)> {
    Ok(
        sqlx::query_as("SELECT message_count, unread_count FROM threads WHERE account_id = $1")
            .bind(ACCOUNT)
            .fetch_one(store.pool())
            .await?,
    )
}

async fn row(store: &Store, uid: u32) -> Result<(String, Option<i64>, Option<i64>)> {
    Ok(sqlx::query_as(
        "SELECT flags, modseq, expunged_at FROM messages WHERE account_id = $1 AND uid = $2",
    )
    .bind(ACCOUNT)
    .bind(i64::from(uid))
    .fetch_one(store.pool())
    .await?)
}

async fn highest(store: &Store) -> Result<Option<u64>> {
    Ok(store
        .sync_state(ACCOUNT, "INBOX")
        .await?
        .context("state")?
        .highest_modseq)
}

async fn flag_changes_and_stale_reports(kind: Kind) -> Result<()> {
    let db = TestDb::new(kind).await?;
    let store = store(&db, ExpungeMode::Keep).await?;
    three(&store).await?;
    ensure!(counts(&store).await? == (3, 3));
    let set = ChangeSet {
        flags: vec![
            flags(1, "\\Seen", Some(11)),
            flags(2, "\\Seen \\Flagged", Some(12)),
            flags(3, "\\Seen", Some(9)), // older than the fetch (10): ignored
            flags(50, "\\Seen", Some(13)), // never fetched
        ],
        expunged: vec![],
        highest_modseq: Some(13),
    };
    let asked = Cell::new(0);
    let applied = store
        .apply_changes(INBOX, &set, |a| {
            asked.set(asked.get() + 1);
            vec![format!("{:?}", a.flags)]
        })
        .await?;
    ensure!(
        applied.flags == [(1, "\\Seen".into()), (2, "\\Seen \\Flagged".into())],
        "{:?}",
        applied.flags
    );
    ensure!(applied.expunged.is_empty() && asked.get() == 1);
    ensure!(applied.outbox.len() == 1 && applied.outbox[0].id > 0);
    ensure!(applied.outbox[0].topic == Topic::Changes);
    ensure!(row(&store, 1).await? == ("\\Seen".into(), Some(11), None));
    ensure!(row(&store, 2).await? == ("\\Seen \\Flagged".into(), Some(12), None));
    ensure!(row(&store, 3).await? == (String::new(), Some(10), None));
    ensure!(
        counts(&store).await? == (3, 1),
        "{:?}",
        counts(&store).await?
    );
    ensure!(highest(&store).await? == Some(13));

    // The same report again changes nothing and announces nothing.
    let again = store
        .apply_changes(INBOX, &set, |_| {
            asked.set(asked.get() + 1);
            vec!["never".into()]
        })
        .await?;
    ensure!(!again.changed_any() && again.outbox.is_empty() && asked.get() == 1);
    // Clearing \Seen (case-insensitive) makes a message unread again; no MODSEQ is fine.
    let unseen = ChangeSet {
        flags: vec![flags(1, "", None), flags(2, "\\seen \\Flagged", None)],
        ..ChangeSet::default()
    };
    let a = store.apply_changes(INBOX, &unseen, |_| vec![]).await?;
    ensure!(a.flags == [(1, String::new())], "{:?}", a.flags);
    ensure!(counts(&store).await? == (3, 2));
    ensure!(row(&store, 1).await?.1 == Some(11), "modseq kept");
    store.pool().close().await;
    Ok(())
}

async fn expunge_keep(kind: Kind) -> Result<()> {
    let db = TestDb::new(kind).await?;
    let store = store(&db, ExpungeMode::Keep).await?;
    three(&store).await?;
    let set = ChangeSet {
        flags: vec![flags(1, "\\Seen", None)],
        expunged: vec![2, 3, 77],
        highest_modseq: None,
    };
    let a = store
        .apply_changes(INBOX, &set, |a| vec![format!("{:?}", a.expunged)])
        .await?;
    ensure!(a.expunged == [2, 3] && a.flags.len() == 1, "{a:?}");
    for uid in [2, 3] {
        ensure!(row(&store, uid).await?.2.is_some(), "uid {uid} marked");
    }
    ensure!(row(&store, 1).await?.2.is_none());
    ensure!(
        counts(&store).await? == (1, 0),
        "{:?}",
        counts(&store).await?
    );
    ensure!(store.present_count(INBOX).await? == 1);
    ensure!(store.present_flags(INBOX, 0, 100, 10).await? == [(1, "\\Seen".into())]);
    // Flags of an expunged row are never written; expunging it again announces nothing.
    let late = ChangeSet {
        flags: vec![flags(2, "\\Deleted", None)],
        expunged: vec![3],
        highest_modseq: None,
    };
    let a = store
        .apply_changes(INBOX, &late, |_| vec!["x".into()])
        .await?;
    ensure!(!a.changed_any() && a.outbox.is_empty(), "{a:?}");
    ensure!(row(&store, 2).await?.0.is_empty());
    // The last present message goes: the thread stays, with nothing to show.
    let last = ChangeSet {
        expunged: vec![1],
        ..ChangeSet::default()
    };
    store.apply_changes(INBOX, &last, |_| vec![]).await?;
    ensure!(counts(&store).await? == (0, 0));
    store.pool().close().await;
    Ok(())
}

async fn expunge_delete(kind: Kind) -> Result<()> {
    let db = TestDb::new(kind).await?;
    let store = store(&db, ExpungeMode::Delete).await?;
    three(&store).await?;
    let pool = store.pool().clone();
    let n = |sql: &'static str| {
        let pool = pool.clone();
        async move { anyhow::Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await?) }
    };
    ensure!(n("SELECT COUNT(*) FROM attachments").await? == 3);
    ensure!(n("SELECT COUNT(*) FROM message_raw").await? == 3);
    let set = ChangeSet {
        expunged: vec![2, 9],
        ..ChangeSet::default()
    };
    let a = store
        .apply_changes(INBOX, &set, |_| vec!["e".into()])
        .await?;
    ensure!(a.expunged == [2] && a.outbox.len() == 1);
    ensure!(n("SELECT COUNT(*) FROM messages").await? == 2);
    ensure!(n("SELECT COUNT(*) FROM attachments").await? == 2);
    ensure!(n("SELECT COUNT(*) FROM message_raw").await? == 2);
    ensure!(counts(&store).await? == (2, 2));
    let present: Vec<(String, i64)> = sqlx::query_as(
        "SELECT message_id, CASE WHEN present THEN 1 ELSE 0 END FROM thread_refs \
         ORDER BY message_id",
    )
    .fetch_all(store.pool())
    .await?;
    ensure!(
        present == [("m2@x".into(), 0), ("m3@x".into(), 1), ("root@x".into(), 1)],
        "{present:?}"
    );
    store.pool().close().await;
    Ok(())
}

/// A move: the old placement is expunged, a new one with the same Message-ID and email_id
/// arrives in another mailbox. Either order leaves the message counted once.
async fn moves_count_once(kind: Kind) -> Result<()> {
    let db = TestDb::new(kind).await?;
    let store = store(&db, ExpungeMode::Keep).await?;
    let archive = BatchTarget {
        mailbox: "Archive",
        ..INBOX
    };
    commit(&store, INBOX, &[mail(1, "root@x", "\\Seen", None)]).await?;
    commit(&store, INBOX, &[mail(2, "mv@x", "", None)]).await?;
    let expunge = |uid| ChangeSet {
        expunged: vec![uid],
        ..ChangeSet::default()
    };
    // Expunged first, then arrives.
    store.apply_changes(INBOX, &expunge(2), |_| vec![]).await?;
    ensure!(counts(&store).await? == (1, 0));
    commit(&store, archive, &[mail(1, "mv@x", "", None)]).await?;
    ensure!(
        counts(&store).await? == (2, 1),
        "{:?}",
        counts(&store).await?
    );
    // Arrives first (read this time), then the old placement (unread) goes.
    commit(&store, INBOX, &[mail(3, "mv2@x", "", None)]).await?;
    commit(&store, archive, &[mail(2, "mv2@x", "\\Seen", None)]).await?;
    ensure!(counts(&store).await? == (3, 2));
    store.apply_changes(INBOX, &expunge(3), |_| vec![]).await?;
    ensure!(
        counts(&store).await? == (3, 1),
        "{:?}",
        counts(&store).await?
    );
    let ids: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE account_id = $1 AND email_id = 'Emv2@x'",
    )
    .bind(ACCOUNT)
    .fetch_one(store.pool())
    .await?;
    ensure!(ids == 2, "both placements carry the email_id");
    store.pool().close().await;
    Ok(())
}

async fn highest_modseq_grows_in_the_same_transaction(kind: Kind) -> Result<()> {
    let db = TestDb::new(kind).await?;
    let store = store(&db, ExpungeMode::Keep).await?;
    three(&store).await?;
    let only = |h| ChangeSet {
        highest_modseq: Some(h),
        ..ChangeSet::default()
    };
    store.apply_changes(INBOX, &only(20), |_| vec![]).await?;
    store.apply_changes(INBOX, &only(15), |_| vec![]).await?;
    ensure!(highest(&store).await? == Some(20), "never down");
    // Another UIDVALIDITY's set does not touch it.
    let other = BatchTarget {
        uidvalidity: 8,
        ..INBOX
    };
    store.apply_changes(other, &only(99), |_| vec![]).await?;
    ensure!(highest(&store).await? == Some(20));
    // A set whose transaction fails (its outbox insert) leaves flags and HIGHESTMODSEQ alone.
    sqlx::query("ALTER TABLE outbox RENAME TO outbox_away")
        .execute(store.pool())
        .await?;
    let set = ChangeSet {
        flags: vec![flags(1, "\\Seen", Some(30))],
        expunged: vec![2],
        highest_modseq: Some(30),
    };
    let failed = store.apply_changes(INBOX, &set, |_| vec!["r".into()]).await;
    ensure!(failed.is_err(), "the outbox is gone");
    sqlx::query("ALTER TABLE outbox_away RENAME TO outbox")
        .execute(store.pool())
        .await?;
    ensure!(highest(&store).await? == Some(20));
    ensure!(row(&store, 1).await? == (String::new(), Some(10), None));
    ensure!(row(&store, 2).await?.2.is_none());
    ensure!(counts(&store).await? == (3, 3));
    // A new epoch forgets it and records the import boundary (and its own HIGHESTMODSEQ).
    store
        .start_epoch(ACCOUNT, "INBOX", 9, Some(4242), None, None)
        .await?;
    let s = store.sync_state(ACCOUNT, "INBOX").await?.context("state")?;
    ensure!(s.highest_modseq.is_none() && s.import_uid_next == Some(4242) && s.last_uid == 0);
    store
        .start_epoch(ACCOUNT, "INBOX", 10, Some(7), Some(99), None)
        .await?;
    let s = store.sync_state(ACCOUNT, "INBOX").await?.context("state")?;
    ensure!(s.highest_modseq == Some(99) && s.uidvalidity == 10);
    store.pool().close().await;
    Ok(())
}

/// commit_batch writes modseq, email_id and server_thread_id, and several records in order;
/// the outbox keeps each record's topic.
async fn commit_batch_columns_and_records(kind: Kind) -> Result<()> {
    let db = TestDb::new(kind).await?;
    let store = store(&db, ExpungeMode::Keep).await?;
    let recs = [
        mail(5, "root@x", "", Some(41)),
        mail(150, "new@x", "", None),
    ];
    let committed = store
        .commit_batch(None, INBOX, &recs, 150, Some(7), |uids| {
            let (old, new): (Vec<u32>, Vec<u32>) = uids.iter().partition(|u| **u < 100);
            vec![
                (Topic::Changes, format!("imported {old:?}")),
                (Topic::Sync, format!("newMail {new:?}")),
            ]
        })
        .await?;
    ensure!(committed.inserted == [5, 150]);
    let got: Vec<_> = committed
        .outbox
        .iter()
        .map(|r| (r.topic, r.payload.as_str(), r.exists_at_us))
        .collect();
    ensure!(
        got == [
            (Topic::Changes, "imported [5]", Some(7)),
            (Topic::Sync, "newMail [150]", Some(7))
        ],
        "{got:?}"
    );
    ensure!(committed.outbox[0].id < committed.outbox[1].id);
    let cols: (Option<i64>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT modseq, email_id, server_thread_id FROM messages WHERE uid = 5")
            .fetch_one(store.pool())
            .await?;
    ensure!(
        cols == (Some(41), Some("Eroot@x".into()), Some("T1".into())),
        "{cols:?}"
    );
    let a = store
        .apply_changes(
            INBOX,
            &ChangeSet {
                expunged: vec![150],
                ..ChangeSet::default()
            },
            |_| vec!["gone".into()],
        )
        .await?;
    let pending = store.outbox_pending(10).await?;
    let back: Vec<_> = pending
        .iter()
        .map(|r| (r.id, r.topic, r.payload.as_str()))
        .collect();
    ensure!(
        back == [
            (committed.outbox[0].id, Topic::Changes, "imported [5]"),
            (committed.outbox[1].id, Topic::Sync, "newMail [150]"),
            (a.outbox[0].id, Topic::Changes, "gone"),
        ],
        "{back:?}"
    );
    // A re-fetch inserts nothing and asks for no record.
    let again = store
        .commit_batch(None, INBOX, &recs, 150, None, |_| {
            vec![(Topic::Sync, "x".into())]
        })
        .await?;
    ensure!(again.inserted.is_empty() && again.outbox.is_empty());
    store.pool().close().await;
    Ok(())
}

macro_rules! both {
    ($f:ident, $sqlite:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() -> Result<()> {
            $f(Kind::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() -> Result<()> {
            $f(Kind::Postgres).await
        }
    };
}

both!(flag_changes_and_stale_reports, flags_sqlite, flags_postgres);
both!(expunge_keep, expunge_keep_sqlite, expunge_keep_postgres);
both!(
    expunge_delete,
    expunge_delete_sqlite,
    expunge_delete_postgres
);
both!(moves_count_once, moves_sqlite, moves_postgres);
both!(
    highest_modseq_grows_in_the_same_transaction,
    highest_modseq_sqlite,
    highest_modseq_postgres
);
both!(
    commit_batch_columns_and_records,
    commit_batch_sqlite,
    commit_batch_postgres
);
