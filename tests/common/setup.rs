//! The one way tests build a config file ([`ConfigToml`]) and the servers most tests start
//! together ([`Setup`]: a Dovecot with users, a database and a Redis channel of the test's own).

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use idlesync::Daemon;

use super::daemon::AccountSpec;
use super::db::{Kind, TestDb};
use super::dovecot::Dovecot;
use super::redis;

/// A TOML value: a string (quoted and escaped when rendered) or a literal (numbers, booleans,
/// arrays) written as given.
#[derive(Debug, Clone)]
pub enum Value {
    /// Rendered as a TOML basic string.
    Str(String),
    /// Rendered as is.
    Raw(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<&Path> for Value {
    fn from(p: &Path) -> Self {
        Value::Str(p.display().to_string())
    }
}

macro_rules! raw_values {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Raw(v.to_string())
            }
        }
    )*};
}
raw_values!(u16, u32, u64, usize, bool);

/// A TOML array of strings, e.g. a mailbox list.
pub fn strings(items: &[&str]) -> Value {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    Value::Raw(format!("[{}]", quoted.join(", ")))
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Str(s) => quote(s),
            Value::Raw(r) => r.clone(),
        }
    }
}

type Table = Vec<(String, Value)>;

/// A config file's text, section by section. [`ConfigToml::new`] gives the test defaults:
/// the database, an admin listener on a free port, short connect timeouts and a fast backoff.
#[derive(Debug, Clone, Default)]
pub struct ConfigToml {
    sections: Vec<(String, Table)>,
    accounts: Vec<Table>,
}

impl ConfigToml {
    /// The defaults tests share, with records going to stdout until [`ConfigToml::redis`].
    pub fn new(db_url: &str) -> Self {
        ConfigToml::default()
            .set("storage", "url", db_url)
            .set("storage", "max_connections", 4u32)
            .set("metrics", "listen", "127.0.0.1:0")
            .set("imap", "dead_after", "5m")
            .set("imap", "connect_timeout", "10s")
            .set("backoff", "initial", "100ms")
            .set("backoff", "max", "2s")
    }

    /// Sets `key` in `[section]`, replacing an earlier value.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        let table = match self.sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, t)) => t,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                &mut self.sections.last_mut().expect("just pushed").1
            }
        };
        put(table, key, value.into());
        self
    }

    /// Publishes to `channel` on the Redis at `url`, and changes to `channel:changes`
    /// ([`changes_channel`]), so that tests running together never share a channel.
    pub fn redis(self, url: &str, channel: &str) -> Self {
        self.set("redis", "url", url)
            .set("redis", "channel", channel)
            .set("redis", "changes_channel", changes_channel(channel))
    }

    /// Turns the API on, on a free loopback port, with [`super::api::TOKEN`] read from
    /// `token_file` (see [`super::api::token_file`]).
    pub fn api(self, token_file: &Path) -> Self {
        self.set("api", "listen", "127.0.0.1:0")
            .set("api", "token_file", token_file)
    }

    /// Adds an `[[accounts]]` entry for a test Dovecot user on 127.0.0.1 (`ca_file` when given).
    pub fn account(mut self, a: &AccountSpec<'_>, ca_file: Option<&Path>) -> Self {
        let mut t = Table::new();
        put(&mut t, "id", a.id.into());
        put(&mut t, "email", format!("{}@example.test", a.user).into());
        put(&mut t, "host", "127.0.0.1".into());
        put(&mut t, "port", a.port.into());
        put(&mut t, "tls", a.tls.into());
        put(&mut t, "username", a.user.into());
        put(&mut t, "password", a.password.into());
        put(&mut t, "mailboxes", strings(a.mailboxes));
        if let Some(ca) = ca_file {
            put(&mut t, "ca_file", ca.into());
        }
        self.accounts.push(t);
        self
    }

    /// Sets `key` on the last account added.
    pub fn account_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Some(t) = self.accounts.last_mut() {
            put(t, key, value.into());
        }
        self
    }

    /// Removes `key` from the last account added (e.g. `password`, to use a command instead).
    pub fn account_unset(mut self, key: &str) -> Self {
        if let Some(t) = self.accounts.last_mut() {
            t.retain(|(k, _)| k != key);
        }
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, table) in &self.sections {
            let _ = writeln!(out, "[{section}]");
            for (k, v) in table {
                let _ = writeln!(out, "{k} = {}", v.render());
            }
            out.push('\n');
        }
        for t in &self.accounts {
            out.push_str("[[accounts]]\n");
            for (k, v) in t {
                let _ = writeln!(out, "{k} = {}", v.render());
            }
            out.push('\n');
        }
        out
    }
}

fn put(table: &mut Table, key: &str, value: Value) {
    match table.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => table.push((key.to_string(), value)),
    }
}

/// The `redis.changes_channel` tests use beside `channel`.
pub fn changes_channel(channel: &str) -> String {
    format!("{channel}:changes")
}

/// What most integration tests start: a Dovecot with these users, a database of the test's
/// own and a Redis channel nobody else uses.
pub struct Setup {
    /// The test's Dovecot.
    pub dc: Dovecot,
    /// The test's database (dropped afterwards).
    pub db: TestDb,
    /// The test's Redis channel.
    pub channel: String,
}

impl Setup {
    /// Starts Dovecot with `users`, and makes a database of `kind` and a channel named after
    /// `test`.
    pub async fn new(users: &[(&str, &str)], kind: Kind, test: &str) -> Result<Setup> {
        Ok(Setup {
            dc: Dovecot::start(users)?,
            db: TestDb::new(kind).await?,
            channel: redis::unique_channel(test),
        })
    }

    /// The test defaults with this setup's database and Redis channel.
    pub fn config(&self) -> ConfigToml {
        ConfigToml::new(&self.db.url).redis(&redis::url(), &self.channel)
    }

    /// An account of Dovecot user `user` over implicit TLS, trusting the test CA.
    pub fn implicit(&self, config: ConfigToml, a: &AccountSpec<'_>) -> ConfigToml {
        config.account(a, Some(self.dc.ca_file()))
    }

    /// A subscriber on this setup's channel; subscribe before starting the daemon.
    pub async fn subscribe(&self) -> Result<redis::Subscriber> {
        redis::subscribe(&redis::url(), &self.channel).await
    }

    /// A subscriber on this setup's changes channel (`flagsChanged`, `messagesExpunged`,
    /// `imported`); subscribe before starting the daemon.
    pub async fn subscribe_changes(&self) -> Result<redis::Subscriber> {
        redis::subscribe(&redis::url(), &changes_channel(&self.channel)).await
    }

    /// Starts the daemon on `config`, exactly as `idlesync run` would parse it.
    pub async fn start(&self, config: &ConfigToml) -> Result<Daemon> {
        super::daemon::start(&config.render()).await
    }
}
