//! What the server offers, and what this connection has enabled: the catch-up path (QRESYNC,
//! CONDSTORE only, or neither) is chosen from this, never from the server's name.
//!
//! One `CAPABILITY` after login, then at most one `ENABLE` for everything wanted that is
//! offered: `QRESYNC` (which implies CONDSTORE, RFC 7162 §3.2.3), else `CONDSTORE`, plus
//! `UTF8=ACCEPT` (RFC 6855) when asked. What counts is what the server confirms in
//! `* ENABLED`, not what it advertised.

use std::time::Duration;

use async_imap::imap_proto::{Capability, Response, Status};

use super::{bye, received, ImapError, Session};

/// What this connection can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// QRESYNC is enabled: changes carry UIDs (`VANISHED`, `FETCH (UID …)`), and SELECT takes
    /// the `(QRESYNC …)` parameter.
    pub qresync: bool,
    /// CONDSTORE is usable: MODSEQ, HIGHESTMODSEQ, `CHANGEDSINCE`. True whenever `qresync` is.
    pub condstore: bool,
    /// `UTF8=ACCEPT` is enabled: mailbox names go as UTF-8.
    pub utf8_accept: bool,
    /// The server offers OBJECTID (RFC 8474): `EMAILID` and `THREADID` can be fetched.
    pub objectid: bool,
    /// The server offers `X-GM-EXT-1` (Gmail): `X-GM-MSGID` and `X-GM-THRID` can be fetched.
    pub gmail: bool,
    /// The server offers MOVE (RFC 6851): actions move with `UID MOVE`.
    pub moves: bool,
    /// The server offers UIDPLUS (RFC 4315): `UID EXPUNGE` of chosen UIDs, and COPYUID.
    pub uidplus: bool,
}

/// CAPABILITY (one round trip), then one ENABLE for what is offered: QRESYNC (which implies
/// CONDSTORE), else CONDSTORE, plus UTF8=ACCEPT when `want_utf8`. Caps reports what is
/// ENABLED/usable, read from `* ENABLED`. Bounded by `t`.
///
/// A tagged NO or BAD to CAPABILITY counts as offering nothing (a bare IMAP4rev1 server). A
/// server that offers CONDSTORE without ENABLE gets no ENABLE; CONDSTORE is then usable
/// through `SELECT mb (CONDSTORE)`, which enables it (RFC 7162 §3.1). A tagged NO or BAD to
/// ENABLE enables nothing; it is not an error.
pub async fn negotiate(
    session: &mut Session,
    want_utf8: bool,
    t: Duration,
) -> Result<Caps, ImapError> {
    negotiate_with(session, true, want_utf8, t).await
}

/// [`negotiate`], asking for QRESYNC/CONDSTORE only when `want_sync`.
pub(crate) async fn negotiate_with(
    session: &mut Session,
    want_sync: bool,
    want_utf8: bool,
    t: Duration,
) -> Result<Caps, ImapError> {
    let work = async {
        let offered = match session.capabilities().await {
            Ok(offered) => Some(offered),
            // A server that refuses CAPABILITY offers nothing beyond IMAP4rev1.
            Err(async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let has = |c: &str| offered.as_ref().is_some_and(|o| o.has_str(c));
        let mut caps = Caps {
            objectid: has("OBJECTID"),
            gmail: has("X-GM-EXT-1"),
            moves: has("MOVE"),
            uidplus: has("UIDPLUS"),
            ..Caps::default()
        };
        let mut wanted: Vec<&'static str> = Vec::new();
        if want_sync && has("QRESYNC") {
            wanted.push("QRESYNC");
        } else if want_sync && has("CONDSTORE") {
            wanted.push("CONDSTORE");
        }
        if want_utf8 && has("UTF8=ACCEPT") {
            wanted.push("UTF8=ACCEPT");
        }
        if !has("ENABLE") {
            caps.condstore = want_sync && has("CONDSTORE");
            return Ok(caps);
        }
        if wanted.is_empty() {
            return Ok(caps);
        }
        let enabled = enable(session, &wanted).await?;
        let on = |c: &str| enabled.iter().any(|e| e.eq_ignore_ascii_case(c));
        caps.qresync = on("QRESYNC");
        caps.condstore = caps.qresync || on("CONDSTORE");
        caps.utf8_accept = on("UTF8=ACCEPT");
        Ok(caps)
    };
    match tokio::time::timeout(t, work).await {
        Ok(r) => r,
        Err(_) => Err(ImapError::Timeout("CAPABILITY/ENABLE")),
    }
}

/// `ENABLE <wanted>`: the capabilities the server confirmed in `* ENABLED` (none on a tagged
/// NO or BAD).
async fn enable(session: &mut Session, wanted: &[&str]) -> Result<Vec<String>, ImapError> {
    let tag = session
        .run_command(format!("ENABLE {}", wanted.join(" ")))
        .await?;
    let mut enabled = Vec::new();
    loop {
        let resp = received(session.read_response().await, "ENABLE")?;
        match resp.parsed() {
            // `* ENABLED …` parses as a capability list. Only what was asked for counts.
            Response::Capabilities(list) => {
                for c in list {
                    if let Capability::Atom(a) = c {
                        if wanted.iter().any(|w| w.eq_ignore_ascii_case(a)) {
                            enabled.push(a.to_string());
                        }
                    }
                }
            }
            Response::Done {
                tag: done, status, ..
            } if *done == tag => {
                if *status != Status::Ok {
                    enabled.clear();
                }
                return Ok(enabled);
            }
            Response::Data {
                status: Status::Bye,
                outcome,
            } => return Err(bye(outcome)),
            // No mailbox is selected yet: nothing else matters.
            _ => {}
        }
    }
}
