//! Fault injection for tests: inert unless a test arms it.
//!
//! `IDLESYNC_INJECT_PANIC="account/mailbox[,account/mailbox…]"` in the environment (read once),
//! or [`inject_panic`] in-process, makes that mailbox's task panic once, after SELECT. The
//! supervisor must catch it and restart the task while the other mailboxes carry on.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

static ARMED: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(|| {
    let set = std::env::var("IDLESYNC_INJECT_PANIC")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.split_once('/'))
        .map(|(a, m)| (a.to_string(), m.to_string()))
        .collect();
    Mutex::new(set)
});

/// Arms one panic in the task of `account`/`mailbox`.
pub fn inject_panic(account: &str, mailbox: &str) {
    lock().insert((account.to_string(), mailbox.to_string()));
}

/// Panics if a panic was armed for this mailbox (once).
pub(crate) fn panic_point(account: &str, mailbox: &str) {
    let armed = lock().remove(&(account.to_string(), mailbox.to_string()));
    if armed {
        panic!("fault injection: panic in mailbox {account}/{mailbox}");
    }
}

fn lock() -> std::sync::MutexGuard<'static, HashSet<(String, String)>> {
    ARMED.lock().unwrap_or_else(|p| p.into_inner())
}
