//! `idlesync check`, run as the real binary: a table of bad configs, each of which must exit 2
//! naming its file, line and key; warnings that still exit 0; and bytes that must never panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

const BIN: &str = env!("CARGO_BIN_EXE_idlesync");
/// Set for the child process only; the config's first account reads it.
const PW_ENV: &str = "IDLESYNC_CHECK_TEST_PW";

/// A valid config; the line numbers of the table below refer to it.
const BASE: &str = r#"[storage]
url = "sqlite://STORE"
max_connections = 4

[redis]
url = "redis://127.0.0.1:6379"
channel = "email:sync"

[metrics]
listen = "127.0.0.1:9898"

[imap]
idle_renew = "25m"

[[accounts]]
id = "a1"
email = "a@example.com"
host = "imap.example.com"
port = 993
tls = "implicit"
username = "a"
password_env = "IDLESYNC_CHECK_TEST_PW"
mailboxes = ["INBOX", "Sent"]

[[accounts]]
id = "a2"
email = "b@example.com"
host = "127.0.0.1"
port = 1143
tls = "none"
username = "b"
password_file = "PWFILE"
mailboxes = ["INBOX"]
ca_file = "CAFILE"
"#;

struct Fixture {
    dir: tempfile::TempDir,
    /// BASE with real paths.
    base: String,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::write(d.join("pw"), "file-password\n")?;
        let out = Command::new("openssl")
            .current_dir(d)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
            ])
            .args([
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=check test CA",
            ])
            .output()
            .context("running openssl")?;
        ensure!(out.status.success(), "openssl: {out:?}");
        let mut fx = Fixture {
            dir,
            base: String::new(),
        };
        fx.base = fx.render(BASE);
        Ok(fx)
    }

    /// A template with STORE, PWFILE and CAFILE replaced by real paths.
    fn render(&self, template: &str) -> String {
        let d = self.dir.path();
        template
            .replace("STORE", &d.join("db.sqlite").display().to_string())
            .replace("PWFILE", &d.join("pw").display().to_string())
            .replace("CAFILE", &d.join("ca.pem").display().to_string())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` as `name` and runs `idlesync check` on it.
    fn check(&self, name: &str, bytes: &[u8]) -> Result<(PathBuf, Output)> {
        let path = self.path(name);
        std::fs::write(&path, bytes)?;
        Ok((path.clone(), run_check(&path)?))
    }
}

fn run_check(path: &Path) -> Result<Output> {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .env(PW_ENV, "env-password")
        .env_remove("RUST_LOG")
        .output()
        .context("running idlesync check")
}

/// (name, replace this, with that, expected key, expected line)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    usize,
);

const CASES: &[Case] = &[
    ("unknown key in a section", "idle_renew = \"25m\"", "idle_renw = \"25m\"", "imap.idle_renw", 13),
    ("unknown key in an account", "port = 993", "prot = 993", "accounts[0].prot", 19),
    ("unknown section", "[metrics]", "[metric]", "metric", 9),
    ("port of the wrong type", "port = 993", "port = \"993\"", "accounts[0].port", 19),
    ("port above 65535", "port = 993", "port = 70000", "accounts[0].port", 19),
    ("negative port", "port = 993", "port = -1", "accounts[0].port", 19),
    ("port zero", "port = 993", "port = 0", "accounts[0].port", 19),
    ("unknown tls value", "tls = \"implicit\"", "tls = \"maybe\"", "accounts[0].tls", 20),
    ("duplicate account id", "id = \"a2\"", "id = \"a1\"", "accounts[1].id", 26),
    ("empty mailbox list", "mailboxes = [\"INBOX\", \"Sent\"]", "mailboxes = []", "accounts[0].mailboxes", 23),
    ("empty mailbox name", "mailboxes = [\"INBOX\", \"Sent\"]", "mailboxes = [\"\"]", "accounts[0].mailboxes[0]", 23),
    ("two password sources", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "password_env = \"IDLESYNC_CHECK_TEST_PW\"\npassword = \"x\"", "accounts[0].password", 23),
    ("no password source", "password_env = \"IDLESYNC_CHECK_TEST_PW\"\n", "", "accounts[0]", 15),
    ("unset password_env", "IDLESYNC_CHECK_TEST_PW\"", "IDLESYNC_CHECK_UNSET_VAR\"", "accounts[0].password_env", 22),
    ("missing password_file", "\"PWFILE\"", "\"/nonexistent/pw\"", "accounts[1].password_file", 32),
    ("password_command program missing", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "password_command = \"/nonexistent/get-pw --user a\"", "accounts[0].password_command", 22),
    ("empty password_command", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "password_command = \" \"", "accounts[0].password_command", 22),
    ("OAuth2 without a token command", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "auth = \"xoauth2\"", "accounts[0].auth", 22),
    ("OAuth2 plus a password", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "password_env = \"IDLESYNC_CHECK_TEST_PW\"\noauth2_token_command = \"echo t\"", "accounts[0].password_env", 22),
    ("token command program missing", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "oauth2_token_command = \"no-such-token-tool-xyz print\"", "accounts[0].oauth2_token_command", 22),
    ("unknown auth value", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "password_env = \"IDLESYNC_CHECK_TEST_PW\"\nauth = \"kerberos\"", "accounts[0].auth", 23),
    ("unreadable ca_file", "\"CAFILE\"", "\"/nonexistent/ca.pem\"", "accounts[1].ca_file", 34),
    ("ca_file that is not PEM", "\"CAFILE\"", "\"PWFILE\"", "accounts[1].ca_file", 34),
    ("storage URL of another database", "url = \"sqlite://", "url = \"mysql://", "storage.url", 2),
    ("PostgreSQL URL with a bad port", "url = \"sqlite://", "url = \"postgres://u@db:99999/x?", "storage.url", 2),
    ("SQLite URL without a path", "sqlite://STORE", "sqlite://", "storage.url", 2),
    ("storage max_connections zero", "max_connections = 4", "max_connections = 0", "storage.max_connections", 3),
    ("Redis URL of another scheme", "url = \"redis://127.0.0.1:6379\"", "url = \"http://127.0.0.1:6379\"", "redis.url", 6),
    ("Redis URL with a bad port", "url = \"redis://127.0.0.1:6379\"", "url = \"redis://127.0.0.1:port\"", "redis.url", 6),
    ("listen address without a port", "listen = \"127.0.0.1:9898\"", "listen = \"127.0.0.1\"", "metrics.listen", 10),
    ("listen address that is a name", "listen = \"127.0.0.1:9898\"", "listen = \"admin.local:9898\"", "metrics.listen", 10),
    ("tls none to a remote host", "host = \"127.0.0.1\"", "host = \"mail.example.com\"", "accounts[1].tls", 30),
    ("host that is not a host name", "host = \"imap.example.com\"", "host = \"imap example.com\"", "accounts[0].host", 18),
    ("empty host", "host = \"imap.example.com\"", "host = \"\"", "accounts[0].host", 18),
    ("duplicate host, user and mailbox", "host = \"127.0.0.1\"\nport = 1143\ntls = \"none\"\nusername = \"b\"", "host = \"IMAP.example.com\"\nport = 1143\ntls = \"none\"\nusername = \"a\"\nallow_insecure = true", "accounts[1].mailboxes[0]", 34),
    ("bad duration", "idle_renew = \"25m\"", "idle_renew = \"soon\"", "imap.idle_renew", 13),
    ("max_connecting zero", "idle_renew = \"25m\"", "idle_renew = \"25m\"\nmax_connecting = 0", "imap.max_connecting", 14),
    ("idle_renew above RFC 2177's 29 minutes", "idle_renew = \"25m\"", "idle_renew = \"45m\"", "imap.idle_renew", 13),
    ("duplicate key", "tls = \"implicit\"", "tls = \"implicit\"\ntls = \"starttls\"", "accounts[0].tls", 21),
    ("empty email", "email = \"a@example.com\"", "email = \"\"", "accounts[0].email", 17),
    ("email that is not an addr-spec", "email = \"a@example.com\"", "email = \"joe at example dot com\"", "accounts[0].email", 17),
    ("email with two @", "email = \"a@example.com\"", "email = \"a@b@example.com\"", "accounts[0].email", 17),
    ("empty password_file", "\"PWFILE\"", "\"/dev/null\"", "accounts[1].password_file", 32),
    ("empty inline password", "password_env = \"IDLESYNC_CHECK_TEST_PW\"", "password = \"\"", "accounts[0].password", 22),
    ("unknown storage.expunged value", "max_connections = 4", "max_connections = 4\nexpunged = \"archive\"", "storage.expunged", 4),
    ("import_since zero", "max_connections = 4", "max_connections = 4\nimport_since = \"0d\"", "storage.import_since", 4),
    ("import_since that is no duration", "max_connections = 4", "max_connections = 4\nimport_since = \"ninety days\"", "storage.import_since", 4),
    ("empty changes_channel", "channel = \"email:sync\"", "channel = \"email:sync\"\nchanges_channel = \"\"", "redis.changes_channel", 8),
    ("changes_channel equal to channel", "channel = \"email:sync\"", "channel = \"email:sync\"\nchanges_channel = \"email:sync\"", "redis.changes_channel", 8),
    ("cluster mode on SQLite", "[imap]", "[cluster]\nenabled = true\n\n[imap]", "cluster.enabled", 13),
    ("cluster renew_every not below lease_ttl", "[imap]", "[cluster]\nlease_ttl = \"10s\"\nrenew_every = \"10s\"\n\n[imap]", "cluster.renew_every", 14),
    ("cluster node_id with a space", "[imap]", "[cluster]\nnode_id = \"node 1\"\n\n[imap]", "cluster.node_id", 13),
    ("unknown key in [cluster]", "[imap]", "[cluster]\nenabled = true\nttl = \"30s\"\n\n[imap]", "cluster.ttl", 14),
];

#[test]
fn bad_configs_exit_2_naming_file_line_and_key() -> Result<()> {
    let fx = Fixture::new()?;
    // The base itself must pass, or every case below would pass for the wrong reason.
    let (_, out) = fx.check("base.toml", fx.base.as_bytes())?;
    ensure!(
        out.status.code() == Some(0),
        "the base config fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(CASES.len() >= 25);
    let mut failures = Vec::new();
    for (i, (name, from, to, key, line)) in CASES.iter().enumerate() {
        ensure!(
            BASE.contains(from),
            "case {name:?}: {from:?} not in the base"
        );
        let text = fx.render(&BASE.replacen(from, to, 1));
        let (path, out) = fx.check(&format!("case{i}.toml"), text.as_bytes())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{}:{line}: key `{key}`", path.display());
        if out.status.code() != Some(2) || !stderr.contains(&want) || stderr.contains("panicked") {
            failures.push(format!(
                "{name}: exit {:?}, wanted {want:?} in:\n{stderr}",
                out.status.code()
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// The mirror keys, set to valid values, check clean.
#[test]
fn mirror_keys_with_valid_values_exit_0() -> Result<()> {
    let fx = Fixture::new()?;
    let text = fx
        .base
        .replacen(
            "max_connections = 4",
            "max_connections = 4\nexpunged = \"delete\"\nimport_since = \"90d\"",
            1,
        )
        .replacen(
            "channel = \"email:sync\"",
            "channel = \"email:sync\"\nchanges_channel = \"crm:changes\"",
            1,
        );
    let (_, out) = fx.check("mirror.toml", text.as_bytes())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(0), "{stderr}");
    ensure!(!stderr.contains("warning"), "{stderr}");
    Ok(())
}

/// Cluster mode: refused on SQLite with why, accepted on PostgreSQL (`check` connects nowhere),
/// and the summary line says the replica watches only its share.
/// `[api]` (#19): exactly one kind of token source, readable, long enough; each error at its key.
#[test]
fn api_section_is_checked() -> Result<()> {
    let fx = Fixture::new()?;
    std::fs::write(fx.path("token"), "a-token-of-thirty-characters-1\n")?;
    let token = fx.path("token").display().to_string();
    let with = |api: &str| {
        fx.base
            .replacen("[imap]", &format!("[api]\n{api}\n\n[imap]"), 1)
    };
    let cases = [
        (
            "listen = \"127.0.0.1:9899\"",
            "api",
            12,
            "exactly one of token_env, token_file or token_command",
        ),
        (
            &*format!("token_file = \"{token}\"\ntoken_env = \"X\""),
            "api.token_file",
            13,
            "set only one of",
        ),
        (
            "token_file = \"PWFILE\"",
            "api.token_file",
            13,
            "shorter than 16 characters",
        ),
        (
            "token_file = \"/nonexistent/token\"",
            "api.token_file",
            13,
            "cannot read",
        ),
        (
            "token_file = []",
            "api.token_file",
            13,
            "at least one source",
        ),
        (
            &*format!("token_file = \"{token}\"\naction_timeout = \"0s\""),
            "api.action_timeout",
            14,
            "more than 0",
        ),
    ];
    for (i, (api, key, line, why)) in cases.into_iter().enumerate() {
        let (path, out) = fx.check(&format!("api-{i}.toml"), fx.render(&with(api)).as_bytes())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(2), "{api}: {stderr}");
        let want = format!("{}:{line}: key `{key}`", path.display());
        ensure!(
            stderr.contains(&want) && stderr.contains(why),
            "{api}: {want:?} / {why:?} not in {stderr}"
        );
        ensure!(
            !stderr.contains("thirty-characters"),
            "a token in an error: {stderr}"
        );
    }
    let (_, out) = fx.check(
        "api-ok.toml",
        with(&format!("token_file = [\"{token}\"]")).as_bytes(),
    )?;
    ensure!(
        out.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn cluster_mode_needs_postgres() -> Result<()> {
    let fx = Fixture::new()?;
    let cluster = fx
        .base
        .replacen("[imap]", "[cluster]\nenabled = true\n\n[imap]", 1);
    let (path, out) = fx.check("cluster-sqlite.toml", cluster.as_bytes())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "{stderr}");
    let want = format!(
        "{}:13: key `cluster.enabled`: cluster mode needs PostgreSQL: leases and fencing live in its tables",
        path.display()
    );
    ensure!(stderr.contains(&want), "{want:?} not in {stderr}");
    ensure!(stderr.contains("storage.url is \"sqlite://"), "{stderr}");

    let pg = cluster.replacen(
        &format!("url = \"sqlite://{}\"", fx.path("db.sqlite").display()),
        "url = \"postgres://idlesync@db.internal:5432/idlesync\"",
        1,
    );
    ensure!(pg != cluster, "the base's storage.url was not replaced");
    let (_, out) = fx.check("cluster-pg.toml", pg.as_bytes())?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(out.status.code() == Some(0), "{stderr}");
    ensure!(
        stdout.contains("3 mailboxes; cluster mode: this replica watches the ones it leases"),
        "{stdout}"
    );
    // Single-node mode says nothing of it.
    let (_, out) = fx.check("single.toml", fx.base.as_bytes())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0) && !stdout.contains("cluster"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn warnings_exit_0_and_are_located() -> Result<()> {
    let fx = Fixture::new()?;
    let many: Vec<String> = (0..16).map(|i| format!("\"Folder{i}\"")).collect();
    let text = fx
        .base
        .replacen(
            "mailboxes = [\"INBOX\", \"Sent\"]",
            &format!("mailboxes = [{}]", many.join(", ")),
            1,
        )
        .replacen("password_file = ", "password = \"inline-pw\"\n#", 1);
    let (path, out) = fx.check("warn.toml", text.as_bytes())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(0), "{stderr}");
    let p = path.display();
    ensure!(
        stderr.contains(&format!(
            "warning: {p}:23: key `accounts[0].mailboxes`: 16 connections"
        )),
        "{stderr}"
    );
    ensure!(
        stderr.contains(&format!(
            "warning: {p}:32: key `accounts[1].password`: the password is written inline"
        )),
        "{stderr}"
    );
    ensure!(
        !stderr.contains("inline-pw"),
        "the password leaked: {stderr}"
    );
    Ok(())
}

#[test]
fn any_bytes_exit_2_without_panicking() -> Result<()> {
    let fx = Fixture::new()?;
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        ("not UTF-8", b"[storage]\nurl = \"\xff\xfe\"\n".to_vec()),
        ("UTF-16 with BOM", b"\xff\xfe[\0s\0".to_vec()),
        ("NUL bytes", vec![0; 1000]),
        (
            "5 MB of [",
            [b"a = ".as_slice(), &vec![b'['; 5 << 20]].concat(),
        ),
        (
            "5 MB of inline tables",
            "a = {b = ".repeat(5 << 20 >> 8).into_bytes(),
        ),
        (
            "5 MB of one string",
            [b"a = \"".as_slice(), &vec![b'x'; 5 << 20]].concat(),
        ),
        (
            "5 MB of comments, then an error",
            [b"# x\n".repeat(5 << 18), b"[storage]\nurl = 1\n".to_vec()].concat(),
        ),
    ];
    // Pseudo-random bytes, the same on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..8 {
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        inputs.push(("random bytes", bytes));
    }
    let mut failures = Vec::new();
    for (i, (name, bytes)) in inputs.iter().enumerate() {
        let (path, out) = fx.check(&format!("bytes{i}.toml"), bytes)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2)
            || stderr.contains("panicked")
            || !stderr.starts_with(&path.display().to_string())
        {
            failures.push(format!(
                "{name}: exit {:?}: {stderr:.400}",
                out.status.code()
            ));
        }
    }
    // The last input names its line.
    let big = inputs
        .iter()
        .find(|(name, _)| name.starts_with("5 MB of comments"))
        .context("the big input")?;
    let (path, out) = fx.check("big.toml", &big.1)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains(&format!(
            "{}:{}: key `storage.url`",
            path.display(),
            (5 << 18) + 2
        )),
        "{stderr}"
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn a_byte_order_mark_and_crlf_are_fine() -> Result<()> {
    let fx = Fixture::new()?;
    let text = format!("\u{feff}{}", fx.base.replace('\n', "\r\n"));
    let (_, out) = fx.check("bom.toml", text.as_bytes())?;
    ensure!(
        out.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a located error still counts lines correctly after a BOM.
    let text = format!("\u{feff}{}", fx.base.replacen("port = 993", "port = 0", 1));
    let (path, out) = fx.check("bom-bad.toml", text.as_bytes())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2)
            && stderr.contains(&format!("{}:19: key `accounts[0].port`", path.display())),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_example_config_checks_with_its_password_set() -> Result<()> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&example)
        .env("JOE_IMAP_PASSWORD", "x")
        .output()?;
    ensure!(
        out.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/idlesync.toml"])
        .output()?;
    ensure!(missing.status.code() == Some(2));
    Ok(())
}

/// A config `run` accepts: SQLite in the fixture's directory, no Redis (records to stdout), the
/// admin listener on a free port, and one account on a closed loopback port (no network).
const RUN_BASE: &str = r#"[storage]
url = "sqlite://STORE"

[metrics]
listen = "127.0.0.1:0"

[[accounts]]
id = "r1"
email = "r@example.com"
host = "127.0.0.1"
port = 1
tls = "none"
username = "r"
password_file = "PWFILE"
mailboxes = ["INBOX"]
"#;

/// Runs `idlesync ARGS --config path`, killed if it is still running after a generous
/// deadline (a daemon that started instead of refusing its config never exits by itself).
async fn run_binary(args: &[&str], path: &Path) -> Result<Option<Output>> {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(path)
        .env_remove("RUST_LOG")
        .env_remove("IDLESYNC_CHECK_UNSET_VAR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning idlesync")?;
    match tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await {
        Ok(out) => Ok(Some(out?)),
        Err(_) => Ok(None),
    }
}

/// #12 item 15: `run` exited 1 on an invalid config, so PM2 (`stop_exit_codes: [2]`, no
/// `check` step first) restarted it forever. `run` and `migrate` must exit 2 on every config
/// error `check` reports, naming file, line and key the same way.
#[tokio::test]
async fn run_exits_2_on_any_config_error() -> Result<()> {
    let fx = Fixture::new()?;
    // (name, replace this, with that, what stderr must name)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "unknown key",
            "port = 1\n",
            "prot = 1\n",
            ":11: key `accounts[0].prot`",
        ),
        (
            "port zero",
            "port = 1\n",
            "port = 0\n",
            ":11: key `accounts[0].port`",
        ),
        ("bad TOML", "[metrics]", "[metrics", ":4:"),
        (
            "unset password_env",
            "password_file = \"PWFILE\"",
            "password_env = \"IDLESYNC_CHECK_UNSET_VAR\"",
            ":14: key `accounts[0].password_env`",
        ),
        (
            "missing password_file",
            "\"PWFILE\"",
            "\"/nonexistent/pw\"",
            ":14: key `accounts[0].password_file`",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, from, to, want)) in cases.iter().enumerate() {
        ensure!(
            RUN_BASE.contains(from),
            "case {name:?}: {from:?} not in the base"
        );
        let path = fx.path(&format!("run{i}.toml"));
        std::fs::write(&path, fx.render(&RUN_BASE.replacen(from, to, 1)))?;
        let want = format!("{}{want}", path.display());
        let mut commands = vec!["run"];
        // `migrate` reads no secrets; it refuses only what the file itself gets wrong.
        if !name.contains("password") {
            commands.push("migrate");
        }
        for command in commands {
            match run_binary(&[command], &path).await? {
                None => failures.push(format!("{command}, {name}: still running after 30 s")),
                Some(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if out.status.code() != Some(2) || !stderr.contains(&want) {
                        failures.push(format!(
                            "{command}, {name}: exit {:?}, wanted 2 and {want:?} in:\n{stderr}",
                            out.status.code()
                        ));
                    }
                }
            }
        }
    }
    for command in ["run", "migrate"] {
        match run_binary(&[command], Path::new("/nonexistent/idlesync.toml")).await? {
            Some(out) if out.status.code() == Some(2) => {}
            other => failures.push(format!("{command}, a missing file: {other:?}")),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// Reads a child's stderr line by line until `pred` matches one, within a generous deadline.
async fn wait_for_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    seen: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if pred(&v) {
                    return Ok(v);
                }
            }
        }
        anyhow::bail!("stderr ended")
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), wait).await {
        Ok(r) => r.with_context(|| format!("waiting for {what}: {}", seen.join("\n"))),
        Err(_) => anyhow::bail!("no {what} within 30 s:\n{}", seen.join("\n")),
    }
}

/// #12 item 11, decided: a file without `[[accounts]]` is valid (a daemon may start empty and
/// get its accounts by reload), so `check` warns and exits 0, and `run` starts but says so at
/// WARN level, then picks up accounts that a reload adds. `/readyz` stays as it is: ready.
#[tokio::test]
async fn no_accounts_warns_in_check_and_run_and_a_reload_adds_them() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let fx = Fixture::new()?;
    let full = fx.render(RUN_BASE);
    let (empty, account) = full
        .split_once("[[accounts]]")
        .context("RUN_BASE has an account")?;
    let (path, out) = fx.check("empty.toml", empty.as_bytes())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(0), "{stderr}");
    ensure!(
        stderr.contains(&format!(
            "warning: {}: key `accounts`: no [[accounts]]",
            path.display()
        )),
        "{stderr}"
    );

    let mut child = tokio::process::Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "idlesync=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let warn = wait_for_line(&mut lines, &mut seen, "the no-accounts warning", |v| {
        v["level"] == "WARN"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no [[accounts]]"))
    })
    .await?;
    ensure!(
        warn["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&path.display().to_string())),
        "the warning does not name the file: {warn}"
    );
    let started = wait_for_line(&mut lines, &mut seen, "the start-up line", |v| {
        v["fields"]["message"] == "idlesync started"
    })
    .await?;
    ensure!(started["fields"]["mailboxes"] == 0, "{started}");
    let admin: std::net::SocketAddr = started["fields"]["admin"]
        .as_str()
        .context("admin address")?
        .parse()?;
    let readyz = std::net::TcpStream::connect(admin).and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })?;
    ensure!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");

    // The operator adds an account and reloads.
    std::fs::write(&path, format!("{empty}[[accounts]]{account}"))?;
    let pid = child.id().context("pid")?;
    ensure!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?
        .success());
    let reloaded = wait_for_line(&mut lines, &mut seen, "the reload", |v| {
        v["fields"]["message"] == "config reloaded"
    })
    .await?;
    ensure!(
        reloaded["fields"]["started"]
            .as_str()
            .is_some_and(|s| s.contains("r1/INBOX")),
        "{reloaded}"
    );
    child.kill().await?;
    Ok(())
}
