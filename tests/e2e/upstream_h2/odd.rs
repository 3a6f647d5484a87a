//! HTTP/2 upstreams that answer what hyper's and the h2 library's servers never send: content
//! after a head that has none (a 204, a 304, an answer to HEAD), a status outside 100–599,
//! fields HTTP/2 forbids. A raw server writes the frames; rampart must hand clients what an
//! HTTP/1.1 upstream's same answer gives them.

use std::net::SocketAddr;

use ::http::StatusCode;
use tokio::net::TcpListener;

use super::{h2_frame, proxy};
use crate::support::{http, metrics};

/// A raw HTTP/2 server on 127.0.0.1 that answers every request with the same frames: a
/// HEADERS of `block` (an HPACK block, see [`status`] and [`field`]), then one DATA of `data`
/// that ends the stream (or the HEADERS ends it, for `None`).
struct Canned {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `:status` as a literal field not indexed, its name HPACK's static entry 8.
fn status(code: &str) -> Vec<u8> {
    let mut b = vec![0x08, u8::try_from(code.len()).expect("short")];
    b.extend_from_slice(code.as_bytes());
    b
}

/// A field as a literal not indexed, with a literal name (lower case).
fn field(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, u8::try_from(name.len()).expect("short")];
    b.extend_from_slice(name.as_bytes());
    b.push(u8::try_from(value.len()).expect("short"));
    b.extend_from_slice(value.as_bytes());
    b
}

/// What [`Canned`] answers a request's stream with: its frames.
type Answer = std::sync::Arc<dyn Fn(u32) -> Vec<u8> + Send + Sync>;

impl Canned {
    async fn start(block: Vec<u8>, data: Option<&'static [u8]>) -> Canned {
        Self::answering(std::sync::Arc::new(move |stream| {
            let end = if data.is_none() { 0x1 } else { 0 };
            let mut out = h2_frame(0x1, 0x4 | end, stream, &block);
            if let Some(d) = data {
                out.extend(h2_frame(0x0, 0x1, stream, d));
            }
            out
        }))
        .await
    }

    /// A server that answers each request's stream with the frames `answer` gives.
    async fn answering(answer: Answer) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(Self::serve(tcp, answer.clone()));
            }
        });
        Canned { addr, task }
    }

    async fn serve(mut tcp: tokio::net::TcpStream, answer: Answer) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut preface = [0u8; 24];
        if tcp.read_exact(&mut preface).await.is_err() {
            return;
        }
        if tcp.write_all(&h2_frame(0x4, 0, 0, &[])).await.is_err() {
            return;
        }
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            let out = match kind {
                // SETTINGS and PING are acknowledged.
                0x4 if flags & 0x1 == 0 => h2_frame(0x4, 0x1, 0, &[]),
                0x6 if flags & 0x1 == 0 => h2_frame(0x6, 0x1, 0, &payload),
                // A request's end: its answer.
                0x0 | 0x1 if flags & 0x1 != 0 => answer(stream),
                _ => continue,
            };
            if tcp.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// An HTTP/2 upstream's 204 and 304 that carry content anyway (`content-length: 5` and a
/// DATA frame `hello`, which the h2 library takes) reach an HTTP/2 client without it, the 204
/// without its `content-length` too, as an HTTP/1.1 upstream's (whose reader frames no body
/// for them); so does its answer to HEAD, which keeps its length. Before, the HTTP/2 client got
/// the 204 with `content-length: 5` and `hello`, which curl resets as a PROTOCOL_ERROR, and
/// the answer to HEAD broke off: the h2 library refuses its DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_after_a_head_that_has_none_never_reaches_the_client() {
    for code in ["204", "304"] {
        let block = [
            status(code),
            field("content-length", "5"),
            field("x-up", "1"),
        ]
        .concat();
        let up = Canned::start(block, Some(b"hello")).await;
        let proxy = proxy(up.addr, "").await;
        let addr = proxy.listener("inbound");
        let rsp = http::h2_get(addr, "/nothing", &[]).await;
        assert_eq!(rsp.status.as_str(), code, "{:?}", rsp.headers);
        assert_eq!(rsp.header("x-up"), Some("1"), "{code}: {:?}", rsp.headers);
        assert!(rsp.body.is_empty(), "{code}: {:?}", rsp.body);
        let length = rsp.header("content-length");
        match code {
            "204" => assert_eq!(length, None, "{:?}", rsp.headers),
            _ => assert_eq!(length, Some("5"), "{:?}", rsp.headers),
        }
        // An HTTP/1.1 client (the lean server) is given no content either.
        let req = b"GET /nothing HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
        let rsp =
            crate::support::raw::exchange(addr, req, std::time::Duration::from_secs(10)).await;
        let text = rsp.text();
        assert_eq!(rsp.status().map(|s| s.to_string()).as_deref(), Some(code));
        assert!(text.ends_with("\r\n\r\n"), "{code}: {text}");
    }
    let block = [status("200"), field("content-length", "5")].concat();
    let up = Canned::start(block, Some(b"hello")).await;
    let proxy = proxy(up.addr, "").await;
    let headed = http::h2_head(proxy.listener("inbound"), "/head", &[]).await;
    assert_eq!(headed.status, StatusCode::OK);
    assert_eq!(
        headed.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..]),
        "{:?}",
        headed.headers
    );
    assert!(headed.ended_at_head, "{headed:?}");
    assert!(
        headed.body.as_ref().is_ok_and(|b| b.is_empty()),
        "{headed:?}"
    );
}

/// An HTTP/2 upstream's status outside 100–599 (600, 999; RFC 9110 §15 defines none, and a
/// client is to read one as a 5xx) is a 502 saying the answer was malformed, counted as a
/// failed try (code 502), as an HTTP/1.1 upstream's is. Before, the client got the status
/// as sent, an HTTP/1.1 one with the reason phrase `<none>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_outside_100_to_599_is_a_502() {
    for code in ["600", "999"] {
        let block = [status(code), field("content-length", "2")].concat();
        let up = Canned::start(block, Some(b"ok")).await;
        let proxy = proxy(up.addr, "").await;
        let addr = proxy.listener("inbound");
        for rsp in [
            http::h2_get(addr, "/odd", &[]).await,
            http::get(addr, "/odd", &[]).await,
        ] {
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
        let text = metrics(proxy.admin()).await;
        let codes =
            crate::support::metrics::label_values(&text, "rampart_upstream_requests_total", "code");
        assert_eq!(codes, ["502"], "{code}: {text}");
    }
}

/// An HTTP/2 upstream's answer head with a field HTTP/2 forbids (`connection`,
/// `transfer-encoding`: RFC 9113 §8.2.2), which the h2 library refuses, is a 502 that says the
/// answer was malformed, as an HTTP/1.1 upstream's malformed head is. Before, it said the
/// connection to the upstream was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_field_in_an_h2_answer_head_is_a_502_saying_malformed() {
    for (name, value) in [("connection", "close"), ("transfer-encoding", "chunked")] {
        let block = [status("200"), field(name, value)].concat();
        let up = Canned::start(block, Some(b"ok")).await;
        let proxy = proxy(up.addr, "").await;
        let rsp = http::h2_get(proxy.listener("inbound"), "/bad", &[]).await;
        rsp.assert_rampart(502, "upstream_unavailable");
        let msg = rsp.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(msg.contains("malformed answer"), "{name}: {msg}");
        assert!(!msg.contains("connection lost"), "{name}: {msg}");
    }
}

/// The 502 message of `rsp`.
pub(super) fn message(rsp: &http::Resp) -> String {
    rsp.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A malformed answer head the h2 library takes as a protocol error of the whole connection
/// (an upper-case field name, an unknown pseudo-header): the 502 says "malformed answer or
/// HTTP/2 protocol error", and that the connection ended with every request on it; a stream
/// the upstream resets before its head says so, with the code. Before, both said "connection
/// lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_protocol_error_or_a_reset_stream_is_said_as_such() {
    for (name, value) in [("X-Upper", "1"), (":odd", "1")] {
        let block = [status("200"), field(name, value)].concat();
        let up = Canned::start(block, Some(b"ok")).await;
        let proxy = proxy(up.addr, "").await;
        let rsp = http::get(proxy.listener("inbound"), "/bad", &[]).await;
        rsp.assert_rampart(502, "upstream_unavailable");
        let msg = message(&rsp);
        assert!(
            msg.contains("malformed answer or HTTP/2 protocol error"),
            "{name}: {msg}"
        );
        assert!(msg.contains("every request on it"), "{name}: {msg}");
        assert!(!msg.contains("connection lost"), "{name}: {msg}");
        let warned = || proxy.log().contains("HTTP/2 upstream connection failed");
        crate::assert_eventually!(warned(), "{name}: warned, with why: {}", proxy.log());
    }
    for (code, said) in [(2u32, "INTERNAL_ERROR"), (8, "CANCEL"), (0, "NO_ERROR")] {
        let up = Canned::answering(std::sync::Arc::new(move |stream| {
            h2_frame(0x3, 0, stream, &code.to_be_bytes())
        }))
        .await;
        let proxy = proxy(up.addr, "").await;
        let rsp = http::get(proxy.listener("inbound"), "/reset", &[]).await;
        rsp.assert_rampart(502, "upstream_unavailable");
        let msg = message(&rsp);
        assert!(
            msg.contains("reset the stream") && msg.contains(said),
            "{said}: {msg}"
        );
    }
}

/// An upstream that ends its HTTP/2 connection with an error, `GOAWAY(ENHANCE_YOUR_CALM)` with
/// debug data (what h2 servers send a flood of small DATA frames), is named so in the `warn`
/// line of the connection's failure: the reason by its name, who sent it and the debug data.
/// Before, the line said only hyper's "http2 error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_goaway_reason_and_debug_data_are_in_the_warn_line() {
    let up = Canned::answering(std::sync::Arc::new(|_| {
        // Last stream 0, ENHANCE_YOUR_CALM (0xb), then the debug data.
        let mut away = [0u32.to_be_bytes(), 0xbu32.to_be_bytes()].concat();
        away.extend_from_slice(b"too_many_data_frames");
        h2_frame(0x7, 0, 0, &away)
    }))
    .await;
    let proxy = proxy(up.addr, "").await;
    let rsp = http::get(proxy.listener("inbound"), "/calm", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    let line = || {
        proxy
            .log()
            .lines()
            .find(|l| l.contains("HTTP/2 upstream connection failed"))
            .map(str::to_owned)
    };
    crate::assert_eventually!(line().is_some(), "warned: {}", proxy.log());
    let line = line().unwrap_or_default();
    for said in [
        "GOAWAY ENHANCE_YOUR_CALM from the upstream",
        "too_many_data_frames",
    ] {
        assert!(line.contains(said), "{said:?}: {line}");
    }
}

/// An HTTP/1.1-only server behind `protocol: http2` (it answers the connection preface with
/// an HTTP/1.1 400, or closes) is a 502 that says it may not speak HTTP/2. Before: "connection
/// lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_speak_http2_is_said_to_maybe_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for answer in [
        &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"[..],
        b"",
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 24];
                let _ = tcp.read_exact(&mut buf).await;
                let _ = tcp.write_all(answer).await;
            }
        });
        let proxy = proxy(addr, "").await;
        let rsp = http::get(proxy.listener("inbound"), "/h1", &[]).await;
        rsp.assert_rampart(502, "upstream_unavailable");
        let msg = message(&rsp);
        assert!(msg.contains("may not speak HTTP/2"), "{answer:?}: {msg}");
        task.abort();
    }
}
