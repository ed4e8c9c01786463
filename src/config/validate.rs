//! Semantic checks after parsing: each problem as (key path, message), located later.

use std::collections::HashSet;

use std::time::Duration;

use super::{is_loopback_host, AuthMethod, Config, SecretSource, Seg, TlsMode};

/// More connections than this to one user is a warning (Gmail's and Microsoft's limit).
pub const MAX_CONNECTIONS_PER_LOGIN: usize = 15;

impl Config {
    /// Semantic checks after parsing. Returns (key path, message) pairs.
    pub(super) fn validate(&self) -> Vec<(Vec<Seg<'static>>, String)> {
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
        if self.storage.import_since.is_some_and(|d| d.is_zero()) {
            out.push((
                vec![Seg::Key("storage"), Seg::Key("import_since")],
                "must be more than 0 (e.g. \"90d\"); leave it out to import everything".into(),
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
            if redis.changes_channel.is_empty() {
                out.push((
                    vec![Seg::Key("redis"), Seg::Key("changes_channel")],
                    "must not be empty".into(),
                ));
            } else if redis.changes_channel == redis.channel {
                out.push((
                    vec![Seg::Key("redis"), Seg::Key("changes_channel")],
                    format!(
                        "must differ from redis.channel ({:?}): the web app counts every record \
                         there as new mail, flag changes and imported history included",
                        redis.channel
                    ),
                ));
            }
            if redis.retry_max.is_zero() {
                out.push((
                    vec![Seg::Key("redis"), Seg::Key("retry_max")],
                    "must be at least 1ms".into(),
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
        if t.max_connecting == 0 {
            out.push((
                vec![Seg::Key("imap"), Seg::Key("max_connecting")],
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
        self.cluster_problems(&mut out);
        self.api_problems(&mut out);
        self.smtp_problems(&mut out);
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
            } else if !is_addr_spec(&a.email) {
                out.push((
                    at("email"),
                    format!(
                        "{:?} is not an email address (local-part@domain, RFC 5322 addr-spec)",
                        a.email
                    ),
                ));
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
                if let Err(e) = super::ca_file::read_ca_file(ca) {
                    out.push((at("ca_file"), e.to_string()));
                }
            }
        }
        out
    }

    /// Checks every account's secret source once: env vars and files are read, commands'
    /// programs looked up (not run). Returns (key path, message) pairs.
    pub(super) fn secret_problems(&self) -> Vec<(Vec<Seg<'static>>, String)> {
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
        self.api_secret_problems(&mut out);
        out
    }

    /// Warnings that do not stop the daemon: (key path, message).
    pub(super) fn warning_problems(&self) -> Vec<(Vec<Seg<'static>>, String)> {
        let mut out = Vec::new();
        if self.accounts.is_empty() {
            out.push((
                vec![Seg::Key("accounts")],
                "no [[accounts]]: nothing to watch until a reload (SIGHUP, or an edit of this \
                 file) adds some"
                    .to_string(),
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
}

/// Why `storage.url` would not connect, checked by sqlx's own parsers (no connection).
pub(super) fn storage_url_problem(url: &str) -> Option<String> {
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
pub(super) fn redis_url_problem(url: &str) -> Option<String> {
    use redis::IntoConnectionInfo;
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Some("must start with redis:// or rediss://".into());
    }
    url.into_connection_info()
        .err()
        .map(|e| format!("not a valid Redis URL: {e}"))
}

/// Whether `s` is an RFC 5322 `addr-spec` without comments or folding: a dot-atom or quoted
/// local part, `@`, and a dot-atom or `[literal]` domain. Non-ASCII letters count as atom text
/// (RFC 6532). Pure, so `check` and the unit tests share it.
pub(super) fn is_addr_spec(s: &str) -> bool {
    fn atext(c: char) -> bool {
        c.is_ascii_alphanumeric()
            || "!#$%&'*+-/=?^_`{|}~".contains(c)
            || !c.is_ascii() && !c.is_control() && !c.is_whitespace()
    }
    fn dot_atom(s: &str) -> bool {
        !s.is_empty()
            && s.split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(atext))
    }
    fn quoted(s: &str) -> bool {
        let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
            return false;
        };
        // Every `"` inside is escaped (`\"`), and no control character appears.
        let mut escaped = false;
        for c in inner.chars() {
            if c.is_control() || (c == '"' && !escaped) {
                return false;
            }
            escaped = c == '\\' && !escaped;
        }
        !escaped
    }
    fn literal(s: &str) -> bool {
        s.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|inner| {
                !inner.is_empty()
                    && inner
                        .chars()
                        .all(|c| c.is_ascii_graphic() && !"[]\\".contains(c))
            })
    }
    // The domain never holds an `@`; a quoted local part may.
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    (dot_atom(local) || quoted(local)) && (dot_atom(domain) || literal(domain))
}
