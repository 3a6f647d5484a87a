//! What rampart reads of an HTTP/2 upstream connection's frames as they come in, before the
//! h2 library does: the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`, its `GOAWAY`, the
//! connection's end, and whether it speaks HTTP/2 at all (its first frame must be `SETTINGS`).
//!
//! **Why.** hyper hands a request to the h2 library as soon as it is sent; at the upstream's
//! stream limit the library holds it (one, with a stream id), and hyper holds the rest. A
//! connection that then goes away, or a client that leaves, found that held request beyond
//! rampart's reach: hyper dropped it as "dispatch gone" (a 502, though it was never sent), or
//! sent it late, whole, for a client already gone. So rampart keeps the count itself
//! ([`Link::slot`]): a request goes to hyper only when the upstream takes a stream now, and
//! one that waits waits in rampart, where a connection going away sends it to the next one
//! and a client leaving drops it unsent.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};

/// The connection waits for the upstream's first `SETTINGS`.
const OPENING: u8 = 0;
/// The upstream's `SETTINGS` came: streams may be opened.
const READY: u8 = 1;
/// A `GOAWAY` came, or the connection ended: no new stream.
const GONE: u8 = 2;
/// The upstream's first bytes were not an HTTP/2 `SETTINGS` frame.
const NOT_H2: u8 = 3;

/// What one HTTP/2 upstream connection allows now, shared by its reader ([`Watched`]) and the
/// requests that would open a stream on it.
#[derive(Debug)]
pub(crate) struct Link {
    /// One permit per stream the upstream takes now (taken permits are forgotten and given
    /// back by [`Slot`]'s drop).
    slots: Semaphore,
    /// [`OPENING`], [`READY`], [`GONE`] or [`NOT_H2`].
    state: AtomicU8,
    /// Told when `state` leaves [`OPENING`].
    settled: Notify,
    /// The streams allowed at once: the upstream's limit, at most `cap`.
    limit: parking_lot::Mutex<usize>,
    /// Permits to take back as streams end: the limit went down with more open than it.
    owed: AtomicUsize,
    /// The most streams rampart opens at once on one connection.
    cap: usize,
    /// The TLS error a read of the connection failed with (the server's alert): over TLS 1.3
    /// a server refuses rampart's client certificate after the client's side of the handshake
    /// ended, and the refusal is the first thing read.
    tls_error: std::sync::OnceLock<rustls::Error>,
    /// The upstream's first `SETTINGS` came (the state says so only until it is [`GONE`]).
    opened: AtomicBool,
}

/// A stream's place on its connection, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Link>);

/// Why a connection takes no new stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// It is going away (`GOAWAY`) or gone.
    Gone,
    /// Its upstream does not speak HTTP/2.
    NotHttp2,
}

impl Link {
    /// A link for a new connection, opening at most `cap` streams at once.
    pub(crate) fn new(cap: usize) -> Arc<Link> {
        Arc::new(Link {
            slots: Semaphore::new(0),
            state: AtomicU8::new(OPENING),
            settled: Notify::new(),
            limit: parking_lot::Mutex::new(0),
            owed: AtomicUsize::new(0),
            cap,
            tls_error: std::sync::OnceLock::new(),
            opened: AtomicBool::new(false),
        })
    }

    /// Whether the upstream's first `SETTINGS` came: the connection was open, whatever ended it.
    pub(crate) fn opened(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    /// The TLS error a read of the connection failed with, if one did.
    pub(crate) fn tls_error(&self) -> Option<&rustls::Error> {
        self.tls_error.get()
    }

    /// Whether the connection takes no new stream.
    pub(crate) fn closed(&self) -> Option<Closed> {
        match self.state.load(Ordering::Acquire) {
            NOT_H2 => Some(Closed::NotHttp2),
            GONE => Some(Closed::Gone),
            _ => None,
        }
    }

    /// Waits until the upstream's first `SETTINGS` came (`Ok`), or the connection closed.
    pub(crate) async fn settled(&self) -> Result<(), Closed> {
        loop {
            let told = self.settled.notified();
            if let Some(c) = self.closed() {
                return Err(c);
            }
            if self.state.load(Ordering::Acquire) == READY {
                return Ok(());
            }
            told.await;
        }
    }

    /// A place for one stream: at once if the upstream takes one more now, else when one of
    /// the connection's streams ends. `waiting` is set while it waits. An error when the
    /// connection closes first (the request was never handed to it).
    pub(crate) async fn slot(
        self: &Arc<Self>,
        waiting: &std::sync::atomic::AtomicBool,
    ) -> Result<Slot, Closed> {
        let permit = match self.slots.try_acquire() {
            Ok(p) => Ok(p),
            Err(tokio::sync::TryAcquireError::Closed) => Err(()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                waiting.store(true, Ordering::Relaxed);
                let got = self.slots.acquire().await.map_err(|_| ());
                waiting.store(false, Ordering::Relaxed);
                got
            }
        };
        match permit {
            Ok(p) => {
                p.forget();
                Ok(Slot(self.clone()))
            }
            Err(()) => Err(self.closed().unwrap_or(Closed::Gone)),
        }
    }

    /// The connection takes no new stream: those waiting go elsewhere.
    pub(crate) fn close(&self, why: Closed) {
        let to = match why {
            Closed::Gone => GONE,
            Closed::NotHttp2 => NOT_H2,
        };
        // Not-HTTP/2 is said over gone (its reason), gone never over not-HTTP/2.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| match s {
                NOT_H2 => None,
                GONE if to == GONE => None,
                _ => Some(to),
            });
        self.slots.close();
        self.settled.notify_waiters();
    }

    /// The upstream's `SETTINGS`: `max` its `SETTINGS_MAX_CONCURRENT_STREAMS`, if given. The
    /// first sets the limit (none given: no limit but the cap, RFC 9113 §6.5.2); a later one
    /// changes it only if it gives one.
    fn settings(&self, max: Option<u32>) {
        let first = self.state.load(Ordering::Acquire) == OPENING;
        if first || max.is_some() {
            let want = max.map_or(self.cap, |m| (m as usize).min(self.cap));
            self.set_limit(want);
        }
        if first {
            self.opened.store(true, Ordering::Release);
            let _ =
                self.state
                    .compare_exchange(OPENING, READY, Ordering::AcqRel, Ordering::Acquire);
            self.settled.notify_waiters();
        }
    }

    /// Makes `want` streams the most open at once.
    fn set_limit(&self, want: usize) {
        let mut limit = self.limit.lock();
        if want > *limit {
            let mut more = want - *limit;
            // Permits still owed are forgiven first.
            while more > 0 {
                let owed = self.owed.load(Ordering::Acquire);
                if owed == 0 {
                    break;
                }
                let pay = owed.min(more);
                if self
                    .owed
                    .compare_exchange(owed, owed - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    more -= pay;
                }
            }
            self.slots.add_permits(more);
        } else {
            let fewer = *limit - want;
            let taken = self.slots.forget_permits(fewer);
            self.owed.fetch_add(fewer - taken, Ordering::AcqRel);
        }
        *limit = want;
    }

    /// A stream ended: its place is free again, unless the limit went down meanwhile.
    fn release(&self) {
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
        if owed.is_err() {
            self.slots.add_permits(1);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Where the reader is in the upstream's frames.
#[derive(Debug, Default)]
struct Reader {
    /// The current frame's header, as far as it came.
    head: [u8; 9],
    have: usize,
    /// Bytes of the current frame's payload still to come (its header is whole).
    left: usize,
    /// The current frame is a `SETTINGS` (not an ack): its entries are read.
    settings: bool,
    /// The current `SETTINGS` entry, as far as it came.
    entry: [u8; 6],
    entry_have: usize,
    /// The `SETTINGS_MAX_CONCURRENT_STREAMS` of the current `SETTINGS`.
    max: Option<u32>,
    /// A frame was read (the first must be `SETTINGS`).
    started: bool,
    /// Nothing more is read (not HTTP/2, or gone).
    done: bool,
}

impl Reader {
    /// Reads `bytes`, the next the upstream sent, telling `link` what they say.
    fn read(&mut self, mut bytes: &[u8], link: &Link) {
        while !bytes.is_empty() && !self.done {
            if self.have < 9 {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.header(link);
                }
                continue;
            }
            let n = self.left.min(bytes.len());
            if self.settings {
                for &b in &bytes[..n] {
                    self.entry[self.entry_have] = b;
                    self.entry_have += 1;
                    if self.entry_have == 6 {
                        self.entry_have = 0;
                        if u16::from_be_bytes([self.entry[0], self.entry[1]]) == 3 {
                            let e = &self.entry;
                            self.max = Some(u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
                        }
                    }
                }
            }
            self.left -= n;
            bytes = &bytes[n..];
            if self.left == 0 {
                self.end_frame(link);
            }
        }
    }

    /// A frame's header is whole.
    fn header(&mut self, link: &Link) {
        let h = &self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let first = !self.started;
        self.started = true;
        if first && (kind != 0x4 || flags & 0x1 != 0) {
            // RFC 9113 §3.4: a server's preface is a SETTINGS frame. Anything else (most
            // often `HTTP/1.1 400 ...`) is not an HTTP/2 server's.
            self.done = true;
            link.close(Closed::NotHttp2);
            return;
        }
        if kind == 0x7 {
            // GOAWAY: no new stream. Those it lets finish, finish.
            self.done = true;
            link.close(Closed::Gone);
            return;
        }
        self.settings = kind == 0x4 && flags & 0x1 == 0;
        self.max = None;
        self.entry_have = 0;
        self.left = len;
        if len == 0 {
            self.end_frame(link);
        }
    }

    /// A frame's payload is whole.
    fn end_frame(&mut self, link: &Link) {
        if self.settings {
            link.settings(self.max);
            self.settings = false;
        }
        self.have = 0;
    }
}

/// An upstream connection's byte stream, its incoming frames read as they pass (see the
/// module's doc).
#[derive(Debug)]
pub(crate) struct Watched<S> {
    io: S,
    link: Arc<Link>,
    reader: Reader,
}

impl<S> Watched<S> {
    pub(crate) fn new(io: S, link: Arc<Link>) -> Self {
        Watched {
            io,
            link,
            reader: Reader::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                // The upstream closed its side.
                this.link.close(Closed::Gone);
            }
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                this.reader.read(new, &this.link);
            }
            Poll::Ready(Err(e)) => {
                this.note(e);
                this.link.close(Closed::Gone);
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> Watched<S> {
    /// Records the TLS error the connection's read failed with, if it is one.
    fn note(&self, e: &io::Error) {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            let _ = self.link.tls_error.set(tls.clone());
        }
    }

    /// After a write failed: the server's TLS alert waiting unread behind it, noted. A server
    /// that refuses rampart's client certificate (TLS 1.3: after the client's side of the
    /// handshake ended) sends its alert and closes, and the preface written meanwhile may
    /// fail on the closed socket before anything is read. Not waited for.
    fn after_failed_write<T>(&mut self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if matches!(polled, Poll::Ready(Err(_))) && self.link.tls_error().is_none() {
            let mut scratch = [0u8; 256];
            let mut buf = ReadBuf::new(&mut scratch);
            let mut quiet = Context::from_waker(&super::super::conn::NOOP);
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_read(&mut quiet, &mut buf) {
                self.note(&e);
            }
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_failed_write(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_failed_write(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.after_failed_write(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small");
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn settings(max: Option<u32>) -> Vec<u8> {
        let mut p = vec![0, 4, 0, 1, 0, 0]; // INITIAL_WINDOW_SIZE 65536
        if let Some(m) = max {
            p.extend_from_slice(&[0, 3]);
            p.extend_from_slice(&m.to_be_bytes());
        }
        frame(0x4, 0, &p)
    }

    /// Frames split at every byte are read as whole ones.
    #[test]
    fn the_limit_is_read_from_settings_split_anywhere() {
        let link = Link::new(100);
        let mut r = Reader::default();
        let mut bytes = settings(Some(2));
        bytes.extend(frame(0x6, 0, &[0; 8]));
        for b in &bytes {
            r.read(std::slice::from_ref(b), &link);
        }
        assert_eq!(link.closed(), None);
        assert_eq!(link.state.load(Ordering::Acquire), READY);
        assert_eq!(link.slots.available_permits(), 2);
        // A later SETTINGS without the limit keeps it; one with it changes it, capped.
        r.read(&settings(None), &link);
        assert_eq!(link.slots.available_permits(), 2);
        r.read(&settings(Some(1000)), &link);
        assert_eq!(link.slots.available_permits(), 100);
    }

    #[test]
    fn a_first_settings_without_a_limit_allows_the_cap() {
        let link = Link::new(7);
        Reader::default().read(&settings(None), &link);
        assert_eq!(link.slots.available_permits(), 7);
    }

    /// A limit lowered below the open streams takes their places back as they end.
    #[tokio::test]
    async fn a_lowered_limit_is_kept_as_streams_end() {
        let link = Link::new(100);
        let mut r = Reader::default();
        r.read(&settings(Some(2)), &link);
        let waiting = AtomicBool::new(false);
        let a = link.slot(&waiting).await.expect("a");
        let b = link.slot(&waiting).await.expect("b");
        r.read(&settings(Some(1)), &link);
        drop(a);
        assert_eq!(link.slots.available_permits(), 0, "one still open");
        drop(b);
        assert_eq!(link.slots.available_permits(), 1);
        r.read(&settings(Some(3)), &link);
        assert_eq!(link.slots.available_permits(), 3);
    }

    /// A GOAWAY closes the link: a waiter is told, and none gets a place.
    #[tokio::test]
    async fn goaway_sends_waiters_away() {
        let link = Link::new(100);
        let mut r = Reader::default();
        r.read(&settings(Some(1)), &link);
        let waiting = AtomicBool::new(false);
        let held = link.slot(&waiting).await.expect("the one place");
        let waiter = {
            let link = link.clone();
            tokio::spawn(async move { link.slot(&AtomicBool::new(false)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        r.read(&frame(0x7, 0, &[0, 0, 0, 1, 0, 0, 0, 0]), &link);
        assert_eq!(waiter.await.expect("task"), Err(Closed::Gone));
        drop(held);
        assert_eq!(link.slot(&waiting).await.map(drop), Err(Closed::Gone));
    }

    #[tokio::test]
    async fn an_http1_answer_to_the_preface_is_not_http2() {
        let link = Link::new(100);
        Reader::default().read(b"HTTP/1.1 400 Bad Request\r\n\r\n", &link);
        assert_eq!(link.settled().await, Err(Closed::NotHttp2));
        link.close(Closed::Gone);
        assert_eq!(link.closed(), Some(Closed::NotHttp2));
    }
}
