//! The request path, top to bottom, in one place.
//!
//! Order, and why:
//! 1. **route** — nothing else can be decided before we know the route and so its policy.
//! 2. **tenant** — every policy below is per tenant; bad or missing ids are refused before
//!    they cost anything.
//! 3. **rate limit** (`policy::rate_limit`) — cheapest refusal first; it sits outside retries
//!    so a retry never spends a tenant's tokens.
//! 4. **load shed** (`policy::load_shed`) — holds a slot for the whole exchange.
//! 5. **request timeout** — bounds everything below: all tries and backoffs.
//! 6. **retry** (`policy::retry`) — each try goes through 7–8 again, with budget and backoff.
//! 7. **circuit breaker** (`policy::circuit_breaker`) — sees every try, so it trips on them.
//! 8. **per-try timeout**, then the upstream try itself.
//!
//! Anyone who changes this order explains why here.

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::Body;
use super::exchange;
use super::forward::Peer;
use super::respond::answer;
use super::route::request_host;
use crate::error::Reason;
use crate::generation::{Generation, ListenerRt};
use crate::metrics::TenantMetrics;
use crate::Shared;

/// Serves one request on listener `lst` of generation `gen`.
pub async fn handle(
    shared: &Shared,
    gen: &Generation,
    lst: &ListenerRt,
    req: Request<Incoming>,
    peer: &Peer,
) -> Response<Body> {
    let started = Instant::now();
    lst.in_flight.inc();
    let _in_flight = InFlightGuard(&lst.in_flight);

    // 1. Route.
    let host = request_host(&req);
    let path = req.uri().path();
    let Some(route) = lst.routes.iter().find(|r| r.matcher.matches(host, path)) else {
        let rsp = answer(Reason::NoRoute, "no route matches this request", None);
        return finish(&lst.unrouted.tenant(&shared.empty_label), rsp, started);
    };

    // 2. Tenant.
    let tenant = match gen.identify.identify(req.headers(), req.uri()) {
        Ok(t) => t,
        Err(reason) => {
            let msg = match reason {
                Reason::TenantRequired => "this route requires a tenant id",
                _ => "tenant id must be 1 to 128 characters of [A-Za-z0-9._:@-]",
            };
            let tm = route.metrics.tenant(&shared.empty_label);
            return finish(&tm, answer(reason, msg, None), started);
        }
    };
    let tm = route.metrics.tenant(&shared.labels.label(tenant.as_str()));

    // 3. Rate limit: refused requests consume from no limit and never reach the upstream.
    let limited = route
        .policy
        .rate_limit
        .as_ref()
        .map(|rl| rl.limiter.check(tenant.as_str()));
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

    // 4. Load shed: (its own issue) takes a slot here, held until the answer is sent.

    // 5–8. Deadlines, tries, the upstream.
    let mut rsp = exchange::run(route, req, peer, lst.tls).await;
    if let Some(decision) = &limited {
        // With `headers: true`, admitted answers say how much is left too.
        decision.write_headers(rsp.headers_mut());
    }
    finish(&tm, rsp, started)
}

/// Counts the answer and its duration under its (route, tenant label).
fn finish(tm: &TenantMetrics, rsp: Response<Body>, started: Instant) -> Response<Body> {
    tm.count(rsp.status().as_u16());
    tm.duration.observe(started.elapsed().as_secs_f64());
    rsp
}

/// Decrements the in-flight gauge when the request's handling ends, however it ends.
struct InFlightGuard<'a>(&'a prometheus::IntGauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
