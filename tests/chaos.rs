//! The chaos run: 500 messages into two mailboxes while everything fails at least once.
//!
//! The real `idlesync` binary runs against our own Dovecot (through a fault-injecting proxy), our
//! own PostgreSQL cluster and our own Redis. During the run: Redis is stopped, idlesync is killed
//! with SIGKILL twice (mid-delivery), PostgreSQL is killed, Dovecot is restarted, the connection
//! is blackholed, and a mailbox task panics. At the end the database must hold every message
//! exactly once, and every stored UID must appear in at least one published record (read back
//! from the Redis Stream, which a persistent Redis keeps across its restart).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::daemon::{config_toml, mail, AccountSpec};
use common::dovecot::Dovecot;
use common::proxy::{Mode, Proxy};
use common::servers::{free_port, OwnPostgres, OwnRedis};

const PW: &str = "chaos-pw-1";
const MAILBOXES: [&str; 2] = ["INBOX", "Work"];
const PER_WAVE: usize = 50;
const WAVES: usize = 10;

struct Idlesync {
    child: Child,
}

impl Idlesync {
    fn spawn(config: &Path, log: &Path, inject_panic: Option<&str>) -> Result<Idlesync> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idlesync"));
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "idlesync=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(p) = inject_panic {
            cmd.env("IDLESYNC_INJECT_PANIC", p);
        }
        Ok(Idlesync {
            child: cmd.spawn()?,
        })
    }

    /// SIGKILL: no DONE, no LOGOUT, no last outbox pass.
    fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Idlesync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until /status shows every mailbox idling.
async fn wait_all_idling(admin: &str, timeout: Duration) -> Result<()> {
    let addr: std::net::SocketAddr = admin.parse()?;
    common::wait_until(timeout, || async move {
        let Ok(body) = common::http_get(addr, "/status").await else {
            return Ok(false);
        };
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let all = v
            .as_array()
            .map(|a| a.len() == MAILBOXES.len() && a.iter().all(|m| m["state"] == "idling"));
        Ok(all == Some(true))
    })
    .await
}

async fn wave(dc: &Dovecot, n: usize, delivered: &mut Vec<(String, String)>) -> Result<()> {
    for _ in 0..PER_WAVE {
        let mb = MAILBOXES[delivered.len() % MAILBOXES.len()];
        let subject = format!("chaos-{n:02}-{:04}", delivered.len());
        dc.append("chaos", mb, &mail(&subject)).await?;
        delivered.push((mb.to_string(), subject));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_loses_and_doubles_nothing() -> Result<()> {
    let mut dc = Dovecot::start(&[("chaos", PW)])?;
    dc.create_mailbox("chaos", "Work").await?;
    let proxy = Proxy::start(dc.imaps_addr()).await?;
    let mut pg = OwnPostgres::start()?;
    let mut redis = OwnRedis::start_with(true)?;
    let stream = "chaos:stream";
    let admin = format!("127.0.0.1:{}", free_port()?);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("idlesync.toml");
    let log = dir.path().join("idlesync.log");
    let toml = config_toml(
        &pg.url(),
        Some((&redis.url(), "chaos")),
        dc.ca_file(),
        &[AccountSpec {
            id: "acc-chaos",
            user: "chaos",
            password: PW,
            tls: "implicit",
            port: proxy.addr().port(),
            mailboxes: &MAILBOXES,
        }],
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""))
    .replace(
        "channel = \"chaos\"\n",
        &format!("channel = \"chaos\"\nstream = \"{stream}\"\nstream_maxlen = 100000\n"),
    )
    .replace("dead_after = \"5m\"", "dead_after = \"2s\"")
    .replace(
        "connect_timeout = \"10s\"",
        "connect_timeout = \"3s\"\nfetch_batch = 20",
    );
    std::fs::write(&config, toml)?;

    let mut delivered = Vec::new();
    let mut d = Idlesync::spawn(&config, &log, None)?;
    wait_all_idling(&admin, Duration::from_secs(30)).await?;
    wave(&dc, 0, &mut delivered).await?;

    // Redis down while mail arrives.
    redis.stop()?;
    wave(&dc, 1, &mut delivered).await?;
    redis.resume()?;

    // kill -9 in the middle of a wave, then restart.
    let half = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (w, ()) = tokio::join!(wave(&dc, 2, &mut delivered), async {
        half.await;
        let _ = d.kill9();
    });
    w?;
    d = Idlesync::spawn(&config, &log, None)?;
    wait_all_idling(&admin, Duration::from_secs(30)).await?;

    // PostgreSQL killed while mail arrives.
    pg.stop()?;
    wave(&dc, 3, &mut delivered).await?;
    pg.resume()?;

    // Dovecot restarted.
    dc.restart()?;
    wave(&dc, 4, &mut delivered).await?;

    // The connection blackholed past dead_after, mail arriving meanwhile.
    wait_all_idling(&admin, Duration::from_secs(30)).await?;
    proxy.set_mode(Mode::Blackhole);
    wave(&dc, 5, &mut delivered).await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // past dead_after = 2 s: the fault itself
    proxy.set_mode(Mode::Forward);
    proxy.cut_all();

    // Second kill -9 mid-wave; the next run panics once in Work.
    let (w, ()) = tokio::join!(wave(&dc, 6, &mut delivered), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = d.kill9();
    });
    w?;
    d = Idlesync::spawn(&config, &log, Some("acc-chaos/Work"))?;
    for n in 7..WAVES {
        wave(&dc, n, &mut delivered).await?;
    }

    // Everything settles: all stored and announced.
    let want = delivered.len();
    assert_eq!(want, PER_WAVE * WAVES);
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await?;
    let stored_count = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
            .fetch_one(&pool)
            .await?;
        anyhow::Ok(n)
    };
    common::wait_until(Duration::from_secs(90), || async {
        Ok(stored_count().await? as usize >= want)
    })
    .await
    .with_context(|| format!("not all {want} messages were stored"))?;
    let stored: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT mailbox, uidvalidity, uid FROM messages")
            .fetch_all(&pool)
            .await?;
    let distinct: BTreeSet<_> = stored.iter().cloned().collect();
    let subjects: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT subject FROM messages")
        .fetch_all(&pool)
        .await?;

    let announced = |url: String| async move {
        let mut set = BTreeSet::new();
        for r in common::redis::stream_records(&url, stream).await? {
            for u in r["uids"].as_array().into_iter().flatten() {
                set.insert((
                    r["mailbox"].as_str().unwrap_or_default().to_string(),
                    r["uidValidity"].as_i64().unwrap_or_default(),
                    u.as_i64().unwrap_or_default(),
                ));
            }
        }
        anyhow::Ok(set)
    };
    let url = redis.url();
    common::wait_until(Duration::from_secs(60), || {
        let url = url.clone();
        let distinct = &distinct;
        async move {
            Ok(announced(url)
                .await
                .map(|a| distinct.is_subset(&a))
                .unwrap_or(false))
        }
    })
    .await
    .context("some stored UIDs were never announced")?;
    let announced_set = announced(redis.url()).await?;

    println!(
        "chaos: delivered {want}, stored {}, duplicates {}, announced {}",
        stored.len(),
        stored.len() - distinct.len(),
        announced_set.intersection(&distinct).count()
    );
    assert_eq!(stored.len(), want, "each message stored once");
    assert_eq!(distinct.len(), want, "no duplicates");
    assert_eq!(subjects.len(), want, "every delivered message is there");
    assert!(distinct.is_subset(&announced_set));
    let log_text = std::fs::read_to_string(&log)?;
    assert!(
        log_text.contains("panicked"),
        "the injected panic happened and was caught"
    );
    pool.close().await;
    drop(d);
    Ok(())
}
