//! rampart's own HTTP/1.1 client on upstream connections (`pool.rs`, `pool/h1.rs`), against
//! a raw upstream that writes exact bytes: answer framings (chunked with extensions and
//! trailers, close-delimited), interim answers, garbage, and when a connection may be used
//! again (`connection: close`, an idle connection the upstream closed). Connections are
//! counted as the upstream accepts them.

// A test harness, off rampart's request path: a plain mutex around the captured bytes is fine.
#![allow(clippy::disallowed_types)]

mod framing;
mod held;
mod hop;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::http::Method;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::capture::{dechunk, whole_request, Capture};
use crate::support::{http, one_route, raw, sha256_hex, Proxy};

/// What the upstream does after writing an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Waits for the next request on the connection.
    Stay,
    /// Closes the connection (whatever the answer said).
    Close,
    /// Writes nothing and closes: a server whose idle timer fired as the request came.
    HangUp,
    /// Waits this long, then resets the connection (linger 0): an answer whose body breaks
    /// off part way.
    Reset(Duration),
    /// Keeps a chunked body coming and never ends it: a one-byte chunk every this long, until
    /// the peer goes.
    Drip(Duration),
}

/// A raw upstream: the n-th request (over all connections) gets `answers[n]` (the last one
/// repeats), written as exact bytes.
pub(crate) struct Scripted {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Scripted`] upstream sends before each answer: this many `102 Processing` heads,
/// each in a write of its own, this long apart.
type Interim = (usize, Duration);

impl Scripted {
    pub(crate) async fn start(answers: Vec<(&'static [u8], Then)>) -> Scripted {
        Scripted::after_interim(answers, (0, Duration::ZERO)).await
    }

    /// A [`Scripted`] upstream that sends `interim` answers before each of its answers.
    async fn after_interim(answers: Vec<(&'static [u8], Then)>, interim: Interim) -> Scripted {
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 must work");
        let addr = tcp.local_addr().expect("a bound socket has an address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(answers);
        let task = {
            let (accepted, closed, got) = (accepted.clone(), closed.clone(), got.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = tcp.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (answers, closed, got) = (answers.clone(), closed.clone(), got.clone());
                    tokio::spawn(async move {
                        serve(stream, &answers, interim, &got).await;
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        };
        Scripted {
            addr,
            accepted,
            closed,
            got,
            task,
        }
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn requests(&self) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    answers: &[(&'static [u8], Then)],
    (interim, gap): Interim,
    got: &Mutex<Vec<Vec<u8>>>,
) {
    if interim > 0 {
        // Each interim answer leaves at once, in a segment of its own.
        let _ = stream.set_nodelay(true);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let len = loop {
            if let Some(len) = whole_request(&buf) {
                break len;
            }
            match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let n = {
            let mut got = got.lock().unwrap_or_else(PoisonError::into_inner);
            got.push(buf.drain(..len).collect());
            got.len() - 1
        };
        let (answer, then) = answers[n.min(answers.len() - 1)];
        if then == Then::HangUp {
            return;
        }
        for _ in 0..interim {
            if stream.write_all(PROCESSING).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
        if stream.write_all(answer).await.is_err() {
            return;
        }
        match then {
            Then::Stay => {}
            // (A hang-up has returned before writing.)
            Then::Close | Then::HangUp => {
                let _ = stream.shutdown().await;
                return;
            }
            Then::Reset(after) => {
                tokio::time::sleep(after).await;
                crate::support::conn::reset(stream);
                return;
            }
            Then::Drip(every) => loop {
                tokio::time::sleep(every).await;
                if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                    return;
                }
            },
        }
    }
}

/// One worker: connections are pooled per worker, and these tests count them.
async fn proxy(app: SocketAddr) -> Proxy {
    Proxy::builder(&one_route(""))
        .var("APP", app)
        .env("RAMPART_WORKERS", 1)
        .spawn()
        .await
}

/// One request from a raw client that asks rampart to close afterwards: every byte it got.
async fn raw_get(addr: SocketAddr, path: &str) -> raw::RawResp {
    let req = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    raw::exchange(addr, req.as_bytes(), Duration::from_secs(10)).await
}

/// One `GET path` from an HTTP/2 client (prior knowledge, over plain TCP): hyper's side of the
/// listener serves it.
async fn h2_get(addr: SocketAddr, path: &str) -> ::http::Response<hyper::body::Incoming> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpStream::connect(addr)
        .await
        .expect("the listener accepts");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = ::http::Request::get(format!("http://{addr}{path}"))
        .body(http::empty())
        .expect("a valid request");
    tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered")
}

fn body_of(rsp: &raw::RawResp) -> Vec<u8> {
    let text = rsp.bytes.as_slice();
    let at = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(text.len(), |p| p + 4);
    text[at..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_reaches_the_client_whole_and_its_connection_is_reused() {
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n\
          5;name=value\r\nhello\r\n1\r\n \r\n6 ; x\r\nworld!\r\n0\r\nx-trailer: t\r\n\r\n",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for _ in 0..3 {
        let rsp = raw_get(addr, "/c").await;
        assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
        assert_eq!(rsp.header("x-up").as_deref(), Some("1"));
        assert_eq!(
            rsp.header("transfer-encoding").as_deref(),
            Some("chunked"),
            "{}",
            rsp.text()
        );
        assert_eq!(
            dechunk(&body_of(&rsp)).as_deref(),
            Some(&b"hello world!"[..]),
            "{}",
            rsp.text()
        );
    }
    assert_eq!(
        up.accepted(),
        1,
        "a whole chunked answer leaves its connection reusable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_answer_reaches_the_client_and_its_connection_is_not_reused() {
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nx-up: 1\r\n\r\nuntil the end",
        Then::Close,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for _ in 0..2 {
        let rsp = http::get(addr, "/close", &[]).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.body, Bytes::from_static(b"until the end"));
    }
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_connection_close_is_not_reused() {
    // The upstream says close but keeps the connection open: rampart must not send another
    // request on it.
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nok\n",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let client = http::client();
    for _ in 0..3 {
        let rsp = http::send(&client, addr, Method::GET, "/", &[], http::empty())
            .await
            .expect("answered");
        assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok\n"[..]));
    }
    assert_eq!(
        up.accepted(),
        3,
        "one connection per answer that said close"
    );
    // An HTTP/1.0 answer without keep-alive is the same.
    let up10 = Scripted::start(vec![(
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        Then::Stay,
    )])
    .await;
    let proxy = self::proxy(up10.addr).await;
    for _ in 0..2 {
        let rsp = http::get(proxy.listener("inbound"), "/", &[]).await;
        assert_eq!(rsp.status, 200);
    }
    assert_eq!(up10.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_connection_list_leaks_no_header_it_names_and_close_counts_in_any_spelling() {
    // Two `connection` lines: one names a header the client must not see among empty tokens
    // and a token with a byte that is not ASCII, the other says close in capitals between tabs.
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nconnection: ,, X-Secret ,\xffkeep-alive\r\n\
          connection: \tCLOSE\t\r\nx-secret: 1\r\nx-kept: 1\r\ncontent-length: 3\r\n\r\nok\n",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let client = http::client();
    for _ in 0..2 {
        let rsp = http::send(&client, addr, Method::GET, "/", &[], http::empty())
            .await
            .expect("answered");
        assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok\n"[..]));
        assert!(rsp.headers.get("x-secret").is_none(), "{:?}", rsp.headers);
        assert_eq!(rsp.headers["x-kept"], "1", "{:?}", rsp.headers);
    }
    assert_eq!(
        up.accepted(),
        2,
        "close, however spelled, keeps it from reuse"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    // The first answer keeps the connection alive by its headers, and then the upstream closes
    // it while it is idle in the pool: the next request must go out on a new connection.
    let up = Scripted::start(vec![
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::Close,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok2",
            Then::Stay,
        ),
    ])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok"[..]));
    assert_eventually!(up.closed() == 1, "the upstream closes the first connection");
    // Lets the upstream's FIN reach rampart's reactor (loopback: well within this).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok2"[..]));
    assert_eq!(up.accepted(), 2);
    assert_eq!(
        up.requests().len(),
        2,
        "no request was lost on the closed connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_kept_connection_closed_unanswered_goes_out_again_and_a_post_does_not() {
    // The upstream closes a kept connection as the next request arrives on it, unanswered (a
    // server's keep-alive timer firing just then; one that closes after so many requests). A
    // GET, which the upstream cannot have acted on, is sent again on a new connection and is
    // not a failed try; a POST may have been acted on, so it is not.
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const OK2: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok2";
    let up = Scripted::start(vec![
        (OK, Then::Stay),
        (b"", Then::HangUp),
        (OK2, Then::Stay),
        (b"", Then::HangUp),
        (OK, Then::Stay),
    ])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok"[..]));
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!(
        (rsp.status.as_u16(), &rsp.body[..]),
        (200, &b"ok2"[..]),
        "the GET went out again on a new connection"
    );
    assert_eq!((up.requests().len(), up.accepted()), (3, 2));
    let rsp = http::post(addr, "/", &[], Bytes::new()).await;
    assert_eq!(rsp.status.as_u16(), 502, "the POST is not sent again");
    assert_eq!(up.requests().len(), 4, "the POST reached the upstream once");
    let text = crate::support::metrics(proxy.admin()).await;
    let tries = |code: &str| {
        crate::support::metric_value(&text, "rampart_upstream_requests_total", &[("code", code)])
            .unwrap_or(0.0)
    };
    assert_eq!(
        (tries("200"), tries("502")),
        (2.0, 1.0),
        "the GET's lost send is no try of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_whole_answer_keep_its_connection_from_reuse() {
    // The upstream writes a 408 on the idle connection (as servers do before closing one): the
    // connection must be dropped, and the next request answered on a new one.
    let up =
        Scripted::start(vec![
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 408 Request Timeout\r\n\r\n",
            Then::Stay,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok2", Then::Stay),
    ])
        .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok"[..]));
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok2"[..]));
    assert_eq!(
        up.accepted(),
        2,
        "bytes after a whole answer: the connection is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_are_skipped() {
    let up = Scripted::start(vec![(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
          HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\nmade",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for _ in 0..2 {
        let rsp = http::post(addr, "/", &[("expect", "100-continue")], "body").await;
        assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (201, &b"made"[..]));
        assert!(
            rsp.headers.get("link").is_none(),
            "only the final answer's headers"
        );
    }
    assert_eq!(up.accepted(), 1);
}

/// An interim answer, as [`Scripted::after_interim`] sends it.
const PROCESSING: &[u8] = b"HTTP/1.1 102 Processing\r\n\r\n";

/// More than 32 interim answers before the final one make a malformed answer, however they
/// come: 33 in one read, or 40 one a read (a write every 20 ms). Each is a 502
/// `upstream_unavailable`, its connection closed, counted alike. Before, the count began again
/// with each read: the 40 were read past and their 200 passed on, and an upstream sending a
/// `102` more often than `timeout.idle` (each read restarts it) held the try for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_32_interim_answers_are_refused_in_one_read_or_in_many() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let mut whole = PROCESSING.repeat(33);
    whole.extend_from_slice(OK);
    let whole: &'static [u8] = Box::leak(whole.into_boxed_slice());
    let at_once = Scripted::start(vec![(whole, Then::Stay)]).await;
    let one_a_read =
        Scripted::after_interim(vec![(OK, Then::Stay)], (40, Duration::from_millis(20))).await;
    let mut counted = Vec::new();
    for up in [&at_once, &one_a_read] {
        let proxy = proxy(up.addr).await;
        let rsp = tokio::time::timeout(
            Duration::from_secs(10),
            http::get(proxy.listener("inbound"), "/", &[]),
        )
        .await
        .expect("answered in time");
        rsp.assert_rampart(502, "upstream_unavailable");
        assert_eventually!(up.closed() == 1, "rampart closes the upstream's connection");
        let text = crate::support::metrics(proxy.admin()).await;
        let tries = [("upstream", "app"), ("code", "502")];
        let value = crate::support::metric_value(&text, "rampart_upstream_requests_total", &tries);
        assert_eq!(value, Some(1.0), "{text}");
        // The request and try counters, alike for both.
        let counters = ["rampart_requests_total", "rampart_upstream_"];
        let lines: Vec<String> = text
            .lines()
            .filter(|l| counters.iter().any(|c| l.starts_with(c)))
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|n| n.contains("_total"))
            })
            .map(str::to_owned)
            .collect();
        counted.push(lines);
    }
    assert_eq!(counted[0], counted[1], "one read or many: counted alike");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_sending_garbage_gets_502_and_its_connection_is_dropped() {
    let up = Scripted::start(vec![
        (b"this is not http\r\n\r\n", Then::Stay),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::Stay,
        ),
    ])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = http::get(addr, "/", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    assert_eventually!(
        up.closed() == 1,
        "rampart closes the connection that sent garbage"
    );
    let rsp = http::get(addr, "/", &[]).await;
    assert_eq!((rsp.status.as_u16(), &rsp.body[..]), (200, &b"ok"[..]));
    assert_eq!(up.accepted(), 2);
    // A body that breaks its framing mid-way ends the client's answer in error too, and that
    // connection is not reused either.
    let broken = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXX\r\n",
        Then::Stay,
    )])
    .await;
    let proxy = self::proxy(broken.addr).await;
    let r = http::try_get(proxy.listener("inbound"), "/", &[]).await;
    assert!(
        r.is_err(),
        "a broken chunked answer must not look whole: {r:?}"
    );
    assert_eventually!(broken.closed() == 1, "the broken connection is closed");
}

/// An answer head of 120 header lines, well within the 64 KiB an answer head may take,
/// reaches the client whole: an HTTP/1.1 one (the lean server writes the lines as they came)
/// and an HTTP/2 one (hyper's side of the listener, from the answer's map). Before, more than
/// 100 lines were a malformed answer, and the client got a 502 that said the connection to the
/// upstream was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_120_header_lines_reaches_http1_and_h2_clients_whole() {
    use http_body_util::BodyExt;
    let lines: Vec<String> = (0..119).map(|i| format!("X-Up-{i}: v{i}")).collect();
    let answer = format!(
        "HTTP/1.1 200 OK\r\n{}\r\nContent-Length: 2\r\n\r\nok",
        lines.join("\r\n")
    );
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    let up = Scripted::start(vec![(answer, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");

    let rsp = raw_get(addr, "/").await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let got = head_lines(&rsp);
    assert_eq!(got[..119], lines[..], "{}", rsp.text());
    assert_eq!(got[119], "Content-Length: 2");
    assert_eq!(body_of(&rsp), b"ok");

    let rsp = h2_get(addr, "/h2").await;
    assert_eq!(rsp.status(), 200);
    let h = rsp.headers().clone();
    for i in 0..119 {
        assert_eq!(
            h.get(format!("x-up-{i}")).and_then(|v| v.to_str().ok()),
            Some(format!("v{i}").as_str()),
            "{h:?}"
        );
    }
    let body = rsp.into_body().collect().await.expect("a whole body");
    assert_eq!(body.to_bytes(), Bytes::from_static(b"ok"));
    // Both answers came on one connection: the long head did not cost it.
    assert_eq!(up.accepted(), 1);
}

/// An answer head longer than the 64 KiB rampart takes is refused 502, and its message says
/// so, not that the connection was lost (the upstream did answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_head_over_64_kib_gets_502_saying_so() {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    let up = Scripted::start(vec![(answer, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let rsp = http::get(proxy.listener("inbound"), "/", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    let msg = rsp.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        msg.contains("malformed answer") && msg.contains("larger than 64 KiB"),
        "{msg}"
    );
    assert!(!msg.contains("connection lost"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_reaches_the_upstream_intact() {
    const MIB: usize = 1024 * 1024;
    let up = Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = proxy(up.addr()).await;
    let addr = proxy.listener("inbound");
    let body = http::pattern(MIB);
    // With a length, then streamed (chunked), on the same upstream connection.
    let rsp = http::post(addr, "/len", &[], body.clone()).await;
    assert_eq!(rsp.status, 200);
    let rsp = http::post_stream(addr, "/chunked", &[], MIB).await;
    assert_eq!(rsp.status, 200);
    let got = up.requests();
    assert_eq!(got.len(), 2);
    let split = |r: &str| -> (String, Vec<u8>) {
        let (h, b) = r.split_once("\r\n\r\n").expect("a head");
        (h.to_ascii_lowercase(), b.as_bytes().to_vec())
    };
    // `requests()` is lossy UTF-8: compare the raw bytes through their digest instead.
    let raw = up.requests_raw();
    let (head, _) = split(&got[0]);
    assert!(head.contains("content-length: 1048576"), "{head}");
    let at = raw[0]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert_eq!(
        sha256_hex(&raw[0][at..]),
        sha256_hex(&body),
        "the body with a length"
    );
    let (head, _) = split(&got[1]);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let at = raw[1]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let dechunked = dechunk(&raw[1][at..]).expect("well-formed chunks");
    assert_eq!(
        sha256_hex(&dechunked),
        sha256_hex(&body),
        "the streamed body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_of_a_chunked_answer_reach_an_h2_client() {
    use http_body_util::BodyExt;
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
          4\r\ndata\r\n0\r\nx-checksum: c0ffee\r\ncontent-length: 99\r\n\r\n",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let rsp = h2_get(addr, "/t").await;
    assert_eq!(rsp.status(), 200);
    let whole = rsp.into_body().collect().await.expect("a whole body");
    let trailers = whole
        .trailers()
        .cloned()
        .expect("the trailers came through");
    assert_eq!(trailers["x-checksum"], "c0ffee");
    assert!(
        trailers.get("content-length").is_none(),
        "framing fields never travel as trailers"
    );
    assert_eq!(whole.to_bytes(), Bytes::from_static(b"data"));
}

/// An HTTP/1.1 client that asks for trailers (`TE: trailers`) gets a chunked answer's trailers
/// as HTTP/2 clients do, the fields the answer's `trailer` announces, without those that have
/// no place in trailers; one that does not ask gets the body alone.
#[tokio::test]
async fn trailers_of_a_chunked_answer_reach_an_h1_client_that_asks() {
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
          4\r\ndata\r\n0\r\nx-checksum: c0ffee\r\ncontent-length: 99\r\n\r\n";
    let up = Scripted::start(vec![(answer, Then::Stay), (answer, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let asks = b"GET /t HTTP/1.1\r\nhost: a\r\nte: trailers\r\nconnection: close\r\n\r\n";
    let rsp = raw::exchange(addr, asks, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(rsp.status(), Some(200), "{text}");
    assert!(
        text.contains("\r\n0\r\nx-checksum: c0ffee\r\n\r\n"),
        "the trailer section: {text:?}"
    );
    assert!(!text.contains("content-length: 99"), "{text:?}");
    let plain = b"GET /t HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let rsp = raw::exchange(addr, plain, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(rsp.status(), Some(200), "{text}");
    assert!(text.ends_with("4\r\ndata\r\n0\r\n\r\n"), "{text:?}");
}

/// A chunked answer's trailers are kept with it for `fallback.stale`, and the stale answer
/// served once the upstream fails carries them: to an HTTP/1.1 client that asks for trailers
/// (chunked, the trailer section after the last chunk) and to an HTTP/2 one. Before, the
/// stale answer was its body alone, framed by its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_carries_the_trailers_its_body_ended_with() {
    let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
          trailer: x-checksum\r\n\r\n4\r\ndata\r\n0\r\nx-checksum: c0ffee\r\n\r\n";
    // The first request is answered; every later one finds the upstream hanging up.
    let up = Scripted::start(vec![(answer, Then::Stay), (b"", Then::HangUp)]).await;
    let policy = "policies:\n  p: { fallback: { on: [upstream_unavailable], stale: 5m } }\n";
    let text = one_route(policy).replace(
        "      - upstream: app\n",
        "      - upstream: app\n        policy: p\n",
    );
    let proxy = Proxy::builder(&text).var("APP", up.addr).spawn().await;
    let addr = proxy.listener("inbound");
    let asks = b"GET /t HTTP/1.1\r\nhost: a\r\nte: trailers\r\nconnection: close\r\n\r\n";
    let live = raw::exchange(addr, asks, Duration::from_secs(10)).await;
    assert_eq!(live.status(), Some(200), "{}", live.text());
    assert!(
        live.header("x-rampart-degraded").is_none(),
        "{}",
        live.text()
    );

    let stale = raw::exchange(addr, asks, Duration::from_secs(10)).await;
    let text = stale.text();
    assert_eq!(stale.status(), Some(200), "{text}");
    assert_eq!(
        stale.header("x-rampart-degraded").as_deref(),
        Some("stale"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n4\r\ndata\r\n0\r\nx-checksum: c0ffee\r\n\r\n"),
        "the body and its trailer section: {text:?}"
    );
    assert!(stale.header("content-length").is_none(), "{text}");

    use http_body_util::BodyExt;
    let rsp = h2_get(addr, "/t").await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-rampart-degraded"], "stale");
    let whole = rsp.into_body().collect().await.expect("a whole body");
    let trailers = whole.trailers().cloned().expect("the trailers");
    assert_eq!(trailers["x-checksum"], "c0ffee");
    assert_eq!(whole.to_bytes(), Bytes::from_static(b"data"));
}

/// An upstream that announces framing fields among its trailers (`trailer: content-length,
/// set-cookie`) and sends them there cannot get them to an HTTP/1.1 client that asks for
/// trailers: they are taken out before the client's server writes what was announced.
#[tokio::test]
async fn an_upstream_announcing_forbidden_trailers_gets_none_to_an_h1_client() {
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
          trailer: x-checksum, content-length, location, retry-after\r\n\r\n\
          4\r\ndata\r\n0\r\nx-checksum: c0ffee\r\ncontent-length: 99\r\n\
          location: /elsewhere\r\nretry-after: 5\r\n\r\n";
    let up = Scripted::start(vec![(answer, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let asks = b"GET /t HTTP/1.1\r\nhost: a\r\nte: trailers\r\nconnection: close\r\n\r\n";
    let rsp = raw::exchange(addr, asks, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(rsp.status(), Some(200), "{text}");
    let section = text.split("\r\n0\r\n").nth(1).expect("a last chunk");
    assert_eq!(section, "x-checksum: c0ffee\r\n\r\n", "{text:?}");
}

/// An HTTP/2 client's upload with a `content-length` and trailers it announces (`trailer`)
/// reaches an HTTP/1.1 upstream chunked, the length left out, its trailers in the chunked
/// trailer section (without the fields that have no place there). Before, it went by its
/// length and the trailers were dropped. The same upload announcing none still goes by its
/// length, as upstreams that need one expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_uploads_announced_trailers_reach_an_h1_upstream_despite_its_length() {
    use ::http::{HeaderMap, Request};
    use http_body::Frame;
    use http_body_util::combinators::UnsyncBoxBody;
    let up = Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = proxy(up.addr()).await;
    let mut send = http::h2c(proxy.listener("inbound")).await;
    let upload = |announce: bool| {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "c0ffee".parse().expect("value"));
        trailers.insert("set-cookie", "sid=1".parse().expect("value"));
        let frames = http::Frames(
            [
                Frame::data(Bytes::from_static(b"hello ")),
                Frame::data(Bytes::from_static(b"world")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let mut req = Request::post("http://app.internal/up").header("content-length", "11");
        if announce {
            req = req.header("trailer", "x-checksum");
        }
        req.body(UnsyncBoxBody::new(frames)).expect("a request")
    };
    for announce in [true, false] {
        let rsp =
            tokio::time::timeout(Duration::from_secs(10), send.send_request(upload(announce)))
                .await
                .expect("answered in time")
                .expect("answered");
        assert_eq!(rsp.status(), 200, "announced: {announce}");
    }
    let raw = up.requests_raw();
    assert_eq!(raw.len(), 2);
    let split = |r: &[u8]| -> (String, Vec<u8>) {
        let at = r.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        (
            String::from_utf8_lossy(&r[..at]).to_ascii_lowercase(),
            r[at..].to_vec(),
        )
    };
    let (head, body) = split(&raw[0]);
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("\r\ntrailer: x-checksum\r\n"), "{head}");
    assert_eq!(dechunk(&body).as_deref(), Some(&b"hello world"[..]));
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.ends_with("\r\n0\r\nx-checksum: c0ffee\r\n\r\n"),
        "the trailer section, without set-cookie: {body:?}"
    );
    let (head, body) = split(&raw[1]);
    assert!(head.contains("\r\ncontent-length: 11\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, b"hello world");
}

/// The header lines of a raw answer's head, each as `name: value` (the status line left out).
fn head_lines(rsp: &raw::RawResp) -> Vec<String> {
    let text = String::from_utf8_lossy(&rsp.bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n").skip(1).map(str::to_owned).collect()
}

/// How many lines of `lines` are headers named `name` (in any case).
fn named(lines: &[String], name: &str) -> usize {
    let prefix = format!("{name}:");
    lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .count()
}

/// A plain answer (a length of digits, nothing hop-by-hop) is written to an HTTP/1.1 client
/// line for line as the upstream sent it, in its spelling and order, with its own `date` kept
/// and never doubled; only the connection's own header is the hop's, and the `x-request-id` is
/// the request's (the one its log line holds), never the upstream's. An h2 client (hyper's
/// side of the listener) gets the same headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_answer_reaches_an_http1_client_line_for_line_and_an_h2_client_whole() {
    use http_body_util::BodyExt;
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
          X-Request-Id: from-up\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\
          Set-Cookie: b=2\r\nContent-Length: 3\r\n\r\nok\n",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");

    let rsp = raw_get(addr, "/").await;
    let lines = head_lines(&rsp);
    let id = lines
        .iter()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("the request's id");
    assert_eq!(id.len(), 32, "rampart's id, not the upstream's: {id}");
    assert_eq!(
        lines,
        [
            "Server: up",
            "Date: Mon, 01 Jan 2024 00:00:00 GMT",
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
            "Content-Length: 3",
            &format!("x-request-id: {id}"),
            "connection: close",
        ],
        "{}",
        String::from_utf8_lossy(&rsp.bytes)
    );
    assert_eq!(body_of(&rsp), b"ok\n");

    let rsp = h2_get(addr, "/h2").await;
    let h = rsp.headers().clone();
    assert_eq!(h["server"], "up");
    assert_eq!(h["date"], "Mon, 01 Jan 2024 00:00:00 GMT");
    let ids: Vec<_> = h.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{h:?}");
    assert_eq!(
        ids[0].len(),
        32,
        "rampart's id, not the upstream's: {:?}",
        ids[0]
    );
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(h.get("connection").is_none());
    let body = rsp.into_body().collect().await.expect("a whole body");
    assert_eq!(body.to_bytes(), Bytes::from_static(b"ok\n"));
}

/// An answer without `x-request-id` or `date` gets rampart's, once each, beside its own lines;
/// an h2 client gets the id once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_answer_without_an_id_or_a_date_gets_rampart_s_once() {
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let rsp = raw_get(proxy.listener("inbound"), "/").await;
    let lines = head_lines(&rsp);
    assert_eq!(
        (named(&lines, "x-up"), named(&lines, "content-length")),
        (1, 1)
    );
    assert_eq!(
        (named(&lines, "x-request-id"), named(&lines, "date")),
        (1, 1),
        "{lines:?}"
    );
    let id = lines
        .iter()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("rampart's id");
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(body_of(&rsp), b"ok");
    // hyper's side of the listener writes from the map: the id kept beside the lines joins it.
    let rsp = h2_get(proxy.listener("inbound"), "/h2").await;
    let ids: Vec<_> = rsp.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{:?}", rsp.headers());
    assert_eq!(ids[0].len(), 32);
    assert_ne!(ids[0], id, "each request its own id");
}

/// An answer carries its request's `x-request-id` (the client's own here), never one the
/// upstream wrote, whether its lines pass as they came (a length) or go through the map
/// (chunked): the id a client reads is the one the access log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_s_request_id_never_replaces_the_request_s() {
    let up = Scripted::start(vec![
        (
            b"HTTP/1.1 200 OK\r\nX-Request-Id: from-up\r\nContent-Length: 2\r\n\r\nok",
            Then::Stay,
        ),
        (
            b"HTTP/1.1 200 OK\r\nx-request-id: from-up\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
            Then::Stay,
        ),
    ])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for (answer, body) in [("plain", &b"ok"[..]), ("chunked", b"2\r\nok\r\n0\r\n\r\n")] {
        let rsp = raw::exchange(
            addr,
            b"GET / HTTP/1.1\r\nhost: app\r\nx-request-id: client-7\r\nconnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .await;
        let lines = head_lines(&rsp);
        let ids: Vec<_> = lines
            .iter()
            .filter_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                    .map(|(_, v)| v.trim())
            })
            .collect();
        assert_eq!(ids, ["client-7"], "{answer}: {lines:?}");
        assert_eq!(body_of(&rsp), body, "{answer}");
    }
}

/// Of a client's two `x-request-id`s the first is the request's: the upstream, the answer and
/// the log hold it alone, whichever server took the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_request_ids_the_first_alone_goes_on() {
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Then::Stay,
    )])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let ids_in = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .collect()
    };
    let rsp = raw::exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: app\r\nx-request-id: abc\r\nx-request-id: def\r\n\
          connection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(ids_in(&head_lines(&rsp)), ["abc"]);
    // Over HTTP/2 (hyper's side of the listener) the same.
    let mut h2 = http::h2c(addr).await;
    let mut req = ::http::Request::get(format!("http://{addr}/"))
        .body(http::empty())
        .expect("a valid request");
    for id in ["ghi", "jkl"] {
        req.headers_mut()
            .append("x-request-id", id.parse().expect("a header value"));
    }
    let rsp = h2.send_request(req).await.expect("answered");
    assert_eq!(rsp.headers().get_all("x-request-id").iter().count(), 1);
    assert_eq!(rsp.headers()["x-request-id"], "ghi");
    let sent: Vec<Vec<String>> = up
        .requests()
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(r).into_owned();
            ids_in(&text.split("\r\n").map(str::to_owned).collect::<Vec<_>>())
        })
        .collect();
    assert_eq!(sent, [vec!["abc"], vec!["ghi"]], "what the upstream got");
}

/// A policy that sets answer headers (`rate_limit.headers`) replaces an upstream's header of
/// the same name: the client never gets both, whichever server writes the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_s_answer_headers_replace_an_upstream_s_of_the_same_name() {
    let up = Scripted::start(vec![(
        b"HTTP/1.1 200 OK\r\nRateLimit-Policy: from-up\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok",
        Then::Stay,
    )])
    .await;
    let cfg = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  limited:
    rate_limit:
      per_tenant: { rate: 100/s, burst: 100 }
      headers: true
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: limited
"#;
    let proxy = Proxy::builder(cfg)
        .var("APP", up.addr)
        .env("RAMPART_WORKERS", 1)
        .spawn()
        .await;
    let rsp = raw_get(proxy.listener("inbound"), "/").await;
    let lines = head_lines(&rsp);
    assert_eq!(named(&lines, "ratelimit-policy"), 1, "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.ends_with("from-up")),
        "rampart's value replaces the upstream's: {lines:?}"
    );
    assert_eq!(named(&lines, "x-up"), 1, "{lines:?}");
    assert_eq!(body_of(&rsp), b"ok");
}

/// An HTTP/1.0 upstream's answer goes to the client in the client's version, framed for it
/// (RFC 9110 §6.2: a proxy sends its own version). Before, an HTTP/1.1 client got `HTTP/1.0
/// 200 OK`; one without a length was cut at the close, and the requests pipelined behind it
/// were never answered, where an HTTP/1.1 upstream's was sent on chunked. Both servers: the
/// lean one, and hyper's after a chunked upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_answer_is_sent_in_the_client_s_version() {
    use crate::support::conn::Conn;
    const UNTIL_CLOSE: &[u8] = b"HTTP/1.0 200 OK\r\nx-up: 1\r\n\r\nuntil the end";
    const LENGTH: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let up = Scripted::start(vec![
        (UNTIL_CLOSE, Then::Close),
        (LENGTH, Then::Close),
        (LENGTH, Then::Close),
        (UNTIL_CLOSE, Then::Close),
    ])
    .await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");

    // An HTTP/1.1 client, two requests pipelined.
    let mut c = Conn::open(addr).await;
    c.send(b"GET /a HTTP/1.1\r\nhost: app\r\n\r\nGET /b HTTP/1.1\r\nhost: app\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.line, "HTTP/1.1 200 OK", "{a:?}");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert_eq!(
        (a.body.as_slice(), a.header("x-up")),
        (&b"until the end"[..], Some("1"))
    );
    let b = c.answer(false).await;
    assert_eq!(b.line, "HTTP/1.1 200 OK", "{b:?}");
    assert_eq!(
        (b.header("content-length"), b.body.as_slice()),
        (Some("2"), &b"ok"[..])
    );
    assert_eq!(b.header("connection"), None, "kept alive: {b:?}");

    // An HTTP/1.0 client: HTTP/1.0, kept alive as it asks while the length is known, then
    // close-delimited.
    let mut c = Conn::open(addr).await;
    c.send(b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.line, "HTTP/1.0 200 OK", "{a:?}");
    assert_eq!(a.header("connection"), Some("keep-alive"), "{a:?}");
    assert_eq!(a.body, b"ok");
    c.send(b"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let b = c.answer(false).await;
    assert_eq!(b.line, "HTTP/1.0 200 OK", "{b:?}");
    assert_eq!(b.header("transfer-encoding"), None, "{b:?}");
    assert_eq!(b.body, b"until the end");

    // hyper's server, after a chunked upload.
    let mut c = Conn::open(addr).await;
    c.send(
        b"POST /e HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
          GET /f HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    for _ in 0..2 {
        let a = c.answer(false).await;
        assert_eq!(a.line, "HTTP/1.1 200 OK", "{a:?}");
        assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
        assert_eq!(a.body, b"until the end");
    }
    assert_eq!(up.requests().len(), 6);
}

/// Cookies an HTTP/2 client split into several fields (as HPACK wants them) reach an
/// HTTP/1.1 upstream on one `cookie` line, joined with "; " (RFC 9113 §8.2.3); an HTTP/1.1
/// client's several lines are joined too, and one cookie goes as it came. Before, the
/// upstream got a `cookie` line per field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_split_over_http2_reach_an_http1_upstream_on_one_line() {
    let app =
        Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let cookies = [("cookie", "a=1"), ("x-between", "x"), ("cookie", "b=2")];
    assert_eq!(http::h2_get(addr, "/h2", &cookies).await.status, 200);
    assert_eq!(http::get(addr, "/h1", &cookies).await.status, 200);
    assert_eq!(
        http::get(addr, "/one", &[("cookie", "c=3")]).await.status,
        200
    );
    let got = app.requests();
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, req) in got.iter().enumerate().take(2) {
        assert_eq!(app.header(i, "cookie"), ["a=1; b=2"], "{req}");
        assert!(req.contains("\r\ncookie: a=1; b=2\r\n"), "{req}");
        assert_eq!(app.header(i, "x-between"), ["x"], "{req}");
    }
    assert_eq!(app.header(2, "cookie"), ["c=3"], "{}", got[2]);
}

/// An answer whose body breaks (the upstream closes before its `content-length`) fails its
/// try for the breaker, though its head said 200; a body that streams and ends whole is a
/// success. Here a streak of three failures opens the breaker: two broken bodies, a whole one
/// (the streak starts again), three broken ones, and the next request is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_fails_its_try_and_one_that_ends_whole_does_not() {
    const BROKEN: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
    // Too long to come with its head: its body streams.
    let whole: &'static [u8] = {
        let body = vec![b'w'; 1 << 20];
        let mut a =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        a.extend_from_slice(&body);
        Box::leak(a.into_boxed_slice())
    };
    let (b, w) = ((BROKEN, Then::Close), (whole, Then::Close));
    let up = Scripted::start(vec![b, b, w, b, b, b, w]).await;
    let cfg = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  guarded:
    circuit_breaker: { consecutive_failures: 3, open_for: 30s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: guarded
"#;
    let proxy = Proxy::builder(cfg)
        .var("APP", up.addr)
        .env("RAMPART_WORKERS", 1)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    for (i, want) in [10, 10, 1 << 20, 10, 10, 10].into_iter().enumerate() {
        let rsp = raw_get(addr, "/").await;
        assert!(rsp.bytes.starts_with(b"HTTP/1.1 200 OK\r\n"), "request {i}");
        let body = body_of(&rsp);
        assert_eq!(body.len(), want, "request {i}: what came of its body");
    }
    let rsp = http::get(addr, "/", &[]).await;
    rsp.assert_rampart(503, "circuit_open");
    assert_eq!(
        up.requests().len(),
        6,
        "the seventh never reached the upstream"
    );
}

/// An upstream that sends a chunked head and then closes, before any body data or after one
/// chunk: the client sees the head and a body cut short (no last chunk, then the close), from
/// the lean server (a plain GET) and from hyper's HTTP/1 server alike (a GET with `TE:
/// trailers`, which the lean server hands to hyper). hyper polled the body once before it
/// wrote the head, and the body's error ended the connection with the head still in its
/// buffer: the client got a bare close with no status line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_cut_early_reaches_the_client_head_first_from_either_server() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n";
    const ONE: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n5\r\nhello\r\n";
    for (answer, sent) in [(HEAD, &b""[..]), (ONE, &b"hello"[..])] {
        let up = Scripted::start(vec![(answer, Then::Close)]).await;
        let proxy = proxy(up.addr).await;
        let addr = proxy.listener("inbound");
        for (server, extra) in [("lean", ""), ("hyper", "te: trailers\r\n")] {
            let req = format!("GET /cut HTTP/1.1\r\nhost: app\r\n{extra}connection: close\r\n\r\n");
            let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(10)).await;
            let what = format!(
                "{server}, {:?}: {}",
                String::from_utf8_lossy(sent),
                rsp.text()
            );
            assert!(rsp.closed, "{what}");
            assert_eq!(rsp.status(), Some(200), "{what}");
            assert_eq!(rsp.header("x-up").as_deref(), Some("1"), "{what}");
            assert_eq!(
                rsp.header("transfer-encoding").as_deref(),
                Some("chunked"),
                "{what}"
            );
            let body = body_of(&rsp);
            assert_eq!(dechunk(&body), None, "cut short, not whole: {what}");
            assert!(
                body.windows(sent.len().max(1)).any(|w| w == sent) || sent.is_empty(),
                "what came before the cut came through: {what}"
            );
        }
    }
}
