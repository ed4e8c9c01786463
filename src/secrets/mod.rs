//! Where passwords and OAuth2 access tokens come from, and the [`Secret`] type that carries them.
//!
//! Sources are read at each login, never at start-up only, so rotating a password needs no
//! restart:
//! - `password_env`: an environment variable;
//! - `password_file`: a file, its trailing newline dropped;
//! - `password_command`: a command's stdout, trimmed;
//! - `password`: written in the config (a warning);
//! - `oauth2_token_command`: a command printing an access token, either bare or as JSON
//!   `{"access_token": "...", "expires_in": 3599}`. The token is cached per account and fetched
//!   again shortly before `expires_in` runs out, and after any authentication failure.
//!
//! Commands run as `sh -c COMMAND`, as operators expect from a config line: pipes and quoting
//! work, and the string is never interpolated with anything idlesync knows. stdin is empty,
//! stderr goes to idlesync's stderr, and a command that takes longer than [`COMMAND_TIMEOUT`]
//! is killed. No error here ever carries a secret, a command line or a command's output: they
//! name the config key instead.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// A command that runs longer than this is killed, and its login attempt fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A command's stdout longer than this is refused (it is not a password or a token).
const MAX_OUTPUT: usize = 64 * 1024;

/// A cached token is fetched again this long before it expires (or at half its lifetime, if
/// that is shorter), so that a login never races the expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A password or token. Its `Debug` never shows the value, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

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

/// Which config key a command came from; errors name it instead of the command line, which may
/// itself hold a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKey {
    /// `password_command`.
    Password,
    /// `oauth2_token_command`.
    OAuth2Token,
}

impl fmt::Display for CommandKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandKey::Password => "password_command",
            CommandKey::OAuth2Token => "oauth2_token_command",
        })
    }
}

/// Where a password is read from; resolved at each login.
#[derive(Clone)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file; its trailing newline is dropped.
    File(PathBuf),
    /// A command run by `sh -c`; its stdout, trimmed.
    Command(String),
    /// Written in the config file.
    Inline(Secret),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => f.debug_tuple("Env").field(var).finish(),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            // A command line can hold a secret (`echo hunter2`): never shown.
            SecretSource::Command(_) => f.write_str("Command(<redacted>)"),
            SecretSource::Inline(s) => f.debug_tuple("Inline").field(s).finish(),
        }
    }
}

/// A secret that could not be read. Never carries the secret, the command or its output.
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
    /// `sh` could not be started.
    #[error("cannot run {key}: {source}")]
    Spawn {
        /// Which command.
        key: CommandKey,
        /// Why.
        source: std::io::Error,
    },
    /// The command's program is not installed (found by `idlesync check`).
    #[error("{key}: program {program:?} not found")]
    NotFound {
        /// Which command.
        key: CommandKey,
        /// The first word of the command line.
        program: String,
    },
    /// The command exited unsuccessfully.
    #[error("{key} failed: {status}")]
    Failed {
        /// Which command.
        key: CommandKey,
        /// Its exit status.
        status: ExitStatus,
    },
    /// The command took longer than [`COMMAND_TIMEOUT`] and was killed.
    #[error("{key} did not finish within {0:?}; killed", COMMAND_TIMEOUT)]
    Timeout {
        /// Which command.
        key: CommandKey,
    },
    /// The source holds nothing: an empty file (`/dev/null`), variable or inline value. No
    /// server takes an empty password, so `idlesync check` and `run` refuse it.
    #[error("{what} is empty")]
    Empty {
        /// Which source, such as `password file /dev/null` (never its value).
        what: String,
    },
    /// The command printed something unusable.
    #[error("{key} printed {problem}")]
    Output {
        /// Which command.
        key: CommandKey,
        /// What is wrong, in words that never quote the output.
        problem: &'static str,
    },
}

impl SecretSource {
    /// Reads the secret now.
    pub async fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Command(cmd) => {
                let out = run_command(CommandKey::Password, cmd).await?;
                let value = out.trim();
                if value.is_empty() {
                    return Err(SecretError::Output {
                        key: CommandKey::Password,
                        problem: "nothing",
                    });
                }
                Ok(Secret(value.to_string()))
            }
            other => other.resolve_local(),
        }
    }

    /// Reads an environment or file secret now; for a command, only checks that its program
    /// exists (running it could have side effects). Used by `idlesync check`.
    pub fn check(&self) -> Result<(), SecretError> {
        match self {
            SecretSource::Command(cmd) => check_program(CommandKey::Password, cmd),
            other if other.resolve_local()?.expose().is_empty() => Err(SecretError::Empty {
                what: match other {
                    SecretSource::Env(var) => format!("environment variable {var}"),
                    SecretSource::File(path) => format!("password file {}", path.display()),
                    _ => "password".into(),
                },
            }),
            _ => Ok(()),
        }
    }

    /// Reads an environment, file or inline secret now (a command is not run: an error).
    pub(crate) fn resolve_local(&self) -> Result<Secret, SecretError> {
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
            SecretSource::Command(_) => Err(SecretError::Output {
                key: CommandKey::Password,
                problem: "nothing (not run)",
            }),
        }
    }
}

/// Whether a token came from the cache or was just fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Just printed by the command.
    Fresh,
    /// Fetched earlier and not yet due.
    Cached,
}

/// An access token as the command printed it, and when to fetch the next one.
#[derive(Debug, Clone)]
struct CachedToken {
    /// The token.
    token: Secret,
    /// Fetch again from this moment on; `None`: until an authentication failure.
    refresh_at: Option<Instant>,
}

/// `oauth2_token_command` with its cache. One per account, shared by its mailboxes, so the
/// command runs once for all of them.
pub struct OAuth2Token {
    /// The command line (never shown).
    command: String,
    /// The current token. A tokio mutex: the command runs while it is held, so concurrent
    /// logins of one account wait for one run instead of starting their own.
    cache: tokio::sync::Mutex<Option<CachedToken>>,
}

impl fmt::Debug for OAuth2Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OAuth2Token(<redacted>)")
    }
}

impl OAuth2Token {
    /// A token source running `command`.
    pub fn new(command: String) -> Self {
        OAuth2Token {
            command,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The current token: the cached one unless it is due, else a fresh one.
    pub async fn get(&self) -> Result<(Secret, Freshness), SecretError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if !c.is_due(Instant::now()) {
                return Ok((c.token.clone(), Freshness::Cached));
            }
        }
        let out = run_command(CommandKey::OAuth2Token, &self.command).await?;
        let fresh = parse_token_output(&out, Instant::now())?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok((token, Freshness::Fresh))
    }

    /// The server refused `token`: forget it, so the next [`get`](Self::get) runs the command.
    /// A newer token fetched meanwhile by another mailbox is kept.
    pub async fn invalidate(&self, token: &Secret) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| &c.token == token) {
            *cache = None;
        }
    }

    /// Checks that the command's program exists, without running it (`idlesync check`).
    pub fn check(&self) -> Result<(), SecretError> {
        check_program(CommandKey::OAuth2Token, &self.command)
    }
}

impl CachedToken {
    fn is_due(&self, now: Instant) -> bool {
        self.refresh_at.is_some_and(|at| now >= at)
    }
}

/// `{"access_token": "...", "expires_in": N}` or a bare token.
#[derive(serde::Deserialize)]
struct TokenJson {
    access_token: String,
    expires_in: Option<u64>,
}

/// What the token command printed → the token and its refresh moment.
fn parse_token_output(out: &str, now: Instant) -> Result<CachedToken, SecretError> {
    let bad = |problem| SecretError::Output {
        key: CommandKey::OAuth2Token,
        problem,
    };
    let out = out.trim();
    let (token, expires_in) = if out.starts_with('{') {
        // serde_json's error could quote the input: only its absence is reported.
        let json: TokenJson = serde_json::from_str(out).map_err(|_| {
            bad("JSON without a string \"access_token\" (and numeric \"expires_in\")")
        })?;
        (json.access_token, json.expires_in)
    } else {
        (out.to_string(), None)
    };
    if token.is_empty() {
        return Err(bad("an empty token"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("a token with spaces or line breaks"));
    }
    let refresh_at = expires_in.map(|secs| {
        let life = Duration::from_secs(secs);
        now + life.saturating_sub(REFRESH_MARGIN.min(life / 2))
    });
    Ok(CachedToken {
        token: Secret(token),
        refresh_at,
    })
}

/// Runs `sh -c cmd` with a deadline and returns its stdout.
async fn run_command(key: CommandKey, cmd: &str) -> Result<String, SecretError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SecretError::Spawn { key, source })?;
    // On timeout the future, and with it the child, is dropped: kill_on_drop kills it.
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(SecretError::Spawn { key, source }),
        Err(_) => return Err(SecretError::Timeout { key }),
    };
    if !out.status.success() {
        return Err(SecretError::Failed {
            key,
            status: out.status,
        });
    }
    if out.stdout.len() > MAX_OUTPUT {
        return Err(SecretError::Output {
            key,
            problem: "more than 64 KiB",
        });
    }
    String::from_utf8(out.stdout).map_err(|_| SecretError::Output {
        key,
        problem: "bytes that are not UTF-8",
    })
}

/// Best effort: when the command starts with a plain program name or path, that it exists.
/// Anything shell-like (`VAR=x cmd`, `$(...)`, builtins) is left to run time.
fn check_program(key: CommandKey, cmd: &str) -> Result<(), SecretError> {
    let Some(program) = cmd.split_whitespace().next() else {
        return Err(SecretError::Output {
            key,
            problem: "nothing (the command is empty)",
        });
    };
    let plain = program
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-+/".contains(c));
    const BUILTINS: [&str; 8] = [
        "exec", "echo", "printf", "cat", "test", "true", "false", ".",
    ];
    if !plain || BUILTINS.contains(&program) {
        return Ok(());
    }
    let found = if program.contains('/') {
        is_executable(Path::new(program))
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(program)))
        })
    };
    if found {
        Ok(())
    } else {
        Err(SecretError::NotFound {
            key,
            program: program.to_string(),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
