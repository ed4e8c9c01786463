//! Metric names, their descriptions, and the per-mailbox handles.
//!
//! Labels are bounded by the config (`account`, `mailbox`) or by code (`state`, `error_type`);
//! never a message id or an error text.

use std::sync::OnceLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::status::MailboxState;

/// 1 for the mailbox's current state, 0 for the others.
pub const MAILBOX_STATE: &str = "idlesync_mailbox_state";
/// Connection attempts after the first.
pub const RECONNECTS: &str = "idlesync_reconnects_total";
/// Messages inserted.
pub const MESSAGES_STORED: &str = "idlesync_messages_stored_total";
/// Records published to Redis (or stdout).
pub const RECORDS_PUBLISHED: &str = "idlesync_records_published_total";
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
/// Publish attempts that failed.
pub const PUBLISH_ERRORS: &str = "idlesync_publish_errors_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the process-wide recorder once and returns the handle that renders `/metrics`.
/// Several daemons in one process (tests) share it; their labels tell them apart.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(EXISTS_TO_PUBLISH.into()), LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    // Fails only if another recorder is installed; ours then stays empty.
                    let _ = metrics::set_global_recorder(recorder);
                    describe();
                    handle
                }
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        MAILBOX_STATE,
        "1 for the mailbox's current state, 0 for the others"
    );
    describe_counter!(RECONNECTS, "Connection attempts after a failure");
    describe_counter!(MESSAGES_STORED, "Messages inserted into the database");
    describe_counter!(RECORDS_PUBLISHED, "email:sync records published");
    describe_gauge!(
        LAST_MESSAGE,
        "Unix time of the newest stored message's INTERNALDATE"
    );
    describe_histogram!(
        EXISTS_TO_PUBLISH,
        metrics::Unit::Seconds,
        "EXISTS read off the socket until PUBLISH is acknowledged"
    );
    describe_counter!(ERRORS, "Errors by kind");
    describe_gauge!(OUTBOX_DEPTH, "Records waiting to be published");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest record waiting"
    );
    describe_counter!(PUBLISH_ERRORS, "Failed publish attempts");
}

/// The handles of one mailbox, created once when its task starts.
#[derive(Debug, Clone)]
pub struct MailboxMetrics {
    account: String,
    mailbox: String,
    states: Vec<(MailboxState, Gauge)>,
    reconnects: Counter,
    stored: Counter,
    last_message: Gauge,
}

impl MailboxMetrics {
    /// Registers the series of `account`/`mailbox`.
    pub fn new(account: &str, mailbox: &str) -> Self {
        let l = [
            ("account", account.to_string()),
            ("mailbox", mailbox.to_string()),
        ];
        let states = MailboxState::ALL
            .iter()
            .map(|s| {
                let mut labels = l.to_vec();
                labels.push(("state", s.as_str().to_string()));
                (*s, gauge!(MAILBOX_STATE, &labels))
            })
            .collect();
        Self {
            account: account.to_string(),
            mailbox: mailbox.to_string(),
            states,
            reconnects: counter!(RECONNECTS, &l),
            stored: counter!(MESSAGES_STORED, &l),
            last_message: gauge!(LAST_MESSAGE, &l),
        }
    }

    /// Sets the state gauges.
    pub fn state(&self, state: MailboxState) {
        for (s, g) in &self.states {
            g.set(if *s == state { 1.0 } else { 0.0 });
        }
    }

    /// One reconnect.
    pub fn reconnect(&self) {
        self.reconnects.increment(1);
    }

    /// `n` messages stored, the newest having arrived at `newest_ms`.
    pub fn stored(&self, n: u64, newest_ms: Option<i64>) {
        self.stored.increment(n);
        if let Some(ms) = newest_ms {
            self.last_message.set(ms as f64 / 1000.0);
        }
    }

    /// One error of a bounded kind.
    pub fn error(&self, kind: &'static str) {
        counter!(ERRORS, "account" => self.account.clone(), "mailbox" => self.mailbox.clone(), "error_type" => kind).increment(1);
    }
}

/// Publisher-side series for one record.
pub fn published(account: &str, mailbox: &str, latency_s: Option<f64>) {
    let l = [
        ("account", account.to_string()),
        ("mailbox", mailbox.to_string()),
    ];
    counter!(RECORDS_PUBLISHED, &l).increment(1);
    if let Some(s) = latency_s {
        let h: Histogram = histogram!(EXISTS_TO_PUBLISH, &l);
        h.record(s);
    }
}
