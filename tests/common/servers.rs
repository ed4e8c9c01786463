//! Servers a test may stop and restart: its own redis-server and its own PostgreSQL cluster,
//! each on a free loopback port. The machine's shared PostgreSQL and Redis are never touched.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts on `port`, or `deadline` passes.
fn wait_port(port: u16, up: bool, deadline: Duration) -> Result<()> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open == up {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "port {port} not {} within {deadline:?}",
        if up { "open" } else { "closed" }
    )
}

/// A redis-server of the test's own.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    /// With `persistent`, an append-only file here keeps data across restarts.
    dir: Option<tempfile::TempDir>,
}

impl OwnRedis {
    /// Keeps nothing across a restart, like the machine's Redis.
    pub fn start() -> Result<OwnRedis> {
        Self::start_with(false)
    }

    /// `persistent`: data (a Stream, say) survives `stop` + `resume`.
    pub fn start_with(persistent: bool) -> Result<OwnRedis> {
        let mut r = OwnRedis {
            port: free_port()?,
            child: None,
            dir: if persistent {
                Some(tempfile::tempdir()?)
            } else {
                None
            },
        };
        r.resume()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it: SIGKILL (with `persistent`, every write was already fsynced).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        wait_port(self.port, false, Duration::from_secs(10))
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match &self.dir {
            Some(d) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(d.path()),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server")?;
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(10))
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temp dir, run as the `postgres` user).
pub struct OwnPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
    /// More `-c name=value` server options (the cluster harness loads pg_stat_statements).
    extra: String,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .unwrap_or_else(|| PathBuf::from(PG_BIN));
    dir.join(name)
}

fn as_postgres(cmd: &str, args: &[&str]) -> Result<()> {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin(cmd))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("runuser {cmd}"))?;
    anyhow::ensure!(status.success(), "{cmd} {args:?} failed: {status}");
    Ok(())
}

impl OwnPostgres {
    pub fn start() -> Result<OwnPostgres> {
        Self::start_with("")
    }

    /// [`OwnPostgres::start`] with more server options (`-c name=value …`).
    pub fn start_with(extra: &str) -> Result<OwnPostgres> {
        let dir = tempfile::tempdir()?;
        // initdb refuses root: the cluster runs as `postgres`, which must own its directory.
        let id = Command::new("id").args(["-u", "postgres"]).output()?;
        let uid: u32 = String::from_utf8_lossy(&id.stdout).trim().parse()?;
        std::os::unix::fs::chown(dir.path(), Some(uid), None)?;
        let data = dir.path().join("data");
        as_postgres(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        let mut pg = OwnPostgres {
            port: free_port()?,
            dir,
            running: false,
            extra: extra.to_string(),
        };
        pg.resume()?;
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's data directory.
    pub fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    /// `pg_ctl stop -m immediate`: like a crash, connections cut mid-transaction.
    pub fn stop(&mut self) -> Result<()> {
        as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )?;
        self.running = false;
        wait_port(self.port, false, Duration::from_secs(10))
    }

    pub fn resume(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let log = self.dir.path().join("pg.log");
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "start",
            ],
        )?;
        self.running = true;
        wait_port(self.port, true, Duration::from_secs(20))
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        }
    }
}
