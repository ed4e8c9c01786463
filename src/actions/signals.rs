//! Wake-ups and completions of actions.
//!
//! - **Queued:** the API wakes the task holding the mailbox: a [`Notify`] per running mailbox
//!   task in this process; in cluster mode also `NOTIFY idlesync_actions` on PostgreSQL, which
//!   every replica LISTENs to and passes on to its own task, if it holds the mailbox. A wake-up
//!   is a hint: a task also reads its queue whenever it connects, so a lost one only delays.
//! - **Finished:** the task announces the action ids it finished, to requests waiting with
//!   `Prefer: wait` ([`Signals::finished`]); in cluster mode through the same channel, since
//!   the request may be waiting on another replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};

use crate::store::Store;

/// The PostgreSQL channel of action wake-ups and completions.
pub const ACTIONS_CHANNEL: &str = "idlesync_actions";

/// Completions kept for slow waiters before they must read the table again.
const FINISHED_BACKLOG: usize = 4096;

/// Shared by the API, the mailbox tasks and the LISTEN loop. Cheap to clone.
#[derive(Clone)]
pub struct Signals {
    inner: Arc<Inner>,
}

struct Inner {
    /// One [`Notify`] per mailbox task of this process, by (account, mailbox).
    wakers: Mutex<HashMap<(String, String), Arc<Notify>>>,
    /// Action ids finished (in this process or, in cluster mode, anywhere).
    finished: broadcast::Sender<i64>,
    /// Cluster mode: the store whose NOTIFY reaches the other replicas.
    cluster: Option<Store>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("cluster", &self.inner.cluster.is_some())
            .finish_non_exhaustive()
    }
}

impl Signals {
    /// Signals within one process; with `cluster`, also across replicas through PostgreSQL.
    pub fn new(cluster: Option<Store>) -> Self {
        Self {
            inner: Arc::new(Inner {
                wakers: Mutex::default(),
                finished: broadcast::channel(FINISHED_BACKLOG).0,
                cluster,
            }),
        }
    }

    /// The waker of a mailbox task (made on first use, kept across its restarts).
    pub fn waker(&self, account: &str, mailbox: &str) -> Arc<Notify> {
        let mut w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.entry((account.to_string(), mailbox.to_string()))
            .or_default()
            .clone()
    }

    /// Forgets a removed mailbox's waker.
    pub fn forget(&self, account: &str, mailbox: &str) {
        let mut w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.remove(&(account.to_string(), mailbox.to_string()));
    }

    /// Wakes these mailboxes' tasks: here at once, elsewhere through PostgreSQL.
    pub async fn queued(&self, account: &str, mailboxes: &[String]) {
        for m in mailboxes {
            self.wake_local(account, m);
        }
        if let Some(store) = &self.inner.cluster {
            for m in mailboxes {
                store
                    .notify(ACTIONS_CHANNEL, &format!("q\t{account}\t{m}"))
                    .await;
            }
        }
    }

    /// Announces finished actions.
    pub async fn finished(&self, ids: &[i64]) {
        for id in ids {
            let _ = self.inner.finished.send(*id);
        }
        if let Some(store) = &self.inner.cluster {
            for id in ids {
                store.notify(ACTIONS_CHANNEL, &format!("d\t{id}")).await;
            }
        }
    }

    /// A receiver of finished action ids; subscribe before reading the action's state, so
    /// that a completion between the two is not missed.
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.inner.finished.subscribe()
    }

    fn wake_local(&self, account: &str, mailbox: &str) {
        let w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get(&(account.to_string(), mailbox.to_string())) {
            n.notify_one();
        }
    }

    /// One payload of [`ACTIONS_CHANNEL`] from another replica (or this one).
    fn received(&self, payload: &str) {
        let mut parts = payload.split('\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("q"), Some(account), Some(mailbox)) => self.wake_local(account, mailbox),
            (Some("d"), Some(id), None) => {
                if let Ok(id) = id.parse() {
                    let _ = self.inner.finished.send(id);
                }
            }
            _ => tracing::debug!("ignored a malformed {ACTIONS_CHANNEL} payload"),
        }
    }

    /// Cluster mode: LISTENs on [`ACTIONS_CHANNEL`] until the process ends, reconnecting with
    /// a capped backoff. After each (re)connect every local task is woken once, since
    /// wake-ups sent meanwhile were lost.
    pub async fn listen(self, url: String) {
        let mut wait = Duration::from_millis(500);
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut l) => match l.listen(ACTIONS_CHANNEL).await {
                    Ok(()) => {
                        wait = Duration::from_millis(500);
                        self.wake_all();
                        while let Ok(Some(n)) = l.try_recv().await {
                            self.received(n.payload());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "actions: LISTEN failed"),
                },
                Err(e) => tracing::debug!(error = %e, "actions: cannot connect to LISTEN"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    fn wake_all(&self) {
        let w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for n in w.values() {
            n.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept() {
        let s = Signals::new(None);
        let w = s.waker("a", "INBOX");
        s.queued("a", &["INBOX".to_string()]).await;
        tokio::time::timeout(Duration::from_secs(1), w.notified())
            .await
            .expect("the permit was stored");
    }

    #[tokio::test]
    async fn payloads_from_other_replicas_wake_and_finish() {
        let s = Signals::new(None);
        let w = s.waker("acct", "Archive");
        let mut done = s.subscribe();
        s.received("q\tacct\tArchive");
        tokio::time::timeout(Duration::from_secs(1), w.notified())
            .await
            .expect("woken");
        s.received("d\t42");
        assert_eq!(done.recv().await.ok(), Some(42));
        s.received("garbage");
        s.received("d\tnot-a-number");
    }
}
