//! A slow upload is the client's time, not the upstream's (SPEC §14: faults of the client, slow
//! bodies included, never trip breakers or outlier ejection and are not upstream tries).
//! Each client here trickles its body one byte every half second, well inside
//! `body_idle_timeout`, to an upstream that answers as soon as it has the whole request.
//!
//! Before the fix a try's time ran from its start, the upload included: four such uploads
//! answered 200 were four slow calls that opened the breaker for every tenant; a request
//! deadline that passed mid-upload was a 504 upstream `timeout`, counted as the upstream's
//! failure (breaker, outlier ejection, `rampart_upstream_requests_total{code="504"}`); and a
//! per-try deadline cut an upload whose upstream had not yet had a byte to answer.

use std::net::SocketAddr;
use std::time::Duration;

use super::{assert_no_panic, upstream_tries, OK};
use crate::support::capture::Capture;
use crate::support::{http, metric_value, metrics, raw, Proxy};

/// One route streams the body (`/`), one buffers it for retry first (`/r`, PUT), each with
/// `$POLICY` (and the same breaker, as two policies of one upstream must have).
const ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APPS] $OUTLIER }
policies:
  streamed:
$POLICY
  retried:
    retry: { attempts: 2 }
$POLICY
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { name: retried, match: { path_prefix: /r }, upstream: app, policy: retried }
      - { name: streamed, upstream: app, policy: streamed }
"#;

/// Half a second between bytes: slow, and far inside the default `body_idle_timeout` (30 s).
const GAP: Duration = Duration::from_millis(500);

async fn proxy(apps: &[SocketAddr], outlier: &str, policy: &str) -> Proxy {
    let list: Vec<String> = apps.iter().map(ToString::to_string).collect();
    let file = ROUTES
        .replace("$APPS", &list.join(", "))
        .replace("$OUTLIER", outlier)
        .replace("$POLICY", policy);
    Proxy::builder(&file).spawn().await
}

/// `n` clients at once, each sending `method path` with a `len`-byte body trickled at [`GAP`].
async fn trickled(
    addr: SocketAddr,
    n: usize,
    method: &str,
    path: &str,
    len: usize,
) -> Vec<raw::RawResp> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: a\r\nx-tenant-id: slow\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let head = head.clone();
            tokio::spawn(async move {
                let body = vec![b'x'; len];
                raw::trickle(addr, head.as_bytes(), &body, GAP, Duration::from_secs(15)).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

fn breaker_open(text: &str) -> f64 {
    metric_value(
        text,
        "rampart_circuit_breaker_state",
        &[("upstream", "app"), ("state", "open")],
    )
    .unwrap_or(0.0)
}

/// Another tenant's plain GET still reaches the upstream.
async fn others_get_through(addr: SocketAddr, case: &str) {
    let rsp = http::get(addr, "/other", &[("x-tenant-id", "other")]).await;
    assert_eq!(rsp.status, 200, "{case}: {}", rsp.text());
}

/// 1a: four uploads of 4 bytes over 2 s, each answered 200 at once by the upstream, are not
/// slow calls (`slow_call: 1s`): the breaker stays closed and other tenants get through, with
/// the body streamed and with it buffered for retry first. The upstream duration histogram
/// (what balancing and the breaker are told) holds the upstream's time, not the upload's.
/// Fails before the fix on the streamed route: the breaker opens, the GET is 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_answered_at_once_are_not_slow_calls() {
    let app = Capture::start(OK).await;
    let policy = "    timeout: { request: 10s }
    circuit_breaker:
      failure_rate: { threshold: 50%, window: 10, min_calls: 4 }
      slow_call: { duration: 1s, threshold: 50% }
      open_for: 30s";
    for (method, path) in [("POST", "/x"), ("PUT", "/r/x")] {
        let proxy = proxy(&[app.addr()], "", policy).await;
        let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
        for rsp in trickled(addr, 4, method, path, 4).await {
            assert_eq!(rsp.status(), Some(200), "{path}: {}", rsp.text());
            assert!(rsp.elapsed >= Duration::from_millis(1900), "{path}");
        }
        let text = metrics(admin).await;
        assert_eq!(breaker_open(&text), 0.0, "{path}: the breaker stays closed");
        let took = metric_value(
            &text,
            "rampart_upstream_request_duration_seconds_sum",
            &[("upstream", "app")],
        )
        .expect("the upstream's tries are timed");
        assert!(
            took < 1.0,
            "{path}: the upstream's own time, {took} s for 4 tries"
        );
        others_get_through(addr, path).await;
        assert_no_panic(&proxy);
    }
}

/// 1b: a request deadline (3 s) that passes while the client is still sending its body (1000
/// bytes at 2 a second) is the client's fault: 408 `client_timeout`, no upstream try counted
/// (no 504 in `rampart_upstream_requests_total`), and five of them do not open a breaker of
/// `consecutive_failures: 5`. Fails before the fix on the streamed route: 504 `timeout`, five
/// upstream 504s, the breaker open. (The buffered route answered 408 already.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_mid_upload_is_408_and_no_upstream_failure() {
    let app = Capture::start(OK).await;
    let policy = "    timeout: { request: 3s }
    circuit_breaker: { consecutive_failures: 5, open_for: 30s }";
    for (method, path) in [("POST", "/x"), ("PUT", "/r/x")] {
        let proxy = proxy(&[app.addr()], "", policy).await;
        let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
        for rsp in trickled(addr, 5, method, path, 1000).await {
            assert_eq!(rsp.status(), Some(408), "{path}: {}", rsp.text());
            assert_eq!(
                rsp.header("x-rampart-reason").as_deref(),
                Some("client_timeout"),
                "{path}"
            );
            assert!(
                rsp.elapsed < Duration::from_secs(6),
                "{path}: {:?}",
                rsp.elapsed
            );
        }
        let text = metrics(admin).await;
        let timeouts = metric_value(&text, "rampart_upstream_requests_total", &[("code", "504")]);
        assert_eq!(timeouts.unwrap_or(0.0), 0.0, "{path}: no upstream 504");
        assert_eq!(upstream_tries(admin).await, 0.0, "{path}: no upstream try");
        assert_eq!(breaker_open(&text), 0.0, "{path}: the breaker stays closed");
        others_get_through(addr, path).await;
        assert_no_panic(&proxy);
    }
    assert_eq!(
        app.hits(),
        2,
        "only the other tenant's GETs reached the upstream"
    );
}

/// A per-try deadline bounds the upstream's time, not the client's upload: a 4-byte body
/// trickled over 2 s with `per_try: 1s` is answered 200 (the upstream answers as soon as the
/// body is whole). Fails before the fix: 504 `timeout` after 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_deadline_does_not_count_the_upload() {
    let app = Capture::start(OK).await;
    let policy = "    timeout: { request: 10s, per_try: 1s }";
    let proxy = proxy(&[app.addr()], "", policy).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    for rsp in trickled(addr, 1, "POST", "/x", 4).await {
        assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    }
    let text = metrics(admin).await;
    let ok = metric_value(&text, "rampart_upstream_requests_total", &[("code", "200")]);
    assert_eq!(ok, Some(1.0));
    assert_no_panic(&proxy);
}

/// 1c: six uploads whose request deadline passes mid-upload do not eject a healthy endpoint
/// (`outlier: { consecutive_failures: 3 }`, two endpoints): both stay healthy. Fails before
/// the fix: six upstream timeouts, at least three in a row on one endpoint, which is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_eject_a_healthy_endpoint() {
    let apps = [Capture::start(OK).await, Capture::start(OK).await];
    let addrs = [apps[0].addr(), apps[1].addr()];
    let outlier = ", outlier: { consecutive_failures: 3, eject_for: 30s }";
    let policy = "    timeout: { request: 2s }";
    let proxy = proxy(&addrs, outlier, policy).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let answers = trickled(addr, 6, "POST", "/x", 1000).await;
    let text = metrics(admin).await;
    for a in addrs {
        let ep = a.to_string();
        let healthy = metric_value(
            &text,
            "rampart_upstream_endpoint_healthy",
            &[("upstream", "app"), ("endpoint", ep.as_str())],
        );
        assert_eq!(healthy, Some(1.0), "{ep} stays in");
    }
    for rsp in answers {
        assert_eq!(rsp.status(), Some(408), "{}", rsp.text());
    }
    assert_eq!(upstream_tries(admin).await, 0.0);
    assert_no_panic(&proxy);
}

/// One route, with a request timeout of 1 s, and an access log at `$LOG`.
const WHOLE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  bounded:
    timeout: { request: 1s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: app, policy: bounded }
"#;

/// A small upload whose bytes each come within 200 ms of the one before (one every 100 ms)
/// is read whole before the request goes on, and its time is the request's all the same:
/// 30 bytes (3 s) under `timeout.request: 1s` are answered 408 `client_timeout` at the
/// deadline, counted from the head, with no try made; 5 bytes (0.5 s) are answered 200, and
/// the access log's `duration_ms` and `rampart_request_duration_seconds` hold the upload's
/// time. Fails before the fix: the 30 bytes were answered 200 after 3 s, and the durations
/// began when the body was whole (about 1 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_upload_read_whole_keeps_the_request_deadline() {
    let app = Capture::start(OK).await;
    let log = tempfile::tempdir().expect("a temp dir");
    let file = log.path().join("access.jsonl");
    let proxy = Proxy::builder(WHOLE)
        .var("APP", app.addr())
        .var("LOG", file.display())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let gap = Duration::from_millis(100);
    let wait = Duration::from_secs(6);
    let head = |len: usize| {
        format!(
            "POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };

    let late = raw::trickle(addr, head(30).as_bytes(), &[b'x'; 30], gap, wait).await;
    assert_eq!(late.status(), Some(408), "{}", late.text());
    assert_eq!(
        late.header("x-rampart-reason").as_deref(),
        Some("client_timeout")
    );
    assert!(
        late.elapsed >= Duration::from_millis(950) && late.elapsed < Duration::from_millis(1800),
        "answered at the deadline: {:?}",
        late.elapsed
    );
    assert_eq!(upstream_tries(admin).await, 0.0, "no upstream try");
    assert_eq!(app.hits(), 0);

    let whole = raw::trickle(addr, head(5).as_bytes(), &[b'x'; 5], gap, wait).await;
    assert_eq!(whole.status(), Some(200), "{}", whole.text());
    let lines = crate::support::wait_log_lines(&file, 2).await;
    let ms: Vec<f64> = lines
        .iter()
        .map(|l| l["duration_ms"].as_f64().expect("a duration"))
        .collect();
    assert_eq!(lines[0]["status"].as_u64(), Some(408), "{}", lines[0]);
    assert!((950.0..1800.0).contains(&ms[0]), "{}", lines[0]);
    assert_eq!(lines[1]["status"].as_u64(), Some(200), "{}", lines[1]);
    assert!(
        ms[1] >= 450.0,
        "the upload's time is the request's: {}",
        lines[1]
    );
    let took = metric_value(
        &metrics(admin).await,
        "rampart_request_duration_seconds_sum",
        &[("route", "app")],
    );
    assert!(
        took.is_some_and(|s| s >= 1.4),
        "both uploads' time counted: {took:?}"
    );
    assert_no_panic(&proxy);
}
