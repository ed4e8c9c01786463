//! Applying what the connection's [`View`] collected (flag changes, expunges, a new
//! HIGHESTMODSEQ) to the store, in batches, each with its records in the same transaction.

use super::{MailboxCtx, MailboxError};
use crate::event::{self, Origin};
use crate::imap::view::View;
use crate::imap::ImapError;
use crate::store::{StoreError, SyncState};

/// Most changed messages per transaction, and so per record. A storm of 10,000 `\Seen`
/// changes is a handful of transactions and records, not 10,000.
pub(super) const CHANGE_BATCH: usize = 2000;

/// Applies everything pending in `view`, a batch at a time. A batch that fails is lost from
/// memory, not from the mailbox: the error ends the connection, and the next one catches up.
pub(super) async fn apply(
    ctx: &MailboxCtx,
    view: &mut View,
    state: &mut SyncState,
) -> Result<(), StoreError> {
    // Each round takes at least one change (or the last HIGHESTMODSEQ) out: bounded.
    let rounds = view.pending.len() / CHANGE_BATCH + 2;
    for _ in 0..rounds {
        let set = view.pending.take_batch(CHANGE_BATCH);
        if set.is_empty() {
            break;
        }
        let origin = Origin {
            account_id: &ctx.account_id,
            email_address: &ctx.email,
            mailbox: &ctx.mailbox,
            uid_validity: state.uidvalidity,
        };
        let applied = ctx
            .store
            .apply_changes(ctx.target(state.uidvalidity), &set, |a| {
                let mut records = Vec::with_capacity(2);
                if !a.flags.is_empty() {
                    records.push(event::flags_changed(&origin, &a.flags));
                }
                if !a.expunged.is_empty() {
                    records.push(event::messages_expunged(&origin, &a.expunged));
                }
                records
            })
            .await?;
        if let Some(m) = set.highest_modseq {
            state.highest_modseq = Some(state.highest_modseq.map_or(m, |h| h.max(m)));
        }
        let (flags, expunged) = (applied.flags.len(), applied.expunged.len());
        if flags + expunged > 0 {
            ctx.reporter.changes_applied(flags as u64, expunged as u64);
            tracing::info!(flags, expunged, "applied changes");
        }
        // After the counters, so a record is never seen before the metrics that explain it.
        for row in applied.outbox {
            ctx.handoff.committed(row);
        }
    }
    Ok(())
}

/// A change named a sequence number the view could not place: the store may have missed
/// something, so the connection is rebuilt and caught up.
pub(super) fn check(view: &View) -> Result<(), MailboxError> {
    if view.lost() {
        return Err(ImapError::Desynced.into());
    }
    Ok(())
}
