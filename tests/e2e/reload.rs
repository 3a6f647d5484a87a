//! Reload on SIGHUP: a valid file changes behaviour at once, an invalid one changes nothing,
//! reloads under load drop no request, and listeners come and go with the file.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::support::metrics::{config_sha, reloads};
use crate::support::{http, metrics, sample, Proxy};

/// Inbound in front of `$APP` on routes matching `$PREFIX` only; `$EXTRA` may add listeners.
const TEMPLATE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - match: { path_prefix: $PREFIX }
        upstream: app
"#;

pub(crate) const EXTRA: &str = r#"
  - name: extra
    direction: inbound
    listen: $LISTEN_extra
    routes:
      - upstream: app
"#;

fn with_prefix(prefix: &str) -> String {
    TEMPLATE.replace("$PREFIX", prefix)
}

#[tokio::test]
async fn sighup_with_a_changed_route_changes_behaviour() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&with_prefix("/ok"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let old_sha = config_sha(admin).await;
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    http::get(addr, "/status/201", &[])
        .await
        .assert_rampart(404, "no_route");

    proxy.rewrite_config(&with_prefix("/status"));
    proxy.signal("HUP");
    assert_eventually!(
        http::get(addr, "/status/201", &[]).await.status == 201,
        "the moved prefix must route after SIGHUP"
    );
    http::get(addr, "/ok", &[])
        .await
        .assert_rampart(404, "no_route");
    assert_ne!(config_sha(admin).await, old_sha);
    assert_eq!(reloads(&metrics(admin).await, "failure"), 0.0);
}

/// A request on a connection opened before the reload is served by the new config too (SPEC
/// §6: new requests use it; only one in flight at the reload finishes under the old), whoever
/// serves the connection: the lean server (after an answer in flight at the reload, and after
/// a wait that parked the connection), hyper's HTTP/1 server (after a chunked upload handed
/// the connection to it) and HTTP/2. Each connection is served `/ok` before the reload, and
/// told 404 `no_route` for it after, when the only route left is `/status`.
#[tokio::test]
async fn requests_on_connections_open_at_a_reload_get_the_new_config() {
    use crate::support::conn::Conn;
    let app = sample().await;
    let mut proxy = Proxy::builder(&with_prefix("/"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
    let (mut lean, mut parked, mut handed) = (
        Conn::open(addr).await,
        Conn::open(addr).await,
        Conn::open(addr).await,
    );
    parked.send(get("/ok").as_bytes()).await;
    assert_eq!(parked.answer(false).await.status, 200);
    handed
        .send(
            b"POST /ok HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nhi\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(handed.answer(false).await.status, 200);
    let mut h2 = http::h2c(addr).await;
    let h2_get = |h2: &mut hyper::client::conn::http2::SendRequest<http::ReqBody>| {
        let req = ::http::Request::get(format!("http://{addr}/ok"))
            .body(http::empty())
            .expect("a request");
        let rsp = h2.send_request(req);
        async move { rsp.await.expect("an HTTP/2 answer").status() }
    };
    assert_eq!(h2_get(&mut h2).await, 200);
    // In flight at the reload: finishes under the config it began with.
    lean.send(get("/slow?ms=800").as_bytes()).await;
    // Longer than a connection waits before it is parked (250 ms).
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;

    let old_sha = config_sha(admin).await;
    proxy.rewrite_config(&with_prefix("/status"));
    proxy.signal("HUP");
    assert_eventually!(
        config_sha(admin).await != old_sha,
        "the reload must be applied"
    );
    assert_eq!(
        lean.answer(false).await.status,
        200,
        "begun before the reload"
    );
    for (name, c) in [
        ("lean", &mut lean),
        ("parked", &mut parked),
        ("hyper", &mut handed),
    ] {
        c.send(get("/ok").as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!(a.status, 404, "{name}: {a:?}");
        assert_eq!(
            a.header("x-rampart-reason"),
            Some("no_route"),
            "{name}: {a:?}"
        );
        c.send(get("/status/201").as_bytes()).await;
        assert_eq!(c.answer(false).await.status, 201, "{name}");
    }
    assert_eq!(h2_get(&mut h2).await, 404, "HTTP/2");
    assert_eq!(app.hits_for("/ok"), 3, "/ok before the reload only");
}

#[tokio::test]
async fn invalid_file_on_sighup_keeps_the_old_config() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&with_prefix("/ok"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let admin = proxy.admin();
    let old_sha = config_sha(admin).await;
    let before = metrics(admin).await;

    proxy.rewrite_config(&with_prefix("/status").replace("version: 1", "version: 1\nbogus: 1"));
    proxy.signal("HUP");
    assert_eventually!(
        reloads(&metrics(admin).await, "failure") == reloads(&before, "failure") + 1.0,
        "the failed reload must be counted"
    );
    let text = metrics(admin).await;
    assert_eq!(reloads(&text, "failure"), 1.0, "{text}");
    assert_eq!(reloads(&text, "success"), reloads(&before, "success"));
    assert_eq!(config_sha(admin).await, old_sha);
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    http::get(addr, "/status/201", &[])
        .await
        .assert_rampart(404, "no_route");
    assert!(proxy.log().contains("bogus"), "the error must be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_fail_no_request() {
    let app = sample().await;
    // Two valid files that both serve /ok, differing in the route they take.
    let files = [with_prefix("/"), with_prefix("/o")];
    let mut proxy = Proxy::builder(&files[0])
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let before = reloads(&metrics(admin).await, "success");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            // One pooled client per task: its keep-alive connections live across reloads.
            let client = http::client();
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let rsp = http::send(
                    &client,
                    addr,
                    ::http::Method::GET,
                    "/ok",
                    &[],
                    http::empty(),
                );
                match rsp.await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            errors
        }));
    }

    for i in 1..=20 {
        let text = proxy.rewrite_config(&files[i % 2]);
        let served_before = ok.load(Ordering::SeqCst);
        proxy.signal("HUP");
        let want = reloads_done(before, i);
        assert_eventually!(
            reloads(&metrics(admin).await, "success") == want,
            "reload {i} must be applied"
        );
        assert_eq!(config_sha(admin).await, sha(&text));
        // Requests keep flowing between reloads.
        assert_eventually!(ok.load(Ordering::SeqCst) > served_before + 4);
    }
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for c in clients {
        errors.extend(c.await.expect("client task must not panic"));
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {errors:?}"
    );
    assert!(
        ok.load(Ordering::SeqCst) >= 100,
        "load must have run throughout"
    );
    assert_eq!(app.hits_for("/ok"), ok.load(Ordering::SeqCst));
}

fn reloads_done(before: f64, n: usize) -> f64 {
    before + n as f64
}

fn sha(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn reload_binds_added_listeners_and_closes_removed_ones() {
    let app = sample().await;
    let base = with_prefix("/");
    let mut proxy = Proxy::builder(&base).var("APP", app.addr()).spawn().await;

    proxy.rewrite_config(&format!("{base}{EXTRA}"));
    let extra = proxy.listener("extra");
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "not yet bound"
    );
    proxy.signal("HUP");
    assert_eventually!(
        http::try_get(extra, "/ok", &[])
            .await
            .is_ok_and(|r| r.status == 200),
        "the added listener must serve"
    );
    assert_eq!(app.hits_for("/ok"), 1);

    proxy.rewrite_config(&base);
    proxy.signal("HUP");
    assert_eventually!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "the removed listener must be closed"
    );
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn watch_follows_configmap_symlink_swaps() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&with_prefix("/ok"))
        .var("APP", app.addr())
        .arg("--watch")
        .configmap()
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    http::get(addr, "/status/201", &[])
        .await
        .assert_rampart(404, "no_route");

    // A ConfigMap update: only the `..data` symlink changes; no signal is sent.
    let text = proxy.swap_configmap(&with_prefix("/status"));
    assert_eventually!(
        http::get(addr, "/status/201", &[]).await.status == 201,
        "--watch must follow a ConfigMap symlink swap"
    );
    assert_eq!(config_sha(proxy.admin()).await, sha(&text));
    let text = proxy.swap_configmap(&with_prefix("/ok"));
    assert_eventually!(
        config_sha(proxy.admin()).await == sha(&text),
        "--watch must see every swap"
    );
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
}

/// `$UPS`: the upstream's endpoints; `$POLICY`: the route's policy body.
const GAUGES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$UPS] }
policies:
  p: { $POLICY }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: p
"#;

fn gauges(ups: &str, policy: &str) -> String {
    GAUGES.replace("$UPS", ups).replace("$POLICY", policy)
}

/// A reload that takes away a breaker, an endpoint and a shedder takes their gauges with it: a
/// breaker's `open` left at 1 would keep its alert firing for ever, a removed endpoint would
/// still read healthy.
#[tokio::test]
async fn gauges_of_what_a_reload_removes_go_with_it() {
    let (app, other) = (sample().await, sample().await);
    let both = format!("{}, {}", app.addr(), other.addr());
    let guarded = "circuit_breaker: { consecutive_failures: 1, open_for: 60s }, load_shed: { max_in_flight: 10 }";
    let mut proxy = Proxy::builder(&gauges(&both, guarded)).spawn().await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let (app_ep, other_ep) = (app.addr().to_string(), other.addr().to_string());
    // One failure opens the breaker (whichever endpoint served it).
    assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    http::get(addr, "/ok", &[])
        .await
        .assert_rampart(503, "circuit_open");
    let open = [("upstream", "app"), ("tenant", ""), ("state", "open")];
    let healthy = |ep| [("upstream", "app"), ("endpoint", ep)];
    let shed = [("listener", "inbound"), ("route", "app")];
    let text = metrics(admin).await;
    assert_eq!(
        metrics::metric_value(&text, "rampart_circuit_breaker_state", &open),
        Some(1.0),
        "{text}"
    );
    let other_healthy = healthy(&other_ep);
    assert_eq!(
        metrics::metric_value(&text, "rampart_upstream_endpoint_healthy", &other_healthy),
        Some(1.0),
        "{text}"
    );
    assert!(
        metrics::metric_value(&text, "rampart_queue_depth", &shed).is_some(),
        "{text}"
    );

    reload_to(&mut proxy, &gauges(&app_ep, "timeout: { request: 5s }")).await;
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    let text = metrics(admin).await;
    for gone in [
        "rampart_circuit_breaker_state",
        "rampart_queue_depth",
        "rampart_concurrency_limit",
    ] {
        assert_eq!(
            metrics::metric_value(&text, gone, &[]),
            None,
            "{gone}: {text}"
        );
    }
    assert_eq!(
        metrics::metric_value(&text, "rampart_upstream_endpoint_healthy", &other_healthy),
        None,
        "{text}"
    );
    assert_eq!(
        metrics::metric_value(
            &text,
            "rampart_upstream_endpoint_healthy",
            &healthy(&app_ep)
        ),
        Some(1.0),
        "the endpoint that stays keeps its series: {text}"
    );
    // The transition counters are history and stay.
    assert!(
        metrics::metric_value(
            &text,
            "rampart_circuit_breaker_transitions_total",
            &[("upstream", "app")]
        )
        .is_some(),
        "{text}"
    );
}

/// `$UP`: the upstream the route named `api` sends to.
const NAMED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
  other: { endpoints: [$OTHER] }
policies:
  p: { load_shed: { adaptive: { min: 8, max: 64 } } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { name: api, upstream: $UP, policy: p }
"#;

/// A named route that moves to another upstream keeps its shedder (and its requests in
/// flight), and the shedder's series move with it to the new upstream's label: the limit in
/// force is shown under the upstream the route now sends to (a live adaptive limit must not read
/// 0), and nothing is left under the old one (before, the old label kept the live limit and the
/// new one had no series).
#[tokio::test]
async fn a_route_that_moves_upstream_takes_its_shedders_series_to_the_new_label() {
    let (app, other) = (sample().await, sample().await);
    let mut proxy = Proxy::builder(&NAMED.replace("$UP", "app"))
        .var("APP", app.addr())
        .var("OTHER", other.addr())
        .spawn()
        .await;
    let admin = proxy.admin();
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
    let limit = |text: &str, up: &str| {
        metrics::metric_value(
            text,
            "rampart_concurrency_limit",
            &[("route", "api"), ("upstream", up)],
        )
    };
    let before = limit(&metrics(admin).await, "app");
    assert!(before.is_some_and(|v| v >= 8.0), "{before:?}");

    reload_to(&mut proxy, &NAMED.replace("$UP", "other")).await;
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
    let text = metrics(admin).await;
    assert!(limit(&text, "other").is_some_and(|v| v >= 8.0), "{text}");
    assert_eq!(limit(&text, "app"), None, "{text}");
}

/// `$OLD_ROUTE`: the route to the upstream `old`, or nothing once a reload removed it.
const RETIRED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
  $OLD_UPSTREAM
policies:
  p: { timeout: { request: 600ms } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      $OLD_ROUTE
      - { upstream: app }
"#;

/// A request still in flight under the generation a reload replaced may still eject an
/// endpoint of an upstream the reload removed: the ejection is not written back into the
/// metrics the reload cleaned (an alert on an upstream that no longer exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_under_a_removed_upstream_writes_no_series_back() {
    let (app, a, b) = (sample().await, sample().await, sample().await);
    let old = format!(
        "old: {{ endpoints: [{}, {}], outlier: {{ consecutive_failures: 1 }} }}",
        a.addr(),
        b.addr()
    );
    let with_old = RETIRED.replace("$OLD_UPSTREAM", &old).replace(
        "$OLD_ROUTE",
        "- { match: { path_prefix: /slow }, upstream: old, policy: p }",
    );
    let without = RETIRED
        .replace("$OLD_UPSTREAM", "")
        .replace("$OLD_ROUTE", "");
    let mut proxy = Proxy::builder(&with_old)
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    // Times out (a failure) 600 ms in, after the reload below.
    let slow = tokio::spawn(async move { http::get(addr, "/slow?ms=3000", &[]).await });
    assert_eventually!(
        a.hits() + b.hits() == 1,
        "the slow request must be in flight"
    );
    reload_to(&mut proxy, &without).await;
    let text = metrics(admin).await;
    assert!(
        metrics::label_values(&text, "rampart_upstream_endpoint_healthy", "upstream") == ["app"],
        "{text}"
    );
    slow.await.expect("no panic").assert_rampart(504, "timeout");
    assert_eventually!(
        proxy
            .log()
            .contains("endpoint ejected by outlier detection"),
        "the late failure ejects its endpoint"
    );
    let text = metrics(admin).await;
    assert_eq!(
        metrics::label_values(&text, "rampart_upstream_endpoint_healthy", "upstream"),
        ["app"],
        "{text}"
    );
}

/// Puts `text` in the proxy's policy file and reloads it through the admin API, which must
/// take it.
pub(crate) async fn reload_to(proxy: &mut Proxy, text: &str) {
    proxy.rewrite_config(text);
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

/// One listener on `$HOST:$PORT` (a fixed port, so a reload can move it to another address of
/// that port); `$RUNTIME` may add a `runtime` section.
const MOVABLE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
$RUNTIME
listeners:
  - name: inbound
    direction: inbound
    listen: $HOST:$PORT
    routes:
      - upstream: app
"#;

pub(crate) fn movable(host: &str, runtime: &str) -> String {
    MOVABLE.replace("$HOST", host).replace("$RUNTIME", runtime)
}

/// Whether `addr` answers `GET /ok` with 200 now.
async fn serves(addr: std::net::SocketAddr) -> bool {
    http::try_get(addr, "/ok", &[])
        .await
        .is_ok_and(|r| r.status == 200)
}

/// Moves the listener from `from:P` to `to:P` by a reload, with `workers` workers, while a
/// keep-alive connection to the old one has a request in flight (a slow upstream): the reload
/// binds (the old socket still holds the port), that request is answered, and the port serves
/// from the new address: `127.0.0.2` reaches only a `0.0.0.0` listener.
async fn move_listener(from: &str, to: &str, workers: usize) {
    let app = sample().await;
    let port = crate::support::free_port();
    let mut proxy = Proxy::builder(&movable(from, ""))
        .var("APP", app.addr())
        .var("PORT", port)
        .env("RAMPART_WORKERS", workers)
        .spawn()
        .await;
    let lo: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let other: std::net::SocketAddr = ([127, 0, 0, 2], port).into();
    let wide = |host: &str| host == "0.0.0.0";
    assert!(serves(lo).await);
    assert_eq!(
        serves(other).await,
        wide(from),
        "{from} reaches 127.0.0.2 or not"
    );

    let mut kept = crate::support::conn::Conn::open(lo).await;
    kept.send(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(kept.answer(false).await.status, 200);
    kept.send(b"GET /slow?ms=700 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await;
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request is upstream");

    reload_to(&mut proxy, &movable(to, "")).await;
    assert_eq!(
        kept.answer(false).await.status,
        200,
        "the old listener's request in flight must be answered"
    );
    assert_eventually!(
        serves(other).await == wide(to),
        "127.0.0.2:{port} must follow the move to {to}"
    );
    assert!(serves(lo).await, "{to}:{port} must serve 127.0.0.1");
    let log = proxy.log();
    assert!(!log.contains("reload failed"), "{log}");
}

#[tokio::test]
async fn a_reload_moves_a_listener_from_loopback_to_every_address_of_its_port() {
    move_listener("127.0.0.1", "0.0.0.0", 1).await;
}

#[tokio::test]
async fn a_reload_moves_a_listener_from_every_address_to_loopback_on_its_port() {
    move_listener("0.0.0.0", "127.0.0.1", 1).await;
}

#[tokio::test]
async fn a_reload_moves_a_listener_of_two_workers_both_ways() {
    move_listener("127.0.0.1", "0.0.0.0", 2).await;
    move_listener("0.0.0.0", "127.0.0.1", 2).await;
}

/// How a reload stops the listener that connections wait at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Moved to another address of its port.
    Moved,
    /// Taken away.
    Removed,
    /// Moved, then renamed where it went by a second reload while its old address drains.
    MovedThenRenamed,
}

/// With one worker, `max_connections: 1` and one connection served, a second is accepted and
/// waits for a permit, a third waits in the kernel's queue. A reload moves the listener (or
/// takes it away, `Stop::Removed`): the old one stops and closes its socket, but serves both
/// under its configuration (the idle one that held the permit is closed), where before the
/// waiting one was closed unanswered and the queued one reset (once the listener moved), or
/// both closed unanswered (once it was removed: no listener of the new configuration was
/// theirs). `Stop::MovedThenRenamed`: the one holding the permit has a request in flight
/// across the move and a second reload that renames the listener at its new address; the
/// waiting ones, served once it is answered, are served by the listener as it was before the
/// rename. Before, nothing held that one once the generation of the move was let go: they
/// were closed unanswered (a request they sent later would have been answered 404).
async fn connections_waiting_at_a_stopping_listener_are_served(stop: Stop) {
    let app = sample().await;
    let port = crate::support::free_port();
    let runtime = "runtime: { max_connections: 1 }";
    let kept = movable("127.0.0.1", runtime);
    let (before, after) = if stop == Stop::Removed {
        (format!("{kept}{EXTRA}"), kept)
    } else {
        (kept, movable("0.0.0.0", runtime))
    };
    let mut proxy = Proxy::builder(&before)
        .var("APP", app.addr())
        .var("PORT", port)
        .env("RAMPART_WORKERS", 1)
        .spawn()
        .await;
    let at = if stop == Stop::Removed {
        proxy.listener("extra")
    } else {
        ([127, 0, 0, 1], port).into()
    };
    let mut held = crate::support::conn::Conn::open(at).await;
    held.send(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(held.answer(false).await.status, 200);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut c = crate::support::conn::Conn::open(at).await;
        c.send(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n").await;
        waiting.push(c);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.hits_for("/ok"), 1, "the cap holds the others back");
    let renamed = stop == Stop::MovedThenRenamed;
    if renamed {
        held.send(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: app\r\n\r\n")
            .await;
        assert_eventually!(app.hits_for("/slow") == 1, "the slow request is upstream");
    }

    reload_to(&mut proxy, &after).await;
    if renamed {
        reload_to(&mut proxy, &after.replace("name: inbound", "name: ingress")).await;
        assert_eq!(held.answer(false).await.status, 200, "the slow request");
    }
    for c in &mut waiting {
        assert_eq!(c.answer(false).await.status, 200);
    }
    assert!(
        held.closes().await,
        "the connection that held the place closes with its listener"
    );
}

#[tokio::test]
async fn connections_waiting_at_a_listener_that_moves_are_served() {
    connections_waiting_at_a_stopping_listener_are_served(Stop::Moved).await;
}

#[tokio::test]
async fn connections_waiting_at_a_listener_a_reload_removes_are_served() {
    connections_waiting_at_a_stopping_listener_are_served(Stop::Removed).await;
}

#[tokio::test]
async fn connections_waiting_at_a_listener_moved_then_renamed_are_served() {
    connections_waiting_at_a_stopping_listener_are_served(Stop::MovedThenRenamed).await;
}

/// A listener renamed where it is (the same address, a new name) is the same listener: a
/// keep-alive connection it had is served on by it, as renamed, through the reload's grace
/// and past it (nothing of the old name is needed; no drain runs), never answered 404.
#[tokio::test]
async fn a_listener_renamed_in_place_serves_its_open_connections_on() {
    let app = sample().await;
    let port = crate::support::free_port();
    let before = movable("127.0.0.1", "runtime: { shutdown_grace: 300ms }");
    let mut proxy = Proxy::builder(&before)
        .var("APP", app.addr())
        .var("PORT", port)
        .spawn()
        .await;
    let mut kept = crate::support::conn::Conn::open(([127, 0, 0, 1], port).into()).await;
    kept.send(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(kept.answer(false).await.status, 200);

    reload_to(
        &mut proxy,
        &before.replace("name: inbound", "name: ingress"),
    )
    .await;
    for i in 0..8 {
        kept.send(b"GET /ok HTTP/1.1\r\nHost: app\r\n\r\n").await;
        assert_eq!(kept.answer(false).await.status, 200, "request {i}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.hits_for("/ok"), 9);
}

/// Another process of the same user listening on the port with `SO_REUSEPORT` (this test's
/// socket on `127.0.0.2:P` stands for it) could share a move's new address unseen: the reload
/// that moves the listener to `0.0.0.0:P` is refused, naming the cause, and the old listener
/// serves on.
#[tokio::test]
async fn a_move_onto_a_port_another_process_shares_is_refused() {
    let app = sample().await;
    let port = crate::support::free_port();
    let mut proxy = Proxy::builder(&movable("127.0.0.1", ""))
        .var("APP", app.addr())
        .var("PORT", port)
        .spawn()
        .await;
    let stranger = tokio::net::TcpSocket::new_v4().expect("socket");
    stranger.set_reuseport(true).expect("SO_REUSEPORT");
    stranger
        .bind(([127, 0, 0, 2], port).into())
        .expect("a reuse-port socket beside rampart's");
    let _stranger = stranger.listen(8).expect("listen");

    proxy.rewrite_config(&movable("0.0.0.0", ""));
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(
        rsp.text().contains("another process listens on 127.0.0.2"),
        "{}",
        rsp.text()
    );
    assert!(serves(([127, 0, 0, 1], port).into()).await);
}

/// `$NAME`: the name of the route to `$UP` on the listener `extra`, which `$EXTRA` may leave
/// out; the route `keep` stays as it is.
const RENAMED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
  $UP: { endpoints: [$APP] }
policies:
  p: { retry: { attempts: 2 }, timeout: { request: 5s }, idempotency: { ttl: 1h, max_body: 4KiB } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { name: keep, match: { path_prefix: /status }, upstream: app }
      - { name: $NAME, upstream: $UP, policy: p }
$EXTRA
"#;

const RENAMED_EXTRA: &str = r#"
  - name: extra
    direction: inbound
    listen: $LISTEN_extra
    routes:
      - upstream: app
"#;

/// A reload that renames a route or replaces an upstream takes their series (counters,
/// histograms and gauges) out of `/metrics`: a generator of configs that renames routes would
/// otherwise grow it without bound. A route that stays keeps its counts; a listener removed
/// keeps its series (its drain's cuts are counted there: `shutdown.rs`).
#[tokio::test]
async fn series_of_what_a_reload_removes_leave_metrics_and_those_kept_stay() {
    let app = sample().await;
    let config = |name: &str, up: &str, extra: &str| {
        RENAMED
            .replace("$NAME", name)
            .replace("$UP", up)
            .replace("$EXTRA", extra)
    };
    let mut proxy = Proxy::builder(&config("gen0", "old", RENAMED_EXTRA))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let extra = proxy.listener("extra");
    for path in ["/status/200", "/ok", "/status/200"] {
        assert_eq!(http::get(addr, path, &[]).await.status, 200, "{path}");
    }
    assert_eq!(http::get(extra, "/ok", &[]).await.status, 200);
    let kept = |text: &str| {
        let labels = [("listener", "inbound"), ("route", "keep"), ("code", "200")];
        metrics::metric_value(text, "rampart_requests_total", &labels)
    };
    let text = metrics(admin).await;
    for series in [
        "route=\"gen0\"",
        "upstream=\"old\"",
        "listener=\"extra\"",
        "rampart_idempotency_bytes{route=\"gen0\"}",
    ] {
        assert!(text.contains(series), "{series} before the reload: {text}");
    }
    assert_eq!(kept(&text), Some(2.0), "{text}");

    reload_to(&mut proxy, &config("gen1", "new", "")).await;
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eq!(http::get(addr, "/status/200", &[]).await.status, 200);
    let text = metrics(admin).await;
    for gone in ["gen0", "upstream=\"old\""] {
        assert!(!text.contains(gone), "{gone} after the reload: {text}");
    }
    // A removed listener drains, and what its drain cuts is counted on its series: they stay.
    let extra = [("listener", "extra"), ("code", "200")];
    assert_eq!(
        metrics::metric_value(&text, "rampart_requests_total", &extra),
        Some(1.0),
        "{text}"
    );
    for series in [
        "rampart_requests_total{code=\"200\",listener=\"inbound\",route=\"gen1\"",
        "rampart_upstream_requests_total{code=\"200\",upstream=\"new\"}",
        "rampart_idempotency_keys{route=\"gen1\"}",
    ] {
        assert!(text.contains(series), "no {series}: {text}");
    }
    assert_eq!(
        kept(&text),
        Some(3.0),
        "the kept route's count goes on: {text}"
    );
}

/// A reload that puts back a listener the reload before it took away binds beside its old
/// socket, which stays open until its accept loop closes it: that socket is rampart's own,
/// not another process's (refused so before, in SIGHUP storms of reloads 30 ms apart).
/// Another process's socket there is refused still. In process, to run the second reload
/// before the first one's drain has even begun: nothing yields between them.
#[tokio::test]
async fn a_listener_put_back_beside_its_closing_socket_binds_and_serves() {
    let app = sample().await;
    let port = crate::support::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let extra = EXTRA.replace("$LISTEN_extra", &addr.to_string());
    let rendered = Proxy::builder(&format!("{}{extra}", with_prefix("/")))
        .var("APP", app.addr())
        .render();
    let with = rampart::load_config(&rendered.path).expect("the policy validates");
    let path = rendered.dir.path().join("without.yaml");
    std::fs::write(&path, rendered.text.replace(&extra, "")).expect("a policy file");
    let without = rampart::load_config(&path).expect("the policy validates");
    assert_eq!(without.file.listeners.len(), 1, "extra taken away");
    let r = rampart::Rampart::start(with.clone())
        .await
        .expect("rampart starts");
    let shared = r.shared();
    assert!(serves(addr).await);
    let reload_twice = || async {
        let mut set = shared.listeners.lock().await;
        rampart::reload::apply(shared, &mut set, without.clone()).expect("extra taken away");
        rampart::reload::apply(shared, &mut set, with.clone())
    };

    let put_back = reload_twice().await;
    assert!(put_back.is_ok(), "{put_back:?}");
    assert_eventually!(serves(addr).await, "the listener put back serves");

    let stranger = tokio::net::TcpSocket::new_v4().expect("socket");
    stranger.set_reuseport(true).expect("SO_REUSEPORT");
    stranger
        .bind(addr)
        .expect("a reuse-port socket beside rampart's");
    let _stranger = stranger.listen(8).expect("listen");
    let refused = reload_twice()
        .await
        .expect_err("another's socket there: refused");
    assert!(
        refused.to_string().contains("another process listens on"),
        "{refused}"
    );
}

/// `inbound` to `app`; `$EXTRA` may add a listener and an upstream (`REMOVED_EXTRA`).
const WITH_REMOVED: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 1s }
upstreams:
  app: { endpoints: [$APP] }
$UPSTREAMS
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
$EXTRA
"#;

const REMOVED_EXTRA: &str = r#"
  - name: extra
    direction: inbound
    listen: $LISTEN_extra
    routes:
      - upstream: gone
"#;

/// An HTTP/1.1 upstream that answers each request on a connection `200` keep-alive and sets
/// the flag once the first connection it accepted is closed by rampart (EOF).
async fn keep_alive_upstream() -> (std::net::SocketAddr, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = tcp.local_addr().expect("bound");
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        let Ok((mut s, _)) = tcp.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let rsp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(rsp).await.is_err() {
                    break;
                }
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    (addr, closed)
}

/// A reload that removes a listener and the upstream only it routed to lets go of both once
/// the listener's drain is over: the upstream's pooled connection is closed then. Before, the
/// generation in force kept the removed listener (and through its routes the upstream, its
/// pools, its DNS loop) until some later reload.
#[tokio::test]
async fn a_removed_listener_and_its_upstream_are_let_go_when_its_drain_ends() {
    let app = sample().await;
    let (gone, closed) = keep_alive_upstream().await;
    let config = |upstreams: &str, extra: &str| {
        WITH_REMOVED
            .replace("$UPSTREAMS", upstreams)
            .replace("$EXTRA", extra)
    };
    let gone_up = format!("  gone: {{ endpoints: [\"{gone}\"], pool_idle_timeout: 60s }}");
    let mut proxy = Proxy::builder(&config(&gone_up, REMOVED_EXTRA))
        .var("APP", app.addr())
        .spawn()
        .await;
    let extra = proxy.listener("extra");
    assert_eq!(http::get(extra, "/", &[]).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!closed.load(Ordering::SeqCst), "pooled, kept open");

    reload_to(&mut proxy, &config("", "")).await;
    // The drain (1 s) over, nothing holds the upstream: its pool closes its connection.
    assert_eventually!(
        closed.load(Ordering::SeqCst),
        "the removed upstream's pooled connection must close after the drain"
    );
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
}
