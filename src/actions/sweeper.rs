//! Fails the action steps nobody ran before `api.action_timeout` (no replica holds the
//! mailbox, or its task cannot connect), and forgets finished actions after a week.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Signals;
use crate::store::Store;

/// Finished actions are kept this long for `GET /v1/actions/{id}` and idempotent retries.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs until `cancel`, every `every`.
pub async fn run(store: Store, signals: Signals, every: Duration, cancel: CancellationToken) {
    let keep = i64::try_from(KEEP_FINISHED.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match store.expire_actions(keep).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(crate::metrics::ACTIONS_FINISHED, "outcome" => "timeout")
                    .increment(n);
                tracing::warn!(steps = n, "actions timed out: no replica ran them in time");
                // Waiters re-read the table on any completion of theirs; ids are not known
                // here, so wake them all with a sentinel.
                signals.finished(&[0]).await;
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "action sweeper failed"),
        }
    }
}
