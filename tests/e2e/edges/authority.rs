//! One authority, truthful forwarding headers, and honest framing of upstream answers, checked
//! on the bytes the upstream received and the bytes the client got (SPEC §8, §14).

use std::time::Duration;

use super::OK;
use crate::support::capture::{dechunk, Capture};
use crate::support::{raw, Proxy};

const OUTBOUND: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  routed: { endpoints: [$ROUTED] }
  other: { endpoints: [$OTHER] }
  both: { endpoints: [$BOTH] }
  gzip: { endpoints: [$GZIP] }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - { match: { host: routed.example }, upstream: routed }
      - { match: { host: other.example }, upstream: other }
      - { match: { host: both.example }, upstream: both }
      - { match: { host: gzip.example }, upstream: gzip }
"#;

/// An upstream answer framed two ways at once; RFC 9112 §6.3: chunked wins.
const BOTH: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
/// An upstream answer with an end-to-end transfer coding before `chunked`.
const GZIP: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n4\r\nGZGZ\r\n0\r\n\r\n";

struct Setup {
    routed: Capture,
    other: Capture,
    proxy: Proxy,
}

async fn setup() -> (Setup, Capture, Capture) {
    let (routed, other) = (Capture::start(OK).await, Capture::start(OK).await);
    let (both, gzip) = (Capture::start(BOTH).await, Capture::start(GZIP).await);
    let proxy = Proxy::builder(OUTBOUND)
        .var("ROUTED", routed.addr())
        .var("OTHER", other.addr())
        .var("BOTH", both.addr())
        .var("GZIP", gzip.addr())
        .spawn()
        .await;
    (
        Setup {
            routed,
            other,
            proxy,
        },
        both,
        gzip,
    )
}

async fn send(s: &Setup, req: &str) -> raw::RawResp {
    let addr = s.proxy.listener("outbound");
    raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await
}

fn assert_refused(rsp: &raw::RawResp, status: u16, reason: &str) {
    assert_eq!(rsp.status(), Some(status), "{}", rsp.text());
    assert_eq!(rsp.header("x-rampart-reason").as_deref(), Some(reason));
}

/// Before 2464352 the route came from the absolute-form URI but the client's own `host` was
/// forwarded (`other.example`); a second `host`, a missing `host` and a repeated tenant header
/// were all accepted and forwarded. Fails on the old code (the issue's probe; reasoned from
/// `forward.rs` at 8024b07, which had no authority check).
#[tokio::test]
async fn one_authority_decides_the_route_and_is_forwarded() {
    let (s, _, _) = setup().await;
    let rsp = send(
        &s,
        "GET http://routed.example/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(s.routed.header(0, "host"), ["routed.example"]);
    assert_eq!(s.other.hits(), 0);

    let two = "GET /x HTTP/1.1\r\nHost: routed.example\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    assert_refused(&send(&s, two).await, 400, "bad_request");
    let none = "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_refused(&send(&s, none).await, 400, "bad_request");
    let tenants = "GET /x HTTP/1.1\r\nHost: routed.example\r\nx-tenant-id: a\r\nx-tenant-id: b\r\nConnection: close\r\n\r\n";
    assert_refused(&send(&s, tenants).await, 400, "invalid_tenant");
    assert_eq!(
        s.routed.hits() + s.other.hits(),
        1,
        "refusals reach no upstream"
    );
}

/// Before 2464352 a client's `x-forwarded-proto: https` was passed on over plaintext and its
/// `x-forwarded-for` was not appended to. Fails on the old code (reasoned: `forward.rs` at
/// 8024b07 added both headers only when absent).
#[tokio::test]
async fn forwarding_headers_tell_the_truth_of_the_connection() {
    let (s, _, _) = setup().await;
    let req = "GET /x HTTP/1.1\r\nHost: routed.example\r\nx-forwarded-proto: https\r\nx-forwarded-for: 192.0.2.7\r\nConnection: close\r\n\r\n";
    let rsp = send(&s, req).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(s.routed.header(0, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        s.routed.header(0, "x-forwarded-for"),
        ["192.0.2.7, 127.0.0.1"]
    );
}

/// The body of a raw answer, de-chunked if it was sent chunked.
fn body_of(rsp: &raw::RawResp) -> Vec<u8> {
    let at = rsp
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head")
        + 4;
    let body = &rsp.bytes[at..];
    let chunked = rsp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"));
    if chunked {
        dechunk(body).expect("a well-formed chunked body")
    } else {
        body.to_vec()
    }
}

/// Before 2464352 the stale `content-length: 3` went to the client beside the chunked body,
/// which the client then cut to "hel"; `gzip` was dropped with `chunked`. Fails on the old code
/// (the issue's probe; `strip_hop_by_hop` at 8024b07 removed `transfer-encoding` only).
#[tokio::test]
async fn upstream_framing_reaches_the_client_whole() {
    let (s, both, gzip) = setup().await;
    let rsp = send(
        &s,
        "GET /x HTTP/1.1\r\nHost: both.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_ne!(
        rsp.header("content-length").as_deref(),
        Some("3"),
        "{}",
        rsp.text()
    );
    assert_eq!(body_of(&rsp), b"hello world", "{}", rsp.text());
    assert_eq!(both.hits(), 1);

    let rsp = send(
        &s,
        "GET /x HTTP/1.1\r\nHost: gzip.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let te = rsp.header("transfer-encoding").unwrap_or_default();
    assert!(
        te.contains("gzip"),
        "the gzip coding must survive: {}",
        rsp.text()
    );
    assert_eq!(body_of(&rsp), b"GZGZ", "{}", rsp.text());
    assert_eq!(gzip.hits(), 1);
}

/// A client's `transfer-encoding: gzip, chunked` upload reaches the upstream with `gzip` kept
/// and the body whole. Before 2464352 `gzip` was dropped with `chunked` (the issue's probe:
/// "loses the gzip coding in both directions"); reasoned from `forward.rs` at 8024b07.
#[tokio::test]
async fn a_clients_transfer_coding_reaches_the_upstream() {
    let (s, _, _) = setup().await;
    let req = "PUT /x HTTP/1.1\r\nHost: routed.example\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n4\r\nGZGZ\r\n0\r\n\r\n";
    let rsp = send(&s, req).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let te = s.routed.header(0, "transfer-encoding").join(", ");
    assert!(te.contains("gzip") && te.contains("chunked"), "{te:?}");
    let got = s.routed.requests()[0].clone();
    let body = got
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(
        dechunk(body.as_bytes()).as_deref(),
        Some(&b"GZGZ"[..]),
        "{got}"
    );
}

/// Sends one h2c request with `headers` for `uri` and returns its status.
async fn h2_status(addr: std::net::SocketAddr, uri: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = ::http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    h2_send(addr, req).await.0
}

/// Sends `req` over a new h2c connection; its status and `x-rampart-reason`. The h2 library
/// writes the pseudo-header fields from the request's target as it is: a target without an
/// authority is sent without `:authority` (and with `:scheme http`), a path as `:path`.
async fn h2_send(
    addr: std::net::SocketAddr,
    req: ::http::request::Builder,
) -> (u16, Option<String>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = req.body(crate::support::http::empty()).expect("request");
    let rsp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let reason = rsp.headers().get("x-rampart-reason");
    let reason = reason.map(|v| v.to_str().expect("ascii").to_owned());
    (rsp.status().as_u16(), reason)
}

/// An HTTP/2 target of `scheme`, `routed.example` and `path` as given (the h2 library takes
/// them as the pseudo-header fields' values).
fn h2_target(scheme: &str, path: &'static str) -> ::http::Uri {
    let mut p = ::http::uri::Parts::default();
    p.scheme = Some(scheme.parse().expect("scheme"));
    p.authority = Some(::http::uri::Authority::from_static("routed.example"));
    p.path_and_query = Some(::http::uri::PathAndQuery::try_from(path).expect(path));
    ::http::Uri::from_parts(p).expect("uri")
}

/// HTTP/2: `:authority` decides the route and is the `host` the upstream gets, whatever `host`
/// header the client adds; a repeated tenant header is refused as over HTTP/1.1. Fails on the
/// old code for the same reasons as the HTTP/1.1 test (reasoned).
#[tokio::test]
async fn over_h2_the_authority_pseudo_header_decides_and_is_forwarded() {
    let (s, _, _) = setup().await;
    let addr = s.proxy.listener("outbound");
    let status = h2_status(
        addr,
        "http://routed.example/x",
        &[("host", "other.example")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.routed.header(0, "host"), ["routed.example"]);
    assert_eq!(s.other.hits(), 0);
    let two = [("x-tenant-id", "a"), ("x-tenant-id", "b")];
    assert_eq!(h2_status(addr, "http://routed.example/x", &two).await, 400);
    assert_eq!(s.routed.hits(), 1, "the refusal reaches no upstream");
}

/// rampart's forwarding lines are written by the upstream writer after the request's own
/// lines, not kept in its header map (since the lines were taken out of the map): each
/// reaches the upstream exactly once, and the id sent up is the one the client is answered
/// with, whichever server read the request (the lean one: a bodiless HTTP/1.1 request;
/// hyper's: one with a body, and HTTP/2). A client's own id goes up once, as sent.
#[tokio::test]
async fn each_forwarding_line_reaches_the_upstream_once_from_every_server() {
    let (s, _, _) = setup().await;
    let lean = "GET /x HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n";
    let hypers = "POST /x HTTP/1.1\r\nHost: routed.example\r\ncontent-length: 2\r\nConnection: close\r\n\r\nhi";
    let given = "GET /x HTTP/1.1\r\nHost: routed.example\r\nx-request-id: given-1\r\nConnection: close\r\n\r\n";
    let mut ids = Vec::new();
    for (i, req) in [lean, hypers, given].into_iter().enumerate() {
        let rsp = send(&s, req).await;
        assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
        let id = rsp.header("x-request-id").expect("answered with an id");
        assert_eq!(
            s.routed.header(i, "x-request-id"),
            std::slice::from_ref(&id),
            "try {i}"
        );
        assert_eq!(s.routed.header(i, "host"), ["routed.example"], "try {i}");
        assert_eq!(s.routed.header(i, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(s.routed.header(i, "x-forwarded-proto"), ["http"]);
        ids.push(id);
    }
    assert_eq!(ids[2], "given-1");
    assert_ne!(ids[0], ids[1], "each request its own id");
    let addr = s.proxy.listener("outbound");
    assert_eq!(h2_status(addr, "http://routed.example/x", &[]).await, 200);
    for name in [
        "x-request-id",
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
    ] {
        assert_eq!(s.routed.header(3, name).len(), 1, "h2: one {name}");
    }
}

/// A `connection` list cannot take away the authority or the framing. Before, `Connection:
/// host` made `host` hop-by-hop: the route came from the client's authority, but the upstream
/// got the endpoint's address as `host` (on the lean path, absolute-form too, and after a
/// hand-off to hyper). A `content-length` it names stays too: an upstream's HEAD answer kept
/// its length, an upload its framing.
#[tokio::test]
async fn a_connection_list_never_removes_the_authority_or_the_length() {
    let (s, _, _) = setup().await;
    let lean =
        "GET /x HTTP/1.1\r\nHost: routed.example\r\nConnection: host\r\nConnection: close\r\n\r\n";
    let absolute = "GET http://routed.example/x HTTP/1.1\r\nHost: other.example\r\n\
                    Connection: Host, close\r\n\r\n";
    let hypers = "POST /x HTTP/1.1\r\nHost: routed.example\r\nConnection: HOST, close\r\n\
                  Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    let length =
        "POST /x HTTP/1.1\r\nHost: routed.example\r\nConnection: content-length, close\r\n\
                  Content-Length: 5\r\n\r\nhello";
    for (i, req) in [lean, absolute, hypers, length].into_iter().enumerate() {
        let rsp = send(&s, req).await;
        assert_eq!(rsp.status(), Some(200), "{req:?}: {}", rsp.text());
        assert_eq!(s.routed.header(i, "host"), ["routed.example"], "{req:?}");
    }
    assert_eq!(s.routed.header(3, "content-length"), ["5"]);
    assert!(s.routed.requests()[3].ends_with("\r\n\r\nhello"));
    assert_eq!(s.other.hits(), 0);

    // An upstream's HEAD answer whose `connection` names its length keeps it.
    let head = Capture::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: content-length, close\r\n\r\n",
    )
    .await;
    let proxy = Proxy::builder(OUTBOUND)
        .var("ROUTED", head.addr())
        .var("OTHER", s.other.addr())
        .var("BOTH", s.other.addr())
        .var("GZIP", s.other.addr())
        .spawn()
        .await;
    let req = b"HEAD /x HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n";
    let rsp = raw::exchange(proxy.listener("outbound"), req, Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(
        rsp.header("content-length").as_deref(),
        Some("7"),
        "{}",
        rsp.text()
    );
}

/// An HTTP/1.1 request without `host` is 400 whatever its target (RFC 9112 §3.2: a server
/// MUST answer 400 to any HTTP/1.1 request that lacks one), an absolute-form one too, on the
/// lean path and after a hand-off to hyper; HTTP/1.0 needs none, and its absolute-form target
/// is routed and forwarded as `host`. Before, an absolute-form target stood in for `host`: the
/// HTTP/1.1 requests were forwarded (200).
#[tokio::test]
async fn an_http11_absolute_form_request_without_host_is_refused() {
    let (s, _, _) = setup().await;
    let lean = "GET http://routed.example/x HTTP/1.1\r\nConnection: close\r\n\r\n";
    let hypers = "POST http://routed.example/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                  Connection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    for req in [lean, hypers] {
        assert_refused(&send(&s, req).await, 400, "bad_request");
    }
    assert_eq!(s.routed.hits(), 0, "refusals reach no upstream");

    // `TE` hands the connection to hyper.
    let h10_lean = "GET http://routed.example/x HTTP/1.0\r\n\r\n";
    let h10_hypers = "GET http://routed.example/x HTTP/1.0\r\nTE: trailers\r\n\r\n";
    for (i, req) in [h10_lean, h10_hypers].into_iter().enumerate() {
        let rsp = send(&s, req).await;
        assert_eq!(rsp.status(), Some(200), "{req:?}: {}", rsp.text());
        assert_eq!(s.routed.header(i, "host"), ["routed.example"], "{req:?}");
    }
    assert_eq!(s.other.hits(), 0);
}

/// A `host` must be `uri-host [":" port]` (RFC 9112 §3.2: 400 otherwise), and so must an
/// absolute-form target's authority, without userinfo. Before, `evil.com/x?@routed.example`
/// was routed by what follows its `@` and forwarded whole; spaces, lists, a port that is no
/// port were forwarded verbatim, and `user:pw@` went to the upstream in `host`.
#[tokio::test]
async fn a_host_that_is_not_host_and_port_is_refused() {
    let (s, _, _) = setup().await;
    for host in [
        "evil.com/x?@routed.example",
        "a@routed.example",
        "routed.example b",
        "routed.example, other.example",
        "routed.example:abc",
        "routed.example:99999999",
        "routed.example:65536",
        "routed.example:8080:80",
        "routed%g1.example",
        "[::1",
        "[not-v6]:80",
        "routed.example\\x",
    ] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let rsp = send(&s, &req).await;
        assert_refused(&rsp, 400, "bad_request");
        // After a hand-off to hyper too.
        let req = format!(
            "POST /x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n0\r\n\r\n"
        );
        assert_refused(&send(&s, &req).await, 400, "bad_request");
    }
    for target in [
        "http://user:pw@routed.example/x",
        "http://user@routed.example/x",
        "http://routed.example:abc/x",
        "http://routed.example:70000/x",
    ] {
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n");
        assert_refused(&send(&s, &req).await, 400, "bad_request");
    }
    assert_eq!(
        s.routed.hits() + s.other.hits(),
        0,
        "refusals reach no upstream"
    );

    // Hosts as RFC 3986 writes them pass, as sent.
    for (i, host) in ["ROUTED.example:65535", "routed.example:", "routed.example"]
        .into_iter()
        .enumerate()
    {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let rsp = send(&s, &req).await;
        assert_eq!(rsp.status(), Some(200), "{host}: {}", rsp.text());
        assert_eq!(s.routed.header(i, "host"), [host]);
    }
    for host in [
        "[::1]:80",
        "[v7.a:b]",
        "127.0.0.1:1",
        "a-b_c~d.!$&'()*+;=%41",
    ] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_refused(&send(&s, &req).await, 404, "no_route");
    }
    // Over HTTP/2, `:authority` with userinfo is refused alike (RFC 9113 §8.3.1).
    let addr = s.proxy.listener("outbound");
    assert_eq!(
        h2_status(addr, "http://u:p@routed.example/x", &[]).await,
        400
    );
    assert_eq!(s.routed.hits(), 3);
}

/// A request target is origin-form or absolute-form; authority-form is CONNECT's and `*`
/// OPTIONS' alone (RFC 9112 §3.2). Before, `GET echo` went up as `GET /` with host `echo`,
/// `GET routed.example:80` was routed by it over its `host`, and `GET *` was forwarded.
#[tokio::test]
async fn a_target_that_is_no_path_or_absolute_uri_is_refused() {
    let (s, _, _) = setup().await;
    for req in [
        "GET echo HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n",
        "GET routed.example:80 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n",
        "POST routed.example HTTP/1.1\r\nHost: routed.example\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n0\r\n\r\n",
        "POST * HTTP/1.1\r\nHost: routed.example\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n0\r\n\r\n",
    ] {
        assert_refused(&send(&s, req).await, 400, "bad_request");
    }
    assert_eq!(
        s.routed.hits() + s.other.hits(),
        0,
        "refusals reach no upstream"
    );
    let star = "OPTIONS * HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n";
    let rsp = send(&s, star).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert!(s.routed.requests()[0].starts_with("OPTIONS * HTTP/1.1\r\n"));
}

/// Over HTTP/2 the target is held to what HTTP/1.1's is (RFC 9112 §3.2, RFC 9113 §8.3.1):
/// `:path *` is OPTIONS' alone and any other path starts with `/`; `:scheme` is http or
/// https; a request with neither `:authority` nor `host` is malformed. All are 400
/// `bad_request` from rampart, as their HTTP/1.1 forms are, and reach no upstream. An
/// absolute-form target of another scheme (`ftp://`) is refused over HTTP/1.1 too, by the lean
/// server and by hyper's. Before, `GET *` reached the upstream as `GET * HTTP/1.1`, `gopher` and `ftp` were forwarded as plain HTTP (200), and a request without an
/// authority was given one made from the listener's address (here 404 `no_route`).
#[tokio::test]
async fn over_h2_a_target_http11_refuses_is_refused_and_one_without_authority_too() {
    let (s, _, _) = setup().await;
    let addr = s.proxy.listener("outbound");
    let get = |uri: ::http::Uri| ::http::Request::builder().uri(uri);
    let refused = [
        ("GET *", get(h2_target("http", "*"))),
        ("POST *", get(h2_target("http", "*")).method("POST")),
        ("gopher", get(h2_target("gopher", "/s"))),
        ("ftp", get(h2_target("ftp", "/s"))),
        ("no authority", get(::http::Uri::from_static("/x"))),
    ];
    for (what, req) in refused {
        let got = h2_send(addr, req).await;
        assert_eq!(got, (400, Some("bad_request".to_owned())), "{what}");
    }
    for req in [
        "GET ftp://routed.example/s HTTP/1.1\r\nHost: routed.example\r\nConnection: close\r\n\r\n",
        "POST ftp://routed.example/s HTTP/1.1\r\nHost: routed.example\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    ] {
        assert_refused(&send(&s, req).await, 400, "bad_request");
    }
    assert_eq!(
        s.routed.hits() + s.other.hits(),
        0,
        "refusals reach no upstream"
    );

    // OPTIONS * passes; so does a request whose `host` line stands in for `:authority`.
    let options = get(h2_target("http", "*")).method("OPTIONS");
    assert_eq!(h2_send(addr, options).await.0, 200);
    assert!(s.routed.requests()[0].starts_with("OPTIONS * HTTP/1.1\r\n"));
    let hosted = get(::http::Uri::from_static("/x")).header("host", "routed.example");
    assert_eq!(h2_send(addr, hosted).await.0, 200);
    assert!(s.routed.requests()[1].starts_with("GET /x HTTP/1.1\r\n"));
    assert_eq!(s.routed.header(1, "host"), ["routed.example"]);
    // `:scheme https` is a scheme HTTP/2 may carry, not malformed; over h2c on an outbound
    // listener it asks for TLS the plaintext upstream cannot give, so it is refused 421
    // `https_downgrade` (tls::downgrade), never sent.
    let https = get(h2_target("https", "/y"));
    assert_eq!(
        h2_send(addr, https).await,
        (421, Some("https_downgrade".to_owned()))
    );
    assert_eq!(s.routed.hits(), 2);
}
