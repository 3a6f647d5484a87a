//! Upstreams that refuse rampart's TLS, or agree by ALPN to another protocol than the one
//! rampart speaks to them: each is a 502 `upstream_unavailable` whose message says what the
//! server did (its alert by its RFC name, what ALPN chose) and what to set, a failed connect
//! for retries (`retry.on: [connect_error]` tries it again, as it would not a reset), said
//! once at `warn`, and no request reaches the server.

use std::net::SocketAddr;

use crate::support::tls::{certs, key, server_config_versions, Ca, Pki, Recorder, TlsUpstream};
use crate::support::{http, metric_value, metrics, Proxy};

/// An outbound listener routing `payments.internal` to upstream `payments` at `$UP`, spoken
/// to in `$PROTOCOL` over TLS (`tls` map body `$UPTLS`), tried twice on a connect error only.
const REFUSING: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  payments:
    endpoints: [$UP]
    protocol: $PROTOCOL
    tls: { $UPTLS }
policies:
  twice:
    retry:
      attempts: 2
      on: [connect_error]
      backoff: { base: 1ms, max: 2ms }
      budget: { ratio: 100%, min_per_second: 100 }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - match: { host: payments.internal }
        upstream: payments
        policy: twice
"#;

/// The `warn` line of a failed handshake with an upstream.
const WARNED: &str = "TLS handshake with an upstream failed";

/// A CA, the PEM files of a test, and the `tls` map body that trusts the CA for `localhost`.
struct Trust {
    ca: Ca,
    /// Kept for the files' lifetime.
    _pki: Pki,
    tls: String,
}

impl Trust {
    fn new() -> Trust {
        let (ca, pki) = (Ca::new("upstream ca"), Pki::new());
        let tls = format!(
            "ca: {}, server_name: localhost",
            pki.ca("ca", &ca).display()
        );
        Trust { ca, _pki: pki, tls }
    }

    /// A server config for `localhost` signed by the CA: ALPN `alpn`, TLS `versions`, and
    /// with `mtls` every client must present a certificate the CA signed.
    fn server(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        mtls: bool,
    ) -> rustls::ServerConfig {
        let issued = self.ca.server(1);
        let client_ca = mtls.then_some(self.ca.pem.as_str());
        let (chain, key) = (certs(&issued.cert), key(&issued.key));
        server_config_versions(chain, key, client_ca, alpn, versions)
    }
}

async fn outbound(up: SocketAddr, protocol: &str, tls: &str) -> Proxy {
    Proxy::builder(REFUSING)
        .var("UP", up)
        .var("PROTOCOL", protocol)
        .var("UPTLS", tls)
        .spawn()
        .await
}

/// One request through `proxy`: a 502 `upstream_unavailable` that says the handshake with
/// the upstream failed and each of `words`, counted as two tries (a connect error is tried
/// again), said once at `warn` with `words[0]`.
async fn refused(proxy: &Proxy, words: &[&str]) {
    let rsp = http::get(
        proxy.listener("outbound"),
        "/pay",
        &[("host", "payments.internal")],
    )
    .await;
    rsp.assert_rampart(502, "upstream_unavailable");
    let body = rsp.json();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("TLS handshake failed with upstream payments (127.0.0.1:"),
        "{message}"
    );
    for w in words {
        assert!(message.contains(w), "{w:?} must be in: {message}");
    }
    let text = metrics(proxy.admin()).await;
    let tries = metric_value(
        &text,
        "rampart_upstream_requests_total",
        &[("upstream", "payments"), ("code", "502")],
    );
    let retries = metric_value(&text, "rampart_retries_total", &[("upstream", "payments")]);
    assert_eq!(
        (tries, retries),
        (Some(2.0), Some(1.0)),
        "a failed connect, tried again by `on: [connect_error]`: {text}"
    );
    crate::assert_eventually!(proxy.log().contains(WARNED), "{}", proxy.log());
    let log = proxy.log();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains(WARNED)).collect();
    assert_eq!(warned.len(), 1, "once for both tries:\n{log}");
    assert!(warned[0].contains(words[0]), "{}", warned[0]);
}

/// An upstream over `version` that requires a client certificate rampart has none of, spoken
/// to in `protocol` (agreed by ALPN): a 502 saying so and which keys to set, the upstream never
/// reached.
async fn client_certificate_required(
    version: &'static rustls::SupportedProtocolVersion,
    protocol: &str,
) -> (TlsUpstream, Proxy) {
    let t = Trust::new();
    let alpn: &[u8] = if protocol == "http2" {
        b"h2"
    } else {
        b"http/1.1"
    };
    let up = TlsUpstream::with_config(t.server(&[alpn], &[version], true)).await;
    let proxy = outbound(up.addr, protocol, &t.tls).await;
    refused(&proxy, &CERTIFICATE_REQUIRED).await;
    assert_eq!(up.hits(), 0);
    (up, proxy)
}

/// What a 502 says of an upstream that wants a client certificate rampart has none of.
const CERTIFICATE_REQUIRED: [&str; 2] = [
    "requires a client certificate and rampart presented none (alert certificate_required)",
    "set cert and key in its tls section",
];

/// TLS 1.3: the client's side of the handshake ends before the server has judged its
/// certificate, and the server's `certificate_required` comes at the first read, where it
/// was said as a connection lost (and not tried again as a connect error).
#[tokio::test]
async fn an_upstream_that_wants_a_client_certificate_says_so_over_tls_1_3() {
    client_certificate_required(&rustls::version::TLS13, "http1").await;
}

/// TLS 1.2: the refusal comes during the handshake.
#[tokio::test]
async fn an_upstream_that_wants_a_client_certificate_says_so_over_tls_1_2() {
    client_certificate_required(&rustls::version::TLS12, "http1").await;
}

/// HTTP/2 over TLS 1.3: rampart writes its connection preface as soon as its side of the
/// handshake ends, and the write may fail on the socket the server reset after its alert
/// before the alert is read. It was then said as an upstream that may not speak HTTP/2,
/// about one connection in four: so each of ten more requests (two connections each) must
/// say what the server said.
#[tokio::test]
async fn an_http2_upstream_that_wants_a_client_certificate_says_so_over_tls_1_3() {
    let (up, proxy) = client_certificate_required(&rustls::version::TLS13, "http2").await;
    let host = [("host", "payments.internal")];
    for i in 0..10 {
        let rsp = http::get(proxy.listener("outbound"), "/pay", &host).await;
        rsp.assert_rampart(502, "upstream_unavailable");
        let body = rsp.json();
        let message = body["message"].as_str().unwrap_or_default();
        for w in CERTIFICATE_REQUIRED {
            assert!(
                message.contains(w),
                "request {i}: {w:?} must be in: {message}"
            );
        }
    }
    assert_eq!(up.hits(), 0);
}

/// RFC 9113 §3.2: HTTP/2 over TLS is agreed by ALPN. A server that does no ALPN (an HTTP/1.1
/// one, most likely) chose nothing: it gets no byte of HTTP/2 (the preface was sent anyway).
#[tokio::test]
async fn an_http2_upstream_whose_server_chose_no_protocol_by_alpn_gets_no_http2() {
    let t = Trust::new();
    let mut up = Recorder::start_tls(t.server(&[], rustls::DEFAULT_VERSIONS, false)).await;
    let proxy = outbound(up.addr, "http2", &t.tls).await;
    refused(
        &proxy,
        &[
            "did not agree to HTTP/2 by ALPN (it chose no protocol; rampart offered h2)",
            "nothing was sent, the connection was closed",
        ],
    )
    .await;
    let mut seen = Vec::new();
    crate::assert_eventually!(
        {
            seen.extend(up.connections());
            seen.len() >= 2
        },
        "both tries' connections end"
    );
    for bytes in seen {
        assert!(
            bytes.is_empty(),
            "nothing after the handshake: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// A server that speaks HTTP/1.1 alone by ALPN refuses rampart's offer of `h2` with its alert.
#[tokio::test]
async fn an_http2_upstream_whose_server_speaks_http1_by_alpn_is_told_so() {
    let t = Trust::new();
    let up =
        TlsUpstream::with_config(t.server(&[b"http/1.1"], rustls::DEFAULT_VERSIONS, false)).await;
    let proxy = outbound(up.addr, "http2", &t.tls).await;
    refused(
        &proxy,
        &["did not agree to HTTP/2 by ALPN: it accepts none of the protocols rampart offered (h2) (alert no_application_protocol)"],
    )
    .await;
    assert_eq!(up.hits(), 0);
}

/// The other way round: an HTTP/1.1 upstream is offered `http/1.1` alone, and a server that
/// speaks only `h2` says so by its alert (rampart never takes `h2` for an HTTP/1.1 pool).
#[tokio::test]
async fn an_http1_upstream_whose_server_speaks_only_h2_is_told_so() {
    let t = Trust::new();
    let up = TlsUpstream::with_config(t.server(&[b"h2"], rustls::DEFAULT_VERSIONS, false)).await;
    let proxy = outbound(up.addr, "http1", &t.tls).await;
    refused(
        &proxy,
        &["did not agree to HTTP/1.1 by ALPN: it accepts none of the protocols rampart offered (http/1.1) (alert no_application_protocol)"],
    )
    .await;
    assert_eq!(up.hits(), 0);
}

/// A plaintext HTTP server behind `tls` answers the hello with an HTTP/1.1 400: said as not
/// TLS, where rustls says "received corrupt message of type InvalidContentType".
#[tokio::test]
async fn a_plaintext_server_on_a_tls_upstream_is_said_to_be_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Trust::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = tcp.read(&mut buf).await;
                let answer =
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = tcp.write_all(answer).await;
            });
        }
    });
    let proxy = outbound(addr, "http1", &t.tls).await;
    refused(
        &proxy,
        &["the server's answer to rampart's hello is not TLS (a plaintext server?)"],
    )
    .await;
    server.abort();
}
