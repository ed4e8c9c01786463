use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(s: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("t.toml"), s.as_bytes())
}

const OK: &str = r#"
[storage]
url = "sqlite://x.db"

[[accounts]]
id = "a1"
email = "a@example.com"
host = "127.0.0.1"
port = 1993
username = "a"
password = "pw"
mailboxes = ["INBOX"]
"#;

#[test]
fn example_file_parses() {
    let c = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config.example.toml"
    )))
    .expect("config.example.toml must stay valid");
    assert!(!c.accounts.is_empty());
}

#[test]
fn minimal_parses_with_defaults() {
    let c = parse(OK).unwrap();
    assert_eq!(c.imap.idle_renew, Duration::from_secs(1500));
    assert_eq!(c.accounts[0].tls, TlsMode::Implicit);
    assert_eq!(c.accounts[0].port(), 1993);
    assert!(c.redis.is_none());
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = parse(&OK.replace("port = 1993", "prot = 1993")).unwrap_err();
    let e = &e.0[0];
    assert_eq!(e.line, Some(9), "{e}");
    assert!(e.to_string().contains("prot"), "{e}");
}

#[test]
fn wrong_type_and_bad_tls_are_located() {
    let e = parse(&OK.replace("port = 1993", "port = \"x\"")).unwrap_err();
    assert_eq!(e.0[0].line, Some(9), "{e}");
    let e = parse(&OK.replace("port = 1993", "tls = \"maybe\"")).unwrap_err();
    assert_eq!(e.0[0].line, Some(9), "{e}");
}

#[test]
fn semantic_errors_are_located() {
    let dup = format!("{OK}\n[[accounts]]\nid = \"a1\"\nemail = \"b@x\"\nhost = \"h\"\nusername = \"b\"\npassword_env = \"X\"\nmailboxes = []\n");
    let e = parse(&dup).unwrap_err();
    let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert!(keys.contains(&("accounts[1].id", Some(15))), "{e}");
    assert!(keys.contains(&("accounts[1].mailboxes", Some(20))), "{e}");
}

#[test]
fn not_utf8_and_bom() {
    assert!(Config::parse(Path::new("t"), b"\xff\xfe[storage]").is_err());
    let with_bom = format!("\u{feff}{OK}");
    assert!(parse(&with_bom).is_ok());
}

#[tokio::test]
async fn secrets_are_redacted() {
    let c = parse(OK).unwrap();
    let dbg = format!("{:?}", c);
    assert!(!dbg.contains("\"pw\""), "{dbg}");
    let s = c.accounts[0].secret().resolve().await.unwrap();
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
}

#[test]
fn loopback_hosts() {
    for h in [
        "localhost",
        "LOCALHOST.",
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "[::1]",
    ] {
        assert!(is_loopback_host(h), "{h}");
    }
    for h in [
        "imap.example.com",
        "10.0.0.1",
        "localhost.example.com",
        "::ffff:10.0.0.1",
    ] {
        assert!(!is_loopback_host(h), "{h}");
    }
}

#[test]
fn bad_duration() {
    let e = parse(&format!("[imap]\nidle_renew = \"soon\"\n{OK}")).unwrap_err();
    assert_eq!(e.0[0].line, Some(2), "{e}");
    assert!(e.to_string().contains("invalid duration"), "{e}");
}

#[test]
fn addr_specs() {
    for ok in [
        "a@example.com",
        "joe.bloggs+tag@mail.example.co.uk",
        "joe@localhost",
        "\"joe bloggs\"@example.com",
        "\"a@b\"@example.com",
        "user@[192.0.2.1]",
        "jörg@bücher.example",
    ] {
        assert!(validate::is_addr_spec(ok), "{ok}");
    }
    for bad in [
        "joe at example dot com",
        "joe",
        "@example.com",
        "joe@",
        "a@b@example.com",
        "joe smith@example.com",
        "joe@example..com",
        ".joe@example.com",
        "joe.@example.com",
        "joe@exa mple.com",
        "joe@example.com ",
        "\"unterminated@example.com",
        "joe@[bad[literal]",
        "joe\n@example.com",
    ] {
        assert!(!validate::is_addr_spec(bad), "{bad:?}");
    }
}

#[test]
fn url_passwords_are_redacted_in_debug() {
    let text = format!(
        "{}\n[redis]\nurl = \"redis://:redis-SECRET-1@127.0.0.1:6379/0\"\n",
        OK.replace(
            "sqlite://x.db",
            "postgres://u:pg-SECRET-2@db.example:5432/x?sslmode=require&password=pg-SECRET-3"
        )
    );
    let c = parse(&text).unwrap();
    let pg = "postgres://u:***@db.example:5432/x?sslmode=require&password=***";
    let redis = "redis://:***@127.0.0.1:6379/0";
    for (dbg, shown) in [
        (format!("{c:?}"), vec![pg, redis]),
        (format!("{c:#?}"), vec![pg, redis]),
        (format!("{:?}", c.storage), vec![pg]),
        (format!("{:?}", c.redis), vec![redis]),
    ] {
        assert!(!dbg.contains("SECRET"), "{dbg}");
        for url in shown {
            assert!(dbg.contains(url), "{url} not in {dbg}");
        }
    }
}

#[test]
fn redact_url_hides_only_passwords() {
    for (url, want) in [
        ("postgres://u:secret@db/x", "postgres://u:***@db/x"),
        (
            "postgresql://u:p@ss@db:5432/x",
            "postgresql://u:***@db:5432/x",
        ),
        (
            "redis://:secret@127.0.0.1:6379/0",
            "redis://:***@127.0.0.1:6379/0",
        ),
        (
            "rediss://default:secret@cache",
            "rediss://default:***@cache",
        ),
        (
            "postgres://u@db/x?password=secret&sslmode=require",
            "postgres://u@db/x?password=***&sslmode=require",
        ),
        ("postgres://u@db/x", "postgres://u@db/x"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("sqlite://idlesync.db", "sqlite://idlesync.db"),
        (
            "sqlite:///var/lib/idlesync/a.db?mode=rwc",
            "sqlite:///var/lib/idlesync/a.db?mode=rwc",
        ),
        ("not a url", "not a url"),
    ] {
        assert_eq!(redact_url(url), want, "{url}");
    }
}

/// `[redis]` with the given extra lines, after `OK`.
fn with_redis(extra: &str) -> String {
    format!("{OK}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n{extra}")
}

#[test]
fn mirror_keys_default_to_keep_everything_and_email_changes() {
    let c = parse(&with_redis("")).unwrap();
    assert_eq!(c.storage.expunged, crate::changes::ExpungeMode::Keep);
    assert_eq!(c.storage.import_since, None);
    let r = c.redis.unwrap();
    assert_eq!(
        (r.channel.as_str(), r.changes_channel.as_str()),
        ("email:sync", "email:changes")
    );
}

#[test]
fn mirror_keys_parse() {
    let text = OK.replace(
        "url = \"sqlite://x.db\"",
        "url = \"sqlite://x.db\"\nexpunged = \"delete\"\nimport_since = \"90d\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.storage.expunged, crate::changes::ExpungeMode::Delete);
    assert_eq!(
        c.storage.import_since,
        Some(Duration::from_secs(90 * 24 * 3600))
    );
}

#[test]
fn bad_mirror_keys_are_located() {
    let storage = |line: &str| {
        OK.replace(
            "url = \"sqlite://x.db\"",
            &format!("url = \"sqlite://x.db\"\n{line}"),
        )
    };
    // (file, key, line, words the message must hold)
    let cases = [
        (
            storage("expunged = \"archive\""),
            "storage.expunged",
            4,
            vec!["archive", "keep", "delete"],
        ),
        (
            storage("import_since = \"0s\""),
            "storage.import_since",
            4,
            vec!["more than 0"],
        ),
        (
            storage("import_since = \"lately\""),
            "storage.import_since",
            4,
            vec!["invalid duration"],
        ),
        (
            with_redis("changes_channel = \"\""),
            "redis.changes_channel",
            16,
            vec!["must not be empty"],
        ),
        (
            with_redis("changes_channel = \"email:sync\""),
            "redis.changes_channel",
            16,
            vec!["must differ from redis.channel", "\"email:sync\""],
        ),
        (
            // The default changes_channel: located at its section.
            with_redis("channel = \"email:changes\""),
            "redis.changes_channel",
            14,
            vec!["must differ from redis.channel"],
        ),
    ];
    assert_errors_at(cases);
}

/// A live reload applies only the account list: a change to the mirror keys makes the
/// sections differ, which the daemon reports as needing a restart.
#[test]
fn mirror_keys_are_part_of_the_sections_a_reload_compares() {
    let old = parse(&with_redis("")).unwrap();
    let new = parse(&with_redis("changes_channel = \"other\"").replace(
        "url = \"sqlite://x.db\"",
        "url = \"sqlite://x.db\"\nexpunged = \"delete\"",
    ))
    .unwrap();
    assert_ne!(old.storage, new.storage);
    assert_ne!(old.redis, new.redis);
}

#[test]
fn mirror_keys_show_in_debug() {
    let c = parse(&with_redis("")).unwrap();
    let dbg = format!("{c:?}");
    for k in [
        "expunged: Keep",
        "import_since: None",
        "changes_channel: \"email:changes\"",
    ] {
        assert!(dbg.contains(k), "{k} not in {dbg}");
    }
}

/// `OK` on PostgreSQL with a `[cluster]` section of the given lines (line 15 on).
fn with_cluster(lines: &str) -> String {
    format!(
        "{}\n[cluster]\n{lines}\n",
        OK.replace("sqlite://x.db", "postgres://u@db.example/x")
    )
}

#[test]
fn cluster_defaults_and_keys_parse() {
    let c = parse(OK).unwrap();
    assert_eq!(c.cluster, ClusterConfig::default());
    assert!(!c.cluster.enabled);
    let c = parse(&with_cluster(
        "enabled = true\nnode_id = \"pod-a_1.x\"\nlease_ttl = \"9s\"\nrenew_every = \"3s\"",
    ))
    .unwrap();
    assert!(c.cluster.enabled);
    assert_eq!(c.cluster.node_id(), "pod-a_1.x");
    assert_eq!(
        (c.cluster.lease_ttl, c.cluster.renew_every),
        (Duration::from_secs(9), Duration::from_secs(3))
    );
    // Without node_id: host name and pid, distinct for two replicas on one host.
    let id = ClusterConfig::default().node_id();
    assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    // The host name from gethostname(2) (#22: /proc is hidden under ProcSubset=pid).
    let host = hostname::get().unwrap().into_string().unwrap();
    assert_eq!(id, format!("{}-{}", host.trim(), std::process::id()));
}

#[test]
fn bad_cluster_keys_are_located() {
    let long = "n".repeat(201);
    // (file, key, line, words the message must hold)
    let cases = [
        (
            format!("{OK}\n[cluster]\nenabled = true\n"),
            "cluster.enabled",
            15,
            vec![
                "cluster mode needs PostgreSQL",
                "leases and fencing",
                "storage.url is \"sqlite://x.db\"",
            ],
        ),
        (
            with_cluster("renew_every = \"30s\""),
            "cluster.renew_every",
            15,
            vec![
                "less than cluster.lease_ttl (30s)",
                "renewed before it expires",
                "(10s)",
            ],
        ),
        (
            with_cluster("lease_ttl = \"5s\""),
            "cluster.renew_every",
            14,
            vec!["less than cluster.lease_ttl (5s)", "1666ms"],
        ),
        // #22: a renewal sent on time must end before lease_ttl - margin.
        (
            with_cluster("lease_ttl = \"10s\"\nrenew_every = \"9s\""),
            "cluster.lease_ttl",
            15,
            vec![
                "10s cannot hold renew_every (9s)",
                "at least 1s",
                "1s margin",
            ],
        ),
        (
            with_cluster("renew_every = \"0s\""),
            "cluster.renew_every",
            15,
            vec!["more than 0"],
        ),
        (
            with_cluster("lease_ttl = \"0s\""),
            "cluster.lease_ttl",
            15,
            vec!["more than 0"],
        ),
        (
            with_cluster("node_id = \"\""),
            "cluster.node_id",
            15,
            vec!["must not be empty"],
        ),
        (
            with_cluster(&format!("node_id = \"{long}\"")),
            "cluster.node_id",
            15,
            vec!["201 bytes", "at most 200"],
        ),
        (
            with_cluster("node_id = \"pod a\""),
            "cluster.node_id",
            15,
            vec!["printable, without whitespace"],
        ),
        (
            with_cluster("node_id = \"pod\\u0007\""),
            "cluster.node_id",
            15,
            vec!["printable"],
        ),
        (
            with_cluster("enabled = true\nleases = 3"),
            "cluster.leases",
            16,
            vec!["unknown field"],
        ),
    ];
    assert_errors_at(cases);
}

#[test]
fn cluster_on_postgres_is_valid() {
    for lines in [
        "enabled = true",
        "enabled = true\nlease_ttl = \"10s\"\nrenew_every = \"8s\"",
        "enabled = true\nlease_ttl = \"3s\"\nrenew_every = \"1s\"",
        "enabled = false\nnode_id = \"replica-1\"",
    ] {
        let text = with_cluster(lines);
        assert!(parse(&text).is_ok(), "{text}");
    }
    // Disabled on SQLite: the section alone changes nothing.
    assert!(parse(&format!("{OK}\n[cluster]\nenabled = false\n")).is_ok());
}

/// Each text fails with an error at `key` on `line` whose message has every one of `words`.
fn assert_errors_at<const N: usize>(cases: [(String, &str, usize, Vec<&str>); N]) {
    for (text, key, line, words) in cases {
        let e = parse(&text).expect_err(&text);
        let e = e.0.iter().find(|e| e.key == key).unwrap_or_else(|| {
            panic!("no error at {key} for\n{text}\n{e}");
        });
        assert_eq!(e.line, Some(line), "{key}: {e}\n{text}");
        for w in words {
            assert!(e.to_string().contains(w), "{w:?} not in {e}");
        }
    }
}
