//! The exchange with the upstream: request deadline, retry loop, per-try deadline, one try.
//!
//! Steps 5–8 of the request path (see `stack.rs`). The request deadline wraps everything
//! below it, so no retry or backoff can outlive it. A request is retried only when its policy
//! has a `retry` section, its method is idempotent (or it carries `Idempotency-Key`), its body
//! fits `retry.buffer`, the outcome is listed in `retry.on`, the wait fits before the deadline
//! and the route's retry budget allows it. Each retry prefers another endpoint.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{self, Body, Buffered};
use super::forward::{self, Peer};
use super::pool::SendError;
use super::respond::answer;
use crate::config::file;
use crate::error::Reason;
use crate::generation::{RetryRt, RouteRt};
use crate::policy::retry::{is_idempotent, parse_retry_after, wait_before_retry, Outcome};
use crate::policy::timeout::per_try_timeout;

/// Longest wait before a retry when the policy sets no request deadline.
const MAX_WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(30);

/// Steps 5–8 for one request that has passed the route's admission policies.
pub async fn run(
    route: &RouteRt,
    mut req: Request<Incoming>,
    peer: &Peer,
    tls: bool,
) -> Response<Body> {
    forward::prepare_request(&mut req, peer, tls);
    let Some(limit) = route.policy.request_timeout else {
        return tries(route, req, None).await;
    };
    let deadline = Instant::now() + limit;
    match tokio::time::timeout_at(deadline, tries(route, req, Some(deadline))).await {
        Ok(rsp) => rsp,
        Err(_) => {
            route.metrics.timeout_request.inc();
            let msg = format!(
                "no answer from upstream {} within {:?}",
                route.upstream.name, limit
            );
            answer(Reason::Timeout, &msg, None)
        }
    }
}

/// Step 6: the first try and any retries.
async fn tries(
    route: &RouteRt,
    req: Request<Incoming>,
    deadline: Option<Instant>,
) -> Response<Body> {
    let Some(retry) = &route.policy.retry else {
        return try_once(route, req.map(Body::from), None).await.1;
    };
    retry.budget.deposit();
    let (parts, incoming) = req.into_parts();
    if !is_idempotent(&parts.method, &parts.headers) {
        return try_once(
            route,
            Request::from_parts(parts, Body::from(incoming)),
            None,
        )
        .await
        .1;
    }
    let bytes = match body::buffer(incoming, retry.cfg.buffer.0 as usize).await {
        Ok(Buffered::Replayable(b)) => b,
        Ok(Buffered::Streaming(body)) => {
            return try_once(route, Request::from_parts(parts, body), None)
                .await
                .1;
        }
        Err(e) => {
            tracing::debug!(error = %e, "client request body failed");
            let msg = "the request body could not be read";
            return answer(Reason::UpstreamUnavailable, msg, None);
        }
    };
    retry_loop(route, retry, &parts, bytes, deadline).await
}

async fn retry_loop(
    route: &RouteRt,
    retry: &RetryRt,
    parts: &Parts,
    body: Bytes,
    deadline: Option<Instant>,
) -> Response<Body> {
    let mut avoid = None;
    let mut attempt = 1;
    loop {
        let (outcome, rsp, used) = try_once(route, copy_request(parts, body.clone()), avoid).await;
        if attempt >= retry.cfg.attempts || !retry.on.should_retry(&outcome) {
            return rsp;
        }
        let remaining = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => MAX_WAIT_WITHOUT_DEADLINE,
        };
        let asked = parse_retry_after(rsp.headers(), SystemTime::now());
        let Some(wait) = wait_before_retry(retry.backoff.random_delay(attempt), asked, remaining)
        else {
            return rsp;
        };
        if !retry.budget.try_withdraw() {
            route.metrics.retry_budget_exhausted.inc();
            return rsp;
        }
        route.metrics.retries.inc();
        drop(rsp);
        avoid = used;
        attempt += 1;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn copy_request(parts: &Parts, body: Bytes) -> Request<Body> {
    let mut req = Request::new(Body::full(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Steps 7–8: one try against one endpoint, under the per-try deadline.
///
/// Returns what happened, the answer to give if this try is the last, and the endpoint used.
async fn try_once(
    route: &RouteRt,
    mut req: Request<Body>,
    avoid: Option<SocketAddr>,
) -> (Outcome, Response<Body>, Option<SocketAddr>) {
    let up = &route.upstream;
    let Some(ep) = up.pick(avoid) else {
        let msg = format!("upstream {} has no healthy endpoint", up.name);
        return (
            Outcome::ConnectError,
            answer(Reason::UpstreamUnavailable, &msg, None),
            None,
        );
    };
    forward::ensure_host(&mut req, &ep);
    let per_try = route
        .policy
        .per_try
        .as_ref()
        .map(|p| per_try_timeout(p, &up.latency));
    let t0 = Instant::now();
    let sent = ep.pool.send(ep.addr, req);
    let result = match per_try {
        Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
        None => Ok(sent.await),
    };
    let took = t0.elapsed();
    if matches!(route.policy.per_try, Some(file::PerTry::Auto { .. })) {
        // Only `per_try: auto` reads the estimator; others need not feed it.
        up.latency.record(took);
    }
    up.metrics.duration.observe(took.as_secs_f64());
    let used = Some(ep.addr);
    match result {
        Ok(Ok(mut rsp)) => {
            let code = rsp.status().as_u16();
            up.metrics.count(code);
            forward::strip_hop_by_hop(rsp.headers_mut());
            (Outcome::Status(code), rsp, used)
        }
        Ok(Err(e)) => {
            up.metrics.count(502);
            let connect = matches!(e, SendError::Connect { .. });
            if let SendError::Connect { timed_out, .. } = e {
                up.connect_failed(&ep);
                if timed_out {
                    route.metrics.timeout_connect.inc();
                }
            }
            tracing::debug!(upstream = %up.name, endpoint = %ep.addr, error = ?e, "try failed");
            let (outcome, what) = if connect {
                (Outcome::ConnectError, "cannot connect to")
            } else {
                (Outcome::Reset, "connection lost to")
            };
            let msg = format!("{what} upstream {} ({})", up.name, ep.addr);
            (
                outcome,
                answer(Reason::UpstreamUnavailable, &msg, None),
                used,
            )
        }
        Err(limit) => {
            up.metrics.count(504);
            route.metrics.timeout_per_try.inc();
            let msg = format!(
                "no answer from upstream {} ({}) within {:?}",
                up.name, ep.addr, limit
            );
            (Outcome::Timeout, answer(Reason::Timeout, &msg, None), used)
        }
    }
}
