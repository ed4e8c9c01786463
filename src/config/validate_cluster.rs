//! Semantic checks of `[cluster]` (#13), part of `Config::validate` (validate.rs).

use std::time::Duration;

use super::{Config, Seg};
use crate::cluster::timing::{call_timeout, margin, MIN_CALL_TIMEOUT};

impl Config {
    /// `[cluster]`: PostgreSQL when enabled, a renewal before expiry, a usable `node_id`. The
    /// timers and `node_id` are checked even while disabled, so turning it on later cannot
    /// surface a mistake made earlier.
    pub(super) fn cluster_problems(&self, out: &mut Vec<(Vec<Seg<'static>>, String)>) {
        let c = &self.cluster;
        let at = |key: &'static str| vec![Seg::Key("cluster"), Seg::Key(key)];
        if c.enabled && self.storage.url.starts_with("sqlite:") {
            out.push((
                at("enabled"),
                format!(
                    "cluster mode needs PostgreSQL: leases and fencing live in its tables, \
                     shared by every replica; storage.url is {:?}",
                    self.storage.url
                ),
            ));
        }
        if c.lease_ttl.is_zero() {
            out.push((at("lease_ttl"), "must be more than 0 (e.g. \"30s\")".into()));
        } else if c.renew_every.is_zero() || c.renew_every >= c.lease_ttl {
            out.push((
                at("renew_every"),
                format!(
                    "must be more than 0 and less than cluster.lease_ttl ({}): a lease must be \
                     renewed before it expires, or another replica takes the mailbox; \
                     lease_ttl/3 or less ({}) survives a missed renewal",
                    human(c.lease_ttl),
                    human(c.lease_ttl / 3)
                ),
            ));
        } else if call_timeout(c.lease_ttl, c.renew_every) < MIN_CALL_TIMEOUT {
            // A renewal sent on time must be able to end before the replica has to stop its
            // mailboxes (lease_ttl - margin after the last renewal), #22.
            out.push((
                at("lease_ttl"),
                format!(
                    "{} cannot hold renew_every ({}), a renewal of at least {} and the {} \
                     margin before expiry: a replica that cannot renew stops its mailboxes \
                     at lease_ttl - margin; raise lease_ttl or lower renew_every",
                    human(c.lease_ttl),
                    human(c.renew_every),
                    human(MIN_CALL_TIMEOUT),
                    human(margin(c.lease_ttl))
                ),
            ));
        }
        if let Some(id) = &c.node_id {
            let problem = if id.is_empty() {
                Some("must not be empty; leave it out for the host name and pid".to_string())
            } else if id.len() > MAX_NODE_ID_BYTES {
                Some(format!(
                    "is {} bytes; at most {MAX_NODE_ID_BYTES}",
                    id.len()
                ))
            } else if id.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                Some(format!(
                    "{id:?} must be printable, without whitespace (it names this replica in \
                     logs, /status and the lease rows)"
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                out.push((at("node_id"), p));
            }
        }
    }
}

/// Longest `cluster.node_id`, in bytes.
const MAX_NODE_ID_BYTES: usize = 200;

/// A duration as the config writes it: `"10s"`, `"1500ms"`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
