//! The IMAP side: TCP and TLS ([`tls`]), greeting, STARTTLS and login ([`connect`], with SASL
//! OAuth2 in [`auth`]), IDLE with its timers ([`idle`]) and `UID FETCH` ([`fetch`]).
//!
//! Nothing here knows about storage or metrics. Errors are classified by [`ImapError::kind`] (a
//! bounded label) and [`ImapError::class`] (the retry schedule), never by their text.

pub mod auth;
pub mod connect;
pub mod fetch;
pub mod idle;
pub mod tls;

use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::backoff::ErrorClass;
use crate::secrets::SecretError;

/// Any byte stream a session can run over: TLS or, for loopback test servers, plain TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> Io for T {}

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
    #[error("server refused STARTTLS ({0}); refusing to continue without TLS")]
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
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The password could not be read.
    #[error("password unavailable: {0}")]
    Secret(#[from] SecretError),
    /// The server said `* BYE` or closed the connection.
    #[error("server closed the connection: {0}")]
    Closed(String),
    /// The server answered `UID FETCH` with a tagged NO or BAD. What arrived before it is
    /// stored; the rest is fetched again after a reconnect.
    #[error("server refused UID FETCH: {0}")]
    FetchRefused(String),
    /// SELECT answered without UIDVALIDITY, so UIDs cannot be trusted.
    #[error("server sent no UIDVALIDITY for the mailbox")]
    NoUidValidity,
    /// The server rejected SELECT (usually: the mailbox does not exist).
    #[error("cannot select mailbox: {0}")]
    Select(String),
    /// Any other protocol or IO failure.
    #[error("IMAP: {0}")]
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
            ImapError::Auth(_) => "auth",
            ImapError::Secret(_) => "secret",
            ImapError::Closed(_) => "closed",
            ImapError::FetchRefused(_) => "fetch_refused",
            ImapError::NoUidValidity | ImapError::Select(_) => "select",
            ImapError::Protocol(async_imap::error::Error::Io(_))
            | ImapError::Protocol(async_imap::error::Error::ConnectionLost) => "io",
            ImapError::Protocol(_) => "protocol",
        }
    }

    /// The server's own suggested delay before the next attempt (throttling), if it gave one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        None
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

/// Runs `fut` with a deadline, mapping expiry to [`ImapError::Timeout`].
pub(crate) async fn deadline<T, E: Into<ImapError>>(
    d: std::time::Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(d, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ImapError::Timeout(what)),
    }
}
