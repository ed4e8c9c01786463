//! The background indexing of rows stored before the search index existed (#21): the next
//! batch of ids after `search_backfill.next_id`, their index rows, and the mark moved on, in
//! one short transaction.

use sqlx::{AssertSqlSafe, Row};

use super::search::{insert_docs, BACKFILL_BATCH};
use super::stmt::{run_all, Stmt};
use super::{Backend, Store, StoreError};
use crate::search::text::{doc, Doc};

impl Store {
    /// Indexes the next batch of rows stored before the index existed. `None` once none are
    /// left; else `(next id, last id)` to log progress.
    pub async fn backfill_search(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let Some(row) = sqlx::query("SELECT next_id, end_id FROM search_backfill")
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let (next, end): (i64, i64) = (row.get(0), row.get(1));
        if next >= end {
            return Ok(None);
        }
        let upto = (next + BACKFILL_BATCH).min(end);
        let rows = sqlx::query(
            "SELECT id, account_id, subject, from_addr, to_addrs, cc_addrs, text_body \
             FROM messages WHERE id > $1 AND id <= $2 ORDER BY id",
        )
        .bind(next)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        let files = sqlx::query(
            "SELECT message_row_id, filename FROM attachments \
             WHERE message_row_id > $1 AND message_row_id <= $2 AND filename IS NOT NULL",
        )
        .bind(next)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        let mut by_account: std::collections::BTreeMap<String, Vec<(i64, Doc)>> =
            Default::default();
        for r in &rows {
            let id: i64 = r.get(0);
            let names: Vec<String> = files
                .iter()
                .filter(|f| f.get::<i64, _>(0) == id)
                .map(|f| f.get(1))
                .collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let d = doc(
                r.get::<Option<String>, _>(2).as_deref(),
                &r.get::<String, _>(3),
                &r.get::<String, _>(4),
                &r.get::<Option<String>, _>(5).unwrap_or_default(),
                r.get::<Option<String>, _>(6).as_deref(),
                &names,
            );
            by_account.entry(r.get(1)).or_default().push((id, d));
        }
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Sqlite {
            // A row indexed by a batch meanwhile is not indexed twice (FTS5 has no ON CONFLICT).
            for docs in by_account.values_mut() {
                let ids: Vec<i64> = docs.iter().map(|d| d.0).collect();
                let have = indexed(&mut tx, &ids).await?;
                docs.retain(|d| !have.contains(&d.0));
            }
        }
        let mut stmts = Vec::new();
        for (account, docs) in &by_account {
            stmts.extend(insert_docs(self.backend, account, docs.clone()));
        }
        stmts.push(Stmt::new("UPDATE search_backfill SET next_id = $1").bind(upto));
        run_all(&mut tx, self.backend, stmts).await?;
        tx.commit().await?;
        Ok(Some((upto, end)))
    }
}

/// Which of `ids` the SQLite index already has.
async fn indexed(tx: &mut super::stmt::Tx<'_>, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT rowid FROM search_fts WHERE rowid IN ({})",
            super::chunk::placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        out.extend(
            q.fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| r.get::<i64, _>(0)),
        );
    }
    Ok(out)
}
