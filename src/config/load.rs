//! Reading a file: bytes to text, TOML to [`Config`], then validation, secrets and warnings,
//! each problem located.

use std::path::Path;

use super::locate::{key_at, key_of_error, line_of, locate};
use super::{Config, ConfigError, ConfigErrors};

/// One step of a key path.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
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
            key: super::locate::key_of_bad_byte(bytes, e.valid_up_to()),
            message: "the file is not valid UTF-8".into(),
        }])
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}
