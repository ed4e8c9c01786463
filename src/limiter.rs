//! Connection attempts per host: only so many at once, and optionally spread out in time.
//!
//! Every mailbox of a host takes a permit before it connects and keeps it until its mailbox is
//! selected. At most `max_in_flight` permits are out at a time, so a start-up or a server
//! restart with 10,000 mailboxes on one host never queues more handshakes at the server than it
//! can answer before `connect_timeout`: past that, attempts time out, back off and start over,
//! and the whole start takes longer (#5 measured ~1,000 such retries at 10,000 mailboxes without
//! the cap). The server's own pace then sets the start's pace: a permit comes free as soon as a
//! mailbox is selected.
//!
//! An operator whose provider throttles logins can add an open-loop rate, `rate` permits per
//! second per host. It is off by default (#12 item 14: 20 per second held 1,000 mailboxes back
//! for 50 s, and 10,000 for over 8 minutes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Shared by every mailbox of a daemon.
#[derive(Debug)]
pub struct ConnectLimiter {
    /// Time between two attempts to one host; `None`: no rate, only `max_in_flight`.
    interval: Option<Duration>,
    max_in_flight: usize,
    hosts: Mutex<HashMap<String, Host>>,
}

#[derive(Debug)]
struct Host {
    next: Instant,
    in_flight: Arc<Semaphore>,
}

/// Held from connect until the mailbox is selected; dropping it lets the next one in.
#[derive(Debug)]
pub struct ConnectPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ConnectLimiter {
    /// `per_second` connection attempts per host (0: no rate), `max_in_flight` of them at once
    /// (at least 1).
    pub fn new(per_second: u32, max_in_flight: u32) -> Self {
        Self {
            interval: (per_second > 0).then(|| Duration::from_secs(1) / per_second),
            max_in_flight: max_in_flight.max(1) as usize,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until fewer than `max_in_flight` attempts to this host are under way, then, with a
    /// rate set, for the host's next free slot in time.
    pub async fn acquire(&self, host: &str) -> ConnectPermit {
        let in_flight = self.host(host, |h| Arc::clone(&h.in_flight));
        // The semaphore is never closed, so this is always a permit (`None` would only lift
        // the cap, never fail an attempt).
        let permit = in_flight.acquire_owned().await.ok();
        if let Some(interval) = self.interval {
            let slot = self.host(host, |h| {
                let slot = h.next.max(Instant::now());
                h.next = slot + interval;
                slot
            });
            tokio::time::sleep_until(slot).await;
        }
        ConnectPermit { _permit: permit }
    }

    fn host<T>(&self, host: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        // Plain map writes cannot be left half-done by a panic: a poisoned lock is usable.
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let h = hosts.entry(host.to_string()).or_insert_with(|| Host {
            next: Instant::now(),
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
        });
        f(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #12 item 14: the default `connects_per_second = 20` capped a start (or a failover) at
    /// 20 mailboxes a second, though `max_connecting` already bounds the handshakes in flight.
    /// With the defaults, a host's first `max_connecting` attempts must all start at once.
    #[tokio::test(start_paused = true)]
    async fn coming_online_with_defaults_is_not_paced() {
        let d = crate::config::ImapTimers::default();
        let l = ConnectLimiter::new(d.connects_per_second, d.max_connecting);
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..d.max_connecting {
            held.push(l.acquire("a").await);
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "{} attempts were spread out in time",
            held.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn spreads_attempts_per_host() {
        let l = ConnectLimiter::new(10, 100);
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
        let l = ConnectLimiter::new(2, 100);
        l.acquire("a").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = Instant::now();
        l.acquire("a").await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn caps_attempts_under_way_per_host() {
        let l = Arc::new(ConnectLimiter::new(1000, 2));
        let a = l.acquire("a").await;
        let _b = l.acquire("a").await;
        // A third attempt to the same host waits for a permit; another host does not.
        let third = tokio::spawn({
            let l = Arc::clone(&l);
            async move { l.acquire("a").await }
        });
        let _other = l.acquire("b").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !third.is_finished(),
            "a third attempt got in while two were under way"
        );
        drop(a);
        let t = Instant::now();
        let _c = third.await.expect("the waiting attempt completes");
        assert!(t.elapsed() <= Duration::from_millis(1), "{:?}", t.elapsed());
    }
}
