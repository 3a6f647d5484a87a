//! Framing fields that come repeated or in a form an HTTP/1.1 peer reads another way: a
//! `content-length` given twice with one value (RFC 9110 §8.6 lets a recipient take it as one),
//! and a `transfer-encoding` whose last coding is not `chunked`. What goes on to the other side
//! is one `content-length` line, or a 502; never the field as it came.

use std::time::Duration;

use ::http::HeaderValue;
use http_body_util::BodyExt;

use super::{h2_get, head_lines, named, proxy, raw_get, Scripted, Then};
use crate::support::capture::Capture;
use crate::support::http;

/// An HTTP/2 request whose `content-length` is sent twice with one value (the h2 library
/// takes it; values that differ it resets) reaches an HTTP/1.1 upstream with one
/// `content-length` line, as an HTTP/1.1 client's does. Two lines made nginx answer 400, and
/// that 502 counted against the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_repeating_its_content_length_goes_upstream_with_one_line() {
    let up = Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = proxy(up.addr()).await;
    let addr = proxy.listener("inbound");
    let mut send = http::h2c(addr).await;
    let mut req = ::http::Request::post(format!("http://{addr}/up"))
        .body(http::full("hello"))
        .expect("a valid request");
    for _ in 0..2 {
        req.headers_mut()
            .append("content-length", HeaderValue::from_static("5"));
    }
    let rsp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.expect("a whole body");
    assert_eq!(&body.to_bytes()[..], b"ok");
    assert_eq!(up.header(0, "content-length"), ["5"], "{:?}", up.requests());
    assert!(
        up.requests()[0].ends_with("\r\n\r\nhello"),
        "{:?}",
        up.requests()
    );
}

/// An upstream answer whose `content-length` comes twice with one value, on two lines or as a
/// list (`5, 5`), reaches an HTTP/1.1 client (the lean server) and an HTTP/2 one (hyper's side)
/// with one `content-length: 5`, as nginx passes it on. Before, the HTTP/1.1 client got the
/// list as it came and the HTTP/2 client's stream was reset as malformed. Values that differ
/// are a 502, and the connection is not used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_in_an_answer_reaches_every_client_as_one() {
    const LINES: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-up: 1\r\nContent-Length: 5\r\n\r\nhello";
    const LIST: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nx-up: 1\r\n\r\nhello";
    const LIST_ODD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5 , 05\r\n\r\nhello";
    const DIFFER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    // Each case is asked for twice: by an HTTP/1.1 client, then by an HTTP/2 one.
    let cases = [LINES, LIST, LIST_ODD];
    let mut answers: Vec<(&'static [u8], Then)> = Vec::new();
    for case in cases {
        answers.extend([(case, Then::Stay), (case, Then::Stay)]);
    }
    answers.push((DIFFER, Then::Stay));
    let up = Scripted::start(answers).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for case in cases {
        let what = String::from_utf8_lossy(case);
        let rsp = raw_get(addr, "/h1").await;
        assert_eq!(rsp.status(), Some(200), "{what}: {}", rsp.text());
        let lines = head_lines(&rsp);
        assert_eq!(named(&lines, "content-length"), 1, "{what}: {lines:?}");
        assert_eq!(
            rsp.header("content-length").as_deref(),
            Some("5"),
            "{what}: {lines:?}"
        );
        assert!(
            rsp.text().ends_with("\r\n\r\nhello"),
            "{what}: {}",
            rsp.text()
        );

        let rsp = h2_get(addr, "/h2").await;
        assert_eq!(rsp.status(), 200, "{what}");
        let lengths: Vec<_> = rsp.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"], "{what}: {:?}", rsp.headers());
        let body = rsp.into_body().collect().await;
        let body = body.unwrap_or_else(|e| panic!("{what}: the body must end whole: {e}"));
        assert_eq!(&body.to_bytes()[..], b"hello", "{what}");
    }
    let rsp = http::get(addr, "/differ", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
}

/// An answer with a `transfer-encoding` whose last coding is not `chunked` (`identity`, with
/// or without a `content-length`, or `chunked, gzip`) is refused 502 as other malformed
/// answers are: RFC 9112 §6.3 would have its body run to the connection's close, which an
/// upstream that keeps its connection open never sends, and a client given it as it came
/// (`transfer-encoding: identity, chunked`) waited for the end of a body that never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_encoding_not_ending_in_chunked_is_a_502_never_passed_on() {
    let cases: [&'static [u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    // Each case twice (HTTP/1.1, then HTTP/2), then a good answer: the proxy still serves.
    let mut answers: Vec<(&'static [u8], Then)> = Vec::new();
    for case in cases {
        answers.extend([(case, Then::Stay), (case, Then::Stay)]);
    }
    answers.push((
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        Then::Stay,
    ));
    let up = Scripted::start(answers).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for case in cases {
        let what = String::from_utf8_lossy(case);
        let rsp = raw_get(addr, "/h1").await;
        assert!(rsp.closed, "{what}: the answer must end: {}", rsp.text());
        assert_eq!(rsp.status(), Some(502), "{what}: {}", rsp.text());
        assert_eq!(
            rsp.header("x-rampart-reason").as_deref(),
            Some("upstream_unavailable"),
            "{what}"
        );
        assert!(
            rsp.header("transfer-encoding").is_none(),
            "{what}: {}",
            rsp.text()
        );
        assert!(
            rsp.text().contains("malformed answer"),
            "{what}: {}",
            rsp.text()
        );

        let rsp = h2_get(addr, "/h2").await;
        assert_eq!(rsp.status(), 502, "{what}");
        let body = tokio::time::timeout(Duration::from_secs(5), rsp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{what}: the answer must end"));
        assert!(body.is_ok(), "{what}: {body:?}");
    }
    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok"[..]));
}

/// An answer without a body (204, 304, or to HEAD) ends at its head whatever its
/// `transfer-encoding` says (RFC 9112 §6.3), so it is passed on, without that field, not
/// refused: the 502s above are for bodies that could not be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_body_is_passed_on_whatever_its_transfer_encoding() {
    let answers: Vec<(&'static [u8], Then)> = vec![
        (
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: identity\r\n\r\n",
            Then::Stay,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Then::Stay,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
            Then::Stay,
        ),
    ];
    let up = Scripted::start(answers).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = raw_get(addr, "/204").await;
    assert_eq!(rsp.status(), Some(204), "{}", rsp.text());
    assert!(rsp.header("transfer-encoding").is_none(), "{}", rsp.text());
    let rsp = h2_get(addr, "/304").await;
    assert_eq!(rsp.status(), 304);
    assert!(rsp.headers().get("transfer-encoding").is_none());
    let head = "HEAD /head HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, head.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert!(rsp.header("transfer-encoding").is_none(), "{}", rsp.text());
}

/// A 304, and an answer to HEAD, have no body whatever their `content-length` says (RFC 9110
/// §15.4.5, RFC 9112 §6.3), so two lines that differ frame nothing and are no framing error:
/// the answer reaches an HTTP/1.1 client and an HTTP/2 one with the first value alone, as
/// nginx passes it on. Before, both were a 502. The same lines on an answer with a body stay
/// a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_lengths_on_an_answer_without_a_body_are_no_framing_error() {
    const NOT_MODIFIED: &[u8] = b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\
        Content-Length: 5\r\nContent-Length: 6\r\n\r\n";
    const TO_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n";
    const WITH_BODY: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    let answers: Vec<(&'static [u8], Then)> = vec![
        (NOT_MODIFIED, Then::Stay),
        (NOT_MODIFIED, Then::Stay),
        (TO_HEAD, Then::Stay),
        (TO_HEAD, Then::Stay),
        (WITH_BODY, Then::Stay),
        (WITH_BODY, Then::Stay),
    ];
    let up = Scripted::start(answers).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");

    let rsp = raw_get(addr, "/304").await;
    assert_eq!(rsp.status(), Some(304), "{}", rsp.text());
    let lines = head_lines(&rsp);
    // The HTTP/1.1 server writes no length on a 304 (RFC 9110 §8.6 lets it), one value or two.
    assert_eq!(named(&lines, "content-length"), 0, "{lines:?}");
    assert_eq!(rsp.header("etag").as_deref(), Some("\"a\""), "{lines:?}");
    let rsp = h2_get(addr, "/304").await;
    assert_eq!(rsp.status(), 304);
    let lengths: Vec<_> = rsp.headers().get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"], "{:?}", rsp.headers());

    let head = "HEAD /head HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, head.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let lines = head_lines(&rsp);
    assert_eq!(named(&lines, "content-length"), 1, "{lines:?}");
    assert_eq!(
        rsp.header("content-length").as_deref(),
        Some("7"),
        "{lines:?}"
    );
    let mut send = http::h2c(addr).await;
    let req = ::http::Request::head(format!("http://{addr}/head"))
        .body(http::empty())
        .expect("a valid request");
    let rsp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(rsp.status(), 200);
    let lengths: Vec<_> = rsp.headers().get_all("content-length").iter().collect();
    assert_eq!(lengths, ["7"], "{:?}", rsp.headers());

    let rsp = http::get(addr, "/body", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    let rsp = h2_get(addr, "/body").await;
    assert_eq!(rsp.status(), 502);
}

/// A 204 goes to every client without `content-length` (RFC 9110 §8.6), whatever its
/// HTTP/1.1 upstream said: the rule an HTTP/2 upstream's 204 follows too (`upstream_h2.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_reaches_every_client_without_its_content_length() {
    const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nx-up: 1\r\n\r\n";
    let up = Scripted::start(vec![(NO_CONTENT, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = raw_get(addr, "/204").await;
    assert_eq!(rsp.status(), Some(204), "{}", rsp.text());
    let lines = head_lines(&rsp);
    assert_eq!(named(&lines, "content-length"), 0, "{lines:?}");
    assert_eq!(named(&lines, "x-up"), 1, "{lines:?}");
    let rsp = h2_get(addr, "/204").await;
    assert_eq!(rsp.status(), 204);
    assert!(
        rsp.headers().get("content-length").is_none(),
        "{:?}",
        rsp.headers()
    );
}

/// A coding before the last `chunked` (`gzip, chunked`) is the content's: an HTTP/1.1 client is
/// given it (`transfer-encoding: gzip` over rampart's own chunked), but HTTP/2 has no transfer
/// codings and HTTP/1.0 none at all, so such a client would get the body still coded and
/// unlabelled: it gets a 502 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coded_answer_is_refused_to_a_client_that_cannot_be_given_it() {
    let coded: &'static [u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nGZGZ\r\n0\r\n\r\n";
    let up = Scripted::start(vec![(coded, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = h2_get(addr, "/h2").await;
    assert_eq!(rsp.status(), 502);
    assert_eq!(rsp.headers()["x-rampart-reason"], "upstream_unavailable");
    let req = "GET /h10 HTTP/1.0\r\nhost: app\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(rsp.status(), Some(502), "{}", rsp.text());
    assert!(rsp.text().contains("transfer coding"), "{}", rsp.text());
    let rsp = raw_get(addr, "/h11").await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(
        rsp.header("transfer-encoding").as_deref(),
        Some("gzip, chunked")
    );
}

/// An answer with a transfer coding (`gzip, chunked`) is not kept for an idempotency key: its
/// replay, whole in memory, came framed by its length beside `transfer-encoding: gzip`, and the
/// client's connection was closed with nothing written. The key's repeat runs again instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coded_answer_is_not_kept_for_an_idempotency_key() {
    let coded: &'static [u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nGZGZ\r\n0\r\n\r\n";
    let up = Scripted::start(vec![(coded, Then::Stay)]).await;
    let text = crate::support::one_route("policies:\n  p: { idempotency: { ttl: 1h } }\n").replace(
        "      - upstream: app\n",
        "      - upstream: app\n        policy: p\n",
    );
    let proxy = crate::support::Proxy::builder(&text)
        .var("APP", up.addr)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let req = "POST /pay HTTP/1.1\r\nhost: app\r\nidempotency-key: k1\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx";
    for n in 1..=2 {
        let rsp =
            crate::support::raw::exchange(addr, req.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(rsp.status(), Some(200), "request {n}: {}", rsp.text());
        assert_eq!(
            rsp.header("transfer-encoding").as_deref(),
            Some("gzip, chunked"),
            "request {n}: {}",
            rsp.text()
        );
        assert!(
            rsp.header("x-rampart-idempotent-replay").is_none(),
            "request {n}: {}",
            rsp.text()
        );
    }
}

/// A status outside 100–599 (600, 999: RFC 9110 §15 defines none, and a client is to read one
/// as a 5xx) is a 502 saying the answer was malformed, counted as a failed try (code 502), as
/// an HTTP/2 upstream's is (`upstream_h2/odd.rs`); the connection is not used again. Before,
/// the client got the status as sent, with the reason phrase `<none>` from hyper's server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_outside_100_to_599_is_a_502() {
    let up = Scripted::start(vec![
        (
            b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok",
            Then::Stay,
        ),
        (b"HTTP/1.1 999 \r\ncontent-length: 2\r\n\r\nok", Then::Stay),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::Stay,
        ),
    ])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for code in ["600", "999"] {
        let rsp = http::get(addr, "/odd", &[]).await;
        rsp.assert_rampart(502, "upstream_unavailable");
        let msg = rsp.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            msg.contains("malformed answer") && msg.contains("100-599"),
            "{code}: {msg}"
        );
    }
    let text = crate::support::metrics(proxy.admin()).await;
    let codes =
        crate::support::metrics::label_values(&text, "rampart_upstream_requests_total", "code");
    assert_eq!(codes, ["502"], "{text}");
    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok"[..]));
    assert_eq!(
        up.accepted(),
        3,
        "no connection used after a malformed answer"
    );
}
