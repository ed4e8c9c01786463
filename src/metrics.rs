//! Metric names and their rendering.
//!
//! Two sources make up `/metrics`:
//! - **Per-mailbox series** (labels `account`, `mailbox`) live with the mailbox on the status
//!   board, in a [`MailboxSeries`], and are rendered from there by [`render_mailboxes`]. That is
//!   a small per-mailbox registry: when a mailbox is removed from the config, its entry leaves
//!   the board and its series leave `/metrics` with it, so no alert fires on a mailbox that no
//!   longer exists. (The Prometheus exporter crate has no way to unregister a series.)
//! - **Daemon-wide series** (outbox, publish errors, config reloads) go through the `metrics`
//!   facade to metrics-exporter-prometheus, installed once per process by [`install`].
//!
//! Labels are bounded by the config (`account`, `mailbox`) or by code (`state`, `error_type`);
//! never a message id or an error text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// 1 for the mailbox's current state, 0 for the others.
pub const MAILBOX_STATE: &str = "idlesync_mailbox_state";
/// Connection attempts after the first.
pub const RECONNECTS: &str = "idlesync_reconnects_total";
/// Messages inserted.
pub const MESSAGES_STORED: &str = "idlesync_messages_stored_total";
/// Records published to Redis (or stdout).
pub const RECORDS_PUBLISHED: &str = "idlesync_records_published_total";
/// Messages of a first import (or re-import) stored: history, not new mail.
pub const IMPORTED: &str = "idlesync_imported_total";
/// Changes applied to stored messages, by `kind` (`flags`, `expunged`).
pub const CHANGES_APPLIED: &str = "idlesync_changes_applied_total";
/// Unix time of the newest stored message's arrival.
pub const LAST_MESSAGE: &str = "idlesync_last_message_timestamp_seconds";
/// EXISTS read off the socket → PUBLISH acknowledged.
pub const EXISTS_TO_PUBLISH: &str = "idlesync_exists_to_publish_seconds";
/// Errors by bounded kind.
pub const ERRORS: &str = "idlesync_errors_total";
/// Records waiting in the outbox.
pub const OUTBOX_DEPTH: &str = "idlesync_outbox_depth";
/// Age of the oldest record waiting.
pub const OUTBOX_OLDEST_AGE: &str = "idlesync_outbox_oldest_age_seconds";
/// Records dropped unpublished by the outbox bounds.
pub const OUTBOX_DROPPED: &str = "idlesync_outbox_dropped_total";
/// Publish attempts that failed.
pub const PUBLISH_ERRORS: &str = "idlesync_publish_errors_total";
/// Config reloads refused because the new file was invalid.
pub const CONFIG_RELOAD_ERRORS: &str = "idlesync_config_reload_errors_total";
/// 1 while the config file holds changes that only a restart applies.
pub const CONFIG_RESTART_REQUIRED: &str = "idlesync_config_restart_required";

/// API actions finished (#19), by `outcome`: `done`, or the failure's code (`gone`,
/// `no_such_mailbox`, `refused`, `timeout`, `stale_uidvalidity`).
pub const ACTIONS_FINISHED: &str = "idlesync_actions_total";
/// API requests answered, by `status` (the HTTP status code).
pub const API_REQUESTS: &str = "idlesync_api_requests_total";

/// Cluster mode: mailbox leases this replica holds.
pub const LEASES_HELD: &str = "idlesync_leases_held";
/// Cluster mode: live replicas this one sees (itself included).
pub const CLUSTER_NODES: &str = "idlesync_cluster_nodes";
/// Cluster mode: leases taken that another replica (or an earlier run) had held, by `reason`
/// (`expired`, `released`).
pub const LEASE_TAKEOVERS: &str = "idlesync_lease_takeovers_total";
/// Cluster mode: writes rolled back because the mailbox's lease was no longer this replica's.
pub const FENCING_REJECTIONS: &str = "idlesync_fencing_rejections_total";
/// Cluster mode: how long a mailbox taken over had been without an owner (expiry or release →
/// taken), by the database's clock.
pub const LEASE_TAKEOVER_SECONDS: &str = "idlesync_lease_takeover_seconds";
/// Upper bounds of [`LEASE_TAKEOVER_SECONDS`], in seconds.
pub const TAKEOVER_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the process-wide recorder for daemon-wide series once and returns the handle that
/// renders them. Several daemons in one process (tests) share it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(LEASE_TAKEOVER_SECONDS.into()),
                    &TAKEOVER_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; ours then stays empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(OUTBOX_DEPTH, "Records waiting to be published");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest record waiting"
    );
    describe_counter!(
        OUTBOX_DROPPED,
        "Records dropped unpublished because the outbox exceeded its bounds"
    );
    describe_counter!(PUBLISH_ERRORS, "Failed publish attempts");
    describe_counter!(
        CONFIG_RELOAD_ERRORS,
        "Config reloads refused because the new file was invalid"
    );
    describe_gauge!(
        LEASES_HELD,
        "Mailbox leases this replica holds (cluster mode)"
    );
    describe_gauge!(CLUSTER_NODES, "Live replicas this one sees (cluster mode)");
    describe_counter!(
        LEASE_TAKEOVERS,
        "Leases taken that had been held before, by how they became free"
    );
    describe_counter!(
        FENCING_REJECTIONS,
        "Writes rolled back because the mailbox lease was no longer this replica's"
    );
    metrics::describe_histogram!(
        LEASE_TAKEOVER_SECONDS,
        metrics::Unit::Seconds,
        "How long a mailbox taken over had been without an owner"
    );
    describe_counter!(
        ACTIONS_FINISHED,
        "API actions finished, by outcome (done or the failure's code)"
    );
    describe_counter!(API_REQUESTS, "API requests answered, by HTTP status");
    describe_gauge!(
        CONFIG_RESTART_REQUIRED,
        "1 while the config file holds changes that only a restart applies"
    );
}

/// A fixed-bucket histogram (Prometheus semantics: cumulative at render time).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), `LATENCY_BUCKETS.len() + 1` with +Inf last.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Records one observation in seconds.
    pub fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The counters of one mailbox, kept beside its status on the board.
#[derive(Debug, Clone, Default)]
pub struct MailboxSeries {
    /// Connection attempts after a failure.
    pub reconnects: u64,
    /// Messages inserted.
    pub stored: u64,
    /// Of `stored`, those a first import (or re-import) brought in.
    pub imported: u64,
    /// Stored messages whose flags changed.
    pub flags_changed: u64,
    /// Stored messages that left the mailbox.
    pub expunged: u64,
    /// Records published.
    pub published: u64,
    /// INTERNALDATE of the newest stored message, Unix seconds.
    pub last_message: Option<f64>,
    /// Errors by bounded kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// EXISTS → PUBLISH acknowledged.
    pub latency: Histogram,
}

/// One mailbox as `/metrics` sees it: its labels, its current state and its series. Neutral:
/// the status board builds these, so this module knows nothing of the board's types.
#[derive(Debug, Clone, Copy)]
pub struct MailboxRow<'a> {
    /// `account` label.
    pub account: &'a str,
    /// `mailbox` label.
    pub mailbox: &'a str,
    /// The current state's label value.
    pub state: &'static str,
    /// The mailbox's counters.
    pub series: &'a MailboxSeries,
}

/// Renders the per-mailbox series of `mailboxes` in Prometheus text format. `states` lists
/// every state's label value: the state gauge has one series per state, 1 for the current one.
pub fn render_mailboxes(mailboxes: &[MailboxRow<'_>], states: &[&str]) -> String {
    let mut out = String::new();
    let labels = |s: &MailboxRow<'_>| {
        format!(
            "account=\"{}\",mailbox=\"{}\"",
            escape(s.account),
            escape(s.mailbox)
        )
    };
    family(
        &mut out,
        MAILBOX_STATE,
        "gauge",
        "1 for the mailbox's current state, 0 for the others",
    );
    for s in mailboxes {
        for state in states {
            let v = u8::from(s.state == *state);
            let _ = writeln!(
                out,
                "{MAILBOX_STATE}{{{},state=\"{state}\"}} {v}",
                labels(s)
            );
        }
    }
    family(
        &mut out,
        RECONNECTS,
        "counter",
        "Connection attempts after a failure",
    );
    for s in mailboxes {
        let _ = writeln!(out, "{RECONNECTS}{{{}}} {}", labels(s), s.series.reconnects);
    }
    family(
        &mut out,
        MESSAGES_STORED,
        "counter",
        "Messages inserted into the database",
    );
    for s in mailboxes {
        let m = s.series;
        let _ = writeln!(out, "{MESSAGES_STORED}{{{}}} {}", labels(s), m.stored);
    }
    family(
        &mut out,
        IMPORTED,
        "counter",
        "Messages a first import (or a re-import after UIDVALIDITY changed) stored",
    );
    for s in mailboxes {
        let _ = writeln!(out, "{IMPORTED}{{{}}} {}", labels(s), s.series.imported);
    }
    family(
        &mut out,
        CHANGES_APPLIED,
        "counter",
        "Changes applied to stored messages: flags changed, messages expunged",
    );
    for s in mailboxes {
        let m = s.series;
        for (kind, n) in [("flags", m.flags_changed), ("expunged", m.expunged)] {
            let _ = writeln!(
                out,
                "{CHANGES_APPLIED}{{{},kind=\"{kind}\"}} {n}",
                labels(s)
            );
        }
    }
    family(
        &mut out,
        RECORDS_PUBLISHED,
        "counter",
        "Records published (email:sync and email:changes)",
    );
    for s in mailboxes {
        let m = s.series;
        let _ = writeln!(out, "{RECORDS_PUBLISHED}{{{}}} {}", labels(s), m.published);
    }
    family(
        &mut out,
        LAST_MESSAGE,
        "gauge",
        "Unix time of the newest stored message's INTERNALDATE",
    );
    for s in mailboxes {
        let m = s.series;
        if let Some(t) = m.last_message {
            let _ = writeln!(out, "{LAST_MESSAGE}{{{}}} {t}", labels(s));
        }
    }
    family(&mut out, ERRORS, "counter", "Errors by kind");
    for s in mailboxes {
        let m = s.series;
        for (kind, n) in &m.errors {
            let _ = writeln!(out, "{ERRORS}{{{},error_type=\"{kind}\"}} {n}", labels(s));
        }
    }
    family(
        &mut out,
        EXISTS_TO_PUBLISH,
        "histogram",
        "EXISTS read off the socket until PUBLISH is acknowledged",
    );
    for s in mailboxes {
        let m = s.series;
        let l = labels(s);
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += m.latency.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"+Inf\"}} {}",
            m.latency.count
        );
        let _ = writeln!(out, "{EXISTS_TO_PUBLISH}_sum{{{l}}} {}", m.latency.sum);
        let _ = writeln!(out, "{EXISTS_TO_PUBLISH}_count{{{l}}} {}", m.latency.count);
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label value escaping of the text format: backslash, double quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let mut series = MailboxSeries {
            reconnects: 2,
            ..MailboxSeries::default()
        };
        series.latency.observe(0.0015);
        series.latency.observe(0.004);
        series.latency.observe(20.0);
        series.errors.insert("io", 3);
        let row = MailboxRow {
            account: "a\"b",
            mailbox: "INBOX",
            state: "connecting",
            series: &series,
        };
        let text = render_mailboxes(&[row], &["connecting", "idling"]);
        let l = r#"account="a\"b",mailbox="INBOX""#;
        assert!(
            text.contains(&format!("{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"0.001\"}} 0")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"0.002\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"0.005\"}} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"10\"}} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{EXISTS_TO_PUBLISH}_bucket{{{l},le=\"+Inf\"}} 3")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{EXISTS_TO_PUBLISH}_count{{{l}}} 3")),
            "{text}"
        );
        assert!(text.contains(&format!("{RECONNECTS}{{{l}}} 2")), "{text}");
        assert!(
            text.contains(&format!("{ERRORS}{{{l},error_type=\"io\"}} 3")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{MAILBOX_STATE}{{{l},state=\"connecting\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{CHANGES_APPLIED}{{{l},kind=\"flags\"}} 0")),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ").count(), 9);
    }
}
