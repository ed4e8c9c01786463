//! The IMAP side: TCP and TLS ([`tls`]), greeting, STARTTLS and login ([`connect`], with SASL
//! OAuth2 in [`auth`]), what the server offers and what is enabled ([`caps`]), IDLE with its
//! timers ([`idle`]), `UID FETCH` of new mail ([`fetch`]) and the catch-up commands ([`sync`]).
//!
//! Every untagged response read after SELECT goes through the connection's [`view::View`].
//!
//! Mailbox names go on the wire as [`mailbox_name`] encodes them; server throttling is read by
//! [`throttle`].
//!
//! Nothing here knows about storage or metrics. Errors are classified by [`ImapError::kind`] (a
//! bounded label) and [`ImapError::class`] (the retry schedule), never by their text; a
//! throttling server's suggested delay is [`ImapError::retry_after`].

pub mod auth;
pub mod caps;
pub mod commands;
pub mod connect;
pub mod fetch;
pub mod guard;
pub mod idle;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod view;

pub use crate::mailbox_name;

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::backoff::ErrorClass;
use crate::secrets::SecretError;

/// Any byte stream a session can run over: TLS or, for loopback test servers, plain TCP.
/// `Any`, so that [`guard::set_max_literal`] can reach the guard under a session.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug + std::any::Any {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug + 'static> Io for T {}

/// A logged-in IMAP session.
pub type Session = async_imap::Session<Box<dyn Io>>;

/// Why an IMAP step failed.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (bad certificate, wrong name, protocol error).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The server name checked.
        host: String,
        /// rustls' reason, wrapped in io::Error by tokio-rustls.
        source: std::io::Error,
    },
    /// The server refused `STARTTLS`; we never continue in plaintext.
    #[error("server refused STARTTLS ({}); refusing to continue without TLS", bounded(.0))]
    StarttlsRefused(String),
    /// `tls = "none"` to a peer that is not loopback, without `allow_insecure = true`.
    #[error(
        "refusing to send credentials in clear text to {host}{}: not loopback \
         (use TLS, or set allow_insecure = true)",
        peer.map(|p| format!(" ({p})")).unwrap_or_default()
    )]
    InsecureRefused {
        /// The configured host.
        host: String,
        /// The address connected to, when known.
        peer: Option<std::net::SocketAddr>,
    },
    /// The extra trust root could not be loaded.
    #[error("{0}")]
    CaFile(#[from] tls::CaFileError),
    /// A step took longer than its deadline.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection sent nothing for longer than `dead_after`.
    #[error("connection silent for longer than the dead_after deadline")]
    Dead,
    /// The server rejected the credentials (tagged NO to LOGIN/AUTHENTICATE).
    #[error("authentication failed: {}", bounded(.0))]
    Auth(String),
    /// The password could not be read.
    #[error("password unavailable: {0}")]
    Secret(#[from] SecretError),
    /// The server said `* BYE` or closed the connection.
    #[error("server closed the connection: {}", bounded(.0))]
    Closed(String),
    /// The server answered `UID FETCH` with a tagged NO or BAD. What arrived before it is
    /// stored; the rest is fetched again after a reconnect.
    #[error("server refused UID FETCH: {}", bounded(.0))]
    FetchRefused(String),
    /// The server answered `UID SEARCH` with a tagged NO or BAD.
    #[error("server refused UID SEARCH: {}", bounded(.0))]
    SearchRefused(String),
    /// A change named a sequence number this connection could not map to a UID
    /// ([`view::View::lost`]): changes may have been missed.
    #[error(
        "the server's sequence numbers no longer match what this connection knows; \
         reconnecting to catch up"
    )]
    Desynced,
    /// SELECT answered without UIDVALIDITY, so UIDs cannot be trusted.
    #[error("server sent no UIDVALIDITY for the mailbox")]
    NoUidValidity,
    /// The server rejected SELECT (usually: the mailbox does not exist).
    #[error("cannot select mailbox: {}", bounded(.0))]
    Select(String),
    /// The server is throttling us (RFC 5530 `[UNAVAILABLE]` or `[LIMIT]`, or Microsoft 365's
    /// "Request is throttled"; see [`throttle`]). Retry after `delay` when it suggested one.
    #[error("server is throttling {command}: {}", bounded(.text))]
    Throttled {
        /// The command refused.
        command: &'static str,
        /// The wait the server suggested, if any.
        delay: Option<Duration>,
        /// The server's text.
        text: String,
    },
    /// Shutdown was requested while a command was in flight; the connection is dropped.
    #[error("shutdown requested during a command")]
    Cancelled,
    /// Any other protocol or IO failure.
    #[error("IMAP: {}", bounded(.0))]
    Protocol(#[from] async_imap::error::Error),
}

impl ImapError {
    /// A bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            ImapError::Connect { .. } => "connect",
            ImapError::Tls { .. }
            | ImapError::StarttlsRefused(_)
            | ImapError::InsecureRefused { .. }
            | ImapError::CaFile(_) => "tls",
            ImapError::Timeout(_) => "timeout",
            ImapError::Dead => "dead_connection",
            ImapError::Cancelled => "cancelled",
            ImapError::Auth(_) => "auth",
            ImapError::Secret(_) => "secret",
            ImapError::Closed(_) => "closed",
            ImapError::FetchRefused(_) => "fetch_refused",
            ImapError::SearchRefused(_) => "search_refused",
            ImapError::Desynced => "desync",
            ImapError::Throttled { .. } => "throttled",
            ImapError::NoUidValidity | ImapError::Select(_) => "select",
            ImapError::Protocol(async_imap::error::Error::Io(e)) => io_kind(e),
            ImapError::Protocol(async_imap::error::Error::ConnectionLost) => "io",
            ImapError::Protocol(_) => "protocol",
        }
    }

    /// How long the server asked us to wait before trying again (throttling); when it says,
    /// this replaces the backoff schedule.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ImapError::Throttled { delay, .. } => *delay,
            _ => None,
        }
    }

    /// The server refused the credentials.
    pub fn is_auth(&self) -> bool {
        matches!(self, ImapError::Auth(_))
    }

    /// Which retry schedule this error calls for.
    pub fn class(&self) -> ErrorClass {
        match self {
            ImapError::Auth(_) => ErrorClass::Credentials,
            ImapError::Secret(_) => ErrorClass::SecretSource,
            ImapError::StarttlsRefused(_)
            | ImapError::InsecureRefused { .. }
            | ImapError::CaFile(_)
            | ImapError::NoUidValidity
            | ImapError::Select(_) => ErrorClass::ConfigOrServer,
            ImapError::Tls { source, .. } if tls_is_permanent(source) => ErrorClass::ConfigOrServer,
            ImapError::Connect { .. }
            | ImapError::Tls { .. }
            | ImapError::Timeout(_)
            | ImapError::Dead
            | ImapError::Closed(_)
            | ImapError::FetchRefused(_)
            | ImapError::SearchRefused(_)
            | ImapError::Desynced
            | ImapError::Throttled { .. }
            | ImapError::Cancelled
            | ImapError::Protocol(_) => ErrorClass::Transient,
        }
    }
}

/// Whether a failed handshake will fail the same way next time: the certificate does not
/// verify, the name is unusable, or client and server share no protocol. A reset or an EOF in
/// the middle of the handshake is the network's, and transient.
fn tls_is_permanent(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        // The host name is not a valid TLS server name.
        return true;
    }
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType
                | rustls::Error::PeerIncompatible(_)
        )
    )
}

/// A `read_response()` result while `during` is under way: EOF is [`ImapError::Closed`].
pub(crate) fn received<T>(
    read: std::io::Result<Option<T>>,
    during: &'static str,
) -> Result<T, ImapError> {
    match read {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(ImapError::Closed(format!("EOF during {during}"))),
        Err(e) => Err(ImapError::Protocol(e.into())),
    }
}

/// The error for `* BYE`: the server is closing the connection.
pub(crate) fn bye(outcome: &async_imap::imap_proto::Outcome<'_>) -> ImapError {
    ImapError::Closed(outcome.information.as_deref().unwrap_or("BYE").to_string())
}

/// An IO error's label: the guard's refusals and async-imap's own parse errors and size cap
/// (both `io::Error::other`, the only `Other` errors under a session) are `protocol`.
fn io_kind(e: &std::io::Error) -> &'static str {
    match guard::GuardError::find(e) {
        Some(guard::GuardError::Stalled(_)) => "timeout",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::Other => "protocol",
        None => "io",
    }
}

/// Server text in an error line: at most [`MAX_SERVER_TEXT`] characters, control characters
/// escaped, so a server cannot fill a log line or forge one.
pub(crate) struct Bounded<'a, T: ?Sized>(&'a T);

/// See [`Bounded`].
pub const MAX_SERVER_TEXT: usize = 1024;

pub(crate) fn bounded<T: fmt::Display + ?Sized>(t: &T) -> Bounded<'_, T> {
    Bounded(t)
}

impl<T: fmt::Display + ?Sized> fmt::Display for Bounded<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Cut<'a, 'b> {
            f: &'a mut fmt::Formatter<'b>,
            left: usize,
            cut: bool,
        }
        impl fmt::Write for Cut<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if self.left == 0 {
                        self.cut = true;
                        return Ok(());
                    }
                    if c.is_control() {
                        let escaped = c.escape_default();
                        self.left = self.left.saturating_sub(escaped.len());
                        write!(self.f, "{escaped}")?;
                    } else {
                        self.left -= 1;
                        fmt::Write::write_char(self.f, c)?;
                    }
                }
                Ok(())
            }
        }
        let mut w = Cut {
            f,
            left: MAX_SERVER_TEXT,
            cut: false,
        };
        fmt::write(&mut w, format_args!("{}", self.0))?;
        if w.cut {
            w.f.write_str("…")?;
        }
        Ok(())
    }
}

/// Runs `fut` with a deadline, mapping expiry to [`ImapError::Timeout`].
pub(crate) async fn deadline<T, E: Into<ImapError>>(
    d: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ImapError::Timeout(what)),
    }
}
