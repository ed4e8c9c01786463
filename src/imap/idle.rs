//! One IDLE round: `IDLE`, wait for news, `DONE`.
//!
//! Three timers, because async-imap's own timeout is an inactivity timer that every
//! `* OK Still here` resets:
//! - `dead_after`: nothing at all from the server for this long means the connection is dead
//!   (async-imap's inactivity timeout does exactly this);
//! - `renew`: an absolute timer that leaves and re-enters IDLE (RFC 2177 asks for < 29 min);
//! - `done_timeout`: bounds `DONE`, which can hang on a dead connection.
//!
//! While idle, nothing is written to the socket.

use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{MailboxDatum, Response, Status};
use async_imap::types::UnsolicitedResponse;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{deadline, ImapError, Session};

/// The timers of one IDLE round.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimers {
    /// Absolute re-IDLE interval.
    pub renew: Duration,
    /// Silence after which the connection is declared dead.
    pub dead_after: Duration,
    /// Bound on `IDLE`'s continuation and on `DONE`.
    pub done_timeout: Duration,
}

/// Why an IDLE round ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEvent {
    /// `* N EXISTS` arrived; `at` is when it was read off the socket.
    NewMail {
        /// When the EXISTS was read.
        at: Instant,
    },
    /// Something else changed (flags, expunges); nothing to fetch.
    Changed,
    /// The renew timer fired.
    Renew,
    /// Shutdown was requested; IDLE was left cleanly.
    Shutdown,
}

/// Runs one IDLE round and hands the session back after `DONE`.
///
/// The session moves in and out by value: on error it is dropped, so a broken connection is
/// never reused.
/// `entered` runs once the server has accepted IDLE.
pub async fn idle(
    session: Session,
    timers: IdleTimers,
    cancel: &CancellationToken,
    entered: impl FnOnce(),
) -> Result<(Session, IdleEvent), ImapError> {
    let mut handle = session.idle();
    // init() and done() are boxed: inline, the larger of them would set the size of every
    // idle mailbox's task for the whole wait (#5).
    deadline(timers.done_timeout, "IDLE start", Box::pin(handle.init())).await?;
    entered();
    let renew_at = Instant::now() + timers.renew;

    let event = {
        let (fut, stop) = handle.wait_with_timeout(timers.dead_after);
        tokio::pin!(fut);
        // Dropping `stop` interrupts the wait; keep it until we mean to.
        let mut stop = Some(stop);
        let mut interrupted: Option<IdleEvent> = None;
        loop {
            tokio::select! {
                biased;
                res = &mut fut => {
                    break match res? {
                        IdleResponse::NewData(data) => {
                            tracing::debug!(response = ?data.parsed(), "IDLE: server news");
                            classify(data.parsed())?
                        }
                        IdleResponse::Timeout => return Err(ImapError::Dead),
                        IdleResponse::ManualInterrupt => match interrupted {
                            Some(ev) => ev,
                            // Nobody interrupted: the server closed the stream.
                            None => return Err(ImapError::Closed("EOF during IDLE".into())),
                        },
                    };
                }
                _ = cancel.cancelled(), if interrupted.is_none() => {
                    interrupted = Some(IdleEvent::Shutdown);
                    stop.take();
                }
                _ = tokio::time::sleep_until(renew_at), if interrupted.is_none() => {
                    interrupted = Some(IdleEvent::Renew);
                    stop.take();
                }
            }
        }
    };

    let session = deadline(timers.done_timeout, "DONE", Box::pin(handle.done())).await?;
    // Responses that came after the first one (and during DONE) went to the unsolicited
    // channel, which drops silently when full: drain it every round.
    let mut event = event;
    while let Ok(u) = session.unsolicited_responses.try_recv() {
        if matches!(u, UnsolicitedResponse::Exists(_))
            && !matches!(event, IdleEvent::NewMail { .. })
        {
            event = IdleEvent::NewMail { at: Instant::now() };
        }
    }
    Ok((session, event))
}

fn classify(resp: &Response<'_>) -> Result<IdleEvent, ImapError> {
    match resp {
        Response::MailboxData(MailboxDatum::Exists(_)) => {
            Ok(IdleEvent::NewMail { at: Instant::now() })
        }
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Err(ImapError::Closed(
            outcome.information.as_deref().unwrap_or("BYE").to_string(),
        )),
        _ => Ok(IdleEvent::Changed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exists_is_new_mail_and_bye_is_an_error() {
        let (_, r) = Response::parse(b"* 7 EXISTS\r\n").unwrap();
        assert!(matches!(classify(&r), Ok(IdleEvent::NewMail { .. })));
        let (_, r) = Response::parse(b"* BYE shutting down\r\n").unwrap();
        assert!(matches!(classify(&r), Err(ImapError::Closed(m)) if m == "shutting down"));
        let (_, r) = Response::parse(b"* 3 EXPUNGE\r\n").unwrap();
        assert_eq!(classify(&r).unwrap(), IdleEvent::Changed);
    }
}
