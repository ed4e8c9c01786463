//! Cluster mode (#13): replicas' heartbeats (`cluster_nodes`) and one lease per mailbox
//! (`mailbox_leases`), PostgreSQL only. Expiry is always judged by the database's `now()`.
//!
//! A lease is `(owner, epoch, expires_at)`. Taking a free or expired lease bumps the epoch;
//! every write for the mailbox ([`Store::commit_batch`], [`Store::apply_changes`],
//! [`Store::start_epoch`]) made through a [`Store::fenced`] store checks, inside its own
//! transaction and before writing, that the lease is still `(node, epoch)` and unexpired, and
//! holds it `FOR SHARE` until COMMIT, so a takeover waits for a commit in flight and never
//! overlaps it. A miss rolls back with [`StoreError::Fenced`] and is counted in
//! `idlesync_fencing_rejections_total`.
//!
//! Replicas are woken by `NOTIFY` on [`CLUSTER_CHANNEL`] when leases are released or a replica
//! joins; that is only a hint, the rows decide.

use std::sync::Arc;
use std::time::Duration;

use super::{OutboxRow, Store, StoreError};

/// `LISTEN`/`NOTIFY` channel: a replica joined or released leases. A hint only.
pub const CLUSTER_CHANNEL: &str = "idlesync_cluster";

/// A mailbox task's licence to write: its replica and the lease epoch it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// This replica's `node_id`.
    pub node: Arc<str>,
    /// The lease epoch taken.
    pub epoch: i64,
}

/// A lease this replica holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    /// Account id.
    pub account_id: String,
    /// Mailbox name.
    pub mailbox: String,
    /// Epoch it was taken at.
    pub epoch: i64,
}

/// Why a lease taken had been held before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeoverReason {
    /// Its owner stopped renewing it (died, paused, cut off).
    Expired,
    /// Its owner released it (SIGTERM, handover to a joining replica, reload).
    Released,
}

impl TakeoverReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverReason::Expired => "expired",
            TakeoverReason::Released => "released",
        }
    }
}

/// A lease just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The lease, at its new epoch.
    pub lease: Lease,
    /// `Some` when another replica (or an earlier run of this one) had held it: epoch was > 0
    /// before.
    pub takeover: Option<Takeover>,
}

/// A takeover of a lease held before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    /// How it had become free.
    pub reason: TakeoverReason,
    /// How long it had been without an owner (database clock): from its expiry or release to
    /// this acquisition, in ms (0 when not positive).
    pub unowned_ms: i64,
    /// Previous owner was a different node.
    pub from_other: bool,
}

/// The cluster as this replica sees it in one query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Live replicas (`expires_at > now()`), this one included when live, sorted by node id.
    pub live: Vec<String>,
    /// ms until the soonest expiry of another live replica (when its leases become takeable,
    /// should it be dead), if any.
    pub next_expiry_ms: Option<i64>,
    /// Leases that are free or expired now.
    pub free: i64,
    /// Of those, the ones free or expired for at least the `stale_ms` asked for.
    pub stale_free: i64,
}

/// One replica, for `/status/summary`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    /// Its node id.
    pub node_id: String,
    /// Whether its heartbeat is current.
    pub live: bool,
    /// Unexpired leases it holds.
    pub leases: i64,
    /// ms since its last heartbeat.
    pub heartbeat_age_ms: i64,
}

impl Store {
    /// This store, but every mailbox write through it checks `fence` first (see the module
    /// doc). The supervisor gives each mailbox task of a replica in cluster mode its own.
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            fence: Some(Arc::new(fence)),
            ..self.clone()
        }
    }

    /// The fence this store's writes check, if any.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_deref()
    }

    /// Creates the missing lease rows (free, epoch 0) of these mailboxes. Existing rows are
    /// left alone. Any number of keys (chunked).
    pub async fn ensure_leases(&self, keys: &[(String, String)]) -> Result<(), StoreError> {
        let _ = keys;
        todo!()
    }

    /// Deletes the lease rows of mailboxes no longer configured, when free, expired or this
    /// node's (reload removed them).
    pub async fn forget_leases(
        &self,
        node: &str,
        keys: &[(String, String)],
    ) -> Result<(), StoreError> {
        let _ = (node, keys);
        todo!()
    }

    /// Heartbeat and renewal, one atomic statement: upserts `node`'s row with
    /// `expires_at = now() + ttl` and sets the same `expires_at` on every lease `node` owns
    /// (expired ones too: nobody took them, or their owner would not be `node`). Returns the
    /// leases `node` holds afterwards. The first call also joins (and NOTIFYs).
    pub async fn renew(&self, node: &str, ttl: Duration) -> Result<Vec<Lease>, StoreError> {
        let _ = (node, ttl);
        todo!()
    }

    /// Live replicas and what is free (see [`Membership`]).
    pub async fn membership(&self, node: &str, stale_ms: i64) -> Result<Membership, StoreError> {
        let _ = (node, stale_ms);
        todo!()
    }

    /// Takes up to `limit` leases among `keys` that are free or expired (for at least
    /// `min_free_ms`), `FOR UPDATE SKIP LOCKED` so that replicas taking at once never block or
    /// take the same one: owner `node`, epoch + 1, `expires_at = now() + ttl`. In key order.
    pub async fn acquire(
        &self,
        node: &str,
        keys: &[(String, String)],
        limit: usize,
        min_free_ms: i64,
        ttl: Duration,
    ) -> Result<Vec<Acquired>, StoreError> {
        let _ = (node, keys, limit, min_free_ms, ttl);
        todo!()
    }

    /// Frees these leases where they are still `node`'s at their epoch (owner NULL,
    /// `expires_at = now()`), then NOTIFYs. Returns how many were freed.
    pub async fn release(&self, node: &str, leases: &[Lease]) -> Result<u64, StoreError> {
        let _ = (node, leases);
        todo!()
    }

    /// Leaves the cluster: frees every lease of `node`, deletes its row, NOTIFYs.
    pub async fn leave(&self, node: &str) -> Result<u64, StoreError> {
        let _ = node;
        todo!()
    }

    /// `(account_id, mailbox, owner)` of every unexpired lease, for `/status`.
    pub async fn lease_owners(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        todo!()
    }

    /// Every replica row, live or not (ordered by node id), with its unexpired leases.
    pub async fn cluster_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        todo!()
    }

    /// Outbox records of the mailboxes whose lease `node` holds unexpired, in publication
    /// order: what a replica's publisher drains in cluster mode, including records that a dead
    /// owner committed but never published.
    pub async fn outbox_pending_owned(
        &self,
        node: &str,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let _ = (node, limit);
        todo!()
    }
}
