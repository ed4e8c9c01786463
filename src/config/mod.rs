//! The operator's TOML file: parsing, defaults, validation with file/line/key, and secrets.
//!
//! Everything here is pure except reading the config file itself and, in
//! [`SecretSource::resolve`] and [`SecretSource::check`], the environment or a password file.
//! `idlesync check` and `idlesync run` both go through [`Config::check_file`] (parse, validate,
//! then every secret source), so every error `run` would meet before its first connection is
//! reported up front, and `run` refuses it too.
//!
//! A live reload (SIGHUP, or an edit seen by `[reload] watch_interval`) applies only the
//! account list. A changed `[storage]` (`expunged`, `import_since` included), `[redis]`
//! (`changes_channel` included), `[metrics]`, `[imap]`, `[backoff]` or `[outbox]` is logged
//! and flagged by `idlesync_config_restart_required`; the running values stay until a restart.
//!
//! - `schema`: the sections, keys and defaults;
//! - `load`: bytes to a validated [`Config`]; `validate`: the semantic checks; `locate`: the
//!   line and key of each problem; `error`: [`ConfigError`];
//! - `redact`: `Debug` that hides passwords, in URLs too ([`redact_url`]);
//! - [`ca_file`]: reading an account's extra trust roots.
//! - `smtp`: the sending keys (#20): `accounts[].smtp`, `send_as`, `sent`, `sent_copy`.

mod api;
pub mod ca_file;
mod error;
mod load;
mod locate;
mod redact;
mod schema;
mod smtp;
mod validate;
mod validate_cluster;

pub use crate::secrets::{Secret, SecretError, SecretSource};
pub use api::{ApiConfig, OneOrMany, DEFAULT_API_LISTEN, MIN_TOKEN_LEN};
pub use error::{ConfigError, ConfigErrors};
pub(crate) use load::Seg;
pub use redact::redact_url;
pub use schema::{
    is_loopback_host, Account, AuthMethod, BackoffConfig, ClusterConfig, Config, ImapTimers,
    MetricsConfig, OutboxConfig, RawRetention, RedisConfig, ReloadConfig, StorageConfig, TlsMode,
    DEFAULT_PUBLISH_RETRY_MAX,
};
pub use smtp::{SentCopy, SmtpConfig, DEFAULT_GIVE_UP_AFTER, DEFAULT_MAX_MESSAGE_SIZE};
pub use validate::MAX_CONNECTIONS_PER_LOGIN;

#[cfg(test)]
mod tests;
