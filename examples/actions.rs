//! Figures of the actions API (#19), side by side in one run, against a throwaway Dovecot, the
//! machine's PostgreSQL (a database of its own; `--sqlite` for SQLite) and Redis:
//! 1. request → outcome (`PATCH` with `Prefer: wait`, answered once the server changed and the
//!    store committed), p50/p99, beside one raw `UID STORE` round trip on a session of its own;
//! 2. a 500-message conversation archived: the IMAP commands it became, and the time;
//! 3. 1,000 `PATCH` requests from 50 concurrent clients: requests/s, the time until all are
//!    done, and the IMAP commands they became.
//!
//! idlesync runs in this process and reaches Dovecot's plain port through a counting proxy, as
//! does the raw client, so both pay the same hops. The raw client works on a mailbox idlesync
//! does not watch, so its changes never reach idlesync's IDLE while a request is measured.
//!
//! ```sh
//! cargo run --release --example actions -- --rounds 200
//! ```

#[path = "../tests/common/api.rs"]
#[allow(dead_code)]
mod api;
#[path = "../tests/common/db.rs"]
#[allow(dead_code)]
mod db;
#[path = "../tests/common/dovecot/mod.rs"]
#[allow(dead_code)]
mod dovecot;
#[path = "../tests/common/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use serde_json::json;
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};

use dovecot::{Dovecot, DovecotOptions};

#[derive(Parser)]
#[command(about = "idlesync actions figures (issue #19)")]
struct Cli {
    /// Requests of the latency comparison (each also one raw round trip).
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Messages in the archived conversation.
    #[arg(long, default_value_t = 500)]
    thread: usize,
    /// PATCH requests of the concurrency run.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Concurrent clients of the concurrency run.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// SQLite instead of PostgreSQL.
    #[arg(long)]
    sqlite: bool,
}

const USER: &str = "bench";
const PW: &str = "bench-pw-1";

fn message(i: usize, parent: Option<&str>) -> Vec<u8> {
    let reply = parent
        .map(|p| format!("In-Reply-To: <{p}>\r\nReferences: <{p}>\r\n"))
        .unwrap_or_default();
    format!(
        "From: Sender <sender@example.test>\r\nTo: {USER}@example.test\r\nSubject: Re: bench\r\n\
         Message-ID: <bench-{i}@example.test>\r\n{reply}Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
         \r\nBody {i}\r\n"
    )
    .into_bytes()
}

/// A plain IMAP session through the proxy: the raw round trip to compare against.
struct Raw {
    io: BufStream<tokio::net::TcpStream>,
    tag: u32,
}

impl Raw {
    async fn open(addr: std::net::SocketAddr) -> Result<Raw> {
        let mut r = Raw {
            io: BufStream::new(tokio::net::TcpStream::connect(addr).await?),
            tag: 0,
        };
        let mut greeting = String::new();
        r.io.read_line(&mut greeting).await?;
        r.cmd(&format!("LOGIN {USER} {PW}")).await?;
        // A mailbox idlesync does not watch: the raw changes raise no IDLE news that would
        // delay the API's requests measured beside them.
        r.cmd("SELECT Raw").await?;
        Ok(r)
    }

    async fn cmd(&mut self, c: &str) -> Result<()> {
        self.tag += 1;
        let tag = format!("r{} ", self.tag);
        self.io
            .write_all(format!("{tag}{c}\r\n").as_bytes())
            .await?;
        self.io.flush().await?;
        loop {
            let mut line = String::new();
            ensure!(self.io.read_line(&mut line).await? > 0, "closed");
            if let Some(rest) = line.strip_prefix(&tag) {
                ensure!(rest.starts_with("OK"), "{c}: {rest}");
                return Ok(());
            }
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// IMAP commands seen by the proxy since `before` (a snapshot of [`counts`]).
fn counts(p: &proxy::Proxy) -> Vec<(&'static str, usize)> {
    [
        "UID STORE",
        "UID MOVE",
        "UID COPY",
        "UID EXPUNGE",
        "UID FETCH",
        "IDLE",
        "DONE",
    ]
    .into_iter()
    .map(|c| (c, p.count_commands(c)))
    .collect()
}

fn delta(after: &[(&'static str, usize)], before: &[(&'static str, usize)]) -> String {
    after
        .iter()
        .zip(before)
        .filter(|(a, b)| a.1 > b.1)
        .map(|(a, b)| format!("{} {}", a.1 - b.1, a.0))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn stored(pool: &sqlx::AnyPool, mailbox: &str) -> Result<i64> {
    Ok(sqlx::query(
        "SELECT COUNT(*) FROM messages WHERE account_id = 'bench' AND mailbox = $1 \
         AND expunged_at IS NULL",
    )
    .bind(mailbox)
    .fetch_one(pool)
    .await?
    .get(0))
}

async fn wait_stored(pool: &sqlx::AnyPool, mailbox: &str, n: i64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    while stored(pool, mailbox).await? < n {
        ensure!(Instant::now() < end, "{mailbox}: {n} not stored in 2 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let dc = Dovecot::start_with(DovecotOptions {
        users: vec![(USER.into(), PW.into())],
        ..DovecotOptions::default()
    })?;
    dc.create_mailbox(USER, "Archive").await?;
    let proxy = proxy::Proxy::start(dc.imap_addr()).await?;
    let db = if cli.sqlite {
        db::TestDb::sqlite()?
    } else {
        db::TestDb::postgres().await?
    };
    let dir = tempfile::tempdir()?;
    let token = api::token_file(dir.path());
    let toml = format!(
        "[storage]\nurl = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [redis]\nurl = \"redis://127.0.0.1:6379\"\nchannel = \"bench-actions-{pid}\"\n\
         changes_channel = \"bench-actions-{pid}:changes\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
         [[accounts]]\nid = \"bench\"\nemail = \"bench@example.test\"\nhost = \"127.0.0.1\"\n\
         port = {}\ntls = \"none\"\nusername = \"{USER}\"\npassword = \"{PW}\"\n\
         mailboxes = [\"INBOX\", \"Archive\"]\n",
        db.url,
        token.display(),
        proxy.addr().port(),
        pid = std::process::id(),
    );
    let config = idlesync::Config::parse(std::path::Path::new("bench.toml"), toml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let d = idlesync::Daemon::start(config).await?;
    let client = api::Client::new(d.api_addr().context("api")?);
    let pool = db.pool().await?;

    // 1. One message; the API and a raw session take turns changing a keyword on it.
    let mut w = dovecot::wire::Wire::login(&dc, USER).await?;
    w.append("INBOX", &message(0, None)).await?;
    wait_stored(&pool, "INBOX", 1).await?;
    let id: i64 = sqlx::query("SELECT id FROM messages WHERE account_id = 'bench'")
        .fetch_one(&pool)
        .await?
        .get(0);
    let raw_uid = w.append("Raw", &message(1, None)).await?;
    let mut raw = Raw::open(proxy.addr()).await?;
    let (mut api_t, mut raw_t) = (Vec::new(), Vec::new());
    for i in 0..cli.rounds {
        let sign = if i % 2 == 0 { '+' } else { '-' };
        let t = Instant::now();
        raw.cmd(&format!("UID STORE {raw_uid} {sign}FLAGS ($Raw)"))
            .await?;
        raw_t.push(t.elapsed());
        let body = if i % 2 == 0 {
            json!({"addFlags": ["$Api"]})
        } else {
            json!({"removeFlags": ["$Api"]})
        };
        let t = Instant::now();
        let a = client
            .call(
                "PATCH",
                &format!("/v1/messages/{id}"),
                &[("Prefer", "wait=10")],
                body.to_string().as_bytes(),
            )
            .await?;
        api_t.push(t.elapsed());
        ensure!(
            a.status == 200 && a.body["action"]["status"] == "done",
            "{}",
            a.body
        );
    }
    api_t.sort();
    raw_t.sort();

    // 2. A conversation of `thread` messages archived in one request.
    let first = cli.thread * 10;
    for i in first..first + cli.thread {
        let parent = (i > first).then(|| format!("bench-{first}@example.test"));
        w.append("INBOX", &message(i, parent.as_deref())).await?;
    }
    wait_stored(&pool, "INBOX", 1 + cli.thread as i64).await?;
    let thread: i64 = sqlx::query("SELECT thread_id FROM messages WHERE message_id = $1")
        .bind(format!("bench-{first}@example.test"))
        .fetch_one(&pool)
        .await?
        .get(0);
    let before = counts(&proxy);
    let t = Instant::now();
    let a = client
        .call(
            "POST",
            &format!("/v1/threads/{thread}/move"),
            &[("Prefer", "wait=30")],
            json!({"to": "Archive"}).to_string().as_bytes(),
        )
        .await?;
    let archive_time = t.elapsed();
    ensure!(a.body["action"]["status"] == "done", "{}", a.body);
    let archive_cmds = delta(&counts(&proxy), &before);
    wait_stored(&pool, "Archive", cli.thread as i64).await?;

    // 3. Many clients at once, over the archived messages.
    let ids: Vec<i64> = sqlx::query(
        "SELECT id FROM messages WHERE account_id = 'bench' AND mailbox = 'Archive' \
         AND expunged_at IS NULL ORDER BY id",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let before = counts(&proxy);
    let t = Instant::now();
    let per = cli.requests / cli.clients;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..cli.clients {
        let client = client.clone();
        let ids = ids.clone();
        tasks.spawn(async move {
            for k in 0..per {
                let i = c * per + k;
                let body = json!({"seen": i % 3 != 0, "flagged": i % 2 == 0}).to_string();
                let a = client
                    .call(
                        "PATCH",
                        &format!("/v1/messages/{}", ids[i % ids.len()]),
                        &[],
                        body.as_bytes(),
                    )
                    .await?;
                ensure!(a.status == 202 || a.status == 200, "{}", a.body);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let accepted = t.elapsed();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 =
            sqlx::query("SELECT COUNT(*) FROM actions WHERE status IN ('queued', 'running')")
                .fetch_one(&pool)
                .await?
                .get(0);
        if open == 0 {
            break;
        }
        ensure!(
            Instant::now() < end,
            "{open} actions still open after 2 min"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_done = t.elapsed();
    let many_cmds = delta(&counts(&proxy), &before);

    let db_name = if cli.sqlite { "SQLite" } else { "PostgreSQL" };
    println!("\n### Actions (#19), {db_name}, loopback Dovecot through a counting proxy\n");
    println!("| measure | figure |\n|---|---|");
    println!(
        "| PATCH → done (`Prefer: wait`), {} requests | p50 {:.2} ms, p99 {:.2} ms |",
        cli.rounds,
        pct(&api_t, 0.5),
        pct(&api_t, 0.99)
    );
    println!(
        "| raw `UID STORE` round trip, same run | p50 {:.2} ms, p99 {:.2} ms |",
        pct(&raw_t, 0.5),
        pct(&raw_t, 0.99)
    );
    println!(
        "| idlesync's share (p50 difference) | {:.2} ms |",
        pct(&api_t, 0.5) - pct(&raw_t, 0.5)
    );
    println!(
        "| archive a {}-message conversation | {:.1} ms; {archive_cmds} |",
        cli.thread,
        archive_time.as_secs_f64() * 1000.0
    );
    println!(
        "| {} PATCH from {} clients: accepted | {:.0} requests/s ({:.0} ms) |",
        per * cli.clients,
        cli.clients,
        (per * cli.clients) as f64 / accepted.as_secs_f64(),
        accepted.as_secs_f64() * 1000.0
    );
    println!(
        "| … all done | {:.0} ms after the first request; {many_cmds} |",
        all_done.as_secs_f64() * 1000.0
    );
    pool.close().await;
    d.shutdown().await;
    Ok(())
}
