//! From a host name to a logged-in session with a selected mailbox.

use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::{Response, ResponseCode, Status};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::auth::Credentials;
use super::caps::Caps;
use super::guard::{Guard, Limits};
use super::view::{Absorbed, View};
use super::{bye, deadline, mailbox_name, received, throttle, ImapError, Io, Session};
use crate::config::{Account, TlsMode};

/// Everything needed to reach and log in to one account's server. Shared by its mailboxes.
#[derive(Debug)]
pub struct Endpoint {
    /// Server host name; also the name the certificate must carry.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// How the connection is secured.
    pub tls: TlsMode,
    /// Built once per account: roots plus the account's `ca_file`.
    pub tls_config: Arc<rustls::ClientConfig>,
    /// Whether `tls = "none"` may go to a peer that is not loopback.
    pub allow_insecure: bool,
    /// Login name.
    pub username: String,
    /// Password source or OAuth2 token command; read at every login, so a rotated secret needs
    /// no restart.
    pub credentials: Credentials,
}

impl Endpoint {
    /// Builds the endpoint of a configured account (reads its `ca_file`).
    pub fn from_account(a: &Account) -> Result<Endpoint, ImapError> {
        Ok(Endpoint {
            host: a.host.clone(),
            port: a.port(),
            tls: a.tls,
            tls_config: super::tls::client_config(a.ca_file.as_deref())?,
            allow_insecure: a.allow_insecure,
            username: a.username.clone(),
            credentials: Credentials::from_account(a),
        })
    }
}

/// What SELECT told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// UIDVALIDITY: UIDs are only comparable while this stays the same.
    pub uid_validity: u32,
    /// UIDNEXT, when the server sent it.
    pub uid_next: Option<u32>,
    /// Messages in the mailbox.
    pub exists: u32,
    /// HIGHESTMODSEQ, where CONDSTORE is in use; `None` without CONDSTORE or for a mailbox
    /// that keeps no mod-sequences (`NOMODSEQ`). Not put into the view's pending changes: the
    /// caller persists it once the changes it covers are applied.
    pub highest_modseq: Option<u64>,
}

/// What the store knows of a mailbox from an earlier connection: the QRESYNC parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The UIDVALIDITY the stored UIDs belong to.
    pub uidvalidity: u32,
    /// The HIGHESTMODSEQ every stored change covers.
    pub highest_modseq: u64,
    /// The highest stored UID.
    pub last_uid: u32,
}

/// TCP connect with keepalive, TLS as configured, and the server greeting.
pub async fn open(
    ep: &Endpoint,
    t: Duration,
) -> Result<async_imap::Client<Box<dyn Io>>, ImapError> {
    let addr = format!("{}:{}", ep.host, ep.port);
    let tcp = match tokio::time::timeout(t, TcpStream::connect((ep.host.as_str(), ep.port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(ImapError::Connect { addr, source }),
        Err(_) => return Err(ImapError::Timeout("tcp connect")),
    };
    // Both are best effort: a socket that refuses them still works.
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);

    match ep.tls {
        TlsMode::None => {
            // Checked on the connected address, so a `localhost` that resolves elsewhere is
            // refused too. Config validation refuses the obvious cases earlier.
            if !ep.allow_insecure {
                match tcp.peer_addr() {
                    Ok(peer) if peer.ip().to_canonical().is_loopback() => {}
                    Ok(peer) => {
                        return Err(ImapError::InsecureRefused {
                            host: ep.host.clone(),
                            peer: Some(peer),
                        })
                    }
                    Err(_) => {
                        return Err(ImapError::InsecureRefused {
                            host: ep.host.clone(),
                            peer: None,
                        })
                    }
                }
            }
            let mut client = async_imap::Client::new(guarded(tcp, t));
            read_greeting(&mut client, t).await?;
            Ok(client)
        }
        TlsMode::Implicit => {
            let tls = handshake(ep, tcp, t).await?;
            let mut client = async_imap::Client::new(guarded(tls, t));
            read_greeting(&mut client, t).await?;
            Ok(client)
        }
        TlsMode::Starttls => {
            let mut plain = async_imap::Client::new(Guard::new(tcp, Limits::new(t)));
            read_greeting(&mut plain, t).await?;
            match tokio::time::timeout(t, plain.run_command_and_check_ok("STARTTLS", None)).await {
                Ok(Ok(())) => {}
                Ok(Err(async_imap::error::Error::No(m) | async_imap::error::Error::Bad(m))) => {
                    return Err(ImapError::StarttlsRefused(m));
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ImapError::Timeout("STARTTLS")),
            }
            // into_inner drops anything buffered after the OK: plaintext injected before the
            // handshake must never be read as if it came over TLS.
            let tls = handshake(ep, plain.into_inner().into_inner(), t).await?;
            // No greeting follows STARTTLS.
            Ok(async_imap::Client::new(guarded(tls, t)))
        }
    }
}

/// The session's stream: `io` under a [`Guard`] whose stall deadline is `t`.
fn guarded<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, t: Duration) -> Box<dyn Io> {
    Box::new(Guard::new(io, Limits::new(t)))
}

async fn handshake(
    ep: &Endpoint,
    tcp: TcpStream,
    t: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImapError> {
    let name =
        rustls::pki_types::ServerName::try_from(ep.host.clone()).map_err(|e| ImapError::Tls {
            host: ep.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
    let connector = tokio_rustls::TlsConnector::from(ep.tls_config.clone());
    match tokio::time::timeout(t, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ImapError::Tls {
            host: ep.host.clone(),
            source,
        }),
        Err(_) => Err(ImapError::Timeout("TLS handshake")),
    }
}

async fn read_greeting<T: Io>(
    client: &mut async_imap::Client<T>,
    t: Duration,
) -> Result<(), ImapError> {
    let greeting = match tokio::time::timeout(t, client.read_response()).await {
        Ok(Ok(Some(g))) => g,
        Ok(Ok(None)) => return Err(ImapError::Closed("no greeting".into())),
        Ok(Err(e)) => return Err(ImapError::Protocol(e.into())),
        Err(_) => return Err(ImapError::Timeout("greeting")),
    };
    match greeting.parsed() {
        Response::Data {
            status: Status::Ok | Status::PreAuth,
            ..
        } => Ok(()),
        Response::Data { outcome, .. } => Err(ImapError::Closed(
            outcome
                .information
                .as_deref()
                .unwrap_or("greeting refused")
                .to_string(),
        )),
        _ => Err(ImapError::Closed("unexpected greeting".into())),
    }
}

/// Logs in with the account's password (LOGIN) or OAuth2 token (XOAUTH2, OAUTHBEARER); see
/// [`super::auth::login`].
pub async fn login(
    client: async_imap::Client<Box<dyn Io>>,
    ep: &Endpoint,
    t: Duration,
) -> Result<Session, ImapError> {
    super::auth::login(client, &ep.credentials, &ep.username, &ep.host, ep.port, t).await
}

/// SELECT the mailbox (read-write, so that flag changes are reported; we only ever PEEK).
///
/// - `(QRESYNC (uidvalidity modseq 1:last_uid))` when `caps.qresync` and `known` has a UID
///   and a mod-sequence (RFC 7162 allows no zero): the server then reports, before the tagged
///   OK, `VANISHED (EARLIER)` for what was expunged and `FETCH (UID FLAGS MODSEQ)` for what
///   changed since — but only if `known.uidvalidity` is still the mailbox's; otherwise it says
///   nothing and the caller starts a new epoch;
/// - `(CONDSTORE)` when `caps.condstore` otherwise, for HIGHESTMODSEQ;
/// - plain `SELECT` without CONDSTORE.
///
/// Every untagged response but the `OK [...]` ones (EXISTS, VANISHED, FETCH, EXPUNGE) goes to
/// `view.absorb`, in order. `mailbox` is the operator's name; it goes on the wire as
/// [`mailbox_name::argument`] makes it: UTF-8 where `caps.utf8_accept`, modified UTF-7
/// elsewhere. The responses are read here, not by async-imap's `select()`, which would quote
/// the name a second time and would flatten a tagged NO into text, losing the response code
/// that says the server is throttling. Bounded by `t`.
pub async fn select(
    session: &mut Session,
    mailbox: &str,
    caps: Caps,
    known: Option<Known>,
    view: &mut View,
    t: Duration,
) -> Result<Selected, ImapError> {
    let work = async {
        let command = format!(
            "SELECT {}{}",
            mailbox_name::argument(mailbox, caps.utf8_accept),
            select_params(caps, known)
        );
        let tag = session.run_command(command).await?;
        let (mut uid_validity, mut uid_next, mut exists, mut highest_modseq) =
            (None, None, 0, None);
        loop {
            let resp = received(session.read_response().await, "SELECT")?;
            match resp.parsed() {
                Response::Data {
                    status: Status::Ok,
                    outcome,
                } => match outcome.code {
                    Some(ResponseCode::UidValidity(v)) => uid_validity = Some(v),
                    Some(ResponseCode::UidNext(n)) => uid_next = Some(n),
                    Some(ResponseCode::HighestModSeq(m)) => highest_modseq = Some(m),
                    _ => {}
                },
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => return Err(bye(outcome)),
                Response::Done {
                    tag: done,
                    status,
                    outcome,
                } if *done == tag => {
                    let text = || outcome.information.as_deref().unwrap_or("").to_string();
                    return match status {
                        Status::Ok => Ok(Selected {
                            uid_validity: uid_validity.ok_or(ImapError::NoUidValidity)?,
                            uid_next,
                            exists,
                            highest_modseq: highest_modseq.filter(|_| caps.condstore),
                        }),
                        Status::No => Err(throttle::refusal("SELECT", outcome)
                            .unwrap_or_else(|| ImapError::Select(text()))),
                        _ => Err(throttle::refusal("SELECT", outcome).unwrap_or_else(|| {
                            ImapError::Protocol(async_imap::error::Error::Bad(text()))
                        })),
                    };
                }
                // EXISTS, VANISHED (EARLIER), FETCH; FLAGS and RECENT absorb as nothing.
                other => {
                    if let Absorbed::Exists(n) = view.absorb(other) {
                        exists = n;
                    }
                }
            }
        }
    };
    match tokio::time::timeout(t, work).await {
        Ok(r) => r,
        Err(_) => Err(ImapError::Timeout("select")),
    }
}

/// The SELECT parameters for what is enabled and known (with its leading space), or nothing.
pub fn select_params(caps: Caps, known: Option<Known>) -> String {
    match known {
        Some(k) if caps.qresync && k.last_uid > 0 && k.highest_modseq > 0 => format!(
            " (QRESYNC ({} {} 1:{}))",
            k.uidvalidity, k.highest_modseq, k.last_uid
        ),
        _ if caps.condstore => " (CONDSTORE)".to_string(),
        _ => String::new(),
    }
}

/// LOGOUT, bounded; errors are irrelevant at this point.
pub async fn logout(mut session: Session, t: Duration) {
    let _ = deadline(t, "logout", session.logout()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_params_follow_caps_and_knowledge() {
        let known = Known {
            uidvalidity: 7,
            highest_modseq: 90,
            last_uid: 41,
        };
        let qresync = Caps {
            qresync: true,
            condstore: true,
            ..Caps::default()
        };
        let condstore = Caps {
            condstore: true,
            ..Caps::default()
        };
        assert_eq!(
            select_params(qresync, Some(known)),
            " (QRESYNC (7 90 1:41))"
        );
        assert_eq!(select_params(qresync, None), " (CONDSTORE)");
        // Nothing stored yet, or no mod-sequence known: RFC 7162 allows neither as parameters.
        for k in [
            Known {
                last_uid: 0,
                ..known
            },
            Known {
                highest_modseq: 0,
                ..known
            },
        ] {
            assert_eq!(select_params(qresync, Some(k)), " (CONDSTORE)");
        }
        assert_eq!(select_params(condstore, Some(known)), " (CONDSTORE)");
        assert_eq!(select_params(Caps::default(), Some(known)), "");
    }
}
