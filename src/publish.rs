//! The publisher: drains the outbox to Redis (or stdout), in order, at least once.
//!
//! Mailbox tasks never talk to Redis. They commit records to the outbox with their messages and
//! poke the publisher; Redis being down only makes the outbox grow, and IDLE latency does not
//! depend on Redis health.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{BackoffConfig, RedisConfig};
use crate::store::{OutboxRow, Store};

/// Records fetched from the outbox per round.
const PAGE: i64 = 256;
/// One PUBLISH may take this long before the connection is presumed dead.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishing failed; the record stays in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The Redis URL is unusable.
    #[error("redis config: {0}")]
    Config(String),
    /// No connection from the pool.
    #[error("redis unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The command failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The command did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Writing to stdout failed.
    #[error("stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Where records go.
pub enum Sink {
    /// PUBLISH on a Redis channel.
    Redis {
        /// Connection pool.
        pool: deadpool_redis::Pool,
        /// Channel name.
        channel: String,
    },
    /// One JSON line per record on stdout.
    Stdout,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Redis { channel, .. } => write!(f, "Sink::Redis({channel})"),
            Sink::Stdout => f.write_str("Sink::Stdout"),
        }
    }
}

impl Sink {
    /// Redis when configured, stdout otherwise. Connects lazily.
    pub fn from_config(cfg: Option<&RedisConfig>) -> Result<Sink, PublishError> {
        let Some(cfg) = cfg else {
            return Ok(Sink::Stdout);
        };
        let mut pool_cfg = deadpool_redis::Config::from_url(cfg.url.clone());
        pool_cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: 2,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(PUBLISH_TIMEOUT),
                create: Some(PUBLISH_TIMEOUT),
                recycle: Some(PUBLISH_TIMEOUT),
            },
            ..Default::default()
        });
        let pool = pool_cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| PublishError::Config(e.to_string()))?;
        Ok(Sink::Redis {
            pool,
            channel: cfg.channel.clone(),
        })
    }

    /// Sends one record; `Ok` means Redis acknowledged it.
    pub async fn publish(&self, payload: &str) -> Result<(), PublishError> {
        match self {
            Sink::Redis { pool, channel } => {
                let send = async {
                    let mut conn = pool.get().await?;
                    let _receivers: i64 = redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async(&mut conn)
                        .await?;
                    Ok(())
                };
                tokio::time::timeout(PUBLISH_TIMEOUT, send)
                    .await
                    .unwrap_or(Err(PublishError::Timeout(PUBLISH_TIMEOUT)))
            }
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{payload}")?;
                out.flush()?;
                Ok(())
            }
        }
    }
}

/// Drains the outbox until `cancel`, then makes one last bounded pass.
pub async fn run(
    store: Store,
    sink: Sink,
    wake: Arc<Notify>,
    backoff: BackoffConfig,
    cancel: CancellationToken,
) {
    let mut schedule = crate::supervisor::Schedule::new(&backoff);
    loop {
        match drain(&store, &sink, &cancel).await {
            Ok(Drained::Empty) => {
                schedule.reset();
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = cancel.cancelled() => break,
                }
            }
            Ok(Drained::More) => schedule.reset(),
            Ok(Drained::Cancelled) => break,
            Err(e) => {
                let delay = schedule.next_delay();
                metrics::counter!(crate::metrics::PUBLISH_ERRORS).increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "publishing paused; records wait in the outbox");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        }
    }
    // Shutdown: whatever is left waits in the outbox for the next start.
    let last = tokio::time::timeout(
        Duration::from_secs(2),
        drain(&store, &sink, &CancellationToken::new()),
    )
    .await;
    if !matches!(last, Ok(Ok(Drained::Empty))) {
        tracing::info!("records left in the outbox are published at the next start");
    }
}

enum Drained {
    Empty,
    More,
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes one page of the outbox in order, then deletes what was acknowledged.
async fn drain(
    store: &Store,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<Drained, DrainError> {
    let rows = store.outbox_pending(PAGE).await?;
    if rows.is_empty() {
        report_depth(store).await;
        return Ok(Drained::Empty);
    }
    let mut done: Option<i64> = None;
    let mut failure = None;
    for row in &rows {
        if cancel.is_cancelled() {
            break;
        }
        match sink.publish(&row.payload).await {
            Ok(()) => {
                observe(row);
                done = Some(row.id);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(id) = done {
        store.outbox_delete_through(id).await?;
    }
    report_depth(store).await;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if cancel.is_cancelled() {
        return Ok(Drained::Cancelled);
    }
    Ok(if rows.len() as i64 == PAGE {
        Drained::More
    } else {
        Drained::Empty
    })
}

fn observe(row: &OutboxRow) {
    let latency = row
        .exists_at_us
        .map(|t| (chrono::Utc::now().timestamp_micros() - t).max(0) as f64 / 1e6);
    crate::metrics::published(&row.account_id, &row.mailbox, latency);
}

async fn report_depth(store: &Store) {
    if let Ok((depth, oldest_ms)) = store.outbox_depth().await {
        metrics::gauge!(crate::metrics::OUTBOX_DEPTH).set(depth as f64);
        metrics::gauge!(crate::metrics::OUTBOX_OLDEST_AGE)
            .set(oldest_ms.unwrap_or(0) as f64 / 1000.0);
    }
}
