//! The request path, top to bottom, in one place.
//!
//! Order, and why:
//! 0. **authority** — one authority decides the route and is forwarded; a request naming two
//!    (`host` twice) or none (HTTP/1.1 without `host`) is refused before anything else.
//!    0b. **path** — normalised (`normalize.rs`: `%` escapes of unreserved characters
//!    decoded, bytes outside `pchar` escaped, `//` merged if the listener's `merge_slashes`,
//!    dot segments removed) before anything reads it, so the route is
//!    chosen on, the access log records and the upstream is sent one and the same path; one
//!    that climbs above the root or has a broken `%` escape is refused 400, one that escaping
//!    makes longer than a target may be 414.
//! 1. **route** — nothing else can be decided before we know the route and so its policy.
//!    1a. **https target** — on an outbound listener, a target that asks for `https` is
//!    refused (421 `https_downgrade`) when the route's upstream has no `tls`: the first thing
//!    the route tells, and nothing below may send it in clear.
//! 2. **tenant** — every policy below is per tenant; bad or missing ids are refused before
//!    they cost anything. A token of a key its JWKS lacks waits for that JWKS's early read
//!    (rate-limited, bounded) before it is refused: its issuer may have just rotated it in.
//! 3. **rate limit** (`policy::rate_limit`) — cheapest refusal first; it sits outside retries
//!    so a retry never spends a tenant's tokens.
//!    Then the identity lines the upstream reads are made to say what rampart used
//!    (`Identify::vouch`: a verified token's tenant and plan, no plan header an untrusting
//!    listener ignored): after the rate limit, which reads a trusted plan header as sent and
//!    whose refusals never go upstream; before anything below forwards the request.
//!    A CONNECT (outbound listeners only; 405 on inbound) goes through 0–3 like any request,
//!    then becomes a tunnel (`tunnel.rs`) instead of an exchange: it is never forwarded.
//!    An HTTP/1.1 `Upgrade` (WebSocket) goes through 0–4a, then makes one try (`upgrade.rs`):
//!    a 101 joins the two connections as a tunnel, and ends the request's guards (its
//!    load-shed slot among them) at the 101.
//! 4. **load shed** (`policy::load_shed`) — holds a slot for the whole exchange, until the
//!    answer's body ends (its guard rides in [`Guards`]).
//!
//! 4a. **fault injection** (`policy::fault`) — after admission, so a drill spends tokens and
//! slots like real traffic and a refused request is never also faulted; before the exchange,
//! so an abort never reaches the upstream. The deadline counts from arrival, so an injected
//! delay eats into the request timeout as a slow network would.
//!
//! 4b. **idempotency** (`policy::idempotency`, `idempotent.rs`) — after fault injection, so an
//! injected abort never claims a key; around the whole exchange, so a key is claimed once
//! however many tries the request takes, and its answer is the final one.
//!
//! 5. **request timeout** — a deadline in the [`RequestCtx`]; every try and backoff below is
//!    bounded by it.
//! 6. **retry** (`policy::retry`) — each try goes through 7–8 again, with budget and backoff.
//! 7. **circuit breaker** (`policy::circuit_breaker`) — sees every try, so it trips on them.
//! 8. **per-try timeout**, then the upstream try itself; its outcome is recorded once, by a
//!    guard, for every observer (see `exchange.rs`).
//! 9. **fallback** (`policy::fallback`, `degrade.rs`) — wraps the answer of 5–8 (and a shed
//!    refusal at 4): it must see the final refusal (after every retry) to replace it, and the
//!    final 2xx to keep it.
//!
//! Anyone who changes this order explains why here.

use std::future::Future;
use std::sync::Arc;

use http::header::{ALLOW, TRAILER, TRANSFER_ENCODING, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, Version};
use tokio::time::Instant;

use super::access_log::TryStats;
use super::body::{whole_headers, Body, ClientIn};
use super::conn::ConnActive;
use super::ctx::{RequestCtx, TryLog};
use super::degrade;
use super::exchange;
use super::finish::{self, Finish};
use super::forward::{self, Peer, Sent};
use super::grpc;
use super::guard::Guards;
use super::h1::parse::Refusal;
use super::idempotent;
use super::normalize;
use super::respond::{self, answer};
use super::route::request_host;
use super::shared::Shared;
use super::tunnel;
use super::upgrade;
use crate::config::file::Direction;
use crate::error::Reason;
use crate::generation::{Generation, ListenerRt};
use crate::metrics::TenantMetrics;
use crate::policy::fault::FAULT_HEADER;
use crate::policy::load_shed::Shed;

/// Answers a request head that could not be read (`h1::parse::Refusal`): 400 `bad_request`,
/// 414 `uri_too_long` or 431 `head_too_large`, counted and logged as unrouted with an id, as
/// every answer rampart makes is. `req` holds what its request line says, as far as it was
/// read (and its header fields, when they were: see [`refuse_unrouted`]).
/// (An HTTP/2 request of more fields than [`MAX_HEADERS`](super::h1::parse::MAX_HEADERS) lines,
/// or longer than `max_header_bytes` as HTTP/1.1 would carry it, is refused here too,
/// `TooLarge`, whole, and one with a field value padded with a space or a
/// tab, `PaddedValue`.)
pub fn refuse_head(
    shared: &Shared,
    lst: &ListenerRt,
    req: Request<()>,
    refusal: Refusal,
    active: ConnActive,
) -> Response<Body> {
    let (reason, msg) = match refusal {
        Refusal::Malformed => (Reason::BadRequest, "the request head is not valid HTTP/1.1"),
        Refusal::TooLarge => (
            Reason::HeadTooLarge,
            "the request head is longer than runtime.max_header_bytes or has more than 100 header lines",
        ),
        Refusal::UriTooLong => (
            Reason::UriTooLong,
            "the request line is longer than runtime.max_header_bytes, or its target longer than 64 KiB",
        ),
        Refusal::PaddedValue => (
            Reason::BadRequest,
            "a header field value starts or ends with a space or a tab, which HTTP/2 does not allow (RFC 9113 section 8.2.1)",
        ),
        Refusal::UntokenedName => (
            Reason::BadRequest,
            "a header field name has a character a token may not have (RFC 9110 section 5.6.2), which HTTP/1.1 cannot carry",
        ),
        Refusal::MisplacedPreface => (
            Reason::BadRequest,
            "an HTTP/2 connection preface is taken only as the first bytes of a cleartext connection; over TLS, HTTP/2 needs ALPN h2 (RFC 9113 section 3)",
        ),
    };
    refuse_unrouted(shared, lst, req, active, reason, msg)
}

/// Answers a request on a plaintext connection whose listener a reload gave `tls`: 400
/// `bad_request`, never served in plaintext (SPEC §8). Counted, logged and given an id as
/// [`refuse_head`]'s answers are; the caller closes the connection after it (an HTTP/2 one
/// was sent GOAWAY at the reload, and its requests still coming are each refused).
///
/// On a TLS connection whose handshake was made under TLS rules a reload has since changed
/// (`ListenerRt::tls_epoch`: `client_ca` given, changed or taken away, or `tls` taken away) the
/// answer is 421 `misdirected_request` (RFC 9110 §15.5.20: the client may send it again on a
/// new connection, which is held to the rules in force), not served under the old rules.
pub fn refuse_outdated(
    shared: &Shared,
    lst: &ListenerRt,
    req: Request<()>,
    peer: &Peer,
    active: ConnActive,
) -> Response<Body> {
    if !peer.tls {
        let msg = "this listener serves TLS only since the last reload: connect again with TLS";
        return refuse_unrouted(shared, lst, req, active, Reason::BadRequest, msg);
    }
    let msg = "this listener's TLS client-certificate settings changed since this connection was made: send the request again on a new connection";
    refuse_unrouted(shared, lst, req, active, Reason::MisdirectedRequest, msg)
}

/// rampart's answer `reason` to a request refused before routing, counted and logged as
/// unrouted. Its id is the client's `x-request-id` when `req` has the fields it was sent
/// with (SPEC §12: an HTTP/2 head refused for a field, one a reload outdated), else one made
/// here (a head the lean server could not read comes with its request line alone).
fn refuse_unrouted(
    shared: &Shared,
    lst: &ListenerRt,
    mut req: Request<()>,
    active: ConnActive,
    reason: Reason,
    msg: &'static str,
) -> Response<Body> {
    let guards = Guards {
        conn: Some(active),
        ..Guards::default()
    };
    // Rare: the fields are looked over here rather than passed down from each caller.
    let sent = Sent::of(req.headers());
    let (request_id, made) = finish::request_id(&mut req, sent);
    let fin = Finish::new(
        shared,
        lst,
        &mut req,
        (&request_id, made),
        Instant::now(),
        guards,
    );
    let tm = lst.unrouted.tenant(&shared.empty_label);
    fin.answer(&tm, answer(reason, msg, None), None, NO_TRY)
}

/// The `allow` of the 405 an inbound listener answers to CONNECT: the methods of RFC 9110
/// and RFC 5789 it serves, which are all of them but CONNECT.
pub const INBOUND_ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// Serves one request on listener `lst` of generation `gen`.
///
/// A plain `fn` returning an `async move` block, not an `async fn`: an `async fn` moves its
/// arguments into locals of its body when first polled, so the request (264 bytes) would be
/// copied once more and kept twice in the future, since rustc keeps room for a local that was
/// moved from while it is in scope. The block uses the captured request in place: 576 bytes
/// less in every connection's task and one copy less per request. (`exchange::run` and
/// `h1::write::answer` are written the same way for the same reason.)
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
#[allow(clippy::too_many_arguments)] // each is the request's own; a struct would be one more copy
pub fn handle<'a>(
    shared: &'a Shared,
    gen: &'a Generation,
    lst: &'a ListenerRt,
    mut req: Request<ClientIn>,
    sent: Sent,
    arrived: Option<Instant>,
    peer: &'a Arc<Peer>,
    active: ConnActive,
) -> impl Future<Output = Response<Body>> + 'a {
    async move {
        // The request's time (its deadline, its duration in the metrics and the access log)
        // runs from when rampart had its head: now, unless its server waited for its body
        // first (`arrived`: the lean HTTP/1.1 server reads a small body whole before the
        // request goes on, and hands a slow one to hyper).
        let started = arrived.unwrap_or_else(Instant::now);
        // When the server handed over a request whose body it read after the head: the end of
        // the client's part. A deadline passed by then is the client's (408); one that passes
        // later, in rampart's own steps (a slow global store), is rampart's (504).
        let handed = arrived.map(|_| Instant::now());
        let guards = Guards {
            in_flight: Some(lst.in_flight.hold()),
            conn: Some(active),
            ..Guards::default()
        };
        // What the tries do; declared before `fin`, which reads it if the request is dropped
        // before its answer (its client gone).
        let tries = TryLog::default();
        // 0b. Path (`normalize.rs`): its normal form, before the log line below records it and
        // before anything is matched on it; the upstream is sent the same. A path that has
        // none keeps the one sent, for the log line of its 400.
        let unfit = normalize::request(&mut req, lst.merge_slashes).err();
        // Counts, request id, debug line and access log of every answer below (and of a
        // request dropped before it).
        let (request_id, made) = finish::request_id(&mut req, sent);
        let mut fin = Finish::new(shared, lst, &mut req, (&request_id, made), started, guards);
        fin.trying(&tries);
        if req.version() < http::Version::HTTP_2
            && matches!(req.body(), ClientIn::Hyper(b) if !http_body::Body::is_end_stream(b))
        {
            fin.uploading();
        }

        // 0. Authority.
        if let Some(msg) = forward::authority_problem(&req, sent) {
            let tm = lst.unrouted.tenant(&shared.empty_label);
            return fin.answer(&tm, answer(Reason::BadRequest, msg, None), None, NO_TRY);
        }
        if let Some(unfit) = unfit {
            let tm = lst.unrouted.tenant(&shared.empty_label);
            let reason = match unfit {
                normalize::Unfit::TooLong => Reason::UriTooLong,
                _ => Reason::BadRequest,
            };
            let rsp = answer(reason, unfit.message(), None);
            return fin.answer(&tm, rsp, None, NO_TRY);
        }

        if req.method() == Method::CONNECT && lst.direction == Direction::Inbound {
            let tm = lst.unrouted.tenant(&shared.empty_label);
            let msg = "CONNECT tunnels are served on outbound listeners only";
            let mut rsp = answer(Reason::MethodNotAllowed, msg, None);
            // A 405 says what is served (RFC 9110 §15.5.6): every method but CONNECT, of
            // which the standard ones are named (any other is forwarded as well).
            let allow = HeaderValue::from_static(INBOUND_ALLOW);
            rsp.headers_mut().insert(ALLOW, allow);
            return fin.answer(&tm, rsp, None, NO_TRY);
        }

        // 1. Route.
        // The authority is read (and its port cut off) only for a route that matches on it.
        let path = req.uri().path();
        let mut host = None;
        let Some(route) = lst.routes.iter().find(|r| {
            let h = match r.matcher.needs_host() {
                true => *host.get_or_insert_with(|| request_host(&req)),
                false => None,
            };
            r.matcher.matches(h, path)
        }) else {
            let rsp = answer(Reason::NoRoute, "no route matches this request", None);
            let tm = lst.unrouted.tenant(&shared.empty_label);
            return fin.answer(&tm, rsp, None, NO_TRY);
        };
        fin.route = Some(route);
        // 1a. An `https://` target on an outbound listener names the scheme of the hop to the
        // dependency (the client's own hop to rampart is its proxy's). A plaintext upstream
        // would carry in clear what was asked to go over TLS: refused, never sent (SPEC §8: a
        // security setting is never silently ignored). On an inbound listener rampart is the
        // service's front: the target names the client's own hop, whose truth
        // `x-forwarded-proto` tells the service, as for any request.
        if lst.direction == Direction::Outbound
            && !route.upstream.speaks_tls()
            && forward::asks_https(&req, peer.tls)
        {
            let tm = route.metrics.tenant(&shared.empty_label);
            let msg = format!(
                "this request's target is https, and upstream {} has no tls: rampart does not send it in clear (give the upstream tls, or send the request through a CONNECT tunnel, as HTTPS_PROXY clients do)",
                route.upstream.name
            );
            let rsp = answer(Reason::HttpsDowngrade, &msg, None);
            return fin.answer(&tm, rsp, None, NO_TRY);
        }

        // 2. Tenant.
        let mut found =
            gen.identify
                .identify_for(req.headers(), req.uri(), peer.conn(), route.tenant_optional);
        // A token of a key (`kid`) its JWKS lacks may be signed by one the issuer has just
        // rotated in: it waits for the early read of the JWKS it asked for, or found under way
        // (at most one per interval, whatever the tokens), at most as long as a fetch is given
        // and never past the route's timeout, and is judged again if the keys changed
        // (`tenant/jwt/early.rs`). The wait is boxed: it is rare, the future every request's.
        let rejudge = gen.identify.unknown_key(
            &found,
            req.headers(),
            route.policy.request_timeout.map(|t| started + t),
        );
        if rejudge.is_due() && rejudge.await {
            found = gen.identify.identify_for(
                req.headers(),
                req.uri(),
                peer.conn(),
                route.tenant_optional,
            );
        }
        let tenant = match found {
            Ok(t) => t,
            Err(reason) => {
                let msg = match reason {
                    Reason::TenantRequired => "this route requires a tenant id",
                    Reason::InvalidToken => gen.identify.invalid_token_message(req.headers()),
                    Reason::JwksUnavailable => {
                        "the keys that verify bearer tokens are not loaded yet; try again shortly"
                    }
                    _ => gen
                        .identify
                        .invalid_message(req.headers(), req.uri(), peer.conn()),
                };
                // The first fetch of a JWKS URL is retried within a second or so.
                let wait = (reason == Reason::JwksUnavailable)
                    .then_some(std::time::Duration::from_secs(1));
                let mut rsp = answer(reason, msg, wait);
                if reason == Reason::TenantRequired && gen.identify.takes_tokens() {
                    // RFC 9110 §15.5.2: a 401 names how to authenticate (RFC 6750 §3: a
                    // bare challenge when the request carried no token).
                    rsp.headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                let tm = route.metrics.tenant(&shared.empty_label);
                return fin.answer(&tm, rsp, None, NO_TRY);
            }
        };
        // The id as text, checked once (a header's bytes are checked on every `as_str`).
        let id = tenant.as_str();
        let tm = route.metrics.tenant_of(id, &shared.labels);
        fin.tenant = Some(tenant.clone());

        // 3. Rate limit: refused requests consume from no limit and never reach the upstream.
        //    With `scope: global` this may wait on the store, never longer than its timeout, and
        //    not at all while this rampart holds leased tokens for the tenant.
        let limited = match route.policy.rate_limit.as_ref() {
            None => None,
            Some(rl) => {
                let plan = gen
                    .identify
                    .plan(&tenant, req.headers(), lst.trust_plan_header);
                Some(rl.check(id, plan).await)
            }
        };
        if let Some(decision) = limited.as_ref().filter(|d| !d.is_admitted()) {
            let limit = decision.limit().unwrap_or("");
            tm.rate_limited(limit);
            let wait = decision.retry_after();
            // The wait said is the one `retry-after` says (whole seconds, at least one).
            let secs = respond::retry_after_secs(wait);
            let msg = if decision.store_unavailable() {
                format!("rate limit store unavailable; on_store_error: deny; retry in {secs}s")
            } else if decision.refused_by_total() {
                format!("the route's total rate limit is exceeded; retry in {secs}s")
            } else {
                format!("rate limit exceeded for tenant {id}; retry in {secs}s")
            };
            let mut rsp = answer(Reason::RateLimited, &msg, Some(wait));
            decision.write_headers(rsp.headers_mut());
            return fin.answer(&tm, rsp, Some(limit), NO_TRY);
        }

        // What the upstream reads of the tenant and its plan is what was used above.
        // Its lines are rampart's: a `connection` list naming them does not remove them.
        let spare = gen.identify.vouch(
            &tenant,
            req.headers_mut(),
            lst.trust_plan_header,
            sent.any_underscore,
        );

        // Where fallback (step 9) keeps this request's good answer; also read by a shed refusal.
        let keep = route
            .policy
            .fallback
            .as_ref()
            .and_then(|fb| fb.keep_for(id, req.method(), req.uri(), req.headers()));
        // Whether the fallback's static answer may stand in for this request's refusal.
        let static_ok = route
            .policy
            .fallback
            .as_ref()
            .is_some_and(|fb| fb.static_for(req.method()));

        // The request's time limit (5., below), from its arrival: the route's timeout, and a
        // gRPC call's own deadline too. A wait in the load-shed queue and an injected delay
        // count against it.
        let own = fin
            .is_grpc()
            .then(|| grpc::timeout(req.headers()))
            .flatten();
        let limit = [route.policy.request_timeout, own]
            .into_iter()
            .flatten()
            .min();
        // A deadline that passed while the server waited for the body (before the request came
        // here) is the client's: 408, as one passing while a try streams the body is. One that
        // passed since, while rampart identified, rate limited (a global store's call) or
        // routed it, is not: the request goes on, and is answered 504 `timeout` where its
        // deadline is next looked at (before a try is sent).
        if handed.is_some_and(|h| limit.is_some_and(|l| h >= started + l)) {
            let rsp = exchange::client_fault_answer(super::body::ClientFault::Late);
            return fin.answer(&tm, rsp, None, NO_TRY);
        }

        // 4. Load shed: a slot (maybe after a fair wait in the queue), held until the answer's
        //    body ends. A waiter whose deadline passes leaves the queue then (dropping the wait
        //    takes it out) and is answered as the request timeout's.
        let mut slot = match &route.policy.load_shed {
            None => None,
            Some(ls) => {
                let priority = ls.priority(req.headers());
                let acquire = ls.shedder.acquire(id, priority);
                let acquired = match limit {
                    None => acquire.await.map_err(|shed| shed_answer(&tm, shed)),
                    Some(l) => match tokio::time::timeout_at(started + l, acquire).await {
                        Ok(acquired) => acquired.map_err(|shed| shed_answer(&tm, shed)),
                        Err(_elapsed) => {
                            route.metrics.timeout_request.inc();
                            let msg = format!(
                                "the request timeout ({l:?}) ran out while it waited in the \
                                 load-shed queue"
                            );
                            Err(answer(Reason::Timeout, &msg, None))
                        }
                    },
                };
                match acquired {
                    Ok(slot) => Some(slot),
                    Err(mut rsp) => {
                        // A CONNECT must never get a fallback: a 2xx would read as an open tunnel.
                        let fb = route.policy.fallback.as_ref();
                        if let Some(fb) = fb.filter(|_| req.method() != Method::CONNECT) {
                            rsp = degrade::apply(fb, static_ok, keep, rsp);
                        }
                        return fin.answer(&tm, rsp, None, NO_TRY);
                    }
                }
            }
        };

        let is_connect = req.method() == Method::CONNECT;
        if is_connect {
            // A tunnel holds its slot for its whole life, with its other guards.
            fin.guards.slot = slot.take();
        }

        // 4a. Fault injection.
        let fault = route
            .policy
            .fault
            .as_ref()
            .map(|f| f.decide(req.headers(), fastrand::f64))
            .unwrap_or_default();
        if let Some(d) = fault.delay {
            let delayed = Instant::now() + d;
            match limit.map(|l| started + l).filter(|end| *end < delayed) {
                None => tokio::time::sleep_until(delayed).await,
                // The delay outlasts the request's time: it ends at the deadline, as a slow
                // network would, with the request timeout's answer (no try was made).
                Some(end) => {
                    tokio::time::sleep_until(end).await;
                    route.metrics.timeout_request.inc();
                    let msg = format!(
                        "the request timeout ({:?}) ran out during an injected delay",
                        limit.unwrap_or_default()
                    );
                    let mut rsp = answer(Reason::Timeout, &msg, None);
                    rsp.headers_mut()
                        .insert(FAULT_HEADER, HeaderValue::from_static("delay"));
                    return fin.answer(&tm, rsp, None, NO_TRY);
                }
            }
        }
        if let Some(status) = fault.abort {
            return fin.answer(
                &tm,
                respond::fault_abort(status, fault.delay.is_some(), is_connect),
                None,
                NO_TRY,
            );
        }

        // 5–8. Deadline, tries, the upstream.
        let ctx = RequestCtx {
            listener: lst,
            route,
            tenant: &tenant,
            deadline: limit.map(|t| started + t),
            limit,
            grpc: fin.is_grpc(),
            // Only HTTP/2 asks: an HTTP/1.1 request with trailers is chunked already.
            sends_trailers: req.version() == Version::HTTP_2 && req.headers().contains_key(TRAILER),
            peer,
            sent,
            spare,
            request_id: &request_id,
            body_idle: lst.body_idle_timeout,
            labels: &shared.labels,
            slot: slot.as_ref(),
            tries: &tries,
            trace: fin.span_parent(),
        };
        if is_connect {
            // A tunnel, not an exchange; it holds its guards (its log line among them) for its
            // whole life.
            let opened = match Box::pin(tunnel::open(&ctx)).await {
                Ok(opened) => opened,
                Err(rsp) => return fin.answer(&tm, rsp, None, ctx.tries.take()),
            };
            let mut rsp = tunnel::established();
            let guards = fin.answer_tunnel(&tm, &mut rsp, ctx.tries.take());
            tunnel::spawn(req, opened, route, shared, guards, peer.clone());
            return rsp;
        }
        if let Some(protocols) = upgrade::asked(&req, route.upstream.cfg.protocol) {
            // One try, never retried; with a 101, the connections are joined and the request's
            // guards (its log line, its load-shed slot) end here, at the 101.
            let (mut rsp, switched) = Box::pin(upgrade::run(&ctx, req, protocols)).await;
            let tries = ctx.tries.take();
            // What an answer says of admission goes on this one too; a fallback never does:
            // a stand-in answer would read as a refused switch, or as an open socket.
            mark_admitted(&mut rsp, fault.delay.is_some(), limited.as_ref());
            match switched {
                Some(up) => {
                    fin.answer_in_place(&tm, &mut rsp, None, tries);
                    tunnel::spawn_upgraded(up, route, shared, peer.clone());
                }
                None => {
                    if let Some(at) = ctx.deadline {
                        rsp.body_mut()
                            .end_by(at, &route.metrics.timeout_request, false);
                    }
                    if route.policy.idle_ms != 0 {
                        rsp.body_mut().count_idle(&route.metrics.timeout_idle);
                    }
                    fin.guards.slot = slot;
                    fin.answer_in_place(&tm, &mut rsp, None, tries);
                }
            }
            return rsp;
        }
        // A gRPC call whose client reads trailers can be told DEADLINE_EXCEEDED mid-stream.
        let reads_trailers = ctx.grpc && grpc::reads_trailers(req.headers());
        // An HTTP/1.1 client gets only the trailers its answer's head announces (an HTTP/1.0
        // one none at all: its answer keeps its length).
        let announce = reads_trailers && req.version() == Version::HTTP_11;
        let codings_carried = req.version() == Version::HTTP_11;
        let mut rsp = match &route.policy.idempotency {
            // Boxed: kilobytes (the store's futures too) that the common case should not carry.
            Some(idem) => Box::pin(idempotent::run(&ctx, idem, req)).await,
            // Inline: this future is built in place once per request (both servers keep the
            // request's future where it was made), so a box only added an allocation and a copy.
            None => exchange::run(&ctx, req).await,
        };
        if !codings_carried && rsp.headers().contains_key(TRANSFER_ENCODING) {
            rsp = uncodable();
        }
        if announce {
            grpc::announce_trailers(&mut rsp);
        }
        if let Some(at) = ctx.deadline {
            // The request's timeout covers the whole exchange: the answer's body too.
            rsp.body_mut()
                .end_by(at, &route.metrics.timeout_request, reads_trailers);
        }
        if route.policy.idle_ms != 0 {
            // So does `timeout.idle`, between the body's bytes: a cut there is counted too.
            rsp.body_mut().count_idle(&route.metrics.timeout_idle);
        }
        let tries = ctx.tries.take();
        fin.guards.slot = slot;
        // 9. Fallback.
        if let Some(fb) = &route.policy.fallback {
            // It reads the answer's headers.
            whole_headers(&mut rsp);
            rsp = degrade::apply(fb, static_ok, keep, rsp);
        }
        mark_admitted(&mut rsp, fault.delay.is_some(), limited.as_ref());
        fin.answer_in_place(&tm, &mut rsp, None, tries);
        rsp
    }
}

/// The answer in place of one whose content has a transfer coding (an HTTP/1.1 upstream's
/// `gzip, chunked`, passed on as `transfer-encoding: gzip` for the next hop to decode) when the
/// client cannot be given it: HTTP/2 has no transfer codings and HTTP/1.0 none at all, so the
/// body would reach it still coded and unlabelled. A 502, as nginx refuses a coding it does not
/// know. (An answer with a `transfer-encoding` is never one whose lines stay raw, so the map
/// holds it.)
fn uncodable() -> Response<Body> {
    let msg = "the upstream's answer carries a transfer coding (transfer-encoding) that the client's HTTP version cannot be given";
    answer(Reason::UpstreamUnavailable, msg, None)
}

/// The 503 `shed` of a request the load shedder refused, counted under `tm`; the wait it says
/// is the one `retry-after` says (whole seconds, at least one), not the estimate before
/// rounding.
fn shed_answer(tm: &TenantMetrics, shed: Shed) -> Response<Body> {
    tm.shed(shed.reason.as_str());
    let msg = format!(
        "load shed ({}); retry in {}s",
        shed.reason.as_str(),
        respond::retry_after_secs(shed.retry_after)
    );
    answer(Reason::Shed, &msg, Some(shed.retry_after))
}

/// Marks an admitted request's answer with what its admission says: the fault delay's mark
/// (`delayed`), and the rate limit's headers (`limited`; with `headers: true`, admitted answers
/// say how much is left too). The answer's header lines go into its map first when either
/// sets a header.
fn mark_admitted(
    rsp: &mut Response<Body>,
    delayed: bool,
    limited: Option<&crate::policy::rate_limit::Decision>,
) {
    if delayed || limited.is_some_and(|d| d.writes_headers()) {
        whole_headers(rsp);
    }
    if delayed {
        rsp.headers_mut()
            .insert(FAULT_HEADER, HeaderValue::from_static("delay"));
    }
    if let Some(decision) = limited {
        decision.write_headers(rsp.headers_mut());
    }
}

/// What a refusal before the exchange tried: nothing.
const NO_TRY: TryStats = TryStats {
    tries: 0,
    endpoint: None,
    upstream: None,
    ended: None,
    received: None,
    whole: 0,
};
