//! Upstream connections: keep-alive HTTP/1.1 connections per endpoint, the one idle the
//! shortest time reused first, and closed after `pool_idle_timeout` unused ([`idle`]).
//!
//! Why not hyper-util's pooled client: it spawns a task per request to hand the connection
//! back, clones the URI and pool key per request, and its pool is behind one mutex. Here a
//! connection goes back to its worker's idle stack when the response body ends (see
//! [`Returning`]), so the hot path has no spawn, no contended lock and no extra allocation.
//! A connection that the upstream closed is noticed when taken and discarded; a request that
//! a dead pooled connection did not send goes out on the next one, so keep-alive races never
//! surface.
//!
//! Why not hyper's HTTP/1.1 client connection either: a request through it goes into a
//! channel, a dispatcher takes it out, encodes it, parses the answer into a second message
//! and hands it back through a oneshot; its state machine is polled several times per request.
//! A proxy's upstream side needs much less: write one head, read one head, pass the body's
//! bytes on. [`h1`] holds that protocol (no I/O); [`Conn`] here is the socket with one read
//! buffer and one write buffer.
//!
//! A connection is driven by whoever awaits it, in the task of the request that uses it: the
//! request future writes the request and reads the answer head, and the answer body
//! ([`Returning`]) reads the rest. No other task, no channel, no wake-up of anyone else. A
//! request body is written by the same polls: while the request future waits for the answer
//! head it also pulls the body and writes it, and once the head is in, the answer body's polls
//! go on with the upload. An upstream that answers before the upload ends is therefore read
//! while the upload goes on. Only if the answer ends first (and nobody polls it any more) does
//! the rest of the upload move to a task of its own, which pools the connection afterwards.
//!
//! A connection goes back to the pool only when its answer was read to the end with no byte
//! more, the upload (if any) finished, and neither side asked to close (an HTTP/1.0 answer only
//! with `keep-alive`). Answer bodies are passed on as they are read: each frame is split off
//! the read buffer, not copied.

mod conn;
pub mod h1;
pub(super) mod h2;
mod idle;
mod quiet;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::Response;
use http_body::{Frame, SizeHint};
use prometheus::IntGauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub(crate) use self::conn::Stream;
use self::conn::{Conn, Failed};
pub(crate) use self::h2::message as h2_message;
use self::idle::Stack;
use super::access_log::Broken;
use super::body::Body;
use super::forward::Added;
use super::grpc::{StreamEnd, Trailed};
use super::guard::Guards;
use super::sock::{connect_upstream, Sock};
use crate::clock::coarse;
use crate::error::BoxError;

/// Idle connections of one endpoint.
#[derive(Debug)]
pub struct Pool {
    /// One stack per worker (`workers.rs`): a connection goes back to the worker that opened
    /// it, whose I/O driver watches its socket, and is reused there. `pool_max_idle` is split
    /// between them.
    idle: Box<[Stack<Box<Conn>>]>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// `idle_timeout` in milliseconds, as the stacks count age.
    idle_ms: u64,
    /// Whether the task that closes connections idle too long ([`sweep`]) is running; it
    /// starts when the first connection goes idle.
    sweeping: AtomicBool,
    tls: Option<TlsOrigin>,
    /// One permit per connection this endpoint may have open (`max_connections`); a permit
    /// lives as long as its connection.
    slots: Arc<Semaphore>,
    /// Woken when a connection goes idle or closes: a request waiting for one may go on.
    freed: Arc<Notify>,
    /// `rampart_upstream_connections` of this endpoint: one per [`Slot`].
    open: IntGauge,
    /// When (coarse milliseconds) a failed TLS handshake was last logged at `warn`.
    tls_warned: AtomicU64,
    /// With `protocol: http2`, the endpoint's one connection (the idle stacks stay empty).
    h2: Option<h2::H2>,
}

/// What a try waits for in rampart before its request is handed to a connection
/// (`Added::waiting`), so that a deadline passing then can say what held it: nothing.
pub(crate) const WAIT_NONE: u8 = 0;
/// A stream of the endpoint's HTTP/2 connection: it is at its limit (`h2::link`). The request
/// was never sent.
pub(crate) const WAIT_STREAM: u8 = 1;
/// A connection to the endpoint being made: an HTTP/1.1 try's own, or the HTTP/2 connect its
/// requests share (the first, or after the last connection went away). The request was never
/// sent, but the endpoint was tried: it has not taken a connection in the try's time.
pub(crate) const WAIT_CONNECT: u8 = 2;
/// A connection of the endpoint's HTTP/1.1 pool: `max_connections` are open, none idle. The
/// request was never sent.
pub(crate) const WAIT_POOL: u8 = 3;

/// Notes in `waiting` (if the caller watches) what the try waits for now.
fn note(waiting: Option<&std::sync::atomic::AtomicU8>, what: u8) {
    if let Some(w) = waiting {
        w.store(what, Ordering::Relaxed);
    }
}

/// Least time between two `warn` lines about failed TLS handshakes with one endpoint: each
/// says what is wrong (an untrusted CA, a wrong `server_name`), and a steady stream of them
/// would say nothing more.
const TLS_WARN_EVERY_MS: u64 = 10_000;

/// Least time a CONNECT tunnel's new TLS 1.3 connection waits for the server's verdict on
/// rampart's client certificate, or its absence ([`Pool::dial_tunnel`]), however fast its handshake was: on
/// loopback the handshake takes a millisecond or two, and the server's task may not have run
/// by then.
const VERDICT_WAIT_MIN: Duration = Duration::from_millis(50);

/// An open connection's claim on one of its endpoint's `max_connections`, counted in
/// `rampart_upstream_connections` while it lasts (from the connect on): a pooled connection's,
/// or a CONNECT tunnel's ([`Pool::tunnel_slot`]).
#[derive(Debug)]
pub(super) struct Slot {
    /// `None` for an HTTP/2 connection's: `max_connections` does not cap them (`h2`).
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
    open: IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, pool: &Pool) -> Slot {
        pool.open.inc();
        Slot {
            permit: Some(permit),
            freed: pool.freed.clone(),
            open: pool.open.clone(),
        }
    }
}

impl Slot {
    /// An HTTP/2 connection's: counted, not capped.
    fn uncapped(pool: &Pool) -> Slot {
        pool.open.inc();
        Slot {
            permit: None,
            freed: pool.freed.clone(),
            open: pool.open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The place is given back before a waiter is told. Told first, the waiter (on another
        // worker) could look before the permit, a field dropped after this, was back: it found
        // no place, waited again, and the one notification was spent; its request or tunnel
        // waited out its whole deadline with the place free. The gauge goes down before the
        // place is free, so a waiter's taking it never shows one connection over the cap.
        self.open.dec();
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

/// TLS towards an endpoint: the upstream's client config (swapped in place when a reload
/// re-reads its files) and the name to send as SNI and to verify.
#[derive(Debug, Clone)]
pub struct TlsOrigin {
    /// The upstream's client config, shared by its endpoints.
    pub config: Arc<ArcSwap<rustls::ClientConfig>>,
    /// SNI and verification name.
    pub server_name: Arc<str>,
}

/// Why a try got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// True when `connect_timeout` ran out.
        timed_out: bool,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS handshake of a new connection failed (never plaintext instead).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// What the handshake said.
        source: std::io::Error,
    },
    /// The connection broke before a whole answer head came.
    #[error("connection to upstream lost: {0}")]
    Reset(#[source] UpstreamError),
}

/// What went wrong on an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Reading or writing the socket failed.
    #[error("upstream connection I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before its answer was whole.
    #[error("the upstream closed the connection before its answer was complete")]
    Closed,
    /// The answer breaks HTTP/1.1.
    #[error(transparent)]
    Malformed(#[from] h1::Malformed),
    /// The request's body failed (the client's upload, usually).
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
    /// The request's body was longer or shorter than its `content-length`.
    #[error("the request body does not match its content-length")]
    RequestLength,
    /// The HTTP/2 connection or stream failed (`protocol: http2`).
    #[error("HTTP/2: {0}")]
    Http2(#[source] hyper::Error),
    /// The request's time ran out while the answer's body was still coming.
    #[error("the request timeout ran out before the answer's body was whole")]
    Deadline,
    /// The upstream sent nothing for this long (`timeout.idle`) while rampart waited for its
    /// answer: its head, once the request was written whole, or the next bytes of its body.
    #[error("the upstream sent nothing of its answer for {0:?} (timeout.idle)")]
    Idle(Duration),
    /// An upstream of `protocol: http2` did not answer as an HTTP/2 server (why).
    #[error("the upstream does not speak HTTP/2: {0}")]
    NotHttp2(&'static str),
    /// The HTTP/2 connections a request waited on for a stream kept going away: never sent.
    #[error("the upstream's HTTP/2 connections went away before the request could be sent")]
    Unsent,
    /// An upload found the endpoint's HTTP/2 connections' send windows shut, as many as are
    /// kept (`h2::SHUT_MAX`): never sent.
    #[error(
        "the upstream's HTTP/2 connections kept their send window shut; the upload was not sent"
    )]
    ShutWindow,
}

/// The settings of one endpoint's pool, from its upstream's section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// `pool_max_idle`.
    pub max_idle: usize,
    /// `max_connections`.
    pub max_connections: usize,
    /// `connect_timeout` (TLS handshake included).
    pub connect_timeout: Duration,
    /// `pool_idle_timeout`.
    pub idle_timeout: Duration,
    /// `protocol: http2`: one multiplexed connection instead of a pool ([`h2`]).
    pub http2: bool,
}

/// A response body that reads its answer off its connection and gives the connection back
/// to the pool when it ends.
#[derive(Debug)]
pub struct Returning {
    back: Option<(Box<Conn>, Arc<Pool>)>,
    /// The body broke (it is then not at its end).
    failed: bool,
    /// What the request holds until this body ends (see `guard.rs`).
    pub(super) guards: Guards,
    /// What waits for the end of a body not already read whole with its head: the request's
    /// deadline ([`Returning::end_by`]) and the try's outcome ([`Returning::trail`]). Boxed
    /// (every answer carries the field), and made only for such a body.
    late: Option<Box<Late>>,
}

/// See [`Returning::late`].
#[derive(Debug, Default)]
struct Late {
    end_by: Option<EndBy>,
    trailed: Option<Trailed>,
    /// `rampart_timeouts_total{kind="idle"}` of the request's route, counted if `timeout.idle`
    /// cuts the body ([`Returning::count_idle`]).
    idle_counted: Option<prometheus::IntCounter>,
}

/// Why an answer's body broke off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The upstream's doing: it closed or reset the connection, or sent a malformed body.
    Upstream,
    /// The request's deadline passed (`timeout.request`) while rampart waited on the upstream.
    Deadline,
    /// The request's deadline passed while rampart waited on its client to take what the body
    /// handed on ([`Waited::Client`]): the client's doing, its try cancelled, not timed out.
    Held,
    /// The upstream sent nothing for `timeout.idle`.
    Idle,
}

/// The deadline an answer's body must end by. A body that keeps coming is held to it before
/// each frame, by the clock ([`EndBy::over`]); one that waits for bytes by a timer, made the
/// first time it has nothing to give ([`EndBy::passed`]). A body read whole with its head keeps
/// none, so it reads no clock and makes no timer. An HTTP/1.1 answer ([`Returning`]) and an
/// HTTP/2 one (`h2::H2Answer`) keep it alike.
#[derive(Debug)]
pub(super) struct EndBy {
    at: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body's last poll handed a frame on (it did not wait for bytes): until its next,
    /// rampart waits on its client, not on the upstream ([`EndBy::over`]).
    handed: bool,
    /// `rampart_timeouts_total{kind="request"}` of the request's route.
    counted: prometheus::IntCounter,
}

/// Whose wait a body's deadline passed in ([`EndBy::over`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waited {
    /// The upstream's: the body's last poll had nothing to give (or none came before).
    Upstream,
    /// The client's: the body's last poll handed a frame on, and the server asked for no other
    /// until the deadline had passed, as it was still writing that one to a client that had
    /// not taken it (SPEC §14: never the upstream's fault).
    Client,
}

// === impl UpstreamError ===

impl UpstreamError {
    /// Whether an HTTP/2 upstream refused the request without processing it: reset its stream
    /// with `REFUSED_STREAM`, or went away (`GOAWAY`) before it (RFC 9113 §8.7). Such a
    /// request is sent again on the spot ([`h2`]); this is the refusal that outlasted that.
    pub fn refused(&self) -> bool {
        matches!(self, UpstreamError::Http2(e) if h2::refusal(e).is_some())
    }
}

// === impl SendError ===

impl SendError {
    /// Whether `connect_timeout` ran out while the connection was made: its TCP connect or
    /// TLS handshake, or (`protocol: http2`) the wait for the upstream's first `SETTINGS`,
    /// which is part of making the connection. Counted as `rampart_timeouts_total{kind="connect"}`.
    pub fn connect_timed_out(&self) -> bool {
        match self {
            SendError::Connect { timed_out, .. } => *timed_out,
            SendError::Reset(e) => h2::no_settings_in_time(e),
            SendError::Handshake { .. } => false,
        }
    }
}

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle connections, shared out among the workers with at
    /// least one each (so up to the number of workers when `max_idle` is smaller), counting those
    /// open on `open`.
    pub fn new(settings: PoolSettings, tls: Option<TlsOrigin>, open: IntGauge) -> Arc<Pool> {
        Arc::new(Pool {
            idle: {
                let n = crate::workers::count();
                let each = settings.max_idle.div_ceil(n);
                (0..n).map(|_| Stack::new(each)).collect()
            },
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            idle_ms: u64::try_from(settings.idle_timeout.as_millis()).unwrap_or(u64::MAX),
            sweeping: AtomicBool::new(false),
            tls,
            slots: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            freed: Arc::new(Notify::new()),
            open,
            tls_warned: AtomicU64::new(0),
            h2: settings.http2.then(h2::H2::default),
        })
    }

    /// Sends the request of head `parts` (with the lines `added`) and body `body` to `addr`
    /// over an idle connection, or a new one if the endpoint has fewer than `max_connections`;
    /// otherwise waits until one is free. The caller bounds the wait (the try's deadline). The
    /// head is only borrowed (it is written out, never kept), so a retry sends it again without
    /// a copy. Idle connections' ages are counted to the coarse clock read once here (and again
    /// after a wait for a free connection): an age is compared with `pool_idle_timeout`
    /// (seconds), so a reading a tick old does, at a tenth of the cost of a precise one.
    ///
    /// Not an `async fn`, so its arguments (the body among them) are not kept twice in every
    /// request's future (see `stack::handle`).
    #[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
    pub fn send<'a>(
        self: &'a Arc<Self>,
        addr: SocketAddr,
        parts: &'a Parts,
        added: &'a Added<'a>,
        mut body: Body,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + 'a {
        async move {
            if let Some(h2) = &self.h2 {
                // Boxed: the HTTP/1.1 path's future should not carry this one's size.
                return Box::pin(self.send_h2(h2, addr, parts, added, body)).await;
            }
            let mut now = coarse::millis();
            loop {
                // This worker's idle connections first; then a new one if the cap allows; at the
                // cap, another worker's idle one (its socket stays with that worker's driver, which
                // wakes this task: slower, but better than waiting).
                let mut steal = false;
                loop {
                    let Some(mut conn) = self.take_idle(now, steal) else {
                        if steal {
                            break;
                        }
                        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                            let slot = Slot::new(permit, self);
                            // Boxed: connecting (TCP, maybe a TLS handshake) is a large future and
                            // happens once per connection; inline, every request's future would
                            // carry its size.
                            note(added.waiting, WAIT_CONNECT);
                            let conn = super::boxed(|| self.connect(addr, slot)).await;
                            note(added.waiting, WAIT_NONE);
                            let mut conn = conn?;
                            return match conn.exchange(parts, added, body, false).await {
                                Ok(head) => Ok(self.returning(head, conn)),
                                Err(Failed::Unsent(_, e) | Failed::Broken(e)) => {
                                    Err(self.first_exchange_failed(addr, conn.pending(e)))
                                }
                            };
                        }
                        steal = true;
                        continue;
                    };
                    if !conn.alive() {
                        continue;
                    }
                    match conn.exchange(parts, added, body, true).await {
                        Ok(head) => return Ok(self.returning(head, conn)),
                        // Not sent: the connection died while idle. Use the next one.
                        Err(Failed::Unsent(unsent, e)) => {
                            tracing::debug!(%addr, error = %e, "idle upstream connection was dead");
                            body = unsent;
                        }
                        Err(Failed::Broken(e)) => return Err(SendError::Reset(e)),
                    }
                }
                // At the cap: wait for a connection to go idle or close, then look again. The
                // request waits in rampart, unsent: a deadline that passes now is no try.
                let freed = self.freed.notified();
                if self.idle.iter().all(Stack::is_empty) {
                    note(added.waiting, WAIT_POOL);
                    freed.await;
                    note(added.waiting, WAIT_NONE);
                    now = coarse::millis();
                }
            }
        }
    }

    /// A slot of this endpoint's `max_connections` for a connection that is not pooled: a
    /// CONNECT tunnel's. At the cap an idle pooled connection is closed to
    /// make room; with none idle, this waits for a connection to close until `deadline`
    /// (`None` then).
    pub(super) async fn slot_by(&self, deadline: Instant) -> Option<Slot> {
        loop {
            let freed = self.freed.notified();
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Some(Slot::new(permit, self));
            }
            if let Some(idle) = self.take_idle(coarse::millis(), true) {
                // Closed: its slot is free now.
                drop(idle);
                continue;
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
        }
    }

    /// How this endpoint's connections are made secure, if its upstream has `tls`.
    pub fn tls(&self) -> Option<&TlsOrigin> {
        self.tls.as_ref()
    }

    /// Whether the endpoint is spoken to in HTTP/2 (`protocol: http2`).
    pub fn is_http2(&self) -> bool {
        self.h2.is_some()
    }

    /// The newest connection idle for at most `pool_idle_timeout` at `now`: this worker's,
    /// or with `steal` any worker's. Those found idle too long are closed.
    fn take_idle(&self, now: u64, steal: bool) -> Option<Box<Conn>> {
        let mut expired = Vec::new();
        let got = if steal {
            self.idle
                .iter()
                .find_map(|s| s.pop(now, self.idle_ms, &mut expired))
        } else {
            let own = &self.idle[crate::workers::index() % self.idle.len()];
            own.pop(now, self.idle_ms, &mut expired)
        };
        // Closed here, with no stack locked.
        drop(expired);
        got
    }

    async fn connect(&self, addr: SocketAddr, slot: Slot) -> Result<Box<Conn>, SendError> {
        let deadline = Instant::now() + self.connect_timeout;
        let stream = self.dial_warned(addr, deadline).await?;
        Ok(Conn::new(stream, slot))
    }

    /// [`Pool::dial`] for a request's connection or a CONNECT tunnel's (`tunnel.rs`): a failed
    /// TLS handshake is also said at `warn` ([`Pool::warn_tls`]).
    pub(super) async fn dial_warned(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Stream, SendError> {
        let dialed = self.dial(addr, deadline).await;
        if let Err(SendError::Handshake { source, .. }) = &dialed {
            self.warn_tls(addr, source);
        }
        dialed
    }

    /// [`Pool::dial_warned`] for a CONNECT tunnel's connection (`tunnel.rs`), whose first
    /// bytes rampart does not write: when the server asked for a client certificate in a TLS
    /// 1.3 session ([`crate::tls::client::asking`]), its verdict on the one rampart presented,
    /// or on none ([`crate::tls::client::verdict`]), is waited for as long again as the connect
    /// took (its TCP and TLS round trips; the verdict is one more away), at least
    /// [`VERDICT_WAIT_MIN`], within `deadline`. A refusal is a failed handshake, as on a
    /// request's new connection ([`Pool::first_exchange_failed`]), and so is a close before
    /// the server said anything: the client gets no 200 for a tunnel that dies at its first
    /// read. Also returns what the server sent first, for the tunnel to pass on before the
    /// rest, and when the connection was made: when the server's verdict came, or when the
    /// handshake ended if none was waited for or the server said nothing (a wait that ran out
    /// is rampart's margin, not the endpoint's time to connect).
    pub(super) async fn dial_tunnel(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(Stream, Bytes, Instant), SendError> {
        let started = Instant::now();
        let (dialed, asked) = crate::tls::client::asking(self.dial_warned(addr, deadline)).await;
        let mut stream = dialed?;
        let shaken = Instant::now();
        let (Stream::Tls(session), true) = (&mut stream, asked) else {
            return Ok((stream, Bytes::new(), shaken));
        };
        let until = deadline.min(shaken + (shaken - started).max(VERDICT_WAIT_MIN));
        match crate::tls::client::verdict(session, until).await {
            Ok(Some(first)) => Ok((stream, first, Instant::now())),
            Ok(None) => Ok((stream, Bytes::new(), shaken)),
            Err(e) => Err(self.first_exchange_failed(addr, UpstreamError::Io(e))),
        }
    }

    /// A new byte stream to `addr` by `deadline`: TCP, then TLS if the upstream has `tls` (as
    /// every connection to the endpoint is made: a request's, an HTTP/2 one, a health probe, a
    /// CONNECT tunnel's).
    pub(crate) async fn dial(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Stream, SendError> {
        let stream = match tokio::time::timeout_at(deadline, connect_upstream(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(SendError::Connect {
                    addr,
                    timed_out: false,
                    source,
                })
            }
            Err(_) => return Err(connect_timed_out(addr)),
        };
        match &self.tls {
            None => Ok(Stream::Plain(Sock(stream))),
            Some(tls) => {
                // Never plaintext to an upstream with `tls`: a failed handshake is a failed
                // connect (502), within the same connect timeout.
                let cfg = tls.config.load_full();
                let shake = crate::tls::connect(cfg, &tls.server_name, Sock(stream));
                match tokio::time::timeout_at(deadline, shake).await {
                    Ok(Ok(s))
                        if self.h2.is_some() && s.get_ref().1.alpn_protocol() != Some(b"h2") =>
                    {
                        // RFC 9113 §3.2: HTTP/2 over TLS is agreed by ALPN. A server that chose
                        // none (it does not do ALPN) may well be an HTTP/1.1 one: no byte of
                        // HTTP/2 goes to it, and the connection is closed (dropped here).
                        let source = not_h2_by_alpn(s.get_ref().1.alpn_protocol());
                        Err(SendError::Handshake { addr, source })
                    }
                    Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
                    Ok(Err(source)) => Err(SendError::Handshake { addr, source }),
                    Err(_) => Err(connect_timed_out(addr)),
                }
            }
        }
    }

    /// What a new connection's first exchange failed with, `e`: on a TLS connection, the
    /// server's alert read there is its refusal of the handshake (TLS 1.3 ends the client's
    /// side before the server has judged the client's certificate), a failed connect as any
    /// refused handshake is (said at `warn`); anything else is the connection lost.
    fn first_exchange_failed(&self, addr: SocketAddr, e: UpstreamError) -> SendError {
        if let (Some(tls), UpstreamError::Io(io)) = (&self.tls, &e) {
            if let Some(source) =
                crate::tls::client::refused_after_handshake(io, &tls.config.load())
            {
                self.warn_tls(addr, &source);
                return SendError::Handshake { addr, source };
            }
        }
        SendError::Reset(e)
    }

    /// A failed TLS handshake is a setting to fix (trust, name) more often than an endpoint
    /// down: said at `warn`, with the cause, once per [`TLS_WARN_EVERY_MS`] per endpoint.
    fn warn_tls(&self, addr: SocketAddr, error: &std::io::Error) {
        let now = coarse::millis();
        let last = self.tls_warned.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= TLS_WARN_EVERY_MS)
            && self
                .tls_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(endpoint = %addr, %error, "TLS handshake with an upstream failed");
        }
    }

    fn returning(self: &Arc<Self>, head: h1::Head, mut conn: Box<Conn>) -> Response<Body> {
        conn.start_body(head.framing, head.keep_alive);
        let mut r = Returning {
            back: Some((conn, self.clone())),
            failed: false,
            guards: Guards::default(),
            late: None,
        };
        if matches!(head.framing, h1::Framing::Empty)
            && head.response.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            // Nobody may poll an empty body: hand the connection back now. (After a 101 the
            // connection is the new protocol's: [`Returning::take_upgraded`] takes it.)
            r.give_back();
        }
        head.response.map(|()| Body::Upstream(r))
    }

    fn put(self: &Arc<Self>, mut conn: Box<Conn>) {
        conn.idle();
        // A full stack gives back its oldest, closed here: more idle connections than
        // `pool_max_idle` are waste.
        let home = &self.idle[conn.home() % self.idle.len()];
        drop(home.push(conn, coarse::millis()));
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(sweep(Arc::downgrade(self), self.idle_timeout))),
                Err(_) => self.sweeping.store(false, Ordering::Relaxed),
            }
        }
        self.freed.notify_one();
    }

    /// Closes every connection idle for more than `pool_idle_timeout` at `now`.
    fn expire(&self, now: u64) {
        let mut expired = Vec::new();
        for stack in &*self.idle {
            stack.expire(now, self.idle_ms, &mut expired);
        }
        if !expired.is_empty() {
            tracing::debug!(closed = expired.len(), "closing idle upstream connections");
        }
    }
}

/// Closes a pool's connections once they have been idle for `idle_timeout`, a quarter of it
/// late at most (between 10 ms and 5 s late), until the pool is dropped (a reload that changes
/// the endpoint, say). Without it an unused connection would stay open, held by the
/// upstream's idle timeout or nobody's, until a request took it and found it too old.
async fn sweep(pool: Weak<Pool>, idle_timeout: Duration) {
    let period = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.expire(coarse::millis());
    }
}

/// Why an HTTP/2 upstream's TLS connection is not used: its server chose `chose` by ALPN, not
/// `h2` (rampart offers `h2` alone, so in practice it chose none: a server that does no ALPN).
fn not_h2_by_alpn(chose: Option<&[u8]>) -> std::io::Error {
    let chose = match chose {
        Some(p) => format!("it chose {}", String::from_utf8_lossy(p)),
        None => "it chose no protocol".to_string(),
    };
    let said = format!(
        "the server did not agree to HTTP/2 by ALPN ({chose}; rampart offered h2), and \
         protocol: http2 over TLS needs it (RFC 9113 §3.2): nothing was sent, the connection \
         was closed"
    );
    std::io::Error::new(std::io::ErrorKind::InvalidData, said)
}

fn connect_timed_out(addr: SocketAddr) -> SendError {
    let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    SendError::Connect {
        addr,
        timed_out: true,
        source,
    }
}

/// Writes the rest of an upload whose answer already ended, then pools the connection if it
/// can carry another request. An upstream that takes no byte of it for `pool_idle_timeout`
/// loses it (a client that stalls is bounded by its own `body_idle_timeout`), and so does one
/// whose upload is not done by the request's deadline (`timeout.request`, the whole exchange's
/// bound): the connection is then closed, not reused.
async fn finish_upload(mut conn: Box<Conn>, pool: Arc<Pool>) {
    let stall = pool.idle_timeout;
    let by = conn.upload_by;
    let next = move |now: Instant| by.map_or(now + stall, |at| at.min(now + stall));
    let mut timer = std::pin::pin!(tokio::time::sleep_until(next(Instant::now())));
    let mut last = conn.sent();
    let finished = std::future::poll_fn(|cx| match conn.poll_upload(cx) {
        Poll::Ready(r) => Poll::Ready(r.is_ok()),
        Poll::Pending => {
            if conn.sent() != last {
                last = conn.sent();
                timer.as_mut().reset(next(Instant::now()));
            }
            timer.as_mut().poll(cx).map(|()| false)
        }
    })
    .await;
    if finished && conn.reusable() {
        pool.put(conn);
    }
}

// === impl EndBy ===

impl EndBy {
    /// A body's deadline `at`, counted in `counted` when it passes.
    pub(super) fn new(at: Instant, counted: &prometheus::IntCounter) -> EndBy {
        EndBy {
            at,
            timer: None,
            handed: false,
            counted: counted.clone(),
        }
    }

    /// The deadline.
    pub(super) fn at(&self) -> Instant {
        self.at
    }

    /// Whether the deadline has passed (then counted), by the clock, and in whose wait; called
    /// before each frame, so that a body whose bytes never stop coming (it never waits, so
    /// never reaches [`EndBy::passed`]) is cut on time too, not at its next pause, or never.
    /// The poll that calls it hands a frame on unless it waits ([`EndBy::passed`] says so).
    pub(super) fn over(&mut self) -> Option<Waited> {
        let handed = std::mem::replace(&mut self.handed, true);
        if Instant::now() < self.at {
            return None;
        }
        self.counted.inc();
        Some(match handed {
            true => Waited::Client,
            false => Waited::Upstream,
        })
    }

    /// Whether the deadline has passed (then counted); called when the body has nothing to
    /// give, so a body waiting for bytes leaves its task's waker with the timer.
    pub(super) fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.handed = false;
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.counted.inc();
        true
    }
}

// === impl Returning ===

/// An upstream connection that switched protocols (`101`), taken out of the pool for good.
#[derive(Debug)]
pub struct Switched {
    /// The connection's byte stream, from the byte after the 101's head.
    pub(super) stream: Stream,
    /// What was read after the 101's head: the first bytes of the new protocol.
    pub(super) read: Bytes,
    /// Its claim on the endpoint's `max_connections`, held while it is open.
    pub(super) slot: Slot,
}

impl Returning {
    /// The connection of a `101 Switching Protocols` answer (the caller knows the status),
    /// which never goes back to the pool; `None` if already taken, or if its request's body is
    /// still going out (an upgrade request carries none).
    pub(super) fn take_upgraded(&mut self) -> Option<Switched> {
        let (conn, _) = self.back.take_if(|(c, _)| !c.uploading())?;
        let (stream, read, slot) = conn.into_upgraded();
        Some(Switched { stream, read, slot })
    }

    /// The answer's body must end by `at`, the request's deadline (its timeout covers the
    /// whole exchange, as Envoy's route timeout does): past it, the body breaks off (the client
    /// sees it cut short) and `counted` is counted. Only a body not yet at its end keeps it.
    pub fn end_by(&mut self, at: Instant, counted: &prometheus::IntCounter) {
        if let Some(late) = self.late() {
            late.end_by = Some(EndBy::new(at, counted));
        }
    }

    /// Where the try's outcome waits for the body's end, if the body is still to come (see
    /// [`Trailed::plain`]); `None` for a body read whole with its head.
    pub fn trail(&mut self) -> Option<&mut Option<Trailed>> {
        Some(&mut self.late()?.trailed)
    }

    /// What waits for the body's end, made on first need; `None` if the body is whole.
    fn late(&mut self) -> Option<&mut Late> {
        if self.back.is_none() || self.is_end_stream_now() {
            return None;
        }
        Some(self.late.get_or_insert_with(Box::default))
    }

    /// `rampart_timeouts_total{kind="idle"}` of the request's route counts the body if
    /// `timeout.idle` cuts it. Only a body not yet at its end keeps it.
    pub fn count_idle(&mut self, counted: &prometheus::IntCounter) {
        if let Some(late) = self.late() {
            late.idle_counted = Some(counted.clone());
        }
    }

    /// The body broke (`cut` says why): its connection is dropped, never pooled, and its try
    /// ends as a failure: timed out when a timeout of rampart's cut it, else as a reset.
    fn broke(&mut self, cut: Cut) {
        if let Some(log) = self.guards.log.as_mut() {
            log.broken(match cut {
                Cut::Deadline | Cut::Held | Cut::Idle => Broken::Timeout,
                Cut::Upstream => Broken::UpstreamCut,
            });
        }
        self.back = None;
        self.failed = true;
        self.guards = Guards::default();
        // Its deadline goes too: a body at its end is never cut (nor counted) again.
        if let Some(late) = self.late.take() {
            if let (Cut::Idle, Some(c)) = (cut, &late.idle_counted) {
                c.inc();
            }
            if let Some(t) = late.trailed {
                t.end(match cut {
                    Cut::Deadline | Cut::Idle => StreamEnd::Deadline,
                    Cut::Held => StreamEnd::Cancelled,
                    Cut::Upstream => StreamEnd::Broke,
                });
            }
        }
    }

    /// Whether the body is whole already: read, or in the buffer with its head (the usual
    /// small answer), so nothing can keep it waiting.
    fn is_end_stream_now(&self) -> bool {
        self.back
            .as_ref()
            .is_none_or(|(conn, _)| conn.body_done() || conn.body_buffered())
    }

    /// The deadline the body must end by, if it keeps one (see [`Returning::end_by`]).
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.late.as_ref()?.end_by.as_ref().map(EndBy::at)
    }

    /// Counts the request's timeout if the body's deadline has passed (see
    /// `Body::count_if_late`).
    pub(super) fn count_if_late(&mut self) {
        if self.over_deadline().is_some() {
            if let Some(log) = self.guards.log.as_mut() {
                log.broken(Broken::Timeout);
            }
        }
    }

    /// Whether the body's deadline has passed, by the clock (then counted), and in whose wait;
    /// looked at before each frame (see [`EndBy::over`]).
    fn over_deadline(&mut self) -> Option<Waited> {
        self.late
            .as_mut()
            .and_then(|l| l.end_by.as_mut())
            .and_then(EndBy::over)
    }

    /// Whether the body's deadline has passed (its timer then counts the timeout); a body
    /// waiting for bytes leaves its task's waker with the timer.
    fn past_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        self.late
            .as_mut()
            .and_then(|l| l.end_by.as_mut())
            .is_some_and(|e| e.passed(cx))
    }

    /// The answer's header lines that are not in its map yet (see [`h1::RawLines`]).
    pub fn raw(&self) -> Option<&h1::RawLines> {
        let (conn, _) = self.back.as_ref()?;
        conn.raw.pending().then_some(&conn.raw)
    }

    /// [`Returning::raw`], to change.
    pub fn raw_mut(&mut self) -> Option<&mut h1::RawLines> {
        let (conn, _) = self.back.as_mut()?;
        conn.raw.pending().then_some(&mut conn.raw)
    }

    /// Moves the answer's header lines that are not in its map yet into `map`.
    pub fn fill_headers(&mut self, map: &mut http::HeaderMap) {
        if let Some((conn, _)) = self.back.as_mut() {
            conn.raw.fill(map);
        }
    }

    /// The answer ended: its connection goes back to the pool if it can carry another request.
    /// An answer that came whole before the end of its request's upload (an early `413`, say)
    /// leaves the rest of the upload to a task of its own: the client's connection stays in
    /// step only if its request body is read to the end, and nobody polls this body any more.
    fn give_back(&mut self) {
        if let Some((mut conn, pool)) = self.back.take() {
            // The head is written by now; its lines must not pin the read buffer they are in.
            conn.raw.release();
            if conn.uploading() {
                tokio::spawn(finish_upload(conn, pool));
            } else if conn.reusable() {
                pool.put(conn);
            }
        }
        self.guards = Guards::default();
        if let Some(t) = self.late.take().and_then(|l| l.trailed) {
            t.end(StreamEnd::NoTrailers);
        }
    }
}

/// An answer dropped before its end, its guards still held (its head went out): its client
/// went away or stopped reading, or rampart cut it at a drain's end. Its log line says so.
impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(log), Some((conn, _))) = (self.guards.log.as_mut(), self.back.as_ref()) {
            if !conn.body_done() {
                log.broken(broken_off());
            }
        }
    }
}

/// Why an answer still going is dropped: rampart's own cut at a drain's end
/// (`finish::cutting`), else its client's going.
pub(super) fn broken_off() -> Broken {
    match super::finish::cutting() {
        true => Broken::Shutdown,
        false => Broken::ClientGone,
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        if let Some(waited) = self.over_deadline() {
            // Cut short before the next frame: the connection is dropped, never pooled. The
            // try timed out only if rampart was waiting on the upstream.
            self.broke(match waited {
                Waited::Upstream => Cut::Deadline,
                Waited::Client => Cut::Held,
            });
            return Poll::Ready(Some(Err(UpstreamError::Deadline)));
        }
        let Some((conn, _)) = self.back.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match conn.poll_body(cx) {
            Poll::Ready(p) => p,
            Poll::Pending if self.past_deadline(cx) => {
                // Cut short: the connection is dropped, never pooled.
                self.broke(Cut::Deadline);
                return Poll::Ready(Some(Err(UpstreamError::Deadline)));
            }
            Poll::Pending => return Poll::Pending,
        };
        let ended = conn.body_done();
        if ended && conn.uploading() {
            // The answer is whole: a last chance for the upload to end, else it is abandoned.
            let _ = conn.drive_upload(cx);
        }
        match polled {
            Some(Ok(frame)) => {
                // Counted before the guards go with the last frame.
                if let (Some(d), Some(log)) = (frame.data_ref(), self.guards.log.as_mut()) {
                    log.sent(d.len());
                }
                if ended {
                    self.give_back();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.give_back();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                // A broken body breaks its connection: drop it, never pool it.
                self.broke(match e {
                    UpstreamError::Deadline => Cut::Deadline,
                    UpstreamError::Idle(_) => Cut::Idle,
                    _ => Cut::Upstream,
                });
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.back {
            Some((conn, _)) => conn.body_done(),
            None => !self.failed,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.back {
            Some((conn, _)) => conn.body_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    /// A waiter's waker that notes how many of its pool's places were free when it was woken.
    struct Looks {
        slots: Arc<Semaphore>,
        /// Free places seen at the wake-up, plus one (0: not woken).
        saw: AtomicUsize,
    }

    impl Wake for Looks {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            let free = self.slots.available_permits();
            self.saw.store(free + 1, Ordering::SeqCst);
        }
    }

    /// A request (or tunnel) waiting for a place at `max_connections` is woken when a
    /// connection's slot is given back, and the place is free by then. Before, the waiter was
    /// told first and the permit given back after: a waiter on another worker that looked in
    /// between found no place, waited again with the notification spent, and waited out its
    /// whole deadline (a CONNECT not answered 200 though the tunnel before it had closed).
    #[test]
    fn a_waiter_woken_by_a_slot_given_back_finds_its_place_free() {
        let settings = PoolSettings {
            max_idle: 1,
            max_connections: 1,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            http2: false,
        };
        let open = IntGauge::new("slot_test_open", "test").expect("a gauge");
        let pool = Pool::new(settings, None, open);
        let permit = pool.slots.clone().try_acquire_owned().expect("a place");
        let slot = Slot::new(permit, &pool);
        let looks = Arc::new(Looks {
            slots: pool.slots.clone(),
            saw: AtomicUsize::new(0),
        });
        let waker = Waker::from(looks.clone());
        let mut waiting = std::pin::pin!(pool.freed.notified());
        let pending = waiting.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(pending.is_pending(), "no place yet");
        drop(slot);
        assert_eq!(
            looks.saw.load(Ordering::SeqCst),
            2,
            "woken (not 0), with the one place free (not 1)"
        );
    }
}
