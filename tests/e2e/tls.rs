//! TLS on listeners (SPEC §8): HTTP/1.1 and h2 by ALPN, no plaintext on a TLS port, mTLS,
//! tenants from the client certificate, certificate rotation on reload and a refused bad key.
//! TLS to upstreams is in `tls/upstream.rs`, upstreams that refuse it in `tls/refused.rs`.

mod downgrade;
mod park;
mod refused;
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::conn::Conn;
use crate::support::metrics::reloads;
use crate::support::tls::{self, Ca, H1Conn, Pki};
use crate::support::{http, metric_value, metrics, raw, sample, Proxy};

/// One inbound TLS listener in front of `$APP`; `$TLS` is the body of its `tls` map and
/// `$SECTIONS` adds top-level sections.
const TLS_INBOUND: &str = r#"
version: 1
admin: { listen: $ADMIN }
$SECTIONS
upstreams:
  app: { endpoints: [$APP] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    tls: { $TLS }
    routes:
      - upstream: app
        $POLICY
"#;

/// A proxy with a TLS inbound listener serving `cert`/`key` (and `client_ca` when given).
async fn tls_proxy(app: SocketAddr, pki: &Pki, client_ca: bool, sections: &str) -> Proxy {
    let mut tls = format!(
        "cert: {}, key: {}",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display()
    );
    if client_ca {
        tls.push_str(&format!(", client_ca: {}", pki.path("ca.pem").display()));
    }
    // A route names a policy only when `sections` defines one.
    let policy = if sections.contains("policies:") {
        "policy: limited"
    } else {
        ""
    };
    Proxy::builder(TLS_INBOUND)
        .var("SECTIONS", sections)
        .var("TLS", tls)
        .var("POLICY", policy)
        .var("APP", app)
        .spawn()
        .await
}

/// A CA, its certificate as `ca.pem`, and a server leaf (serial 1) as `server.pem`.
fn pki() -> (Ca, Pki) {
    let (ca, pki) = (Ca::new("rampart test ca"), Pki::new());
    pki.ca("ca", &ca);
    pki.pair("server", &ca.server(1));
    (ca, pki)
}

fn handshake_failures(text: &str, reason: &str) -> f64 {
    let labels = [("listener", "inbound"), ("reason", reason)];
    metric_value(text, "rampart_tls_handshake_failures_total", &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn h1_and_h2_over_tls_reach_the_upstream_as_https() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let addr = proxy.listener("inbound");

    let h1 = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let rsp = tls::get(addr, h1, "/headers", &[])
        .await
        .expect("h1 over TLS");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let seen = rsp.json();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");

    let h2 = tls::client_config(&ca.pem, None, &[b"h2", b"http/1.1"]);
    let conn = tls::connect(addr, h2).await.expect("TLS handshake");
    assert_eq!(
        tls::alpn(&conn).as_deref(),
        Some(&b"h2"[..]),
        "ALPN picks h2"
    );
    let rsp = tls::h2_get(conn, "/headers").await.expect("h2 over TLS");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.version, ::http::Version::HTTP_2);
    let seen = rsp.json();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(app.hits_for("/headers"), 2);
}

/// Over TLS, HTTP/2 is agreed by ALPN `h2` (RFC 9113 §3.2), never by prior knowledge: a
/// client that agreed on `http/1.1`, or on nothing, and sends the HTTP/2 preface, first or
/// after a request, is answered 400 `bad_request` and its connection closed. Before, it was
/// served as HTTP/2.
#[tokio::test]
async fn an_h2_preface_over_tls_without_alpn_h2_is_refused() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let addr = proxy.listener("inbound");
    let offers: [&[&[u8]]; 2] = [&[&b"http/1.1"[..]], &[]];
    for alpn in offers {
        for after_a_request in [false, true] {
            let case = format!("ALPN {alpn:?}, after a request: {after_a_request}");
            let cfg = tls::client_config(&ca.pem, None, alpn);
            let stream = tls::connect(addr, cfg).await.expect("TLS handshake");
            let agreed = alpn.first().map(|p| p.to_vec());
            assert_eq!(tls::alpn(&stream), agreed, "{case}");
            let mut c = Conn::over(stream);
            if after_a_request {
                c.send(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
                assert_eq!(c.answer(false).await.status, 200, "{case}");
            }
            c.send(crate::lean::H2_HELLO).await;
            let refused = c.answer(false).await;
            assert_eq!(refused.status, 400, "{case}: {refused:?}");
            assert!(
                refused.text().contains("ALPN h2"),
                "{case}: {}",
                refused.text()
            );
            assert!(c.closes().await, "{case}");
        }
    }
    assert_eq!(app.hits_for("/ok"), 2);
}

/// Over TLS too, an h2 connection (ALPN `h2`) whose client sent its preface and no request
/// is closed at the idle timeout (3 s), not the head timeout (1 s).
#[tokio::test]
async fn an_h2_connection_over_tls_with_no_stream_is_closed_at_the_idle_timeout() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = sample().await;
    let (ca, pki) = pki();
    let rt = "runtime: { header_read_timeout: 1s, idle_timeout: 3s }";
    let proxy = tls_proxy(app.addr(), &pki, false, rt).await;
    let h2 = tls::client_config(&ca.pem, None, &[b"h2"]);
    let started = tokio::time::Instant::now();
    let conn = tls::connect(proxy.listener("inbound"), h2)
        .await
        .expect("TLS handshake");
    assert_eq!(tls::alpn(&conn).as_deref(), Some(&b"h2"[..]));
    let (_send, conn) = hyper::client::conn::http2::handshake::<_, _, http::ReqBody>(
        TokioExecutor::new(),
        TokioIo::new(conn),
    )
    .await
    .expect("h2 handshake");
    crate::edges::idle::h2_closed_at_the_idle_timeout(conn, started).await;
}

/// A `connection: close` request over TLS ends with the session's `close_notify` after the
/// answer: a plain socket is closed without a shutdown, a TLS stream never is (a client reading
/// to the end would take a bare FIN for a truncation attack, `UnexpectedEof`).
#[tokio::test]
async fn a_close_request_over_tls_ends_with_close_notify() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let stream = tls::connect(proxy.listener("inbound"), cfg)
        .await
        .expect("a TLS connection");
    let mut c = Conn::over(stream);
    c.send(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let (got, end) = c.read_to_end().await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        end.is_ok(),
        "the session must end with close_notify after the answer, got {end:?} after {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nok\n"), "{text}");
    assert_eq!(app.hits_for("/ok"), 1);
}

/// Plain HTTP sent to a TLS port is answered as nginx answers it: a plaintext 400 saying so,
/// `connection: close`, the connection closed; nothing reaches the upstream, and it counts as
/// a `protocol` handshake failure. Before, the client got a TLS alert it read as HTTP/0.9.
#[tokio::test]
async fn plaintext_on_a_tls_port_gets_a_plaintext_400() {
    let app = sample().await;
    let (_ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let req = b"GET /ok HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let got = raw::exchange(proxy.listener("inbound"), req, Duration::from_secs(3)).await;
    assert!(got.closed, "the connection must be closed");
    assert_eq!(got.status(), Some(400), "{:?}", got.text());
    assert_eq!(got.header("connection").as_deref(), Some("close"));
    assert!(
        got.text()
            .contains("plain HTTP request was sent to a TLS port"),
        "{:?}",
        got.text()
    );
    assert_eq!(app.hits(), 0, "nothing reaches the upstream");
    let admin = proxy.admin();
    assert_eventually!(
        handshake_failures(&metrics(admin).await, "protocol") == 1.0,
        "a protocol failure counted:\n{}",
        metrics(admin).await
    );
}

/// A TCP connection closed before any byte (a load balancer's or kubelet's `tcpSocket`
/// probe) is no failed handshake: `rampart_tls_handshake_failures_total` stays 0 for every
/// reason. Before, each counted as `reason="io"`.
#[tokio::test]
async fn a_tcp_probe_on_a_tls_port_is_not_a_handshake_failure() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let addr = proxy.listener("inbound");
    for _ in 0..3 {
        drop(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // A handshake after them, served: the probes were looked at by then.
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let rsp = tls::get(addr, cfg, "/ok", &[]).await.expect("served");
    assert_eq!(rsp.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = metrics(proxy.admin()).await;
    for reason in ["io", "protocol", "timeout"] {
        assert_eq!(handshake_failures(&text, reason), 0.0, "{reason}:\n{text}");
    }
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_the_head_timeout() {
    let app = sample().await;
    let (_ca, pki) = pki();
    let runtime = "runtime: { header_read_timeout: 300ms }";
    let proxy = tls_proxy(app.addr(), &pki, false, runtime).await;
    // A client that connects and never sends its ClientHello.
    let got = raw::exchange(proxy.listener("inbound"), b"", Duration::from_secs(5)).await;
    assert!(got.closed, "the silent connection must be closed");
    assert!(got.elapsed < Duration::from_secs(3), "{:?}", got.elapsed);
    let admin = proxy.admin();
    assert_eventually!(
        handshake_failures(&metrics(admin).await, "timeout") == 1.0,
        "a handshake timeout counted:\n{}",
        metrics(admin).await
    );
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, true, "").await;
    let addr = proxy.listener("inbound");

    let anonymous = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let refused = tls::get(addr, anonymous, "/ok", &[]).await;
    assert!(refused.is_err(), "no certificate, no answer: {refused:?}");
    let admin = proxy.admin();
    assert_eventually!(
        handshake_failures(&metrics(admin).await, "no_client_cert") == 1.0,
        "no_client_cert counted:\n{}",
        metrics(admin).await
    );

    let stranger = Ca::new("another ca").client("mallory", None);
    let cfg = tls::client_config(&ca.pem, Some(&stranger), &[b"http/1.1"]);
    assert!(tls::get(addr, cfg, "/ok", &[]).await.is_err());
    assert_eventually!(
        handshake_failures(&metrics(admin).await, "bad_client_cert") == 1.0,
        "bad_client_cert counted"
    );

    let alice = ca.client("alice", None);
    let cfg = tls::client_config(&ca.pem, Some(&alice), &[b"http/1.1"]);
    let rsp = tls::get(addr, cfg, "/ok", &[]).await.expect("mTLS");
    assert_eq!(rsp.status, 200);
    assert_eq!(app.hits(), 1, "only the verified client got through");
}

/// Tenants from the client certificate `field`, one request per tenant admitted at once.
fn by_cert(field: &str) -> String {
    format!(
        "tenants:\n  from: [ {{ client_cert: {field} }} ]\n  fallback: anonymous\n\
         policies:\n  limited:\n    rate_limit:\n      per_tenant: {{ rate: 1/h, burst: 1 }}"
    )
}

fn rate_limited(text: &str, tenant: &str) -> f64 {
    let labels = [("listener", "inbound"), ("tenant", tenant)];
    metric_value(text, "rampart_rate_limited_total", &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn tenant_from_the_client_certificate_uri_san_and_cn() {
    const SPIFFE: &str = "spiffe://example.org/ns/prod/sa/billing";
    // A CN of words (a space inside) is an id as it is, as the README says of any printable
    // ASCII.
    for (field, tenant) in [
        ("uri_san", SPIFFE),
        ("cn", "billing"),
        ("cn", "Billing Service"),
    ] {
        let app = sample().await;
        let (ca, pki) = pki();
        let proxy = tls_proxy(app.addr(), &pki, true, &by_cert(field)).await;
        let addr = proxy.listener("inbound");
        let cn = if field == "cn" { tenant } else { "billing" };
        let id = ca.client(cn, Some(SPIFFE));
        let cfg = tls::client_config(&ca.pem, Some(&id), &[b"http/1.1"]);
        let first = tls::get(addr, cfg.clone(), "/ok", &[])
            .await
            .expect("first");
        assert_eq!(first.status, 200, "{field}: {}", first.text());
        // A header cannot change who the certificate says the client is.
        let second = tls::get(addr, cfg, "/ok", &[("x-tenant-id", "other")]).await;
        second.expect("second").assert_rampart(429, "rate_limited");
        let other = ca.client("someone-else", Some("spiffe://example.org/other"));
        let cfg = tls::client_config(&ca.pem, Some(&other), &[b"http/1.1"]);
        let rsp = tls::get(addr, cfg, "/ok", &[]).await.expect("other tenant");
        assert_eq!(
            rsp.status, 200,
            "{field}: another certificate, another bucket"
        );
        let admin = proxy.admin();
        assert_eventually!(
            rate_limited(&metrics(admin).await, tenant) == 1.0,
            "{field}: rampart_rate_limited_total{{tenant={tenant:?}}} == 1:\n{}",
            metrics(admin).await
        );
    }
}

/// A start serves the certificate and key its validation read: each file is read once per
/// load, so files rotated between validation and start (here a new certificate with its key
/// half written) cannot make it serve something that was not validated, or refuse to start.
/// In process, to rotate the files between `Config::load` and `Rampart::start`.
#[tokio::test]
async fn a_start_serves_the_tls_files_its_validation_read() {
    let app = sample().await;
    let (ca, pki) = pki();
    let tls = format!(
        "cert: {}, key: {}",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display()
    );
    let rendered = Proxy::builder(TLS_INBOUND)
        .var("SECTIONS", "")
        .var("TLS", tls)
        .var("POLICY", "")
        .var("APP", app.addr())
        .render();
    let config = rampart::config::Config::load(&rendered.path).expect("the policy validates");
    let next = ca.server(2);
    pki.pair("server", &next);
    std::fs::write(pki.path("server-key.pem"), &next.key[..40]).expect("a half-written key");

    let r = rampart::Rampart::start(config)
        .await
        .expect("the start serves what validated");
    let addr = r
        .listener_addr("inbound")
        .await
        .expect("the listener is bound");
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let stream = tls::connect(addr, cfg).await.expect("a handshake");
    assert_eq!(tls::peer_serial(&stream), 1, "the certificate validated");
    let mut c = Conn::over(stream);
    c.send(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(c.answer(false).await.status, 200);
}

#[tokio::test]
async fn rotation_on_reload_serves_the_new_cert_and_keeps_open_connections() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let mut old = H1Conn::open(addr, cfg.clone()).await.expect("connect");
    assert_eq!(old.serial, 1);
    assert_eq!(old.get("/ok", &[]).await.expect("old conn").status, 200);

    pki.pair("server", &ca.server(2));
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    let new = H1Conn::open(addr, cfg).await.expect("connect after reload");
    assert_eq!(new.serial, 2, "a new handshake sees the new certificate");
    let rsp = old
        .get("/ok", &[])
        .await
        .expect("the old keep-alive connection");
    assert_eq!(rsp.status, 200);
}

/// `--watch` takes a replaced certificate as it takes a changed policy file (cert-manager
/// rotates a Secret's files with nothing to tell rampart); before, only the policy file was
/// looked at, and the old certificate was served until a SIGHUP.
#[tokio::test]
async fn watch_serves_a_rotated_certificate_without_a_signal() {
    let app = sample().await;
    let (ca, pki) = pki();
    let tls = format!(
        "cert: {}, key: {}",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display()
    );
    let proxy = Proxy::builder(TLS_INBOUND)
        .var("SECTIONS", "")
        .var("TLS", tls)
        .var("POLICY", "")
        .var("APP", app.addr())
        .arg("--watch")
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let first = H1Conn::open(addr, cfg.clone()).await.expect("connect");
    assert_eq!(first.serial, 1);
    pki.pair("server", &ca.server(2));
    assert_eventually!(
        H1Conn::open(addr, cfg.clone())
            .await
            .is_ok_and(|c| c.serial == 2),
        "--watch must serve the rotated certificate"
    );
}

/// SPEC §8: a listener that has `tls` never serves plaintext, even to a connection accepted
/// before a reload gave it `tls`: an idle one is closed at the reload (HTTP/2 sent GOAWAY),
/// a request that comes on one after it is refused (400, the connection closed) and never
/// reaches the upstream, while new connections take TLS. Before, such keep-alive connections
/// went on being served in plaintext after the reload.
#[tokio::test]
async fn a_reload_that_adds_tls_serves_no_more_plaintext_on_open_connections() {
    let app = sample().await;
    let (ca, pki) = pki();
    // Logged as every answer is: the refusal's line is looked for below.
    let logged = TLS_INBOUND.replace("    routes:", "    access_log: true\n    routes:");
    let plain = logged.replace("    tls: { $TLS }\n", "");
    let mut proxy = Proxy::builder(&plain)
        .var("SECTIONS", "")
        .var("POLICY", "")
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let mut h1 = Conn::open(addr).await;
    h1.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(h1.answer(false).await.status, 200);
    let mut h2 = http::h2c(addr).await;
    let get = |path: &str| {
        ::http::Request::builder()
            .uri(format!("http://{addr}{path}"))
            .body(http::empty())
            .expect("request")
    };
    let rsp = h2.send_request(get("/ok")).await.expect("h2c before");
    assert_eq!(rsp.status(), 200);
    assert_eq!(app.hits_for("/ok"), 2);

    let tls_keys = format!(
        "cert: {}, key: {}",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display()
    );
    proxy.rewrite_config(
        &logged
            .replace("$SECTIONS", "")
            .replace("$POLICY", "")
            .replace("$TLS", &tls_keys),
    );
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    // Idle plaintext connections are closed at the reload (HTTP/2 with GOAWAY).
    assert!(h1.closes().await, "the idle plaintext connection ends");
    // The client reads the GOAWAY on its connection's own task: give it the time to (a send
    // made before it has would race it).
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !h2.is_closed() && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        h2.send_request(get("/status/201")).await.is_err(),
        "the h2c connection was sent GOAWAY"
    );
    assert_eq!(
        app.hits_for("/status/201"),
        0,
        "nothing served in plaintext"
    );

    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let rsp = tls::get(addr, cfg, "/status/201", &[])
        .await
        .expect("over TLS");
    assert_eq!(rsp.status, 201, "{}", rsp.text());
    assert_eq!(app.hits_for("/status/201"), 1);
}

/// The `tls` map of [`tls_proxy`]'s listener, trusting client certificates of `client_ca`.
fn tls_with_ca(pki: &Pki, client_ca: &str) -> String {
    format!(
        "cert: {}, key: {}, client_ca: {}",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display(),
        pki.path(client_ca).display()
    )
}

/// A reload that turns mutual TLS on serves no more connections made without a certificate:
/// an idle one is closed at the reload, an HTTP/2 one with a request in flight gets its answer
/// and then ends (GOAWAY); one verified under a CA a later reload swaps is closed too, while a
/// reload that keeps the CA keeps it. (A request that still comes on such a connection is
/// answered 421: `hostile/h2.rs`.) Before, they kept getting 200s for as long as they lasted.
#[tokio::test]
async fn a_reload_that_turns_on_mtls_closes_connections_made_without_a_certificate() {
    let app = sample().await;
    let (ca, pki) = pki();
    let mut proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let anonymous = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let mut idle = Conn::over(tls::connect(addr, anonymous.clone()).await.expect("tls"));
    idle.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    // An HTTP/2 connection with a request in flight over the reload.
    let h2 = tls::client_config(&ca.pem, None, &[b"h2"]);
    let stream = tls::connect(addr, h2).await.expect("tls h2");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let h2_conn = tokio::spawn(conn);
    let slow = ::http::Request::builder()
        .uri("https://localhost/slow?ms=600")
        .body(http::empty())
        .expect("request");
    let in_flight = tokio::spawn(send.send_request(slow));
    tokio::time::sleep(Duration::from_millis(150)).await;

    proxy.rewrite_config(&TLS_INBOUND.replace("$TLS", &tls_with_ca(&pki, "ca.pem")));
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    assert!(
        idle.closes().await,
        "the idle connection is closed at the reload"
    );
    let done = in_flight
        .await
        .expect("task")
        .expect("the request in flight is answered");
    assert_eq!(done.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_conn).await;
    assert!(
        ended.is_ok(),
        "the HTTP/2 connection ends once its request is answered"
    );

    // New connections are held to the new rules; a verified one is served.
    assert!(tls::get(addr, anonymous, "/ok", &[]).await.is_err());
    let alice = ca.client("alice", None);
    let cfg = tls::client_config(&ca.pem, Some(&alice), &[b"http/1.1"]);
    let mut verified = Conn::over(tls::connect(addr, cfg.clone()).await.expect("mtls"));
    verified.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(verified.answer(false).await.status, 200);

    // A reload that keeps the same CA keeps it open ...
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    verified.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        verified.answer(false).await.status,
        200,
        "same rules, still served"
    );
    // ... one that swaps the CA (to revoke alice) closes it.
    let other = Ca::new("another ca");
    pki.ca("other", &other);
    proxy.rewrite_config(&TLS_INBOUND.replace("$TLS", &tls_with_ca(&pki, "other.pem")));
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert!(verified.closes().await, "verified under the old CA: closed");
    assert!(
        tls::get(addr, cfg, "/ok", &[]).await.is_err(),
        "alice is refused"
    );
    let bob = other.client("bob", None);
    let cfg = tls::client_config(&ca.pem, Some(&bob), &[b"http/1.1"]);
    let rsp = tls::get(addr, cfg, "/ok", &[]).await.expect("bob");
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn mismatched_key_fails_validate_and_reload_keeps_the_old_cert() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());

    // The certificate of serial 2 with the key of serial 3.
    let (cert2, key3) = (ca.server(2).cert, ca.server(3).key);
    pki.write("server.pem", &cert2);
    let key = pki.write("server-key.pem", &key3);
    let out = validate(proxy.config_path()).await;
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&key.display().to_string()),
        "names the key: {text}"
    );
    // Placed like every config error: FILE:LINE:COLUMN: key.path: message.
    let line = text
        .lines()
        .find(|l| l.contains(": listeners[0].tls.key: "))
        .unwrap_or_else(|| panic!("no error at listeners[0].tls.key: {text}"));
    let place = line
        .strip_prefix(&format!("{}:", proxy.config_path().display()))
        .and_then(|rest| rest.split(": ").next())
        .unwrap_or_default();
    let numbers: Vec<&str> = place.split(':').collect();
    assert!(
        numbers.len() == 2
            && numbers
                .iter()
                .all(|n| n.parse::<usize>().is_ok_and(|n| n > 0)),
        "LINE:COLUMN in {line}"
    );

    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(rsp.text().contains("server-key.pem"), "{}", rsp.text());
    let text = metrics(admin).await;
    assert_eq!(reloads(&text, "failure"), 1.0, "{text}");
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let conn = H1Conn::open(addr, cfg).await.expect("still serving");
    assert_eq!(conn.serial, 1, "the old certificate stays in force");
}

/// A chain file whose leaf is fresh and whose intermediate has expired: `validate` refuses it
/// at `listeners[0].tls.cert` (FILE:LINE:COL), naming the file and which certificate, and a reload
/// to it is refused with the old certificate kept. Before, only the leaf was checked.
#[tokio::test]
async fn an_expired_intermediate_fails_validate_and_reload() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());

    let issuing = ca.lapsed_intermediate("lapsed issuing ca");
    let leaf = issuing.server(2);
    let cert = pki.write("server.pem", &format!("{}{}", leaf.cert, issuing.pem));
    pki.write("server-key.pem", &leaf.key);
    let out = validate(proxy.config_path()).await;
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(": listeners[0].tls.cert: "))
        .unwrap_or_else(|| panic!("no error at listeners[0].tls.cert: {text}"));
    assert!(
        line.starts_with(&format!("{}:", proxy.config_path().display())),
        "{line}"
    );
    assert!(line.contains(&cert.display().to_string()), "{line}");
    assert!(
        line.contains(
            "certificate 2 of 2 (an intermediate, subject CN=lapsed issuing ca) expired at"
        ),
        "{line}"
    );

    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(rsp.text().contains("certificate 2 of 2"), "{}", rsp.text());
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let conn = H1Conn::open(addr, cfg).await.expect("still serving");
    assert_eq!(conn.serial, 1, "the old certificate stays in force");
}

/// A certificate file cut short names the section left open as text, in `validate` and in a
/// refused reload: before, the PEM reader's bytes (`[67, 69, 82, ...]`) were printed.
#[tokio::test]
async fn a_truncated_certificate_names_its_section_in_words() {
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let pem = ca.server(2).cert;
    let cut = &pem[..pem.len() / 2];
    pki.write("server.pem", cut);
    let out = validate(proxy.config_path()).await;
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the CERTIFICATE section has no end line (`-----END CERTIFICATE-----`)"),
        "{text}"
    );
    assert!(!text.contains("[67, 69"), "{text}");
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(
        rsp.text().contains("the CERTIFICATE section"),
        "{}",
        rsp.text()
    );
}

/// A certificate error is listed with the file's other errors, sorted by place, by `validate`,
/// by a refused reload and by a refused start alike (SPEC §14). Before, it came out only once
/// every other error of the file was fixed.
#[tokio::test]
async fn a_bad_key_is_listed_with_the_other_errors_in_file_order() {
    let app = sample().await;
    let (ca, pki) = pki();
    let mut proxy = tls_proxy(app.addr(), &pki, false, "").await;
    // Serial 2's key beside serial 1's certificate; an unknown key before the listener and a
    // bad duration after its `tls`.
    pki.write("server-key.pem", &ca.server(2).key);
    let bad = TLS_INBOUND
        .replace("$SECTIONS", "bogus: 1")
        .replace("$POLICY", "tunnel_idle_timeout: 5x");
    proxy.rewrite_config(&bad);
    let keys = [
        ": bogus: unknown key",
        ": listeners[0].tls.key: ",
        ": listeners[0].routes[0].tunnel_idle_timeout: ",
    ];
    let in_order = |what: &str, text: &str| {
        let at: Vec<Option<usize>> = keys.iter().map(|k| text.find(k)).collect();
        assert!(
            at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
            "{what}: {keys:?} in this order in:\n{text}"
        );
        assert!(text.contains("key does not match"), "{what}: {text}");
    };
    let out = validate(proxy.config_path()).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    in_order("validate", &both(&out));
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    in_order("reload", &rsp.text());
    let path = proxy.config_path().to_str().expect("a UTF-8 temp path");
    let out = crate::support::proxy::run(&["run", "--config", path]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    in_order("start", &both(&out));
}

/// `rampart validate --config PATH`, bounded to 15 s.
async fn validate(path: &Path) -> Output {
    let path = path.to_str().expect("a UTF-8 temp path");
    crate::support::proxy::run(&["validate", "--config", path]).await
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TLS client of a connection handed to hyper (a chunked upload) that closes its session
/// (`close_notify`, then its end of stream) while its answer is awaited ends its request at
/// once, counted as a 499, as over plain TCP (`access_log::a_client_that_goes_away_after_a_
/// chunked_upload_is_a_499_at_once`): the watch looks at the socket under the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_closes_after_a_chunked_upload_is_a_499_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = sample().await;
    let (ca, pki) = pki();
    let proxy = tls_proxy(app.addr(), &pki, false, "").await;
    let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
    let mut stream = tls::connect(proxy.listener("inbound"), cfg)
        .await
        .expect("a TLS connection");
    let started = tokio::time::Instant::now();
    stream
        .write_all(
            b"POST /slow?ms=3000 HTTP/1.1\r\nHost: localhost\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
    assert_eventually!(app.hits_for("/slow") == 1, "the upload is upstream");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.shutdown().await.expect("close_notify");
    drop(stream);
    let admin = proxy.admin();
    assert_eventually!(
        metric_value(
            &metrics(admin).await,
            "rampart_requests_total",
            &[("code", "499")]
        ) == Some(1.0),
        "a 499 counted"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "ended when the client went, not when the upstream answered"
    );
    let text = metrics(admin).await;
    assert_eq!(
        metric_value(
            &text,
            "rampart_in_flight_requests",
            &[("listener", "inbound")]
        ),
        Some(0.0),
        "{text}"
    );
}

/// A WebSocket on `addr` over TLS with `cfg`, past its welcome.
async fn open_websocket(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ws = tls::connect(addr, cfg).await.expect("mtls");
    let shake = crate::upgrade::handshake("/chat");
    ws.write_all(shake.as_bytes()).await.expect("handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(ws.read_u8().await.expect("the answer's head"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let mut got = vec![0u8; crate::upgrade::WELCOME.len()];
    ws.read_exact(&mut got).await.expect("welcome");
    ws
}

/// A reload that takes a CA out of a listener's `client_ca` cuts at once the WebSockets whose
/// client certificate that CA issued: the listener no longer trusts them, and they are not
/// served for the shutdown grace. One whose certificate a CA still in the bundle issued is
/// cut as the connection would be: it carries bytes for `shutdown_grace`, then closes.
/// Before, both went on for the grace (and before that, until a side closed or
/// `tunnel_idle_timeout`, 1h).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_under_a_ca_a_reload_removes_is_cut_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = crate::upgrade::Upstream::start().await;
    let (ca, pki) = pki();
    let other = Ca::new("another ca");
    pki.ca("other", &other);
    pki.write("both.pem", &format!("{}{}", ca.pem, other.pem));
    let sections = "runtime: { shutdown_grace: 2s }";
    let config = |bundle: &str| {
        TLS_INBOUND
            .replace("$SECTIONS", sections)
            .replace("$TLS", &tls_with_ca(&pki, bundle))
    };
    let mut proxy = Proxy::builder(&config("both.pem"))
        .var("POLICY", "")
        .var("APP", up.addr)
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let alice = ca.client("alice", None);
    let carol = other.client("carol", None);
    let mut dropped = open_websocket(
        addr,
        tls::client_config(&ca.pem, Some(&alice), &[b"http/1.1"]),
    )
    .await;
    let mut kept = open_websocket(
        addr,
        tls::client_config(&ca.pem, Some(&carol), &[b"http/1.1"]),
    )
    .await;

    proxy.rewrite_config(&config("other.pem"));
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let began = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(1), dropped.read_to_end(&mut rest)).await;
    assert!(
        end.is_ok(),
        "alice's CA is gone: her WebSocket is cut at once"
    );
    // Carol's CA stays: hers carries bytes within the grace, and is cut after it.
    kept.write_all(b"within").await.expect("write");
    let mut got = [0u8; 6];
    kept.read_exact(&mut got).await.expect("open in the grace");
    let end = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the WebSocket is cut after the grace");
    assert!(
        began.elapsed() >= Duration::from_millis(1800),
        "not before the grace: {:?}",
        began.elapsed()
    );
    assert_eventually!(
        proxy
            .log()
            .contains("a reload's TLS rules refuse a tunnel's client"),
        "said why: {}",
        proxy.log()
    );
}

/// A reload that adds a CA to `client_ca` (the first step of a rotation: `ca` to `ca` and
/// `other`) takes no trust away: a WebSocket and an idle keep-alive connection made with a
/// certificate of `ca` go on past `shutdown_grace`, and a client of the added CA connects.
/// Before, the bundle compared unequal, and both were cut (the idle one at the reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_client_ca_keeps_connections_and_websockets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = crate::upgrade::Upstream::start().await;
    let (ca, pki) = pki();
    let sections = "runtime: { shutdown_grace: 500ms }";
    let mut proxy = tls_proxy(up.addr, &pki, true, sections).await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let alice = ca.client("alice", None);
    let cfg = tls::client_config(&ca.pem, Some(&alice), &[b"http/1.1"]);
    let mut ws = open_websocket(addr, cfg.clone()).await;
    let mut idle = Conn::over(tls::connect(addr, cfg).await.expect("mtls"));
    idle.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);

    let other = Ca::new("another ca");
    pki.write("both.pem", &format!("{}{}", ca.pem, other.pem));
    proxy.rewrite_config(
        &TLS_INBOUND
            .replace("$SECTIONS", sections)
            .replace("$TLS", &tls_with_ca(&pki, "both.pem")),
    );
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    // Past the grace (500ms) and more.
    tokio::time::sleep(Duration::from_millis(900)).await;
    ws.write_all(b"after").await.expect("write");
    let mut got = [0u8; 5];
    let echoed = tokio::time::timeout(Duration::from_secs(3), ws.read_exact(&mut got)).await;
    assert!(
        matches!(echoed, Ok(Ok(_))),
        "the WebSocket still carries bytes past the grace: {echoed:?}"
    );
    assert_eq!(&got, b"after");
    idle.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        idle.answer(false).await.status,
        200,
        "the idle keep-alive connection is still served"
    );
    let bob = other.client("bob", None);
    let cfg = tls::client_config(&ca.pem, Some(&bob), &[b"http/1.1"]);
    let mut added = Conn::over(tls::connect(addr, cfg).await.expect("mtls, the added CA"));
    added.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(added.answer(false).await.status, 200);
}

/// A reload whose `client_ca` bundle lists the same CAs in another order, or one of them twice,
/// trusts the same clients: connections made under it stay open. Before, either dropped every
/// connection of the listener.
#[tokio::test]
async fn a_client_ca_bundle_reordered_or_with_a_repeat_keeps_connections() {
    let app = sample().await;
    let (ca, pki) = pki();
    let other = Ca::new("another ca");
    pki.write("both.pem", &format!("{}{}", ca.pem, other.pem));
    let proxy = Proxy::builder(TLS_INBOUND)
        .var("SECTIONS", "")
        .var("TLS", tls_with_ca(&pki, "both.pem"))
        .var("POLICY", "")
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let alice = ca.client("alice", None);
    let cfg = tls::client_config(&ca.pem, Some(&alice), &[b"http/1.1"]);
    let mut verified = Conn::over(tls::connect(addr, cfg).await.expect("mtls"));
    verified.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(verified.answer(false).await.status, 200);
    for bundle in [
        format!("{}{}", other.pem, ca.pem),
        format!("{}{}{}", ca.pem, other.pem, ca.pem),
    ] {
        pki.write("both.pem", &bundle);
        let rsp = http::post(admin, "/reload", &[], "").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        verified.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(
            verified.answer(false).await.status,
            200,
            "the same CAs: still served"
        );
    }
}
