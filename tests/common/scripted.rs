//! A scripted IMAP server for faults Dovecot cannot be made to produce (a tagged NO to
//! `UID FETCH`, slow FETCH responses, an EXISTS before `+ idling`, a server silent during IDLE,
//! throttling replies).
//! Plain TCP on 127.0.0.1; just enough IMAP for one mailbox of `messages`.
//!
//! [`start`] is the server `faults.rs` has always used; [`start_with`] takes opt-in
//! [`Behaviour`]s. Every line the server reads is kept, so a test can count commands.
//!
//! It answers what a connection's catch-up sends: `ENABLE`, `SELECT mb (CONDSTORE)` and
//! `(QRESYNC (…))` (HIGHESTMODSEQ 1 where CONDSTORE or QRESYNC is offered), `UID FETCH 1:N (UID FLAGS)`
//! (`* u FETCH (UID u FLAGS ())` per message; nothing for `CHANGEDSINCE`: nothing ever changes)
//! and `UID SEARCH` (every message, dated 14-Nov-2023). The refusals and delays of
//! [`Behaviour`] apply to the body `UID FETCH` only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Opt-in behaviours. The default is a well-behaved server that never speaks during IDLE.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// On the first connection only, the body `UID FETCH` sends one message and then a tagged
    /// NO.
    pub refuse_first_fetch: bool,
    /// On the first connection, SELECT shows every message but the last. The first IDLE makes it
    /// visible, with `* N EXISTS` written before `+ idling` in the same write.
    pub exists_before_idling: bool,
    /// On each connection's first IDLE, `* OK Still here` follows `+ idling`. Later IDLEs stay
    /// silent, as does every IDLE without this.
    pub keepalive_on_first_idle: bool,
    /// The tagged reply (after the tag) to LOGIN on the first connection, e.g.
    /// `NO [UNAVAILABLE] try later`. Later connections log in.
    pub first_login_reply: Option<String>,
    /// The tagged reply to SELECT on the first connection, as `first_login_reply`.
    pub first_select_reply: Option<String>,
    /// The tagged reply to the body `UID FETCH` on the first connection, after one message.
    pub first_fetch_reply: Option<String>,
    /// Every body FETCH response is written this long after the one before: a slow first
    /// import.
    pub fetch_delay: Option<Duration>,
    /// What `* CAPABILITY` lists. `ENABLE` enables whatever it asks for that is listed here.
    pub capabilities: Option<String>,
}

/// The server; dropped, it stops accepting.
pub struct Scripted {
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Every line read, as (connection, line) in order.
    lines: Arc<Mutex<Vec<(u64, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every line read so far, as (connection, line).
    pub fn lines(&self) -> Vec<(u64, String)> {
        self.lines.lock().expect("line log").clone()
    }

    /// How many lines read were the command `command` (`"IDLE"`, `"SELECT"`), or exactly the
    /// line for `"DONE"`; case-insensitive.
    pub fn count(&self, command: &str) -> usize {
        self.lines()
            .iter()
            .filter(|(_, l)| {
                l.eq_ignore_ascii_case(command)
                    || l.split_once(' ').is_some_and(|(_, rest)| {
                        rest.split(' ')
                            .next()
                            .is_some_and(|c| c.eq_ignore_ascii_case(command))
                    })
            })
            .count()
    }
}

/// Serves `messages` (UID = index + 1). On the first connection only, `UID FETCH` sends one
/// message and then a tagged NO.
pub async fn start(messages: Vec<Vec<u8>>) -> Result<Scripted> {
    start_with(
        messages,
        Behaviour {
            refuse_first_fetch: true,
            ..Behaviour::default()
        },
    )
    .await
}

/// Serves `messages` (UID = index + 1), writing each FETCH response `delay` after the one
/// before: a slow first import.
pub async fn start_slow(messages: Vec<Vec<u8>>, delay: Duration) -> Result<Scripted> {
    start_with(
        messages,
        Behaviour {
            fetch_delay: Some(delay),
            ..Behaviour::default()
        },
    )
    .await
}

/// Serves `messages` (UID = index + 1) with the given behaviours.
pub async fn start_with(messages: Vec<Vec<u8>>, behaviour: Behaviour) -> Result<Scripted> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let connections = Arc::new(AtomicU64::new(0));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let messages = Arc::new(messages);
    let behaviour = Arc::new(behaviour);
    let (counter, log) = (connections.clone(), lines.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (messages, behaviour, log) = (messages.clone(), behaviour.clone(), log.clone());
            tokio::spawn(async move {
                let _ = session(stream, &messages, &behaviour, n, &log).await;
            });
        }
    });
    Ok(Scripted {
        port,
        connections,
        lines,
        task,
    })
}

async fn session(
    stream: tokio::net::TcpStream,
    messages: &[Vec<u8>],
    b: &Behaviour,
    conn: u64,
    log: &Mutex<Vec<(u64, String)>>,
) -> Result<()> {
    let first = conn == 0;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut next_line = async || -> Result<Option<String>> {
        let line = lines.next_line().await?;
        if let Some(l) = &line {
            log.lock().expect("line log").push((conn, l.clone()));
        }
        Ok(line)
    };
    // Messages SELECT and UID FETCH show.
    let mut visible = if first && b.exists_before_idling {
        messages.len().saturating_sub(1)
    } else {
        messages.len()
    };
    let mut idles = 0;
    w.write_all(b"* OK scripted IMAP ready\r\n").await?;
    while let Some(line) = next_line().await? {
        let (tag, cmd, rest) = super::command::split_command(&line);
        let reply = match cmd.as_str() {
            "LOGIN" => match on_first(first, &b.first_login_reply) {
                Some(r) => format!("{tag} {r}\r\n"),
                None => format!("{tag} OK LOGIN done\r\n"),
            },
            "CAPABILITY" => format!(
                "* CAPABILITY IMAP4rev1 IDLE {}\r\n{tag} OK CAPABILITY done\r\n",
                b.capabilities.as_deref().unwrap_or("")
            ),
            "ENABLE" => {
                let offered = b.capabilities.as_deref().unwrap_or("");
                let enabled: Vec<&str> = rest
                    .split(' ')
                    .filter(|c| offered.split(' ').any(|o| o.eq_ignore_ascii_case(c)))
                    .collect();
                format!(
                    "* ENABLED {}\r\n{tag} OK ENABLE done\r\n",
                    enabled.join(" ")
                )
            }
            "SELECT" => match on_first(first, &b.first_select_reply) {
                Some(r) => format!("{tag} {r}\r\n"),
                None => {
                    // `SELECT mb (CONDSTORE)` or `(QRESYNC (…))`: nothing ever changes here, so
                    // the only difference is HIGHESTMODSEQ, where CONDSTORE is offered.
                    let modseq = if rest.contains(" (")
                        && (offers(b, "CONDSTORE") || offers(b, "QRESYNC"))
                    {
                        "* OK [HIGHESTMODSEQ 1] ok\r\n"
                    } else {
                        ""
                    };
                    format!(
                        "* {visible} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT {}] ok\r\n{modseq}{tag} OK [READ-WRITE] SELECT done\r\n",
                        visible + 1
                    )
                }
            },
            "UID" if is_search(rest) => {
                // Every message has INTERNALDATE 14-Nov-2023.
                let uids: String = if search_matches(rest) {
                    (1..=visible).map(|u| format!(" {u}")).collect()
                } else {
                    String::new()
                };
                format!("* SEARCH{uids}\r\n{tag} OK UID SEARCH done\r\n")
            }
            "UID" if !wants_body(rest) => {
                // The catch-up: `UID FETCH 1:N (UID FLAGS)`, with `(CHANGEDSINCE m)` under
                // CONDSTORE. No flag ever changes (every MODSEQ is 1), so CHANGEDSINCE answers
                // nothing.
                let mut out = String::new();
                if !rest.to_ascii_uppercase().contains("CHANGEDSINCE") {
                    let upto = fetch_to(rest).unwrap_or(visible);
                    for uid in 1..=upto.min(visible) {
                        out.push_str(&format!("* {uid} FETCH (UID {uid} FLAGS ())\r\n"));
                    }
                }
                out.push_str(&format!("{tag} OK UID FETCH done\r\n"));
                out
            }
            "UID" => {
                let from = super::command::fetch_from(rest);
                let refusal = match on_first(first, &b.first_fetch_reply) {
                    Some(r) => Some(r.clone()),
                    None if first && b.refuse_first_fetch => {
                        Some("NO [SERVERBUG] simulated fetch failure".to_string())
                    }
                    None => None,
                };
                let mut out = String::new();
                let wanted: Vec<usize> = (from.max(1)..=visible).collect();
                let send = match refusal {
                    Some(_) => &wanted[..wanted.len().min(1)],
                    None => &wanted[..],
                };
                for uid in send {
                    let body = String::from_utf8_lossy(&messages[uid - 1]);
                    out.push_str(&format!(
                        "* {uid} FETCH (UID {uid} FLAGS () INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" RFC822.SIZE {len} BODY[]<0> {{{len}}}\r\n{body})\r\n",
                        len = body.len()
                    ));
                    if let Some(d) = b.fetch_delay {
                        w.write_all(std::mem::take(&mut out).as_bytes()).await?;
                        tokio::time::sleep(d).await;
                    }
                }
                match refusal {
                    Some(r) => out.push_str(&format!("{tag} {r}\r\n")),
                    None => out.push_str(&format!("{tag} OK UID FETCH done\r\n")),
                }
                out
            }
            "IDLE" => {
                idles += 1;
                let mut greet = String::new();
                if idles == 1 && visible < messages.len() {
                    visible = messages.len();
                    greet.push_str(&format!("* {visible} EXISTS\r\n"));
                }
                greet.push_str("+ idling\r\n");
                if idles == 1 && b.keepalive_on_first_idle {
                    greet.push_str("* OK Still here\r\n");
                }
                w.write_all(greet.as_bytes()).await?;
                // Wait for DONE.
                while let Some(l) = next_line().await? {
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

/// The last UID a `UID FETCH <from>:<to> …` asks for (`rest` is what follows `UID`); `None`
/// for `*` or when it cannot be read.
fn fetch_to(rest: &str) -> Option<usize> {
    rest.split_whitespace()
        .nth(1)
        .and_then(|r| r.split_once(':'))
        .and_then(|(_, to)| to.parse().ok())
}

/// Whether `* CAPABILITY` lists `cap`.
fn offers(b: &Behaviour, cap: &str) -> bool {
    b.capabilities
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .any(|c| c.eq_ignore_ascii_case(cap))
}

/// `UID SEARCH …` (`rest` is what follows `UID`).
fn is_search(rest: &str) -> bool {
    rest.split(' ')
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case("SEARCH"))
}

/// Whether a `UID FETCH` asks for message bodies (the import), not only UIDs and flags.
fn wants_body(rest: &str) -> bool {
    rest.to_ascii_uppercase().contains("BODY")
}

/// Whether `UID SEARCH SINCE <date>` matches messages of 14-Nov-2023 (anything else searched
/// for matches every message).
fn search_matches(rest: &str) -> bool {
    let words: Vec<&str> = rest.split(' ').collect();
    let since = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("SINCE"))
        .and_then(|i| words.get(i + 1))
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%d-%b-%Y").ok());
    let internal = chrono::NaiveDate::from_ymd_opt(2023, 11, 14);
    match (since, internal) {
        (Some(since), Some(internal)) => since <= internal,
        _ => true,
    }
}

/// A first-connection-only reply.
fn on_first(first: bool, reply: &Option<String>) -> Option<&String> {
    reply.as_ref().filter(|_| first)
}
