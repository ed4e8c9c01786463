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

use crate::config::{BackoffConfig, OutboxConfig, RedisConfig};
use crate::status::StatusBoard;
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
    /// PUBLISH on a Redis channel (and XADD to a stream when configured).
    Redis {
        /// Connection pool.
        pool: deadpool_redis::Pool,
        /// Channel name.
        channel: String,
        /// Stream name and approximate MAXLEN.
        stream: Option<(String, u64)>,
    },
    /// One JSON line per record on stdout.
    Stdout,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Redis {
                channel, stream, ..
            } => write!(f, "Sink::Redis({channel}, stream {stream:?})"),
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
            stream: cfg.stream.clone().map(|s| (s, cfg.stream_maxlen)),
        })
    }

    /// Sends one record; `Ok` means Redis acknowledged it.
    pub async fn publish(&self, payload: &str) -> Result<(), PublishError> {
        match self {
            Sink::Redis {
                pool,
                channel,
                stream,
            } => {
                let send = async {
                    let mut conn = pool.get().await?;
                    // One round trip: PUBLISH for the live path, XADD for replay.
                    let mut pipe = redis::pipe();
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    if let Some((name, maxlen)) = stream {
                        pipe.cmd("XADD")
                            .arg(name)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(*maxlen)
                            .arg("*")
                            .arg("record")
                            .arg(payload)
                            .ignore();
                    }
                    let () = pipe.query_async(&mut conn).await?;
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

/// The publisher task's parts.
pub struct Publisher {
    /// Where the outbox lives.
    pub store: Store,
    /// Where records go.
    pub sink: Sink,
    /// Poked by mailboxes after each commit that added a record.
    pub wake: Arc<Notify>,
    /// Per-mailbox published counters and latency histograms.
    pub board: Arc<StatusBoard>,
    /// Retry schedule while the sink or the database fails.
    pub backoff: BackoffConfig,
    /// Bounds on what waits.
    pub bounds: OutboxConfig,
}

impl Publisher {
    /// Drains the outbox until `cancel`, then makes one last bounded pass.
    pub async fn run(self, cancel: CancellationToken) {
        let mut schedule = crate::supervisor::Schedule::new(&self.backoff);
        enforce_bounds(&self.store, &self.bounds).await;
        loop {
            match self.drain(&cancel).await {
                Ok(Drained::Empty) => {
                    schedule.reset();
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = cancel.cancelled() => break,
                    }
                }
                Ok(Drained::More) => schedule.reset(),
                Ok(Drained::Cancelled) => break,
                Err(e) => {
                    // Only a failing sink or database makes the outbox grow: bound it here.
                    enforce_bounds(&self.store, &self.bounds).await;
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
            self.drain(&CancellationToken::new()),
        )
        .await;
        if !matches!(last, Ok(Ok(Drained::Empty))) {
            tracing::info!("records left in the outbox are published at the next start");
        }
    }

    /// Publishes one page of the outbox in order, then deletes what was acknowledged.
    async fn drain(&self, cancel: &CancellationToken) -> Result<Drained, DrainError> {
        let rows = self.store.outbox_pending(PAGE).await?;
        if rows.is_empty() {
            report_depth(&self.store).await;
            return Ok(Drained::Empty);
        }
        let mut done: Vec<i64> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            if cancel.is_cancelled() {
                break;
            }
            match self.sink.publish(&row.payload).await {
                Ok(()) => {
                    self.observe(row);
                    done.push(row.id);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        self.store.outbox_delete(&done).await?;
        report_depth(&self.store).await;
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

    fn observe(&self, row: &OutboxRow) {
        let latency = row
            .exists_at_us
            .map(|t| (chrono::Utc::now().timestamp_micros() - t).max(0) as f64 / 1e6);
        // Exact per-record latency for the load harness (the histogram has bucket resolution):
        // `RUST_LOG=idlesync::latency=debug`.
        if let Some(exists_at_us) = row.exists_at_us {
            tracing::debug!(
                target: "idlesync::latency",
                account = %row.account_id,
                mailbox = %row.mailbox,
                exists_at_us,
                exists_to_publish_us = latency.map_or(0, |s| (s * 1e6) as i64),
                "record published"
            );
        }
        self.board.published(&row.account_id, &row.mailbox, latency);
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

/// Drops what is older than the retention or beyond the row bound, loudly. Only reached when
/// Redis has been unreachable for a long time.
async fn enforce_bounds(store: &Store, bounds: &OutboxConfig) {
    let max_age_ms = i64::try_from(bounds.retention.as_millis()).unwrap_or(i64::MAX);
    let max_rows = i64::try_from(bounds.max_records).unwrap_or(i64::MAX);
    match store.outbox_prune(max_age_ms, max_rows).await {
        Ok(0) => {}
        Ok(n) => {
            metrics::counter!(crate::metrics::OUTBOX_DROPPED).increment(n);
            tracing::error!(
                dropped = n,
                "outbox over its retention bounds: oldest records dropped unpublished"
            );
        }
        Err(e) => tracing::debug!(error = %format!("{e:#}"), "outbox prune failed"),
    }
}

async fn report_depth(store: &Store) {
    if let Ok((depth, oldest_ms)) = store.outbox_depth().await {
        metrics::gauge!(crate::metrics::OUTBOX_DEPTH).set(depth as f64);
        metrics::gauge!(crate::metrics::OUTBOX_OLDEST_AGE)
            .set(oldest_ms.unwrap_or(0) as f64 / 1000.0);
    }
}
