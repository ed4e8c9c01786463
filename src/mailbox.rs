//! The per-mailbox state machine: connect → log in → select → catch up → idle ⇄ fetch.
//!
//! One call of [`run`] is one connection's life. It returns `Ok(())` only on shutdown; any
//! error drops the connection and goes back to the supervisor, which decides when to call
//! [`run`] again. Nothing here writes SQL or talks to Redis: batches go to the store, and each
//! committed record is handed to the publisher through a [`Handoff`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::Either;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::ErrorClass;
use crate::config::ImapTimers;
use crate::event::{timestamp_now, RecordKind, SyncRecord};
use crate::imap::connect::{self, Endpoint, Selected};
use crate::imap::idle::{IdleEvent, IdleTimers};
use crate::imap::{fetch, idle, ImapError, Session};
use crate::limiter::ConnectLimiter;
use crate::message::{extract, ExtractOptions, ImapMeta, MessageRecord};
use crate::publish::Handoff;
use crate::status::{MailboxState, Reporter};
use crate::store::{BatchTarget, BatchTx, Store, StoreError, SyncState};

/// A batch is committed early once its records hold about this many bytes. With one batch
/// committing while the next is read, at most about twice this is held.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Everything one mailbox task needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MailboxCtx {
    /// The web app's account id.
    pub account_id: String,
    /// The account's address, for records.
    pub email: String,
    /// The mailbox watched.
    pub mailbox: String,
    /// Server and credentials, shared by the account's mailboxes.
    pub endpoint: Arc<Endpoint>,
    /// Protocol timers.
    pub timers: ImapTimers,
    /// Where batches go.
    pub store: Store,
    /// Takes each record committed to the outbox, for the publisher.
    pub handoff: Handoff,
    /// Status board, metrics and log, together.
    pub reporter: Reporter,
    /// Spreads connection attempts per host.
    pub limiter: Arc<ConnectLimiter>,
}

/// Why a connection's life ended early.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The server side.
    #[error(transparent)]
    Imap(#[from] ImapError),
    /// The database side.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MailboxError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MailboxError::Imap(e) => e.kind(),
            MailboxError::Store(e) => e.kind(),
        }
    }

    /// Which retry schedule this error calls for. A database error is transient: the
    /// mailbox reconnects and fetches again from the last committed UID.
    pub fn class(&self) -> ErrorClass {
        match self {
            MailboxError::Imap(e) => e.class(),
            MailboxError::Store(_) => ErrorClass::Transient,
        }
    }

    /// The server's suggested delay before the next attempt, if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            MailboxError::Imap(e) => e.retry_after(),
            MailboxError::Store(_) => None,
        }
    }
}

/// One connection's life. `Ok(())` means shutdown was requested and handled cleanly.
///
/// An idle mailbox's task holds only this function's state and the IDLE future. Connecting,
/// catching up and fetching build much larger futures (the TLS handshake, login, the store's
/// queries); each is boxed, so its memory is freed once done instead of being part of every
/// idle task's fixed size (5.5 KiB per mailbox before, in #5's heap profile).
pub async fn run(ctx: &MailboxCtx, cancel: &CancellationToken) -> Result<(), MailboxError> {
    let Some((mut session, mut state)) = Box::pin(open_and_catch_up(ctx, cancel)).await? else {
        return Ok(());
    };
    let timers = IdleTimers {
        renew: ctx.timers.idle_renew,
        dead_after: ctx.timers.dead_after,
        done_timeout: ctx.timers.done_timeout,
    };
    while !cancel.is_cancelled() {
        let (s, event) = idle::idle(session, timers, cancel, || {
            ctx.reporter.set_state(MailboxState::Idling)
        })
        .await?;
        session = s;
        match event {
            IdleEvent::NewMail { at } => {
                ctx.reporter.set_state(MailboxState::Fetching);
                let fetched = fetch_new(ctx, &mut session, &mut state, Some(at), cancel);
                if Box::pin(fetched).await? == Fetched::Interrupted {
                    interrupted(ctx, session);
                    return Ok(());
                }
            }
            IdleEvent::Changed | IdleEvent::Renew => {}
            IdleEvent::Shutdown => break,
        }
    }
    ctx.reporter.set_state(MailboxState::Stopping);
    Box::pin(connect::logout(session, ctx.timers.done_timeout)).await;
    Ok(())
}

/// Shutdown came while a `UID FETCH` was being answered. What was read is committed; the
/// rest of the answer cannot be cut short in IMAP (a LOGOUT would only be answered after it),
/// so the connection is closed without one.
fn interrupted(ctx: &MailboxCtx, session: Session) {
    ctx.reporter.set_state(MailboxState::Stopping);
    tracing::info!("shutdown during a fetch: stored what was read, closing without LOGOUT");
    drop(session);
}

/// Connect, log in, select, and fetch what arrived while we were away. `None` when shutdown
/// was requested first.
async fn open_and_catch_up(
    ctx: &MailboxCtx,
    cancel: &CancellationToken,
) -> Result<Option<(Session, SyncState)>, MailboxError> {
    let t = ctx.timers.connect_timeout;
    ctx.reporter.set_state(MailboxState::Connecting);
    // Held until the mailbox is selected: the server's login work is what the cap protects.
    let permit = tokio::select! {
        p = ctx.limiter.acquire(&ctx.endpoint.host) => p,
        _ = cancel.cancelled() => return Ok(None),
    };
    let Some(client) = until_cancelled(cancel, connect::open(&ctx.endpoint, t)).await? else {
        return Ok(None);
    };
    ctx.reporter.set_state(MailboxState::Authenticating);
    let Some(mut session) =
        until_cancelled(cancel, connect::login(client, &ctx.endpoint, t)).await?
    else {
        return Ok(None);
    };
    ctx.reporter.set_state(MailboxState::Syncing);
    let Some(selected) =
        until_cancelled(cancel, connect::select(&mut session, &ctx.mailbox, t)).await?
    else {
        return Ok(None);
    };
    drop(permit);
    let (exists, uid_next) = (selected.exists, selected.uid_next);
    let mut state = establish_epoch(ctx, selected).await?;
    crate::fault::panic_point(&ctx.account_id, &ctx.mailbox);
    ctx.reporter.set_last_uid(state.last_uid);
    if may_hold_new(exists, uid_next, state.last_uid)
        && fetch_new(ctx, &mut session, &mut state, None, cancel).await? == Fetched::Interrupted
    {
        interrupted(ctx, session);
        return Ok(None);
    }
    Ok(Some((session, state)))
}

/// Whether SELECT's answer leaves room for messages above `last_uid`: not when the mailbox is
/// empty, nor when UIDNEXT (greater than every UID assigned) is at most `last_uid + 1`. Saves
/// a `UID FETCH` per mailbox on every (re)connect with nothing new, the common case at start.
fn may_hold_new(exists: u32, uid_next: Option<u32>, last_uid: u32) -> bool {
    exists > 0 && uid_next.is_none_or(|next| next > last_uid.saturating_add(1))
}

/// `None` when shutdown was requested first.
async fn until_cancelled<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, ImapError>>,
) -> Result<Option<T>, ImapError> {
    tokio::select! {
        r = fut => r.map(Some),
        _ = cancel.cancelled() => Ok(None),
    }
}

/// Loads the sync state, starting a new epoch when the mailbox's UIDVALIDITY changed (then a
/// `mailboxReset` record is announced).
async fn establish_epoch(ctx: &MailboxCtx, sel: Selected) -> Result<SyncState, StoreError> {
    let known = ctx.store.sync_state(&ctx.account_id, &ctx.mailbox).await?;
    match known {
        Some(s) if s.uidvalidity == sel.uid_validity => Ok(s),
        Some(old) => {
            tracing::warn!(
                old = old.uidvalidity,
                new = sel.uid_validity,
                "UIDVALIDITY changed: resyncing the mailbox; rows of the old epoch are kept under their uidvalidity"
            );
            let record = SyncRecord {
                account_id: &ctx.account_id,
                email_address: &ctx.email,
                count: 0,
                timestamp: timestamp_now(),
                kind: RecordKind::MailboxReset,
                mailbox: &ctx.mailbox,
                uid_validity: sel.uid_validity,
                uids: &[],
            }
            .to_json();
            let committed = ctx
                .store
                .start_epoch(
                    &ctx.account_id,
                    &ctx.mailbox,
                    sel.uid_validity,
                    Some(&record),
                )
                .await?;
            if let Some(row) = committed {
                ctx.handoff.committed(row);
            }
            Ok(SyncState {
                uidvalidity: sel.uid_validity,
                last_uid: 0,
            })
        }
        // A new mailbox: its first batch writes its state row (an upsert), so coming online
        // costs no write, and an empty mailbox never needs one.
        None => Ok(SyncState {
            uidvalidity: sel.uid_validity,
            last_uid: 0,
        }),
    }
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
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
async fn fetch_new(
    ctx: &MailboxCtx,
    session: &mut Session,
    state: &mut SyncState,
    exists_at: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Fetched, MailboxError> {
    let exists_at_us = exists_at.map(unix_micros);
    for _ in 0..MAX_FETCH_ROUNDS {
        match fetch_round(ctx, session, state, exists_at_us, cancel).await? {
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

/// One `UID FETCH last_uid+1:*`: [`Fetched::More`] when EXISTS arrived meanwhile.
///
/// A full batch commits while the next one is read (at most one commit in flight, so
/// `last_uid` still advances in order): reading from the server and writing to the database
/// overlap instead of taking turns.
async fn fetch_round(
    ctx: &MailboxCtx,
    session: &mut Session,
    state: &mut SyncState,
    exists_at_us: Option<i64>,
    cancel: &CancellationToken,
) -> Result<Fetched, MailboxError> {
    let item_timeout = ctx.timers.dead_after;
    let opts = *ctx.store.extract_options();
    let mut run = fetch::start(
        session,
        state.last_uid,
        opts.max_message_size,
        ctx.timers.connect_timeout,
    )
    .await?;
    let mut batch: Vec<MessageRecord> = Vec::new();
    let mut batch_bytes = 0;
    let mut pending: Option<Pending<'_>> = None;
    // The first batch's transaction opens while the server answers the FETCH: on PostgreSQL
    // BEGIN is a round trip of its own, hidden this way.
    let mut early = None;
    let mut first = true;
    let mut cancelled = false;
    let outcome = loop {
        let next = run.next(item_timeout, |body, meta| {
            if body.len() <= PARSE_INLINE_MAX {
                Parsed::Done(extract(body, &meta, &opts))
            } else {
                Parsed::Later(body.to_vec(), meta)
            }
        });
        let read = async {
            tokio::select! {
                r = next => r,
                () = cancel.cancelled() => Err(ImapError::Timeout("cancelled")),
            }
        };
        let next = if std::mem::take(&mut first) {
            let (next, tx) = tokio::join!(read, ctx.store.begin_early());
            early = tx;
            next
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
            read.await
        };
        if cancel.is_cancelled() {
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
                state.uidvalidity,
                full,
                exists_at_us,
                early.take(),
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
    let last = commit(ctx, state.uidvalidity, batch, exists_at_us, early.take()).await?;
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

/// Commits one batch; returns its highest UID (0 for an empty batch).
async fn commit(
    ctx: &MailboxCtx,
    uidvalidity: u32,
    batch: Vec<MessageRecord>,
    exists_at_us: Option<i64>,
    tx: Option<BatchTx>,
) -> Result<u32, StoreError> {
    let Some(new_last) = batch.iter().map(|m| m.uid).max() else {
        return Ok(0);
    };
    let target = BatchTarget {
        account_id: &ctx.account_id,
        mailbox: &ctx.mailbox,
        uidvalidity,
    };
    let committed = ctx
        .store
        .commit_batch(tx, target, &batch, new_last, exists_at_us, |uids| {
            SyncRecord {
                account_id: &ctx.account_id,
                email_address: &ctx.email,
                count: uids.len(),
                timestamp: timestamp_now(),
                kind: RecordKind::NewMail,
                mailbox: &ctx.mailbox,
                uid_validity: uidvalidity,
                uids,
            }
            .to_json()
        })
        .await?;
    if let Some(row) = committed.outbox {
        let count = committed.inserted.len();
        let newest = batch.iter().filter_map(|m| m.received_at_ms).max();
        ctx.reporter.stored(count as u64, newest);
        // After the counters, so a record is never seen before the metrics that explain it.
        ctx.handoff.committed(row);
        tracing::info!(count, last_uid = new_last, "stored new messages");
    }
    Ok(new_last)
}

/// An `Instant` in the past as Unix microseconds (for the cross-task latency histogram).
fn unix_micros(at: Instant) -> i64 {
    let ago = i64::try_from(at.elapsed().as_micros()).unwrap_or(0);
    chrono::Utc::now().timestamp_micros() - ago
}

#[cfg(test)]
mod tests {
    use super::may_hold_new;

    #[test]
    fn select_answer_decides_whether_to_fetch() {
        assert!(!may_hold_new(0, Some(1), 0), "empty mailbox");
        assert!(!may_hold_new(0, None, 0), "empty mailbox, no UIDNEXT");
        assert!(!may_hold_new(5, Some(11), 10), "nothing above last_uid");
        assert!(may_hold_new(5, Some(12), 10), "UID 11 may exist");
        assert!(may_hold_new(5, None, 10), "no UIDNEXT: fetch to know");
        assert!(
            may_hold_new(1, Some(2), 0),
            "first message of a new mailbox"
        );
        assert!(!may_hold_new(1, Some(u32::MAX), u32::MAX), "no overflow");
    }
}
