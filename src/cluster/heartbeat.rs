//! The lease loop's `/readyz` side: heartbeat current, share held.

use std::time::Duration;

use tokio::time::Instant;

/// When this replica last renewed its leases, for `/readyz`: a replica whose heartbeat is not
/// current is not part of the cluster, whatever its mailboxes say.
#[derive(Debug, Default)]
pub struct Heartbeat {
    pub(super) renewed: std::sync::Mutex<Option<Instant>>,
    pub(super) ttl: Duration,
    /// Set once this replica first held its share (or waited `lease_ttl + renew_every` for
    /// it): a pod is not ready before, so a rolling update does not retire the old pods
    /// before the new ones took over their mailboxes (which would move them twice, #22).
    pub(super) took: std::sync::atomic::AtomicBool,
}

impl Heartbeat {
    /// `None` when the heartbeat is current; otherwise why not.
    pub fn problem(&self) -> Option<String> {
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        match renewed {
            None => Some("cluster: not joined yet (no lease round has succeeded)".into()),
            Some(_) if !self.took.load(std::sync::atomic::Ordering::Relaxed) => {
                Some("cluster: joined, not yet holding its share of the mailboxes".into())
            }
            Some(t) if t.elapsed() >= self.ttl => Some(format!(
                "cluster: leases not renewed for {} s (lease_ttl {} s)",
                t.elapsed().as_secs(),
                self.ttl.as_secs()
            )),
            Some(_) => None,
        }
    }

    pub(super) fn set(&self, at: Instant) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }
}
