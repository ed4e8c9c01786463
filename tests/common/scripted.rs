//! A scripted IMAP server for faults Dovecot cannot be made to produce (a tagged NO to
//! `UID FETCH`). Plain TCP on 127.0.0.1; just enough IMAP for one mailbox of `messages`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The server; dropped, it stops accepting.
pub struct Scripted {
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `messages` (UID = index + 1). On the first connection only, `UID FETCH` sends one
/// message and then a tagged NO.
pub async fn start(messages: Vec<Vec<u8>>) -> Result<Scripted> {
    serve(messages, Behaviour::RefuseFirstFetch).await
}

/// Serves `messages` (UID = index + 1), writing each FETCH response `delay` after the one
/// before: a slow first import.
pub async fn start_slow(messages: Vec<Vec<u8>>, delay: Duration) -> Result<Scripted> {
    serve(messages, Behaviour::Slow(delay)).await
}

/// What the server does differently from a plain one.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// On the first connection only, `UID FETCH` sends one message and then a tagged NO.
    RefuseFirstFetch,
    /// Every FETCH response waits this long.
    Slow(Duration),
}

async fn serve(messages: Vec<Vec<u8>>, behaviour: Behaviour) -> Result<Scripted> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let connections = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(messages);
    let counter = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let messages = messages.clone();
            tokio::spawn(async move {
                let refuse_fetch = matches!(behaviour, Behaviour::RefuseFirstFetch) && n == 0;
                let delay = match behaviour {
                    Behaviour::Slow(d) => Some(d),
                    Behaviour::RefuseFirstFetch => None,
                };
                let _ = session(stream, &messages, refuse_fetch, delay).await;
            });
        }
    });
    Ok(Scripted {
        port,
        connections,
        task,
    })
}

async fn session(
    stream: tokio::net::TcpStream,
    messages: &[Vec<u8>],
    refuse_fetch: bool,
    delay: Option<Duration>,
) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"* OK scripted IMAP ready\r\n").await?;
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.splitn(3, ' ');
        let (tag, cmd, rest) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_ascii_uppercase(),
            parts.next().unwrap_or(""),
        );
        let reply = match cmd.as_str() {
            "LOGIN" => format!("{tag} OK LOGIN done\r\n"),
            "SELECT" => format!(
                "* {} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT {}] ok\r\n{tag} OK [READ-WRITE] SELECT done\r\n",
                messages.len(),
                messages.len() + 1
            ),
            "UID" => {
                let from: usize = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let mut out = String::new();
                let wanted: Vec<usize> = (from.max(1)..=messages.len()).collect();
                let send = if refuse_fetch { &wanted[..wanted.len().min(1)] } else { &wanted[..] };
                for uid in send {
                    let body = String::from_utf8_lossy(&messages[uid - 1]);
                    out.push_str(&format!(
                        "* {uid} FETCH (UID {uid} FLAGS () INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" RFC822.SIZE {len} BODY[]<0> {{{len}}}\r\n{body})\r\n",
                        len = body.len()
                    ));
                    if let Some(d) = delay {
                        w.write_all(std::mem::take(&mut out).as_bytes()).await?;
                        tokio::time::sleep(d).await;
                    }
                }
                if refuse_fetch {
                    out.push_str(&format!("{tag} NO [SERVERBUG] simulated fetch failure\r\n"));
                } else {
                    out.push_str(&format!("{tag} OK UID FETCH done\r\n"));
                }
                out
            }
            "IDLE" => {
                w.write_all(b"+ idling\r\n").await?;
                // Wait for DONE.
                while let Some(l) = lines.next_line().await? {
                    if l.eq_ignore_ascii_case("DONE") {
                        break;
                    }
                }
                format!("{tag} OK IDLE done\r\n")
            }
            "LOGOUT" => format!("* BYE bye\r\n{tag} OK LOGOUT done\r\n"),
            _ => format!("{tag} BAD unknown command\r\n"),
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}
