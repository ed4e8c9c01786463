//! The file's shape: every section and key, with its default and its doc (which doubles as
//! the operator's documentation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::secrets::{Secret, SecretSource};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where messages, sync state and the outbox live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Where records go: `email:sync` and `email:changes`. Without it, records of both are
    /// written to stdout as JSON lines.
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
    /// Several replicas sharing this account list through PostgreSQL leases (off by default).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The web app's HTTP API (reads, flags, moves, deletes). Without it, no listener.
    pub api: Option<super::ApiConfig>,
    /// The accounts to watch.
    #[serde(default)]
    pub accounts: Vec<Account>,
}

/// `[storage]`. Its `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Deserialize)]
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
    /// What becomes of a row whose message left the mailbox (expunged, or moved to another
    /// mailbox): `keep` (the default: the row stays, marked with `expunged_at`) or `delete`
    /// (the row, its attachments and its raw copy are removed).
    pub expunged: crate::changes::ExpungeMode,
    /// A first import (and the re-import after a UIDVALIDITY change) only fetches mail whose
    /// INTERNALDATE is at most this old (`"90d"`, by `UID SEARCH SINCE`); older mail is never
    /// fetched. More than 0 when set; left out, everything is imported.
    #[serde(deserialize_with = "optional_duration")]
    pub import_since: Option<Duration>,
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
            expunged: crate::changes::ExpungeMode::Keep,
            import_since: None,
        }
    }
}

/// `[redis]`. Its `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The Pub/Sub channel the web app's Socket.IO server subscribes to.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// The Pub/Sub channel for changes to stored mail (`flagsChanged`, `messagesExpunged`,
    /// `imported`), kept apart so that the web app's "new email" badge never counts them.
    /// Non-empty, and not `channel`.
    #[serde(default = "default_changes_channel")]
    pub changes_channel: String,
    /// Optional Redis Stream: each record of both channels is also XADDed here, so a consumer that was offline can
    /// replay with a consumer group. PUBLISH stays for the live path.
    pub stream: Option<String>,
    /// Approximate MAXLEN of the stream (`XADD … MAXLEN ~ n`).
    #[serde(default = "default_stream_maxlen")]
    pub stream_maxlen: u64,
    /// Longest wait between two publish attempts while Redis (or the database) fails, so that
    /// records flow again at most this long after Redis returns. The publisher's own cap:
    /// `[backoff] max` is for reconnecting mailboxes.
    #[serde(default = "default_retry_max", deserialize_with = "duration")]
    pub retry_max: Duration,
}

/// `redis.retry_max` when not set, and the publisher's cap without `[redis]`.
pub const DEFAULT_PUBLISH_RETRY_MAX: Duration = Duration::from_secs(30);

fn default_retry_max() -> Duration {
    DEFAULT_PUBLISH_RETRY_MAX
}

fn default_channel() -> String {
    "email:sync".into()
}

fn default_changes_channel() -> String {
    "email:changes".into()
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

/// `[cluster]`: several replicas, one owner per mailbox (#13). Every replica reads the same
/// file; each watches only the mailboxes whose lease it holds in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Off by default: one process watches every mailbox, as without this section.
    pub enabled: bool,
    /// This replica's name in `cluster_nodes` and in lease rows. Unique per live replica.
    /// Default: the host name and the pid (`host-1234`), see [`ClusterConfig::node_id`].
    pub node_id: Option<String>,
    /// A lease (and the replica's heartbeat) not renewed for this long may be taken by
    /// another replica.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// How often leases and the heartbeat are renewed. Less than `lease_ttl`.
    #[serde(deserialize_with = "duration")]
    pub renew_every: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: None,
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
        }
    }
}

impl ClusterConfig {
    /// `node_id`, or the host name and the pid.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        // gethostname(2), not /proc/sys/kernel/hostname: systemd's ProcSubset=pid hides the
        // latter, and every replica of a host became `localhost-<pid>` (#22).
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}-{}", std::process::id())
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
    /// Silence for this long in IDLE: the connection is dead where the server has sent
    /// keepalives on it (Dovecot's come every 2 min), and is probed with `DONE` elsewhere.
    #[serde(deserialize_with = "duration")]
    pub dead_after: Duration,
    /// How long `DONE` (and `LOGOUT`) may take before the connection is dropped.
    #[serde(deserialize_with = "duration")]
    pub done_timeout: Duration,
    /// TCP connect, TLS handshake, greeting, login and SELECT, each. Also the progress
    /// deadline of any command in flight: the server must send a byte at least this often
    /// (IDLE, once accepted, is exempt).
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Most messages committed in one transaction (and announced in one record).
    pub fetch_batch: usize,
    /// New connections per second to one host, across all its mailboxes, for providers that
    /// throttle logins. 0 (the default): no rate; `max_connecting` alone paces a start-up or a
    /// server restart, at the speed the server answers.
    pub connects_per_second: u32,
    /// Connection attempts to one host under way at once (connect through SELECT). More would
    /// only queue at the server's login processes and run into `connect_timeout`.
    pub max_connecting: u32,
}

impl Default for ImapTimers {
    fn default() -> Self {
        Self {
            idle_renew: Duration::from_secs(25 * 60),
            dead_after: Duration::from_secs(5 * 60),
            done_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            fetch_batch: 500,
            connects_per_second: 0,
            max_connecting: 50,
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
    /// Longest delay while the password or token cannot be obtained (a token command that
    /// times out): the account itself is fine, so it is retried sooner than `auth_failed`.
    #[serde(deserialize_with = "duration")]
    pub secret_source_max: Duration,
    /// Delay in state `failed`, after an error retrying cannot fix: a mailbox that does not
    /// exist, a certificate that does not verify, TLS refused.
    #[serde(deserialize_with = "duration")]
    pub failed: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5 * 60),
            reset_after: Duration::from_secs(5 * 60),
            auth_failed: Duration::from_secs(15 * 60),
            secret_source_max: Duration::from_secs(5 * 60),
            failed: Duration::from_secs(15 * 60),
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
    /// Where `DELETE` through the API moves mail. Defaults to the mailbox the server marks
    /// `\Trash` (SPECIAL-USE).
    pub trash: Option<String>,
    /// Sending (#20): the account's SMTP server; without it the account cannot send.
    pub smtp: Option<super::smtp::SmtpConfig>,
    /// Sending (#20): other `from` addresses this account may send as.
    #[serde(default)]
    pub send_as: Vec<String>,
    /// Sending (#20): where sent mail is filed; defaults to the mailbox marked `\Sent`.
    pub sent: Option<String>,
    /// Sending (#20): `append` (default) or `server` (the provider files the copy itself).
    #[serde(default)]
    pub sent_copy: super::smtp::SentCopy,
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

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?}: {e} (use e.g. \"30s\", \"25m\")"
        ))
    })
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}
