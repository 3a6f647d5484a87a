//! Request bodies: an h2 upload with a trailer never panics a task; a stalled or malformed
//! upload is the client's fault (408/400), never counted as an upstream failure — with `retry`
//! (body buffered first) and without (body streamed).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use super::{assert_no_panic, upstream_tries, OK};
use crate::support::capture::Capture;
use crate::support::http::Frames;
use crate::support::{metric_value, metrics, raw, Proxy};

const ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
$RUNTIME
upstreams:
  app: { endpoints: [$APP] }
policies:
  retried: { retry: { attempts: 2 } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { name: retried, match: { path_prefix: /r }, upstream: app, policy: retried }
      - { name: streamed, upstream: app }
"#;

/// `stall: true` sets `body_idle_timeout: 1s`; without it the file also loads on the code
/// before the fix (which lacked the key), so the other tests show the old defect itself.
async fn setup(stall: bool) -> (Capture, Proxy) {
    let app = Capture::start(OK).await;
    let rt = if stall {
        "runtime: { body_idle_timeout: 1s }"
    } else {
        ""
    };
    let proxy = Proxy::builder(&ROUTES.replace("$RUNTIME", rt))
        .var("APP", app.addr())
        .spawn()
        .await;
    (app, proxy)
}

/// An HTTP/2 PUT of `data` (with `content-length` if given) ending in the trailer
/// `x-checksum: abc`, over a connection of its own: its answer.
async fn h2_put_with_trailer(
    addr: std::net::SocketAddr,
    path: &str,
    data: &'static [u8],
    length: Option<&str>,
) -> http::Response<hyper::body::Incoming> {
    let mut send = crate::support::http::h2c(addr).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("value"));
    let body = UnsyncBoxBody::new(Frames(VecDeque::from([
        Frame::data(Bytes::from_static(data)),
        Frame::trailers(trailers),
    ])));
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{addr}{path}"));
    if let Some(n) = length {
        req = req.header("content-length", n);
    }
    let req = req.body(body).expect("request");
    tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered")
}

/// Sends `POST path` with the body `hello` ended by `trailers` on the HTTP/2 connection
/// `send`, and waits (up to 10 s) for its answer.
async fn post_trailed(
    send: &mut hyper::client::conn::http2::SendRequest<crate::support::http::ReqBody>,
    addr: std::net::SocketAddr,
    path: &str,
    trailers: HeaderMap,
) -> http::Response<hyper::body::Incoming> {
    let body = UnsyncBoxBody::new(Frames(VecDeque::from([
        Frame::data(Bytes::from_static(b"hello")),
        Frame::trailers(trailers),
    ])));
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .body(body)
        .expect("request");
    tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered")
}

/// Before 2464352 the replay body's size hint set its lower bound above its upper, and hyper's
/// h1 client panicked on it (`size_hint.rs`): 502 and "panicked" in the log. Fails on the old
/// code (the issue's reproduction, reasoned from `body.rs` at 8024b07).
#[tokio::test]
async fn an_h2_put_with_a_length_and_a_trailer_on_a_retried_route_is_answered() {
    let (app, proxy) = setup(false).await;
    let addr = proxy.listener("inbound");
    let rsp = h2_put_with_trailer(addr, "/r/put", b"hello world", Some("11")).await;
    let status = rsp.status();
    let text = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&text));
    assert_eq!(&text[..], b"ok");
    assert_eq!(app.hits(), 1);
    assert!(app.requests()[0].contains("hello world"));
    assert_no_panic(&proxy);
}

/// A request whose body ends in trailers is retried like one without (SPEC §2: the body fits
/// `retry.buffer`): each try sends the body and then its trailers. An HTTP/2 PUT and an
/// HTTP/1.1 chunked PUT to a route with two attempts, the upstream answering 503 (which `retry`
/// retries by default): each reaches it twice, whole. Before, a body with trailers streamed
/// once and its request was never retried.
#[tokio::test]
async fn a_request_whose_body_ends_in_trailers_is_retried_with_them() {
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy";
    let app = Capture::start(BUSY).await;
    let proxy = Proxy::builder(&ROUTES.replace("$RUNTIME", ""))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let req =
        b"PUT /r/h1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
                5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n";
    let rsp = raw::exchange(addr, req, Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(503), "{}", rsp.text());
    let rsp = h2_put_with_trailer(addr, "/r/h2", b"hello", None).await;
    assert_eq!(rsp.status(), 503);
    let got = app.requests();
    for path in ["/r/h1", "/r/h2"] {
        let tries: Vec<&String> = got.iter().filter(|r| r.contains(path)).collect();
        assert_eq!(tries.len(), 2, "{path} tried twice: {got:#?}");
        for t in tries {
            assert!(t.contains("\r\n5\r\nhello\r\n"), "{t}");
            assert!(trailer_section(t).contains("x-checksum: abc"), "{t}");
        }
    }
    assert_no_panic(&proxy);
}

/// A client's request trailers lose the names rampart reads its identity from, the tenant's
/// `header` source and `tenants.plans.plan_header`: the upstream reads them in the head,
/// where rampart put what it used, and must not find the client's other value in the
/// trailers, nor under their spellings with `_` for any `-` (`x_tenant_id`, `X_Tenant_Plan`,
/// `x-tenant_id`, `x_tenant-plan`), which CGI-style upstreams read as the same headers
/// (`HTTP_X_TENANT_ID`). Other trailers pass. Before, `x-tenant-id: other` reached it there;
/// later, `x_tenant_id` still did; later still, the mixed spellings did.
#[tokio::test]
async fn request_trailers_lose_the_tenant_and_plan_header_names() {
    let app = Capture::start(OK).await;
    let tenants =
        "tenants: { from: [ { header: x-tenant-id } ], plans: { plan_header: x-tenant-plan } }";
    let proxy = Proxy::builder(&ROUTES.replace("$RUNTIME", tenants))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    for path in ["/s/plain", "/r/retried"] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nx-tenant-id: acme\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\
             x-tenant-id: other\r\nX-Tenant-Plan: free\r\nx_tenant_id: other2\r\n\
             X_Tenant_Plan: gold\r\nx-tenant_id: other3\r\nX_Tenant-Plan: gold2\r\n\
             x_checksum: def\r\n\r\n"
        );
        let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    }
    let got = app.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    for r in &got {
        let trailers = trailer_section(r);
        assert!(trailers.contains("x-checksum: abc"), "{r}");
        assert!(!trailers.contains("x-tenant-id"), "{r}");
        assert!(!trailers.contains("x-tenant-plan"), "{r}");
        assert!(!trailers.contains("x_tenant_id"), "{r}");
        assert!(!trailers.contains("x_tenant_plan"), "{r}");
        assert!(!trailers.contains("x-tenant_id"), "{r}");
        assert!(!trailers.contains("x_tenant-plan"), "{r}");
        assert!(trailers.contains("x_checksum: def"), "{r}");
    }
    assert_no_panic(&proxy);
}

/// A client's forwarding names spelled with `_` for any `-` (`X_Forwarded_For`,
/// `x_forwarded_proto`, `x_request_id`, and the mixed `x-forwarded_for`, `x_forwarded-for`,
/// `X-Forwarded_Proto`, `x-request_id`), which CGI-style upstreams read as rampart's own
/// (`HTTP_X_FORWARDED_FOR`), never reach the upstream: not in the head, over the lean HTTP/1.1
/// server (a GET), hyper's (a chunked POST) and HTTP/2, nor in the trailers of the last two.
/// Other names with `_` (`x_other`, `x-forwarded_fox`) pass in both. Before, all of them
/// reached the upstream as sent; later, the mixed spellings still did.
#[tokio::test]
async fn underscore_spellings_of_the_forwarding_names_never_reach_the_upstream() {
    let (app, proxy) = setup(false).await;
    let addr = proxy.listener("inbound");
    let spoofed =
        "X_Forwarded_For: 10.6.6.6\r\nx_forwarded_proto: https\r\nX_Request_Id: forged\r\n\
         x-forwarded_for: 9.9.9.9\r\nx_forwarded-for: 8.8.8.8\r\nX-Forwarded_Proto: ftp\r\n\
         x-request_id: forged2\r\nx-forwarded_fox: kept\r\n";
    let lean = format!(
        "GET /s/lean HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{spoofed}x_other: h\r\n\r\n"
    );
    let rsp = raw::exchange(addr, lean.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let chunked = format!(
        "POST /s/h1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{spoofed}x_other: h\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{spoofed}x_other: t\r\n\r\n"
    );
    let rsp = raw::exchange(addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let mut send = crate::support::http::h2c(addr).await;
    let fields = [
        ("x_forwarded_for", "10.6.6.6"),
        ("x_forwarded_proto", "https"),
        ("x_request_id", "forged"),
        ("x-forwarded_for", "9.9.9.9"),
        ("x_forwarded-for", "8.8.8.8"),
        ("x-forwarded_proto", "ftp"),
        ("x-request_id", "forged2"),
    ];
    let mut trailers = HeaderMap::new();
    for (n, v) in fields {
        trailers.insert(n, v.parse().expect("value"));
    }
    trailers.insert("x_other", "t".parse().expect("value"));
    let body = UnsyncBoxBody::new(Frames(VecDeque::from([
        Frame::data(Bytes::from_static(b"hello")),
        Frame::trailers(trailers),
    ])));
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/s/h2"))
        .header("x_other", "h")
        .header("x-forwarded_fox", "kept");
    for (n, v) in fields {
        req = req.header(n, v);
    }
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        send.send_request(req.body(body).expect("request")),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    assert_eq!(rsp.status(), 200);
    let got = app.requests();
    assert_eq!(got.len(), 3, "{got:#?}");
    for r in &got {
        let text = r.to_ascii_lowercase();
        for (n, _) in fields {
            assert!(!text.contains(n), "{n} reached the upstream:\n{r}");
        }
        for (n, v) in fields {
            assert!(!text.contains(v), "{n}'s {v} reached the upstream:\n{r}");
        }
        assert!(text.contains("x_other: h\r\n"), "{r}");
        assert!(text.contains("x-forwarded_fox: kept\r\n"), "{r}");
        if !r.starts_with("GET") {
            assert!(trailer_section(r).contains("x_other: t"), "{r}");
        }
    }
    assert_no_panic(&proxy);
}

/// The trailer section of a chunked request as the upstream got it: what follows its last
/// chunk (`0`), lowercased.
fn trailer_section(request: &str) -> String {
    let at = request.rfind("\r\n0\r\n").expect("a chunked body") + 5;
    request[at..].to_ascii_lowercase()
}

/// Trailers that name framing, routing, authentication or other fields a trailer may not
/// carry (RFC 9110 §6.5.1) are dropped on their way to the upstream, from an HTTP/1.1 client's
/// chunked upload and an HTTP/2 client's alike; other trailers pass. Before, they were written
/// into the upstream's chunked trailer section as sent (`content-length: 5`, `host:
/// evil.example`, `authorization`, ...), for the upstream to merge into the head or misread.
#[tokio::test]
async fn trailer_fields_that_have_no_place_there_never_reach_the_upstream() {
    let (app, proxy) = setup(false).await;
    let addr = proxy.listener("inbound");
    let forbidden = [
        ("content-length", "5"),
        ("host", "evil.example"),
        ("authorization", "Bearer x"),
        ("content-type", "text/html"),
        ("set-cookie", "a=b"),
        // rampart's own forwarding lines, rewritten in the head.
        ("x-forwarded-for", "10.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "forged"),
    ];
    // HTTP/1.1, chunked (`connection` too: HTTP/2 cannot carry it at all).
    let mut req = String::from(
        "POST /s/h1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\nconnection: close\r\ntransfer-encoding: chunked\r\n",
    );
    for (n, v) in forbidden {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    // HTTP/2 without a length: chunked to the upstream, trailers and all.
    let mut send = crate::support::http::h2c(addr).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("value"));
    for (n, v) in forbidden {
        trailers.insert(n, v.parse().expect("value"));
    }
    let rsp = post_trailed(&mut send, addr, "/s/h2", trailers).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(app.hits(), 2);
    for got in app.requests() {
        let trailers = trailer_section(&got);
        assert!(trailers.contains("x-checksum: abc"), "{got}");
        for name in ["connection", "transfer-encoding"]
            .into_iter()
            .chain(forbidden.iter().map(|(n, _)| *n))
        {
            assert!(
                !trailers.contains(&format!("{name}:")),
                "{name} reached the upstream in the trailers:\n{got}"
            );
        }
    }
    assert_no_panic(&proxy);
}

/// An HTTP/2 request's trailers get the field checks its head gets: a name that is no token
/// (`a"b`, which the h2 library passes) or a value with a space or tab at either end is a
/// malformed body, answered 400 `bad_request`, streamed or buffered for a retry. Before, they
/// reached the HTTP/1.1 upstream as chunked trailer lines (`a"b: 1`) no parser reads. A
/// well-formed trailer still passes.
#[tokio::test]
async fn h2_request_trailers_get_the_field_checks_of_a_head() {
    let (app, proxy) = setup(false).await;
    let addr = proxy.listener("inbound");
    let mut send = crate::support::http::h2c(addr).await;
    let bad = [
        (http::HeaderName::from_static("a\"b"), "1"),
        (http::HeaderName::from_static("x-pad"), " lead"),
        (http::HeaderName::from_static("x-pad"), "trail\t"),
    ];
    for path in ["/r/trailed", "/s/trailed"] {
        for (name, value) in &bad {
            let mut trailers = HeaderMap::new();
            trailers.insert(name.clone(), value.parse().expect("value"));
            let rsp = post_trailed(&mut send, addr, path, trailers).await;
            let status = rsp.status();
            let reason = rsp.headers().get("x-rampart-reason").cloned();
            assert_eq!(status, 400, "{path} {name}: {value:?}");
            assert_eq!(
                reason.as_ref().map(|r| r.as_bytes()),
                Some(&b"bad_request"[..]),
                "{path} {name}: {value:?}"
            );
        }
    }
    for got in app.requests() {
        assert!(!got.contains("a\"b"), "{got}");
        assert!(!got.contains("x-pad"), "{got}");
    }
    // A well-formed trailer passes, on the same connection.
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("value"));
    let rsp = post_trailed(&mut send, addr, "/s/good", trailers).await;
    assert_eq!(rsp.status(), 200);
    let last = app.requests().last().cloned().unwrap_or_default();
    assert!(trailer_section(&last).contains("x-checksum: abc"), "{last}");
    assert_no_panic(&proxy);
}

/// Before 2464352 there was no body idle timeout: a stalled upload held its slot until the
/// request timeout and was then answered 504 as an upstream timeout (with retry) or held for
/// ever (without). Fails on the old code (the issue's probe; no `body_idle_timeout` key).
#[tokio::test]
async fn a_stalled_upload_is_408_and_no_upstream_try() {
    let (app, proxy) = setup(true).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    for path in ["/r/slow", "/s/slow"] {
        let before = upstream_tries(admin).await;
        let req = format!("PUT {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nA");
        let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(6)).await;
        assert_eq!(rsp.status(), Some(408), "{path}: {}", rsp.text());
        assert_eq!(
            rsp.header("x-rampart-reason").as_deref(),
            Some("client_timeout"),
            "{path}"
        );
        assert!(
            rsp.elapsed >= Duration::from_millis(900),
            "{path}: {:?}",
            rsp.elapsed
        );
        assert_eq!(
            upstream_tries(admin).await,
            before,
            "{path}: no upstream try counted"
        );
    }
    assert_eq!(app.hits(), 0, "no whole request reached the upstream");
    assert_no_panic(&proxy);
}

/// Before 2464352 a malformed chunked upload was answered 502 `upstream_unavailable` and
/// counted as an upstream 502. Fails on the old code (the issue's probe).
#[tokio::test]
async fn a_malformed_chunked_upload_is_400_and_no_upstream_502() {
    let (app, proxy) = setup(false).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    for path in ["/r/bad", "/s/bad"] {
        let before = upstream_tries(admin).await;
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n"
        );
        let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(rsp.status(), Some(400), "{path}: {}", rsp.text());
        assert_eq!(
            rsp.header("x-rampart-reason").as_deref(),
            Some("bad_request"),
            "{path}: {}",
            rsp.text()
        );
        let text = metrics(admin).await;
        let bad = metric_value(&text, "rampart_upstream_requests_total", &[("code", "502")]);
        assert_eq!(bad.unwrap_or(0.0), 0.0, "{path}: no upstream 502 counted");
        assert_eq!(upstream_tries(admin).await, before, "{path}");
    }
    assert_eq!(app.hits(), 0);
    assert_no_panic(&proxy);
}

/// An upstream that reads a request head, stops reading for `pause`, then drains a chunked
/// body and answers 200: a slow consumer, not a slow client.
async fn slow_reader(pause: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(pause).await;
                while !got.ends_with(b"0\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(OK).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A client that sends as fast as it can to an upstream that pauses reading is not stalled:
/// the body idle timeout must measure the client's silence while rampart waits for it, not the
/// time rampart stopped reading because the upstream applied back-pressure (64 MiB cannot sit
/// in socket buffers). A guard for the stall timer in `body.rs`, which is armed at the last
/// frame: it passes because hyper keeps a frame ready for when reading resumes. Not a
/// regression test (the old code had no stall timer to get wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_from_a_slow_upstream_is_not_a_client_stall() {
    let app = slow_reader(Duration::from_secs(3)).await;
    let proxy = Proxy::builder(&ROUTES.replace("$RUNTIME", "runtime: { body_idle_timeout: 1s }"))
        .var("APP", app)
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let rsp = crate::support::http::post_stream(addr, "/s/upload", &[], 64 << 20).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(upstream_tries(admin).await, 1.0);
    assert_no_panic(&proxy);
}

/// One data frame, then silence for ever.
struct OneThenSilence(bool);

impl http_body::Body for OneThenSilence {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"A")))))
    }
}

/// The stall rule holds for HTTP/2 uploads too, on both routes.
#[tokio::test]
async fn a_stalled_h2_upload_is_408_and_no_upstream_try() {
    let (app, proxy) = setup(true).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    for path in ["/r/slow", "/s/slow"] {
        let before = upstream_tries(admin).await;
        let mut send = crate::support::http::h2c(addr).await;
        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("http://{addr}{path}"))
            .header("content-length", "10")
            .body(UnsyncBoxBody::new(OneThenSilence(false)))
            .expect("request");
        let rsp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("answered in time")
            .expect("answered");
        assert_eq!(rsp.status(), 408, "{path}");
        assert_eq!(
            rsp.headers()["x-rampart-reason"],
            "client_timeout",
            "{path}"
        );
        assert_eq!(upstream_tries(admin).await, before, "{path}");
    }
    assert_eq!(app.hits(), 0);
    assert_no_panic(&proxy);
}

/// A client that goes away mid-upload is not an upstream failure: nothing is counted in
/// `rampart_upstream_requests_total` (SPEC §14: client gone is the client's fault).
#[tokio::test]
async fn a_client_gone_mid_upload_is_not_an_upstream_failure() {
    use tokio::io::AsyncWriteExt;
    let (app, proxy) = setup(false).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    for path in ["/r/gone", "/s/gone"] {
        let before = upstream_tries(admin).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("PUT {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc");
        tcp.write_all(req.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tcp);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(upstream_tries(admin).await, before, "{path}");
    }
    assert_eq!(app.hits(), 0);
    assert_no_panic(&proxy);
}
