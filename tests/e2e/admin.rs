//! The admin listener: health, readiness, the config in force, reload on request, and a
//! metrics exposition that Prometheus' own linter accepts.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::support::metrics::{config_sha, reloads};
use crate::support::{http, metric_value, metrics, one_route, sample, Proxy};

async fn proxy(app: SocketAddr) -> Proxy {
    Proxy::builder(&one_route("")).var("APP", app).spawn().await
}

fn sha256_of(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).expect("the policy file must be readable");
    crate::support::sha256_hex(&bytes)
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    assert_eq!(http::get(proxy.admin(), "/healthz", &[]).await.status, 200);
    assert_eq!(http::get(proxy.admin(), "/readyz", &[]).await.status, 200);
}

/// Probes and monitors that use HEAD get the GET endpoints' status without a body; a method an
/// endpoint does not take is 405 with the methods it does take in `allow` (RFC 9110 §15.5.6).
#[tokio::test]
async fn head_is_served_where_get_is_and_a_405_says_what_is_allowed() {
    use hyper::Method;
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let admin = proxy.admin();
    let client = http::client();
    for path in ["/healthz", "/readyz", "/metrics", "/config", "/state"] {
        let rsp = http::send(&client, admin, Method::HEAD, path, &[], http::empty())
            .await
            .expect("HEAD must be answered");
        assert_eq!(rsp.status, 200, "HEAD {path}");
        assert!(rsp.body.is_empty(), "HEAD {path} has no body");
    }
    let cases = [
        (Method::GET, "/reload", "POST"),
        (Method::DELETE, "/metrics", "GET, HEAD"),
        (Method::POST, "/healthz", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let rsp = http::send(&client, admin, method.clone(), path, &[], http::empty())
            .await
            .expect("answered");
        assert_eq!(rsp.status, 405, "{method} {path}");
        assert_eq!(rsp.header("allow"), Some(allow), "{method} {path}");
    }
}

#[tokio::test]
async fn config_shows_the_file_in_force() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let rsp = http::get(proxy.admin(), "/config", &[]).await;
    assert_eq!(rsp.status, 200);
    let cfg = rsp.json();
    assert_eq!(cfg["sha256"], sha256_of(proxy.config_path()), "{cfg}");
    assert_eq!(
        cfg["path"].as_str(),
        Some(proxy.config_path().to_str().expect("utf-8 path")),
        "{cfg}"
    );
    assert!(!cfg["loaded_at"].is_null(), "loaded_at: {cfg}");
    assert_eq!(cfg["config"]["listeners"][0]["name"], "inbound", "{cfg}");
    assert_eq!(
        cfg["config"]["upstreams"]["app"]["endpoints"][0],
        app.addr().to_string()
    );
}

#[tokio::test]
async fn post_reload_succeeds_and_is_counted() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let admin = proxy.admin();
    let before = reloads(&metrics(admin).await, "success");

    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let body = rsp.json();
    assert_eq!(body["result"], "success", "{body}");
    assert_eq!(body["sha256"], sha256_of(proxy.config_path()), "{body}");

    let text = metrics(admin).await;
    assert_eq!(reloads(&text, "success"), before + 1.0, "{text}");
    assert_eq!(reloads(&text, "failure"), 0.0, "{text}");
    // Still serving after the swap.
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
}

/// An admin listener bound dual-stack (`[::]`) sees a client of 127.0.0.1 as
/// `::ffff:127.0.0.1`: a loopback peer still, whose `POST /reload` is allowed (SPEC §7).
#[tokio::test]
async fn post_reload_from_ipv4_loopback_to_a_dual_stack_admin_succeeds() {
    if let Err(e) = std::net::TcpListener::bind("[::]:0") {
        eprintln!("skipped: this test needs IPv6, and binding [::]:0 failed: {e}");
        return;
    }
    let app = sample().await;
    let template = one_route("").replace(
        "admin: { listen: $ADMIN }",
        "admin: { listen: \"[::]:$ADMIN_PORT\" }",
    );
    let proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .spawn()
        .await;
    let admin = proxy.admin();
    assert!(admin.is_ipv4() && admin.ip().is_loopback(), "{admin}");
    let cfg = http::get(admin, "/config", &[]).await.json();
    let listen = format!("[::]:{}", admin.port());
    assert_eq!(cfg["config"]["admin"]["listen"], listen, "{cfg}");

    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.json()["result"], "success");
}

/// A password in a URL of the policy (the OTLP endpoint, the Redis URL) is shown nowhere: not
/// on `/config`, not in the errors of a refused reload, not in the audit trail, not in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_urls_are_shown_nowhere() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let template = one_route(
        "audit: { file: $AUDIT }\ntracing: { otlp: { endpoint: \"http://user:otlppass@$DEAD\", flush_every: 50ms } }",
    );
    let mut proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .var("AUDIT", trail.display())
        .closed("DEAD")
        .spawn()
        .await;
    let admin = proxy.admin();

    let shown = http::get(admin, "/config", &[]).await.text();
    let endpoint = serde_json::from_str::<serde_json::Value>(&shown).expect("JSON")["config"]
        ["tracing"]["otlp"]["endpoint"]
        .clone();
    assert!(
        endpoint
            .as_str()
            .is_some_and(|e| e.starts_with("http://user:***@")),
        "{shown}"
    );
    assert!(!shown.contains("otlppass"), "{shown}");
    // A traced request whose spans cannot be sent: the export's warning names the endpoint.
    http::get(proxy.listener("inbound"), "/ok", &[]).await;
    assert_eventually!(
        proxy.log().contains("span export failed"),
        "the export must fail and say so: {}",
        proxy.log()
    );

    proxy.rewrite_config(&format!(
        "{template}global_store: {{ redis: {{ url: \"redis://user:redispass@127.0.0.1:notaport/0\" }} }}\n"
    ));
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(
        rsp.text().contains("redis://user:***@127.0.0.1:notaport/0"),
        "{}",
        rsp.text()
    );
    let trail = std::fs::read_to_string(&trail).expect("the trail must exist");
    assert!(trail.contains("redis://user:***@"), "{trail}");
    let log = proxy.log();
    for (what, text) in [("answer", rsp.text()), ("trail", trail), ("log", log)] {
        for secret in ["otlppass", "redispass"] {
            assert!(!text.contains(secret), "{secret} in the {what}: {text}");
        }
    }
}

#[tokio::test]
async fn post_reload_of_an_invalid_file_is_400_with_the_errors() {
    let app = sample().await;
    let mut proxy = proxy(app.addr()).await;
    let admin = proxy.admin();
    let old_sha = sha256_of(proxy.config_path());
    // `bogus` sits at line 3, column 1 of the rewritten file.
    proxy.rewrite_config(&one_route("").replace("version: 1\n", "version: 1\nbogus: 1\n"));

    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    let where_ = format!("{}:3:1: ", proxy.config_path().display());
    assert!(rsp.text().contains(&where_), "{where_} in {}", rsp.text());
    assert!(rsp.text().contains("bogus"), "{}", rsp.text());

    assert_eq!(
        config_sha(admin).await,
        old_sha,
        "the old config stays in force"
    );
    assert_eq!(reloads(&metrics(admin).await, "failure"), 1.0);
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn metrics_carry_the_contract_and_pass_promtool() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let admin = proxy.admin();
    for _ in 0..3 {
        assert_eq!(
            http::get(proxy.listener("inbound"), "/ok", &[])
                .await
                .status,
            200
        );
    }
    let labels = [
        ("listener", "inbound"),
        ("route", "app"),
        ("tenant", "anonymous"),
        ("code", "200"),
    ];
    assert_eventually!(
        metric_value(&metrics(admin).await, "rampart_requests_total", &labels) == Some(3.0),
        "three requests counted:\n{}",
        metrics(admin).await
    );
    let text = metrics(admin).await;
    let in_flight = metric_value(
        &text,
        "rampart_in_flight_requests",
        &[("listener", "inbound")],
    );
    assert_eq!(in_flight, Some(0.0), "{text}");
    let sha = sha256_of(proxy.config_path());
    let info = metric_value(&text, "rampart_config_info", &[("sha256", &sha)]);
    assert_eq!(info, Some(1.0), "{text}");
    assert!(
        text.contains("# TYPE rampart_config_reloads_total counter"),
        "{text}"
    );
    let durations = metric_value(
        &text,
        "rampart_request_duration_seconds_count",
        &[("listener", "inbound"), ("route", "app")],
    );
    assert_eq!(durations, Some(3.0), "{text}");

    promtool_check(&text);
}

/// SPEC §5 lists `rampart_ratelimit_backend_errors_total` whether or not a `global_store` is
/// configured: its one series (`backend="redis"`, the only backend) reads 0 from the start, so
/// `rate()` over it is 0, not "no data". `rampart_global_store_up` stays away: it would claim a
/// store that is not there.
#[tokio::test]
async fn backend_errors_read_0_without_a_global_store() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    for _ in 0..2 {
        let rsp = http::get(proxy.listener("inbound"), "/ok", &[]).await;
        assert_eq!(rsp.status, 200);
    }
    let text = metrics(proxy.admin()).await;
    let errors = metric_value(
        &text,
        "rampart_ratelimit_backend_errors_total",
        &[("backend", "redis")],
    );
    assert_eq!(errors, Some(0.0), "{text}");
    assert!(
        !text.contains("rampart_global_store_up"),
        "no store, no up gauge:\n{text}"
    );
}

/// The trace span counters are there at 0 without `tracing`, the dropped ones as the exported
/// one: an alert on `rate(rampart_trace_spans_dropped_total[5m])` reads 0, not "no data",
/// until tracing is turned on.
#[tokio::test]
async fn trace_span_counters_read_0_without_tracing() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let text = metrics(proxy.admin()).await;
    let policy = std::fs::read_to_string(proxy.config_path()).expect("the policy file");
    assert!(!policy.contains("tracing"), "{policy}");
    assert_eq!(
        metric_value(&text, "rampart_trace_spans_exported_total", &[]),
        Some(0.0),
        "{text}"
    );
    for reason in ["queue_full", "export_failed"] {
        assert_eq!(
            metric_value(
                &text,
                "rampart_trace_spans_dropped_total",
                &[("reason", reason)]
            ),
            Some(0.0),
            "reason={reason}: {text}"
        );
    }
}

/// Runs `promtool check metrics` on `text`. Not having promtool is a failure, not a skip:
/// the exposition format is part of the contract.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!(
            "promtool is needed to check /metrics ({e}); install the Debian package \
             `prometheus` (apt-get install prometheus) so that `promtool` is on PATH"
        )
    });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("promtool must read the metrics");
    let out = child.wait_with_output().expect("promtool must finish");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The admin listener serves 64 connections at once; silent ones (no first request yet) are
/// shed after at most a second, so 64 sockets held open and silent cannot make `rampart health`
/// (2 s budget) time out for longer than that. A keep-alive connection between requests is kept
/// longer (`ADMIN_IDLE_TIMEOUT`, 10 s): see the next test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_probe_passes_while_64_idle_admin_connections_are_held() {
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let admin = proxy.admin();
    // One idle keep-alive connection: a request answered, then nothing; and silent ones up to
    // the cap.
    let client = http::client();
    let rsp = http::send(
        &client,
        admin,
        hyper::Method::GET,
        "/healthz",
        &[],
        http::empty(),
    )
    .await
    .expect("answered");
    assert_eq!(rsp.status, 200);
    let mut held = Vec::new();
    for _ in 1..rampart::admin::ADMIN_MAX_CONNECTIONS {
        held.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(rampart::admin::ADMIN_HEAD_TIMEOUT + std::time::Duration::from_millis(500))
        .await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(crate::support::proxy::bin())
            .args(["health", "--admin", &admin.to_string(), "--timeout", "2s"])
            .env_remove("RAMPART_CONFIG")
            .output()
            .expect("the rampart binary must run")
    })
    .await
    .expect("join");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    drop(held);
}

/// When all 64 admin places are held by kept-alive connections (each answered once, now idle),
/// a new connection closes the longest-idle one and is answered at once, instead of waiting in
/// the accept queue for an idle timeout (10 s: before, a probe waited that long). The others
/// stay open and are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_admin_connection_takes_the_place_of_the_longest_idle_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let admin = proxy.admin();
    let ask = b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n";
    async fn answered(conn: &mut TcpStream, ask: &[u8], what: &str) {
        conn.write_all(ask).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer in time"))
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text:?}");
    }
    let mut held = Vec::new();
    for i in 0..rampart::admin::ADMIN_MAX_CONNECTIONS {
        let mut conn = TcpStream::connect(admin).await.expect("connect");
        answered(&mut conn, ask, &format!("held connection {i}")).await;
        held.push(conn);
        if i == 0 {
            // The first is the longest idle by a clear margin (the idle stamps are coarse).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let started = tokio::time::Instant::now();
    let mut newcomer = TcpStream::connect(admin).await.expect("connect");
    answered(&mut newcomer, ask, "the newcomer").await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "answered without waiting for an idle timeout: {took:?}"
    );
    // The longest-idle connection was closed to make room.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(3), held[0].read(&mut buf))
        .await
        .expect("the longest-idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a further answer");
    // The others are still open and served.
    for (i, conn) in held.iter_mut().enumerate().skip(1).take(3) {
        answered(conn, ask, &format!("kept connection {i}")).await;
    }
}

/// A kept-alive admin connection outlives the 1 s given to a first request: a scraper that
/// comes back 1.5 s later reuses it and is answered (before, it was closed at 1 s, and a client
/// that does not retry a reused connection, as Python's `http.client`, saw a failed scrape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_admin_connection_is_reused_after_more_than_a_second() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = sample().await;
    let proxy = proxy(app.addr()).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.admin())
        .await
        .expect("connect");
    let ask = b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n";
    for round in 0..2 {
        conn.write_all(ask).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text:?}");
        tokio::time::sleep(
            rampart::admin::ADMIN_HEAD_TIMEOUT + std::time::Duration::from_millis(500),
        )
        .await;
    }
}
