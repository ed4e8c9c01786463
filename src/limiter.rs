//! Connection attempts per host, spread out in time.
//!
//! Every mailbox of a host takes a slot before it connects; slots are `1/rate` apart. A start-up
//! or a server restart with 1,000 mailboxes on one host then logs in at the configured rate
//! instead of all in the same second (providers throttle, Dovecot's login processes queue).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Shared by every mailbox of a daemon.
#[derive(Debug)]
pub struct ConnectLimiter {
    interval: Duration,
    next: Mutex<HashMap<String, Instant>>,
}

impl ConnectLimiter {
    /// `per_second` connection attempts per host (at least 1).
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for this host's next free slot.
    pub async fn acquire(&self, host: &str) {
        let slot = {
            // Plain map writes cannot be left half-done by a panic: a poisoned lock is usable.
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.get(host).copied().filter(|t| *t > now).unwrap_or(now);
            next.insert(host.to_string(), slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spreads_attempts_per_host() {
        let l = ConnectLimiter::new(10);
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire("a").await;
        }
        // 5 attempts at 10/s: the 5th waits 400 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        // Another host has its own slots.
        let t = Instant::now();
        l.acquire("b").await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_host_starts_fresh() {
        let l = ConnectLimiter::new(2);
        l.acquire("a").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = Instant::now();
        l.acquire("a").await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
