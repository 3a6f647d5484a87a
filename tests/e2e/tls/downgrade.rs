//! An `https://` target on an outbound listener (an app's `HTTP_PROXY` use) is never sent in
//! clear (SPEC §8: a security setting is never silently ignored): to an upstream with `tls`
//! it is forwarded over TLS; to a plaintext one it is refused 421 `https_downgrade`, and the
//! upstream sees nothing. Before, it was sent to the plaintext upstream as it was, in clear.
//! On an inbound listener the target names the client's own hop: forwarded, with
//! `x-forwarded-proto` telling the service the truth.

use std::time::Duration;

use http::Request;

use crate::edges::OK;
use crate::support::capture::Capture;
use crate::support::tls::{Ca, Pki, TlsUpstream};
use crate::support::{http as client, raw, Proxy};

const POLICY: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  secure: { endpoints: [$SECURE], tls: { ca: $CA, server_name: localhost } }
  plain: { endpoints: [$PLAIN] }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - { match: { host: payments.internal }, upstream: secure }
      - { match: { host: plain.internal }, upstream: plain }
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: plain }
"#;

async fn get(addr: std::net::SocketAddr, target: &str, host: &str) -> raw::RawResp {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await
}

#[tokio::test]
async fn an_https_target_goes_only_to_an_upstream_that_speaks_tls() {
    let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let secure = TlsUpstream::start(&ca.server(1)).await;
    let plain = Capture::start(OK).await;
    let proxy = Proxy::builder(POLICY)
        .var("SECURE", secure.addr)
        .var("CA", ca_path.display())
        .var("PLAIN", plain.addr())
        .spawn()
        .await;
    let out = proxy.listener("outbound");

    // The upstream speaks TLS: forwarded, over TLS.
    let rsp = get(out, "https://payments.internal/pay", "payments.internal").await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(secure.hits(), 1);

    // A plaintext upstream: refused, never sent.
    let rsp = get(out, "https://plain.internal/x", "plain.internal").await;
    assert_eq!(rsp.status(), Some(421), "{}", rsp.text());
    assert_eq!(
        rsp.header("x-rampart-reason").as_deref(),
        Some("https_downgrade")
    );
    assert!(
        rsp.text().contains("upstream plain has no tls"),
        "the message names the upstream: {}",
        rsp.text()
    );
    // The scheme is case-insensitive (RFC 3986 §3.1).
    let rsp = get(out, "HTTPS://plain.internal/x", "plain.internal").await;
    assert_eq!(rsp.status(), Some(421), "{}", rsp.text());
    // HTTP/2 with prior knowledge (h2c) claiming `:scheme https`: the same question.
    let mut h2 = client::h2c(out).await;
    let req = Request::get("https://plain.internal/x")
        .body(client::empty())
        .expect("a request");
    let rsp = h2.send_request(req).await.expect("an h2 answer");
    assert_eq!(rsp.status(), 421);
    assert_eq!(rsp.headers()["x-rampart-reason"], "https_downgrade");
    assert_eq!(plain.hits(), 0, "nothing reached the plaintext upstream");

    // `http://` to it is what it always was.
    let rsp = get(out, "http://plain.internal/x", "plain.internal").await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(plain.hits(), 1);

    // Inbound: the client's own hop, told truthfully to the service.
    let rsp = get(
        proxy.listener("inbound"),
        "https://app.example/x",
        "app.example",
    )
    .await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(plain.hits(), 2);
    assert_eq!(plain.header(1, "x-forwarded-proto"), ["http"]);
}
