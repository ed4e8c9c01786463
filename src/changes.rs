//! Changes to messages already in a mailbox: flags set or cleared, messages expunged. The IMAP
//! side collects them ([`PendingChanges`]) from IDLE, FETCH and SELECT; the store applies them
//! a batch at a time ([`ChangeSet`]) and announces what actually changed on
//! [`Topic::Changes`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// Which Redis channel a committed record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topic {
    /// `redis.channel` (`email:sync`): new mail and `mailboxReset`, what the web app's badge
    /// counts.
    #[default]
    Sync,
    /// `redis.changes_channel` (`email:changes`): `flagsChanged`, `messagesExpunged`,
    /// `imported`.
    Changes,
}

impl Topic {
    /// The value kept in `outbox.topic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Sync => "sync",
            Topic::Changes => "changes",
        }
    }

    /// Reads `outbox.topic`; anything unknown is [`Topic::Sync`], what every row was before
    /// the column existed.
    pub fn parse(s: &str) -> Topic {
        match s {
            "changes" => Topic::Changes,
            _ => Topic::Sync,
        }
    }
}

/// `storage.expunged`: what becomes of a row whose message left the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpungeMode {
    /// The row stays, marked with `expunged_at` (a CRM keeps its history).
    #[default]
    Keep,
    /// The row, its attachments and its raw copy are removed.
    Delete,
}

/// One message's flags as the server reports them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    /// UID in the selected mailbox.
    pub uid: u32,
    /// Every flag the message has now, space-separated as `messages.flags` keeps them.
    pub flags: String,
    /// The message's MODSEQ, where the server has CONDSTORE.
    pub modseq: Option<u64>,
}

/// Changes to apply to one mailbox in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Ascending by UID, one entry per UID, none for a UID in `expunged`.
    pub flags: Vec<FlagUpdate>,
    /// Ascending, without duplicates.
    pub expunged: Vec<u32>,
    /// The mailbox's HIGHESTMODSEQ once these changes are applied, when known; persisted in
    /// the same transaction.
    pub highest_modseq: Option<u64>,
}

impl ChangeSet {
    /// Nothing to write (not even a new HIGHESTMODSEQ).
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty() && self.expunged.is_empty() && self.highest_modseq.is_none()
    }

    /// Changed messages, flags and expunges together.
    pub fn len(&self) -> usize {
        self.flags.len() + self.expunged.len()
    }
}

/// Changes seen on a connection and not yet applied. A later report for a UID replaces an
/// earlier one; an expunge cancels a flag change. Empty, it holds no heap memory.
#[derive(Debug, Default)]
pub struct PendingChanges {
    flags: BTreeMap<u32, (String, Option<u64>)>,
    expunged: BTreeSet<u32>,
    highest_modseq: Option<u64>,
}

impl PendingChanges {
    /// A message's flags now.
    pub fn flags(&mut self, uid: u32, flags: String, modseq: Option<u64>) {
        if self.expunged.contains(&uid) {
            return;
        }
        if let Some(m) = modseq {
            self.modseq_seen(m);
        }
        self.flags.insert(uid, (flags, modseq));
    }

    /// A message's flags as an enumeration saw them, unless the server reported them since
    /// (a report pushed during the enumeration is newer than its snapshot) or the message
    /// was expunged meanwhile.
    pub fn flags_if_unreported(&mut self, uid: u32, flags: String) {
        if !self.expunged.contains(&uid) {
            self.flags.entry(uid).or_insert((flags, None));
        }
    }

    /// A message left the mailbox.
    pub fn expunged(&mut self, uid: u32) {
        self.flags.remove(&uid);
        self.expunged.insert(uid);
    }

    /// Forgets a flag report for `uid`: its message was just fetched whole, with newer flags.
    pub fn forget_flags(&mut self, uid: u32) {
        self.flags.remove(&uid);
    }

    /// The mailbox's HIGHESTMODSEQ is at least `modseq` once everything pending is applied.
    pub fn modseq_seen(&mut self, modseq: u64) {
        self.highest_modseq = Some(self.highest_modseq.map_or(modseq, |h| h.max(modseq)));
    }

    /// Messages waiting (flags and expunges).
    pub fn len(&self) -> usize {
        self.flags.len() + self.expunged.len()
    }

    /// Nothing waits, not even a HIGHESTMODSEQ.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty() && self.expunged.is_empty() && self.highest_modseq.is_none()
    }

    /// Takes up to `max` changed messages as one batch, lowest UIDs first. The HIGHESTMODSEQ
    /// goes with the batch that empties the queue, so it is only persisted once every change
    /// it covers is.
    pub fn take_batch(&mut self, max: usize) -> ChangeSet {
        let mut set = ChangeSet::default();
        while set.expunged.len() < max {
            let Some(uid) = self.expunged.pop_first() else {
                break;
            };
            set.expunged.push(uid);
        }
        while set.len() < max {
            let Some((uid, (flags, modseq))) = self.flags.pop_first() else {
                break;
            };
            set.flags.push(FlagUpdate { uid, flags, modseq });
        }
        if self.flags.is_empty() && self.expunged.is_empty() {
            set.highest_modseq = self.highest_modseq.take();
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_reports_win_and_expunge_cancels_flags() {
        let mut p = PendingChanges::default();
        p.flags(5, "\\Seen".into(), Some(10));
        p.flags(5, "\\Seen \\Flagged".into(), Some(12));
        p.flags(6, String::new(), None);
        p.expunged(6);
        p.flags(6, "\\Seen".into(), None);
        p.flags(7, "\\Seen".into(), Some(11));
        p.forget_flags(7);
        let set = p.take_batch(100);
        assert_eq!(
            set.flags,
            vec![FlagUpdate {
                uid: 5,
                flags: "\\Seen \\Flagged".into(),
                modseq: Some(12)
            }]
        );
        assert_eq!(set.expunged, vec![6]);
        assert_eq!(set.highest_modseq, Some(12));
        assert!(p.is_empty());
    }

    #[test]
    fn batches_are_bounded_and_modseq_goes_last() {
        let mut p = PendingChanges::default();
        for uid in 1..=5 {
            p.flags(uid, "\\Seen".into(), Some(u64::from(uid)));
        }
        p.expunged(9);
        let first = p.take_batch(4);
        assert_eq!((first.expunged.len(), first.flags.len()), (1, 3));
        assert_eq!(first.highest_modseq, None, "changes still wait");
        let second = p.take_batch(4);
        assert_eq!(second.flags.len(), 2);
        assert_eq!(second.highest_modseq, Some(5));
        assert!(p.take_batch(4).is_empty());
    }

    #[test]
    fn topic_round_trips() {
        for t in [Topic::Sync, Topic::Changes] {
            assert_eq!(Topic::parse(t.as_str()), t);
        }
        assert_eq!(Topic::parse(""), Topic::Sync);
    }
}
