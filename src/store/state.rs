//! Per-mailbox state: `last_uid`, `highest_modseq` and the import boundary in `mailbox_state`,
//! UIDVALIDITY epochs, and the reads a catch-up needs (present rows and their flags).

use sqlx::Row;

use super::batch::BatchTarget;
use super::outbox::{fill_ids, insert_outbox, OutboxRow};
use super::stmt::run_all;
use super::{now_ms, to_u32, Store, StoreError};
use crate::changes::Topic;

/// The per-mailbox sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncState {
    /// UIDVALIDITY the `last_uid` belongs to.
    pub uidvalidity: u32,
    /// Highest UID stored.
    pub last_uid: u32,
    /// HIGHESTMODSEQ once every change stored is applied (CONDSTORE servers), for this
    /// UIDVALIDITY.
    pub highest_modseq: Option<u64>,
    /// UIDNEXT when this UIDVALIDITY epoch was first selected: UIDs below it are history
    /// (announced as `imported`), not new mail.
    pub import_uid_next: Option<u32>,
}

/// MODSEQs are u64 on the wire (at most 2^63 - 1 by RFC 7162) and BIGINT in the database.
pub(super) fn modseq_to_db(m: u64) -> i64 {
    i64::try_from(m).unwrap_or(i64::MAX)
}

/// The inverse of [`modseq_to_db`]; a negative value (never written) reads as 0.
pub(super) fn modseq_from_db(m: i64) -> u64 {
    u64::try_from(m).unwrap_or(0)
}

impl Store {
    /// The sync state of a mailbox, if it was ever selected.
    pub async fn sync_state(
        &self,
        account_id: &str,
        mailbox: &str,
    ) -> Result<Option<SyncState>, StoreError> {
        let row = sqlx::query(
            "SELECT uidvalidity, last_uid, highest_modseq, import_uid_next FROM mailbox_state \
             WHERE account_id = $1 AND mailbox = $2",
        )
        .bind(account_id)
        .bind(mailbox)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| SyncState {
            uidvalidity: to_u32(r.get::<i64, _>(0)),
            last_uid: to_u32(r.get::<i64, _>(1)),
            highest_modseq: r.get::<Option<i64>, _>(2).map(modseq_from_db),
            import_uid_next: r.get::<Option<i64>, _>(3).map(to_u32),
        }))
    }

    /// Starts a UIDVALIDITY epoch: on a UIDVALIDITY change, or for a mailbox seen for the first
    /// time (so that its import boundary survives a restart in the middle of the import).
    /// `last_uid` starts again from 0, `highest_modseq` is SELECT's HIGHESTMODSEQ of the new
    /// epoch (nothing stored in it predates it) and `import_uid_next` is set. Rows of an old UIDVALIDITY stay, told apart by their `uidvalidity`.
    /// `reset_record`, when given, goes to the outbox ([`Topic::Sync`]) in the same
    /// transaction, and is returned as committed, for the publisher. A [`Store::fenced`] store
    /// checks its lease first, in a transaction, and fails with [`StoreError::Fenced`],
    /// writing nothing, when it is lost.
    pub async fn start_epoch(
        &self,
        account_id: &str,
        mailbox: &str,
        uidvalidity: u32,
        import_uid_next: Option<u32>,
        highest_modseq: Option<u64>,
        reset_record: Option<&str>,
    ) -> Result<Option<OutboxRow>, StoreError> {
        let now = now_ms();
        let upsert = sqlx::query(
            "INSERT INTO mailbox_state (account_id, mailbox, uidvalidity, last_uid, updated_at, \
             highest_modseq, import_uid_next) VALUES ($1, $2, $3, 0, $4, $5, $6) \
             ON CONFLICT (account_id, mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity, \
             last_uid = 0, updated_at = excluded.updated_at, \
             highest_modseq = excluded.highest_modseq, import_uid_next = excluded.import_uid_next",
        )
        .bind(account_id)
        .bind(mailbox)
        .bind(i64::from(uidvalidity))
        .bind(now)
        .bind(highest_modseq.map(modseq_to_db))
        .bind(import_uid_next.map(i64::from));
        let Some(payload) = reset_record else {
            if self.fence.is_none() {
                // One statement, no transaction around it: what 10,000 mailboxes seen for the
                // first time cost at start-up is one round trip each.
                upsert.execute(&self.pool).await?;
                return Ok(None);
            }
            // Cluster mode: the lease check needs a transaction to hold the lease in.
            let tx = self.pool.begin().await?;
            let mut tx = self.fence_check(tx, account_id, mailbox).await?;
            upsert.execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(None);
        };
        let tx = self.pool.begin().await?;
        let mut tx = self.fence_check(tx, account_id, mailbox).await?;
        upsert.execute(&mut *tx).await?;
        let mut rows = [OutboxRow::new(
            account_id,
            mailbox,
            Topic::Sync,
            payload.to_string(),
            None,
        )];
        let ids = run_all(&mut tx, self.backend, vec![insert_outbox(&rows)]).await?;
        fill_ids(&mut rows, &ids);
        tx.commit().await?;
        let [row] = rows;
        Ok(Some(row))
    }

    /// Present rows (`expunged_at IS NULL`) of the mailbox with UID in `(after, upto]`,
    /// ascending, at most `limit`: `(uid, flags)`. For diffing against a server without
    /// CONDSTORE a page at a time. A range scan of the unique
    /// `(account_id, mailbox, uidvalidity, uid)` index.
    pub async fn present_flags(
        &self,
        target: BatchTarget<'_>,
        after: u32,
        upto: u32,
        limit: usize,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT uid, flags FROM messages WHERE account_id = $1 AND mailbox = $2 \
             AND uidvalidity = $3 AND uid > $4 AND uid <= $5 AND expunged_at IS NULL \
             ORDER BY uid LIMIT $6",
        )
        .bind(target.account_id)
        .bind(target.mailbox)
        .bind(i64::from(target.uidvalidity))
        .bind(i64::from(after))
        .bind(i64::from(upto))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (to_u32(r.get::<i64, _>(0)), r.get::<String, _>(1)))
            .collect())
    }

    /// Rows of the mailbox and UIDVALIDITY still in the mailbox (`expunged_at IS NULL`), for
    /// import progress.
    pub async fn present_count(&self, target: BatchTarget<'_>) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE account_id = $1 AND mailbox = $2 \
             AND uidvalidity = $3 AND expunged_at IS NULL",
        )
        .bind(target.account_id)
        .bind(target.mailbox)
        .bind(i64::from(target.uidvalidity))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
