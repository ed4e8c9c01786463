//! The deployment files stay in step with the code: every metric the alert rules and the
//! Grafana dashboard use exists, the command lines of the systemd units and the PM2 entry are
//! ones the binary accepts, and the cluster-mode files (Kubernetes, the systemd template) have
//! what #13 asks of them.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_idlesync");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `idlesync_…` names in `text`, sorted, once each.
fn metric_names(text: &str) -> Vec<&str> {
    let mut used: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("idlesync_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    used
}

/// Fails unless every name in `used` is a metric src/metrics.rs defines (a histogram's
/// `_bucket`, `_count` and `_sum` series by its base name). The constants, not a scrape: the
/// cluster metrics exist only in cluster mode, and a name missing here is missing in every mode.
fn assert_defined(file: &str, used: &[&str]) {
    let metrics = read("src/metrics.rs");
    for name in used {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            metrics.contains(&format!("\"{base}\"")),
            "{file} uses {name}, which src/metrics.rs does not define"
        );
    }
}

#[test]
fn alert_rules_use_only_metrics_that_exist() {
    let rules = read("deploy/prometheus/idlesync-alerts.yml");
    let used = metric_names(&rules);
    assert!(used.len() >= 5, "{used:?}");
    assert_defined("deploy/prometheus/idlesync-alerts.yml", &used);
    assert!(read("deploy/prometheus/prometheus.yml").contains("idlesync-alerts.yml"));
}

/// Every string under an `expr` or `query` key (panel targets, template variables), anywhere.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| queries(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_only_metrics_that_exist() {
    const FILE: &str = "deploy/grafana/idlesync.json";
    let dash: serde_json::Value = serde_json::from_str(&read(FILE)).expect(FILE);
    assert_eq!(dash["schemaVersion"].as_u64(), Some(39));
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"DS") && vars.contains(&"instance"),
        "{vars:?}"
    );
    let mut exprs = Vec::new();
    queries(&dash, &mut exprs);
    let text = exprs.join("\n");
    let used = metric_names(&text);
    // What #13 asks the dashboard to show.
    for name in [
        "idlesync_mailbox_state",
        "idlesync_exists_to_publish_seconds_bucket",
        "idlesync_outbox_depth",
        "idlesync_outbox_oldest_age_seconds",
        "idlesync_leases_held",
        "idlesync_cluster_nodes",
        "idlesync_lease_takeovers_total",
        "idlesync_fencing_rejections_total",
        "idlesync_lease_takeover_seconds_bucket",
        "idlesync_errors_total",
    ] {
        assert!(used.contains(&name), "{FILE} does not query {name}");
    }
    assert_defined(FILE, &used);
    // Every panel query reads its data source variable and the node variable.
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("instance=~\"$instance\""), "{expr}");
            assert_eq!(t["datasource"]["uid"].as_str(), Some("${DS}"), "{expr}");
        }
    }
    assert!(text.contains("by (error_type)"), "{text}");
    assert!(text.contains("by (instance, state)"), "{text}");
}

/// A `_bucket` series only exists for a histogram rendered with buckets: the per-mailbox
/// latency, and the takeover time through the exporter's bucket setting (without it the
/// exporter renders a summary, and histogram_quantile over `_bucket` finds nothing).
#[test]
fn the_histograms_the_dashboard_reads_render_buckets() {
    let handle = idlesync::metrics::install();
    metrics::histogram!(idlesync::metrics::LEASE_TAKEOVER_SECONDS).record(0.2);
    let mut series = idlesync::metrics::MailboxSeries::default();
    series.latency.observe(0.004);
    let row = idlesync::metrics::MailboxRow {
        account: "a",
        mailbox: "INBOX",
        state: "idling",
        series: &series,
    };
    let rendered = format!(
        "{}\n{}",
        handle.render(),
        idlesync::metrics::render_mailboxes(&[row], &["idling"])
    );
    let mut exprs = Vec::new();
    queries(
        &serde_json::from_str(&read("deploy/grafana/idlesync.json")).expect("dashboard"),
        &mut exprs,
    );
    let buckets: Vec<&str> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .filter(|n| n.ends_with("_bucket"))
        .collect();
    assert!(buckets.len() >= 2, "{buckets:?}");
    for name in buckets {
        assert!(
            rendered.contains(&format!("{name}{{")),
            "the dashboard reads {name}, which /metrics does not render:\n{rendered}"
        );
    }
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

/// The `idlesync.toml` embedded in the Kubernetes ConfigMap (a YAML block scalar).
fn k8s_config(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "idlesync.toml: |");
    assert!(lines.next().is_some(), "the ConfigMap has no idlesync.toml");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(path: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .env("JOE_IMAP_PASSWORD", "x")
        .output()
        .unwrap()
}

#[test]
fn kubernetes_runs_three_replicas_in_cluster_mode() {
    let yaml = read("deploy/kubernetes/idlesync.yaml");
    for want in [
        "kind: Deployment",
        "replicas: 3",
        "type: RollingUpdate",
        "maxUnavailable: 1",
        "maxSurge: 1",
        "terminationGracePeriodSeconds: 30",
        "kind: PodDisruptionBudget",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 9898",
        "secretRef:",
        "configMap:",
        r#"args: ["--log-format", "json", "run", "--config", "/etc/idlesync/idlesync.toml"]"#,
    ] {
        assert!(
            yaml.contains(want),
            "deploy/kubernetes/idlesync.yaml lacks {want:?}"
        );
    }
    assert!(!yaml.contains('\t'), "YAML forbids tabs in indentation");
    // Each probe on its own path: liveness on /healthz, readiness on /readyz.
    let between = |from: &str, to: &str| {
        let rest = yaml.split(from).nth(1).unwrap_or_default();
        rest.split(to).next().unwrap_or_default().to_string()
    };
    let liveness = between("livenessProbe:", "readinessProbe:");
    assert!(
        liveness.contains("path: /healthz") && !liveness.contains("/readyz"),
        "{liveness}"
    );
    let readiness = between("readinessProbe:", "resources:");
    assert!(readiness.contains("path: /readyz"), "{readiness}");

    // The embedded config is one `check` accepts, in cluster mode, on an address the kubelet
    // reaches, and without a node_id every pod would share.
    let config = k8s_config(&yaml);
    assert!(config.contains("[cluster]\nenabled = true"), "{config}");
    assert!(config.contains("listen = \"0.0.0.0:9898\""), "{config}");
    assert!(!config.contains("node_id"), "{config}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idlesync.toml");
    std::fs::write(&path, &config).unwrap();
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{config}");
    assert!(stdout.contains("cluster mode"), "{stdout}");
}

/// The systemd template: its command lines are accepted, and `instance-config` gives each
/// replica its own admin port and nothing else different, refusing a shared node_id.
#[test]
fn systemd_template_gives_each_replica_its_own_port() {
    let unit = read("deploy/systemd/idlesync@.service");
    for key in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "RuntimeDirectory=idlesync-%i",
        "ExecStartPre=+/usr/local/lib/idlesync/instance-config %i",
        "ExecReload=+/usr/local/lib/idlesync/instance-config %i",
    ] {
        assert!(unit.contains(key), "idlesync@.service lacks {key}");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/instance-config");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.toml");
    let config = k8s_config(&read("deploy/kubernetes/idlesync.yaml"));
    std::fs::write(&shared, &config).unwrap();
    let render = |port: &str, shared: &Path, out: &Path| {
        Command::new(&script)
            .arg(port)
            .arg(shared)
            .arg(out)
            .output()
            .unwrap()
    };

    let copy = dir.path().join("9901.toml");
    let out = render("9901", &shared, &copy);
    assert!(out.status.success(), "{out:?}");
    let rendered = std::fs::read_to_string(&copy).unwrap();
    assert_eq!(
        rendered,
        config.replace("listen = \"0.0.0.0:9898\"", "listen = \"0.0.0.0:9901\""),
        "only the port may differ"
    );
    assert_ne!(rendered, config);
    // The unit's own command lines, %i = 9901, on that copy.
    let exec_lines: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart"))
        .collect();
    assert_eq!(exec_lines.len(), 3, "{exec_lines:?}");
    for line in exec_lines
        .iter()
        .filter(|l| l.contains("/usr/local/bin/idlesync "))
    {
        let (_, cmd) = line.split_once('=').unwrap();
        let mut words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        assert_eq!(
            words.pop(),
            Some("/run/idlesync-%i/idlesync.toml"),
            "{line}"
        );
        let mut c = Command::new(BIN);
        c.args(&words).arg(&copy).env("JOE_IMAP_PASSWORD", "x");
        if words.contains(&"run") {
            c.arg("--help");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
    }

    // Refused, exit 2 (not restarted): a shared node_id, no listen to move, a name not a port.
    let with_node_id = dir.path().join("node-id.toml");
    std::fs::write(
        &with_node_id,
        config.replace("enabled = true", "enabled = true\nnode_id = \"a\""),
    )
    .unwrap();
    let no_listen = dir.path().join("no-listen.toml");
    std::fs::write(&no_listen, config.replace("listen = \"0.0.0.0:9898\"", "")).unwrap();
    for (port, shared, why) in [
        ("9902", &with_node_id, "node_id"),
        ("9902", &no_listen, "listen"),
        ("a", &shared, "admin port"),
    ] {
        let out = render(port, shared, &dir.path().join("refused.toml"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{why}: {stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
        assert!(!dir.path().join("refused.toml").exists(), "{why}");
    }
}

#[test]
fn pm2_runs_one_app_per_replica() {
    let pm2 = read("deploy/ecosystem.config.js");
    assert!(
        pm2.contains("const REPLICAS = 1;"),
        "the default is one process"
    );
    // One app per replica (own admin port), never PM2's cluster mode sharing one.
    let code: Vec<&str> = pm2
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//"))
        .collect();
    assert!(code.contains(&r#"exec_mode: "fork","#), "{pm2}");
    assert!(!code.iter().any(|l| l.contains(r#""cluster""#)), "{pm2}");
    assert!(pm2.contains("instance-config ${port}"));
    assert!(pm2.contains("&& exec /usr/local/bin/idlesync --log-format json run --config"));
}
