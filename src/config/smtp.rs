//! Sending (#20): `accounts[].smtp`, `send_as`, `sent` and `sent_copy`, and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::is_addr_spec;
use super::{is_loopback_host, Account, AuthMethod, Config, Seg, TlsMode};

/// Default `smtp.give_up_after`: a 4xx or network failure is retried this long.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Default `smtp.max_message_size`: 25 MB, what most providers accept.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 25 * 1024 * 1024;

/// `[accounts.smtp]`: where and how an account sends. `Debug` never shows a password.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The submission server (also the TLS server name).
    pub host: String,
    /// Defaults to 465 for `implicit`, 587 for `starttls` and 25 for `none`.
    pub port: Option<u16>,
    /// `implicit` (default), `starttls` or `none` (loopback only, unless `allow_insecure`).
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// Let `tls = "none"` reach a host that is not loopback.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Login name; defaults to the account's `username`.
    pub username: Option<String>,
    /// The SMTP login's own password source; without one, the account's own credentials
    /// (its password source, or its OAuth2 token) are used.
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub password: Option<String>,
    /// `password`, `xoauth2` or `oauthbearer`; defaults to the account's.
    pub auth: Option<AuthMethod>,
    /// A 4xx reply or a network failure is retried on the `[backoff]` schedule this long.
    #[serde(
        default = "default_give_up_after",
        deserialize_with = "super::schema::duration"
    )]
    pub give_up_after: Duration,
    /// The largest message accepted for sending, in bytes (checked before queueing).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
}

/// `accounts[].sent_copy`: who files the copy of a sent message in the Sent mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentCopy {
    /// idlesync `APPEND`s the exact bytes sent, `\Seen` (default).
    #[default]
    Append,
    /// The provider files it itself (Gmail, Microsoft 365): no APPEND.
    Server,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port())
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password_sources", &self.own_sources())
            .field("auth", &self.auth)
            .field("give_up_after", &self.give_up_after)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

fn default_tls() -> TlsMode {
    TlsMode::Implicit
}

fn default_give_up_after() -> Duration {
    DEFAULT_GIVE_UP_AFTER
}

fn default_max_message_size() -> usize {
    DEFAULT_MAX_MESSAGE_SIZE
}

impl SmtpConfig {
    /// The port, with the TLS mode's default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 465,
            TlsMode::Starttls => 587,
            TlsMode::None => 25,
        })
    }

    /// The login name: `smtp.username`, else the account's.
    pub fn username<'a>(&'a self, account: &'a Account) -> &'a str {
        self.username.as_deref().unwrap_or(&account.username)
    }

    /// The login method: `smtp.auth`, else the account's.
    pub fn auth_method(&self, account: &Account) -> AuthMethod {
        self.auth.unwrap_or_else(|| account.auth_method())
    }

    /// Which of the own password source keys are set.
    fn own_sources(&self) -> Vec<&'static str> {
        [
            ("password_env", self.password_env.is_some()),
            ("password_file", self.password_file.is_some()),
            ("password_command", self.password_command.is_some()),
            ("password", self.password.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

impl Config {
    /// The sending keys of every account: part of `Config::validate` (validate.rs).
    pub(super) fn smtp_problems(&self, out: &mut Vec<(Vec<Seg<'static>>, String)>) {
        for (i, a) in self.accounts.iter().enumerate() {
            let at = |key: &'static str| vec![Seg::Key("accounts"), Seg::Index(i), Seg::Key(key)];
            for (j, addr) in a.send_as.iter().enumerate() {
                if !is_addr_spec(addr) {
                    let mut seg = at("send_as");
                    seg.push(Seg::Index(j));
                    out.push((seg, format!("{addr:?} is not an email address")));
                }
            }
            if a.sent.as_deref().is_some_and(|s| s.trim().is_empty()) {
                out.push((
                    at("sent"),
                    "must not be empty; leave it out for the mailbox marked \\Sent".into(),
                ));
            }
            let Some(s) = &a.smtp else { continue };
            let at = |key: &'static str| {
                vec![
                    Seg::Key("accounts"),
                    Seg::Index(i),
                    Seg::Key("smtp"),
                    Seg::Key(key),
                ]
            };
            if s.host.is_empty()
                || s.host
                    .contains(|c: char| c.is_whitespace() || c.is_control())
            {
                out.push((at("host"), format!("{:?} is not a host name", s.host)));
            }
            if s.port == Some(0) {
                out.push((at("port"), "must be 1-65535".into()));
            }
            if s.tls == TlsMode::None && !s.allow_insecure && !is_loopback_host(&s.host) {
                out.push((
                    at("tls"),
                    format!(
                        "\"none\" would send the password and the mail in clear text to {:?}; \
                         use \"implicit\" or \"starttls\", or set smtp.allow_insecure = true",
                        s.host
                    ),
                ));
            }
            if s.username.as_deref().is_some_and(|u| u.trim().is_empty()) {
                out.push((at("username"), "must not be empty".into()));
            }
            let own = s.own_sources();
            if let Some(second) = own.get(1) {
                out.push((at(second), format!("set only one of {}", own.join(", "))));
            }
            let oauth = matches!(
                s.auth_method(a),
                AuthMethod::Xoauth2 | AuthMethod::Oauthbearer
            );
            if oauth && a.oauth2_token_command.is_none() {
                out.push((
                    at("auth"),
                    "OAuth2 needs the account's oauth2_token_command".into(),
                ));
            }
            if s.give_up_after.is_zero() {
                out.push((
                    at("give_up_after"),
                    "must be more than 0 (e.g. \"24h\")".into(),
                ));
            }
            if s.max_message_size == 0 {
                out.push((at("max_message_size"), "must be more than 0".into()));
            }
        }
    }
}
