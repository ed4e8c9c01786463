//! A scripted hostile IMAP server (issue #14): it logs in, selects an empty mailbox, announces
//! `* 1 EXISTS` as soon as IDLE starts, and answers the `UID FETCH` that follows with an
//! attack, on every connection. Also a well-behaved [`Attack::Control`] mode whose messages
//! are added while the daemon runs, for the all-attacks-at-once run. Plain TCP on 127.0.0.1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the server answers `UID FETCH` with.
#[derive(Debug, Clone)]
pub enum Attack {
    /// A response line that never ends (no CRLF): `total` bytes, at `rate` bytes/s when set.
    EndlessLine { total: u64, rate: Option<u64> },
    /// `* 1 FETCH (UID abc FLAGS (\Seen` then the tagged OK: never parses.
    MalformedFetch,
    /// A literal just under async-imap's 512 MiB cap, then up to `total` of its bytes.
    HugeLiteral { total: u64 },
    /// 4 KiB of binary garbage as a line, then the tagged OK.
    Garbage,
    /// A 20 MB line ended by a NUL.
    NulLine,
    /// Well behaved: serves the messages added with [`Hostile::deliver`].
    Control,
}

/// The server; dropped, it stops accepting.
pub struct Hostile {
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Attack bytes the server managed to write (the client read them or the socket buffered
    /// them).
    pub sent: Arc<AtomicU64>,
    /// Control mode: the mailbox.
    mailbox: Arc<Mailbox>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Mailbox {
    messages: Mutex<Vec<Vec<u8>>>,
    added: Notify,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    /// Control mode: adds a message; an IDLE session hears `* N EXISTS` at once.
    pub fn deliver(&self, message: Vec<u8>) -> u32 {
        let mut m = self.mailbox.messages.lock().expect("lock");
        m.push(message);
        let uid = m.len() as u32;
        drop(m);
        self.mailbox.added.notify_waiters();
        uid
    }
}

/// Starts a server answering with `attack`.
pub async fn start(attack: Attack) -> Result<Hostile> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let connections = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mailbox = Arc::new(Mailbox::default());
    let (counter, sent2, mailbox2) = (connections.clone(), sent.clone(), mailbox.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (attack, sent, mailbox) = (attack.clone(), sent2.clone(), mailbox2.clone());
            tokio::spawn(async move {
                let _ = session(stream, &attack, &sent, &mailbox).await;
            });
        }
    });
    Ok(Hostile {
        port,
        connections,
        sent,
        mailbox,
        task,
    })
}

async fn session(
    stream: tokio::net::TcpStream,
    attack: &Attack,
    sent: &AtomicU64,
    mailbox: &Mailbox,
) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"* OK hostile IMAP ready\r\n").await?;
    // Messages this session has announced.
    let mut announced = 0;
    while let Some(line) = lines.next_line().await? {
        let (tag, cmd, rest) = super::command::split_command(&line);
        let reply = match cmd.as_str() {
            "LOGIN" => format!("{tag} OK LOGIN done\r\n"),
            "SELECT" => {
                let n = match attack {
                    Attack::Control => mailbox.messages.lock().expect("lock").len(),
                    _ => 0,
                };
                announced = n;
                format!(
                    "* {n} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT {}] ok\r\n{tag} OK [READ-WRITE] SELECT done\r\n",
                    n + 1
                )
            }
            "IDLE" => {
                w.write_all(b"+ idling\r\n").await?;
                if !matches!(attack, Attack::Control) {
                    w.write_all(b"* 1 EXISTS\r\n").await?;
                }
                loop {
                    let added = mailbox.added.notified();
                    tokio::pin!(added);
                    added.as_mut().enable();
                    let n = mailbox.messages.lock().expect("lock").len();
                    if matches!(attack, Attack::Control) && n > announced {
                        announced = n;
                        w.write_all(format!("* {n} EXISTS\r\n").as_bytes()).await?;
                    }
                    tokio::select! {
                        l = lines.next_line() => match l? {
                            Some(l) if l.eq_ignore_ascii_case("DONE") => break,
                            Some(_) => {}
                            None => return Ok(()),
                        },
                        _ = added => {}
                    }
                }
                format!("{tag} OK IDLE done\r\n")
            }
            "UID" if matches!(attack, Attack::Control) => {
                let from = super::command::fetch_from(rest);
                let messages = mailbox.messages.lock().expect("lock").clone();
                let mut out = Vec::new();
                for uid in from.max(1)..=messages.len() {
                    let body = &messages[uid - 1];
                    out.extend_from_slice(format!(
                        "* {uid} FETCH (UID {uid} FLAGS () INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" RFC822.SIZE {len} BODY[]<0> {{{len}}}\r\n",
                        len = body.len()
                    ).as_bytes());
                    out.extend_from_slice(body);
                    out.extend_from_slice(b")\r\n");
                }
                out.extend_from_slice(format!("{tag} OK UID FETCH done\r\n").as_bytes());
                w.write_all(&out).await?;
                continue;
            }
            "UID" => {
                run_attack(&mut w, tag, attack, sent).await?;
                continue;
            }
            "LOGOUT" => format!("* BYE bye\r\n{tag} OK LOGOUT done\r\n"),
            _ => format!("{tag} BAD unknown command\r\n"),
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// Writes `chunk` repeatedly until `total` bytes (or the client is gone), counting in `sent`.
async fn flood(
    w: &mut OwnedWriteHalf,
    chunk: &[u8],
    total: u64,
    rate: Option<u64>,
    sent: &AtomicU64,
) -> Result<()> {
    let mut done = 0u64;
    while done < total {
        w.write_all(chunk).await?;
        done += chunk.len() as u64;
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        if let Some(rate) = rate {
            tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
        }
    }
    Ok(())
}

async fn run_attack(
    w: &mut OwnedWriteHalf,
    tag: &str,
    attack: &Attack,
    sent: &AtomicU64,
) -> Result<()> {
    match attack {
        Attack::EndlessLine { total, rate } => {
            w.write_all(b"* 1 FETCH (UID 1 FLAGS (").await?;
            let chunk = vec![b'a'; if rate.is_some() { 16 * 1024 } else { 64 * 1024 }];
            flood(w, &chunk, *total, *rate, sent).await?;
            // The connection stays open, silent: the line never ends.
            std::future::pending::<()>().await;
        }
        Attack::MalformedFetch => {
            let r = format!("* 1 FETCH (UID abc FLAGS (\\Seen\r\n{tag} OK UID FETCH done\r\n");
            w.write_all(r.as_bytes()).await?;
            sent.fetch_add(r.len() as u64, Ordering::SeqCst);
        }
        Attack::HugeLiteral { total } => {
            w.write_all(b"* 1 FETCH (UID 1 RFC822.SIZE 500000000 BODY[]<0> {500000000}\r\n")
                .await?;
            flood(w, &vec![0u8; 64 * 1024], *total, None, sent).await?;
            std::future::pending::<()>().await;
        }
        Attack::Garbage => {
            // Deterministic binary garbage without LF, control bytes and NULs included.
            let mut g: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            g.retain(|b| *b != b'\n');
            g.extend_from_slice(format!("\r\n{tag} OK UID FETCH done\r\n").as_bytes());
            w.write_all(&g).await?;
            sent.fetch_add(g.len() as u64, Ordering::SeqCst);
        }
        Attack::NulLine => {
            w.write_all(b"* 1 FETCH (UID 1 FLAGS (").await?;
            flood(w, &vec![b'x'; 64 * 1024], 20_000_000, None, sent).await?;
            w.write_all(format!("\0\r\n{tag} OK UID FETCH done\r\n").as_bytes())
                .await?;
        }
        Attack::Control => unreachable!("served above"),
    }
    Ok(())
}
