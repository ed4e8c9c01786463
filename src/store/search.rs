//! Search (#21): the index rows written with each batch, the background backfill of rows stored
//! before the index existed, and running a parsed [`Query`].
//!
//! A query becomes SQL by walking its tree: every value is a bound parameter, and the only text
//! added is fixed SQL per node kind. A text term is a sub-select of the index: `account_id = $1
//! AND field @@ phraseto_tsquery('simple', $n)` on PostgreSQL (both in the GIN index's
//! condition) and an FTS5 `MATCH $n` on SQLite, whose match expression names the account and
//! quotes each word (words are letters and digits only, from [`crate::search::text::words`]).
//! The rows are filtered on `messages.account_id` besides. A message not indexed yet (the
//! backfill is still running) matches no text term.

use sqlx::{AssertSqlSafe, Row};

use super::batch::BatchTarget;
use super::stmt::{run_all, Stmt, Val};
use super::{Backend, NewRow, Store, StoreError};
use crate::search::text::{doc, normalize, words, Doc};
use crate::search::{Field, Is, Query, Term};

/// Messages read per backfill batch.
pub const BACKFILL_BATCH: i64 = 1000;

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// `messages.id`.
    pub id: i64,
    /// `messages.thread_id`.
    pub thread_id: Option<i64>,
    /// The mailbox.
    pub mailbox: String,
    /// The From list (JSON).
    pub from: String,
    /// The subject.
    pub subject: Option<String>,
    /// INTERNALDATE, Unix ms.
    pub received_at: Option<i64>,
    /// Flags, space-separated.
    pub flags: String,
    /// The stored snippet.
    pub snippet: String,
    /// The body text (for a snippet around the match).
    pub body: Option<String>,
}

/// Where a page of results starts: after `(received_at, id)` of the last one shown.
pub type Cursor = (i64, i64);

/// The index statements of a batch's new rows.
pub(super) fn doc_writes<'a>(
    backend: Backend,
    target: BatchTarget<'a>,
    rows: &[NewRow<'_>],
) -> Vec<Stmt<'a>> {
    let docs: Vec<(i64, Doc)> = rows
        .iter()
        .map(|r| {
            let files: Vec<&str> = r
                .rec
                .attachments
                .iter()
                .filter_map(|a| a.filename.as_deref())
                .collect();
            (
                r.id,
                doc(
                    r.rec.subject.as_deref(),
                    &r.rec.from,
                    &r.rec.to,
                    &r.rec.cc,
                    r.rec.text_body.as_deref(),
                    &files,
                ),
            )
        })
        .collect();
    insert_docs(backend, target.account_id, docs)
}

/// Multi-row inserts of index rows, at most 200 rows each.
fn insert_docs<'a>(backend: Backend, account_id: &'a str, docs: Vec<(i64, Doc)>) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
    for chunk in docs.chunks(200) {
        let (head, tsv) = match backend {
            Backend::Postgres => (
                "INSERT INTO search_docs (message_id, account_id, doc, subject, from_, to_, cc, files) VALUES ",
                true,
            ),
            Backend::Sqlite => (
                "INSERT INTO search_fts (rowid, account_id, doc, subject, from_, to_, cc, files) VALUES ",
                false,
            ),
        };
        let mut sql = String::from(head);
        for i in 0..chunk.len() {
            let p = i * 8;
            if i > 0 {
                sql.push_str(", ");
            }
            if tsv {
                sql.push_str(&format!(
                    "(${}, ${}, to_tsvector('simple', ${}), to_tsvector('simple', ${}), \
                     to_tsvector('simple', ${}), to_tsvector('simple', ${}), \
                     to_tsvector('simple', ${}), to_tsvector('simple', ${}))",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8
                ));
            } else {
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8
                ));
            }
        }
        if tsv {
            sql.push_str(" ON CONFLICT (message_id) DO NOTHING");
        }
        let mut q = Stmt::new(sql);
        for (id, d) in chunk {
            q.push(*id);
            q.push(account_text(backend, account_id));
            q.push(d.all.clone());
            q.push(d.subject.clone());
            q.push(d.from.clone());
            q.push(d.to.clone());
            q.push(d.cc.clone());
            q.push(d.files.clone());
        }
        out.push(q);
    }
    out
}

/// The account as the index keeps it: as is on PostgreSQL (an exact btree_gin key), as words
/// on SQLite (an FTS5 column, matched as a phrase; the rows are filtered exactly besides).
fn account_text(backend: Backend, account_id: &str) -> String {
    match backend {
        Backend::Postgres => account_id.to_string(),
        Backend::Sqlite => normalize(account_id),
    }
}

/// The statement removing index rows of deleted messages (`ids` bound from `$1`).
pub(super) fn delete_docs_sql(backend: Backend, list: &str) -> String {
    match backend {
        Backend::Postgres => format!("DELETE FROM search_docs WHERE message_id IN ({list})"),
        Backend::Sqlite => format!("DELETE FROM search_fts WHERE rowid IN ({list})"),
    }
}

/// A query's SQL under construction: the condition text and its bound values.
struct Where {
    backend: Backend,
    /// `account_id`'s words (SQLite's MATCH phrase).
    account_words: String,
    /// The placeholder of `account_id` (PostgreSQL's index condition).
    account: String,
    binds: Vec<Val<'static>>,
}

impl Where {
    fn bind(&mut self, v: Val<'static>) -> String {
        self.binds.push(v);
        format!("${}", self.binds.len())
    }

    fn node(&mut self, q: &Query) -> String {
        match q {
            Query::And(v) => {
                let parts: Vec<String> = v.iter().map(|q| self.node(q)).collect();
                format!("({})", parts.join(" AND "))
            }
            Query::Or(v) => {
                let parts: Vec<String> = v.iter().map(|q| self.node(q)).collect();
                format!("({})", parts.join(" OR "))
            }
            Query::Not(q) => format!("NOT ({})", self.node(q)),
            Query::Term(t) => self.term(t),
        }
    }

    fn term(&mut self, t: &Term) -> String {
        match t {
            Term::Text { field, words } => self.text(*field, words),
            Term::HasAttachment => format!("m.has_attachments = {}", self.bind(Val::Bool(true))),
            Term::Is(is) => {
                let (flag, has) = match is {
                    Is::Unread => ("\\Seen", false),
                    Is::Read => ("\\Seen", true),
                    Is::Starred => ("\\Flagged", true),
                    Is::Unstarred => ("\\Flagged", false),
                };
                let p = self.bind(Val::Owned(format!("% {flag} %")));
                let not = if has { "" } else { "NOT " };
                format!("(' ' || m.flags || ' ') {not}LIKE {p} ESCAPE '!'")
            }
            Term::In(mailbox) => format!("m.mailbox = {}", self.bind(Val::Owned(mailbox.clone()))),
            Term::After(ms) => {
                format!("COALESCE(m.received_at, 0) >= {}", self.bind(Val::Int(*ms)))
            }
            Term::Before(ms) => {
                format!("COALESCE(m.received_at, 0) < {}", self.bind(Val::Int(*ms)))
            }
            Term::Larger(n) => format!("m.size > {}", self.bind(Val::Int(*n))),
            Term::Smaller(n) => format!("m.size < {}", self.bind(Val::Int(*n))),
        }
    }

    fn text(&mut self, field: Field, words: &[String]) -> String {
        let col = match field {
            Field::All => "doc",
            Field::Subject => "subject",
            Field::From => "from_",
            Field::To => "to_",
            Field::Cc => "cc",
            Field::Filename => "files",
        };
        match self.backend {
            Backend::Postgres => {
                let p = self.bind(Val::Owned(words.join(" ")));
                let a = self.account.clone();
                format!(
                    "m.id IN (SELECT d.message_id FROM search_docs d WHERE d.account_id = {a} \
                     AND d.{col} @@ phraseto_tsquery('simple', {p}))"
                )
            }
            Backend::Sqlite => {
                // Words are letters and digits only: quoting cannot be escaped from.
                let phrase = |w: &[&str]| format!("\"{}\"", w.join(" "));
                let acct: Vec<&str> = self.account_words.split_whitespace().collect();
                let ws: Vec<&str> = words.iter().map(String::as_str).collect();
                let m = format!("account_id : {} AND {col} : {}", phrase(&acct), phrase(&ws));
                let p = self.bind(Val::Owned(m));
                format!("m.id IN (SELECT rowid FROM search_fts WHERE search_fts MATCH {p})")
            }
        }
    }
}

impl Store {
    /// The newest messages of `account_id` matching `query` (present ones only), after
    /// `cursor`, at most `limit`.
    pub async fn search(
        &self,
        account_id: &str,
        query: &Query,
        cursor: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<Hit>, StoreError> {
        let (sql, binds) = self.search_sql(account_id, query, cursor, limit);
        let rows = super::stmt::query(sql, &binds)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Hit {
                id: r.get(0),
                thread_id: r.get(1),
                mailbox: r.get(2),
                from: r.get(3),
                subject: r.get(4),
                received_at: r.get(5),
                flags: r.get(6),
                snippet: r.get(7),
                body: r.get(8),
            })
            .collect())
    }

    /// The database's plan of the index lookup a text term becomes (`words` in `doc`), with
    /// sequential scans off as on a large table: tests show the account is in its index
    /// condition.
    #[doc(hidden)]
    pub async fn explain_text_term(
        &self,
        account_id: &str,
        words: &str,
    ) -> Result<String, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = match self.backend {
            Backend::Postgres => {
                sqlx::query("SET LOCAL enable_seqscan = off")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "EXPLAIN SELECT d.message_id FROM search_docs d WHERE d.account_id = $1 \
                     AND d.doc @@ phraseto_tsquery('simple', $2)",
                )
                .bind(account_id)
                .bind(words)
                .fetch_all(&mut *tx)
                .await?
            }
            Backend::Sqlite => {
                sqlx::query(
                    "EXPLAIN QUERY PLAN SELECT rowid FROM search_fts WHERE search_fts MATCH $1",
                )
                .bind(format!(
                    "account_id : \"{}\" AND doc : \"{words}\"",
                    normalize(account_id).trim()
                ))
                .fetch_all(&mut *tx)
                .await?
            }
        };
        let col = if self.backend == Backend::Postgres {
            0
        } else {
            3
        };
        Ok(rows
            .iter()
            .map(|r| r.get::<String, _>(col))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn search_sql(
        &self,
        account_id: &str,
        query: &Query,
        cursor: Option<Cursor>,
        limit: i64,
    ) -> (String, Vec<Val<'static>>) {
        let mut w = Where {
            backend: self.backend,
            account_words: words(&normalize(account_id)).join(" "),
            account: "$1".into(),
            binds: Vec::new(),
        };
        let account = w.bind(Val::Owned(account_id.to_string()));
        let cond = w.node(query);
        let after = match cursor {
            Some((at, id)) => {
                let a = w.bind(Val::Int(at));
                let i = w.bind(Val::Int(id));
                format!(" AND (m.received_at < {a} OR (m.received_at = {a} AND m.id < {i}))")
            }
            None => String::new(),
        };
        let lim = w.bind(Val::Int(limit));
        let sql = format!(
            "SELECT m.id, m.thread_id, m.mailbox, m.from_addr, m.subject, m.received_at, m.flags, \
             m.snippet, m.text_body FROM messages m \
             WHERE m.account_id = {account} AND m.expunged_at IS NULL AND {cond}{after} \
             ORDER BY m.received_at DESC, m.id DESC LIMIT {lim}"
        );
        (sql, w.binds)
    }

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
