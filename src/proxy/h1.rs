//! The lean HTTP/1.1 server: the common case served without hyper's server machinery.
//!
//! Why: hyper's HTTP/1 dispatch (version sniffing, dispatcher state machine, per-request
//! timers and header maps) cost about as much per proxied request as all of rampart's own
//! request path (issue 22). Most traffic a sidecar sees is plain keep-alive requests without a
//! body or with a small one, so this loop serves exactly those and nothing else:
//!
//! - it reads into its own buffer and parses each head (`parse.rs`); a head that is whole,
//!   within `max_head`, without `Upgrade`, `Expect` or `TE`, not CONNECT, and with no body or
//!   one `content-length` body (up to `parse::WHOLE_BODY_MAX`), goes through the same request
//!   path as every request (`stack::handle`, via `listener::serve`) with that body as one
//!   frame, and its answer is written here (`write.rs`) with hyper's framing. A body that
//!   comes after its head, in later reads, is read into the buffer first, as long as each of
//!   those reads comes within [`BODY_GAP`] (and `body_idle_timeout`) of the one before, and
//!   no route's `timeout.request` can have passed since the head (`BodyWait`): the request's
//!   time runs from its head, here and in hyper's hands;
//! - anything else — a chunked body, a larger body, a body whose rest is slower to come than
//!   that, a malformed or oversized head, an HTTP/2 preface as the first bytes of a cleartext
//!   connection (anywhere else, or over TLS, it is refused: 400), a half head or body then end
//!   of stream — hands the connection to hyper for good, with the bytes already read replayed
//!   first ([`Rewind`]). The hand-off comes before that request is answered and after every
//!   earlier answer is written, so pipelined requests keep their order. A body handed off
//!   after a gap is hyper's from then on: its stall answer (408 after `body_idle_timeout`)
//!   counts from the hand-off, so it comes at most [`BODY_GAP`] later than the stall began
//!   plus that timeout.
//!
//! The connection keeps the listener's guarantees, with one timer instead of the watchdog
//! (`conn.rs`, which takes over with hyper): no request within the head timeout of accept
//! closes it; after an answer, a connection waiting for its next request with nothing of it
//! read is closed gracefully `idle_timeout` after the end of that answer (SPEC §14), and once
//! the first bytes of that head come, the head must be whole within `header_read_timeout` of
//! them (SPEC §2), or the connection is dropped. A drain lets the answer in flight finish
//! with `connection: close`, and closes a connection waiting for a head.
//!
//! A connection (plain or TLS) that has waited [`PARK_AFTER`] for a head, with nothing of one
//! read, is parked: this future returns it ([`End::Park`]) with where its wait ends, the caller
//! frees the future (about 5 KiB, the request path's futures inline; over TLS the handshake's
//! and the stream's too) and waits for the socket to be readable (or closed), the wait's end or
//! the listener's stop with a small one, then serves it again from [`Start::Resumed`]. An idle
//! plain connection costs about a quarter of what it did.

pub mod gone;
pub mod late;
pub mod parse;
mod rewind;
pub mod write;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use self::parse::{Parsed, Reuse};
pub use self::rewind::Rewind;
use self::write::Ask;
use super::conn::ConnState;
use super::forward::Peer;
use super::shared::Shared;
use super::spare::Shelf;
use crate::clock::coarse;
use crate::generation::ListenerRt;

/// The read buffer's first size, and the least free room asked before each read.
const READ_SIZE: usize = 8 * 1024;
/// The write buffer's first size.
const OUT_SIZE: usize = 1024;
/// Most pairs of buffers kept per thread for connections that wait (see [`Buffers`]).
const BUFFERS_KEPT: usize = 256;
/// A write buffer grown beyond this (a very large head) is freed, not kept.
const OUT_KEEP_MAX: usize = 16 * 1024;
/// A read buffer grown beyond this (a body read whole) is freed, not kept, when the
/// connection waits.
const READ_KEEP_MAX: usize = 16 * 1024;
/// Longest wait between two reads of a body's rest (or `body_idle_timeout`, if shorter);
/// past it, the connection goes to hyper, which streams the body to the upstream as it comes.
/// A body that straddles reads on a live connection comes within a round trip; a client that
/// stalls is hyper's, whose stall answer is counted from the hand-off.
pub const BODY_GAP: Duration = Duration::from_millis(200);

thread_local! {
    /// Buffers of waiting connections, a read buffer and a write buffer a pair.
    static SPARES: Shelf<Box<Held>> = const { Shelf::new(BUFFERS_KEPT) };
}

/// One connection's surroundings.
pub(super) struct Conn<'a> {
    pub shared: &'a Arc<Shared>,
    /// The listener's configured address (its key in each generation).
    pub addr: SocketAddr,
    /// The listener as configured when the connection was accepted (limits and timeouts).
    pub lst: &'a ListenerRt,
    pub peer: &'a Arc<Peer>,
    pub state: &'a Arc<ConnState>,
}

/// How the lean server left a connection.
pub(super) enum End<I> {
    /// Closed (or to be dropped).
    Closed,
    /// For hyper from here on, the bytes read so far first; with when the head of the request
    /// it takes came, if it came before (its body's rest was slow: the request's time runs
    /// from its head).
    HandOff(Rewind<I>, Option<Instant>),
    /// Waiting for a head, with nothing of one read, for [`PARK_AFTER`]: the caller drops
    /// this future (the request path's, about 5 KiB) and waits for the socket with a small
    /// one, then serves it again from [`Start::Resumed`].
    Park(I, Wait),
}

/// Where a parked connection's wait for a head ends, kept while it is parked.
#[derive(Clone, Copy, Debug)]
pub(super) struct Wait {
    /// When the wait ends: the head timeout of accept for the first head, else the idle
    /// timeout counted from the answer before (a parked connection has read nothing of a head).
    pub due: Instant,
    /// The wait is for the connection's first head (its end drops the connection).
    pub first: bool,
}

/// Where [`serve`] starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum Start {
    /// A connection just accepted (or handshaken), with this long for its first head.
    Accepted(Duration),
    /// A parked connection whose socket woke (or whose wait ended, or whose listener stops).
    Resumed(Wait),
}

/// How long a connection waits for a head, with nothing of one read, before it is parked
/// (`End::Park`). Parking frees the request path's future, the most of what an idle
/// connection costs (5 KiB of its 5.4), and taking it up again costs an allocation and the
/// future's start: nothing next to a request that comes this long after the one before. A
/// busy connection's timer is moved to its latest wait about once per this period.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// How a stream the lean server closes ends, once what it owes is written.
pub(super) trait Close: AsyncWrite + Unpin {
    /// Whether the stream is shut down before it is dropped. TLS must be (its `close_notify`
    /// tells the client the answer was not cut short); a TCP socket's close sends the same FIN
    /// a shutdown would, after everything written, so a plain connection makes one syscall
    /// fewer. (Bytes of the client's still unread turn the close into a reset, as they did
    /// after a shutdown.)
    const SHUT_DOWN: bool;
}

impl Close for super::sock::Sock {
    const SHUT_DOWN: bool = false;
}

impl Close for tokio_rustls::server::TlsStream<super::sock::Sock> {
    const SHUT_DOWN: bool = true;
}

/// Ends `io` as its kind needs ([`Close`]); the caller drops it next.
async fn close<I: Close>(io: &mut I) {
    if I::SHUT_DOWN {
        let _ = io.shutdown().await;
    }
}

/// Most time and bytes [`linger`] waits for and reads.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// Writes the answer to a refused head, then closes the connection with [`linger`].
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    rsp: http::Response<super::body::Body>,
) {
    let ask = Ask {
        head: false,
        http10: false,
        keep_alive: false,
    };
    let _ = write::answer(io, out, rsp, ask).await;
    linger(io).await;
}

/// Answers a head the lean server does not read (`refusal`; `req`: what its request line
/// says, `parse::refused_line`) as `stack::refuse_head` does, then closes the connection with
/// [`linger`].
async fn refuse_head<I: AsyncRead + AsyncWrite + Unpin>(
    c: &Conn<'_>,
    io: &mut I,
    out: &mut Vec<u8>,
    req: http::Request<()>,
    refusal: parse::Refusal,
) {
    let active = c.state.begin();
    let gen = c.shared.current.load_full();
    let rsp = match gen.listener(&c.addr).as_deref() {
        Some(lst) => super::stack::refuse_head(c.shared, lst, req, refusal, active),
        None => super::listener::removed(),
    };
    drop(gen);
    refuse(io, out, rsp).await;
}

/// Closes a connection whose head was refused so that the client can read the answer: its
/// write side is shut (FIN), and what the client still sends (the rest of an oversized head,
/// a body) is read and dropped until it closes too, for at most [`LINGER`] and
/// [`LINGER_BYTES`]. Closing with the client's bytes unread would reset the connection, and a
/// reset can discard the answer before the client reads it.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I) {
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long after a request's answer begins to be awaited the client's end of its stream
/// (FIN) still reads as a half-close: a client that sends its request and shuts its write side
/// at once (`nc -N`, a one-shot script) waits for the answer. One that ends its stream later,
/// while the answer is awaited, has given up (its timeout ran out, it was closed): the request
/// is abandoned, as nginx and Envoy abandon it; unless a whole later request came before its
/// end of stream, which makes that a half-close too (a pipelining client's last request sent).
const HALF_CLOSE_GRACE_MS: u64 = 50;

/// Whether a client whose stream ended at `now` has gone, its answer awaited since `began`
/// (coarse milliseconds): past [`HALF_CLOSE_GRACE_MS`], else it half-closed. The lean path's
/// rule, and the one for connections hyper serves (`gone.rs`).
#[inline]
fn gone_after(began: u64, now: u64) -> bool {
    now.saturating_sub(began) > HALF_CLOSE_GRACE_MS
}

/// Bytes read at a time from a client whose answer is awaited (of its later requests,
/// pipelined); past [`READ_KEEP_MAX`] of them in the buffer, the client is no longer watched
/// until the answer is written (its bytes wait in the socket).
const WATCH_READ: usize = 1024;

/// Awaits `handling`, the request's answer, while watching the client's side of the stream: a
/// client that resets the connection, or ends its stream more than [`HALF_CLOSE_GRACE_MS`]
/// after the wait began with no whole later request read, has gone, and `None` says so (the
/// caller drops the request, which cancels its try and frees its slot; `finish.rs` counts and
/// logs it as a 499). Bytes of later requests read meanwhile are kept in `read`; one that
/// pipelined a whole request and then ended its stream half-closed, and gets both answers.
///
/// The watch costs a look at the socket's readiness when the answer is not ready at once: the
/// read that brought the head was short, so tokio knows the socket has nothing more and no
/// call is made until the kernel says otherwise.
///
/// Not an `async fn`: the request's future stays where the caller pinned it (an `async fn`
/// would keep a second copy of it in every connection's future).
fn answer_unless_gone<'a, I, F>(
    io: &'a mut I,
    read: &'a mut BytesMut,
    mut handling: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a
where
    I: AsyncRead + Unpin,
    F: Future,
{
    let mut watching = true;
    // When the answer was first found not ready (0: not yet), by the coarse clock.
    let mut began = 0;
    poll_fn(move |cx| {
        if let Poll::Ready(rsp) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(rsp));
        }
        if began == 0 {
            began = coarse::millis().max(1);
        }
        while watching {
            let mut room = [std::mem::MaybeUninit::<u8>::uninit(); WATCH_READ];
            let mut buf = tokio::io::ReadBuf::uninit(&mut room);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    // After a whole later request, an end of stream is a half-close whenever
                    // it comes (RFC 9112 §9.6): the client sent what it had, and waits for
                    // each answer.
                    if gone_after(began, coarse::millis()) && !parse::whole_head(read) {
                        return Poll::Ready(None);
                    }
                    // Shut with the request: a half-close; the answer is still wanted.
                    watching = false;
                }
                Poll::Ready(Ok(())) => {
                    read.extend_from_slice(buf.filled());
                    watching = read.len() < READ_KEEP_MAX;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(None),
            }
        }
        Poll::Pending
    })
}

/// What woke the wait for more of a head.
enum Wake {
    Read(std::io::Result<usize>),
    /// Close gracefully: drain, or idle.
    Graceful,
    /// Drop at once: no request in time, or a head that took too long.
    Drop,
    /// The rest of a body did not come within the gap.
    Slow,
    /// Nothing of a head for [`PARK_AFTER`].
    Park,
}

/// Serves `io` until it closes, needs hyper, or is parked. From [`Start::Accepted`], the time
/// given is what is left for the first request to arrive (the head timeout less the TLS
/// handshake); from [`Start::Resumed`], the wait goes on to the end it had.
///
/// Not an `async fn`, so its arguments are not kept twice in every connection's task (see
/// `stack::handle`).
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
pub(super) fn serve<'a, I>(
    c: Conn<'a>,
    mut io: I,
    start: Start,
    stopped: &'a mut watch::Receiver<bool>,
) -> impl Future<Output = End<I>> + 'a
where
    I: AsyncRead + Close + 'a,
{
    async move {
        let max_head = c.lst.max_head;
        // Waiting for a later head ends at the idle timeout, counted from the end of the answer
        // before, with a graceful close; once bytes of it have come, at the head timeout
        // counted from the first of them (`head_started`), with a drop.
        let wait_limit = c.lst.idle_timeout;
        let mut head_started = false;
        let body_gap = c.lst.body_idle_timeout.min(BODY_GAP);
        // Bytes the buffer must hold before the next parse: a head's and its body's, while the
        // body's rest is read (0: parse after every read).
        let mut want = 0;
        let mut bufs = Buffers::default();
        // The listener's stop: the `changed` future is polled once, to leave the task's waker
        // with the channel; after that a look at the version is enough (no lock per request).
        let probe = stopped.clone();
        let mut stop = pin!(stopped.changed());
        let mut listening = false;
        let mut stopping = false;
        // One timer for every wait, made on the first. Each wait for a new head has its own end
        // (`due`), later than the one before; the timer is not moved to it on every request (a
        // reset takes the timer wheel's lock and moves the entry). While it is armed for no later
        // than `due` it is left alone: when it fires before `due`, it is re-armed for `due` then.
        // So a busy connection re-arms it about once per `wait_limit`, not once per request.
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        let mut timing = false;
        let opened = Instant::now();
        // The end given for the wait under way (the first head's, or a resumed wait's) until a
        // head is read; and whether that wait is for the first head (`Drop` at its end).
        let (mut given, mut first) = match start {
            Start::Accepted(head) => (Some(opened + head), true),
            Start::Resumed(w) => (Some(w.due), w.first),
        };
        let mut due = opened;
        // Whether a wait for a head with nothing of one read is parked, and when.
        let parks = PARK_AFTER < wait_limit;
        let mut park_at = None;
        // Each later wait's end is counted from the coarse clock (a precise reading per request
        // cost more than its answer's `date`): a few milliseconds either way on a limit of seconds.
        let clock = coarse::Anchor::new(opened);
        loop {
            if let Some((read, reuse)) = bufs.parsing().filter(|(r, _)| r.len() >= want) {
                match parse::parse(read, max_head, reuse) {
                    // Taken apart at once: every field moved out, neither the parse's value nor
                    // the head keeps a place in this future while the request is served.
                    Parsed::Simple(parse::Head {
                        req,
                        sent,
                        keep_alive,
                        len: _,
                    }) => {
                        timing = false;
                        given = None;
                        first = false;
                        head_started = false;
                        want = 0;
                        let mut ask = Ask {
                            head: req.method() == Method::HEAD,
                            http10: req.version() == http::Version::HTTP_10,
                            keep_alive,
                        };
                        let active = c.state.begin();
                        // Under the generation in force now (as `listener::serve` for hyper's).
                        let gen = c.shared.current.load_full();
                        let rsp = match gen.listener(&c.addr).as_deref() {
                            // A reload changed the TLS rules of this connection's
                            // listener (gave it `tls`, or changed its `client_ca`).
                            Some(lst) if lst.tls_epoch != c.peer.tls_epoch => {
                                ask.keep_alive = false;
                                let (parts, _) = req.into_parts();
                                let head = http::Request::from_parts(parts, ());
                                super::stack::refuse_outdated(c.shared, lst, head, c.peer, active)
                            }
                            Some(lst) => {
                                // A body read after its head: the request's time runs from
                                // the head (`None` for one whole with it: no clock read here).
                                let arrived = bufs.held().body.take().map(|b| b.head);
                                let handling = pin!(super::stack::handle(
                                    c.shared, &gen, lst, req, sent, arrived, c.peer, active,
                                ));
                                let read = &mut bufs.held().read;
                                match answer_unless_gone(&mut io, read, handling).await {
                                    Some(rsp) => rsp,
                                    // The request's future is dropped: its try is cancelled,
                                    // and it is counted and logged as a 499 (`finish.rs`).
                                    None => return End::Closed,
                                }
                            }
                            None => super::listener::removed(),
                        };
                        drop(gen);
                        stopping |= probe.has_changed().unwrap_or(true);
                        ask.keep_alive &= !stopping;
                        let (keep, map) = write::answer(&mut io, bufs.out(), rsp, ask).await;
                        // (None for a map grown large, which is freed: `spare::emptied`.)
                        bufs.held().reuse.map = map;
                        if !keep {
                            close(&mut io).await;
                            return End::Closed;
                        }
                        continue;
                    }
                    // An HTTP/2 preface is prior knowledge only as the first bytes of a
                    // cleartext connection (RFC 9113 §3.3); over TLS, HTTP/2 is agreed by ALPN
                    // (§3.2), and such a connection never comes here. Anywhere else it is a
                    // head no HTTP/1.1 server reads: refused below.
                    Parsed::HandOff if (first && !c.peer.tls) || !parse::h2_preface(read) => {
                        return End::HandOff(Rewind::new(bufs.into_read(), io), None)
                    }
                    Parsed::HandOff => {
                        let req = parse::refused_line(read);
                        let refusal = parse::Refusal::MisplacedPreface;
                        // Boxed: a rare path keeps its futures (and the drain's buffer) out
                        // of every connection's.
                        Box::pin(refuse_head(&c, &mut io, bufs.out(), req, refusal)).await;
                        return End::Closed;
                    }
                    Parsed::Refuse(refusal) => {
                        let req = parse::refused_line(read);
                        Box::pin(refuse_head(&c, &mut io, bufs.out(), req, refusal)).await;
                        return End::Closed;
                    }
                    // Part of a later head: from its first bytes it must be whole within the
                    // head timeout (a head read whole in one go never comes here).
                    Parsed::Partial if !first && !head_started => {
                        head_started = true;
                        given = Some(clock.now() + c.lst.head_timeout);
                        timing = false;
                    }
                    Parsed::Partial => {}
                    Parsed::Body(need) => {
                        // The gap is timed from here (and again after each read of the body).
                        timing = false;
                        want = need;
                        read.reserve(need - read.len());
                        let wait = BodyWait::from(Instant::now(), &c);
                        bufs.held().body = Some(wait);
                    }
                }
            }
            if stopping {
                close(&mut io).await;
                return End::Closed;
            }
            let wake = poll_fn(|cx| {
                {
                    let read = pin!(io.read_buf(bufs.room()));
                    if let Poll::Ready(r) = read.poll(cx) {
                        return Poll::Ready(Wake::Read(r));
                    }
                }
                // Nothing to read yet: while the connection waits, its buffers serve others.
                bufs.lend();
                if !listening {
                    listening = true;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Graceful);
                    }
                }
                if probe.has_changed().unwrap_or(true) {
                    return Poll::Ready(Wake::Graceful);
                }
                // The timer is polled after each time it is armed (that leaves the task's waker
                // with it, and it stays there until it fires); otherwise a wake-up only looks
                // whether it fired, and whether the wait's end has come.
                if !timing {
                    timing = true;
                    let now = clock.now();
                    due = match want {
                        0 => given.unwrap_or_else(|| now + wait_limit),
                        // No later than the end of the body's wait (`BodyWait::ends`).
                        _ => match bufs.held.as_ref().and_then(|h| h.body?.ends) {
                            Some(ends) => ends.min(now + body_gap),
                            None => now + body_gap,
                        },
                    };
                    park_at = (parks && want == 0).then(|| now + PARK_AFTER);
                }
                // Parked at `park_at` if nothing of a head is read by then (the buffers are
                // lent only when the read buffer is empty).
                let parking = park_at.filter(|p| *p < due && bufs.held.is_none());
                let end = parking.unwrap_or(due);
                let fired = match timer.as_mut() {
                    None => timer
                        .insert(Box::pin(tokio::time::sleep_until(end)))
                        .as_mut()
                        .poll(cx)
                        .is_ready(),
                    // Armed, and it will wake the task by `end`.
                    Some(t) if !t.is_elapsed() && t.deadline() <= end => false,
                    Some(t) if t.is_elapsed() && Instant::now() >= end => true,
                    // Fired early (armed for an earlier wait), or armed for later than `end`.
                    Some(t) => {
                        t.as_mut().reset(end);
                        t.as_mut().poll(cx).is_ready()
                    }
                };
                match fired {
                    false => Poll::Pending,
                    true if parking.is_some() => Poll::Ready(Wake::Park),
                    true if want > 0 => Poll::Ready(Wake::Slow),
                    true if first || head_started => Poll::Ready(Wake::Drop),
                    true => Poll::Ready(Wake::Graceful),
                }
            })
            .await;
            if want > 0 {
                match wake {
                    // More of the body: the next gap counts from this read.
                    Wake::Read(Ok(n)) if n > 0 => timing = false,
                    Wake::Read(Err(e)) => {
                        tracing::debug!(peer = %c.peer.addr, error = %e, "connection read failed");
                        return End::Closed;
                    }
                    // The rest is slow to come, the stream ended inside the body, the request's
                    // deadline may come before it does, or the listener stops: hyper takes the
                    // request as it is (and answers, or drains), its time run from its head.
                    _ => {
                        let arrived = bufs.held().body.take().map(|b| b.head);
                        return End::HandOff(Rewind::new(bufs.into_read(), io), arrived);
                    }
                }
                continue;
            }
            match wake {
                Wake::Read(Ok(0)) if bufs.unread().is_none() => {
                    close(&mut io).await;
                    return End::Closed;
                }
                // The end of the stream inside a head: hyper says what it says today.
                Wake::Read(Ok(0)) => return End::HandOff(Rewind::new(bufs.into_read(), io), None),
                Wake::Read(Ok(_)) => {}
                Wake::Read(Err(e)) => {
                    tracing::debug!(peer = %c.peer.addr, error = %e, "connection read failed");
                    return End::Closed;
                }
                Wake::Graceful => {
                    close(&mut io).await;
                    return End::Closed;
                }
                // (`Slow` only while a body is read, above.)
                Wake::Drop | Wake::Slow => return End::Closed,
                Wake::Park => return End::Park(io, Wait { due, first }),
            }
        }
    }
}

/// A connection's read and write buffers, lent to the thread's shelf while it waits.
///
/// Why: most keep-alive connections spend most of their life waiting for the next request,
/// and the read buffer (8 KiB) and the write buffer (1 KiB) held through that wait were a good
/// part of what an idle connection cost, where nginx and HAProxy, which free theirs the same
/// way, pay next to nothing. A wait that finds nothing to read puts both on the thread's shelf
/// (unless a part of a head is in the read buffer); the read that ends the wait takes a pair
/// back, the pair lent last on this thread, likely still in cache. Measured: an idle
/// connection past one request costs 7.9 KiB of RSS instead of 13.0 (most of the rest is its
/// task, sized for the request path's future), and a request about 160 instructions more
/// (21,370 instead of 21,210, callgrind): one push and one pop on a thread-local vector. The
/// shelf holds at most [`BUFFERS_KEPT`] pairs per thread (about 2.3 MiB once that many
/// connections have waited at once); beyond it, buffers are freed. The parser's kept state
/// (`parse::Reuse`: its vectors and the next head's header map) travels with the pair, and a
/// connection that ends leaves its pair to the next: a connection that serves one request
/// allocated 17.6 times, now under 10 (tests/alloc.rs has the count).
#[derive(Debug, Default)]
struct Buffers {
    /// `None` while lent. Boxed: the pair goes to the shelf and back on every wait, and a
    /// pointer moves where the pair itself (224 bytes) took three copies each way.
    held: Option<Box<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    read: BytesMut,
    out: Vec<u8>,
    /// What the parser keeps from head to head (a new connection takes an earlier one's: a
    /// kept name is used only where the same bytes are sent again).
    reuse: Reuse,
    /// While a body is read after its head: when the head came, and how long it may be read.
    /// (Here, not in the connection's future: only a body slower than its head needs it.)
    body: Option<BodyWait>,
}

/// A body read whole after its head ([`BODY_GAP`]).
#[derive(Clone, Copy, Debug)]
struct BodyWait {
    /// When the head came: the request's time (its deadline among it) runs from here.
    head: Instant,
    /// When the reading ends and hyper takes the request, streaming the rest: the first
    /// moment the request's deadline may pass (the shortest `timeout.request` of the
    /// listener's routes, counted from `head`), so that the deadline is kept while the body
    /// comes (hyper's path answers 408 `client_timeout` at it). `None`: no route has one.
    ends: Option<Instant>,
}

impl BodyWait {
    /// The wait of a body whose head came at `head`, under the routes in force now.
    fn from(head: Instant, c: &Conn<'_>) -> Self {
        let gen = c.shared.current.load();
        let soonest = gen.listener(&c.addr).and_then(|l| {
            l.routes
                .iter()
                .filter_map(|r| r.policy.request_timeout)
                .min()
        });
        BodyWait {
            head,
            ends: soonest.map(|t| head + t),
        }
    }
}

impl Buffers {
    /// The buffers, taken back from the shelf (or new) if they were lent.
    fn held(&mut self) -> &mut Held {
        self.held
            .get_or_insert_with(|| Shelf::take(&SPARES).unwrap_or_default())
    }

    /// The read buffer, if it holds bytes not parsed yet, and what the parser keeps.
    fn parsing(&mut self) -> Option<(&mut BytesMut, &mut Reuse)> {
        self.held
            .as_mut()
            .map(|h| (&mut h.read, &mut h.reuse))
            .filter(|(r, _)| !r.is_empty())
    }

    /// The read buffer, if it holds bytes not parsed yet.
    fn unread(&mut self) -> Option<&mut BytesMut> {
        self.parsing().map(|(read, _)| read)
    }

    /// The read buffer, with room for a read.
    fn room(&mut self) -> &mut BytesMut {
        let read = &mut self.held().read;
        if read.capacity() - read.len() < READ_SIZE / 2 {
            read.reserve(READ_SIZE);
        }
        read
    }

    /// The write buffer.
    fn out(&mut self) -> &mut Vec<u8> {
        let out = &mut self.held().out;
        if out.capacity() == 0 {
            out.reserve(OUT_SIZE);
        }
        out
    }

    /// What was read and not parsed, for hyper.
    ///
    /// Copied out when it is small, as it is for an HTTP/2 preface or a head hyper answers:
    /// the pair goes back to the shelf rather than staying with a connection that may live
    /// for hours under hyper. A larger one (a body's first bytes) is handed over as it is.
    fn into_read(mut self) -> bytes::Bytes {
        let Some(mut held) = self.held.take() else {
            return bytes::Bytes::new();
        };
        if held.read.len() > READ_KEEP_MAX {
            return std::mem::take(&mut held.read).freeze();
        }
        let read = bytes::Bytes::copy_from_slice(&held.read);
        held.read.clear();
        shelve(held);
        read
    }

    /// Lends both buffers while the connection waits for bytes, unless the read buffer holds
    /// part of a head. A write buffer grown past [`OUT_KEEP_MAX`], or a read buffer past
    /// [`READ_KEEP_MAX`], is freed instead.
    fn lend(&mut self) {
        if let Some(held) = self.held.take_if(|h| h.read.is_empty()) {
            shelve(held);
        }
    }
}

/// A connection that ends leaves its buffers to the next one on this thread (what is left in
/// the read buffer is dropped): a new connection then allocates neither, nor the parser's
/// vectors and the first request's header map.
impl Drop for Buffers {
    fn drop(&mut self) {
        if let Some(mut held) = self.held.take() {
            held.read.clear();
            shelve(held);
        }
    }
}

/// Puts `held`, whose read buffer is empty, on the thread's shelf; a write buffer grown past
/// [`OUT_KEEP_MAX`], or a read buffer past [`READ_KEEP_MAX`], is freed first.
fn shelve(mut held: Box<Held>) {
    held.body = None;
    if held.out.capacity() > OUT_KEEP_MAX {
        held.out = Vec::new();
    }
    if held.read.capacity() > READ_KEEP_MAX {
        held.read = BytesMut::new();
    }
    Shelf::keep(&SPARES, held, |h| h.out.clear());
}

#[cfg(test)]
mod tests {
    use super::{Buffers, BUFFERS_KEPT, OUT_KEEP_MAX, READ_KEEP_MAX, READ_SIZE, SPARES};

    /// Runs `f` on a thread of its own, whose shelf no other test touches.
    fn alone(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().expect("the test thread");
    }

    fn kept() -> usize {
        super::Shelf::len(&SPARES)
    }

    #[test]
    fn a_waiting_connection_lends_its_buffers_and_takes_the_last_lent_back() {
        alone(|| {
            let mut a = Buffers::default();
            a.room().extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            a.out().extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let _ = a.unread().expect("bytes to parse").split();
            assert!(a.unread().is_none());
            a.lend();
            assert_eq!(kept(), 1);
            assert!(a.held.is_none(), "nothing held while waiting");

            // Another connection of the thread takes the pair: its write buffer comes empty.
            let mut b = Buffers::default();
            assert!(b.room().capacity() >= READ_SIZE / 2);
            assert_eq!(kept(), 0);
            assert!(b.out().is_empty() && b.out().capacity() > 0);
            // Nothing on the shelf: new buffers.
            assert!(a.room().capacity() >= READ_SIZE / 2);
        });
    }

    #[test]
    fn part_of_a_head_keeps_the_buffers_with_the_connection() {
        alone(|| {
            let mut c = Buffers::default();
            c.room().extend_from_slice(b"GET / HT");
            c.lend();
            assert_eq!(kept(), 0);
            assert_eq!(c.unread().map(|r| &r[..]), Some(&b"GET / HT"[..]));
            assert_eq!(&c.into_read()[..], b"GET / HT");
        });
    }

    #[test]
    fn a_hand_off_copies_what_was_read_and_leaves_the_pair_to_the_thread() {
        alone(|| {
            let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            let mut c = Buffers::default();
            c.room().extend_from_slice(preface);
            let read = c.into_read();
            assert_eq!(&read[..], preface);
            assert_eq!(
                kept(),
                1,
                "the pair is on the shelf, not with hyper's connection"
            );
            let mut d = Buffers::default();
            assert!(
                d.unread().is_none(),
                "the next connection's read buffer comes empty"
            );
            assert!(d.room().capacity() >= READ_SIZE / 2);

            // A large one (a body's first bytes) goes as it is, the pair with it.
            let mut e = Buffers::default();
            e.room().extend_from_slice(&vec![b'x'; READ_KEEP_MAX + 1]);
            let read = e.into_read();
            assert_eq!(read.len(), READ_KEEP_MAX + 1);
            assert_eq!(kept(), 0);
        });
    }

    #[test]
    fn a_grown_write_buffer_is_freed_and_the_shelf_is_bounded() {
        alone(|| {
            let mut c = Buffers::default();
            c.room();
            c.out().reserve(OUT_KEEP_MAX * 2);
            c.lend();
            assert_eq!(kept(), 1);
            let mut d = Buffers::default();
            d.room();
            let out = d.held.as_ref().map(|h| h.out.capacity());
            assert_eq!(out, Some(0), "the large write buffer was not kept");

            let mut waiting: Vec<Buffers> =
                (0..BUFFERS_KEPT + 10).map(|_| Buffers::default()).collect();
            for w in &mut waiting {
                w.room();
            }
            for w in &mut waiting {
                w.lend();
            }
            assert_eq!(kept(), BUFFERS_KEPT, "beyond the bound, buffers are freed");
        });
    }
}
