//! HTTP/1.1 protocol upgrades (RFC 9110 §7.8): WebSocket, and any other `Upgrade`.
//!
//! An HTTP/1.1 client's request with `Upgrade` and `connection: upgrade`, and no body, goes
//! through the request path's admission (steps 0–4a of `stack.rs`: authority, route, tenant,
//! rate limit, load shed, fault) like any request, then makes one try (never retried: once it
//! is sent, the upstream may have switched) to an HTTP/1.1 endpoint, with `Upgrade` and
//! `connection: upgrade` kept and the other hop-by-hop headers removed. The try is bounded by
//! the per-try and request timeouts until its answer head, and the breaker judges it as any
//! try (a 101 counts as an answered request).
//!
//! - A `101 Switching Protocols` goes to the client with the upstream's headers (its
//!   `Upgrade`, `connection: upgrade`, `Sec-WebSocket-Accept`...). Then the upstream
//!   connection leaves its pool for good and bytes are copied both ways between it and the
//!   client's connection, as a CONNECT tunnel's are (`tunnel.rs`, the same copy): half-closes
//!   passed on, closed when both sides have closed or nothing has moved for the route's
//!   `tunnel_idle_timeout`, cut by a drain whose grace runs out. The request's access log
//!   line, its metrics, its load-shed slot and its place in the listener's in-flight count end
//!   at the 101: a socket open for hours must not hold `max_in_flight` room. It keeps its
//!   endpoint connection's place among `max_connections` while it lives, and the client
//!   connection's place among its listener's `runtime.max_connections` (in its `Peer`).
//! - Any other answer is a normal answer, and the client's connection stays HTTP.
//!
//! Its answer (the 101 or another) carries the rate limit's headers and the fault delay's mark
//! as any answer does; a route's `fallback` never replaces it (a stand-in would read as a
//! refused switch, or as an open socket), and `idempotency` does not apply (one try, no replay).
//!
//! Not upgraded (the upgrade headers are dropped and the request sent plain, as before, so the
//! upstream's answer is what the client gets; RFC 9110 §7.8 lets a server ignore `Upgrade`):
//! a request to a `protocol: http2` upstream (HTTP/2 has no `Upgrade`; RFC 8441's extended
//! CONNECT is not carried), one with a body, `Upgrade: h2c` (HTTP/2 for this hop alone), and
//! every HTTP/2 client's request.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::body::{Body, ClientIn};
use super::ctx::RequestCtx;
use super::exchange::{try_once, Tried};
use super::forward;
use super::pool::Switched;
use super::respond::answer;
use crate::config::file::UpstreamProtocol;
use crate::error::Reason;

/// A request's upgrade under way: the client's side ([`hyper::upgrade::OnUpgrade`], ready
/// once hyper has written the 101) and the upstream's connection that switched.
#[derive(Debug)]
pub struct Upgrade {
    pub(super) client: hyper::upgrade::OnUpgrade,
    pub(super) upstream: Switched,
}

/// The protocols `req` asks to switch to, if rampart carries its upgrade to the route's
/// upstream (of protocol `protocol`): see the module's note for what is not.
///
/// Only hyper's HTTP/1.1 server marks a request that may be upgraded (the lean server hands
/// every request with `Upgrade` to it): any other request costs a look at an empty map.
pub fn asked(req: &Request<ClientIn>, protocol: UpstreamProtocol) -> Option<HeaderValue> {
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
        || req.version() != http::Version::HTTP_11
        || req.method() == http::Method::CONNECT
        || protocol == UpstreamProtocol::Http2
        || !http_body::Body::is_end_stream(req.body())
    {
        return None;
    }
    let headers = req.headers();
    let protocols = headers.get(header::UPGRADE)?;
    let only_h2c = protocols
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .all(|p| p.is_empty() || p.eq_ignore_ascii_case(b"h2c"));
    let asked = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    (asked && !only_h2c).then(|| protocols.clone())
}

/// Makes the one try of the upgrade request `req`, whose `Upgrade` is `protocols`: its answer,
/// and with a 101 the two connections to join ([`super::tunnel::spawn_upgraded`]).
pub async fn run(
    ctx: &RequestCtx<'_>,
    mut req: Request<ClientIn>,
    protocols: HeaderValue,
) -> (Response<Body>, Option<Upgrade>) {
    let client = hyper::upgrade::on(&mut req);
    forward::prepare_request(&mut req, ctx.peer, ctx.sent, ctx.spare.names());
    forward::keep_upgrade(req.headers_mut(), protocols);
    let (mut parts, _) = req.into_parts();
    let mut rsp = try_once(ctx, &mut parts, Body::Empty, None, None, &mut Tried::new()).await;
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return (rsp, None);
    }
    let upstream = match std::mem::take(rsp.body_mut()) {
        Body::Upstream(mut r) => r.take_upgraded(),
        _ => None,
    };
    let Some(upstream) = upstream else {
        // Cannot happen: a 101 comes only off an HTTP/1.1 connection that asked for it.
        let msg = "the upstream switched protocols on a connection that cannot be handed over";
        return (answer(Reason::UpstreamUnavailable, msg, None), None);
    };
    (rsp, Some(Upgrade { client, upstream }))
}
