//! Upstream connections: keep-alive HTTP/1.1 connections per endpoint, reused in turn.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to hand the connection
//! back, clones the URI and pool key per request, and its pool is behind a mutex. Here a
//! connection goes back to its endpoint's lock-free queue when the response body ends (see
//! [`Returning`]), so the hot path has no spawn, no lock and no extra allocation. A connection
//! that the upstream closed is noticed when taken and discarded; a request that a dead pooled
//! connection did not send goes out on the next one, so keep-alive races never surface.
//!
//! A connection is driven inside the task of the request that uses it, not in a task of its
//! own: the request future polls it while it waits for the answer head, and the answer body
//! ([`Returning`]) polls it while the body streams. A proxied request then costs no wake-up of
//! another task and no hand-over through a channel between tasks. One case needs its own task:
//! a request with a body, because the upstream may answer before the upload ends and the
//! rest of the upload must still be written while nobody polls the answer (an answer without
//! a body, say). Such a connection is spawned into a task of its own for the rest of its life.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::body::Body;
use super::guard::Guards;

/// Idle connections of one endpoint.
#[derive(Debug)]
pub struct Pool {
    /// One queue per worker (`workers.rs`): a connection goes back to the worker that opened
    /// it, whose I/O driver watches its socket, and is reused there. `pool_max_idle` is split
    /// between them (at least one each).
    idle: Box<[ArrayQueue<Idle>]>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<TlsOrigin>,
    /// One permit per connection this endpoint may have open (`max_connections`); a permit
    /// lives as long as its connection.
    slots: Arc<Semaphore>,
    /// Woken when a connection goes idle or closes: a request waiting for one may go on.
    freed: Arc<Notify>,
}

/// An open connection's claim on one of its endpoint's `max_connections`.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
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

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// The byte stream under one upstream connection.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One upstream connection: the handle that sends requests on it, and the connection itself
/// while this pool drives it in the task that uses it.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Body>,
    /// `Some` while driven in the using task (with the connection's claim on the endpoint's
    /// `max_connections`); `None` once it runs in a task of its own (which holds the claim) or
    /// has ended.
    driven: Option<(Connection<TokioIo<Stream>, Body>, Slot)>,
    addr: SocketAddr,
    /// The worker that opened it (whose I/O driver watches its socket).
    home: usize,
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
    /// The connection broke before a whole answer head came.
    #[error("connection to upstream lost: {0}")]
    Reset(#[source] hyper::Error),
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
}

/// A response body that gives its connection back to the pool when it ends.
#[derive(Debug)]
pub struct Returning {
    body: Incoming,
    back: Option<(Box<Conn>, Arc<Pool>)>,
    /// What the request holds until this body ends (see `guard.rs`).
    pub(super) guards: Guards,
}

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle connections.
    pub fn new(settings: PoolSettings, tls: Option<TlsOrigin>) -> Arc<Pool> {
        Arc::new(Pool {
            idle: {
                let n = crate::workers::count();
                let each = settings.max_idle.div_ceil(n).max(1);
                (0..n).map(|_| ArrayQueue::new(each)).collect()
            },
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            tls,
            slots: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            freed: Arc::new(Notify::new()),
        })
    }

    /// Sends `req` to `addr` over an idle connection, or a new one if the endpoint has fewer
    /// than `max_connections`; otherwise waits until one is free. The caller bounds the wait
    /// (the try's deadline).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        loop {
            // This worker's idle connections first; then a new one if the cap allows; at the
            // cap, another worker's idle one (its socket stays with that worker's driver, which
            // wakes this task: slower, but better than waiting).
            let mut steal = false;
            loop {
                let idle = if steal {
                    self.idle.iter().find_map(ArrayQueue::pop)
                } else {
                    self.own().pop()
                };
                let Some(idle) = idle else {
                    if steal {
                        break;
                    }
                    if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                        let slot = Slot {
                            _permit: permit,
                            freed: self.freed.clone(),
                        };
                        // Boxed: connecting (TCP, maybe a TLS handshake) is a large future and
                        // happens once per connection; inline, every request's future would
                        // carry its size.
                        let mut conn = Box::pin(self.connect(addr, slot)).await?;
                        let rsp = conn.send(req).await.map_err(SendError::Reset)?;
                        return Ok(self.returning(rsp, conn));
                    }
                    steal = true;
                    continue;
                };
                if idle.since.elapsed() > self.idle_timeout {
                    continue;
                }
                let mut conn = idle.conn;
                if conn.ready().await.is_err() {
                    continue;
                }
                match conn.try_send(req).await {
                    Ok(rsp) => return Ok(self.returning(rsp, conn)),
                    Err(mut e) => match e.take_message() {
                        // Not sent: the connection died while idle. Use the next one.
                        Some(unsent) => req = unsent,
                        None => return Err(SendError::Reset(e.into_error())),
                    },
                }
            }
            // At the cap: wait for a connection to go idle or close, then look again.
            let freed = self.freed.notified();
            if self.idle.iter().all(ArrayQueue::is_empty) {
                freed.await;
            }
        }
    }

    /// The idle queue of the worker running this task.
    fn own(&self) -> &ArrayQueue<Idle> {
        &self.idle[crate::workers::index() % self.idle.len()]
    }

    async fn connect(&self, addr: SocketAddr, slot: Slot) -> Result<Box<Conn>, SendError> {
        let deadline = Instant::now() + self.connect_timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
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
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => handshake(addr, Stream::Plain(stream), slot).await,
            Some(tls) => {
                // Never plaintext to an upstream with `tls`: a failed handshake is a failed
                // connect (502), within the same connect timeout.
                let cfg = tls.config.load_full();
                let shake = crate::tls::connect(cfg, &tls.server_name, stream);
                match tokio::time::timeout_at(deadline, shake).await {
                    Ok(Ok(s)) => handshake(addr, Stream::Tls(Box::new(s)), slot).await,
                    Ok(Err(source)) => Err(SendError::Connect {
                        addr,
                        timed_out: false,
                        source,
                    }),
                    Err(_) => Err(connect_timed_out(addr)),
                }
            }
        }
    }

    fn returning(self: &Arc<Self>, rsp: Response<Incoming>, conn: Box<Conn>) -> Response<Body> {
        rsp.map(|body| {
            let mut r = Returning {
                body,
                back: Some((conn, self.clone())),
                guards: Guards::default(),
            };
            if http_body::Body::is_end_stream(&r.body) {
                // Nobody may poll an empty body: hand the connection back now.
                r.give_back();
            }
            Body::Upstream(r)
        })
    }

    fn put(&self, conn: Box<Conn>) {
        if !conn.sender.is_closed() {
            // A full queue drops the connection: more idle ones than `pool_max_idle` are waste.
            let home = &self.idle[conn.home % self.idle.len()];
            let _ = home.push(Idle {
                conn,
                since: Instant::now(),
            });
            self.freed.notify_one();
        }
    }
}

fn connect_timed_out(addr: SocketAddr) -> SendError {
    let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    SendError::Connect {
        addr,
        timed_out: true,
        source,
    }
}

/// Runs the HTTP/1.1 client handshake over `io`; the connection is driven by its users.
async fn handshake(addr: SocketAddr, io: Stream, slot: Slot) -> Result<Box<Conn>, SendError> {
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Reset)?;
    Ok(Box::new(Conn {
        sender,
        driven: Some((conn, slot)),
        addr,
        home: crate::workers::index(),
    }))
}

/// A waker that does nothing (`Waker::noop` is newer than this crate's minimum Rust).
struct Noop;

impl std::task::Wake for Noop {
    fn wake(self: Arc<Self>) {}
    fn wake_by_ref(self: &Arc<Self>) {}
}

static NOOP: std::sync::LazyLock<Waker> = std::sync::LazyLock::new(|| Waker::from(Arc::new(Noop)));

// === impl Stream ===

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// === impl Conn ===

impl Conn {
    /// Polls the connection, if this task drives it (see [`Drive::poll_conn`]).
    fn poll_conn(&mut self, cx: &mut Context<'_>) {
        self.split().1.poll_conn(cx);
    }

    /// The sender and, apart from it, the connection that must be driven while it waits.
    fn split(&mut self) -> (&mut SendRequest<Body>, Drive<'_>) {
        let Conn {
            sender,
            driven,
            addr,
            ..
        } = self;
        let drive = Drive {
            driven,
            addr: *addr,
        };
        (sender, drive)
    }

    /// Until the connection can take a request (or turns out dead).
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        let (sender, mut drive) = self.split();
        drive.run(sender.ready()).await
    }

    /// Sends `req`, giving it back if the connection died before sending it.
    async fn try_send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        self.detach_for(&req);
        let (sender, mut drive) = self.split();
        drive.run(sender.try_send_request(req)).await
    }

    /// Sends `req` on a new connection.
    async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        self.detach_for(&req);
        let (sender, mut drive) = self.split();
        drive.run(sender.send_request(req)).await
    }

    /// A request with a body moves the connection into a task of its own (see the module
    /// note): the upload must go on even while nobody polls the answer.
    fn detach_for(&mut self, req: &Request<Body>) {
        if http_body::Body::is_end_stream(req.body()) {
            return;
        }
        if let Some((conn, slot)) = self.driven.take() {
            let addr = self.addr;
            tokio::spawn(async move {
                ended(addr, conn.await);
                drop(slot);
            });
        }
    }
}

/// Notes how an upstream connection ended (an error is only worth a debug line: the try that
/// used it, if any, has its own outcome).
fn ended(addr: SocketAddr, r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
    }
}

/// The connection half of a [`Conn`], borrowed apart from its sender.
struct Drive<'a> {
    driven: &'a mut Option<(Connection<TokioIo<Stream>, Body>, Slot)>,
    addr: SocketAddr,
}

impl Drive<'_> {
    /// Polls the connection; an ended one is dropped, which fails whatever waited on it.
    fn poll_conn(&mut self, cx: &mut Context<'_>) {
        if let Some((conn, _)) = self.driven.as_mut() {
            if let Poll::Ready(r) = Pin::new(conn).poll(cx) {
                ended(self.addr, r);
                *self.driven = None;
            }
        }
    }

    /// Polls `fut` to its end, driving the connection meanwhile.
    ///
    /// While this task drives the connection, `fut` (a request's answer, or the connection's
    /// readiness) can only progress when the connection is polled here, and it is polled
    /// right after. So `fut` gets a waker that does nothing: the connection handing over the
    /// answer head would otherwise wake this task once more for nothing, and each wake-up
    /// polls the whole client connection again. Likewise the connection is polled with such a
    /// waker just before `fut` queues the request, so that queueing wakes nobody (not even a
    /// task that used the connection earlier); the real waker is registered right after.
    async fn run<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let mut queued = false;
        std::future::poll_fn(|cx| {
            let quiet = &mut Context::from_waker(&NOOP);
            if !queued {
                queued = true;
                if self.driven.is_some() {
                    self.poll_conn(quiet);
                }
                let first = if self.driven.is_some() {
                    &mut *quiet
                } else {
                    &mut *cx
                };
                if let Poll::Ready(v) = fut.as_mut().poll(first) {
                    return Poll::Ready(v);
                }
            }
            self.poll_conn(cx);
            // An ended connection is dropped by `poll_conn`, and `fut` then fails at once; a
            // connection driven elsewhere wakes this task through `fut`'s own waker.
            let waker = if self.driven.is_some() { quiet } else { cx };
            fut.as_mut().poll(waker)
        })
        .await
    }
}

// === impl Returning ===

impl Returning {
    fn give_back(&mut self) {
        if let Some((conn, pool)) = self.back.take() {
            pool.put(conn);
        }
        self.guards = Guards::default();
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // The body's bytes come through the connection, which this task drives.
        if let Some((conn, _)) = self.back.as_mut() {
            conn.poll_conn(cx);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            // Counted before the guards go with the last frame.
            if let (Some(d), Some(log)) = (f.data_ref(), self.guards.log.as_mut()) {
                log.sent(d.len());
            }
        }
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            // A broken body breaks its connection: drop it, never pool it.
            Poll::Ready(Some(Err(_))) => {
                self.back = None;
                self.guards = Guards::default();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
