//! Timeouts and retries through real sockets: which requests are retried, how often, where,
//! and that no deadline or budget is overrun.

use std::net::SocketAddr;
use std::time::Duration;

use ::http::Method;
use tokio::time::Instant;

use crate::support::{http, metric_value, metrics, sample, Proxy};

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
