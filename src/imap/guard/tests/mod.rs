use async_imap::imap_proto::Response;

use super::framer::literal_announced;
use super::*;

use std::collections::VecDeque;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A socket that serves scripted chunks (one per read at most) and counts what it is asked.
/// Once the script is out, reads stay pending, as on a silent connection.
#[derive(Debug, Default)]
struct Script {
    chunks: VecDeque<Vec<u8>>,
    /// After the chunks, produce `endless` forever (one chunk per read).
    endless: Option<Vec<u8>>,
    /// Bytes the guard took from the socket.
    read_bytes: usize,
    /// `poll_write` calls that reached the socket.
    writes: usize,
    written: Vec<u8>,
}

impl Script {
    fn new<I: IntoIterator<Item = Vec<u8>>>(chunks: I) -> Script {
        Script {
            chunks: chunks.into_iter().collect(),
            ..Script::default()
        }
    }

    /// `data` in chunks of `size` bytes.
    fn chunked(data: &[u8], size: usize) -> Script {
        Script::new(data.chunks(size).map(<[u8]>::to_vec))
    }
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.chunks.is_empty() {
            if let Some(e) = &this.endless {
                this.chunks.push_back(e.clone());
            }
        }
        let Some(front) = this.chunks.front_mut() else {
            return Poll::Pending;
        };
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        front.drain(..n);
        if front.is_empty() {
            this.chunks.pop_front();
        }
        this.read_bytes += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        self.written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const T: Duration = Duration::from_secs(30);

fn guard(s: Script) -> Guard<Script> {
    Guard::new(
        s,
        Limits {
            max_literal: 1024 * 1024,
            max_line: MAX_LINE,
            progress: T,
        },
    )
}

/// Reads what the guard hands on (4 KiB at a time, as async-imap does) until `want` bytes,
/// an error, or the script going silent (a virtual minute: tests run on paused time).
async fn read_all(g: &mut Guard<Script>, want: usize) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0; 4096];
    while out.len() < want {
        match tokio::time::timeout(Duration::from_secs(60), g.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn guard_error(e: &io::Error) -> &GuardError {
    GuardError::find(e).expect("a guard error")
}

#[tokio::test(start_paused = true)]
async fn a_trickled_line_is_handed_on_once_whole() {
    let line = format!("* FLAGS ({})\r\n", vec!["$Keyword"; 300].join(" "));
    let mut g = guard(Script::chunked(line.as_bytes(), 1));
    let (out, err) = read_all(&mut g, line.len()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out, line.as_bytes());
    // Without the guard async-imap would be handed (and re-parse) 2,711 one-byte pieces.
    assert_eq!(g.handovers(), 1);
}

#[tokio::test(start_paused = true)]
async fn literal_bytes_pass_through_in_linear_hand_overs() {
    let body = vec![b'x'; 1024 * 1024];
    let mut resp = b"* 1 FETCH (UID 5 BODY[]<0> {1048576}\r\n".to_vec();
    resp.extend_from_slice(&body);
    resp.extend_from_slice(b")\r\nA1 OK done\r\n");
    let mut g = guard(Script::chunked(&resp, 16 * 1024));
    let (out, err) = read_all(&mut g, resp.len()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out, resp);
    // One hand-over per read of the caller's 4 KiB, plus the held-back line ends: linear in
    // the size.
    let reads = resp.len().div_ceil(4096) as u64;
    assert!(
        g.handovers() <= reads + 3,
        "{} hand-overs for {reads} reads",
        g.handovers()
    );
    // Nothing stays allocated once the response is through.
    assert_eq!(g.buffered_capacity(), 0);
}

#[tokio::test(start_paused = true)]
async fn hand_overs_grow_linearly_with_the_response() {
    // The count that makes async-imap's parsing quadratic, for responses of 1, 4 and 16 MiB
    // read 16 KiB at a time: it grows as the size does.
    let mut per_mib = Vec::new();
    for mib in [1usize, 4, 16] {
        let n = mib * 1024 * 1024;
        let mut resp = format!("* 1 FETCH (UID 5 BODY[]<0> {{{n}}}\r\n").into_bytes();
        resp.resize(resp.len() + n, b'y');
        resp.extend_from_slice(b")\r\n");
        let mut g = Guard::new(
            Script::chunked(&resp, 16 * 1024),
            Limits {
                max_literal: n,
                max_line: MAX_LINE,
                progress: T,
            },
        );
        let mut buf = vec![0; n + 4096];
        let mut got = 0;
        while got < resp.len() {
            let r = g.read(&mut buf[got..]).await.expect("reads");
            assert!(r > 0);
            got += r;
        }
        per_mib.push(g.handovers() as f64 / mib as f64);
    }
    let (lo, hi) = per_mib
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
    assert!(hi / lo < 1.1, "hand-overs per MiB: {per_mib:?}");
}

#[tokio::test(start_paused = true)]
async fn endless_line_is_refused_at_max_line() {
    let mut s = Script::new([b"* 1 FETCH (UID 1 FLAGS (".to_vec()]);
    s.endless = Some(vec![b'a'; 1000]);
    let mut g = guard(s);
    let (out, err) = read_all(&mut g, usize::MAX).await;
    let err = err.expect("refused");
    assert!(
        matches!(guard_error(&err), GuardError::LineTooLong { .. }),
        "{err}"
    );
    assert!(out.is_empty(), "nothing of the line is handed on");
    assert!(
        g.inner.read_bytes <= MAX_LINE + 1000,
        "{} bytes read",
        g.inner.read_bytes
    );
    assert!(err.to_string().len() <= 1024, "{}", err.to_string().len());
    assert_eq!(g.buffered_capacity(), 0);
}

#[tokio::test(start_paused = true)]
async fn malformed_fetch_is_refused_once_complete() {
    let s = Script::new([b"* 1 FETCH (UID abc FLAGS (\\Seen\r\nA3 OK done\r\n".to_vec()]);
    let mut client = async_imap::Client::new(guard(s));
    let err = client.read_response().await.expect_err("refused");
    assert!(
        matches!(guard_error(&err), GuardError::Malformed { .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn literal_over_the_limit_is_refused_on_its_announcement() {
    let mut s = Script::new([b"* 1 FETCH (UID 1 BODY[]<0> {500000000}\r\n".to_vec()]);
    s.endless = Some(vec![0; 64 * 1024]);
    let mut g = guard(s);
    let (out, err) = read_all(&mut g, usize::MAX).await;
    let err = err.expect("refused");
    assert!(
        matches!(
            guard_error(&err),
            GuardError::LiteralTooLarge {
                announced: 500_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(out.is_empty());
    // The announcement's chunk and not one literal byte more.
    assert_eq!(g.inner.read_bytes, 40);
}

#[tokio::test(start_paused = true)]
async fn response_budget_and_literal_count_are_enforced() {
    let mut resp = b"* 1 FETCH (UID 1".to_vec();
    for i in 0..=MAX_LITERALS {
        resp.extend_from_slice(format!(" BODY[{i}] {{1}}\r\nx").as_bytes());
    }
    resp.extend_from_slice(b")\r\n");
    let mut g = guard(Script::new([resp]));
    let (_, err) = read_all(&mut g, usize::MAX).await;
    let err = err.expect("refused");
    assert!(
        matches!(guard_error(&err), GuardError::TooManyLiterals { .. }),
        "{err}"
    );

    // Two literals each within the limit, together beyond the response budget.
    let big = 1024 * 1024;
    let mut resp = format!("* 1 FETCH (BODY[1] {{{big}}}\r\n").into_bytes();
    resp.resize(resp.len() + big, b'z');
    resp.extend_from_slice(format!(" BODY[2] {{{big}}}\r\n").as_bytes());
    let mut g = guard(Script::chunked(&resp, 64 * 1024));
    let (out, err) = read_all(&mut g, usize::MAX).await;
    let err = err.expect("refused");
    assert!(
        matches!(guard_error(&err), GuardError::ResponseTooLarge { .. }),
        "{err}"
    );
    assert!(out.len() < resp.len());
}

#[tokio::test(start_paused = true)]
async fn error_text_quotes_little_of_the_server() {
    // 4 KiB of garbage, control bytes included, as one line.
    let mut garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    garbage.retain(|b| *b != b'\n');
    garbage.extend_from_slice(b"\r\n");
    let mut g = guard(Script::new([garbage]));
    let (_, err) = read_all(&mut g, usize::MAX).await;
    let text = err.expect("refused").to_string();
    assert!(text.len() <= 1024, "{} bytes: {text}", text.len());
    assert!(!text.contains('\r') && !text.contains('\0'), "{text}");

    // A 20 MB line ended by a NUL.
    let mut s = Script::new([]);
    s.endless = Some(vec![b'q'; 1024 * 1024]);
    let mut g = guard(s);
    let (_, err) = read_all(&mut g, usize::MAX).await;
    let text = err.expect("refused").to_string();
    assert!(text.len() <= 1024, "{} bytes", text.len());
}

#[tokio::test(start_paused = true)]
async fn a_valid_response_before_a_bad_one_is_handed_on_first() {
    let s = Script::new([b"A1 OK done\r\n* 1 FETCH (UID abc FLAGS (\\Seen\r\n".to_vec()]);
    let mut client = async_imap::Client::new(guard(s));
    let ok = client
        .read_response()
        .await
        .expect("reads")
        .expect("a response");
    assert!(
        matches!(ok.parsed(), Response::Done { .. }),
        "{:?}",
        ok.parsed()
    );
    let err = client.read_response().await.expect_err("refused");
    assert!(
        matches!(guard_error(&err), GuardError::Malformed { .. }),
        "{err}"
    );
}

/// What idlesync meets from Dovecot, each through the guard and async-imap unchanged.
#[tokio::test(start_paused = true)]
async fn dovecot_responses_pass() {
    let responses: &[&[u8]] = &[
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN] Dovecot ready.\r\n",
        b"A1 OK [CAPABILITY IMAP4rev1 IDLE CONDSTORE QRESYNC UIDPLUS MOVE] Logged in\r\n",
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] Flags permitted.\r\n",
        b"* 3 EXISTS\r\n",
        b"* 0 RECENT\r\n",
        b"* OK [UIDVALIDITY 1700000000] UIDs valid\r\n",
        b"* OK [UIDNEXT 4] Predicted next UID\r\n",
        b"* OK [HIGHESTMODSEQ 7] Highest\r\n",
        b"A2 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n",
        b"* 3 FETCH (UID 3 FLAGS (\\Seen) INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" RFC822.SIZE 5 BODY[]<0> {5}\r\nhello)\r\n",
        b"* 3 FETCH (UID 3 RFC822.SIZE 5 FLAGS (\\Seen) BODY[]<0> {0}\r\n INTERNALDATE \"14-Nov-2023 22:13:20 +0000\")\r\n",
        b"* 4 FETCH (FLAGS (\\Seen) UID 4)\r\n",
        b"A3 OK Fetch completed (0.001 + 0.000 secs).\r\n",
        b"+ idling\r\n",
        b"* OK Still here\r\n",
        b"* 2 EXPUNGE\r\n",
        b"A4 OK Idle completed (0.001 + 2.000 secs).\r\n",
        b"A5 NO [SERVERBUG] Internal error occurred.\r\n",
        b"A6 BAD Error in IMAP command: Unknown command.\r\n",
        b"* ID (\"name\" \"Dovecot\")\r\n",
        b"* BYE Logging out\r\n",
        b"A7 OK Logout completed.\r\n",
    ];
    let all: Vec<u8> = responses.concat();
    // Every split point matters: one byte per read.
    let mut client = async_imap::Client::new(guard(Script::chunked(&all, 1)));
    for want in responses {
        let got = client.read_response().await;
        let got = got.unwrap_or_else(|e| panic!("{e} for {}", want.escape_ascii()));
        let got = got.expect("a response");
        assert!(
            Response::parse(want).is_ok(),
            "{} parses alone",
            want.escape_ascii()
        );
        drop(got);
    }
}

#[test]
fn literal_announcements() {
    assert_eq!(
        literal_announced(b"* 1 FETCH (BODY[] {12}\r\n"),
        Some((12, 18))
    );
    assert_eq!(
        literal_announced(b"* 1 FETCH (BINARY[] ~{3}\r\n"),
        Some((3, 20))
    );
    assert_eq!(
        literal_announced(b"x {99999999999999999999}\r\n"),
        Some((u64::MAX, 2))
    );
    assert_eq!(literal_announced(b"* OK {abc}\r\n"), None);
    assert_eq!(literal_announced(b"* OK {}\r\n"), None);
    assert_eq!(literal_announced(b"* OK 12}\r\n"), None);
    assert_eq!(literal_announced(b"* OK {12}\n"), None);
}

#[test]
fn server_text_in_errors_is_bounded_and_escaped() {
    use crate::imap::ImapError;
    let e = ImapError::Closed(format!("{}\r\n\x1b[31mforged", "B".repeat(100_000)));
    let text = e.to_string();
    assert!(text.len() <= 1100, "{} bytes", text.len());
    assert!(text.ends_with('…'));
    let e = ImapError::Closed("bye\r\nforged".into());
    assert_eq!(
        e.to_string(),
        "server closed the connection: bye\\r\\nforged"
    );
}

#[test]
fn guard_and_parse_errors_are_protocol_a_stall_is_timeout() {
    use crate::imap::ImapError;
    let io = |e: io::Error| ImapError::Protocol(async_imap::error::Error::Io(e)).kind();
    let refused = GuardError::TooManyLiterals { limit: 1 };
    assert_eq!(io(io::Error::other(refused)), "protocol");
    assert_eq!(io(io::Error::other(GuardError::Stalled(T))), "timeout");
    // async-imap's own parse error and its 512 MiB cap are `io::Error::other`.
    assert_eq!(io(io::Error::other("incoming data too large")), "protocol");
    assert_eq!(io(io::ErrorKind::ConnectionReset.into()), "io");
}

mod writes;
