//! Plumbing of the load harness: a Dovecot with N users, a PostgreSQL database and a Redis
//! channel of its own, the idlesync binary as a child process, and what it reads about that
//! process from `/proc`.
//!
//! Used by `examples/load/main.rs` and by `tests/load_smoke.rs` (both include it with
//! `#[path]`, next to `tests/common/dovecot/` and `tests/common/db.rs`). Its IMAP sessions use
//! the test helpers' client, `tests/common/dovecot/wire.rs`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::db::TestDb;
use crate::dovecot::{Dovecot, DovecotOptions};

/// Every load user's password.
pub const PASSWORD: &str = "load-pw";
/// The environment variable the generated config names for it.
const PASSWORD_ENV: &str = "IDLESYNC_LOAD_PASSWORD";

/// Unix time in microseconds.
pub fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `u00000`, `u00001`, …
pub fn user(i: usize) -> String {
    format!("u{i:05}")
}

/// Starts Dovecot with `n` load users plus `extra` named users, sized for `n` sessions:
/// `client_limit` per imap (and imap-login) process, `service_count = 0`.
pub fn start_dovecot(n: usize, extra: &[&str], client_limit: u32) -> Result<Dovecot> {
    let mut users: Vec<(String, String)> = (0..n).map(|i| (user(i), PASSWORD.into())).collect();
    users.extend(extra.iter().map(|u| (u.to_string(), PASSWORD.to_string())));
    // Room for everyone at once (idlesync, or the bare client, plus helpers), and headroom.
    let procs = (users.len() as u32).div_ceil(client_limit) + 20;
    Dovecot::start_with(DovecotOptions {
        users,
        client_limit,
        process_limit: procs.max(100),
        extra_config: String::new(),
    })
    .context("starting Dovecot (is dovecot-imapd installed? scripts/prepare installs it)")
}

/// A PostgreSQL database of our own (dropped afterwards) and a Redis channel of our own.
pub struct Sinks {
    /// Dropped (with FORCE) when the run ends.
    pub db: TestDb,
    /// Redis URL.
    pub redis_url: String,
    /// A channel nobody else uses.
    pub channel: String,
}

/// The changes channel beside a sync channel (`flagsChanged`, `messagesExpunged`, `imported`).
pub fn changes_channel(channel: &str) -> String {
    format!("{channel}:changes")
}

impl Sinks {
    /// Creates the database; Redis must answer.
    pub async fn new() -> Result<Sinks> {
        let db = TestDb::postgres()
            .await
            .context("PostgreSQL on 127.0.0.1:5432 (IDLESYNC_TEST_PG)")?;
        let redis_url = std::env::var("IDLESYNC_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let channel = format!("idlesync-load:{}:{}", std::process::id(), unix_us());
        Ok(Sinks {
            db,
            redis_url,
            channel,
        })
    }

    /// Messages stored, all accounts.
    pub async fn stored(&self, pool: &sqlx::AnyPool) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
            .fetch_one(pool)
            .await?;
        Ok(n)
    }
}

/// One Redis record as the subscriber got it.
pub struct Received {
    /// Unix µs at receipt.
    pub at_us: i64,
    /// The JSON record.
    pub record: serde_json::Value,
}

/// A Redis subscription that stamps each record on receipt.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Subscribed to both channels (new mail and changes) before it returns.
    pub async fn new(sinks: &Sinks) -> Result<Subscriber> {
        let client = redis::Client::open(sinks.redis_url.as_str())?;
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .with_context(|| format!("Redis at {}", sinks.redis_url))?;
        pubsub.subscribe(&sinks.channel).await?;
        pubsub.subscribe(changes_channel(&sinks.channel)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let at_us = unix_us();
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let Ok(record) = serde_json::from_str(&payload) else {
                    continue;
                };
                if tx.send(Received { at_us, record }).is_err() {
                    break;
                }
            }
        });
        Ok(Subscriber { rx, task })
    }

    /// The next record, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// One `idlesync::latency` debug line: a record published.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// When the EXISTS behind it was read (Unix µs).
    pub exists_at_us: i64,
    /// EXISTS read → PUBLISH acknowledged (µs).
    pub exists_to_publish_us: i64,
}

/// `idlesync run` as a child process, with its admin port and its latency log lines.
pub struct DaemonProc {
    child: Child,
    /// The child's pid, for `/proc`.
    pub pid: u32,
    /// `/metrics`, `/status`.
    pub admin: SocketAddr,
    /// Parsed `idlesync::latency` lines, in order.
    pub published: mpsc::UnboundedReceiver<Published>,
    /// The last lines it logged, for error messages.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// When it was spawned.
    pub started: Instant,
    /// `perf record -p <pid>` when IDLESYNC_LOAD_PERF names an output file.
    profiler: Option<Child>,
    /// Holds the config file.
    _dir: tempfile::TempDir,
}

/// Which mailboxes a daemon watches: `(user, mailbox)`.
pub fn config_toml(
    dc: &Dovecot,
    sinks: &Sinks,
    admin: SocketAddr,
    watch: &[String],
    connects_per_second: Option<u32>,
) -> String {
    let mut s = format!(
        "[storage]\nurl = \"{db}\"\n\n[redis]\nurl = \"{redis}\"\nchannel = \"{channel}\"\nchanges_channel = \"{changes}\"\n\n\
         [metrics]\nlisten = \"{admin}\"\n\n[imap]\n{rate}{imap}\n",
        // Without --rate, idlesync's default applies.
        rate = connects_per_second
            .map(|n| format!("connects_per_second = {n}\n"))
            .unwrap_or_default(),
        // IDLESYNC_LOAD_PG_QUERY (say `sslmode=disable`) is appended to the database URL.
        db = match std::env::var("IDLESYNC_LOAD_PG_QUERY") {
            Ok(q) if !q.is_empty() => format!("{}?{q}", sinks.db.url),
            _ => sinks.db.url.clone(),
        },
        redis = sinks.redis_url,
        channel = sinks.channel,
        changes = changes_channel(&sinks.channel),
        // IDLESYNC_LOAD_IMAP (say `max_connecting = 10000`) is added to the `[imap]` section.
        imap = std::env::var("IDLESYNC_LOAD_IMAP").unwrap_or_default(),
    );
    for u in watch {
        s.push_str(&format!(
            "[[accounts]]\nid = \"{u}\"\nemail = \"{u}@example.test\"\nhost = \"127.0.0.1\"\n\
             port = {port}\ntls = \"implicit\"\nusername = \"{u}\"\npassword_env = \"{PASSWORD_ENV}\"\n\
             mailboxes = [\"INBOX\"]\nca_file = \"{ca}\"\n\n",
            port = dc.imaps_port(),
            ca = dc.ca_file().display(),
        ));
    }
    s
}

impl DaemonProc {
    /// Writes the config and spawns `bin run --config … --log-format json`.
    pub fn spawn(bin: &Path, toml_for: impl FnOnce(SocketAddr) -> String) -> Result<DaemonProc> {
        ensure!(
            bin.exists(),
            "{} not found: build it first (`cargo build --release`)",
            bin.display()
        );
        let admin = free_addr()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("idlesync.toml");
        std::fs::write(&config, toml_for(admin))?;
        let started = Instant::now();
        // For profiles: IDLESYNC_LOAD_WRAP="valgrind --tool=callgrind" runs the daemon under it.
        let wrap = std::env::var("IDLESYNC_LOAD_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg("json")
            .env(PASSWORD_ENV, PASSWORD)
            // IDLESYNC_LOAD_RUST_LOG adds directives (say `idlesync=debug` to time the phases
            // from the log's timestamps); IDLESYNC_LOAD_LOG=FILE keeps every line.
            .env(
                "RUST_LOG",
                format!(
                    "warn,idlesync::latency=debug,{}",
                    std::env::var("IDLESYNC_LOAD_RUST_LOG").unwrap_or_default()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, published) = mpsc::unbounded_channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail2 = tail.clone();
        let mut keep = match std::env::var("IDLESYNC_LOAD_LOG") {
            Ok(path) if !path.is_empty() => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("IDLESYNC_LOAD_LOG={path}"))?,
            ),
            _ => None,
        };
        // Drains stderr always, so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Some(p) = parse_published(&line) {
                    let _ = tx.send(p);
                    continue;
                }
                let mut t = tail2.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() >= 20 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        // For profiles of the daemon alone: perf's software clock (no hardware counters needed).
        let profiler = match std::env::var("IDLESYNC_LOAD_PERF") {
            Ok(out) if !out.is_empty() => Some(
                Command::new("perf")
                    .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-g"])
                    .args(["--call-graph", "dwarf,16384", "-o", &out, "-p"])
                    .arg(pid.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting perf record")?,
            ),
            _ => None,
        };
        Ok(DaemonProc {
            child,
            pid,
            admin,
            published,
            tail,
            started,
            profiler,
            _dir: dir,
        })
    }

    /// What it logged last (warnings and errors).
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// RSS, CPU time and open descriptors, from `/proc`.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::of(self.pid)
    }

    /// Polls `/status` every `every` until `n` mailboxes are idling; returns the time since
    /// spawn. Fails after `timeout`, or if the process exited.
    pub async fn wait_idling(
        &mut self,
        n: usize,
        every: Duration,
        timeout: Duration,
    ) -> Result<Duration> {
        let end = Instant::now() + timeout;
        let mut last = 0;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("idlesync exited with {status}:\n{}", self.tail());
            }
            // The summary, not /status: a 10,000-entry JSON every poll would cost idlesync
            // CPU that the time-to-online figure then counts.
            // An older binary (for an A/B run with --bin) has only /status: count there.
            let idling = match http_get(self.admin, "/status/summary").await {
                Ok(body) => serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["states"]["idling"].as_u64()),
                Err(_) => http_get(self.admin, "/status").await.ok().and_then(|body| {
                    let all = serde_json::from_str::<Vec<serde_json::Value>>(&body).ok()?;
                    Some(all.iter().filter(|m| m["state"] == "idling").count() as u64)
                }),
            };
            if let Some(idling) = idling {
                last = idling as usize;
                if last >= n {
                    return Ok(self.started.elapsed());
                }
            }
            if Instant::now() > end {
                bail!(
                    "{last} of {n} mailboxes idling after {timeout:?}; idlesync logged:\n{}",
                    self.tail()
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub fn stop(mut self) -> Result<()> {
        if let Some(mut perf) = self.profiler.take() {
            signal(perf.id(), SIGINT);
            let end = Instant::now() + Duration::from_secs(60);
            while perf.try_wait()?.is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = perf.kill();
            let _ = perf.wait();
        }
        signal(self.pid, SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > end {
                self.child.kill()?;
                self.child.wait()?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_published(line: &str) -> Option<Published> {
    if !line.contains("exists_to_publish_us") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = v.get("fields")?;
    Some(Published {
        exists_at_us: f.get("exists_at_us")?.as_i64()?,
        exists_to_publish_us: f.get("exists_to_publish_us")?.as_i64()?,
    })
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// Resident set (KiB).
    pub rss_kib: u64,
    /// utime + stime (seconds).
    pub cpu_s: f64,
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/{status,stat,fd}`.
    pub fn of(pid: u32) -> Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let (_, ticks) = comm_and_cpu_ticks(&stat).context("odd /proc/pid/stat")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok(ProcStats {
            rss_kib: field("VmRSS:").unwrap_or(0),
            cpu_s: ticks as f64 / clock_ticks() as f64,
            fds,
            threads: field("Threads:").unwrap_or(0),
        })
    }
}

/// CPU seconds (utime + stime) of every process on the machine, summed by group: Dovecot
/// (`dovecot`, `imap`, `imap-login`, its auth and log helpers), PostgreSQL (`postgres`) and
/// Redis (`redis-server`); plus the machine's busy time from /proc/stat.
/// A process that exits between two readings drops out of its group, so take both readings
/// while the daemon and its database pool are up.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub dovecot_s: f64,
    pub postgres_s: f64,
    pub redis_s: f64,
    pub busy_s: f64,
}

impl MachineCpu {
    pub fn now() -> Result<MachineCpu> {
        let hz = clock_ticks() as f64;
        let mut m = MachineCpu::default();
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            if !entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, ticks)) = comm_and_cpu_ticks(&stat) else {
                continue;
            };
            let cpu = ticks as f64 / hz;
            match comm {
                "dovecot" | "imap" | "imap-login" | "auth" | "log" | "config" | "anvil" => {
                    m.dovecot_s += cpu
                }
                "postgres" => m.postgres_s += cpu,
                "redis-server" => m.redis_s += cpu,
                _ => {}
            }
        }
        // The first line of /proc/stat: user nice system idle iowait irq softirq steal ...
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let busy: u64 = cpu
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
            .map(|(_, v)| v)
            .sum();
        m.busy_s = busy as f64 / hz;
        Ok(m)
    }

    /// `"idlesync 0.127, Dovecot 0.301, PostgreSQL 0.210, Redis 0.002 ms per message; machine
    /// busy 95 % of 2 cores"` between `self` (earlier) and `later`.
    pub fn per_message(
        &self,
        later: &MachineCpu,
        idlesync_s: f64,
        n: usize,
        wall_s: f64,
    ) -> String {
        let ms = |s: f64| 1000.0 * s / n as f64;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        format!(
            "idlesync {:.3}, Dovecot {:.3}, PostgreSQL {:.3}, Redis {:.3} ms per message; \
             machine busy {:.0} % of {cores} cores",
            ms(idlesync_s),
            ms(later.dovecot_s - self.dovecot_s),
            ms(later.postgres_s - self.postgres_s),
            ms(later.redis_s - self.redis_s),
            100.0 * (later.busy_s - self.busy_s) / wall_s / cores as f64
        )
    }
}

/// The command name and utime + stime (clock ticks) from the text of `/proc/<pid>/stat`. The
/// name is in parentheses and may itself hold spaces or parentheses; utime and stime are fields
/// 14 and 15, counted from the pid.
fn comm_and_cpu_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let (head, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((head.get(open + 1..)?, ticks))
}

fn clock_ticks() -> i64 {
    unsafe extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    const SC_CLK_TCK: i32 = 2;
    // SAFETY: sysconf(3) has no memory-safety preconditions.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t
    } else {
        100
    }
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// The `idlesync` binary beside this example's build (`target/release/idlesync` for
/// `cargo run --release --example …`).
pub fn release_binary() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    Ok(std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .context("no target directory")?
        .join("idlesync"))
}

/// Sends `sig` to `pid` (our own child).
pub fn signal(pid: u32, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            // SAFETY: kill(2) has no memory-safety preconditions; pid is our own child.
            unsafe {
                kill(pid, sig);
            }
        }
    }
}

/// A free loopback address for the admin listener.
fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?)
}

/// GET `path`; the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let buf = tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("admin listener timed out")??;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_string())
}

/// A ~`size`-byte text message, unique by `n`.
pub fn message(n: usize, to: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Load Sender <sender{s}@example.test>\r\nTo: {to}@example.test\r\n\
         Subject: Load message {n}\r\nMessage-ID: <load-{n}-{p}@example.test>\r\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
        s = n % 97,
        p = std::process::id(),
    );
    let line = "The quick brown fox jumps over the lazy dog, message body for load tests.\r\n";
    m.push_str(line);
    while m.len() + line.len() <= size {
        m.push_str(line);
    }
    m.into_bytes()
}

/// Writes messages straight into a user's Maildir, as an MDA would (tmp/ then rename into
/// new/, owned by the mail user), so delivery is not limited by IMAP APPEND.
pub struct MaildirWriter {
    uid: u32,
    gid: u32,
    seq: usize,
}

impl MaildirWriter {
    /// Takes the owner from the Dovecot home directories.
    pub fn new(dc: &Dovecot, any_user: &str) -> Result<MaildirWriter> {
        let home = dc.maildir(any_user).parent().context("home")?.to_path_buf();
        let meta = std::fs::metadata(&home)?;
        Ok(MaildirWriter {
            uid: meta.uid(),
            gid: meta.gid(),
            seq: 0,
        })
    }

    /// Creates `Maildir/{cur,new,tmp}` for `user` if missing.
    pub fn prepare(&self, dc: &Dovecot, user: &str) -> Result<PathBuf> {
        let md = dc.maildir(user);
        for d in [md.clone(), md.join("cur"), md.join("new"), md.join("tmp")] {
            if !d.exists() {
                std::fs::create_dir(&d)?;
                chown(&d, Some(self.uid), Some(self.gid))?;
            }
        }
        Ok(md)
    }

    /// Delivers one message into `maildir`.
    pub fn deliver(&mut self, maildir: &Path, raw: &[u8]) -> Result<()> {
        let (tmp, new) = self.stage(maildir, raw)?;
        std::fs::rename(tmp, new)?;
        Ok(())
    }

    /// Writes one message into `maildir/tmp`; returns it and where `rename` makes it delivered.
    /// Staging first lets a burst deliver at the speed of `rename(2)`.
    pub fn stage(&mut self, maildir: &Path, raw: &[u8]) -> Result<(PathBuf, PathBuf)> {
        self.seq += 1;
        let name = format!(
            "{}.M{}P{}.idlesync-load,S={}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            self.seq,
            std::process::id(),
            raw.len()
        );
        let tmp = maildir.join("tmp").join(&name);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(raw)?;
        drop(f);
        chown(&tmp, Some(self.uid), Some(self.gid))?;
        Ok((tmp, maildir.join("new").join(&name)))
    }
}

/// Result of `scripts/bare_idle.py`.
#[derive(Debug, Clone, Copy)]
pub struct Bare {
    /// Start to all idling (s).
    pub all_idling_s: f64,
    /// Sessions that failed.
    pub failed: u64,
}

/// The bare client's new connections per second without `--rate` (rounds 1 and 2's yardstick).
pub const BARE_DEFAULT_RATE: u32 = 1000;

/// Runs the bare asyncio client: `n` users log in, SELECT and IDLE, at most `rate` new
/// connections per second.
pub fn bare_client(dc: &Dovecot, n: usize, rate: u32) -> Result<Bare> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bare_idle.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--port", &dc.imaps_port().to_string()])
        .args(["--ca", &dc.ca_file().display().to_string()])
        .args(["--count", &n.to_string()])
        .args(["--password", PASSWORD])
        .args(["--rate", &rate.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running python3 scripts/bare_idle.py")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "bare_idle.py: {}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).context("bare_idle.py output")?;
    Ok(Bare {
        all_idling_s: v["all_idling_s"].as_f64().unwrap_or(f64::NAN),
        failed: v["failed"].as_u64().unwrap_or(0),
    })
}
