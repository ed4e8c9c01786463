//! Fencing (#13): a mailbox task's writes checked against its lease, inside each write's own
//! transaction. [`Store::commit_batch`], [`Store::apply_changes`] and [`Store::start_epoch`]
//! begin with [`Store::fence_check`] when the store is [`Store::fenced`]; without a fence
//! (single-node mode) it costs nothing. The lease rows themselves are in [`super::leases`],
//! whose module doc gives the locking rule that keeps the check sound.

use std::sync::Arc;

use super::stmt::Tx;
use super::{Store, StoreError};

/// A mailbox task's licence to write: its replica and the lease epoch it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// This replica's `node_id`.
    pub node: Arc<str>,
    /// The lease epoch taken.
    pub epoch: i64,
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

    /// The fence check, first thing in a mailbox write's transaction `tx` (see the module
    /// doc): with no fence, `tx` back untouched (no round trip); with one, the lease row is
    /// read and held `FOR KEY SHARE` until `tx` ends, or `tx` is rolled back and
    /// [`StoreError::Fenced`] returned (and counted).
    ///
    /// Expiry is judged at this statement's start, not `now()`: a transaction from
    /// [`Store::begin_early`] may have begun a while before.
    pub(super) async fn fence_check<'c>(
        &self,
        mut tx: Tx<'c>,
        account_id: &str,
        mailbox: &str,
    ) -> Result<Tx<'c>, StoreError> {
        let Some(fence) = self.fence.as_deref() else {
            return Ok(tx);
        };
        let held = sqlx::query(
            "SELECT 1 FROM mailbox_leases WHERE account_id = $1 AND mailbox = $2 \
             AND owner = $3 AND epoch = $4 AND expires_at > statement_timestamp() FOR KEY SHARE",
        )
        .bind(account_id)
        .bind(mailbox)
        .bind(&*fence.node)
        .bind(fence.epoch)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_some() {
            return Ok(tx);
        }
        tx.rollback().await?;
        metrics::counter!(crate::metrics::FENCING_REJECTIONS).increment(1);
        tracing::warn!(
            account = account_id,
            mailbox,
            node = %fence.node,
            epoch = fence.epoch,
            "write rejected: the mailbox's lease is no longer this replica's"
        );
        Err(StoreError::Fenced {
            account: account_id.to_string(),
            mailbox: mailbox.to_string(),
            epoch: fence.epoch,
        })
    }
}
