//! `UID FETCH` of new messages, and the facts we keep from each FETCH response.

use std::time::Duration;

use async_imap::types::{Fetch, Flag};
use futures::{Stream, TryStreamExt};

use super::{ImapError, Session};

/// What we ask for: the message without setting `\Seen`, plus its metadata. The body is a
/// partial fetch of at most `max_bytes` (`BODY.PEEK[]<0.N>`): a message within the limit comes
/// whole in the same single round trip, a larger one comes cut at the limit, and RFC822.SIZE
/// (in the same response) tells the two apart. No second FETCH, and never more than
/// `max_bytes` of one message on the wire or in memory.
pub fn fetch_items(max_bytes: usize) -> String {
    format!("(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]<0.{max_bytes}>)")
}

/// Starts `UID FETCH <last_uid+1>:*`, bodies cut at `max_bytes`. The stream borrows the
/// session; drop it before the next command.
pub async fn new_since(
    session: &mut Session,
    last_uid: u32,
    max_bytes: usize,
    t: Duration,
) -> Result<impl Stream<Item = Result<Fetch, async_imap::error::Error>> + '_, ImapError> {
    let range = format!("{}:*", last_uid.saturating_add(1));
    let items = fetch_items(max_bytes);
    match tokio::time::timeout(t, session.uid_fetch(range, items)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ImapError::Timeout("UID FETCH")),
    }
}

/// The next FETCH response, with an inactivity deadline. `Ok(None)` is the tagged OK (or the
/// tagged NO: async-imap ends the stream either way, so callers only trust what they stored).
pub async fn next<S>(stream: &mut S, t: Duration) -> Result<Option<Fetch>, ImapError>
where
    S: Stream<Item = Result<Fetch, async_imap::error::Error>> + Unpin,
{
    match tokio::time::timeout(t, stream.try_next()).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ImapError::Dead),
    }
}

/// The UID of a FETCH response that is really new: the server answers `N:*` with the last
/// message even when its UID is below N, and may interleave flag updates without a body.
pub fn new_uid(f: &Fetch, last_uid: u32) -> Option<u32> {
    f.uid.filter(|uid| *uid > last_uid && f.body().is_some())
}

/// Flags as IMAP writes them, space-separated (`\Seen \Flagged $Label`).
pub fn flags_text(f: &Fetch) -> String {
    let mut out = String::new();
    for flag in f.flags() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(match &flag {
            Flag::Seen => "\\Seen",
            Flag::Answered => "\\Answered",
            Flag::Flagged => "\\Flagged",
            Flag::Deleted => "\\Deleted",
            Flag::Draft => "\\Draft",
            Flag::Recent => "\\Recent",
            Flag::MayCreate => "\\*",
            Flag::Custom(c) => c,
        });
    }
    out
}

/// INTERNALDATE as Unix milliseconds.
pub fn internal_date_ms(f: &Fetch) -> Option<i64> {
    f.internal_date().map(|d| d.timestamp_millis())
}
