//! What a proxy changes on the way through: hop-by-hop headers out, forwarding headers in.
//!
//! Hop-by-hop headers describe one connection, not the message, so they are removed in both
//! directions (RFC 9110 §7.6.1), including any the `connection` header names. `x-forwarded-for`,
//! `x-forwarded-proto` and `x-request-id` are added only when the client did not send them.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};

use super::upstream::Endpoint;

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The request id header, added when absent.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client end of a connection, with its `x-forwarded-for` value made once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string());
        Peer {
            addr,
            forwarded_for: ip.unwrap_or(HeaderValue::from_static("unknown")),
        }
    }
}

/// Removes hop-by-hop headers, including those named by `connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than nine hashed removals.
    let any = headers
        .keys()
        .any(|n| HOP_BY_HOP.contains(n) || n == header::UPGRADE);
    if !any {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

/// Prepares a client request for the upstream, once, before any try.
pub fn prepare_request<B>(req: &mut Request<B>, peer: &Peer, tls: bool) {
    // HTTP/2 requests carry the authority in the URI only; HTTP/1.1 upstreams need `host`.
    if !req.headers().contains_key(header::HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
    }
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    if !h.contains_key(&X_FORWARDED_FOR) {
        h.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    if !h.contains_key(&X_REQUEST_ID) {
        h.insert(X_REQUEST_ID, new_request_id());
    }
    *req.version_mut() = Version::HTTP_11;
    // Upstream requests are origin-form; the authority travels in `host`.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
}

/// Gives a request without any authority (HTTP/1.0 without `host`) the endpoint's.
pub fn ensure_host<B>(req: &mut Request<B>, endpoint: &Endpoint) {
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(endpoint.authority.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
}

/// A random 128-bit request id, as 32 hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn adds_forwarding_headers_when_absent() {
        let peer = Peer::new("10.1.2.3:5555".parse().expect("addr"));
        let mut req = Request::builder().uri("/a").body(()).expect("request");
        req.headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_static("given"));
        prepare_request(&mut req, &peer, false);
        assert_eq!(req.headers()["x-forwarded-for"], "10.1.2.3");
        assert_eq!(req.headers()["x-forwarded-proto"], "http");
        assert_eq!(req.headers()["x-request-id"], "given");
        let mut req = Request::builder()
            .uri("http://svc:81/a?b=1")
            .body(())
            .expect("request");
        prepare_request(&mut req, &peer, true);
        assert_eq!(req.headers()["host"], "svc:81");
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        assert_eq!(req.headers()["x-request-id"].len(), 32);
    }
}
