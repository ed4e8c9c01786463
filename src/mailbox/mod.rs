//! The per-mailbox state machine: connect → log in → select → catch up → idle ⇄ fetch.
//!
//! One call of [`run`] is one connection's life. It returns `Ok(())` only on shutdown; any
//! error drops the connection and goes back to the supervisor, which decides when to call
//! [`run`] again. Nothing here writes SQL or talks to Redis: batches go to the store, and each
//! committed record is handed to the publisher through a [`Handoff`].

mod fetch;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backoff::ErrorClass;
use crate::config::ImapTimers;
use crate::event::{timestamp_now, RecordKind, SyncRecord};
use crate::handoff::Handoff;
use crate::imap::connect::{self, Endpoint, Selected};
use crate::imap::idle::{IdleEvent, IdleTimers};
use crate::imap::{idle, ImapError, Session};
use crate::limiter::ConnectLimiter;
use crate::status::{MailboxState, Reporter};
use crate::store::{Store, StoreError, SyncState};

use fetch::{fetch_new, Fetched};

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

    /// Which retry schedule this error calls for. A database that is down or busy is
    /// transient: the mailbox reconnects and fetches again from the last committed UID. One
    /// that fails the same way every time (a schema mismatch, a broken constraint) waits in
    /// `failed` for an operator instead of being hammered.
    pub fn class(&self) -> ErrorClass {
        match self {
            MailboxError::Imap(e) => e.class(),
            MailboxError::Store(e) if e.is_transient() => ErrorClass::Transient,
            MailboxError::Store(_) => ErrorClass::ConfigOrServer,
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
    let mut liveness = idle::Liveness::default();
    while !cancel.is_cancelled() {
        let (s, event) = idle::idle(session, timers, &mut liveness, cancel, || {
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
                    None, // store shim (#11): the lead passes the import boundary
                    Some(&record),
                )
                .await?;
            if let Some(row) = committed {
                ctx.handoff.committed(row);
            }
            Ok(SyncState {
                uidvalidity: sel.uid_validity,
                last_uid: 0,
                ..SyncState::default() // store shim (#11)
            })
        }
        // A new mailbox: its first batch writes its state row (an upsert), so coming online
        // costs no write, and an empty mailbox never needs one.
        None => Ok(SyncState {
            uidvalidity: sel.uid_validity,
            last_uid: 0,
            ..SyncState::default() // store shim (#11)
        }),
    }
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
