//! The `LISTEN` connection of the lease loop: a wake-up hint, never relied upon.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::CLUSTER_CHANNEL;

/// `LISTEN` on [`CLUSTER_CHANNEL`]: every notification (and every reconnect, which may have
/// missed some) wakes the loop. A hint only: without it the loop still ticks on time.
pub(super) async fn listen(url: String, hint: Arc<Notify>) {
    let mut wait = Duration::from_millis(500);
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => match l.listen(CLUSTER_CHANNEL).await {
                Ok(()) => {
                    wait = Duration::from_millis(500);
                    hint.notify_one();
                    while l.try_recv().await.ok().flatten().is_some() {
                        hint.notify_one();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cluster: LISTEN failed"),
            },
            Err(e) => tracing::debug!(error = %e, "cluster: LISTEN connection failed"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}
