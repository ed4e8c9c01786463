//! Indexing the mail stored before the search index existed (#21), in the background: batches
//! of [`crate::store::BACKFILL_BATCH`] messages by id, each its own short transaction, so
//! ingestion never waits on it; a progress line in the log every ten batches and at the end.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Runs until every old row is indexed or `cancel`. A failed batch is retried after a pause
/// (the database may be restarting); nothing is skipped.
pub async fn run(store: Store, cancel: CancellationToken) {
    let mut batches = 0u64;
    let started = std::time::Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match store.backfill_search().await {
            Ok(None) => {
                if batches > 0 {
                    tracing::info!(
                        batches,
                        secs = started.elapsed().as_secs(),
                        "search index: existing mail indexed"
                    );
                }
                return;
            }
            Ok(Some((done, end))) => {
                batches += 1;
                wait = Duration::from_secs(1);
                if batches % 10 == 1 || done >= end {
                    tracing::info!(
                        upto_id = done,
                        of = end,
                        percent = (done * 100).checked_div(end).unwrap_or(100),
                        "search index: indexing existing mail"
                    );
                }
                // Yield to ingestion between batches.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "search index: backfill batch failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}
