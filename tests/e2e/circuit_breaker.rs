//! Circuit breaking through real sockets: trips on failures and slow calls, refuses at once
//! without touching the upstream, probes after `open_for`, grows `open_for` on repeated trips,
//! isolates tenants with `scope: tenant`, and shows its state in metrics and `/state`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::reload::reload_to;
use crate::support::{http, metric_value, metrics, sample, Proxy};

/// `$BREAKER` is the body of the policy's `circuit_breaker` section.
const GUARDED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  guarded:
    circuit_breaker:
$BREAKER
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: guarded
"#;

async fn guarded(app: SocketAddr, breaker: &str) -> Proxy {
    Proxy::builder(&GUARDED.replace("$BREAKER", breaker))
        .var("APP", app)
        .spawn()
        .await
}

async fn get_as(addr: SocketAddr, path: &str, tenant: &str) -> http::Resp {
    http::get(addr, path, &[("x-tenant-id", tenant)]).await
}

fn state_gauge(text: &str, tenant: &str, state: &str) -> Option<f64> {
    metric_value(
        text,
        "rampart_circuit_breaker_state",
        &[("upstream", "app"), ("tenant", tenant), ("state", state)],
    )
}

/// Waits (bounded) until the breaker's `open_for` has passed, by the clock, not by polling the
/// proxy (a poll would itself be the probe).
async fn sleep_past(open_for: Duration, since: Instant) {
    let until = since + open_for + Duration::from_millis(150);
    tokio::time::sleep_until(until).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_open_it_and_open_refuses_without_touching_the_upstream() {
    let app = sample().await;
    let proxy = guarded(
        app.addr(),
        "      consecutive_failures: 3\n      open_for: 10s",
    )
    .await;
    let addr = proxy.listener("inbound");
    let before = metrics(proxy.admin()).await;
    assert_eq!(
        state_gauge(&before, "", "closed"),
        Some(1.0),
        "the series must exist, closed, before the first trip"
    );

    for _ in 0..3 {
        assert_eq!(http::get(addr, "/status/503", &[]).await.status, 503);
    }
    assert_eq!(app.hits_for("/status/503"), 3);
    let t0 = Instant::now();
    let rsp = http::get(addr, "/status/503", &[]).await;
    let took = t0.elapsed();
    rsp.assert_rampart(503, "circuit_open");
    let retry_after: u64 = rsp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("circuit_open carries retry-after");
    assert!((9..=10).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(
        app.hits_for("/status/503"),
        3,
        "an open breaker never reaches the upstream"
    );
    // Whole round trip on loopback through a loaded CI machine; the proxy's part is far less.
    assert!(took < Duration::from_millis(50), "refusal took {took:?}");

    let after = metrics(proxy.admin()).await;
    assert_eq!(state_gauge(&after, "", "open"), Some(1.0));
    assert_eq!(state_gauge(&after, "", "closed"), Some(0.0));
    let trips = metric_value(
        &after,
        "rampart_circuit_breaker_transitions_total",
        &[("upstream", "app"), ("from", "closed"), ("to", "open")],
    );
    assert_eq!(trips, Some(1.0));
    let state = http::get(proxy.admin(), "/state", &[]).await.json();
    let text = state["breakers"].to_string();
    assert!(
        text.contains("open"),
        "/state must list the open breaker: {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_after_open_for_closes_it_or_reopens_it_for_longer() {
    let app = sample().await;
    let proxy = guarded(
        app.addr(),
        "      consecutive_failures: 2\n      open_for: 1s\n      open_for_max: 4s\n      half_open_probes: 1",
    )
    .await;
    let addr = proxy.listener("inbound");
    for _ in 0..2 {
        assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    }
    let opened = Instant::now();
    http::get(addr, "/ok", &[])
        .await
        .assert_rampart(503, "circuit_open");

    // The probe fails: open again, for twice as long.
    sleep_past(Duration::from_secs(1), opened).await;
    assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    let reopened = Instant::now();
    let rsp = http::get(addr, "/ok", &[]).await;
    rsp.assert_rampart(503, "circuit_open");
    assert_eq!(
        rsp.header("retry-after"),
        Some("2"),
        "open_for doubled to 2s"
    );
    assert_eq!(app.hits_for("/ok"), 0);

    // The next probe succeeds: closed, and traffic flows.
    sleep_past(Duration::from_secs(2), reopened).await;
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    let text = metrics(proxy.admin()).await;
    assert_eq!(state_gauge(&text, "", "closed"), Some(1.0));
    let reopen = metric_value(
        &text,
        "rampart_circuit_breaker_transitions_total",
        &[("upstream", "app"), ("from", "half_open"), ("to", "open")],
    );
    assert_eq!(reopen, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_trip_it_and_4xx_are_successes() {
    let app = sample().await;
    let proxy = guarded(
        app.addr(),
        "      failure_rate: { threshold: 100%, window: 4, min_calls: 4 }\n      slow_call: { duration: 50ms, threshold: 50% }\n      open_for: 10s",
    )
    .await;
    let addr = proxy.listener("inbound");
    for _ in 0..6 {
        assert_eq!(http::get(addr, "/status/404", &[]).await.status, 404);
    }
    // The window of 4 holds two fast 404s and then two slow calls: 50% slow trips it.
    for _ in 0..2 {
        assert_eq!(http::get(addr, "/slow?ms=120", &[]).await.status, 200);
    }
    http::get(addr, "/ok", &[])
        .await
        .assert_rampart(503, "circuit_open");
    assert_eq!(app.hits_for("/ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_scope_keeps_one_tenants_failures_from_the_others() {
    let app = sample().await;
    let proxy = guarded(
        app.addr(),
        "      scope: tenant\n      consecutive_failures: 2\n      open_for: 10s",
    )
    .await;
    let addr = proxy.listener("inbound");
    for _ in 0..2 {
        assert_eq!(get_as(addr, "/status/503", "noisy").await.status, 503);
    }
    get_as(addr, "/ok", "noisy")
        .await
        .assert_rampart(503, "circuit_open");
    assert_eq!(get_as(addr, "/ok", "quiet").await.status, 200);
    assert_eq!(
        app.hits_for("/ok"),
        1,
        "only the quiet tenant reached the upstream"
    );
    let text = metrics(proxy.admin()).await;
    assert_eq!(state_gauge(&text, "noisy", "open"), Some(1.0));
    assert_eq!(state_gauge(&text, "quiet", "closed"), Some(1.0));
}

/// SPEC §5: the state gauge is 1 for the state in force, 0 for the others, `_other` included.
/// With one own label ("a"), b and c fold into `_other`: both open reads open 1 (not a count
/// of 2), and open drops to 0 only when the last of them has closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_series_is_1_while_any_folded_breaker_is_in_that_state() {
    let app = sample().await;
    let yaml = GUARDED.replace(
        "$BREAKER",
        "      scope: tenant\n      consecutive_failures: 1\n      open_for: 1s",
    );
    let yaml =
        format!("{yaml}tenants: {{ from: [ {{ header: x-tenant-id }} ], metrics_labels: 1 }}\n");
    let proxy = Proxy::builder(&yaml).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    let other = |text: &str| {
        ["closed", "open", "half_open"].map(|s| state_gauge(text, "_other", s).unwrap_or(-1.0))
    };
    for tenant in ["a", "b", "c"] {
        assert_eq!(get_as(addr, "/status/503", tenant).await.status, 503);
    }
    let opened = Instant::now();
    let text = metrics(proxy.admin()).await;
    assert_eq!(state_gauge(&text, "a", "open"), Some(1.0), "{text}");
    assert_eq!(other(&text), [0.0, 1.0, 0.0], "b and c open:\n{text}");

    sleep_past(Duration::from_secs(1), opened).await;
    assert_eq!(get_as(addr, "/ok", "b").await.status, 200, "b's probe");
    let text = metrics(proxy.admin()).await;
    assert_eq!(other(&text), [1.0, 1.0, 0.0], "b closed, c open:\n{text}");
    assert_eq!(get_as(addr, "/ok", "c").await.status, 200, "c's probe");
    let text = metrics(proxy.admin()).await;
    assert_eq!(other(&text), [1.0, 0.0, 0.0], "none open:\n{text}");
}

/// Trips the breaker (`scope` upstream, or tenant for `tenant`) and reloads it with other
/// settings: the reset to closed is counted as an open→closed transition at the reload, the
/// state gauge reads closed, and the upstream is reached again.
async fn a_reload_that_resets_an_open_breaker(scope: &str, tenant: &str) {
    let app = sample().await;
    let breaker = |n: u32| {
        format!("      scope: {scope}\n      consecutive_failures: {n}\n      open_for: 10s")
    };
    let mut proxy = guarded(app.addr(), &breaker(2)).await;
    let addr = proxy.listener("inbound");
    for _ in 0..2 {
        assert_eq!(get_as(addr, "/status/503", tenant).await.status, 503);
    }
    get_as(addr, "/ok", tenant)
        .await
        .assert_rampart(503, "circuit_open");
    let label = if scope == "tenant" { tenant } else { "" };
    let text = metrics(proxy.admin()).await;
    assert_eq!(state_gauge(&text, label, "open"), Some(1.0), "{text}");

    reload_to(&mut proxy, &GUARDED.replace("$BREAKER", &breaker(3))).await;
    let text = metrics(proxy.admin()).await;
    let reset = metric_value(
        &text,
        "rampart_circuit_breaker_transitions_total",
        &[("upstream", "app"), ("from", "open"), ("to", "closed")],
    );
    assert_eq!(reset, Some(1.0), "the reset must be counted: {text}");
    assert_eq!(state_gauge(&text, label, "closed"), Some(1.0), "{text}");
    assert_eq!(state_gauge(&text, label, "open"), Some(0.0), "{text}");
    assert_eq!(
        get_as(addr, "/ok", tenant).await.status,
        200,
        "reset: closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_new_settings_counts_the_reset_of_an_open_breaker() {
    a_reload_that_resets_an_open_breaker("upstream", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_new_settings_counts_the_reset_of_an_open_tenant_breaker() {
    a_reload_that_resets_an_open_breaker("tenant", "noisy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_goes_to_an_upstream_whose_breaker_is_open() {
    let app = sample().await;
    let policy = GUARDED
        .replace(
            "    circuit_breaker:\n$BREAKER",
            "    circuit_breaker: { consecutive_failures: 1, open_for: 10s }\n    retry: { attempts: 3, backoff: { base: 1ms, max: 2ms } }",
        );
    let proxy = Proxy::builder(&policy).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    // The first try fails and opens the breaker: no second try.
    assert_eq!(http::get(addr, "/status/503", &[]).await.status, 503);
    assert_eq!(app.hits_for("/status/503"), 1);
    let text = metrics(proxy.admin()).await;
    let retries = metric_value(&text, "rampart_retries_total", &[("route", "app")]);
    assert_eq!(retries.unwrap_or(0.0), 0.0);
}

/// A retry that the breaker refuses ends the retries, as a spent budget does: the client gets
/// the upstream's own answer, not rampart's `circuit_open`. Half-open with two probes, the first
/// held by a slow call: a call whose probe is answered 429 (a success for the breaker, and
/// retried on `retry.on`) finds no probe's place left for its retry, and the 429 is its answer
/// (before, rampart answered 503 `circuit_open` in its place). The refused retry is counted in
/// `rampart_retry_circuit_open_total` (before, in nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_the_half_open_breaker_refuses_leaves_the_upstreams_answer() {
    let app = sample().await;
    let policy = GUARDED.replace(
        "    circuit_breaker:\n$BREAKER",
        "    circuit_breaker: { consecutive_failures: 1, open_for: 1s, half_open_probes: 2 }\n    retry: { attempts: 3, on: [429], backoff: { base: 1ms, max: 2ms } }",
    );
    let proxy = Proxy::builder(&policy).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    sleep_past(Duration::from_secs(1), Instant::now()).await;
    let slow = tokio::spawn(http::get(addr, "/slow?ms=800", &[]));
    crate::assert_eventually!(
        app.hits_for("/slow") == 1,
        "the first probe reached the app"
    );

    let rsp = http::get(addr, "/status/429", &[]).await;
    assert_eq!(rsp.status, 429, "the upstream's answer: {:?}", rsp.headers);
    assert_eq!(rsp.header("x-rampart-reason"), None);
    assert_eq!(app.hits_for("/status/429"), 1, "no retry went");
    let text = metrics(proxy.admin()).await;
    let retries = metric_value(&text, "rampart_retries_total", &[("route", "app")]);
    assert_eq!(retries.unwrap_or(0.0), 0.0, "{text}");
    // The refused retry is counted, by route and upstream.
    let refused = metric_value(
        &text,
        "rampart_retry_circuit_open_total",
        &[("route", "app"), ("upstream", "app")],
    );
    assert_eq!(refused, Some(1.0), "{text}");
    assert_eq!(state_gauge(&text, "", "half_open"), Some(1.0), "{text}");

    // The first probe succeeds too: both are in, and the breaker closes.
    assert_eq!(slow.await.expect("the slow call").status, 200);
    crate::assert_eventually!(
        state_gauge(&metrics(proxy.admin()).await, "", "closed") == Some(1.0),
        "closed after its two probes"
    );
}

/// A retry takes its probe's place in a half-open breaker when it goes, after its wait, not
/// before: during the wait (here the 2 s `retry-after` of a probe answered 429, a success for
/// the breaker and retried on `retry.on`) the place is free, another request probes with it,
/// and the breaker closes; the retry then goes through the closed breaker. Before, the retry
/// held the place through its wait, and the other request was refused `circuit_open` though no
/// probe was in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_to_go_holds_no_probes_place() {
    let app = sample().await;
    let policy = GUARDED.replace(
        "    circuit_breaker:\n$BREAKER",
        "    circuit_breaker: { consecutive_failures: 1, open_for: 1s, half_open_probes: 2 }\n    retry: { attempts: 2, on: [429], backoff: { base: 1ms, max: 2ms } }",
    );
    let proxy = Proxy::builder(&policy).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    sleep_past(Duration::from_secs(1), Instant::now()).await;
    let waiting = tokio::spawn(http::get(addr, "/status/429?retry_after=2", &[]));
    crate::assert_eventually!(
        app.hits_for("/status/429") == 1,
        "the first probe reached the app"
    );

    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!(rsp.status, 200, "the second probe: {:?}", rsp.headers);
    assert_eq!(app.hits_for("/ok"), 1);
    let text = metrics(proxy.admin()).await;
    assert_eq!(state_gauge(&text, "", "closed"), Some(1.0), "{text}");
    assert_eq!(app.hits_for("/status/429"), 1, "the retry still waits");

    let rsp = waiting.await.expect("the waiting call");
    assert_eq!(rsp.status, 429, "the retry's answer: {:?}", rsp.headers);
    assert_eq!(app.hits_for("/status/429"), 2, "the retry went");
    let text = metrics(proxy.admin()).await;
    let retries = metric_value(&text, "rampart_retries_total", &[("route", "app")]);
    assert_eq!(retries, Some(1.0), "{text}");
    let refused = metric_value(
        &text,
        "rampart_retry_circuit_open_total",
        &[("route", "app")],
    );
    assert_eq!(refused, Some(0.0), "{text}");
}

/// SPEC §2: a breaker guards an upstream. Routes to `app` through a policy without a breaker,
/// or through no policy, share the breaker of the route whose policy has one: an open breaker
/// refuses them too, and their failures count toward it.
const SHARED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  guarded:
    circuit_breaker: { consecutive_failures: 3, open_for: 30s }
  timed:
    timeout: { request: 5s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - name: a
        match: { path_prefix: /status/500 }
        upstream: app
        policy: guarded
      - name: b
        match: { path_prefix: /status/502 }
        upstream: app
        policy: timed
      - name: c
        upstream: app
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_to_an_upstream_is_guarded_by_its_breaker() {
    let app = sample().await;
    let proxy = Proxy::builder(SHARED).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    }
    http::get(addr, "/status/500", &[])
        .await
        .assert_rampart(503, "circuit_open");
    // The route whose policy has no breaker, and the route with no policy, are refused too.
    http::get(addr, "/status/502", &[])
        .await
        .assert_rampart(503, "circuit_open");
    http::get(addr, "/status/504", &[])
        .await
        .assert_rampart(503, "circuit_open");
    assert_eq!(app.hits_for("/status/500"), 3);
    assert_eq!(
        app.hits_for("/status/502"),
        0,
        "an open breaker guards every route"
    );
    assert_eq!(
        app.hits_for("/status/504"),
        0,
        "an open breaker guards every route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_a_route_without_a_breaker_policy_count_toward_the_upstreams_breaker() {
    let app = sample().await;
    let proxy = Proxy::builder(SHARED).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/status/502", &[]).await.status, 502);
    assert_eq!(http::get(addr, "/status/504", &[]).await.status, 504);
    assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    // Three failures in a row, over three routes: the breaker is open for all of them.
    http::get(addr, "/status/500", &[])
        .await
        .assert_rampart(503, "circuit_open");
    assert_eq!(app.hits_for("/status/500"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_on_circuit_open_acts_on_a_route_guarded_by_another_policys_breaker() {
    let app = sample().await;
    let config = SHARED.replace(
        "    timeout: { request: 5s }",
        "    timeout: { request: 5s }\n    fallback: { on: [circuit_open], static: { status: 200, body: degraded } }",
    );
    let proxy = Proxy::builder(&config).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    }
    // Route b's policy has no breaker of its own; the upstream's open breaker refuses its
    // request, and its fallback replaces that refusal.
    let rsp = http::get(addr, "/status/502", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("x-rampart-degraded"), Some("static"));
    assert_eq!(app.hits_for("/status/502"), 0);
}

/// A connection to `addr` whose receive buffer is small, so that a slow reader holds its
/// answer back (the kernel's buffers on loopback would otherwise take megabytes of it).
async fn connect_small(addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Asks for a 20 MiB answer on `tcp` and reads it slowly (16 KiB every 20 ms, far slower than
/// the upstream sends it) for 3 s, or until rampart ends it.
async fn read_slowly(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /bytes/20971520 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 16 * 1024];
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A connection that the lean HTTP/1.1 server handed to hyper's: its first request's 10-byte
/// body pauses 300 ms halfway (past `BODY_GAP`), and its answer is read.
async fn handed_to_hyper(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = connect_small(addr).await;
    tcp.write_all(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 10\r\n\r\n12345")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(b"67890").await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the POST is answered")
            .expect("read");
        assert!(n > 0, "answered before the close");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    tcp
}

/// SPEC §14: a client that reads its answer slowly is its own fault, never the upstream's. A
/// 20 MiB answer the upstream sends at once, read slowly, is cut at the request's 1 s deadline
/// or after (the timeout counted), but its try is cancelled, not timed out: twice in a row does
/// not open a breaker of two consecutive failures, and the next request is answered. On
/// rampart's own HTTP/1.1 server and on connections it handed to hyper's. Before, the body's
/// next poll after the deadline judged the try timed out whoever had been slow: on a
/// connection handed to hyper's server (which asks for the next frame only once the client
/// took enough of the last) always, so the breaker opened and the next request was refused
/// `circuit_open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_never_opens_the_breaker() {
    for handed in [false, true] {
        let app = sample().await;
        let breaker =
            "      consecutive_failures: 2\n      open_for: 10s\n    timeout: { request: 1s }";
        let proxy = guarded(app.addr(), breaker).await;
        let addr = proxy.listener("inbound");
        // Both connections first, so that the two slow answers are two tries in a row.
        let mut conns = Vec::new();
        for _ in 0..2 {
            conns.push(match handed {
                true => handed_to_hyper(addr).await,
                false => connect_small(addr).await,
            });
        }
        for tcp in &mut conns {
            read_slowly(tcp).await;
        }
        drop(conns);
        let rsp = http::get(addr, "/ok", &[]).await;
        assert_eq!(rsp.status, 200, "handed {handed}: {}", rsp.text());
        let text = metrics(proxy.admin()).await;
        let timeouts = [("route", "app"), ("kind", "request")];
        assert_eq!(
            metric_value(&text, "rampart_timeouts_total", &timeouts),
            Some(2.0),
            "handed {handed}: both cut at the deadline: {text}"
        );
        let trips = metric_value(
            &text,
            "rampart_circuit_breaker_transitions_total",
            &[("upstream", "app"), ("from", "closed"), ("to", "open")],
        );
        assert_eq!(trips, Some(0.0), "handed {handed}: {text}");
    }
}
