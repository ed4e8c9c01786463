//! The message store, on PostgreSQL and SQLite alike: the nasty-mail corpus (tests/corpus)
//! goes through Dovecot and the real daemon, and every message is checked field by field.

mod common;
mod corpus;

use anyhow::{ensure, Context, Result};
use common::db::Kind;
use corpus::cases::{self, Delivery};
use corpus::harness::env;

async fn corpus_is_stored_field_by_field(kind: Kind) -> Result<()> {
    let all = cases::all();
    ensure!(all.len() >= 40, "the corpus has {} messages", all.len());
    let mut env = env(kind, "corpus", &["INBOX"], cases::STORAGE).await?;
    let mut uids = Vec::new();
    for c in &all {
        match c.delivery {
            Delivery::Append => {
                let uid = env.append("INBOX", &c.raw).await.with_context(|| c.name)?;
                uids.push(Some(uid));
            }
            Delivery::Maildir => {
                env.drop_into_maildir(&c.raw)?;
                uids.push(None);
            }
        }
    }
    env.announced(all.len()).await?;
    let mut failures = Vec::new();
    for (c, uid) in all.iter().zip(&uids) {
        let row = match uid {
            Some(uid) => env.row_by_uid("INBOX", *uid).await,
            None => {
                let mid = c
                    .expect
                    .message_id
                    .as_deref()
                    .context("maildir cases need a Message-ID")?;
                env.row_by_message_id(mid).await
            }
        };
        if let Err(e) = row.and_then(|row| cases::check(c, &row)) {
            failures.push(format!("{e:#}"));
        }
    }
    // Nothing was dropped: every delivery is a row, and the daemon is still idling.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE account_id = $1")
        .bind(&env.account)
        .fetch_one(&env.pool)
        .await?;
    ensure!(
        count as usize == all.len(),
        "{count} rows for {} messages",
        all.len()
    );
    common::daemon::wait_idling(&env.daemon, 1, corpus::harness::WAIT).await?;
    env.shutdown().await;
    ensure!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_sqlite() -> Result<()> {
    corpus_is_stored_field_by_field(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_postgres() -> Result<()> {
    corpus_is_stored_field_by_field(Kind::Postgres).await
}

fn storage(db: &common::db::TestDb) -> idlesync::config::StorageConfig {
    idlesync::config::StorageConfig {
        url: db.url.clone(),
        max_connections: 4,
        ..idlesync::config::StorageConfig::default()
    }
}

/// Dovecot hands NUL out as 0x80, so real NUL bytes are fed to the store directly: PostgreSQL
/// TEXT would reject them, and they must not reach it.
async fn nul_bytes_are_stripped(kind: Kind) -> Result<()> {
    use idlesync::message::{extract, ExtractOptions, ImapMeta};
    use idlesync::store::{BatchTarget, Store};
    let db = common::db::TestDb::new(kind).await?;
    let store = Store::connect(&storage(&db)).await?;
    store.migrate().await?;
    store
        .start_epoch("nul", "INBOX", 1, None, None, None)
        .await?;
    let raw = b"From: N\0ul <n@x.test>\r\nSubject: a\0b\r\nMessage-ID: <n\0ul@x>\r\n\r\nbo\0dy\r\n";
    let meta = ImapMeta {
        uid: 1,
        ..ImapMeta::default()
    };
    let rec = extract(raw, &meta, &ExtractOptions::default());
    let target = BatchTarget {
        account_id: "nul",
        mailbox: "INBOX",
        uidvalidity: 1,
    };
    let committed = store
        .commit_batch(None, target, &[rec], 1, None, |_| {
            vec![(idlesync::changes::Topic::Sync, "{}".into())]
        })
        .await?;
    ensure!(committed.inserted == [1]);
    let outbox = committed
        .outbox
        .first()
        .context("a new row announces a record")?;
    ensure!(outbox.id > 0 && outbox.payload == "{}" && outbox.mailbox == "INBOX");
    let row: (Option<String>, Option<String>, String, Option<String>) = sqlx::query_as(
        "SELECT subject, message_id, from_addr, text_body FROM messages WHERE account_id = 'nul'",
    )
    .fetch_one(store.pool())
    .await?;
    ensure!(
        row.0.as_deref() == Some("ab") && row.1.as_deref() == Some("nul@x"),
        "{row:?}"
    );
    ensure!(
        row.2 == r#"[{"name":"Nul","address":"n@x.test"}]"#,
        "{row:?}"
    );
    ensure!(row.3.as_deref() == Some("body\r\n"), "{row:?}");
    let raw_back: Vec<u8> = sqlx::query_scalar("SELECT raw FROM message_raw")
        .fetch_one(store.pool())
        .await?;
    ensure!(raw_back == raw, "raw keeps the NUL bytes (BYTEA / BLOB)");
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_are_stripped_sqlite() -> Result<()> {
    nul_bytes_are_stripped(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_are_stripped_postgres() -> Result<()> {
    nul_bytes_are_stripped(Kind::Postgres).await
}

/// Two mailboxes of one account commit replies to one root at the same time: the per-account
/// lock keeps the thread whole and its counts exact (no lost update, no split thread).
async fn concurrent_mailboxes_keep_threads_whole(kind: Kind) -> Result<()> {
    use idlesync::message::{extract, ExtractOptions, ImapMeta};
    use idlesync::store::{BatchTarget, Store};
    let db = common::db::TestDb::new(kind).await?;
    let store = Store::connect(&storage(&db)).await?;
    store.migrate().await?;
    const BATCHES: u32 = 25;
    const PER_BATCH: u32 = 4;
    let mut tasks = Vec::new();
    for mailbox in ["INBOX", "Sent", "Archive", "Team"] {
        store
            .start_epoch("conc", mailbox, 1, None, None, None)
            .await?;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let recs: Vec<_> = (0..PER_BATCH)
                    .map(|i| {
                        let uid = b * PER_BATCH + i + 1;
                        // Each message replies to a fresh parent of its own and to the root, so
                        // both tasks keep linking new nodes to one thread.
                        let raw = format!(
                            "From: {mailbox} <{mailbox}@x.test>\r\nSubject: Re: root\r\nMessage-ID: <{mailbox}-{uid}@x>\r\n\
                             In-Reply-To: <parent-{mailbox}-{uid}@x>\r\nReferences: <root@x> <parent-{mailbox}-{uid}@x>\r\n\r\nx\r\n"
                        );
                        extract(raw.as_bytes(), &ImapMeta { uid, ..ImapMeta::default() }, &ExtractOptions::default())
                    })
                    .collect();
                let target = BatchTarget { account_id: "conc", mailbox, uidvalidity: 1 };
                store
                    .commit_batch(None, target, &recs, (b + 1) * PER_BATCH, None, |_| {
                        vec![(idlesync::changes::Topic::Sync, "{}".into())]
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (threads, count): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(MAX(message_count), 0) FROM threads WHERE account_id = 'conc'",
    )
    .fetch_one(store.pool())
    .await?;
    ensure!(threads == 1, "{threads} threads");
    ensure!(
        count == i64::from(4 * BATCHES * PER_BATCH),
        "message_count {count}"
    );
    let distinct: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT thread_id) FROM messages WHERE account_id = 'conc'",
    )
    .fetch_one(store.pool())
    .await?;
    ensure!(distinct == 1, "{distinct} thread ids on messages");
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mailboxes_sqlite() -> Result<()> {
    concurrent_mailboxes_keep_threads_whole(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mailboxes_postgres() -> Result<()> {
    concurrent_mailboxes_keep_threads_whole(Kind::Postgres).await
}

/// `0002` on a database that already holds mail from `0001`: every old row gets a thread.
async fn migration_backfills_threads(kind: Kind) -> Result<()> {
    use idlesync::store::Store;
    let db = common::db::TestDb::new(kind).await?;
    let store = Store::connect(&storage(&db)).await?;
    let mut first = match kind {
        Kind::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Kind::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    first.migrations = std::borrow::Cow::Owned(first.migrations[..1].to_vec());
    first.run(store.pool()).await?;
    for (uid, flags) in [(1, "\\Seen"), (2, "")] {
        sqlx::query(
            "INSERT INTO messages (account_id, mailbox, uidvalidity, uid, message_id, subject, \
             from_addr, to_addrs, size, flags, parse_error, stored_at, received_at) \
             VALUES ('old', 'INBOX', 1, $1, $2, 'old mail', '[]', '[]', 10, $3, FALSE, 5, 7)",
        )
        .bind(uid)
        .bind(format!("old-{uid}@x"))
        .bind(flags)
        .execute(store.pool())
        .await?;
    }
    store.migrate().await?;
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT m.id, t.id, t.message_count, t.unread_count FROM messages m \
         JOIN threads t ON t.id = m.thread_id ORDER BY m.uid",
    )
    .fetch_all(store.pool())
    .await?;
    ensure!(rows.len() == 2, "{rows:?}");
    ensure!(rows.iter().all(|r| r.0 == r.1 && r.2 == 1), "{rows:?}");
    ensure!(
        rows[0].3 == 0 && rows[1].3 == 1,
        "unread from \\Seen: {rows:?}"
    );
    let refs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM thread_refs")
        .fetch_one(store.pool())
        .await?;
    ensure!(refs == 2);
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_backfills_threads_sqlite() -> Result<()> {
    migration_backfills_threads(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_backfills_threads_postgres() -> Result<()> {
    migration_backfills_threads(Kind::Postgres).await
}

/// Migration 0003: bodies, raw messages and attachments are TOASTed with lz4 (this machine's
/// PostgreSQL has it), and a session's statements get custom plans (see `Store::connect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_compresses_with_lz4_and_plans_per_run() -> Result<()> {
    use idlesync::store::Store;
    let db = common::db::TestDb::new(Kind::Postgres).await?;
    let store = Store::connect(&storage(&db)).await?;
    store.migrate().await?;
    let lz4: Vec<(String, String)> = sqlx::query_as(
        "SELECT attrelid::regclass::text || '.' || attname, attcompression::text FROM pg_attribute \
         WHERE attrelid IN ('messages'::regclass, 'message_raw'::regclass, 'attachments'::regclass) \
         AND attname IN ('text_body', 'html_body', 'raw', 'content') ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await?;
    let want = [
        "attachments.content",
        "message_raw.raw",
        "messages.html_body",
        "messages.text_body",
    ];
    ensure!(
        lz4.iter().map(|(c, _)| c.as_str()).eq(want) && lz4.iter().all(|(_, m)| m == "l"),
        "{lz4:?}"
    );
    let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(store.pool())
        .await?;
    ensure!(mode == "force_custom_plan", "plan_cache_mode {mode}");
    Ok(())
}

/// A broken constraint is told apart from an unreachable database: its own error kind, and
/// not transient (retrying the same write fails the same way).
async fn store_errors_are_classified_by_cause(kind: Kind) -> Result<()> {
    use idlesync::store::{Store, StoreError};
    let db = common::db::TestDb::new(kind).await?;
    let store = Store::connect(&storage(&db)).await?;
    store.migrate().await?;
    let insert = || {
        sqlx::query(
            "INSERT INTO mailbox_state (account_id, mailbox, uidvalidity, last_uid, updated_at) \
             VALUES ('acc-kinds', 'INBOX', 1, 0, 0)",
        )
        .execute(store.pool())
    };
    insert().await?;
    let dup = StoreError::from(insert().await.err().context("a duplicate key")?);
    ensure!(
        (dup.kind(), dup.is_transient()) == ("database_constraint", false),
        "{kind:?}: {} {}",
        dup.kind(),
        dup.is_transient()
    );
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_classified_by_cause_sqlite() -> Result<()> {
    store_errors_are_classified_by_cause(Kind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_classified_by_cause_postgres() -> Result<()> {
    store_errors_are_classified_by_cause(Kind::Postgres).await
}
