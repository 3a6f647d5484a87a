//! The trace decision, the `traceparent` written, OTLP encoding and the exporter's bounds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::encode;
use super::export::{basic_auth, QUEUE, QUEUE_BYTES};
use super::span::{Event, Kind, SpanRecord, Val};
use super::{Exporters, TraceParent, Tracer, TRACEPARENT, TRACESTATE};
use crate::config::file::{Otlp, OtlpProtocol, Tracing};
use crate::config::units::{Dur, Ratio};
use crate::metrics::Metrics;

const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn cfg(sample: f64, endpoint: &str) -> Tracing {
    Tracing {
        otlp: Otlp {
            endpoint: endpoint.into(),
            protocol: OtlpProtocol::HttpProtobuf,
            // Long enough that no export happens while a test looks.
            flush_every: Dur::from_secs(3600),
            timeout: Dur::from_secs(1),
            ca: None,
            cert: None,
            key: None,
            compression: Default::default(),
            headers: Default::default(),
        },
        sample: Ratio(sample),
        service_name: "svc".into(),
    }
}

fn tracer(sample: f64) -> (Tracer, Metrics) {
    let m = Metrics::register();
    let t = Tracer::build(
        &cfg(sample, "http://127.0.0.1:9"),
        None,
        &Exporters::new(&m),
        None,
    );
    (t, m)
}

fn headers(pairs: &[(&str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_static(v),
        );
    }
    h
}

/// What a hostile client can put in `traceparent`: each is refused (a new trace is started,
/// never a panic, never an id taken from garbage), and a later version's extension is read.
#[test]
fn a_hostile_traceparent_is_refused_not_trusted() {
    let refused = [
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", // 54 bytes
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 must be 55 bytes
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // uppercase hex
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", // no dashes
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", // not hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t", // trailing junk
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // later version, no dash
    ];
    for v in refused {
        let h = HeaderValue::from_str(v).expect("a valid header value");
        assert!(TraceParent::parse(&h).is_none(), "{v:?} must be refused");
    }
    let long = format!("{GIVEN}{}", "-f".repeat(4000));
    let h = HeaderValue::from_str(&long.replacen("00", "01", 1)).expect("valid header");
    let tp = TraceParent::parse(&h).expect("a later version may append fields");
    assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    // Non-UTF-8 bytes.
    let h = HeaderValue::from_bytes(&[0xff; 55]).expect("opaque bytes are a header value");
    assert!(TraceParent::parse(&h).is_none());
}

#[test]
fn a_traceparent_is_written_as_it_is_read() {
    let tp = TraceParent::parse(&HeaderValue::from_static(GIVEN)).expect("valid");
    assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
    assert!(tp.sampled());
    assert_eq!(tp.to_header(), GIVEN);
    let small = TraceParent {
        trace_id: 1,
        parent_id: 2,
        flags: 0,
    };
    assert_eq!(
        small.to_header(),
        "00-00000000000000000000000000000001-0000000000000002-00"
    );
}

#[tokio::test]
async fn a_clients_trace_decides_whatever_the_sample_says() {
    let (never, _m) = tracer(0.0);
    let mut h = headers(&[("traceparent", GIVEN), ("tracestate", "v=1")]);
    let t = never.start(&mut h);
    assert!(t.sampled, "a sampled parent is followed");
    assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(t.remote_parent, Some(0x00f067aa0ba902b7));
    assert_ne!(t.span_id, 0);
    assert_eq!(h[TRACEPARENT], GIVEN, "each try writes its own later");
    assert_eq!(h[TRACESTATE], "v=1");

    let (always, _m) = tracer(1.0);
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut h = headers(&[("traceparent", unsampled)]);
    let t = always.start(&mut h);
    assert!(!t.sampled, "an unsampled parent is followed too");
    assert_eq!(h[TRACEPARENT], unsampled, "passed on as it came");
}

/// A span's `tracestate` is the client's list; several lines are one list, in order, and
/// empty or non-text lines add nothing.
#[test]
fn a_spans_tracestate_is_the_clients_lines_as_one_list() {
    use super::span::trace_state;
    let mut h = HeaderMap::new();
    assert_eq!(trace_state(&h), None);
    h.append(TRACESTATE, HeaderValue::from_static("a=1"));
    assert_eq!(trace_state(&h).as_deref(), Some("a=1"));
    h.append(TRACESTATE, HeaderValue::from_static(""));
    h.append(
        TRACESTATE,
        HeaderValue::from_bytes(b"\xff=1").expect("opaque"),
    );
    h.append(TRACESTATE, HeaderValue::from_static("b=2,c=3"));
    assert_eq!(trace_state(&h).as_deref(), Some("a=1,b=2,c=3"));
    // One invalid line makes the list invalid: the span has none.
    h.append(TRACESTATE, HeaderValue::from_static("===,,\"<script>"));
    assert_eq!(trace_state(&h), None);
    // 300 members on one line, or spread over lines, are past the cap.
    let many: Vec<String> = (0..300).map(|i| format!("k{i}=v{i}")).collect();
    let mut h = HeaderMap::new();
    h.append(TRACESTATE, many.join(",").parse().expect("value"));
    assert_eq!(trace_state(&h), None);
    let mut h = HeaderMap::new();
    for m in &many {
        h.append(TRACESTATE, m.parse().expect("value"));
    }
    assert_eq!(trace_state(&h), None);
}

/// W3C trace context §3.3.1.3: what a valid `tracestate` is.
#[test]
fn a_tracestate_is_valid_only_as_w3c_writes_it() {
    use super::span::valid_trace_state;
    let members = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for ok in [
        "a=1",
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "a=1 , ,b=2",
        "t3n4nt@sys-1=x y",
        "a_b-c*d/e=!~",
        "0tenant@vendor=1",
        &members(32),
        &format!("a={}", "v".repeat(256)),
        &format!("{}=1", "k".repeat(256)),
    ] {
        assert!(valid_trace_state(ok), "{ok}");
    }
    let long = format!("a={},b={}", "v".repeat(256), "w".repeat(254));
    assert_eq!(long.len(), 515);
    for bad in [
        "===,,\"<script>",
        "a",
        "a=",
        "=1",
        "A=1",
        "1a=1",
        "a=1,a=2",
        "a=b=c",
        "a=x\u{7f}",
        "@sys=1",
        "t@=1",
        "t@Sys=1",
        "t@systemnamewaytoolong=1",
        &members(33),
        &long,
        &format!("a={}", "v".repeat(257)),
        &format!("{}=1", "k".repeat(257)),
    ] {
        assert!(!valid_trace_state(bad), "{bad}");
    }
}

/// W3C trace context: a request with two `traceparent` lines has no valid parent, even when
/// each line alone would be one; the trace restarts, and neither line nor the `tracestate`
/// reaches the upstream.
#[tokio::test]
async fn two_traceparents_restart_the_trace() {
    let (never, _m) = tracer(0.0);
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut h = headers(&[("traceparent", GIVEN), ("tracestate", "v=1")]);
    h.append(TRACEPARENT, HeaderValue::from_static(other));
    let t = never.start(&mut h);
    assert_eq!(t.remote_parent, None, "neither line is followed");
    assert_ne!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    let sent: Vec<_> = h.get_all(TRACEPARENT).iter().collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let sent = TraceParent::parse(sent[0]).expect("rampart's own");
    assert_eq!(sent.trace_id, t.trace_id);
    assert!(h.get(TRACESTATE).is_none());
}

#[tokio::test]
async fn a_new_trace_is_sampled_as_configured_and_always_propagated() {
    let (never, _m) = tracer(0.0);
    let mut h = headers(&[("tracestate", "orphan=1")]);
    let t = never.start(&mut h);
    assert!(!t.sampled);
    assert_eq!(t.remote_parent, None);
    let sent = TraceParent::parse(&h[TRACEPARENT]).expect("a valid traceparent for the upstream");
    assert_eq!(
        (sent.trace_id, sent.parent_id, sent.flags),
        (t.trace_id, t.span_id, 0)
    );
    assert!(h.get(TRACESTATE).is_none(), "restarted without its state");

    let (always, _m) = tracer(1.0);
    let mut h = headers(&[("traceparent", "00-garbage")]);
    let t = always.start(&mut h);
    assert!(t.sampled && t.trace_id != 0);
    assert!(
        h.get(TRACEPARENT).is_none(),
        "an invalid one never reaches the upstream"
    );

    let (half, _m) = tracer(0.5);
    let sampled = (0..10_000)
        .filter(|_| half.start(&mut HeaderMap::new()).sampled)
        .count();
    assert!(
        (4_500..=5_500).contains(&sampled),
        "{sampled} of 10000 at 50%"
    );
}

#[tokio::test]
async fn the_exporter_is_kept_across_a_reload_while_its_settings_are() {
    let m = Metrics::register();
    let tm = Exporters::new(&m);
    let first = Tracer::build(&cfg(0.1, "http://127.0.0.1:9"), None, &tm, None);
    let resampled = Tracer::build(&cfg(0.9, "http://127.0.0.1:9"), Some(&first), &tm, None);
    assert!(Arc::ptr_eq(first.exporter(), resampled.exporter()));
    let moved = Tracer::build(
        &cfg(0.9, "http://127.0.0.1:10"),
        Some(&resampled),
        &tm,
        None,
    );
    assert!(!Arc::ptr_eq(first.exporter(), moved.exporter()));
    // An https collector's exporter is started anew, so its ca is read again.
    let roots = crate::tls::SystemRoots::new();
    let tls = crate::tls::client_config_offering(None, None, None, &[], &roots).expect("roots");
    let secure = cfg(0.9, "https://127.0.0.1:10");
    let a = Tracer::build(&secure, Some(&moved), &tm, Some(&tls));
    let b = Tracer::build(&secure, Some(&a), &tm, Some(&tls));
    assert!(!Arc::ptr_eq(a.exporter(), b.exporter()));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let (t, m) = tracer(1.0);
    // The export task cannot run until this test yields: nothing is drained meanwhile.
    for _ in 0..QUEUE + 7 {
        t.exporter().push(Box::new(record()));
    }
    let dropped = m
        .trace_spans_dropped
        .with_label_values(&["queue_full"])
        .get();
    assert_eq!(dropped, 7);
}

/// Spans are held to a byte budget besides their count: spans of 64 KiB paths (a client's to
/// choose) fill it long before the queue's 8192; those beyond are dropped and counted, and
/// the room comes back as queued spans are taken.
#[tokio::test]
async fn heavy_spans_are_dropped_at_the_queues_byte_budget() {
    let (t, m) = tracer(1.0);
    let heavy = || {
        let mut r = record();
        r.attrs.push(("url.path", Val::Owned("p".repeat(64 << 10))));
        Box::new(r)
    };
    let fit = QUEUE_BYTES / heavy().weight();
    assert!(fit < QUEUE / 10, "{fit}");
    for _ in 0..fit + 5 {
        t.exporter().push(heavy());
    }
    let dropped = || {
        m.trace_spans_dropped
            .with_label_values(&["queue_full"])
            .get()
    };
    assert_eq!(dropped(), 5);
    assert_eq!(t.exporter().take_queued().len(), fit);
    t.exporter().push(heavy());
    assert_eq!(dropped(), 5, "room again once taken");
}

/// A try's CLIENT span lies on its request's SERVER span's clock from the instant the try began
/// (the one its `took` is measured from), not from when the span was made: a try that ends as
/// its request ends ends with it, never after. Before, the span's start was a later reading
/// of the clock than its `took`'s, and a CONNECT cancelled with its client was seen ending a
/// few microseconds after its request (a CI run's failure).
#[tokio::test]
async fn a_try_span_ends_on_its_requests_clock() {
    use super::span::{ClientSpan, ServerSpan, TryTarget};
    use crate::policy::outcome::Outcome;
    let (t, _m) = tracer(1.0);
    let mut h = headers(&[]);
    let trace = t.start(&mut h);
    assert!(trace.sampled);
    let req = http::Request::get("/x").body(()).expect("request");
    let now = tokio::time::Instant::now();
    // The request arrived 6 ms ago; its try began 1 ms after it, and its span is made now.
    let mono = now - Duration::from_millis(6);
    let at = mono + Duration::from_millis(1);
    let server = ServerSpan::begin(&trace, t.exporter(), &req, mono, &Arc::from("in"));
    let parent = server.parent(t.exporter()).expect("sampled");
    let span = ClientSpan::begin(parent, &http::Method::GET, 1, at);
    let (up, ep): (Arc<str>, Arc<str>) = (Arc::from("app"), Arc::from("127.0.0.1:1"));
    let to = TryTarget {
        upstream: &up,
        endpoint: &ep,
        host: None,
        addr: "127.0.0.1:1".parse().expect("addr"),
    };
    span.end(to, Outcome::Status(200), now - at);
    drop(server);
    let spans = t.exporter().take_queued();
    assert_eq!(spans.len(), 2);
    let client = spans
        .iter()
        .find(|s| s.kind == Kind::Client)
        .expect("client");
    let server = spans
        .iter()
        .find(|s| s.kind == Kind::Server)
        .expect("server");
    assert_eq!(
        client.start.duration_since(server.start).ok(),
        Some(Duration::from_millis(1))
    );
    assert!(client.end <= server.end, "{client:?} ends after {server:?}");
}

fn record() -> SpanRecord {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    SpanRecord {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
        span_id: 0x1122334455667788,
        parent_id: Some(0x00f067aa0ba902b7),
        remote_parent: true,
        trace_state: Some(Arc::from("vendor=abc")),
        kind: Kind::Server,
        name: "GET app".into(),
        start,
        end: start + Duration::from_millis(3),
        attrs: vec![
            ("http.request.method", Val::Static("GET")),
            ("http.response.status_code", Val::Int(429)),
            ("rampart.tenant", Val::Owned("acme".into())),
            ("rampart.route", Val::Shared(Arc::from("app"))),
        ],
        events: vec![Event {
            name: "rampart.refused",
            at: start + Duration::from_millis(1),
            attrs: vec![("rampart.reason", Val::Static("rate_limited"))],
        }],
        error: None,
    }
}

#[test]
fn spans_encode_as_otlp_protobuf() {
    let msg = encode::request("svc", &[Box::new(record())]);
    let (body, content_type) = encode::body(&msg, OtlpProtocol::HttpProtobuf, false);
    assert_eq!(content_type, "application/x-protobuf");
    let back = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");
    assert_eq!(back, msg);
    let rs = &back.resource_spans[0];
    let service = &rs.resource.as_ref().expect("resource").attributes[0];
    assert_eq!(service.key, "service.name");
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(
        span.trace_id,
        0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
    );
    assert_eq!(span.span_id, 0x1122334455667788u64.to_be_bytes());
    assert_eq!(span.parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
    assert_eq!(span.flags, 0x301, "sampled, parent known remote");
    assert_eq!(span.trace_state, "vendor=abc");
    assert_eq!(span.kind, 2, "SERVER");
    assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_700_000_000_003_000_000);
    assert_eq!(span.attributes.len(), 4);
    assert_eq!(span.events[0].name, "rampart.refused");
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(0), "unset");
}

#[test]
fn spans_encode_as_otlp_json() {
    let mut rec = record();
    rec.error = Some("upstream_unavailable".into());
    let msg = encode::request("svc", &[Box::new(rec)]);
    let (body, content_type) = encode::body(&msg, OtlpProtocol::HttpJson, false);
    assert_eq!(content_type, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    // OTLP/JSON: ids as hex, 64-bit numbers as strings, enums as numbers.
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["spanId"], "1122334455667788");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["traceState"], "vendor=abc");
    assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
    assert_eq!(span["kind"], 2);
    assert_eq!(span["status"]["code"], 2);
    assert_eq!(span["attributes"][1]["value"]["intValue"], "429");
}

#[test]
fn spans_encode_as_one_grpc_message() {
    let msg = encode::request("svc", &[Box::new(record())]);
    let (body, content_type) = encode::body(&msg, OtlpProtocol::Grpc, false);
    assert_eq!(content_type, "application/grpc");
    let proto = msg.encode_to_vec();
    // Not compressed, then the length big-endian, then the message.
    assert_eq!(body[0], 0);
    assert_eq!(body[1..5], (proto.len() as u32).to_be_bytes());
    assert_eq!(body[5..], proto[..]);
}

#[test]
fn a_grpc_export_succeeds_only_on_status_0() {
    use super::export::grpc_outcome;
    assert_eq!(grpc_outcome(&headers(&[("grpc-status", "0")])), Ok(()));
    let refused = grpc_outcome(&headers(&[
        ("grpc-status", "3"),
        ("grpc-message", "bad spans"),
    ]));
    assert_eq!(
        refused,
        Err("the collector answered grpc-status 3: bad spans".to_owned())
    );
    let bare = grpc_outcome(&headers(&[("grpc-status", "14")]));
    assert_eq!(
        bare,
        Err("the collector answered grpc-status 14: (no message)".to_owned())
    );
    // An answer that says nothing of its status is not a success.
    assert!(grpc_outcome(&headers(&[("content-type", "application/grpc")])).is_err());
}

#[test]
fn a_gzip_export_is_the_same_request_compressed() {
    use std::io::Read;
    let gunzip = |b: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("gzip");
        out
    };
    let msg = encode::request("svc", &[Box::new(record())]);
    let (body, content_type) = encode::body(&msg, OtlpProtocol::HttpProtobuf, true);
    assert_eq!(content_type, "application/x-protobuf");
    assert_eq!(gunzip(&body), msg.encode_to_vec());
    let (body, _) = encode::body(&msg, OtlpProtocol::HttpJson, true);
    let back: ExportTraceServiceRequest =
        serde_json::from_slice(&gunzip(&body)).expect("JSON inside");
    assert_eq!(back, msg);
    // gRPC: the message compressed, its flag set, its length that of the compressed bytes.
    let (body, _) = encode::body(&msg, OtlpProtocol::Grpc, true);
    assert_eq!(body[0], 1);
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(len, body.len() - 5);
    assert_eq!(gunzip(&body[5..]), msg.encode_to_vec());
}

/// An endpoint's `user:password@` leaves the URL the client sends to and becomes the HTTP
/// Basic credentials, percent-decoded first; a user alone has an empty password; an endpoint
/// without userinfo is left as it is.
#[test]
fn an_endpoints_userinfo_becomes_basic_credentials() {
    let uri = |s: &str| s.parse::<http::Uri>().expect("uri");
    let (bare, auth) = basic_auth(uri("http://user:p%40ss@127.0.0.1:4318/v1/traces"));
    assert_eq!(bare, uri("http://127.0.0.1:4318/v1/traces"));
    let auth = auth.expect("credentials");
    assert_eq!(auth, "Basic dXNlcjpwQHNz");
    assert!(auth.is_sensitive(), "never indexed by HPACK");
    let (_, auth) = basic_auth(uri("https://token@collector.example/v1/traces"));
    assert_eq!(auth.expect("credentials"), "Basic dG9rZW46");
    let plain = uri("http://127.0.0.1:4318/v1/traces");
    assert_eq!(basic_auth(plain.clone()), (plain, None));
}
