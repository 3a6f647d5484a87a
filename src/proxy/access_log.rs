//! The access log (SPEC §12): one JSON line per request, written off the request path.
//!
//! Why this shape: the request path must never wait for a disk or a pipe, and must pay next to
//! nothing when the log is off. So a listener without `access_log` has no [`AccessLog`] and the
//! path touches nothing here. With one, the path writes the line's text as it learns it, into
//! a small buffer reused from request to request on the same thread ([`Entry`]): the method,
//! path and request id when the request starts, the route, tenant and answer when it is
//! answered, and the line is completed (duration, byte counts) when the answer ends. Nothing
//! is cloned or allocated per request, and no record crosses threads: the finished line is
//! copied into the calling thread's lane of the destination's [`Sink`], which a writer thread
//! empties every few milliseconds (`writer.rs`). A full lane drops the line and counts it in
//! `rampart_access_log_dropped_total` instead of blocking.
//!
//! When a line is written: an [`Entry`] rides in the request's `Guards` and is finished on
//! drop, so the line is written when the answer's body has ended (or the client went away),
//! with the bytes really sent and the whole duration. `sample_ok` thins lines of 2xx/3xx
//! answers from the upstream only: every answer rampart makes itself, every 4xx/5xx, and
//! every answer that broke after its head ([`Broken`], said in `reason`), is logged.

mod line;
#[cfg(test)]
mod tests;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use tokio::time::Instant;

use self::line::Wall;
use super::body::FaultCell;
use super::spare::Shelf;
use crate::config::file;
use crate::otel::{TraceParent, TRACEPARENT};
use crate::tenant::TenantId;

pub use self::writer::{Sink, Sinks};

/// One listener's access log: where its lines go and how many 2xx/3xx lines are kept.
#[derive(Debug)]
pub struct AccessLog {
    sink: Arc<Sink>,
    /// What entries hold to reach `sink`, one per lane (see [`SinkRef`]).
    refs: Box<[Arc<SinkRef>]>,
    /// A 2xx/3xx line is kept when a random `u32` is below this; `None`: always.
    keep_ok: Option<u32>,
}

/// A listener's reference to a sink, one per lane of it: every entry holds one while its
/// request runs, so each thread counts its references on a cache line of its own instead of
/// every worker bouncing the sink's reference count between cores on every request. It also
/// carries what every line of the listener writes alike, so the entry need not copy it.
#[derive(Debug)]
#[repr(align(128))]
struct SinkRef {
    sink: Arc<Sink>,
    /// The lane of `sink` that lines started on this reference go to.
    lane: usize,
    /// `,"listener":"NAME"`, escaped once.
    listener: Box<[u8]>,
}

/// A request's line being written; finished and handed to the sink when dropped, once armed.
///
/// One pointer: an entry rides (twice, as `Option`) in the request path's futures, which are
/// moved by copying, so its size is paid on every request, logged or not. The [`Draft`] it
/// points to is reused from request to request on the same thread.
#[derive(Debug)]
pub struct Entry(Option<Box<Draft>>);

/// What an [`Entry`] holds.
///
/// `text` holds the line's JSON pieces (each `,"key":value...`) of text borrowed from the
/// request and its answer, which the entry cannot keep. [`AccessLog::begin`] writes the method
/// and path (ending at `request`), then the request and trace ids (ending at `ids`).
/// [`Entry::fill`] appends the route and tenant (ending at `who`), and rampart's reason and
/// the refusing limit when there are some (ending at `said` and at the end). The answer's
/// status, tries and endpoint are kept as they are: [`Draft::render`] writes them, and puts the
/// pieces in the line's order, only for a line that is written. A line `sample_ok` leaves out
/// costs no formatting beyond the pieces it had to copy.
#[derive(Debug)]
struct Draft {
    text: Vec<u8>,
    /// Where the method and path end (they start at 0).
    request: u32,
    /// Where the request and trace ids end; the route and tenant start here.
    ids: u32,
    /// Where the route and tenant end (0: not filled yet).
    who: u32,
    /// Where rampart's reason ends (`who` when the answer is not rampart's); the limit that
    /// refused, if one did, runs from here to the end.
    said: u32,
    status: u16,
    tries: u32,
    endpoint: Option<SocketAddr>,
    upstream: Option<Duration>,
    bytes_out: u64,
    started: Instant,
    received: Option<Arc<FaultCell>>,
    /// Bytes of a body read whole with its head (no cell counts those).
    whole: u64,
    sink: Option<Arc<SinkRef>>,
    keep_ok: Option<u32>,
    armed: bool,
    grpc: Grpc,
    /// Why the answer broke after its head, if it did: the line's `reason` then.
    broken: Option<Broken>,
}

/// Why an answer whose head was sent did not go out whole: its line keeps the status sent and
/// says this in `reason` (as Envoy's response flags UT, UC, DC do), and is always written.
/// Set where the break is seen (the upstream answer's body), never formatted per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The upstream closed or reset the answer before its end (fewer bytes than its
    /// `content-length`, a broken chunk, a reset stream).
    UpstreamCut,
    /// The request's deadline (`timeout.request`) or `timeout.idle` cut the answer's body, or
    /// `tunnel_idle_timeout` closed a silent CONNECT tunnel.
    Timeout,
    /// The client went away (or stopped reading) before the answer's end.
    ClientGone,
    /// A drain's grace ran out (or the process exited) with the answer still going.
    Shutdown,
}

impl Broken {
    /// The line's `reason` for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Broken::UpstreamCut => "upstream_cut",
            Broken::Timeout => "timeout",
            Broken::ClientGone => "client_gone",
            Broken::Shutdown => "shutdown",
        }
    }
}

/// What the exchange with the upstream leaves for the line (see `ctx::TryLog`).
#[derive(Debug, Default, Clone)]
pub struct TryStats {
    /// Tries sent to an endpoint.
    pub tries: u32,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// How long the last try took, to the answer's head.
    pub upstream: Option<Duration>,
    /// When the last try ended (the clock reading its duration was taken from).
    pub ended: Option<Instant>,
    /// The client body's cell, which counts the bytes received.
    pub received: Option<Arc<FaultCell>>,
    /// The length of a body the lean server read whole with its head (it has no cell).
    pub whole: u64,
}

/// What [`Entry::fill`] takes from the end of the request path.
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The name of the route that matched, if any, as a JSON string ([`json_string`]).
    pub route: Option<&'a [u8]>,
    /// The tenant, if known.
    pub tenant: Option<&'a TenantId>,
    /// The answer's status.
    pub status: u16,
    /// `x-rampart-reason`, if rampart answered.
    pub reason: Option<&'a HeaderValue>,
    /// The rate limit that refused, if one did.
    pub limit: Option<&'a str>,
    /// Body bytes known already (synthetic answers); upstream bodies are counted as they go.
    pub bytes_out: u64,
    /// Whether the request is a gRPC call, and the status its answer's head gave.
    pub grpc: Grpc,
}

/// The `grpc_status` of a line: only gRPC calls' lines have one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grpc {
    /// Not a gRPC call: the line has no `grpc_status`.
    #[default]
    NotACall,
    /// A gRPC call with no status (yet: an answer that streams gives it in its trailers;
    /// `null` if none comes).
    NoStatus,
    /// A gRPC call's status code.
    Status(u8),
}

// === impl AccessLog ===

impl AccessLog {
    /// The log of `listener`, writing to `sink`.
    pub fn new(listener: Arc<str>, cfg: &file::AccessLog, sink: Arc<Sink>) -> Self {
        let ratio = cfg.sample_ok.0.clamp(0.0, 1.0);
        let keep_ok = (ratio < 1.0).then(|| (ratio * f64::from(u32::MAX)) as u32);
        let mut name = b",\"listener\":".to_vec();
        line::string(&mut name, &listener);
        let refs = (0..sink.lanes())
            .map(|lane| {
                Arc::new(SinkRef {
                    sink: sink.clone(),
                    lane,
                    listener: name.clone().into(),
                })
            })
            .collect();
        AccessLog {
            refs,
            sink,
            keep_ok,
        }
    }

    /// Where the lines go.
    pub fn to(&self) -> &file::LogTo {
        self.sink.to()
    }

    /// Starts the line of `req`, whose request id is `request_id` (`made`: made by rampart,
    /// hex digits that need no check). `trace_id` is the trace rampart continued or started
    /// (when the listener traces); without one, the line names the trace of a valid
    /// `traceparent` the client sent.
    pub fn begin<B>(
        &self,
        req: &Request<B>,
        (request_id, made): (&HeaderValue, bool),
        trace_id: Option<u128>,
        started: Instant,
    ) -> Entry {
        let mut d = Draft::take(started);
        let t = &mut d.text;
        t.extend_from_slice(b",\"method\":");
        line::token(t, req.method().as_str().as_bytes());
        t.extend_from_slice(b",\"path\":");
        line::string(t, logged_path(req));
        d.request = end(t);
        t.extend_from_slice(b",\"request_id\":");
        if made {
            line::token(t, request_id.as_bytes());
        } else {
            line::header_string(t, request_id);
        }
        t.extend_from_slice(b",\"trace_id\":");
        match trace_id.or_else(|| traceparent(req.headers()).and_then(self::trace_id)) {
            Some(id) => line::trace_hex(t, id),
            None => t.extend_from_slice(b"null"),
        }
        d.ids = end(t);
        let refs = &self.refs;
        d.sink = Some(refs[writer::lane_number() & (refs.len() - 1)].clone());
        d.keep_ok = self.keep_ok;
        Entry(Some(d))
    }
}

/// What a line's `path` says of `req`: its path, or for a CONNECT (which has none) its target,
/// `host:port`, so a tunnel's destination is logged under a route that matches many.
fn logged_path<B>(req: &Request<B>) -> &str {
    let uri = req.uri();
    match uri.path() {
        "" if req.method() == http::Method::CONNECT => uri.authority().map_or("", |a| a.as_str()),
        path => path,
    }
}

// === impl Entry ===

impl Entry {
    /// Fills the line from the answer and arms it if it is to be written: always for rampart's
    /// own answers, for 4xx/5xx and for a gRPC status other than OK, else as `sample_ok` says.
    /// Returns whether it is armed now. Either way the entry is to be kept with the answer:
    /// a gRPC call's trailers may arm it yet ([`Entry::grpc_ended`]), and so may an answer
    /// that breaks after its head ([`Entry::broken`]).
    pub fn fill(&mut self, out: Outcome<'_>, tries: TryStats) -> bool {
        self.0.as_mut().is_some_and(|d| d.fill(out, tries))
    }

    /// A gRPC call's answer ended with the status `code` in its trailers, or with none (`None`:
    /// no trailers, no status in them, or a stream broken before them); the line is then
    /// written whatever `sample_ok` says unless the status is OK. A status the answer's head
    /// gave (Trailers-Only) stands when its empty body ends; other lines ignore this.
    pub fn grpc_ended(&mut self, code: Option<u8>) {
        let Some(d) = &mut self.0 else { return };
        match (d.grpc, code) {
            (Grpc::NotACall, _) | (Grpc::Status(_), None) => {}
            (_, Some(c)) => {
                d.grpc = Grpc::Status(c);
                d.armed |= c != 0;
            }
            (Grpc::NoStatus, None) => d.armed = true,
        }
    }

    /// The bytes a CONNECT tunnel delivered, client to upstream (`bytes_in`) and upstream to
    /// client (`bytes_out`): set as the tunnel ends, just before the line is written.
    pub fn tunnelled(&mut self, up: u64, down: u64) {
        if let Some(d) = &mut self.0 {
            d.received = None;
            d.whole = up;
            d.bytes_out = down;
        }
    }

    /// The answer broke after its head (`why`): the line says so and is written whatever
    /// `sample_ok` says. The first cause seen stands.
    pub fn broken(&mut self, why: Broken) {
        if let Some(d) = &mut self.0 {
            if d.broken.is_none() && d.who != 0 {
                d.broken = Some(why);
                d.armed = true;
            }
        }
    }

    /// Counts `n` body bytes sent to the client.
    pub fn sent(&mut self, n: usize) {
        if let Some(d) = &mut self.0 {
            d.bytes_out += n as u64;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let Some(mut d) = self.0.take() else { return };
        if let Some(to) = d.sink.take().filter(|_| d.armed) {
            let bytes_in = d.received.as_ref().map_or(d.whole, |c| c.received());
            to.sink.push(to.lane, |buf, wall, now| {
                let duration = now.saturating_duration_since(d.started);
                d.render(buf, wall, &to.listener, duration, bytes_in);
            });
        }
        d.recycle();
    }
}

// === impl Draft ===

/// Drafts kept for reuse per thread.
const SPARES: usize = 256;
/// Bytes a new draft's text starts with: a typical line's pieces fit.
const TEXT_CAP: usize = 256;
/// A draft whose text grew beyond this (a very long path) is freed rather than kept.
const TEXT_KEEP: usize = 4096;

thread_local! {
    /// Drafts given back by finished entries, for the next requests on this thread. Boxes:
    /// the point is to reuse the allocation an [`Entry`] points to.
    static SPARE: Shelf<Box<Draft>> = const { Shelf::new(SPARES) };
}

impl Draft {
    /// An empty draft started at `started`: a spare one of this thread's if there is one.
    fn take(started: Instant) -> Box<Draft> {
        match Shelf::take(&SPARE) {
            Some(mut d) => {
                d.started = started;
                d
            }
            None => Box::new(Draft {
                text: Vec::with_capacity(TEXT_CAP),
                request: 0,
                ids: 0,
                who: 0,
                said: 0,
                status: 0,
                tries: 0,
                endpoint: None,
                upstream: None,
                bytes_out: 0,
                started,
                received: None,
                whole: 0,
                sink: None,
                keep_ok: None,
                armed: false,
                grpc: Grpc::NotACall,
                broken: None,
            }),
        }
    }

    /// Keeps the draft, emptied, for a later [`Draft::take`] on this thread (unless its text
    /// grew large or enough are kept).
    fn recycle(self: Box<Self>) {
        if self.text.capacity() > TEXT_KEEP {
            return;
        }
        Shelf::keep(&SPARE, self, |d| {
            d.text.clear();
            d.request = 0;
            d.ids = 0;
            d.who = 0;
            d.said = 0;
            d.status = 0;
            d.tries = 0;
            d.endpoint = None;
            d.upstream = None;
            d.bytes_out = 0;
            d.received = None;
            d.whole = 0;
            d.sink = None;
            d.armed = false;
            d.grpc = Grpc::NotACall;
            d.broken = None;
        });
    }

    fn fill(&mut self, out: Outcome<'_>, tries: TryStats) -> bool {
        let grpc_failed = matches!(out.grpc, Grpc::Status(c) if c != 0);
        let ok = out.status < 400 && out.reason.is_none() && !grpc_failed;
        self.armed = !ok || self.keep_ok.is_none_or(|k| fastrand::u32(..) < k);
        self.grpc = out.grpc;
        // A line sampled out keeps what it borrows, as text: a gRPC call's trailers may arm it
        // yet, and so may an answer that breaks after its head ([`Entry::broken`]).
        let t = &mut self.text;
        t.truncate(self.ids as usize);
        t.extend_from_slice(b",\"route\":");
        match out.route {
            Some(r) => t.extend_from_slice(r),
            None => t.extend_from_slice(b"null"),
        }
        t.extend_from_slice(b",\"tenant\":");
        match out.tenant {
            // Ids from the allowed set need no escaping.
            Some(id) => match id.checked_bytes() {
                Some(b) => line::token(t, b),
                None => line::string(t, id.as_str()),
            },
            None => t.extend_from_slice(b"null"),
        }
        self.who = end(t);
        if let Some(r) = out.reason {
            t.extend_from_slice(b",\"reason\":");
            line::header_string(t, r);
        }
        self.said = end(t);
        if let Some(l) = out.limit {
            t.extend_from_slice(b",\"limit\":");
            line::string(t, l);
        }
        self.status = out.status;
        self.tries = tries.tries;
        self.endpoint = tries.endpoint;
        self.upstream = tries.upstream;
        self.bytes_out = out.bytes_out;
        self.received = tries.received;
        self.whole = tries.whole;
        self.armed
    }

    /// Appends the whole line (ending in `\n`) to `buf`, in SPEC §12's field order, with the
    /// request's start written through `wall`; `listener` is the listener's piece.
    fn render(
        &self,
        buf: &mut Vec<u8>,
        wall: &mut Wall,
        listener: &[u8],
        duration: Duration,
        bytes_in: u64,
    ) {
        let t = &self.text;
        let cut = |at: u32| at as usize;
        let (request, ids) = (
            &t[..cut(self.request)],
            &t[cut(self.request)..cut(self.ids)],
        );
        let who = &t[cut(self.ids)..cut(self.who)];
        let (reason, limit) = (&t[cut(self.who)..cut(self.said)], &t[cut(self.said)..]);
        // Room for the pieces and for the fixed text and the figures at their longest, so the
        // buffer grows at most once per line.
        buf.reserve(listener.len() + t.len() + 384);
        buf.extend_from_slice(b"{\"time\":\"");
        wall.write(buf, self.started);
        buf.push(b'"');
        buf.extend_from_slice(listener);
        buf.extend_from_slice(who);
        buf.extend_from_slice(request);
        buf.extend_from_slice(b",\"status\":");
        line::three_digits(buf, u32::from(self.status.clamp(100, 999)));
        match self.broken {
            Some(why) => {
                buf.extend_from_slice(b",\"reason\":\"");
                buf.extend_from_slice(why.as_str().as_bytes());
                buf.push(b'"');
            }
            None if reason.is_empty() => buf.extend_from_slice(b",\"reason\":\"\""),
            None => buf.extend_from_slice(reason),
        }
        match limit.is_empty() {
            true => buf.extend_from_slice(b",\"limit\":null"),
            false => buf.extend_from_slice(limit),
        }
        buf.extend_from_slice(b",\"tries\":");
        line::uint(buf, u64::from(self.tries));
        buf.extend_from_slice(b",\"endpoint\":");
        match self.endpoint {
            Some(e) => line::endpoint(buf, e),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"duration_ms\":");
        line::millis(buf, duration);
        buf.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream {
            Some(d) => line::millis(buf, d),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"bytes_in\":");
        line::uint(buf, bytes_in);
        buf.extend_from_slice(b",\"bytes_out\":");
        line::uint(buf, self.bytes_out);
        match self.grpc {
            Grpc::NotACall => {}
            Grpc::NoStatus => buf.extend_from_slice(b",\"grpc_status\":null"),
            Grpc::Status(c) => {
                buf.extend_from_slice(b",\"grpc_status\":");
                line::uint(buf, u64::from(c));
            }
        }
        buf.extend_from_slice(ids);
        buf.extend_from_slice(b"}\n");
    }
}

/// `s` as a JSON string, for names written into every line and escaped once beforehand.
pub fn json_string(s: &str) -> Box<[u8]> {
    let mut b = Vec::with_capacity(s.len() + 2);
    line::string(&mut b, s);
    b.into()
}

/// Where the text ends now, as a cut. A line's text beyond 4 GiB cannot happen: hyper refuses
/// request heads far smaller.
fn end(t: &[u8]) -> u32 {
    u32::try_from(t.len()).unwrap_or(u32::MAX)
}

/// The client's `traceparent`. The few headers of a usual request are walked, which costs less
/// than hashing the name for a lookup; more are looked up.
fn traceparent(h: &http::HeaderMap) -> Option<&HeaderValue> {
    if h.len() > 8 {
        return h.get(TRACEPARENT);
    }
    h.iter().find(|(n, _)| *n == TRACEPARENT).map(|(_, v)| v)
}

/// The trace id of a valid W3C `traceparent` (see [`TraceParent::parse`]); `None` for
/// anything else.
pub fn trace_id(v: &HeaderValue) -> Option<u128> {
    TraceParent::parse(v).map(|tp| tp.trace_id)
}
