//! The admin HTTP listener. Keep it on loopback or a private network.
//!
//! - `/metrics`: Prometheus text.
//! - `/healthz`: liveness; `ok` whenever the process answers.
//! - `/readyz`: 200 when the storage answers and every mailbox is idling or in an expected
//!   backoff ([`MailboxStatus::is_ready`]); 503 with the reasons otherwise.
//! - `/status`: JSON, one object per mailbox ([`crate::status::MailboxStatus`]), with the
//!   progress of this connection's import, if one ran: `"import": {"stored": 1500, "total":
//!   10300, "rate_per_sec": 42.5, "started_at": "…", "done": false}`, else `"import": null`.
//! - `/status/summary`: JSON, how many mailboxes are in each state: `{"mailboxes": 10000,
//!   "states": {"idling": 9998, "backoff": 2, …}}`. Cheap at any scale, for dashboards and
//!   scripts that poll.
//! - In cluster mode, each `/status` mailbox has `"owner"` (the node id holding its lease;
//!   mailboxes held by another replica are in state `elsewhere`), `/status/summary` has
//!   `"cluster": {"node_id", "held", "nodes": [{"node_id", "live", "leases",
//!   "heartbeat_age_ms"}]}`, and `/readyz` counts only the mailboxes this replica holds.
//! - `/`: the same as a small HTML page that reloads itself every 5 s; an import shows as a
//!   progress bar (HTML `<progress>`, no script) with stored/total and the rate.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::{MailboxState, MailboxStatus, StatusBoard};
use crate::store::Store;

mod page;
pub use page::status_page;

/// How long `/readyz` waits for the storage to answer.
const STORAGE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// Mailbox states.
    pub board: Arc<StatusBoard>,
    /// Pinged by `/readyz`.
    pub store: Store,
    /// Cluster mode: this replica's node id.
    pub node: Option<Arc<str>>,
    /// Cluster mode: whether its lease heartbeat is current.
    pub heartbeat: Option<Arc<crate::cluster::Heartbeat>>,
}

/// Serves until `cancel`.
pub async fn serve(listener: TcpListener, state: AdminState, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = accept(|| listener.accept()) => accepted,
            _ = cancel.cancelled() => return,
        };
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// First wait after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(64);

/// The next connection from `attempt` (the listener's `accept`). After an error (EMFILE when
/// descriptors run out, say) it waits 1 s, doubling to 64 s, as mini-redis does, instead of
/// retrying at once and burning a core; each call starts from 1 s again.
async fn accept<T, A, F>(mut attempt: A) -> T
where
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<T>>,
{
    let mut wait = ACCEPT_BACKOFF_FIRST;
    loop {
        match attempt().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "admin listener cannot accept");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

async fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            // Per-mailbox series from the board, then the daemon-wide ones.
            format!("{}{}", state.board.render_metrics(), state.metrics.render()),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match readiness(state).await {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reasons) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready\n{}", reasons.join("\n")),
            ),
        },
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&snapshot(state).await).unwrap_or_else(|_| "[]".into()),
        ),
        "/status/summary" => {
            let states = state.board.counts();
            let mut summary = serde_json::json!({
                "mailboxes": states.values().sum::<usize>(),
                "states": states,
            });
            if let Some(node) = &state.node {
                summary["cluster"] = cluster_summary(state, node).await;
            }
            reply(StatusCode::OK, "application/json", summary.to_string())
        }
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page(&snapshot(state).await),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The board; in cluster mode, mailboxes held elsewhere name their owner as the lease table
/// says (left `null` when the database does not answer in time).
async fn snapshot(state: &AdminState) -> Vec<MailboxStatus> {
    let mut mailboxes = state.board.snapshot();
    if state.node.is_none() || !mailboxes.iter().any(|m| m.state == MailboxState::Elsewhere) {
        return mailboxes;
    }
    if let Ok(Ok(owners)) =
        tokio::time::timeout(STORAGE_PING_TIMEOUT, state.store.lease_owners()).await
    {
        let owners: std::collections::HashMap<(String, String), String> =
            owners.into_iter().map(|(a, m, o)| ((a, m), o)).collect();
        for m in mailboxes
            .iter_mut()
            .filter(|m| m.state == MailboxState::Elsewhere)
        {
            m.owner = owners.get(&(m.account.clone(), m.mailbox.clone())).cloned();
        }
    }
    mailboxes
}

/// `/status/summary`'s `cluster`: this node, how many it holds, and every replica the table
/// knows (`nodes` is `null` when the database does not answer in time).
async fn cluster_summary(state: &AdminState, node: &str) -> serde_json::Value {
    let held = state
        .board
        .snapshot()
        .iter()
        .filter(|m| m.state != MailboxState::Elsewhere)
        .count();
    let nodes = tokio::time::timeout(STORAGE_PING_TIMEOUT, state.store.cluster_nodes())
        .await
        .ok()
        .and_then(Result::ok);
    serde_json::json!({ "node_id": node, "held": held, "nodes": nodes })
}

/// `Ok` when ready; otherwise one line per reason.
async fn readiness(state: &AdminState) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    match tokio::time::timeout(STORAGE_PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => reasons.push(format!("storage: {}", e.kind())),
        Err(_) => reasons.push("storage: no answer within 2 s".into()),
    }
    if let Some(problem) = state.heartbeat.as_ref().and_then(|h| h.problem()) {
        reasons.push(problem);
    }
    for m in state.board.snapshot() {
        if !m.is_ready() {
            reasons.push(format!("{}/{}: {}", m.account, m.mailbox, m.state.as_str()));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use tokio::time::Instant;

    /// #12 item 8: on an accept error such as EMFILE the loop retried at once and burnt a core.
    /// Retries must wait 1 s, doubling to 64 s, and start over at 1 s after a success.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_and_reset_after_a_success() {
        // 9 failures, a connection, 2 failures, a connection.
        let script: Vec<bool> = [vec![false; 9], vec![true], vec![false; 2], vec![true]].concat();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let attempt = || {
            let ok = script.lock().unwrap().pop_front();
            attempts.lock().unwrap().push(start.elapsed());
            async move {
                // A real accept yields to the runtime, which lets paused time move.
                tokio::task::yield_now().await;
                match ok {
                    Some(true) => Ok(()),
                    Some(false) => Err(std::io::Error::from_raw_os_error(24)), // EMFILE
                    None => panic!("accepted more often than scripted"),
                }
            }
        };
        accept(attempt).await;
        accept(attempt).await;
        let attempts = attempts.lock().unwrap();
        let gaps: Vec<u64> = attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect();
        assert_eq!(
            gaps,
            [1, 2, 4, 8, 16, 32, 64, 64, 64, 0, 1, 2],
            "seconds between accept attempts"
        );
        assert_eq!(attempts.len(), 13);
        assert!(script.lock().unwrap().is_empty());
        // Not a wall-clock bound: paused time moves only by the sleeps.
        assert_eq!(attempts.last().copied(), Some(Duration::from_secs(255 + 3)));
    }
}
