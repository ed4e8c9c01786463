//! The first import of a mailbox (or the re-import after a UIDVALIDITY change): history, not new
//! mail. Mail below the import boundary (the UIDNEXT seen when the epoch began, kept in
//! `mailbox_state.import_uid_next`) is announced as `imported` on the changes channel, with its
//! progress, and shown on `/status`; with `storage.import_since` only mail whose INTERNALDATE is
//! recent enough is fetched at all (`UID SEARCH SINCE`).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::fetch::{fetch_round, Fetched};
use super::{Conn, MailboxCtx, MailboxError};
use crate::event::Progress;
use crate::imap::connect::Selected;
use crate::imap::sync;

/// UIDs per `UID FETCH` of an `import_since` subset (a bounded command line).
const IMPORT_CHUNK: usize = 500;

/// One connection's view of the import. Shared by the commits in flight, hence the atomics.
#[derive(Debug, Default)]
pub(super) struct Import {
    /// UIDs below this are history.
    boundary: Option<u32>,
    /// Messages of the mailbox stored so far, the import's progress.
    stored: AtomicU64,
    /// What the import is expected to store in all.
    total: AtomicU64,
}

impl Import {
    /// For an epoch whose import boundary is `boundary`.
    pub(super) fn new(boundary: Option<u32>) -> Import {
        Import {
            boundary,
            ..Import::default()
        }
    }

    /// `uid` was in the mailbox before idlesync first selected it.
    pub(super) fn is_history(&self, uid: u32) -> bool {
        self.boundary.is_some_and(|b| uid < b)
    }

    /// Counts `n` more imported messages; the progress including them.
    pub(super) fn progress(&self, n: u64) -> Progress {
        let stored = self.stored.fetch_add(n, Ordering::Relaxed) + n;
        let total = self.total.load(Ordering::Relaxed).max(stored);
        Progress { stored, total }
    }

    /// The import (re)starts on this connection with `total` messages in all; an empty one is
    /// not shown.
    fn started(&self, ctx: &MailboxCtx, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if total > 0 {
            ctx.reporter.import_started(total);
        }
    }

    /// Whether history below the boundary may still be unfetched.
    fn pending(&self, last_uid: u32) -> bool {
        self.boundary
            .is_some_and(|b| last_uid.saturating_add(1) < b)
    }
}

/// Starts (or resumes) the import when history is left below the boundary. Without
/// `import_since` this only sets the progress up: the new-mail fetch that follows reads
/// history and new mail alike, and their records are split by UID. With it, only the UIDs
/// `UID SEARCH SINCE` finds are fetched, and `last_uid` then moves to the boundary: older mail
/// is never fetched.
pub(super) async fn run(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    sel: &Selected,
    cancel: &CancellationToken,
) -> Result<Fetched, MailboxError> {
    let (Some(boundary), true) = (
        conn.import.boundary,
        conn.import.pending(conn.state.last_uid),
    ) else {
        return Ok(Fetched::Done);
    };
    let target = ctx.target(conn.state.uidvalidity);
    let stored = ctx.store.present_count(target).await?;
    conn.import.stored.store(stored, Ordering::Relaxed);
    let Some(since) = ctx.import_since else {
        let total = u64::from(sel.exists).max(stored);
        conn.import.started(ctx, total);
        return Box::pin(in_windows(ctx, conn, boundary, cancel)).await;
    };
    let t = ctx.timers.connect_timeout;
    if conn.view.tracks_seqs() {
        // The subset fetched below would leave holes in the sequence map: enumerate it whole.
        let mut run = sync::enumerate(&mut conn.session, &mut conn.view, u32::MAX, t).await?;
        // Each batch is a part of the mailbox or the end: bounded.
        while !run
            .next_batch(super::changes::CHANGE_BATCH)
            .await?
            .is_empty()
        {}
    }
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(since).unwrap_or_default();
    let last = conn.state.last_uid;
    let mut todo = Vec::new();
    // Windows of UIDs, so that each answer stays small (see `sync::search_since`); the
    // UIDs still to import are in (last, boundary).
    let mut from = last.saturating_add(1);
    while from < boundary {
        let to = from
            .saturating_add(sync::SEARCH_WINDOW - 1)
            .min(boundary - 1);
        let found = sync::search_since(
            &mut conn.session,
            &mut conn.view,
            cutoff.date_naive(),
            (from, to),
            t,
        )
        .await?;
        todo.extend(found.into_iter().filter(|u| *u > last && *u < boundary));
        from = to.saturating_add(1);
        if to == u32::MAX {
            break;
        }
    }
    let total = stored + todo.len() as u64;
    conn.import.started(ctx, total);
    tracing::info!(total, skipped_before = %cutoff.date_naive(), "importing recent mail only");
    for chunk in todo.chunks(IMPORT_CHUNK) {
        if fetch_round(ctx, conn, &uid_set(chunk), None, cancel).await? == Fetched::Interrupted {
            return Ok(Fetched::Interrupted);
        }
    }
    // Older mail stays on the server, never fetched: the import ends at the boundary.
    let end = boundary - 1;
    ctx.store
        .commit_batch(None, target, &[], end, None, |_| Vec::new())
        .await?;
    conn.state.last_uid = conn.state.last_uid.max(end);
    ctx.reporter.set_last_uid(conn.state.last_uid);
    Ok(Fetched::Done)
}

/// First UIDs per window of a whole import, in commit batches (`imap.fetch_batch`): 5,000
/// UIDs with the default of 500.
const FIRST_WINDOW_BATCHES: usize = 10;
/// Widest window: sparse UIDs (a mailbox whose UIDs jump by millions) cost a few empty
/// windows, not millions.
const MAX_WINDOW: u32 = 1 << 26;

/// A whole import, `UID FETCH a:b` window after window up to the boundary, so that the API's
/// actions (#19) run between windows instead of waiting for the whole history. A window that
/// brought less than a quarter of its width doubles the next one; each round moves at least
/// the first window's width on, so the loop is bounded by the boundary.
async fn in_windows(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    boundary: u32,
    cancel: &CancellationToken,
) -> Result<Fetched, MailboxError> {
    let wake = ctx.signals.waker(&ctx.account_id, &ctx.mailbox);
    let first = ctx.timers.fetch_batch.saturating_mul(FIRST_WINDOW_BATCHES);
    let mut window = u32::try_from(first)
        .unwrap_or(MAX_WINDOW)
        .clamp(1, MAX_WINDOW);
    let mut from = conn.state.last_uid.saturating_add(1);
    while from < boundary {
        let to = from.saturating_add(window - 1).min(boundary - 1);
        let before = conn.import.stored.load(Ordering::Relaxed);
        if fetch_round(ctx, conn, &format!("{from}:{to}"), None, cancel).await?
            == Fetched::Interrupted
        {
            return Ok(Fetched::Interrupted);
        }
        let got = conn.import.stored.load(Ordering::Relaxed) - before;
        if got < u64::from(window / 4) {
            window = window.saturating_mul(2).min(MAX_WINDOW);
        }
        if futures::FutureExt::now_or_never(wake.notified()).is_some() {
            Box::pin(super::actions::run(ctx, conn)).await?;
        }
        if to == u32::MAX {
            break;
        }
        from = to + 1;
    }
    Ok(Fetched::Done)
}

/// After a complete `UID FETCH last_uid+1:*`: every message below the boundary has been read,
/// and a UID in `(last_uid, boundary)` that did not come no longer exists (the newest history
/// was expunged before it was fetched). `last_uid` then moves to the boundary, so that the
/// import ends here and the next connection does not start it again, and the status page says
/// it is done.
pub(super) async fn finished(ctx: &MailboxCtx, conn: &mut Conn) -> Result<(), MailboxError> {
    let Some(boundary) = conn.import.boundary else {
        return Ok(());
    };
    if conn.import.pending(conn.state.last_uid) {
        let end = boundary - 1;
        let target = ctx.target(conn.state.uidvalidity);
        ctx.store
            .commit_batch(None, target, &[], end, None, |_| Vec::new())
            .await?;
        conn.state.last_uid = end;
        ctx.reporter.set_last_uid(end);
    }
    if conn.import.total.load(Ordering::Relaxed) > 0 {
        ctx.reporter.import_done();
    }
    Ok(())
}

/// Ascending UIDs as an IMAP sequence set, runs compressed (`3:5,9`).
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[3, 4, 5, 9, 11, 12]), "3:5,9,11:12");
        assert_eq!(uid_set(&[7]), "7");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn history_is_below_the_boundary() {
        let i = Import::new(Some(31));
        assert!(i.is_history(30) && !i.is_history(31));
        assert!(i.pending(0) && i.pending(29) && !i.pending(30));
        assert!(!Import::new(None).is_history(1));
        i.total.store(30, Ordering::Relaxed);
        assert_eq!(
            i.progress(10),
            Progress {
                stored: 10,
                total: 30
            }
        );
        assert_eq!(
            i.progress(25),
            Progress {
                stored: 35,
                total: 35
            }
        );
    }
}
