//! A TCP proxy in front of a plain (non-TLS) IMAP port that follows each session's LOGIN, IDLE
//! and DONE as the client sends them, and records per user how many sessions are in IDLE at
//! once, and the most there ever were. "At no moment do two replicas IDLE on one mailbox" is
//! then measured continuously, not sampled.
//!
//! A session counts as idling from the client's `tag IDLE` line until its `DONE` line or until
//! the connection closes (either side). That is the client's view, which is the one that
//! matters across replicas: a replica handing a mailbox over sends DONE before it releases the
//! lease, so the next owner's IDLE can only come after. Server bytes pass untouched. A close from
//! either side closes both.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What one user's sessions look like through the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserCount {
    /// Sessions logged in as the user and still open.
    pub open: usize,
    /// Of those, the ones in IDLE now.
    pub idle: usize,
    /// The most sessions in IDLE at once since the start or the last [`IdleCount::reset_max`].
    pub max_idle: usize,
    /// Sessions logged in as the user since the start (never reset): a mailbox that keeps
    /// its session sees this stay put.
    pub logins: usize,
}

/// A moment when a user had more than one session in IDLE.
#[derive(Debug, Clone)]
pub struct Overlap {
    /// When (tokio clock) it began.
    pub at: Instant,
    /// The user.
    pub user: String,
    /// How many sessions were idling then.
    pub idle: usize,
}

struct State {
    users: BTreeMap<String, UserCount>,
    overlaps: Vec<Overlap>,
    /// Bumped on every change, for [`IdleCount::wait_for`].
    changed: watch::Sender<u64>,
}

impl State {
    fn user(&mut self, user: &str) -> &mut UserCount {
        self.users.entry(user.to_string()).or_default()
    }

    fn idle_start(&mut self, user: &str) {
        let c = self.user(user);
        c.idle += 1;
        c.max_idle = c.max_idle.max(c.idle);
        let idle = c.idle;
        if idle > 1 {
            self.overlaps.push(Overlap {
                at: Instant::now(),
                user: user.to_string(),
                idle,
            });
        }
    }
}

/// A running proxy; dropping it closes the listener and every session.
pub struct IdleCount {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for IdleCount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdleCount {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<IdleCount> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (changed, rx) = watch::channel(0);
        let state = Arc::new(Mutex::new(State {
            users: BTreeMap::new(),
            overlaps: Vec::new(),
            changed,
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Owning the sessions here ends them all when the accept loop is aborted.
            let mut sessions = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        sessions.spawn(session(client, target, shared.clone()));
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        Ok(IdleCount {
            addr,
            state,
            changed: rx,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every user seen so far.
    pub fn counts(&self) -> BTreeMap<String, UserCount> {
        self.lock().users.clone()
    }

    /// One user's counts (zero when never seen).
    pub fn count(&self, user: &str) -> UserCount {
        self.lock().users.get(user).copied().unwrap_or_default()
    }

    /// Starts a new measuring period: each user's maximum becomes what is idling now, and the
    /// overlaps recorded so far are forgotten.
    pub fn reset_max(&self) {
        let mut s = self.lock();
        for c in s.users.values_mut() {
            c.max_idle = c.idle;
        }
        s.overlaps.clear();
    }

    /// Waits until `pred` holds for the counts of every user seen, or fails after `deadline`.
    pub async fn wait_for(
        &self,
        deadline: std::time::Duration,
        mut pred: impl FnMut(&BTreeMap<String, UserCount>) -> bool,
    ) -> Result<()> {
        let mut rx = self.changed.clone();
        let end = Instant::now() + deadline;
        loop {
            // Marked seen before looking, so a change made while we look wakes the wait below.
            rx.borrow_and_update();
            if pred(&self.lock().users) {
                return Ok(());
            }
            match tokio::time::timeout_at(end, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("the proxy stopped"),
                Err(_) => anyhow::bail!("proxy counts {:?} after {deadline:?}", self.counts()),
            }
        }
    }

    /// Every moment since the last reset when a user had more than one session in IDLE.
    pub fn overlaps(&self) -> Vec<Overlap> {
        self.lock().overlaps.clone()
    }
}

/// One client session: bytes both ways, the client's lines read on the way.
async fn session(client: TcpStream, target: SocketAddr, state: Arc<Mutex<State>>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut lines = Lines::default();
    let to_server = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                for line in lines.feed(&buf[..n]) {
                    lines.apply(&line, &mut s);
                }
                s.changed.send_modify(|v| *v += 1);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    // Whichever side closes first ends the session: both sockets drop here.
    tokio::select! {
        () = to_server => {}
        () = to_client => {}
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    lines.close(&mut s);
    s.changed.send_modify(|v| *v += 1);
}

/// The client's side of one session: line splitting (skipping literals) and what the lines mean.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    /// Bytes of a literal still to skip.
    literal: usize,
    /// The user this session logged in as.
    user: Option<String>,
    idling: bool,
    /// Whether `open` was counted for `user`.
    counted: bool,
}

impl Lines {
    /// Complete lines in `data` (without CRLF); literal bytes are skipped.
    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            if self.literal > 0 {
                let skip = self.literal.min(rest.len());
                self.literal -= skip;
                rest = &rest[skip..];
                continue;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    let line = String::from_utf8_lossy(&self.buf)
                        .trim_end_matches('\r')
                        .to_string();
                    self.buf.clear();
                    self.literal = literal_len(&line);
                    out.push(line);
                }
                None => {
                    self.buf.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        out
    }

    fn apply(&mut self, line: &str, s: &mut State) {
        if self.idling {
            if line.eq_ignore_ascii_case("DONE") {
                self.idling = false;
                if let Some(u) = &self.user {
                    s.user(u).idle -= 1;
                }
            }
            return;
        }
        let (_, command, rest) = crate::common::command::split_command(line);
        match command.as_str() {
            "LOGIN" if self.user.is_none() => {
                let user = first_astring(rest);
                let c = s.user(&user);
                c.open += 1;
                c.logins += 1;
                self.user = Some(user);
                self.counted = true;
            }
            "IDLE" => {
                if let Some(u) = &self.user {
                    self.idling = true;
                    s.idle_start(u);
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, s: &mut State) {
        if let Some(u) = self.user.take() {
            let c = s.user(&u);
            if self.idling {
                c.idle -= 1;
            }
            if self.counted {
                c.open -= 1;
            }
        }
        self.idling = false;
    }
}

/// `n` when `line` ends with a literal announcement `{n}` or `{n+}`, else 0.
fn literal_len(line: &str) -> usize {
    let Some(open) = line.strip_suffix('}').and_then(|l| l.rfind('{')) else {
        return 0;
    };
    line[open + 1..line.len() - 1]
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0)
}

/// The first IMAP astring of `rest`: a quoted string (unescaped) or an atom.
fn first_astring(rest: &str) -> String {
    let rest = rest.trim_start();
    if let Some(q) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else {
        rest.split(' ').next().unwrap_or("").to_string()
    }
}
