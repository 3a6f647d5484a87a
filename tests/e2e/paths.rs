//! The request path is normalised before routing (`src/proxy/normalize.rs`): `..`, `//`,
//! `/./` and escapes of unreserved characters cannot take a request past its route's policy,
//! and the upstream is sent the path the route was chosen by. Over HTTP/1.1 (raw bytes, so the
//! path goes as written; lean and hyper-served) and HTTP/2. Runs of `/` are merged on the
//! inbound listener (its default) and kept on the outbound one (`merge_slashes` off).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::capture::Capture;
use crate::support::{http, raw, wait_log_lines, Proxy};

/// The README's example: `/healthz` needs no tenant, every other path one (401 without), and
/// `/admin` goes to an upstream of its own.
const POLICY: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from: [ { header: x-tenant-id } ]
  fallback: reject
upstreams:
  app: { endpoints: [$APP] }
  adm: { endpoints: [$ADM] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { match: { path_prefix: /healthz }, upstream: app, tenant: optional }
      - { match: { path_prefix: /admin }, upstream: adm, tenant: optional }
      - { match: { path_prefix: "/caf%C3%A9" }, upstream: adm, tenant: optional }
      - { match: { path_prefix: "/q%22%7B" }, upstream: adm, tenant: optional }
      - { upstream: app }
  - name: egress
    direction: outbound
    listen: $LISTEN_egress
    routes:
      - { match: { path_prefix: "/bucket/a//b" }, upstream: adm, tenant: optional }
      - { upstream: app, tenant: optional }
"#;

const APP_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\napp";
const ADM_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nadm";

const WAIT: Duration = Duration::from_secs(4);

struct Setup {
    app: Capture,
    adm: Capture,
    proxy: Proxy,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let app = Capture::start(APP_OK).await;
    let adm = Capture::start(ADM_OK).await;
    let proxy = Proxy::builder(POLICY)
        .var("APP", app.addr())
        .var("ADM", adm.addr())
        .var("LOG", log.display())
        .spawn()
        .await;
    Setup {
        app,
        adm,
        proxy,
        log,
        _dir: dir,
    }
}

/// The request line `target` goes out as, raw; `extra` are more head lines.
async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> raw::RawResp {
    let req = format!("GET {target} HTTP/1.1\r\nhost: svc\r\n{extra}connection: close\r\n\r\n");
    raw::exchange(addr, req.as_bytes(), WAIT).await
}

/// The request line of the last request `up` received.
fn last_line(up: &Capture) -> String {
    let reqs = up.requests();
    let last = reqs.last().cloned().unwrap_or_default();
    last.lines().next().unwrap_or_default().to_owned()
}

/// Forms that reach `/orders` (tenant required) through `/healthz` (tenant optional).
const TO_ORDERS: [&str; 4] = [
    "/healthz/../orders",
    "/healthz/%2e%2e/orders",
    "/healthz/%2E./orders",
    "/healthz/./..//orders",
];

/// Forms of `/admin/x`, which must reach the `/admin` route's upstream.
const TO_ADMIN: [&str; 5] = [
    "/x/../admin/x",
    "//admin/x",
    "/%61dmin/x",
    "/./admin/x",
    "/admin/./y/%2E%2E//x",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_paths_are_routed_and_forwarded_in_their_normal_form() {
    let s = setup().await;
    let addr = s.proxy.listener("inbound");
    for target in TO_ORDERS {
        let rsp = raw_get(addr, target, "").await;
        assert_eq!(rsp.status(), Some(401), "{target}: {}", rsp.text());
        assert_eq!(
            rsp.header("x-rampart-reason").as_deref(),
            Some("tenant_required")
        );
        let rsp = raw_get(addr, target, "x-tenant-id: acme\r\n").await;
        assert_eq!(rsp.status(), Some(200), "{target}: {}", rsp.text());
        assert_eq!(last_line(&s.app), "GET /orders HTTP/1.1", "{target}");
    }
    assert_eq!(s.adm.hits(), 0);
    for target in TO_ADMIN {
        let rsp = raw_get(addr, target, "").await;
        assert_eq!(rsp.status(), Some(200), "{target}: {}", rsp.text());
        assert!(rsp.text().ends_with("adm"), "{target}: {}", rsp.text());
        assert_eq!(last_line(&s.adm), "GET /admin/x HTTP/1.1", "{target}");
    }
    // A chunked body hands the connection to hyper's server: the same path there.
    let req = b"POST /x/../admin/x HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\na\r\n0\r\n\r\n";
    let rsp = raw::exchange(addr, req, WAIT).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(last_line(&s.adm), "POST /admin/x HTTP/1.1");
    // `%2F` and other reserved escapes stay escaped (in upper case); the query is left as it
    // is; a path in the form goes as it came.
    for (target, sent) in [
        (
            "/admin/a%2fb/%2E%2E?q=/../%2e",
            "GET /admin/?q=/../%2e HTTP/1.1",
        ),
        (
            "/admin/a%2fb?q=/../%2e",
            "GET /admin/a%2Fb?q=/../%2e HTTP/1.1",
        ),
        ("/admin/a%2F..%2Fb", "GET /admin/a%2F..%2Fb HTTP/1.1"),
        (
            "/admin/.well-known/x?y=1",
            "GET /admin/.well-known/x?y=1 HTTP/1.1",
        ),
        ("http://svc/admin//x?z", "GET /admin/x?z HTTP/1.1"),
    ] {
        let rsp = raw_get(addr, target, "").await;
        assert_eq!(rsp.status(), Some(200), "{target}: {}", rsp.text());
        assert_eq!(last_line(&s.adm), sent, "{target}");
    }
    // Above the root, or a broken escape: 400, and nothing forwarded.
    let (app_hits, adm_hits) = (s.app.hits(), s.adm.hits());
    for target in [
        "/../admin/x",
        "/healthz/../../orders",
        "/admin/%2e%2e/..",
        "/admin/100%",
    ] {
        let rsp = raw_get(addr, target, "x-tenant-id: acme\r\n").await;
        assert_eq!(rsp.status(), Some(400), "{target}: {}", rsp.text());
        assert_eq!(
            rsp.header("x-rampart-reason").as_deref(),
            Some("bad_request")
        );
    }
    assert_eq!((s.app.hits(), s.adm.hits()), (app_hits, adm_hits));
    // The access log records the path that was routed (and a refused one as it came).
    let lines = wait_log_lines(&s.log, 2 * TO_ORDERS.len() + TO_ADMIN.len() + 10).await;
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    assert!(paths.contains(&"/admin/x"), "{paths:?}");
    assert!(paths.contains(&"/orders"), "{paths:?}");
    assert!(paths.contains(&"/../admin/x"), "{paths:?}");
    for form in TO_ORDERS.iter().chain(&TO_ADMIN) {
        assert!(!paths.contains(form), "{form} logged as sent: {paths:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_paths_are_routed_and_forwarded_in_their_normal_form() {
    let s = setup().await;
    let addr = s.proxy.listener("inbound");
    for path in TO_ORDERS {
        let rsp = http::h2_get(addr, path, &[]).await;
        rsp.assert_rampart(401, "tenant_required");
        let rsp = http::h2_get(addr, path, &[("x-tenant-id", "acme")]).await;
        assert_eq!(rsp.status, 200, "{path}");
        assert_eq!(last_line(&s.app), "GET /orders HTTP/1.1", "{path}");
    }
    for path in TO_ADMIN {
        let rsp = http::h2_get(addr, path, &[]).await;
        assert_eq!(rsp.status, 200, "{path}");
        assert_eq!(rsp.text(), "adm", "{path}");
        assert_eq!(last_line(&s.adm), "GET /admin/x HTTP/1.1", "{path}");
    }
    let rsp = http::h2_get(addr, "/admin/a%2fb?q=/../%2e", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(last_line(&s.adm), "GET /admin/a%2Fb?q=/../%2e HTTP/1.1");
    let hits = s.adm.hits();
    http::h2_get(addr, "/../admin/x", &[])
        .await
        .assert_rampart(400, "bad_request");
    assert_eq!(s.adm.hits(), hits);
}

/// An outbound listener (`merge_slashes` off by default) keeps `//`, an S3 key's or a URL's
/// inside a path, both to match on and to send; it still removes dot segments. The inbound
/// one merges them as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_listeners_keep_double_slashes_inbound_ones_merge_them() {
    let s = setup().await;
    let egress = s.proxy.listener("egress");
    for (target, up, sent) in [
        ("/bucket/a//b", &s.adm, "GET /bucket/a//b HTTP/1.1"),
        (
            "/bucket/a//b/k?x-id=1",
            &s.adm,
            "GET /bucket/a//b/k?x-id=1 HTTP/1.1",
        ),
        ("/bucket/a/./%2e//b", &s.adm, "GET /bucket/a//b HTTP/1.1"),
        ("/bucket/a/%2e%2E//b", &s.app, "GET /bucket//b HTTP/1.1"),
        ("/bucket/a//x/../b", &s.adm, "GET /bucket/a//b HTTP/1.1"),
        ("/bucket/a/b", &s.app, "GET /bucket/a/b HTTP/1.1"),
        (
            "/proxy/http://example.com/a",
            &s.app,
            "GET /proxy/http://example.com/a HTTP/1.1",
        ),
    ] {
        let rsp = raw_get(egress, target, "").await;
        assert_eq!(rsp.status(), Some(200), "{target}: {}", rsp.text());
        assert_eq!(last_line(up), sent, "{target}");
    }
    let rsp = http::h2_get(egress, "/bucket/a//b", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "adm");
    assert_eq!(last_line(&s.adm), "GET /bucket/a//b HTTP/1.1");
    assert_eq!(raw_get(egress, "/../x", "").await.status(), Some(400));
    // Inbound: merged, so `//admin` is the `/admin` route's.
    let inbound = s.proxy.listener("inbound");
    let rsp = raw_get(inbound, "/bucket/a//b", "x-tenant-id: acme\r\n").await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(last_line(&s.app), "GET /bucket/a/b HTTP/1.1");
}

/// RFC 9112 §3.2.1: an absolute-form target with an empty path goes to the upstream with `/`,
/// its query kept (it went as `GET ?a=b`, while routed and logged as `/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_path_before_a_query_is_sent_as_the_root() {
    let s = setup().await;
    for (listener, extra) in [("inbound", "x-tenant-id: acme\r\n"), ("egress", "")] {
        let addr = s.proxy.listener(listener);
        let rsp = raw_get(addr, "http://svc?a=b", extra).await;
        assert_eq!(rsp.status(), Some(200), "{listener}: {}", rsp.text());
        assert_eq!(last_line(&s.app), "GET /?a=b HTTP/1.1", "{listener}");
    }
}

/// A byte a path may not hold raw is escaped before routing: raw UTF-8 over HTTP/2 (`/café`)
/// and `"`, `{`, `|`, `^`, `}`, `[`, `\`, `]` over either protocol take the route of their escaped
/// spelling, and that spelling is what the upstream is sent and the log records (raw UTF-8
/// used to reach the catch-all, and an HTTP/1.1 upstream in its request line, raw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_escaped_spellings_of_a_path_take_one_route() {
    let s = setup().await;
    let addr = s.proxy.listener("inbound");
    for path in ["/caf\u{e9}/x", "/caf%c3%a9/x", "/caf%C3%A9/x"] {
        let rsp = http::h2_get(addr, path, &[]).await;
        assert_eq!(rsp.status, 200, "{path}");
        assert_eq!(rsp.text(), "adm", "{path}");
        assert_eq!(last_line(&s.adm), "GET /caf%C3%A9/x HTTP/1.1", "{path}");
    }
    for path in ["/q\"{|^}[\\]", "/q%22%7b|^}[%5c]"] {
        let want = "GET /q%22%7B%7C%5E%7D%5B%5C%5D HTTP/1.1";
        let rsp = http::h2_get(addr, path, &[]).await;
        assert_eq!(rsp.status, 200, "h2 {path}");
        assert_eq!(rsp.text(), "adm", "h2 {path}");
        assert_eq!(last_line(&s.adm), want, "h2 {path}");
        let rsp = raw_get(addr, path, "").await;
        assert_eq!(rsp.status(), Some(200), "h1 {path}: {}", rsp.text());
        assert!(rsp.text().ends_with("adm"), "h1 {path}: {}", rsp.text());
        assert_eq!(last_line(&s.adm), want, "h1 {path}");
    }
    // Raw UTF-8 over HTTP/1.1 as well; what the `http` crate takes in no path is refused.
    let rsp = raw_get(addr, "/caf\u{e9}/x", "").await;
    assert_eq!(rsp.status(), Some(200), "h1 UTF-8: {}", rsp.text());
    assert_eq!(last_line(&s.adm), "GET /caf%C3%A9/x HTTP/1.1");
    for path in ["/q<", "/q`"] {
        assert_eq!(raw_get(addr, path, "").await.status(), Some(400), "{path}");
    }
    // The query is left as it is.
    let rsp = http::h2_get(addr, "/caf\u{e9}?q=\u{e9}", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(last_line(&s.adm), "GET /caf%C3%A9?q=\u{e9} HTTP/1.1");
    let lines = wait_log_lines(&s.log, 8).await;
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    assert!(paths.contains(&"/caf%C3%A9/x"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains('\u{e9}')), "{paths:?}");
}

/// RFC 9112 §3.2.4: an OPTIONS of an absolute URI with an empty path (and no query) asks about
/// the server, and the last proxy sends it as `OPTIONS *`; before, it went as `OPTIONS /`.
/// `http://svc/` names `/` and stays so; a query keeps its `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_options_of_an_empty_path_is_sent_as_the_asterisk() {
    let s = setup().await;
    for (listener, extra) in [("inbound", "x-tenant-id: acme\r\n"), ("egress", "")] {
        let addr = s.proxy.listener(listener);
        for (target, sent) in [
            ("http://svc", "OPTIONS * HTTP/1.1"),
            ("http://svc/", "OPTIONS / HTTP/1.1"),
            ("http://svc?a=b", "OPTIONS /?a=b HTTP/1.1"),
        ] {
            let req = format!(
                "OPTIONS {target} HTTP/1.1\r\nhost: svc\r\n{extra}connection: close\r\n\r\n"
            );
            let rsp = raw::exchange(addr, req.as_bytes(), WAIT).await;
            assert_eq!(
                rsp.status(),
                Some(200),
                "{listener} {target}: {}",
                rsp.text()
            );
            assert_eq!(last_line(&s.app), sent, "{listener} {target}");
        }
    }
}
