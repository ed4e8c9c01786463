//! One replica of the cluster rig: an `idlesync run` process, its signals, its admin
//! listener (`/status`, `/status/summary`, `/metrics`, `/readyz`) and its log.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// One `idlesync run` process.
pub struct Replica {
    /// `[cluster] node_id`.
    pub node: String,
    /// `[metrics] listen`.
    pub admin: SocketAddr,
    /// `[api] listen` (#19).
    pub api: SocketAddr,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
    pub(super) child: Option<tokio::process::Child>,
}

impl Replica {
    /// Starts the process (again); its log is appended to.
    pub fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "{} is already running", self.node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idlesync"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "idlesync=info")
            // Plain text in the log file, so that levels can be read back.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning idlesync")?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .with_context(|| format!("{} is not running", self.node))
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`…) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid()?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        ensure!(status.success(), "kill -{signal} {pid}: {status}");
        Ok(())
    }

    /// SIGKILL, and reaps it: no DONE, no LOGOUT, no release.
    pub async fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
        Ok(())
    }

    /// SIGTERM, then a clean exit (status 0) within `deadline`.
    pub async fn term(&mut self, deadline: Duration) -> Result<()> {
        self.signal("TERM")?;
        let mut child = self.child.take().context("not running")?;
        let status = tokio::time::timeout(deadline, child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit within {deadline:?} of SIGTERM\n{}",
                    self.node,
                    self.log_tail(30)
                )
            })??;
        ensure!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            self.node,
            self.log_tail(30)
        );
        Ok(())
    }

    /// `Some(status)` when the process has exited (or was never started: `None` inside).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} is not running", self.node),
        }
    }

    /// GET `path` on the admin listener (200 only).
    pub async fn get(&self, path: &str) -> Result<String> {
        super::super::http_get(self.admin, path).await
    }

    /// `/status`, one object per mailbox.
    pub async fn status(&self) -> Result<Vec<Value>> {
        let v: Value = serde_json::from_str(&self.get("/status").await?)?;
        v.as_array().cloned().context("/status is not an array")
    }

    /// `/status/summary`.
    pub async fn summary(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.get("/status/summary").await?)?)
    }

    /// How many mailboxes it holds (`/status/summary` `cluster.held`).
    pub async fn held(&self) -> Result<usize> {
        let s = self.summary().await?;
        let held = s["cluster"]["held"].as_u64();
        held.map(|n| n as usize)
            .with_context(|| format!("{}: no cluster.held in {s}", self.node))
    }

    /// The sum of every `/metrics` series of `name` whose labels contain `labels` (e.g.
    /// `reason="expired"`; `""` for all). 0 when there is none.
    pub async fn metric(&self, name: &str, labels: &str) -> Result<f64> {
        Ok(metric_sum(&self.get("/metrics").await?, name, labels))
    }

    /// Waits until `/readyz` answers 200.
    /// Waits (bounded) until this replica has counted a fencing rejection; the error says
    /// how many it counted and shows its log's tail.
    pub async fn wait_fenced(&self, deadline: Duration) -> Result<()> {
        let name = "idlesync_fencing_rejections_total";
        let seen = super::super::wait_until(deadline, || async {
            Ok(self.metric(name, "").await.unwrap_or(0.0) > 0.0)
        })
        .await;
        if let Err(e) = seen {
            bail!(
                "{}'s stale commits were not rejected ({e:#}): {name} is {}\n{}",
                self.node,
                self.metric(name, "").await?,
                self.log_tail(60)
            );
        }
        Ok(())
    }

    pub async fn wait_ready(&self, deadline: Duration) -> Result<()> {
        super::super::wait_until(deadline, || async { Ok(self.get("/readyz").await.is_ok()) })
            .await
            .with_context(|| format!("{} not ready\n{}", self.node, self.log_tail(30)))
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!("--- {} log ---\n{}", self.node, lines[from..].join("\n"))
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The sum of the series of `name` in a Prometheus text page whose label set contains `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
