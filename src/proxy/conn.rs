//! One client connection's watchdog: nothing sent since accept, or idle between requests.
//!
//! hyper times a request head only once it has started reading one, and the HTTP/1-or-2 sniffing
//! of the auto server reads before that, so a socket that sends nothing (or half an h2 preface)
//! would otherwise be held for ever — and with `max_connections` a thousand such sockets lock a
//! listener. The watchdog runs beside each connection (in the same task, no extra spawn) and
//! says when to close it (SPEC §14):
//! - no request (nor a whole h2 preface) has started within `header_read_timeout` of accept:
//!   close at once;
//! - no request in flight for `idle_timeout` (keep-alive, or h2 with no open stream, its
//!   preface read and no request yet included): close gracefully (h2 GOAWAY, or h1 close
//!   between requests);
//! - an h2 header block (HEADERS, then CONTINUATION frames) not whole within
//!   `header_read_timeout` of its first read, the socket drained: drop it ([`SeesPreface`]
//!   fails the read that finds nothing more; one more `header_read_timeout` if the rest of the
//!   block was still being read when the time ran out).
//!
//! The request path tells it what happens through [`ConnActive`], held in the request's guards
//! until its answer ends; an HTTP/2 connection's stream, through [`SeesPreface`], when its
//! preface has come.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use crate::clock::coarse;

/// What the watchdog knows of one connection.
///
/// Counters and no wake-ups: the request path only counts (no timer, no notification per
/// request), and the watchdog looks at the counts when its own timer fires. On a connection
/// it watches (hyper's, [`ConnState::watch`]) each answer's end is stamped with the coarse
/// clock (a few nanoseconds), so the watchdog, finding the connection idle, sleeps until one
/// `idle_timeout` after that end: the connection is closed then, within a clock tick. (Before
/// the stamp it slept a whole period from each look, and closed a connection between one and
/// two `idle_timeout`s after its last answer.) The lean HTTP/1.1 server times its own
/// keep-alive wait, and pays for no stamp.
#[derive(Debug)]
pub struct ConnState {
    active: AtomicU32,
    /// Requests begun plus answers ended so far, plus one for a whole h2 preface (non-zero: a
    /// request, or an h2 connection, has started).
    events: AtomicU64,
    /// The clock's reading (milliseconds) when the last answer ended, or the h2 preface was
    /// read; 0 before either.
    ended: AtomicU64,
    /// Whether answers' ends are stamped in `ended` (a watchdog reads them).
    stamps: AtomicBool,
    /// Milliseconds of a monotonic clock: the coarse clock, or a test's.
    millis: fn() -> u64,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            active: AtomicU32::new(0),
            events: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            stamps: AtomicBool::new(false),
            millis: coarse::millis,
        }
    }
}

/// One request in progress on a connection; dropped when its answer ends.
#[derive(Debug)]
pub struct ConnActive(Arc<ConnState>);

/// Why the watchdog asks to close a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Nothing (or no whole request head) within the head timeout of accept: drop it.
    Silent,
    /// No request in flight for the idle timeout: close gracefully.
    Idle,
}

// === impl ConnState ===

impl ConnState {
    /// A new connection's state.
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState::default())
    }

    /// What has happened so far: requests in flight now, and requests begun plus answers
    /// ended. Two readings with the same events and none in flight mean no request was in
    /// flight at any time between them.
    pub fn quiet(&self) -> (u32, u64) {
        (
            self.active.load(Ordering::Acquire),
            self.events.load(Ordering::Acquire),
        )
    }

    /// When a connection that has served a request (or read an h2 preface) and has none in
    /// flight now became idle, in the clock's milliseconds (stamped once [`ConnState::watch`]
    /// was called); `None` while a request is in flight or before the first one.
    pub fn idle_since(&self) -> Option<u64> {
        match self.quiet() {
            (0, events) if events > 0 => Some(self.ended.load(Ordering::Acquire)),
            _ => None,
        }
    }

    /// Notes that a request started; hold the result until its answer ends.
    pub fn begin(self: &Arc<Self>) -> ConnActive {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.events.fetch_add(1, Ordering::AcqRel);
        ConnActive(self.clone())
    }

    /// Notes that an HTTP/2 connection's whole preface was read: from now on it is a
    /// connection with no request in flight, closed (gracefully) `idle_timeout` from here,
    /// not a silent one closed at the head timeout (SPEC §14).
    pub fn opened(&self) {
        if self.stamps.load(Ordering::Relaxed) {
            // Before the count: a watchdog that finds the event finds the stamp.
            self.ended.fetch_max((self.millis)(), Ordering::AcqRel);
        }
        self.events.fetch_add(1, Ordering::AcqRel);
    }

    /// Resolves when the connection should be closed, and says how. From this call on (before
    /// the future is first polled) answers' ends are stamped.
    pub fn watch(
        &self,
        head_timeout: Duration,
        idle_timeout: Duration,
    ) -> impl Future<Output = Close> + '_ {
        self.stamps.store(true, Ordering::Release);
        async move {
            // Until a request starts (or an h2 preface is read): look every idle period (or at
            // the head deadline, if sooner).
            let head_deadline = Instant::now() + head_timeout;
            loop {
                let at = (Instant::now() + idle_timeout).min(head_deadline);
                tokio::time::sleep_until(at).await;
                if self.events.load(Ordering::Acquire) > 0 {
                    break;
                }
                if at >= head_deadline {
                    return Close::Silent;
                }
            }
            let idle = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
            loop {
                // In use: looked at again a period on. Idle: closed one period after the last
                // answer's end (an end before the stamps, at once).
                let wait = match self.active.load(Ordering::Acquire) {
                    0 => {
                        let ended = self.ended.load(Ordering::Acquire);
                        let since = (self.millis)().saturating_sub(ended);
                        match idle.checked_sub(since) {
                            Some(left) if left > 0 => Duration::from_millis(left),
                            _ => return Close::Idle,
                        }
                    }
                    _ => idle_timeout,
                };
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Drop for ConnActive {
    fn drop(&mut self) {
        let s = &self.0;
        if s.stamps.load(Ordering::Relaxed) {
            // Before the count goes down: a watchdog that finds none in flight finds the stamp.
            s.ended.fetch_max((s.millis)(), Ordering::AcqRel);
        }
        s.active.fetch_sub(1, Ordering::AcqRel);
        s.events.fetch_add(1, Ordering::AcqRel);
    }
}

/// The whole HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's stream that tells its [`ConnState`] ([`ConnState::opened`]) once the whole
/// HTTP/2 preface has been read through it, and then holds each header block the client sends
/// (a request's head, or its trailers) to the head timeout. hyper reads the preface and says
/// nothing of it; a client that sent it, and its SETTINGS, and no request yet, is an idle
/// connection, not a silent one. If the first bytes are not the preface's, it only passes reads
/// and writes on.
///
/// hyper's h2 says nothing of a header block until its last frame (`END_HEADERS`) has come,
/// and no other frame may come between a HEADERS frame and its CONTINUATION frames (RFC 9113
/// §6.10): a client that sends a HEADERS frame without `END_HEADERS` and its CONTINUATION
/// frames slowly, or never, holds the whole connection, and without this was closed only at
/// `idle_timeout`. So after the preface it follows the client's frames: each read costs a look
/// at the 9-byte header of each frame that begins in it (a read within a DATA frame's payload,
/// a subtraction). When a read ends within a header block (from its HEADERS frame's header
/// to the end of the frame with `END_HEADERS`) or within a frame's header, the head timeout
/// starts, once, from that read; when a read ends outside both, it stops. When it has run out
/// the socket is still read, since the rest of the block may be waiting in it, unread because
/// rampart's worker was busy elsewhere (the delay rampart's, not the client's): bytes are
/// followed as any others (the block may end, or a new one start its own time). Only a read
/// that finds the socket drained fails (`TimedOut`): at once if the socket was already found
/// drained when the time ran out (the client is late), and otherwise, once a block, after one
/// more head timeout from that read (a client held back by TCP flow control while rampart
/// was behind is given a whole timeout once rampart has caught up). So a client that sends
/// a block slowly is cut within two head timeouts, and never while rampart is behind. hyper
/// then ends the connection, dropped as a silent one is (no GOAWAY: h2 cannot write one
/// mid-block, and a graceful close would wait for the block). A request whose HEADERS frame
/// came whole in one read never starts the timer.
#[derive(Debug)]
pub struct SeesPreface<I> {
    io: I,
    /// Bytes of the preface read so far; [`SeesPreface::FRAMES`] once it was whole,
    /// [`SeesPreface::DONE`] if something else came.
    matched: usize,
    state: Arc<ConnState>,
    frames: Frames,
}

/// Where the client's reads stand in its HTTP/2 frames, and the head timer.
#[derive(Debug)]
struct Frames {
    /// A frame's header cut by the end of a read: its first `got` bytes (0: none).
    header: [u8; 9],
    got: usize,
    /// Bytes of the current frame's payload still to come.
    rest: usize,
    /// The current frame is a HEADERS or CONTINUATION frame.
    in_block: bool,
    /// A header block is open after the current frame: it has no `END_HEADERS`.
    open: bool,
    /// A header block began in the current read (its HEADERS frame's type byte came in it):
    /// the head deadline is then counted from this read, whatever blocks ended before it.
    began: bool,
    /// The head timeout (`header_read_timeout`).
    timeout: Duration,
    /// The head deadline, made the first time a read ends within a block (most connections
    /// never make one); polled only while `armed`.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// The last read found the socket drained (`Pending`): when the deadline passes after it,
    /// the client, not rampart, is late.
    drained: bool,
    /// The timed block had its second timeout (its deadline passed while it was still being
    /// read); cleared when a block starts being timed.
    extended: bool,
}

/// HTTP/2 frame types and the flag that end a header block (RFC 9113 §6.2, §6.10).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

// === impl Frames ===

impl Frames {
    /// Follows the frames through `bytes`, the next ones the client sent: a look at each
    /// frame's header, the payloads skipped.
    fn walk(&mut self, mut bytes: &[u8]) {
        loop {
            let n = self.rest.min(bytes.len());
            self.rest -= n;
            bytes = &bytes[n..];
            if bytes.is_empty() {
                return;
            }
            let h = match bytes.split_first_chunk::<9>() {
                Some((h, after)) if self.got == 0 => {
                    bytes = after;
                    *h
                }
                _ => {
                    let n = (9 - self.got).min(bytes.len());
                    self.header[self.got..self.got + n].copy_from_slice(&bytes[..n]);
                    // The type byte (the fourth) came in this read.
                    self.began |= self.got < 4 && self.got + n >= 4 && self.header[3] == HEADERS;
                    self.got += n;
                    bytes = &bytes[n..];
                    if self.got < 9 {
                        return;
                    }
                    self.got = 0;
                    self.header
                }
            };
            self.rest = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            // Any other frame inside a block is h2's protocol error; it ends the block here.
            self.in_block = h[3] == HEADERS || h[3] == CONTINUATION;
            self.open = self.in_block && h[4] & END_HEADERS == 0;
            // Set again when the header was cut after its type byte: at most twice a block.
            self.began |= h[3] == HEADERS;
        }
    }

    /// Whether the reads so far end within a header block: from its HEADERS frame's type byte
    /// to the end of the frame with `END_HEADERS`. A read that ends within another frame's
    /// 9-byte header, or before a frame's type byte is known, is outside (a pause there is a
    /// slow link's, as one inside a DATA payload is, and the connection is idle or busy, not
    /// sending a head).
    fn within(&self) -> bool {
        self.open
            || (self.rest > 0 && self.in_block)
            || (self.got >= 4 && self.header[3] == HEADERS)
    }

    /// After a read: counts the head deadline from this read if the read ended within a block
    /// that began in it, or within a block while none was timed; stops the clock if the read
    /// ended outside any block. So each block has `timeout` from the read its type byte came
    /// in, and a busy connection whose reads all end inside a block (large heads, many
    /// streams) is never cut for it.
    fn time(&mut self) {
        let within = self.within();
        let began = std::mem::take(&mut self.began);
        if within == self.armed && !(within && began) {
            return;
        }
        self.armed = within;
        if within {
            self.extended = false;
            let at = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    /// Whether the head timer ran out (registering `cx` to be woken when it does).
    fn ran_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.armed
            && self
                .timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// After a read that found the socket drained within a block whose deadline had passed:
    /// whether the client is late. It is if the socket was already drained before this read
    /// (the deadline came while rampart waited for the client), or if the block had its second
    /// timeout; otherwise the block was still being read when its time ran out, and it gets
    /// one more timeout from now (`cx` registered for it).
    fn late(&mut self, cx: &mut Context<'_>) -> bool {
        if self.drained || self.extended {
            return true;
        }
        self.extended = true;
        let Some(t) = self.timer.as_mut() else {
            return true;
        };
        t.as_mut().reset(Instant::now() + self.timeout);
        t.as_mut().poll(cx).is_ready()
    }
}

// === impl SeesPreface ===

impl<I> SeesPreface<I> {
    const DONE: usize = usize::MAX;
    const FRAMES: usize = usize::MAX - 1;

    /// `io`, read from its first byte, telling `state`; a header block must come whole within
    /// `head_timeout`.
    pub fn new(io: I, state: Arc<ConnState>, head_timeout: Duration) -> Self {
        SeesPreface {
            io,
            matched: 0,
            state,
            frames: Frames {
                header: [0; 9],
                got: 0,
                rest: 0,
                in_block: false,
                open: false,
                began: false,
                timeout: head_timeout,
                timer: None,
                armed: false,
                drained: false,
                extended: false,
            },
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SeesPreface<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.matched == Self::DONE {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // Past the head deadline the socket is still read: what is waiting in it may end the
        // block.
        let overdue = this.matched == Self::FRAMES && this.frames.ran_out(cx);
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if this.matched == Self::FRAMES {
            if read.is_pending() {
                if overdue && this.frames.late(cx) {
                    let msg = "a header block was not whole within header_read_timeout";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, msg)));
                }
                this.frames.drained = true;
                return read;
            }
            if !got.is_empty() {
                this.frames.drained = false;
                this.frames.walk(got);
                this.frames.time();
            }
            return read;
        }
        if got.is_empty() {
            return read;
        }
        let at = this.matched;
        let n = got.len().min(H2_PREFACE.len() - at);
        if got[..n] != H2_PREFACE[at..at + n] {
            this.matched = Self::DONE;
        } else if at + n == H2_PREFACE.len() {
            this.state.opened();
            this.matched = Self::FRAMES;
            this.frames.walk(&got[n..]);
            this.frames.time();
        } else {
            this.matched = at + n;
        }
        read
    }
}

write_through!(SeesPreface);

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of tokio's clock (paused in these tests), from the thread's first reading.
    fn paused_millis() -> u64 {
        thread_local!(static ORIGIN: Instant = Instant::now());
        ORIGIN.with(|o| u64::try_from(o.elapsed().as_millis()).unwrap_or(u64::MAX)) + 1
    }

    /// A connection's state on tokio's (paused) clock.
    fn on_paused_clock() -> Arc<ConnState> {
        Arc::new(ConnState {
            millis: paused_millis,
            ..ConnState::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_head_timeout() {
        let s = on_paused_clock();
        let t0 = Instant::now();
        let close = s
            .watch(Duration::from_secs(10), Duration::from_secs(60))
            .await;
        assert_eq!(close, Close::Silent);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_end_of_the_last_answer() {
        let s = on_paused_clock();
        let req = s.begin();
        let watcher = {
            let s = s.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let close = s
                    .watch(Duration::from_secs(1), Duration::from_secs(5))
                    .await;
                (close, t0.elapsed())
            })
        };
        // A long answer: the connection is busy, never idle, for 30 s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(req);
        let (close, took) = watcher.await.expect("the watcher must not panic");
        assert_eq!(close, Close::Idle);
        // Closed one idle period after the answer's end (at 30 s).
        assert_eq!(
            took,
            Duration::from_secs(35),
            "idle must count from the answer's end"
        );
    }

    /// An h2 connection whose preface came (at 0.2 s) and no request: not closed at the head
    /// timeout (1 s) but, gracefully, one idle period (3 s) after the preface.
    #[tokio::test(start_paused = true)]
    async fn after_an_h2_preface_the_idle_timeout_governs() {
        let s = on_paused_clock();
        let t0 = Instant::now();
        let watcher = {
            let s = s.clone();
            tokio::spawn(async move {
                let close = s
                    .watch(Duration::from_secs(1), Duration::from_secs(3))
                    .await;
                (close, t0.elapsed())
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.opened();
        let (close, took) = watcher.await.expect("the watcher must not panic");
        assert_eq!(close, Close::Idle);
        assert_eq!(took, Duration::from_millis(3200));
    }

    /// The preface is seen however it is cut into reads, and only the whole of it counts.
    #[tokio::test]
    async fn the_preface_is_seen_across_reads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Where reads end, whether a byte of the preface is changed, and whether it counts.
        for (cuts, changed, whole) in [
            (&[3usize, 10, 24][..], false, true),
            (&[24, 30][..], false, true),
            (&[16][..], false, false),
            (&[10, 30][..], true, false),
        ] {
            let s = ConnState::new();
            let (mut client, server) = tokio::io::duplex(64);
            let mut io = SeesPreface::new(server, s.clone(), Duration::from_secs(10));
            let mut sent = H2_PREFACE.to_vec();
            if changed {
                sent[20] = b'X';
            }
            sent.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
            let mut from = 0;
            for &to in cuts {
                client.write_all(&sent[from..to]).await.expect("write");
                let mut buf = vec![0u8; to - from];
                io.read_exact(&mut buf).await.expect("read");
                assert_eq!(buf, sent[from..to]);
                from = to;
            }
            assert_eq!(s.quiet(), (0, u64::from(whole)), "{cuts:?} {changed}");
        }
    }

    /// One frame: its 9-byte header, then `len` bytes of payload.
    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = u32::try_from(len).expect("a frame length").to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        f.resize(9 + len, 0x55);
        f
    }

    /// A header block is followed from its HEADERS frame's header to the end of the frame with
    /// END_HEADERS, however its frames are cut into reads; other frames, whole or cut in
    /// their payload, are outside it.
    #[test]
    fn a_header_block_is_followed_across_reads() {
        let mut sent = frame(0x0, 0x1, 300); // DATA
        let data_end = sent.len();
        sent.extend(frame(HEADERS, 0x1, 40)); // END_STREAM, no END_HEADERS
        sent.extend(frame(CONTINUATION, 0, 20));
        sent.extend(frame(CONTINUATION, END_HEADERS, 20));
        let block_end = sent.len();
        sent.extend(frame(0x8, 0, 4)); // WINDOW_UPDATE
        sent.extend(frame(HEADERS, END_HEADERS, 0));
        let whole = sent.len();
        for cut in 1..whole {
            let mut f = SeesPreface::new((), ConnState::new(), Duration::from_secs(1)).frames;
            f.walk(&sent[..cut]);
            // Within a block, from its HEADERS frame's type byte on; never within another
            // frame's header.
            let within = (data_end + 4..block_end).contains(&cut)
                || (block_end + 13 + 4..whole).contains(&cut);
            assert_eq!(f.within(), within, "cut at {cut}");
            f.walk(&sent[cut..]);
            assert!(!f.within(), "cut at {cut}");
        }
    }

    /// After the preface, a header block not whole within the head timeout (1 s) fails the
    /// next read: at 1 s from the read its first bytes came in, not later. A block that ends
    /// in time stops the clock, and a later one starts it afresh.
    #[tokio::test(start_paused = true)]
    async fn a_header_block_not_whole_in_the_head_timeout_fails_the_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = ConnState::new();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = SeesPreface::new(server, s.clone(), Duration::from_secs(1));
        let mut buf = vec![0u8; 1 << 16];
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0)); // SETTINGS
        hello.extend(frame(HEADERS, END_HEADERS, 30)); // a whole request
        hello.extend(frame(HEADERS, 0, 30)); // a block left open
        client.write_all(&hello).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), hello.len());
        assert_eq!(s.quiet(), (0, 1));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let end = frame(CONTINUATION, END_HEADERS, 10);
        client.write_all(&end).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), end.len());
        // Closed in time: the clock stopped; a DATA frame's payload cut across reads never
        // starts it.
        let data = frame(0x0, 0, 100);
        client.write_all(&data[..50]).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 50);
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(&data[50..]).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), data.len() - 50);
        // A block opened now and never ended: the read waiting for it fails at 1 s.
        let t0 = Instant::now();
        client
            .write_all(&frame(HEADERS, 0, 30))
            .await
            .expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 39);
        let err = io.read(&mut buf).await.expect_err("the head timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    /// A busy connection whose every read ends inside a header block (large heads in
    /// CONTINUATION frames, many streams) is not cut: each block has the head timeout from the
    /// read it began in, and here each is whole 0.3 s after it began, while the reads go on
    /// for 5 s under a 1 s timeout. A pause inside another frame's 9-byte header is not timed.
    #[tokio::test(start_paused = true)]
    async fn blocks_each_whole_in_time_keep_a_busy_connection_whose_reads_end_inside_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = SeesPreface::new(server, ConnState::new(), Duration::from_secs(1));
        let mut buf = vec![0u8; 1 << 16];
        let mut block = frame(HEADERS, 0x1, 40); // END_STREAM, no END_HEADERS
        block.extend(frame(CONTINUATION, END_HEADERS, 40));
        let half = block.len() / 2;
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0)); // SETTINGS
        hello.extend_from_slice(&block[..half]);
        client.write_all(&hello).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), hello.len());
        // Every 0.3 s: the rest of one block and the first half of the next.
        let mut step = block[half..].to_vec();
        step.extend_from_slice(&block[..half]);
        for _ in 0..17 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(&step).await.expect("write");
            assert_eq!(io.read(&mut buf).await.expect("read"), step.len());
        }
        client.write_all(&block[half..]).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), block.len() - half);
        // A PING frame's header cut after 5 bytes, and a pause of 3 s: no head is being sent.
        let ping = frame(0x6, 0, 8);
        client.write_all(&ping[..5]).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 5);
        tokio::time::sleep(Duration::from_secs(3)).await;
        client.write_all(&ping[5..]).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), ping.len() - 5);
    }

    /// Whether a read of `io` now finds nothing (`Pending`), as hyper's last read before it
    /// waits does; bytes it finds are dropped.
    async fn finds_nothing<I: AsyncRead + Unpin>(io: &mut SeesPreface<I>) -> bool {
        let mut b = [0u8; 64];
        std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut b);
            Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut rb).is_pending())
        })
        .await
    }

    /// The preface, SETTINGS and a HEADERS frame opening a block, read; the socket then found
    /// drained. Returns the time of that read.
    async fn open_a_block(
        client: &mut tokio::io::DuplexStream,
        io: &mut SeesPreface<tokio::io::DuplexStream>,
    ) -> Instant {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0)); // SETTINGS
        hello.extend(frame(HEADERS, 0, 30)); // no END_HEADERS
        client.write_all(&hello).await.expect("write");
        let mut buf = vec![0u8; 1 << 16];
        assert_eq!(io.read(&mut buf).await.expect("read"), hello.len());
        let t0 = Instant::now();
        assert!(finds_nothing(io).await);
        t0
    }

    /// The rest of a header block, sent in time but read only after the head deadline because
    /// rampart's worker was busy elsewhere (here for 1.5 s under a 1 s timeout), is read: the
    /// block ends and the connection goes on. (Before, the overdue read failed unread.)
    #[tokio::test(start_paused = true)]
    async fn a_block_sent_in_time_is_read_when_rampart_is_late_for_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = SeesPreface::new(server, ConnState::new(), Duration::from_secs(1));
        let mut buf = vec![0u8; 1 << 16];
        open_a_block(&mut client, &mut io).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut rest = frame(CONTINUATION, 0, 20);
        rest.extend(frame(CONTINUATION, END_HEADERS, 20));
        client.write_all(&rest).await.expect("write");
        // The worker is busy: the read comes 1.5 s after the block began.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(io.read(&mut buf).await.expect("read"), rest.len());
        assert!(finds_nothing(&mut io).await);
        // Read in time again: the next frames pass, and a pause outside a block is not timed.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ping = frame(0x6, 0, 8);
        client.write_all(&ping).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), ping.len());
    }

    /// A header block never finished is cut when a read finds the socket drained: at the head
    /// timeout (1 s) when the socket was drained as the time ran out; when the block was still
    /// being read then (its next frame waiting, rampart busy until 1 s or 1.5 s), one timeout
    /// after that read, whatever the client dribbles meanwhile, so within two timeouts of
    /// rampart catching up.
    #[tokio::test(start_paused = true)]
    async fn a_block_never_whole_is_cut_at_the_timeout_or_one_more_if_still_being_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 1 << 16];
        // Drained at the deadline: cut at 1 s.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = SeesPreface::new(server, ConnState::new(), Duration::from_secs(1));
        let t0 = open_a_block(&mut client, &mut io).await;
        let err = io.read(&mut buf).await.expect_err("the head timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        for busy in [1000, 1500] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut io = SeesPreface::new(server, ConnState::new(), Duration::from_secs(1));
            let t0 = open_a_block(&mut client, &mut io).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let more = frame(CONTINUATION, 0, 20);
            client.write_all(&more).await.expect("write");
            tokio::time::sleep_until(t0 + Duration::from_millis(busy)).await;
            assert_eq!(io.read(&mut buf).await.expect("read"), more.len());
            // Drained now, the block still open: one more second from this read.
            assert!(finds_nothing(&mut io).await, "{busy}");
            tokio::time::sleep(Duration::from_millis(700)).await;
            client.write_all(&more).await.expect("write");
            assert_eq!(io.read(&mut buf).await.expect("read"), more.len());
            let err = io.read(&mut buf).await.expect_err("the head timed out");
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(t0.elapsed(), Duration::from_millis(busy + 1000), "{busy}");
        }
    }

    /// Answers that end between the watchdog's looks move the close to one idle period after
    /// the last of them, not to a period after the next look: here the first look (1 s, the
    /// idle period) finds the last answer ended at 0.6 s, and the close comes at 1.6 s.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_one_period_after_its_last_answer() {
        let s = on_paused_clock();
        let t0 = Instant::now();
        let watcher = {
            let s = s.clone();
            tokio::spawn(async move {
                let close = s
                    .watch(Duration::from_secs(20), Duration::from_secs(1))
                    .await;
                (close, t0.elapsed())
            })
        };
        tokio::task::yield_now().await;
        for at in [100, 300, 600] {
            tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
            drop(s.begin());
        }
        let (close, took) = watcher.await.expect("the watcher must not panic");
        assert_eq!(close, Close::Idle);
        assert_eq!(took, Duration::from_millis(1600));
    }
}
