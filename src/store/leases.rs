//! Cluster mode (#13): replicas' heartbeats (`cluster_nodes`) and one lease per mailbox
//! (`mailbox_leases`), PostgreSQL only. Expiry is always judged by the database's `now()`.
//!
//! A lease is `(owner, epoch, expires_at)`. Taking a free or expired lease bumps the epoch;
//! every write for the mailbox ([`Store::commit_batch`], [`Store::apply_changes`],
//! [`Store::start_epoch`]) made through a [`Store::fenced`] store checks, inside its own
//! transaction and before writing, that the lease is still `(node, epoch)` and unexpired, and
//! holds it `FOR KEY SHARE` until COMMIT, so a takeover (which locks the row `FOR UPDATE`)
//! waits for a commit in flight and never overlaps it. A miss rolls back with
//! [`StoreError::Fenced`] and is counted in `idlesync_fencing_rejections_total`.
//!
//! `FOR KEY SHARE` rather than `FOR SHARE`: the owner's own renewal (an UPDATE of
//! `expires_at` only, which locks `FOR NO KEY UPDATE`) then never waits for its commits, nor
//! they for it. The rule that keeps this sound: a lease changes owner or epoch only through
//! [`Store::acquire`] (`FOR UPDATE`, which conflicts with every share lock) or through its own
//! owner's [`Store::release`] / [`Store::leave`], after that owner stopped the mailbox.
//!
//! Replicas are woken by `NOTIFY` on [`CLUSTER_CHANNEL`] when leases are released or a replica
//! joins; that is only a hint, the rows decide.

use std::time::Duration;

use sqlx::Row;

use super::{Store, StoreError};

/// Keys per lease statement (sent as one JSON text parameter).
const KEYS_PER_STATEMENT: usize = 1000;

/// `LISTEN`/`NOTIFY` channel: a replica joined or released leases. A hint only.
pub const CLUSTER_CHANNEL: &str = "idlesync_cluster";

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
    /// The fewest live leases another live replica holds, if there is another one: whether
    /// a lease handed over would be wanted (#22).
    pub fewest_elsewhere: Option<i64>,
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
    /// Creates the missing lease rows (free, epoch 0) of these mailboxes. Existing rows are
    /// left alone. Any number of keys (chunked).
    pub async fn ensure_leases(&self, keys: &[(String, String)]) -> Result<(), StoreError> {
        for chunk in keys.chunks(KEYS_PER_STATEMENT) {
            sqlx::query(
                "INSERT INTO mailbox_leases (account_id, mailbox) \
                 SELECT k.a, k.m FROM json_to_recordset($1::json) AS k(a text, m text) \
                 ON CONFLICT (account_id, mailbox) DO NOTHING",
            )
            .bind(keys_json(chunk))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Deletes the lease rows of mailboxes no longer configured, when free, expired or this
    /// node's (reload removed them).
    pub async fn forget_leases(
        &self,
        node: &str,
        keys: &[(String, String)],
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(KEYS_PER_STATEMENT) {
            sqlx::query(
                "DELETE FROM mailbox_leases l USING json_to_recordset($1::json) AS k(a text, m text) \
                 WHERE l.account_id = k.a AND l.mailbox = k.m \
                 AND (l.owner IS NULL OR l.owner = $2 OR l.expires_at <= now())",
            )
            .bind(keys_json(chunk))
            .bind(node)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Heartbeat and renewal, one atomic statement: upserts `node`'s row with
    /// `expires_at = now() + ttl` and sets the same `expires_at` on every lease `node` owns
    /// (expired ones too: nobody took them, or their owner would not be `node`). Returns the
    /// leases `node` holds afterwards. The first call also joins (and NOTIFYs).
    ///
    /// "First" is judged by the database: `node` had no live row before this statement (all
    /// parts of one statement read the same snapshot, so `j` sees the row as it was). A
    /// replica whose heartbeat had lapsed rejoins, and NOTIFYs again.
    ///
    /// Rows of replicas dead for over an hour (killed, never left: each new pid is a new
    /// node id) go in the same statement, so `/status/summary` lists the recent dead only.
    pub async fn renew(&self, node: &str, ttl: Duration) -> Result<Vec<Lease>, StoreError> {
        // `n` and `l` run whether read or not (data-modifying CTEs always do); `j` is a plain
        // SELECT and would not run unless read: the UNION ALL reads it, and its one row (when
        // it notified) has NULL columns, skipped below. The channel is [`CLUSTER_CHANNEL`].
        let rows = sqlx::query(
            "WITH n AS (INSERT INTO cluster_nodes (node_id, expires_at) \
             VALUES ($1, now() + $2 * interval '1 millisecond') \
             ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), \
             expires_at = excluded.expires_at RETURNING 1), \
             g AS (DELETE FROM cluster_nodes WHERE node_id <> $1 \
             AND expires_at < now() - interval '1 hour'), \
             l AS (UPDATE mailbox_leases SET expires_at = now() + $2 * interval '1 millisecond' \
             WHERE owner = $1 RETURNING account_id, mailbox, epoch), \
             j AS (SELECT pg_notify('idlesync_cluster', $1) WHERE NOT EXISTS \
             (SELECT 1 FROM cluster_nodes WHERE node_id = $1 AND expires_at > now())) \
             SELECT account_id, mailbox, epoch FROM l \
             UNION ALL SELECT NULL, NULL, NULL FROM (SELECT count(*) AS c FROM j) x \
             WHERE x.c > 0",
        )
        .bind(node)
        .bind(millis(ttl))
        .fetch_all(&self.pool)
        .await?;
        let mut leases: Vec<Lease> = rows
            .iter()
            .filter_map(|r| {
                Some(Lease {
                    account_id: r.get::<Option<String>, _>(0)?,
                    mailbox: r.get::<Option<String>, _>(1)?,
                    epoch: r.get::<Option<i64>, _>(2)?,
                })
            })
            .collect();
        leases.sort();
        Ok(leases)
    }

    /// Live replicas and what is free (see [`Membership`]).
    pub async fn membership(&self, node: &str, stale_ms: i64) -> Result<Membership, StoreError> {
        let r = sqlx::query(
            "SELECT \
             (SELECT COALESCE(json_agg(node_id ORDER BY node_id), '[]'::json)::text \
              FROM cluster_nodes WHERE expires_at > now()), \
             (SELECT (extract(epoch FROM min(expires_at) - now()) * 1000)::bigint \
              FROM cluster_nodes WHERE expires_at > now() AND node_id <> $1), \
             (SELECT count(*) FROM mailbox_leases WHERE owner IS NULL OR expires_at <= now()), \
             (SELECT count(*) FROM mailbox_leases WHERE (owner IS NULL OR expires_at <= now()) \
              AND expires_at <= now() - $2 * interval '1 millisecond'), \
             (SELECT min(n) FROM (SELECT count(l.owner) AS n FROM cluster_nodes c \
              LEFT JOIN mailbox_leases l ON l.owner = c.node_id AND l.expires_at > now() \
              WHERE c.expires_at > now() AND c.node_id <> $1 GROUP BY c.node_id) x)",
        )
        .bind(node)
        .bind(stale_ms.max(0))
        .fetch_one(&self.pool)
        .await?;
        let live: String = r.get(0);
        let mut live: Vec<String> = serde_json::from_str(&live).unwrap_or_default();
        // json_agg orders by the database's collation; callers compare with Rust's order.
        live.sort();
        Ok(Membership {
            live,
            next_expiry_ms: r.get::<Option<i64>, _>(1).map(|ms| ms.max(0)),
            free: r.get(2),
            stale_free: r.get(3),
            fewest_elsewhere: r.get::<Option<i64>, _>(4),
        })
    }

    /// Takes up to `limit` leases among `keys` that are free or expired (for at least
    /// `min_free_ms`), `FOR UPDATE SKIP LOCKED` so that replicas taking at once never block or
    /// take the same one: owner `node`, epoch + 1, `expires_at = now() + ttl`. In key order.
    ///
    /// A lease row held `FOR KEY SHARE` by a commit in flight (its owner's, see the module doc) is
    /// skipped too: it is taken at a later call, once that commit ended.
    pub async fn acquire(
        &self,
        node: &str,
        keys: &[(String, String)],
        limit: usize,
        min_free_ms: i64,
        ttl: Duration,
    ) -> Result<Vec<Acquired>, StoreError> {
        let mut keys: Vec<&(String, String)> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for chunk in keys.chunks(KEYS_PER_STATEMENT) {
            let want = limit.saturating_sub(out.len());
            if want == 0 {
                break;
            }
            let rows = sqlx::query(
                "WITH c AS (SELECT l.account_id, l.mailbox, l.owner, l.epoch, l.expires_at \
                 FROM mailbox_leases l \
                 JOIN json_to_recordset($1::json) AS k(a text, m text) \
                 ON l.account_id = k.a AND l.mailbox = k.m \
                 WHERE (l.owner IS NULL OR l.expires_at <= now()) \
                 AND l.expires_at <= now() - $3 * interval '1 millisecond' \
                 ORDER BY l.account_id COLLATE \"C\", l.mailbox COLLATE \"C\" LIMIT $4 \
                 FOR UPDATE OF l SKIP LOCKED), \
                 u AS (UPDATE mailbox_leases l SET owner = $2, epoch = c.epoch + 1, \
                 expires_at = now() + $5 * interval '1 millisecond', acquired_at = now() \
                 FROM c WHERE l.account_id = c.account_id AND l.mailbox = c.mailbox \
                 RETURNING l.account_id, l.mailbox, l.epoch, c.epoch AS prev_epoch, \
                 c.owner AS prev_owner, \
                 (extract(epoch FROM now() - c.expires_at) * 1000)::bigint AS unowned_ms) \
                 SELECT account_id, mailbox, epoch, prev_epoch, prev_owner, unowned_ms FROM u \
                 ORDER BY account_id COLLATE \"C\", mailbox COLLATE \"C\"",
            )
            .bind(keys_json(chunk.iter().copied()))
            .bind(node)
            .bind(min_free_ms.max(0))
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .bind(millis(ttl))
            .fetch_all(&self.pool)
            .await?;
            out.extend(rows.iter().map(|r| {
                let prev_epoch: i64 = r.get(3);
                let prev_owner: Option<String> = r.get(4);
                let unowned_ms: Option<i64> = r.get(5);
                Acquired {
                    lease: Lease {
                        account_id: r.get(0),
                        mailbox: r.get(1),
                        epoch: r.get(2),
                    },
                    takeover: (prev_epoch > 0).then(|| Takeover {
                        reason: if prev_owner.is_none() {
                            TakeoverReason::Released
                        } else {
                            TakeoverReason::Expired
                        },
                        unowned_ms: unowned_ms.unwrap_or(0).max(0),
                        // A release clears the owner: who it was is not known then.
                        from_other: prev_owner.is_some_and(|o| o != node),
                    }),
                }
            }));
        }
        Ok(out)
    }

    /// Frees these leases where they are still `node`'s at their epoch (owner NULL,
    /// `expires_at = now()`), then NOTIFYs. Returns how many were freed.
    pub async fn release(&self, node: &str, leases: &[Lease]) -> Result<u64, StoreError> {
        let mut freed = 0;
        for chunk in leases.chunks(KEYS_PER_STATEMENT) {
            let json = serde_json::Value::Array(
                chunk
                    .iter()
                    .map(|l| serde_json::json!({"a": l.account_id, "m": l.mailbox, "e": l.epoch}))
                    .collect(),
            )
            .to_string();
            // Select-list subqueries always run; `n` only notifies when a lease was freed.
            let n: i64 = sqlx::query_scalar(
                "WITH r AS (UPDATE mailbox_leases l SET owner = NULL, expires_at = now() \
                 FROM json_to_recordset($1::json) AS k(a text, m text, e bigint) \
                 WHERE l.account_id = k.a AND l.mailbox = k.m AND l.epoch = k.e AND l.owner = $2 \
                 RETURNING 1), \
                 n AS (SELECT pg_notify('idlesync_cluster', $2) WHERE EXISTS (SELECT 1 FROM r)) \
                 SELECT (SELECT count(*) FROM r) + 0 * (SELECT count(*) FROM n)",
            )
            .bind(json)
            .bind(node)
            .fetch_one(&self.pool)
            .await?;
            freed += u64::try_from(n).unwrap_or(0);
        }
        Ok(freed)
    }

    /// Leaves the cluster: frees every lease of `node`, deletes its row, NOTIFYs.
    pub async fn leave(&self, node: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "WITH r AS (UPDATE mailbox_leases SET owner = NULL, expires_at = now() \
             WHERE owner = $1 RETURNING 1), \
             d AS (DELETE FROM cluster_nodes WHERE node_id = $1 RETURNING 1), \
             n AS (SELECT pg_notify('idlesync_cluster', $1)) \
             SELECT (SELECT count(*) FROM r) + 0 * (SELECT count(*) FROM d) \
             + 0 * (SELECT count(*) FROM n)",
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `(account_id, mailbox, owner)` of every unexpired lease, for `/status`.
    pub async fn lease_owners(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, mailbox, owner FROM mailbox_leases \
             WHERE owner IS NOT NULL AND expires_at > now() ORDER BY account_id, mailbox",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Every replica row, live or not (ordered by node id), with its unexpired leases.
    pub async fn cluster_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.expires_at > now(), \
             (SELECT count(*) FROM mailbox_leases l \
              WHERE l.owner = n.node_id AND l.expires_at > now()), \
             (extract(epoch FROM now() - n.heartbeat_at) * 1000)::bigint \
             FROM cluster_nodes n",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut nodes: Vec<NodeRow> = rows
            .iter()
            .map(|r| NodeRow {
                node_id: r.get(0),
                live: r.get(1),
                leases: r.get(2),
                heartbeat_age_ms: r.get::<i64, _>(3).max(0),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }
}

/// `[{"a": account, "m": mailbox}, …]`: a key list as one parameter (`sqlx::Any` has no array
/// binds), read with `json_to_recordset($n::json) AS k(a text, m text)`.
fn keys_json<'k>(keys: impl IntoIterator<Item = &'k (String, String)>) -> String {
    serde_json::Value::Array(
        keys.into_iter()
            .map(|(a, m)| serde_json::json!({"a": a, "m": m}))
            .collect(),
    )
    .to_string()
}

/// A duration in ms, for `$n * interval '1 millisecond'`.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
