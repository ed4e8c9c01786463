//! The cluster rig (#13): several real `idlesync` processes ("replicas") sharing one account
//! list of [`USERS`] Dovecot users (account `a00`… on user `u00`…, INBOX each), one PostgreSQL
//! database and one Redis channel of the test's own.
//!
//! Replicas reach Dovecot's plain IMAP port through an [`IdleCount`] proxy, which measures, per
//! user, how many sessions are in IDLE at once. The test's own mail goes straight to IMAPS, so
//! the proxy sees only the replicas. Each replica has its own TOML file, differing only in
//! `[metrics] listen` and `[cluster] node_id` (`r1`, `r2`, …), and its own log file.
//!
//! Every wait is a bounded deadline on observable state: `/status`, `/readyz`, `/metrics`,
//! `doveadm who`, the proxy's counts, the database, the Redis subscribers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::daemon::{mail, AccountSpec};
use super::db::TestDb;
use super::dovecot::{Dovecot, DovecotOptions};
use super::redis::{self, Subscriber};
use super::servers::{free_port, OwnPostgres};
use super::setup::{changes_channel, ConfigToml};
use idle_count::IdleCount;
pub use replica::Replica;

mod checks;
pub mod idle_count;
mod replica;

/// Mailboxes (users, accounts) in the cluster.
pub const USERS: usize = 30;
/// Every user's password.
pub const PW: &str = "cluster-pw-1";
/// `[cluster] lease_ttl`.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Dovecot user `i`.
pub fn user(i: usize) -> String {
    format!("u{i:02}")
}

/// Account id of user `i`.
pub fn account(i: usize) -> String {
    format!("a{i:02}")
}

/// The index of an account id `aNN`.
pub fn account_index(account: &str) -> Option<usize> {
    account.strip_prefix('a')?.parse().ok()
}

/// One message the test appended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Appended {
    /// Account id.
    pub account: String,
    /// UID from APPENDUID.
    pub uid: i64,
    /// Unique per rig.
    pub subject: String,
}

/// Where the rig's database lives.
enum Pg {
    /// A database of its own on the machine's PostgreSQL.
    Shared(TestDb),
    /// A PostgreSQL server of its own, which the test may stop.
    Own(OwnPostgres),
}

/// What [`Rig::wait_settled`] saw: who owns each account.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// Account id → node id.
    pub owner: BTreeMap<String, String>,
}

impl Ownership {
    /// Accounts owned by `node`.
    pub fn of(&self, node: &str) -> BTreeSet<String> {
        self.owner
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// How many accounts each node owns.
    pub fn held(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for n in self.owner.values() {
            *out.entry(n.clone()).or_default() += 1;
        }
        out
    }
}

/// Mail the test appends in the background, round robin over some users, until stopped.
pub struct Flow {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl Flow {
    /// Stops appending and waits for the append in flight; fails if an append failed.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("the flow did not stop")??
    }
}

/// The rig: Dovecot, the proxy, the database, the Redis subscribers and the replicas.
pub struct Rig {
    /// Replica `i` is `r{i+1}`. Declared first so that they are dropped (SIGKILL) first.
    pub replicas: Vec<Replica>,
    /// The IDLE-counting proxy in front of Dovecot's plain port.
    pub proxy: IdleCount,
    /// The test's Dovecot, shared with [`Flow`] tasks.
    pub dc: Arc<Dovecot>,
    /// The storage URL every replica uses.
    pub db_url: String,
    pg: Pg,
    channel: String,
    sub: Subscriber,
    changes: Subscriber,
    /// `(account, uidvalidity, uid)` of every message announced on either channel so far.
    announced: BTreeSet<(String, i64, i64)>,
    /// Records of kind `imported` seen (first imports: none are expected in this rig).
    pub imported_records: usize,
    appended: Arc<std::sync::Mutex<Vec<Appended>>>,
    appended_n: watch::Sender<usize>,
    seq: Arc<AtomicUsize>,
    dir: tempfile::TempDir,
}

impl Rig {
    /// Dovecot with [`USERS`] users, the proxy, a database (`own_pg`: a PostgreSQL server of
    /// the test's own, which it may stop), subscribers, and `replicas` replicas started (not
    /// yet waited for).
    pub async fn start(replicas: usize, own_pg: bool) -> Result<Rig> {
        let users: Vec<(String, String)> = (0..USERS).map(|i| (user(i), PW.to_string())).collect();
        // client_limit 1: each session its own imap process, so two sessions IDLE on one
        // mailbox (a paused replica's and its successor's) are both pushed (crate-notes).
        let dc = Dovecot::start_with(DovecotOptions {
            users,
            process_limit: 300,
            ..DovecotOptions::default()
        })?;
        let proxy = IdleCount::start(dc.imap_addr()).await?;
        let (pg, db_url) = if own_pg {
            let pg = OwnPostgres::start()?;
            let url = pg.url();
            (Pg::Own(pg), url)
        } else {
            let db = TestDb::postgres().await?;
            let url = db.url.clone();
            (Pg::Shared(db), url)
        };
        let channel = redis::unique_channel("cluster");
        let sub = redis::subscribe(&redis::url(), &channel).await?;
        let changes = redis::subscribe(&redis::url(), &changes_channel(&channel)).await?;
        let mut rig = Rig {
            replicas: Vec::new(),
            proxy,
            dc: Arc::new(dc),
            db_url,
            pg,
            channel,
            sub,
            changes,
            announced: BTreeSet::new(),
            imported_records: 0,
            appended: Arc::default(),
            appended_n: watch::channel(0).0,
            seq: Arc::default(),
            dir: tempfile::tempdir()?,
        };
        // A file rather than inline, as a deployment would (and no warning per account).
        std::fs::write(rig.dir.path().join("password"), PW)?;
        super::api::token_file(rig.dir.path());
        for _ in 0..replicas {
            rig.add_replica()?;
        }
        Ok(rig)
    }

    /// Writes the config of the next replica (`r{n+1}`) and starts it; returns its index.
    pub fn add_replica(&mut self) -> Result<usize> {
        let i = self.replicas.len();
        let node = format!("r{}", i + 1);
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = self.dir.path().join(format!("{node}.toml"));
        std::fs::write(&config, self.config_toml(&node, admin, api))?;
        let mut r = Replica {
            log: self.dir.path().join(format!("{node}.log")),
            node,
            admin,
            api,
            config,
            child: None,
        };
        r.spawn()?;
        self.replicas.push(r);
        Ok(i)
    }

    fn config_toml(&self, node: &str, admin: SocketAddr, api: SocketAddr) -> String {
        let mut c = ConfigToml::new(&self.db_url)
            .redis(&redis::url(), &self.channel)
            .set("metrics", "listen", admin.to_string())
            .api(&self.dir.path().join("api-token"))
            .set("api", "listen", api.to_string())
            .set("cluster", "enabled", true)
            .set("cluster", "node_id", node)
            .set("cluster", "lease_ttl", "3s")
            .set("cluster", "renew_every", "1s");
        let port = self.proxy.addr().port();
        for i in 0..USERS {
            let (id, u) = (account(i), user(i));
            c = c
                .account(
                    &AccountSpec {
                        id: &id,
                        user: &u,
                        password: PW,
                        tls: "none",
                        port,
                        mailboxes: &["INBOX"],
                    },
                    None,
                )
                .account_unset("password")
                .account_set("password_file", self.dir.path().join("password").as_path());
        }
        c.render()
    }

    /// The test's own PostgreSQL server (only with `own_pg`).
    pub fn own_pg(&mut self) -> Result<&mut OwnPostgres> {
        match &mut self.pg {
            Pg::Own(pg) => Ok(pg),
            Pg::Shared(_) => bail!("this rig uses the shared PostgreSQL"),
        }
    }

    /// Every replica's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.log_tail(25))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines of every replica's log at WARN or ERROR, or with a panic, prefixed by the node.
    pub fn complaints(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.replicas {
            for l in r.log_text().lines() {
                if l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked") {
                    out.push(format!("{}: {l}", r.node));
                }
            }
        }
        out
    }

    /// Waits until every replica in `live` answers `/readyz` with 200.
    pub async fn wait_ready(&self, live: &[usize], deadline: Duration) -> Result<()> {
        for &i in live {
            self.replicas[i].wait_ready(deadline).await?;
        }
        Ok(())
    }

    /// Why the replicas in `live` are not settled yet, or `None` when they are: each one's
    /// `/status` lists every mailbox; the ones it owns are `idling` with itself as `owner`,
    /// the others `elsewhere` with another member of `live` as owner; all agree on every
    /// owner; every mailbox is owned once; each holds `floor` or `ceil` of its fair share,
    /// as its `/status/summary` `cluster.held` says too; `cluster.nodes` lists exactly
    /// `live` as live. With `single_sessions`, the proxy also sees exactly one session per
    /// user, in IDLE.
    pub async fn unsettled(&self, live: &[usize], single_sessions: bool) -> Result<Option<String>> {
        let nodes: BTreeSet<&str> = live
            .iter()
            .map(|&i| self.replicas[i].node.as_str())
            .collect();
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        let (floor, ceil) = (USERS / live.len(), USERS.div_ceil(live.len()));
        for &i in live {
            let r = &self.replicas[i];
            let (status, summary) = match (r.status().await, r.summary().await) {
                (Ok(s), Ok(m)) => (s, m),
                (Err(e), _) | (_, Err(e)) => return Ok(Some(format!("{}: {e:#}", r.node))),
            };
            if status.len() != USERS {
                return Ok(Some(format!(
                    "{}: {} mailboxes on /status",
                    r.node,
                    status.len()
                )));
            }
            let mut held = 0;
            for m in &status {
                let acc = m["account"].as_str().unwrap_or_default().to_string();
                let state = m["state"].as_str().unwrap_or_default();
                let Some(o) = m["owner"].as_str() else {
                    return Ok(Some(format!("{}: {acc} has no owner ({state})", r.node)));
                };
                if o == r.node {
                    if state != "idling" {
                        return Ok(Some(format!("{}: own {acc} is {state}", r.node)));
                    }
                    held += 1;
                } else if state != "elsewhere" || !nodes.contains(o) {
                    return Ok(Some(format!("{}: {acc} is {state}, owner {o}", r.node)));
                }
                match owner.get(&acc) {
                    Some(prev) if prev != o => {
                        return Ok(Some(format!("{acc}: owner {prev} or {o}?")));
                    }
                    _ => {
                        owner.insert(acc, o.to_string());
                    }
                }
            }
            if held < floor || held > ceil {
                return Ok(Some(format!(
                    "{} holds {held}, not {floor}..={ceil}",
                    r.node
                )));
            }
            let cluster = &summary["cluster"];
            if cluster["node_id"] != r.node.as_str() || cluster["held"] != held {
                return Ok(Some(format!(
                    "{}: summary {cluster} but {held} held",
                    r.node
                )));
            }
            let listed: BTreeSet<&str> = cluster["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["live"] == true)
                .filter_map(|n| n["node_id"].as_str())
                .collect();
            if listed != nodes {
                return Ok(Some(format!("{}: live nodes {listed:?}", r.node)));
            }
        }
        if owner.len() != USERS {
            return Ok(Some(format!("{} mailboxes owned", owner.len())));
        }
        if single_sessions {
            let counts = self.proxy.counts();
            for i in 0..USERS {
                let c = counts.get(&user(i)).copied().unwrap_or_default();
                if c.open != 1 || c.idle != 1 {
                    return Ok(Some(format!("proxy: {} has {c:?}", user(i))));
                }
            }
        }
        Ok(None)
    }

    /// Waits until [`Rig::unsettled`] says nothing; returns who owns what.
    pub async fn wait_settled(
        &self,
        live: &[usize],
        single_sessions: bool,
        deadline: Duration,
    ) -> Result<Ownership> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            match self.unsettled(live, single_sessions).await? {
                None => break,
                Some(why) if tokio::time::Instant::now() >= end => {
                    bail!("not settled within {deadline:?}: {why}\n{}", self.logs())
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut own = Ownership::default();
        for m in self.replicas[live[0]].status().await? {
            if let (Some(a), Some(o)) = (m["account"].as_str(), m["owner"].as_str()) {
                own.owner.insert(a.to_string(), o.to_string());
            }
        }
        Ok(own)
    }

    /// IMAP sessions per user as Dovecot counts them (`doveadm who`).
    pub fn who(&self) -> Result<BTreeMap<String, usize>> {
        let out = self.dc.doveadm(&["who"])?;
        let mut per_user = BTreeMap::new();
        for line in out.lines() {
            let mut cols = line.split_whitespace();
            let (Some(u), Some(n)) = (cols.next(), cols.next()) else {
                continue;
            };
            if let Ok(n) = n.parse::<usize>() {
                *per_user.entry(u.to_string()).or_default() += n;
            }
        }
        Ok(per_user)
    }

    /// Waits until `doveadm who` shows exactly one session for every user (no appends may be
    /// in flight: the test's own sessions count too).
    pub async fn wait_one_session_each(&self, deadline: Duration) -> Result<()> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let who = self.who()?;
            if who.len() == USERS && who.values().all(|&n| n == 1) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= end {
                bail!("doveadm who after {deadline:?}: {who:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Users whose most sessions in IDLE at once (proxy, since the last reset) was not 1.
    pub fn double_idle(&self) -> Vec<(String, usize)> {
        self.proxy
            .counts()
            .into_iter()
            .filter(|(_, c)| c.max_idle > 1)
            .map(|(u, c)| (u, c.max_idle))
            .collect()
    }

    /// Appends `per_user` messages to each of `users` now.
    pub async fn append(&self, users: &[usize], per_user: usize) -> Result<()> {
        for _ in 0..per_user {
            for &i in users {
                append_one(&self.dc, i, &self.seq, &self.appended, &self.appended_n).await?;
            }
        }
        Ok(())
    }

    /// Starts appending to `users` round robin, one message every `pace`.
    pub fn flow(&self, users: Vec<usize>, pace: Duration) -> Flow {
        let (stop, mut stopped) = watch::channel(false);
        let (dc, seq, appended, n) = (
            self.dc.clone(),
            self.seq.clone(),
            self.appended.clone(),
            self.appended_n.clone(),
        );
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(pace);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in users.iter().cycle() {
                tokio::select! {
                    _ = stopped.changed() => return Ok(()),
                    _ = tick.tick() => {}
                }
                append_one(&dc, *i, &seq, &appended, &n).await?;
            }
            Ok(())
        });
        Flow { stop, task }
    }

    /// Messages appended so far.
    pub fn appended(&self) -> Vec<Appended> {
        self.appended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages were appended in all.
    pub async fn wait_appended(&self, n: usize, deadline: Duration) -> Result<()> {
        let mut rx = self.appended_n.subscribe();
        tokio::time::timeout(deadline, rx.wait_for(|&k| k >= n))
            .await
            .with_context(|| format!("fewer than {n} appended within {deadline:?}"))??;
        Ok(())
    }

    /// A small pool on the rig's database.
    pub async fn pool(&self) -> Result<AnyPool> {
        sqlx::any::install_default_drivers();
        Ok(AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.db_url)
            .await?)
    }
}

async fn append_one(
    dc: &Dovecot,
    i: usize,
    seq: &AtomicUsize,
    appended: &std::sync::Mutex<Vec<Appended>>,
    n: &watch::Sender<usize>,
) -> Result<()> {
    let subject = format!("cl-{}-{:05}", user(i), seq.fetch_add(1, Ordering::Relaxed));
    let uid = dc
        .append(&user(i), "INBOX", &mail(&subject))
        .await
        .with_context(|| format!("append to {}", user(i)))?;
    appended
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Appended {
            account: account(i),
            uid: i64::from(uid),
            subject,
        });
    n.send_modify(|k| *k += 1);
    Ok(())
}
