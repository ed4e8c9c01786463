//! `UID FETCH` of new messages, read response by response.
//!
//! async-imap's `uid_fetch` stream ends at the tagged reply whatever its status, so a tagged NO
//! looks like success with fewer messages. This reader sees the tagged status: a NO or BAD is an
//! error ([`ImapError::FetchRefused`]), so the mailbox reconnects and fetches again from the last
//! UID it stored. It also notices `* N EXISTS` arriving during the fetch, so mail delivered
//! meanwhile is fetched at once rather than at the next event.

use std::borrow::Cow;
use std::time::Duration;

use async_imap::imap_proto::{AttributeValue, MailboxDatum, RequestId, Response, Status};
use tokio_util::sync::CancellationToken;

use super::{ImapError, Session};
use crate::message::ImapMeta;

/// What we ask for: the message without setting `\Seen`, plus its metadata. The body is a
/// partial fetch of at most `max_bytes` (`BODY.PEEK[]<0.N>`): a message within the limit comes
/// whole in the same single round trip, a larger one comes cut at the limit, and RFC822.SIZE
/// (in the same response) tells the two apart. No second FETCH, and never more than
/// `max_bytes` of one message on the wire or in memory.
pub fn fetch_items(max_bytes: usize) -> String {
    format!("(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]<0.{max_bytes}>)")
}

/// INTERNALDATE's format (RFC 3501 `date-time`).
const INTERNALDATE: &str = "%d-%b-%Y %H:%M:%S %z";

/// One `UID FETCH <last_uid+1>:*` in progress. It borrows the session until it is dropped.
pub struct FetchRun<'a> {
    session: &'a mut Session,
    tag: RequestId,
    last_uid: u32,
    /// `* N EXISTS` arrived during the fetch: more mail may be waiting.
    pub saw_exists: bool,
}

/// Sends `UID FETCH <last_uid+1>:*`, bodies cut at `max_bytes`.
pub async fn start(
    session: &mut Session,
    last_uid: u32,
    max_bytes: usize,
    t: Duration,
) -> Result<FetchRun<'_>, ImapError> {
    // The guard under the session refuses any literal larger than what is asked for here.
    let limit = max_bytes.saturating_add(super::guard::LITERAL_SLACK);
    super::guard::set_max_literal(&mut **session.as_mut(), limit);
    let command = format!(
        "UID FETCH {}:* {}",
        last_uid.saturating_add(1),
        fetch_items(max_bytes)
    );
    let tag = match tokio::time::timeout(t, session.run_command(command)).await {
        Ok(r) => r?,
        Err(_) => return Err(ImapError::Timeout("UID FETCH")),
    };
    Ok(FetchRun {
        session,
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
            match resp.parsed() {
                Response::Fetch(_, attrs) => {
                    if let Some((meta, body)) = new_message(attrs, self.last_uid) {
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
                Response::MailboxData(MailboxDatum::Exists(_)) => self.saw_exists = true,
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => {
                    return Err(ImapError::Closed(
                        outcome.information.as_deref().unwrap_or("BYE").to_string(),
                    ));
                }
                // Flag updates, EXPUNGE, RECENT: nothing to store.
                _ => {}
            }
        }
    }
}

/// The facts and body of a FETCH response that is really new. The server answers `N:*` with
/// the last message even when its UID is below N, and may interleave flag updates without a
/// body: both are skipped.
pub fn new_message<'r>(
    attrs: &'r [AttributeValue<'_>],
    last_uid: u32,
) -> Option<(ImapMeta, &'r [u8])> {
    let mut meta = ImapMeta::default();
    let mut uid = None;
    let mut body: Option<&[u8]> = None;
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
            AttributeValue::BodySection {
                section: None,
                data: Some(b),
                ..
            }
            | AttributeValue::Rfc822(Some(b)) => body = Some(b.as_ref()),
            _ => {}
        }
    }
    meta.uid = uid.filter(|u| *u > last_uid)?;
    Some((meta, body?))
}

/// Flags as IMAP writes them, space-separated (`\Seen \Flagged $Label`).
fn flags_text(flags: &[Cow<'_, str>]) -> String {
    flags.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Response<'_> {
        Response::parse(line).expect("parses").1
    }

    #[test]
    fn new_messages_only_with_their_facts() {
        let r = parse(b"* 3 FETCH (UID 42 FLAGS (\\Seen $Work) INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" RFC822.SIZE 5 BODY[]<0> {5}\r\nhello)\r\n");
        let Response::Fetch(_, attrs) = &r else {
            panic!("{r:?}")
        };
        let (meta, body) = new_message(attrs, 41).expect("new");
        assert_eq!((meta.uid, meta.size, body), (42, Some(5), &b"hello"[..]));
        assert_eq!(meta.flags, "\\Seen $Work");
        assert_eq!(meta.internal_date_ms, Some(1_700_000_000_000));
        // The last message answered for an empty `43:*` range is not new.
        assert!(new_message(attrs, 42).is_none());
        // A flag update carries no body.
        let r = parse(b"* 3 FETCH (UID 50 FLAGS (\\Seen))\r\n");
        let Response::Fetch(_, attrs) = &r else {
            panic!("{r:?}")
        };
        assert!(new_message(attrs, 41).is_none());
    }
}
