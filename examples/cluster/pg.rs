//! A PostgreSQL cluster of the harness's own (initdb in a temp dir, run as `postgres`, on a
//! free loopback port) with `pg_stat_statements` loaded, so that every statement the replicas
//! send is counted by the server itself; and the counters read from it.
//!
//! Its own instance, not the machine's shared server: `shared_preload_libraries` cannot be
//! changed there, and other suites' databases would be in its process and CPU figures.

use std::collections::BTreeMap;

use crate::servers::OwnPostgres;

use anyhow::{Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// The running instance ([`OwnPostgres`], stopped when dropped).
pub struct BenchPg {
    pg: OwnPostgres,
}

impl BenchPg {
    /// initdb and start, with the tests' settings plus `pg_stat_statements` (track = all) and
    /// room for every replica's pool.
    pub fn start() -> Result<BenchPg> {
        let pg = OwnPostgres::start_with(
            "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
             -c max_connections=200",
        )?;
        Ok(BenchPg { pg })
    }

    /// URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg.port)
    }

    /// A one-connection pool on database `db`.
    pub async fn pool(&self, db: &str) -> Result<AnyPool> {
        sqlx::any::install_default_drivers();
        Ok(AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.url(db))
            .await?)
    }

    /// Creates database `name` (and, in `postgres`, the extension's views).
    pub async fn create_db(&self, name: &str) -> Result<()> {
        let admin = self.pool("postgres").await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&admin)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(())
    }

    /// The postmaster's pid (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(format!("{}/postmaster.pid", self.pg.data()))?;
        Ok(text
            .lines()
            .next()
            .context("empty postmaster.pid")?
            .trim()
            .parse()?)
    }

    /// utime + stime (s) of the postmaster and every process it forked (backends, the
    /// checkpointer, the WAL writer, …). A backend that exits between two readings drops out,
    /// so take both while the replicas' pools are up.
    pub fn cpu_s(&self) -> Result<f64> {
        let pm = self.postmaster_pid()?;
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((ppid, secs)) = ppid_and_cpu(&stat) else {
                continue;
            };
            if pid == pm || ppid == pm {
                total += secs;
            }
        }
        Ok(total)
    }
}

/// `(ppid, utime + stime in s)` from the text of `/proc/<pid>/stat`.
fn ppid_and_cpu(stat: &str) -> Option<(u32, f64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks as f64 / 100.0))
}

/// What the server counted for one database at one moment.
#[derive(Debug, Clone, Default)]
pub struct DbCounters {
    /// `pg_stat_statements`: calls and rows per normalised statement text (the harness's own
    /// queries, on `pg_stat_*` views, left out).
    pub statements: BTreeMap<String, (i64, i64)>,
    /// `pg_stat_database.xact_commit` (lags by up to the backends' stats flush interval).
    pub xact_commit: i64,
    /// `pg_stat_user_tables` `(n_tup_upd, n_tup_hot_upd)` per table.
    pub tables: BTreeMap<String, (i64, i64)>,
}

impl DbCounters {
    /// Reads them. `admin` is a pool on `postgres` (statements, xact_commit: nothing counted
    /// against `db`), `own` a pool on `db` itself (its table statistics: a read-only query, so it
    /// adds no updates, but one commit per reading to `db`, see [`Delta::xact_commit`]).
    pub async fn read(admin: &AnyPool, own: &AnyPool, db: &str) -> Result<DbCounters> {
        let mut c = DbCounters::default();
        let rows = sqlx::query(
            "SELECT s.query, s.calls::BIGINT, s.rows::BIGINT FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
        )
        .bind(db)
        .fetch_all(admin)
        .await?;
        for r in rows {
            let q: String = r.get(0);
            if q.contains("pg_stat") {
                continue;
            }
            let q = q.split_whitespace().collect::<Vec<_>>().join(" ");
            let e = c.statements.entry(q).or_default();
            e.0 += r.get::<i64, _>(1);
            e.1 += r.get::<i64, _>(2);
        }
        let (x,): (i64,) =
            sqlx::query_as("SELECT xact_commit::BIGINT FROM pg_stat_database WHERE datname = $1")
                .bind(db)
                .fetch_one(admin)
                .await?;
        c.xact_commit = x;
        let rows = sqlx::query(
            "SELECT relname::TEXT, n_tup_upd::BIGINT, n_tup_hot_upd::BIGINT FROM pg_stat_user_tables",
        )
        .fetch_all(own)
        .await?;
        for r in rows {
            c.tables
                .insert(r.get(0), (r.get::<i64, _>(1), r.get::<i64, _>(2)));
        }
        Ok(c)
    }

    /// `later − self`.
    pub fn delta(&self, later: &DbCounters) -> Delta {
        let mut statements: Vec<(String, i64, i64)> = later
            .statements
            .iter()
            .map(|(q, (calls, rows))| {
                let (c0, r0) = self.statements.get(q).copied().unwrap_or((0, 0));
                (q.clone(), calls - c0, rows - r0)
            })
            .filter(|(_, calls, _)| *calls > 0)
            .collect();
        statements.sort_by_key(|s| std::cmp::Reverse(s.1));
        let tables = later
            .tables
            .iter()
            .map(|(t, (u, h))| {
                let (u0, h0) = self.tables.get(t).copied().unwrap_or((0, 0));
                (t.clone(), (u - u0, h - h0))
            })
            .collect();
        Delta {
            statements,
            xact_commit: later.xact_commit - self.xact_commit,
            tables,
        }
    }
}

/// Counters over a window.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// `(statement, calls, rows)`, most called first.
    pub statements: Vec<(String, i64, i64)>,
    /// Commits. Counts the harness's own table-statistics reading too (one or two, as the
    /// backends' stats flush falls), and lags by that flush (PostgreSQL 15: up to a few s).
    pub xact_commit: i64,
    /// `(n_tup_upd, n_tup_hot_upd)` per table.
    pub tables: BTreeMap<String, (i64, i64)>,
}

impl Delta {
    /// Every statement call.
    pub fn calls(&self) -> i64 {
        self.statements.iter().map(|s| s.1).sum()
    }

    /// Calls of the statements whose text passes `pick`.
    pub fn calls_where(&self, pick: &dyn Fn(&str) -> bool) -> i64 {
        self.statements
            .iter()
            .filter(|s| pick(&s.0))
            .map(|s| s.1)
            .sum()
    }

    /// `(n_tup_upd, n_tup_hot_upd)` of `table`.
    pub fn updates(&self, table: &str) -> (i64, i64) {
        self.tables.get(table).copied().unwrap_or((0, 0))
    }
}
