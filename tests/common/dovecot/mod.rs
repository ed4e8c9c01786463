//! A throwaway Dovecot 2.3 for one test: process control and its config here, the test
//! certificates in [`certs`], a minimal IMAP client in [`wire`].
//!
//! Everything lives in one temporary directory: the config (`dovecot -c`), `base_dir`,
//! `state_dir`, the log, the TLS certificates and each user's home with its Maildir. Nothing is
//! read from or written to `/etc/dovecot`, and no system service is touched. Each instance listens
//! on two free loopback ports: plain IMAP (offering STARTTLS) and implicit-TLS IMAPS.
//!
//! Mail runs as Debian's `mail` user, because Dovecot refuses uid 0 for mail. The master runs in
//! the foreground (`-F`) as a child of the test process, with its stdio detached.
//!
//! `start`, `stop` and `restart` block the calling thread for their few tens of milliseconds,
//! which is fine inside `#[tokio::test]`. The async helpers guard against a hung server with
//! tokio timeouts, so don't use them under `tokio::time::pause()`: paused time jumps ahead
//! whenever the runtime waits for real IO.
//!
//! Dovecot gotchas this module works around:
//! - An imap process serving a client outlives the master: with a connected client it keeps
//!   running (and keeps the log and stats processes alive) after the master exits. `stop` therefore
//!   ends every process of the instance, found by its process title `dovecot-<instance_name>/...`.
//! - A master stopped with SIGTERM sleeps a fixed second before exiting. `stop` kills the master
//!   with SIGKILL and then sends SIGTERM to its children, which is ~50 times faster and still lets
//!   each imap process send `* BYE Server shutting down.` to its client.
//! - The first greeting can be `* OK Waiting for authentication process to respond..`; readiness
//!   waits for the real `* OK [CAPABILITY ...] ... ready.` one.
//! - Failed logins are delayed by `auth_failure_delay` (2 s) and by anvil's per-IP penalty (up to
//!   15 s). Both are turned off: `auth_failure_delay = 0` and loopback in `login_trusted_networks`.
//! - `mail_max_userip_connections` (10 per user and IP) is raised, or a test with many sessions for
//!   one user gets `Maximum number of connections from user+IP exceeded`.

mod certs;
pub mod wire;

use certs::{certs, client_tls_config, Certs};
pub use wire::Wire;

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rustls::pki_types::ServerName;
use tempfile::TempDir;
use tokio_rustls::client::TlsStream;

/// The Dovecot master binary (Debian's `dovecot-core`).
const DOVECOT: &str = "/usr/sbin/dovecot";
/// How long `start` waits for the greeting, and `stop` for the processes to end.
const DEADLINE: Duration = Duration::from_secs(20);

/// Settings for [`Dovecot::start_with`]. `Default` gives no users, `client_limit = 1` and
/// `process_limit = 100`.
#[derive(Debug, Clone)]
pub struct DovecotOptions {
    /// `(user, password)` pairs; the passwords are stored as `{PLAIN}`.
    pub users: Vec<(String, String)>,
    /// `service imap { client_limit }`. With 1 every session gets its own imap process, which two
    /// IDLE sessions on one mailbox need to both be pushed (crate-notes, "Shared watches"). Above 1,
    /// `service_count = 0` is set as Dovecot requires.
    pub client_limit: u32,
    /// `service imap { process_limit }`. imap-login gets the same limit, since with TLS each
    /// logged-in session keeps its login process as a proxy.
    pub process_limit: u32,
    /// Appended verbatim to the generated config, for example
    /// `"mailbox_idle_check_interval = 1s\n"`. Later settings override earlier ones.
    pub extra_config: String,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        DovecotOptions {
            users: Vec::new(),
            client_limit: 1,
            process_limit: 100,
            extra_config: String::new(),
        }
    }
}

/// A running Dovecot with its own directory, ports and users. Dropping it ends every process and
/// removes the directory.
pub struct Dovecot {
    /// Everything on disk; removed on drop, after the processes are gone.
    dir: TempDir,
    /// What it was started with; `restart` reuses it.
    opts: DovecotOptions,
    /// `instance_name`, unique per instance; Dovecot puts it in every process title, which is how
    /// `stop` finds the processes that outlive the master.
    instance: String,
    /// PEM of the test CA, for clients (`ca_file`).
    ca_file: PathBuf,
    /// Plain IMAP port, offering STARTTLS.
    imap_port: u16,
    /// Implicit TLS port.
    imaps_port: u16,
    /// Client TLS settings trusting only this instance's test CA.
    tls: Arc<rustls::ClientConfig>,
    /// The foreground master process; `None` while stopped.
    master: Option<Child>,
}

impl Dovecot {
    /// Starts Dovecot with these `(user, password)` pairs and the default limits.
    pub fn start(users: &[(&str, &str)]) -> Result<Dovecot> {
        Dovecot::start_with(DovecotOptions {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            ..DovecotOptions::default()
        })
    }

    /// Starts Dovecot and returns once it greets on the plain port. Takes about 35 ms.
    pub fn start_with(opts: DovecotOptions) -> Result<Dovecot> {
        static REAP: Once = Once::new();
        REAP.call_once(reap_orphans);
        static COUNTER: AtomicU32 = AtomicU32::new(0);

        ensure!(
            opts.client_limit >= 1 && opts.process_limit >= 1,
            "limits must be at least 1"
        );
        for (user, pass) in &opts.users {
            ensure!(
                !user.is_empty()
                    && !user.starts_with('.')
                    && user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)),
                "user name {user:?}: use ASCII letters, digits and ._-@"
            );
            ensure!(
                !pass.contains([':', '\n', '\r', '"', '\\']),
                "password for {user} must not contain : \" \\ or line breaks"
            );
        }
        let certs = certs()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("idlesync-dovecot-{}-", std::process::id()))
            .tempdir()
            .context("creating the Dovecot temp dir")?;
        let root = dir.path();
        write_files(root, &opts, certs)?;

        let mut dovecot = Dovecot {
            instance: format!(
                "idlesync-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            tls: client_tls_config(&certs.ca)?,
            ca_file: root.join("ca.pem"),
            opts,
            imap_port: 0,
            imaps_port: 0,
            master: None,
            dir,
        };
        // The ports are free when picked but can be taken before Dovecot binds them; retry then.
        for attempt in 1.. {
            let [imap, imaps] = free_ports::<2>()?;
            dovecot.imap_port = imap;
            dovecot.imaps_port = imaps;
            match dovecot.launch() {
                Ok(()) => return Ok(dovecot),
                Err(e) if attempt < 5 && dovecot.log().contains("Address already in use") => {
                    eprintln!("dovecot: port clash, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    /// Plain IMAP port on 127.0.0.1, offering STARTTLS.
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// Implicit-TLS IMAP port on 127.0.0.1.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// `127.0.0.1:imap_port`.
    pub fn imap_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.imap_port).into()
    }

    /// `127.0.0.1:imaps_port`.
    pub fn imaps_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.imaps_port).into()
    }

    /// PEM of the test CA that signed the server certificate (valid for `localhost` and
    /// `127.0.0.1`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A rustls client config (ring provider) that trusts only [`ca_file`](Self::ca_file).
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The password this instance was given for `user`.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.opts
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.as_str())
    }

    /// The user's Maildir (`~/Maildir`); INBOX is its `cur`/`new`, other mailboxes are `.Name`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user).join("Maildir")
    }

    /// The generated config file, for `doveadm -c`.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    /// Everything Dovecot logged so far (one file for errors, info and debug).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Runs `doveadm -c <config> ARGS` and returns its stdout, e.g.
    /// `["expunge", "-u", "alice", "mailbox", "INBOX", "all"]` or `["kick", "alice"]`.
    pub fn doveadm(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(self.config_file())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running doveadm")?;
        ensure!(
            out.status.success(),
            "doveadm {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Ends every process of this instance and returns when they are gone, so the ports are closed.
    /// Clients get `* BYE Server shutting down.` or a closed connection. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut master) = self.master.take() {
            sys::signal(master.id(), sys::SIGKILL);
            master.wait().context("waiting for the Dovecot master")?;
        }
        let started = Instant::now();
        let mut signalled = HashSet::new();
        loop {
            let left = processes(|args| self.is_ours(args));
            if left.is_empty() {
                break;
            }
            // SIGTERM once (imap processes then say BYE); SIGKILL whatever ignores it.
            let stubborn = started.elapsed() > Duration::from_secs(3);
            for pid in left {
                if stubborn {
                    sys::signal(pid, sys::SIGKILL);
                } else if signalled.insert(pid) {
                    sys::signal(pid, sys::SIGTERM);
                }
            }
            if started.elapsed() > DEADLINE {
                bail!("Dovecot processes of {} did not exit", self.instance);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // A stale pid file is fine unless its pid is reused; Dovecot would then refuse to start.
        let _ = fs::remove_file(self.dir.path().join("run/master.pid"));
        Ok(())
    }

    /// Stops, then starts again on the same ports with the same users and mail, so UIDs continue
    /// and UIDVALIDITY stays.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Appends `raw` to `mailbox` over IMAPS, creating the mailbox if it is missing, and returns
    /// the new message's UID (from UIDPLUS `APPENDUID`).
    pub async fn append(&self, user: &str, mailbox: &str, raw: &[u8]) -> Result<u32> {
        let mut wire = Wire::login(self, user).await?;
        let uid = wire.append(mailbox, raw).await?;
        wire.logout().await;
        Ok(uid)
    }

    /// Creates `mailbox` for `user` over IMAPS. An existing mailbox is not an error.
    pub async fn create_mailbox(&self, user: &str, mailbox: &str) -> Result<()> {
        let mut wire = Wire::login(self, user).await?;
        wire.create(mailbox).await?;
        wire.logout().await;
        Ok(())
    }

    /// A TLS connection to the IMAPS port; the greeting is still unread.
    pub async fn connect_tls(&self) -> Result<TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.imaps_addr()).await?;
        let name = ServerName::try_from("localhost")?;
        Ok(tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?)
    }

    /// Whether `args` (a process's argv) belongs to this instance: the master (forked but not yet
    /// renamed children look the same) or a child, by its `dovecot-<instance>/` title.
    fn is_ours(&self, args: &[String]) -> bool {
        let conf = self.config_file();
        args.first()
            .is_some_and(|a| a.starts_with(&format!("dovecot-{}/", self.instance)))
            || args.iter().any(|a| Path::new(a) == conf)
    }

    /// Writes the config for the current ports, starts the master and waits for the greeting.
    fn launch(&mut self) -> Result<()> {
        let conf = self.config_file();
        fs::write(&conf, self.config()?)?;
        // A fresh log per launch, so a failure shows only this attempt.
        fs::write(self.dir.path().join("dovecot.log"), "")?;
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {DOVECOT}; is dovecot-imapd installed?"))?;
        self.master = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(e) => {
                let log = self.log();
                let _ = self.stop();
                Err(e.context(format!("Dovecot did not start; its log:\n{log}")))
            }
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        let imap = self.imap_addr();
        loop {
            let master = self.master.as_mut().context("not started")?;
            if let Some(status) = master.try_wait()? {
                bail!("the master exited with {status}");
            }
            if let Ok(stream) = TcpStream::connect_timeout(&imap, Duration::from_millis(500)) {
                if greeted(stream).unwrap_or(false) {
                    TcpStream::connect_timeout(&self.imaps_addr(), Duration::from_secs(1))
                        .context("IMAPS port")?;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("no greeting on {imap} within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn config(&self) -> Result<String> {
        let (uid, gid) = mail_ids()?;
        let dir = self.dir.path().display();
        let DovecotOptions {
            client_limit: clients,
            process_limit: procs,
            ..
        } = self.opts;
        // Above one client per process Dovecot needs service_count = 0 (crate-notes).
        let (imap_multi, login_multi) = if clients > 1 {
            (
                "service_count = 0".to_string(),
                format!("service_count = 0\n  client_limit = {clients}"),
            )
        } else {
            (String::new(), String::new())
        };
        // auth, anvil and the log take one connection per login/imap process; the default of 1000
        // warns and refuses connections beyond that.
        let default_clients = (2 * procs + 100).max(1000);
        Ok(format!(
            r#"# Generated by tests/common/dovecot/mod.rs; nothing here comes from /etc/dovecot.
protocols = imap
listen = 127.0.0.1
instance_name = {instance}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
debug_log_path = {dir}/dovecot.log
log_timestamp = "%H:%M:%S.%{{usecs}} "
auth_verbose = yes

ssl = yes
ssl_cert = <{dir}/server.pem
ssl_key = <{dir}/server.key

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8

first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:~/Maildir

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = home={dir}/home/%u
}}

protocol imap {{
  mail_max_userip_connections = 100000
}}

default_client_limit = {default_clients}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
  process_limit = {procs}
  {login_multi}
}}

service imap {{
  client_limit = {clients}
  process_limit = {procs}
  {imap_multi}
}}

{extra}
"#,
            instance = self.instance,
            imap_port = self.imap_port,
            imaps_port = self.imaps_port,
            extra = self.opts.extra_config,
        ))
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("dovecot: stopping {}: {e:#}", self.instance);
        }
    }
}

/// Lays out everything but the config under `root`: certificates, passwd file, homes.
fn write_files(root: &Path, opts: &DovecotOptions, certs: &Certs) -> Result<()> {
    let (uid, gid) = mail_ids()?;
    // Dovecot's unprivileged processes (auth as `dovecot`, mail as `mail`) must traverse it.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    ensure!(
        root.join("run/imap-urlauth-worker").as_os_str().len() < 100,
        "temp dir {} is too long for Dovecot's unix sockets; set TMPDIR shorter",
        root.display()
    );
    fs::create_dir(root.join("run"))?;
    fs::create_dir(root.join("state"))?;
    fs::write(root.join("ca.pem"), &certs.ca)?;
    fs::write(root.join("server.pem"), &certs.cert)?;
    fs::write(root.join("server.key"), &certs.key)?;
    fs::set_permissions(root.join("server.key"), fs::Permissions::from_mode(0o600))?;
    let passwd: String = opts
        .users
        .iter()
        .map(|(u, p)| format!("{u}:{{PLAIN}}{p}::::::\n"))
        .collect();
    fs::write(root.join("passwd"), passwd)?;
    fs::set_permissions(root.join("passwd"), fs::Permissions::from_mode(0o644))?;
    fs::create_dir(root.join("home"))?;
    for (user, _) in &opts.users {
        let home = root.join("home").join(user);
        fs::create_dir(&home).with_context(|| format!("home of {user} (listed twice?)"))?;
        chown(&home, Some(uid), Some(gid)).with_context(|| format!("chown {}", home.display()))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Reads from a fresh connection until Dovecot's real greeting (`* OK [CAPABILITY ...`), skipping
/// `* OK Waiting for authentication process to respond..`, then logs out.
fn greeted(stream: TcpStream) -> Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    for _ in 0..20 {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        if line.starts_with("* OK [CAPABILITY") {
            let _ = (&stream).write_all(b"r LOGOUT\r\n");
            return Ok(true);
        }
    }
    Ok(false)
}

/// `N` distinct free loopback ports. They are released before returning, so another process can
/// take one before Dovecot binds it; `start_with` retries on that.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Uid and gid of Debian's `mail` user, which mail processes run as.
fn mail_ids() -> Result<(u32, u32)> {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    if let Some(ids) = IDS.get() {
        return Ok(*ids);
    }
    let passwd = fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("mail:"))
        .context("no `mail` user in /etc/passwd")?;
    let fields: Vec<&str> = line.split(':').collect();
    ensure!(fields.len() >= 4, "odd /etc/passwd line {line:?}");
    let ids = (fields[2].parse()?, fields[3].parse()?);
    Ok(*IDS.get_or_init(|| ids))
}

/// Pids of the processes whose argv satisfies `pred` (zombies have none and never match).
fn processes(pred: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            !args.is_empty() && pred(&args)
        })
        .collect()
}

/// Kills the Dovecots left behind by test processes that died without dropping them (SIGKILL,
/// abort). They are recognised by the owner's pid in the instance name or config path.
fn reap_orphans() {
    fn owner(args: &[String]) -> Option<u32> {
        let text = args
            .first()
            .and_then(|a| a.strip_prefix("dovecot-idlesync-"))
            .or_else(|| {
                let conf = args.iter().find(|a| a.ends_with("/dovecot.conf"))?;
                let at = conf.find("/idlesync-dovecot-")?;
                Some(&conf[at + "/idlesync-dovecot-".len()..])
            })?;
        text.split('-').next()?.parse().ok()
    }
    let own = std::process::id();
    let dead = |o: u32| o != own && !Path::new(&format!("/proc/{o}")).exists();
    for pid in processes(|args| owner(args).is_some_and(dead)) {
        sys::signal(pid, sys::SIGKILL);
    }
    // Their directories too (`idlesync-dovecot-<pid>-XXXXXX`).
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix("idlesync-dovecot-"))
            .and_then(|rest| rest.split('-').next()?.parse().ok());
        if owner.is_some_and(dead) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// `kill(2)`; std has no way to send a signal other than SIGKILL to a child.
mod sys {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;

    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }

    /// Signals one process. Pids 0 and 1 (and anything that does not fit a positive i32) are
    /// refused, since kill(2) would read them as "my process group" or "everyone".
    pub fn signal(pid: u32, sig: i32) {
        if let Ok(pid) = i32::try_from(pid) {
            if pid > 1 {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    kill(pid, sig);
                }
            }
        }
    }
}
