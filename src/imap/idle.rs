//! One IDLE round: `IDLE`, wait for news, `DONE`.
//!
//! # Liveness
//! Silence is normal in IDLE. Dovecot sends `* OK Still here` every 2 minutes, but Cyrus,
//! Courier and Stalwart send nothing at all, however long the IDLE. So liveness comes from what
//! the client controls:
//! - TCP keepalive ([`super::connect::open`]: probes after 60 s without traffic, 4 of them
//!   15 s apart) finds a peer whose host or path is gone, in about 2 minutes;
//! - `dead_after` of silence is answered according to what the connection has shown. Where the
//!   server has sent an untagged `* OK` during IDLE, it sends keepalives, and its silence means
//!   a dead connection ([`ImapError::Dead`]). Elsewhere the silence is probed: the client leaves
//!   IDLE with `DONE`, gives the server `done_timeout` to answer, and idles again on the same
//!   connection. An unanswered probe is a dead connection too;
//! - `renew`, an absolute timer, leaves and re-enters IDLE whatever the server sends (RFC 2177
//!   asks for < 29 min);
//! - `done_timeout` bounds `IDLE`'s continuation and every `DONE`.
//!
//! So a half-open connection (a peer that holds the TCP connection but stops answering) is found
//! at most `dead_after + done_timeout` after the last byte the server sent: 5 min 15 s with the
//! defaults, on any server. A quiet server costs one `DONE`/`IDLE` exchange per `dead_after`
//! instead of a reconnect.
//!
//! # Lost wakeups
//! async-imap's `Handle::init` parks whatever arrives before `+ idling` on the session's
//! unsolicited channel. That channel is looked at right after `init()`: an `EXISTS` there ends
//! the round at once instead of waiting for the next event. What arrives after the first news
//! (and during `DONE`) lands there too and is drained after `DONE`.
//!
//! While idle, nothing is written to the socket.

use std::time::Duration;

use async_imap::extensions::idle::Handle;
use async_imap::imap_proto::{MailboxDatum, Response, Status};
use async_imap::types::UnsolicitedResponse;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{bye, deadline, received, ImapError, Io, Session};

/// The timers of one IDLE round.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimers {
    /// Absolute re-IDLE interval.
    pub renew: Duration,
    /// Silence after which the connection is declared dead (where the server sends
    /// keepalives) or probed with `DONE` (where it has not shown that it does).
    pub dead_after: Duration,
    /// Bound on `IDLE`'s continuation and on `DONE`.
    pub done_timeout: Duration,
}

/// What one connection has shown about its server, kept across its IDLE rounds. Start each
/// connection with the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness {
    /// The server sent an untagged `* OK` during IDLE on this connection: it sends keepalives,
    /// so silence past `dead_after` means the connection is dead.
    keepalives: bool,
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
    /// The renew timer fired, or a quiet server answered the `DONE` that probed its silence.
    Renew,
    /// Shutdown was requested; IDLE was left cleanly.
    Shutdown,
}

impl IdleEvent {
    /// Which of two reasons wins: shutdown, then new mail (the earliest), then changes.
    fn merge(self, other: IdleEvent) -> IdleEvent {
        let rank = |e: &IdleEvent| match e {
            IdleEvent::Renew => 0,
            IdleEvent::Changed => 1,
            IdleEvent::NewMail { .. } => 2,
            IdleEvent::Shutdown => 3,
        };
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Runs one IDLE round and hands the session back after `DONE`.
///
/// The session moves in and out by value: on error it is dropped, so a broken connection is
/// never reused. `liveness` belongs to the connection: pass the same one to every round.
/// `entered` runs once the server has accepted IDLE.
pub async fn idle(
    session: Session,
    timers: IdleTimers,
    liveness: &mut Liveness,
    cancel: &CancellationToken,
    entered: impl FnOnce(),
) -> Result<(Session, IdleEvent), ImapError> {
    // The session is inside the handle until DONE; a second receiver sees what init() parks.
    let parked = session.unsolicited_responses.clone();
    let mut handle = session.idle();
    // init() and done() are boxed: inline, the larger of them would set the size of every
    // idle mailbox's task for the whole wait (#5).
    deadline(timers.done_timeout, "IDLE start", Box::pin(handle.init())).await?;
    entered();
    let (event, probe) = match drain(|| parked.try_recv().ok(), None)? {
        Some(early) => (early, false),
        None => wait(&mut handle, timers, liveness, cancel).await?,
    };
    drop(parked);

    let session = match tokio::time::timeout(timers.done_timeout, Box::pin(handle.done())).await {
        Ok(done) => done?,
        // The server was silent for dead_after and does not answer DONE either.
        Err(_) if probe => return Err(ImapError::Dead),
        Err(_) => return Err(ImapError::Timeout("DONE")),
    };
    // The unsolicited channel drops silently when full: drain it every round.
    let rx = &session.unsolicited_responses;
    let event = drain(|| rx.try_recv().ok(), Some(event))?.unwrap_or(event);
    Ok((session, event))
}

/// Waits in IDLE for news, a timer or shutdown. The flag says whether the round ended to probe
/// a silence (so an unanswered `DONE` means a dead connection).
async fn wait(
    handle: &mut Handle<Box<dyn Io>>,
    timers: IdleTimers,
    liveness: &mut Liveness,
    cancel: &CancellationToken,
) -> Result<(IdleEvent, bool), ImapError> {
    let renew_at = Instant::now() + timers.renew;
    // `+ idling` was the last thing heard.
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            // Polling the stream again after another branch won loses nothing: a partly read
            // response stays in async-imap's buffer.
            resp = handle.next() => {
                let resp = received(resp.transpose(), "IDLE")?;
                heard = Instant::now();
                if let Response::Data { status: Status::Ok, .. } = resp.parsed() {
                    liveness.keepalives = true;
                }
                if let Some(event) = news(resp.parsed())? {
                    tracing::debug!(response = ?resp.parsed(), "IDLE: server news");
                    return Ok((event, false));
                }
            }
            _ = cancel.cancelled() => return Ok((IdleEvent::Shutdown, false)),
            // One timer for both deadlines: each costs an idle mailbox its size.
            _ = tokio::time::sleep_until(renew_at.min(heard + timers.dead_after)) => {
                if renew_at <= heard + timers.dead_after {
                    return Ok((IdleEvent::Renew, false));
                }
                if liveness.keepalives {
                    return Err(ImapError::Dead);
                }
                return Ok((IdleEvent::Renew, true));
            }
        }
    }
}

/// Folds what waits on an unsolicited channel (read by `next`) into `event`. The channel holds
/// at most 100 entries and nothing is added while it is drained, so this ends.
fn drain(
    mut next: impl FnMut() -> Option<UnsolicitedResponse>,
    mut event: Option<IdleEvent>,
) -> Result<Option<IdleEvent>, ImapError> {
    while let Some(u) = next() {
        let found = match u {
            UnsolicitedResponse::Exists(_) => Some(IdleEvent::NewMail { at: Instant::now() }),
            UnsolicitedResponse::Expunge(_) => Some(IdleEvent::Changed),
            UnsolicitedResponse::Recent(_) | UnsolicitedResponse::Status { .. } => None,
            UnsolicitedResponse::Other(data) => news(data.parsed())?,
        };
        event = match (event, found) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(event)
}

/// What a server response means for an idle mailbox: `None` for no news (keepalives and other
/// status lines, RECENT, continuations), an error for `* BYE`.
fn news(resp: &Response<'_>) -> Result<Option<IdleEvent>, ImapError> {
    match resp {
        Response::MailboxData(MailboxDatum::Exists(_)) => {
            Ok(Some(IdleEvent::NewMail { at: Instant::now() }))
        }
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Err(bye(outcome)),
        Response::Data { .. }
        | Response::Continue { .. }
        | Response::Done { .. }
        | Response::MailboxData(MailboxDatum::Recent(_)) => Ok(None),
        _ => Ok(Some(IdleEvent::Changed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &[u8]) -> Response<'_> {
        Response::parse(line).expect("parses").1
    }

    #[test]
    fn exists_is_new_mail_and_bye_is_an_error() {
        let r = parsed(b"* 7 EXISTS\r\n");
        assert!(matches!(news(&r), Ok(Some(IdleEvent::NewMail { .. }))));
        let r = parsed(b"* BYE shutting down\r\n");
        assert!(matches!(news(&r), Err(ImapError::Closed(m)) if m == "shutting down"));
        let r = parsed(b"* 3 EXPUNGE\r\n");
        assert_eq!(news(&r).unwrap(), Some(IdleEvent::Changed));
        for quiet in [
            &b"* OK Still here\r\n"[..],
            b"* 4 RECENT\r\n",
            b"+ idling\r\n",
        ] {
            assert_eq!(news(&parsed(quiet)).unwrap(), None, "{quiet:?}");
        }
    }

    #[test]
    fn parked_news_is_merged_and_shutdown_wins() {
        let mut parked = vec![
            UnsolicitedResponse::Recent(1),
            UnsolicitedResponse::Expunge(2),
            UnsolicitedResponse::Exists(5),
        ];
        let ev = drain(|| parked.pop(), None).unwrap();
        assert!(matches!(ev, Some(IdleEvent::NewMail { .. })), "{ev:?}");
        assert_eq!(drain(|| None, None).unwrap(), None);
        let mut parked = vec![UnsolicitedResponse::Exists(5)];
        let ev = drain(|| parked.pop(), Some(IdleEvent::Shutdown)).unwrap();
        assert_eq!(ev, Some(IdleEvent::Shutdown));
        assert_eq!(
            IdleEvent::Renew.merge(IdleEvent::Changed),
            IdleEvent::Changed
        );
    }
}
