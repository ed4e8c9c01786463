//! The deployment files stay in step with the code: every metric the alert rules use exists,
//! and the command lines of the systemd unit and the PM2 entry are ones the binary accepts.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_idlesync");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn alert_rules_use_only_metrics_that_exist() {
    let metrics = read("src/metrics.rs");
    let rules = read("deploy/prometheus/idlesync-alerts.yml");
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("idlesync_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 5, "{used:?}");
    for name in used {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            metrics.contains(&format!("\"{base}\"")),
            "deploy/prometheus/idlesync-alerts.yml uses {name}, which src/metrics.rs does not define"
        );
    }
    assert!(read("deploy/prometheus/prometheus.yml").contains("idlesync-alerts.yml"));
}

#[test]
fn unit_and_pm2_command_lines_are_accepted() {
    let unit = read("deploy/idlesync.service");
    let pm2 = read("deploy/ecosystem.config.js");
    assert!(pm2.contains(r#"args: ["--log-format", "json", "run", "--config""#));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let exec_lines: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart"))
        .collect();
    // Without this, a unit that lost its ExecStart lines would pass the loop below unchecked.
    assert!(
        exec_lines.iter().any(|l| l.starts_with("ExecStart=")),
        "deploy/idlesync.service has no ExecStart= line"
    );
    for line in exec_lines {
        let (_, cmd) = line.split_once('=').unwrap();
        let mut words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        assert_eq!(words.last(), Some(&"/etc/idlesync/idlesync.toml"), "{line}");
        words.pop();
        // The same arguments, against the example config: `check` must pass, and `run` must
        // get past argument parsing (it then fails on the example's unreachable database or
        // server, or is stopped here by --help).
        let mut c = Command::new(BIN);
        c.args(&words).arg(&example).env("JOE_IMAP_PASSWORD", "x");
        if words.contains(&"run") {
            c.arg("--help");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
    }
    for key in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
}

#[test]
fn alert_rules_use_only_states_that_exist() {
    let rules = read("deploy/prometheus/idlesync-alerts.yml");
    let known: Vec<&str> = idlesync::status::MailboxState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    // `state="x"` and `state=~"x|y"`.
    let used: Vec<&str> = rules
        .split("state=")
        .skip(1)
        .filter_map(|rest| rest.trim_start_matches('~').strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .flat_map(|value| value.split('|'))
        .collect();
    for state in ["idling", "auth_failed", "failed"] {
        assert!(used.contains(&state), "no alert uses state {state:?}");
    }
    for state in used {
        assert!(
            known.contains(&state),
            "deploy/prometheus/idlesync-alerts.yml uses state {state:?}, which src/status.rs does not define"
        );
    }
}
