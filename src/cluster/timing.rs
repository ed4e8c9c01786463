//! The lease loop's timing rules (pure), shared with `check` (`validate_cluster.rs`).
//!
//! A replica that renewed at `renewed_at` (its own monotonic clock, taken before the renewal
//! was sent, so never later than the database's) stops every mailbox at
//! `renewed_at + lease_ttl - margin`, whatever its store calls are doing: after that another
//! replica may take the leases. Each store call of a round is capped at that deadline, and
//! otherwise at [`call_timeout`].

use std::time::Duration;

/// Longest any one database call of a round may take, when `lease_ttl` leaves room for it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest call budget `check` accepts: `lease_ttl` must hold `renew_every`, the
/// [`margin`] and at least this for the renewal itself.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long before `lease_ttl` runs out (by this replica's clock) it stops its mailboxes when
/// it could not renew: a tenth of the ttl, at most a second.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(1))
}

/// The budget of one store call: what `lease_ttl` leaves after `renew_every` and the
/// [`margin`], at most [`CALL_TIMEOUT`]. A renewal sent on time then ends (or times out)
/// before the deadline.
pub fn call_timeout(ttl: Duration, renew_every: Duration) -> Duration {
    ttl.saturating_sub(renew_every)
        .saturating_sub(margin(ttl))
        .min(CALL_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_call_budget_fits_between_a_renewal_and_the_deadline() {
        assert_eq!(call_timeout(s(30.0), s(10.0)), CALL_TIMEOUT);
        assert_eq!(call_timeout(s(3.0), s(1.0)), s(1.7));
        assert_eq!(call_timeout(s(3.0), s(3.0)), Duration::ZERO);
        for (ttl, every) in [(30.0, 10.0), (3.0, 1.0), (9.0, 3.0), (6.0, 2.0)] {
            let (ttl, every) = (s(ttl), s(every));
            assert!(every + call_timeout(ttl, every) + margin(ttl) <= ttl);
        }
    }
}
