//! The operator's TOML file: parsing, defaults, validation with file/line/key, and secrets.
//!
//! Everything here is pure except reading the config file itself and, in [`Secret::resolve`],
//! the environment or a password file. `idlesync check` runs [`Config::load`] plus
//! [`Config::check_secrets`], so every error `run` would meet before its first connection is
//! reported up front.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where messages, sync state and the outbox live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Where `email:sync` records go. Without it, records are written to stdout as JSON lines.
    pub redis: Option<RedisConfig>,
    /// The admin HTTP listener (`/metrics`, `/healthz`).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Protocol timers shared by every mailbox.
    #[serde(default)]
    pub imap: ImapTimers,
    /// Reconnect schedule shared by every mailbox.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Bounds on the outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// How edits to this file are picked up while running.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// The accounts to watch.
    #[serde(default)]
    pub accounts: Vec<Account>,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` (created when missing) or `postgres://user@host/db`.
    pub url: String,
    /// Upper bound on pooled database connections.
    pub max_connections: u32,
    /// Whether the original message is kept (`db`) so the web app can always re-render it.
    pub raw: RawRetention,
    /// Raw messages larger than this many bytes are not kept (`raw` stays NULL).
    pub raw_max_bytes: usize,
    /// Attachment content larger than this many bytes (per part) is not stored; its metadata is.
    pub attachment_max_bytes: usize,
    /// Only the first this-many bytes of a message are fetched (`BODY.PEEK[]<0.N>`); a larger
    /// message keeps its headers and is marked `truncated`.
    pub max_message_size: usize,
    /// Also join threads by normalized subject when no Message-ID links a message. Off by
    /// default: unrelated mail often shares a subject ("Hello", "Invoice").
    pub thread_by_subject: bool,
}

/// `storage.raw`: where the original RFC 5322 bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRetention {
    /// In the `message_raw` table, up to `raw_max_bytes`.
    Db,
    /// Not kept.
    None,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://idlesync.db".into(),
            max_connections: 8,
            raw: RawRetention::Db,
            raw_max_bytes: 50 * 1024 * 1024,
            attachment_max_bytes: 10 * 1024 * 1024,
            max_message_size: 50 * 1024 * 1024,
            thread_by_subject: false,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The Pub/Sub channel the web app's Socket.IO server subscribes to.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Optional Redis Stream: each record is also XADDed here, so a consumer that was offline can
    /// replay with a consumer group. PUBLISH stays for the live path.
    pub stream: Option<String>,
    /// Approximate MAXLEN of the stream (`XADD … MAXLEN ~ n`).
    #[serde(default = "default_stream_maxlen")]
    pub stream_maxlen: u64,
}

fn default_channel() -> String {
    "email:sync".into()
}

fn default_stream_maxlen() -> u64 {
    100_000
}

/// `[reload]`: live reload of the account list (SIGHUP always works too).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// How often the file's metadata is checked for a change (`"0s"` turns the watch off).
    /// Checking the path, not an open handle, follows editors that save by rename.
    #[serde(deserialize_with = "duration")]
    pub watch_interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch_interval: Duration::from_secs(2),
        }
    }
}

/// `[outbox]`: records waiting to be published while Redis is unreachable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Records older than this are dropped (and counted) rather than kept forever.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// At most this many records wait; the oldest beyond it are dropped (and counted).
    pub max_records: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_records: 1_000_000,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the admin listener. Keep it on loopback or a private network.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9898)),
        }
    }
}

/// `[imap]`: timers. Durations are human strings such as `"25m"` or `"15s"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapTimers {
    /// Leave and re-enter IDLE after this long, whatever the server sends (RFC 2177: < 29 min).
    #[serde(deserialize_with = "duration")]
    pub idle_renew: Duration,
    /// A connection that sends nothing for this long is dead. Dovecot's keepalive is 2 min.
    #[serde(deserialize_with = "duration")]
    pub dead_after: Duration,
    /// How long `DONE` (and `LOGOUT`) may take before the connection is dropped.
    #[serde(deserialize_with = "duration")]
    pub done_timeout: Duration,
    /// TCP connect, TLS handshake, greeting, login and SELECT, each.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Most messages committed in one transaction (and announced in one record).
    pub fetch_batch: usize,
    /// New connections per second to one host, across all its mailboxes, so that a start-up
    /// or a server restart does not log in a thousand mailboxes in the same second.
    pub connects_per_second: u32,
}

impl Default for ImapTimers {
    fn default() -> Self {
        Self {
            idle_renew: Duration::from_secs(25 * 60),
            dead_after: Duration::from_secs(5 * 60),
            done_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            fetch_batch: 500,
            connects_per_second: 20,
        }
    }
}

/// `[backoff]`: the reconnect schedule (exponential with jitter, by the backon crate).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// First delay after a failure.
    #[serde(deserialize_with = "duration")]
    pub initial: Duration,
    /// Longest delay.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
    /// A mailbox that stayed healthy this long starts again from `initial` on its next failure.
    #[serde(deserialize_with = "duration")]
    pub reset_after: Duration,
    /// Delay after the server rejected the credentials. Providers throttle retries hard.
    #[serde(deserialize_with = "duration")]
    pub auth_failed: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5 * 60),
            reset_after: Duration::from_secs(5 * 60),
            auth_failed: Duration::from_secs(15 * 60),
        }
    }
}

/// How the IMAP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (port 993).
    Implicit,
    /// Plain connect, then `STARTTLS`; refusing to go on if the server does not offer it.
    Starttls,
    /// No TLS at all. Only for loopback test servers.
    None,
}

/// One `[[accounts]]` entry.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The web app's account id, sent as `accountId`.
    pub id: String,
    /// Sent as `emailAddress`.
    pub email: String,
    /// IMAP server host name (also the TLS server name).
    pub host: String,
    /// IMAP server port; defaults to 993 for implicit TLS and 143 otherwise.
    pub port: Option<u16>,
    /// `implicit` (default), `starttls` or `none`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// IMAP login name.
    pub username: String,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// Path of a file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// A command (run by `sh -c`) whose stdout, trimmed, is the password. Run at each login.
    pub password_command: Option<String>,
    /// The password itself. Prefer `password_env` or `password_file`.
    pub password: Option<String>,
    /// `password` (LOGIN), `xoauth2` or `oauthbearer` (SASL). Defaults to `xoauth2` when
    /// `oauth2_token_command` is set, else `password`.
    pub auth: Option<AuthMethod>,
    /// A command (run by `sh -c`) printing an OAuth2 access token, bare or as JSON
    /// `{"access_token": "...", "expires_in": N}`. Cached per account until shortly before
    /// `expires_in` runs out, or until the server refuses it.
    pub oauth2_token_command: Option<String>,
    /// Allow `tls = "none"` to a host that is not loopback. The password then crosses the
    /// network in clear text.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Mailboxes to watch, one IDLE connection each.
    pub mailboxes: Vec<String>,
    /// Extra PEM trust root, for servers with a private CA.
    pub ca_file: Option<PathBuf>,
}

fn default_tls() -> TlsMode {
    TlsMode::Implicit
}

/// How an account logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// IMAP `LOGIN` with a password.
    Password,
    /// SASL `XOAUTH2` (Gmail, Microsoft 365) with a token from `oauth2_token_command`.
    Xoauth2,
    /// SASL `OAUTHBEARER` (RFC 7628) with a token from `oauth2_token_command`.
    Oauthbearer,
}

/// Whether `host` is a loopback name or address (`localhost`, 127.0.0.0/8, `::1`), without
/// resolving anything.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    h.eq_ignore_ascii_case("localhost")
        || h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field(
                "password_command",
                &self.password_command.as_ref().map(|_| "<redacted>"),
            )
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth", &self.auth)
            .field(
                "oauth2_token_command",
                &self.oauth2_token_command.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_insecure", &self.allow_insecure)
            .field("mailboxes", &self.mailboxes)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Account {
    /// The port, with the TLS mode's default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        })
    }

    /// How the account logs in, with the default applied.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth.unwrap_or(if self.oauth2_token_command.is_some() {
            AuthMethod::Xoauth2
        } else {
            AuthMethod::Password
        })
    }

    /// Where the password comes from. Validation guarantees exactly one source when the
    /// account logs in with a password.
    pub fn secret(&self) -> SecretSource {
        if let Some(var) = &self.password_env {
            SecretSource::Env(var.clone())
        } else if let Some(path) = &self.password_file {
            SecretSource::File(path.clone())
        } else if let Some(cmd) = &self.password_command {
            SecretSource::Command(cmd.clone())
        } else {
            SecretSource::Inline(Secret::new(self.password.clone().unwrap_or_default()))
        }
    }
}

pub use crate::secrets::{Secret, SecretError, SecretSource};

/// A config problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path such as `accounts[1].port`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All the problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One step of a key path.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::parse(path, &read_file(path)?)
    }

    /// Parses and validates the bytes of a config file named `path`. Never panics, whatever
    /// the bytes (not UTF-8, a byte-order mark, deep nesting, megabytes).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let text = decode(path, bytes)?;
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let named = key_of_error(text, &e);
            let key = at
                .and_then(|offset| key_at(text, offset, &named))
                .unwrap_or(named);
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: at.map(|offset| line_of(text, offset)),
                key,
                message: e.message().trim().to_string(),
            }])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(ConfigErrors(locate(path, text, problems)))
    }

    /// Semantic checks after parsing. Returns (key path, message) pairs.
    fn validate(&self) -> Vec<(Vec<Seg<'static>>, String)> {
        let mut out = Vec::new();
        if let Some(problem) = storage_url_problem(&self.storage.url) {
            out.push((vec![Seg::Key("storage"), Seg::Key("url")], problem));
        }
        if self.storage.max_connections == 0 {
            out.push((
                vec![Seg::Key("storage"), Seg::Key("max_connections")],
                "must be at least 1".into(),
            ));
        }
        // An IMAP partial fetch (`BODY.PEEK[]<0.N>`) takes a 32-bit N.
        if self.storage.max_message_size < 1024
            || u32::try_from(self.storage.max_message_size).is_err()
        {
            out.push((
                vec![Seg::Key("storage"), Seg::Key("max_message_size")],
                "must be between 1024 and 4294967295 bytes".into(),
            ));
        }
        if let Some(redis) = &self.redis {
            if let Some(problem) = redis_url_problem(&redis.url) {
                out.push((vec![Seg::Key("redis"), Seg::Key("url")], problem));
            }
            if redis.channel.is_empty() {
                out.push((
                    vec![Seg::Key("redis"), Seg::Key("channel")],
                    "must not be empty".into(),
                ));
            }
        }
        let t = &self.imap;
        if t.idle_renew.is_zero() || t.idle_renew > Duration::from_secs(29 * 60) {
            out.push((
                vec![Seg::Key("imap"), Seg::Key("idle_renew")],
                "must be between 1s and 29m (RFC 2177)".into(),
            ));
        }
        for (key, d) in [
            ("dead_after", t.dead_after),
            ("done_timeout", t.done_timeout),
            ("connect_timeout", t.connect_timeout),
        ] {
            if d.is_zero() {
                out.push((vec![Seg::Key("imap"), Seg::Key(key)], "must be > 0".into()));
            }
        }
        if t.connects_per_second == 0 {
            out.push((
                vec![Seg::Key("imap"), Seg::Key("connects_per_second")],
                "must be at least 1".into(),
            ));
        }
        if t.fetch_batch == 0 {
            out.push((
                vec![Seg::Key("imap"), Seg::Key("fetch_batch")],
                "must be at least 1".into(),
            ));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            out.push((
                vec![Seg::Key("backoff"), Seg::Key("max")],
                "needs 0 < initial <= max".into(),
            ));
        }
        let mut ids = HashSet::new();
        let mut logins = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let at = |key: &'static str| vec![Seg::Key("accounts"), Seg::Index(i), Seg::Key(key)];
            if a.id.trim().is_empty() {
                out.push((at("id"), "must not be empty".into()));
            } else if !ids.insert(a.id.as_str()) {
                out.push((at("id"), format!("duplicate account id {:?}", a.id)));
            }
            if a.email.trim().is_empty() {
                out.push((at("email"), "must not be empty".into()));
            }
            if a.host.trim().is_empty() {
                out.push((at("host"), "must not be empty".into()));
            } else if a.host.trim() != a.host
                || rustls::pki_types::ServerName::try_from(a.host.as_str()).is_err()
            {
                out.push((
                    at("host"),
                    format!("{:?} is not a valid host name or IP address", a.host),
                ));
            }
            if a.tls == TlsMode::None && !a.allow_insecure && !is_loopback_host(&a.host) {
                out.push((
                    at("tls"),
                    format!(
                        "\"none\" sends the password in clear text; refused for {:?}, which is not \
                         loopback (use implicit or starttls, or set allow_insecure = true)",
                        a.host
                    ),
                ));
            }
            if a.port == Some(0) {
                out.push((at("port"), "must be 1-65535".into()));
            }
            if a.username.is_empty() {
                out.push((at("username"), "must not be empty".into()));
            }
            let sources: Vec<&'static str> = [
                ("password_env", a.password_env.is_some()),
                ("password_file", a.password_file.is_some()),
                ("password_command", a.password_command.is_some()),
                ("password", a.password.is_some()),
            ]
            .iter()
            .filter(|(_, given)| *given)
            .map(|(key, _)| *key)
            .collect();
            match a.auth_method() {
                AuthMethod::Password => {
                    if sources.len() != 1 {
                        out.push((
                            sources.get(1).map_or_else(
                                || vec![Seg::Key("accounts"), Seg::Index(i)],
                                |k| at(k),
                            ),
                            format!(
                                "exactly one of password_env, password_file, password_command, \
                                 password is needed ({} given)",
                                sources.len()
                            ),
                        ));
                    }
                    if a.oauth2_token_command.is_some() {
                        out.push((
                            at("oauth2_token_command"),
                            "needs auth = \"xoauth2\" or \"oauthbearer\"".into(),
                        ));
                    }
                }
                AuthMethod::Xoauth2 | AuthMethod::Oauthbearer => {
                    if a.oauth2_token_command.is_none() {
                        out.push((at("auth"), "OAuth2 needs oauth2_token_command".into()));
                    }
                    if let Some(k) = sources.first() {
                        out.push((at(k), "not used with OAuth2; remove it".into()));
                    }
                }
            }
            for key in ["password_command", "oauth2_token_command"] {
                let cmd = if key == "password_command" {
                    &a.password_command
                } else {
                    &a.oauth2_token_command
                };
                if cmd.as_ref().is_some_and(|c| c.trim().is_empty()) {
                    out.push((at(key), "must not be empty".into()));
                }
            }
            if a.mailboxes.is_empty() {
                out.push((at("mailboxes"), "must list at least one mailbox".into()));
            }
            for (j, m) in a.mailboxes.iter().enumerate() {
                let mb = || {
                    vec![
                        Seg::Key("accounts"),
                        Seg::Index(i),
                        Seg::Key("mailboxes"),
                        Seg::Index(j),
                    ]
                };
                if m.is_empty() || m.chars().any(|c| c.is_control()) {
                    out.push((
                        mb(),
                        "must be a non-empty name without control characters".into(),
                    ));
                } else if !logins.insert((
                    a.host.to_ascii_lowercase(),
                    a.username.clone(),
                    m.clone(),
                )) {
                    out.push((
                        mb(),
                        format!("{:?} of {} on {} is already watched", m, a.username, a.host),
                    ));
                }
            }
            if let Some(ca) = &a.ca_file {
                if let Err(e) = crate::imap::tls::read_ca_file(ca) {
                    out.push((at("ca_file"), e.to_string()));
                }
            }
        }
        out
    }

    /// Checks every account's secret source once: env vars and files are read, commands'
    /// programs looked up (not run). Returns (key path, message) pairs.
    fn secret_problems(&self) -> Vec<(Vec<Seg<'static>>, String)> {
        let mut out = Vec::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let at = |key: &'static str| vec![Seg::Key("accounts"), Seg::Index(i), Seg::Key(key)];
            let result = match (a.auth_method(), &a.oauth2_token_command) {
                (AuthMethod::Xoauth2 | AuthMethod::Oauthbearer, Some(cmd)) => {
                    crate::secrets::OAuth2Token::new(cmd.clone())
                        .check()
                        .map_err(|e| (at("oauth2_token_command"), e))
                }
                _ => {
                    let key = match a.secret() {
                        SecretSource::Env(_) => "password_env",
                        SecretSource::File(_) => "password_file",
                        SecretSource::Command(_) => "password_command",
                        SecretSource::Inline(_) => "password",
                    };
                    a.secret().check().map_err(|e| (at(key), e))
                }
            };
            if let Err((key, e)) = result {
                out.push((key, e.to_string()));
            }
        }
        out
    }

    /// Checks every account's secret source once, to report missing env vars, files or
    /// programs up front (without line numbers; [`Config::check_file`] has them).
    pub fn check_secrets(&self, file: &Path) -> Result<(), ConfigErrors> {
        let errs: Vec<ConfigError> = self
            .secret_problems()
            .into_iter()
            .map(|(key, message)| ConfigError {
                file: file.to_path_buf(),
                line: None,
                key: render_key(&key),
                message,
            })
            .collect();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Warnings that do not stop the daemon: (key path, message).
    fn warning_problems(&self) -> Vec<(Vec<Seg<'static>>, String)> {
        let mut out = Vec::new();
        if self.accounts.is_empty() {
            out.push((
                vec![Seg::Key("accounts")],
                "no [[accounts]]: nothing to watch".to_string(),
            ));
        }
        // Gmail and Microsoft 365 refuse more than about 15 simultaneous IMAP connections
        // per user, across every client.
        let mut per_login: std::collections::BTreeMap<(String, &str), (usize, usize)> =
            std::collections::BTreeMap::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if a.password.is_some() {
                out.push((
                    vec![Seg::Key("accounts"), Seg::Index(i), Seg::Key("password")],
                    "the password is written inline; prefer password_env, password_file or \
                     password_command"
                        .to_string(),
                ));
            }
            let e = per_login
                .entry((a.host.to_ascii_lowercase(), a.username.as_str()))
                .or_insert((i, 0));
            e.1 += a.mailboxes.len();
        }
        for ((host, user), (first, n)) in per_login {
            if n > MAX_CONNECTIONS_PER_LOGIN {
                out.push((
                    vec![
                        Seg::Key("accounts"),
                        Seg::Index(first),
                        Seg::Key("mailboxes"),
                    ],
                    format!(
                        "{n} connections to {user} on {host}; Gmail and Microsoft refuse more \
                         than {MAX_CONNECTIONS_PER_LOGIN} per user"
                    ),
                ));
            }
        }
        out
    }

    /// Warnings that do not stop the daemon, as `key: message` lines.
    pub fn warnings(&self) -> Vec<String> {
        self.warning_problems()
            .into_iter()
            .map(|(key, message)| format!("{}: {message}", render_key(&key)))
            .collect()
    }

    /// What `idlesync check` does: everything `run` would refuse before its first connection
    /// (syntax, types, semantics, unreadable `ca_file`, missing secret sources), each located
    /// by file, line and key. On success, the config and its located warnings.
    pub fn check_file(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let bytes = read_file(path)?;
        let config = Self::parse(path, &bytes)?;
        let text = decode(path, &bytes)?;
        let secrets = config.secret_problems();
        if !secrets.is_empty() {
            return Err(ConfigErrors(locate(path, text, secrets)));
        }
        let warnings = locate(path, text, config.warning_problems());
        Ok((config, warnings))
    }
}

/// More connections than this to one user is a warning (Gmail's and Microsoft's limit).
pub const MAX_CONNECTIONS_PER_LOGIN: usize = 15;

fn read_file(path: &Path) -> Result<Vec<u8>, ConfigErrors> {
    std::fs::read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })
}

/// The file as text: UTF-8, without a byte-order mark.
fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, ConfigErrors> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes
            .iter()
            .take(e.valid_up_to())
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: Some(line),
            key: String::new(),
            message: "the file is not valid UTF-8".into(),
        }])
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Turns (key path, message) pairs into errors with the line of each key.
fn locate(path: &Path, text: &str, problems: Vec<(Vec<Seg<'_>>, String)>) -> Vec<ConfigError> {
    let tree = toml::de::DeTable::parse(text).ok();
    problems
        .into_iter()
        .map(|(path_segs, message)| {
            let line = tree.as_ref().and_then(|t| {
                let root = toml::de::DeValue::Table(t.get_ref().clone());
                span_of(&root, &path_segs).map(|start| line_of(text, start))
            });
            ConfigError {
                file: path.to_path_buf(),
                line,
                key: render_key(&path_segs),
                message,
            }
        })
        .collect()
}

/// Why `storage.url` would not connect, checked by sqlx's own parsers (no connection).
fn storage_url_problem(url: &str) -> Option<String> {
    use std::str::FromStr;
    if url.starts_with("sqlite:") {
        let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
        if path.split('?').next().is_none_or(str::is_empty) {
            return Some("sqlite: URL without a file path".into());
        }
        sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .err()
            .map(|e| format!("not a valid SQLite URL: {e}"))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        sqlx::postgres::PgConnectOptions::from_str(url)
            .err()
            .map(|e| format!("not a valid PostgreSQL URL: {e}"))
    } else {
        Some("must be sqlite://PATH or postgres://user@host/db".into())
    }
}

/// Why `redis.url` would not connect, checked by the redis crate's own parser (no connection).
fn redis_url_problem(url: &str) -> Option<String> {
    use deadpool_redis::redis::IntoConnectionInfo;
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Some("must start with redis:// or rediss://".into());
    }
    url.into_connection_info()
        .err()
        .map(|e| format!("not a valid Redis URL: {e}"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?}: {e} (use e.g. \"30s\", \"25m\")"
        ))
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn span_of(root: &toml::de::DeValue<'_>, path: &[Seg<'_>]) -> Option<usize> {
    let mut cur = root;
    let mut start = None;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => cur.get(*k),
            Seg::Index(i) => cur.get(*i),
        };
        match next {
            Some(v) => {
                start = Some(v.span().start);
                cur = v.get_ref();
            }
            None => break,
        }
    }
    start
}

fn render_key(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The dotted path of the key at `offset`, such as `accounts[1].port`: the deepest key whose
/// name or value spans it; else (a syntax error, where the parser dropped the key) the key
/// named on that line, inside the table of the nearest key before it.
fn key_at(text: &str, offset: usize, named: &str) -> Option<String> {
    /// The deepest containing path, and the nearest (start, path, is_table) before `offset`.
    struct Found<'a> {
        containing: Option<Vec<Seg<'a>>>,
        before: Option<(usize, Vec<Seg<'a>>, bool)>,
    }
    fn visit<'a>(
        path: &[Seg<'a>],
        span: std::ops::Range<usize>,
        is_table: bool,
        offset: usize,
        found: &mut Found<'a>,
    ) {
        if span.contains(&offset)
            && found
                .containing
                .as_ref()
                .is_none_or(|b| b.len() < path.len())
        {
            found.containing = Some(path.to_vec());
        }
        if span.start <= offset && found.before.as_ref().is_none_or(|b| b.0 <= span.start) {
            found.before = Some((span.start, path.to_vec(), is_table));
        }
    }
    fn walk<'a>(
        v: &'a toml::de::DeValue<'a>,
        offset: usize,
        path: &mut Vec<Seg<'a>>,
        found: &mut Found<'a>,
    ) {
        match v {
            toml::de::DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    path.push(Seg::Key(k.get_ref().as_ref()));
                    let is_table = matches!(child.get_ref(), toml::de::DeValue::Table(_));
                    visit(path, k.span(), is_table, offset, found);
                    visit(path, child.span(), is_table, offset, found);
                    walk(child.get_ref(), offset, path, found);
                    path.pop();
                }
            }
            toml::de::DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    let is_table = matches!(child.get_ref(), toml::de::DeValue::Table(_));
                    visit(path, child.span(), is_table, offset, found);
                    walk(child.get_ref(), offset, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    // Recoverable: a syntax error (a duplicate key, say) still gives the tree around it.
    let (tree, _) = toml::de::DeTable::parse_recoverable(text);
    let root = toml::de::DeValue::Table(tree.into_inner());
    let mut found = Found {
        containing: None,
        before: None,
    };
    walk(&root, offset, &mut Vec::new(), &mut found);
    if let Some(p) = found.containing {
        return Some(render_key(&p));
    }
    if named.is_empty() {
        return None;
    }
    let (_, mut parent, is_table) = found.before?;
    if !is_table {
        parent.pop();
    }
    parent.push(Seg::Key(named));
    Some(render_key(&parent))
}

/// Best effort: the key named at the error's position (`key = …` on that line).
fn key_of_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    if let Some((k, _)) = line.split_once('=') {
        return k.trim().to_string();
    }
    // unknown-field errors name the key in their message.
    e.message()
        .split('`')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("t.toml"), s.as_bytes())
    }

    const OK: &str = r#"
[storage]
url = "sqlite://x.db"

[[accounts]]
id = "a1"
email = "a@example.com"
host = "127.0.0.1"
port = 1993
username = "a"
password = "pw"
mailboxes = ["INBOX"]
"#;

    #[test]
    fn example_file_parses() {
        let c = Config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config.example.toml"
        )))
        .expect("config.example.toml must stay valid");
        assert!(!c.accounts.is_empty());
    }

    #[test]
    fn minimal_parses_with_defaults() {
        let c = parse(OK).unwrap();
        assert_eq!(c.imap.idle_renew, Duration::from_secs(1500));
        assert_eq!(c.accounts[0].tls, TlsMode::Implicit);
        assert_eq!(c.accounts[0].port(), 1993);
        assert!(c.redis.is_none());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse(&OK.replace("port = 1993", "prot = 1993")).unwrap_err();
        let e = &e.0[0];
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.to_string().contains("prot"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_tls_are_located() {
        let e = parse(&OK.replace("port = 1993", "port = \"x\"")).unwrap_err();
        assert_eq!(e.0[0].line, Some(9), "{e}");
        let e = parse(&OK.replace("port = 1993", "tls = \"maybe\"")).unwrap_err();
        assert_eq!(e.0[0].line, Some(9), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let dup = format!("{OK}\n[[accounts]]\nid = \"a1\"\nemail = \"b@x\"\nhost = \"h\"\nusername = \"b\"\npassword_env = \"X\"\nmailboxes = []\n");
        let e = parse(&dup).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("accounts[1].id", Some(15))), "{e}");
        assert!(keys.contains(&("accounts[1].mailboxes", Some(20))), "{e}");
    }

    #[test]
    fn not_utf8_and_bom() {
        assert!(Config::parse(Path::new("t"), b"\xff\xfe[storage]").is_err());
        let with_bom = format!("\u{feff}{OK}");
        assert!(parse(&with_bom).is_ok());
    }

    #[tokio::test]
    async fn secrets_are_redacted() {
        let c = parse(OK).unwrap();
        let dbg = format!("{:?}", c);
        assert!(!dbg.contains("\"pw\""), "{dbg}");
        let s = c.accounts[0].secret().resolve().await.unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "imap.example.com",
            "10.0.0.1",
            "localhost.example.com",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn bad_duration() {
        let e = parse(&format!("[imap]\nidle_renew = \"soon\"\n{OK}")).unwrap_err();
        assert_eq!(e.0[0].line, Some(2), "{e}");
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
