//! A guard stream between the socket (TLS or plain TCP) and async-imap, so that a broken or
//! hostile server cannot take CPU, memory or log space with it.
//!
//! async-imap 0.12 re-parses its whole buffer after every read (quadratic on an endless line),
//! grows that buffer to any announced literal up to 512 MiB, and embeds the buffer in its parse
//! errors. It cannot be patched, so the guard frames the server's bytes as IMAP does and hands
//! them on only in pieces that are cheap to parse:
//! - a line up to its CRLF is **held back** until the CRLF arrives, so async-imap parses a
//!   line once instead of once per read;
//! - a line ending in `{n}` (or `~{n}`) announces an `n`-byte literal: the line is handed on
//!   and the literal's bytes pass straight through as they arrive (async-imap does not re-parse
//!   while a literal is incomplete);
//! - a CRLF not after a literal announcement ends the response. The response is validated
//!   **once** with imap-proto, on a skeleton (its lines, each literal replaced by `""`), before
//!   its last line is handed on: a response that cannot be parsed is an error at once instead
//!   of an "incomplete" that never ends.
//!
//! The bounds ([`Limits`]): [`MAX_LINE`] bytes of line text per response (raised for one
//! `UID SEARCH` by [`set_max_line`]), [`MAX_LITERALS`]
//! literals per response, each at most `max_literal` bytes, `max_literal +`
//! [`RESPONSE_OVERHEAD`] bytes per response, and, while a command is in flight, bytes from the
//! server at least every `progress` (IDLE, once accepted, is exempt: silence is normal there).
//! Each violation is a [`GuardError`], returned as an `io::Error` that async-imap passes on as
//! `Error::Io`; `ImapError::kind` calls it `protocol` (`timeout` for a stall). Its text quotes at
//! most [`EXCERPT`] bytes of server data, escaped.
//!
//! Writes are buffered and sent on flush, which async-imap calls after each command: one write
//! (one TLS record) per command instead of four (tag, space, command, CRLF).
//!
//! Idle, the guard holds no buffer: every buffer is released once it is empty.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Io;
pub use error::{Excerpt, GuardError};
use framer::{Ended, Framer};

/// Line text (everything but literal bytes) one response may carry. A FETCH line before its
/// literal is about 200 bytes; `* CAPABILITY` about 500. async-imap is handed a complete line
/// in steps of its 4 KiB buffer growth and parses it again at each step, so a line of `L` bytes
/// costs about `L² / 8 KiB` bytes of parsing: 0.5 MB for a line at this limit.
pub const MAX_LINE: usize = 64 * 1024;

/// Literals in one response. async-imap re-parses the response so far after each literal, so
/// this bounds the parsing a response can cause. A body FETCH carries one.
pub const MAX_LITERALS: usize = 16;

/// A response may be this much larger than its largest allowed literal (its lines, small
/// literals).
pub const RESPONSE_OVERHEAD: usize = 1024 * 1024;

/// Accepted beyond what the body FETCH asked for (`BODY.PEEK[]<0.N>`).
pub const LITERAL_SLACK: usize = 4096;

/// Largest literal before the first body FETCH sets the session's limit (greeting, LOGIN,
/// SELECT, IDLE carry none this large).
pub const DEFAULT_MAX_LITERAL: usize = 1024 * 1024;

/// Server bytes quoted in an error, before escaping (at most 4× after).
pub const EXCERPT: usize = 200;

/// A command is sent through as it comes once the write buffer holds this much.
const MAX_WRITE_BUF: usize = 64 * 1024;

/// Bytes read at a time while a line is held back.
const HOLD_CHUNK: usize = 4096;

/// The bounds one session's responses must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest literal accepted, announced `{n}`.
    pub max_literal: usize,
    /// Line text (everything but literal bytes) one response may carry: [`MAX_LINE`], raised
    /// for one command by [`set_max_line`].
    pub max_line: usize,
    /// Longest wait for server bytes while a command is in flight.
    pub progress: Duration,
}

impl Limits {
    /// The default literal limit, and `progress` as the stall deadline.
    pub fn new(progress: Duration) -> Limits {
        Limits {
            max_literal: DEFAULT_MAX_LITERAL,
            max_line: MAX_LINE,
            progress,
        }
    }

    /// Largest response (lines and literals).
    pub fn max_response(&self) -> usize {
        self.max_literal.saturating_add(RESPONSE_OVERHEAD)
    }
}

/// Sets the literal limit of the guard under a session's stream (no-op for a stream without
/// one, as in unit tests). The body FETCH calls it with what it asks for.
pub fn set_max_literal(io: &mut dyn Io, max: usize) {
    let any: &mut dyn Any = io;
    if let Some(g) = any.downcast_mut::<Guard<tokio::net::TcpStream>>() {
        g.limits.max_literal = max;
    } else if let Some(g) =
        any.downcast_mut::<Guard<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>()
    {
        g.limits.max_literal = max;
    }
}

/// Sets the line limit of the guard under a session's stream (no-op for a stream without one).
/// `UID SEARCH`, whose answer is one line, raises it for that command only
/// ([`super::sync::SEARCH_MAX_LINE`]) and sets [`MAX_LINE`] back after its tagged reply.
pub fn set_max_line(io: &mut dyn Io, max: usize) {
    let any: &mut dyn Any = io;
    if let Some(g) = any.downcast_mut::<Guard<tokio::net::TcpStream>>() {
        g.limits.max_line = max;
    } else if let Some(g) =
        any.downcast_mut::<Guard<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>()
    {
        g.limits.max_line = max;
    }
}

/// The guard stream. See the module documentation.
pub struct Guard<S> {
    /// The socket (TLS or TCP).
    inner: S,
    /// The bounds.
    limits: Limits,
    /// The reader's framing.
    framer: Framer,
    /// Scanned bytes not yet handed on: `ready` of them may be, the rest is a held-back line.
    held: Vec<u8>,
    /// How many bytes at the front of `held` may be handed on.
    ready: usize,
    /// A bound was broken after the bytes already handed on: returned by the next read.
    failed: Option<GuardError>,
    /// The reader returned an error: the stream reads as closed from now on.
    closed: bool,
    /// The command being written, sent whole on flush.
    wbuf: Vec<u8>,
    /// A command waits for its answer (from its flush until its tagged reply; not after IDLE's
    /// continuation).
    in_flight: bool,
    /// The command in flight is IDLE.
    idle_cmd: bool,
    /// The stall deadline, armed only while a command is in flight.
    stall: Option<Pin<Box<Sleep>>>,
    /// Reads that handed bytes on (for tests and benches: linear time shows as a count).
    handovers: u64,
}

impl<S> fmt::Debug for Guard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("limits", &self.limits)
            .field("held", &self.held.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guard<S> {
    /// Guards `inner` with `limits`.
    pub fn new(inner: S, limits: Limits) -> Guard<S> {
        Guard {
            inner,
            limits,
            framer: Framer::default(),
            held: Vec::new(),
            ready: 0,
            failed: None,
            closed: false,
            wbuf: Vec::new(),
            in_flight: false,
            idle_cmd: false,
            stall: None,
            handovers: 0,
        }
    }

    /// The socket, for STARTTLS. Whatever was buffered is dropped: plaintext sent before the
    /// handshake must never be read as if it came over TLS.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The current limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Reads that handed bytes on so far.
    pub fn handovers(&self) -> u64 {
        self.handovers
    }

    /// Bytes held in the guard's buffers (capacity), for memory checks.
    pub fn buffered_capacity(&self) -> usize {
        self.held.capacity() + self.wbuf.capacity() + self.framer.skeleton.capacity()
    }

    /// Bytes arrived: the stall deadline starts again.
    fn progressed(&mut self) {
        if let Some(s) = self.stall.as_mut() {
            s.as_mut().reset(Instant::now() + self.limits.progress);
        }
    }

    fn response_ended(in_flight: &mut bool, idle_cmd: bool, e: Ended) {
        match e {
            Ended::Tagged => *in_flight = false,
            Ended::Continuation if idle_cmd => *in_flight = false,
            _ => {}
        }
    }

    /// Scans freshly read `data`: how much may go on. A bound broken is kept for the next read.
    fn scan(&mut self, data: &[u8]) -> usize {
        let Guard {
            framer,
            limits,
            in_flight,
            idle_cmd,
            ..
        } = self;
        let idle_cmd = *idle_cmd;
        let scan = framer.scan(data, limits, |e| {
            Guard::<S>::response_ended(in_flight, idle_cmd, e)
        });
        if !self.in_flight {
            self.stall = None;
        }
        if let Some(e) = scan.error {
            self.failed = Some(e);
        }
        scan.ready
    }

    /// While the inner read is pending: the stall deadline, if a command is in flight.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.in_flight {
            return Poll::Pending;
        }
        let progress = self.limits.progress;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(progress)));
        ready!(stall.as_mut().poll(cx));
        self.stall = None;
        self.closed = true;
        Poll::Ready(Err(io::Error::other(GuardError::Stalled(progress))))
    }

    fn fail(&mut self) -> Option<io::Error> {
        let e = self.failed.take()?;
        self.closed = true;
        self.held = Vec::new();
        self.framer = Framer::default();
        Some(io::Error::other(e))
    }

    /// Hands on up to `ready` held bytes.
    fn hand_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.ready.min(buf.remaining());
        buf.put_slice(self.held.get(..n).unwrap_or_default());
        self.held.drain(..n);
        self.ready -= n;
        if self.held.is_empty() {
            self.held = Vec::new();
        }
        self.handovers += 1;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.ready > 0 {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.hand_held(buf);
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.fail() {
                return Poll::Ready(Err(e));
            }
            if !this.held.is_empty() {
                // A line is held back: read on into the guard's own buffer.
                let old = this.held.len();
                this.held.resize(old + HOLD_CHUNK, 0);
                let mut rb = ReadBuf::new(this.held.get_mut(old..).unwrap_or_default());
                let res = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                this.held.truncate(old + n);
                match res {
                    Poll::Pending => {
                        ready!(this.poll_stall(cx))?;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if n == 0 => {
                        // EOF inside a line: nothing more will complete it.
                        this.held = Vec::new();
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(())) => {}
                }
                this.progressed();
                let data = std::mem::take(&mut this.held);
                let r = this.scan(data.get(old..).unwrap_or_default());
                this.held = data;
                if r > 0 {
                    // The held line is complete, and maybe more after it.
                    this.ready = old + r;
                }
                continue;
            }
            // Nothing held: read straight into the caller's buffer, keep back an incomplete
            // line at its end.
            let start = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => {
                    ready!(this.poll_stall(cx))?;
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len() - start;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.progressed();
            let r = this.scan(buf.filled().get(start..).unwrap_or_default());
            if r < n {
                if this.failed.is_none() {
                    this.held
                        .extend_from_slice(buf.filled().get(start + r..).unwrap_or_default());
                }
                buf.set_filled(start + r);
            }
            if r > 0 {
                this.handovers += 1;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guard<S> {
    /// Writes out the buffered command, whole.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        self.wbuf = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// A command is about to go out: its answer is now awaited.
    fn command_sent(&mut self) {
        let cmd = &self.wbuf;
        if cmd.len() >= 4
            && cmd
                .get(..4)
                .is_some_and(|c| c.eq_ignore_ascii_case(b"DONE"))
        {
            self.idle_cmd = false;
        } else {
            let name = cmd
                .iter()
                .position(|&b| b == b' ')
                .and_then(|sp| cmd.get(sp + 1..));
            self.idle_cmd = name.is_some_and(|n| n.eq_ignore_ascii_case(b"IDLE\r\n"));
        }
        self.in_flight = true;
        self.progressed();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.wbuf.len() + data.len() > MAX_WRITE_BUF {
            ready!(this.poll_drain(cx))?;
            if data.len() > MAX_WRITE_BUF {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.wbuf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.wbuf.is_empty() {
            this.command_sent();
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

mod error;
mod framer;
#[cfg(test)]
mod tests;
