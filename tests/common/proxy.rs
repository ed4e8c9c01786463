//! A TCP proxy between the client under test and a server, for fault injection and for counting
//! what the client sends.
//!
//! It listens on `127.0.0.1:0` and opens one upstream connection per accepted client. It records
//! every chunk the client sends (time, connection, bytes), so a test can assert "the client sent
//! nothing for 60 s" exactly, or count IMAP commands on a plain (non-TLS) session. [`Mode`],
//! [`Proxy::cut_all`] and [`Proxy::set_server_pace`] inject faults. Dropping the proxy stops the listener and every connection.
//!
//! The `wait_*` helpers use tokio timers for their deadlines; under `tokio::time::pause()` those
//! fire as soon as the runtime waits for real network IO, so don't pause time around them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What the proxy does with traffic; see [`Proxy::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways, and pass a close from either side on to the other.
    Forward,
    /// A silent network: every connection, open or new, stays open but nothing passes either way.
    /// Bytes are read and dropped (still counted); a close from one side is hidden from the other
    /// until the mode changes, and then both are closed. New connections are accepted and connected
    /// upstream, and the server's greeting is swallowed too.
    Blackhole,
    /// New connections are accepted and closed at once; open ones keep forwarding.
    Refuse,
}

/// One read from a client, as the proxy received it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// When the proxy read it.
    pub at: Instant,
    /// Which connection: 0 for the first one accepted, then 1, 2, ...
    pub conn: u64,
    /// The bytes, whether forwarded or swallowed.
    pub data: Vec<u8>,
}

/// A running proxy; see the module docs.
pub struct Proxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// State shared with the accept loop and the connection tasks.
    shared: Arc<Shared>,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    task: JoinHandle<()>,
}

struct Shared {
    /// Where each connection goes.
    target: SocketAddr,
    /// The current mode; connections watch it to react to changes at once.
    mode: watch::Sender<Mode>,
    /// Bumped by `cut_all`; every open connection resets when it changes.
    cut: watch::Sender<u64>,
    /// Bumped on every event (accept, close, data) so that `wait_until` re-checks without polling.
    events: watch::Sender<u64>,
    /// Connections accepted so far, refused ones included.
    accepted: AtomicU64,
    /// Connections currently open.
    open: AtomicU64,
    /// Bytes read from clients, forwarded or not.
    client_bytes: AtomicU64,
    /// Bytes read from the server, forwarded or not.
    server_bytes: AtomicU64,
    /// Every chunk read from clients, in order. Never locked across an await.
    chunks: Mutex<Vec<Chunk>>,
    /// Server-to-client pacing, see [`Proxy::set_server_pace`]. Never locked across an await.
    pace: Mutex<Option<Pace>>,
}

/// A slow server: at most `bytes` passed on to the client, then a pause of `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Bytes per step (at least 1).
    pub bytes: usize,
    /// Pause after each step.
    pub every: Duration,
}

impl Shared {
    fn notify(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    fn pace(&self) -> Option<Pace> {
        *self.pace.lock().expect("pace")
    }
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` in front of `target`, in [`Mode::Forward`].
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            mode: watch::Sender::new(Mode::Forward),
            cut: watch::Sender::new(0),
            events: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            client_bytes: AtomicU64::new(0),
            server_bytes: AtomicU64::new(0),
            chunks: Mutex::new(Vec::new()),
            pace: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy { addr, shared, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Total bytes clients sent so far, over all connections, forwarded or swallowed.
    pub fn client_bytes(&self) -> u64 {
        self.shared.client_bytes.load(Ordering::SeqCst)
    }

    /// Total bytes the server sent so far, over all connections, forwarded or swallowed.
    pub fn server_bytes(&self) -> u64 {
        self.shared.server_bytes.load(Ordering::SeqCst)
    }

    /// Bytes clients sent that the proxy read at or after `t`.
    pub fn client_bytes_since(&self, t: Instant) -> u64 {
        self.client_chunks()
            .iter()
            .filter(|c| c.at >= t)
            .map(|c| c.data.len() as u64)
            .sum()
    }

    /// Every chunk clients sent so far, in the order read.
    pub fn client_chunks(&self) -> Vec<Chunk> {
        self.shared.chunks.lock().expect("chunk log").clone()
    }

    /// What clients sent, per connection in accept order, split into lines (CRLF or LF removed,
    /// invalid UTF-8 replaced). Meaningful for plain IMAP, not TLS.
    pub fn client_lines(&self) -> Vec<String> {
        let chunks = self.client_chunks();
        let mut conns: Vec<u64> = chunks.iter().map(|c| c.conn).collect();
        conns.sort_unstable();
        conns.dedup();
        let mut lines = Vec::new();
        for conn in conns {
            let bytes: Vec<u8> = chunks
                .iter()
                .filter(|c| c.conn == conn)
                .flat_map(|c| c.data.iter().copied())
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            lines.extend(
                text.split('\n')
                    .map(|l| l.strip_suffix('\r').unwrap_or(l))
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        lines
    }

    /// How many client lines are the IMAP command `command` (case-insensitive, e.g. `"NOOP"`,
    /// `"IDLE"`, `"UID FETCH"`): `<tag> <command>[ ...]`, or the bare line for `"DONE"`.
    pub fn count_commands(&self, command: &str) -> usize {
        let is = |line: &str| {
            if line.eq_ignore_ascii_case(command) {
                return true;
            }
            let Some((_tag, rest)) = line.split_once(' ') else {
                return false;
            };
            rest.len() >= command.len()
                && rest.is_char_boundary(command.len())
                && rest[..command.len()].eq_ignore_ascii_case(command)
                && rest[command.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ')
        };
        self.client_lines().iter().filter(|l| is(l)).count()
    }

    /// Connections accepted so far, refused ones included.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switches the mode; open connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
        self.shared.notify();
    }

    /// Slows what servers send, on open and new connections alike (`None`: full speed). The
    /// pauses are tokio timers: don't pause time while a pace is set.
    pub fn set_server_pace(&self, pace: Option<Pace>) {
        *self.shared.pace.lock().expect("pace") = pace;
    }

    /// Resets every open connection (RST to both sides, as a dropped NAT entry or a crashed host
    /// would). New connections are not affected.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Waits until `n` connections have been accepted in total.
    pub async fn wait_connections(&self, n: u64, deadline: Duration) -> Result<()> {
        self.wait_until(deadline, |p| p.connections() >= n)
            .await
            .map_err(|_| {
                anyhow!(
                    "{} connections, not {n}, after {deadline:?}",
                    self.connections()
                )
            })
    }

    /// Waits until `cond` holds, re-checking after every accept, close and chunk (no polling).
    pub async fn wait_until(
        &self,
        deadline: Duration,
        mut cond: impl FnMut(&Proxy) -> bool,
    ) -> Result<()> {
        let mut events = self.shared.events.subscribe();
        let wait = async {
            while !cond(self) {
                // The sender lives in `self.shared`, so this never fails while `self` exists.
                let _ = events.changed().await;
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .map_err(|_| anyhow!("proxy condition not met within {deadline:?}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with this task when the proxy is dropped, which aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let client = match accepted {
                    Ok((client, _)) => client,
                    Err(e) => {
                        // For example EMFILE: back off a little instead of spinning.
                        eprintln!("proxy: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
                // Subscribed here, not in the task, so a cut right after the accept still applies.
                let cut = shared.cut.subscribe();
                if shared.mode() == Mode::Refuse {
                    drop(client);
                    shared.notify();
                    continue;
                }
                shared.open.fetch_add(1, Ordering::SeqCst);
                shared.notify();
                conns.spawn(connection(id, client, cut, shared.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Marks a connection closed however its task ends (return or abort).
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.notify();
    }
}

async fn connection(
    id: u64,
    mut client: TcpStream,
    mut cut: watch::Receiver<u64>,
    shared: Arc<Shared>,
) {
    let _open = OpenGuard(shared.clone());
    let mut mode = shared.mode.subscribe();
    // No timeout: on loopback a connect succeeds or is refused at once, and a tokio timer here
    // would fire early in a test with paused time.
    let mut server = match TcpStream::connect(shared.target).await {
        Ok(server) => server,
        Err(_) => {
            // The closest an accepted socket gets to "connection refused".
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset = |client: &TcpStream, server: &TcpStream| {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    };

    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let (mut client_open, mut server_open) = (true, true);
    loop {
        let pace = shared.pace();
        let step = pace.map_or(from_server.len(), |p| p.bytes.clamp(1, from_server.len()));
        tokio::select! {
            read = client.read(&mut from_client), if client_open => match read {
                Ok(n) if n > 0 => {
                    let data = &from_client[..n];
                    shared.client_bytes.fetch_add(n as u64, Ordering::SeqCst);
                    shared.chunks.lock().expect("chunk log").push(Chunk {
                        at: Instant::now(),
                        conn: id,
                        data: data.to_vec(),
                    });
                    shared.notify();
                    if shared.mode() != Mode::Blackhole {
                        tokio::select! {
                            written = server.write_all(data) => server_open &= written.is_ok(),
                            _ = cut.changed() => return reset(&client, &server),
                        }
                    }
                }
                _ => client_open = false,
            },
            read = server.read(&mut from_server[..step]), if server_open => match read {
                Ok(n) if n > 0 => {
                    let data = &from_server[..n];
                    shared.server_bytes.fetch_add(n as u64, Ordering::SeqCst);
                    shared.notify();
                    if shared.mode() != Mode::Blackhole {
                        tokio::select! {
                            written = client.write_all(data) => client_open &= written.is_ok(),
                            _ = cut.changed() => return reset(&client, &server),
                        }
                    }
                    if let Some(pace) = pace {
                        tokio::select! {
                            _ = tokio::time::sleep(pace.every) => {}
                            _ = cut.changed() => return reset(&client, &server),
                        }
                    }
                }
                _ => server_open = false,
            },
            _ = cut.changed() => return reset(&client, &server),
            _ = mode.changed() => {}
        }
        // A close passes through (dropping both sockets sends FIN to both), except in a
        // blackhole, which hides it until the mode changes.
        let both_closed = !client_open && !server_open;
        if both_closed || ((!client_open || !server_open) && shared.mode() != Mode::Blackhole) {
            return;
        }
    }
}
