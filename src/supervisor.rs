//! Supervision: one task per (account, mailbox), restarted with backoff after errors and panics.
//!
//! A panic in a mailbox is caught here (`catch_unwind`) and treated like any other failure: it is
//! a bug, never a crash of the daemon, and it never touches the other mailboxes.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::BackoffConfig;
use crate::mailbox::{self, MailboxCtx};
use crate::status::MailboxState;

/// The reconnect schedule: exponential from `initial`, doubled each time, with jitter of up to
/// the delay itself (backon's), capped at `max`.
#[derive(Debug)]
pub struct Schedule {
    builder: ExponentialBuilder,
    current: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max: Duration,
}

impl Schedule {
    /// A fresh schedule.
    pub fn new(cfg: &BackoffConfig) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(cfg.initial)
            .with_max_delay(cfg.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            current: builder.build(),
            max: cfg.max,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.current.next().unwrap_or(self.max).min(self.max)
    }

    /// Back to `initial`, after a healthy stretch.
    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

/// Spawns the supervised task of one mailbox; it ends once `cancel` fires and it has logged out.
pub fn spawn_mailbox(
    ctx: MailboxCtx,
    backoff: BackoffConfig,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let span = tracing::info_span!("mailbox", account = %ctx.account_id, mailbox = %ctx.mailbox);
    tokio::spawn(supervise(ctx, backoff, cancel).instrument(span))
}

/// An async block rather than an async fn: an async fn's future keeps its arguments twice (as
/// passed and as moved into the body), ~350 bytes more for every mailbox's task (#5).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store ctx and cfg twice"
)]
fn supervise(
    ctx: MailboxCtx,
    cfg: BackoffConfig,
    cancel: CancellationToken,
) -> impl Future<Output = ()> {
    async move {
        let mut schedule = Schedule::new(&cfg);
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
            if started.elapsed() >= cfg.reset_after {
                schedule.reset();
            }
            let previous = ctx.reporter.state();
            let (delay, state, kind) = match result {
                Ok(Err(e)) if e.is_auth() => {
                    if previous != MailboxState::AuthFailed {
                        tracing::warn!(error = %format!("{e:#}"), retry_in = ?cfg.auth_failed, "authentication failed");
                    } else {
                        tracing::debug!(error = %format!("{e:#}"), "authentication failed again");
                    }
                    (cfg.auth_failed, MailboxState::AuthFailed, e.kind())
                }
                Ok(Err(e)) => {
                    let delay = schedule.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), kind = e.kind(), retry_in = ?delay, "mailbox connection failed");
                    (delay, MailboxState::Backoff, e.kind())
                }
                Ok(Ok(())) => {
                    // run() returns Ok only on shutdown; anything else is a logic error. Retry.
                    let delay = schedule.next_delay();
                    tracing::warn!(retry_in = ?delay, "mailbox loop ended without shutdown");
                    (delay, MailboxState::Backoff, "protocol")
                }
                Err(panic) => {
                    let delay = schedule.next_delay();
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, retry_in = ?delay, "mailbox task panicked (a bug); restarting it");
                    (delay, MailboxState::Backoff, "panic")
                }
            };
            // State first, then the error: a watcher woken by the error sees the new state.
            ctx.reporter.set_state(state);
            ctx.reporter.error(kind);
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

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(300),
            auth_failed: Duration::from_secs(900),
        }
    }

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut s = Schedule::new(&cfg());
        let delays: Vec<_> = (0..20).map(|_| s.next_delay()).collect();
        // attempt n waits between 2^n and 2^(n+1) seconds (jitter), until the cap.
        for (n, d) in delays.iter().take(8).enumerate() {
            let base = Duration::from_secs(1 << n);
            assert!(
                *d >= base && *d <= (base * 2).min(cfg().max),
                "attempt {n}: {d:?}"
            );
        }
        assert!(delays.iter().all(|d| *d <= cfg().max));
        assert!(delays[19] >= Duration::from_secs(256), "{:?}", delays[19]);
    }

    #[test]
    fn reset_starts_over() {
        let mut s = Schedule::new(&cfg());
        for _ in 0..10 {
            s.next_delay();
        }
        s.reset();
        assert!(s.next_delay() <= Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads_delays() {
        let firsts: std::collections::HashSet<_> = (0..20)
            .map(|_| Schedule::new(&cfg()).next_delay().as_millis())
            .collect();
        assert!(firsts.len() > 1, "no jitter: {firsts:?}");
    }
}
