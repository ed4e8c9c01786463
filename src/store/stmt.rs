//! Statements built ahead of running them, so that independent writes of one transaction can
//! share a round trip.
//!
//! On PostgreSQL a list of statements runs as **one** statement: all but the last become
//! data-modifying CTEs (`WITH s0 AS (INSERT …), s1 AS (UPDATE …) INSERT …`), which PostgreSQL
//! always executes in full. On a loopback link every round trip wakes two processes, and on an
//! idle VM that costs more than the statement itself; this is what keeps the batch transaction
//! at a handful of round trips whatever it writes. SQLite has no such CTEs and no network: there
//! the statements simply run one after another.
//!
//! Only statements that do not read each other's writes may be grouped: the parts of one
//! PostgreSQL statement share one snapshot, and a row must not be changed by two of them.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe, Transaction};

use super::Backend;

/// The transaction every store write runs in.
pub(super) type Tx<'c> = Transaction<'c, sqlx::Any>;

/// One bound value. Borrowed where the batch already holds the data.
#[derive(Debug, Clone)]
pub(super) enum Val<'a> {
    Int(i64),
    Int4(i32),
    OptInt(Option<i64>),
    Str(&'a str),
    OptStr(Option<&'a str>),
    Owned(String),
    OptOwned(Option<String>),
    Bool(bool),
    OptBytes(Option<&'a [u8]>),
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<i32> for Val<'_> {
    fn from(v: i32) -> Self {
        Val::Int4(v)
    }
}
impl From<Option<String>> for Val<'_> {
    fn from(v: Option<String>) -> Self {
        Val::OptOwned(v)
    }
}
impl From<Option<i64>> for Val<'_> {
    fn from(v: Option<i64>) -> Self {
        Val::OptInt(v)
    }
}
impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Str(v)
    }
}
impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Val::OptStr(v)
    }
}
impl From<String> for Val<'_> {
    fn from(v: String) -> Self {
        Val::Owned(v)
    }
}
impl From<bool> for Val<'_> {
    fn from(v: bool) -> Self {
        Val::Bool(v)
    }
}
impl<'a> From<&'a [u8]> for Val<'a> {
    fn from(v: &'a [u8]) -> Self {
        Val::OptBytes(Some(v))
    }
}
impl<'a> From<Option<&'a [u8]>> for Val<'a> {
    fn from(v: Option<&'a [u8]>) -> Self {
        Val::OptBytes(v)
    }
}

impl Val<'_> {
    fn bytes(&self) -> usize {
        match self {
            Val::Str(s) | Val::OptStr(Some(s)) => s.len(),
            Val::Owned(s) | Val::OptOwned(Some(s)) => s.len(),
            Val::OptBytes(Some(b)) => b.len(),
            _ => 8,
        }
    }
}

/// One statement: SQL with placeholders `$1…$n` and its `n` values.
#[derive(Debug, Clone)]
pub(super) struct Stmt<'a> {
    pub(super) sql: String,
    pub(super) vals: Vec<Val<'a>>,
}

impl<'a> Stmt<'a> {
    pub(super) fn new(sql: impl Into<String>) -> Self {
        Stmt {
            sql: sql.into(),
            vals: Vec::new(),
        }
    }

    /// Appends the next value (`$len+1`).
    pub(super) fn bind(mut self, v: impl Into<Val<'a>>) -> Self {
        self.vals.push(v.into());
        self
    }

    /// Appends the next value in place.
    pub(super) fn push(&mut self, v: impl Into<Val<'a>>) {
        self.vals.push(v.into());
    }
}

/// `sql` with `vals` bound. The SQL moves into the query (a 500-row insert's is tens of KB); the
/// values are borrowed.
pub(super) fn query<'q>(sql: String, vals: &'q [Val<'_>]) -> Query<'q, Any, AnyArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for v in vals {
        q = match v {
            Val::Int(v) => q.bind(*v),
            Val::OptInt(v) => q.bind(*v),
            Val::Str(v) => q.bind(*v),
            Val::OptStr(v) => q.bind(*v),
            Val::Int4(v) => q.bind(*v),
            Val::Owned(v) => q.bind(v.as_str()),
            Val::OptOwned(v) => q.bind(v.as_deref()),
            Val::Bool(v) => q.bind(*v),
            Val::OptBytes(v) => q.bind(*v),
        };
    }
    q
}

/// Parameters per grouped statement: far below PostgreSQL's 65,535.
const MAX_PARAMS: usize = 30_000;
/// Bound bytes per grouped statement.
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// Runs `stmts` in order inside `tx` (grouped into as few statements as the limits allow on
/// PostgreSQL) and returns the rows of the last one.
pub(super) async fn run_all(
    tx: &mut Tx<'_>,
    backend: Backend,
    stmts: Vec<Stmt<'_>>,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let stmts = match backend {
        Backend::Postgres => group(stmts),
        Backend::Sqlite => stmts,
    };
    let mut rows = Vec::new();
    for Stmt { sql, vals } in stmts {
        rows = query(sql, &vals).fetch_all(&mut **tx).await?;
    }
    Ok(rows)
}

/// Folds runs of statements into `WITH s0 AS (…), … last` within the limits.
fn group(stmts: Vec<Stmt<'_>>) -> Vec<Stmt<'_>> {
    let mut out: Vec<Vec<Stmt<'_>>> = Vec::new();
    let (mut params, mut bytes) = (0, 0);
    for s in stmts {
        let (p, b) = (s.vals.len(), s.vals.iter().map(Val::bytes).sum::<usize>());
        match out.last_mut() {
            Some(run) if params + p <= MAX_PARAMS && bytes + b <= MAX_BYTES => {
                params += p;
                bytes += b;
                run.push(s);
            }
            _ => {
                (params, bytes) = (p, b);
                out.push(vec![s]);
            }
        }
    }
    out.into_iter().map(with_ctes).collect()
}

fn with_ctes(run: Vec<Stmt<'_>>) -> Stmt<'_> {
    let n = run.len();
    let mut sql = String::new();
    let mut vals = Vec::new();
    for (i, s) in run.into_iter().enumerate() {
        let part = shift_placeholders(&s.sql, vals.len());
        vals.extend(s.vals);
        if i + 1 < n {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("s{i} AS ({part})"));
        } else {
            if !sql.is_empty() {
                sql.push(' ');
            }
            sql.push_str(&part);
        }
    }
    Stmt { sql, vals }
}

/// Renumbers `$N` to `$(N + by)`. Our SQL has no `$` inside literals.
fn shift_placeholders(sql: &str, by: usize) -> String {
    if by == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut n: usize = 0;
        let mut digits = false;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            n = n * 10 + v as usize;
            digits = true;
            chars.next();
        }
        if digits {
            out.push_str(&(n + by).to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_shift_past_earlier_parts() {
        assert_eq!(
            shift_placeholders("a = $1 AND b IN ($2, $10)", 3),
            "a = $4 AND b IN ($5, $13)"
        );
        assert_eq!(shift_placeholders("no params", 7), "no params");
    }

    #[test]
    fn a_run_becomes_one_statement_with_ctes() {
        let a = Stmt::new("INSERT INTO a VALUES ($1)").bind(1i64);
        let b = Stmt::new("UPDATE b SET x = $1 WHERE y = $2")
            .bind(2i64)
            .bind("k");
        let c = Stmt::new("INSERT INTO c VALUES ($1) RETURNING id").bind(true);
        let g = group(vec![a, b, c]);
        assert_eq!(g.len(), 1);
        assert_eq!(
            g[0].sql,
            "WITH s0 AS (INSERT INTO a VALUES ($1)), s1 AS (UPDATE b SET x = $2 WHERE y = $3) \
             INSERT INTO c VALUES ($4) RETURNING id"
        );
        assert_eq!(g[0].vals.len(), 4);
        let single = group(vec![Stmt::new("SELECT $1").bind(1i64)]);
        assert_eq!(single[0].sql, "SELECT $1");
    }

    #[test]
    fn groups_split_at_the_parameter_limit() {
        let big = |n: usize| {
            let mut s = Stmt::new("INSERT INTO t VALUES ($1)");
            for _ in 0..n {
                s.push(0i64);
            }
            s
        };
        let g = group(vec![big(MAX_PARAMS - 10), big(20), big(5)]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].vals.len(), MAX_PARAMS - 10);
        assert_eq!(g[1].vals.len(), 25);
    }
}
