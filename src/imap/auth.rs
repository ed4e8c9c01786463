//! Logging in: `LOGIN` with a password, or SASL `XOAUTH2` / `OAUTHBEARER` with an OAuth2 access
//! token.
//!
//! A refused token is forgotten at once. When the refused token came from the cache (it may have
//! been revoked or rotated since), a fresh one is fetched and tried once more on the same
//! connection, so a revoked token costs one round trip rather than the long `auth_failed` wait.

use std::time::Duration;

use super::{ImapError, Io, Session};
use crate::config::AuthMethod;
use crate::secrets::{Freshness, OAuth2Token, Secret, SecretSource};

/// How an account proves who it is.
#[derive(Debug)]
pub enum Credentials {
    /// `LOGIN user password`, the password read at each login.
    Password(SecretSource),
    /// SASL with an OAuth2 bearer token.
    OAuth2 {
        /// `XOAUTH2` or `OAUTHBEARER`.
        mechanism: SaslMechanism,
        /// The token command and its cache, shared by the account's mailboxes.
        token: OAuth2Token,
    },
}

/// The OAuth2 SASL mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Google's and Microsoft's `XOAUTH2`.
    XOAuth2,
    /// RFC 7628 `OAUTHBEARER`.
    OAuthBearer,
}

impl SaslMechanism {
    /// The name after `AUTHENTICATE`.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::XOAuth2 => "XOAUTH2",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl Credentials {
    /// The credentials of a validated account.
    pub fn from_account(a: &crate::config::Account) -> Credentials {
        let oauth = |mechanism| Credentials::OAuth2 {
            mechanism,
            token: OAuth2Token::new(a.oauth2_token_command.clone().unwrap_or_default()),
        };
        match a.auth_method() {
            AuthMethod::Password => Credentials::Password(a.secret()),
            AuthMethod::Xoauth2 => oauth(SaslMechanism::XOAuth2),
            AuthMethod::Oauthbearer => oauth(SaslMechanism::OAuthBearer),
        }
    }
}

/// The client side of one SASL OAuth2 exchange. The first `process` answers the server's
/// empty challenge with the initial response; any later challenge is the server's JSON error,
/// answered with an empty response so that the server sends its tagged `NO`.
struct OAuth2Sasl<'a> {
    /// Which message format.
    mechanism: SaslMechanism,
    /// Login name.
    user: &'a str,
    /// Server host and port, for OAUTHBEARER's `host=` and `port=`.
    host: &'a str,
    /// See `host`.
    port: u16,
    /// The bearer token.
    token: &'a Secret,
    /// Whether the initial response was sent.
    sent: bool,
}

impl async_imap::Authenticator for OAuth2Sasl<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        if self.sent {
            return Vec::new();
        }
        self.sent = true;
        initial_response(
            self.mechanism,
            self.user,
            self.host,
            self.port,
            self.token.expose(),
        )
    }
}

/// The SASL initial response (before base64).
fn initial_response(
    mechanism: SaslMechanism,
    user: &str,
    host: &str,
    port: u16,
    token: &str,
) -> Vec<u8> {
    match mechanism {
        SaslMechanism::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
        SaslMechanism::OAuthBearer => {
            // RFC 5801 gs2 header: ',' and '=' in the authzid are escaped.
            let authzid = user.replace('=', "=3D").replace(',', "=2C");
            format!("n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
        }
    }
    .into_bytes()
}

type Client = async_imap::Client<Box<dyn Io>>;

/// Logs in with the account's credentials. A tagged NO is [`ImapError::Auth`]; a connection
/// closed right after LOGIN (Dovecot at its process limit) is a retryable
/// [`ImapError::Closed`].
pub async fn login(
    client: Client,
    credentials: &Credentials,
    user: &str,
    host: &str,
    port: u16,
    t: Duration,
) -> Result<Session, ImapError> {
    match credentials {
        Credentials::Password(source) => {
            let secret = source.resolve().await?;
            match tokio::time::timeout(t, client.login(user, secret.expose())).await {
                Ok(Ok(session)) => Ok(session),
                Ok(Err((e, _))) => Err(refusal(e, "LOGIN")),
                Err(_) => Err(ImapError::Timeout("login")),
            }
        }
        Credentials::OAuth2 { mechanism, token } => {
            let (secret, freshness) = token.get().await?;
            let sasl = |secret| OAuth2Sasl {
                mechanism: *mechanism,
                user,
                host,
                port,
                token: secret,
                sent: false,
            };
            let client = match authenticate(client, mechanism.name(), sasl(&secret), t).await {
                Ok(session) => return Ok(session),
                Err((e, client)) => {
                    token.invalidate(&secret).await;
                    match client {
                        Some(client) if freshness == Freshness::Cached && e.is_auth() => {
                            tracing::info!(
                                mechanism = mechanism.name(),
                                "cached OAuth2 token refused; fetching a new one"
                            );
                            client
                        }
                        _ => return Err(e),
                    }
                }
            };
            let (secret, _) = token.get().await?;
            match authenticate(client, mechanism.name(), sasl(&secret), t).await {
                Ok(session) => Ok(session),
                Err((e, _)) => {
                    token.invalidate(&secret).await;
                    Err(e)
                }
            }
        }
    }
}

/// One `AUTHENTICATE`; on a refusal, the client back for another try.
async fn authenticate(
    client: Client,
    mechanism: &'static str,
    sasl: OAuth2Sasl<'_>,
    t: Duration,
) -> Result<Session, (ImapError, Option<Client>)> {
    match tokio::time::timeout(t, client.authenticate(mechanism, sasl)).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err((e, client))) => {
            let retry = matches!(e, async_imap::error::Error::No(_));
            Err((refusal(e, "AUTHENTICATE"), retry.then_some(client)))
        }
        Err(_) => Err((ImapError::Timeout("authenticate"), None)),
    }
}

/// Classifies a failed LOGIN or AUTHENTICATE. A BAD is a protocol problem, not wrong
/// credentials; server messages never echo the command, so no secret leaks through them.
/// Microsoft 365's throttling text (NO or BAD) is throttling. async-imap renders the tagged
/// reply into a string, so RFC 5530's response codes cannot be read structurally here.
fn refusal(e: async_imap::error::Error, what: &'static str) -> ImapError {
    use async_imap::error::Error;
    if let Error::No(m) | Error::Bad(m) = &e {
        if let Some(delay) = super::throttle::microsoft_backoff(m) {
            return ImapError::Throttled {
                command: what,
                delay: Some(delay),
                text: m.clone(),
            };
        }
    }
    match e {
        async_imap::error::Error::No(m) => ImapError::Auth(m),
        async_imap::error::Error::ConnectionLost => {
            ImapError::Closed(format!("connection closed after {what}"))
        }
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::Authenticator;

    #[test]
    fn xoauth2_initial_response_then_empty() {
        let token = Secret::new("tok".into());
        let mut a = OAuth2Sasl {
            mechanism: SaslMechanism::XOAuth2,
            user: "joe@example.com",
            host: "imap.example.com",
            port: 993,
            token: &token,
            sent: false,
        };
        assert_eq!(
            a.process(b""),
            b"user=joe@example.com\x01auth=Bearer tok\x01\x01".to_vec()
        );
        // The error challenge: answered empty, so the server sends its tagged NO.
        assert_eq!(a.process(br#"{"status":"401"}"#), Vec::<u8>::new());
    }

    #[test]
    fn oauthbearer_escapes_the_authzid() {
        let r = initial_response(SaslMechanism::OAuthBearer, "a,b=c", "h", 143, "t");
        assert_eq!(
            r,
            b"n,a=a=2Cb=3Dc,\x01host=h\x01port=143\x01auth=Bearer t\x01\x01".to_vec()
        );
    }
}
