//! The README's first command: idlesync end to end on local defaults.
//!
//! Starts a throwaway Dovecot (implicit TLS, a `demo` user), writes an idlesync config for it
//! (SQLite in a temp dir; Redis at 127.0.0.1:6379 when it answers, stdout otherwise), runs the
//! daemon, delivers a few messages and prints each `email:sync` record as it arrives. Then
//! another client marks the first message read, and the web app's API marks the second one
//! read: the `flagsChanged` records of both arrive on `email:changes`, the second with its
//! `actionId`.
//!
//! `cargo run --example demo [-- N]` (N messages, default 5). Needs `dovecot-imapd` (the README's
//! `scripts/demo` installs it).

#[path = "../tests/common/api.rs"]
#[allow(dead_code)]
mod api;
#[path = "../tests/common/dovecot/mod.rs"]
#[allow(dead_code)]
mod dovecot;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use idlesync::{Config, Daemon};

/// Where changes to stored mail go (`redis.changes_channel`'s default).
const CHANGES: &str = "email:changes";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("idlesync=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);

    let dc = dovecot::Dovecot::start(&[("demo", "demo-password")]).context("starting Dovecot")?;
    let dir = tempfile::tempdir()?;
    let redis_url = "redis://127.0.0.1:6379";
    let channel = "email:sync";
    let redis_up = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await
        .is_ok();
    let toml = format!(
        "[storage]\nurl = \"sqlite://{db}\"\n\n{redis}[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{token}\"\n\n\
         [[accounts]]\nid = \"demo-account\"\nemail = \"demo@example.test\"\nhost = \"127.0.0.1\"\n\
         port = {port}\ntls = \"implicit\"\nusername = \"demo\"\npassword_env = \"DEMO_IMAP_PASSWORD\"\n\
         mailboxes = [\"INBOX\"]\nca_file = \"{ca}\"\n",
        db = dir.path().join("idlesync.db").display(),
        redis = if redis_up {
            format!("[redis]\nurl = \"{redis_url}\"\nchannel = \"{channel}\"\n\n")
        } else {
            String::new()
        },
        port = dc.imaps_port(),
        ca = dc.ca_file().display(),
        token = api::token_file(dir.path()).display(),
    );
    let config_path = dir.path().join("idlesync.toml");
    std::fs::write(&config_path, &toml)?;
    // The config names the variable, as an operator's would; set before the daemon starts.
    std::env::set_var("DEMO_IMAP_PASSWORD", "demo-password");
    eprintln!("config written to {}:\n{toml}", config_path.display());

    let mut records = if redis_up {
        let mut pubsub = redis::Client::open(redis_url)?.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        pubsub.subscribe(CHANGES).await?;
        eprintln!(
            "subscribed to Redis channels {channel} and {CHANGES}; records appear below as the web app sees them"
        );
        Some(pubsub.into_on_message())
    } else {
        eprintln!("Redis is not answering on {redis_url}: the daemon prints records on stdout");
        None
    };

    let config = Config::load(Path::new(&config_path)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let daemon = Daemon::start(config).await?;
    eprintln!("admin listener: http://{}/metrics", daemon.admin_addr());
    let idling = daemon
        .board()
        .wait_for(Duration::from_secs(20), |s| {
            s.iter()
                .all(|m| m.state == idlesync::status::MailboxState::Idling)
        })
        .await;
    anyhow::ensure!(
        idling,
        "the mailbox did not reach IDLE: {:?}",
        daemon.board().snapshot()
    );

    for i in 1..=n {
        let subject = format!("Demo message {i}");
        let raw = format!(
            "From: Demo Sender <sender@example.test>\r\nTo: demo@example.test\r\nSubject: {subject}\r\n\r\nHello #{i}\r\n"
        );
        let sent = Instant::now();
        let uid = dc.append("demo", "INBOX", raw.as_bytes()).await?;
        eprintln!("delivered \"{subject}\" as UID {uid}");
        if let Some(stream) = records.as_mut() {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .context("no record within 10 s")?
                .context("Redis subscription closed")?;
            let payload: String = msg.get_payload()?;
            println!("{payload}");
            eprintln!(
                "  ↳ announced {} ms after APPEND",
                sent.elapsed().as_millis()
            );
        } else {
            // The daemon prints the record itself; wait until it has stored the message.
            daemon
                .board()
                .wait_for(Duration::from_secs(10), |s| {
                    s.iter().all(|m| m.last_uid >= Some(uid))
                })
                .await;
        }
    }
    if let Some(stream) = records.as_mut() {
        // Another client reads the first message: the store follows, and the change goes out on
        // the changes channel (never on email:sync, whose count is the web app's badge).
        let mut other = dovecot::Wire::login(&dc, "demo").await?;
        other.command("SELECT INBOX", None).await?;
        let sent = Instant::now();
        let r = other.command("UID STORE 1 +FLAGS (\\Seen)", None).await?;
        anyhow::ensure!(r.starts_with("OK"), "STORE: {r}");
        eprintln!("another client marked UID 1 \\Seen");
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .context("no change record within 10 s")?
            .context("Redis subscription closed")?;
        let payload: String = msg.get_payload()?;
        println!("{payload}");
        eprintln!(
            "  ↳ on {} {} ms after STORE",
            msg.get_channel_name(),
            sent.elapsed().as_millis()
        );
        other.logout().await;

        // The web app marks the second message read through the API, and waits for it.
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!(
                "sqlite://{}",
                dir.path().join("idlesync.db").display()
            ))
            .await?;
        let id: i64 = sqlx::Row::get(
            &sqlx::query("SELECT id FROM messages WHERE uid = 2")
                .fetch_one(&pool)
                .await?,
            0,
        );
        pool.close().await;
        let addr = daemon.api_addr().context("api")?;
        eprintln!(
            "the web app marks message {id} read: curl -H 'Authorization: Bearer …' -H 'Prefer: wait=10' \
             -X PATCH http://{addr}/v1/messages/{id} -d '{{\"seen\": true}}'"
        );
        let sent = Instant::now();
        let answer = api::Client::new(addr)
            .call(
                "PATCH",
                &format!("/v1/messages/{id}"),
                &[("Prefer", "wait=10")],
                br#"{"seen": true}"#,
            )
            .await?;
        println!("HTTP {} {}", answer.status, answer.body);
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .context("no change record within 10 s")?
            .context("Redis subscription closed")?;
        let payload: String = msg.get_payload()?;
        println!("{payload}");
        eprintln!(
            "  ↳ on {} {} ms after the request",
            msg.get_channel_name(),
            sent.elapsed().as_millis()
        );
    }
    daemon.shutdown().await;
    eprintln!("done: {n} messages stored and announced (the temp dir is removed now)");
    Ok(())
}
