//! What actions address and where they go (#19): a stored message or a conversation's present
//! messages, the Message-IDs of UIDs (a move's expected arrivals), the account's server
//! mailboxes from LIST, and `NOTIFY` to the other replicas.

use sqlx::{AssertSqlSafe, Row};

use super::chunk::placeholders;
use super::stmt::{run_all, Stmt};
use super::{now_ms, to_u32, Store, StoreError};

/// A stored message, as an action addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// `messages.id`.
    pub id: i64,
    /// Its account.
    pub account_id: String,
    /// Its mailbox.
    pub mailbox: String,
    /// The UIDVALIDITY of `uid`.
    pub uidvalidity: u32,
    /// Its UID.
    pub uid: u32,
    /// Whether it already left the mailbox.
    pub expunged: bool,
    /// Its Message-ID header.
    pub message_id: Option<String>,
}

impl Store {
    /// The message `id`, if stored.
    pub async fn message_ref(&self, id: i64) -> Result<Option<MessageRef>, StoreError> {
        let row = sqlx::query(
            "SELECT id, account_id, mailbox, uidvalidity, uid, \
             CASE WHEN expunged_at IS NULL THEN 0 ELSE 1 END, message_id \
             FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| message_ref(&r)))
    }

    /// The account of thread `id` and its messages still in a mailbox, if the thread exists.
    pub async fn thread_refs(
        &self,
        id: i64,
    ) -> Result<Option<(String, Vec<MessageRef>)>, StoreError> {
        let Some(account) = sqlx::query("SELECT account_id FROM threads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let account: String = account.get(0);
        let rows = sqlx::query(
            "SELECT id, account_id, mailbox, uidvalidity, uid, 0, message_id FROM messages \
             WHERE account_id = $1 AND thread_id = $2 AND expunged_at IS NULL ORDER BY id",
        )
        .bind(&account)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((account, rows.iter().map(message_ref).collect())))
    }

    /// The Message-IDs of these UIDs of the mailbox (present rows only).
    pub async fn message_ids(
        &self,
        account_id: &str,
        mailbox: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<Vec<(u32, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in uids.chunks(500) {
            let sql = format!(
                "SELECT uid, message_id FROM messages WHERE account_id = $1 AND mailbox = $2 \
                 AND uidvalidity = $3 AND message_id IS NOT NULL AND uid IN ({})",
                placeholders(4, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(account_id)
                .bind(mailbox)
                .bind(i64::from(uidvalidity));
            for u in chunk {
                q = q.bind(i64::from(*u));
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((to_u32(r.get(0)), r.get(1)));
            }
        }
        Ok(out)
    }

    /// Cluster mode: `NOTIFY channel, payload` on PostgreSQL, a hint to the other replicas
    /// (nothing on SQLite). A failure is only logged: the receivers also poll on connect.
    pub async fn notify(&self, channel: &str, payload: &str) {
        if self.backend != super::Backend::Postgres {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "NOTIFY failed");
        }
    }

    /// The server's mailboxes of the account as last listed: `(name, special_use)`. Empty
    /// when never listed.
    pub async fn server_mailboxes(
        &self,
        account_id: &str,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, special_use FROM server_mailboxes WHERE account_id = $1 ORDER BY name",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Replaces the account's list of server mailboxes.
    pub async fn set_server_mailboxes(
        &self,
        account_id: &str,
        list: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Its own statement: grouped with the inserts (one snapshot on PostgreSQL), the
        // inserts would still meet the old rows.
        sqlx::query("DELETE FROM server_mailboxes WHERE account_id = $1")
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        let mut stmts = Vec::new();
        for (name, special) in list {
            stmts.push(
                Stmt::new(
                    "INSERT INTO server_mailboxes (account_id, name, special_use, seen_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(account_id)
                .bind(name.as_str())
                .bind(special.as_deref())
                .bind(now),
            );
        }
        run_all(&mut tx, self.backend, stmts).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn message_ref(r: &sqlx::any::AnyRow) -> MessageRef {
    MessageRef {
        id: r.get(0),
        account_id: r.get(1),
        mailbox: r.get(2),
        uidvalidity: to_u32(r.get(3)),
        uid: to_u32(r.get(4)),
        expunged: r.get::<i64, _>(5) != 0,
        message_id: r.get(6),
    }
}
