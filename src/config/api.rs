//! `[api]`: the web app's HTTP API (#19), its listener and its bearer tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, Seg};
use crate::secrets::{Secret, SecretError, SecretSource};

/// `[api]`. Without the section there is no API listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the API listens. Keep it on loopback or a private network: it acts on mail.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Environment variable(s) holding bearer tokens. A value may hold several tokens separated
    /// by white space, so a token can be rotated without downtime: add the new one, move the
    /// web app over, remove the old one, reload.
    pub token_env: Option<OneOrMany<String>>,
    /// File(s) holding bearer tokens, one or more per file (white space separated).
    pub token_file: Option<OneOrMany<PathBuf>>,
    /// Command(s) (run by `sh -c`) printing bearer tokens.
    pub token_command: Option<OneOrMany<String>>,
    /// An action no replica has run after this long fails with `timeout`.
    #[serde(
        default = "default_action_timeout",
        deserialize_with = "super::schema::duration"
    )]
    pub action_timeout: Duration,
}

/// A key that takes one value or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// `key = "value"`
    One(T),
    /// `key = ["a", "b"]`
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `127.0.0.1:9899`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9899";

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9899))
}

fn default_action_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Shortest accepted token: a guessable token on a listener that deletes mail is a hole.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiConfig {
    /// The configured token sources, with the key each came from.
    fn sources(&self) -> Vec<(&'static str, SecretSource)> {
        let mut out = Vec::new();
        if let Some(v) = &self.token_env {
            out.extend(
                v.to_vec()
                    .into_iter()
                    .map(|s| ("token_env", SecretSource::Env(s))),
            );
        }
        if let Some(v) = &self.token_file {
            out.extend(
                v.to_vec()
                    .into_iter()
                    .map(|p| ("token_file", SecretSource::File(p))),
            );
        }
        if let Some(v) = &self.token_command {
            out.extend(
                v.to_vec()
                    .into_iter()
                    .map(|c| ("token_command", SecretSource::Command(c))),
            );
        }
        out
    }

    /// Reads every token now (commands are run). Errors name the key, never a value.
    pub async fn tokens(&self) -> Result<Vec<Secret>, (&'static str, SecretError)> {
        let mut out = Vec::new();
        for (key, source) in self.sources() {
            let value = source.resolve().await.map_err(|e| (key, e))?;
            let before = out.len();
            out.extend(
                value
                    .expose()
                    .split_whitespace()
                    .map(|t| Secret::new(t.to_string())),
            );
            if out.len() == before {
                return Err((
                    key,
                    SecretError::Empty {
                        what: format!("api.{key}"),
                    },
                ));
            }
        }
        Ok(out)
    }
}

impl Config {
    /// `[api]`: exactly one kind of token source, each with at least one value.
    pub(super) fn api_problems(&self, out: &mut Vec<(Vec<Seg<'static>>, String)>) {
        let Some(api) = &self.api else {
            return;
        };
        let at = |key: &'static str| vec![Seg::Key("api"), Seg::Key(key)];
        let set: Vec<&'static str> = [
            ("token_env", api.token_env.is_some()),
            ("token_file", api.token_file.is_some()),
            ("token_command", api.token_command.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        match set.as_slice() {
            [] => out.push((
                vec![Seg::Key("api")],
                "needs the bearer token from exactly one of token_env, token_file or \
                 token_command"
                    .into(),
            )),
            [_] => {}
            [_, second, ..] => out.push((
                at(second),
                format!(
                    "set only one of token_env, token_file or token_command (found {})",
                    set.join(" and ")
                ),
            )),
        }
        let empty = |v: Option<usize>| v == Some(0);
        for (key, n) in [
            ("token_env", api.token_env.as_ref().map(count)),
            ("token_file", api.token_file.as_ref().map(count)),
            ("token_command", api.token_command.as_ref().map(count)),
        ] {
            if empty(n) {
                out.push((at(key), "must name at least one source".into()));
            }
        }
        if api.action_timeout.is_zero() {
            out.push((
                at("action_timeout"),
                "must be more than 0 (e.g. \"5m\")".into(),
            ));
        }
    }

    /// `[api]`'s token sources, read as `run` would (commands only looked up).
    pub(super) fn api_secret_problems(&self, out: &mut Vec<(Vec<Seg<'static>>, String)>) {
        let Some(api) = &self.api else {
            return;
        };
        for (key, source) in api.sources() {
            let problem = match &source {
                SecretSource::Command(_) => source.check().err().map(|e| e.to_string()),
                _ => match source.resolve_local() {
                    Err(e) => Some(e.to_string()),
                    Ok(v) if v.expose().split_whitespace().next().is_none() => {
                        Some(format!("api.{key} holds no token"))
                    }
                    Ok(v)
                        if v.expose()
                            .split_whitespace()
                            .any(|t| t.len() < MIN_TOKEN_LEN) =>
                    {
                        Some(format!(
                            "a token from api.{key} is shorter than {MIN_TOKEN_LEN} characters"
                        ))
                    }
                    Ok(_) => None,
                },
            };
            if let Some(p) = problem {
                out.push((vec![Seg::Key("api"), Seg::Key(key)], p));
            }
        }
    }
}

fn count<T>(v: &OneOrMany<T>) -> usize {
    match v {
        OneOrMany::One(_) => 1,
        OneOrMany::Many(v) => v.len(),
    }
}
