//! One upstream connection: the socket, one read buffer and one write buffer, and the
//! exchange in progress on it (see the parent module's note). Driven only by polls of whoever
//! uses it; the protocol itself is in `h1.rs`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use crate::proxy::sock::Sock;
use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::Method;
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_rustls::client::TlsStream;

use super::h1::{self, BodyKind, Framing, Out};
use super::quiet::Quiet;
use super::{Slot, UpstreamError};
use crate::proxy::body::Body;
use crate::proxy::forward::Added;

/// The read buffer's first size, and the least a read asks for.
const READ_START: usize = 8 * 1024;
/// The most a read asks for (reads that fill the buffer double it up to this).
const READ_MAX: usize = 64 * 1024;
/// Below this much free room, the read buffer is grown (or reclaimed) before a read.
const READ_MIN_ROOM: usize = 1024;
/// A write buffer with more room than this (a request head over 16 KiB) is let go when the
/// connection goes idle; heads up to it keep theirs from one request to the next.
const WRITE_KEEP: usize = 16 * 1024;

/// The byte stream under one upstream connection.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(Sock),
    Tls(Box<TlsStream<Sock>>),
    /// A scripted peer that records each write (unit tests: what goes out in one write).
    #[cfg(test)]
    Wire(tests::Wire),
}

/// One upstream connection, and the exchange in progress on it.
#[derive(Debug)]
pub(super) struct Conn {
    io: Stream,
    /// What was read and not yet handed on: an answer head, body bytes.
    rd: BytesMut,
    /// How much the next read asks for (grows while reads fill the buffer).
    read_size: usize,
    /// Whether `rd` was given room for a read larger than [`READ_START`] (a big answer): its
    /// buffer, up to [`READ_MAX`] and more, is let go when the connection goes idle ([`Conn::idle`]).
    grown: bool,
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
    /// The current request's deadline (`Added::deadline`): the rest of an upload whose answer
    /// already ended is not written past it (see `finish_upload`).
    pub(super) upload_by: Option<tokio::time::Instant>,
    /// The current answer's body.
    body: Decoder,
    /// Whether the connection may carry another request (so far).
    keep_alive: bool,
    /// Whether the current request asked to switch protocols (a 101 may answer it).
    upgrade: bool,
    /// Interim (1xx) answers the current request's answer began with so far, over all reads
    /// (`h1::parse_answer` holds them to `h1::MAX_INTERIM`).
    interim: u8,
    /// The connection's claim on the endpoint's `max_connections`.
    _slot: Slot,
    /// The worker that opened it (whose I/O driver watches its socket).
    home: usize,
    /// The header names of its last answer.
    names: h1::Names,
    /// The current answer's header lines, while they are not in its map (see `h1::RawLines`).
    pub(super) raw: h1::RawLines,
    /// The current exchange's idle timeout (`timeout.idle`, see `quiet.rs`).
    quiet: Quiet,
    /// Its timer, made at the connection's first wait and kept from request to request.
    quiet_timer: Option<Pin<Box<Option<Sleep>>>>,
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

/// Why an exchange failed, and whether its request may go out on another connection.
#[derive(Debug)]
pub(super) enum Failed {
    /// Nothing of the request was written; here is its body back.
    Unsent(Body, UpstreamError),
    /// The request (or part of it) went out.
    Broken(UpstreamError),
}

/// Whether `e` is the upstream's close of the connection: its FIN, its reset, or a write into
/// a connection it closed.
fn closed_by_peer(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Closed => true,
        UpstreamError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A waker that does nothing (`Waker::noop` is newer than this crate's minimum Rust).
struct Noop;

impl std::task::Wake for Noop {
    fn wake(self: Arc<Self>) {}
    fn wake_by_ref(self: &Arc<Self>) {}
}

pub(super) static NOOP: std::sync::LazyLock<Waker> =
    std::sync::LazyLock::new(|| Waker::from(Arc::new(Noop)));

/// A plain socket read through [`Sock::read_now`]: polled, it reads only what has come and
/// leaves no waker with the socket.
struct Now<'a>(&'a Sock);

impl AsyncRead for Now<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.read_now(buf)
    }
}

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
            #[cfg(test)]
            Stream::Wire(w) => w.read(buf),
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
            #[cfg(test)]
            Stream::Wire(w) => w.write(&[io::IoSlice::new(buf)]),
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
            #[cfg(test)]
            Stream::Wire(w) => w.write(bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            Stream::Wire(_) => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            Stream::Wire(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            Stream::Wire(_) => Poll::Ready(Ok(())),
        }
    }
}

// === impl Conn ===

impl Conn {
    pub(super) fn new(io: Stream, slot: Slot) -> Box<Conn> {
        Box::new(Conn {
            io,
            rd: BytesMut::with_capacity(READ_START),
            read_size: READ_START,
            grown: false,
            wr: Vec::with_capacity(1024),
            wr_at: 0,
            wr_data: Bytes::new(),
            sent: 0,
            upload: Upload::Done,
            upload_by: None,
            body: Decoder::Done,
            keep_alive: true,
            upgrade: false,
            interim: 0,
            _slot: slot,
            home: crate::workers::index(),
            names: h1::Names::default(),
            raw: h1::RawLines::default(),
            quiet: Quiet::default(),
            quiet_timer: None,
        })
    }

    /// The connection's byte stream after a `101 Switching Protocols` (it speaks the new
    /// protocol from here on, and is never pooled), with what was read after the 101's head
    /// (the first bytes of that protocol) and its claim on the endpoint's `max_connections`.
    pub(super) fn into_upgraded(self: Box<Self>) -> (Stream, Bytes, Slot) {
        let Conn { io, rd, _slot, .. } = *self;
        (io, rd.freeze(), _slot)
    }

    /// Lets go of what a big exchange left as the connection goes idle in its pool: a read
    /// buffer grown for a big answer (up to [`READ_MAX`] and more, for each idle connection
    /// until `pool_idle_timeout`), a write buffer grown for a head over [`WRITE_KEEP`], the
    /// room for the lines of an answer head of many (`h1::RawLines::trim`). A read
    /// buffer that never grew is kept, so a connection that carries small answers allocates
    /// nothing here; one that grew gets a new one of [`READ_START`] at its next read. (Its
    /// last frames, still on their way to the client, keep the old buffer until they are sent.)
    pub(super) fn idle(&mut self) {
        debug_assert!(
            self.rd.is_empty(),
            "only a connection with nothing unread is pooled"
        );
        if self.grown {
            self.rd = BytesMut::new();
            self.read_size = READ_START;
            self.grown = false;
        }
        if self.wr.capacity() > WRITE_KEEP {
            self.wr = Vec::with_capacity(1024);
        }
        self.raw.trim();
    }

    /// Whether an idle connection is still open and quiet: a read that would wait. End of
    /// stream, an error or bytes nobody asked for (a `408` before closing, say) mean it is
    /// done. The read costs no system call while the socket has had no event since the last
    /// read drained it; on a plain socket it leaves no waker either ([`Sock::read_now`]): the
    /// request that takes the connection registers its own as it waits for the answer.
    pub(super) fn alive(&mut self) -> bool {
        let mut quiet = Context::from_waker(&NOOP);
        self.make_room();
        match &self.io {
            Stream::Plain(sock) => {
                tokio_util::io::poll_read_buf(Pin::new(&mut Now(sock)), &mut quiet, &mut self.rd)
                    .is_pending()
            }
            _ => self.poll_fill(&mut quiet).is_pending(),
        }
    }

    /// `e`, the error a new connection's first exchange failed with, or the server's TLS
    /// alert waiting unread behind it: a write into a connection the server closed after its
    /// alert fails the exchange before anything is read, and the alert (in TLS 1.3, its refusal
    /// of rampart's client certificate) says more than the write's broken pipe. Not waited for.
    pub(super) fn pending(&mut self, e: UpstreamError) -> UpstreamError {
        let tls = |e: &io::Error| e.get_ref().is_some_and(|i| i.is::<rustls::Error>());
        match (&self.io, &e) {
            (Stream::Tls(_), UpstreamError::Io(io)) if !tls(io) => {}
            _ => return e,
        }
        let mut quiet = Context::from_waker(&NOOP);
        match self.poll_fill(&mut quiet) {
            Poll::Ready(Err(read)) if tls(&read) => UpstreamError::Io(read),
            _ => e,
        }
    }

    /// Reads the body of an answer with this head next.
    pub(super) fn start_body(&mut self, framing: Framing, keep_alive: bool) {
        self.body = match framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(h1::Chunked::new()),
            Framing::Close => Decoder::Close,
        };
        self.keep_alive &= keep_alive;
    }

    /// Whether the current answer's body was read whole.
    pub(super) fn body_done(&self) -> bool {
        matches!(self.body, Decoder::Done)
    }

    /// Whether the rest of the current answer's body is in the read buffer already (a body of
    /// known length read with its head).
    pub(super) fn body_buffered(&self) -> bool {
        match self.body {
            Decoder::Done => true,
            Decoder::Length(n) => self.rd.len() as u64 >= n,
            Decoder::Chunked(_) | Decoder::Close => false,
        }
    }

    /// Whether the current request's upload is still going.
    pub(super) fn uploading(&self) -> bool {
        matches!(self.upload, Upload::Sending { .. })
    }

    /// The worker that opened it.
    pub(super) fn home(&self) -> usize {
        self.home
    }

    /// Bytes of the current request written so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Whether the connection can carry another request now.
    pub(super) fn reusable(&self) -> bool {
        self.keep_alive
            && matches!(self.upload, Upload::Done)
            && matches!(self.body, Decoder::Done)
            && self.rd.is_empty()
    }

    /// Writes `req` and reads the answer head; the answer's body is read later through
    /// [`Returning`]. (Not an `async fn`, so its arguments are not kept twice in every
    /// request's future: see `stack::handle`.)
    #[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
    pub(super) fn exchange<'a>(
        &'a mut self,
        parts: &'a Parts,
        added: &'a Added<'a>,
        mut body: Body,
        reused: bool,
    ) -> impl Future<Output = Result<h1::Head, Failed>> + 'a {
        async move {
            let kind = if body.is_end_stream() {
                BodyKind::Empty
            } else if added.trailers {
                BodyKind::Trailed
            } else {
                match body.size_hint().exact() {
                    Some(n) => BodyKind::Exact(n),
                    None => BodyKind::Unknown,
                }
            };
            self.wr.clear();
            self.wr_at = 0;
            self.sent = 0;
            self.interim = 0;
            self.body = Decoder::Done;
            let written = h1::encode_head(
                &mut self.wr,
                &parts.method,
                &parts.uri,
                &parts.headers,
                Some(added),
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
            self.upload_by = added.deadline.copied();
            self.quiet.restart(added.idle_ms);
            // Kept in the connection, not in this future (every request's future would grow).
            self.upgrade = written.upgrade;
            let head_request = parts.method == Method::HEAD;
            match std::future::poll_fn(|cx| self.poll_exchange(cx, head_request)).await {
                Ok(head) => Ok(head),
                // The request's own body failed, not the connection (a frame read before the first
                // write, to go with the head, may fail while nothing is written).
                Err(e @ (UpstreamError::RequestBody(_) | UpstreamError::RequestLength)) => {
                    Err(Failed::Broken(e))
                }
                // Written whole to a kept connection that the upstream had closed (it closes idle
                // connections, or after so many requests, without saying so): nothing of an answer
                // came, so the request was not processed, and one whose resending is harmless
                // (RFC 9112 §9.3.1: idempotent, and nothing of a body to lose) goes out on another.
                // Not a try: nginx and hyper's pool resend such a request too.
                Err(e)
                    if reused
                        && kind == BodyKind::Empty
                        && self.rd.is_empty()
                        && crate::policy::retry::is_idempotent(&parts.method, &parts.headers)
                        && closed_by_peer(&e) =>
                {
                    self.upload = Upload::Done;
                    Err(Failed::Unsent(Body::Empty, e))
                }
                Err(e) if reused && self.sent == 0 => {
                    // Given back whole: a frame already taken from the body (to go out with the
                    // head) goes back in front of it.
                    let data = std::mem::take(&mut self.wr_data);
                    let body = match std::mem::replace(&mut self.upload, Upload::Done) {
                        Upload::Sending {
                            body: Body::Full(None),
                            ..
                        } if !data.is_empty() => Body::Full(Some(data)),
                        Upload::Sending {
                            body: Body::Client(mut body),
                            ..
                        } => {
                            if !data.is_empty() {
                                body.unread(Frame::data(data));
                            }
                            Body::Client(body)
                        }
                        Upload::Sending { body, .. } => body,
                        _ => Body::Empty,
                    };
                    Err(Failed::Unsent(body, e))
                }
                Err(e) => Err(Failed::Broken(e)),
            }
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
                if let Some(head) = h1::parse_answer(
                    &mut self.rd,
                    head_request,
                    self.upgrade,
                    &mut self.interim,
                    &mut self.names,
                    &mut self.raw,
                )? {
                    return Poll::Ready(Ok(head));
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(self.closed())),
                Poll::Ready(Ok(_)) => self.quiet.progress(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {
                    return match self.idled(cx) {
                        Some(e) => Poll::Ready(Err(e)),
                        None => Poll::Pending,
                    }
                }
            }
        }
    }

    /// A read found nothing: the idle timeout's error if the upstream has kept rampart waiting
    /// for its answer's next bytes past `timeout.idle`. The wait counts only once the request
    /// is written whole: while it goes out, the upstream may wait for the rest of it (and the
    /// client's stall is `body_idle_timeout`'s).
    fn idled(&mut self, cx: &mut Context<'_>) -> Option<UpstreamError> {
        if !self.quiet.is_on() {
            return None;
        }
        if self.uploading() {
            self.quiet.progress();
            return None;
        }
        let timer = self.quiet_timer.get_or_insert_with(|| Box::pin(None));
        self.quiet
            .stalled(timer.as_mut(), cx, None)
            .then(|| UpstreamError::Idle(self.quiet.limit()))
    }

    /// Moves the upload on, if one is going. A failed write is kept (the answer may still
    /// come, and then it tells more); if nothing of the request was written it fails the
    /// exchange at once, so that the request can go out on another connection.
    pub(super) fn drive_upload(&mut self, cx: &mut Context<'_>) -> Result<(), UpstreamError> {
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
    pub(super) fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        if self.sent == 0 && self.wr_data.is_empty() {
            self.gather(cx)?;
        }
        loop {
            ready!(self.poll_out(cx))?;
            let Upload::Sending {
                body, out, ending, ..
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
            let frame = ready!(Pin::new(body).poll_frame(cx));
            self.frame_out(frame)?;
        }
    }

    /// Before the first write of a client's streamed upload: a data frame already here (a
    /// small upload's whole body, often) goes out with the head, in one write. One system call
    /// less, and an upstream that answers before reading the body then finds the body with the
    /// head and can drain it and keep the connection; one that sees the head alone, answers and
    /// closes costs a new connection for every such request. Nothing here yet: the head goes
    /// alone. Trailers first are put back, to follow the head as usual.
    fn gather(&mut self, cx: &mut Context<'_>) -> Result<(), UpstreamError> {
        let Upload::Sending {
            body: Body::Client(body),
            out,
            ending: false,
            ..
        } = &mut self.upload
        else {
            return Ok(());
        };
        if *out == Out::None {
            return Ok(());
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Some(Ok(frame))) if !frame.is_data() => {
                body.unread(frame);
                Ok(())
            }
            Poll::Ready(frame) => self.frame_out(frame),
        }
    }

    /// Frames the body's next piece into `wr` (after what is there) and `wr_data`; `None` is
    /// the body's end.
    fn frame_out(
        &mut self,
        frame: Option<Result<Frame<Bytes>, crate::error::BoxError>>,
    ) -> Result<(), UpstreamError> {
        let Upload::Sending {
            out,
            chunked,
            ending,
            ..
        } = &mut self.upload
        else {
            return Ok(());
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(UpstreamError::RequestBody(e)),
            None => {
                match *out {
                    Out::Length(0) | Out::None => {}
                    Out::Length(_) | Out::ChunkedExact(1..) => {
                        return Err(UpstreamError::RequestLength)
                    }
                    Out::Chunked | Out::ChunkedExact(0) => {
                        if *chunked {
                            self.wr.extend_from_slice(b"\r\n");
                        }
                        self.wr.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                *ending = true;
                return Ok(());
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
                    Out::Chunked | Out::ChunkedExact(_) => {
                        if let Out::ChunkedExact(left) = out {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(UpstreamError::RequestLength)?;
                        }
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
                // Trailers end a chunked body (held to its length, if it had one, as its end
                // is); a body framed by its length has no room for them, and they are dropped.
                let Ok(trailers) = frame.into_trailers() else {
                    return Ok(());
                };
                if let Out::ChunkedExact(1..) = *out {
                    return Err(UpstreamError::RequestLength);
                }
                if let Out::Chunked | Out::ChunkedExact(_) = *out {
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
        Ok(())
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
            if n - from_head == self.wr_data.len() {
                // Written: let go of it (it may be a slice of the client's read buffer, which
                // is then that connection's alone again, to be read into in place).
                self.wr_data = Bytes::new();
            } else {
                self.wr_data.advance(n - from_head);
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads more into `rd`; Ready(Ok(0)) is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.make_room();
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

    /// Gives the read buffer room for the next read, if it has less than [`READ_MIN_ROOM`].
    fn make_room(&mut self) {
        if self.rd.capacity() - self.rd.len() < READ_MIN_ROOM {
            // Reclaims the buffer when every frame split off it is gone; else a new one.
            self.rd.reserve(self.read_size);
            self.grown |= self.read_size > READ_START || self.rd.capacity() > 2 * READ_START;
        }
    }

    /// The next piece of the answer's body (data, or the trailers of a chunked one); None at
    /// its end.
    pub(super) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
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
                        return Poll::Ready(Some(Ok(Frame::data(self.rd.split_to(n).freeze()))));
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
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(h1::Chunk::Trailers(map)) => {
                        if c.is_done() {
                            self.body = Decoder::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(h1::Chunk::More) => {}
                },
                Decoder::Close => {
                    if !self.rd.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(self.rd.split().freeze()))));
                    }
                }
            }
            let filled = match self.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    return match self.idled(cx) {
                        Some(e) => Poll::Ready(Some(Err(e))),
                        None => Poll::Pending,
                    }
                }
            };
            match filled {
                Ok(0) if matches!(self.body, Decoder::Close) => {
                    self.body = Decoder::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(self.closed()))),
                Ok(_) => self.quiet.progress(),
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// The rest of the answer's body, if its size is known.
    pub(super) fn body_hint(&self) -> SizeHint {
        match self.body {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Chunked(_) | Decoder::Close => SizeHint::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_types)] // a scripted test peer's state, off the request path
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use http::{HeaderValue, Request};
    use http_body_util::BodyExt;
    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::proxy::body::{ClientBody, ClientIn, FaultCell};

    /// A peer that answers with `answer` (then waits) and records every write it is given; or,
    /// `dead`, fails every write as a peer that closed would.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Wire {
        answer: Arc<Mutex<VecDeque<u8>>>,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        dead: bool,
        /// Once its answer is read, the peer's end of stream (else it waits).
        hung_up: bool,
    }

    impl Wire {
        pub(crate) fn read(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let mut answer = self.answer.lock().unwrap();
            if answer.is_empty() {
                return if self.hung_up {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let n = answer.len().min(buf.remaining());
            let bytes: Vec<u8> = answer.drain(..n).collect();
            buf.put_slice(&bytes);
            Poll::Ready(Ok(()))
        }

        pub(crate) fn write(&mut self, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
            if self.dead {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            self.writes.lock().unwrap().push(all);
            Poll::Ready(Ok(n))
        }
    }

    fn over(wire: &Wire) -> Box<Conn> {
        over_stream(Stream::Wire(wire.clone()))
    }

    fn over_stream(io: Stream) -> Box<Conn> {
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let slot = Slot {
            permit: Some(permit),
            freed: Arc::new(Notify::new()),
            open: prometheus::IntGauge::new("open", "test").unwrap(),
        };
        Conn::new(io, slot)
    }

    /// A peer that closed: every write fails.
    fn dead() -> Wire {
        Wire {
            dead: true,
            ..Wire::default()
        }
    }

    fn answering(answer: &[u8]) -> Wire {
        let wire = Wire::default();
        wire.answer.lock().unwrap().extend(answer);
        wire
    }

    /// A client's upload whose frames `chunks` are all here already.
    fn upload(chunks: &[&'static str]) -> Body {
        let fault = Arc::new(FaultCell::default());
        let mut body = ClientBody::new(ClientIn::Empty, fault);
        for chunk in chunks.iter().rev() {
            body.unread(Frame::data(Bytes::from_static(chunk.as_bytes())));
        }
        Body::Client(body)
    }

    async fn exchange(conn: &mut Conn, body: Body, reused: bool) -> Result<h1::Head, Failed> {
        exchange_as(conn, Method::POST, body, reused).await
    }

    async fn exchange_as(
        conn: &mut Conn,
        method: Method,
        body: Body,
        reused: bool,
    ) -> Result<h1::Head, Failed> {
        let (parts, ()) = Request::builder()
            .method(method)
            .uri("http://up/")
            .body(())
            .unwrap()
            .into_parts();
        let (id, ff) = ids();
        conn.exchange(&parts, &added(&id, &ff, false), body, reused)
            .await
    }

    /// The request id and `x-forwarded-for` a test request is sent with.
    fn ids() -> (HeaderValue, HeaderValue) {
        (
            HeaderValue::from_static("id"),
            HeaderValue::from_static("::1"),
        )
    }

    /// What the writer adds to a test request; `trailers`: it may end in them.
    fn added<'a>(id: &'a HeaderValue, ff: &'a HeaderValue, trailers: bool) -> Added<'a> {
        Added {
            host: "up",
            request_id: id,
            forwarded_for: ff,
            https: false,
            trailers,
            idle_ms: 0,
            deadline: None,
            waiting: None,
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    /// A client's upload of `chunks`, then trailers (`x-checksum`) if `trailers`, all here.
    fn trailed_upload(chunks: &[&'static str], trailers: bool) -> Body {
        let fault = Arc::new(FaultCell::default());
        let mut body = ClientBody::new(ClientIn::Empty, fault);
        // Each frame put back goes in front of the others: the last first.
        if trailers {
            let mut map = http::HeaderMap::new();
            map.insert("x-checksum", HeaderValue::from_static("c0ffee"));
            body.unread(Frame::trailers(map));
        }
        for chunk in chunks.iter().rev() {
            body.unread(Frame::data(Bytes::from_static(chunk.as_bytes())));
        }
        Body::Client(body)
    }

    /// A POST of `content-length: length` that may end in trailers (an HTTP/2 client's that
    /// announced them): what the writer wrote, or how the exchange failed.
    async fn trailed_exchange(length: &str, body: Body) -> Result<String, Failed> {
        let wire = answering(OK);
        let mut conn = over(&wire);
        let (parts, ()) = Request::post("http://up/")
            .header("content-length", length)
            .header("trailer", "x-checksum")
            .body(())
            .unwrap()
            .into_parts();
        let (id, ff) = ids();
        conn.exchange(&parts, &added(&id, &ff, true), body, false)
            .await?;
        let sent = wire.writes.lock().unwrap().concat();
        Ok(String::from_utf8(sent).unwrap())
    }

    /// A request that may end in trailers goes chunked, its `content-length` left out (RFC
    /// 9112 §6.1), so that the trailers have a place to go; it is held to that length all the
    /// same: a body longer or shorter than it said fails as one framed by it does.
    #[tokio::test]
    async fn an_upload_that_may_end_in_trailers_goes_chunked_held_to_its_length() {
        let sent = trailed_exchange("11", trailed_upload(&["hello ", "world"], true))
            .await
            .unwrap();
        let (head, body) = sent.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(head.contains("\r\ntrailer: x-checksum"), "{head}");
        assert_eq!(
            body,
            "6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: c0ffee\r\n\r\n"
        );
        // No trailers after all: the last chunk ends it.
        let sent = trailed_exchange("5", trailed_upload(&["hello"], false))
            .await
            .unwrap();
        assert!(
            sent.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{sent:?}"
        );
        // Longer or shorter than its length, ended by trailers or not.
        for (length, chunks, trailers) in [
            ("4", &["hello"][..], false),
            ("4", &["hello"][..], true),
            ("6", &["hello"][..], false),
            ("6", &["hello"][..], true),
        ] {
            let failed = trailed_exchange(length, trailed_upload(chunks, trailers)).await;
            assert!(
                matches!(failed, Err(Failed::Broken(UpstreamError::RequestLength))),
                "length {length}, trailers {trailers}: {failed:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_upload_already_here_goes_out_with_the_head_in_one_write() {
        let wire = answering(OK);
        let mut conn = over(&wire);
        let head = exchange(&mut conn, upload(&["hello"]), false)
            .await
            .unwrap();
        assert_eq!(head.response.status(), 200);
        let writes = wire.writes.lock().unwrap();
        assert_eq!(writes.len(), 1, "head and body in one write: {writes:?}");
        let sent = String::from_utf8_lossy(&writes[0]);
        assert!(sent.starts_with("POST / HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\ncontent-length: 5\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\nhello"), "{sent}");
        assert!(
            conn.reusable(),
            "the whole upload is written and the answer read"
        );
    }

    #[tokio::test]
    async fn only_the_first_frame_joins_the_head_and_the_rest_follow_in_order() {
        let wire = answering(OK);
        let mut conn = over(&wire);
        exchange(&mut conn, upload(&["one,", "two,", "three"]), false)
            .await
            .unwrap();
        let writes = wire.writes.lock().unwrap();
        let writes: Vec<_> = writes.iter().map(|w| String::from_utf8_lossy(w)).collect();
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert!(
            writes[0].contains("\r\ncontent-length: 13\r\n"),
            "{writes:?}"
        );
        assert!(writes[0].ends_with("\r\n\r\none,"), "{writes:?}");
        assert_eq!((&*writes[1], &*writes[2]), ("two,", "three"));
    }

    #[tokio::test]
    async fn a_dead_reused_connection_gives_the_frame_it_took_back_in_front_of_the_body() {
        let dead = dead();
        let mut conn = over(&dead);
        let unsent = match exchange(&mut conn, upload(&["hello, ", "world"]), true).await {
            Err(Failed::Unsent(body, UpstreamError::Io(_))) => body,
            other => panic!("expected the request back, unsent: {other:?}"),
        };
        assert_eq!(unsent.size_hint().exact(), Some(12));
        // The next connection sends all of it, the head and the first frame in one write.
        let wire = answering(OK);
        let mut next = over(&wire);
        exchange(&mut next, unsent, true).await.unwrap();
        let writes = wire.writes.lock().unwrap();
        let sent: Vec<u8> = writes.concat();
        let sent = String::from_utf8_lossy(&sent);
        assert!(sent.contains("\r\ncontent-length: 12\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\nhello, world"), "{sent}");
        assert_eq!(writes.len(), 2, "{writes:?}");
    }

    #[tokio::test]
    async fn a_body_already_in_memory_goes_out_with_the_head_and_comes_back_whole() {
        let dead = dead();
        let mut conn = over(&dead);
        let unsent = match exchange(&mut conn, Body::full("replayed"), true).await {
            Err(Failed::Unsent(body, _)) => body,
            other => panic!("expected the request back, unsent: {other:?}"),
        };
        let back = unsent.collect().await.unwrap().to_bytes();
        assert_eq!(&back[..], b"replayed");
    }

    /// A peer that takes the request whole, then sends `answer` (maybe nothing) and closes: a
    /// kept connection the upstream had closed unseen.
    fn hanging_up(answer: &[u8]) -> Wire {
        let wire = Wire {
            hung_up: true,
            ..Wire::default()
        };
        wire.answer.lock().unwrap().extend(answer);
        wire
    }

    #[tokio::test]
    async fn an_idempotent_bodiless_request_written_to_a_kept_connection_closed_unanswered_goes_back(
    ) {
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            let wire = hanging_up(b"");
            let mut conn = over(&wire);
            let failed = exchange_as(&mut conn, method.clone(), Body::Empty, true).await;
            assert!(
                matches!(
                    failed,
                    Err(Failed::Unsent(Body::Empty, UpstreamError::Closed))
                ),
                "{method}: {failed:?}"
            );
            assert_eq!(wire.writes.lock().unwrap().len(), 1, "it was written");
        }
    }

    #[tokio::test]
    async fn a_request_the_closed_connection_may_have_processed_is_not_sent_again() {
        // Not idempotent; a new connection (its close is the upstream's answer to this
        // request); a body; a part of an answer already come.
        let cases: [(Method, Body, bool, &[u8]); 4] = [
            (Method::POST, Body::Empty, true, b""),
            (Method::GET, Body::Empty, false, b""),
            (Method::PUT, upload(&["x"]), true, b""),
            (Method::GET, Body::Empty, true, b"HTTP/1.1 200 OK\r\n"),
        ];
        for (method, body, reused, answer) in cases {
            let wire = hanging_up(answer);
            let mut conn = over(&wire);
            let failed = exchange_as(&mut conn, method.clone(), body, reused).await;
            assert!(
                matches!(failed, Err(Failed::Broken(_))),
                "{method} reused {reused} answer {answer:?}: {failed:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_new_connection_that_fails_its_first_write_is_broken_not_handed_back() {
        let dead = dead();
        let mut conn = over(&dead);
        let failed = exchange(&mut conn, upload(&["hello"]), false).await;
        assert!(matches!(failed, Err(Failed::Broken(_))), "{failed:?}");
    }

    /// Reads the answer whose head `exchange` gave to its end; its frames are kept (as the
    /// client's side keeps them until sent).
    async fn read_answer(conn: &mut Conn, head: h1::Head) -> Vec<Bytes> {
        conn.start_body(head.framing, head.keep_alive);
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| conn.poll_body(cx)).await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        frames
    }

    /// A connection that read a big answer goes idle without the read buffer it grew for it
    /// (64 KiB reads, each an allocation up to twice that, held by every idle connection until
    /// `pool_idle_timeout`); one that read only small answers keeps its buffer, with nothing
    /// allocated, and so does one that goes back to small answers after a give-back.
    #[tokio::test]
    async fn a_connection_going_idle_gives_back_a_read_buffer_grown_for_a_big_answer() {
        const BIG: usize = 1 << 20;
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + BIG, b'x');
        let wire = answering(&answer);
        let mut conn = over(&wire);
        let head = exchange_as(&mut conn, Method::GET, Body::Empty, false)
            .await
            .unwrap();
        let frames = read_answer(&mut conn, head).await;
        assert_eq!(frames.iter().map(Bytes::len).sum::<usize>(), BIG);
        assert!(conn.reusable());
        assert!(conn.read_size > READ_START, "reads grew for the big answer");
        conn.idle();
        assert!(
            conn.rd.capacity() <= READ_START && conn.read_size == READ_START,
            "an idle connection keeps {} bytes of read buffer, reads of {}",
            conn.rd.capacity(),
            conn.read_size
        );
        drop(frames);

        // Small answers after it: the connection reads as before, and keeps the buffer it
        // makes for them.
        for _ in 0..3 {
            wire.answer
                .lock()
                .unwrap()
                .extend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            let head = exchange_as(&mut conn, Method::GET, Body::Empty, true)
                .await
                .unwrap();
            let frames = read_answer(&mut conn, head).await;
            assert_eq!(frames.concat(), b"ok");
            let (kept, at) = (conn.rd.capacity(), conn.rd.as_ptr());
            assert!(kept > 0);
            conn.idle();
            assert_eq!(
                (conn.rd.capacity(), conn.rd.as_ptr()),
                (kept, at),
                "a buffer that never grew is kept"
            );
        }
    }

    /// A waker that notes it was woken.
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The look at an idle plain connection before it is taken (`alive`) leaves the socket's
    /// waker as it was: the task that last waited to read it is still the one woken when bytes
    /// come. (A poll with a waker that does nothing put that one out, and took the socket's lock
    /// to do so, once a request.) The look still sees what came.
    #[tokio::test]
    async fn a_look_at_an_idle_plain_connection_leaves_the_reader_s_waker() {
        let lst = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(lst.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = lst.accept().await.unwrap();
        let mut conn = over_stream(Stream::Plain(Sock(ours)));
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        assert!(conn
            .poll_fill(&mut Context::from_waker(&waker))
            .is_pending());
        assert!(conn.alive(), "quiet: alive");
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"x")
            .await
            .unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), async {
            while !flag.0.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(woken.is_ok(), "the reader's waker was not woken");
        assert!(!conn.alive(), "bytes nobody asked for: not alive");
    }
}
