//! Fetching new mail: `UID FETCH last_uid+1:*` read message by message, parsed, and committed
//! in batches, one batch committing while the next is read. Messages below the import boundary
//! are history and announced as `imported` on the changes channel; the rest is `newMail`.

use std::future::Future;
use std::pin::Pin;

use futures::future::Either;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::import::Import;
use super::{Conn, MailboxCtx, MailboxError};
use crate::changes::Topic;
use crate::event::{self, timestamp_now, Origin, RecordKind, SyncRecord};
use crate::imap::{fetch, ImapError};
use crate::message::{extract, ExtractOptions, ImapMeta, MessageRecord};
use crate::store::{BatchTx, Store, StoreError, SyncState};

/// A batch is committed early once its records hold about this many bytes. With one batch
/// committing while the next is read, at most about twice this is held.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetched {
    /// Everything announced is stored; the session can go on.
    Done,
    /// Shutdown was requested in the middle of a `UID FETCH` answer: what was read is stored,
    /// the session is unusable (the answer is still coming).
    Interrupted,
    /// The round ended and the server announced more mail meanwhile.
    More,
}

/// Fetches everything above `state.last_uid` and commits it in batches, again while the
/// server announces more mail during the fetch (bounded). What was stored before an error
/// stays stored and counted; the rest is fetched again on the next connection. Shutdown is
/// watched between messages: a first import of 100,000 messages stops at once, with what was
/// read committed.
pub(super) async fn fetch_new(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    exists_at: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Fetched, MailboxError> {
    let exists_at_us = exists_at.map(unix_micros);
    for _ in 0..MAX_FETCH_ROUNDS {
        let above = format!("{}:*", conn.state.last_uid.saturating_add(1));
        match fetch_round(ctx, conn, &above, exists_at_us, cancel).await? {
            Fetched::More => {}
            done => return Ok(done),
        }
    }
    Ok(Fetched::Done)
}

/// Most `UID FETCH` rounds in a row while EXISTS keeps arriving; then IDLE picks up the rest.
const MAX_FETCH_ROUNDS: usize = 100;

/// A body parsed while still in the read buffer, or copied out for the blocking pool.
// Lives for one loop iteration on the stack; boxing would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Done(MessageRecord),
    Later(Vec<u8>, ImapMeta),
}

/// A full batch being committed while the next one is read. Resolves to its highest UID.
type Pending<'a> = Pin<Box<dyn Future<Output = Result<u32, StoreError>> + Send + 'a>>;

/// One `UID FETCH <uids>` (`last_uid+1:*`, or a set of an import): [`Fetched::More`] when
/// EXISTS arrived meanwhile. Changes the server sends during the fetch go to the view.
///
/// A full batch commits while the next one is read (at most one commit in flight, so
/// `last_uid` still advances in order): reading from the server and writing to the database
/// overlap instead of taking turns.
pub(super) async fn fetch_round(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    uids: &str,
    exists_at_us: Option<i64>,
    cancel: &CancellationToken,
) -> Result<Fetched, MailboxError> {
    let opts = *ctx.store.extract_options();
    let state = &mut conn.state;
    let import = &conn.import;
    let mut run = fetch::start(
        &mut conn.session,
        &mut conn.view,
        uids,
        state.last_uid,
        opts.max_message_size,
        conn.extras,
        ctx.timers.connect_timeout,
    )
    .await?;
    let mut batch: Vec<MessageRecord> = Vec::new();
    let mut batch_bytes = 0;
    let mut pending: Option<Pending<'_>> = None;
    // The first batch's transaction opens while the server answers the FETCH: on PostgreSQL
    // BEGIN is a round trip of its own, hidden this way. Held at most EARLY_HOLD.
    let mut early: Option<Early> = None;
    let mut first = true;
    let mut cancelled = false;
    let outcome = loop {
        // A stalled server is bounded by the guard's progress deadline, shutdown by `cancel`.
        let read = run.next_until(cancel, |body, meta| {
            if body.len() <= PARSE_INLINE_MAX {
                Parsed::Done(extract(body, &meta, &opts))
            } else {
                Parsed::Later(body.to_vec(), meta)
            }
        });
        let next = if std::mem::take(&mut first) {
            read_while_beginning(read, &ctx.store, &mut early).await
        } else if let Some(commit) = pending.take() {
            let read = std::pin::pin!(read);
            match futures::future::select(commit, read).await {
                Either::Left((committed, read)) => {
                    settle(ctx, state, committed?);
                    read.await
                }
                Either::Right((next, commit)) => {
                    pending = Some(commit);
                    next
                }
            }
        } else {
            read_holding(read, &mut early).await
        };
        if cancel.is_cancelled() || matches!(next, Err(ImapError::Cancelled)) {
            // Whatever the read gave: the batch so far is committed below, and no more is read.
            cancelled = true;
            break Ok(());
        }
        let rec = match next {
            Ok(Some(Parsed::Done(rec))) => rec,
            Ok(Some(Parsed::Later(body, meta))) => parse_blocking(body, meta, opts).await,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        batch_bytes += rec.approx_bytes();
        batch.push(rec);
        // Bodies, raw copies and attachments add up: bound a batch's memory too.
        if batch.len() >= ctx.timers.fetch_batch || batch_bytes >= MAX_BATCH_BYTES {
            if let Some(commit) = pending.take() {
                settle(ctx, state, commit.await?);
            }
            let full = std::mem::take(&mut batch);
            pending = Some(Box::pin(commit(
                ctx,
                import,
                state.uidvalidity,
                full,
                exists_at_us,
                early.take().map(|e| e.tx),
            )));
            batch_bytes = 0;
        }
    };
    let more = run.saw_exists;
    drop(run);
    // What was read before an error is stored before the error is reported.
    if let Some(commit) = pending.take() {
        settle(ctx, state, commit.await?);
    }
    let early = early.take().map(|e| e.tx);
    let last = commit(ctx, import, state.uidvalidity, batch, exists_at_us, early).await?;
    settle(ctx, state, last);
    outcome?;
    Ok(if cancelled {
        Fetched::Interrupted
    } else if more {
        Fetched::More
    } else {
        Fetched::Done
    })
}

/// Longest an early transaction waits on the server. It holds a pooled connection that any
/// other mailbox's commit may need, so a slow server must not keep it: 50 ms is far beyond a
/// FETCH answer on a LAN (1.4 ms p50, BENCHMARKS.md) and far below the pool's 10 s acquire
/// timeout. Past it the transaction is rolled back and the commit opens its own.
const EARLY_HOLD: std::time::Duration = std::time::Duration::from_millis(50);

/// A batch transaction opened ahead of its commit, and until when it may wait on the server.
struct Early {
    tx: BatchTx,
    until: Instant,
}

/// The first read of a round, with a batch transaction opened meanwhile into `early` (when a
/// pooled connection is idle), so that BEGIN's round trip hides behind the server's answer.
async fn read_while_beginning<T>(
    read: impl Future<Output = T>,
    store: &Store,
    early: &mut Option<Early>,
) -> T {
    let until = Instant::now() + EARLY_HOLD;
    let mut read = std::pin::pin!(read);
    let mut begin = std::pin::pin!(store.begin_early());
    let tx = tokio::select! {
        next = &mut read => {
            // The server was quicker than a local BEGIN: finish it, the commit comes next.
            *early = begin.await.map(|tx| Early { tx, until });
            return next;
        }
        tx = &mut begin => tx,
    };
    *early = tx.map(|tx| Early { tx, until });
    read_holding(read, early).await
}

/// Awaits `read`; gives the early transaction up (rolled back, its connection back in the
/// pool) if its time runs out first.
async fn read_holding<T>(read: impl Future<Output = T>, early: &mut Option<Early>) -> T {
    let Some(until) = early.as_ref().map(|e| e.until) else {
        return read.await;
    };
    let mut read = std::pin::pin!(read);
    tokio::select! {
        biased;
        next = &mut read => return next,
        _ = tokio::time::sleep_until(until) => *early = None,
    }
    read.await
}

/// Advances `last_uid` past a committed batch.
fn settle(ctx: &MailboxCtx, state: &mut SyncState, new_last: u32) {
    state.last_uid = state.last_uid.max(new_last);
    ctx.reporter.set_last_uid(state.last_uid);
}

/// Bodies above this are parsed on the blocking pool, so a 50 MB message does not hold up
/// the other mailboxes sharing this worker thread (about 80 ms of parsing at that size).
const PARSE_INLINE_MAX: usize = 256 * 1024;

async fn parse_blocking(body: Vec<u8>, meta: ImapMeta, opts: ExtractOptions) -> MessageRecord {
    let uid = meta.uid;
    let parsed = tokio::task::spawn_blocking(move || extract(&body, &meta, &opts)).await;
    // extract() never panics (it catches the parser's panics itself); a failed join is
    // stored as unparseable rather than dropped.
    parsed.unwrap_or_else(|_| MessageRecord {
        uid,
        parse_error: true,
        ..MessageRecord::default()
    })
}

/// Commits one batch; returns its highest UID (0 for an empty batch). Its records: the UIDs
/// below the import boundary as `imported` (changes channel), the rest as `newMail`.
async fn commit(
    ctx: &MailboxCtx,
    import: &Import,
    uidvalidity: u32,
    batch: Vec<MessageRecord>,
    exists_at_us: Option<i64>,
    tx: Option<BatchTx>,
) -> Result<u32, StoreError> {
    let Some(new_last) = batch.iter().map(|m| m.uid).max() else {
        return Ok(0);
    };
    let committed = ctx
        .store
        .commit_batch(
            tx,
            ctx.target(uidvalidity),
            &batch,
            new_last,
            exists_at_us,
            |uids| records(ctx, import, uidvalidity, uids),
        )
        .await?;
    let count = committed.inserted.len();
    if count > 0 {
        let history = committed
            .inserted
            .iter()
            .filter(|u| import.is_history(**u))
            .count();
        let newest = batch.iter().filter_map(|m| m.received_at_ms).max();
        ctx.reporter.stored(count as u64, newest);
        if history > 0 {
            ctx.reporter.imported(history as u64);
        }
        tracing::info!(count, history, last_uid = new_last, "stored messages");
    }
    // After the counters, so a record is never seen before the metrics that explain it.
    for row in committed.outbox {
        ctx.handoff.committed(row);
    }
    Ok(new_last)
}

/// The records of one batch's inserted UIDs (ascending): history first, then new mail.
fn records(
    ctx: &MailboxCtx,
    import: &Import,
    uidvalidity: u32,
    uids: &[u32],
) -> Vec<(Topic, String)> {
    let split = uids.partition_point(|u| import.is_history(*u));
    let (history, new) = uids.split_at(split);
    let mut out = Vec::with_capacity(2);
    if !history.is_empty() {
        let origin = Origin {
            account_id: &ctx.account_id,
            email_address: &ctx.email,
            mailbox: &ctx.mailbox,
            uid_validity: uidvalidity,
        };
        let progress = import.progress(history.len() as u64);
        out.push((Topic::Changes, event::imported(&origin, history, progress)));
    }
    if !new.is_empty() {
        let record = SyncRecord {
            account_id: &ctx.account_id,
            email_address: &ctx.email,
            count: new.len(),
            timestamp: timestamp_now(),
            kind: RecordKind::NewMail,
            mailbox: &ctx.mailbox,
            uid_validity: uidvalidity,
            uids: new,
        };
        out.push((Topic::Sync, record.to_json()));
    }
    out
}

/// An `Instant` in the past as Unix microseconds (for the cross-task latency histogram).
fn unix_micros(at: Instant) -> i64 {
    let ago = i64::try_from(at.elapsed().as_micros()).unwrap_or(0);
    chrono::Utc::now().timestamp_micros() - ago
}
