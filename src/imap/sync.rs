//! The catch-up commands a connection runs after SELECT, before it idles: flags changed since
//! a mod-sequence ([`changed_since`], CONDSTORE), the present messages and their flags
//! ([`enumerate`], for servers without QRESYNC), and the UIDs since a date ([`search_since`],
//! for `storage.import_since`).
//!
//! Each reads its responses one by one, like [`super::fetch`]: `t` bounds the sending of the
//! command, and the guard under the session bounds every wait for the server's bytes (its
//! progress deadline). Every untagged response that is not the command's own answer goes to
//! [`View::absorb`], in order, so an EXPUNGE or a flag change arriving meanwhile is not lost.
//! A tagged NO or BAD is an error ([`super::throttle::refusal`] first, so a throttling server
//! is recognised). After an error, or a future dropped before its tagged reply, the connection
//! is mid-response and must be dropped.

use std::time::Duration;

use async_imap::imap_proto::{AttributeValue, MailboxDatum, Outcome, RequestId, Response, Status};

use super::view::View;
use super::{bye, received, ImapError, Session};

/// Most UIDs one `UID SEARCH` window spans: its answer (at most 11 bytes per UID) stays under
/// the guard's usual line limit.
pub const SEARCH_WINDOW: u32 = 5000;

/// The line limit for `UID SEARCH`, whose answer is a single line: 8 MiB, about a million
/// UIDs of 7 digits. async-imap parses a line again at every 4 KiB it grows, so a line of `L`
/// bytes costs about `L² / 8 KiB` bytes of parsing, on the task's thread. Measured through the
/// guard (debug build): 100,000 UIDs (0.8 MB) 1.1 s, 300,000 8 s, 1,000,000 (8 MB) 90 s; a
/// release build is several times faster, but the cost stays quadratic. A mailbox with more
/// matches than the limit holds fails the search (a `protocol` error) every time. The limit is
/// set for this command only and [`super::guard::MAX_LINE`] restored after it.
pub const SEARCH_MAX_LINE: usize = 8 * 1024 * 1024;

/// UID FETCH 1:upto (UID FLAGS) (CHANGEDSINCE modseq): changed flags into view.pending.
///
/// Each answer goes to `view.pending` with its UID, flags and MODSEQ, without placing its
/// sequence number (the answers are sparse). Nothing is sent when `upto` is 0.
pub async fn changed_since(
    session: &mut Session,
    view: &mut View,
    upto: u32,
    modseq: u64,
    t: Duration,
) -> Result<(), ImapError> {
    if upto == 0 {
        return Ok(());
    }
    let command = format!("UID FETCH 1:{upto} (UID FLAGS) (CHANGEDSINCE {modseq})");
    let tag = send(session, command, t, "UID FETCH").await?;
    loop {
        let resp = received(session.read_response().await, "UID FETCH (CHANGEDSINCE)")?;
        match resp.parsed() {
            Response::Fetch(_, attrs) => match entry(attrs) {
                Some((uid, flags, modseq)) => view.pending.flags(uid, flags, modseq),
                None => {
                    view.absorb(resp.parsed());
                }
            },
            other => {
                if let Some(done) = tagged(other, &tag, Cmd::Fetch)? {
                    return done;
                }
                view.absorb(other);
            }
        }
    }
}

/// One `UID FETCH 1:upto (UID FLAGS)` in progress. It borrows the session and the view until
/// it is dropped.
pub struct Enumeration<'a> {
    session: &'a mut Session,
    view: &'a mut View,
    /// `None` once the tagged OK was read (or nothing was sent).
    tag: Option<RequestId>,
    upto: u32,
    /// The highest UID handed out so far.
    last: u32,
}

/// UID FETCH 1:upto (UID FLAGS) read entry by entry: each present message's UID and flags,
/// ascending UID; places every seq in the view; EXPUNGE/VANISHED/EXISTS/other FETCH during it
/// go to view.absorb.
///
/// An answer is an entry when it carries a UID and FLAGS, its UID is in `1:upto` and above the
/// last entry's: the server answers in sequence order, which is UID order. Any other FETCH (a
/// flag change pushed meanwhile, for a message already handed out or without a UID) is a
/// change and goes to `view.absorb`. Changes in `view.pending` are newer than the entries:
/// apply them after the enumeration's diff. Nothing is sent when `upto` is 0.
pub async fn enumerate<'a>(
    session: &'a mut Session,
    view: &'a mut View,
    upto: u32,
    t: Duration,
) -> Result<Enumeration<'a>, ImapError> {
    let tag = if upto == 0 {
        None
    } else {
        let command = format!("UID FETCH 1:{upto} (UID FLAGS)");
        Some(send(session, command, t, "UID FETCH").await?)
    };
    Ok(Enumeration {
        session,
        view,
        tag,
        upto,
        last: 0,
    })
}

impl Enumeration<'_> {
    /// Up to `max` entries (uid, flags), ascending; empty at the tagged OK.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<(u32, String)>, ImapError> {
        let mut batch = Vec::new();
        let max = max.max(1);
        while batch.len() < max {
            let Some(tag) = &self.tag else {
                break;
            };
            let resp = received(self.session.read_response().await, "UID FETCH (UID FLAGS)")?;
            match resp.parsed() {
                Response::Fetch(seq, attrs) => match entry(attrs) {
                    Some((uid, flags, _)) if uid > self.last && uid <= self.upto => {
                        self.view.place(*seq, uid);
                        self.last = uid;
                        batch.push((uid, flags));
                    }
                    _ => {
                        self.view.absorb(resp.parsed());
                    }
                },
                other => {
                    if let Some(done) = tagged(other, tag, Cmd::Fetch)? {
                        done?;
                        self.tag = None;
                        break;
                    }
                    self.view.absorb(other);
                }
            }
        }
        Ok(batch)
    }
}

/// `UID SEARCH UID <from>:<to> SINCE <date>` (RFC 3501 date, e.g. `1-Sep-2026`), UIDs
/// ascending. The guard's line limit is raised to [`SEARCH_MAX_LINE`] for this one command and
/// restored after it, whatever its outcome; a longer answer is refused by the guard (a
/// `protocol` error).
///
/// Callers search in windows of at most [`SEARCH_WINDOW`] UIDs: async-imap parses a response
/// again after every read, so one answer of `n` UIDs costs O(n²) (1.1 s for 100,000 UIDs, 90 s
/// for a million, debug build), while a window's answer stays under the guard's usual 64 KiB.
///
/// `SINCE` compares INTERNALDATE's date, in the server's time zone, ignoring the time.
pub async fn search_since(
    session: &mut Session,
    view: &mut View,
    since: chrono::NaiveDate,
    window: (u32, u32),
    t: Duration,
) -> Result<Vec<u32>, ImapError> {
    super::guard::set_max_line(&mut **session.as_mut(), SEARCH_MAX_LINE);
    let r = search(session, view, since, window, t).await;
    super::guard::set_max_line(&mut **session.as_mut(), super::guard::MAX_LINE);
    r
}

async fn search(
    session: &mut Session,
    view: &mut View,
    since: chrono::NaiveDate,
    (from, to): (u32, u32),
    t: Duration,
) -> Result<Vec<u32>, ImapError> {
    let command = format!("UID SEARCH UID {from}:{to} SINCE {}", imap_date(since));
    let tag = send(session, command, t, "UID SEARCH").await?;
    let mut uids = Vec::new();
    loop {
        let resp = received(session.read_response().await, "UID SEARCH")?;
        match resp.parsed() {
            Response::MailboxData(MailboxDatum::Search(found)) => uids.extend_from_slice(found),
            other => {
                if let Some(done) = tagged(other, &tag, Cmd::Search)? {
                    done?;
                    uids.sort_unstable();
                    uids.dedup();
                    return Ok(uids);
                }
                view.absorb(other);
            }
        }
    }
}

/// An RFC 3501 `date` (`1-Sep-2026`).
pub fn imap_date(d: chrono::NaiveDate) -> String {
    d.format("%-d-%b-%Y").to_string()
}

/// Sends `command`; its tag. `t` bounds the sending.
async fn send(
    session: &mut Session,
    command: String,
    t: Duration,
    what: &'static str,
) -> Result<RequestId, ImapError> {
    match tokio::time::timeout(t, session.run_command(command)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ImapError::Timeout(what)),
    }
}

/// A FETCH answer's UID, flags (space-separated) and MODSEQ, when it has a UID and flags.
fn entry(attrs: &[AttributeValue<'_>]) -> Option<(u32, String, Option<u64>)> {
    let (uid, flags, modseq) = super::view::flag_attrs(attrs);
    Some((uid?, flags?, modseq))
}

/// Which command a tagged reply ends, for its refusal.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    Fetch,
    Search,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Fetch => "UID FETCH",
            Cmd::Search => "UID SEARCH",
        }
    }

    /// The error for a tagged NO or BAD that is not throttling.
    fn refused(self, outcome: &Outcome<'_>) -> ImapError {
        let text = outcome.information.as_deref().unwrap_or("").to_string();
        match self {
            Cmd::Fetch => ImapError::FetchRefused(text),
            Cmd::Search => ImapError::SearchRefused(text),
        }
    }
}

/// The command's end: `Some(Ok(()))` for its tagged OK, `Some(Err)` for its NO or BAD;
/// `Err` for `* BYE`; `None` for anything else.
fn tagged(
    resp: &Response<'_>,
    tag: &RequestId,
    cmd: Cmd,
) -> Result<Option<Result<(), ImapError>>, ImapError> {
    match resp {
        Response::Done {
            tag: done,
            status,
            outcome,
        } if done == tag => Ok(Some(match status {
            Status::Ok => Ok(()),
            _ => Err(super::throttle::refusal(cmd.name(), outcome)
                .unwrap_or_else(|| cmd.refused(outcome))),
        })),
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Err(bye(outcome)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::guard::{Guard, GuardError, Limits, MAX_LINE};
    use tokio::io::AsyncWriteExt;

    /// A `* SEARCH` answer of `n` UIDs and its tagged OK, read through a guard whose line
    /// limit is `max_line`.
    async fn read_search(n: u32, max_line: usize) -> std::io::Result<Vec<u32>> {
        let mut line = b"* SEARCH".to_vec();
        for u in 1..=n {
            line.extend_from_slice(format!(" {u}").as_bytes());
        }
        line.extend_from_slice(b"\r\nA1 OK done\r\n");
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let _ = theirs.write_all(&line).await;
            theirs
        });
        let limits = Limits {
            max_line,
            ..Limits::new(Duration::from_secs(30))
        };
        let mut client = async_imap::Client::new(Guard::new(ours, limits));
        let got = match client.read_response().await? {
            Some(resp) => match resp.parsed() {
                Response::MailboxData(MailboxDatum::Search(uids)) => uids.clone(),
                other => panic!("{other:?}"),
            },
            None => Vec::new(),
        };
        writer.abort();
        Ok(got)
    }

    /// A SEARCH answer beyond [`MAX_LINE`] is refused by default and read whole under
    /// [`SEARCH_MAX_LINE`].
    #[tokio::test]
    async fn a_long_search_line_needs_the_raised_limit() {
        let n = 40_000;
        let err = read_search(n, MAX_LINE).await.expect_err("refused");
        assert!(
            matches!(GuardError::find(&err), Some(GuardError::LineTooLong { limit, .. }) if *limit == MAX_LINE),
            "{err}"
        );
        let got = read_search(n, SEARCH_MAX_LINE).await.expect("reads");
        assert_eq!(got, (1..=n).collect::<Vec<_>>());
    }

    /// A logged-in session on a fake server that answers each command with the next reply
    /// (`{tag}` replaced by the command's tag); the lines it read come back when it ends.
    async fn fake(replies: Vec<&'static str>) -> (Session, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(theirs);
            let mut lines = BufReader::new(r).lines();
            let mut seen = Vec::new();
            let _ = w.write_all(b"* OK fake\r\n").await;
            for reply in std::iter::once("{tag} OK LOGIN done\r\n").chain(replies) {
                let Ok(Some(line)) = lines.next_line().await else {
                    break;
                };
                let tag = line.split(' ').next().unwrap_or("").to_string();
                seen.push(line);
                let _ = w.write_all(reply.replace("{tag}", &tag).as_bytes()).await;
            }
            seen
        });
        let io: Box<dyn crate::imap::Io> = Box::new(ours);
        let mut client = async_imap::Client::new(io);
        client.read_response().await.expect("greeting");
        let session = client
            .login("u", "p")
            .await
            .map_err(|(e, _)| e)
            .expect("login");
        (session, server)
    }

    /// An EXPUNGE and a flag change without a UID, interleaved with the enumeration, reach the
    /// view with the right UIDs; every entry comes once, in batches, ascending.
    #[tokio::test]
    async fn an_enumeration_keeps_changes_that_arrive_during_it() {
        let (mut s, server) = fake(vec![concat!(
            "* 1 FETCH (UID 10 FLAGS ())\r\n",
            "* 2 FETCH (UID 11 FLAGS (\\Seen))\r\n",
            "* 1 EXPUNGE\r\n",
            "* 2 FETCH (UID 12 FLAGS ())\r\n",
            "* 1 FETCH (FLAGS (\\Flagged))\r\n",
            "* 3 FETCH (UID 13 FLAGS ())\r\n",
            "{tag} OK done\r\n"
        )])
        .await;
        let mut view = View::new(false);
        let t = Duration::from_secs(5);
        let mut batches = Vec::new();
        {
            let mut e = enumerate(&mut s, &mut view, 20, t).await.expect("sent");
            for _ in 0..5 {
                let b = e.next_batch(2).await.expect("reads");
                if b.is_empty() {
                    break;
                }
                batches.push(b);
            }
        }
        let entry = |u: u32, f: &str| (u, f.to_string());
        assert_eq!(
            batches,
            vec![
                vec![entry(10, ""), entry(11, "\\Seen")],
                vec![entry(12, ""), entry(13, "")]
            ]
        );
        let got = view.pending.take_batch(usize::MAX);
        assert_eq!(got.expunged, vec![10]);
        let flags: Vec<(u32, &str)> = got
            .flags
            .iter()
            .map(|f| (f.uid, f.flags.as_str()))
            .collect();
        assert_eq!(flags, vec![(11, "\\Flagged")]);
        assert!(!view.lost());
        assert_eq!(view.exists(), 0, "no EXISTS was seen");
        drop(s);
        let seen = server.await.expect("server");
        assert_eq!(
            seen.get(1).map(String::as_str),
            Some("A0002 UID FETCH 1:20 (UID FLAGS)")
        );
    }

    /// A tagged NO is an error: throttling where it says so, the command's refusal otherwise.
    #[tokio::test]
    async fn refusals_are_errors() {
        let (mut s, _server) = fake(vec![
            "{tag} NO [UNAVAILABLE] later\r\n",
            "* 1 EXPUNGE\r\n{tag} NO no such thing\r\n",
            "{tag} BAD what\r\n",
        ])
        .await;
        let mut view = View::new(true);
        let t = Duration::from_secs(5);
        let day = chrono::NaiveDate::from_ymd_opt(2026, 9, 1).expect("a date");
        let err = search_since(&mut s, &mut view, day, (1, 10), t)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), "throttled", "{err:?}");
        let err = search_since(&mut s, &mut view, day, (1, 10), t)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), "search_refused", "{err:?}");
        assert!(
            view.lost(),
            "a sequence-numbered EXPUNGE under QRESYNC still reached the view"
        );
        let err = changed_since(&mut s, &mut view, 9, 3, t)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), "fetch_refused", "{err:?}");
    }

    #[test]
    fn dates_are_rfc_3501() {
        let d = |y, m, day| chrono::NaiveDate::from_ymd_opt(y, m, day).expect("a date");
        assert_eq!(imap_date(d(2026, 9, 1)), "1-Sep-2026");
        assert_eq!(imap_date(d(2025, 12, 24)), "24-Dec-2025");
    }
}
