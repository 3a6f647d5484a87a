//! The lean HTTP/1.1 server (`src/proxy/h1.rs`, issue 22) through real sockets: what it
//! serves itself (keep-alive requests without a body or with a small one, with its head or
//! after it, pipelined or not, HEAD, HTTP/1.0, close) and what it hands to hyper
//! mid-connection with the bytes it read (a body whose rest is slow, chunked or large;
//! ambiguous framing; HTTP/2 prior knowledge), in front of the sample service.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::conn::{reset, Conn};
use crate::support::{http, one_route, sample, Proxy};

async fn setup() -> (rampart::sample::Sample, Proxy, SocketAddr) {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    (app, proxy, addr)
}

/// How a client with prior knowledge begins HTTP/2: the connection preface, and an empty
/// SETTINGS frame.
pub(crate) const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.local\r\n\r\n")
}

#[tokio::test]
async fn pipelined_gets_are_answered_in_order() {
    let (app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    let all = format!(
        "{}{}{}",
        get("/headers?n=1"),
        get("/status/404"),
        "GET /ok HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n"
    );
    c.send(all.as_bytes()).await;
    let first = c.answer(false).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.text().contains("/headers?n=1"), "{}", first.text());
    let second = c.answer(false).await;
    assert_eq!(second.status, 404, "{second:?}");
    let third = c.answer(false).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.text(), "ok\n");
    assert_eq!(third.header("connection"), Some("close"));
    assert!(c.closes().await, "closed after the answer to `close`");
    assert_eq!(app.hits_for("/ok"), 1);
}

#[tokio::test]
async fn one_connection_serves_many_requests() {
    let (app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    for i in 0..200 {
        c.send(get(&format!("/headers?i={i}")).as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        assert!(a.text().contains(&format!("i={i}")), "{}", a.text());
        assert!(a.header("date").is_some(), "a date on every answer");
        assert!(a.header("x-request-id").is_some());
        assert_eq!(a.header("connection"), None, "keep-alive is the default");
    }
    assert_eq!(app.hits_for("/headers"), 200);
}

#[tokio::test]
async fn small_bodies_that_come_with_their_heads_are_served_in_order() {
    let (app, _proxy, addr) = setup().await;
    // All at once: each body is in the buffer behind its head, so the lean server takes it
    // whole, and the next head starts where the body ends.
    let mut c = Conn::open(addr).await;
    let all = format!(
        "{}{}{}{}",
        get("/ok"),
        "POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\r\nhello",
        get("/headers?after=post"),
        "PUT /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: 15\r\n\r\nGET /x HTTP/1.1",
    );
    c.send(all.as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "ok\n"));
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello"), "{a:?}");
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert!(a.text().contains("after=post"), "{}", a.text());
    let a = c.answer(false).await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (200, "GET /x HTTP/1.1"),
        "a body that looks like a head is a body"
    );
    // One at a time, on the same connection: still served, still in step.
    for i in 0..50 {
        let body = format!("upload {i}");
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.send(req.as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!((a.status, a.text()), (200, body), "{a:?}");
    }
    assert_eq!(app.hits_for("/echo"), 52);
    assert_eq!(app.hits_for("/headers"), 1);
}

/// A connection past one `GET /ok`, then the head of a `POST /echo` of `hello` and its first
/// two bytes.
async fn half_an_upload(addr: SocketAddr) -> Conn {
    let mut c = Conn::open(addr).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    c.send(b"POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\r\nhe")
        .await;
    c
}

/// A body that comes after its head, in later reads, is read whole by the lean server before
/// the request goes on: the upstream sees nothing of it until then (hyper would have sent the
/// head on at once and streamed the body).
#[tokio::test]
async fn a_body_after_its_head_is_read_whole_before_the_upstream_sees_it() {
    let (app, _proxy, addr) = setup().await;
    let mut c = half_an_upload(addr).await;
    // Well within the gap the lean server waits for the rest (200 ms).
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(app.hits_for("/echo"), 0, "held until the body is whole");
    c.send(b"llo").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello"), "{a:?}");
    assert_eq!(app.hits_for("/echo"), 1);

    // The most it reads whole (64 KiB), the head alone first and the body in four pieces,
    // then part of the next request behind the last piece.
    let body: String = (0..64 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    c.send(
        format!(
            "PUT /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    for piece in body.as_bytes().chunks(16 * 1024) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.send(piece).await;
    }
    c.send(b"GET /headers?after=put HTTP/1.1\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), body, "the whole body back, in order");
    c.send(b"Host: app.local\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert!(a.text().contains("after=put"), "{}", a.text());
    assert_eq!(app.hits_for("/echo"), 2);
}

/// A client that resets its connection while the lean server reads its body's rest: nothing
/// of the request reaches the upstream, and the proxy serves the next connection.
#[tokio::test]
async fn a_reset_inside_a_held_body_reaches_no_upstream() {
    let (app, _proxy, addr) = setup().await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: 4096\r\n\r\nfirst bytes",
    )
    .await
    .expect("write");
    // Within the gap: the lean server holds the request, waiting for the rest.
    tokio::time::sleep(Duration::from_millis(40)).await;
    reset(tcp);
    // Past the gap, when a held request would have gone on to hyper and the upstream.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.hits_for("/echo"),
        0,
        "a reset upload reaches no upstream"
    );
    let mut c = Conn::open(addr).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200, "the proxy serves on");
}

/// A `body_idle_timeout` shorter than the lean server's gap (200 ms) bounds its wait too: a
/// body's rest that stalls longer than the timeout is answered 408, as by hyper. With 30 ms,
/// the lean server hands the request to hyper after 30 ms, whose 408 comes 30 ms later; the
/// rest, sent 160 ms after the first bytes, comes too late. (Had the lean server waited its
/// whole gap, the rest would have come inside it and been served.)
#[tokio::test]
async fn a_short_body_idle_timeout_bounds_the_lean_servers_wait_for_a_body() {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route("runtime: { body_idle_timeout: 30ms }"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let mut c = Conn::open(proxy.listener("inbound")).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    // `/fail-first/0` reads the whole upload before it answers (`/echo` would answer at once,
    // and a stall would cut its answer short rather than draw a 408).
    c.send(b"POST /fail-first/0 HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\r\nhe")
        .await;
    tokio::time::sleep(Duration::from_millis(160)).await;
    c.send(b"llo").await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 408, "a stall past body_idle_timeout: {a:?}");
    assert_eq!(app.hits_for("/ok"), 1);
}

#[tokio::test]
async fn slow_or_chunked_or_large_bodies_go_to_hyper_with_the_bytes_read() {
    let (app, _proxy, addr) = setup().await;
    // The rest of a body slower than the lean server's gap (200 ms): hyper takes the request,
    // sends it on with what came (the upstream sees it before the rest), streams the rest,
    // and keeps the connection.
    let mut c = half_an_upload(addr).await;
    let waited = tokio::time::Instant::now();
    while app.hits_for("/echo") == 0 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.hits_for("/echo"), 1, "sent on before the body is whole");
    assert!(
        waited.elapsed() >= Duration::from_millis(150),
        "handed off after the gap, not at once ({:?})",
        waited.elapsed()
    );
    c.send(b"llo").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello"), "{a:?}");
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(
        c.answer(false).await.status,
        200,
        "hyper keeps the connection"
    );

    // Chunked.
    let mut c = Conn::open(addr).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    c.send(b"POST /echo HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"3\r\nabc\r\n0\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "abc"), "{a:?}");

    // Larger than the lean server takes whole (64 KiB), sent with its head all at once.
    let big = "b".repeat(64 * 1024 + 1);
    let mut c = Conn::open(addr).await;
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    c.send(req.as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), big, "the whole body back");
    assert_eq!(app.hits_for("/echo"), 3);
    assert_eq!(app.hits_for("/ok"), 3);
}

#[tokio::test]
async fn two_lengths_are_refused_by_hyper_and_reach_no_upstream() {
    let (app, _proxy, addr) = setup().await;
    for framing in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
    ] {
        let mut c = Conn::open(addr).await;
        let req =
            format!("POST /echo HTTP/1.1\r\nHost: app.local\r\n{framing}\r\n\r\nhello0\r\n\r\n");
        c.send(req.as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!(a.status, 400, "{framing}: {a:?}");
    }
    assert_eq!(
        app.hits_for("/echo"),
        0,
        "no ambiguous request reached the upstream"
    );
}

/// `chunked` named twice (one line or two) is refused 400 `bad_request` on a fresh connection
/// by the lean server, and the same on a connection hyper took over after a chunked upload,
/// whose parser reads it as one `chunked` (it was forwarded and answered 200). Either way it
/// reaches no upstream and the connection closes.
#[tokio::test]
async fn chunked_twice_is_refused_by_either_server() {
    let (app, _proxy, addr) = setup().await;
    for te in [
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ] {
        let req =
            format!("POST /echo HTTP/1.1\r\nHost: app.local\r\n{te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        for handed_off in [false, true] {
            let mut c = Conn::open(addr).await;
            if handed_off {
                c.send(
                    b"POST /echo HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n",
                )
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.send(b"2\r\nok\r\n0\r\n\r\n").await;
                let a = c.answer(false).await;
                assert_eq!((a.status, a.text().as_str()), (200, "ok"), "{a:?}");
            }
            c.send(req.as_bytes()).await;
            let a = c.answer(false).await;
            assert_eq!(a.status, 400, "{te:?}, handed off {handed_off}: {a:?}");
            assert_eq!(a.header("x-rampart-reason"), Some("bad_request"), "{a:?}");
            assert!(c.closes().await, "{te:?}, handed off {handed_off}: closed");
        }
    }
    assert_eq!(
        app.hits_for("/echo"),
        2,
        "only the two plain chunked uploads reached the upstream"
    );
}

#[tokio::test]
async fn head_announces_the_length_and_sends_no_body() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    let both = format!(
        "HEAD /bytes/1000 HTTP/1.1\r\nHost: app.local\r\n\r\n{}",
        get("/ok")
    );
    c.send(both.as_bytes()).await;
    let head = c.answer(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"), "{head:?}");
    let next = c.answer(false).await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "ok\n"),
        "no body bytes between the HEAD answer and the next: {next:?}"
    );
}

#[tokio::test]
async fn http10_closes_unless_kept_alive() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(b"GET /ok HTTP/1.0\r\nHost: app.local\r\n\r\n").await;
    let a = c.answer(false).await;
    assert!(a.line.starts_with("HTTP/1.0 200"), "{a:?}");
    assert_eq!(a.text(), "ok\n");
    assert!(c.closes().await, "HTTP/1.0 closes by default");

    let mut c = Conn::open(addr).await;
    for _ in 0..2 {
        c.send(b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let a = c.answer(false).await;
        assert!(a.line.starts_with("HTTP/1.0 200"), "{a:?}");
        assert_eq!(a.header("connection"), Some("keep-alive"));
    }
    // An unknown length to HTTP/1.0: the body runs to the close.
    c.send(b"GET /drip?chunks=2&ms=10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.header("transfer-encoding"), None, "{a:?}");
    assert_eq!(a.text(), "chunk 0\nchunk 1\n");
}

#[tokio::test]
async fn a_chunked_upstream_answer_is_chunked_to_the_client() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(get("/drip?chunks=3&ms=30").as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert_eq!(a.text(), "chunk 0\nchunk 1\nchunk 2\n");
    c.send(get("/bytes/200000").as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!(a.body.len(), 200_000, "a large body whole");
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(
        c.answer(false).await.text(),
        "ok\n",
        "the connection lives on"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_goes_to_hyper() {
    let (app, _proxy, addr) = setup().await;
    for _ in 0..2 {
        let rsp = http::h2_get(addr, "/ok", &[]).await;
        assert_eq!(rsp.version, ::http::Version::HTTP_2);
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.text(), "ok\n");
    }
    assert_eq!(app.hits_for("/ok"), 2);
}

#[tokio::test]
async fn a_whole_request_then_fin_is_answered_by_the_lean_server() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    let two = format!("{}{}", get("/ok"), get("/status/201"));
    c.send(two.as_bytes()).await;
    c.io.shutdown().await.expect("half-close");
    assert_eq!(c.answer(false).await.status, 200);
    assert_eq!(c.answer(false).await.status, 201);
    assert!(c.closes().await);
}

/// A client that pipelines its next request while the first's answer is awaited, and then
/// ends its stream (a half-close after its last request, RFC 9112 §9.6), gets both answers in
/// order, then the end of the stream. Before, that end of stream, 100 ms into the wait, read
/// as the client's going: the first request was abandoned (a 499) and nothing answered.
#[tokio::test]
async fn a_request_pipelined_during_a_wait_then_fin_gets_both_answers() {
    let (app, proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(get("/slow?ms=500").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(get("/status/201").as_bytes()).await;
    c.io.shutdown().await.expect("half-close");
    let first = c.answer(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "ok\n"),
        "{first:?}"
    );
    assert_eq!(c.answer(false).await.status, 201);
    assert!(c.closes().await, "closed after the last answer");
    assert_eq!(app.hits_for("/status/201"), 1);
    no_client_gone(&proxy).await;
}

/// The same on a connection hyper serves (a chunked upload hands it over): requests pipelined
/// behind a slow one, sent with it or while its answer is awaited, then the end of the
/// client's stream, are all answered in order, then the stream ends; nothing is a 499.
/// Before, hyper's client-gone watch (`h1/gone.rs`) timed that end of stream from hyper's last
/// read alone: a request hyper took from what it had read already, after the slow answer, was
/// dropped unanswered, and a request still unread made the end of stream the client's going.
#[tokio::test]
async fn requests_pipelined_on_a_connection_hyper_serves_then_fin_are_all_answered() {
    let (app, proxy, addr) = setup().await;
    let upload = |ms: u32| {
        format!(
            "POST /slow?ms={ms} HTTP/1.1\r\nHost: app.local\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    };
    // All at once, then the end of stream: the second slow request is taken from hyper's
    // buffer 300 ms after the end of stream came.
    let mut c = Conn::open(addr).await;
    let all = format!(
        "{}{}{}{}",
        upload(300),
        get("/status/201"),
        get("/slow?ms=200"),
        get("/status/202")
    );
    c.send(all.as_bytes()).await;
    c.io.shutdown().await.expect("half-close");
    for want in [200, 201, 200, 202] {
        let a = c.answer(false).await;
        assert_eq!(a.status, want, "{a:?}");
    }
    assert!(c.closes().await, "closed after the last answer");
    // One pipelined while the first answer is awaited, then the end of stream.
    let mut c = Conn::open(addr).await;
    c.send(upload(500).as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(get("/status/203").as_bytes()).await;
    c.io.shutdown().await.expect("half-close");
    for want in [200, 203] {
        let a = c.answer(false).await;
        assert_eq!(a.status, want, "{a:?}");
    }
    assert!(c.closes().await, "closed after the last answer");
    assert_eq!(app.hits_for("/status/202"), 1);
    assert_eq!(app.hits_for("/status/203"), 1);
    no_client_gone(&proxy).await;
}

/// No request was counted as its client's going (499).
async fn no_client_gone(proxy: &Proxy) {
    let text = crate::support::metrics(proxy.admin()).await;
    let gone = [("code", "499")];
    assert_eq!(
        crate::support::metric_value(&text, "rampart_requests_total", &gone),
        None,
        "{text}"
    );
}

/// The answer to an upload hyper streamed watches the client while its body streams (a
/// client gone lets it go), but a request the client pipelined behind it, then its end of
/// stream, is a half-close: the streaming answer is written whole, then the later one.
#[tokio::test]
async fn a_request_pipelined_while_an_uploads_answer_streams_then_fin_is_answered() {
    let (app, proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(
        b"POST /drip?chunks=8&ms=100 HTTP/1.1\r\nHost: app.local\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    // The head has come and the body streams when the next request and the end of stream go.
    tokio::time::sleep(Duration::from_millis(350)).await;
    c.send(get("/status/201").as_bytes()).await;
    c.io.shutdown().await.expect("half-close");
    let dripped = c.answer(false).await;
    assert_eq!(dripped.status, 200, "{dripped:?}");
    let whole: String = (0..8).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&dripped.body), whole, "{dripped:?}");
    let next = c.answer(false).await;
    assert_eq!(next.status, 201, "{next:?}");
    assert_eq!(app.hits_for("/status/201"), 1);
    no_client_gone(&proxy).await;
}

/// An HTTP/2 connection preface is prior knowledge only as the first bytes of a cleartext
/// connection (RFC 9113 §3.3): after a request it is a head no HTTP/1.1 server reads, answered
/// 400 `bad_request` and the connection closed. A connection that waited (parked) before its
/// preface still starts with it, and is served over HTTP/2. Before, the preface after a
/// request turned the connection into an HTTP/2 one.
#[tokio::test]
async fn an_h2_preface_after_a_request_is_refused() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    c.send(H2_HELLO).await;
    let refused = c.answer(false).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    assert!(refused.text().contains("preface"), "{}", refused.text());
    assert!(c.closes().await);
    // Past the lean server's park (250 ms), nothing sent yet: the preface is still first.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = ::http::Request::get(format!("http://{addr}/ok"))
        .body(http::empty())
        .expect("a request");
    let rsp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered over HTTP/2");
    let got = (rsp.status().as_u16(), rsp.version());
    assert_eq!(got, (200, ::http::Version::HTTP_2));
    assert_eq!(app.hits_for("/ok"), 2);
}

/// A `connection: close` request is answered whole and the connection then ends in order: the
/// client reads the answer and then the end of the stream, not a reset (the lean server closes
/// a plain socket without shutting it down first: its close sends the FIN).
#[tokio::test]
async fn a_close_request_gets_its_whole_answer_then_the_end_of_the_stream() {
    let (app, _proxy, addr) = setup().await;
    for path in ["/ok", "/bytes/100000"] {
        let mut c = Conn::open(addr).await;
        c.send(
            format!("GET {path} HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let (got, end) = c.read_to_end().await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            end.is_ok(),
            "{path}: the stream must end with a FIN after the answer, got {end:?} after {} bytes",
            got.len()
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:.200}");
        assert!(text.contains("connection: close"), "{path}: {text:.300}");
        let body = &got[text.find("\r\n\r\n").expect("a head") + 4..];
        match path {
            "/ok" => assert_eq!(body, b"ok\n"),
            _ => assert_eq!(body.len(), 100_000, "{path}: the whole body"),
        }
    }
    assert_eq!(app.hits(), 2);
}

/// A connection that ends leaves its buffers and the parser's kept state (header names, an
/// emptied map) to the next connection on its worker. Nothing a client sent may reach
/// another's request that way: one client sends a whole request whose header names the parser
/// keeps, another half a head and resets, and the next client's request, whose one header has a
/// name of the same length, reaches the upstream with its own lines alone.
#[tokio::test]
async fn a_connection_s_leftovers_never_reach_the_next_connection_s_request() {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", app.addr())
        .env("RAMPART_WORKERS", 1)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    let mut a = Conn::open(addr).await;
    a.send(b"GET /headers HTTP/1.1\r\nHost: app.local\r\nX-Secret-A: from-a\r\n\r\n")
        .await;
    let first = a.answer(false).await;
    assert_eq!(first.status, 200);
    assert!(first.text().contains("from-a"), "{}", first.text());
    drop(a);

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /headers HTTP/1.1\r\nHost: app.local\r\nX-Left-Behind: half")
        .await
        .expect("write");
    // Then a reset, not an end of stream (which hands the bytes to hyper): the connection ends
    // with half a head in its read buffer.
    tokio::time::sleep(Duration::from_millis(40)).await;
    reset(tcp);
    tokio::time::sleep(Duration::from_millis(40)).await;

    let mut b = Conn::open(addr).await;
    b.send(b"GET /headers HTTP/1.1\r\nHost: app.local\r\nX-Secret-B: from-b\r\n\r\n")
        .await;
    let seen = b.answer(false).await;
    assert_eq!(seen.status, 200);
    let text = seen.text().to_ascii_lowercase();
    assert!(text.contains("\"x-secret-b\""), "B's own header: {text}");
    // Nor anything of A's answer (`x-sample-addr`).
    for leaked in [
        "x-secret-a",
        "from-a",
        "x-left-behind",
        "half",
        "x-sample-addr",
    ] {
        assert!(
            !text.contains(leaked),
            "{leaked} reached B's request: {text}"
        );
    }
    assert_eq!(
        app.hits_for("/headers"),
        2,
        "the half head reached no upstream"
    );
}
