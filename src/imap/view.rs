//! What one connection knows about its selected mailbox: how many messages it holds, which UID
//! sits at which sequence number (only where changes arrive without UIDs), and the changes
//! seen and not yet applied.
//!
//! Every untagged response read after SELECT — in IDLE, during a FETCH, a SEARCH or a DONE —
//! goes through [`View::absorb`], in the order the server sent it, so that sequence numbers
//! stay right and no EXPUNGE is lost.
//!
//! With QRESYNC enabled every change carries its UID (`VANISHED`, `FETCH (UID …)`), and no
//! sequence map is kept. Without it the map is filled by the catch-up's enumeration and by
//! every fetched message, and shifted by every `EXPUNGE`.

use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, ResponseCode, Status};
use tokio::time::Instant;

use crate::changes::PendingChanges;

/// The most changes the view holds unapplied. A hostile or broken server could name all 4
/// billion UIDs in one `VANISHED`, or push flag changes without end during a long FETCH or a
/// DONE; past this the view is [`lost`](View::lost) and drops what comes, instead of holding
/// it (about 60 bytes each). The connection is then rebuilt, and its catch-up, which reads the
/// mailbox against the stored rows, finds what a real change of that size did. IDLE applies
/// changes every 2,000, so only a server pushing this many between two reads reaches it.
pub const MAX_HELD: usize = 200_000;

/// What one absorbed response meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// Nothing for the mailbox (keepalives, RECENT, continuations, tagged replies).
    Nothing,
    /// `* N EXISTS`: the mailbox holds `N` messages; new mail may be waiting.
    Exists(u32),
    /// A flag change or an expunge, now in [`View::pending`].
    Change,
}

/// One connection's view of its selected mailbox.
#[derive(Debug, Default)]
pub struct View {
    /// UIDs by sequence number, when changes arrive without UIDs. `None` under QRESYNC.
    seqs: Option<SeqMap>,
    /// Messages the server last said the mailbox holds.
    exists: u32,
    /// Changes seen and not yet applied.
    pub pending: PendingChanges,
    /// A change named a sequence number the map could not resolve: changes may have been
    /// missed, and the connection must catch up again before it is trusted.
    lost: bool,
    /// When the first `* N EXISTS` not yet acted on was absorbed: new mail may wait to be
    /// fetched. Set by every EXISTS, cleared by [`View::take_new_mail`].
    new_mail: Option<Instant>,
}

impl View {
    /// A view for a mailbox just selected; `qresync` when QRESYNC is enabled on the connection.
    pub fn new(qresync: bool) -> View {
        View {
            seqs: (!qresync).then(SeqMap::default),
            ..View::default()
        }
    }

    /// Whether sequence numbers are tracked (QRESYNC is not enabled).
    pub fn tracks_seqs(&self) -> bool {
        self.seqs.is_some()
    }

    /// Messages the server last said the mailbox holds.
    pub fn exists(&self) -> u32 {
        self.exists
    }

    /// A sequence number could not be resolved: catch up again (reconnect) before trusting
    /// the store to equal the server.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// When an `* N EXISTS` was absorbed that nothing has acted on yet, and forgets it. The
    /// IDLE side reports it as new mail ([`super::idle::Idling::wait`] returns at once while
    /// one waits, so an EXISTS read during `DONE` or a SEARCH is not lost); a `UID FETCH` of
    /// new mail takes it when it starts, since it fetches whatever that EXISTS announced.
    pub fn take_new_mail(&mut self) -> Option<Instant> {
        self.new_mail.take()
    }

    /// The message at `seq` has `uid` (from an enumeration or a fetched message). The map
    /// is filled in sequence order from 1: a `seq` past the next one, or a UID that
    /// contradicts what is known, marks the view [`lost`](View::lost).
    pub fn place(&mut self, seq: u32, uid: u32) {
        if let Some(map) = &mut self.seqs {
            if !map.place(seq, uid) {
                self.lost = true;
            }
        }
    }

    /// Takes one untagged response into the view.
    pub fn absorb(&mut self, resp: &Response<'_>) -> Absorbed {
        match resp {
            Response::MailboxData(MailboxDatum::Exists(n)) => {
                self.exists = *n;
                if self.seqs.as_ref().is_some_and(|m| m.len() > *n) {
                    // Fewer messages than the map holds, with no EXPUNGE for them.
                    self.lost = true;
                }
                self.new_mail.get_or_insert_with(Instant::now);
                Absorbed::Exists(*n)
            }
            Response::Expunge(seq) => {
                if *seq == 0 || (self.exists > 0 && *seq > self.exists) {
                    // No such message: the server and this view disagree.
                    self.lost = true;
                }
                self.exists = self.exists.saturating_sub(1);
                match self.seqs.as_mut().map(|m| m.expunge(*seq)) {
                    Some(Some(_)) if self.pending.len() >= MAX_HELD => self.lost = true,
                    Some(Some(uid)) => self.pending.expunged(uid),
                    // Beyond what is known: a message never fetched, nothing stored for it.
                    Some(None) => {}
                    // QRESYNC enabled, yet a sequence-numbered EXPUNGE (RFC 7162 forbids it).
                    None => self.lost = true,
                }
                Absorbed::Change
            }
            Response::Vanished { earlier, uids } => {
                let mut n = 0u32;
                let total: u64 = uids
                    .iter()
                    .map(|r| u64::from(r.end().saturating_sub(*r.start())) + 1)
                    .sum();
                if total.saturating_add(self.pending.len() as u64) > MAX_HELD as u64 {
                    // Not expanded into memory: catch up again instead.
                    self.lost = true;
                    return Absorbed::Change;
                }
                for range in uids {
                    for uid in range.clone() {
                        self.pending.expunged(uid);
                        // Without QRESYNC (a server that sends it anyway) the map shifts too.
                        if let Some(map) = &mut self.seqs {
                            map.remove_uid(uid);
                        }
                        n = n.saturating_add(1);
                    }
                }
                if !earlier {
                    self.exists = self.exists.saturating_sub(n);
                }
                Absorbed::Change
            }
            Response::Fetch(seq, attrs) => self.fetched_change(*seq, attrs),
            Response::Data {
                status: Status::Ok,
                outcome,
            } => {
                if let Some(ResponseCode::HighestModSeq(m)) = outcome.code {
                    self.pending.modseq_seen(m);
                }
                Absorbed::Nothing
            }
            _ => Absorbed::Nothing,
        }
    }

    /// A FETCH without a body: a flag change (or an answer carrying no flags, ignored).
    fn fetched_change(&mut self, seq: u32, attrs: &[AttributeValue<'_>]) -> Absorbed {
        let (uid, flags, modseq) = flag_attrs(attrs);
        let Some(flags) = flags else {
            return Absorbed::Nothing;
        };
        let uid = match (uid, &mut self.seqs) {
            (Some(uid), Some(map)) => {
                // A message not fetched yet may come with its UID; only what the map can
                // hold is checked against it.
                if seq <= map.len().saturating_add(1) && !map.place(seq, uid) {
                    self.lost = true;
                }
                Some(uid)
            }
            (Some(uid), None) => Some(uid),
            (None, Some(map)) => map.uid(seq),
            (None, None) => {
                self.lost = true;
                None
            }
        };
        match uid {
            Some(_) if self.pending.len() >= MAX_HELD => self.lost = true,
            Some(uid) => self.pending.flags(uid, flags, modseq),
            // A message not fetched yet: its fetch will carry its flags.
            None => {
                if let Some(m) = modseq {
                    self.pending.modseq_seen(m);
                }
            }
        }
        Absorbed::Change
    }
}

/// The UID, flags (space-separated, without `\\Recent`) and MODSEQ a FETCH answer carries.
pub(crate) fn flag_attrs(
    attrs: &[AttributeValue<'_>],
) -> (Option<u32>, Option<String>, Option<u64>) {
    let (mut uid, mut flags, mut modseq) = (None, None, None);
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Flags(f) => flags = Some(super::fetch::flags_text(f)),
            AttributeValue::ModSeq(m) => modseq = Some(*m),
            _ => {}
        }
    }
    (uid, flags, modseq)
}

/// UIDs by sequence number, run-length: runs of consecutive UIDs `(first_uid, len)`, in
/// sequence order (so also ascending by UID). A contiguous mailbox is one run, whatever its
/// size; each gap left by an expunge costs one more.
#[derive(Debug, Default)]
pub(crate) struct SeqMap {
    /// The runs; none is empty.
    runs: Vec<(u32, u32)>,
    /// Messages mapped: the sum of the runs' lengths.
    total: u32,
    /// The last run looked up and how many messages come before it (its first sequence
    /// number minus one), so that a storm of changes in ascending sequence order costs O(1)
    /// per change, not O(runs).
    hint: (usize, u32),
}

impl SeqMap {
    /// Messages mapped (sequence numbers `1..=len`).
    pub(crate) fn len(&self) -> u32 {
        self.total
    }

    /// Runs held (memory is proportional to this).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Records that `seq` holds `uid`. `false` when that contradicts what is known or leaves
    /// a gap (`seq` past the next one).
    pub(crate) fn place(&mut self, seq: u32, uid: u32) -> bool {
        if seq == 0 {
            return false;
        }
        if seq <= self.total {
            return self.uid(seq) == Some(uid);
        }
        if seq != self.total.saturating_add(1) {
            return false;
        }
        match self.runs.last_mut() {
            Some((first, len)) if first.checked_add(*len) == Some(uid) => *len += 1,
            Some((first, len)) if uid < first.saturating_add(*len) => return false,
            _ => self.runs.push((uid, 1)),
        }
        self.total += 1;
        true
    }

    /// The run holding `seq` and how many messages come before that run.
    fn locate(&mut self, seq: u32) -> Option<(usize, u32)> {
        if seq == 0 || seq > self.total {
            return None;
        }
        let (mut i, mut before) = self.hint;
        if i >= self.runs.len() || before >= seq {
            (i, before) = (0, 0);
        }
        // Each step passes a whole run; there are at most `runs.len()` of them.
        while let Some(&(_, len)) = self.runs.get(i) {
            if seq <= before.saturating_add(len) {
                self.hint = (i, before);
                return Some((i, before));
            }
            before = before.saturating_add(len);
            i += 1;
        }
        None
    }

    /// The UID at `seq`, when known.
    pub(crate) fn uid(&mut self, seq: u32) -> Option<u32> {
        let (i, before) = self.locate(seq)?;
        let (first, _) = *self.runs.get(i)?;
        Some(first + (seq - before - 1))
    }

    /// Removes `seq` (later messages move down by one); the UID it held, when known.
    pub(crate) fn expunge(&mut self, seq: u32) -> Option<u32> {
        let (i, before) = self.locate(seq)?;
        self.remove(i, before, seq - before - 1)
    }

    /// Removes the message with `uid`, wherever it sits; whether it was mapped.
    pub(crate) fn remove_uid(&mut self, uid: u32) -> bool {
        // Runs ascend by UID: the candidate is the last run starting at or below `uid`.
        let i = self.runs.partition_point(|&(first, _)| first <= uid);
        let Some(i) = i.checked_sub(1) else {
            return false;
        };
        let Some(&(first, len)) = self.runs.get(i) else {
            return false;
        };
        if uid - first >= len {
            return false;
        }
        let before = self.runs.iter().take(i).map(|&(_, l)| l).sum::<u32>();
        self.remove(i, before, uid - first).is_some()
    }

    /// Removes the message at `offset` in run `i` (`before` messages precede the run); its
    /// UID.
    fn remove(&mut self, i: usize, before: u32, offset: u32) -> Option<u32> {
        let &(first, len) = self.runs.get(i)?;
        if offset >= len {
            return None;
        }
        let uid = first + offset;
        if len == 1 {
            // Its neighbours cannot merge: `uid` lay between them.
            self.runs.remove(i);
        } else if offset == 0 {
            self.runs[i] = (first + 1, len - 1);
        } else if offset == len - 1 {
            self.runs[i].1 = len - 1;
        } else {
            self.runs[i].1 = offset;
            self.runs.insert(i + 1, (uid + 1, len - offset - 1));
        }
        self.total -= 1;
        if self.runs.capacity() > 4 * self.runs.len().max(8) {
            // Many runs expunged whole (a mailbox emptied): give the memory back.
            self.runs.shrink_to_fit();
        }
        // Run `i` (or the one now at `i`) still has `before` messages before it.
        self.hint = if i < self.runs.len() {
            (i, before)
        } else {
            (0, 0)
        };
        Some(uid)
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
