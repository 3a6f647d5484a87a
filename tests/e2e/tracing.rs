//! OpenTelemetry tracing (SPEC §12) through real sockets: a receiver started by the test
//! decodes what rampart exports over OTLP/HTTP, and the sample service shows the
//! `traceparent` each try carried.
//!
//! Checked: a client's sampled trace is continued (SERVER span under the client's span, CLIENT
//! span under it, the upstream told the CLIENT span); every try of a retried request has its
//! span; a refusal is an event with its reason and has no try span; an unsampled trace exports
//! nothing and still reaches the upstream; http/json; a reload moves the export; a dead or
//! silent collector never slows or fails a request.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::time::Instant;

use crate::support::conn::reset;
use crate::support::otlp::{attr, hex, Collector};
use crate::support::proxy::ProxyBuilder;
use crate::support::{http, metric_value, metrics, sample, Closed, Proxy, Silent, Stalled};

/// `$OTLP` is the collector's address, `$SAMPLE` the head sampling ratio.
const TRACED: &str = r#"
version: 1
admin: { listen: $ADMIN }
tracing:
  otlp: { endpoint: "http://$OTLP", protocol: $PROTOCOL, flush_every: 20ms, timeout: 300ms }
  sample: $SAMPLE
  service_name: edge-proxy
tenants:
  from: [ { header: x-tenant-id } ]
  fallback: anonymous
upstreams:
  app: { endpoints: [$APP] }
policies:
  limited:
    rate_limit:
      per_tenant: { rate: 1/min, burst: 1 }
  retrying:
    retry:
      attempts: 3
      on: [503]
      backoff: { base: 1ms, max: 5ms }
      budget: { ratio: 100%, min_per_second: 100 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - name: limited
        match: { path_prefix: /bytes }
        upstream: app
        policy: limited
      - name: flaky
        match: { path_prefix: /fail-first }
        upstream: app
        policy: retrying
      - upstream: app
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

struct Traced {
    proxy: Proxy,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn traced(app: SocketAddr, otlp: SocketAddr, sample: &str, protocol: &str) -> Traced {
    traced_by(TRACED, app, otlp, sample, protocol).await
}

/// [`traced`] with `config` in place of [`TRACED`].
async fn traced_by(
    config: &str,
    app: SocketAddr,
    otlp: SocketAddr,
    sample: &str,
    protocol: &str,
) -> Traced {
    logged(
        Proxy::builder(config)
            .var("APP", app)
            .var("OTLP", otlp)
            .var("SAMPLE", sample)
            .var("PROTOCOL", protocol),
    )
    .await
}

/// `builder`'s rampart with its access log (`$LOG`) in a directory of its own.
async fn logged(builder: ProxyBuilder) -> Traced {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let proxy = builder.var("LOG", log.display()).spawn().await;
    Traced {
        proxy,
        log,
        _dir: dir,
    }
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `rampart_trace_spans_exported_total` of the proxy whose admin listener is `admin`.
async fn exported(admin: SocketAddr) -> f64 {
    let text = metrics(admin).await;
    metric_value(&text, "rampart_trace_spans_exported_total", &[]).unwrap_or(0.0)
}

/// `rampart_trace_spans_dropped_total{reason="export_failed"}` of that proxy.
async fn export_failed(admin: SocketAddr) -> f64 {
    dropped(admin, "export_failed").await
}

/// `rampart_trace_spans_dropped_total{reason}` of that proxy.
async fn dropped(admin: SocketAddr, reason: &str) -> f64 {
    let text = metrics(admin).await;
    let labels = [("reason", reason)];
    metric_value(&text, "rampart_trace_spans_dropped_total", &labels).unwrap_or(0.0)
}

fn kind(s: &Span) -> SpanKind {
    SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified)
}

fn one_of(spans: &[Span], k: SpanKind) -> Span {
    let of: Vec<&Span> = spans.iter().filter(|s| kind(s) == k).collect();
    assert_eq!(of.len(), 1, "one {k:?} span expected: {spans:#?}");
    of[0].clone()
}

/// `(trace id, parent id, flags)` of the `traceparent` the sample service received.
fn received_traceparent(rsp: &http::Resp) -> (String, String, String) {
    let tp = rsp.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {}", rsp.text()))
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_client_trace_is_continued_through_the_try() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let t = traced(app.addr(), otlp.addr(), "0%", "http/protobuf").await;
    let addr = t.proxy.listener("inbound");
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let headers = [
        ("traceparent", tp.as_str()),
        ("tracestate", "vendor=abc"),
        ("x-tenant-id", "acme"),
        ("host", "svc.example:8080"),
    ];
    let rsp = http::get(addr, "/headers?x=1", &headers).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eventually!(otlp.trace(TRACE).len() >= 2, "{:#?}", otlp.spans());
    let spans = otlp.trace(TRACE);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one_of(&spans, SpanKind::Server);
    let client = one_of(&spans, SpanKind::Client);

    // The SERVER span continues the client's trace under the client's span.
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(server.span_id.len(), 8);
    assert_ne!(hex(&server.span_id), CLIENT_SPAN);
    assert_eq!(server.flags & 0x301, 0x301, "sampled, remote parent");
    // The CLIENT span is the server span's child, and the upstream was told it.
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.flags & 0x301, 0x101, "sampled, local parent");
    // The client's tracestate travels with the continued context: in both spans, as to the
    // upstream.
    assert_eq!(server.trace_state, "vendor=abc", "{server:#?}");
    assert_eq!(client.trace_state, "vendor=abc", "{client:#?}");
    let (trace, parent, flags) = received_traceparent(&rsp);
    assert_eq!(trace, TRACE);
    assert_eq!(parent, hex(&client.span_id));
    assert_eq!(flags, "01");
    assert_eq!(
        rsp.json()["headers"]["tracestate"],
        "vendor=abc",
        "tracestate passes with its traceparent"
    );
    // Times nest: the try runs inside the request.
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert!(client.start_time_unix_nano < client.end_time_unix_nano);

    // SPEC §12 attributes.
    let s = |k: &str| attr(&server.attributes, k);
    assert_eq!(s("http.request.method").as_deref(), Some("GET"));
    assert_eq!(s("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(s("server.address").as_deref(), Some("svc.example"));
    assert_eq!(s("server.port").as_deref(), Some("8080"));
    assert_eq!(s("url.path").as_deref(), Some("/headers"));
    assert_eq!(s("rampart.tenant").as_deref(), Some("acme"));
    assert_eq!(s("rampart.route").as_deref(), Some("app"));
    assert_eq!(s("rampart.upstream").as_deref(), Some("app"));
    assert_eq!(s("rampart.endpoint"), Some(app.addr().to_string()));
    assert_eq!(s("rampart.try").as_deref(), Some("1"));
    assert_eq!(s("rampart.listener").as_deref(), Some("inbound"));
    assert_eq!(s("rampart.reason"), None);
    assert_eq!(server.name, "GET app");
    let c = |k: &str| attr(&client.attributes, k);
    assert_eq!(c("http.request.method").as_deref(), Some("GET"));
    assert_eq!(c("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(c("server.address"), Some(app.addr().ip().to_string()));
    assert_eq!(c("server.port"), Some(app.addr().port().to_string()));
    assert_eq!(c("rampart.upstream").as_deref(), Some("app"));
    assert_eq!(c("rampart.endpoint"), Some(app.addr().to_string()));
    assert_eq!(c("rampart.try").as_deref(), Some("1"));
    assert_eq!(client.name, "GET app");
    assert_eq!(otlp.spans()[0].service_name, "edge-proxy");
    assert_eq!(otlp.spans()[0].content_type, "application/x-protobuf");

    // The access log names the same trace.
    assert_eventually!(!log_lines(&t.log).is_empty());
    assert_eq!(log_lines(&t.log)[0]["trace_id"], TRACE);

    // A tracestate past W3C's caps (300 members, about 5 KB; 32 and 512 characters are the
    // most), or not a list of key=value, is kept out of the spans, as OpenTelemetry SDKs drop
    // it; the upstream still gets the client's lines as sent. Before, it was in both spans whole.
    let many: Vec<String> = (0..300).map(|i| format!("k{i}=value{i}")).collect();
    let oversized = many.join(",");
    for (trace, state) in [
        ("0af7651916cd43dd8448eb211c80319c", oversized.as_str()),
        ("0af7651916cd43dd8448eb211c80319d", "===,,\"<script>"),
    ] {
        let tp = format!("00-{trace}-{CLIENT_SPAN}-01");
        let sent = [("traceparent", tp.as_str()), ("tracestate", state)];
        let rsp = http::get(addr, "/headers", &sent).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert_eq!(
            rsp.json()["headers"]["tracestate"],
            state,
            "passed on as sent"
        );
        assert_eventually!(otlp.trace(trace).len() >= 2, "{:#?}", otlp.spans());
        for span in otlp.trace(trace) {
            assert_eq!(span.trace_state, "", "{state}: {span:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_try_of_a_retried_request_has_its_span() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let t = traced(app.addr(), otlp.addr(), "100%", "http/protobuf").await;
    let addr = t.proxy.listener("inbound");
    let rsp = http::get(addr, "/fail-first/1?key=spans", &[]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    // A trace rampart started: the access log names it.
    assert_eventually!(!log_lines(&t.log).is_empty());
    let trace = log_lines(&t.log)[0]["trace_id"]
        .as_str()
        .expect("a started trace has an id in the log")
        .to_owned();
    assert_eq!(trace.len(), 32);
    assert_eventually!(otlp.trace(&trace).len() >= 3, "{:#?}", otlp.spans());
    let spans = otlp.trace(&trace);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = one_of(&spans, SpanKind::Server);
    assert!(server.parent_span_id.is_empty(), "a new trace's root");
    assert_eq!(
        attr(&server.attributes, "rampart.try").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(&server.attributes, "rampart.route").as_deref(),
        Some("flaky")
    );
    let mut tries: Vec<&Span> = spans
        .iter()
        .filter(|s| kind(s) == SpanKind::Client)
        .collect();
    tries.sort_by_key(|s| attr(&s.attributes, "rampart.try"));
    assert_eq!(tries.len(), 2);
    for (i, s) in tries.iter().enumerate() {
        assert_eq!(s.parent_span_id, server.span_id, "try {} is a child", i + 1);
        assert_eq!(
            attr(&s.attributes, "rampart.try"),
            Some((i + 1).to_string())
        );
    }
    let code = |s: &Span| attr(&s.attributes, "http.response.status_code");
    assert_eq!(code(tries[0]).as_deref(), Some("503"));
    assert_eq!(
        attr(&tries[0].attributes, "error.type").as_deref(),
        Some("503")
    );
    assert_eq!(tries[0].status.as_ref().map(|s| s.code), Some(2), "error");
    assert_eq!(code(tries[1]).as_deref(), Some("200"));
    assert_ne!(tries[0].span_id, tries[1].span_id);
    assert!(tries[0].end_time_unix_nano <= tries[1].start_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_an_event_with_its_reason_and_no_try() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let t = traced(app.addr(), otlp.addr(), "100%", "http/protobuf").await;
    let addr = t.proxy.listener("inbound");
    let tenant = [("x-tenant-id", "t1")];
    assert_eq!(http::get(addr, "/bytes/3", &tenant).await.status, 200);
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let refused = http::get(
        addr,
        "/bytes/3",
        &[("x-tenant-id", "t1"), ("traceparent", &tp)],
    )
    .await;
    refused.assert_rampart(429, "rate_limited");
    assert_eventually!(!otlp.trace(TRACE).is_empty(), "{:#?}", otlp.spans());
    // Give a stray try span the time to arrive before saying there is none.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans = otlp.trace(TRACE);
    assert_eq!(spans.len(), 1, "no try, no CLIENT span: {spans:#?}");
    let server = &spans[0];
    assert_eq!(kind(server), SpanKind::Server);
    let a = |k: &str| attr(&server.attributes, k);
    assert_eq!(a("http.response.status_code").as_deref(), Some("429"));
    assert_eq!(a("rampart.reason").as_deref(), Some("rate_limited"));
    assert_eq!(a("rampart.limit").as_deref(), Some("burst"));
    assert_eq!(a("rampart.tenant").as_deref(), Some("t1"));
    assert_eq!(a("rampart.route").as_deref(), Some("limited"));
    assert_eq!(a("rampart.try").as_deref(), Some("0"));
    assert_eq!(server.events.len(), 1, "{server:#?}");
    let e = &server.events[0];
    assert_eq!(e.name, "rampart.refused");
    assert_eq!(
        attr(&e.attributes, "rampart.reason").as_deref(),
        Some("rate_limited")
    );
    assert_eq!(
        attr(&e.attributes, "rampart.limit").as_deref(),
        Some("burst")
    );
    assert!(e.time_unix_nano >= server.start_time_unix_nano);
    assert!(e.time_unix_nano <= server.end_time_unix_nano);
    // A 4xx is the client's: not an error of the server span.
    assert_ne!(server.status.as_ref().map(|s| s.code), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_exports_nothing_and_still_reaches_the_upstream() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let t = traced(app.addr(), otlp.addr(), "0%", "http/json").await;
    let addr = t.proxy.listener("inbound");
    // A trace rampart starts and does not sample: the upstream gets it with flag 00.
    let rsp = http::get(addr, "/headers", &[("tracestate", "orphan=1")]).await;
    let (trace, parent, flags) = received_traceparent(&rsp);
    assert_eq!(flags, "00");
    assert_eq!((trace.len(), parent.len()), (32, 16));
    assert_ne!(trace, "0".repeat(32));
    assert!(
        rsp.json()["headers"]["tracestate"].is_null(),
        "a tracestate without a traceparent goes with the restarted trace: {}",
        rsp.text()
    );
    assert_eventually!(!log_lines(&t.log).is_empty());
    assert_eq!(log_lines(&t.log)[0]["trace_id"], trace.as_str());
    // A client's unsampled trace passes through as it came.
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-00");
    let rsp = http::get(addr, "/headers", &[("traceparent", &tp)]).await;
    assert_eq!(rsp.json()["headers"]["traceparent"], tp.as_str());
    // A sampled one is followed whatever `sample` says; it arrives after anything sent
    // before it, so nothing else having arrived means nothing else was sent.
    let sampled = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(
        http::get(addr, "/ok", &[("traceparent", &sampled)])
            .await
            .status,
        200
    );
    assert_eventually!(otlp.trace(TRACE).len() >= 2, "{:#?}", otlp.spans());
    let all = otlp.spans();
    assert_eq!(all.len(), 2, "only the sampled trace: {all:#?}");
    assert!(all.iter().all(|g| g.content_type == "application/json"));
    let server = one_of(&otlp.trace(TRACE), SpanKind::Server);
    assert_eq!(
        hex(&server.parent_span_id),
        CLIENT_SPAN,
        "JSON ids decode as hex"
    );
    // The collector keeps the spans before it answers; rampart counts them after.
    let admin = t.proxy.admin();
    assert_eventually!(exported(admin).await == 2.0, "{}", exported(admin).await);
}

/// OTLP over gRPC (`protocol: grpc`, the collector's `:4317`): the spans arrive as one
/// length-prefixed message of the trace service's `Export` over HTTP/2, are counted exported
/// when the collector's trailers say `grpc-status: 0`, and dropped (counted, logged) when they
/// name an error, even though the HTTP status is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_and_its_status_decides_the_count() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let t = traced(app.addr(), otlp.addr(), "100%", "grpc").await;
    let addr = t.proxy.listener("inbound");
    let admin = t.proxy.admin();
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eventually!(otlp.spans().len() >= 2, "{:#?}", otlp.spans());
    let got = otlp.spans();
    assert!(
        got.iter()
            .all(|g| g.content_type == "application/grpc" && g.service_name == "edge-proxy"),
        "{got:#?}"
    );
    let server = one_of(
        &got.iter().map(|g| g.span.clone()).collect::<Vec<_>>(),
        SpanKind::Server,
    );
    assert_eq!(
        attr(&server.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(otlp.grpc_te() >= 1, "gRPC asks for te: trailers");
    assert_eventually!(exported(admin).await == 2.0);

    // The collector refuses (grpc-status 14 in its trailers, HTTP 200): dropped, not exported.
    otlp.answer_grpc_status(Some(14));
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eventually!(export_failed(admin).await == 2.0);
    assert_eq!(exported(admin).await, 2.0);
    assert!(
        t.proxy.log().contains("grpc-status 14: test says no"),
        "{}",
        t.proxy.log()
    );
    // A collector that says nothing of the outcome (HTTP 200, no grpc-status anywhere) has not
    // accepted the spans either.
    otlp.answer_grpc_status(None);
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eventually!(export_failed(admin).await == 4.0);
    assert_eq!(exported(admin).await, 2.0);
}

/// An `https://` collector, over HTTP/1.1 and over gRPC (ALPN h2): verified against `ca`, the
/// spans arrive. Without the `ca` (the system's roots cannot vouch for a self-signed certificate),
/// nothing is sent in clear instead: every export fails and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_is_verified_against_its_ca() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (otlp, ca) = Collector::start_tls(dir.path()).await;
    let https = format!("endpoint: \"https://localhost:{}\"", otlp.addr().port());
    let trusted = TRACED.replace(
        "endpoint: \"http://$OTLP\"",
        &format!("{https}, ca: {}", ca.display()),
    );
    for (protocol, content_type) in [
        ("http/protobuf", "application/x-protobuf"),
        ("grpc", "application/grpc"),
    ] {
        let before = otlp.spans().len();
        let t = traced_by(&trusted, app.addr(), otlp.addr(), "100%", protocol).await;
        let addr = t.proxy.listener("inbound");
        assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
        assert_eventually!(
            otlp.spans().len() >= before + 2,
            "{protocol}: {:#?}",
            otlp.spans()
        );
        assert!(
            otlp.spans()[before..]
                .iter()
                .all(|g| g.content_type == content_type),
            "{protocol}"
        );
    }
    let untrusted = TRACED.replace("endpoint: \"http://$OTLP\"", &https);
    let t = traced_by(&untrusted, app.addr(), otlp.addr(), "100%", "http/protobuf").await;
    exports_nothing(&t, &otlp, "an unverified collector gets nothing").await;
}

/// Without `otlp.ca`, an `https://` collector is verified against the system roots: here the
/// bundle the proxy's `SSL_CERT_FILE` names (set on that child only), so the spans arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_without_ca_is_verified_against_the_system_roots() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let (otlp, ca) = Collector::start_tls(dir.path()).await;
    let https = format!("endpoint: \"https://localhost:{}\"", otlp.addr().port());
    let config = TRACED.replace("endpoint: \"http://$OTLP\"", &https);
    let proxy = Proxy::builder(&config)
        .var("APP", app.addr())
        .var("SAMPLE", "100%")
        .var("PROTOCOL", "http/protobuf")
        .var("LOG", log.display())
        .env("SSL_CERT_FILE", ca.display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eventually!(otlp.spans().len() >= 2, "{}", proxy.log());
}

/// A request through `t` is served, but its spans' exports fail (counted as dropped) and none
/// reaches `otlp`.
async fn exports_nothing(t: &Traced, otlp: &Collector, why: &str) {
    let before = otlp.posts();
    assert_eq!(
        http::get(t.proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
    assert_eventually!(export_failed(t.proxy.admin()).await >= 2.0, "{why}");
    assert_eq!(otlp.posts(), before, "{why}: nothing reached it");
}

/// A collector that asks for a client certificate (mutual TLS) gets nothing from an exporter
/// without one, and every export from one configured with `otlp.cert` and `otlp.key`, over
/// HTTP and over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_asks_for_a_client_certificate_is_shown_ours() {
    use crate::support::tls::{Ca, Pki};
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let clients = Ca::new("collector clients");
    let pki = Pki::new();
    let (cert, key) = pki.pair("exporter", &clients.client("rampart", None));
    let (otlp, ca) = Collector::start_tls_asking(dir.path(), Some(&clients.pem)).await;
    let https = format!(
        "endpoint: \"https://localhost:{}\", ca: {}",
        otlp.addr().port(),
        ca.display()
    );
    let anonymous = TRACED.replace("endpoint: \"http://$OTLP\"", &https);
    let t = traced_by(&anonymous, app.addr(), otlp.addr(), "100%", "http/protobuf").await;
    exports_nothing(&t, &otlp, "an exporter without a certificate is refused").await;
    drop(t);

    let shown = TRACED.replace(
        "endpoint: \"http://$OTLP\"",
        &format!("{https}, cert: {}, key: {}", cert.display(), key.display()),
    );
    for protocol in ["http/protobuf", "grpc"] {
        let before = otlp.spans().len();
        let t = traced_by(&shown, app.addr(), otlp.addr(), "100%", protocol).await;
        assert_eq!(
            http::get(t.proxy.listener("inbound"), "/ok", &[])
                .await
                .status,
            200
        );
        assert_eventually!(
            otlp.spans().len() >= before + 2,
            "{protocol}: the spans arrive over mutual TLS; log:\n{}",
            t.proxy.log()
        );
        assert_eq!(export_failed(t.proxy.admin()).await, 0.0, "{protocol}");
    }
}

/// `otlp.headers` go with every export, over HTTP and over gRPC; `/config` names them and
/// hides their values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_headers_go_with_every_export_and_stay_off_config() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let keyed = TRACED.replace(
        "timeout: 300ms }",
        "timeout: 300ms, headers: { Authorization: \"Bearer s3cret\" } }",
    );
    for protocol in ["http/protobuf", "grpc"] {
        let before = otlp.posts();
        let t = traced_by(&keyed, app.addr(), otlp.addr(), "100%", protocol).await;
        assert_eq!(
            http::get(t.proxy.listener("inbound"), "/ok", &[])
                .await
                .status,
            200
        );
        assert_eventually!(otlp.posts() > before, "{protocol}");
        let seen = otlp.authorization();
        assert!(
            seen[before..]
                .iter()
                .all(|a| a.as_deref() == Some("Bearer s3cret")),
            "{protocol}: {seen:?}"
        );
        let shown = http::get(t.proxy.admin(), "/config", &[]).await.text();
        assert!(shown.contains("\"Authorization\":\"***\""), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

/// `compression: gzip` over HTTP (the body, `content-encoding`) and over gRPC (the message,
/// `grpc-encoding` and its flag): the collector decodes the same spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_exports_decode_to_the_same_spans() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let gzipped = TRACED.replace("timeout: 300ms }", "timeout: 300ms, compression: gzip }");
    for protocol in ["http/protobuf", "http/json", "grpc"] {
        let (posts, spans) = (otlp.posts(), otlp.spans().len());
        let t = traced_by(&gzipped, app.addr(), otlp.addr(), "100%", protocol).await;
        assert_eq!(
            http::get(t.proxy.listener("inbound"), "/ok", &[])
                .await
                .status,
            200
        );
        assert_eventually!(otlp.spans().len() >= spans + 2, "{protocol}");
        assert_eq!(
            otlp.gzipped(),
            otlp.posts(),
            "{protocol}: every export gzipped"
        );
        assert!(otlp.posts() > posts);
        assert_eventually!(exported(t.proxy.admin()).await == 2.0, "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_export_to_the_new_collector() {
    let app = sample().await;
    let first = Collector::start().await;
    let second = Collector::start().await;
    let mut t = traced(app.addr(), first.addr(), "100%", "http/protobuf").await;
    let addr = t.proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eventually!(first.spans().len() >= 2, "{:#?}", first.spans());
    let moved = TRACED.replace("$OTLP", &second.addr().to_string());
    t.proxy.rewrite_config(&moved);
    let rsp = http::post(t.proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let before = first.spans().len();
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert_eventually!(second.spans().len() >= 2, "{:#?}", second.spans());
    assert_eq!(
        first.spans().len(),
        before,
        "nothing more to the old collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_collector_never_slows_or_fails_requests() {
    let app = sample().await;
    // A port nobody listens on, and one that accepts and never answers.
    let dead = Closed::new();
    let silent = Silent::new().await;
    for otlp in [dead.addr(), silent.addr()] {
        let t = traced(app.addr(), otlp, "100%", "http/protobuf").await;
        let addr = t.proxy.listener("inbound");
        let started = Instant::now();
        for i in 0..200 {
            let rsp = http::get(addr, &format!("/ok?i={i}"), &[]).await;
            assert_eq!(rsp.status, 200, "{}", rsp.text());
        }
        let took = started.elapsed();
        // 200 requests over loopback take well under a second here; exports wait 300 ms each.
        assert!(
            took < Duration::from_secs(10),
            "200 requests took {took:?} with the collector at {otlp}"
        );
        assert_eventually!(
            export_failed(t.proxy.admin()).await > 0.0,
            "exports to {otlp} fail and are counted"
        );
        assert!(
            t.proxy.log().contains("span export failed"),
            "{}",
            t.proxy.log()
        );
    }
}

/// The export queue is held to a byte budget (8 MiB), not only to a count of spans: a SERVER
/// span keeps the request's path, which a client chooses (up to `max_header_bytes`), and a
/// client's `traceparent` with flag 01 has its request sampled whatever `sample` says. With
/// the collector hung (it accepts and never answers; exports wait `timeout`, a minute), 400
/// sampled requests with 30,000-byte paths would hold 12 MB; only 8 MiB of them may wait, so
/// at least the rest is dropped and counted `queue_full`. Before, nothing was dropped until
/// 8192 spans (about 240 MiB of such paths) were queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_queue_holds_a_bounded_number_of_bytes() {
    const REQUESTS: usize = 400;
    const PATH: usize = 30_000;
    const BUDGET: usize = 8 << 20;
    let app = sample().await;
    let hung = Silent::new().await;
    let config = TRACED.replace("timeout: 300ms", "timeout: 60s");
    let t = traced_by(&config, app.addr(), hung.addr(), "0%", "http/protobuf").await;
    let addr = t.proxy.listener("inbound");
    let path = format!("/{}", "p".repeat(PATH - 1));
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    for _ in 0..REQUESTS {
        let rsp = http::get(addr, &path, &[("traceparent", &tp)]).await;
        assert_eq!(
            rsp.header("x-rampart-reason"),
            None,
            "the upstream answers: {rsp:?}"
        );
    }
    // Each SERVER span weighs more than its path: no more than BUDGET / PATH of them fit.
    let least = (REQUESTS - BUDGET / PATH) as f64;
    let full = dropped(t.proxy.admin(), "queue_full").await;
    assert!(
        full >= least,
        "{full} spans dropped; at least {least} must be, the queue holding at most {BUDGET} bytes"
    );
    assert_eq!(dropped(t.proxy.admin(), "export_failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_at_shutdown_are_sent_before_exit() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A batch would wait an hour: only the shutdown flush can send it.
    let mut proxy = Proxy::builder(&TRACED.replace("flush_every: 20ms", "flush_every: 1h"))
        .var("APP", app.addr())
        .var("OTLP", otlp.addr())
        .var("SAMPLE", "100%")
        .var("PROTOCOL", "http/protobuf")
        .var("LOG", dir.path().join("access.jsonl").display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(otlp.spans().is_empty(), "nothing is due yet");
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", proxy.log());
    assert_eq!(otlp.spans().len(), 2, "{:#?}", otlp.spans());
}

/// A request begun before a reload that moved the export reports to the exporter it began
/// with; at exit that exporter sends what it holds too, not only the one of the config in
/// force. Before, only the latter was flushed, and the spans the older one still held were
/// lost with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_held_by_an_exporter_a_reload_replaced_are_sent_before_exit() {
    let app = sample().await;
    let (first, second) = (Collector::start().await, Collector::start().await);
    // A batch would wait an hour: only a flush can send it.
    let lazy = TRACED.replace("flush_every: 20ms", "flush_every: 1h");
    let mut t = traced_by(&lazy, app.addr(), first.addr(), "100%", "http/protobuf").await;
    let addr = t.proxy.listener("inbound");
    let slow = tokio::spawn(async move { http::get(addr, "/slow?ms=1000", &[]).await });
    assert_eventually!(app.hits() == 1);
    t.proxy
        .rewrite_config(&lazy.replace("$OTLP", &second.addr().to_string()));
    let rsp = http::post(t.proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    t.proxy.signal("TERM");
    let rsp = slow.await.expect("the slow request");
    assert_eq!(rsp.status, 200, "drained, not cut: {}", rsp.text());
    let status = t.proxy.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", t.proxy.log());
    assert_eq!(first.spans().len(), 2, "{:#?}", first.spans());
    assert!(second.spans().is_empty(), "{:#?}", second.spans());
}

/// The endpoint's `user:password@` goes with every export as HTTP Basic `authorization`, over
/// HTTP and gRPC (before, it was dropped unsent); the password is in no log line, no error and
/// not in `/config`, even when an export fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_userinfo_is_sent_as_basic_credentials() {
    let app = sample().await;
    let otlp = Collector::start().await;
    let keyed = TRACED.replace("http://$OTLP", "http://edge:otlp%21pass@$OTLP");
    for protocol in ["http/protobuf", "grpc"] {
        let before = otlp.posts();
        let t = traced_by(&keyed, app.addr(), otlp.addr(), "100%", protocol).await;
        let addr = t.proxy.listener("inbound");
        assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
        assert_eventually!(otlp.posts() > before, "{protocol}");
        let seen = otlp.authorization();
        // base64("edge:otlp!pass")
        let basic = "Basic ZWRnZTpvdGxwIXBhc3M=";
        assert!(
            seen[before..].iter().all(|a| a.as_deref() == Some(basic)),
            "{protocol}: {seen:?}"
        );
        // A failing export: its warning names the endpoint, without the password.
        otlp.answer_grpc_status(Some(7));
        let failed = export_failed(t.proxy.admin()).await;
        assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
        if protocol == "grpc" {
            assert_eventually!(export_failed(t.proxy.admin()).await > failed, "{protocol}");
        }
        otlp.answer_grpc_status(Some(0));
        let shown = http::get(t.proxy.admin(), "/config", &[]).await.text();
        assert!(shown.contains("edge:***@"), "{shown}");
        for text in [shown, t.proxy.log()] {
            assert!(
                !text.contains("otlp%21pass") && !text.contains("otlp!pass"),
                "{text}"
            );
            assert!(!text.contains("ZWRnZTpvdGxwIXBhc3M"), "{text}");
        }
    }
}

/// An outbound listener that tunnels `app.example` to `$APP`, `dead.example` to a closed port
/// and `slow.example` to `$SLOW`, where a connect is never completed; its access log at `$LOG`.
const TUNNELLED: &str = r#"
version: 1
admin: { listen: $ADMIN }
tracing:
  otlp: { endpoint: "http://$OTLP", protocol: http/protobuf, flush_every: 20ms, timeout: 300ms }
  sample: 0%
upstreams:
  app: { endpoints: [$APP] }
  dead: { endpoints: [$DEAD], connect_timeout: 1s }
  slow: { endpoints: [$SLOW], connect_timeout: 10s }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    access_log: { to: $LOG }
    routes:
      - { match: { host: app.example }, upstream: app }
      - { match: { host: dead.example }, upstream: dead }
      - { match: { host: slow.example }, upstream: slow }
"#;

/// rampart on [`TUNNELLED`], its spans going to `otlp`.
async fn tunnelled(app: SocketAddr, otlp: SocketAddr, slow: &Stalled) -> Traced {
    logged(
        Proxy::builder(TUNNELLED)
            .var("APP", app)
            .var("OTLP", otlp)
            .closed("DEAD")
            .var("SLOW", slow.addr()),
    )
    .await
}

/// A CONNECT's one try, its connect, has its CLIENT span under the request's SERVER span, as
/// a request's try has: `CONNECT app`, the endpoint it reached, status 200; a refused connect's
/// span is an error (`connect_error`) under the 502's. The SERVER span names the target and
/// ends with the tunnel. Before, a CONNECT exported its SERVER span alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_has_its_client_span_under_the_tunnels_server_span() {
    use tokio::io::AsyncWriteExt;
    let app = sample().await;
    let otlp = Collector::start().await;
    let slow = Stalled::new();
    let t = tunnelled(app.addr(), otlp.addr(), &slow).await;
    let addr = t.proxy.listener("outbound");
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "CONNECT app.example:80 HTTP/1.1\r\nHost: app.example:80\r\ntraceparent: {tp}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let head = crate::upgrade::read_head(&mut tcp)
        .await
        .expect("the 200 in time");
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    // The connect's span is sent as it ends; the SERVER span only when the tunnel does.
    assert_eventually!(!otlp.trace(TRACE).is_empty(), "{:#?}", otlp.spans());
    assert_eq!(kind(&otlp.trace(TRACE)[0]), SpanKind::Client);
    drop(tcp);
    assert_eventually!(otlp.trace(TRACE).len() >= 2, "{:#?}", otlp.spans());
    let spans = otlp.trace(TRACE);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one_of(&spans, SpanKind::Server);
    let client = one_of(&spans, SpanKind::Client);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(client.parent_span_id, server.span_id);
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    let s = |k: &str| attr(&server.attributes, k);
    assert_eq!(server.name, "CONNECT app");
    assert_eq!(s("http.request.method").as_deref(), Some("CONNECT"));
    assert_eq!(s("server.address").as_deref(), Some("app.example"));
    assert_eq!(s("server.port").as_deref(), Some("80"));
    assert_eq!(s("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(s("rampart.try").as_deref(), Some("1"));
    let c = |k: &str| attr(&client.attributes, k);
    assert_eq!(client.name, "CONNECT app");
    assert_eq!(c("http.request.method").as_deref(), Some("CONNECT"));
    assert_eq!(c("server.address"), Some(app.addr().ip().to_string()));
    assert_eq!(c("server.port"), Some(app.addr().port().to_string()));
    assert_eq!(c("rampart.upstream").as_deref(), Some("app"));
    assert_eq!(c("rampart.endpoint"), Some(app.addr().to_string()));
    assert_eq!(c("rampart.try").as_deref(), Some("1"));
    assert_eq!(c("http.response.status_code").as_deref(), Some("200"));
    assert_ne!(client.status.as_ref().map(|s| s.code), Some(2), "no error");

    // A refused connect: the span says why, and is an error.
    const DEAD_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4737";
    let tp = format!("00-{DEAD_TRACE}-{CLIENT_SPAN}-01");
    let req = format!(
        "CONNECT dead.example:443 HTTP/1.1\r\nHost: dead.example:443\r\ntraceparent: {tp}\r\n\r\n"
    );
    let rsp = crate::support::raw::exchange(addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(rsp.status(), Some(502), "{}", rsp.text());
    assert_eventually!(otlp.trace(DEAD_TRACE).len() >= 2, "{:#?}", otlp.spans());
    let spans = otlp.trace(DEAD_TRACE);
    let server = one_of(&spans, SpanKind::Server);
    let client = one_of(&spans, SpanKind::Client);
    assert_eq!(client.parent_span_id, server.span_id);
    let c = |k: &str| attr(&client.attributes, k);
    assert_eq!(c("error.type").as_deref(), Some("connect_error"));
    assert_eq!(c("rampart.reason").as_deref(), Some("upstream_unavailable"));
    assert_eq!(client.status.as_ref().map(|s| s.code), Some(2), "error");
    assert_eq!(
        attr(&server.attributes, "rampart.reason").as_deref(),
        Some("upstream_unavailable")
    );
}

/// A CONNECT whose client goes away while rampart is still connecting to the endpoint ends as
/// a request whose client goes mid-try does: the connect's CLIENT span is sent, an error
/// (`error.type` `cancelled`) under the SERVER span of the 499; the access log line is the
/// 499's with its try and the try's time; the try is counted abandoned (`client_gone`), not
/// among the upstream's requests. Before, the connect's span was never sent, the line had no
/// try time and nothing counted the try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_whose_client_goes_while_connecting_sends_a_cancelled_span() {
    use tokio::io::AsyncWriteExt;
    const GONE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4738";
    let app = sample().await;
    let otlp = Collector::start().await;
    let slow = Stalled::new();
    let t = tunnelled(app.addr(), otlp.addr(), &slow).await;
    let tp = format!("00-{GONE_TRACE}-{CLIENT_SPAN}-01");
    let mut tcp = tokio::net::TcpStream::connect(t.proxy.listener("outbound"))
        .await
        .expect("connect");
    let req = format!(
        "CONNECT slow.example:443 HTTP/1.1\r\nHost: slow.example:443\r\ntraceparent: {tp}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    // rampart waits up to 10 s for the connect; the client leaves long before.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reset(tcp);

    assert_eventually!(otlp.trace(GONE_TRACE).len() >= 2, "{:#?}", otlp.spans());
    let spans = otlp.trace(GONE_TRACE);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one_of(&spans, SpanKind::Server);
    let client = one_of(&spans, SpanKind::Client);
    assert_eq!(client.parent_span_id, server.span_id);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(client.name, "CONNECT slow");
    let c = |k: &str| attr(&client.attributes, k);
    assert_eq!(c("error.type").as_deref(), Some("cancelled"));
    assert_eq!(c("rampart.reason"), None);
    assert_eq!(c("rampart.endpoint"), Some(slow.addr().to_string()));
    assert_eq!(c("rampart.try").as_deref(), Some("1"));
    assert_eq!(client.status.as_ref().map(|s| s.code), Some(2), "error");
    let s = |k: &str| attr(&server.attributes, k);
    assert_eq!(s("http.response.status_code").as_deref(), Some("499"));
    assert_eq!(s("rampart.try").as_deref(), Some("1"));

    let lines = crate::support::wait_log_lines(&t.log, 1).await;
    let line = &lines[0];
    assert_eq!(
        (line["method"].as_str(), line["status"].as_u64()),
        (Some("CONNECT"), Some(499)),
        "{line}"
    );
    assert_eq!(line["tries"], 1, "{line}");
    assert_eq!(line["endpoint"], slow.addr().to_string(), "{line}");
    assert!(line["upstream_ms"].is_number(), "{line}");

    let text = metrics(t.proxy.admin()).await;
    let count = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        count("rampart_requests_total", &[("code", "499")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(
            "rampart_upstream_tries_abandoned_total",
            &[("upstream", "slow"), ("cause", "client_gone")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count("rampart_upstream_requests_total", &[("upstream", "slow")]),
        None,
        "no try is the upstream's to answer for: {text}"
    );
}
