//! `UID FETCH` of new messages, read response by response.
//!
//! async-imap's `uid_fetch` stream ends at the tagged reply whatever its status, so a tagged NO
//! looks like success with fewer messages. This reader sees the tagged status: a NO or BAD is an
//! error ([`ImapError::FetchRefused`]), so the mailbox reconnects and fetches again from the last
//! UID it stored. It also notices `* N EXISTS` arriving during the fetch, so mail delivered
//! meanwhile is fetched at once rather than at the next event.
//!
//! Every response read during the fetch goes through the connection's [`View`], in order: a
//! message with its body places its sequence number and UID (and its flags replace any earlier
//! report), while flag updates, `EXPUNGE`, `VANISHED` and `EXISTS` are absorbed as changes, so
//! an EXPUNGE that lands while a FETCH is in flight is not lost.

use std::borrow::Cow;
use std::time::Duration;

use async_imap::error::ValidateError;
use async_imap::imap_proto::{AttributeValue, RequestId, Response, Status};
use tokio_util::sync::CancellationToken;

use super::view::{Absorbed, View};
use super::{ImapError, Session};
use crate::message::ImapMeta;

/// Which optional facts to ask for with each message, by what the server advertises.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras {
    /// `MODSEQ` (CONDSTORE).
    pub modseq: bool,
    /// `EMAILID THREADID` (RFC 8474 OBJECTID).
    pub objectid: bool,
    /// `X-GM-MSGID X-GM-THRID` (Gmail's X-GM-EXT-1).
    pub gmail: bool,
}

/// What we ask for: the message without setting `\Seen`, plus its metadata and the `extras`
/// the server offers. The body is a partial fetch of at most `max_bytes` (`BODY.PEEK[]<0.N>`):
/// a message within the limit comes whole in the same single round trip, a larger one comes
/// cut at the limit, and RFC822.SIZE (in the same response) tells the two apart. No second
/// FETCH, and never more than `max_bytes` of one message on the wire or in memory.
pub fn fetch_items(max_bytes: usize, extras: Extras) -> String {
    let mut items = String::from("(UID FLAGS INTERNALDATE RFC822.SIZE ");
    if extras.modseq {
        items.push_str("MODSEQ ");
    }
    if extras.objectid {
        items.push_str("EMAILID THREADID ");
    }
    if extras.gmail {
        items.push_str("X-GM-MSGID X-GM-THRID ");
    }
    items.push_str(&format!("BODY.PEEK[]<0.{max_bytes}>)"));
    items
}

/// INTERNALDATE's format (RFC 3501 `date-time`).
const INTERNALDATE: &str = "%d-%b-%Y %H:%M:%S %z";

/// One `UID FETCH` in progress. It borrows the session (and the view) until it is dropped.
pub struct FetchRun<'a> {
    session: &'a mut Session,
    /// Where every response read goes.
    view: &'a mut View,
    tag: RequestId,
    last_uid: u32,
    /// `* N EXISTS` arrived during the fetch: more mail may be waiting.
    pub saw_exists: bool,
}

/// Sends `UID FETCH <uids>`, bodies cut at `max_bytes`, with the `extras` asked for. `uids`
/// is an IMAP sequence set (`41:*` for new mail, `3,7:9` for an `import_since` subset);
/// messages at or below `last_uid` are not handed out (the server answers `N:*` with the last
/// message even when its UID is below N). Every response read goes through `view`.
pub async fn start<'a>(
    session: &'a mut Session,
    view: &'a mut View,
    uids: &str,
    last_uid: u32,
    max_bytes: usize,
    extras: Extras,
    t: Duration,
) -> Result<FetchRun<'a>, ImapError> {
    if let Some(c) = uids
        .chars()
        .find(|c| !(c.is_ascii_digit() || matches!(c, ':' | ',' | '*')))
    {
        return Err(ImapError::Protocol(ValidateError(c).into()));
    }
    // The guard under the session refuses any literal larger than what is asked for here.
    let limit = max_bytes.saturating_add(super::guard::LITERAL_SLACK);
    super::guard::set_max_literal(&mut **session.as_mut(), limit);
    let command = format!("UID FETCH {uids} {}", fetch_items(max_bytes, extras));
    let tag = match tokio::time::timeout(t, session.run_command(command)).await {
        Ok(r) => r?,
        Err(_) => return Err(ImapError::Timeout("UID FETCH")),
    };
    if uids.ends_with('*') {
        // This fetch covers whatever an EXISTS read before it announced.
        view.take_new_mail();
    }
    Ok(FetchRun {
        session,
        view,
        tag,
        last_uid,
        saw_exists: false,
    })
}

impl FetchRun<'_> {
    /// The next new message, handed to `take` with its IMAP facts while its bytes are still in
    /// the read buffer (no copy). `Ok(None)` is the tagged OK. A stalled server is bounded by
    /// the guard under the session (no bytes for the stall deadline while the FETCH is in
    /// flight); a response that cannot be parsed is refused by it at once. `cancel` ends the
    /// wait with [`ImapError::Cancelled`]: the connection is then mid-response and must be
    /// dropped, not logged out.
    pub async fn next_until<T>(
        &mut self,
        cancel: &CancellationToken,
        take: impl FnOnce(&[u8], ImapMeta) -> T,
    ) -> Result<Option<T>, ImapError> {
        // Each turn reads one response; the stall deadline and `cancel` bound the wait.
        loop {
            let read = tokio::select! {
                r = self.session.read_response() => r,
                _ = cancel.cancelled() => return Err(ImapError::Cancelled),
            };
            let resp = match read {
                Err(e) => return Err(ImapError::Protocol(e.into())),
                Ok(None) => return Err(ImapError::Closed("EOF during UID FETCH".into())),
                Ok(Some(resp)) => resp,
            };
            let view = &mut *self.view;
            match resp.parsed() {
                Response::Fetch(seq, attrs) if has_body(attrs) => {
                    let Some((meta, body)) = parse_message(attrs) else {
                        continue;
                    };
                    view.place(*seq, meta.uid);
                    if meta.uid > self.last_uid {
                        // Its flags are newer than any earlier report.
                        view.pending.forget_flags(meta.uid);
                        return Ok(Some(take(body, meta)));
                    }
                }
                Response::Done {
                    tag,
                    status,
                    outcome,
                } if *tag == self.tag => {
                    return match status {
                        Status::Ok => Ok(None),
                        _ => Err(
                            super::throttle::refusal("UID FETCH", outcome).unwrap_or_else(|| {
                                ImapError::FetchRefused(
                                    outcome.information.as_deref().unwrap_or("").to_string(),
                                )
                            }),
                        ),
                    };
                }
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => {
                    return Err(ImapError::Closed(
                        outcome.information.as_deref().unwrap_or("BYE").to_string(),
                    ));
                }
                // Flag updates, EXPUNGE, VANISHED, EXISTS, RECENT.
                other => {
                    if let Absorbed::Exists(_) = view.absorb(other) {
                        self.saw_exists = true;
                        // Acted on by the caller through `saw_exists`.
                        view.take_new_mail();
                    }
                }
            }
        }
    }
}

/// Whether a FETCH response carries a message's body.
fn has_body(attrs: &[AttributeValue<'_>]) -> bool {
    attrs.iter().any(|a| {
        matches!(
            a,
            AttributeValue::BodySection {
                section: None,
                data: Some(_),
                ..
            } | AttributeValue::Rfc822(Some(_))
        )
    })
}

/// The facts and body of a FETCH response that is really new. The server answers `N:*` with
/// the last message even when its UID is below N, and may interleave flag updates without a
/// body: both are skipped.
pub fn new_message<'r>(
    attrs: &'r [AttributeValue<'_>],
    last_uid: u32,
) -> Option<(ImapMeta, &'r [u8])> {
    parse_message(attrs).filter(|(meta, _)| meta.uid > last_uid)
}

/// The facts and body of a FETCH response with a UID and a body.
fn parse_message<'r>(attrs: &'r [AttributeValue<'_>]) -> Option<(ImapMeta, &'r [u8])> {
    let mut meta = ImapMeta::default();
    let mut uid = None;
    let mut body: Option<&[u8]> = None;
    let mut gm_msgid = None;
    let mut gm_thrid = None;
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Flags(flags) => meta.flags = flags_text(flags),
            AttributeValue::InternalDate(d) => {
                meta.internal_date_ms = chrono::DateTime::parse_from_str(d, INTERNALDATE)
                    .ok()
                    .map(|d| d.timestamp_millis());
            }
            AttributeValue::Rfc822Size(s) => meta.size = Some(*s),
            AttributeValue::ModSeq(m) => meta.modseq = Some(*m),
            AttributeValue::EmailId(id) => meta.email_id = Some(id.to_string()),
            AttributeValue::ThreadId(id) => {
                meta.server_thread_id = id.as_deref().map(str::to_string)
            }
            AttributeValue::GmailMsgId(id) => gm_msgid = Some(*id),
            AttributeValue::GmailThrId(id) => gm_thrid = Some(*id),
            AttributeValue::BodySection {
                section: None,
                data: Some(b),
                ..
            }
            | AttributeValue::Rfc822(Some(b)) => body = Some(b.as_ref()),
            _ => {}
        }
    }
    // RFC 8474's identifiers win where a server sends both.
    if meta.email_id.is_none() {
        meta.email_id = gm_msgid.map(|id| id.to_string());
    }
    if meta.server_thread_id.is_none() {
        meta.server_thread_id = gm_thrid.map(|id| id.to_string());
    }
    meta.uid = uid?;
    Some((meta, body?))
}

/// Flags as IMAP writes them, space-separated (`\Seen \Flagged $Label`), without `\Recent`:
/// it belongs to one session (the first to see a message), not to the message, so it would
/// make `messages.flags` differ from what any other client sees, and churn.
pub(crate) fn flags_text(flags: &[Cow<'_, str>]) -> String {
    let kept: Vec<&str> = flags
        .iter()
        .map(|f| f.as_ref())
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    kept.join(" ")
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
