//! The end of the request path, the same for every answer: count it, give it its request id,
//! explain a refusal at debug, and hand its access log line and its SERVER span on.
//!
//! One place, so no answer can leave without its metrics, its `x-request-id`, its log line or
//! its span, whichever step of `stack.rs` made it. [`Finish`] is made first thing (it settles
//! the request id and the trace, and starts the log line and the span while the request is
//! still whole) and learns the route and the tenant as the path finds them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response};
use tokio::time::Instant;

use super::access_log::{self, Entry, TryStats};
use super::body::Body;
use super::ctx::TryLog;
use super::forward::{new_request_id, Sent, X_REQUEST_ID};
use super::grpc::{self, is_grpc, GRPC_STATUS};
use super::guard::Guards;
use super::respond::{mark_own, own_reason, to_grpc, with_request_id, REASON_HEADER};
use super::shared::Shared;
use crate::generation::{ListenerRt, RouteRt};
use crate::metrics::TenantMetrics;
use crate::otel::{Answered, ServerSpan, SpanParent, Trace};
use crate::tenant::TenantId;

/// What the end of the request path needs to know about one request.
///
/// A request whose future is dropped before it is answered (its client went away: an HTTP/2
/// stream reset, an HTTP/1.1 connection closed while it waited) still ends here, as a 499 (the
/// status nginx logs for it, "client closed request"; no answer is sent): counted, logged and
/// its span ended with the route, the tenant and the tries it had ([`Drop`]).
#[derive(Debug)]
pub struct Finish<'a> {
    shared: &'a Shared,
    lst: &'a ListenerRt,
    started: Instant,
    request_id: &'a HeaderValue,
    entry: Option<Entry>,
    /// The request's trace, when the listener traces.
    trace: Option<Trace>,
    /// Its SERVER span, when the trace is sampled.
    span: Option<ServerSpan>,
    /// Held until the answer's body ends (upstream answers) or dropped with a refusal.
    pub guards: Guards,
    /// The route, once matched.
    pub route: Option<&'a RouteRt>,
    /// The tenant, once known.
    pub tenant: Option<TenantId>,
    /// Whether the request is a gRPC call: rampart's own answer to it is then in gRPC's form
    /// (`respond::to_grpc`).
    grpc: bool,
    /// Whether the request is HEAD: its answer goes without content (RFC 9110 §9.3.2), so the
    /// access log counts none of rampart's own body, which both HTTP/1.1 servers drop and
    /// `body::for_head` takes out for HTTP/2 after this.
    head: bool,
    /// What the request's tries did, once the exchange is under way: a request dropped
    /// before its answer logs them.
    tries: Option<&'a TryLog>,
    /// An HTTP/1.1 request whose body hyper streams and had not ended when the request began:
    /// rampart's own answer given before its end was read closes the connection; an
    /// upstream's watches the client while it waits (`h1/gone.rs`).
    upload: bool,
    /// Answered (or ended as a client's going away): nothing is left for [`Drop`].
    settled: bool,
    /// Dropped unanswered: its client went away.
    gone: bool,
}

/// The status a request whose client went away before its answer is counted and logged
/// with (nginx's 499, "client closed request"); never sent.
pub const CLIENT_CLOSED: u16 = 499;

/// The status and reason a request rampart cut is counted and logged with (never sent): one
/// still in flight when a drain's grace ran out (`listener::accept_loop`), or when the process
/// exits. Not a 499: its client did not give up on it.
pub const CUT: (u16, HeaderValue) = (503, HeaderValue::from_static("shutdown"));

thread_local! {
    /// Set while a connection's task is dropped unfinished ([`Cut`]): a request dropped then
    /// was cut by rampart. (A client that goes away has its request dropped inside the task,
    /// while it runs.)
    static CUTTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a connection's task is being dropped unfinished on this thread ([`Cut`]): what is
/// dropped now was cut by rampart.
pub fn cutting() -> bool {
    CUTTING.get()
}

/// One of a connection task's futures, whose requests, if it is dropped before it ends, are
/// counted and logged as cut by rampart ([`CUT`]), not as gone clients' 499s. Dropped after
/// it ended (the connection closed by itself: its client went away, or it was closed
/// gracefully), it marks nothing: only a task aborted unfinished (a drain's grace run out, the
/// process exiting) is rampart's cut.
#[derive(Debug)]
pub struct Cut<F> {
    // Dropped in this order, after `Drop::drop` marks the thread: the future (its requests'
    // `Finish` see the mark), then the mark's end.
    fut: F,
    end: CutEnd,
}

impl<F> Cut<F> {
    /// `fut`, whose unfinished requests are cut if it is dropped before it ends.
    pub fn new(fut: F) -> Cut<F> {
        Cut {
            fut,
            end: CutEnd {
                ended: false,
                marked: false,
            },
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for Cut<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let out = std::pin::Pin::new(&mut self.fut).poll(cx);
        if out.is_ready() {
            self.end.ended = true;
        }
        out
    }
}

impl<F> Drop for Cut<F> {
    fn drop(&mut self) {
        if !self.end.ended && !cutting() {
            CUTTING.set(true);
            self.end.marked = true;
        }
    }
}

/// Ends [`CUTTING`]'s mark, dropped after the future it was set for, if it set one.
#[derive(Debug)]
struct CutEnd {
    /// The future ended: nothing of it is cut.
    ended: bool,
    marked: bool,
}

impl Drop for CutEnd {
    fn drop(&mut self) {
        if self.marked {
            CUTTING.set(false);
        }
    }
}

/// What the requests of a connection whose requests run in tasks of their own (hyper's HTTP/2
/// streams) share with it.
///
/// Whether it was cut: marked as the connection's task is dropped unfinished ([`MarksCut`]),
/// read as each of its requests' futures is dropped ([`CutAlong`]). Such a request is not
/// dropped inside the connection's [`Cut`], but in its own task, when the connection's end
/// wakes it.
///
/// And how many of its requests its client reset before their answers (premature resets, the
/// "rapid reset" of CVE-2023-44487 once the streams are taken up: each such request may have
/// cost an upstream call, and h2's own guard counts only streams reset before they are
/// accepted). Past [`PREMATURE_RESETS`], when they are also most of its requests, the
/// connection is told to close ([`ConnCut::reset_storm`]). Counters and one wake-up: nothing
/// locked or allocated per request.
#[derive(Debug, Default)]
pub struct ConnCut {
    cut: AtomicBool,
    /// Requests begun. 64 bits, as `reset`: a long-lived connection may begin more than 2^32
    /// requests, and a wrapped count would judge it on a few.
    begun: AtomicU64,
    /// Requests whose futures were dropped unanswered, not cut by rampart: their client reset
    /// them (or went away).
    reset: AtomicU64,
    /// Woken once the resets pass the bound.
    storm: tokio::sync::Notify,
}

/// How many requests of one HTTP/2 connection its client may reset before their answers:
/// one more, when they are also more than half of its requests, and the connection is closed
/// (as Envoy closes a connection for "premature resets"). A client that cancels now and then
/// (a browser leaving a page) is far below it; a rapid-reset flood of taken-up streams passes
/// it within a few batches.
pub const PREMATURE_RESETS: u32 = 100;

/// A connection's future (`None`: one whose requests all run inside it) that marks its
/// [`ConnCut`] when dropped unfinished inside a [`Cut`], before any of it is dropped: the
/// tasks of its requests, which its end wakes, see the mark whichever thread they run on. A
/// connection that ended by itself (its client reset it, or sent GOAWAY) is not cut: its
/// requests, dropped after, are their client's going.
#[derive(Debug)]
pub struct MarksCut<F> {
    fut: F,
    conn: Option<Arc<ConnCut>>,
    /// The future ended.
    ended: bool,
}

/// A request's future that runs in a task of its own (an HTTP/2 stream's): dropped once its
/// connection was cut, the request is counted and logged as cut by rampart ([`CUT`]), as one
/// dropped inside a [`Cut`] is, not as a gone client's 499.
#[derive(Debug)]
pub struct CutAlong<F> {
    // Dropped in this order, after `Drop::drop` marks the thread if the connection was cut:
    // the future, then the mark's end.
    fut: F,
    end: AlongEnd,
}

/// Ends the mark a [`CutAlong`] set, if it set one.
#[derive(Debug)]
struct AlongEnd {
    conn: Option<Arc<ConnCut>>,
    marked: bool,
    /// The future gave its answer.
    answered: bool,
}

// === impl ConnCut ===

impl ConnCut {
    /// Resolves once the connection's client has reset more than [`PREMATURE_RESETS`] of its
    /// requests before their answers, and more than half of them: the connection should be
    /// closed.
    pub async fn reset_storm(&self) {
        self.storm.notified().await;
    }

    /// Counts a request its client reset before its answer; wakes [`ConnCut::reset_storm`]
    /// past the bound.
    fn premature_reset(&self) {
        let reset = self.reset.fetch_add(1, Ordering::AcqRel) + 1;
        if reset > u64::from(PREMATURE_RESETS)
            && reset.saturating_mul(2) > self.begun.load(Ordering::Acquire)
        {
            // No waiter yet: a permit is kept for it. (Called again after the close: no
            // waiter, one permit at most, no lock taken.)
            self.storm.notify_one();
        }
    }
}

// === impl MarksCut ===

impl<F> MarksCut<F> {
    /// `fut`, a connection's future, marking `conn` if it is cut.
    pub fn new(fut: F, conn: Option<Arc<ConnCut>>) -> MarksCut<F> {
        MarksCut {
            fut,
            conn,
            ended: false,
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for MarksCut<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let out = std::pin::Pin::new(&mut self.fut).poll(cx);
        if out.is_ready() {
            self.ended = true;
        }
        out
    }
}

impl<F> Drop for MarksCut<F> {
    fn drop(&mut self) {
        if let (Some(conn), false, true) = (&self.conn, self.ended, cutting()) {
            conn.cut.store(true, Ordering::Release);
        }
    }
}

// === impl CutAlong ===

impl<F> CutAlong<F> {
    /// `fut`, a request's future on connection `conn` (`None`: one that runs inside its
    /// connection's task, which a [`Cut`] covers).
    pub fn new(fut: F, conn: Option<Arc<ConnCut>>) -> CutAlong<F> {
        if let Some(c) = &conn {
            c.begun.fetch_add(1, Ordering::AcqRel);
        }
        CutAlong {
            fut,
            end: AlongEnd {
                conn,
                marked: false,
                answered: false,
            },
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for CutAlong<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let out = std::pin::Pin::new(&mut self.fut).poll(cx);
        if out.is_ready() {
            self.end.answered = true;
        }
        out
    }
}

impl<F> Drop for CutAlong<F> {
    fn drop(&mut self) {
        let Some(conn) = &self.end.conn else {
            return;
        };
        if conn.cut.load(Ordering::Acquire) {
            if !cutting() {
                CUTTING.set(true);
                self.end.marked = true;
            }
        } else if !self.end.answered && !cutting() {
            conn.premature_reset();
        }
    }
}

impl Drop for AlongEnd {
    fn drop(&mut self) {
        if self.marked {
            CUTTING.set(false);
        }
    }
}

// === impl Finish ===

/// The id of the request whose head holds what `sent` says: the client's `x-request-id`, else a
/// new one (and `true`: made here). A made id is not put into the request's map: the upstream
/// writer adds it to the head it sends (`forward::Added`).
///
/// A client's id is taken only when it is one a log and a header carry unchanged: 1 to
/// [`ID_MAX`] bytes of visible ASCII. Any other (empty, spaces, control or non-ASCII bytes,
/// longer) is taken out of the request and replaced by one made here, so the upstream, the
/// answer, the error body and the access log all carry the same id. Of two or more ids the
/// first is the request's, and the others are taken out.
///
/// Marked sensitive, which only HPACK reads: an id differs from request to request, so HTTP/2
/// sends it as a literal never indexed instead of adding it to the connection's header table,
/// where it would only push out the names and values that do repeat.
pub fn request_id<B>(req: &mut Request<B>, sent: Sent) -> (HeaderValue, bool) {
    let theirs = match sent.request_id {
        false => None,
        true => {
            let mut all = req.headers().get_all(X_REQUEST_ID).iter();
            match (all.next(), all.next().is_some()) {
                (Some(v), more) if usable_id(v.as_bytes()) => {
                    let v = v.clone();
                    if more {
                        // Two ids: the first is the request's, and the only one sent on.
                        req.headers_mut().insert(X_REQUEST_ID, v.clone());
                    }
                    Some(v)
                }
                _ => {
                    req.headers_mut().remove(X_REQUEST_ID);
                    None
                }
            }
        }
    };
    let (mut id, made) = match theirs {
        Some(v) => (v, false),
        None => (new_request_id(), true),
    };
    id.set_sensitive(true);
    (id, made)
}

/// The longest client's `x-request-id` taken as it is.
pub const ID_MAX: usize = 128;

/// Whether `id` is 1 to [`ID_MAX`] bytes of visible ASCII (`!` to `~`). Every byte is tested,
/// with no stop at the first bad one (a client's id is nearly always good): the loop is then
/// made of vector instructions, where `all` took about 6 instructions a byte (220 a request
/// for a UUID, now 70, counted by callgrind).
fn usable_id(id: &[u8]) -> bool {
    (1..=ID_MAX).contains(&id.len())
        && id
            .iter()
            .fold(true, |good, b| good & (b'!'..=b'~').contains(b))
}

impl<'a> Finish<'a> {
    /// Starts the end of `req`, whose id is `request_id` (`made` by rampart, see
    /// [`request_id`]): its trace if `lst` traces, and its access log line if `lst` logs.
    pub fn new<B>(
        shared: &'a Shared,
        lst: &'a ListenerRt,
        req: &mut Request<B>,
        (request_id, made): (&'a HeaderValue, bool),
        started: Instant,
        guards: Guards,
    ) -> Self {
        let (trace, span) = match &lst.tracer {
            None => (None, None),
            Some(tracer) => {
                let trace = tracer.start(req.headers_mut());
                let span = trace
                    .sampled
                    .then(|| ServerSpan::begin(&trace, tracer.exporter(), req, started, &lst.name));
                (Some(trace), span)
            }
        };
        let trace_id = trace.map(|t| t.trace_id);
        let entry = lst
            .access_log
            .as_ref()
            .map(|log| log.begin(req, (request_id, made), trace_id, started));
        Finish {
            shared,
            lst,
            started,
            request_id,
            entry,
            trace,
            span,
            guards,
            route: None,
            tenant: None,
            // gRPC calls are POSTs: any other request is told apart by its method alone.
            grpc: req.method() == http::Method::POST && is_grpc(req.headers()),
            head: req.method() == http::Method::HEAD,
            tries: None,
            upload: false,
            settled: false,
            gone: false,
        }
    }

    /// The request is an HTTP/1.1 one whose body was still to be read when it began (hyper's
    /// server streams it): rampart's own answer given before the body's end was read says
    /// `connection: close` (RFC 9112 §9.6), since the rest is not drained and the connection
    /// closes after it.
    pub fn uploading(&mut self) {
        self.upload = true;
    }

    /// The request's tries are noted in `tries` from here on (read if it is dropped unanswered).
    pub fn trying(&mut self, tries: &'a TryLog) {
        self.tries = Some(tries);
    }

    /// The parent of the request's try spans, when its trace is sampled.
    pub fn span_parent(&self) -> Option<SpanParent<'a>> {
        let exporter = self.lst.tracer.as_ref()?.exporter();
        self.span.as_ref()?.parent(exporter)
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Ends the request with `rsp`: counts it under `tm`, stamps the request id, logs.
    /// `limit` names the rate limit that refused; `tries` is what the exchange did.
    ///
    /// The request's duration ends at `tries.ended` when that is given, so one reading of the
    /// clock serves the last try and the answer: nothing is awaited between them (the exchange
    /// answers at once from its last try, and a retry's backoff is always followed by another
    /// try; the idempotency store is claimed before the tries and written as the body ends).
    /// Otherwise the clock is read here.
    pub fn answer(
        self,
        tm: &Arc<TenantMetrics>,
        mut rsp: Response<Body>,
        limit: Option<&str>,
        tries: TryStats,
    ) -> Response<Body> {
        self.answer_in_place(tm, &mut rsp, limit, tries);
        rsp
    }

    /// [`Finish::answer`] on an answer where it lies: the exchange's answer, on every request
    /// that reaches the upstream, is not copied into this call and back out of it.
    pub fn answer_in_place(
        mut self,
        tm: &Arc<TenantMetrics>,
        rsp: &mut Response<Body>,
        limit: Option<&str>,
        tries: TryStats,
    ) {
        let guards = self.settle(tm, rsp, limit, tries);
        rsp.body_mut().hold(guards);
    }

    /// [`Finish::answer_in_place`] for the 200 that opens a tunnel: the request's guards (its
    /// access log line and span among them) are given back to be held for the tunnel's life
    /// instead of being dropped with the answer's empty body.
    pub fn answer_tunnel(
        mut self,
        tm: &Arc<TenantMetrics>,
        rsp: &mut Response<Body>,
        tries: TryStats,
    ) -> Guards {
        self.settle(tm, rsp, None, tries)
    }

    /// Counts `rsp`, stamps the request id, explains it, fills the log line and the span;
    /// returns the guards that hold them.
    fn settle(
        &mut self,
        tm: &Arc<TenantMetrics>,
        rsp: &mut Response<Body>,
        limit: Option<&str>,
        tries: TryStats,
    ) -> Guards {
        self.settled = true;
        // rampart's own answer is marked so (`respond::mark_own`), and only its reason header
        // is read: an upstream's `x-rampart-reason` (another rampart's, say) passes through as
        // any header does. (The reason is a static value: its copy costs no allocation.)
        let own = own_reason(rsp).cloned();
        if own.is_some() {
            if self.grpc {
                // Counted and logged as sent: a 200 whose `grpc-status` says what happened.
                to_grpc(rsp);
            } else {
                with_request_id(rsp, self.request_id);
            }
        }
        // rampart's own answer drops the body where it stands (hyper then closes rather than
        // drain it); an upstream's early answer leaves the rest of the upload going to it
        // (`pool::finish_upload`), which keeps the connection in step.
        let unread = match &tries.received {
            None => true,
            Some(c) => own.is_some() && !c.ended(),
        };
        if self.upload && unread {
            rsp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        // An upstream's answer to a streamed upload: hyper's HTTP/1 server watches the client
        // on while the answer waits (`h1/gone.rs`). (The mark's extension is the one cost,
        // and only such an answer pays it.)
        if self.upload && own.is_none() {
            rsp.extensions_mut()
                .insert(super::h1::gone::Uploading::new());
        }
        let status = rsp.status().as_u16();
        tm.count(status);
        let now = tries.ended.unwrap_or_else(Instant::now);
        tm.duration
            .observe(now.saturating_duration_since(self.started));
        // The answer carries the request's id, the one its log line holds, in place of any
        // an upstream gave. An upstream's plain answer keeps its lines (never its id) beside
        // an empty map, and the id beside them (written after them).
        match rsp.body_mut().raw_lines_mut() {
            Some(raw) => raw.id = Some(self.request_id.clone()),
            None => {
                rsp.headers_mut()
                    .insert(X_REQUEST_ID, self.request_id.clone());
            }
        }
        let reason = own.as_ref();
        if reason.is_some() || status >= 300 {
            self.explain(status, reason, limit, &tries);
        }
        // A gRPC call's status: rampart's own, or an upstream's Trailers-Only one (an answer
        // that streams gives it in its trailers, `pool::h2::H2Answer`).
        let grpc_code = self
            .grpc
            .then(|| rsp.headers().get(GRPC_STATUS).and_then(grpc::code))
            .flatten();
        if let Some(span) = &mut self.span {
            if let Some(c) = grpc_code {
                span.grpc_status(c);
            }
            span.answered(Answered {
                status,
                route: self.route.map(|r| (&r.name, &r.upstream.name)),
                tenant: self.tenant.as_ref(),
                reason,
                limit,
                tries: tries.tries,
                endpoint: tries.endpoint,
            });
            self.guards.span = self.span.take();
        }
        if let Some(mut entry) = self.entry.take() {
            // An upstream's answer (teed or not) counts its bytes as they go (none to HEAD:
            // the upstream clients read no content for it); rampart's own, its size, unless
            // it answers HEAD and goes without.
            let b = rsp.body();
            let bytes_out = match self.head || b.counts_sent() {
                true => 0,
                false => http_body::Body::size_hint(b).lower(),
            };
            let grpc = match (self.grpc, grpc_code) {
                (false, _) => access_log::Grpc::NotACall,
                (true, Some(c)) => access_log::Grpc::Status(c),
                (true, None) => access_log::Grpc::NoStatus,
            };
            let out = access_log::Outcome {
                route: self.route.map(|r| &*r.log_name),
                tenant: self.tenant.as_ref(),
                status,
                reason,
                limit,
                bytes_out,
                grpc,
            };
            // Kept even when sampled out: the answer may yet break, or a gRPC call's
            // trailers fail it, and the line is then written.
            entry.fill(out, tries);
            self.guards.log = Some(entry);
        }
        std::mem::take(&mut self.guards)
    }

    /// The debug line that explains a non-2xx answer: rampart's own (with its reason and the
    /// limit that refused), or the upstream's (with the tries it took).
    fn explain(
        &self,
        status: u16,
        reason: Option<&HeaderValue>,
        limit: Option<&str>,
        tries: &TryStats,
    ) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let route = self.route.map(|r| &*r.name);
        let tenant = self.tenant.as_ref().map(TenantId::as_str);
        let request_id = self.request_id.to_str().unwrap_or("");
        let trace_id = self.trace.map(|t| format!("{:032x}", t.trace_id));
        match reason {
            Some(reason) => tracing::debug!(
                listener = %self.lst.name, route, tenant, status,
                reason = reason.to_str().unwrap_or(""), limit, tries = tries.tries,
                endpoint = tries.endpoint.map(tracing::field::display), request_id, trace_id,
                "answered by rampart"
            ),
            None if self.gone => tracing::debug!(
                listener = %self.lst.name, route, tenant, tries = tries.tries,
                endpoint = tries.endpoint.map(tracing::field::display), request_id, trace_id,
                "the client went away before its answer"
            ),
            None => tracing::debug!(
                listener = %self.lst.name, route, tenant, status, tries = tries.tries,
                endpoint = tries.endpoint.map(tracing::field::display), request_id, trace_id,
                "the upstream answered with a non-2xx status"
            ),
        }
    }
}

/// A request dropped before its answer: its client went away. Counted under its route and
/// tenant (as far as they were known) as a [`CLIENT_CLOSED`], with its duration; its log line
/// and span end with what it had done (its tries among it), at once, since no body follows.
/// One rampart cut (its connection's task dropped unfinished, [`Cut`]) is counted and logged
/// as [`CUT`] instead.
impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let shared = self.shared;
        let tm = match (self.route, &self.tenant) {
            (Some(r), Some(t)) => r.metrics.tenant_of(t.as_str(), &shared.labels),
            (Some(r), None) => r.metrics.tenant(&shared.empty_label),
            (None, _) => self.lst.unrouted.tenant(&shared.empty_label),
        };
        let tries = self.tries.map(TryLog::take).unwrap_or_default();
        let mut rsp = Response::new(Body::Empty);
        if cutting() {
            *rsp.status_mut() = http::StatusCode::from_u16(CUT.0).expect("a valid status code");
            rsp.headers_mut().insert(REASON_HEADER, CUT.1);
            mark_own(&mut rsp);
        } else {
            self.gone = true;
            *rsp.status_mut() =
                http::StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid status code");
        }
        drop(self.settle(&tm, &mut rsp, None, tries));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a future dropped inside a [`Cut`] sees: the thread marked while it is dropped, and
    /// not before or after.
    #[test]
    fn a_cut_marks_the_thread_while_its_future_is_dropped() {
        struct Sees(Arc<parking_lot::Mutex<Option<bool>>>);
        impl Drop for Sees {
            fn drop(&mut self) {
                *self.0.lock() = Some(cutting());
            }
        }
        let seen = Arc::new(parking_lot::Mutex::new(None));
        let held = Sees(seen.clone());
        let fut = Box::pin(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        let cut = Cut::new(fut);
        assert!(!cutting());
        drop(cut);
        assert_eq!(*seen.lock(), Some(true), "marked while dropped");
        assert!(!cutting(), "and no longer after");
        // Dropped elsewhere, a request is a client's going.
        drop(Sees(seen.clone()));
        assert_eq!(*seen.lock(), Some(false));
    }

    /// A request's future in a task of its own ([`CutAlong`]) is dropped as cut only once its
    /// connection's future was dropped inside a [`Cut`] ([`MarksCut`]); before, or after the
    /// connection ended otherwise, its drop is a client's going.
    #[test]
    fn a_request_in_its_own_task_is_cut_with_its_connection() {
        struct Sees(Arc<parking_lot::Mutex<Option<bool>>>);
        impl Drop for Sees {
            fn drop(&mut self) {
                *self.0.lock() = Some(cutting());
            }
        }
        let request = |conn: &Arc<ConnCut>, seen: &Arc<parking_lot::Mutex<Option<bool>>>| {
            let held = Sees(seen.clone());
            let fut = Box::pin(async move {
                let _held = held;
                std::future::pending::<()>().await;
            });
            CutAlong::new(fut, Some(conn.clone()))
        };
        let connection = |conn: &Arc<ConnCut>| {
            MarksCut::new(Box::pin(std::future::pending::<()>()), Some(conn.clone()))
        };
        let seen = Arc::new(parking_lot::Mutex::new(None));

        // The connection ended by itself (its client went away): not cut.
        let conn = Arc::new(ConnCut::default());
        let req = request(&conn, &seen);
        drop(connection(&conn));
        drop(req);
        assert_eq!(*seen.lock(), Some(false), "a client's going");

        // The connection's task cut: its request, dropped after, on any thread, is cut.
        let conn = Arc::new(ConnCut::default());
        let req = request(&conn, &seen);
        drop(Cut::new(connection(&conn)));
        assert!(!cutting());
        let after = std::thread::spawn(move || {
            drop(req);
            cutting()
        })
        .join()
        .expect("no panic");
        assert_eq!(*seen.lock(), Some(true), "cut with its connection");
        assert!(!after, "and the mark ends with it");

        // A request that runs inside its connection's task is left to the task's `Cut`.
        let held = Sees(seen.clone());
        let fut = Box::pin(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(CutAlong::new(fut, None));
        assert_eq!(*seen.lock(), Some(false));
    }

    /// A connection that ended by itself (its client reset it), awaited to its end inside a
    /// [`Cut`] as a connection's task awaits it, is not cut: the [`Cut`] and the finished
    /// connection dropped after mark nothing, and its request, whose task runs after, is a
    /// client's going. (Before, the finished [`Cut`]'s drop marked the connection cut: a 503
    /// `shutdown` for an HTTP/2 client gone mid-try.) A [`Cut`] dropped unfinished inside
    /// another leaves the outer mark in place.
    #[tokio::test]
    async fn a_connection_that_ended_by_itself_is_not_cut() {
        struct Sees(Arc<parking_lot::Mutex<Option<bool>>>);
        impl Drop for Sees {
            fn drop(&mut self) {
                *self.0.lock() = Some(cutting());
            }
        }
        let seen = Arc::new(parking_lot::Mutex::new(None));
        let conn = Arc::new(ConnCut::default());
        let held = Sees(seen.clone());
        let req = CutAlong::new(
            Box::pin(async move {
                let _held = held;
                std::future::pending::<()>().await;
            }),
            Some(conn.clone()),
        );
        let connection = MarksCut::new(Box::pin(async {}), Some(conn.clone()));
        Cut::new(connection).await;
        assert!(!cutting());
        drop(req);
        assert_eq!(*seen.lock(), Some(false), "a client's going");

        // Nested: the inner Cut, dropped unfinished while the outer one marks, ends no mark.
        let held = Sees(seen.clone());
        let inner = Cut::new(Box::pin(std::future::pending::<()>()));
        let outer = Cut::new(Box::pin(async move {
            // Locals drop in reverse: the inner Cut first, then the witness.
            let _held = held;
            let _inner = inner;
            std::future::pending::<()>().await;
        }));
        // Polled once, so the inner Cut and the witness live in the future's state.
        let mut outer = outer;
        assert!(poll_once(&mut outer).is_pending());
        drop(outer);
        assert_eq!(
            *seen.lock(),
            Some(true),
            "still cut after the inner Cut's drop"
        );
        assert!(!cutting());
    }

    /// Polls `fut` once with a waker that does nothing.
    fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(fut).poll(&mut cx)
    }

    /// Whether `conn` is told to close for a storm of resets now.
    async fn storm(conn: &Arc<ConnCut>) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, conn.reset_storm())
            .await
            .is_ok()
    }

    /// A request's future dropped before its answer, not cut, counts as a premature reset of
    /// its connection; one answered, or cut with its connection, does not. The connection is
    /// told to close once more than [`PREMATURE_RESETS`] of them are also more than half of
    /// its requests.
    #[tokio::test]
    async fn premature_resets_past_the_bound_and_most_requests_close_the_connection() {
        let pending = || Box::pin(std::future::pending::<()>());
        let answered = |conn: &Arc<ConnCut>| {
            let mut req = CutAlong::new(Box::pin(std::future::ready(())), Some(conn.clone()));
            let waker = std::task::Waker::noop();
            let ready = std::future::Future::poll(
                std::pin::Pin::new(&mut req),
                &mut std::task::Context::from_waker(waker),
            );
            assert!(ready.is_ready());
        };

        // Answered requests and resets, the resets a minority: 150 of 400, no close.
        let conn = Arc::new(ConnCut::default());
        for _ in 0..250 {
            answered(&conn);
        }
        for _ in 0..150 {
            drop(CutAlong::new(pending(), Some(conn.clone())));
        }
        assert!(
            !storm(&conn).await,
            "a minority of resets keeps the connection"
        );

        // Resets that are most of its requests, but not over the bound: no close, until one
        // more.
        let conn = Arc::new(ConnCut::default());
        for _ in 0..PREMATURE_RESETS {
            drop(CutAlong::new(pending(), Some(conn.clone())));
        }
        assert!(!storm(&conn).await, "the bound itself is allowed");
        drop(CutAlong::new(pending(), Some(conn.clone())));
        assert!(storm(&conn).await, "one past the bound closes it");

        // Requests cut with their connection are rampart's doing, not the client's.
        let conn = Arc::new(ConnCut::default());
        let reqs: Vec<_> = (0..200)
            .map(|_| CutAlong::new(pending(), Some(conn.clone())))
            .collect();
        drop(Cut::new(MarksCut::new(pending(), Some(conn.clone()))));
        drop(reqs);
        assert!(!storm(&conn).await, "cut requests are not resets");
    }

    /// A connection's counts go on past 2^32 requests (a long-lived HTTP/2 connection): with
    /// 32-bit counters the requests begun wrapped to a few, and a hundred resets among billions
    /// closed the connection; and the resets wrapped to none, and a connection of nothing but
    /// resets was never judged again.
    #[tokio::test]
    async fn premature_resets_are_judged_past_two_to_the_32_requests() {
        let pending = || Box::pin(std::future::pending::<()>());

        // 2^32 requests begun, all answered; then a bound's worth of resets, a tiny minority.
        let conn = Arc::new(ConnCut::default());
        conn.begun.store(u32::MAX.into(), Ordering::Relaxed);
        for _ in 0..=PREMATURE_RESETS {
            drop(CutAlong::new(pending(), Some(conn.clone())));
        }
        assert!(
            !storm(&conn).await,
            "{} resets of over 2^32 requests keep the connection",
            PREMATURE_RESETS + 1
        );

        // Nearly every request reset: one more reset, the 2^32nd, still closes it.
        let conn = Arc::new(ConnCut::default());
        conn.begun.store(u32::MAX.into(), Ordering::Relaxed);
        conn.reset.store((u32::MAX - 1).into(), Ordering::Relaxed);
        drop(CutAlong::new(pending(), Some(conn.clone())));
        assert!(storm(&conn).await, "resets that are most requests close it");
    }

    /// HPACK reads the mark: an id is sent as a literal never indexed, made here or the
    /// client's, and keeps its bytes.
    #[test]
    fn a_request_id_is_marked_never_to_be_indexed() {
        let mut req = Request::new(());
        let (made, is_new) = request_id(&mut req, Sent::default());
        assert!(is_new && made.is_sensitive() && made.len() == 32);

        let mut req = Request::new(());
        req.headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_static("client-7"));
        let sent = Sent::of(req.headers());
        let (theirs, is_new) = request_id(&mut req, sent);
        assert!(!is_new && theirs.is_sensitive());
        assert_eq!(theirs, "client-7");
    }

    /// A client's id that a log line or a header would not carry unchanged is replaced: taken
    /// out of the request (so the upstream gets the one made here) and a new one made.
    #[test]
    fn a_client_s_unusable_id_is_replaced_by_one_made_here() {
        let long = "a".repeat(ID_MAX + 1);
        let edge = "b".repeat(ID_MAX);
        let bad: [&[u8]; 5] = [
            b"",
            b"two words",
            b"caf\xc3\xa9",
            b"tab\there",
            long.as_bytes(),
        ];
        for id in bad {
            let mut req = Request::new(());
            req.headers_mut().insert(
                X_REQUEST_ID,
                HeaderValue::from_bytes(id).expect("a header value"),
            );
            let sent = Sent::of(req.headers());
            let (made, is_new) = request_id(&mut req, sent);
            assert!(is_new && made.len() == 32, "{id:?}");
            assert!(req.headers().get(X_REQUEST_ID).is_none(), "{id:?}");
        }
        for id in ["x", "req-1:2/3@4", edge.as_str(), "!~"] {
            let mut req = Request::new(());
            req.headers_mut().insert(
                X_REQUEST_ID,
                HeaderValue::from_str(id).expect("a header value"),
            );
            let sent = Sent::of(req.headers());
            let (theirs, is_new) = request_id(&mut req, sent);
            assert!(!is_new, "{id}");
            assert_eq!(theirs, id);
            assert_eq!(req.headers()[X_REQUEST_ID], id);
        }
    }
}
