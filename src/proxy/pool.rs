//! Upstream connections: keep-alive HTTP/1.1 connections per endpoint, reused in turn.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to hand the connection
//! back, clones the URI and pool key per request, and its pool is behind a mutex. Here a
//! connection goes back to its endpoint's lock-free queue when the response body ends (see
//! [`Returning`]), so the hot path has no spawn, no lock and no extra allocation. A connection
//! that the upstream closed is noticed when taken and discarded; a request that a dead pooled
//! connection did not send goes out on the next one, so keep-alive races never surface.
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

pub mod h1;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use self::h1::{BodyKind, Framing, Out};
use super::body::Body;
use super::guard::Guards;
use crate::error::BoxError;

/// The read buffer's first size, and the least a read asks for.
const READ_START: usize = 8 * 1024;
/// The most a read asks for (reads that fill the buffer double it up to this).
const READ_MAX: usize = 64 * 1024;
/// Below this much free room, the read buffer is grown (or reclaimed) before a read.
const READ_MIN_ROOM: usize = 1024;

/// Idle connections of one endpoint.
#[derive(Debug)]
pub struct Pool {
    idle: ArrayQueue<Idle>,
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

/// One upstream connection, and the exchange in progress on it.
#[derive(Debug)]
struct Conn {
    io: Stream,
    /// What was read and not yet handed on: an answer head, body bytes.
    rd: BytesMut,
    /// How much the next read asks for (grows while reads fill the buffer).
    read_size: usize,
    /// Bytes to write: the request head, then a chunk's size line; reused for every request.
    wr: Vec<u8>,
    /// How much of `wr` is written.
    wr_at: usize,
    /// Body bytes to write after `wr`.
    wr_data: Bytes,
    /// Bytes of the current request written so far: while none is, a dead reused
    /// connection may give the request back for the next one.
    sent: u64,
    /// The current request's body.
    upload: Upload,
    /// The current answer's body.
    body: Decoder,
    /// Whether the connection may carry another request (so far).
    keep_alive: bool,
    /// The connection's claim on the endpoint's `max_connections`.
    _slot: Slot,
}

/// Where the current request's body is.
#[derive(Debug)]
enum Upload {
    /// Being written: `wr`/`wr_data` first, then the next frame of `body`.
    Sending {
        body: Body,
        out: Out,
        /// A chunk was written (the next size line starts with the CRLF ending it).
        chunked: bool,
        /// The body ended; what is in `wr` is the last of it.
        ending: bool,
    },
    /// All written.
    Done,
    /// Writing failed after some bytes went out; the answer may still come.
    Failed(io::Error),
}

/// How the rest of the current answer's body is read.
#[derive(Debug)]
enum Decoder {
    /// This many bytes more.
    Length(u64),
    /// Chunked.
    Chunked(h1::Chunked),
    /// Until the upstream closes.
    Close,
    /// Read whole.
    Done,
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
}

/// Why an exchange failed, and whether its request may go out on another connection.
#[derive(Debug)]
enum Failed {
    /// Nothing of the request was written; here it is back.
    Unsent(Box<Request<Body>>, UpstreamError),
    /// The request (or part of it) went out.
    Broken(UpstreamError),
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

/// A response body that reads its answer off its connection and gives the connection back
/// to the pool when it ends.
#[derive(Debug)]
pub struct Returning {
    back: Option<(Box<Conn>, Arc<Pool>)>,
    /// The body broke (it is then not at its end).
    failed: bool,
    /// What the request holds until this body ends (see `guard.rs`).
    pub(super) guards: Guards,
}

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle connections.
    pub fn new(settings: PoolSettings, tls: Option<TlsOrigin>) -> Arc<Pool> {
        Arc::new(Pool {
            idle: ArrayQueue::new(settings.max_idle.max(1)),
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
            while let Some(idle) = self.idle.pop() {
                if idle.since.elapsed() > self.idle_timeout {
                    continue;
                }
                let mut conn = idle.conn;
                if !conn.alive() {
                    continue;
                }
                match conn.exchange(req, true).await {
                    Ok(head) => return Ok(self.returning(head, conn)),
                    // Not sent: the connection died while idle. Use the next one.
                    Err(Failed::Unsent(unsent, e)) => {
                        tracing::debug!(%addr, error = %e, "idle upstream connection was dead");
                        req = *unsent;
                    }
                    Err(Failed::Broken(e)) => return Err(SendError::Reset(e)),
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                let slot = Slot {
                    _permit: permit,
                    freed: self.freed.clone(),
                };
                // Boxed: connecting (TCP, maybe a TLS handshake) is a large future and happens once
                // per connection; inline, every request's future would carry its size.
                let mut conn = Box::pin(self.connect(addr, slot)).await?;
                return match conn.exchange(req, false).await {
                    Ok(head) => Ok(self.returning(head, conn)),
                    Err(Failed::Unsent(_, e) | Failed::Broken(e)) => Err(SendError::Reset(e)),
                };
            }
            // At the cap: wait for a connection to go idle or close, then look again.
            let freed = self.freed.notified();
            if self.idle.is_empty() {
                freed.await;
            }
        }
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
            None => Ok(Conn::new(Stream::Plain(stream), slot)),
            Some(tls) => {
                // Never plaintext to an upstream with `tls`: a failed handshake is a failed
                // connect (502), within the same connect timeout.
                let cfg = tls.config.load_full();
                let shake = crate::tls::connect(cfg, &tls.server_name, stream);
                match tokio::time::timeout_at(deadline, shake).await {
                    Ok(Ok(s)) => Ok(Conn::new(Stream::Tls(Box::new(s)), slot)),
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

    fn returning(self: &Arc<Self>, head: h1::Head, mut conn: Box<Conn>) -> Response<Body> {
        conn.body = match head.framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(h1::Chunked::new()),
            Framing::Close => Decoder::Close,
        };
        conn.keep_alive &= head.keep_alive;
        let mut r = Returning {
            back: Some((conn, self.clone())),
            failed: false,
            guards: Guards::default(),
        };
        if matches!(head.framing, Framing::Empty) {
            // Nobody may poll an empty body: hand the connection back now.
            r.give_back();
        }
        head.response.map(|()| Body::Upstream(r))
    }

    fn put(&self, conn: Box<Conn>) {
        // A full queue drops the connection: more idle ones than `pool_max_idle` are waste.
        let _ = self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        self.freed.notify_one();
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
    fn new(io: Stream, slot: Slot) -> Box<Conn> {
        Box::new(Conn {
            io,
            rd: BytesMut::with_capacity(READ_START),
            read_size: READ_START,
            wr: Vec::with_capacity(1024),
            wr_at: 0,
            wr_data: Bytes::new(),
            sent: 0,
            upload: Upload::Done,
            body: Decoder::Done,
            keep_alive: true,
            _slot: slot,
        })
    }

    /// Whether an idle connection is still open and quiet: a read that would wait. End of
    /// stream, an error or bytes nobody asked for (a `408` before closing, say) mean it is
    /// done. The read costs no system call while the socket has had no event since the last
    /// read drained it.
    fn alive(&mut self) -> bool {
        let mut quiet = Context::from_waker(&NOOP);
        self.poll_fill(&mut quiet).is_pending()
    }

    /// Whether the connection can carry another request now.
    fn reusable(&self) -> bool {
        self.keep_alive
            && matches!(self.upload, Upload::Done)
            && matches!(self.body, Decoder::Done)
            && self.rd.is_empty()
    }

    /// Writes `req` and reads the answer head; the answer's body is read later through
    /// [`Returning`].
    async fn exchange(&mut self, req: Request<Body>, reused: bool) -> Result<h1::Head, Failed> {
        let (parts, mut body) = req.into_parts();
        let kind = if body.is_end_stream() {
            BodyKind::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => BodyKind::Exact(n),
                None => BodyKind::Unknown,
            }
        };
        if self.wr.capacity() > h1::MAX_HEAD {
            // A huge request head once is no reason to keep its buffer for the connection's life.
            self.wr = Vec::with_capacity(1024);
        }
        self.wr.clear();
        self.wr_at = 0;
        self.sent = 0;
        self.body = Decoder::Done;
        let written = h1::encode_head(
            &mut self.wr,
            &parts.method,
            &parts.uri,
            &parts.headers,
            kind,
        );
        self.keep_alive = !written.close;
        let mut out = written.body;
        if let (Out::Length(n), Body::Full(full)) = (out, &mut body) {
            // A body already in memory (a replayed request) goes out with the head, in one write.
            if full.as_ref().is_some_and(|b| b.len() as u64 == n) {
                self.wr_data = full.take().unwrap_or_default();
                out = Out::Length(0);
            }
        }
        self.upload = Upload::Sending {
            body,
            out,
            chunked: false,
            ending: false,
        };
        let head_request = parts.method == Method::HEAD;
        match std::future::poll_fn(|cx| self.poll_exchange(cx, head_request)).await {
            Ok(head) => Ok(head),
            Err(e) if reused && self.sent == 0 => {
                let body = match std::mem::replace(&mut self.upload, Upload::Done) {
                    Upload::Sending {
                        body: Body::Full(None),
                        ..
                    } if !self.wr_data.is_empty() => {
                        Body::Full(Some(std::mem::take(&mut self.wr_data)))
                    }
                    Upload::Sending { body, .. } => body,
                    _ => Body::Empty,
                };
                Err(Failed::Unsent(
                    Box::new(Request::from_parts(parts, body)),
                    e,
                ))
            }
            Err(e) => Err(Failed::Broken(e)),
        }
    }

    /// Writes the request (as far as the socket and its body allow) and reads until a whole
    /// final answer head is in.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<h1::Head, UpstreamError>> {
        loop {
            if let Err(e) = self.drive_upload(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.rd.is_empty() {
                if let Some(head) = h1::parse_head(&mut self.rd, head_request)? {
                    return Poll::Ready(Ok(head));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(self.closed()));
            }
        }
    }

    /// Moves the upload on, if one is going. A failed write is kept (the answer may still
    /// come, and then it tells more); if nothing of the request was written it fails the
    /// exchange at once, so that the request can go out on another connection.
    fn drive_upload(&mut self, cx: &mut Context<'_>) -> Result<(), UpstreamError> {
        if !matches!(self.upload, Upload::Sending { .. }) {
            return Ok(());
        }
        match self.poll_upload(cx) {
            Poll::Ready(Err(UpstreamError::Io(e))) => {
                if self.sent == 0 {
                    return Err(UpstreamError::Io(e));
                }
                self.keep_alive = false;
                self.upload = Upload::Failed(e);
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// The error for a connection the upstream closed mid-answer: the failed write if there
    /// was one (it says why), or the close itself.
    fn closed(&mut self) -> UpstreamError {
        match std::mem::replace(&mut self.upload, Upload::Done) {
            Upload::Failed(e) => UpstreamError::Io(e),
            _ => UpstreamError::Closed,
        }
    }

    /// Writes the request: what is buffered, then the body's frames as they come, framed.
    /// Ready(Ok) once all of it is written (and flushed).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        loop {
            ready!(self.poll_out(cx))?;
            let Upload::Sending {
                body,
                out,
                chunked,
                ending,
            } = &mut self.upload
            else {
                return Poll::Ready(Ok(()));
            };
            if *ending || *out == Out::None {
                self.upload = Upload::Done;
                return Poll::Ready(Ok(()));
            }
            self.wr.clear();
            self.wr_at = 0;
            let frame = match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Err(UpstreamError::RequestBody(e))),
                None => {
                    match *out {
                        Out::Length(0) | Out::None => {}
                        Out::Length(_) => return Poll::Ready(Err(UpstreamError::RequestLength)),
                        Out::Chunked => {
                            if *chunked {
                                self.wr.extend_from_slice(b"\r\n");
                            }
                            self.wr.extend_from_slice(b"0\r\n\r\n");
                        }
                    }
                    *ending = true;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    match out {
                        Out::Length(left) => {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(UpstreamError::RequestLength)?;
                        }
                        Out::Chunked => {
                            if *chunked {
                                self.wr.extend_from_slice(b"\r\n");
                            }
                            h1::chunk_line(&mut self.wr, data.len());
                            *chunked = true;
                        }
                        Out::None => {}
                    }
                    self.wr_data = data;
                }
                Err(frame) => {
                    // Trailers end a chunked body; a body framed by its length has no room
                    // for them, and they are dropped.
                    if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), *out) {
                        if *chunked {
                            self.wr.extend_from_slice(b"\r\n");
                        }
                        self.wr.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            self.wr.extend_from_slice(name.as_str().as_bytes());
                            self.wr.extend_from_slice(b": ");
                            self.wr.extend_from_slice(value.as_bytes());
                            self.wr.extend_from_slice(b"\r\n");
                        }
                        self.wr.extend_from_slice(b"\r\n");
                        *ending = true;
                    }
                }
            }
        }
    }

    /// Writes `wr` (from `wr_at`) and then `wr_data`, and flushes.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let head = &self.wr[self.wr_at..];
            let n = match (head.is_empty(), self.wr_data.is_empty()) {
                (true, true) => break,
                (false, true) => ready!(Pin::new(&mut self.io).poll_write(cx, head))?,
                (true, false) => ready!(Pin::new(&mut self.io).poll_write(cx, &self.wr_data))?,
                (false, false) => {
                    let bufs = [io::IoSlice::new(head), io::IoSlice::new(&self.wr_data)];
                    ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &bufs))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n as u64;
            let from_head = n.min(head.len());
            self.wr_at += from_head;
            self.wr_data.advance(n - from_head);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads more into `rd`; Ready(Ok(0)) is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rd.capacity() - self.rd.len() < READ_MIN_ROOM {
            // Reclaims the buffer when every frame split off it is gone; else a new one.
            self.rd.reserve(self.read_size);
        }
        let room = self.rd.capacity() - self.rd.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rd
        ))?;
        if n == room && self.read_size < READ_MAX {
            self.read_size *= 2;
        } else if n < self.read_size / 8 && self.read_size > READ_START {
            self.read_size /= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// The next piece of the answer's body; None at its end.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        loop {
            if let Err(e) = self.drive_upload(cx) {
                return Poll::Ready(Some(Err(e)));
            }
            match &mut self.body {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(left) => {
                    if !self.rd.is_empty() {
                        let n = (self.rd.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            self.body = Decoder::Done;
                        }
                        return Poll::Ready(Some(Ok(self.rd.split_to(n).freeze())));
                    }
                }
                Decoder::Chunked(c) => match c.decode(&mut self.rd) {
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    Ok(h1::Chunk::End) => {
                        self.body = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    Ok(h1::Chunk::Data(data)) => {
                        // Looks past the chunk's end for the body's end, so that the last
                        // chunk already says so (a framing error here shows on the next poll).
                        if c.skip_framing(&mut self.rd).is_ok() && c.is_done() {
                            self.body = Decoder::Done;
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    Ok(h1::Chunk::More) => {}
                },
                Decoder::Close => {
                    if !self.rd.is_empty() {
                        return Poll::Ready(Some(Ok(self.rd.split().freeze())));
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if matches!(self.body, Decoder::Close) => {
                    self.body = Decoder::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(self.closed()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// The rest of the answer's body, if its size is known.
    fn body_hint(&self) -> SizeHint {
        match self.body {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Chunked(_) | Decoder::Close => SizeHint::new(),
        }
    }
}

/// Writes the rest of an upload whose answer already ended, then pools the connection if it
/// can carry another request. An upstream that takes no byte of it for `pool_idle_timeout`
/// loses it (a client that stalls is bounded by its own `body_idle_timeout`).
async fn finish_upload(mut conn: Box<Conn>, pool: Arc<Pool>) {
    let stall = pool.idle_timeout;
    let mut timer = std::pin::pin!(tokio::time::sleep(stall));
    let mut last = conn.sent;
    let finished = std::future::poll_fn(|cx| match conn.poll_upload(cx) {
        Poll::Ready(r) => Poll::Ready(r.is_ok()),
        Poll::Pending => {
            if conn.sent != last {
                last = conn.sent;
                timer.as_mut().reset(Instant::now() + stall);
            }
            timer.as_mut().poll(cx).map(|()| false)
        }
    })
    .await;
    if finished && conn.reusable() {
        pool.put(conn);
    }
}

// === impl Returning ===

impl Returning {
    /// The answer ended: its connection goes back to the pool if it can carry another request.
    /// An answer that came whole before the end of its request's upload (an early `413`, say)
    /// leaves the rest of the upload to a task of its own: the client's connection stays in
    /// step only if its request body is read to the end, and nobody polls this body any more.
    fn give_back(&mut self) {
        if let Some((conn, pool)) = self.back.take() {
            if matches!(conn.upload, Upload::Sending { .. }) {
                tokio::spawn(finish_upload(conn, pool));
            } else if conn.reusable() {
                pool.put(conn);
            }
        }
        self.guards = Guards::default();
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let Some((conn, _)) = self.back.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(conn.poll_body(cx));
        let ended = matches!(conn.body, Decoder::Done);
        if ended && matches!(conn.upload, Upload::Sending { .. }) {
            // The answer is whole: a last chance for the upload to end, else it is abandoned.
            let _ = conn.drive_upload(cx);
        }
        match polled {
            Some(Ok(data)) => {
                // Counted before the guards go with the last frame.
                if let Some(log) = self.guards.log.as_mut() {
                    log.sent(data.len());
                }
                if ended {
                    self.give_back();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => {
                self.give_back();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                // A broken body breaks its connection: drop it, never pool it.
                self.back = None;
                self.failed = true;
                self.guards = Guards::default();
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.back {
            Some((conn, _)) => matches!(conn.body, Decoder::Done),
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
