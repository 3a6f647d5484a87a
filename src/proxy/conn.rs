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
//!   between requests).
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
/// HTTP/2 preface has been read through it. hyper reads the preface and says nothing of it; a
/// client that sent it, and its SETTINGS, and no request yet, is an idle connection, not a
/// silent one. Past the preface's 24 bytes (or the first byte that is not the preface's) it
/// only passes reads and writes on.
#[derive(Debug)]
pub struct SeesPreface<I> {
    io: I,
    /// Bytes of the preface read so far; [`SeesPreface::DONE`] once it was whole, or
    /// something else came.
    matched: usize,
    state: Arc<ConnState>,
}

// === impl SeesPreface ===

impl<I> SeesPreface<I> {
    const DONE: usize = usize::MAX;

    /// `io`, read from its first byte, telling `state`.
    pub fn new(io: I, state: Arc<ConnState>) -> Self {
        SeesPreface {
            io,
            matched: 0,
            state,
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
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        let at = this.matched;
        let n = got.len().min(H2_PREFACE.len() - at);
        if got[..n] != H2_PREFACE[at..at + n] {
            this.matched = Self::DONE;
        } else if at + n == H2_PREFACE.len() {
            this.state.opened();
            this.matched = Self::DONE;
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
            let mut io = SeesPreface::new(server, s.clone());
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
