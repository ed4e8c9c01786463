//! One mailbox task's life under supervision ([`supervise`]: run, catch a panic, pick the
//! error class's delay, wait, again; a fenced write ends it), and stopping a set of them
//! within a grace period ([`stop_all`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Key, Stopped};
use crate::backoff::{ErrorClass, Retry};
use crate::config::BackoffConfig;
use crate::mailbox::{self, MailboxCtx};
use crate::status::MailboxState;

/// Waits for cancelled tasks up to `grace`, then aborts the rest and awaits them too.
pub(super) async fn stop_all(mut handles: Vec<JoinHandle<()>>, grace: Duration) -> Stopped {
    let total = handles.len();
    let all = futures::future::join_all(handles.iter_mut());
    if tokio::time::timeout(grace, all).await.is_ok() {
        return Stopped {
            clean: total,
            aborted: 0,
        };
    }
    let late: Vec<_> = handles.into_iter().filter(|h| !h.is_finished()).collect();
    tracing::warn!(
        count = late.len(),
        "mailboxes did not stop in time; aborting them"
    );
    for h in &late {
        h.abort();
    }
    let aborted = late.len();
    futures::future::join_all(late).await;
    Stopped {
        clean: total - aborted,
        aborted,
    }
}

/// An async block rather than an async fn: an async fn's future keeps its arguments twice (as
/// passed and as moved into the body), ~350 bytes more for every mailbox's task (#5).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store ctx and cfg twice"
)]
pub(super) fn supervise(
    ctx: MailboxCtx,
    cfg: BackoffConfig,
    cancel: CancellationToken,
    lost: Option<tokio::sync::mpsc::UnboundedSender<Key>>,
) -> impl Future<Output = ()> {
    async move {
        let mut retry = Retry::new(&cfg);
        let mut first = true;
        loop {
            if !first {
                ctx.reporter.reconnect();
            }
            first = false;
            let started = Instant::now();
            let result = AssertUnwindSafe(mailbox::run(&ctx, &cancel))
                .catch_unwind()
                .await;
            if cancel.is_cancelled() {
                break;
            }
            if let Ok(Err(e)) = &result {
                if e.is_fenced() {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "lease lost to another replica: mailbox dropped, its write rolled back"
                    );
                    ctx.reporter.error(e.kind(), "fenced");
                    ctx.reporter.set_elsewhere();
                    if let Some(lost) = &lost {
                        let _ = lost.send((ctx.account_id.clone(), ctx.mailbox.clone()));
                    }
                    return;
                }
            }
            if started.elapsed() >= cfg.reset_after {
                retry.reset();
            }
            let (class, kind, suggested) = match &result {
                Ok(Err(e)) => (e.class(), e.kind(), e.retry_after()),
                // run() returns Ok only on shutdown; anything else is a logic error. Retry.
                Ok(Ok(())) => (ErrorClass::Transient, "protocol", None),
                Err(_) => (ErrorClass::Transient, "panic", None),
            };
            let delay = retry.after(class, suggested);
            match result {
                Ok(Err(e)) => tracing::warn!(
                    error = %format!("{e:#}"),
                    kind,
                    class = class.as_str(),
                    retry_in = ?delay,
                    "mailbox connection failed"
                ),
                Ok(Ok(())) => {
                    tracing::warn!(retry_in = ?delay, "mailbox loop ended without shutdown")
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, retry_in = ?delay, "mailbox task panicked (a bug); restarting it");
                }
            }
            // State first, then the error: a watcher woken by the error sees the new state.
            ctx.reporter.set_state(class.waiting_state());
            ctx.reporter.error(kind, class.as_str());
            ctx.reporter
                .set_next_retry(Some(std::time::SystemTime::now() + delay));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => break,
            }
        }
        ctx.reporter.set_state(MailboxState::Stopping);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_aborts_and_awaits_what_ignores_its_token() {
        let polite = CancellationToken::new();
        let p = polite.clone();
        let handles = vec![
            tokio::spawn(async move { p.cancelled().await }),
            tokio::spawn(std::future::pending::<()>()),
        ];
        polite.cancel();
        let done = stop_all(handles, Duration::from_millis(50)).await;
        assert_eq!(
            done,
            Stopped {
                clean: 1,
                aborted: 1
            }
        );
    }
}
