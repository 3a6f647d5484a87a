//! The exchange with the upstream: request deadline, retry loop, per-try deadline, one try.
//!
//! Steps 5–8 of the request path (see `stack.rs`). The request deadline (in the
//! [`RequestCtx`]) bounds everything below it: each try runs under the earlier of its per-try
//! deadline and the request's, and a backoff never outlasts it. A request is retried only when
//! its policy has a `retry` section, its method is idempotent (or it carries `Idempotency-Key`),
//! its body fits `retry.buffer`, the outcome is listed in `retry.on`, the wait fits before the
//! deadline, the route's breaker admits it and the route's retry budget allows it (when either
//! refuses, the last try's answer is the request's). Each retry prefers another endpoint.
//!
//! **The outcome hook.** Every try is recorded exactly once, by a guard ([`TryRecord`]) created
//! before the try is sent: finished with the outcome when one is known, or, if the try's future
//! is dropped (the client went away), on drop as [`Outcome::Cancelled`]. [`observe`] is the one
//! place that tells every upstream observer — metrics, the adaptive per-try estimator, and
//! outlier detection and balancing as they land — and the guard also carries the try's breaker
//! permit, so the breaker sees the same outcome; none of them can miss a try or count one twice.
//! A gRPC call's answer that streams hands its permit and its endpoint's health to its body,
//! which tells them at the trailers ([`grpc::Trailed`]). A fault of the client (malformed or
//! stalled upload) is [`Outcome::ClientFault`]: answered 400/408 and kept out of every upstream
//! observer.
//!
//! **A request never sent is no try.** A try whose deadline passes while its request waits in
//! rampart for a place on the endpoint's connections (an HTTP/1.1 connection with
//! `max_connections` in use, an HTTP/2 stream at the connection's limit) is answered 504, says
//! it was not sent, and is [`Outcome::Unsent`]: counted in `rampart_upstream_unsent_total`,
//! not in `rampart_upstream_requests_total`, and no verdict for breakers, outlier detection or
//! latency (`rampart_timeouts_total` still counts the deadline that passed). One whose
//! connection was still being made is the endpoint's: see the timeout arm of [`try_once`].
//!
//! **A slow upload is the client's time.** While a try streams the client's body, rampart may
//! wait for the client's next bytes (the [`FaultCell`] keeps the count). That wait is left out
//! of the try's time as the upstream is judged on it (slow calls, the latency EWMA, adaptive
//! concurrency and `per_try: auto`, the upstream duration histogram): the upstream's time is
//! what was not spent waiting for the client. A per-try deadline bounds the upstream's time
//! alike (it moves on by the client's waits, never past the request's). A deadline that passes
//! while rampart waits for the client's bytes is the client's fault: 408 `client_timeout`, no
//! verdict on the upstream, even if the upstream would have been slow too (it is not expected
//! to answer a request it has not got whole, so its silence says nothing yet). One that passes
//! while rampart waits to write to the upstream (it is not reading), or once the body has
//! ended, is the upstream's: 504 `timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use tokio::time::Instant;

use super::body::{
    whole_headers, Body, Buffered, ClientBody, ClientFault, ClientIn, FaultCell, REPLAY_CAP,
};
use super::ctx::RequestCtx;
use super::forward;
use super::grpc;
use super::pool::{self, SendError, UpstreamError};
use super::respond::answer;
use super::spare;
use super::upstream::Endpoint;
use crate::config::file;
use crate::error::Reason;
use crate::metrics::Unsent;
use crate::otel::{ClientSpan, TryTarget, TRACEPARENT};
use crate::policy::circuit_breaker::BreakerPermit;
use crate::policy::outcome::Outcome;
use crate::policy::retry::{is_idempotent, parse_retry_after, wait_before_retry, RouteRetry};
use crate::policy::timeout::per_try_timeout;

/// Longest wait before a retry when the policy sets no request deadline.
const MAX_WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(30);

/// What one try left behind besides its answer (which [`try_once`] returns: an answer moved
/// inside a larger value is copied once more on its way out, and most requests need only it).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tried {
    outcome: Outcome,
    /// The endpoint it went to.
    used: Option<SocketAddr>,
}

impl Tried {
    /// Before a try has ended (and what a request that needs only the answer passes).
    pub(super) const fn new() -> Tried {
        Tried {
            outcome: Outcome::Cancelled,
            used: None,
        }
    }
}

/// Steps 5–8 for one request that has passed the route's admission policies. (Not an `async
/// fn`, so the request is not copied into a second place in the future: see `stack::handle`.)
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
pub fn run<'a>(
    ctx: &'a RequestCtx<'a>,
    mut req: Request<ClientIn>,
) -> impl Future<Output = Response<Body>> + 'a {
    async move {
        forward::prepare_request(&mut req, ctx.peer, ctx.sent, ctx.spare.names());
        let (mut parts, incoming) = req.into_parts();
        // A guard on the head where it lies: moving it into one cost a copy of its 224 bytes.
        let spent = Spent(&mut parts);
        let parts = &mut *spent.0;
        // Most requests carry no body: nothing to watch, buffer or blame, and nothing allocated.
        if http_body::Body::is_end_stream(&incoming) {
            let retry = ctx.route.policy.retry.as_ref();
            return match retry.filter(|_| is_idempotent(&parts.method, &parts.headers)) {
                Some(r) => {
                    r.budget.deposit();
                    retry_loop(ctx, r, parts, Bytes::new(), None, None).await
                }
                None => {
                    if let Some(r) = retry {
                        r.budget.deposit();
                    }
                    try_once(ctx, parts, Body::Empty, None, None, &mut Tried::new()).await
                }
            };
        }
        // A body the lean server read whole with its head: in memory already, so nothing to
        // watch or buffer, and no fault of the client's left to find (nor a cell allocated to
        // note one). Replayed on a retry if the retry buffer would have kept it.
        let incoming = match incoming {
            ClientIn::Whole(whole) => {
                let bytes = whole.unwrap_or_default();
                ctx.tries.whole(bytes.len() as u64);
                let retry = ctx.route.policy.retry.as_ref();
                if let Some(r) = retry {
                    r.budget.deposit();
                }
                let replay = retry.filter(|r| {
                    is_idempotent(&parts.method, &parts.headers)
                        && bytes.len() as u64 <= r.cfg.buffer.0
                });
                return match replay {
                    Some(r) => retry_loop(ctx, r, parts, bytes, None, None).await,
                    None => {
                        try_once(ctx, parts, Body::full(bytes), None, None, &mut Tried::new()).await
                    }
                };
            }
            streamed => streamed,
        };
        let fault = Arc::new(FaultCell::new(ctx.spare.identity(), ctx.body_idle));
        ctx.tries.body(&fault);
        // What an HTTP/2 try may keep of a streamed body to send it again should the upstream
        // refuse it unprocessed (`body::Replay`): as much as `retry` would buffer, if the route
        // retries; else as much as the lean server reads whole.
        let cap = ctx.route.policy.retry.as_ref().map_or(REPLAY_CAP, |r| {
            usize::try_from(r.cfg.buffer.0).unwrap_or(usize::MAX)
        });
        let body = ClientBody::new(incoming, fault.clone()).replayable_up_to(cap);
        let retry = match &ctx.route.policy.retry {
            Some(r) if is_idempotent(&parts.method, &parts.headers) => r,
            other => {
                if let Some(r) = other {
                    r.budget.deposit();
                }
                return try_once(
                    ctx,
                    parts,
                    Body::Client(body),
                    None,
                    Some(&fault),
                    &mut Tried::new(),
                )
                .await;
            }
        };
        retry.budget.deposit();
        let buffered = match ctx.deadline {
            Some(d) => tokio::time::timeout_at(d, body.buffer(retry.cfg.buffer.0 as usize))
                .await
                .unwrap_or_else(|_| Err(BodyDeadline.into())),
            None => body.buffer(retry.cfg.buffer.0 as usize).await,
        };
        match buffered {
            Ok(Buffered::Replayable(b, t)) => {
                retry_loop(ctx, retry, parts, b, t, Some(&fault)).await
            }
            Ok(Buffered::Streaming(body)) => {
                try_once(ctx, parts, body, None, Some(&fault), &mut Tried::new()).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "client request body failed");
                client_fault_answer(fault.get().unwrap_or(ClientFault::Late))
            }
        }
    }
}

/// The request's head while its tries run. When the request is done with it, its header map,
/// emptied, is kept for the next answer read on this thread (`spare`).
struct Spent<'a>(&'a mut Parts);

impl Drop for Spent<'_> {
    fn drop(&mut self) {
        spare::keep(std::mem::take(&mut self.0.headers));
    }
}

/// The request deadline passed while the client was still sending its body.
#[derive(Debug, thiserror::Error)]
#[error("the request deadline passed while the request body was being received")]
pub(super) struct BodyDeadline;

/// Tries the request of head `parts` and (buffered) body `body` as the route's retry policy
/// allows. Every try sends the same head (each try's own edits undone, see [`try_once`]); the
/// body is shared, not copied, and ends with the request's `trailers` when it had some.
pub(super) async fn retry_loop(
    ctx: &RequestCtx<'_>,
    retry: &RouteRetry,
    parts: &mut Parts,
    body: Bytes,
    trailers: Option<Box<HeaderMap>>,
    fault: Option<&FaultCell>,
) -> Response<Body> {
    let mut avoid = None;
    let mut attempt = 1;
    // The next try's leave from the breaker, once a retry has taken it (the first try asks
    // for its own).
    let mut leave = None;
    loop {
        let mut tried = Tried::new();
        let replay = match &trailers {
            None => Body::full(body.clone()),
            Some(t) => Body::with_trailers(body.clone(), Some((**t).clone())),
        };
        let mut rsp = try_with(ctx, leave.as_mut(), parts, replay, avoid, fault, &mut tried).await;
        if attempt >= retry.cfg.attempts || !retry.on.should_retry(&tried.outcome) {
            return rsp;
        }
        // `retry-after` is read below.
        whole_headers(&mut rsp);
        let remaining = match ctx.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => MAX_WAIT_WITHOUT_DEADLINE,
        };
        let asked = parse_retry_after(rsp.headers(), SystemTime::now());
        let Some(wait) = wait_before_retry(retry.backoff.random_delay(attempt), asked, remaining)
        else {
            return rsp;
        };
        // The breaker is asked while the last try's answer is still in hand: one that refuses
        // the retry (open, or half-open with every probe out) ends the retries as a spent
        // budget does, and the answer the upstream gave says more than rampart's refusal would.
        // Its leave is given back at once (unused, it counts for nothing): held through the
        // wait, a half-open breaker's probe place would be taken with no probe in flight, and
        // other requests refused `circuit_open` meanwhile.
        if admit(ctx).is_err() {
            ctx.route.metrics.retry_circuit_open.inc();
            return rsp;
        }
        if !retry.budget.try_withdraw() {
            ctx.route.metrics.retry_budget_exhausted.inc();
            return rsp;
        }
        avoid = tried.used;
        attempt += 1;
        // The wait, the answer in hand read into memory meanwhile (boxed: no answer is then
        // held in every request's future, see [`run`]).
        let kept = Box::pin(wait_keeping(rsp, wait)).await;
        // The retry's leave, taken as it goes: a breaker that refuses it now (it tripped, or
        // its probes were taken, during the wait) leaves the answer kept the request's, or,
        // without one, the breaker's refusal.
        let permit = match admit(ctx) {
            Ok(p) => p,
            Err(refusal) => {
                ctx.route.metrics.retry_circuit_open.inc();
                return kept.unwrap_or(*refusal);
            }
        };
        leave = Some(permit);
        drop(kept);
        // Counted as it goes: a client that leaves during the wait takes its retry with it
        // (the budget keeps the share it granted, as for a retry sent).
        ctx.route.metrics.retries.inc();
    }
}

/// The most of a retried try's answer [`wait_keeping`] keeps in memory through the retry's
/// wait.
const KEEP_THROUGH_WAIT: usize = 64 * 1024;

/// Waits `wait` before a retry, and returns the last try's answer `rsp`, kept to be the
/// request's should the breaker refuse the retry when it goes. An upstream's answer (teed or
/// not) is read into memory meanwhile, at most [`KEEP_THROUGH_WAIT`] bytes and within the
/// wait, so that its connection or HTTP/2 stream is let go now rather than held through the
/// wait; one longer, slower or broken is let go unread (`None`: the retry goes, or the
/// breaker's refusal answers). An answer already in memory (rampart's own) is kept as it is.
async fn wait_keeping(rsp: Response<Body>, wait: Duration) -> Option<Response<Body>> {
    use http_body_util::BodyExt as _;
    let until = Instant::now() + wait;
    let kept = if rsp.body().counts_sent() {
        let (head, body) = rsp.into_parts();
        let read = http_body_util::Limited::new(body, KEEP_THROUGH_WAIT).collect();
        match tokio::time::timeout_at(until, read).await {
            Ok(Ok(whole)) => {
                let trailers = whole.trailers().cloned();
                let body = Body::with_trailers(whole.to_bytes(), trailers);
                Some(Response::from_parts(head, body))
            }
            _ => None,
        }
    } else {
        Some(rsp)
    };
    tokio::time::sleep_until(until).await;
    kept
}

/// Which deadline bounds a try (and, as the error of one that passed, whose fault it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bound {
    PerTry(Duration),
    Request,
    /// The request's deadline passed while rampart waited for the client's body bytes.
    Client,
}

/// Waits for the answer to a try that streams the client's body (`sent`), begun at `started`
/// with the client's waits at `waited0` (see the [`FaultCell`]), under `bound`. A per-try
/// deadline bounds the upstream's time: when it passes, it moves on by the client's waits
/// since the try began (never past the request's `deadline`). The request's deadline passing
/// while rampart waits for the client is [`Bound::Client`].
async fn uploading_within<T>(
    mut sent: std::pin::Pin<&mut impl Future<Output = T>>,
    (mut at, mut bound): (Instant, Bound),
    deadline: Option<Instant>,
    cell: &FaultCell,
    started: Instant,
    waited0: Duration,
) -> Result<T, Bound> {
    loop {
        if let Ok(answer) = tokio::time::timeout_at(at, sent.as_mut()).await {
            return Ok(answer);
        }
        let Bound::PerTry(limit) = bound else {
            return Err(match cell.awaiting_client() {
                true => Bound::Client,
                false => bound,
            });
        };
        let now = Instant::now();
        let due = started + limit + cell.waited(now).saturating_sub(waited0);
        if due <= now {
            // The upstream's own time (its answer, or rampart waiting to write to it) used up
            // the limit.
            return Err(bound);
        }
        match deadline {
            Some(d) if d <= due => (at, bound) = (d, Bound::Request),
            _ => at = due,
        }
    }
}

/// Steps 7–8: one try of the request of head `parts` and body `body` against one endpoint,
/// under the earlier of its deadlines. The try may add `traceparent` (for its span) to `parts`;
/// a request without `host` is sent with this endpoint's (by the writer, not in `parts`), so a
/// retry to another endpoint names its own. Returns the answer; how the try ended, and where
/// it went, are left in `tried`. (Not an `async fn`, so its arguments, the body among them, are
/// not kept twice in every request's future: see [`run`].)
pub(super) fn try_once<'a>(
    ctx: &'a RequestCtx<'a>,
    parts: &'a mut Parts,
    body: Body,
    avoid: Option<SocketAddr>,
    fault: Option<&'a FaultCell>,
    tried: &'a mut Tried,
) -> impl Future<Output = Response<Body>> + 'a {
    try_with(ctx, None, parts, body, avoid, fault, tried)
}

/// [`try_once`] with its leave from the route's breaker `given` already, when it is (a retry's,
/// taken after its wait: see [`retry_loop`]; the permit is taken from its place, `None` there
/// when the route has no breaker), or asked for as it starts. (By reference: a permit in every
/// request's future would grow it, see [`run`].)
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see `run`
fn try_with<'a>(
    ctx: &'a RequestCtx<'a>,
    given: Option<&'a mut Option<BreakerPermit>>,
    parts: &'a mut Parts,
    body: Body,
    avoid: Option<SocketAddr>,
    fault: Option<&'a FaultCell>,
    tried: &'a mut Tried,
) -> impl Future<Output = Response<Body>> + 'a {
    async move {
        let up = &ctx.route.upstream;
        // 7. Circuit breaker: an open breaker answers at once, without touching the upstream.
        let permit = match given.map_or_else(|| admit(ctx), |p| Ok(p.take())) {
            Ok(p) => p,
            Err(rsp) => {
                *tried = Tried {
                    outcome: Outcome::Cancelled,
                    used: None,
                };
                return *rsp;
            }
        };
        // One reading of the time for the pick and the try's start.
        let now = Instant::now();
        if ctx.deadline.is_some_and(|d| d <= now) {
            // The request's time is up before this try could go (a gRPC call whose own deadline
            // had passed, `grpc-timeout: 0n`): no try, no verdict on the upstream.
            if let Some(p) = permit {
                p.record(Outcome::Cancelled, Duration::ZERO);
            }
            ctx.route.metrics.timeout_request.inc();
            *tried = Tried {
                outcome: Outcome::Cancelled,
                used: None,
            };
            let msg = "the request's deadline passed before a try could be sent";
            return answer(Reason::Timeout, msg, None);
        }
        let Some(ep) = up.pick(avoid, now) else {
            if let Some(p) = permit {
                p.record(Outcome::ConnectError, Duration::ZERO);
            }
            let msg = up.no_endpoint_message();
            *tried = Tried {
                outcome: Outcome::ConnectError,
                used: None,
            };
            return answer(Reason::UpstreamUnavailable, &msg, None);
        };
        let per_try = ctx.route.policy.per_try.as_ref().map(|p| {
            let limit = per_try_timeout(p, &up.latency);
            (now + limit, Bound::PerTry(limit))
        });
        let bound = match (per_try, ctx.deadline) {
            (Some((t, b)), Some(d)) if t < d => Some((t, b)),
            (_, Some(d)) => Some((d, Bound::Request)),
            (p, None) => p,
        };
        if ctx.grpc {
            // The upstream learns the try's deadline as gRPC states one, so it stops the call's
            // work when rampart stops waiting for it (the client's own `grpc-timeout` is the
            // request deadline's part of it, and a try may have less left).
            if let Some((at, _)) = bound {
                let left = at.saturating_duration_since(now);
                parts
                    .headers
                    .insert(grpc::GRPC_TIMEOUT, grpc::timeout_value(left));
            } else if grpc::malformed_timeout(&parts.headers) {
                parts.headers.remove(grpc::GRPC_TIMEOUT);
            }
        }
        let mut record = TryRecord::start(ctx, &ep, permit, parts, now, fault);
        // The endpoint's in-flight count (p2c's load), for the length of the try.
        let _load = ep.health.start();
        // Set while the try waits in rampart before its request is sent (`pool::WAIT_*`).
        let waiting = std::sync::atomic::AtomicU8::new(pool::WAIT_NONE);
        // What the writer adds to the head: a `host` naming this endpoint if the request has none.
        let added = forward::Added {
            deadline: ctx.deadline.as_ref(),
            waiting: Some(&waiting),
            trailers: ctx.sends_trailers,
            idle_ms: ctx.route.policy.idle_ms,
            ..ctx.peer.added(ep.authority.as_str(), ctx.request_id)
        };
        // Pinned here, once, for whichever wait below (a future that took it by value would
        // hold it a second time, and every request's future would grow by it).
        let sent = std::pin::pin!(ep.pool.send(ep.addr, parts, &added, body));
        let result = match (bound, fault) {
            (None, _) => Ok(sent.await),
            (Some((at, b)), None) => tokio::time::timeout_at(at, sent).await.map_err(|_| b),
            (Some(bound), Some(cell)) => {
                let waited0 = record.upload.map_or(Duration::ZERO, |(_, w)| w);
                uploading_within(sent, bound, ctx.deadline, cell, now, waited0).await
            }
        };
        let used = Some(ep.addr);
        match result {
            Ok(Ok(mut rsp)) => {
                let outcome = Outcome::Status(match ctx.grpc {
                    false => rsp.status().as_u16(),
                    true => grpc::answer_status(rsp.status(), rsp.headers()),
                });
                if ctx.grpc {
                    // A gRPC answer that streams: its status comes in the trailers. One whose
                    // head carries `grpc-status` (Trailers-Only, its stream ended by an empty
                    // DATA frame rather than by the HEADERS frame) has given its status
                    // already: the head is the try's verdict, with no trailers to wait for.
                    let trails = outcome == Outcome::Status(200)
                        && !rsp.headers().contains_key(grpc::GRPC_STATUS);
                    if let Some(stream) = rsp.body_mut().streaming_h2() {
                        stream.grpc = true;
                        if trails {
                            stream.trailed = Some(record.trail(&ep));
                        }
                    }
                } else if let Outcome::Status(code @ 200..=399) = outcome {
                    // A plain answer whose body streams: its try succeeds only if the body ends
                    // whole (an upstream that drops its connection mid-body fails the try). Only a
                    // success waits: a failing status is the try's verdict already, and may be
                    // retried, which drops this body.
                    if let Some(slot) = rsp.body_mut().trail() {
                        *slot = Some(record.trail(&ep).plain(code));
                    }
                }
                record.finish(outcome);
                if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // Only an upgrade request's try takes a 101 (`upgrade.rs`): the client gets
                    // the protocols the upstream switched to, and nothing else of its connection's.
                    let protocols = rsp.headers().get(http::header::UPGRADE).cloned();
                    forward::strip_hop_by_hop(rsp.headers_mut());
                    if let Some(p) = protocols {
                        forward::keep_upgrade(rsp.headers_mut(), p);
                    }
                } else {
                    forward::strip_hop_by_hop(rsp.headers_mut());
                }
                // The upstream's version was its connection's (HTTP/1.0, or HTTP/2): the client's
                // is rampart's to write (RFC 9110 §6.2), and both servers frame for the client's
                // version from this one (chunked to an HTTP/1.1 client for a body of no length;
                // to an HTTP/1.0 client, they write HTTP/1.0 and close-delimit it).
                *rsp.version_mut() = http::Version::HTTP_11;
                *tried = Tried { outcome, used };
                rsp
            }
            Ok(Err(SendError::Reset(UpstreamError::Idle(limit)))) => {
                // The request went whole and the upstream sent nothing of an answer for
                // `timeout.idle`: a timeout, as a per-try one is (retried on `timeout`), its
                // connection closed (an HTTP/2 stream reset).
                record.finish(Outcome::Timeout);
                ctx.route.metrics.timeout_idle.inc();
                tracing::debug!(
                    tenant = ctx.tenant.as_str(), route = %ctx.route.name, upstream = %up.name,
                    endpoint = %ep.addr, ?limit, "upstream try idle past timeout.idle"
                );
                *tried = Tried {
                    outcome: Outcome::Timeout,
                    used,
                };
                let msg = format!(
                    "no answer from upstream {} ({}): it sent nothing for {:?} (timeout.idle) after the request",
                    up.name, ep.addr, limit
                );
                answer(Reason::Timeout, &msg, None)
            }
            Ok(Err(e)) => {
                if let Some(f) = fault.and_then(FaultCell::get) {
                    record.finish(Outcome::ClientFault);
                    *tried = Tried {
                        outcome: Outcome::ClientFault,
                        used,
                    };
                    return client_fault_answer(f);
                }
                if e.connect_timed_out() {
                    ctx.route.metrics.timeout_connect.inc();
                }
                let outcome = match &e {
                    SendError::Connect { .. } | SendError::Handshake { .. } => {
                        up.connect_failed(&ep);
                        Outcome::ConnectError
                    }
                    SendError::Reset(_) => Outcome::Reset,
                };
                record.finish(outcome);
                tracing::debug!(
                    tenant = ctx.tenant.as_str(), route = %ctx.route.name, upstream = %up.name,
                    endpoint = %ep.addr, error = ?e, "upstream try failed"
                );
                let (name, addr) = (&up.name, ep.addr);
                let msg = match (&e, outcome) {
                    // What the handshake said: why the server's certificate was refused, the
                    // server's alert by name (a client certificate it wants), an ALPN
                    // disagreement (`tls::words::refusal`).
                    (SendError::Handshake { source, .. }, _) => {
                        format!("TLS handshake failed with upstream {name} ({addr}): {source}")
                    }
                    (_, Outcome::ConnectError) => {
                        format!("cannot connect to upstream {name} ({addr})")
                    }
                    // The upstream answered, with a head no HTTP/1.1 reader takes (or one over
                    // the answer head limit): say what was wrong with it, not that it was lost.
                    (SendError::Reset(UpstreamError::Malformed(m)), _) => {
                        format!("malformed answer from upstream {name} ({addr}): {}", m.0)
                    }
                    // An HTTP/2 upstream that refused the stream (still, after it went again):
                    // nothing was lost, it did not take the request.
                    (SendError::Reset(r), _) if r.refused() => {
                        crate::proxy::pool::h2_message(r, name, addr).unwrap_or_else(|| {
                            format!("upstream {name} ({addr}) refused the stream")
                        })
                    }
                    // An HTTP/2 upstream's stream reset, connection closed with an error or
                    // refused as malformed, or one that does not speak HTTP/2: said as such.
                    (SendError::Reset(r), _) => match crate::proxy::pool::h2_message(r, name, addr)
                    {
                        Some(msg) => msg,
                        None => format!("connection lost to upstream {name} ({addr})"),
                    },
                    _ => format!("connection lost to upstream {name} ({addr})"),
                };
                *tried = Tried { outcome, used };
                answer(Reason::UpstreamUnavailable, &msg, None)
            }
            Err(Bound::Client) => {
                // The request's time ran out while rampart waited for the client's body.
                record.finish(Outcome::ClientFault);
                tracing::debug!(
                    tenant = ctx.tenant.as_str(), route = %ctx.route.name, upstream = %up.name,
                    endpoint = %ep.addr, "request deadline passed while the body was arriving"
                );
                if let Some(cell) = fault {
                    cell.set(ClientFault::Late);
                }
                *tried = Tried {
                    outcome: Outcome::ClientFault,
                    used,
                };
                client_fault_answer(ClientFault::Late)
            }
            Err(bound) => {
                let (name, addr) = (&up.name, ep.addr);
                let limit = match bound {
                    Bound::PerTry(limit) => {
                        ctx.route.metrics.timeout_per_try.inc();
                        limit
                    }
                    Bound::Request | Bound::Client => {
                        ctx.route.metrics.timeout_request.inc();
                        ctx.limit.unwrap_or_default()
                    }
                };
                // What the try was waiting for when its time ran out. In rampart, for a place on
                // the endpoint's connections (a pooled connection, a stream): the request never
                // left, so it is no try and no verdict on the upstream (`Outcome::Unsent`),
                // counted apart. Envoy keeps such requests apart alike: a request waiting in
                // its connection pool is pending (`upstream_rq_pending_*`), not yet an upstream
                // request. While a connection to the endpoint was being made, it was not sent
                // either, but the endpoint was tried: it took no connection in the try's time
                // (a silent or overloaded host), which is the upstream's, as a connect error
                // is; uncounted, a host that drops SYNs would never be judged at all under a
                // `per_try` shorter than `connect_timeout` (whose connect the try's end cuts).
                let (outcome, msg) = match waiting.load(std::sync::atomic::Ordering::Relaxed) {
                    pool::WAIT_POOL => {
                        up.metrics.unsent(Unsent::PoolFull);
                        let msg = format!(
                            "no connection to upstream {name} ({addr}) free within {limit:?} (its max_connections in use); the request was not sent"
                        );
                        (Outcome::Unsent, msg)
                    }
                    pool::WAIT_STREAM => {
                        up.metrics.unsent(Unsent::StreamSlot);
                        let msg = format!(
                            "no stream free on the HTTP/2 connection to upstream {name} ({addr}) within {limit:?} (the upstream's limit of concurrent streams reached); the request was not sent"
                        );
                        (Outcome::Unsent, msg)
                    }
                    pool::WAIT_CONNECT => {
                        let kind = match ep.pool.is_http2() {
                            true => "HTTP/2 connection",
                            false => "connection",
                        };
                        let msg = format!(
                            "the {kind} to upstream {name} ({addr}) was still being made after {limit:?}; the request was not sent"
                        );
                        (Outcome::Timeout, msg)
                    }
                    _ => {
                        let msg =
                            format!("no answer from upstream {name} ({addr}) within {limit:?}");
                        (Outcome::Timeout, msg)
                    }
                };
                record.finish(outcome);
                tracing::debug!(
                    tenant = ctx.tenant.as_str(), route = %ctx.route.name, upstream = %up.name,
                    endpoint = %ep.addr, bound = ?bound, ?outcome, "upstream try timed out"
                );
                *tried = Tried { outcome, used };
                answer(Reason::Timeout, &msg, None)
            }
        }
    }
}

/// Asks the route's breaker (if any) to admit one try, or CONNECT, of this request; an open
/// breaker gives the `circuit_open` answer, with the wait until it half-opens.
/// (The refusal is boxed: it is the cold path, and keeps the admitted result small.)
pub fn admit(ctx: &RequestCtx<'_>) -> Result<Option<BreakerPermit>, Box<Response<Body>>> {
    let Some(b) = &ctx.route.breaker else {
        return Ok(None);
    };
    b.admit(ctx.tenant.as_str(), ctx.labels)
        .map(Some)
        .map_err(|open| {
            let msg = format!("upstream {}: {open}", ctx.route.upstream.name);
            Box::new(answer(Reason::CircuitOpen, &msg, Some(open.retry_after)))
        })
}

/// The answer for a client's broken or stalled upload.
pub(super) fn client_fault_answer(f: ClientFault) -> Response<Body> {
    match f {
        ClientFault::Malformed => answer(
            Reason::BadRequest,
            "the request body is malformed (bad chunking, length mismatch, reset, or a trailer field that is not well formed)",
            None,
        ),
        ClientFault::Stalled => answer(
            Reason::ClientTimeout,
            "the request body stalled: no bytes within body_idle_timeout",
            None,
        ),
        ClientFault::Late => answer(
            Reason::ClientTimeout,
            "the request's deadline passed while its body was still arriving",
            None,
        ),
    }
}

// === impl TryRecord ===

/// Records one try exactly once: with its outcome when finished, as cancelled when dropped.
struct TryRecord<'a> {
    ctx: &'a RequestCtx<'a>,
    ep: &'a Endpoint,
    started: Instant,
    outcome: Option<Outcome>,
    /// The breaker's admission of this try; recorded with the outcome (a probe that ends
    /// cancelled is no verdict: its place goes back for another probe).
    permit: Option<BreakerPermit>,
    /// The try's CLIENT span, when the request's trace is sampled.
    span: Option<ClientSpan<'a>>,
    /// The breaker and the endpoint's health wait for the answer's trailers (a gRPC stream):
    /// [`TryRecord::trail`].
    trailed: bool,
    /// For a try that streams the client's body: its cell, and the client's waits counted in
    /// it when the try began (the try's time, as judged for the upstream, leaves out the
    /// waits since).
    upload: Option<(&'a FaultCell, Duration)>,
}

impl<'a> TryRecord<'a> {
    /// Starts recording the try of the request of head `parts`, begun `now`, whose body (if
    /// it streams from the client) reports to `fault`; a sampled trace gets the try's span,
    /// and `parts` the `traceparent` that names it.
    fn start(
        ctx: &'a RequestCtx<'a>,
        ep: &'a Endpoint,
        permit: Option<BreakerPermit>,
        parts: &mut Parts,
        now: Instant,
        fault: Option<&'a FaultCell>,
    ) -> Self {
        let n = ctx.tries.start(ep.addr);
        let span = ctx.trace.as_ref().map(|p| {
            let span = ClientSpan::begin(p.clone(), &parts.method, n, now);
            parts.headers.insert(TRACEPARENT, span.traceparent());
            span
        });
        TryRecord {
            ctx,
            ep,
            started: now,
            outcome: None,
            permit,
            span,
            trailed: false,
            upload: fault.map(|cell| (cell, cell.waited(now))),
        }
    }

    /// The try's time until `now` as the upstream is judged on it: without the waits for the
    /// client's body bytes since the try began (a slow upload is the client's).
    fn judged(&self, now: Instant) -> Duration {
        self.judged_of(now.saturating_duration_since(self.started), now)
    }

    /// [`TryRecord::judged`] of the try's whole time `took`, already worked out, until `now`.
    fn judged_of(&self, took: Duration, now: Instant) -> Duration {
        match self.upload {
            None => took,
            Some((cell, waited0)) => took.saturating_sub(cell.waited(now).saturating_sub(waited0)),
        }
    }

    fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Hands the try's breaker permit, and the telling of its endpoint's health, to the
    /// answer's body, which ends them at its trailers (a gRPC call's answer that streams); the
    /// metrics, the access log and the span keep the head's outcome.
    fn trail(&mut self, ep: &Arc<Endpoint>) -> grpc::Trailed {
        self.trailed = true;
        let took = self.judged(Instant::now());
        grpc::Trailed::new(
            self.ctx.route.upstream.clone(),
            ep.clone(),
            self.permit.take(),
            took,
        )
    }
}

impl Drop for TryRecord<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::Cancelled);
        let ended = Instant::now();
        let took = ended.saturating_duration_since(self.started);
        self.ctx.tries.ended(took, ended);
        // The upstream's observers take its share of the try (the access log and the span
        // keep the whole of it).
        let judged = self.judged_of(took, ended);
        if let Some(p) = self.permit.take() {
            p.record(outcome, judged);
        }
        if let Some(slot) = self.ctx.slot {
            slot.record(outcome, judged);
        }
        if let Some(span) = self.span.take() {
            let ep = self.ep;
            let to = TryTarget {
                upstream: &self.ctx.route.upstream.name,
                endpoint: &ep.label,
                host: ep.host.as_ref(),
                addr: ep.addr,
            };
            span.end(to, outcome, took);
        }
        observe(self.ctx, self.ep, outcome, judged, ended, !self.trailed);
    }
}

/// The outcome hook: tells every observer how one try ended (at `ended`, after `took`); the
/// endpoint's health (outlier detection, balancing) only with `health` (else it is told at the
/// answer's trailers, [`grpc::Trailed`]).
fn observe(
    ctx: &RequestCtx<'_>,
    ep: &Endpoint,
    outcome: Outcome,
    took: Duration,
    ended: Instant,
    health: bool,
) {
    let up = &ctx.route.upstream;
    let code = match outcome {
        Outcome::Status(code) => code,
        // Failed tries count under the status rampart answers for them.
        Outcome::ConnectError | Outcome::Reset => 502,
        Outcome::Timeout => 504,
        Outcome::Cancelled | Outcome::ClientFault => {
            // Not the upstream's doing: kept out of its metrics (SPEC §14).
            up.metrics.abandoned(outcome);
            return;
        }
        // Never sent: no try, no verdict (counted, with what it waited for, where it ended:
        // `rampart_upstream_unsent_total`).
        Outcome::Unsent => return,
    };
    up.metrics.count(code);
    up.metrics.duration.observe(took);
    if health {
        up.try_ended(ep, outcome, took, ended);
    }
    if matches!(ctx.route.policy.per_try, Some(file::PerTry::Auto { .. })) {
        // Only `per_try: auto` reads the estimator; others need not feed it.
        up.latency.record(took);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A try that streams a client's body, under `per_try: 1s` and a 3 s request deadline, its
    /// answer never coming: where it ends, and whose fault it is.
    async fn ends(cell: &FaultCell, start: Instant) -> (Result<(), Bound>, Duration) {
        let bound = (start + S, Bound::PerTry(S));
        let pending = std::pin::pin!(std::future::pending::<()>());
        let got = uploading_within(
            pending,
            bound,
            Some(start + 3 * S),
            cell,
            start,
            Duration::ZERO,
        )
        .await;
        (got, Instant::now() - start)
    }

    /// While rampart waits for the client's bytes, the per-try deadline moves on and the
    /// request's is the client's fault; while it does not, each is the upstream's.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_passing_while_the_client_is_awaited_is_the_clients() {
        let cell = FaultCell::default();
        assert_eq!(
            ends(&cell, Instant::now()).await,
            (Err(Bound::PerTry(S)), S)
        );
        cell.wait_begins();
        assert_eq!(
            ends(&cell, Instant::now()).await,
            (Err(Bound::Client), 3 * S)
        );
    }

    /// The per-try deadline counts the upstream's time: 1 s after the client's body is whole
    /// (2 s of waiting for it), not 1 s after the try began; an answer before it is the answer.
    #[tokio::test(start_paused = true)]
    async fn a_per_try_deadline_moves_on_by_the_clients_waits() {
        let cell = Arc::new(FaultCell::default());
        cell.wait_begins();
        let waiting = cell.clone();
        tokio::spawn(async move {
            tokio::time::sleep(2 * S).await;
            waiting.wait_ends();
        });
        let start = Instant::now();
        let bound = (start + S, Bound::PerTry(S));
        let answer = std::pin::pin!(tokio::time::sleep(2 * S + S / 2));
        let got = uploading_within(answer, bound, None, &cell, start, Duration::ZERO).await;
        assert_eq!((got, Instant::now() - start), (Ok(()), 2 * S + S / 2));
        cell.wait_begins();
        let start = Instant::now();
        let waited0 = cell.waited(start);
        let waiting = cell.clone();
        tokio::spawn(async move {
            tokio::time::sleep(2 * S).await;
            waiting.wait_ends();
        });
        let bound = (start + S, Bound::PerTry(S));
        let pending = std::pin::pin!(std::future::pending::<()>());
        let got = uploading_within(pending, bound, None, &cell, start, waited0).await;
        assert_eq!(
            (got, Instant::now() - start),
            (Err(Bound::PerTry(S)), 3 * S)
        );
    }
}
