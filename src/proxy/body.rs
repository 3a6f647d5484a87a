//! The one body type that flows through rampart, both ways.
//!
//! Bodies are streamed, never collected whole: an upstream's answer is handed to the client
//! frame by frame, and a client's upload to the upstream. rampart's own answers carry a small
//! `Own` body, which also marks them as rampart's. An enum instead of a boxed trait object keeps
//! the hot path free of an allocation per body.
//!
//! Two jobs ride on the body because only the body knows when an exchange really ends:
//! - a client's upload is watched ([`ClientBody`]): a stall longer than `body_idle_timeout`
//!   between frames ends it, and a stall or a malformed body is noted as the client's fault, so
//!   the request path answers 408/400 instead of blaming the upstream (SPEC §14);
//! - an upstream's answer carries the request's [`Guards`] (in-flight gauge, load-shed slot,
//!   endpoint load) and drops them when its last frame is read or the client goes away, not
//!   when the head goes out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::guard::Guards;
use super::pool::h1::RawLines;
use crate::error::BoxError;

mod replay;

use self::replay::Kept;
pub use self::replay::{Replay, REPLAY_CAP};

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No bytes at all.
    #[default]
    Empty,
    /// One chunk, already in memory (replayed requests, admin answers, kept answers).
    Full(Option<Bytes>),
    /// rampart's own answer's body (`respond`): one chunk, or none. Its variant is the
    /// answer's mark ([`Body::is_own`]): only an answer with it has its `x-rampart-reason`
    /// read as rampart's, and the mark costs the answer nothing (an extension did: two
    /// allocations an answer).
    Own(Option<Bytes>),
    /// A client's upload, streamed and watched.
    Client(ClientBody),
    /// An upstream's answer, whose connection goes back to the pool when it ends.
    Upstream(super::pool::Returning),
    /// An HTTP/2 upstream's answer (`protocol: http2`), boxed: rare, and larger.
    Upstream2(Box<super::pool::h2::H2Answer>),
    /// An answer whose copy is kept for `fallback.stale` (`degrade.rs`).
    Teed(Box<super::tee::Tee>),
    /// A body in memory that ends with trailers (a replayed answer kept with its trailers, a
    /// request sent again with its own), boxed: rare.
    Trailed(Box<Trailed>),
}

/// The parts of a [`Body::Trailed`]: one chunk, then the trailers.
#[derive(Clone, Debug)]
pub struct Trailed {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    /// The body of rampart's own answer (a fallback serving a kept answer with its
    /// trailers): the mark [`Body::Own`] is for one without.
    own: bool,
}

/// A client's request body as a listener hands it to the request path: hyper's stream, or
/// one the lean HTTP/1.1 server read whole with its head (or none at all; see `h1.rs`).
/// `hyper::body::Incoming` cannot be made outside hyper, hence the enum.
#[derive(Debug)]
pub enum ClientIn {
    /// Read by hyper (HTTP/2, and HTTP/1.1 requests whose body did not come whole with the
    /// head, or with an upgrade).
    Hyper(Incoming),
    /// Read whole, by its `content-length`, with the head (the lean server); taken once.
    Whole(Option<Bytes>),
    /// No body.
    Empty,
}

/// A request body after trying to keep it for replay.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body, small enough to send again on a retry, and the trailers it ended with
    /// (boxed: rare), sent again after it.
    Replayable(Bytes, Option<Box<http::HeaderMap>>),
    /// Too large: it streams once and the request is not retried.
    Streaming(Body),
}

/// What a client did wrong with its request body, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// Bad chunking, a length mismatch, a reset stream: 400 `bad_request`.
    Malformed,
    /// No byte for longer than `body_idle_timeout`: 408 `client_timeout`.
    Stalled,
    /// Still sending when the request's deadline passed (rampart was waiting for its next
    /// bytes, not for the upstream): 408 `client_timeout`.
    Late,
}

/// Shared between a [`ClientBody`] and the request path: what went wrong with the upload, how
/// many body bytes came in (for the access log), and how long rampart has waited for the
/// client's next bytes (a try's time, as judged for the upstream, leaves that wait out: a slow
/// upload is the client's, SPEC §14).
///
/// It also holds the names the request's identity is read from (the tenant's `header`
/// sources, `plan_header`): the client's trailers lose them and their spellings with `_` for
/// any `-` (`x_tenant-id`, which CGI-style upstreams read as the same header), as rampart read
/// them from the head, and the upstream should read no other value.
///
/// And whether the body was read to its end: an HTTP/1.1 answer given before that closes its
/// connection (the rest is not drained) and says so (`finish.rs`).
#[derive(Debug)]
pub struct FaultCell {
    /// The [`ClientFault`] noted: 0 none, 1 malformed, 2 stalled, 3 late.
    fault: AtomicU8,
    /// Body bytes received.
    received: AtomicU64,
    /// Names the client's trailers lose.
    identity: Option<Arc<[http::HeaderName]>>,
    /// The origin of `wait_began`'s stamps.
    born: Instant,
    /// Nanoseconds spent waiting for the client's bytes, in waits that ended.
    waited: AtomicU64,
    /// When the wait in progress began, in nanoseconds since `born` plus one; 0 when rampart
    /// is not waiting for the client (it has a frame to write, or the body has ended).
    wait_began: AtomicU64,
    /// When the body was read to its end, in coarse milliseconds (`clock::coarse`, at least
    /// 1); 0 while it has not ended. An HTTP/2 upstream's idle timeout counts from then
    /// (`pool::quiet`): the upload is hyper's task's, not the request's.
    ended: AtomicU64,
    /// The longest the client may keep rampart waiting between two frames of its body
    /// (`body_idle_timeout`): here, not in each [`ClientBody`], whose size every request's
    /// futures carry inline.
    idle: Duration,
}

/// A client's request body: frames read ahead (kept for replay decisions), then the stream,
/// with a deadline between frames.
#[derive(Debug)]
pub struct ClientBody {
    prefix: VecDeque<Frame<Bytes>>,
    rest: ClientIn,
    timer: Option<Pin<Box<Sleep>>>,
    fault: Arc<FaultCell>,
    /// The most of it an HTTP/2 try may keep to send again ([`ClientBody::keep`]); 0: none.
    /// (A `u32`, beside `turn`: `retry.buffer` is at most 16 MiB, and the request path's
    /// futures hold bodies inline.)
    replay_cap: u32,
    /// What of it came from the client, kept since an HTTP/2 try armed the keeping. The
    /// client's stream (`rest`) is then in the record, read under its lock, so that a refused
    /// sending hands what was read and what is left to the next together ([`Replay::again`]).
    kept: Option<Arc<parking_lot::Mutex<Kept>>>,
    /// Which sending of a kept upload this is: only the newest reads on (`replay::Kept::turn`).
    turn: u32,
    /// Whether small frames are joined before they go ([`ClientBody::gather_small`]), and
    /// whether one went alone already.
    gathers: bool,
    small_sent: bool,
    /// The small frames joined and not sent yet (boxed: only an upload of small frames has it).
    gathered: Option<Box<Gathered>>,
}

/// A data frame shorter than this costs an h2-based HTTP/2 server (hyper, tonic, axum:
/// h2 0.4.16 on) budget while its application has not read it: 256 less its length, out of
/// half the connection window (at least 25,600); when the connection's budget is spent, the
/// server closes it (`GOAWAY ENHANCE_YOUR_CALM`, "too_many_data_frames") with every stream on
/// it. A longer frame costs nothing.
const SMALL_FRAME: usize = 256;
/// The most of an upload's small frames joined into one (HTTP/2's least frame size).
const GATHER_MOST: usize = 16 * 1024;
/// The least time between two small frames of one upload sent to an HTTP/2 upstream: what
/// comes sooner waits (joined to what comes meanwhile) at most this long.
const SMALL_EVERY: Duration = Duration::from_millis(10);

/// What an upload to an HTTP/2 upstream has joined of its small frames ([`ClientBody::gather_small`]).
#[derive(Debug, Default)]
struct Gathered {
    /// The bytes joined, not sent yet.
    held: bytes::BytesMut,
    /// When the last small frame went.
    small_at: Option<Instant>,
    /// Wakes the upload when `held` may go ([`SMALL_EVERY`]).
    hold: Option<Pin<Box<Sleep>>>,
}

/// The error a [`ClientBody`] ends with when the client's trailers have a field an HTTP/2
/// head would be refused for.
#[derive(Debug, thiserror::Error)]
#[error("the request trailers have a field name that is no token or a value with a space or tab at either end")]
pub struct MalformedTrailers;

/// The error a refused sending's [`ClientBody`] ends with if it is read after the upload went
/// on with the request sent again ([`Replay::again`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body went on with the request sent again")]
struct Superseded;

/// The error a [`ClientBody`] ends with when the client stalls.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyStalled(pub Duration);

// === impl Body ===

impl Body {
    /// A body of one chunk.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }

    /// `data`, then `trailers` when there are some (else a plain [`Body::full`]).
    pub fn with_trailers(data: Bytes, trailers: Option<http::HeaderMap>) -> Self {
        match trailers {
            Some(t) => Body::Trailed(Box::new(Trailed {
                data: Some(data).filter(|d| !d.is_empty()),
                trailers: Some(t),
                own: false,
            })),
            None => Body::full(data),
        }
    }

    /// Whether this is an upstream's answer (over HTTP/1.1 or HTTP/2), not rampart's own.
    pub fn is_upstream(&self) -> bool {
        matches!(self, Body::Upstream(_) | Body::Upstream2(_))
    }

    /// Marks this body as that of rampart's own answer ([`Body::is_own`]), where it lies: a
    /// body in memory (every own answer's) changes its variant, or its flag, and nothing is
    /// allocated. A body that streams (an upstream's, a client's) cannot be an own answer's
    /// and is left as it is.
    pub fn mark_own(&mut self) {
        match self {
            Body::Empty => *self = Body::Own(None),
            Body::Full(chunk) => *self = Body::Own(chunk.take()),
            Body::Trailed(t) => t.own = true,
            _ => {}
        }
    }

    /// Whether this is the body of rampart's own answer ([`Body::mark_own`]).
    pub fn is_own(&self) -> bool {
        match self {
            Body::Own(_) => true,
            Body::Trailed(t) => t.own,
            _ => false,
        }
    }

    /// The body with no content left: an own answer's stays marked ([`Body::is_own`]), any
    /// other becomes [`Body::Empty`].
    pub fn clear(&mut self) {
        *self = match self.is_own() {
            true => Body::Own(None),
            false => Body::Empty,
        };
    }

    /// Whether the body counts the bytes it sends in the access log line its guards hold (an
    /// upstream's answer, teed or not); any other is counted whole when the answer starts.
    pub fn counts_sent(&self) -> bool {
        match self {
            Body::Upstream(_) | Body::Upstream2(_) => true,
            Body::Teed(t) => t.inner().counts_sent(),
            _ => false,
        }
    }

    /// An HTTP/2 upstream's answer whose stream has not ended (a gRPC call's outcome is then
    /// in its trailers, `grpc::Trailed`); `None` for any other body.
    pub fn streaming_h2(&mut self) -> Option<&mut super::pool::h2::H2Answer> {
        match self {
            Body::Upstream2(a) if !http_body::Body::is_end_stream(&**a) => Some(a),
            _ => None,
        }
    }

    /// Where the try's outcome waits for the end of an upstream's answer whose body is still
    /// coming (`grpc::Trailed::plain`): an HTTP/1.1 answer not read whole with its head, or an
    /// HTTP/2 one whose stream has not ended; `None` for any other body.
    pub fn trail(&mut self) -> Option<&mut Option<super::grpc::Trailed>> {
        match self {
            Body::Upstream(r) => r.trail(),
            Body::Upstream2(a) if !http_body::Body::is_end_stream(&**a) => Some(&mut a.trailed),
            Body::Teed(t) => t.inner_mut().trail(),
            _ => None,
        }
    }

    /// An upstream's answer whose body is still coming must end by `at`, the request's deadline
    /// (`pool::Returning::end_by`, `pool::h2::H2Answer::end_by`); `counted` counts it if it does
    /// not. `trailers`: the request is a gRPC call whose client reads trailers (an HTTP/2
    /// answer cut between two messages then ends with DEADLINE_EXCEEDED).
    pub fn end_by(
        &mut self,
        at: tokio::time::Instant,
        counted: &prometheus::IntCounter,
        trailers: bool,
    ) {
        match self {
            Body::Upstream(r) => r.end_by(at, counted),
            Body::Upstream2(a) => a.end_by(at, counted, trailers),
            Body::Teed(t) => t.inner_mut().end_by(at, counted, trailers),
            _ => {}
        }
    }

    /// An upstream's answer whose body is still coming counts in `counted` (the route's
    /// `rampart_timeouts_total{kind="idle"}`) if `timeout.idle` cuts it
    /// (`pool::Returning::count_idle`, `pool::h2::H2Answer::count_idle`).
    pub fn count_idle(&mut self, counted: &prometheus::IntCounter) {
        match self {
            Body::Upstream(r) => r.count_idle(counted),
            Body::Upstream2(a) => a.count_idle(counted),
            Body::Teed(t) => t.inner_mut().count_idle(counted),
            _ => {}
        }
    }

    /// The deadline an upstream's answer whose body is still coming must end by
    /// ([`Body::end_by`]), if its request has one.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Body::Upstream(r) => r.deadline(),
            Body::Upstream2(a) => a.deadline(),
            Body::Teed(t) => t.inner().deadline(),
            _ => None,
        }
    }

    /// Counts the request's timeout if the deadline of its answer's body has passed: the body
    /// is being dropped unfinished, and would have been cut at its next poll (an HTTP/2 answer
    /// that waited for its client's window until then, `stall.rs`).
    pub fn count_if_late(&mut self) {
        match self {
            Body::Upstream(r) => r.count_if_late(),
            Body::Upstream2(a) => a.count_if_late(),
            Body::Teed(t) => t.inner_mut().count_if_late(),
            _ => {}
        }
    }

    /// Attaches `guards` to an upstream's answer so they live as long as its body; any other
    /// body is complete already, so the guards are dropped now.
    pub fn hold(&mut self, guards: Guards) {
        match self {
            Body::Upstream(r) => r.guards = guards,
            Body::Upstream2(r) => r.guards = guards,
            Body::Teed(t) => t.inner_mut().hold(guards),
            _ => {}
        }
    }

    /// An upstream answer's header lines that are not in its map yet: the lean server writes
    /// them as they came (see `pool::h1::RawLines`).
    pub fn raw_lines(&self) -> Option<&RawLines> {
        match self {
            Body::Upstream(r) => r.raw(),
            _ => None,
        }
    }

    /// [`Body::raw_lines`], to change.
    pub fn raw_lines_mut(&mut self) -> Option<&mut RawLines> {
        match self {
            Body::Upstream(r) => r.raw_mut(),
            _ => None,
        }
    }

    /// Moves an upstream answer's header lines that are not in its map yet into `map`.
    pub fn fill_headers(&mut self, map: &mut http::HeaderMap) {
        if let Body::Upstream(r) = self {
            r.fill_headers(map);
        }
    }
}

/// Makes the header map of `rsp` whole: an upstream's plain answer keeps its header lines
/// beside the map until something other than the lean server's writing needs them (see
/// `pool::h1::RawLines`). Every reader or writer of an answer's headers after the exchange
/// calls this first; the lines go in after what the map holds.
pub fn whole_headers(rsp: &mut http::Response<Body>) {
    if rsp.body().raw_lines().is_none() {
        return;
    }
    let mut body = std::mem::take(rsp.body_mut());
    body.fill_headers(rsp.headers_mut());
    *rsp.body_mut() = body;
}

/// The answer to a HEAD request as it goes out: its headers as a GET's would be, no content
/// (RFC 9110 §9.3.2). rampart's own body (an answer it made, a replayed or kept one) is
/// dropped for an empty one, its size first written as `content-length` when the answer
/// says none and the size is known, as the server would frame it for a GET. An upstream's
/// answer is left as it is: the upstream clients read no content for HEAD (the HTTP/1.1 one
/// ends the answer at its head, h2's refuses data), and dropping its body unfinished would
/// cut its try. Only for HTTP/2: the lean server and hyper's HTTP/1 server send no body to
/// HEAD themselves.
pub fn for_head(rsp: &mut http::Response<Body>) {
    let body = rsp.body();
    if http_body::Body::is_end_stream(body) || body.counts_sent() {
        return;
    }
    if let Some(len) = http_body::Body::size_hint(body).exact() {
        rsp.headers_mut()
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(len));
    }
    rsp.body_mut().clear();
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(chunk) | Body::Own(chunk) => {
                Poll::Ready(chunk.take().map(|b| Ok(Frame::data(b))))
            }
            Body::Client(inner) => Pin::new(inner).poll_frame(cx),
            Body::Upstream(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            Body::Upstream2(inner) => Pin::new(&mut **inner).poll_frame(cx).map_err(Into::into),
            Body::Teed(inner) => Pin::new(&mut **inner).poll_frame(cx),
            Body::Trailed(t) => Poll::Ready(match t.data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => t.trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(chunk) | Body::Own(chunk) => chunk.is_none(),
            Body::Client(inner) => http_body::Body::is_end_stream(inner),
            Body::Upstream(inner) => inner.is_end_stream(),
            Body::Upstream2(inner) => http_body::Body::is_end_stream(&**inner),
            Body::Teed(inner) => inner.is_end_stream(),
            Body::Trailed(t) => t.data.is_none() && t.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(chunk) | Body::Own(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map(|b| b.len() as u64).unwrap_or(0))
            }
            Body::Client(inner) => {
                let buffered: u64 = inner
                    .prefix
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|b| b.len() as u64)
                    .sum();
                prefixed_hint(inner.rest_hint(), buffered + inner.held() as u64)
            }
            Body::Upstream(inner) => inner.size_hint(),
            Body::Upstream2(inner) => http_body::Body::size_hint(&**inner),
            Body::Teed(inner) => inner.size_hint(),
            // Not exact: hyper's HTTP/1.1 server would frame an exact size by its length, which
            // has no room for the trailers.
            Body::Trailed(t) => {
                let mut hint = SizeHint::new();
                hint.set_lower(t.data.as_ref().map_or(0, |b| b.len() as u64));
                hint
            }
        }
    }
}

// === impl ClientIn ===

impl From<Incoming> for ClientIn {
    fn from(b: Incoming) -> Self {
        ClientIn::Hyper(b)
    }
}

impl http_body::Body for ClientIn {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientIn::Hyper(b) => Pin::new(b).poll_frame(cx),
            ClientIn::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ClientIn::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientIn::Hyper(b) => b.is_end_stream(),
            ClientIn::Whole(b) => b.is_none(),
            ClientIn::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientIn::Hyper(b) => b.size_hint(),
            ClientIn::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ClientIn::Empty => SizeHint::with_exact(0),
        }
    }
}

// === impl FaultCell ===

impl Default for FaultCell {
    /// A cell for a body allowed 30 s between frames, whose trailers lose no name.
    fn default() -> Self {
        FaultCell::new(None, Duration::from_secs(30))
    }
}

impl FaultCell {
    /// A cell for a request whose trailers lose `identity`'s names, and whose body may keep
    /// rampart waiting `idle` between frames.
    pub fn new(identity: Option<&Arc<[http::HeaderName]>>, idle: Duration) -> Self {
        FaultCell {
            fault: AtomicU8::new(0),
            received: AtomicU64::new(0),
            identity: identity.cloned(),
            born: Instant::now(),
            waited: AtomicU64::new(0),
            wait_began: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            idle,
        }
    }

    /// The fault noted, if any.
    pub fn get(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::Stalled),
            3 => Some(ClientFault::Late),
            _ => None,
        }
    }

    /// Body bytes received from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Whether the body was read to its end.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire) != 0
    }

    /// When the body was read to its end (coarse milliseconds, `clock::coarse::millis`), if
    /// it has ended.
    pub fn ended_at(&self) -> Option<u64> {
        Some(self.ended.load(Ordering::Acquire)).filter(|&at| at != 0)
    }

    /// Notes the body's end, now.
    fn end(&self) {
        if self.ended.load(Ordering::Relaxed) == 0 {
            let now = crate::clock::coarse::millis().max(1);
            self.ended.store(now, Ordering::Release);
        }
    }

    /// Notes the client's fault `f` (the request path notes [`ClientFault::Late`]; the body
    /// the others).
    pub fn set(&self, f: ClientFault) {
        let v = match f {
            ClientFault::Malformed => 1,
            ClientFault::Stalled => 2,
            ClientFault::Late => 3,
        };
        self.fault.store(v, Ordering::Release);
    }

    /// Whether rampart is waiting for the client's next body bytes now: it asked for them and
    /// none came yet (not while it waits to write to the upstream, nor once the body ended).
    pub fn awaiting_client(&self) -> bool {
        self.wait_began.load(Ordering::Acquire) != 0
    }

    /// How long rampart has waited for the client's body bytes until `now`, the wait in
    /// progress included.
    pub fn waited(&self, now: Instant) -> Duration {
        let mut nanos = self.waited.load(Ordering::Acquire);
        let began = self.wait_began.load(Ordering::Acquire);
        if began != 0 {
            nanos = nanos.saturating_add(self.nanos(now).saturating_sub(began - 1));
        }
        Duration::from_nanos(nanos)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The body found no bytes from the client: a wait begins, unless one is going. (Only
    /// [`ClientBody`] tells the cell of its waits; tests of the request path too.)
    pub(super) fn wait_begins(&self) {
        if self.wait_began.load(Ordering::Relaxed) == 0 {
            let began = self.nanos(Instant::now()).saturating_add(1);
            self.wait_began.store(began, Ordering::Release);
        }
    }

    /// The client's bytes (or the body's end, or an error) came: the wait, if one was going,
    /// ends. One load when none was.
    pub(super) fn wait_ends(&self) {
        if self.wait_began.load(Ordering::Relaxed) == 0 {
            return;
        }
        let began = self.wait_began.swap(0, Ordering::AcqRel);
        if began != 0 {
            let d = self.nanos(Instant::now()).saturating_sub(began - 1);
            self.waited.fetch_add(d, Ordering::AcqRel);
        }
    }
}

// === impl ClientBody ===

impl ClientBody {
    /// Watches `body` with `fault`'s idle time allowed between frames; faults are noted in
    /// `fault`.
    pub fn new(body: ClientIn, fault: Arc<FaultCell>) -> Self {
        ClientBody {
            prefix: VecDeque::new(),
            rest: body,
            timer: None,
            fault,
            replay_cap: 0,
            kept: None,
            turn: 0,
            gathers: false,
            small_sent: false,
            gathered: None,
        }
    }

    /// Joins the upload's small frames before they go (to an HTTP/2 upstream): those the
    /// client has sent already, at once, up to [`GATHER_MOST`]; and of those that come one by
    /// one (a client writing a byte at a time), no more than one frame shorter than
    /// [`SMALL_FRAME`] every [`SMALL_EVERY`], the rest joined to it meanwhile. The first two
    /// small frames go as they come (a gRPC call's message, a stream's occasional one); the
    /// body's end or trailers send what is held at once, and a frame of [`SMALL_FRAME`] or
    /// more goes at once too. An h2-based upstream closes a connection that carried too many
    /// small frames its application has not read yet ([`SMALL_FRAME`]), and every client's
    /// upload to an endpoint shares its one connection: one-byte chunks from eight clients to
    /// a server that read them a second later had it closed, with every request on it.
    pub fn gather_small(&mut self) {
        self.gathers = true;
    }

    /// The bytes joined and not sent yet.
    fn held(&self) -> usize {
        self.gathered.as_ref().map_or(0, |g| g.held.len())
    }

    /// What was joined, as one frame to send now.
    fn send_held(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let g = self.gathered.as_mut().expect("bytes held");
        if g.held.len() < SMALL_FRAME {
            g.small_at = Some(Instant::now());
        }
        Poll::Ready(Some(Ok(Frame::data(g.held.split().freeze()))))
    }

    /// Reads the client's body, joining its small frames ([`ClientBody::gather_small`]).
    fn poll_gathering(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let held = self.held();
            match self.poll_rest(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let d = match frame.into_data() {
                        Ok(d) => d,
                        Err(frame) if held == 0 => return Poll::Ready(Some(Ok(frame))),
                        Err(frame) => {
                            // The trailers go after what is held.
                            self.prefix.push_front(frame);
                            return self.send_held();
                        }
                    };
                    if held == 0 && (d.len() >= SMALL_FRAME || !self.small_sent) {
                        self.small_sent |= d.len() < SMALL_FRAME;
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    if held + d.len() > GATHER_MOST {
                        self.prefix.push_front(Frame::data(d));
                        return self.send_held();
                    }
                    let g = self.gathered.get_or_insert_with(Default::default);
                    g.held.extend_from_slice(&d);
                    if g.held.len() == GATHER_MOST {
                        return self.send_held();
                    }
                }
                Poll::Ready(None) if held != 0 => return self.send_held(),
                Poll::Pending if held >= SMALL_FRAME => return self.send_held(),
                Poll::Pending if held != 0 => {
                    let g = self.gathered.as_mut().expect("bytes held");
                    let now = Instant::now();
                    let due = g.small_at.map_or(now, |at| at + SMALL_EVERY);
                    if due <= now {
                        return self.send_held();
                    }
                    let hold = g
                        .hold
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if hold.deadline() != due {
                        hold.as_mut().reset(due);
                    }
                    if hold.as_mut().poll(cx).is_ready() {
                        return self.send_held();
                    }
                    return Poll::Pending;
                }
                other => return other,
            }
        }
    }

    /// The size of the client's body still to read.
    fn rest_hint(&self) -> SizeHint {
        use http_body::Body as _;
        match &self.kept {
            None => self.rest.size_hint(),
            Some(k) => k.lock().rest.size_hint(),
        }
    }

    /// Whether the client's body was read to its end (for a refused sending whose upload went
    /// on with the next: no, it reads nothing more).
    fn rest_ended(&self) -> bool {
        use http_body::Body as _;
        match &self.kept {
            None => self.rest.is_end_stream(),
            Some(k) => {
                let k = k.lock();
                k.turn == self.turn && k.rest.is_end_stream()
            }
        }
    }

    /// The cell the body reports to (its waits, its end).
    pub fn cell(&self) -> &Arc<FaultCell> {
        &self.fault
    }

    /// Lets an HTTP/2 try keep up to `cap` bytes of the body to send again should the upstream
    /// not process it ([`Replay`]).
    pub fn replayable_up_to(mut self, cap: usize) -> Self {
        self.replay_cap = u32::try_from(cap).unwrap_or(u32::MAX);
        self
    }

    /// Starts keeping what of the body comes from the client from now on (and what was read
    /// ahead and not sent yet), for an HTTP/2 try to send it again should the upstream refuse
    /// it unprocessed; `None` if the body may not be kept (no cap, larger than it), or if some
    /// of it was read and is gone (then it could never be whole again).
    pub fn keep(&mut self) -> Option<Replay> {
        use http_body::Body as _;
        if self.replay_cap == 0 {
            return None;
        }
        let kept = match &self.kept {
            Some(k) => k.clone(),
            None => {
                let ahead: u64 = self
                    .prefix
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let larger = prefixed_hint(self.rest.size_hint(), ahead).lower();
                if larger > u64::from(self.replay_cap) || ahead != self.fault.received() {
                    self.replay_cap = 0;
                    return None;
                }
                let ended = self.rest.is_end_stream();
                let rest = std::mem::replace(&mut self.rest, ClientIn::Empty);
                let mut kept = Kept::new(self.replay_cap as usize, &self.prefix, rest);
                if ended {
                    kept.end();
                }
                let kept = Arc::new(parking_lot::Mutex::new(kept));
                self.kept = Some(kept.clone());
                kept
            }
        };
        Some(Replay::new(kept, self.fault.clone()))
    }

    /// Reads the body into memory if it is at most `limit` bytes, so that a retry can send it
    /// again, with the trailers it ends with (not counted in `limit`: the servers bound a
    /// field section). A body announced (or found) larger than `limit`
    /// is not kept: what was read so far stays in front of the rest, and the body streams once.
    /// An error is the client's fault, noted in the fault cell.
    ///
    /// Each frame is copied as it comes into one buffer, made the body's size when its length
    /// is known, and let go: the body costs its size and one frame, not its frames (each a view
    /// pinning a server read buffer) and then their copy, nearly twice its size at the end.
    pub async fn buffer(mut self, limit: usize) -> Result<Buffered, BoxError> {
        use http_body_util::BodyExt;
        if self.rest_ended() {
            return Ok(Buffered::Replayable(Bytes::new(), None));
        }
        let hint = self.rest_hint();
        if hint.lower() > limit as u64 {
            return Ok(Buffered::Streaming(Body::Client(self)));
        }
        // At most `limit` (checked above); a length not known grows the buffer as it comes.
        let known = hint.exact().map_or(0, |n| n as usize);
        let mut all = bytes::BytesMut::with_capacity(known);
        let mut trailers = None;
        while let Some(frame) = self.frame().await {
            let frame = match frame?.into_data() {
                Ok(d) if trailers.is_none() && d.len() <= limit - all.len() => {
                    all.extend_from_slice(&d);
                    continue;
                }
                Ok(d) => Frame::data(d),
                Err(frame) => frame,
            };
            let frame = match frame.into_trailers() {
                // The last frame of a body (HTTP/1.1 and HTTP/2 alike).
                Ok(t) if trailers.is_none() => {
                    trailers = Some(Box::new(t));
                    continue;
                }
                Ok(t) => Frame::trailers(t),
                Err(frame) => frame,
            };
            // Too large, or a frame that is neither data nor trailers, or one after the
            // trailers: streamed once as it came, what was read in front of it.
            let mut frames = VecDeque::with_capacity(3);
            if !all.is_empty() {
                frames.push_back(Frame::data(all.freeze()));
            }
            if let Some(t) = trailers.take() {
                frames.push_back(Frame::trailers(*t));
            }
            frames.push_back(frame);
            self.prefix = frames;
            return Ok(Buffered::Streaming(Body::Client(self)));
        }
        Ok(Buffered::Replayable(all.freeze(), trailers))
    }

    /// Puts `frame` back in front of the body, to be read again first (an upstream connection
    /// that took it and died before writing a byte hands it back so, for the next one).
    pub fn unread(&mut self, frame: Frame<Bytes>) {
        self.prefix.push_front(frame);
    }

    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(shared) = self.kept.take() else {
            return self.poll_client(cx, None);
        };
        // A kept upload's stream is read under the record's lock, into the record: a refusal
        // that hands it to the next sending (`Replay::again`) finds each frame either read and
        // kept, or not read.
        let mut kept = shared.lock();
        if kept.turn != self.turn {
            // This sending was refused: the upload went on with the next.
            drop(kept);
            self.kept = Some(shared);
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        std::mem::swap(&mut self.rest, &mut kept.rest);
        let polled = self.poll_client(cx, Some(&mut *kept));
        if kept.lost() {
            // It can go no more: the rest is read as any body's, without the record.
            self.replay_cap = 0;
            return polled;
        }
        std::mem::swap(&mut self.rest, &mut kept.rest);
        drop(kept);
        self.kept = Some(shared);
        polled
    }

    /// Reads the client's stream (`self.rest`), keeping what it gives in `kept` if the upload is
    /// kept.
    fn poll_client(
        &mut self,
        cx: &mut Context<'_>,
        mut kept: Option<&mut Kept>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use http_body::Body as _;
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        if polled.is_ready() {
            self.fault.wait_ends();
        }
        match polled {
            Poll::Ready(Some(Ok(mut f))) => {
                // A client's trailers (chunked HTTP/1.1, or HTTP/2: only hyper's servers pass
                // them, and every body of theirs is read here) go to the upstream without what
                // `strip_request_trailers` decides they lose.
                if let Some(t) = f.trailers_mut() {
                    // The field checks an HTTP/2 head gets (`listener.rs`): a name that is no
                    // token (`a"b`, which the h2 library passes) would reach an HTTP/1.1
                    // upstream as a trailer line no parser reads, and a value with a space or
                    // tab at either end is malformed (RFC 9113 §8.2.1). A malformed body, as a
                    // broken chunk is: 400 if no answer has begun, else the stream is reset.
                    // (HTTP/1.1's parser refuses such names and trims such values itself.)
                    if super::h1::parse::untokened_name(t) || super::h1::parse::padded_value(t) {
                        self.fault.set(ClientFault::Malformed);
                        return Poll::Ready(Some(Err(MalformedTrailers.into())));
                    }
                    let identity = self.fault.identity.as_deref().unwrap_or_default();
                    super::forward::strip_request_trailers(t, identity);
                }
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                self.fault.received.fetch_add(n, Ordering::Relaxed);
                if let Some(k) = kept.as_mut() {
                    if k.keeping() {
                        k.take(&f);
                        if self.rest.is_end_stream() {
                            k.end();
                        }
                    }
                }
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(Instant::now() + self.fault.idle);
                }
                if f.is_trailers() || self.rest.is_end_stream() {
                    self.fault.end();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.fault.set(ClientFault::Malformed);
                if let Some(k) = kept.as_mut() {
                    k.lose();
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.fault.end();
                if let Some(k) = kept.as_mut() {
                    k.end();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !self.rest.is_end_stream() {
                    // (A body whose last bytes came may still say its end a moment later: not
                    // the client's wait.)
                    self.fault.wait_begins();
                }
                let idle = self.fault.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.fault.set(ClientFault::Stalled);
                    if let Some(k) = kept.as_mut() {
                        k.lose();
                    }
                    self.fault.wait_ends();
                    return Poll::Ready(Some(Err(BodyStalled(idle).into())));
                }
                Poll::Pending
            }
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.prefix.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(f))),
            None if this.gathers => this.poll_gathering(cx),
            None => this.poll_rest(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.held() == 0 && self.rest_ended()
    }
}

use std::future::Future as _;

/// The size of `buffered` bytes in front of a body whose remaining size is `rest`.
///
/// The upper bound is set first: `SizeHint` panics whenever lower would exceed upper, and
/// raising lower first breaks exactly when the rest's hint is exact.
fn prefixed_hint(rest: SizeHint, buffered: u64) -> SizeHint {
    let mut hint = SizeHint::new();
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper.saturating_add(buffered));
    }
    hint.set_lower(rest.lower().saturating_add(buffered));
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_frames_in_front_of_an_exact_rest_never_panic() {
        // A body with content-length whose data was all read (its rest is exactly 0), with
        // frames kept in front: hyper's client asks for the size hint of exactly this.
        let hint = prefixed_hint(SizeHint::with_exact(0), 11);
        assert_eq!(hint.lower(), 11);
        assert_eq!(hint.upper(), Some(11));
        let hint = prefixed_hint(SizeHint::with_exact(5), 11);
        assert_eq!((hint.lower(), hint.upper()), (16, Some(16)));
        let open = prefixed_hint(SizeHint::new(), 3);
        assert_eq!((open.lower(), open.upper()), (3, None));
    }

    /// The cell counts rampart's waits for the client's bytes, the one going included, and
    /// not the time between them (rampart writing to the upstream).
    #[tokio::test(start_paused = true)]
    async fn the_waits_for_the_client_are_counted_and_nothing_else() {
        let ms = Duration::from_millis;
        let cell = FaultCell::default();
        tokio::time::advance(ms(700)).await;
        assert!(!cell.awaiting_client());
        assert_eq!(cell.waited(Instant::now()), Duration::ZERO);
        cell.wait_begins();
        tokio::time::advance(ms(300)).await;
        assert!(cell.awaiting_client());
        assert_eq!(cell.waited(Instant::now()), ms(300));
        // Polled again before bytes came: the same wait.
        cell.wait_begins();
        tokio::time::advance(ms(200)).await;
        cell.wait_ends();
        assert!(!cell.awaiting_client());
        tokio::time::advance(ms(1000)).await;
        assert_eq!(cell.waited(Instant::now()), ms(500));
        cell.wait_ends();
        assert_eq!(cell.waited(Instant::now()), ms(500));
    }

    /// A HEAD answer of rampart's own loses its content, keeps its headers and says the
    /// length a GET's would; one that states its length keeps that; an empty one is as it was.
    #[test]
    fn a_head_answer_keeps_its_headers_and_its_length_not_its_content() {
        let mut rsp = http::Response::new(Body::full(&b"{\"error\":\"x\"}"[..]));
        rsp.headers_mut()
            .insert("x-rampart-reason", http::HeaderValue::from_static("x"));
        for_head(&mut rsp);
        assert!(matches!(rsp.body(), Body::Empty));
        assert_eq!(rsp.headers()["content-length"], "13");
        assert_eq!(rsp.headers()["x-rampart-reason"], "x");

        let mut stated = http::Response::new(Body::full(&b"abc"[..]));
        stated
            .headers_mut()
            .insert("content-length", http::HeaderValue::from_static("3"));
        for_head(&mut stated);
        assert!(matches!(stated.body(), Body::Empty));
        assert_eq!(stated.headers().get_all("content-length").iter().count(), 1);

        let mut empty = http::Response::new(Body::Empty);
        for_head(&mut empty);
        assert!(empty.headers().get("content-length").is_none());
    }
}
