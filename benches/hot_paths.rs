//! Criterion benches of the hot paths: parse-and-extract (full model: addresses, bodies, snippet,
//! attachments, raw copy), record encoding, and a 100-message batch commit (messages,
//! attachments, raw, threads, sync state, outbox) on SQLite and PostgreSQL, and a one-message
//! commit with its transaction opened early or in the commit.
//!
//! `cargo bench --bench hot_paths`. PostgreSQL uses IDLESYNC_BENCH_PG (default
//! postgres://postgres@127.0.0.1:5432/test) and creates, then drops, its own database.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use idlesync::changes::Topic;
use idlesync::config::StorageConfig;
use idlesync::event::{timestamp_now, RecordKind, SyncRecord};
use idlesync::message::{extract, ExtractOptions, ImapMeta, MessageRecord};
use idlesync::store::{Backend, BatchTarget, BatchTx, Store};

/// A multipart message of about `size` bytes: text, HTML and a base64 attachment.
fn message(size: usize) -> Vec<u8> {
    let para = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. ";
    let text_len = (size / 3).max(200);
    let text: String = para.repeat(text_len / para.len() + 1)[..text_len].to_string();
    let html = format!("<html><body><p>{}</p></body></html>", &text[..text_len / 2]);
    let attach_len = size.saturating_sub(text_len + html.len() + 800);
    let b64_line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n";
    let attachment = b64_line.repeat(attach_len / b64_line.len());
    format!(
        "From: \"Sender Name\" <sender@example.com>\r\nTo: a@example.com, \"B\" <b@example.com>\r\n\
         Subject: =?utf-8?q?Quarterly_report_=E2=80=93_draft?=\r\nMessage-ID: <bench@example.com>\r\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n\
         --b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b2--\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"r.pdf\"\r\n\r\n{attachment}--b1--\r\n"
    )
    .into_bytes()
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_extract");
    for (name, size) in [
        ("2KB", 2 * 1024),
        ("50KB", 50 * 1024),
        ("5MB", 5 * 1024 * 1024),
    ] {
        let raw = message(size);
        let meta = ImapMeta {
            uid: 1,
            flags: "\\Seen".into(),
            internal_date_ms: Some(0),
            size: None,
            ..ImapMeta::default()
        };
        let opts = ExtractOptions::default();
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &raw, |b, raw| {
            b.iter(|| extract(black_box(raw), &meta, &opts))
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let uids: Vec<u32> = (1000..1010).collect();
    c.bench_function("record_encode_10_uids", |b| {
        b.iter(|| {
            SyncRecord {
                account_id: "abc123",
                email_address: "joe@example.com",
                count: uids.len(),
                timestamp: timestamp_now(),
                kind: RecordKind::NewMail,
                mailbox: "INBOX",
                uid_validity: 1,
                uids: black_box(&uids),
            }
            .to_json()
        })
    });
}

/// Where the benches' batches go.
const TARGET: BatchTarget<'static> = BatchTarget {
    account_id: "bench",
    mailbox: "INBOX",
    uidvalidity: 1,
};

/// Message `uid` for the store benches: every 10 messages form one conversation, half of them
/// replying to a message of an earlier batch.
fn record(raw: &[u8], uid: u32) -> MessageRecord {
    let root = uid / 10 * 10;
    let raw = String::from_utf8_lossy(raw).replacen(
        "Message-ID: <bench@example.com>",
        &format!(
            "Message-ID: <{uid}@bench>\r\nIn-Reply-To: <{}@bench>",
            if uid.is_multiple_of(2) {
                root.saturating_sub(100)
            } else {
                root
            }
        ),
        1,
    );
    extract(
        raw.as_bytes(),
        &ImapMeta {
            uid,
            ..ImapMeta::default()
        },
        &ExtractOptions::default(),
    )
}

fn batch_insert(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let raw = message(10 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut targets = vec![(
        "sqlite",
        StorageConfig {
            url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            max_connections: 2,
            ..StorageConfig::default()
        },
        None,
    )];
    let admin = std::env::var("IDLESYNC_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pg_name = format!("idlesync_bench_{}", std::process::id());
    match rt.block_on(pg_admin(&admin, &format!("CREATE DATABASE {pg_name}"))) {
        Ok(()) => {
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            targets.push((
                "postgres",
                StorageConfig {
                    url: format!("{base}/{pg_name}"),
                    max_connections: 2,
                    ..StorageConfig::default()
                },
                Some(pg_name.clone()),
            ));
        }
        Err(e) => eprintln!("skipping PostgreSQL batch bench: {e}"),
    }
    let mut stores = Vec::new();
    let mut g = c.benchmark_group("batch_insert_100x10KB");
    g.throughput(Throughput::Elements(100));
    for (name, cfg, _) in &targets {
        let store = rt.block_on(async {
            let s = Store::connect(cfg).await.expect("connect");
            s.migrate().await.expect("migrate");
            s.start_epoch("bench", "INBOX", 1, None, None, None)
                .await
                .expect("epoch");
            s
        });
        let next_uid = AtomicU32::new(1);
        // Parsing is measured above; here only the transaction: 100 message rows, their
        // attachment and raw rows, thread assignment ([`record`]), the sync state and the
        // outbox record.
        g.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    let first = next_uid.fetch_add(100, Ordering::Relaxed);
                    let batch: Vec<_> = (first..first + 100).map(|uid| record(&raw, uid)).collect();
                    (first, batch)
                },
                |(first, batch)| {
                    rt.block_on(
                        store.commit_batch(None, TARGET, &batch, first + 99, None, |u| {
                            vec![(Topic::Sync, format!("{}", u.len()))]
                        }),
                    )
                    .expect("commit")
                },
                BatchSize::SmallInput,
            )
        });
        stores.push((*name, store, next_uid));
    }
    g.finish();
    // The live case, one message: the transaction opened before the timed part (as the
    // mailbox does while the server answers its FETCH, `begun_early`), or in the commit. The
    // difference is what opening it early takes off the EXISTS → PUBLISH path.
    let mut g = c.benchmark_group("commit_one_message");
    g.throughput(Throughput::Elements(1));
    for (name, store, next_uid) in &stores {
        // Store::begin_early opens nothing on SQLite (this bench is why).
        let arms: &[bool] = match store.backend() {
            Backend::Postgres => &[false, true],
            Backend::Sqlite => &[false],
        };
        for &early in arms {
            let how = if early {
                "begun_early"
            } else {
                "begun_in_commit"
            };
            g.bench_function(BenchmarkId::new(*name, how), |b| {
                b.iter_batched(
                    || {
                        let uid = next_uid.fetch_add(1, Ordering::Relaxed);
                        let tx = early.then(|| rt.block_on(begin_when_idle(store))).flatten();
                        assert_eq!(tx.is_some(), early, "an idle pooled connection");
                        (uid, [record(&raw, uid)], tx)
                    },
                    |(uid, batch, tx)| {
                        rt.block_on(store.commit_batch(tx, TARGET, &batch, uid, None, |u| {
                            vec![(Topic::Sync, format!("{}", u.len()))]
                        }))
                        .expect("commit")
                    },
                    // One setup, one run, for both (a batch of early setups would hold every pooled
                    // connection).
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
    for (_, store, _) in stores {
        rt.block_on(store.pool().close());
    }
    for (_, _, name) in targets {
        if let Some(name) = name {
            let _ = rt.block_on(pg_admin(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ));
        }
    }
}

/// [`Store::begin_early`] once the last commit's connection is back in the pool (a task
/// sqlx spawns returns it, after a round trip to SQLite's worker thread). Untimed setup.
async fn begin_when_idle(store: &Store) -> Option<BatchTx> {
    for _ in 0..10_000 {
        if let Some(tx) = store.begin_early().await {
            return Some(tx);
        }
        tokio::time::sleep(std::time::Duration::from_micros(100)).await;
    }
    None
}

async fn pg_admin(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

criterion_group!(benches, parse, encode, batch_insert);
criterion_main!(benches);
