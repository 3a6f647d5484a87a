//! TLS to upstreams (SPEC §8): a private CA verifies the upstream, a wrong CA is a 502, the
//! SNI follows `server_name`, and an upstream with `tls` never gets a plaintext request.

use std::net::SocketAddr;

use crate::support::proxy::run_env;
use crate::support::tls::{Ca, Pki, Recorder, TlsScript, TlsUpstream};
use crate::support::{http, Proxy};

/// An outbound listener routing `payments.internal` to upstream `payments` at `$UP`, whose
/// `tls` map has body `$UPTLS`.
const OUTBOUND: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  payments:
    endpoints: [$UP]
    tls: { $UPTLS }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - match: { host: payments.internal }
        upstream: payments
"#;

async fn outbound(up: SocketAddr, tls: String) -> Proxy {
    Proxy::builder(OUTBOUND)
        .var("UPTLS", tls)
        .var("UP", up)
        .spawn()
        .await
}

async fn call(proxy: &Proxy) -> http::Resp {
    let host = [("host", "payments.internal")];
    http::get(proxy.listener("outbound"), "/pay", &host).await
}

#[tokio::test]
async fn private_ca_verifies_the_upstream_and_a_wrong_ca_is_502() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let other = pki.ca("other", &Ca::new("some other ca"));
    let up = TlsUpstream::start(&ca.server(1)).await;

    let named = trusting(&ca_path);
    let proxy = outbound(up.addr, named).await;
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.text(), "localhost", "SNI is the configured server_name");
    drop(proxy);

    // No server_name and an IP endpoint: verified against the IP SAN, no SNI sent.
    let by_ip = format!("ca: {}", ca_path.display());
    let proxy = outbound(up.addr, by_ip).await;
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.text(), "", "no SNI for an IP address");
    drop(proxy);

    let hits = up.hits();
    let wrong = trusting(&other);
    let proxy = outbound(up.addr, wrong).await;
    let rsp = call(&proxy).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    // Why, as the warn line says it: the message said only that the handshake failed.
    assert!(
        rsp.text()
            .contains("TLS handshake failed with upstream payments")
            && rsp
                .text()
                .contains("certificate is not signed by a trusted CA (unknown issuer)"),
        "{}",
        rsp.text()
    );
    assert_eq!(up.hits(), hits, "an unverified upstream gets no request");
    // The operator is told why, at warn (once per endpoint and 10 s, however many tries).
    call(&proxy)
        .await
        .assert_rampart(502, "upstream_unavailable");
    assert_eventually!(
        proxy
            .log()
            .contains("TLS handshake with an upstream failed"),
        "a warn line names the failed handshake"
    );
    let warned = proxy
        .log()
        .matches("TLS handshake with an upstream failed")
        .count();
    assert_eq!(warned, 1, "{}", proxy.log());
}

#[tokio::test]
async fn client_certificate_to_an_upstream_that_requires_one() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let (cert, key) = pki.pair("client", &ca.client("rampart", None));
    let up = TlsUpstream::start_mtls(&ca.server(1), &ca.pem).await;

    let anonymous = trusting(&ca_path);
    let proxy = outbound(up.addr, anonymous).await;
    call(&proxy)
        .await
        .assert_rampart(502, "upstream_unavailable");
    assert_eq!(up.hits(), 0, "no client certificate, no request");
    drop(proxy);

    let with_cert = with_client_cert(&ca_path, &cert, &key);
    let proxy = outbound(up.addr, with_cert).await;
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(up.hits(), 1);
}

/// An upstream `tls` section that trusts `ca` and names `localhost`.
fn trusting(ca: &std::path::Path) -> String {
    format!("ca: {}, server_name: localhost", ca.display())
}

/// [`trusting`] that also shows the client certificate `cert` with its `key`.
fn with_client_cert(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "{}, cert: {}, key: {}",
        trusting(ca),
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn reload_rereads_the_upstream_ca_in_place() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let up = TlsUpstream::start(&ca.server(1)).await;
    // The file the policy names holds the wrong CA at first.
    let ca_path = pki.ca("ca", &Ca::new("some other ca"));
    let tls = trusting(&ca_path);
    let proxy = outbound(up.addr, tls).await;
    call(&proxy)
        .await
        .assert_rampart(502, "upstream_unavailable");

    pki.ca("ca", &ca);
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "the same path, read again: {}", rsp.text());
}

/// SPEC §8, a reload that keeps the upstream's endpoints (a change to `outlier` only): their
/// new handshakes use the files as read now, rotated by that reload or by a later one with the
/// policy unchanged. Before, an endpoint carried over kept the TLS config of the generation
/// that built it: the upstream, restarted with a certificate of the new CA, was a 502 (unknown
/// issuer) until rampart restarted.
#[tokio::test]
async fn a_reload_that_keeps_the_endpoints_rereads_the_upstream_ca() {
    // No idle connection: each request shakes hands anew.
    let plain = OUTBOUND.replace(
        "    tls: { $UPTLS }\n",
        "    tls: { $UPTLS }\n    pool_max_idle: 0\n",
    );
    let ejecting = plain.replace(
        "    pool_max_idle: 0\n",
        "    pool_max_idle: 0\n    outlier: { consecutive_failures: 5 }\n",
    );
    for outlier_first in [false, true] {
        let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
        let ca_path = pki.ca("ca", &ca);
        let mut up = TlsUpstream::start(&ca.server(1)).await;
        let mut proxy = Proxy::builder(&plain)
            .var("UPTLS", trusting(&ca_path))
            .var("UP", up.addr)
            .spawn()
            .await;
        let rsp = call(&proxy).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        if outlier_first {
            proxy.rewrite_config(&ejecting);
            let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
            assert_eq!(rsp.status, 200, "{}", rsp.text());
        }

        let rotated = Ca::new("rotated ca");
        up.restart(&rotated.server(2)).await;
        pki.ca("ca", &rotated);
        if !outlier_first {
            proxy.rewrite_config(&ejecting);
        }
        let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let rsp = call(&proxy).await;
        assert_eq!(
            rsp.status,
            200,
            "the rotated CA, outlier changed first: {outlier_first}: {}",
            rsp.text()
        );
        assert_eq!(up.hits(), 2);
    }
}

#[tokio::test]
async fn plaintext_server_behind_tls_gets_a_client_hello_not_a_request() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let mut plain = Recorder::start().await;
    let tls = trusting(&ca_path);
    let proxy = outbound(plain.addr, tls).await;

    let rsp = call(&proxy).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    // Said so, not as tokio-rustls's "tls handshake eof".
    assert!(
        rsp.text()
            .contains("the server closed the connection during the TLS handshake"),
        "{}",
        rsp.text()
    );
    let conns = plain.connections();
    assert!(!conns.is_empty(), "rampart must have connected");
    for bytes in conns {
        assert_eq!(
            bytes.first(),
            Some(&0x16),
            "a TLS handshake record first, never plaintext: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        for method in ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH"] {
            assert!(!bytes.starts_with(method.as_bytes()), "no request line");
        }
    }
}

/// Health checks of an upstream with `tls` go over TLS, as its requests do (verified against
/// its `ca`, for its `server_name`): never in clear, and an endpoint that only speaks TLS stays
/// healthy and keeps being served. Before, probes went in clear, every one failed, and the
/// endpoint was marked unhealthy after `unhealthy_after` of them.
#[tokio::test]
async fn health_checks_of_a_tls_upstream_go_over_tls() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let up = TlsUpstream::start(&ca.server(1)).await;
    let checked = OUTBOUND.replace(
        "    tls: { $UPTLS }\n",
        "    tls: { $UPTLS }\n    health_check: { path: /healthz, interval: 50ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1 }\n",
    );
    let proxy = Proxy::builder(&checked)
        .var("UPTLS", trusting(&ca_path))
        .var("UP", up.addr)
        .spawn()
        .await;
    assert_eventually!(
        up.hits() >= 3,
        "the probes arrive over TLS; log:\n{}",
        proxy.log()
    );
    let text = crate::support::metrics(proxy.admin()).await;
    let label = up.addr.to_string();
    let healthy = crate::support::metric_value(
        &text,
        "rampart_upstream_endpoint_healthy",
        &[("upstream", "payments"), ("endpoint", &label)],
    );
    assert_eq!(healthy, Some(1.0), "{text}");
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.text(), "localhost");
}

/// `outbound` with `tls` body `tls`, whose system trust store is the file `bundle` alone: the
/// proxy's `SSL_CERT_FILE` names it and its `SSL_CERT_DIR` is empty (set on the child only, so
/// no other test's proxy sees them; this machine's own may set both).
async fn outbound_trusting(up: SocketAddr, tls: &str, bundle: &std::path::Path) -> Proxy {
    Proxy::builder(OUTBOUND)
        .var("UPTLS", tls)
        .var("UP", up)
        .env("SSL_CERT_FILE", bundle.display())
        .env("SSL_CERT_DIR", "")
        .spawn()
        .await
}

/// The fallback's warning (`tls::roots`).
const NO_SYSTEM_ROOTS: &str = "no usable system trust roots";

/// SPEC §8: without `ca`, the upstream is verified against the system roots, which include the
/// bundle `SSL_CERT_FILE` names: a private CA installed there is trusted, no fallback is warned of.
#[tokio::test]
async fn without_ca_the_upstream_is_verified_against_the_system_roots() {
    let (ca, pki) = (Ca::new("system-installed ca"), Pki::new());
    let bundle = pki.ca("bundle", &ca);
    let up = TlsUpstream::start(&ca.server(1)).await;

    let proxy = outbound_trusting(up.addr, "server_name: localhost", &bundle).await;
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.text(), "localhost", "SNI is the configured server_name");
    assert!(!proxy.log().contains(NO_SYSTEM_ROOTS), "{}", proxy.log());
}

/// `rampart validate` counts the fallback to the compiled-in roots as one of its warnings,
/// placed at the section that trusts the system roots and printed as the others are (it was a
/// log line beside "0 warning(s)"), and says it once.
#[tokio::test]
async fn validate_counts_the_fallback_as_a_warning_at_the_section() {
    let pki = Pki::new();
    let missing = pki.path("none.pem").display().to_string();
    let rendered = Proxy::builder(OUTBOUND)
        .var("UPTLS", "server_name: localhost")
        .var("UP", "127.0.0.1:9")
        .render();
    let path = rendered.path.display().to_string();
    let env = [("SSL_CERT_FILE", missing.as_str()), ("SSL_CERT_DIR", "")];
    let out = run_env(&["validate", "--config", &path], &env).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    // The other is at the same section: the outbound route tunnels CONNECTs inside its TLS.
    assert!(stdout.contains(", 2 warning(s);"), "counted: {stdout}");
    let both = format!("{stdout}{stderr}");
    let said: Vec<&str> = both
        .lines()
        .filter(|l| l.contains(NO_SYSTEM_ROOTS))
        .collect();
    assert_eq!(said.len(), 1, "once:\n{both}");
    let at = format!("{path}:7:5: upstreams.payments.tls: warning: {NO_SYSTEM_ROOTS} (");
    assert!(said[0].starts_with(&at), "{:?} must start {at:?}", said[0]);
    assert!(said[0].contains("none.pem"), "names the file: {}", said[0]);
}

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` set empty count as unset: the OS bundle is read, not a
/// file at the path '' (the reader of rustls-native-certs took the empty value for one, and the
/// load fell back to the compiled-in roots with "failed to read PEM from file").
#[tokio::test]
async fn store_variables_set_empty_read_the_os_bundle() {
    let rendered = Proxy::builder(OUTBOUND)
        .var("UPTLS", "server_name: localhost")
        .var("UP", "127.0.0.1:9")
        .render();
    let path = rendered.path.display().to_string();
    let env = [("SSL_CERT_FILE", ""), ("SSL_CERT_DIR", "")];
    let out = run_env(&["validate", "--config", &path], &env).await;
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{both}");
    assert!(!both.contains("failed to read PEM"), "{both}");
    // Where the OS bundle is missing (no ca-certificates) the fallback is warned of, saying
    // where rampart looked; with one, nothing is.
    if both.contains(NO_SYSTEM_ROOTS) {
        assert!(both.contains("the OS bundle paths"), "{both}");
    }
}

/// A system store with nothing usable (here an `SSL_CERT_FILE` that does not exist) leaves the
/// compiled-in web roots, warned of once per config load with the file named, not per
/// connection: the private CA is not trusted (502). A reload reads the system store again, so
/// the CA installed at that path meanwhile is trusted from then on.
#[tokio::test]
async fn an_empty_system_store_falls_back_with_a_warning_and_a_reload_reads_it_again() {
    let (ca, pki) = (Ca::new("system-installed ca"), Pki::new());
    let bundle = pki.path("later.pem");
    let up = TlsUpstream::start(&ca.server(1)).await;

    let proxy = outbound_trusting(up.addr, "server_name: localhost", &bundle).await;
    for _ in 0..2 {
        call(&proxy)
            .await
            .assert_rampart(502, "upstream_unavailable");
    }
    assert_eq!(up.hits(), 0, "an unverified upstream gets no request");
    let log = proxy.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(NO_SYSTEM_ROOTS))
        .collect();
    assert_eq!(warned.len(), 1, "once, at the load:\n{log}");
    assert!(
        warned[0].contains("later.pem"),
        "names the file: {}",
        warned[0]
    );

    pki.ca("later", &ca);
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let rsp = call(&proxy).await;
    assert_eq!(rsp.status, 200, "the store read again: {}", rsp.text());
    assert_eq!(proxy.log().matches(NO_SYSTEM_ROOTS).count(), 1);
}

/// An HTTP/1.1 try whose deadline (300 ms) passes while its own connection is still being
/// made (the endpoint takes the TCP connection and never answers the TLS handshake,
/// `connect_timeout` 1 s) is a 504 that says the request was not sent. It is still a try (a
/// `504` in `rampart_upstream_requests_total`): the endpoint took no connection in its time.
/// Before, its message said "no answer from upstream", as if the request had gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_while_the_connection_is_made_says_the_request_was_not_sent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = listener.local_addr().expect("addr");
    // Takes connections and says nothing.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let timed = OUTBOUND.replace(
        "listeners:",
        "policies:\n  short: { timeout: { request: 300ms } }\nlisteners:",
    ) + "        policy: short\n";
    let proxy = Proxy::builder(&timed)
        .var("UPTLS", format!("ca: {}", ca_path.display()))
        .var("UP", up)
        .spawn()
        .await;
    let rsp = call(&proxy).await;
    rsp.assert_rampart(504, "timeout");
    let msg = rsp.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("still being made"), "{msg}");
    assert!(msg.contains("not sent"), "{msg}");
    let text = crate::support::metrics(proxy.admin()).await;
    let try_504 = [("upstream", "payments"), ("code", "504")];
    assert_eq!(
        crate::support::metric_value(&text, "rampart_upstream_requests_total", &try_504),
        Some(1.0),
        "{text}"
    );
    silent.abort();
}

/// What a plaintext `GET /` sent inside a tunnel opened to `payments.internal` got back: the
/// whole answer, once the upstream closed (`connection: close`).
async fn get_through_a_tunnel(proxy: &Proxy) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let outbound = proxy.listener("outbound");
    let mut tunnel = crate::connect::open_tunnel(outbound, "payments.internal:443").await;
    let get = "GET / HTTP/1.1\r\nhost: payments.internal\r\nconnection: close\r\n\r\n";
    tunnel.write_all(get.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tunnel.read_to_end(&mut got),
    );
    // A reset (the upstream refusing what it got) reads as what came before it.
    let _ = read.await.expect("the tunnel must end within 10 s");
    String::from_utf8_lossy(&got).into_owned()
}

/// A CONNECT tunnel to an upstream with `tls` goes inside rampart's TLS session with it (SPEC
/// §8: never plaintext to an upstream with `tls`), made as every connection to it is: its `ca`
/// verifies the server, `server_name` is the SNI, its client certificate is presented. The
/// client sends plaintext inside. A handshake that fails is the tunnel's failed connect: 502,
/// warned about, and no 200. Before, the tunnel was a plain TCP connection: the upstream got
/// the client's plaintext (and dropped it, its handshake failing), and with a wrong `ca` the
/// CONNECT still got its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_tunnel_to_a_tls_upstream_goes_inside_rampart_s_tls_session() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let up = TlsUpstream::start(&ca.server(1)).await;
    let named = trusting(&ca_path);
    let proxy = outbound(up.addr, named).await;
    let got = get_through_a_tunnel(&proxy).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
    assert!(
        got.ends_with("\r\n\r\nlocalhost"),
        "the SNI is the configured server_name: {got:?}"
    );
    assert_eq!(up.hits(), 1);
    drop(proxy);

    // Its client certificate too (mTLS to the upstream).
    let (cert, key) = pki.pair("client", &ca.client("rampart", None));
    let mtls = TlsUpstream::start_mtls(&ca.server(2), &ca.pem).await;
    let with_cert = with_client_cert(&ca_path, &cert, &key);
    let proxy = outbound(mtls.addr, with_cert).await;
    let got = get_through_a_tunnel(&proxy).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
    assert_eq!(mtls.hits(), 1);
    drop(proxy);

    // A server the `ca` does not verify: no tunnel.
    let other = pki.ca("other", &Ca::new("some other ca"));
    let wrong = trusting(&other);
    let proxy = outbound(up.addr, wrong).await;
    let rsp = crate::connect::connect(proxy.listener("outbound"), "payments.internal:443").await;
    handshake_refused(
        &rsp,
        &proxy,
        "certificate is not signed by a trusted CA (unknown issuer)",
    )
    .await;
    assert_eq!(up.hits(), 1, "an unverified upstream gets nothing");
}

/// A CONNECT tunnel to a TLS 1.3 upstream that refuses rampart's client certificate, or its
/// absence, is a failed connect, as a request's connection to it is: 502
/// `upstream_unavailable` saying why, the warn line, and the upstream's failed try. In TLS 1.3
/// rampart's side of the handshake ends before the server has judged the certificate: its
/// refusal (an alert) comes after. Before, the CONNECT got its 200, counted as the upstream's
/// success, and the tunnel died at its first read; rampart waited for the verdict only when it
/// presented a certificate itself, so to an upstream that requires one, with no `cert` set,
/// it still did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_tunnel_to_an_upstream_that_refuses_rampart_s_client_certificate_is_a_502() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    // It wants client certificates signed by another CA.
    let up = TlsUpstream::start_mtls(&ca.server(1), &Ca::new("some other ca").pem).await;
    let cases = [
        (
            presenting(&ca, &pki),
            "the server refused rampart's client certificate",
        ),
        (
            trusting(&ca_path),
            "the server requires a client certificate and rampart presented none",
        ),
    ];
    for (tls, why) in cases {
        let proxy = outbound(up.addr, tls).await;
        let rsp =
            crate::connect::connect(proxy.listener("outbound"), "payments.internal:443").await;
        handshake_refused(&rsp, &proxy, why).await;
        assert_eq!(connect_tries(&proxy).await, (Some(1.0), None), "{why}");
    }
    assert_eq!(up.hits(), 0);
}

/// The tries of upstream `payments` counted by `proxy`: (502s, 200s).
async fn connect_tries(proxy: &Proxy) -> (Option<f64>, Option<f64>) {
    let text = crate::support::metrics(proxy.admin()).await;
    let tries = |code| {
        crate::support::metric_value(
            &text,
            "rampart_upstream_requests_total",
            &[("upstream", "payments"), ("code", code)],
        )
    };
    (tries("502"), tries("200"))
}

/// The `tls` map body that trusts `ca` (written into `pki`) and presents a client certificate
/// it signed.
fn presenting(ca: &Ca, pki: &Pki) -> String {
    let (cert, key) = pki.pair("client", &ca.client("rampart", None));
    with_client_cert(&pki.ca("ca", ca), &cert, &key)
}

/// A TLS 1.3 upstream for `localhost` (signed by `ca`) that asks every client for a
/// certificate `ca` signed and sends no session tickets, so that only what `script` does on
/// each session it accepts (or rampart's wait running out) ends rampart's wait for its verdict.
async fn asking_upstream<F, Fut>(ca: &Ca, script: F) -> TlsScript
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use crate::support::tls::{certs, key, server_config_versions};
    let issued = ca.server(1);
    let (chain, key) = (certs(&issued.cert), key(&issued.key));
    let tls13 = [&rustls::version::TLS13];
    let mut config =
        server_config_versions(chain, key, Some(ca.pem.as_str()), &[b"http/1.1"], &tls13);
    config.send_tls13_tickets = 0;
    TlsScript::start(config, script).await
}

/// Echoes what `tls` reads until it closes.
async fn echo_on(tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    let (mut r, mut w) = tokio::io::split(tls);
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

/// A TLS 1.3 upstream that accepts rampart's client certificate and then closes at once,
/// before it said anything (with `close_notify`, or dropping TCP without one): the tunnel
/// would be dead at its 200, so the CONNECT is a 502 that says so, a failed try. Before, a
/// clean close during the wait for the verdict read as acceptance: the client got a 200 and
/// a tunnel closed at once; the close without `close_notify` was a 502 in rustls's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_tunnel_to_an_upstream_that_closes_before_a_word_is_a_502() {
    use tokio::io::AsyncWriteExt;
    for notify in [true, false] {
        let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
        let up = asking_upstream(&ca, move |mut tls| async move {
            if notify {
                let _ = tls.shutdown().await;
            }
        })
        .await;
        let proxy = outbound(up.addr, presenting(&ca, &pki)).await;
        let rsp =
            crate::connect::connect(proxy.listener("outbound"), "payments.internal:443").await;
        crate::connect::assert_refused(&rsp, 502, "upstream_unavailable");
        let how = if notify {
            "with close_notify"
        } else {
            "without close_notify"
        };
        let said = format!(
            "the server closed the connection {how} right after the TLS handshake, before \
             sending anything"
        );
        assert!(rsp.text().contains(&said), "{}", rsp.text());
        assert_eq!(connect_tries(&proxy).await, (Some(1.0), None), "{how}");
    }
}

/// A tunnel's connect time (its try's duration, in `rampart_upstream_request_duration_seconds`,
/// the breaker's slow-call judgement and the endpoint's latency) is the time to make the
/// connection: TCP, TLS, and the server's verdict on rampart's client certificate when it
/// gives one. A server that gives none (no tickets, no first bytes) leaves rampart waiting
/// at least 50 ms before it answers 200: that wait is rampart's, not the endpoint's. Before,
/// it was counted in full: every tunnel to such an upstream took 50 ms or more to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_s_time_does_not_count_the_wait_for_a_verdict_that_never_came() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let up = asking_upstream(&ca, echo_on).await;
    let proxy = outbound(up.addr, presenting(&ca, &pki)).await;
    let asked = tokio::time::Instant::now();
    let mut tunnel =
        crate::connect::open_tunnel(proxy.listener("outbound"), "payments.internal:443").await;
    let to_200 = asked.elapsed();
    crate::connect::echoes(&mut tunnel, b"ping").await;
    let text = crate::support::metrics(proxy.admin()).await;
    let connect = crate::support::metric_value(
        &text,
        "rampart_upstream_request_duration_seconds_sum",
        &[("upstream", "payments")],
    )
    .expect("the connect's time");
    assert_eq!(connect_tries(&proxy).await, (None, Some(1.0)));
    // The 200 came after the wait (at least 50 ms) that followed the connect.
    let margin = to_200.as_secs_f64() - connect;
    assert!(
        margin >= 0.049,
        "connect {connect:.4}s, its 200 after {to_200:?}: the wait was counted"
    );
}

/// Hostile upstream: a TLS 1.3 server that, having accepted rampart's client certificate,
/// speaks first, more than one TLS record and more than rampart reads while it waits for the
/// verdict, then echoes: the client gets the 200, then every byte in order, then its echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_upstream_says_during_the_wait_for_its_verdict_reaches_the_client_after_the_200() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let banner: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let sent = banner.clone();
    let up = asking_upstream(&ca, move |mut tls| {
        let sent = sent.clone();
        async move {
            if tls.write_all(&sent).await.is_ok() {
                echo_on(tls).await;
            }
        }
    })
    .await;
    let proxy = outbound(up.addr, presenting(&ca, &pki)).await;
    let mut tunnel =
        crate::connect::open_tunnel(proxy.listener("outbound"), "payments.internal:443").await;
    let mut got = vec![0u8; banner.len()];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tunnel.read_exact(&mut got),
    )
    .await
    .expect("the upstream's first bytes in time")
    .expect("read them");
    assert!(
        got == banner,
        "the upstream's first bytes, intact and in order"
    );
    crate::connect::echoes(&mut tunnel, b"after").await;
}

/// `rsp` is the 502 `upstream_unavailable` of a CONNECT whose TLS handshake with the upstream
/// `payments` failed, saying `why`, and `proxy`'s log has the warn line for it.
async fn handshake_refused(rsp: &crate::support::raw::RawResp, proxy: &Proxy, why: &str) {
    crate::connect::assert_refused(rsp, 502, "upstream_unavailable");
    let text = rsp.text();
    assert!(
        text.contains("TLS handshake failed with upstream payments") && text.contains(why),
        "{text}"
    );
    assert_eventually!(
        proxy
            .log()
            .contains("TLS handshake with an upstream failed"),
        "a warn line names the failed handshake"
    );
}
