//! Sending (#20): `idlesync check` on `accounts[].smtp`, `send_as`, `sent` and `sent_copy`,
//! run as the real binary: each mistake exits 2 naming its file, line and key; a full valid
//! sending setup exits 0, and no password reaches the output.

use std::process::Command;

use anyhow::{ensure, Context, Result};

const BIN: &str = env!("CARGO_BIN_EXE_idlesync");

/// A valid account with sending; line numbers below refer to it.
const BASE: &str = r#"[storage]
url = "sqlite://STORE"

[[accounts]]
id = "a1"
email = "a@example.com"
host = "127.0.0.1"
port = 1143
tls = "none"
username = "a"
password = "imap-secret-value"
mailboxes = ["INBOX"]
send_as = ["sales@example.com"]
sent = "Sent Items"
sent_copy = "append"

[accounts.smtp]
host = "127.0.0.1"
port = 2525
tls = "none"
give_up_after = "24h"
max_message_size = 26214400
"#;

/// (name, replace this, with that, key, line, words in the message)
const CASES: &[(&str, &str, &str, &str, usize, &str)] = &[
    (
        "smtp tls none to a remote host",
        "host = \"127.0.0.1\"\nport = 2525",
        "host = \"smtp.example.com\"\nport = 2525",
        "accounts[0].smtp.tls",
        20,
        "clear text",
    ),
    (
        "smtp host with a space",
        "host = \"127.0.0.1\"\nport = 2525",
        "host = \"smtp example\"\nport = 2525",
        "accounts[0].smtp.host",
        18,
        "not a host name",
    ),
    (
        "smtp port zero",
        "port = 2525",
        "port = 0",
        "accounts[0].smtp.port",
        19,
        "1-65535",
    ),
    (
        "smtp unknown tls",
        "tls = \"none\"\ngive_up_after",
        "tls = \"sometimes\"\ngive_up_after",
        "accounts[0].smtp.tls",
        20,
        "unknown variant",
    ),
    (
        "smtp unknown key",
        "give_up_after = \"24h\"",
        "give_up = \"24h\"",
        "accounts[0].smtp.give_up",
        21,
        "unknown field",
    ),
    (
        "give_up_after zero",
        "give_up_after = \"24h\"",
        "give_up_after = \"0s\"",
        "accounts[0].smtp.give_up_after",
        21,
        "more than 0",
    ),
    (
        "give_up_after no duration",
        "give_up_after = \"24h\"",
        "give_up_after = \"a day\"",
        "accounts[0].smtp.give_up_after",
        21,
        "invalid duration",
    ),
    (
        "max_message_size zero",
        "max_message_size = 26214400",
        "max_message_size = 0",
        "accounts[0].smtp.max_message_size",
        22,
        "more than 0",
    ),
    (
        "two smtp password sources",
        "max_message_size = 26214400",
        "max_message_size = 26214400\npassword_env = \"X\"\npassword = \"smtp-secret-value\"",
        "accounts[0].smtp.password",
        24,
        "only one of",
    ),
    (
        "smtp oauth2 without a token command",
        "max_message_size = 26214400",
        "max_message_size = 26214400\nauth = \"xoauth2\"",
        "accounts[0].smtp.auth",
        23,
        "oauth2_token_command",
    ),
    (
        "send_as not an address",
        "send_as = [\"sales@example.com\"]",
        "send_as = [\"sales@example.com\", \"sales at example\"]",
        "accounts[0].send_as[1]",
        13,
        "not an email address",
    ),
    (
        "empty sent",
        "sent = \"Sent Items\"",
        "sent = \" \"",
        "accounts[0].sent",
        14,
        "must not be empty",
    ),
    (
        "unknown sent_copy",
        "sent_copy = \"append\"",
        "sent_copy = \"provider\"",
        "accounts[0].sent_copy",
        15,
        "unknown variant",
    ),
];

#[test]
fn sending_keys_are_checked_with_file_line_and_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store.db").display().to_string();
    let run = |name: &str, text: &str| -> Result<(String, i32, String)> {
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace("STORE", &store))?;
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .output()
            .context("running idlesync check")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((
            path.display().to_string(),
            out.status.code().unwrap_or(-1),
            text,
        ))
    };
    let (_, code, text) = run("base.toml", BASE)?;
    ensure!(code == 0, "the base config fails: {text}");
    let mut failures = Vec::new();
    for (i, (name, from, to, key, line, why)) in CASES.iter().enumerate() {
        ensure!(BASE.contains(from), "{name}: {from:?} not in the base");
        let (path, code, text) = run(&format!("case{i}.toml"), &BASE.replacen(from, to, 1))?;
        let want = format!("{path}:{line}: key `{key}`");
        if code != 2 || !text.contains(&want) || !text.contains(why) || text.contains("panicked") {
            failures.push(format!(
                "{name}: exit {code}, wanted {want:?} and {why:?} in:\n{text}"
            ));
        }
        if text.contains("secret-value") {
            failures.push(format!("{name}: a password in the output:\n{text}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// Defaults: 465 implicit, 587 STARTTLS; the account's own login; append to Sent; 24h; 25 MB.
#[test]
fn smtp_defaults() -> Result<()> {
    let text = BASE.replace("STORE", "/tmp/idlesync-send-config-defaults.db");
    let minimal = text.replace(
        "port = 2525\ntls = \"none\"\ngive_up_after = \"24h\"\nmax_message_size = 26214400\n",
        "",
    );
    let minimal = minimal.replace("sent_copy = \"append\"\n", "");
    let cfg: idlesync::Config = toml::from_str(&minimal).context("parse")?;
    let a = cfg.accounts.first().context("account")?;
    let s = a.smtp.as_ref().context("smtp")?;
    ensure!(s.port() == 465, "{}", s.port());
    ensure!(s.username(a) == "a");
    ensure!(s.auth_method(a) == idlesync::config::AuthMethod::Password);
    ensure!(s.give_up_after == idlesync::config::DEFAULT_GIVE_UP_AFTER);
    ensure!(s.max_message_size == 25 * 1024 * 1024);
    ensure!(a.sent_copy == idlesync::config::SentCopy::Append);
    let starttls = minimal.replace(
        "[accounts.smtp]\nhost = \"127.0.0.1\"\n",
        "[accounts.smtp]\nhost = \"127.0.0.1\"\ntls = \"starttls\"\n",
    );
    let cfg: idlesync::Config = toml::from_str(&starttls)?;
    let s = cfg
        .accounts
        .first()
        .and_then(|a| a.smtp.as_ref())
        .context("smtp")?;
    ensure!(s.port() == 587, "{}", s.port());
    ensure!(!format!("{s:?}").contains("secret"));
    Ok(())
}
