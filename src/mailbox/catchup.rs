//! What changed in the mailbox while no connection watched it: the start of every connection,
//! never a timer. The path is chosen from the server's CAPABILITY (never from its name):
//!
//! | path        | when                                   | what it costs                        |
//! |-------------|----------------------------------------|--------------------------------------|
//! | `qresync`   | QRESYNC enabled, a HIGHESTMODSEQ kept  | nothing more: SELECT's own answer    |
//! | `condstore` | CONDSTORE (Gmail), a HIGHESTMODSEQ kept | `CHANGEDSINCE` for flags, plus one UID enumeration for expunges |
//! | `full`      | neither (Microsoft 365), or no HIGHESTMODSEQ kept yet | one `UID FETCH 1:last (UID FLAGS)` enumeration, diffed against the store |
//!
//! The enumeration is read in batches and compared with the store's rows batch by batch, so a
//! 100,000-message mailbox costs one pass over its UIDs and flags (seconds), with memory bounded
//! by a batch. Without QRESYNC the enumeration also fills the connection's sequence map.

use super::{MailboxCtx, MailboxError};
use crate::imap::caps::Caps;
use crate::imap::connect::Selected;
use crate::imap::sync;
use crate::imap::view::View;
use crate::imap::Session;
use crate::store::SyncState;

/// Server entries compared with the store at a time.
const DIFF_BATCH: usize = 5000;

/// How this connection catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// SELECT's `VANISHED (EARLIER)` and FETCH answers are already in the view.
    Qresync,
    /// `UID FETCH … (CHANGEDSINCE m)` for flags; an enumeration for expunges.
    Condstore(u64),
    /// An enumeration of every UID and its flags, diffed against the store.
    Full,
}

impl Path {
    /// The cheapest path the server allows. `resynced`: SELECT carried QRESYNC parameters
    /// for this epoch.
    pub(super) fn choose(caps: Caps, resynced: bool, sel: &Selected, state: &SyncState) -> Path {
        match (state.highest_modseq, sel.highest_modseq) {
            (Some(_), Some(_)) if caps.qresync && resynced => Path::Qresync,
            (Some(m), Some(_)) if caps.condstore || caps.qresync => Path::Condstore(m),
            _ => Path::Full,
        }
    }

    /// For logs and the status page.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Path::Qresync => "qresync",
            Path::Condstore(_) => "condstore",
            Path::Full => "full",
        }
    }
}

/// Puts what changed among the stored messages (UIDs up to `last_uid`) into `view.pending`.
pub(super) async fn changes(
    ctx: &MailboxCtx,
    session: &mut Session,
    view: &mut View,
    state: &SyncState,
    path: Path,
) -> Result<(), MailboxError> {
    let t = ctx.timers.connect_timeout;
    tracing::debug!(path = path.as_str(), "catching up changes");
    match path {
        Path::Qresync => {}
        Path::Condstore(modseq) => {
            // The enumeration first: it fills the sequence map, which a flag change pushed
            // without its UID during CHANGEDSINCE needs.
            diff(ctx, session, view, state, false).await?;
            sync::changed_since(session, view, state.last_uid, modseq, t).await?;
        }
        Path::Full => diff(ctx, session, view, state, true).await?,
    }
    Ok(())
}

/// Enumerates the server's UIDs up to `last_uid` and compares them with the stored rows: a
/// present row the server no longer has was expunged; with `flags`, a row whose flags differ
/// changed. Also fills the sequence map.
async fn diff(
    ctx: &MailboxCtx,
    session: &mut Session,
    view: &mut View,
    state: &SyncState,
    flags: bool,
) -> Result<(), MailboxError> {
    let t = ctx.timers.connect_timeout;
    let target = ctx.target(state.uidvalidity);
    let mut expunged = Vec::new();
    let mut changed = Vec::new();
    {
        let mut run = sync::enumerate(session, view, state.last_uid, t).await?;
        let mut after = 0u32;
        // Each round moves `after` up or ends: bounded by the mailbox.
        loop {
            let server = run.next_batch(DIFF_BATCH).await?;
            let upto = match server.last() {
                Some((uid, _)) => *uid,
                None => state.last_uid,
            };
            if upto > after {
                let stored = present(ctx, target, after, upto).await?;
                compare(&server, &stored, flags, &mut expunged, &mut changed);
            }
            if server.is_empty() {
                break;
            }
            after = upto;
        }
    }
    for uid in expunged {
        view.pending.expunged(uid);
    }
    for (uid, f) in changed {
        // A report the server pushed meanwhile is newer than the enumeration's snapshot.
        view.pending.flags_if_unreported(uid, f);
    }
    Ok(())
}

/// The stored present rows with UID in `(after, upto]`, read in bounded pages.
async fn present(
    ctx: &MailboxCtx,
    target: crate::store::BatchTarget<'_>,
    after: u32,
    upto: u32,
) -> Result<Vec<(u32, String)>, MailboxError> {
    let mut out = Vec::new();
    let mut from = after;
    // Each page moves `from` up or ends.
    loop {
        let page = ctx
            .store
            .present_flags(target, from, upto, DIFF_BATCH)
            .await?;
        let full = page.len() == DIFF_BATCH;
        from = page.last().map_or(upto, |(uid, _)| *uid);
        out.extend(page);
        if !full || from >= upto {
            return Ok(out);
        }
    }
}

/// Merges one batch of the server's `(uid, flags)` with the stored rows of the same UID
/// range, both ascending.
fn compare(
    server: &[(u32, String)],
    stored: &[(u32, String)],
    flags: bool,
    expunged: &mut Vec<u32>,
    changed: &mut Vec<(u32, String)>,
) {
    let mut s = server.iter().peekable();
    for (uid, have) in stored {
        while s.next_if(|(u, _)| u < uid).is_some() {}
        match s.peek() {
            Some((u, now)) if u == uid => {
                if flags && !same_flags(have, now) {
                    changed.push((*uid, now.clone()));
                }
            }
            _ => expunged.push(*uid),
        }
    }
}

/// Flag lists compare as sets, ignoring `\Recent` (per session) and case.
fn same_flags(a: &str, b: &str) -> bool {
    let set = |s: &str| {
        let mut v: Vec<String> = s
            .split(' ')
            .filter(|f| !f.is_empty() && !f.eq_ignore_ascii_case("\\Recent"))
            .map(str::to_ascii_lowercase)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    set(a) == set(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(u32, &str)]) -> Vec<(u32, String)> {
        r.iter().map(|(u, f)| (*u, f.to_string())).collect()
    }

    #[test]
    fn diff_finds_expunged_and_changed_rows() {
        let server = rows(&[(1, "\\Seen"), (3, ""), (4, "\\Flagged \\Seen"), (9, "")]);
        let stored = rows(&[
            (1, "\\Seen"),
            (2, ""),
            (3, "\\Seen"),
            (4, "\\Seen \\Flagged"),
        ]);
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        compare(&server, &stored, true, &mut gone, &mut changed);
        assert_eq!(gone, vec![2]);
        assert_eq!(changed, rows(&[(3, "")]));
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        compare(&server, &stored, false, &mut gone, &mut changed);
        assert_eq!((gone, changed.len()), (vec![2], 0));
        // A stored row beyond the server's batch within the range is gone too.
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        compare(&[], &stored, true, &mut gone, &mut changed);
        assert_eq!(gone, vec![1, 2, 3, 4]);
    }

    #[test]
    fn flags_compare_as_sets() {
        assert!(same_flags("\\Seen \\Flagged", "\\Flagged \\Seen \\Recent"));
        assert!(same_flags("", "\\Recent"));
        assert!(!same_flags("\\Seen", ""));
    }
}
