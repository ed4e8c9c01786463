//! The per-mailbox state machine: connect → log in → select → catch up → idle ⇄ fetch.
//!
//! One call of [`run`] is one connection's life. It returns `Ok(())` only on shutdown; any
//! error drops the connection and goes back to the supervisor, which decides when to call
//! [`run`] again. Nothing here writes SQL or talks to Redis: batches and changes go to the
//! store, and each committed record is handed to the publisher through a [`Handoff`].
//!
//! The store mirrors the mailbox (#11): flag changes and expunges pushed into IDLE are applied
//! while the connection stays in IDLE ([`changes`]); what changed while no connection was open
//! is caught up at the start of each connection, by the cheapest path the server's
//! CAPABILITY allows ([`catchup`]). A mailbox seen for the first time is imported as history,
//! not announced as new mail ([`fetch`], [`import`]).

mod actions;
mod catchup;
mod changes;
mod fetch;
mod import;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::ErrorClass;
use crate::config::ImapTimers;
use crate::event::{timestamp_now, RecordKind, SyncRecord};
use crate::handoff::Handoff;
use crate::imap::caps;
use crate::imap::connect::{self, Endpoint, Known, Selected};
use crate::imap::idle::{IdleEvent, IdleTimers};
use crate::imap::view::View;
use crate::imap::{idle, mailbox_name, ImapError, Session};
use crate::limiter::ConnectLimiter;
use crate::status::{MailboxState, Reporter};
use crate::store::{BatchTarget, Store, StoreError, SyncState};

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
    /// `storage.import_since`: a first import only fetches mail at most this old.
    pub import_since: Option<Duration>,
    /// Wake-ups and completions of the API's actions (#19).
    pub signals: crate::actions::Signals,
    /// Whether this task lists the account's mailboxes at each connection (the account's
    /// first mailbox does, for the API's checks and the Trash).
    pub lists_mailboxes: bool,
}

impl MailboxCtx {
    /// Where this mailbox's rows of `uidvalidity` go.
    fn target(&self, uidvalidity: u32) -> BatchTarget<'_> {
        BatchTarget {
            account_id: &self.account_id,
            mailbox: &self.mailbox,
            uidvalidity,
        }
    }
}

/// One open connection: the session, what it knows about the mailbox, and the sync state.
struct Conn {
    session: Session,
    view: View,
    state: SyncState,
    /// What each fetch asks for beyond the message (MODSEQ, EMAILID, …).
    extras: crate::imap::fetch::Extras,
    /// The import under way, if any.
    import: import::Import,
    /// What the server offers and what was enabled.
    caps: caps::Caps,
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

    /// Cluster mode: a write was rolled back because the mailbox's lease is another
    /// replica's now. The mailbox is dropped, never retried here.
    pub fn is_fenced(&self) -> bool {
        matches!(self, MailboxError::Store(StoreError::Fenced { .. }))
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
/// catching up, fetching and applying changes build much larger futures (the TLS handshake,
/// login, the store's queries); each is boxed, so its memory is freed once done instead of
/// being part of every idle task's fixed size (5.5 KiB per mailbox before, in #5's heap
/// profile).
pub async fn run(ctx: &MailboxCtx, cancel: &CancellationToken) -> Result<(), MailboxError> {
    let Some(mut conn) = Box::pin(open_and_catch_up(ctx, cancel)).await? else {
        return Ok(());
    };
    let timers = IdleTimers {
        renew: ctx.timers.idle_renew,
        dead_after: ctx.timers.dead_after,
        done_timeout: ctx.timers.done_timeout,
    };
    let mut liveness = idle::Liveness::default();
    let wake = ctx.signals.waker(&ctx.account_id, &ctx.mailbox);
    while !cancel.is_cancelled() {
        let mut idling = Box::pin(idle::enter(conn.session, &mut conn.view, timers, || {
            ctx.reporter.set_state(MailboxState::Idling)
        }))
        .await?;
        let event = loop {
            let event = idling.wait(&mut conn.view, timers, &mut liveness, cancel, &wake);
            match event.await? {
                // Applied while the connection stays in IDLE: nothing is sent to the server.
                IdleEvent::Changed => {
                    let applied = Box::pin(changes::apply(ctx, &mut conn.view, &mut conn.state));
                    if let Err(e) = applied.await {
                        if e.is_fenced() {
                            // Another replica owns the mailbox now: leave IDLE and log out.
                            let session = Box::pin(idling.done(&mut conn.view, timers)).await?;
                            Box::pin(connect::logout(session, ctx.timers.done_timeout)).await;
                        }
                        return Err(e.into());
                    }
                    changes::check(&conn.view)?;
                }
                other => break other,
            }
        };
        conn.session = Box::pin(idling.done(&mut conn.view, timers)).await?;
        match Box::pin(after_idle(ctx, &mut conn, event, cancel)).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Shutdown) => break,
            Ok(Flow::Interrupted) => {
                interrupted(ctx, conn.session);
                return Ok(());
            }
            Err(e) => {
                if e.is_fenced() {
                    // Out of IDLE already: log out, the lease is another replica's.
                    Box::pin(connect::logout(conn.session, ctx.timers.done_timeout)).await;
                }
                return Err(e);
            }
        }
    }
    ctx.reporter.set_state(MailboxState::Stopping);
    Box::pin(connect::logout(conn.session, ctx.timers.done_timeout)).await;
    Ok(())
}

/// What the IDLE loop does next.
enum Flow {
    Continue,
    Shutdown,
    /// Shutdown came during a fetch: close without LOGOUT ([`interrupted`]).
    Interrupted,
}

/// Out of IDLE: handle what ended it.
async fn after_idle(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    event: IdleEvent,
    cancel: &CancellationToken,
) -> Result<Flow, MailboxError> {
    match event {
        IdleEvent::NewMail { at } => {
            ctx.reporter.set_state(MailboxState::Fetching);
            // Changes first: a message flagged or expunged before it is fetched is fetched
            // (or not) as it is now, and its rows never go back in time.
            Box::pin(changes::apply(ctx, &mut conn.view, &mut conn.state)).await?;
            let fetched = fetch_new(ctx, conn, Some(at), cancel);
            if Box::pin(fetched).await? == Fetched::Interrupted {
                return Ok(Flow::Interrupted);
            }
            Box::pin(changes::apply(ctx, &mut conn.view, &mut conn.state)).await?;
        }
        IdleEvent::Changed | IdleEvent::Renew => {
            // What came during DONE.
            Box::pin(changes::apply(ctx, &mut conn.view, &mut conn.state)).await?;
        }
        IdleEvent::Actions => {
            ctx.reporter.set_state(MailboxState::Fetching);
            Box::pin(actions::run(ctx, conn)).await?;
        }
        // Changes read during DONE are left: the next connection catches them up.
        IdleEvent::Shutdown => return Ok(Flow::Shutdown),
    }
    changes::check(&conn.view)?;
    Ok(Flow::Continue)
}

/// Shutdown came while a `UID FETCH` was being answered. What was read is committed; the
/// rest of the answer cannot be cut short in IMAP (a LOGOUT would only be answered after it),
/// so the connection is closed without one.
fn interrupted(ctx: &MailboxCtx, session: Session) {
    ctx.reporter.set_state(MailboxState::Stopping);
    tracing::info!("shutdown during a fetch: stored what was read, closing without LOGOUT");
    drop(session);
}

/// Connect, log in, select, catch up what changed and fetch what arrived while we were away.
/// `None` when shutdown was requested first.
async fn open_and_catch_up(
    ctx: &MailboxCtx,
    cancel: &CancellationToken,
) -> Result<Option<Conn>, MailboxError> {
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
    let want_utf8 =
        !mailbox_name::is_plain(&ctx.mailbox) && mailbox_name::utf8_quotable(&ctx.mailbox);
    let Some(caps) = until_cancelled(cancel, caps::negotiate(&mut session, want_utf8, t)).await?
    else {
        return Ok(None);
    };
    if ctx.lists_mailboxes {
        Box::pin(list_mailboxes(ctx, &mut session, t)).await?;
    }
    let stored = ctx.store.sync_state(&ctx.account_id, &ctx.mailbox).await?;
    let known = stored.and_then(|s| {
        Some(Known {
            uidvalidity: s.uidvalidity,
            highest_modseq: s.highest_modseq?,
            last_uid: s.last_uid,
        })
    });
    let mut view = View::new(caps.qresync);
    let select = connect::select(&mut session, &ctx.mailbox, caps, known, &mut view, t);
    let Some(selected) = until_cancelled(cancel, select).await? else {
        return Ok(None);
    };
    drop(permit);
    // SELECT's EXISTS is answered by the fetch below (or needs none): only an EXISTS read
    // after it should end the first IDLE at once.
    view.take_new_mail();
    let (mut state, fresh) = establish_epoch(ctx, stored, &selected).await?;
    crate::fault::panic_point(&ctx.account_id, &ctx.mailbox);
    ctx.reporter.set_last_uid(state.last_uid);
    if fresh {
        // Whatever the server reported belongs to no stored row of this epoch.
        view.pending = Default::default();
    } else if state.last_uid > 0 {
        let resynced = caps.qresync && known.is_some_and(|k| k.uidvalidity == state.uidvalidity);
        let path = catchup::Path::choose(caps, resynced, &selected, &state);
        Box::pin(catchup::changes(ctx, &mut session, &mut view, &state, path)).await?;
    }
    // Persisted once the changes it covers are; unchanged, it costs no transaction (the common
    // case of a reconnect with nothing new).
    if let Some(m) = selected
        .highest_modseq
        .filter(|m| Some(*m) != state.highest_modseq)
    {
        view.pending.modseq_seen(m);
    }
    Box::pin(changes::apply(ctx, &mut view, &mut state)).await?;
    let extras = crate::imap::fetch::Extras {
        modseq: selected.highest_modseq.is_some(),
        objectid: caps.objectid,
        gmail: caps.gmail,
    };
    let import = import::Import::new(state.import_uid_next);
    let mut conn = Conn {
        session,
        view,
        state,
        extras,
        import,
        caps,
    };
    let imported = import::run(ctx, &mut conn, &selected, cancel);
    if Box::pin(imported).await? == Fetched::Interrupted {
        interrupted(ctx, conn.session);
        return Ok(None);
    }
    if may_hold_new(selected.exists, selected.uid_next, conn.state.last_uid) {
        let fetched = fetch_new(ctx, &mut conn, None, cancel);
        if Box::pin(fetched).await? == Fetched::Interrupted {
            interrupted(ctx, conn.session);
            return Ok(None);
        }
    }
    Box::pin(import::finished(ctx, &mut conn)).await?;
    Box::pin(changes::apply(ctx, &mut conn.view, &mut conn.state)).await?;
    changes::check(&conn.view)?;
    // Actions queued while no connection was open (or left running by the last one).
    Box::pin(actions::run(ctx, &mut conn)).await?;
    changes::check(&conn.view)?;
    Ok(Some(conn))
}

/// Most mailboxes of an account kept from one LIST.
const MAX_LISTED: usize = 10_000;

/// Lists the account's mailboxes into the store (the API refuses a move to a mailbox the
/// server does not have, and finds the Trash by SPECIAL-USE). A refused LIST is logged and
/// skipped: the mailbox is still watched.
async fn list_mailboxes(
    ctx: &MailboxCtx,
    session: &mut Session,
    t: Duration,
) -> Result<(), MailboxError> {
    match crate::imap::commands::list(session, t, MAX_LISTED).await {
        Ok(list) => {
            ctx.store
                .set_server_mailboxes(&ctx.account_id, &list)
                .await?
        }
        Err(ImapError::Select(why)) => tracing::warn!(reason = %why, "LIST refused"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
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

/// The sync state for this connection, and whether it starts a new epoch (a mailbox seen for
/// the first time, or a UIDVALIDITY change, announced by a `mailboxReset` record). A new
/// epoch's state row is written at once, in one statement, with SELECT's HIGHESTMODSEQ (nothing
/// stored in the epoch predates it) and UIDNEXT as its import boundary: mail below it was
/// there before idlesync looked, and is imported as history; mail from it on is new. Written
/// before the import begins, so a restart in the middle of one keeps the same boundary.
async fn establish_epoch(
    ctx: &MailboxCtx,
    stored: Option<SyncState>,
    sel: &Selected,
) -> Result<(SyncState, bool), StoreError> {
    let record = match stored {
        Some(s) if s.uidvalidity == sel.uid_validity => return Ok((s, false)),
        Some(old) => {
            tracing::warn!(
                old = old.uidvalidity,
                new = sel.uid_validity,
                "UIDVALIDITY changed: resyncing the mailbox; rows of the old epoch are kept under their uidvalidity"
            );
            Some(
                SyncRecord {
                    account_id: &ctx.account_id,
                    email_address: &ctx.email,
                    count: 0,
                    timestamp: timestamp_now(),
                    kind: RecordKind::MailboxReset,
                    mailbox: &ctx.mailbox,
                    uid_validity: sel.uid_validity,
                    uids: &[],
                }
                .to_json(),
            )
        }
        None => None,
    };
    let committed = ctx
        .store
        .start_epoch(
            &ctx.account_id,
            &ctx.mailbox,
            sel.uid_validity,
            sel.uid_next,
            sel.highest_modseq,
            record.as_deref(),
        )
        .await?;
    if let Some(row) = committed {
        ctx.handoff.committed(row);
    }
    let state = SyncState {
        uidvalidity: sel.uid_validity,
        last_uid: 0,
        highest_modseq: sel.highest_modseq,
        import_uid_next: sel.uid_next,
    };
    Ok((state, true))
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
