//! Redis for tests: a unique channel per test and a subscriber that awaits records with a
//! deadline. Uses the machine's Redis at 127.0.0.1:6379 (override with IDLESYNC_TEST_REDIS).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::mpsc;

/// The shared Redis URL.
pub fn url() -> String {
    std::env::var("IDLESYNC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A channel name no other test uses.
pub fn unique_channel(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "idlesync-test:{test}:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A subscription, established before `subscribe` returns.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to `channel` on the Redis at `url`.
pub async fn subscribe(url: &str, channel: &str) -> Result<Subscriber> {
    let client = redis::Client::open(url).context("redis url")?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .with_context(|| format!("connect to redis at {url}"))?;
    pubsub.subscribe(channel).await.context("subscribe")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            if tx.send(payload).is_err() {
                break;
            }
        }
    });
    Ok(Subscriber { rx, task })
}

impl Subscriber {
    /// The next record as JSON, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<serde_json::Value> {
        let payload = tokio::time::timeout(timeout, self.rx.recv())
            .await
            .context("no record within the deadline")?
            .context("subscriber closed")?;
        serde_json::from_str(&payload).with_context(|| format!("record is not JSON: {payload}"))
    }

    /// Records until their `count`s add up to `n` messages of kind newMail; fails on timeout.
    pub async fn collect_messages(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        self.collect_kind("newMail", n, timeout).await
    }

    /// Records until the `count`s of those of `kind` add up to `n`; the others seen on the
    /// way are returned too, in order. Fails on timeout.
    pub async fn collect_kind(
        &mut self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        let mut total = 0;
        while total < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let rec = self
                .next(left)
                .await
                .with_context(|| format!("{total} of {n} {kind} announced: {got:?}"))?;
            if rec["kind"] == kind {
                total += rec["count"].as_u64().unwrap_or(0) as usize;
            }
            got.push(rec);
        }
        Ok(got)
    }

    /// Fails if any record arrives within `window`.
    pub async fn expect_silence(&mut self, window: Duration) -> Result<()> {
        match tokio::time::timeout(window, self.rx.recv()).await {
            Err(_) => Ok(()),
            Ok(Some(p)) => anyhow::bail!("unexpected record: {p}"),
            Ok(None) => anyhow::bail!("subscriber closed"),
        }
    }
}

/// Every record in a Redis Stream the daemon XADDs to (field `record`), oldest first.
pub async fn stream_records(url: &str, stream: &str) -> Result<Vec<serde_json::Value>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let mut out = Vec::new();
    for (_, fields) in entries {
        for (k, v) in fields {
            anyhow::ensure!(k == "record", "unexpected stream field {k}");
            out.push(serde_json::from_str(&v)?);
        }
    }
    Ok(out)
}
