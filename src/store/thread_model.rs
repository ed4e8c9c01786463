//! The in-memory side of thread assignment: a thread's aggregates, and the grouping of a
//! batch's rows.

use std::collections::BTreeSet;

use crate::message::address::{self, Addr};
use crate::message::MessageRecord;

/// Most participants kept per thread (first seen first).
const MAX_PARTICIPANTS: usize = 50;

/// A `threads` row being computed.
#[derive(Debug, Clone)]
pub(super) struct Thread {
    /// `threads.id`: the `messages.id` of the message that started it.
    pub(super) id: i64,
    /// Subject of the earliest message.
    pub(super) subject: Option<String>,
    /// Normalized subject, for opt-in subject threading.
    pub(super) subject_key: String,
    /// Earliest Date (or INTERNALDATE) seen; decides whose subject the thread shows.
    pub(super) started_at: Option<i64>,
    /// Newest INTERNALDATE; the inbox sorts by it. `i64::MIN` until a message is added.
    pub(super) last_message_at: i64,
    /// Distinct messages (a second placement of a Message-ID is not counted).
    pub(super) message_count: i64,
    /// Of those, the ones without `\Seen` at fetch time.
    pub(super) unread_count: i64,
    /// Distinct senders, first seen first, at most [`MAX_PARTICIPANTS`].
    pub(super) participants: Vec<Addr>,
}

impl Thread {
    pub(super) fn new(id: i64) -> Thread {
        Thread {
            id,
            subject: None,
            subject_key: String::new(),
            started_at: None,
            last_message_at: i64::MIN,
            message_count: 0,
            unread_count: 0,
            participants: Vec::new(),
        }
    }

    /// Adds a message. `counted` is false for a second placement of a Message-ID already in
    /// the thread: it changes the dates, not the counts.
    pub(super) fn add(&mut self, rec: &MessageRecord, counted: bool, now: i64) {
        self.last_message_at = self.last_message_at.max(rec.timestamp_ms().unwrap_or(now));
        // The subject is the earliest message's (a reply arriving first gives way to its
        // parent), or any subject at all while the thread has none.
        let start = rec.sent_at_ms.or(rec.received_at_ms).unwrap_or(now);
        let earlier = self.started_at.is_none_or(|s| start < s);
        if rec.subject.is_some() && (earlier || self.subject.is_none()) {
            self.subject = rec.subject.clone();
            self.subject_key = rec.subject_key.clone();
        }
        if earlier {
            self.started_at = Some(start);
        }
        if counted {
            self.message_count += 1;
            if !rec.is_seen() {
                self.unread_count += 1;
            }
        }
        self.add_participants(address::from_json(&rec.from));
    }

    /// Folds a merged thread into this one.
    pub(super) fn absorb(&mut self, other: Thread) {
        self.last_message_at = self.last_message_at.max(other.last_message_at);
        let earlier = match (other.started_at, self.started_at) {
            (Some(o), Some(s)) => o < s,
            (Some(_), None) => true,
            _ => false,
        };
        if (earlier && other.subject.is_some()) || self.subject.is_none() {
            self.subject = other.subject;
            self.subject_key = other.subject_key;
        }
        self.started_at = match (self.started_at, other.started_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.message_count += other.message_count;
        self.unread_count += other.unread_count;
        self.add_participants(other.participants);
    }

    fn add_participants(&mut self, list: Vec<Addr>) {
        for a in list {
            if self.participants.len() >= MAX_PARTICIPANTS {
                return;
            }
            let key = |x: &Addr| {
                x.address
                    .as_deref()
                    .or(x.name.as_deref())
                    .unwrap_or("")
                    .to_lowercase()
            };
            let k = key(&a);
            if !k.is_empty() && !self.participants.iter().any(|p| key(p) == k) {
                self.participants.push(a);
            }
        }
    }
}

/// Disjoint sets over the batch's new rows: the parent index of each row.
pub(super) struct UnionFind(pub(super) Vec<usize>);

impl UnionFind {
    pub(super) fn find(&mut self, mut i: usize) -> usize {
        while let Some(&p) = self.0.get(i) {
            if p == i {
                break;
            }
            let gp = self.0.get(p).copied().unwrap_or(p);
            if let Some(slot) = self.0.get_mut(i) {
                *slot = gp;
            }
            i = p;
        }
        i
    }

    pub(super) fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        let (lo, hi) = (ra.min(rb), ra.max(rb));
        if let Some(slot) = self.0.get_mut(hi) {
            *slot = lo;
        }
    }
}

/// One connected group of new rows and the existing threads they link to.
#[derive(Debug, Default)]
pub(super) struct Group {
    /// Indexes into the batch's new rows.
    pub(super) rows: Vec<usize>,
    /// Existing threads the rows link to; the lowest survives, the others merge into it.
    pub(super) threads: BTreeSet<i64>,
}
