//! The lean HTTP/1.1 server: the common case served without hyper's server machinery.
//!
//! Why: hyper's HTTP/1 dispatch (version sniffing, dispatcher state machine, per-request
//! timers and header maps) cost about as much per proxied request as all of rampart's own
//! request path (issue 22). Most traffic a sidecar sees is plain keep-alive requests without a
//! body, so this loop serves exactly those and nothing else:
//!
//! - it reads into its own buffer and parses each head (`parse.rs`); a head that is whole,
//!   within `max_head`, without body framing, `Upgrade`, `Expect` or `TE`, and not CONNECT,
//!   goes through the same request path as every request (`stack::handle`, via
//!   `listener::serve`), and its answer is written here (`write.rs`) with hyper's framing;
//! - anything else — a head with a body, a malformed or oversized head, an HTTP/2 preface, a
//!   half head then end of stream — hands the connection to hyper for good, with the bytes
//!   already read replayed first ([`Rewind`]). The hand-off comes before that request is
//!   answered and after every earlier answer is written, so pipelined requests keep their
//!   order.
//!
//! The connection keeps the listener's guarantees, with one timer instead of the watchdog
//! (`conn.rs`, which takes over with hyper): no request within the head timeout of accept
//! closes it; a later head must be complete within `header_read_timeout` of the moment the
//! server starts waiting for it (hyper's rule), and a connection waiting with no request in
//! flight is closed after `idle_timeout` — whichever comes first, both counted from the end
//! of the answer before. A drain lets the answer in flight finish with `connection: close`,
//! and closes a connection waiting for a head.

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
use crate::generation::ListenerRt;

/// The read buffer's first size, and the least free room asked before each read.
const READ_SIZE: usize = 8 * 1024;

/// One connection's surroundings.
pub(super) struct Conn<'a> {
    pub shared: &'a Arc<Shared>,
    /// The listener's configured address (its key in each generation).
    pub addr: SocketAddr,
    /// The listener as configured when the connection was accepted (limits and timeouts).
    pub lst: &'a ListenerRt,
    pub peer: &'a Peer,
    pub state: &'a Arc<ConnState>,
}

/// How the lean server left a connection.
pub(super) enum End<I> {
    /// Closed (or to be dropped).
    Closed,
    /// For hyper from here on, the bytes read so far first.
    HandOff(Rewind<I>),
}

/// What woke the wait for more of a head.
enum Wake {
    Read(std::io::Result<usize>),
    /// Close gracefully: drain, or idle.
    Graceful,
    /// Drop at once: no request in time, or a head that took too long.
    Drop,
}

/// Serves `io` until it closes or needs hyper. `first_head` is the time left for the first
/// request to arrive (the head timeout less the TLS handshake).
pub(super) async fn serve<I>(
    c: Conn<'_>,
    mut io: I,
    first_head: Duration,
    stopped: &mut watch::Receiver<bool>,
) -> End<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let max_head = c.lst.max_head;
    // Waiting for a later head ends at the earlier of hyper's head timer and the idle
    // timeout (both start when the answer before ends); only an idle close is graceful.
    let idle_first = c.lst.idle_timeout <= c.lst.head_timeout;
    let wait_limit = c.lst.idle_timeout.min(c.lst.head_timeout);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(1024);
    let mut reuse = Reuse::default();
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
    let mut first = Some(Instant::now() + first_head);
    let mut due = Instant::now();
    loop {
        if !buf.is_empty() {
            match parse::parse(&mut buf, max_head, &mut reuse) {
                Parsed::Simple(head) => {
                    timing = false;
                    first = None;
                    let mut ask = Ask {
                        head: head.req.method() == Method::HEAD,
                        http10: head.req.version() == http::Version::HTTP_10,
                        keep_alive: head.keep_alive,
                    };
                    let active = c.state.begin();
                    // Under the generation in force now (as `listener::serve` for hyper's).
                    let gen = c.shared.current.load_full();
                    let rsp = match gen.listeners.get(&c.addr) {
                        Some(lst) => {
                            super::stack::handle(c.shared, &gen, lst, head.req, c.peer, active)
                                .await
                        }
                        None => super::listener::removed(),
                    };
                    drop(gen);
                    stopping |= probe.has_changed().unwrap_or(true);
                    ask.keep_alive &= !stopping;
                    let (keep, map) = write::answer(&mut io, &mut out, rsp, ask).await;
                    reuse.map = map;
                    if !keep {
                        let _ = io.shutdown().await;
                        return End::Closed;
                    }
                    continue;
                }
                Parsed::HandOff => return End::HandOff(Rewind::new(buf.freeze(), io)),
                Parsed::Partial => {}
            }
        }
        if stopping {
            let _ = io.shutdown().await;
            return End::Closed;
        }
        if buf.capacity() - buf.len() < READ_SIZE / 2 {
            buf.reserve(READ_SIZE);
        }
        let wake = poll_fn(|cx| {
            {
                let read = pin!(io.read_buf(&mut buf));
                if let Poll::Ready(r) = read.poll(cx) {
                    return Poll::Ready(Wake::Read(r));
                }
            }
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
                due = first.unwrap_or_else(|| Instant::now() + wait_limit);
            }
            let fired = match timer.as_mut() {
                None => timer
                    .insert(Box::pin(tokio::time::sleep_until(due)))
                    .as_mut()
                    .poll(cx)
                    .is_ready(),
                // Armed, and it will wake the task by `due`.
                Some(t) if !t.is_elapsed() && t.deadline() <= due => false,
                Some(t) if t.is_elapsed() && Instant::now() >= due => true,
                // Fired early (armed for an earlier wait), or armed for later than `due`.
                Some(t) => {
                    t.as_mut().reset(due);
                    t.as_mut().poll(cx).is_ready()
                }
            };
            match fired {
                false => Poll::Pending,
                true if first.is_some() => Poll::Ready(Wake::Drop),
                true if idle_first => Poll::Ready(Wake::Graceful),
                true => Poll::Ready(Wake::Drop),
            }
        })
        .await;
        match wake {
            Wake::Read(Ok(0)) if buf.is_empty() => {
                let _ = io.shutdown().await;
                return End::Closed;
            }
            // The end of the stream inside a head: hyper says what it says today.
            Wake::Read(Ok(0)) => return End::HandOff(Rewind::new(buf.freeze(), io)),
            Wake::Read(Ok(_)) => {}
            Wake::Read(Err(e)) => {
                tracing::debug!(peer = %c.peer.addr, error = %e, "connection read failed");
                return End::Closed;
            }
            Wake::Graceful => {
                let _ = io.shutdown().await;
                return End::Closed;
            }
            Wake::Drop => return End::Closed,
        }
    }
}
