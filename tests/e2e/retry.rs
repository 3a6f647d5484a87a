//! Timeouts and retries through real sockets: which requests are retried, how often, where,
//! and that no deadline or budget is overrun.

use std::net::SocketAddr;
use std::time::Duration;

use ::http::Method;
use tokio::time::Instant;

use crate::support::{http, metric_value, metrics, raw, sample, Proxy};
use crate::upstream_h1::{Scripted, Then};

/// `$APP` (one or more endpoints) behind a retrying policy; `$EXTRA` adds policy keys.
const RETRYING: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  retrying:
    timeout: { request: $REQUEST }
    retry:
      attempts: 3
      buffer: 64KiB
      on: [connect_error, reset, timeout, 502, 503, 504]
      backoff: { base: 5ms, max: 20ms }
      budget: { ratio: $RATIO, min_per_second: $MIN }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: retrying
"#;

/// A proxy with the retrying policy; `timeout` is the inside of `timeout: { ... }`.
async fn retrying(app: &str, timeout: &str, ratio: &str, min: u32) -> Proxy {
    Proxy::builder(&RETRYING.replace("request: $REQUEST", timeout))
        .var("APP", app)
        .var("RATIO", ratio)
        .var("MIN", min)
        .spawn()
        .await
}

async fn plain(app: SocketAddr) -> Proxy {
    retrying(&app.to_string(), "request: 5s", "100%", 100).await
}

async fn retries(admin: SocketAddr) -> f64 {
    let text = metrics(admin).await;
    metric_value(
        &text,
        "rampart_retries_total",
        &[("route", "app"), ("upstream", "app")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_fails_twice_succeeds_on_the_third_try() {
    let app = sample().await;
    let proxy = plain(app.addr()).await;
    let rsp = http::get(proxy.listener("inbound"), "/fail-first/2?key=g", &[]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(
        app.hits_for("/fail-first/2"),
        3,
        "exactly three tries must reach the upstream"
    );
    assert_eq!(retries(proxy.admin()).await, 2.0);
    let text = metrics(proxy.admin()).await;
    let tries_503 = metric_value(
        &text,
        "rampart_upstream_requests_total",
        &[("upstream", "app"), ("code", "503")],
    );
    assert_eq!(tries_503, Some(2.0), "each try is counted: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_with_an_idempotency_key() {
    let app = sample().await;
    let proxy = plain(app.addr()).await;
    let addr = proxy.listener("inbound");
    let rsp = http::post(addr, "/fail-first/2?key=p1", &[], "body").await;
    assert_eq!(rsp.status, 503, "a plain POST must not be retried");
    assert_eq!(app.hits_for("/fail-first/2"), 1);
    app.reset();
    let rsp = http::post(
        addr,
        "/fail-first/2?key=p2",
        &[("idempotency-key", "k-1")],
        "body",
    )
    .await;
    assert_eq!(rsp.status, 200, "a POST with Idempotency-Key is retried");
    assert_eq!(app.hits_for("/fail-first/2"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_buffer_is_streamed_once_and_not_retried() {
    let app = sample().await;
    let proxy = plain(app.addr()).await;
    let addr = proxy.listener("inbound");
    let big = vec![b'x'; 100 * 1024];
    let rsp = http::send(
        &http::client(),
        addr,
        Method::PUT,
        "/fail-first/1?key=b",
        &[],
        http::full(big),
    )
    .await
    .expect("the PUT must be answered");
    assert_eq!(
        rsp.status, 503,
        "a 100 KiB body does not fit a 64 KiB buffer"
    );
    assert_eq!(app.hits_for("/fail-first/1"), 1);
    app.reset();
    let small = vec![b'x'; 1024];
    let rsp = http::send(
        &http::client(),
        addr,
        Method::PUT,
        "/fail-first/1?key=s",
        &[],
        http::full(small),
    )
    .await
    .expect("the PUT must be answered");
    assert_eq!(rsp.status, 200, "a 1 KiB body is replayed");
    assert_eq!(app.hits_for("/fail-first/1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_retries_during_an_outage() {
    let app = sample().await;
    let proxy = retrying(&app.addr().to_string(), "request: 5s", "10%", 0).await;
    let addr = proxy.listener("inbound");
    for _ in 0..100 {
        assert_eq!(http::get(addr, "/status/503", &[]).await.status, 503);
    }
    let r = retries(proxy.admin()).await;
    assert!(
        r <= 10.0,
        "10% of 100 requests allows at most 10 retries, got {r}"
    );
    assert!(
        r >= 9.0,
        "the budget should allow about 10 retries, got {r}"
    );
    assert_eq!(
        app.hits_for("/status/503") as f64,
        100.0 + r,
        "hits = requests + retries"
    );
    let text = metrics(proxy.admin()).await;
    let exhausted = metric_value(
        &text,
        "rampart_retry_budget_exhausted_total",
        &[("route", "app")],
    );
    assert!(exhausted.unwrap_or(0.0) >= 80.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_moves_on_to_a_fast_endpoint() {
    // A black hole: accepts connections, never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let app = sample().await;
    let endpoints = format!("{hole_addr}, {}", app.addr());
    let proxy = retrying(&endpoints, "request: 3s, per_try: 200ms", "100%", 100).await;
    let addr = proxy.listener("inbound");
    for _ in 0..6 {
        let t0 = Instant::now();
        let rsp = http::get(addr, "/ok", &[]).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(rsp.served_by(), Some(app.addr()));
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "took {:?}",
            t0.elapsed()
        );
    }
    let text = metrics(proxy.admin()).await;
    let per_try = metric_value(
        &text,
        "rampart_timeouts_total",
        &[("route", "app"), ("kind", "per_try")],
    );
    assert!(
        per_try.unwrap_or(0.0) >= 1.0,
        "some tries hit the black hole and timed out: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_is_never_overrun() {
    let app = sample().await;
    let proxy = retrying(&app.addr().to_string(), "request: 400ms", "100%", 100).await;
    let addr = proxy.listener("inbound");
    let t0 = Instant::now();
    let rsp = http::get(addr, "/slow?ms=3000", &[]).await;
    let took = t0.elapsed();
    rsp.assert_rampart(504, "timeout");
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(700),
        "took {took:?}"
    );
    // An answer that comes in time passes untouched.
    let t0 = Instant::now();
    let rsp = http::get(addr, "/slow?ms=150", &[]).await;
    assert_eq!(rsp.status, 200);
    assert!(t0.elapsed() < Duration::from_millis(700));
    let text = metrics(proxy.admin()).await;
    let request = metric_value(
        &text,
        "rampart_timeouts_total",
        &[("route", "app"), ("kind", "request")],
    );
    assert_eq!(request, Some(1.0), "{text}");
}

/// The request timeout covers the whole exchange, the answer's body too (as Envoy's route
/// timeout does): an answer whose body is still coming at the deadline is cut off there (the
/// client sees it end short, its connection closed) and the timeout counted; a body that ends
/// in time passes whole. Before, a body that stalled after its head held the request (and its
/// slot) as long as the upstream kept the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_covers_the_answer_s_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = sample().await;
    let proxy = retrying(&app.addr().to_string(), "request: 600ms", "100%", 100).await;
    let addr = proxy.listener("inbound");
    // 10 chunks 300 ms apart: the head comes at once, the body would take 3 s.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /drip?chunks=10&ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let t0 = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    let took = t0.elapsed();
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the connection ends"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "cut short, never a whole chunked body: {text:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "ended at the deadline: {took:?}"
    );
    // A body that ends in time passes whole.
    let rsp = http::get(addr, "/drip?chunks=3&ms=50", &[]).await;
    assert_eq!(rsp.status, 200);
    let text = metrics(proxy.admin()).await;
    let request = metric_value(
        &text,
        "rampart_timeouts_total",
        &[("route", "app"), ("kind", "request")],
    );
    assert_eq!(request, Some(1.0), "{text}");
}

/// The request deadline bounds the time the client takes to read the answer too: a client that
/// reads nothing of a large answer is cut at the deadline (its slot let go, the timeout
/// counted), not when it reads again or when the kernel gives up on it (`TCP_USER_TIMEOUT`, a
/// minute). Before, the lean server waited in its write with no timer: the request stayed in
/// flight, uncounted, until the client read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_cuts_an_answer_its_client_does_not_read() {
    use tokio::io::AsyncWriteExt;
    let app = sample().await;
    let proxy = retrying(&app.addr().to_string(), "request: 600ms", "100%", 100).await;
    let addr = proxy.listener("inbound");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // 64 MiB: far more than the sockets on the way can hold.
    tcp.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    // Read nothing for well past the deadline.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let text = metrics(proxy.admin()).await;
    let request = metric_value(
        &text,
        "rampart_timeouts_total",
        &[("route", "app"), ("kind", "request")],
    );
    assert_eq!(request, Some(1.0), "cut at the deadline: {text}");
    let in_flight = metric_value(
        &text,
        "rampart_in_flight_requests",
        &[("listener", "inbound")],
    );
    assert_eq!(in_flight, Some(0.0), "nothing left in flight: {text}");
    drop(tcp);
}

/// A route of 500 ms (`timeout.request`) to `$APP`, its lines in the access log at `$LOG`.
const BOUNDED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  bounded:
    timeout: { request: 500ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: app, policy: bounded }
"#;

/// An HTTP/1.1 upstream that answers each request 200 with a chunked body written as fast as
/// the socket takes it (16 KiB chunks, 64 to a write), never pausing, for `lasting` (then
/// ends it whole).
async fn flooding(lasting: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                // 64 chunks to a write, so the socket is never empty for long.
                let mut chunks = Vec::new();
                for _ in 0..64 {
                    chunks.extend_from_slice(b"4000\r\n");
                    chunks.extend_from_slice(&[b'x'; 16 * 1024]);
                    chunks.extend_from_slice(b"\r\n");
                }
                let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(start).await.is_err() {
                    return;
                }
                let t0 = Instant::now();
                while t0.elapsed() < lasting {
                    if conn.write_all(&chunks).await.is_err() {
                        return;
                    }
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, task)
}

/// That an answer cut at the 500 ms deadline ended for its client `took` after it was asked
/// for: soon after the deadline (what was on its way already, read a millisecond at a time,
/// comes after it), not at the upstream's end 3 s on. Its access log line says when rampart
/// cut it, to the millisecond.
fn at_the_deadline(took: Duration, what: &str) {
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2000),
        "{what}: ended at the deadline: {took:?}"
    );
}

/// The request deadline cuts an answer body that keeps coming without a pause, on time (the
/// clients read slower than the upstream writes, so rampart always has bytes waiting): it is
/// cut within a few milliseconds of the 500 ms deadline (its line's duration), the client's
/// answer then ends short (HTTP/1.1: its connection closed without the last chunk; HTTP/2: its
/// stream reset), and the timeout is counted and the line logged as for any other body cut at
/// the deadline. Before, the deadline was looked at only when the body had nothing to give: a
/// body that never paused ran to its end (3 s here), or for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_cuts_an_answer_body_that_never_pauses() {
    use tokio::io::AsyncWriteExt;
    let (up, _task) = flooding(Duration::from_secs(3)).await;
    let log = tempfile::tempdir().expect("a temp dir");
    let file = log.path().join("access.jsonl");
    let proxy = Proxy::builder(BOUNDED)
        .var("APP", up)
        .var("LOG", file.display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let got = raw::drain_slowly(&mut tcp, Duration::from_secs(5))
        .await
        .expect("the connection ends, not still streaming 5 s on");
    assert!(got.start.starts_with("HTTP/1.1 200"), "{}", got.start);
    assert!(
        got.count > 16 * 1024,
        "the body streamed: {} bytes",
        got.count
    );
    assert!(
        !got.end.ends_with(b"0\r\n\r\n"),
        "cut short, never a whole chunked body"
    );
    at_the_deadline(got.took, "HTTP/1.1");

    let mut send = http::h2c(addr).await;
    let req = ::http::Request::get(format!("http://{addr}/flood"))
        .body(http::empty())
        .expect("request");
    let t0 = Instant::now();
    let rsp = send.send_request(req).await.expect("an answer");
    assert_eq!(rsp.status(), 200);
    let ended = http::frames_slowly(rsp.into_body(), Duration::from_secs(5))
        .await
        .expect("the stream ends, not still streaming 5 s on");
    assert!(ended.is_err(), "reset, never an end");
    at_the_deadline(t0.elapsed(), "HTTP/2");

    let text = metrics(proxy.admin()).await;
    let request = [("route", "app"), ("kind", "request")];
    assert_eq!(
        metric_value(&text, "rampart_timeouts_total", &request),
        Some(2.0),
        "{text}"
    );
    let lines = crate::support::wait_log_lines(&file, 2).await;
    for line in &lines {
        assert_eq!(line["status"].as_u64(), Some(200), "{line}");
        assert!(
            line["bytes_out"].as_u64().is_some_and(|b| b > 16 * 1024),
            "{line}"
        );
        let ms = line["duration_ms"].as_f64().expect("a duration");
        assert!((450.0..800.0).contains(&ms), "cut at the deadline: {line}");
    }
}

/// The request deadline bounds a client's upload that never pauses as it bounds any other
/// request: streamed to an upstream that takes every byte and never answers, it is answered
/// 504 `timeout` at the 500 ms deadline, while the client is still sending. (A regression
/// guard: the try's deadline is a timer beside the upload, so this held before the answer
/// body's deadline was looked at before each frame; an upload whose answer has begun is cut
/// with the answer's body, above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_bounds_an_upload_that_never_pauses() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads for ever and never answers.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = sink.local_addr().expect("addr");
    let _sink = tokio::spawn(async move {
        while let Ok((mut conn, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(1..) = conn.read(&mut buf).await {}
            });
        }
    });
    let log = tempfile::tempdir().expect("a temp dir");
    let proxy = Proxy::builder(BOUNDED)
        .var("APP", up)
        .var("LOG", log.path().join("access.jsonl").display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let t0 = Instant::now();
    let _upload = tokio::spawn(async move {
        let mut chunks = Vec::new();
        for _ in 0..64 {
            chunks.extend_from_slice(b"4000\r\n");
            chunks.extend_from_slice(&[b'x'; 16 * 1024]);
            chunks.extend_from_slice(b"\r\n");
        }
        let head = b"POST /sink HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut sending = wr.write_all(head).await;
        while sending.is_ok() {
            sending = wr.write_all(&chunks).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "answered, not still uploading 5 s on");
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&got);
    // The client never finished its request: whose the deadline is depends on where rampart
    // was at that instant, waiting for the client's next bytes (408, the client's fault) or
    // writing to an upstream that had stopped reading (504). Either way it is at the deadline.
    assert!(
        (text.starts_with("HTTP/1.1 504") && text.contains("x-rampart-reason: timeout"))
            || (text.starts_with("HTTP/1.1 408")
                && text.contains("x-rampart-reason: client_timeout")),
        "{text}"
    );
    at_the_deadline(took, "the upload");
}

/// A gRPC call whose own deadline has passed when it comes (`grpc-timeout: 0n`, or 1n) is
/// answered DEADLINE_EXCEEDED without a try: the upstream never gets work nobody waits for.
/// Before, it was sent with `grpc-timeout: 1n` and cut at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_already_past_its_deadline_is_never_tried() {
    let app = sample().await;
    let proxy = plain(app.addr()).await;
    let addr = proxy.listener("inbound");
    for timeout in ["0n", "1n"] {
        let rsp = http::post(
            addr,
            "/ok",
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", timeout),
            ],
            "",
        )
        .await;
        assert_eq!(rsp.status, 200, "{timeout}: gRPC's own answer");
        assert_eq!(
            rsp.header("grpc-status"),
            Some("4"),
            "{timeout}: DEADLINE_EXCEEDED"
        );
    }
    assert_eq!(app.hits(), 0, "never tried");
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_upstream_requests_total", &[]),
        None,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_retry_after_is_honoured_only_when_it_fits() {
    let app = sample().await;
    // 1.8 s: one retry after the 1 s wait fits with room for a loaded machine (0.8 s), a
    // second one (another 1 s wait) does not.
    let proxy = retrying(&app.addr().to_string(), "request: 1800ms", "100%", 100).await;
    let addr = proxy.listener("inbound");
    let t0 = Instant::now();
    let rsp = http::get(addr, "/status/503?retry_after=1", &[]).await;
    assert_eq!(rsp.status, 503);
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "the retry waited for retry-after"
    );
    assert_eq!(
        app.hits_for("/status/503"),
        2,
        "one retry fits in 1.8 s after a 1 s wait, a second does not"
    );
    app.reset();
    let t0 = Instant::now();
    let rsp = http::get(addr, "/status/503?retry_after=5", &[]).await;
    assert_eq!(rsp.status, 503);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "a retry-after past the deadline is not waited for"
    );
    assert_eq!(app.hits_for("/status/503"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_see_no_error_when_one_of_two_endpoints_dies() {
    let a = sample().await;
    let b = sample().await;
    let b_addr = b.addr();
    let proxy = retrying(
        &format!("{}, {}", a.addr(), b_addr),
        "request: 5s",
        "20%",
        10,
    )
    .await;
    let addr = proxy.listener("inbound");
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(tokio::spawn(async move {
            let client = http::client();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while Instant::now() < stop_at {
                match http::send(&client, addr, Method::GET, "/slow?ms=5", &[], http::empty()).await
                {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.stop();
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.expect("worker");
        assert!(failed.is_empty(), "no GET may fail: {failed:?}");
        total += ok;
    }
    assert!(total > 20, "the stream kept flowing: {total} answers");
    assert!(a.hits() > 0);
}

/// A retry sends the same head again, not a copy, so what one try added for its endpoint must
/// not reach the next: an HTTP/1.0 request without `host` gets each endpoint's own authority,
/// also when its first try failed at the other endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_to_another_endpoint_names_that_endpoint_as_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::support::capture::Capture;

    let failing =
        Capture::start(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    let fine =
        Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            .await;
    let endpoints = format!("{}, {}", failing.addr(), fine.addr());
    let proxy = retrying(&endpoints, "request: 5s", "100%", 100).await;
    let addr = proxy.listener("inbound");
    for i in 0..16 {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /h HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let read = c.read_to_end(&mut got);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer within 10 s")
            .expect("read");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.0 200"), "request {i}: {got}");
        if failing.hits() > 0 && fine.hits() > failing.hits() {
            break;
        }
    }
    assert!(
        failing.hits() > 0,
        "no request was tried at the failing endpoint first"
    );
    for (cap, name) in [(&failing, "failing"), (&fine, "fine")] {
        for i in 0..cap.hits() {
            assert_eq!(
                cap.header(i, "host"),
                [cap.addr().to_string()],
                "request {i} at the {name} endpoint: {:?}",
                cap.requests()[i]
            );
        }
    }
}

/// The request's duration (`rampart_request_duration_seconds`) runs from its arrival to its
/// answer across every try and backoff, not only the last try: three tries that each time
/// out after 150 ms make one request of at least 450 ms; a 100 ms answer counts whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_duration_spans_every_try_and_backoff() {
    let app = sample().await;
    let proxy = retrying(
        &app.addr().to_string(),
        "request: 5s, per_try: 150ms",
        "100%",
        100,
    )
    .await;
    let addr = proxy.listener("inbound");
    let admin = proxy.admin();
    let sum = |text: &str| {
        metric_value(
            text,
            "rampart_request_duration_seconds_sum",
            &[("listener", "inbound"), ("route", "app")],
        )
        .unwrap_or(0.0)
    };
    let t0 = Instant::now();
    let r = http::get(addr, "/slow?ms=2000", &[]).await;
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(app.hits_for("/slow"), 3, "three tries");
    let first = sum(&metrics(admin).await);
    assert!(
        first >= 0.45 && first <= took,
        "three tries of 150 ms: {first} s recorded, {took} s seen by the client"
    );
    let r = http::get(addr, "/slow?ms=100", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = sum(&metrics(admin).await) - first;
    assert!(
        (0.1..1.0).contains(&second),
        "a 100 ms answer: {second} s recorded"
    );
}

/// A retry waiting out the upstream's `retry-after` is not counted as sent when its client
/// leaves first: `rampart_retries_total` says "retries sent", and none went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_client_leaves_during_its_wait_is_not_counted() {
    use tokio::io::AsyncWriteExt;
    let app = sample().await;
    let proxy = retrying(&app.addr().to_string(), "request: 10s", "100%", 100).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    tcp.write_all(b"GET /status/503?retry_after=5 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .expect("write");
    let until = Instant::now() + crate::support::patience();
    while app.hits_for("/status/503") == 0 {
        assert!(
            Instant::now() < until,
            "the first try never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first try's 503 is back and the retry is waiting its 5 s: the client leaves.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tcp);
    let until = Instant::now() + crate::support::patience();
    loop {
        let text = metrics(proxy.admin()).await;
        if metric_value(&text, "rampart_requests_total", &[("code", "499")]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the request never ended as 499: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.hits_for("/status/503"), 1, "no retry was sent");
    assert_eq!(retries(proxy.admin()).await, 0.0, "and none is counted");
}

/// A retry waiting out its upstream's `retry-after` does not hold that upstream's connection
/// meanwhile: the answer it keeps (the request's, should the breaker refuse the retry) is read
/// into memory first, and its connection goes back to the pool. Another request to that
/// upstream (`max_connections: 1`) is served during the wait. Before, the kept answer held its
/// connection through the whole wait, and the other request waited for it in vain (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_to_go_holds_no_upstream_connection() {
    let app = sample().await;
    let policy = RETRYING
        .replace(
            "endpoints: [$APP] }",
            "endpoints: [$APP], max_connections: 1, connect_timeout: 1s }",
        )
        .replace("request: $REQUEST", "request: 10s")
        .replace("attempts: 3", "attempts: 2");
    let proxy = Proxy::builder(&policy)
        .var("APP", app.addr())
        .var("RATIO", "100%")
        .var("MIN", "100")
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let waiting = tokio::spawn(http::get(addr, "/status/503?retry_after=3", &[]));
    crate::assert_eventually!(
        app.hits_for("/status/503") == 1,
        "the first try reached the app"
    );
    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!(rsp.status, 200, "{:?} {}", rsp.headers, rsp.text());
    assert_eq!(app.hits_for("/status/503"), 1, "the retry still waits");
    let rsp = waiting.await.expect("the waiting call");
    assert_eq!(rsp.status, 503, "the retry's answer");
    assert_eq!(app.hits_for("/status/503"), 2, "the retry went");
}

/// `$APP` behind two tries on 503 alone (10 s to the request), a breaker that opens on two
/// failures in a row, and `max_connections: 1` (whose wait `connect_timeout` bounds): what a
/// retry does with its failed try's answer while it waits to go.
async fn keeping(app: SocketAddr) -> Proxy {
    let policy = RETRYING
        .replace(
            "endpoints: [$APP] }",
            "endpoints: [$APP], max_connections: 1, connect_timeout: 1s }",
        )
        .replace(
            "    retry:\n",
            "    circuit_breaker: { consecutive_failures: 2, open_for: 10s }\n    retry:\n",
        )
        .replace("request: $REQUEST", "request: 10s")
        .replace("attempts: 3", "attempts: 2")
        .replace(
            "on: [connect_error, reset, timeout, 502, 503, 504]",
            "on: [503]",
        );
    Proxy::builder(&policy)
        .var("APP", app)
        .var("RATIO", "100%")
        .var("MIN", "100")
        .spawn()
        .await
}

/// A 503 asking for a retry after `retry_after` seconds, its head and the first `sent` of its
/// `len` body bytes (`Scripted` answers are `'static`: this one lasts the test's process).
fn unavailable(len: usize, sent: usize, retry_after: u32) -> &'static [u8] {
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {len}\r\nretry-after: {retry_after}\r\n\r\n"
    );
    let mut answer = head.into_bytes();
    answer.resize(answer.len() + sent, b'x');
    answer.leak()
}

/// The retry's answer in the tests of [`keeping`].
const RETRIED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nretried\n";

/// `rampart_retries_total` and `rampart_retry_circuit_open_total` of the route, and the
/// metrics they were read from.
async fn retried_and_refused(admin: SocketAddr) -> (f64, f64, String) {
    let text = metrics(admin).await;
    let of =
        |name| metric_value(&text, name, &[("route", "app"), ("upstream", "app")]).unwrap_or(0.0);
    let (retried, refused) = (
        of("rampart_retries_total"),
        of("rampart_retry_circuit_open_total"),
    );
    (retried, refused, text)
}

/// A request whose first try's 503 (a body of `len` bytes) asks for a retry after 2 s; during
/// that wait another request's 500 opens the breaker (two failures in a row), which refuses
/// the retry as it goes. Returns the waiting request's answer, the upstream and the proxy (the
/// other request's answer is checked here: the upstream's, served during the wait on the one
/// connection `max_connections` allows, so the failed try's answer was not holding it), and
/// that the refused retry is counted as such (`rampart_retry_circuit_open_total`), not as a
/// retry.
async fn refused_after_the_wait(len: usize) -> (http::Resp, Scripted, Proxy) {
    let other = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 6\r\n\r\nother\n";
    let up = Scripted::start(vec![
        (unavailable(len, len, 2), Then::Stay),
        (other, Then::Stay),
        (RETRIED, Then::Stay),
    ])
    .await;
    let proxy = keeping(up.addr).await;
    let addr = proxy.listener("inbound");
    let waiting = tokio::spawn(http::get(addr, "/first", &[]));
    crate::assert_eventually!(
        up.requests().len() == 1,
        "the first try reached the upstream"
    );
    let rsp = http::get(addr, "/other", &[]).await;
    assert_eq!(rsp.status, 500, "{:?} {}", rsp.headers, rsp.text());
    assert_eq!(rsp.header("x-rampart-reason"), None, "the upstream's 500");
    let first = waiting.await.expect("the waiting call");
    assert_eq!(up.requests().len(), 2, "the refused retry never went");
    let (retried, refused, text) = retried_and_refused(proxy.admin()).await;
    assert_eq!((retried, refused), (0.0, 1.0), "{text}");
    (first, up, proxy)
}

/// A failed try's answer too long to keep through the retry's wait is let go: when the
/// breaker then refuses the retry, the request's answer is rampart's own `circuit_open` (its
/// `retry-after` the breaker's 10 s, not the upstream's 2 s), not the upstream's 503 cut
/// short. At 64 KiB and a byte its last read may take the rest, and its connection go back to
/// the pool; at 1 MiB it is let go part read, its connection closed, not pooled or held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_too_long_to_keep_through_the_wait_leaves_the_breaker_s_refusal() {
    let refused = |first: &http::Resp| {
        first.assert_rampart(503, "circuit_open");
        let retry_after: u64 = first
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("circuit_open carries retry-after");
        assert!((9..=10).contains(&retry_after), "retry-after {retry_after}");
    };
    let (first, ..) = refused_after_the_wait(64 * 1024 + 1).await;
    refused(&first);
    let (first, up, _proxy) = refused_after_the_wait(1 << 20).await;
    refused(&first);
    assert_eq!(
        up.accepted(),
        2,
        "the let-go answer's connection was not pooled"
    );
    crate::assert_eventually!(
        up.closed() == 1,
        "the let-go answer's connection was closed"
    );
}

/// A failed try's answer of 64 KiB, the most kept through the retry's wait, is kept whole:
/// when the breaker then refuses the retry, it is the request's answer, every byte of it. Read
/// whole, its connection went back to the pool at once, and the other request went on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_of_64_kib_is_kept_whole_through_the_wait_for_the_breaker_s_refusal() {
    let (first, up, _) = refused_after_the_wait(64 * 1024).await;
    assert_eq!(first.status, 503, "{:?}", first.headers);
    assert_eq!(first.header("x-rampart-reason"), None, "the upstream's 503");
    assert_eq!(first.header("retry-after"), Some("2"));
    assert_eq!(first.body.len(), 64 * 1024);
    assert!(first.body.iter().all(|&b| b == b'x'), "{}", first.text());
    assert_eq!(up.accepted(), 1, "one connection carried both requests");
}

/// A failed try's answer whose body keeps coming, a byte every 50 ms without end, does not
/// hold its retry back: the retry goes when the upstream's `retry-after` (1 s) is up, the read
/// given up and its connection closed (`max_connections: 1`: the retry could not go before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_that_trickles_past_the_wait_does_not_hold_the_retry_back() {
    let dripping = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\nretry-after: 1\r\n\r\n1\r\nx\r\n";
    let up = Scripted::start(vec![
        (dripping, Then::Drip(Duration::from_millis(50))),
        (RETRIED, Then::Stay),
    ])
    .await;
    let proxy = keeping(up.addr).await;
    let t0 = Instant::now();
    let rsp = http::get(proxy.listener("inbound"), "/", &[]).await;
    let took = t0.elapsed();
    assert_eq!(rsp.status, 200, "{:?} {}", rsp.headers, rsp.text());
    assert_eq!(rsp.text(), "retried\n");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1900),
        "the retry went as its 1 s wait ended: {took:?}"
    );
    assert_eq!(up.accepted(), 2);
    crate::assert_eventually!(
        up.closed() == 1,
        "the dripping answer's connection was closed"
    );
    let (retried, refused, text) = retried_and_refused(proxy.admin()).await;
    assert_eq!((retried, refused), (1.0, 0.0), "{text}");
}

/// A failed try's answer whose body breaks off during the wait (the upstream resets its
/// connection after 1,000 of 100,000 bytes) is let go, and the retry goes when the upstream's
/// `retry-after` (1 s) is up: the 503 was read, and its break is no second failure (the breaker,
/// open at two in a row, let the retry go) nor another try in the upstream's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_that_breaks_off_during_the_wait_leaves_the_retry_to_go() {
    let up = Scripted::start(vec![
        (
            unavailable(100_000, 1000, 1),
            Then::Reset(Duration::from_millis(100)),
        ),
        (RETRIED, Then::Stay),
    ])
    .await;
    let proxy = keeping(up.addr).await;
    let t0 = Instant::now();
    let rsp = http::get(proxy.listener("inbound"), "/", &[]).await;
    assert_eq!(rsp.status, 200, "{:?} {}", rsp.headers, rsp.text());
    assert_eq!(rsp.text(), "retried\n");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "the retry-after was waited out"
    );
    assert_eq!(up.requests().len(), 2);
    let (retried, refused, text) = retried_and_refused(proxy.admin()).await;
    assert_eq!((retried, refused), (1.0, 0.0), "{text}");
    let tries = |code| {
        metric_value(
            &text,
            "rampart_upstream_requests_total",
            &[("upstream", "app"), ("code", code)],
        )
    };
    assert_eq!(
        (tries("503"), tries("200")),
        (Some(1.0), Some(1.0)),
        "{text}"
    );
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

/// A retry its breaker lets go answers with its own answer: the failed try's 503, read whole
/// into memory during the wait, is dropped, and its connection, back in the pool once read,
/// carries the retry (`max_connections: 1`; an answer still held would have closed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_goes_answers_with_its_own_answer_not_the_kept_one() {
    let up = Scripted::start(vec![
        (unavailable(60_000, 60_000, 1), Then::Stay),
        (RETRIED, Then::Stay),
    ])
    .await;
    let proxy = keeping(up.addr).await;
    let rsp = http::get(proxy.listener("inbound"), "/", &[]).await;
    assert_eq!(rsp.status, 200, "{:?} {}", rsp.headers, rsp.text());
    assert_eq!(rsp.text(), "retried\n");
    assert_eq!(up.requests().len(), 2);
    assert_eq!(up.accepted(), 1, "one connection carried both tries");
    let (retried, refused, text) = retried_and_refused(proxy.admin()).await;
    assert_eq!((retried, refused), (1.0, 0.0), "{text}");
}
