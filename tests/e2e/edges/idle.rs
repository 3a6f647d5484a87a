//! Silent and idle connections are closed (SPEC §14): nothing sent, half an h2 preface, the
//! admin port, and a keep-alive connection left idle; silent sockets cannot lock a listener.
//!
//! All fail on the code before 2464352: hyper's head timer starts only once a request head has
//! begun, the auto server's HTTP/1-or-2 sniffing read before that with no timer, there was no
//! idle timeout, and the admin listener had no head timeout (reasoned from `listener.rs` and
//! `admin.rs` at 8024b07; the probe measured it).

use std::time::Duration;

use tokio::net::TcpStream;

use super::OK;
use crate::support::capture::Capture;
use crate::support::{http, one_route, raw, Proxy};

fn assert_closed_about_1s(rsp: &raw::RawResp, what: &str) {
    assert!(rsp.closed, "{what}: the connection must be closed");
    assert!(
        rsp.elapsed >= Duration::from_millis(900) && rsp.elapsed < Duration::from_secs(3),
        "{what}: closed about 1s after it went quiet, took {:?}",
        rsp.elapsed
    );
}

async fn head_1s(app: &Capture) -> Proxy {
    // No `idle_timeout` (default 60s), so the file also loads on the code before the fix.
    let rt = "runtime: { header_read_timeout: 1s, max_connections: 5 }";
    with_runtime(app, rt).await
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_head_timeout() {
    let app = Capture::start(OK).await;
    let proxy = head_1s(&app).await;
    let rsp = raw::exchange(proxy.listener("inbound"), b"", Duration::from_secs(6)).await;
    assert_closed_about_1s(&rsp, "no bytes at all");
    assert!(
        rsp.bytes.is_empty() || rsp.status() == Some(408),
        "{}",
        rsp.text()
    );
}

#[tokio::test]
async fn a_partial_h2_preface_is_closed_at_the_head_timeout() {
    let app = Capture::start(OK).await;
    let proxy = head_1s(&app).await;
    let half = b"PRI * HTTP/2.0\r\n";
    let rsp = raw::exchange(proxy.listener("inbound"), half, Duration::from_secs(6)).await;
    assert_closed_about_1s(&rsp, "half an h2 preface");
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn the_admin_port_closes_silent_connections_too() {
    let app = Capture::start(OK).await;
    let proxy = head_1s(&app).await;
    let rsp = raw::exchange(proxy.admin(), b"", Duration::from_secs(6)).await;
    assert_closed_about_1s(&rsp, "silent admin connection");
}

/// A proxy of one route to `app`, with the `runtime` section `rt`.
async fn with_runtime(app: &Capture, rt: &str) -> Proxy {
    Proxy::builder(&one_route(rt))
        .var("APP", app.addr())
        .spawn()
        .await
}

/// A proxy whose connections are closed after 1 s idle (the head timeout far beyond it).
async fn idle_1s(app: &Capture) -> Proxy {
    let rt = "runtime: { header_read_timeout: 20s, idle_timeout: 1s }";
    with_runtime(app, rt).await
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let app = Capture::start(OK).await;
    let proxy = idle_1s(&app).await;
    let req = b"GET /x HTTP/1.1\r\nHost: app.local\r\n\r\n";
    let rsp = raw::exchange(proxy.listener("inbound"), req, Duration::from_secs(6)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(app.hits(), 1);
    assert_closed_about_1s(&rsp, "idle keep-alive connection");
}

/// The idle timer is armed once and moved on only when it fires (not on every request): a
/// connection whose requests come more often than the idle timeout must outlive the timer's
/// first firing, and must still be closed one idle timeout after its last answer.
#[tokio::test]
async fn a_busy_connection_outlives_the_idle_timeout_and_closes_one_after_its_last_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Capture::start(OK).await;
    let proxy = idle_1s(&app).await;
    let mut tcp = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    let mut got = Vec::new();
    // Five requests 400 ms apart: 1.6 s on one connection, past the timer's first end (1 s).
    for i in 0..5u32 {
        tokio::time::sleep_until(started + Duration::from_millis(400) * i).await;
        tcp.write_all(b"GET /x HTTP/1.1\r\nHost: app.local\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("request {i} at {:?}: {e}", started.elapsed()));
        let before = got.len();
        let mut buf = [0u8; 4096];
        // Each answer ends in its 2-byte body `ok`.
        while !got[before..].ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(
                n > 0,
                "closed before answer {i}, {:?} in",
                started.elapsed()
            );
            got.extend_from_slice(&buf[..n]);
        }
    }
    let last = tokio::time::Instant::now();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 5, "{text}");
    assert_eq!(app.hits(), 5);
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(6), tcp.read(&mut buf))
        .await
        .expect("closed within 6 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing more, then the close");
    let quiet = last.elapsed();
    assert!(
        quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(3),
        "closed about 1 s after the last answer, took {quiet:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_out_a_real_client() {
    let app = Capture::start(OK).await;
    let proxy = head_1s(&app).await;
    let addr = proxy.listener("inbound");
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let started = tokio::time::Instant::now();
    let rsp = tokio::time::timeout(Duration::from_secs(6), http::try_get(addr, "/x", &[]))
        .await
        .expect("the sixth client must be served, not held behind silent sockets")
        .expect("the sixth client must get an answer");
    assert_eq!(rsp.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served once the silent ones time out (1s): {:?}",
        started.elapsed()
    );
    drop(silent);
}

/// An h2 connection that sends its preface and settings but opens no stream is an idle
/// connection, not a silent one (SPEC §14): it outlives the head timeout (1 s) and is closed
/// at the idle timeout (3 s), gracefully (the client library answers the GOAWAY's PING, so the
/// close is whole then). Before, it was dropped at the head timeout.
#[tokio::test]
async fn an_h2_connection_with_no_stream_is_closed_at_the_idle_timeout() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = Capture::start(OK).await;
    let rt = "runtime: { header_read_timeout: 1s, idle_timeout: 3s }";
    let proxy = with_runtime(&app, rt).await;
    let tcp = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    let (_send, conn) = hyper::client::conn::http2::handshake::<_, _, http::ReqBody>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    h2_closed_at_the_idle_timeout(conn, started).await;
}

/// `conn` (an h2 client connection opened at `started`, with no stream) is open 2 s in, past
/// the head timeout (1 s), and ends about the idle timeout (3 s) in.
pub(crate) async fn h2_closed_at_the_idle_timeout<C>(conn: C, started: tokio::time::Instant)
where
    C: std::future::Future + Send + 'static,
    C::Output: Send + std::fmt::Debug,
{
    let mut conn = tokio::spawn(conn);
    let early = tokio::time::timeout_at(started + Duration::from_secs(2), &mut conn).await;
    assert!(
        early.is_err(),
        "still open 2 s in, past the head timeout: {early:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(
        ended.is_ok(),
        "an h2 connection with no stream must be closed"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_millis(4_500),
        "closed about the idle timeout (3 s) after its preface: {took:?}"
    );
}

/// An h2 connection whose streams have all ended is closed `idle_timeout` after its last
/// answer (GOAWAY), within a clock tick and a round trip: here a second request 600 ms after
/// the first, and the close about 1 s after that one's answer. Before, the watchdog slept a
/// whole period from each look and closed it 1.4 s after (1 to 2 periods after the last
/// answer, the "few seconds late" of a 5 s idle timeout).
#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_idle_timeout() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = Capture::start(OK).await;
    let proxy = idle_1s(&app).await;
    let tcp = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = ::http::Request::builder()
        .uri("http://app.local/x")
        .body(http::empty())
        .expect("request");
    let rsp = send.send_request(req).await.expect("answered");
    assert_eq!(rsp.status(), 200);
    drop(rsp);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let req = ::http::Request::builder()
        .uri("http://app.local/y")
        .body(http::empty())
        .expect("request");
    let rsp = send.send_request(req).await.expect("answered");
    assert_eq!(rsp.status(), 200);
    drop(rsp);
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(ended.is_ok(), "an idle h2 connection must be closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900)
            && started.elapsed() < Duration::from_millis(1250),
        "closed 1 s after its last stream: {:?}",
        started.elapsed()
    );
}

/// The admin listener serves at most `ADMIN_MAX_CONNECTIONS` at once: with that many silent
/// sockets open, a probe waits until they are closed at the head timeout (1s), then is
/// answered. Before 2464352 the admin port had no cap (the probe was answered at once) and no
/// head timeout (the silent sockets stayed for ever); the lower bound fails on the old code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_has_a_connection_cap_that_silent_sockets_cannot_hold() {
    let app = Capture::start(OK).await;
    let proxy = head_1s(&app).await;
    let admin = proxy.admin();
    let mut silent = Vec::new();
    for _ in 0..rampart::admin::ADMIN_MAX_CONNECTIONS {
        silent.push(TcpStream::connect(admin).await.expect("connect"));
    }
    // Let the admin listener accept them all before the probe queues behind them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let rsp = tokio::time::timeout(
        Duration::from_secs(6),
        http::try_get(admin, "/healthz", &[]),
    )
    .await
    .expect("the probe must be answered once the silent sockets time out")
    .expect("the probe must get an answer");
    assert_eq!(rsp.status, 200);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "the probe waits for a free slot, about the head timeout: {took:?}"
    );
    drop(silent);
}

/// Sends `request` on `tcp` and reads its answer (which ends in the body `ok`).
async fn one_answer(tcp: &mut TcpStream, request: &[u8], what: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer in time"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(n > 0, "{what}: closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{what}: {}",
        String::from_utf8_lossy(&got)
    );
}

/// How long `tcp` stays open (reading nothing) before it is closed; fails past `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration, what: &str) -> Duration {
    use tokio::io::AsyncReadExt;
    let since = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(limit, tcp.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed within {limit:?}"));
    assert!(matches!(n, Ok(0) | Err(_)), "{what}: {n:?}");
    since.elapsed()
}

/// `header_read_timeout` is for a connection that has sent nothing (SPEC §14): between requests
/// a keep-alive connection waits `idle_timeout`, however much shorter the head timeout is; on
/// the lean server (a GET first) and on hyper's (a chunked upload first hands the connection
/// to hyper for good). Before the fix both closed it at the head timeout.
#[tokio::test]
async fn between_requests_a_connection_waits_idle_timeout_not_the_head_timeout() {
    let app = Capture::start(OK).await;
    let rt = "runtime: { header_read_timeout: 400ms, idle_timeout: 2s }";
    let proxy = with_runtime(&app, rt).await;
    let get = b"GET /x HTTP/1.1\r\nHost: app.local\r\n\r\n";
    let chunked: &[u8] = b"POST /x HTTP/1.1\r\nHost: app.local\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    for (first, server) in [(&get[..], "lean"), (chunked, "hyper")] {
        let mut tcp = TcpStream::connect(proxy.listener("inbound"))
            .await
            .expect("connect");
        one_answer(&mut tcp, first, server).await;
        // Three head timeouts later the connection still serves.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        one_answer(&mut tcp, get, server).await;
        // And it closes about one idle timeout after that answer.
        let waited = closed_within(&mut tcp, Duration::from_secs(6), server).await;
        assert!(
            waited >= Duration::from_millis(1800) && waited < Duration::from_millis(4500),
            "{server}: closed {waited:?} after its last answer, the idle timeout is 2s"
        );
    }
    assert_eq!(app.hits(), 4);
}

/// Once the first bytes of a later head come, the head must be whole within
/// `header_read_timeout` of them (SPEC §2), however long the connection may idle before it.
#[tokio::test]
async fn a_later_head_must_be_whole_within_the_head_timeout_of_its_first_bytes() {
    use tokio::io::AsyncWriteExt;
    let app = Capture::start(OK).await;
    let rt = "runtime: { header_read_timeout: 400ms, idle_timeout: 5s }";
    let proxy = with_runtime(&app, rt).await;
    let mut tcp = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    one_answer(
        &mut tcp,
        b"GET /x HTTP/1.1\r\nHost: app.local\r\n\r\n",
        "first",
    )
    .await;
    // Idle past the head timeout: still open (the idle timeout is 5 s).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: app")
        .await
        .expect("part of a head");
    let waited = closed_within(&mut tcp, Duration::from_secs(4), "a started head").await;
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "closed {waited:?} after the head's first bytes; the head timeout is 400ms"
    );
    assert_eq!(app.hits(), 1);
}
