//! The upstream pool under stress: connections are driven inside the task of the request
//! that uses them (a request's upload by the same polls that read its answer), so every
//! mix of bodiless and uploading requests, large and dripping answers, answers that close
//! their connection and clients that walk away mid-answer must still come out whole, with
//! the connection cap held and no connection stuck.

use std::net::SocketAddr;
use std::time::Duration;

use ::http::Method;
use bytes::Bytes;

use crate::support::capture::Capture;
use crate::support::{http, metrics, one_route, sample, Proxy};

const TASKS: usize = 48;
const PER_TASK: usize = 30;

async fn proxy(app: SocketAddr, max_connections: u32, workers: u32) -> Proxy {
    let keys = format!("max_connections: {max_connections}, pool_max_idle: 8");
    proxy_with(app, &keys, workers).await
}

/// One route to upstream `app` at `$APP`, the upstream given `keys` too.
fn with_keys(keys: &str) -> String {
    let cfg = one_route("").replace(
        "app: { endpoints: [$APP] }",
        &format!("app: {{ endpoints: [$APP], {keys} }}"),
    );
    assert!(cfg.contains(keys), "template changed: {cfg}");
    cfg
}

/// `app` behind one route, its upstream given `keys` too, on `workers` workers.
async fn proxy_with(app: SocketAddr, keys: &str, workers: u32) -> Proxy {
    Proxy::builder(&with_keys(keys))
        .var("APP", app)
        .env("RAMPART_WORKERS", workers)
        .spawn()
        .await
}

/// One request of the mix, chosen by `i`; panics naming what went wrong.
async fn one(client: &http::HttpClient, addr: SocketAddr, i: usize) {
    match i % 6 {
        0 | 1 => {
            let r = http::send(client, addr, Method::GET, "/ok", &[], http::empty()).await;
            let r = r.unwrap_or_else(|e| panic!("GET /ok #{i}: {e}"));
            assert_eq!(
                (r.status.as_u16(), r.text().as_str()),
                (200, "ok\n"),
                "#{i}"
            );
        }
        2 => {
            let r = http::send(
                client,
                addr,
                Method::GET,
                "/bytes/65536",
                &[],
                http::empty(),
            )
            .await;
            let r = r.unwrap_or_else(|e| panic!("GET /bytes #{i}: {e}"));
            assert_eq!((r.status.as_u16(), r.body.len()), (200, 65536), "#{i}");
        }
        3 => {
            let path = "/drip?chunks=3&ms=1";
            let r = http::send(client, addr, Method::GET, path, &[], http::empty()).await;
            let r = r.unwrap_or_else(|e| panic!("GET /drip #{i}: {e}"));
            assert_eq!(r.status.as_u16(), 200, "#{i}");
        }
        4 => {
            let body = Bytes::from(http::pattern(20_000 + i));
            let r = http::send(
                client,
                addr,
                Method::POST,
                "/echo",
                &[],
                http::full(body.clone()),
            );
            let r = r.await.unwrap_or_else(|e| panic!("POST /echo #{i}: {e}"));
            assert_eq!(r.status.as_u16(), 200, "#{i}");
            assert!(r.body == body, "#{i}: the upload must come back unchanged");
        }
        _ => {
            // A client that reads the head of a large answer and walks away.
            let req = ::http::Request::get(format!("http://{addr}/bytes/2000000"))
                .body(http::empty())
                .expect("a valid request");
            let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
            let rsp = rsp.unwrap_or_else(|_| panic!("#{i}: no head in 10 s"));
            let rsp = rsp.unwrap_or_else(|e| panic!("#{i}: {e}"));
            assert_eq!(rsp.status(), 200, "#{i}");
            drop(rsp);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_storm_comes_out_whole_within_the_connection_cap() {
    storm(2).await;
}

/// One worker runs tokio's current-thread scheduler: the same storm on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_storm_on_one_worker_comes_out_whole() {
    storm(1).await;
}

async fn storm(workers: u32) {
    let app = sample().await;
    let proxy = proxy(app.addr(), 16, workers).await;
    let addr = proxy.listener("inbound");

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        tasks.push(tokio::spawn(async move {
            let client = http::client();
            for k in 0..PER_TASK {
                one(&client, addr, t * PER_TASK + k).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a storm task panicked");
    }
    let n = TASKS * PER_TASK;
    let sent = |m: usize| (0..n).filter(|i| i % 6 == m).count() as u64;
    assert_eq!(app.hits_for("/ok"), sent(0) + sent(1));
    assert_eq!(app.hits_for("/bytes/65536"), sent(2));
    assert_eq!(app.hits_for("/drip"), sent(3));
    assert_eq!(app.hits_for("/echo"), sent(4));
    assert_eq!(app.hits_for("/bytes/2000000"), sent(5));

    // Afterwards the pool still serves, and nothing was answered by rampart itself.
    let r = http::get(addr, "/ok", &[]).await;
    assert_eq!(r.status, 200);
    let text = metrics::metrics(proxy.admin()).await;
    let codes = metrics::label_values(&text, "rampart_requests_total", "code");
    assert_eq!(
        codes,
        ["200"],
        "every request must be answered by the upstream: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_close_their_connection_never_leave_one_stuck() {
    // Every answer closes its connection (the capture upstream answers once, then closes):
    // each request needs a new connection, and a closed one must free its place under the cap
    // at once, or the next request waits forever.
    let up =
        Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            .await;
    let proxy = proxy(up.addr(), 2, 2).await;
    let addr = proxy.listener("inbound");
    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(async move {
            let client = http::client();
            for k in 0..25 {
                let (m, body) = if (t + k) % 2 == 0 {
                    (Method::GET, http::empty())
                } else {
                    (Method::POST, http::full(Bytes::from_static(b"up")))
                };
                let r = http::send(&client, addr, m, "/x", &[], body).await;
                let r = r.unwrap_or_else(|e| panic!("task {t} request {k}: {e}"));
                assert_eq!(
                    (r.status.as_u16(), r.text().as_str()),
                    (200, "ok\n"),
                    "task {t} request {k}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("a task panicked");
    }
    assert_eq!(up.hits(), 200);
}

/// With `RAMPART_WORKERS=2`, each worker thread accepts and serves connections of its own
/// (thread per core): after a load spread over many connections opened in one burst, the
/// second worker's thread has done real work, and every request was answered by the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_serves_connections() {
    let app = sample().await;
    let proxy = proxy(app.addr(), 64, 2).await;
    let addr = proxy.listener("inbound");
    let before = worker_cpu_ns(proxy.pid());
    assert_eq!(
        before.len(),
        1,
        "one thread named rampart-wrk-1: {before:?}"
    );
    let mut tasks = Vec::new();
    for t in 0..32 {
        tasks.push(tokio::spawn(async move {
            let client = http::client();
            for k in 0..100 {
                let r = http::send(&client, addr, Method::GET, "/ok", &[], http::empty()).await;
                let r = r.unwrap_or_else(|e| panic!("connection {t} request {k}: {e}"));
                assert_eq!(r.status.as_u16(), 200, "connection {t} request {k}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("a task panicked");
    }
    assert_eq!(app.hits_for("/ok"), 3200);
    let after = worker_cpu_ns(proxy.pid());
    let worked = after[0].1.saturating_sub(before[0].1);
    assert!(
        worked > 5_000_000,
        "rampart-wrk-1 ran {worked} ns while serving 3200 requests on 32 connections: it accepts none"
    );
}

/// Each worker listens on a socket of its own (`SO_REUSEPORT`), yet an address another
/// process listens on is still refused: a second rampart with two workers, given the first
/// one's address, exits naming the address in use, and the first one keeps every connection.
#[tokio::test]
async fn a_second_process_cannot_share_a_listening_address() {
    let app = sample().await;
    let first = proxy(app.addr(), 64, 2).await;
    let addr = first.listener("inbound");
    let template = one_route("").replace("$LISTEN_inbound", &addr.to_string());
    let rendered = Proxy::builder(&template).var("APP", app.addr()).render();
    let child = tokio::process::Command::new(crate::support::proxy::bin())
        .args(["run", "--config"])
        .arg(&rendered.path)
        .env("RAMPART_WORKERS", "2")
        .env_remove("RAMPART_CONFIG")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the rampart binary must start");
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("the second rampart must exit within 15 s")
        .expect("its output must be readable");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the second rampart started: {said}");
    assert!(
        said.contains(&addr.to_string()) && said.to_lowercase().contains("in use"),
        "the refusal must name {addr} and the address in use: {said}"
    );
    let client = http::client();
    for k in 0..64 {
        let r = http::send(&client, addr, Method::GET, "/ok", &[], http::empty()).await;
        let r = r.unwrap_or_else(|e| panic!("request {k} after the refused start: {e}"));
        assert_eq!(r.status.as_u16(), 200, "request {k}");
    }
    assert_eq!(
        app.hits_for("/ok"),
        64,
        "every request reached the first rampart's upstream"
    );
}

/// CPU time (ns, from /proc/PID/task/TID/schedstat) of the threads named `rampart-wrk-1`.
fn worker_cpu_ns(pid: u32) -> Vec<(String, u64)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let p = e.expect("a task entry").path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() != "rampart-wrk-1" {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: no schedstat: {stat:?}", p.display()));
        out.push((comm.trim().to_string(), ns));
    }
    out
}

/// `pool_idle_timeout` acts: a connection idle for less is used again, one idle for longer is
/// not (a new one is opened), and either way the request is answered by the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_reused_within_pool_idle_timeout_and_not_after() {
    let app = sample().await;
    let proxy = proxy_with(app.addr(), "pool_idle_timeout: 400ms", 1).await;
    let addr = proxy.listener("inbound");
    let ok = |r: http::Resp, what: &str| {
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "ok\n"),
            "{what}"
        );
    };
    ok(http::get(addr, "/ok", &[]).await, "first");
    assert_eq!(app.connections(), 1, "the first request opens a connection");
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ok(http::get(addr, "/ok", &[]).await, "within the timeout");
        assert_eq!(
            app.connections(),
            1,
            "request {i} within the timeout reuses it"
        );
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    ok(http::get(addr, "/ok", &[]).await, "after the timeout");
    assert_eq!(
        app.connections(),
        2,
        "a connection idle beyond pool_idle_timeout is not used again"
    );
    assert_eq!(app.hits_for("/ok"), 5);
}

/// An upstream that answers before reading the body (the sample's `/` does, as hyper serves
/// any handler that ignores the body) keeps its connection only if the body came with the head:
/// it drains what it already holds. So a small upload's first bytes go out with the head, in
/// one write, and such uploads share the pooled connections; before, under load most opened
/// their own (the upstream saw the head alone, answered and closed). The write itself is
/// pinned by the unit tests in `src/proxy/pool/conn.rs`; this shows its effect over real
/// sockets, with four clients uploading at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_answered_before_their_body_is_read_reuse_the_connections() {
    const CLIENTS: usize = 4;
    const EACH: usize = 100;
    let app = sample().await;
    let proxy = proxy(app.addr(), 8, 1).await;
    let addr = proxy.listener("inbound");
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        clients.spawn(async move {
            let client = http::client();
            for i in 0..EACH {
                let body = http::full(vec![b'x'; 2048]);
                let r = http::send(&client, addr, Method::POST, "/", &[], body)
                    .await
                    .unwrap_or_else(|e| panic!("client {c}, upload {i}: {e}"));
                assert_eq!(
                    (r.status.as_u16(), r.text().as_str()),
                    (200, "ok\n"),
                    "client {c}, upload {i}"
                );
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(app.hits_for("/"), (CLIENTS * EACH) as u64);
    let opened = app.connections();
    assert!(
        opened <= 8,
        "{} uploads, each answered before its body was read, on at most the pool's 8 \
         connections; {opened} were opened",
        CLIENTS * EACH
    );
}

/// Idle connections are taken newest first, and `pool_idle_timeout` closes those left unused:
/// after a burst that opened three, requests one at a time all go over the connection used
/// last (taken in turn, the three would serve them in rotation and none would ever be idle
/// long enough to close); the other two are closed at the timeout while that one is kept
/// busy, and it is closed in turn once the requests stop. Nothing is reopened meanwhile, and
/// `rampart_upstream_connections` follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_reused_newest_first_and_closed_after_pool_idle_timeout() {
    let app = sample().await;
    let proxy = proxy_with(app.addr(), "pool_idle_timeout: 600ms", 1).await;
    let addr = proxy.listener("inbound");
    let endpoint = app.addr().to_string();
    let open = || async {
        let text = metrics::metrics(proxy.admin()).await;
        let labels = [("upstream", "app"), ("endpoint", endpoint.as_str())];
        metrics::metric_value(&text, "rampart_upstream_connections", &labels)
    };
    let burst = (0..3).map(|_| tokio::spawn(http::get(addr, "/slow?ms=200", &[])));
    for r in burst.collect::<Vec<_>>() {
        assert_eq!(r.await.unwrap().status.as_u16(), 200, "the burst");
    }
    assert_eq!(app.connections(), 3, "three requests at once open three");
    assert_eq!(app.open_connections(), 3);
    assert_eq!(open().await, Some(3.0), "rampart_upstream_connections");
    let conn = || async {
        let r = http::get(addr, "/conn", &[]).await;
        assert_eq!(r.status.as_u16(), 200, "GET /conn");
        r.text()
    };
    let newest = conn().await;
    for i in 0..6 {
        assert_eq!(
            conn().await,
            newest,
            "request {i} one at a time goes over the connection used last"
        );
    }
    crate::assert_eventually!(
        {
            assert_eq!(conn().await, newest, "the busy connection stays in use");
            app.open_connections() == 1
        },
        "the two connections idle since the burst are closed after pool_idle_timeout; \
         {} open",
        app.open_connections()
    );
    assert_eq!(app.open_connections(), 1, "the busy one is still open");
    assert_eq!(open().await, Some(1.0), "rampart_upstream_connections");
    crate::assert_eventually!(
        app.open_connections() == 0,
        "left alone, the last connection is closed too; {} open",
        app.open_connections()
    );
    assert_eq!(
        app.connections(),
        3,
        "no connection was opened after the burst"
    );
    assert_eq!(open().await, Some(0.0), "rampart_upstream_connections");
}

/// `pool_max_idle: 0` keeps no idle connection: each request opens its own, and each is closed
/// when its answer ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_max_idle_of_zero_keeps_no_connection() {
    let app = sample().await;
    let proxy = proxy_with(app.addr(), "pool_max_idle: 0", 2).await;
    let addr = proxy.listener("inbound");
    for i in 1..=4 {
        let r = http::get(addr, "/conn", &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, format!("{i}\n")),
            "request {i} comes on a connection of its own"
        );
    }
    crate::assert_eventually!(
        app.open_connections() == 0,
        "no connection is kept; {} open",
        app.open_connections()
    );
}

/// A reload that changes how an upstream's connections are made (here `pool_idle_timeout`)
/// gives its endpoints new pools: the old pool's idle connection is closed, not left open
/// beside the new pool's, and `rampart_upstream_connections` counts the new one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_replaces_a_pool_closes_the_old_pools_connections() {
    let app = sample().await;
    let mut proxy = proxy_with(app.addr(), "pool_idle_timeout: 60s", 1).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eq!(app.open_connections(), 1);

    proxy.rewrite_config(&with_keys("pool_idle_timeout: 30s"));
    proxy.signal("HUP");
    crate::assert_eventually!(
        metrics::reloads(&metrics::metrics(admin).await, "success") == 1.0,
        "the reload must be applied"
    );
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eq!(
        app.connections(),
        2,
        "the new pool opens a connection of its own"
    );
    crate::assert_eventually!(
        app.open_connections() == 1,
        "the old pool's idle connection is closed; {} open",
        app.open_connections()
    );
    let text = metrics::metrics(admin).await;
    let endpoint = app.addr().to_string();
    let labels = [("upstream", "app"), ("endpoint", endpoint.as_str())];
    assert_eq!(
        metrics::metric_value(&text, "rampart_upstream_connections", &labels),
        Some(1.0),
        "rampart_upstream_connections"
    );
}

/// One connection to `app` (`max_connections: 1`); `/ok` under a 300 ms `timeout.request` and
/// a breaker that opens at the first failure, anything else under no policy.
const CAPPED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP], max_connections: 1 }
policies:
  short:
    timeout: { request: 300ms }
    circuit_breaker: { consecutive_failures: 1, open_for: 30s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { match: { path_prefix: /ok }, upstream: app, policy: short }
      - { upstream: app }
"#;

/// A request whose deadline passes while it waits in rampart for the endpoint's one connection
/// (held by a slow answer) was never sent: a 504 that says so, counted in
/// `rampart_upstream_unsent_total{cause="pool_full"}`, not as a try in
/// `rampart_upstream_requests_total`, and no failure for the breaker, which lets the next
/// request through. Before, it was a `504` try, "no answer from upstream", and opened the
/// breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_for_a_pooled_connection_past_its_deadline_is_no_try() {
    let app = sample().await;
    let proxy = Proxy::builder(CAPPED).var("APP", app.addr()).spawn().await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let slow = tokio::spawn(async move { http::get(addr, "/slow?ms=1000", &[]).await });
    crate::assert_eventually!(
        app.hits_for("/slow") == 1,
        "the slow request holds the connection"
    );

    let rsp = http::get(addr, "/ok", &[]).await;
    rsp.assert_rampart(504, "timeout");
    let msg = rsp.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("max_connections"), "{msg}");
    assert!(msg.contains("not sent"), "{msg}");

    assert_eq!(slow.await.expect("the slow request").status, 200);
    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!(rsp.status, 200, "the breaker stays closed: {}", rsp.text());
    assert_eq!(
        app.hits_for("/ok"),
        1,
        "the request that waited never reached the upstream"
    );

    let text = metrics::one_unsent_two_tries(admin, "app", "pool_full").await;
    let value = |name: &str, labels: &[(&str, &str)]| metrics::metric_value(&text, name, labels);
    // The deadline did pass: `rampart_timeouts_total` names it.
    let request = [("upstream", "app"), ("kind", "request")];
    assert_eq!(
        value("rampart_timeouts_total", &request),
        Some(1.0),
        "{text}"
    );
}
