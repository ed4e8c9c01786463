//! Retry schedules, one per class of error.
//!
//! Every error a mailbox can end on has an [`ErrorClass`]; the supervisor asks
//! [`Retry::after`] how long to wait and which state to show meanwhile. Pure: no IO, no
//! clock other than the jitter's randomness.
//!
//! | class | schedule | state |
//! |---|---|---|
//! | `transient` | exponential from `backoff.initial` to `backoff.max`, jittered | `backoff` |
//! | `credentials` | `backoff.auth_failed` (15 min) | `auth_failed` |
//! | `secret_source` | exponential from `backoff.initial`, capped at `backoff.secret_source_max` (5 min) | `backoff` |
//! | `config_or_server` | `backoff.failed` (15 min) | `failed` |
//!
//! A server's own suggested delay (throttling) replaces the schedule's, whatever the class.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::BackoffConfig;
use crate::status::MailboxState;

/// What kind of failure ended a connection, for the retry decision. Never derived from error
/// text: each error type maps its variants here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The network, the server or the database had a passing problem: back off and retry.
    Transient,
    /// The server refused the credentials: retrying soon only gets the account locked.
    Credentials,
    /// The password or token could not be obtained (a token command timed out, an identity
    /// provider is down): retry on a schedule, but not too rarely, since nothing is wrong with
    /// the account itself.
    SecretSource,
    /// Retrying will not help until someone changes the config or the server: the mailbox does
    /// not exist, the certificate does not verify, TLS is refused.
    ConfigOrServer,
}

impl ErrorClass {
    /// The label shown in `/status` (`error_class`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Credentials => "credentials",
            ErrorClass::SecretSource => "secret_source",
            ErrorClass::ConfigOrServer => "config_or_server",
        }
    }

    /// The state a mailbox waits in after an error of this class.
    pub fn waiting_state(self) -> MailboxState {
        match self {
            ErrorClass::Transient | ErrorClass::SecretSource => MailboxState::Backoff,
            ErrorClass::Credentials => MailboxState::AuthFailed,
            ErrorClass::ConfigOrServer => MailboxState::Failed,
        }
    }
}

/// An exponential schedule: from `initial`, doubled each time, with jitter of up to the delay
/// itself (backon's), capped at `max`.
#[derive(Debug)]
pub struct Schedule {
    builder: ExponentialBuilder,
    current: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max: Duration,
}

impl Schedule {
    /// A fresh schedule.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            current: builder.build(),
            max,
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

/// The retry decision of one mailbox: a schedule per class that needs one.
#[derive(Debug)]
pub struct Retry {
    transient: Schedule,
    secret_source: Schedule,
    auth_failed: Duration,
    failed: Duration,
}

impl Retry {
    /// Fresh schedules from `[backoff]`.
    pub fn new(cfg: &BackoffConfig) -> Self {
        Self {
            transient: Schedule::new(cfg.initial, cfg.max),
            secret_source: Schedule::new(cfg.initial, cfg.secret_source_max),
            auth_failed: cfg.auth_failed,
            failed: cfg.failed,
        }
    }

    /// How long to wait after an error of `class`. `suggested` is the server's own delay
    /// (throttling), which replaces the schedule's.
    pub fn after(&mut self, class: ErrorClass, suggested: Option<Duration>) -> Duration {
        let scheduled = match class {
            ErrorClass::Transient => self.transient.next_delay(),
            ErrorClass::SecretSource => self.secret_source.next_delay(),
            ErrorClass::Credentials => self.auth_failed,
            ErrorClass::ConfigOrServer => self.failed,
        };
        suggested.unwrap_or(scheduled)
    }

    /// After a healthy stretch, the growing schedules start over.
    pub fn reset(&mut self) {
        self.transient.reset();
        self.secret_source.reset();
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
            secret_source_max: Duration::from_secs(300),
            failed: Duration::from_secs(900),
        }
    }

    fn schedule() -> Schedule {
        Schedule::new(cfg().initial, cfg().max)
    }

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut s = schedule();
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
        let mut s = schedule();
        for _ in 0..10 {
            s.next_delay();
        }
        s.reset();
        assert!(s.next_delay() <= Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads_delays() {
        let firsts: std::collections::HashSet<_> = (0..20)
            .map(|_| schedule().next_delay().as_millis())
            .collect();
        assert!(firsts.len() > 1, "no jitter: {firsts:?}");
    }

    #[test]
    fn each_class_has_its_schedule_and_state() {
        let mut cfg = cfg();
        cfg.secret_source_max = Duration::from_secs(5);
        let mut r = Retry::new(&cfg);
        assert_eq!(
            r.after(ErrorClass::Credentials, None),
            Duration::from_secs(900)
        );
        assert_eq!(
            r.after(ErrorClass::ConfigOrServer, None),
            Duration::from_secs(900)
        );
        let secret: Vec<_> = (0..10)
            .map(|_| r.after(ErrorClass::SecretSource, None))
            .collect();
        assert!(
            secret.iter().all(|d| *d <= Duration::from_secs(5)),
            "{secret:?}"
        );
        assert!(r.after(ErrorClass::Transient, None) <= Duration::from_secs(2));
        assert_eq!(
            r.after(ErrorClass::Transient, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500),
            "a server's suggested delay replaces the schedule"
        );
        assert_eq!(
            ErrorClass::ConfigOrServer.waiting_state(),
            MailboxState::Failed
        );
        assert_eq!(
            ErrorClass::Credentials.waiting_state(),
            MailboxState::AuthFailed
        );
        assert_eq!(
            ErrorClass::SecretSource.waiting_state(),
            MailboxState::Backoff
        );
    }
}
