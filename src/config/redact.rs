//! `Debug` for the sections that hold secrets: passwords in URLs, inline passwords, commands.

use std::fmt;

use super::{Account, RedisConfig, StorageConfig};

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("raw", &self.raw)
            .field("raw_max_bytes", &self.raw_max_bytes)
            .field("attachment_max_bytes", &self.attachment_max_bytes)
            .field("max_message_size", &self.max_message_size)
            .field("thread_by_subject", &self.thread_by_subject)
            .field("expunged", &self.expunged)
            .field("import_since", &self.import_since)
            .finish()
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("channel", &self.channel)
            .field("changes_channel", &self.changes_channel)
            .field("stream", &self.stream)
            .field("retry_max", &self.retry_max)
            .field("stream_maxlen", &self.stream_maxlen)
            .finish()
    }
}

/// Query parameters that carry a password (`postgres://…?password=…` is sqlx's).
const SECRET_PARAMS: [&str; 3] = ["password", "passwd", "pass"];

/// `url` with its password replaced by `***`, both the userinfo's (`postgres://u:***@host/db`,
/// `redis://:***@host`) and a `password=` query parameter's. For `Debug` and log lines; never
/// parsed back.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end);
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_at);
    // The last `@` before the query ends the userinfo, even if the password holds an `@`.
    let before_query = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => before_query.to_string(),
        },
        None => before_query.to_string(),
    };
    let query = match query.strip_prefix('?') {
        Some(q) => {
            let (params, fragment) = q.split_at(q.find('#').unwrap_or(q.len()));
            let params: Vec<String> = params
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                        format!("{k}=***")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("?{}{fragment}", params.join("&"))
        }
        None => query.to_string(),
    };
    format!("{head}{before_query}{query}")
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
