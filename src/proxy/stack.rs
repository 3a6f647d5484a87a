//! The request path, top to bottom, in one place.
//!
//! Order, and why:
//! 0. **authority** — one authority decides the route and is forwarded; a request naming two
//!    (`host` twice) or none (HTTP/1.1 without `host`) is refused before anything else.
//! 1. **route** — nothing else can be decided before we know the route and so its policy.
//! 2. **tenant** — every policy below is per tenant; bad or missing ids are refused before
//!    they cost anything.
//! 3. **rate limit** (`policy::rate_limit`) — cheapest refusal first; it sits outside retries
//!    so a retry never spends a tenant's tokens.
//!    A CONNECT (outbound listeners only; 405 on inbound) goes through 0–3 like any request,
//!    then becomes a tunnel (`tunnel.rs`) instead of an exchange: it is never forwarded.
//! 4. **load shed** (`policy::load_shed`) — holds a slot for the whole exchange, until the
//!    answer's body ends (its guard rides in [`Guards`]).
//! 5. **request timeout** — a deadline in the [`RequestCtx`]; every try and backoff below is
//!    bounded by it.
//! 6. **retry** (`policy::retry`) — each try goes through 7–8 again, with budget and backoff.
//! 7. **circuit breaker** (`policy::circuit_breaker`) — sees every try, so it trips on them.
//! 8. **per-try timeout**, then the upstream try itself; its outcome is recorded once, by a
//!    guard, for every observer (see `exchange.rs`).
//!
//! Anyone who changes this order explains why here.

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::Body;
use super::conn::ConnActive;
use super::ctx::RequestCtx;
use super::exchange;
use super::forward::{self, Peer};
use super::guard::{GaugeGuard, Guards};
use super::respond::answer;
use super::route::request_host;
use super::shared::Shared;
use super::tunnel;
use crate::config::file::Direction;
use crate::error::Reason;
use crate::generation::{Generation, ListenerRt};
use crate::metrics::TenantMetrics;

/// Serves one request on listener `lst` of generation `gen`.
pub async fn handle(
    shared: &Shared,
    gen: &Generation,
    lst: &ListenerRt,
    req: Request<Incoming>,
    peer: &Peer,
    active: ConnActive,
) -> Response<Body> {
    let started = Instant::now();
    // Held until the answer's body ends (upstream answers) or dropped with a refusal.
    let mut guards = Guards {
        in_flight: Some(GaugeGuard::new(&lst.in_flight)),
        conn: Some(active),
        slot: None,
    };

    // 0. Authority.
    if let Some(msg) = forward::authority_problem(&req) {
        let tm = lst.unrouted.tenant(&shared.empty_label);
        return finish(&tm, answer(Reason::BadRequest, msg, None), started);
    }

    if req.method() == Method::CONNECT && lst.direction == Direction::Inbound {
        let tm = lst.unrouted.tenant(&shared.empty_label);
        let msg = "CONNECT tunnels are served on outbound listeners only";
        return finish(&tm, answer(Reason::MethodNotAllowed, msg, None), started);
    }

    // 1. Route.
    let host = request_host(&req);
    let path = req.uri().path();
    let Some(route) = lst.routes.iter().find(|r| r.matcher.matches(host, path)) else {
        let rsp = answer(Reason::NoRoute, "no route matches this request", None);
        return finish(&lst.unrouted.tenant(&shared.empty_label), rsp, started);
    };

    // 2. Tenant.
    let tenant = match gen.identify.identify_for(
        req.headers(),
        req.uri(),
        peer.cert.as_ref(),
        route.tenant_optional,
    ) {
        Ok(t) => t,
        Err(reason) => {
            let msg = match reason {
                Reason::TenantRequired => "this route requires a tenant id",
                Reason::InvalidToken => "the bearer token failed verification",
                _ => "tenant id must be one value of 1 to 128 characters of [A-Za-z0-9._:@-]",
            };
            let tm = route.metrics.tenant(&shared.empty_label);
            return finish(&tm, answer(reason, msg, None), started);
        }
    };
    let tm = route.metrics.tenant(&shared.labels.label(tenant.as_str()));

    // 3. Rate limit: refused requests consume from no limit and never reach the upstream.
    let limited = route.policy.rate_limit.as_ref().map(|rl| {
        let plan = gen
            .identify
            .plan(&tenant, req.headers(), lst.trust_plan_header);
        rl.limiter.check_plan(tenant.as_str(), plan)
    });
    if let Some(decision) = limited.as_ref().filter(|d| !d.is_admitted()) {
        tm.rate_limited.inc();
        let wait = decision.retry_after();
        let msg = format!(
            "rate limit exceeded for tenant {}; retry in {:?}",
            tenant.as_str(),
            wait
        );
        let mut rsp = answer(Reason::RateLimited, &msg, Some(wait));
        decision.write_headers(rsp.headers_mut());
        return finish(&tm, rsp, started);
    }

    // 4. Load shed: a slot (maybe after a fair wait in the queue), held until the answer's
    //    body ends.
    let mut slot = match &route.policy.load_shed {
        None => None,
        Some(ls) => {
            let priority = ls.priority(req.headers());
            match ls.shedder.acquire(tenant.as_str(), priority).await {
                Ok(slot) => Some(slot),
                Err(shed) => {
                    tm.shed(shed.reason.as_str());
                    let msg = format!("load shed ({}): {shed}", shed.reason.as_str());
                    let rsp = answer(Reason::Shed, &msg, Some(shed.retry_after));
                    return finish(&tm, rsp, started);
                }
            }
        }
    };

    let is_connect = req.method() == Method::CONNECT;
    if is_connect {
        // A tunnel holds its slot for its whole life, with its other guards.
        guards.slot = slot.take();
    }

    // 5–8. Deadline, tries, the upstream.
    let ctx = RequestCtx {
        listener: lst,
        route,
        tenant,
        metrics: tm.clone(),
        deadline: route.policy.request_timeout.map(|t| started + t),
        peer,
        body_idle: lst.body_idle_timeout,
        labels: &shared.labels,
        slot: slot.as_ref(),
    };
    if is_connect {
        // A tunnel, not an exchange; it holds its guards for its whole life.
        let rsp = tunnel::open(&ctx, &shared.clock, req, guards).await;
        return finish(&tm, rsp, started);
    }
    let mut rsp = exchange::run(&ctx, req).await;
    guards.slot = slot;
    if let Some(decision) = &limited {
        // With `headers: true`, admitted answers say how much is left too.
        decision.write_headers(rsp.headers_mut());
    }
    rsp.body_mut().hold(guards);
    finish(&tm, rsp, started)
}

/// Counts the answer and its duration under its (route, tenant label).
fn finish(tm: &Arc<TenantMetrics>, rsp: Response<Body>, started: Instant) -> Response<Body> {
    tm.count(rsp.status().as_u16());
    tm.duration.observe(started.elapsed().as_secs_f64());
    rsp
}
