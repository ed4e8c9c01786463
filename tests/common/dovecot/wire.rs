//! A minimal IMAP client over the test Dovecot's IMAPS port, for test helpers and the load
//! harness: LOGIN, CREATE, APPEND (returning the UID from UIDPLUS `APPENDUID`, which
//! async-imap's `append` drops), SELECT and IDLE, LOGOUT. Every command is bounded, so a broken
//! server fails the caller instead of hanging it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio_rustls::client::TlsStream;

use super::Dovecot;

/// Upper bound on one command's round trip.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `"..."` with `\` and `"` escaped; IMAP quoted strings cannot hold line breaks.
pub fn quote(s: &str) -> Result<String> {
    ensure!(
        !s.contains(['\r', '\n']),
        "{s:?} cannot be an IMAP quoted string"
    );
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// The UID in `OK [APPENDUID <uidvalidity> <uid>] ...`.
pub fn appenduid(resp: &str) -> Option<u32> {
    let rest = &resp[resp.find("[APPENDUID ")? + "[APPENDUID ".len()..];
    let mut words = rest.split([' ', ']']);
    let _uidvalidity = words.next()?;
    words.next()?.parse().ok()
}

/// One IMAPS session, logged in.
pub struct Wire {
    io: BufStream<TlsStream<tokio::net::TcpStream>>,
    tag: u32,
}

impl Wire {
    /// Connects and logs in as `user`, with the password this Dovecot was started with.
    pub async fn login(dovecot: &Dovecot, user: &str) -> Result<Wire> {
        let pass = dovecot
            .password(user)
            .ok_or_else(|| anyhow!("{user} is not a user of this Dovecot"))?;
        let mut wire = Wire {
            io: BufStream::new(dovecot.connect_tls().await?),
            tag: 0,
        };
        let greeting = wire.read_response().await?;
        ensure!(greeting.starts_with("* OK"), "greeting {greeting:?}");
        let resp = wire
            .command(&format!("LOGIN {} {}", quote(user)?, quote(pass)?), None)
            .await?;
        ensure!(resp.starts_with("OK"), "LOGIN {user}: {resp}");
        Ok(wire)
    }

    /// Creates `mailbox`. An existing mailbox is not an error.
    pub async fn create(&mut self, mailbox: &str) -> Result<()> {
        let resp = self
            .command(&format!("CREATE {}", quote(mailbox)?), None)
            .await?;
        ensure!(
            resp.starts_with("OK") || resp.starts_with("NO [ALREADYEXISTS]"),
            "CREATE {mailbox}: {resp}"
        );
        Ok(())
    }

    /// Appends `raw` to `mailbox`, creating the mailbox if it is missing; returns the new
    /// message's UID once the tagged OK has been read.
    pub async fn append(&mut self, mailbox: &str, raw: &[u8]) -> Result<u32> {
        let mut created = false;
        loop {
            let resp = self
                .command(&format!("APPEND {}", quote(mailbox)?), Some(raw))
                .await?;
            if resp.starts_with("NO [TRYCREATE]") && !created {
                self.create(mailbox).await?;
                created = true;
                continue;
            }
            ensure!(resp.starts_with("OK"), "APPEND to {mailbox}: {resp}");
            return appenduid(&resp).with_context(|| format!("no APPENDUID in {resp:?}"));
        }
    }

    /// SELECT `mailbox` and enter IDLE.
    pub async fn idle(&mut self, mailbox: &str) -> Result<()> {
        let r = self
            .command(&format!("SELECT {}", quote(mailbox)?), None)
            .await?;
        ensure!(r.starts_with("OK"), "SELECT: {r}");
        self.io.write_all(b"i IDLE\r\n").await?;
        self.io.flush().await?;
        let work = async {
            loop {
                if self.read_response().await?.starts_with('+') {
                    return anyhow::Ok(());
                }
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, work)
            .await
            .context("IDLE not accepted in time")?
    }

    /// In IDLE: waits for the next `* N EXISTS`; returns when it was read.
    pub async fn next_exists(&mut self, timeout: Duration) -> Result<Instant> {
        let work = async {
            loop {
                let l = self.read_response().await?;
                if l.starts_with("* ") && l.ends_with(" EXISTS") {
                    return anyhow::Ok(Instant::now());
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .context("no EXISTS in time")?
    }

    /// LOGOUT; errors are irrelevant at this point.
    pub async fn logout(&mut self) {
        let _ = self.command("LOGOUT", None).await;
    }

    /// Sends a tagged command, with `literal` as a non-synchronising literal (LITERAL+) after it,
    /// and returns the tagged reply without its tag (`OK ...`, `NO ...`).
    pub async fn command(&mut self, command: &str, literal: Option<&[u8]>) -> Result<String> {
        self.tag += 1;
        let tag = format!("h{}", self.tag);
        let mut out = match literal {
            None => format!("{tag} {command}\r\n").into_bytes(),
            Some(data) => format!("{tag} {command} {{{}+}}\r\n", data.len()).into_bytes(),
        };
        if let Some(data) = literal {
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        let work = async {
            self.io.write_all(&out).await?;
            self.io.flush().await?;
            loop {
                let line = self.read_response().await?;
                if let Some(rest) = line.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) {
                    return anyhow::Ok(rest.to_string());
                }
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, work)
            .await
            .with_context(|| format!("IMAP command timed out: {}", first_word(command)))?
    }

    /// One response line, with any literals it carries read inline.
    async fn read_response(&mut self) -> Result<String> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = self.io.read_until(b'\n', &mut out).await?;
            ensure!(n > 0, "the server closed the connection");
            let line = &out[start..];
            let literal = line
                .strip_suffix(b"}\r\n")
                .and_then(|l| l.iter().rposition(|&b| b == b'{').map(|i| &l[i + 1..]))
                .and_then(|n| {
                    std::str::from_utf8(n)
                        .ok()?
                        .trim_end_matches('+')
                        .parse()
                        .ok()
                });
            match literal {
                Some(len) => {
                    let mut data = vec![0; len];
                    self.io.read_exact(&mut data).await?;
                    out.extend_from_slice(&data);
                }
                None => return Ok(String::from_utf8_lossy(&out).trim_end().to_string()),
            }
        }
    }
}

/// The command's name, for errors: never its arguments (LOGIN carries a password).
fn first_word(command: &str) -> &str {
    command.split(' ').next().unwrap_or("")
}
