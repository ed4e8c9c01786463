//! Databases for tests: a fresh SQLite file, or a fresh PostgreSQL database on the machine's
//! server (127.0.0.1:5432, trust auth; override with IDLESYNC_TEST_PG), dropped afterwards.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A database used by one test only.
pub struct TestDb {
    pub url: String,
    pub kind: Kind,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// Base URL of the shared PostgreSQL (its `test` database is only used to create ours).
pub fn pg_admin_url() -> String {
    std::env::var("IDLESYNC_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl TestDb {
    pub async fn new(kind: Kind) -> Result<TestDb> {
        match kind {
            Kind::Sqlite => Self::sqlite(),
            Kind::Postgres => Self::postgres().await,
        }
    }

    pub fn sqlite() -> Result<TestDb> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("idlesync.db").display());
        Ok(TestDb {
            url,
            kind: Kind::Sqlite,
            pg_name: None,
            _dir: Some(dir),
        })
    }

    pub async fn postgres() -> Result<TestDb> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "idlesync_t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos()
        );
        sqlx::any::install_default_drivers();
        let admin = pg_admin_url();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .with_context(|| format!("connect to {admin}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await?;
        pool.close().await;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(b, _)| b)
            .to_string();
        Ok(TestDb {
            url: format!("{base}/{name}"),
            kind: Kind::Postgres,
            pg_name: Some(name),
            _dir: None,
        })
    }

    /// A small pool of our own, for assertions.
    pub async fn pool(&self) -> Result<AnyPool> {
        sqlx::any::install_default_drivers();
        Ok(AnyPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await?)
    }

    /// `(uid, subject)` of every stored message of an account, by uid.
    pub async fn messages(&self, account: &str) -> Result<Vec<(i64, Option<String>)>> {
        let pool = self.pool().await?;
        let rows =
            sqlx::query("SELECT uid, subject FROM messages WHERE account_id = $1 ORDER BY uid")
                .bind(account)
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            // Synchronous on purpose: Drop cannot await. FORCE ends the daemon's leftover pool.
            let _ = std::process::Command::new("psql")
                .args([
                    &pg_admin_url(),
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
