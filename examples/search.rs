//! Figures of search (#21) on a large store, PostgreSQL (default) or SQLite (`--sqlite`):
//! 1. ingest CPU per message through the store's batch path, without and with the index (this
//!    process plus, on PostgreSQL, every postgres process: the server builds the tsvectors);
//! 2. `--messages` rows (default 1,000,000) written straight into `messages` (realistic size:
//!    a subject, addresses, ~1 KB of mixed-language body), then indexed by the same background
//!    backfill the migration leaves to the daemon: its time for the whole table;
//! 3. the index's size against the table's;
//! 4. query latency p50/p99 for single-word, two-word, phrase and operator-heavy queries.
//!
//! ```sh
//! cargo run --release --example search -- --messages 1000000
//! cargo run --release --example search -- --sqlite --messages 1000000
//! ```

#[path = "../tests/common/db.rs"]
#[allow(dead_code)]
mod db;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use idlesync::message::{extract, ExtractOptions, ImapMeta};
use idlesync::store::{BatchTarget, Store};
use sqlx::Row;

#[derive(Parser)]
#[command(about = "idlesync search figures (issue #21)")]
struct Cli {
    /// Messages in the searched account.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Messages per ingest run (with and without the index).
    #[arg(long, default_value_t = 20_000)]
    ingest: usize,
    /// Runs per query kind.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// SQLite instead of PostgreSQL.
    #[arg(long)]
    sqlite: bool,
}

const COMMON: &[&str] = &[
    "the",
    "and",
    "please",
    "meeting",
    "invoice",
    "report",
    "project",
    "update",
    "thanks",
    "review",
    "schedule",
    "customer",
    "order",
    "payment",
    "contract",
    "delivery",
    "team",
    "budget",
    "quarterly",
    "question",
    "attached",
    "tomorrow",
    "call",
    "price",
    "offer",
    "Rechnung",
    "Grüße",
    "Übersicht",
    "Lieferung",
    "Angebot",
    "Besprechung",
    "freundlichen",
    "счёт",
    "оплата",
    "договор",
    "встреча",
    "поставка",
    "спасибо",
    "отчёт",
    "заказ",
    "請求書",
    "会議",
    "お知らせ",
    "納品",
    "見積",
    "確認",
    "東京都",
    "ありがとう",
    "🎉",
    "🍕",
];

/// A deterministic pseudo-random stream (xorshift), so every run stores the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word: mostly common (Zipf-like), else from a long tail of 50,000.
    fn word(&mut self) -> String {
        let r = self.next();
        if r % 10 < 6 {
            let i = ((r >> 8) % 1000) as f64 / 1000.0;
            COMMON[((i * i * i) * COMMON.len() as f64) as usize].to_string()
        } else {
            format!("w{}", (r >> 8) % 50_000)
        }
    }

    /// A word one can search for (not an emoji).
    fn term(&mut self) -> String {
        // The common list holds two emoji: a few draws at most.
        loop {
            let w = self.word();
            if w.chars().any(char::is_alphanumeric) {
                return w;
            }
        }
    }

    fn text(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.word())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Makes one query of a kind from the random stream.
type QueryMaker = Box<dyn Fn(&mut Rng) -> String>;

const SENDERS: &[&str] = &[
    "Ann Lee",
    "Bob Stone",
    "Jürgen Groß",
    "Иван Петров",
    "田中太郎",
];

fn raw(i: usize, rng: &mut Rng) -> Vec<u8> {
    let from = SENDERS[i % SENDERS.len()];
    format!(
        "From: =?utf-8?b?{}?= <user{}@example{}.com>\r\nTo: team{}@example.com\r\nSubject: {}\r\n\
         Message-ID: <b{i}@bench>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        b64(from),
        i % 500,
        i % 7,
        i % 20,
        rng.text(6),
        rng.text(150)
    )
    .into_bytes()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// CPU seconds of this process, and of every `postgres` process (0 on SQLite).
fn cpu(postgres: bool) -> (f64, f64) {
    let tick = 100.0;
    let of = |pid: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(") ")?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
            })
            .unwrap_or(0.0)
    };
    let me = of("self");
    let mut total = 0.0;
    if postgres {
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.chars().all(|c| c.is_ascii_digit())
                    && std::fs::read_to_string(format!("/proc/{name}/comm"))
                        .is_ok_and(|c| c.trim() == "postgres")
                {
                    total += of(&name);
                }
            }
        }
    }
    (me, total)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Ingests `n` parsed messages as `account` through the batch path; CPU µs per message of
/// this process and of the database server.
async fn ingest(store: &Store, account: &str, n: usize, pg: bool) -> Result<(f64, f64)> {
    let mut rng = Rng(7);
    let opts = ExtractOptions::default();
    let recs: Vec<_> = (0..n)
        .map(|i| {
            let meta = ImapMeta {
                uid: i as u32 + 1,
                flags: String::new(),
                internal_date_ms: Some(1_700_000_000_000 + i as i64 * 60_000),
                size: None,
                modseq: None,
                email_id: None,
                server_thread_id: None,
            };
            extract(&raw(i, &mut rng), &meta, &opts)
        })
        .collect();
    let target = BatchTarget {
        account_id: account,
        mailbox: "INBOX",
        uidvalidity: 1,
    };
    let before = cpu(pg);
    for chunk in recs.chunks(500) {
        let last = chunk.last().map_or(0, |r| r.uid);
        store
            .commit_batch(None, target, chunk, last, None, |_| Vec::new())
            .await?;
    }
    let after = cpu(pg);
    let per = |a: f64, b: f64| (a - b) * 1e6 / n as f64;
    Ok((per(after.0, before.0), per(after.1, before.1)))
}

/// Writes `n` message rows straight into `messages` (no index rows): the store as an upgrade
/// finds it.
async fn bulk(pool: &sqlx::AnyPool, n: usize) -> Result<()> {
    let mut rng = Rng(11);
    let cols = "account_id, mailbox, uidvalidity, uid, message_id, subject, from_addr, to_addrs, \
                cc_addrs, received_at, text_body, snippet, size, flags, has_attachments, \
                parse_error, stored_at";
    let per = 200;
    let mut i = 0;
    while i < n {
        let rows = per.min(n - i);
        let mut sql = format!("INSERT INTO messages ({cols}) VALUES ");
        for r in 0..rows {
            let p = r * 17;
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(
                &(1..=17)
                    .map(|k| format!("${}", p + k))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            sql.push(')');
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in i..i + rows {
            let body = rng.text(150);
            let from = SENDERS[k % SENDERS.len()];
            q = q
                .bind("bench")
                .bind(if k % 4 == 3 { "Archive" } else { "INBOX" })
                .bind(1i64)
                .bind(k as i64 + 1)
                .bind(format!("b{k}@bench"))
                .bind(rng.text(6))
                .bind(format!(
                    r#"[{{"name":"{from}","address":"user{}@example{}.com"}}]"#,
                    k % 500,
                    k % 7
                ))
                .bind(format!(
                    r#"[{{"name":null,"address":"team{}@example.com"}}]"#,
                    k % 20
                ))
                .bind("[]")
                .bind(1_700_000_000_000 + k as i64 * 30_000)
                .bind(body.clone())
                .bind(body.chars().take(200).collect::<String>())
                .bind(body.len() as i64 + 400 + (k % 50) as i64 * 1000)
                .bind(if k % 3 == 0 { "\\Seen" } else { "" })
                .bind(k % 6 == 0)
                .bind(false)
                .bind(0i64);
        }
        q.execute(pool).await?;
        i += rows;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let db = if cli.sqlite {
        db::TestDb::sqlite()?
    } else {
        db::TestDb::postgres().await?
    };
    let pg = !cli.sqlite;
    let cfg = idlesync::config::StorageConfig {
        url: db.url.clone(),
        max_connections: 4,
        ..Default::default()
    };
    let store = Store::connect(&cfg).await?;
    store.migrate().await?;
    let pool = db.pool().await?;

    // 1. Ingest, alternating without and with the index.
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..2 {
        without.push(
            ingest(
                &store.clone().without_search_index(),
                &format!("plain{round}"),
                cli.ingest,
                pg,
            )
            .await?,
        );
        with.push(ingest(&store, &format!("indexed{round}"), cli.ingest, pg).await?);
    }

    // 2. A large account, then the backfill over all of it.
    let t = Instant::now();
    bulk(&pool, cli.messages).await?;
    let bulk_secs = t.elapsed().as_secs_f64();
    sqlx::query("UPDATE search_backfill SET next_id = 0, end_id = (SELECT MAX(id) FROM messages)")
        .execute(&pool)
        .await?;
    let size_before = size(&pool, pg).await?;
    let t = Instant::now();
    while store.backfill_search().await?.is_some() {}
    let backfill_secs = t.elapsed().as_secs_f64();
    if pg {
        sqlx::query("ANALYZE").execute(&pool).await?;
    }
    let size_after = size(&pool, pg).await?;

    // 4. Queries.
    let mut rng = Rng(99);
    let kinds: Vec<(&str, QueryMaker)> = vec![
        ("single word", Box::new(|r: &mut Rng| r.term())),
        (
            "two words",
            Box::new(|r: &mut Rng| format!("{} {}", r.term(), r.term())),
        ),
        (
            "phrase",
            Box::new(|r: &mut Rng| format!("\"{} {}\"", r.term(), r.term())),
        ),
        (
            "operators",
            Box::new(|r: &mut Rng| {
                format!(
                    "{} from:ann -is:read after:2023/06/01 in:INBOX larger:2K",
                    r.term()
                )
            }),
        ),
    ];
    let mut rows = Vec::new();
    for (name, make) in &kinds {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..cli.queries {
            let q = idlesync::search::parse(&make(&mut rng))?;
            let t = Instant::now();
            found += store.search("bench", &q, None, 20).await?.len();
            times.push(t.elapsed());
        }
        times.sort();
        rows.push((
            name.to_string(),
            pct(&times, 0.5),
            pct(&times, 0.99),
            found as f64 / cli.queries as f64,
        ));
    }

    let dbn = if pg { "PostgreSQL" } else { "SQLite" };
    println!(
        "\n### Search (#21), {dbn}, {} messages in one account\n",
        cli.messages
    );
    println!("| measure | figure |\n|---|---|");
    let avg =
        |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    for (what, f) in [
        ("idlesync", (|c: &(f64, f64)| c.0) as fn(&(f64, f64)) -> f64),
        ("database server", |c: &(f64, f64)| c.1),
        ("both", |c: &(f64, f64)| c.0 + c.1),
    ] {
        if !pg && what != "idlesync" {
            continue;
        }
        let (a, b) = (avg(&without, f), avg(&with, f));
        println!(
            "| ingest CPU per message, {what} (batch path, 2 rounds of {}) | without index {a:.0} µs, with {b:.0} µs ({:+.1} %) |",
            cli.ingest,
            (b / a - 1.0) * 100.0
        );
    }
    println!("| bulk load of the rows (no index) | {bulk_secs:.0} s |");
    println!(
        "| backfill (the migration's indexing) of all rows | {backfill_secs:.0} s ({:.0} messages/s) |",
        cli.messages as f64 / backfill_secs
    );
    println!("| sizes | {} |", describe(&size_before, &size_after, pg));
    for (name, p50, p99, found) in rows {
        println!("| query: {name} | p50 {p50:.2} ms, p99 {p99:.2} ms ({found:.1} results of 20 on average) |");
    }
    Ok(())
}

/// PostgreSQL: (messages, search_docs incl. index, the GIN index alone) bytes; SQLite: the
/// database's bytes.
async fn size(pool: &sqlx::AnyPool, pg: bool) -> Result<Vec<i64>> {
    if pg {
        let r = sqlx::query(
            "SELECT pg_total_relation_size('messages'), pg_total_relation_size('search_docs'), \
             pg_relation_size('search_docs_index')",
        )
        .fetch_one(pool)
        .await?;
        Ok(vec![r.get(0), r.get(1), r.get(2)])
    } else {
        let pages: i64 = sqlx::query("PRAGMA page_count")
            .fetch_one(pool)
            .await?
            .get(0);
        let size: i64 = sqlx::query("PRAGMA page_size")
            .fetch_one(pool)
            .await?
            .get(0);
        Ok(vec![pages * size])
    }
}

fn describe(before: &[i64], after: &[i64], pg: bool) -> String {
    let mb = |b: i64| b as f64 / (1 << 20) as f64;
    if pg {
        format!(
            "messages {:.0} MB (with its indexes and TOAST); search_docs {:.0} MB, of which the GIN index {:.0} MB ({:.0} % of messages)",
            mb(after[0]),
            mb(after[1]),
            mb(after[2]),
            after[1] as f64 * 100.0 / after[0] as f64
        )
    } else {
        format!(
            "database {:.0} MB before the index, {:.0} MB after: the FTS5 index {:.0} MB ({:.0} % of the rest)",
            mb(before[0]),
            mb(after[0]),
            mb(after[0] - before[0]),
            (after[0] - before[0]) as f64 * 100.0 / before[0] as f64
        )
    }
}
