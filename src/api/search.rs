//! `GET /v1/accounts/{accountId}/search?q=&limit=&cursor=&group=threads` (#21): the search box,
//! newest first, messages or conversations, a page at a time.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::actions::rfc3339;
use super::extract::Params;
use super::{ApiError, ApiState};
use crate::search::{self, Query, Term};
use crate::store::{Cursor, Hit};

/// Results per page unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 20;
/// Most results per page.
const MAX_LIMIT: i64 = 100;
/// Characters of a snippet.
const SNIPPET: usize = 200;

/// The query string.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// The search box's text: words, `"phrases"`, `from:` `to:` `cc:` `subject:` `filename:`
    /// `has:attachment` `is:unread|read|starred|unstarred` `in:<mailbox>` `before:` `after:`
    /// (YYYY/MM/DD, UTC) `larger:` `smaller:` (20K, 1M), `-` to negate, `OR`, parentheses.
    pub q: String,
    /// Results per page, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
    /// `threads`: conversations instead of messages.
    pub group: Option<String>,
}

/// A name and an address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Address {
    /// The display name, if any.
    pub name: Option<String>,
    /// The address.
    pub address: Option<String>,
}

/// A message found.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageHit {
    /// `messages.id`: act on it with `/v1/messages/{id}`.
    pub id: i64,
    /// `threads.id`.
    pub thread_id: Option<i64>,
    /// The mailbox, as configured.
    pub mailbox: String,
    /// The first From address.
    pub from: Option<Address>,
    /// The subject.
    pub subject: Option<String>,
    /// When it arrived (INTERNALDATE), RFC 3339 UTC.
    pub received_at: Option<String>,
    /// Its flags now.
    pub flags: Vec<String>,
    /// Text around the first match, HTML-escaped, each matched word in `<mark>…</mark>`.
    pub snippet: String,
}

/// A conversation found.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadHit {
    /// `threads.id`.
    pub id: i64,
    /// The newest matching message's subject.
    pub subject: Option<String>,
    /// The newest matching message's arrival, RFC 3339 UTC.
    pub received_at: Option<String>,
    /// The newest matching message's snippet, marked.
    pub snippet: String,
    /// `messages.id` of the matching messages on this page, newest first.
    pub messages: Vec<i64>,
}

/// `{"messages": [...], "cursor"}`, or with `group=threads` `{"threads": [...], "cursor"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchPage {
    /// The messages found (without `group`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageHit>>,
    /// The conversations found (`group=threads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<Vec<ThreadHit>>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/accounts/{accountId}/search", tag = "search",
    params(("accountId" = String, Path, description = "the account's id in the config"), SearchParams),
    responses((status = 200, body = SearchPage),
        (status = 400, description = "a query, limit or cursor that is not understood", body = super::error::ErrorBody),
        (status = 404, description = "no such account", body = super::error::ErrorBody)))]
/// Searches an account's stored mail, newest first.
pub async fn search(
    State(api): State<ApiState>,
    Path(account_id): Path<String>,
    Params(p): Params<SearchParams>,
) -> Result<Json<SearchPage>, ApiError> {
    let account = api
        .account(&account_id)
        .ok_or_else(|| ApiError::not_found(format!("account {account_id:?}")))?;
    let query = search::parse(&p.q).map_err(|e| ApiError::bad_request("q", e))?;
    check_mailboxes(&query, &account.mailboxes)?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        ));
    }
    let cursor = p.cursor.as_deref().map(parse_cursor).transpose()?;
    let threads = match p.group.as_deref() {
        None => false,
        Some("threads") => true,
        Some(_) => return Err(ApiError::bad_request("group", "takes only \"threads\"")),
    };
    let marks = marked_words(&query);
    if !threads {
        let hits = api
            .store()
            .search(&account.id, &query, cursor, limit)
            .await?;
        let cursor = (hits.len() as i64 == limit)
            .then(|| hits.last().map(cursor_of))
            .flatten();
        return Ok(Json(SearchPage {
            messages: Some(hits.iter().map(|h| message_hit(h, &marks)).collect()),
            threads: None,
            cursor,
        }));
    }
    // Conversations: messages newest first, grouped, until `limit` conversations; the cursor
    // is the last message read, so a conversation may show again on a later page with older
    // matches.
    let wanted = (limit * 5).min(500);
    let hits = api
        .store()
        .search(&account.id, &query, cursor, wanted)
        .await?;
    let mut out: Vec<ThreadHit> = Vec::new();
    let mut last = None;
    for h in &hits {
        let tid = h.thread_id.unwrap_or(h.id);
        if let Some(t) = out.iter_mut().find(|t| t.id == tid) {
            t.messages.push(h.id);
        } else if (out.len() as i64) < limit {
            out.push(ThreadHit {
                id: tid,
                subject: h.subject.clone(),
                received_at: h.received_at.map(rfc3339),
                snippet: snippet(h, &marks),
                messages: vec![h.id],
            });
        } else {
            break;
        }
        last = Some(h);
    }
    let more = hits.len() as i64 == wanted || last.map(|l| l.id) != hits.last().map(|h| h.id);
    Ok(Json(SearchPage {
        messages: None,
        threads: Some(out),
        cursor: more.then(|| last.map(cursor_of)).flatten(),
    }))
}

/// `in:` must name a mailbox of the account: anything else is a mistake, not "no results".
fn check_mailboxes(q: &Query, mailboxes: &[String]) -> Result<(), ApiError> {
    match q {
        Query::And(v) | Query::Or(v) => v.iter().try_for_each(|q| check_mailboxes(q, mailboxes)),
        Query::Not(q) => check_mailboxes(q, mailboxes),
        Query::Term(Term::In(m)) if !mailboxes.contains(m) => Err(ApiError::bad_request(
            "q",
            format!(
                "in:{m}: the account watches no mailbox named {m:?} ({})",
                mailboxes.join(", ")
            ),
        )),
        Query::Term(_) => Ok(()),
    }
}

fn cursor_of(h: &Hit) -> String {
    format!("{}.{}", h.received_at.unwrap_or(0), h.id)
}

fn parse_cursor(s: &str) -> Result<Cursor, ApiError> {
    let bad = || ApiError::bad_request("cursor", "not a cursor this API gave");
    let (at, id) = s.split_once('.').ok_or_else(bad)?;
    Ok((
        at.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// The words of the query's positive text terms, normalized: what a snippet marks.
fn marked_words(q: &Query) -> Vec<String> {
    match q {
        Query::And(v) | Query::Or(v) => v.iter().flat_map(marked_words).collect(),
        Query::Not(_) => Vec::new(),
        Query::Term(Term::Text { words, .. }) => words.clone(),
        Query::Term(_) => Vec::new(),
    }
}

fn message_hit(h: &Hit, marks: &[String]) -> MessageHit {
    let from: Vec<Address> = serde_json::from_str(&h.from).unwrap_or_default();
    MessageHit {
        id: h.id,
        thread_id: h.thread_id,
        mailbox: h.mailbox.clone(),
        from: from.into_iter().next(),
        subject: h.subject.clone(),
        received_at: h.received_at.map(rfc3339),
        flags: h.flags.split_whitespace().map(str::to_string).collect(),
        snippet: snippet(h, marks),
    }
}

/// About [`SNIPPET`] characters of the body around the first marked word (the stored
/// snippet when none is found), HTML-escaped, with every marked word in `<mark>`. Matching
/// folds case as the index does (`GRÜSSE` marks `Grüße`).
fn snippet(h: &Hit, marks: &[String]) -> String {
    let text = h.body.as_deref().unwrap_or(&h.snippet);
    let chars: Vec<char> = text
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    // The folded text, and for each folded character the original one it came from.
    let mut folded: Vec<char> = Vec::with_capacity(chars.len());
    let mut origin: Vec<usize> = Vec::with_capacity(chars.len());
    for (i, c) in chars.iter().enumerate() {
        let n = crate::search::text::normalize(&c.to_string());
        let t = n.trim();
        if t.is_empty() {
            // White space and punctuation separate words.
            folded.push(' ');
            origin.push(i);
        }
        for f in t.chars() {
            folded.push(f);
            origin.push(i);
        }
    }
    let needles: Vec<Vec<char>> = marks
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| m.chars().collect())
        .collect();
    // The original characters [start, end) of a match starting at folded index `i`.
    let at = |i: usize| {
        needles
            .iter()
            .find(|n| folded[i..].starts_with(n))
            .map(|n| (origin[i], origin[i + n.len() - 1] + 1))
    };
    let Some((first, _)) = (0..folded.len()).find_map(at) else {
        return escape(&h.snippet);
    };
    // Matches may overlap (bigrams): mark characters, then wrap each marked run.
    let mut marked = vec![false; chars.len()];
    for (a, b) in (0..folded.len()).filter_map(at) {
        marked[a..b.min(chars.len())]
            .iter_mut()
            .for_each(|m| *m = true);
    }
    let start = first.saturating_sub(SNIPPET / 4);
    let end = (start + SNIPPET).min(chars.len());
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    for i in start..end {
        if marked[i] && (i == start || !marked[i - 1]) {
            out.push_str("<mark>");
        }
        out.push_str(&escape(&chars[i].to_string()));
        if marked[i] && (i + 1 == end || !marked[i + 1]) {
            out.push_str("</mark>");
        }
    }
    if end < chars.len() {
        out.push('…');
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(body: &str) -> Hit {
        Hit {
            id: 1,
            thread_id: Some(1),
            mailbox: "INBOX".into(),
            from: "[]".into(),
            subject: None,
            received_at: None,
            flags: String::new(),
            snippet: "stored <snippet>".into(),
            body: Some(body.into()),
        }
    }

    #[test]
    fn snippets_mark_matches_and_escape_the_rest() {
        let s = snippet(
            &hit("Please pay the <b>Invoice</b> now & then."),
            &["invoice".into()],
        );
        assert_eq!(
            s,
            "Please pay the &lt;b&gt;<mark>Invoice</mark>&lt;/b&gt; now &amp; then."
        );
        assert_eq!(
            snippet(&hit("nothing"), &["x".into()]),
            "stored &lt;snippet&gt;"
        );
        let long = format!("{} target {}", "a".repeat(400), "b".repeat(400));
        let s = snippet(&hit(&long), &["target".into()]);
        assert!(
            s.starts_with('…') && s.ends_with('…') && s.contains("<mark>target</mark>"),
            "{s}"
        );
        let s = snippet(&hit("Mit freundlichen Grüßen"), &["grüssen".into()]);
        assert_eq!(s, "Mit freundlichen <mark>Grüßen</mark>");
        let s = snippet(&hit("東京都の請求書"), &["請求".into(), "求書".into()]);
        assert_eq!(s, "東京都の<mark>請求書</mark>");
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        assert_eq!(
            parse_cursor("1700000000000.42").unwrap(),
            (1_700_000_000_000, 42)
        );
        for bad in ["", "x", "1.", ".1", "1.x", "1;DROP"] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
