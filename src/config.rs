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
#[derive(Debug, Clone, Deserialize)]
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
    /// The accounts to watch.
    #[serde(default)]
    pub accounts: Vec<Account>,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` (created when missing) or `postgres://user@host/db`.
    pub url: String,
    /// Upper bound on pooled database connections.
    pub max_connections: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://idlesync.db".into(),
            max_connections: 8,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The Pub/Sub channel the web app's Socket.IO server subscribes to.
    #[serde(default = "default_channel")]
    pub channel: String,
}

fn default_channel() -> String {
    "email:sync".into()
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for ImapTimers {
    fn default() -> Self {
        Self {
            idle_renew: Duration::from_secs(25 * 60),
            dead_after: Duration::from_secs(5 * 60),
            done_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            fetch_batch: 500,
        }
    }
}

/// `[backoff]`: the reconnect schedule (exponential with jitter, by the backon crate).
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Clone, Deserialize)]
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
    /// The password itself. Prefer `password_env` or `password_file`.
    pub password: Option<String>,
    /// Mailboxes to watch, one IDLE connection each.
    pub mailboxes: Vec<String>,
    /// Extra PEM trust root, for servers with a private CA.
    pub ca_file: Option<PathBuf>,
}

fn default_tls() -> TlsMode {
    TlsMode::Implicit
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
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
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

    /// Where the password comes from. Validation guarantees exactly one source.
    pub fn secret(&self) -> SecretSource {
        if let Some(var) = &self.password_env {
            SecretSource::Env(var.clone())
        } else if let Some(path) = &self.password_file {
            SecretSource::File(path.clone())
        } else {
            SecretSource::Inline(Secret(self.password.clone().unwrap_or_default()))
        }
    }
}

/// A password or token. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret is read from; resolved at each connect, so rotating it needs no restart.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file; its trailing newline is dropped.
    File(PathBuf),
    /// Written in the config file.
    Inline(Secret),
}

/// A secret source that could not be read. Never carries the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl SecretSource {
    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Env(var) => std::env::var(var)
                .map(Secret)
                .map_err(|_| SecretError::EnvMissing(var.clone())),
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
            SecretSource::Inline(secret) => Ok(secret.clone()),
        }
    }
}

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
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(path, &bytes)
    }

    /// Parses and validates the bytes of a config file named `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let located = |line, key: String, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            key,
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            ConfigErrors(vec![located(
                Some(line),
                String::new(),
                "the file is not valid UTF-8".into(),
            )])
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigErrors(vec![located(
                line,
                key_of_error(text, &e),
                e.message().trim().to_string(),
            )])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let tree = toml::de::DeTable::parse(text).ok();
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(path_segs, message)| {
                    let line = tree.as_ref().and_then(|t| {
                        let root = toml::de::DeValue::Table(t.get_ref().clone());
                        span_of(&root, &path_segs).map(|start| line_of(text, start))
                    });
                    located(line, render_key(&path_segs), message)
                })
                .collect(),
        ))
    }

    /// Semantic checks after parsing. Returns (key path, message) pairs.
    fn validate(&self) -> Vec<(Vec<Seg<'static>>, String)> {
        let mut out = Vec::new();
        if !self.storage.url.starts_with("sqlite:")
            && !self.storage.url.starts_with("postgres://")
            && !self.storage.url.starts_with("postgresql://")
        {
            out.push((
                vec![Seg::Key("storage"), Seg::Key("url")],
                "must start with sqlite: or postgres://".into(),
            ));
        }
        if self.storage.max_connections == 0 {
            out.push((
                vec![Seg::Key("storage"), Seg::Key("max_connections")],
                "must be at least 1".into(),
            ));
        }
        if let Some(redis) = &self.redis {
            if !redis.url.starts_with("redis://") && !redis.url.starts_with("rediss://") {
                out.push((
                    vec![Seg::Key("redis"), Seg::Key("url")],
                    "must start with redis:// or rediss://".into(),
                ));
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
            if a.host.trim().is_empty() {
                out.push((at("host"), "must not be empty".into()));
            }
            if a.port == Some(0) {
                out.push((at("port"), "must be 1-65535".into()));
            }
            if a.username.is_empty() {
                out.push((at("username"), "must not be empty".into()));
            }
            let sources = [
                a.password_env.is_some(),
                a.password_file.is_some(),
                a.password.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources != 1 {
                out.push((
                    at("password_env"),
                    format!(
                        "exactly one of password_env, password_file, password is needed ({sources} given)"
                    ),
                ));
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

    /// Resolves every account's secret once, to report missing env vars or files up front.
    pub fn check_secrets(&self, file: &Path) -> Result<(), ConfigErrors> {
        let errs: Vec<ConfigError> = self
            .accounts
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                a.secret().resolve().err().map(|e| ConfigError {
                    file: file.to_path_buf(),
                    line: None,
                    key: format!("accounts[{i}]"),
                    message: e.to_string(),
                })
            })
            .collect();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Warnings that do not stop the daemon.
    pub fn warnings(&self) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|a| a.password.is_some())
            .map(|a| format!("account {:?}: password is written inline; prefer password_env or password_file", a.id))
            .collect()
    }
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

    #[test]
    fn secrets_are_redacted() {
        let c = parse(OK).unwrap();
        let dbg = format!("{:?}", c);
        assert!(!dbg.contains("\"pw\""), "{dbg}");
        let s = c.accounts[0].secret().resolve().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn bad_duration() {
        let e = parse(&format!("[imap]\nidle_renew = \"soon\"\n{OK}")).unwrap_err();
        assert_eq!(e.0[0].line, Some(2), "{e}");
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
