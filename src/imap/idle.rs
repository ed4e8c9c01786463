//! IDLE driven by hand: [`enter`] sends `IDLE` and waits for `+`, [`Idling::wait`] waits for
//! news and may be called again and again without leaving IDLE (the caller applies changes
//! to the store in between), [`Idling::done`] sends `DONE` and hands the session back.
//!
//! Every untagged response, before `+`, in IDLE and during `DONE`, goes through
//! [`View::absorb`] in order. Nothing is parked on async-imap's unsolicited channel (100
//! entries, dropped when full), so a storm of 10,000 flag changes loses none of them.
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
//! An `EXISTS` read before `+ idling`, during `DONE` or during a FETCH stays in the view
//! ([`View::take_new_mail`]) until something acts on it: [`Idling::wait`] returns
//! [`IdleEvent::NewMail`] at once while one waits.
//!
//! # Coalescing
//! After the first change, [`Idling::wait`] keeps absorbing for [`COALESCE`] while responses
//! keep coming, up to [`MAX_PENDING`] changed messages, so a storm becomes a few batches.
//!
//! While idle, nothing is written to the socket.

use std::time::Duration;

use async_imap::error::{Error as ProtoError, ParseError};
use async_imap::imap_proto::{Outcome, RequestId, Response, Status};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::view::{Absorbed, View};
use super::{bye, deadline, received, ImapError, Session};

/// How long after the first change [`Idling::wait`] keeps absorbing before it reports
/// [`IdleEvent::Changed`].
pub const COALESCE: Duration = Duration::from_millis(25);

/// Changed messages in [`View::pending`] at which [`Idling::wait`] reports at once.
pub const MAX_PENDING: usize = 2_000;

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
    /// The API queued actions for this mailbox (#19): leave IDLE and run them.
    Actions,
}

/// A session in IDLE: the server accepted `IDLE` and `DONE` has not been sent.
///
/// The session moves in and out by value: on error it is dropped, so a broken connection is
/// never reused.
#[derive(Debug)]
pub struct Idling {
    /// The session, in IDLE.
    session: Session,
    /// The tag of the `IDLE` command, which `DONE`'s tagged reply carries.
    tag: RequestId,
    /// When IDLE was entered: the renew timer counts from here, across every wait.
    since: Instant,
    /// When the server last sent anything.
    heard: Instant,
    /// The last [`Idling::wait`] ended to probe a silence: an unanswered `DONE` then means a
    /// dead connection.
    probe: bool,
}

/// Sends `IDLE` and waits for `+` (bounded by `done_timeout`). Responses before `+` go to
/// `view`; an `EXISTS` among them makes the first [`Idling::wait`] return at once. `entered`
/// runs once the server has accepted IDLE.
pub async fn enter(
    session: Session,
    view: &mut View,
    timers: IdleTimers,
    entered: impl FnOnce(),
) -> Result<Idling, ImapError> {
    // Boxed: inline, this would set the size of every idle mailbox's task for the whole wait.
    let idling = deadline(
        timers.done_timeout,
        "IDLE start",
        Box::pin(start(session, view)),
    )
    .await?;
    entered();
    Ok(idling)
}

/// `IDLE` up to its continuation.
async fn start(mut session: Session, view: &mut View) -> Result<Idling, ImapError> {
    let tag = session.run_command("IDLE").await?;
    // Bounded by the caller's deadline.
    loop {
        let resp = received(session.read_response().await, "IDLE start")?;
        match resp.parsed() {
            Response::Continue { .. } => break,
            Response::Done {
                tag: t,
                status,
                outcome,
            } if *t == tag => return Err(refused("IDLE", status, outcome)),
            other => {
                untagged(other, view)?;
            }
        }
    }
    let now = Instant::now();
    Ok(Idling {
        session,
        tag,
        since: now,
        heard: now,
        probe: false,
    })
}

impl Idling {
    /// Waits for news, still in IDLE afterwards (nothing is sent):
    /// - [`IdleEvent::NewMail`] when an `EXISTS` was absorbed (also one absorbed before `+`,
    ///   or one the view still holds from an earlier command); changes may be pending too;
    /// - [`IdleEvent::Changed`] when `view.pending` holds changed messages (also ones left
    ///   from before), once no more responses come within [`COALESCE`] of the first change or
    ///   [`MAX_PENDING`] are waiting. Apply `view.pending` and call `wait` again;
    /// - [`IdleEvent::Renew`] on the renew timer, or after `dead_after` of silence from a
    ///   server not known to send keepalives (a probe: call [`Idling::done`], whose
    ///   unanswered `DONE` is then [`ImapError::Dead`]);
    /// - [`IdleEvent::Shutdown`] on `cancel` (before anything else, when already cancelled).
    ///
    /// `* BYE` is an error; silence past `dead_after` from a server that sends keepalives is
    /// [`ImapError::Dead`]. `liveness` belongs to the connection: pass the same one every
    /// time.
    pub async fn wait(
        &mut self,
        view: &mut View,
        timers: IdleTimers,
        liveness: &mut Liveness,
        cancel: &CancellationToken,
        actions: &tokio::sync::Notify,
    ) -> Result<IdleEvent, ImapError> {
        self.probe = false;
        if cancel.is_cancelled() {
            return Ok(IdleEvent::Shutdown);
        }
        if let Some(at) = view.take_new_mail() {
            return Ok(IdleEvent::NewMail { at });
        }
        // Changed messages, not `is_empty`: a HIGHESTMODSEQ alone is no news.
        #[allow(clippy::len_zero)]
        if view.pending.len() > 0 {
            return Ok(IdleEvent::Changed);
        }
        let renew_at = self.since + timers.renew;
        loop {
            tokio::select! {
                biased;
                // Polling the stream again after another branch won loses nothing: a partly
                // read response stays in async-imap's buffer.
                resp = self.session.read_response() => {
                    let resp = received(resp, "IDLE")?;
                    self.heard = Instant::now();
                    match self.in_idle(resp.parsed(), view, liveness)? {
                        Absorbed::Nothing => {}
                        Absorbed::Exists(_) => return Ok(self.new_mail(view)),
                        Absorbed::Change => {
                            return Box::pin(self.coalesce(view, liveness)).await;
                        }
                    }
                }
                _ = cancel.cancelled() => return Ok(IdleEvent::Shutdown),
                _ = actions.notified() => return Ok(IdleEvent::Actions),
                // One timer for both deadlines: each costs an idle mailbox its size.
                _ = tokio::time::sleep_until(renew_at.min(self.heard + timers.dead_after)) => {
                    if renew_at <= self.heard + timers.dead_after {
                        return Ok(IdleEvent::Renew);
                    }
                    if liveness.keepalives {
                        return Err(ImapError::Dead);
                    }
                    self.probe = true;
                    return Ok(IdleEvent::Renew);
                }
            }
        }
    }

    /// After a first change: keeps absorbing while responses come, for [`COALESCE`] and up
    /// to [`MAX_PENDING`] changed messages.
    async fn coalesce(
        &mut self,
        view: &mut View,
        liveness: &mut Liveness,
    ) -> Result<IdleEvent, ImapError> {
        let until = Instant::now() + COALESCE;
        // Bounded by the window and by the number of pending changes.
        while view.pending.len() < MAX_PENDING {
            let Ok(read) = tokio::time::timeout_at(until, self.session.read_response()).await
            else {
                break;
            };
            let resp = received(read, "IDLE")?;
            self.heard = Instant::now();
            if let Absorbed::Exists(_) = self.in_idle(resp.parsed(), view, liveness)? {
                return Ok(self.new_mail(view));
            }
        }
        Ok(IdleEvent::Changed)
    }

    /// New mail, as of the first EXISTS the view holds.
    fn new_mail(&self, view: &mut View) -> IdleEvent {
        IdleEvent::NewMail {
            at: view.take_new_mail().unwrap_or(self.heard),
        }
    }

    /// One response read in IDLE.
    fn in_idle(
        &self,
        resp: &Response<'_>,
        view: &mut View,
        liveness: &mut Liveness,
    ) -> Result<Absorbed, ImapError> {
        match resp {
            Response::Done {
                tag,
                status,
                outcome,
            } if *tag == self.tag => Err(match status {
                // The server left IDLE on its own: the connection is in an unknown state.
                Status::Ok => {
                    ProtoError::Parse(ParseError::Unexpected("IDLE ended without DONE".into()))
                        .into()
                }
                _ => refused("IDLE", status, outcome),
            }),
            Response::Data {
                status: Status::Ok, ..
            } => {
                liveness.keepalives = true;
                untagged(resp, view)
            }
            _ => {
                let absorbed = untagged(resp, view)?;
                if absorbed != Absorbed::Nothing {
                    tracing::debug!(response = ?resp, "IDLE: server news");
                }
                Ok(absorbed)
            }
        }
    }

    /// Sends `DONE` and absorbs every response up to the tagged OK. When the last
    /// [`Idling::wait`] probed a silence, an answer missing after `done_timeout` is
    /// [`ImapError::Dead`]; otherwise it is `Timeout("DONE")`. An `EXISTS` read meanwhile
    /// stays in the view ([`View::take_new_mail`]).
    pub async fn done(self, view: &mut View, timers: IdleTimers) -> Result<Session, ImapError> {
        let probe = self.probe;
        // Boxed, like `enter`.
        match tokio::time::timeout(timers.done_timeout, Box::pin(self.finish(view))).await {
            Ok(done) => done,
            // The server was silent for dead_after and does not answer DONE either.
            Err(_) if probe => Err(ImapError::Dead),
            Err(_) => Err(ImapError::Timeout("DONE")),
        }
    }

    /// `DONE` up to its tagged reply.
    async fn finish(mut self, view: &mut View) -> Result<Session, ImapError> {
        self.session.run_command_untagged("DONE").await?;
        // Bounded by the caller's deadline.
        loop {
            let resp = received(self.session.read_response().await, "DONE")?;
            match resp.parsed() {
                Response::Done {
                    tag,
                    status,
                    outcome,
                } if *tag == self.tag => {
                    return match status {
                        Status::Ok => Ok(self.session),
                        _ => Err(refused("DONE", status, outcome)),
                    };
                }
                other => {
                    untagged(other, view)?;
                }
            }
        }
    }
}

/// An untagged response into the view; `* BYE` is an error.
fn untagged(resp: &Response<'_>, view: &mut View) -> Result<Absorbed, ImapError> {
    if let Response::Data {
        status: Status::Bye,
        outcome,
    } = resp
    {
        return Err(bye(outcome));
    }
    Ok(view.absorb(resp))
}

/// A tagged NO or BAD to `IDLE` (or to its `DONE`): throttling where the server says so.
fn refused(command: &'static str, status: &Status, outcome: &Outcome<'_>) -> ImapError {
    if let Some(throttled) = super::throttle::refusal(command, outcome) {
        return throttled;
    }
    let text = outcome.information.as_deref().unwrap_or("").to_string();
    match status {
        Status::No => ProtoError::No(text),
        _ => ProtoError::Bad(text),
    }
    .into()
}

/// The scripted server of the IDLE and FETCH unit tests (declared once, here).
#[cfg(test)]
#[path = "test_server.rs"]
pub(crate) mod test_server;

#[cfg(test)]
#[path = "idle_tests.rs"]
mod tests;
