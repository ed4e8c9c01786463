//! Actions (#19) between the API and the mailbox tasks: who is woken when an action is
//! queued, how its outcome is announced to a request waiting on it ([`signals`]), which
//! commands a mailbox's queued steps become ([`plan`], pure), and the sweeper that fails what
//! nobody ran in time ([`sweeper`]). The queue itself is the store's (`store/actions.rs`);
//! running it on the mailbox's own connection is the mailbox task's (`mailbox/actions.rs`).

pub mod plan;
pub mod signals;
pub mod sweeper;

pub use signals::Signals;
