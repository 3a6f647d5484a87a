//! HTTP/2 to an upstream (`protocol: http2`): what a gRPC service speaks.
//!
//! One connection per endpoint carries every request at once, as Envoy's and Linkerd's do:
//! h2c with prior knowledge in clear, ALPN `h2` over `tls`. The protocol (streams, flow
//! control, trailers, `GOAWAY`) is hyper's client; what is rampart's is small: the connection
//! is made on the first request (and again after it closed), counted in
//! `rampart_upstream_connections` while it lasts (not against `max_connections`: one is in
//! use, and those going away after a `GOAWAY` end with their streams), and each
//! request goes out with the lines rampart adds ([`Added`]) and `te: trailers`, its answer's
//! trailers passed on to the client.
//!
//! **Going away.** A connection that got a `GOAWAY` takes no new stream ([`H2::retire`]), and a
//! request the upstream certainly did not process ([`Refusal`]) is sent again on the newest
//! connection, within the same try: whatever its method, since it was never processed. A
//! streamed upload goes again too when it is within its cap (`body::Replay`): what was read of
//! it, then the rest as the client sends it, even if the refusal came before its end. An
//! HTTP/2 client's POST is then served as an HTTP/1.1 client's is.
//!
//! **Flow control.** Every stream of a connection shares its connection window, and an answer
//! nobody reads (a client that stops reading, a gRPC stream whose client sends no
//! `WINDOW_UPDATE`) holds its part of it until it ends. hyper's defaults (2 MiB a stream, 5 MiB
//! the connection) let three such answers take the whole connection window, and every other
//! request on the connection then got its head and no byte of its body. So each stream gets
//! [`STREAM_WINDOW`] (what one unread answer can make rampart hold), the connection the most
//! HTTP/2 allows ([`CONNECTION_WINDOW`]), and no more streams are open at once than
//! [`MAX_STREAMS`], which that window holds at their full stream window: answers nobody reads
//! can never take it all. (An nghttp2-based proxy can hand back a connection's window as data
//! arrives and hold back only the stream's; h2 hands both back as the answer is read, hence
//! these sizes.)

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, EXPECT, HOST, TE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::{Instant, Sleep};

mod link;
mod pipe;
pub(crate) use link::Link;
use link::{Closed, Slot, Watched};
use pipe::{Exec, Pipe, Sent};

use super::quiet::{self, Quiet, Sending};
use super::{
    connect_timed_out, EndBy, Pool, SendError, UpstreamError, Waited, WAIT_CONNECT, WAIT_NONE,
};
use crate::proxy::access_log::Broken;
use crate::proxy::body::{Body, FaultCell, Replay};
use crate::proxy::forward::{Added, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::proxy::grpc::{self, Messages, StreamEnd, Trailed, GRPC_STATUS};
use crate::proxy::guard::Guards;
use crate::proxy::listener::H2_SEND_BUF;

/// How long an HTTP/2 upstream connection with a stream open may send nothing before it is
/// pinged (hyper counts from the last frame read, a PING's answer too). An idle one (no stream
/// open) is never pinged. gRPC servers (grpc-go, grpc-java, C-core) allow a client's PING at
/// most every 5 minutes while a call is open and none while none is, by default; three PINGs
/// sooner and they close the connection (`GOAWAY ENHANCE_YOUR_CALM`, "too_many_pings"): the
/// 30 s PINGs, idle too, that were here had an idle connection cut about every 2 minutes and a
/// call silent that long cut in flight. So a stream waiting on an upstream the network lost
/// silently is found within 5 minutes and [`KEEP_ALIVE_TIMEOUT`] (or its deadline, if sooner).
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(5 * 60);
/// How long a ping may go unanswered before the connection is given up.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/2 upstream connection's send window may stay shut (the upstream took
/// uploads and opened no more room for them on the connection) before no new upload goes on
/// it (a request without a body needs no send window, and still does). Nothing is cut at this
/// bound, so it can be short: its cost is one more connection. It
/// is [`KEEP_ALIVE_TIMEOUT`], how long the upstream may leave a PING unanswered before the
/// connection is given up: an upstream that takes no byte of any upload for as long is no
/// more use to a new request than one that does not answer at all. (`SEND_STALL`, 60 s, bounds
/// how long rampart holds one client's stream whose window its client keeps shut, and cuts it;
/// a stream stalled on this connection is bounded as before, by its request's deadline.)
const SHUT_WINDOW: Duration = KEEP_ALIVE_TIMEOUT;
/// The most connections to one endpoint whose send window has stayed shut for [`SHUT_WINDOW`]:
/// the one in use, and one let go for it and still open (its stalled uploads not yet ended).
/// An upload that finds the one in use shut then is answered 502 at once, unsent, instead of
/// opening another. Moving uploads to a new connection is for one connection gone wrong; a
/// second one shut while the first still holds its uploads says the upstream takes no uploads
/// at all, and each further connection would shut as well and, on a route without
/// `timeout.request`, stay open for ever with the uploads stalled on it: one more every
/// [`SHUT_WINDOW`]. Not `max_connections`, which does nothing under `protocol: http2` (as
/// `validate` warns) and whose default (1024) would not bound this in any useful way.
const SHUT_MAX: usize = 2;
/// Least time between two `warn` lines about uploads refused at [`SHUT_MAX`], per endpoint.
const SHUT_WARN_EVERY_MS: u64 = 10_000;
/// Each stream's receive window: the most of one answer rampart holds while its client does
/// not read it (256 KiB: at a 1 ms round trip, 256 MB/s for one stream).
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: the most HTTP/2 allows (2^31 - 1, RFC 9113 §6.9.1).
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// Streams open at once to one endpoint: as many as [`CONNECTION_WINDOW`] holds at their full
/// [`STREAM_WINDOW`] (8191), so that streams nobody reads can never exhaust it. More requests
/// wait for a stream to end (within their try's deadline), as they would at an upstream's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, and at an upstream's own limit too ([`link`]).
const MAX_STREAMS: usize = (CONNECTION_WINDOW / STREAM_WINDOW) as usize;
const _: () = assert!(MAX_STREAMS as u64 * STREAM_WINDOW as u64 <= CONNECTION_WINDOW as u64);

/// An endpoint's HTTP/2 connection, made when first needed.
#[derive(Debug, Default)]
pub(crate) struct H2 {
    /// The connection; `None` before the first connect, and after the connection is let go.
    sender: parking_lot::Mutex<Option<Live>>,
    /// The connections let go because their send window stayed shut ([`H2::live`]), while
    /// they may still be open and shut: fewer than [`SHUT_MAX`] (locked after `sender`).
    shut: parking_lot::Mutex<Vec<Arc<Link>>>,
    /// When (coarse milliseconds) an upload refused at [`SHUT_MAX`] was last warned of.
    shut_warned: AtomicU64,
    /// The number of the next connection.
    made: AtomicU64,
    /// The connect under way, if any: every request that finds no connection waits for its
    /// outcome, so that they all fail at once when it fails, not one connect timeout each.
    connecting: parking_lot::Mutex<Option<Arc<Connecting>>>,
}

/// One connect to an endpoint, made in a task of its own (a request that leaves does not
/// end it for the others), and the requests waiting for it (as Envoy fails every request
/// pending on a connect that failed).
#[derive(Debug, Default)]
struct Connecting {
    /// The connection, or why there is none (each waiter gets its own copy).
    outcome: std::sync::OnceLock<Result<Live, SendError>>,
    /// Told when `outcome` is set.
    done: tokio::sync::Notify,
}

/// Lets a connect's waiters go when its task ends, whatever ended it: with its outcome, or,
/// when the task ended without one (a panic, its runtime shutting down), with a connect error,
/// rather than waiting for ever on an endpoint whose next requests would wait on it too.
struct Settle {
    pool: Arc<Pool>,
    told: Arc<Connecting>,
    addr: SocketAddr,
}

impl Drop for Settle {
    fn drop(&mut self) {
        if self.told.outcome.get().is_none() {
            let _ = self.told.outcome.set(Err(SendError::Connect {
                addr: self.addr,
                timed_out: false,
                source: std::io::Error::other("the connect ended without an outcome"),
            }));
        }
        if let Some(h2) = self.pool.h2.as_ref() {
            let mut held = h2.connecting.lock();
            if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.told)) {
                *held = None;
            }
        }
        self.told.done.notify_waiters();
    }
}

/// One HTTP/2 connection of an endpoint.
#[derive(Clone, Debug)]
struct Live {
    /// Its number (see [`H2::retire`]).
    id: u64,
    /// hyper's handle to send requests on it.
    sender: SendRequest<Sent>,
    /// The streams it takes now, and whether it is going away ([`link`]): one [`Slot`] per
    /// stream open at once, held from the send to the end (or drop) of its answer.
    link: Arc<Link>,
}

/// An HTTP/2 upstream's answer body: hyper's stream, counted into the access log line its
/// guards hold, which go when it ends.
///
/// **The request's deadline** ([`H2Answer::end_by`]) bounds it as it bounds an HTTP/1.1
/// answer's (`Returning::end_by`): a stream still coming then is let go (h2 resets a stream
/// whose every handle is dropped before its end: `RST_STREAM(CANCEL)`, so the upstream stops
/// its work) and the timeout counted. So is an upload's stream whose upload hyper's task
/// still sends (that task holds the stream, and waiting for send window it polls nothing of
/// rampart's): the task is ended with the answer ([`Pipe`]), here and whenever the answer is
/// dropped before its end (its client gone). The client sees its answer cut short (an error of
/// the body: its HTTP/1.1 connection closed without the last chunk, its HTTP/2 stream reset),
/// unless it is a gRPC call whose client reads trailers and whose messages so far are whole:
/// its stream then ends with `grpc-status` DEADLINE_EXCEEDED in trailers, as rampart answers a
/// call whose deadline passes before the head.
#[derive(Debug)]
pub struct H2Answer {
    /// `None` once cut at the deadline.
    body: Option<Incoming>,
    /// The stream's place on its connection, freed when the answer ends or is dropped
    /// (after `body`, whose drop, with the upload's task's, resets a stream still open).
    stream: Option<Slot>,
    /// What the request holds until this body ends (see `guard.rs`).
    pub(crate) guards: Guards,
    /// A gRPC call's try whose outcome is in this stream's trailers.
    pub(crate) trailed: Option<Trailed>,
    /// Whether this answers a gRPC call (its trailers' status goes to the request's span).
    pub(crate) grpc: bool,
    /// The request's deadline, set by [`H2Answer::end_by`] (inline: the answer is boxed
    /// already; held to before each frame, its timer made only when the stream waits).
    end_by: Option<EndBy>,
    /// A gRPC call's messages so far, read only when its client reads trailers and a deadline
    /// bounds it: whether a cut can end it with a status.
    messages: Option<Messages>,
    /// Its size is not told ([`H2Answer::size_hint`] is unknown) though the upstream stated
    /// it: an answer whose `content-length` was taken out so that an HTTP/1.1 client gets it
    /// chunked, with its trailers (`grpc::announce_trailers`).
    pub(crate) size_untold: bool,
    /// `timeout.idle` between the stream's frames (see `quiet.rs`).
    quiet: Quiet,
    /// Its timer, made the first time the stream waits.
    quiet_timer: Option<Pin<Box<Option<Sleep>>>>,
    /// The client's body that hyper's task still sends, if the request streamed one: the
    /// wait counts only from its end ([`Sending`]).
    upload: Option<Arc<FaultCell>>,
    /// The request had bytes to send: the wait counts from no earlier than `stream`'s
    /// connection's send window was last open ([`Sending`]).
    sends: bool,
    /// The task hyper sends the request's body in, if it has one: ended when the stream is
    /// let go before its end ([`H2Answer::let_go`]).
    pipe: Option<Arc<Pipe>>,
    /// `rampart_timeouts_total{kind="idle"}` of the request's route ([`H2Answer::count_idle`]).
    idle_counted: Option<prometheus::IntCounter>,
}

// === impl H2 ===

impl H2 {
    /// The connection for a request (`upload`: with a body to send), unless there is none or
    /// it takes no new stream. A request without a body goes on it even if its send window is
    /// shut, while it has a place for a stream: it needs no window. An upload (or a request
    /// without a body that finds no place: the places may all be held by uploads stalled
    /// behind the window, until their deadlines) finds one whose send window the upstream has
    /// kept shut for [`SHUT_WINDOW`] let go here (it goes on a new connection, and so do the
    /// requests after it; the shut one ends once its streams have), unless [`SHUT_MAX`] are
    /// shut: an upload is then refused, unsent ([`UpstreamError::ShutWindow`]), and a request
    /// without a body waits for a place on it.
    fn live(&self, addr: SocketAddr, upload: bool) -> Result<Option<Live>, SendError> {
        let mut held = self.sender.lock();
        let Some(live) = held.as_ref() else {
            return Ok(None);
        };
        if live.sender.is_closed() || live.link.closed().is_some() {
            // Going away (a GOAWAY stops the window's count): not a shut window to warn of.
            return Ok(None);
        }
        if !live.link.choked(SHUT_WINDOW) || (!upload && live.link.has_room()) {
            return Ok(Some(live.clone()));
        }
        let mut shut = self.shut.lock();
        // One closed is gone; one whose window reopened (its uploads go on) is not counted
        // while it stays open, but is kept: it may shut again.
        shut.retain(|l| !l.is_over());
        if shut.iter().filter(|l| l.is_shut()).count() + 1 >= SHUT_MAX {
            if !upload {
                return Ok(Some(live.clone()));
            }
            drop((shut, held));
            self.warn_shut(addr);
            return Err(SendError::Reset(UpstreamError::ShutWindow));
        }
        shut.push(live.link.clone());
        *held = None;
        drop((shut, held));
        tracing::warn!(
            endpoint = %addr,
            "an HTTP/2 upstream connection's send window stayed shut for {SHUT_WINDOW:?} (no WINDOW_UPDATE for the uploads sent on it): the next upload opens a new connection, which takes the new requests; the requests on the shut one end at their deadlines"
        );
        Ok(None)
    }

    /// Warns that uploads are refused at [`SHUT_MAX`], once in [`SHUT_WARN_EVERY_MS`].
    fn warn_shut(&self, addr: SocketAddr) {
        let now = crate::clock::coarse::millis();
        let last = self.shut_warned.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= SHUT_WARN_EVERY_MS)
            && self
                .shut_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                endpoint = %addr,
                "{SHUT_MAX} HTTP/2 upstream connections have had their send window shut for {SHUT_WINDOW:?} or more (no WINDOW_UPDATE for the uploads sent on them): uploads are answered 502, unsent, until one of them closes or reopens its window; requests without a body still go"
            );
        }
    }

    /// Lets connection `id` go (if it is still the endpoint's): it takes no new stream, and
    /// ends once its open streams have.
    fn retire(&self, id: u64) {
        let mut held = self.sender.lock();
        if held.as_ref().is_some_and(|l| l.id == id) {
            *held = None;
        }
    }
}

/// Why an upstream did not process a request, so that it can be sent again whatever its
/// method (RFC 9113 §8.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The connection is going away (a `GOAWAY`, or closed): the request was never sent, or
    /// its stream is above the `GOAWAY`'s last stream id.
    GoingAway,
    /// The upstream reset the stream with `REFUSED_STREAM`.
    Refused,
}

/// How many times one try's request is sent again after [`Refusal`]s (each time on the
/// endpoint's newest connection), before the last refusal is its answer.
const MAX_REFUSED: u32 = 2;

/// How many times one try's request, waiting for a stream, moves to a new connection because
/// the one it waited on went away, before it gives up (unsent).
const MAX_MOVES: u32 = 3;

/// Whether `error`, what hyper says of a request it handed to the connection, means the
/// upstream certainly did not process it: h2 gives a stream above a `GOAWAY`'s last stream id
/// (and a request on a connection that already had one) the `GOAWAY` as its error, and
/// `REFUSED_STREAM` says so (RFC 9113 §6.8, §8.7). Anything else may have reached the upstream.
/// (One gap is hyper's: a stream it opens in the instant a `GOAWAY` comes, between two of its
/// calls, is given up with the `GOAWAY` as its error even if its id is not above the last;
/// such a request is sent again too.)
pub(super) fn refusal(error: &hyper::Error) -> Option<Refusal> {
    let h2 = std::error::Error::source(error)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        Some(Refusal::GoingAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Refusal::Refused)
    } else {
        None
    }
}

/// Why an HTTP/2 connection failed, for its `warn` line: hyper's words ("http2 error"), then
/// those of the errors under them: h2's, with a `GOAWAY`'s or reset's reason by its name and
/// who sent it, and the `GOAWAY`'s debug data (`ENHANCE_YOUR_CALM`, `too_many_data_frames`),
/// or the socket's error.
struct Why<'a>(&'a hyper::Error);

impl std::fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            let h2 = e.downcast_ref::<h2::Error>();
            if let Some((h2, reason)) = h2.and_then(|h2| Some((h2, h2.reason()?))) {
                let frame = match (h2.is_go_away(), h2.is_reset()) {
                    (true, _) => "GOAWAY ",
                    (_, true) => "RST_STREAM ",
                    _ => "",
                };
                let by = match (h2.is_remote(), frame.is_empty()) {
                    (true, _) => " from the upstream",
                    (false, false) => " sent by rampart",
                    (false, true) => "",
                };
                write!(f, " ({frame}{reason:?}{by})")?;
            }
            source = e.source();
        }
        Ok(())
    }
}

/// An upstream's first bytes were not HTTP/2's `SETTINGS`.
const NOT_SETTINGS: &str = "its answer to the HTTP/2 connection preface was not a SETTINGS frame";
/// An upstream closed the connection at the preface.
const CLOSED_AT_PREFACE: &str =
    "it closed the connection before sending HTTP/2 SETTINGS in answer to the connection preface";
/// An upstream said nothing after the preface.
const NO_SETTINGS: &str =
    "no HTTP/2 SETTINGS came within connect_timeout of the connection preface";

/// Whether `error` is an upstream's silence after the connection preface until
/// `connect_timeout` ran out ([`NO_SETTINGS`]): a connect that timed out.
pub(super) fn no_settings_in_time(error: &UpstreamError) -> bool {
    matches!(error, UpstreamError::NotHttp2(why) if *why == NO_SETTINGS)
}

/// An upstream (`protocol: http2`) that did not answer as an HTTP/2 server: `why`.
fn not_http2(why: &'static str) -> SendError {
    SendError::Reset(UpstreamError::NotHttp2(why))
}

/// What an answer head the h2 library refused is a 502 for.
const MALFORMED_HEAD: &str =
    "HTTP/2 answer head refused as malformed (a connection-specific field such as connection or transfer-encoding, or a bad pseudo-header or content-length)";

/// What a 502 says of an HTTP/2 upstream's failure `error` (upstream `name` at `addr`) where
/// it is more than a connection lost: a stream the upstream reset (with its code), a
/// connection it closed with an error, one the h2 library closed for a protocol error (a
/// malformed answer head on any stream ends the whole connection: RFC 9113 §8.1.1 lets it,
/// and the h2 library does), an upstream that does not speak HTTP/2. `None` for the rest.
pub(crate) fn message(error: &UpstreamError, name: &str, addr: SocketAddr) -> Option<String> {
    let h2 = match error {
        UpstreamError::ShutWindow => {
            return Some(format!(
                "upstream {name} ({addr}) takes no uploads: {SHUT_MAX} of its HTTP/2 connections have had their send window shut for {SHUT_WINDOW:?} or more (no WINDOW_UPDATE); the request was not sent"
            ))
        }
        UpstreamError::NotHttp2(why) => {
            return Some(format!(
                "upstream {name} ({addr}) has protocol: http2 but may not speak HTTP/2 (an HTTP/1.1-only server?): {why}"
            ))
        }
        UpstreamError::Unsent => {
            return Some(format!(
                "the HTTP/2 connections to upstream {name} ({addr}) went away before the request could be sent; it was not sent"
            ))
        }
        UpstreamError::Http2(e) => std::error::Error::source(e)?.downcast_ref::<h2::Error>()?,
        _ => return None,
    };
    let reason = h2.reason()?;
    if h2.is_remote() && h2.is_reset() && reason == h2::Reason::REFUSED_STREAM {
        // Still, after it went again: nothing was lost, it did not take the request.
        return Some(format!("upstream {name} ({addr}) refused the stream"));
    }
    if h2.is_remote() && h2.is_reset() {
        return Some(format!(
            "upstream {name} ({addr}) reset the stream ({reason:?}) before its answer"
        ));
    }
    if h2.is_remote() && h2.is_go_away() && reason != h2::Reason::NO_ERROR {
        return Some(format!(
            "upstream {name} ({addr}) closed the HTTP/2 connection (GOAWAY {reason:?}) before the answer"
        ));
    }
    if h2.is_remote() && h2.is_go_away() {
        // Above the GOAWAY's last stream id, on each connection it went on (`refusal`).
        return Some(format!(
            "upstream {name} ({addr}) sent GOAWAY on each HTTP/2 connection the request went on, without taking it; it was not processed"
        ));
    }
    if h2.is_library()
        && matches!(
            reason,
            h2::Reason::PROTOCOL_ERROR
                | h2::Reason::COMPRESSION_ERROR
                | h2::Reason::FRAME_SIZE_ERROR
        )
    {
        return Some(format!(
            "malformed answer or HTTP/2 protocol error from upstream {name} ({addr}): {h2}; the connection was closed (GOAWAY {reason:?}) with every request on it"
        ));
    }
    None
}

/// Whether `error` is the h2 library's own reset of the stream with `PROTOCOL_ERROR`: what
/// it does to an answer head it finds malformed (RFC 9113 §8.1.1: a connection-specific
/// field, a bad pseudo-header or `content-length`). The upstream answered, wrongly: said as
/// an HTTP/1.1 upstream's malformed answer is, not as a connection lost.
fn malformed(error: &hyper::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_library() && h2.is_reset() && h2.reason() == Some(h2::Reason::PROTOCOL_ERROR)
        })
}

/// A failed connect's error, for one of the requests that waited for it: the same error, its
/// source's words kept (an I/O error's kind too).
fn copy(error: &SendError) -> SendError {
    let words = |e: &dyn std::error::Error| std::io::Error::other(e.to_string());
    match error {
        SendError::Connect {
            addr,
            timed_out,
            source,
        } => SendError::Connect {
            addr: *addr,
            timed_out: *timed_out,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        SendError::Handshake { addr, source } => SendError::Handshake {
            addr: *addr,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        SendError::Reset(UpstreamError::NotHttp2(why)) => not_http2(why),
        SendError::Reset(e) => SendError::Reset(UpstreamError::Io(words(e))),
    }
}

/// What holds back the idle wait of a request on `link` (`sends`: its body has bytes to send;
/// `upload`: the client's streamed body): see [`Sending`].
fn upload_of<'a>(
    sends: bool,
    upload: &'a Option<Arc<FaultCell>>,
    link: &'a Link,
) -> Option<Sending<'a>> {
    sends.then_some(Sending {
        cell: upload.as_deref(),
        link,
    })
}

/// A copy of `body` to send again, if it is in memory (no copy of its bytes).
fn again(body: &Body) -> Option<Body> {
    match body {
        Body::Empty | Body::Full(None) => Some(Body::Empty),
        Body::Full(Some(b)) => Some(Body::Full(Some(b.clone()))),
        Body::Trailed(t) => Some(Body::Trailed(t.clone())),
        _ => None,
    }
}

// === impl Pool ===

impl Pool {
    /// Sends a request over the endpoint's HTTP/2 connection (made first if there is none
    /// open). `added`, `parts` and `body` as for [`Pool::send`].
    pub(super) async fn send_h2(
        self: &Arc<Self>,
        h2: &H2,
        addr: SocketAddr,
        parts: &Parts,
        added: &Added<'_>,
        body: Body,
    ) -> Result<Response<Body>, SendError> {
        let mut body = body;
        // The client's body, if it streams: hyper's task sends it, and the idle timeout waits
        // for its end.
        let upload = match &body {
            Body::Client(c) if added.idle_ms != 0 => Some(c.cell().clone()),
            _ => None,
        };
        // Whether there are bytes to send, which need the connection's send window: a request
        // without them goes on a connection whose window is shut.
        let sends = !http_body::Body::is_end_stream(&body)
            && http_body::Body::size_hint(&body).exact() != Some(0);
        let (mut refused, mut moved) = (0, 0);
        let unwatched = AtomicU8::new(WAIT_NONE);
        let waiting = added.waiting.unwrap_or(&unwatched);
        let (rsp, stream, pipe) = loop {
            let Live {
                id,
                mut sender,
                link,
            } = match h2.live(addr, sends)? {
                Some(live) => live,
                None => self.connect_h2(h2, addr, waiting, sends).await?,
            };
            // A place for the stream on this connection: waited for (the caller bounds the
            // wait) while the upstream's limit (or `MAX_STREAMS`) of streams is open. Nothing
            // is handed to hyper before, so a request that waits is never sent if its try ends
            // (its client gone, its timeout), and goes to a new connection if this one goes
            // away meanwhile, whatever its method: it never reached the upstream. An upload
            // stops waiting once the connection's send window has been shut for
            // `SHUT_WINDOW`, and one given a place on such a connection does not take it: it
            // goes on another (`H2::live`).
            // A request without a body waits the same way on a connection whose window is
            // open when it comes (its places may all go to uploads the window then stalls),
            // and on a shut one only when `H2::live` kept it there (no connection let go).
            let got = match sends || !link.choked(SHUT_WINDOW) {
                false => link.slot(waiting).await.map(Some),
                true => link.upload_slot(waiting, SHUT_WINDOW).await,
            };
            let slot = match got {
                Ok(Some(s)) if !sends || !link.choked(SHUT_WINDOW) => s,
                Ok(_) => {
                    tracing::debug!(endpoint = %addr, "a request waited on an HTTP/2 upstream connection whose send window stayed shut: it goes on another");
                    continue;
                }
                Err(why) => {
                    h2.retire(id);
                    if why == Closed::NotHttp2 {
                        return Err(not_http2(NOT_SETTINGS));
                    }
                    if moved < MAX_MOVES {
                        moved += 1;
                        tracing::debug!(endpoint = %addr, "an HTTP/2 upstream connection went away before a waiting request was sent: sent on a new one");
                        continue;
                    }
                    return Err(SendError::Reset(UpstreamError::Unsent));
                }
            };
            // A body in memory is kept (a count on its bytes) to be sent again should this
            // stream be refused unprocessed; a streamed one keeps its frames as they go, and
            // can go again if they are all of it (`body::Replay`).
            let kept = again(&body);
            let replay = match (&kept, &mut body) {
                (None, Body::Client(c)) => c.keep(),
                _ => None,
            };
            // Its small frames joined, as an h2-based upstream needs (`ClientBody::gather_small`).
            if let Body::Client(c) = &mut body {
                c.gather_small();
            }
            // An upload's task, ended if its answer is let go before its end (`pipe`).
            let pipe = sends.then(|| Arc::new(Pipe::default()));
            let req = request(parts, added, body, self.tls.is_some())
                .map_err(|e| SendError::Reset(UpstreamError::Io(e)))?
                .map(|b| Sent::new(b, pipe.clone()));
            let sending = sender.try_send_request(req);
            // Each stream sent waits afresh.
            let mut quiet = Quiet::new(added.idle_ms);
            let sent = match quiet.is_on() {
                false => sending.await,
                // Dropped when the limit passes: h2 resets the stream (`CANCEL`), its slot goes.
                true => match quiet::within(sending, &mut quiet, upload_of(sends, &upload, &link))
                    .await
                {
                    Some(sent) => sent,
                    None => return Err(SendError::Reset(UpstreamError::Idle(quiet.limit()))),
                },
            };
            let mut e = match sent {
                Ok(rsp) => {
                    // Answered: nothing of it goes again, so the record lets its frames go,
                    // and the rest of the upload streams without it.
                    if let Some(r) = &replay {
                        r.release();
                    }
                    break (rsp, slot, pipe);
                }
                Err(e) => e,
            };
            drop(slot);
            let (unsent, error) = (e.take_message(), e.into_error());
            let why = match unsent {
                // hyper never handed it to the connection (closed, or closing after a GOAWAY).
                Some(_) => Some(Refusal::GoingAway),
                None => refusal(&error),
            };
            if why == Some(Refusal::GoingAway) {
                // A connection going away takes no new stream: the next goes on a new one.
                h2.retire(id);
            }
            let resend = match (why, unsent) {
                (None, _) => None,
                (Some(_), Some(req)) => Some(req.into_body().into_inner()),
                (Some(_), None) => kept.or_else(|| replay.as_ref().and_then(Replay::again)),
            };
            match resend {
                Some(b) if refused < MAX_REFUSED => {
                    let what = "an HTTP/2 upstream did not process a request: sent again";
                    tracing::debug!(endpoint = %addr, %error, "{what}");
                    refused += 1;
                    body = b;
                }
                _ if malformed(&error) => {
                    let malformed = super::h1::Malformed(MALFORMED_HEAD);
                    return Err(SendError::Reset(UpstreamError::Malformed(malformed)));
                }
                _ => return Err(SendError::Reset(UpstreamError::Http2(error))),
            }
        };
        let (mut head, body) = rsp.into_parts();
        if head.status.as_u16() > 599 {
            // As from an HTTP/1.1 upstream (`h1::parse_answer`); the stream is let go, and
            // the upload's task with it.
            if let Some(p) = &pipe {
                p.cut();
            }
            let malformed = super::h1::Malformed(super::h1::STATUS_OUT_OF_RANGE);
            return Err(SendError::Reset(UpstreamError::Malformed(malformed)));
        }
        // What the rest of the path writes answers as (hyper's HTTP/1.1 server too).
        head.version = Version::HTTP_11;
        // The h2 library takes `content-length` repeated with one value (an HTTP/2 client given
        // both resets the stream), and one in a 204: one goes on, or none in a 204 (as from an
        // HTTP/1.1 upstream).
        crate::proxy::forward::answer_length(head.status, &mut head.headers);
        trim_padded(&mut head.headers);
        // RFC 9110 §6.4.1: an answer to HEAD, a 204 and a 304 have no content, whatever the
        // upstream sends after the head (the h2 library takes DATA on a 204 or 304 that fits
        // its `content-length`): as from an HTTP/1.1 upstream, whose reader frames no body
        // for them (`h1::finish_head`), the client gets none. The stream is let go (reset, if
        // the upstream still sends), and its place among `MAX_STREAMS` with it.
        let bodyless = parts.method == http::Method::HEAD
            || head.status == http::StatusCode::NO_CONTENT
            || head.status == http::StatusCode::NOT_MODIFIED;
        let (body, stream) = match bodyless {
            true => {
                // Let go before its end: so is the upload's task, if it still sends.
                if let Some(p) = pipe
                    .as_deref()
                    .filter(|_| !http_body::Body::is_end_stream(&body))
                {
                    p.cut();
                }
                (None, None)
            }
            false => (Some(body), Some(stream)),
        };
        let answer = H2Answer {
            body,
            stream,
            guards: Guards::default(),
            trailed: None,
            grpc: false,
            end_by: None,
            messages: None,
            size_untold: false,
            quiet: Quiet::new(added.idle_ms),
            quiet_timer: None,
            upload,
            sends,
            pipe,
            idle_counted: None,
        };
        Ok(Response::from_parts(
            head,
            Body::Upstream2(Box::new(answer)),
        ))
    }

    /// The endpoint's connection: the one open, else the one being made (a connect begun if
    /// none is), waited for with `waiting` set to [`WAIT_CONNECT`]. Every request waiting for
    /// one connect gets its outcome at once: a connect that fails fails them all with its
    /// error, none waits for a connect after it. `upload` as for [`H2::live`].
    async fn connect_h2(
        self: &Arc<Self>,
        h2: &H2,
        addr: SocketAddr,
        waiting: &AtomicU8,
        upload: bool,
    ) -> Result<Live, SendError> {
        let connecting = {
            let mut held = h2.connecting.lock();
            if let Some(live) = h2.live(addr, upload)? {
                return Ok(live);
            }
            match &*held {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(Connecting::default());
                    *held = Some(c.clone());
                    let settle = Settle {
                        pool: self.clone(),
                        told: c.clone(),
                        addr,
                    };
                    tokio::spawn(async move {
                        let Some(h2) = settle.pool.h2.as_ref() else {
                            return;
                        };
                        let made = settle.pool.make_h2(h2, addr).await;
                        if let Ok(live) = &made {
                            *h2.sender.lock() = Some(live.clone());
                        }
                        let _ = settle.told.outcome.set(made);
                        // `settle`'s drop lets the waiters go.
                    });
                    c
                }
            }
        };
        waiting.store(WAIT_CONNECT, Ordering::Relaxed);
        let outcome = loop {
            let told = connecting.done.notified();
            if let Some(o) = connecting.outcome.get() {
                break o;
            }
            told.await;
        };
        waiting.store(WAIT_NONE, Ordering::Relaxed);
        match outcome {
            Ok(live) => Ok(live.clone()),
            Err(e) => Err(copy(e)),
        }
    }

    /// Makes a connection to the endpoint, within `connect_timeout`, counted in
    /// `rampart_upstream_connections` as long as it is open.
    async fn make_h2(&self, h2: &H2, addr: SocketAddr) -> Result<Live, SendError> {
        let deadline = Instant::now() + self.connect_timeout;
        // Counted in `rampart_upstream_connections`, not held against `max_connections`: the
        // connection before it may be going away (a `GOAWAY`) with long streams still open on
        // it, and the requests after it must not wait for their end (as Envoy, a draining
        // connection does not count against a cap).
        let slot = super::Slot::uncapped(self);
        let stream = self.dial_warned(addr, deadline).await?;
        let link = Link::new(MAX_STREAMS);
        // The socket holds the count: h2's task owns it, and ends with the connection's last
        // stream, which may be long after hyper's dispatch task (below) ended.
        let stream = Watched::new(stream, link.clone(), self.tls.is_some()).counted(slot);
        let shake = builder().handshake::<_, Sent>(TokioIo::new(stream));
        let (sender, conn) = match tokio::time::timeout_at(deadline, shake).await {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => {
                return Err(self
                    .refused_at_preface(addr, &link)
                    .unwrap_or(SendError::Reset(UpstreamError::Http2(e))))
            }
            Err(_) => return Err(connect_timed_out(addr)),
        };
        let ended = link.clone();
        tokio::spawn(async move {
            // hyper's dispatch task: it ends once every handle to send on it is dropped (the
            // connection let go) or it is going away (a `GOAWAY`), while streams opened before
            // may still run on the socket. No new stream goes on it; the socket's end is
            // `Link::ended` (`Watched`).
            let result = pipe::dispatch(conn).await;
            ended.close(Closed::Gone);
            match result {
                // A refused handshake is said by the request that made the connection.
                Err(_) if ended.tls_error().is_some() && !ended.opened() => {}
                // Every stream still open on it ended with it: said once, with why.
                Err(error) => tracing::warn!(
                    endpoint = %addr, error = %Why(&error),
                    "HTTP/2 upstream connection failed; every request still on it failed with it"
                ),
                Ok(()) => {}
            }
        });
        // The upstream's first SETTINGS (its stream limit) before any stream: an upstream that
        // answers the preface otherwise does not speak HTTP/2, unless what closed it was its
        // refusal of the TLS handshake (TLS 1.3: an alert read after the client's side ended).
        match tokio::time::timeout_at(deadline, link.settled()).await {
            Ok(Ok(())) => {}
            Ok(Err(Closed::NotHttp2)) => return Err(not_http2(NOT_SETTINGS)),
            Ok(Err(Closed::Gone)) => {
                return Err(self
                    .refused_at_preface(addr, &link)
                    .unwrap_or_else(|| not_http2(CLOSED_AT_PREFACE)))
            }
            Err(_) => return Err(not_http2(NO_SETTINGS)),
        }
        let id = h2.made.fetch_add(1, Ordering::Relaxed);
        Ok(Live { id, sender, link })
    }
}

/// How rampart's HTTP/2 upstream connections are made.
fn builder() -> Builder<Exec> {
    // Tokio's, telling each upload's task apart (`pipe`).
    let mut b = Builder::new(Exec);
    b.timer(TokioTimer::new())
        // A connection the network lost without a word (a NAT's timeout, a host gone) while
        // streams wait on it is found by its unanswered PING and given up, within what gRPC
        // servers allow (see [`KEEP_ALIVE_EVERY`]): never while idle.
        .keep_alive_interval(KEEP_ALIVE_EVERY)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(false)
        // See the module's doc: unread answers never block the others.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // As an HTTP/1.1 answer's head is bounded (`h1::MAX_HEAD`), so are an HTTP/2
        // answer's headers and trailers.
        .max_header_list_size(u32::try_from(super::h1::MAX_HEAD + 1).unwrap_or(u32::MAX))
        // An upload to an upstream that takes it slower than its client sends it waits in
        // the client's flow control, not in rampart: h2 holds at most this much of it per
        // stream (hyper's default is 400 KiB), as rampart's HTTP/2 server does of an answer.
        .max_send_buf_size(H2_SEND_BUF);
    b
}

impl Pool {
    /// A new connection that failed before the upstream's `SETTINGS` on a TLS alert: the
    /// server refused the handshake ([`crate::tls::client::refused_after_handshake`]), a failed
    /// connect as any refused handshake is, said at `warn`.
    fn refused_at_preface(&self, addr: SocketAddr, link: &Link) -> Option<SendError> {
        let (tls, alert) = (self.tls.as_ref()?, link.tls_error()?);
        let read = std::io::Error::new(std::io::ErrorKind::InvalidData, alert.clone());
        let source = crate::tls::client::refused_after_handshake(&read, &tls.config.load())?;
        self.warn_tls(addr, &source);
        Some(SendError::Handshake { addr, source })
    }
}

/// The HTTP/2 request of head `parts`: its authority (the `host` it came with, else the
/// endpoint's) and scheme in the URI, as `:authority` and `:scheme`; the lines rampart adds;
/// `te: trailers`, which gRPC servers ask for (what rampart reads answers with).
fn request(
    parts: &Parts,
    added: &Added<'_>,
    body: Body,
    tls: bool,
) -> std::io::Result<Request<Body>> {
    let invalid = |e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    };
    let mut headers = parts.headers.clone();
    let host = headers.remove(HOST);
    let authority = match host.as_ref().and_then(|h| h.to_str().ok()) {
        Some(h) => Authority::try_from(h).map_err(|e| invalid(&e))?,
        None => Authority::try_from(added.host).map_err(|e| invalid(&e))?,
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| invalid(&e))?;
    if !headers.contains_key(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, added.request_id.clone());
    }
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, added.forwarded_for.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(added.proto()));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    // The client's `expect: 100-continue` was met by rampart (hyper's HTTP/1.1 server sent its
    // `100` when the body was first read), and the body goes out without waiting for one:
    // the upstream is not asked for another (which hyper's client would drop anyway).
    headers.remove(EXPECT);
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Takes the spaces and tabs off either end of an HTTP/2 upstream's field values: malformed
/// over HTTP/2 (RFC 9113 §8.2.1), and the h2 library passes them on as sent, so an HTTP/2
/// client would reset the stream. An HTTP/1.1 upstream's are taken off by its parser (the
/// same line read as the same value); a client's padded HTTP/2 request is refused 400
/// (`listener::serve`), which an answer cannot be. Only a padded value is copied.
fn trim_padded(headers: &mut http::HeaderMap) {
    if !crate::proxy::h1::parse::padded_value(headers) {
        return;
    }
    for v in headers.values_mut() {
        // A value holds no control byte but the tab: ASCII whitespace at its ends is spaces
        // and tabs.
        let trimmed = v.as_bytes().trim_ascii();
        if trimmed.len() != v.len() {
            if let Ok(t) = HeaderValue::from_bytes(trimmed) {
                *v = t;
            }
        }
    }
}

// === impl H2Answer ===

impl H2Answer {
    /// The answer's stream must end by `at`, the request's deadline; `counted` counts it if it
    /// does not. `trailers`: the request is a gRPC call whose client reads trailers, so a stream
    /// cut between two messages ends with DEADLINE_EXCEEDED (see the type's doc). A stream
    /// already at its end keeps nothing.
    pub(crate) fn end_by(&mut self, at: Instant, counted: &prometheus::IntCounter, trailers: bool) {
        if self
            .body
            .as_ref()
            .is_some_and(|b| !http_body::Body::is_end_stream(b))
        {
            self.end_by = Some(EndBy::new(at, counted));
            self.messages = (trailers && self.grpc).then(Messages::default);
        }
    }

    /// `rampart_timeouts_total{kind="idle"}` of the request's route counts the stream if
    /// `timeout.idle` cuts it. A stream already at its end keeps nothing.
    pub(crate) fn count_idle(&mut self, counted: &prometheus::IntCounter) {
        if self
            .body
            .as_ref()
            .is_some_and(|b| !http_body::Body::is_end_stream(b))
        {
            self.idle_counted = Some(counted.clone());
        }
    }

    /// A poll of the stream found nothing: whether the upstream has kept it waiting past
    /// `timeout.idle` (see `quiet.rs`).
    fn idled(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.quiet.is_on() {
            return false;
        }
        let timer = self.quiet_timer.get_or_insert_with(|| Box::pin(None));
        let upload = match &self.stream {
            Some(slot) => upload_of(self.sends, &self.upload, slot.link()),
            None => None,
        };
        self.quiet.stalled(timer.as_mut(), cx, upload)
    }

    /// The upstream sent nothing for `timeout.idle`: the stream is let go (its upstream sees it
    /// reset, `CANCEL`) and the answer breaks off, its try timed out, the timeout counted.
    fn cut_idle(&mut self) -> UpstreamError {
        self.let_go();
        self.end_by = None;
        self.messages = None;
        if let Some(c) = self.idle_counted.take() {
            c.inc();
        }
        self.ended(StreamEnd::Deadline, None);
        UpstreamError::Idle(self.quiet.limit())
    }

    /// The stream is let go before its end: its answer's body, and the task that sends its
    /// upload if it still does ([`Pipe::cut`]): h2 resets it (`RST_STREAM(CANCEL)`) once
    /// both handles are gone, whatever the upload waits for.
    fn let_go(&mut self) {
        self.body = None;
        if let Some(p) = self.pipe.take() {
            p.cut();
        }
    }

    /// The deadline the stream must end by, if it keeps one (see [`H2Answer::end_by`]).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.end_by.as_ref().map(EndBy::at)
    }

    /// Counts the request's timeout if the stream's deadline has passed (see
    /// `Body::count_if_late`).
    pub(crate) fn count_if_late(&mut self) {
        if self.end_by.as_mut().and_then(EndBy::over).is_some() {
            if let Some(log) = self.guards.log.as_mut() {
                log.broken(Broken::Timeout);
            }
        }
    }

    /// The stream's end: its status to the log line and span, its try's outcome to `Trailed`,
    /// its place among [`MAX_STREAMS`] and its guards let go.
    /// `code`: the gRPC status the client reads at the end, if any.
    fn ended(&mut self, end: StreamEnd<'_>, code: Option<u8>) {
        if let Some(log) = self.guards.log.as_mut() {
            // A gRPC call's line (any other ignores it) takes the trailers' status.
            log.grpc_ended(code);
            match end {
                StreamEnd::Broke => log.broken(Broken::UpstreamCut),
                StreamEnd::Deadline | StreamEnd::Cancelled => log.broken(Broken::Timeout),
                StreamEnd::Trailers(_) | StreamEnd::NoTrailers => {}
            }
        }
        if let (true, Some(c), Some(span)) = (self.grpc, code, self.guards.span.as_mut()) {
            span.grpc_status(c);
        }
        if let Some(trailed) = self.trailed.take() {
            trailed.end(end);
        }
        self.stream = None;
        self.guards = Guards::default();
    }

    /// The deadline passed with the stream still coming, while rampart waited on `waited`: it
    /// is let go (its upstream sees it reset), and the answer ends with DEADLINE_EXCEEDED in
    /// trailers where it can, else breaks off. The try timed out only if rampart waited on the
    /// upstream; else it is cancelled.
    fn cut(&mut self, waited: Waited) -> Result<Frame<Bytes>, UpstreamError> {
        self.let_go();
        self.end_by = None;
        let end = match waited {
            Waited::Upstream => StreamEnd::Deadline,
            Waited::Client => StreamEnd::Cancelled,
        };
        let whole = self.messages.take().is_some_and(|m| m.at_message_end());
        if !whole {
            self.ended(end, None);
            return Err(UpstreamError::Deadline);
        }
        let trailers = grpc::deadline_trailers();
        self.ended(end, trailers.get(GRPC_STATUS).and_then(grpc::code));
        Ok(Frame::trailers(trailers))
    }
}

/// A stream dropped before its end, its guards still held (its head went out): its client
/// went away or stopped reading, or rampart cut it at a drain's end. Its log line says so.
impl Drop for H2Answer {
    fn drop(&mut self) {
        // Asked once: letting the stream go ends it.
        if !http_body::Body::is_end_stream(self) {
            self.let_go();
            if let Some(log) = self.guards.log.as_mut() {
                log.broken(super::broken_off());
            }
        }
    }
}

impl http_body::Body for H2Answer {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Some(waited) = this.end_by.as_mut().and_then(EndBy::over) {
            // Before the next frame: a stream whose frames never stop coming is cut on time.
            return Poll::Ready(Some(this.cut(waited)));
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let mut polled = match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(p) => p,
            Poll::Pending if this.end_by.as_mut().is_some_and(|e| e.passed(cx)) => {
                return Poll::Ready(Some(this.cut(Waited::Upstream)));
            }
            Poll::Pending if this.idled(cx) => {
                return Poll::Ready(Some(Err(this.cut_idle())));
            }
            Poll::Pending => return Poll::Pending,
        };
        this.quiet.progress();
        if let Some(Ok(frame)) = &mut polled {
            // The answer's trailers go to the client without the fields that have no place
            // there (hyper's HTTP/2 server sends them as given).
            if let Some(trailers) = frame.trailers_mut() {
                crate::proxy::forward::strip_trailers(trailers);
            }
            if let Some(d) = frame.data_ref() {
                // Counted before the guards go with the last frame.
                if let Some(log) = this.guards.log.as_mut() {
                    log.sent(d.len());
                }
                if let Some(m) = this.messages.as_mut() {
                    m.read(d);
                }
            }
        }
        // Trailers end a stream; so do an error and the end of the frames.
        let ended = match &polled {
            Some(Ok(frame)) => frame.is_trailers() || body.is_end_stream(),
            _ => true,
        };
        if ended {
            let end = match &polled {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map_or(StreamEnd::NoTrailers, StreamEnd::Trailers),
                Some(Err(_)) => StreamEnd::Broke,
                None => StreamEnd::NoTrailers,
            };
            let code = match end {
                StreamEnd::Trailers(t) => t.get(GRPC_STATUS).and_then(grpc::code),
                _ => None,
            };
            this.ended(end, code);
            this.end_by = None;
        }
        Poll::Ready(polled.map(|p| p.map_err(UpstreamError::Http2)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            None => SizeHint::with_exact(0),
            Some(_) if self.size_untold => SizeHint::new(),
            Some(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    /// An upload that has a 16 KiB chunk whenever asked, counting what was taken.
    struct Endless(Arc<AtomicUsize>);

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            static CHUNK: [u8; 16 * 1024] = [0; 16 * 1024];
            self.0.fetch_add(CHUNK.len(), Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
        }
    }

    /// An upload's stream holds at most [`H2_SEND_BUF`] of what its upstream has not taken
    /// (h2's send buffer): an upstream that opened its windows wide and reads nothing has the
    /// upload taken from its body only that far, besides what the pipe between them holds
    /// (16 KiB) and one chunk past the buffer (96 KiB in all, in a test build of h2 0.4.20).
    /// With hyper's default send buffer (400 KiB) the same upload had 1,056 KiB taken: 8191
    /// streams to one endpoint could hold 8 GiB. (Paused time: the sleep ends once both sides
    /// have nothing more to do.)
    #[tokio::test(start_paused = true)]
    async fn an_upload_holds_at_most_its_send_buffer_of_what_the_upstream_has_not_taken() {
        let taken = Arc::new(AtomicUsize::new(0));
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        let upstream = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(1 << 30)
                .initial_connection_window_size(1 << 30)
                .handshake::<_, Bytes>(theirs)
                .await
                .expect("handshake");
            let stream = conn.accept().await.expect("a stream").expect("its head");
            // The connection is polled no more: nothing more is read of it.
            (conn, stream)
        });
        let (mut send, conn) = builder()
            .handshake::<_, Endless>(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post("http://a/")
            .body(Endless(taken.clone()))
            .expect("request");
        let answer = tokio::spawn(send.send_request(req));
        let held = upstream.await.expect("the upstream");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let taken = taken.load(Ordering::Relaxed);
        assert!(
            taken > 0 && taken <= H2_SEND_BUF + 48 * 1024,
            "{taken} bytes of an upload not read were taken from its body"
        );
        drop((held, answer));
    }

    /// A raw HTTP/2 upstream on `io`: it sends its SETTINGS, acknowledges the client's
    /// SETTINGS and PINGs and answers nothing else; each PING's time goes to `pings`.
    async fn pinged_upstream(
        mut io: tokio::io::DuplexStream,
        pings: Arc<parking_lot::Mutex<Vec<Instant>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut preface = [0; 24];
        io.read_exact(&mut preface).await.expect("the preface");
        io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("SETTINGS");
        let mut head = [0; 9];
        while io.read_exact(&mut head).await.is_ok() {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0; len];
            io.read_exact(&mut payload)
                .await
                .expect("a frame's payload");
            let (kind, ack) = (head[3], head[4] & 1 == 1);
            if kind == 4 && !ack {
                io.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await
                    .expect("SETTINGS ACK");
            } else if kind == 6 && !ack {
                pings.lock().push(Instant::now());
                io.write_all(&[0, 0, 8, 6, 1, 0, 0, 0, 0])
                    .await
                    .expect("PING ACK");
                io.write_all(&payload).await.expect("PING ACK");
            }
        }
    }

    /// gRPC servers allow a client's PING at most every 5 minutes while it has a call open and
    /// none while it has none (grpc-go, grpc-java, C-core); more, three times, and they close the
    /// connection (`GOAWAY ENHANCE_YOUR_CALM "too_many_pings"`). An idle upstream connection is
    /// never pinged; one whose open stream is silent is, 5 minutes after it last heard from the
    /// upstream (its SETTINGS, a PING's answer), so at once when a stream opens on one silent
    /// for longer. (Paused time.)
    #[tokio::test(start_paused = true)]
    async fn an_upstream_is_pinged_only_with_a_stream_open_and_at_most_every_five_minutes() {
        let pings = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(pinged_upstream(theirs, pings.clone()));
        let (mut send, conn) = builder()
            .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let made = Instant::now();
        tokio::time::sleep(Duration::from_secs(5 * 60)).await;
        assert_eq!(pings.lock().len(), 0, "an idle connection was pinged");
        let opened = Instant::now();
        let req = Request::get("http://a/")
            .body(Default::default())
            .expect("request");
        let answer = tokio::spawn(send.send_request(req));
        tokio::time::sleep(Duration::from_secs(16 * 60)).await;
        let pings = pings.lock().clone();
        assert!(
            pings.len() >= 2,
            "a silent stream's connection was pinged {} times in 16 minutes",
            pings.len()
        );
        assert!(pings[0] >= opened, "a PING before the stream opened");
        let mut last = made;
        for at in pings {
            assert!(
                at - last >= Duration::from_secs(5 * 60),
                "a PING {:?} after the connection's SETTINGS or the last PING",
                at - last
            );
            last = at;
        }
        answer.abort();
    }
}
