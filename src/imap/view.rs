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

use crate::changes::PendingChanges;

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
    /// UIDs by sequence number (index + 1), when changes arrive without UIDs. `None` under
    /// QRESYNC.
    seqs: Option<SeqMap>,
    /// Messages the server last said the mailbox holds.
    exists: u32,
    /// Changes seen and not yet applied.
    pub pending: PendingChanges,
    /// A change named a sequence number the map could not resolve: changes may have been
    /// missed, and the connection must catch up again before it is trusted.
    lost: bool,
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

    /// The message at `seq` has `uid` (from an enumeration or a fetched message).
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
                Absorbed::Exists(*n)
            }
            Response::Expunge(seq) => {
                self.exists = self.exists.saturating_sub(1);
                match self.seqs.as_mut().map(|m| m.expunge(*seq)) {
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
                for range in uids {
                    for uid in range.clone() {
                        self.pending.expunged(uid);
                        n += 1;
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
        let mut uid = None;
        let mut flags = None;
        let mut modseq = None;
        for a in attrs {
            match a {
                AttributeValue::Uid(u) => uid = Some(*u),
                AttributeValue::Flags(f) => flags = Some(f.join(" ")),
                AttributeValue::ModSeq(m) => modseq = Some(*m),
                _ => {}
            }
        }
        let Some(flags) = flags else {
            return Absorbed::Nothing;
        };
        let uid = match (uid, &self.seqs) {
            (Some(uid), _) => {
                self.place(seq, uid);
                Some(uid)
            }
            (None, Some(map)) => map.uid(seq),
            (None, None) => {
                self.lost = true;
                None
            }
        };
        match uid {
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

/// UIDs by sequence number.
// TODO(#11, imap helper): run-length (O(1) for contiguous UIDs), see the brief.
#[derive(Debug, Default)]
struct SeqMap {
    uids: Vec<u32>,
}

impl SeqMap {
    /// Records that `seq` holds `uid`. `false` when that contradicts what is known.
    fn place(&mut self, seq: u32, uid: u32) -> bool {
        let i = seq as usize;
        match i.cmp(&(self.uids.len() + 1)) {
            std::cmp::Ordering::Equal => {
                if self.uids.last().is_some_and(|last| *last >= uid) {
                    return false;
                }
                self.uids.push(uid);
                true
            }
            std::cmp::Ordering::Less => i > 0 && self.uids[i - 1] == uid,
            std::cmp::Ordering::Greater => false,
        }
    }

    /// The UID at `seq`, when known.
    fn uid(&self, seq: u32) -> Option<u32> {
        self.uids.get((seq as usize).checked_sub(1)?).copied()
    }

    /// Removes `seq`; the UID it held, when known.
    fn expunge(&mut self, seq: u32) -> Option<u32> {
        let i = (seq as usize).checked_sub(1)?;
        (i < self.uids.len()).then(|| self.uids.remove(i))
    }
}
