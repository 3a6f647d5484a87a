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
//!
//! **The send window.** The bytes rampart writes are read too, for their `DATA` frames' sizes:
//! with the upstream's `WINDOW_UPDATE`s on stream 0 they give the connection's send window
//! (RFC 9113 §6.9: 65,535 bytes to start with, not changed by `SETTINGS`). An upstream that
//! takes uploads and never reopens that window stalls every upload on the connection, however
//! fresh their own stream's window: once it has stayed shut for a bound ([`Link::choked`]), no
//! new upload goes on the connection (`pool::h2`), and one waiting for a stream on it stops
//! waiting ([`Link::upload_slot`]); a request without a body needs no send window and still
//! goes on it. When the window last reopened also says when an upload's last bytes could go
//! ([`Link::open_since`]: `timeout.idle` counts from no earlier).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// A connection's send window before any `WINDOW_UPDATE` (RFC 9113 §6.9.2).
const FIRST_WINDOW: i64 = 65_535;
/// The client connection preface rampart writes first: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

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
    /// The upstream's first `SETTINGS` came (whatever came after it).
    spoke: std::sync::atomic::AtomicBool,
    /// The streams allowed at once: the upstream's limit, at most `cap`.
    limit: parking_lot::Mutex<usize>,
    /// Permits to take back as streams end: the limit went down with more open than it.
    owed: AtomicUsize,
    /// The most streams rampart opens at once on one connection.
    cap: usize,
    /// The origin of `dry_since`'s stamps.
    born: Instant,
    /// When the connection's send window was last found empty, in nanoseconds since `born`
    /// plus one; 0 while it has room.
    dry_since: AtomicU64,
    /// When the send window last reopened after it was found empty, in coarse milliseconds
    /// (`clock::coarse`); 0 if it never was. Written before `dry_since` is cleared.
    reopened: AtomicU64,
    /// Told when the send window is found empty ([`Link::upload_slot`]'s waiters).
    found_shut: Notify,
    /// The connection's socket is closed ([`Link::ended`]): not when hyper's dispatch task
    /// ends, which may be long before (its streams still open after a `GOAWAY`).
    over: std::sync::atomic::AtomicBool,
    /// The TLS error a read of the connection failed with (the server's alert): over TLS 1.3
    /// a server refuses rampart's client certificate after the client's side of the handshake
    /// ended, and the refusal is the first thing read.
    tls_error: std::sync::OnceLock<rustls::Error>,
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
            spoke: std::sync::atomic::AtomicBool::new(false),
            limit: parking_lot::Mutex::new(0),
            owed: AtomicUsize::new(0),
            cap,
            born: Instant::now(),
            dry_since: AtomicU64::new(0),
            reopened: AtomicU64::new(0),
            found_shut: Notify::new(),
            over: std::sync::atomic::AtomicBool::new(false),
            tls_error: std::sync::OnceLock::new(),
        })
    }

    /// Whether the connection's send window has been shut for `bound` or longer: every upload
    /// on it has waited that long for the upstream to take more, and a new one would too.
    /// One load while the window is open.
    pub(crate) fn choked(&self, bound: Duration) -> bool {
        let since = self.dry_since.load(Ordering::Acquire);
        since != 0 && self.nanos(Instant::now()).saturating_sub(since - 1) >= nanos(bound)
    }

    /// Whether a stream could go on the connection now, without waiting for a place.
    pub(crate) fn has_room(&self) -> bool {
        self.slots.available_permits() > 0
    }

    /// Whether the connection's send window is shut now.
    pub(crate) fn is_shut(&self) -> bool {
        self.dry_since.load(Ordering::Acquire) != 0
    }

    fn nanos(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.born))
    }

    /// The send window was found empty: it has been since now, unless it was already.
    /// (`dry_since` and `reopened` are written by the connection's task alone.)
    fn dried(&self) {
        if self.dry_since.load(Ordering::Relaxed) == 0 {
            let now = self.nanos(Instant::now()).saturating_add(1);
            self.dry_since.store(now, Ordering::Release);
            self.found_shut.notify_waiters();
        }
    }

    /// The upstream reopened the send window.
    fn refilled(&self) {
        if self.dry_since.load(Ordering::Relaxed) != 0 {
            let now = crate::clock::coarse::millis().max(1);
            self.reopened.store(now, Ordering::Release);
            self.dry_since.store(0, Ordering::Release);
        }
    }

    /// Since when (coarse milliseconds) the connection's send window has been open, as seen
    /// at `now`: `now` while it is shut, when it last reopened otherwise (0: it never was
    /// shut). An upload handed to h2 whole may still be in its send buffer, behind a shut
    /// window: its last bytes went out no sooner. (A stream's own window is not watched: an
    /// upstream that keeps that one shut is not seen here.) Two loads.
    pub(crate) fn open_since(&self, now: u64) -> u64 {
        if self.dry_since.load(Ordering::Acquire) != 0 {
            return now;
        }
        self.reopened.load(Ordering::Acquire)
    }

    /// Waits until the send window has been shut for `bound` (returns at once if it has).
    async fn shut_for(&self, bound: Duration) {
        loop {
            let mut told = std::pin::pin!(self.found_shut.notified());
            told.as_mut().enable();
            let since = self.dry_since.load(Ordering::Acquire);
            if since == 0 {
                told.await;
                continue;
            }
            let at = self.born + Duration::from_nanos(since - 1) + bound;
            tokio::time::sleep_until(at).await;
            if self.choked(bound) {
                return;
            }
        }
    }

    /// The connection's socket is closed (its [`Watched`] dropped): it is over for good.
    pub(crate) fn ended(&self) {
        self.over.store(true, Ordering::Release);
        self.close(Closed::Gone);
    }

    /// Whether the connection's socket is closed ([`Link::ended`]).
    pub(crate) fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Whether the upstream's first `SETTINGS` came: the connection was open, whatever ended it.
    pub(crate) fn opened(&self) -> bool {
        self.spoke.load(Ordering::Acquire)
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

    /// Waits until the upstream's first `SETTINGS` came (`Ok`, even if a `GOAWAY` came right
    /// after it: the upstream speaks HTTP/2, and the requests for it go elsewhere as from any
    /// connection going away), or the connection closed before.
    pub(crate) async fn settled(&self) -> Result<(), Closed> {
        loop {
            let told = self.settled.notified();
            if self.spoke.load(Ordering::Acquire) {
                return Ok(());
            }
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
        waiting: &std::sync::atomic::AtomicU8,
    ) -> Result<Slot, Closed> {
        let permit = match self.slots.try_acquire() {
            Ok(p) => Ok(p),
            Err(tokio::sync::TryAcquireError::Closed) => Err(()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                waiting.store(crate::proxy::pool::WAIT_STREAM, Ordering::Relaxed);
                let got = self.slots.acquire().await.map_err(|_| ());
                waiting.store(crate::proxy::pool::WAIT_NONE, Ordering::Relaxed);
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

    /// [`Link::slot`] for a request with a body to send: `Ok(None)` if the send window has been
    /// shut for `bound` (at once, or while it waits): its upload could not go, so it goes
    /// elsewhere. A place free at once is taken without a look at the window's time (the
    /// caller looks); a request that waits has a timer only while the window is shut.
    pub(crate) async fn upload_slot(
        self: &Arc<Self>,
        waiting: &std::sync::atomic::AtomicU8,
        bound: Duration,
    ) -> Result<Option<Slot>, Closed> {
        tokio::select! {
            biased;
            slot = self.slot(waiting) => slot.map(Some),
            () = self.shut_for(bound) => {
                waiting.store(super::WAIT_NONE, Ordering::Relaxed);
                Ok(None)
            }
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
            self.spoke.store(true, Ordering::Release);
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

impl Slot {
    /// The connection the place is on.
    pub(crate) fn link(&self) -> &Link {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// `d` in nanoseconds, saturated.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    /// The current frame is a `WINDOW_UPDATE` of the connection (stream 0): its increment is
    /// read (into `entry`).
    update: bool,
    /// What the connection's `WINDOW_UPDATE`s read since the last look added to the send
    /// window ([`Watched`] takes it).
    credit: u64,
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
            if self.update {
                for &b in &bytes[..n] {
                    self.entry[self.entry_have] = b;
                    self.entry_have += 1;
                    if self.entry_have == 4 {
                        let e = &self.entry;
                        let more = u32::from_be_bytes([e[0], e[1], e[2], e[3]]) & 0x7fff_ffff;
                        self.credit += u64::from(more);
                    }
                }
            } else if self.settings {
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
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        // (A WINDOW_UPDATE of any other size is a connection error: h2 ends the connection.)
        self.update = kind == 0x8 && stream == 0 && len == 4;
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
        self.update = false;
        self.have = 0;
    }
}

/// Where the writer is in the frames rampart sends: it counts their `DATA` payloads.
#[derive(Debug)]
struct Writer {
    /// Bytes of the connection preface still to pass.
    preface: usize,
    /// The current frame's header, as far as it went.
    head: [u8; 9],
    have: usize,
    /// Bytes of the current frame's payload still to pass (its header is whole).
    left: usize,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            preface: PREFACE_LEN,
            head: [0; 9],
            have: 0,
            left: 0,
        }
    }
}

impl Writer {
    /// Passes `bytes`, the next rampart wrote: the payload bytes of the `DATA` frames whose
    /// headers were among them (which the connection's send window pays for).
    fn wrote(&mut self, mut bytes: &[u8]) -> u64 {
        let mut spent = 0;
        while !bytes.is_empty() {
            let n = if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                n
            } else if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                n
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                if self.have == 9 {
                    self.have = 0;
                    let h = &self.head;
                    self.left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    if h[3] == 0x0 {
                        spent += self.left as u64;
                    }
                }
                n
            };
            bytes = &bytes[n..];
        }
        spent
    }
}

/// An upstream connection's byte stream, its incoming frames read as they pass (see the
/// module's doc).
#[derive(Debug)]
pub(crate) struct Watched<S> {
    io: S,
    link: Arc<Link>,
    reader: Reader,
    writer: Writer,
    /// The connection's send window: what the upstream allowed, less the `DATA` sent.
    window: i64,
    /// A write that failed before the upstream's first `SETTINGS`, held while what it left to
    /// read is read ([`Watched::after_failed_write`]), with the bound of that wait.
    failed: Option<(io::Error, Pin<Box<tokio::time::Sleep>>)>,
    /// Whether that read was made: once a connection.
    drained: bool,
    /// The connection is over TLS (a failed write may have a TLS alert behind it).
    tls: bool,
    /// Its count in `rampart_upstream_connections` ([`Watched::counted`]), let go with the
    /// socket: h2's task owns this, and ends with the connection's last stream, after
    /// hyper's dispatch task, which a `GOAWAY` or the last handle's drop ends at once.
    _counted: Option<crate::proxy::pool::Slot>,
}

/// The socket is closed: the connection is over for [`Link::is_over`] (which bounds the
/// connections kept with a shut send window, `pool::h2::SHUT_MAX`) and, with `_counted`, for
/// `rampart_upstream_connections`, however long after hyper's dispatch task ended.
impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        self.link.ended();
    }
}

/// How long a write that failed before the upstream's first `SETTINGS` waits for what it
/// left to read (the server's TLS alert, already on its way: it came before the reset that
/// failed the write). A socket that was reset is readable at once; the bound is for one that
/// failed a write some other way and stays silent.
const ALERT_WAIT: Duration = Duration::from_millis(250);

impl<S> Watched<S> {
    /// `io`, over TLS if `tls`, watched for `link`.
    pub(crate) fn new(io: S, link: Arc<Link>, tls: bool) -> Self {
        Watched {
            io,
            link,
            reader: Reader::default(),
            writer: Writer::default(),
            window: FIRST_WINDOW,
            failed: None,
            drained: false,
            tls,
            _counted: None,
        }
    }

    /// The connection counted in `rampart_upstream_connections` by `slot` until its socket
    /// is closed (this dropped).
    pub(super) fn counted(mut self, slot: crate::proxy::pool::Slot) -> Self {
        self._counted = Some(slot);
        self
    }

    /// `bytes` went to the upstream.
    fn wrote(&mut self, bytes: &[u8]) {
        let spent = self.writer.wrote(bytes);
        if spent > 0 {
            self.window -= i64::try_from(spent).unwrap_or(i64::MAX);
            if self.window <= 0 {
                self.link.dried();
            }
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
                let credit = std::mem::take(&mut this.reader.credit);
                if credit > 0 {
                    this.window += i64::try_from(credit).unwrap_or(i64::MAX);
                    if this.window > 0 {
                        this.link.refilled();
                    }
                }
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

    /// After a write failed with `error` before the upstream's first `SETTINGS`: what the
    /// upstream sent before the reset that failed it, read, so that its TLS alert is noted
    /// before the error ends the connection. A server that refuses rampart's client
    /// certificate (TLS 1.3: after the client's side of the handshake ended) sends its alert
    /// and closes, and the preface written meanwhile may fail on the reset socket before
    /// anything is read; the connection then ended without the alert, and its 502 said the
    /// upstream may not speak HTTP/2 (about one time in four). A look at the socket without
    /// waiting is not enough: the runtime may not have seen it readable yet. So the write
    /// waits (its error held, `Pending`) until the socket reads its end, within
    /// [`ALERT_WAIT`]; once a connection. An open connection's write errors pass at once, and
    /// a plain connection's too: it has no alert to read.
    fn after_failed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(Err(error))
                if self.tls
                    && !self.drained
                    && !self.link.opened()
                    && self.link.tls_error().is_none() =>
            {
                self.drained = true;
                let until = Box::pin(tokio::time::sleep(ALERT_WAIT));
                self.failed = Some((error, until));
                self.drain(cx).map(Err)
            }
            polled => polled,
        }
    }

    /// Reads the held failed write's connection to its end (see [`Watched::after_failed_write`]),
    /// then gives that write's error.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let mut scratch = [0u8; 512];
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                // Bytes before the end: read as any are (an HTTP/1.1 answer to the preface
                // still says the server does not speak HTTP/2).
                Poll::Ready(Ok(())) => self.reader.read(buf.filled(), &self.link),
                Poll::Ready(Err(e)) => {
                    self.note(&e);
                    break;
                }
                Poll::Pending => {}
            }
            let bounded = self
                .failed
                .as_mut()
                .map(|(_, until)| until.as_mut().poll(cx));
            if self.link.tls_error().is_some() || !matches!(bounded, Some(Poll::Pending)) {
                break;
            }
            if buf.filled().is_empty() {
                return Poll::Pending;
            }
        }
        let error = self.failed.take().map(|(e, _)| e);
        Poll::Ready(error.unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return this.drain(cx).map(Err);
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote(&buf[..n.min(buf.len())]);
        }
        this.after_failed_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return this.drain(cx).map(Err);
        }
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let part = n.min(b.len());
                this.wrote(&b[..part]);
                n -= part;
            }
        }
        this.after_failed_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return this.drain(cx).map(Err);
        }
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.after_failed_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU8;

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
        let waiting = AtomicU8::new(0);
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
        let waiting = AtomicU8::new(0);
        let held = link.slot(&waiting).await.expect("the one place");
        let waiter = {
            let link = link.clone();
            tokio::spawn(async move { link.slot(&AtomicU8::new(0)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        r.read(&frame(0x7, 0, &[0, 0, 0, 1, 0, 0, 0, 0]), &link);
        assert_eq!(waiter.await.expect("task"), Err(Closed::Gone));
        drop(held);
        assert_eq!(link.slot(&waiting).await.map(drop), Err(Closed::Gone));
    }

    /// The send window is what the upstream allowed less the DATA written, frames split
    /// anywhere and written in slices: found shut, it is choked once shut for the bound, and
    /// the upstream's WINDOW_UPDATE of the connection (not a stream's) opens it again.
    #[tokio::test(start_paused = true)]
    async fn a_send_window_shut_for_the_bound_chokes_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bound = Duration::from_secs(10);
        let link = Link::new(100);
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut watched = Watched::new(ours, link.clone(), false);
        let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        sent.extend(settings(None));
        sent.extend(frame(0x1, 0x4, &[0x82]));
        for _ in 0..4 {
            sent.extend(frame(0x0, 0, &[7; 16_383]));
        }
        // 65,532 bytes sent: 3 left.
        for piece in sent.chunks(5) {
            watched.write_all(piece).await.expect("write");
        }
        assert_eq!(watched.window, 3);
        tokio::time::advance(bound).await;
        assert!(!link.choked(bound), "room left");
        let last = frame(0x0, 0x1, &[7; 3]);
        let (a, b) = last.split_at(4);
        let slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
        let n = watched.write_vectored(&slices).await.expect("write");
        watched.write_all(&last[n..]).await.expect("write");
        assert_eq!(watched.window, 0);
        tokio::time::advance(bound - Duration::from_millis(1)).await;
        assert!(!link.choked(bound));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(link.choked(bound), "shut for the bound");

        // A stream's WINDOW_UPDATE changes nothing; the connection's opens it.
        let mut stream_update = frame(0x8, 0, &[0, 0, 1, 0]);
        stream_update[8] = 1;
        let mut read = settings(None);
        read.extend(stream_update);
        read.extend(frame(0x8, 0, &[0, 0, 0, 10]));
        for b in &read {
            theirs
                .write_all(std::slice::from_ref(b))
                .await
                .expect("write");
            let mut byte = [0u8; 1];
            watched.read_exact(&mut byte).await.expect("read");
        }
        assert_eq!(watched.window, 10);
        assert!(!link.choked(bound), "opened");
        let mut drained = vec![0u8; sent.len() + last.len()];
        theirs
            .read_exact(&mut drained)
            .await
            .expect("what was sent");
    }

    /// An upload waiting for a place stops waiting once the send window has been shut for the
    /// bound, though no place frees; an open window keeps it waiting for a place.
    #[tokio::test(start_paused = true)]
    async fn an_upload_waiting_for_a_place_stops_once_the_window_is_shut_for_the_bound() {
        let bound = Duration::from_secs(10);
        let link = Link::new(100);
        Reader::default().read(&settings(Some(1)), &link);
        let waiting = AtomicU8::new(0);
        let held = link
            .upload_slot(&waiting, bound)
            .await
            .expect("open")
            .expect("the one place");
        let waiter = {
            let link = link.clone();
            tokio::spawn(async move {
                let waiting = AtomicU8::new(0);
                let got = link.upload_slot(&waiting, bound).await.map(|s| s.is_some());
                (got, waiting.load(Ordering::Relaxed))
            })
        };
        let settle = || async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        tokio::time::advance(bound * 3).await;
        settle().await;
        assert!(
            !waiter.is_finished(),
            "the window has room: it waits for a place"
        );
        link.dried();
        tokio::time::advance(bound - Duration::from_millis(1)).await;
        settle().await;
        assert!(!waiter.is_finished(), "not shut for the bound yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        let (got, waiting) = waiter.await.expect("the waiter");
        assert_eq!(got, Ok(false), "given up: its upload goes elsewhere");
        assert_eq!(waiting, crate::proxy::pool::h2::WAIT_NONE);
        drop(held);
    }

    /// The send window is open since it last reopened, or now while it is shut.
    #[test]
    fn the_window_is_open_since_it_last_reopened() {
        let link = Link::new(100);
        assert_eq!(link.open_since(5), 0, "never shut");
        link.dried();
        assert_eq!(link.open_since(5), 5, "shut now");
        let before = crate::clock::coarse::millis();
        link.refilled();
        let reopened = link.open_since(u64::MAX);
        assert!(reopened >= before && reopened != u64::MAX, "{reopened}");
    }

    #[tokio::test]
    async fn an_http1_answer_to_the_preface_is_not_http2() {
        let link = Link::new(100);
        Reader::default().read(b"HTTP/1.1 400 Bad Request\r\n\r\n", &link);
        assert_eq!(link.settled().await, Err(Closed::NotHttp2));
        link.close(Closed::Gone);
        assert_eq!(link.closed(), Some(Closed::NotHttp2));
    }

    /// A TLS 1.3 server's refusal as rampart's socket meets it: every write fails (the socket
    /// was reset), and the alert that came before the reset is read only once the runtime has
    /// seen the socket readable (the first read waits for that).
    struct Refused {
        reads: u8,
    }

    impl AsyncRead for Refused {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            if self.reads == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
            Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, alert)))
        }
    }

    impl AsyncWrite for Refused {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A write that fails before the upstream's first SETTINGS waits for the alert behind it:
    /// the connection ends with the server's refusal noted, whatever the runtime had seen of
    /// the socket when the write failed. Before, one look without waiting missed it, and the
    /// refusal was said as an upstream that may not speak HTTP/2.
    #[tokio::test]
    async fn a_failed_write_before_settings_reads_the_alert_behind_it() {
        use tokio::io::AsyncWriteExt;
        let link = Link::new(100);
        let mut watched = Watched::new(Refused { reads: 0 }, link.clone(), true);
        let failed = watched.write(b"PRI * HTTP/2.0").await;
        let kind = failed.expect_err("the write fails").kind();
        assert_eq!(kind, io::ErrorKind::ConnectionReset, "with its own error");
        assert!(
            matches!(
                link.tls_error(),
                Some(rustls::Error::AlertReceived(
                    rustls::AlertDescription::CertificateRequired
                ))
            ),
            "the alert must be noted: {:?}",
            link.tls_error()
        );
    }
}
