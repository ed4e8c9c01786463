//! Replicas as child processes (the load harness's [`DaemonProc`]), each with its own TOML file
//! differing only in `[metrics] listen` and `[cluster] node_id`, all watching the same
//! accounts on one scripted IMAP server; and what the harness reads from their admin ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::rig::{self, DaemonProc};

/// The environment variable the load harness's `DaemonProc` sets to the password.
const PASSWORD_ENV: &str = "IDLESYNC_LOAD_PASSWORD";

/// `(account, mailbox)`.
pub type Key = (String, String);

/// What every replica's config shares.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Storage URL (the bench's own PostgreSQL, a database per scenario).
    pub db_url: String,
    /// The scripted IMAP server's port.
    pub imap_port: u16,
    /// Accounts `a00000`…, one INBOX each, user `u00000`…
    pub mailboxes: usize,
    /// `Some((lease_ttl, renew_every))` for cluster mode, `None` for a single node.
    pub cluster: Option<(Duration, Duration)>,
    /// `imap.connects_per_second`, if set.
    pub rate: Option<u32>,
}

impl Plan {
    /// The config of replica `node` (ignored in single-node mode).
    pub fn toml(&self, node: &str, admin: SocketAddr) -> String {
        let mut s = format!(
            "[storage]\nurl = \"{}\"\n\n[metrics]\nlisten = \"{admin}\"\n\n[imap]\n{}\n",
            self.db_url,
            self.rate
                .map(|r| format!("connects_per_second = {r}\n"))
                .unwrap_or_default()
        );
        if let Some((ttl, renew)) = self.cluster {
            s.push_str(&format!(
                "[cluster]\nenabled = true\nnode_id = \"{node}\"\nlease_ttl = \"{}ms\"\n\
                 renew_every = \"{}ms\"\n\n",
                ttl.as_millis(),
                renew.as_millis()
            ));
        }
        for i in 0..self.mailboxes {
            s.push_str(&format!(
                "[[accounts]]\nid = \"a{i:05}\"\nemail = \"u{i:05}@example.test\"\n\
                 host = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"u{i:05}\"\n\
                 password_env = \"{PASSWORD_ENV}\"\nmailboxes = [\"INBOX\"]\n\n",
                self.imap_port
            ));
        }
        s
    }
}

/// One replica process.
pub struct Replica {
    /// Its node id (`r1`, …; `single` for the single-node baseline).
    pub node: String,
    /// The process.
    pub proc: DaemonProc,
}

impl Replica {
    pub fn spawn(bin: &Path, plan: &Plan, node: &str) -> Result<Replica> {
        let proc = DaemonProc::spawn(bin, |admin| plan.toml(node, admin))
            .with_context(|| format!("spawning replica {node}"))?;
        Ok(Replica {
            node: node.to_string(),
            proc,
        })
    }

    pub fn admin(&self) -> SocketAddr {
        self.proc.admin
    }

    /// Whether the process has exited (a zombie counts: it is no longer running).
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.proc.pid)) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
            Err(_) => true,
        }
    }
}

/// One mailbox of `/status`.
#[derive(Debug, Clone)]
pub struct Mb {
    pub key: Key,
    pub state: String,
}

/// `/status` of a replica.
pub async fn status(admin: SocketAddr) -> Result<Vec<Mb>> {
    let body = rig::http_get(admin, "/status").await?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).context("/status JSON")?;
    Ok(all
        .iter()
        .map(|m| Mb {
            key: (
                m["account"].as_str().unwrap_or_default().to_string(),
                m["mailbox"].as_str().unwrap_or_default().to_string(),
            ),
            state: m["state"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// The mailboxes `admin`'s replica has idling.
pub async fn idling(admin: SocketAddr) -> Result<BTreeSet<Key>> {
    Ok(status(admin)
        .await?
        .into_iter()
        .filter(|m| m.state == "idling")
        .map(|m| m.key)
        .collect())
}

/// `/status/summary`'s idling count and, in cluster mode, `cluster.held`.
pub async fn summary(admin: SocketAddr) -> Result<(u64, Option<u64>, serde_json::Value)> {
    let body = rig::http_get(admin, "/status/summary").await?;
    let v: serde_json::Value = serde_json::from_str(&body).context("/status/summary JSON")?;
    let idling = v["states"]["idling"].as_u64().unwrap_or(0);
    let held = v["cluster"]["held"].as_u64();
    Ok((idling, held, v))
}

/// ms since `node`'s last heartbeat, as `admin`'s replica reads it from the nodes table.
pub async fn heartbeat_age_ms(admin: SocketAddr, node: &str) -> Result<i64> {
    let (_, _, v) = summary(admin).await?;
    v["cluster"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == node))
        .and_then(|n| n["heartbeat_age_ms"].as_i64())
        .with_context(|| format!("no heartbeat of {node} in {v}"))
}

/// Waits until every mailbox of `plan` idles on exactly one of `replicas` and each holds its
/// fair share (floor or ceil of mailboxes / replicas) and idles on all it holds. Small plans are
/// checked per mailbox on `/status`, large ones on `/status/summary` (a 10,000-entry `/status`
/// every poll would be the CPU the idle figures then count). Returns the time it took.
pub async fn wait_balanced(
    replicas: &[&Replica],
    plan: &Plan,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let n = replicas.len();
    let (lo, hi) = (plan.mailboxes / n, plan.mailboxes.div_ceil(n));
    let every = if plan.mailboxes > 100 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(50)
    };
    let mut last;
    loop {
        let ok = if plan.mailboxes <= 100 {
            let mut owners: BTreeMap<Key, usize> = BTreeMap::new();
            let mut fair = true;
            let mut counts = Vec::new();
            for r in replicas {
                let idle = idling(r.admin()).await.unwrap_or_default();
                fair &= (lo..=hi).contains(&idle.len());
                counts.push(idle.len());
                for k in idle {
                    *owners.entry(k).or_default() += 1;
                }
            }
            last = format!(
                "idling per replica {counts:?}, {} mailboxes idle",
                owners.len()
            );
            fair && owners.len() == plan.mailboxes && owners.values().all(|c| *c == 1)
        } else {
            let mut sum = 0;
            let mut fair = true;
            let mut counts = Vec::new();
            for r in replicas {
                let (idle, held, _) = summary(r.admin()).await.unwrap_or_default();
                let held = held.unwrap_or(idle);
                fair &= held == idle && (lo..=hi).contains(&(held as usize));
                sum += idle as usize;
                counts.push((idle, held));
            }
            last = format!("(idling, held) per replica {counts:?}");
            fair && sum == plan.mailboxes
        };
        if ok {
            return Ok(start.elapsed());
        }
        for r in replicas {
            if r.exited() {
                bail!("replica {} exited:\n{}", r.node, r.proc.tail());
            }
        }
        if start.elapsed() > timeout {
            bail!("not balanced within {timeout:?}: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// `/metrics` of a replica.
pub async fn metrics(admin: SocketAddr) -> Result<String> {
    rig::http_get(admin, "/metrics").await
}

/// The value of the sample `name` (with exactly these labels, `""` for none) in a Prometheus
/// text body; 0 when absent.
pub fn sample(body: &str, name: &str, labels: &str) -> f64 {
    let want = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == want).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// `(sum, count)` of histogram `name`.
pub fn histogram(body: &str, name: &str) -> (f64, f64) {
    (
        sample(body, &format!("{name}_sum"), ""),
        sample(body, &format!("{name}_count"), ""),
    )
}

pub use crate::rig::signal;

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
