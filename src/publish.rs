//! The publisher: drains the outbox to Redis (or stdout), in order, at least once.
//!
//! Mailbox tasks never talk to Redis. They commit records to the outbox with their messages and
//! hand the committed record to the publisher ([`crate::handoff`]); Redis being down only makes
//! the outbox grow, and IDLE latency does not depend on Redis health.
//!
//! Two modes. **Live:** records come through the hand-off queue and are published straight
//! away, without reading them back from the database, then deleted by id. **Catching up:**
//! when the table may hold records the queue does not (at start, after a failed publish, when
//! the queue overflowed), the queue is emptied and the table is drained in id order, as the
//! only source, until it is empty; then live again. A record that came through the queue and
//! was also drained is recognised by its id and not published twice.
//!
//! **Order:** each mailbox's records are published in the order they were committed. Live
//! mode stops as soon as the table holds records the queue does not, so that a record queued
//! after an overflow never overtakes the overflowed ones; catching up goes by id, which is
//! commit order within a mailbox (its commits are sequential).
//!
//! **Cluster mode** (#13): each replica drains the rows of the mailboxes whose lease it holds,
//! and only those. Records of a mailbox are committed only by its lease holder (writes are
//! fenced), and a replica that takes a lease is sent back to the table before the mailbox
//! starts, so that whatever the previous owner committed but never published (it died
//! between COMMIT and PUBLISH) goes out first, in id order, before the new owner's own
//! records: at least once and in order per mailbox, with no lock held across a Redis round
//! trip. A replica paused past its lease may still publish, on waking, records it had
//! already read: they were committed, so that is a duplicate, never a loss.
//!
//! **Channels:** each record's [`Topic`] picks its channel: [`Topic::Sync`] goes to
//! `redis.channel` (`email:sync`: new mail and `mailboxReset`), [`Topic::Changes`] to
//! `redis.changes_channel` (`email:changes`: flag changes, expunges, the first import).
//! Both go through the one ordered pipeline above, so a mailbox's records never overtake each
//! other across channels. `redis.stream`, when set, gets every record of both. On stdout
//! both topics are written alike; `kind` tells them apart.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::changes::Topic;
use crate::config::{BackoffConfig, OutboxConfig, RedisConfig, DEFAULT_PUBLISH_RETRY_MAX};
use crate::handoff::{Inbox, Wait};
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
    /// Connecting or the command failed.
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
#[derive(Debug)]
pub enum Sink {
    /// PUBLISH on the topic's Redis channel (and XADD to a stream when configured).
    Redis(Box<RedisSink>),
    /// One JSON line per record on stdout.
    Stdout,
}

/// The two Redis channels, and optionally a stream.
pub struct RedisSink {
    /// Opens connections.
    client: redis::Client,
    /// The publisher's one connection, opened on first use and again after any failure. (A
    /// pool would check its connection with a PING before every record: a second round trip
    /// on the latency path.)
    conn: Option<redis::aio::MultiplexedConnection>,
    /// [`Topic::Sync`]'s channel (`redis.channel`).
    channel: String,
    /// [`Topic::Changes`]'s channel (`redis.changes_channel`).
    changes_channel: String,
    /// Stream name and approximate MAXLEN.
    stream: Option<(String, u64)>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, password included: never printed.
        write!(
            f,
            "RedisSink({}, {}, stream {:?})",
            self.channel, self.changes_channel, self.stream
        )
    }
}

impl Sink {
    /// Redis when configured, stdout otherwise. Connects lazily.
    pub fn from_config(cfg: Option<&RedisConfig>) -> Result<Sink, PublishError> {
        let Some(cfg) = cfg else {
            return Ok(Sink::Stdout);
        };
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| PublishError::Config(e.to_string()))?;
        Ok(Sink::Redis(Box::new(RedisSink {
            client,
            conn: None,
            channel: cfg.channel.clone(),
            changes_channel: cfg.changes_channel.clone(),
            stream: cfg.stream.clone().map(|s| (s, cfg.stream_maxlen)),
        })))
    }

    /// Sends one record to `topic`'s channel; `Ok` means Redis acknowledged it.
    pub async fn publish(&mut self, topic: Topic, payload: &str) -> Result<(), PublishError> {
        match self {
            Sink::Redis(sink) => {
                let RedisSink {
                    client,
                    conn,
                    channel,
                    changes_channel,
                    stream,
                } = &mut **sink;
                let channel = match topic {
                    Topic::Sync => &*channel,
                    Topic::Changes => &*changes_channel,
                };
                let send = async {
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => client.get_multiplexed_async_connection().await?,
                    };
                    // One round trip: PUBLISH for the live path, XADD for replay.
                    let mut pipe = redis::pipe();
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    if let Some((name, maxlen)) = stream {
                        pipe.cmd("XADD")
                            .arg(&*name)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(*maxlen)
                            .arg("*")
                            .arg("record")
                            .arg(payload)
                            .ignore();
                    }
                    let () = pipe.query_async(&mut c).await?;
                    Ok::<_, PublishError>(c)
                };
                // On any failure the connection is dropped and the next record opens a new one.
                *conn = Some(
                    tokio::time::timeout(PUBLISH_TIMEOUT, send)
                        .await
                        .unwrap_or(Err(PublishError::Timeout(PUBLISH_TIMEOUT)))?,
                );
                Ok(())
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

/// Ids published while catching up, remembered to skip their queued copies.
const REMEMBER: usize = 4096;

/// The publisher's retry schedule: from `[backoff] initial`, capped at `[redis] retry_max`
/// ([`DEFAULT_PUBLISH_RETRY_MAX`] without `[redis]`), never at `[backoff] max`, whose minutes
/// suit reconnecting mailboxes but would keep records waiting that long after Redis returns.
pub fn retry_schedule(backoff: &BackoffConfig, redis: Option<&RedisConfig>) -> BackoffConfig {
    let max = redis.map_or(DEFAULT_PUBLISH_RETRY_MAX, |r| r.retry_max);
    BackoffConfig {
        initial: backoff.initial.min(max),
        max,
        ..backoff.clone()
    }
}

/// The publisher task's parts.
pub struct Publisher {
    /// Where the outbox lives.
    pub store: Store,
    /// Where records go.
    pub sink: Sink,
    /// Records committed by the mailboxes.
    pub inbox: Inbox,
    /// Per-mailbox published counters and latency histograms.
    pub board: Arc<StatusBoard>,
    /// Retry schedule while the sink or the database fails ([`retry_schedule`]).
    pub backoff: BackoffConfig,
    /// Bounds on what waits.
    pub bounds: OutboxConfig,
    /// Cluster mode: this replica's node id. The table is then drained only for the mailboxes
    /// whose lease it holds ([`Store::outbox_pending_owned`]).
    pub owner: Option<Arc<str>>,
}

impl Publisher {
    /// Publishes until `cancel`, then makes one last bounded pass over the table.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut schedule = crate::backoff::Schedule::new(self.backoff.initial, self.backoff.max);
        let mut drained = Remembered::default();
        enforce_bounds(&self.store, &self.bounds).await;
        while !cancel.is_cancelled() {
            let result = if self.inbox.take_behind() {
                self.catch_up(&cancel, &mut drained).await
            } else {
                let row = tokio::select! {
                    wait = self.inbox.wait() => match wait {
                        Wait::Row(row) => row,
                        Wait::Poked => continue,
                        Wait::Closed => break,
                    },
                    _ = cancel.cancelled() => break,
                };
                self.live(row, &drained).await
            };
            match result {
                Ok(()) => schedule.reset(),
                Err(e) => {
                    // The failed record and everything after it wait in the table.
                    self.inbox.mark_behind();
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
            self.catch_up(&CancellationToken::new(), &mut drained),
        )
        .await;
        if !matches!(last, Ok(Ok(()))) {
            tracing::info!("records left in the outbox are published at the next start");
        }
    }

    /// Live mode: publishes `first` and whatever else is queued, then deletes them. Stops as
    /// soon as the table holds records the queue does not (an overflow): queued records are
    /// newer than those, and publishing them first would break the order. The caller then
    /// catches up, and the table has every record the queue had.
    async fn live(&mut self, first: OutboxRow, drained: &Remembered) -> Result<(), DrainError> {
        let mut done = Vec::new();
        let mut next = Some(first);
        let mut failure = None;
        while let Some(row) = next.take() {
            // A record handed over after an overflow sees the mark: the mailbox set it before
            // handing its next record over, and the queue orders the two.
            if self.inbox.is_behind() {
                break;
            }
            if !drained.contains(row.id) {
                if let Err(e) = self.sink.publish(row.topic, &row.payload).await {
                    failure = Some(e);
                    break;
                }
                self.observe(&row);
                done.push(row.id);
            }
            if done.len() < PAGE as usize {
                next = self.inbox.try_recv();
            }
        }
        self.store.outbox_delete(&done).await?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Catching up: empties the queue (the table has all of it) and drains the table in order
    /// until it is empty.
    async fn catch_up(
        &mut self,
        cancel: &CancellationToken,
        drained: &mut Remembered,
    ) -> Result<(), DrainError> {
        self.inbox.clear();
        loop {
            let rows = match &self.owner {
                Some(node) => self.store.outbox_pending_owned(node, PAGE).await?,
                None => self.store.outbox_pending(PAGE).await?,
            };
            let mut done: Vec<i64> = Vec::with_capacity(rows.len());
            let mut failure = None;
            for row in &rows {
                if cancel.is_cancelled() {
                    break;
                }
                match self.sink.publish(row.topic, &row.payload).await {
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
            drained.extend(&done);
            let last_page = (rows.len() as i64) < PAGE;
            if failure.is_some() || last_page {
                report_depth(&self.store).await;
            }
            if let Some(e) = failure {
                return Err(e.into());
            }
            if cancel.is_cancelled() || last_page {
                return Ok(());
            }
        }
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

/// The last [`REMEMBER`] ids published while catching up.
#[derive(Debug, Default)]
struct Remembered {
    order: VecDeque<i64>,
    set: HashSet<i64>,
}

impl Remembered {
    fn contains(&self, id: i64) -> bool {
        self.set.contains(&id)
    }

    fn extend(&mut self, ids: &[i64]) {
        for &id in ids {
            if self.set.insert(id) {
                self.order.push_back(id);
            }
        }
        while self.order.len() > REMEMBER {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
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

#[cfg(test)]
mod tests;
