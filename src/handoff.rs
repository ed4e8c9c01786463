//! The hand-off between committers and the publisher: an in-memory queue of records already
//! committed to the outbox, plus a mark saying that the table holds records the queue does not.
//!
//! Mailbox tasks hand each committed record over without waiting ([`Handoff::committed`]); when
//! the queue is full the record stays in the table only and the publisher is sent there. The
//! queue is an optimisation: the outbox table is the source of truth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::store::OutboxRow;

/// Records queued between commit and publish; past this the publisher reads the table.
const QUEUE: usize = 4096;

/// The mailboxes' side of the hand-off: committed records go to the publisher at once.
#[derive(Debug, Clone)]
pub struct Handoff {
    queue: mpsc::Sender<OutboxRow>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The table may hold records that the queue does not.
    behind: AtomicBool,
    wake: Notify,
}

/// The publisher's side of the hand-off.
#[derive(Debug)]
pub struct Inbox {
    queue: mpsc::Receiver<OutboxRow>,
    shared: Arc<Shared>,
}

/// What [`Inbox::wait`] saw first.
#[derive(Debug)]
pub enum Wait {
    /// A queued record.
    Row(OutboxRow),
    /// The table holds records the queue does not.
    Poked,
    /// Every [`Handoff`] is gone.
    Closed,
}

/// A connected hand-off. The publisher starts by catching up on the table.
pub fn handoff() -> (Handoff, Inbox) {
    with_capacity(QUEUE)
}

/// [`handoff`] with room for `capacity` records (at least 1), for tests that overflow it.
pub fn with_capacity(capacity: usize) -> (Handoff, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        behind: AtomicBool::new(true),
        wake: Notify::new(),
    });
    (
        Handoff {
            queue: tx,
            shared: shared.clone(),
        },
        Inbox { queue: rx, shared },
    )
}

impl Handoff {
    /// A record just committed to the outbox. Never waits: when the queue is full the
    /// publisher reads the record from the table instead.
    pub fn committed(&self, row: OutboxRow) {
        if self.queue.try_send(row).is_err() {
            self.poke();
        }
    }

    /// The table holds records the queue does not: have the publisher read it.
    pub fn poke(&self) {
        self.shared.behind.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

impl Inbox {
    /// Whether the table may hold records the queue does not; clears the mark, for the caller
    /// is about to read the table.
    pub fn take_behind(&self) -> bool {
        self.shared.behind.swap(false, Ordering::SeqCst)
    }

    /// Whether the table may hold records the queue does not (the mark stays).
    pub fn is_behind(&self) -> bool {
        self.shared.behind.load(Ordering::SeqCst)
    }

    /// The table holds records the queue does not (a publish failed): read it next.
    pub fn mark_behind(&self) {
        self.shared.behind.store(true, Ordering::SeqCst);
    }

    /// Waits for a queued record or a poke, whichever comes first. Cancel-safe.
    pub async fn wait(&mut self) -> Wait {
        tokio::select! {
            row = self.queue.recv() => row.map_or(Wait::Closed, Wait::Row),
            _ = self.shared.wake.notified() => Wait::Poked,
        }
    }

    /// The next queued record, if one is waiting.
    pub fn try_recv(&mut self) -> Option<OutboxRow> {
        self.queue.try_recv().ok()
    }

    /// Drops everything queued (the table holds all of it).
    pub fn clear(&mut self) {
        while self.queue.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> OutboxRow {
        OutboxRow {
            id,
            account_id: "a".into(),
            mailbox: "INBOX".into(),
            topic: crate::changes::Topic::Sync,
            payload: "{}".into(),
            exists_at_us: None,
            created_at: 0,
        }
    }

    #[test]
    fn a_full_queue_sends_the_publisher_to_the_table() {
        let (h, mut inbox) = handoff();
        assert!(inbox.take_behind(), "starts behind");
        for id in 0..QUEUE as i64 {
            h.committed(row(id));
        }
        assert!(!inbox.shared.behind.load(Ordering::SeqCst));
        h.committed(row(-1));
        assert!(
            inbox.shared.behind.load(Ordering::SeqCst),
            "overflow marks the table"
        );
        assert_eq!(inbox.try_recv().map(|r| r.id), Some(0));
    }
}
