//! Cluster mode (#13): several replicas share one account list; each mailbox is watched by the
//! one replica holding its lease in PostgreSQL ([`crate::store`]'s `mailbox_leases`).
//!
//! The [`Cluster`] loop of a replica, one tick at a time (every `renew_every`, at the next
//! expiry of another replica's heartbeat, on a `NOTIFY` hint, when a mailbox was fenced, after
//! a reload):
//! 1. lease rows exist for every configured mailbox (and go for removed ones);
//! 2. heartbeat and renewal, one statement; a lease it thought it held but no longer does
//!    (it was paused past `lease_ttl` and another replica took it) is dropped: DONE, LOGOUT;
//! 3. membership: the live replicas, hence this one's target ([`share::target`]);
//! 4. surplus over the target (a replica joined) is handed over: the mailboxes stop (DONE,
//!    LOGOUT) and only then are their leases released, so two replicas never IDLE on one
//!    mailbox; below the ceiling only when another replica is short of its floor;
//! 5. free or expired leases are taken up to the target (not in the first moments after
//!    joining: [`JOIN_WINDOW`]), and mailboxes start under them. The
//!    publisher is first sent back to the table, so that records a dead owner committed but
//!    never published go out before the new owner's, in order.
//!
//! If renewing fails (the database is unreachable), it stops every mailbox at
//! `renewed_at + lease_ttl - margin` by its own clock, whatever its store calls are doing
//! (each is capped at that deadline, see [`timing`]): after it another replica that can reach
//! the database may take them. Writes are fenced anyway (the store checks the lease in each transaction);
//! this keeps IDLE single as well. On shutdown: mailboxes stop, the publisher drains, then
//! [`Cluster::leave`] releases everything, so the others take over at once.

mod heartbeat;
mod listen;
pub mod share;
pub mod timing;

pub use heartbeat::Heartbeat;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ClusterConfig;
use crate::handoff::Handoff;
use crate::store::{Lease, Store, StoreError};
use crate::supervisor::{ClusterLink, Key, Supervisor};

/// Woken this long after another replica's heartbeat expires, so its leases are takeable.
const EXPIRY_SLACK: Duration = Duration::from_millis(20);
/// Soonest next tick, whatever the hints say.
const MIN_TICK: Duration = Duration::from_millis(100);
/// A replica takes no lease for this long after it first joined (or `renew_every`, if
/// shorter): replicas started together (a cold start of the whole deployment) then see each
/// other before taking, instead of the first one taking every mailbox, connecting to all of
/// them and handing two thirds over again a moment later.
const JOIN_WINDOW: Duration = Duration::from_secs(2);

/// A replica's side of cluster mode.
pub struct Cluster {
    node: Arc<str>,
    cfg: ClusterConfig,
    /// The storage URL, for [`Cluster::own`].
    url: String,
    /// The lease loop's own connection (a pool of one), made on first use: renewals never
    /// wait behind mailbox traffic on the shared pool (#22).
    own: Option<Store>,
    handoff: Handoff,
    /// Leases held, with the epoch their mailbox's writes are fenced with.
    held: BTreeMap<Key, i64>,
    /// Lease rows this replica made sure exist.
    ensured: BTreeSet<Key>,
    /// When the last successful renewal was sent (this replica's monotonic clock).
    renewed_at: Option<Instant>,
    heartbeat: Arc<Heartbeat>,
    /// When this replica's first renewal succeeded.
    joined_at: Option<Instant>,
    /// Its share at the last round ([`share::target`]), for readiness.
    target: usize,
    next: Instant,
    /// The last round's start plus [`MIN_TICK`]: the soonest the next may begin.
    earliest: Instant,
    hint: Arc<Notify>,
    lost: mpsc::UnboundedReceiver<Key>,
    /// Mailboxes whose task reported its lease lost, not yet handled.
    fenced: Vec<Key>,
    listener: JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Cluster {
    /// The loop's state and what the supervisor needs to fence its mailboxes. `url` is the
    /// storage URL, for the `LISTEN` connection and the loop's own connection (renewals do
    /// not share the mailboxes' pool).
    pub fn new(cfg: &ClusterConfig, url: &str, handoff: Handoff) -> (Cluster, ClusterLink) {
        let node: Arc<str> = cfg.node_id().into();
        let (lost_tx, lost) = mpsc::unbounded_channel();
        let hint = Arc::new(Notify::new());
        let listener = tokio::spawn(listen::listen(url.to_string(), hint.clone()));
        let link = ClusterLink {
            node: node.clone(),
            lost: lost_tx,
        };
        metrics::gauge!(crate::metrics::LEASES_HELD).set(0.0);
        metrics::counter!(crate::metrics::FENCING_REJECTIONS).absolute(0);
        for reason in ["expired", "released"] {
            metrics::counter!(crate::metrics::LEASE_TAKEOVERS, "reason" => reason).absolute(0);
        }
        let cluster = Cluster {
            node,
            cfg: cfg.clone(),
            url: url.to_string(),
            own: None,
            handoff,
            held: BTreeMap::new(),
            ensured: BTreeSet::new(),
            renewed_at: None,
            heartbeat: Arc::new(Heartbeat {
                renewed: Default::default(),
                ttl: cfg.lease_ttl,
                took: Default::default(),
            }),
            joined_at: None,
            target: usize::MAX,
            next: Instant::now(),
            earliest: Instant::now(),
            hint,
            lost,
            fenced: Vec::new(),
            listener,
        };
        (cluster, link)
    }

    /// What `/readyz` checks.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// Waits until the next tick is due: its time, a `NOTIFY` from another replica, or a
    /// mailbox reporting its lease lost.
    /// Never sooner than [`MIN_TICK`] after the last round began, whatever the hints say: a
    /// round that releases a lease NOTIFYs every replica, itself included (#22).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.next) => {}
            _ = self.hint.notified() => {}
            Some(key) = self.lost.recv() => self.fenced.push(key),
        }
        // ... except the renewal deadline, which is never late.
        let earliest = self
            .deadline()
            .map_or(self.earliest, |d| d.min(self.earliest));
        tokio::time::sleep_until(earliest).await;
    }

    /// One round: renew, rebalance, take. Never fails: what fails is logged and retried at
    /// the next tick.
    pub async fn tick(&mut self, sup: &mut Supervisor) {
        let started = Instant::now();
        self.earliest = started + MIN_TICK;
        self.next = started + self.cfg.renew_every;
        let mut fenced = std::mem::take(&mut self.fenced);
        while let Ok(key) = self.lost.try_recv() {
            fenced.push(key);
        }
        for key in &fenced {
            self.held.remove(key);
        }
        if !fenced.is_empty() {
            sup.hand_off(&fenced).await;
        }
        if self.lapsed() {
            self.drop_all(sup).await;
        }
        let result = self.round(sup, started).await;
        if result.is_ok() {
            let waited = self
                .joined_at
                .is_some_and(|t| t.elapsed() >= self.cfg.lease_ttl + self.cfg.renew_every);
            if self.held.len() >= self.target || waited {
                self.heartbeat
                    .took
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), kind = e.kind(), "cluster: lease round failed");
            self.next = started + self.cfg.renew_every.min(Duration::from_secs(1));
            if self.lapsed() {
                self.drop_all(sup).await;
            }
        }
        metrics::gauge!(crate::metrics::LEASES_HELD).set(self.held.len() as f64);
        self.next = self.next.max(Instant::now() + MIN_TICK);
        if let Some(d) = self.deadline() {
            self.next = self.next.min(d);
        }
    }

    /// The lease loop's own connection, connected on first use (within the call budget).
    async fn own(&mut self) -> Result<Store, StoreError> {
        if let Some(s) = &self.own {
            return Ok(s.clone());
        }
        let cfg = crate::config::StorageConfig {
            url: self.url.clone(),
            max_connections: 1,
            ..Default::default()
        };
        // As the shared pool (daemon.rs): a paused lease transaction cannot keep rows locked.
        let idle_tx = (self.cfg.lease_ttl / 3).max(Duration::from_millis(200));
        let s = call(self.limit(), Store::connect_with(&cfg, Some(idle_tx))).await?;
        self.own = Some(s.clone());
        Ok(s)
    }

    /// When this replica must have stopped its mailboxes unless it renews first:
    /// `renewed_at + lease_ttl - margin`; `None` while it holds nothing.
    fn deadline(&self) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        let ttl = self.cfg.lease_ttl;
        // Held leases imply a renewal; without one, the deadline is now.
        Some(
            self.renewed_at
                .map_or_else(Instant::now, |t| t + ttl - timing::margin(ttl)),
        )
    }

    /// The deadline passed (with leases held).
    fn lapsed(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// The budget of the next store call: [`timing::call_timeout`], capped at the deadline.
    fn limit(&self) -> Duration {
        let budget = timing::call_timeout(self.cfg.lease_ttl, self.cfg.renew_every);
        match self.deadline() {
            Some(d) => budget.min(d.saturating_duration_since(Instant::now())),
            None => budget,
        }
    }

    /// Not renewed in time: every mailbox stops (DONE, LOGOUT), since another replica may own
    /// them by now.
    async fn drop_all(&mut self, sup: &mut Supervisor) {
        let keys: Vec<Key> = self.held.keys().cloned().collect();
        tracing::warn!(
            mailboxes = keys.len(),
            "cluster: leases not renewed within lease_ttl; dropping every mailbox \
             (another replica may own them by now)"
        );
        sup.hand_off(&keys).await;
        self.held.clear();
    }

    async fn round(&mut self, sup: &mut Supervisor, started: Instant) -> Result<(), StoreError> {
        let store = self.own().await?;
        let configured = sup.mailboxes();
        self.sync_rows(&store, &configured).await?;

        // Renewal and heartbeat.
        let renewed = call(self.limit(), store.renew(&self.node, self.cfg.lease_ttl)).await?;
        self.renewed_at = Some(started);
        self.heartbeat.set(started);
        let joined_at = *self.joined_at.get_or_insert(started);
        let ours: BTreeMap<Key, i64> = renewed
            .into_iter()
            .map(|l| ((l.account_id, l.mailbox), l.epoch))
            .collect();
        let lost: Vec<Key> = self
            .held
            .iter()
            .filter(|(k, e)| ours.get(*k) != Some(*e))
            .map(|(k, _)| k.clone())
            .collect();
        if !lost.is_empty() {
            tracing::warn!(
                mailboxes = lost.len(),
                "cluster: leases taken by another replica while this one was away; dropping them"
            );
            sup.hand_off(&lost).await;
            for k in &lost {
                self.held.remove(k);
            }
        }
        // Owned in the table but not running here (an earlier run under the same node id, a
        // release that failed): released, then taken again like any other, with a new epoch.
        let strays: Vec<Lease> = ours
            .iter()
            .filter(|(k, _)| !self.held.contains_key(*k))
            .map(|((a, m), e)| lease(a, m, *e))
            .collect();
        if !strays.is_empty() {
            call(self.limit(), store.release(&self.node, &strays)).await?;
        }

        // Membership and this replica's target.
        let stale_ms = millis(self.cfg.renew_every) * 2;
        let members = call(self.limit(), store.membership(&self.node, stale_ms)).await?;
        metrics::gauge!(crate::metrics::CLUSTER_NODES).set(members.live.len() as f64);
        metrics::gauge!(crate::metrics::LEASES_FREE).set(members.free as f64);
        let total = configured.len();
        let target = share::target(total, &members.live, &self.node);
        let ceil = share::ceil_share(total, members.live.len());
        self.target = target;
        if let Some(ms) = members.next_expiry_ms {
            let at = Instant::now() + Duration::from_millis(ms.max(0) as u64) + EXPIRY_SLACK;
            self.next = self.next.min(at);
        }

        // Surplus: hand over, then release. Beyond the ceiling always (a replica joined);
        // between target and ceiling only while another replica holds less than its floor
        // and so wants it. Replicas that see different configs (a ConfigMap that reaches pods
        // a minute apart) disagree on the targets; a lease one took because nobody else would
        // (the stale path below) then stays, instead of going back and forth (#22).
        let floor = total / members.live.len().max(1);
        let wanted = members
            .fewest_elsewhere
            .is_some_and(|n| usize::try_from(n).unwrap_or(0) < floor);
        if self.held.len() > ceil || (self.held.len() > target && wanted) {
            let surplus: Vec<Key> = self
                .held
                .keys()
                .rev()
                .take(self.held.len() - target)
                .cloned()
                .collect();
            tracing::info!(
                count = surplus.len(),
                target,
                "cluster: handing mailboxes over to other replicas"
            );
            sup.hand_off(&surplus).await;
            let leases: Vec<Lease> = surplus
                .iter()
                .filter_map(|k| Some(lease(&k.0, &k.1, self.held.remove(k)?)))
                .collect();
            call(self.limit(), store.release(&self.node, &leases)).await?;
            return Ok(());
        }

        // Take up to the target; beyond it, up to the ceiling, only leases nobody took for a
        // while (replicas that disagree on the membership, or on the config, for a moment).
        let mut want = target.saturating_sub(self.held.len());
        let mut min_free_ms = 0;
        if want == 0 && self.held.len() < ceil && members.stale_free > 0 {
            want = ceil - self.held.len();
            min_free_ms = stale_ms;
        } else if members.free == 0 {
            want = 0;
        }
        if want == 0 {
            return Ok(());
        }
        let window = JOIN_WINDOW.min(self.cfg.renew_every);
        if joined_at.elapsed() < window {
            self.next = self.next.min(joined_at + window);
            return Ok(());
        }
        let candidates: Vec<Key> = configured
            .into_iter()
            .filter(|k| !self.held.contains_key(k))
            .collect();
        let acquired = call(
            self.limit(),
            store.acquire(
                &self.node,
                &candidates,
                want,
                min_free_ms,
                self.cfg.lease_ttl,
            ),
        )
        .await?;
        if acquired.is_empty() {
            return Ok(());
        }
        // Records a previous owner committed but never published go out first.
        self.handoff.poke();
        let mut refused = Vec::new();
        for a in acquired {
            let key = (a.lease.account_id.clone(), a.lease.mailbox.clone());
            if let Some(t) = a.takeover {
                metrics::counter!(crate::metrics::LEASE_TAKEOVERS, "reason" => t.reason.as_str())
                    .increment(1);
                metrics::histogram!(crate::metrics::LEASE_TAKEOVER_SECONDS)
                    .record(t.unowned_ms as f64 / 1000.0);
            }
            if sup.take(&key, a.lease.epoch) {
                self.held.insert(key, a.lease.epoch);
            } else {
                refused.push(a.lease);
            }
        }
        if !refused.is_empty() {
            call(self.limit(), store.release(&self.node, &refused)).await?;
        }
        if self.held.len() < target {
            // Others were taking at the same moment (SKIP LOCKED): look again soon.
            self.next = self.next.min(Instant::now() + MIN_TICK * 2);
        }
        Ok(())
    }

    /// Lease rows for mailboxes added to the config; rows of removed ones go (and their
    /// leases, if held, were stopped by the supervisor's reload).
    async fn sync_rows(&mut self, store: &Store, configured: &[Key]) -> Result<(), StoreError> {
        let now: BTreeSet<Key> = configured.iter().cloned().collect();
        let added: Vec<Key> = now.difference(&self.ensured).cloned().collect();
        let removed: Vec<Key> = self.ensured.difference(&now).cloned().collect();
        if !added.is_empty() {
            call(self.limit(), store.ensure_leases(&added)).await?;
        }
        if !removed.is_empty() {
            for k in &removed {
                self.held.remove(k);
            }
            call(self.limit(), store.forget_leases(&self.node, &removed)).await?;
        }
        self.ensured = now;
        Ok(())
    }

    /// Shutdown, after the mailboxes stopped and the publisher drained: every lease is
    /// released and this replica leaves `cluster_nodes`, so the others take over at once.
    pub async fn leave(self) {
        // The mailboxes have stopped: no deadline, only the budget.
        let budget = timing::call_timeout(self.cfg.lease_ttl, self.cfg.renew_every);
        let left = match &self.own {
            Some(store) => call(budget, store.leave(&self.node)).await,
            None => Err(StoreError::Db(sqlx::Error::PoolClosed)),
        };
        match left {
            Ok(n) => tracing::info!(released = n, node = %self.node, "cluster: left"),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cluster: could not release leases; they expire after lease_ttl"
            ),
        }
        metrics::gauge!(crate::metrics::LEASES_HELD).set(0.0);
    }
}

fn lease(account: &str, mailbox: &str, epoch: i64) -> Lease {
    Lease {
        account_id: account.to_string(),
        mailbox: mailbox.to_string(),
        epoch,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A store call bounded by `limit` (see [`Cluster::limit`]).
async fn call<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolTimedOut)))
}
