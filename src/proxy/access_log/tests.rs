//! The line format, the trace id and the sampling rule, without threads or sockets.

use std::time::{Duration, UNIX_EPOCH};

use http::HeaderValue;

use super::line::{civil_from_days, write_line};
use super::*;

const FIELDS: [&str; 17] = [
    "time",
    "listener",
    "route",
    "tenant",
    "method",
    "path",
    "status",
    "reason",
    "limit",
    "tries",
    "endpoint",
    "duration_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
    "request_id",
    "trace_id",
];

fn record() -> Record {
    let mut r = Record::placeholder();
    r.time = UNIX_EPOCH + Duration::from_millis(1_764_570_811_123);
    r.listener = Arc::from("inbound");
    r.route = Some(Arc::from("api"));
    r.tenant = Some(TenantId::Fallback(Arc::from("acme")));
    r.method = Method::POST;
    r.uri = "/a/b?secret=1".parse().expect("uri");
    r.status = 429;
    r.reason = Some(HeaderValue::from_static("rate_limited"));
    r.limit = Some(Box::from("burst"));
    r.duration = Duration::from_micros(1500);
    r.request_id = HeaderValue::from_static("id-\"1\"");
    r.trace_id = Some(0x4bf92f3577b34da6a3ce929d0e0e4736);
    r
}

fn line(rec: &Record) -> serde_json::Value {
    let mut buf = Vec::new();
    write_line(&mut buf, rec);
    assert_eq!(buf.last(), Some(&b'\n'), "one line");
    assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
    serde_json::from_slice(&buf).expect("a line is one JSON object")
}

#[test]
fn a_line_has_exactly_the_fields_of_the_spec() {
    let v = line(&record());
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = FIELDS.to_vec();
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(v["time"], "2025-12-01T06:33:31.123Z");
    assert_eq!(v["path"], "/a/b", "no query");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["status"], 429);
    assert_eq!(v["limit"], "burst");
    assert_eq!(v["tries"], 0);
    assert!(v["endpoint"].is_null() && v["upstream_ms"].is_null());
    assert_eq!(v["duration_ms"], 1.5);
    assert_eq!(v["request_id"], "id-\"1\"", "escaped");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[test]
fn an_upstream_answer_names_its_endpoint_and_time() {
    let mut r = record();
    r.reason = None;
    r.limit = None;
    r.tries = 2;
    r.endpoint = Some("127.0.0.1:8081".parse().expect("addr"));
    r.upstream = Some(Duration::from_millis(7));
    r.route = None;
    r.tenant = None;
    r.trace_id = None;
    let v = line(&r);
    assert_eq!(v["reason"], "");
    assert!(v["limit"].is_null() && v["route"].is_null() && v["tenant"].is_null());
    assert_eq!(v["endpoint"], "127.0.0.1:8081");
    assert_eq!(v["upstream_ms"], 7.0);
    assert_eq!(v["tries"], 2);
    assert!(v["trace_id"].is_null());
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(59), (1970, 3, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(20_453), (2025, 12, 31));
    assert_eq!(civil_from_days(20_513), (2026, 3, 1));
}

#[test]
fn only_a_valid_traceparent_gives_a_trace_id() {
    let tp = |s: &'static str| trace_id(&HeaderValue::from_static(s));
    assert_eq!(
        tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some(0x4bf92f3577b34da6a3ce929d0e0e4736)
    );
    assert_eq!(
        tp("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"),
        Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
        "a later version may add fields"
    );
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "garbage",
    ] {
        assert_eq!(tp(bad), None, "{bad}");
    }
}

fn entry(sample_ok: f64) -> Entry {
    let reg = prometheus::IntCounter::new("d", "d").expect("counter");
    let sinks = Sinks::new(reg);
    let cfg = file::AccessLog {
        to: file::LogTo::Stdout,
        sample_ok: crate::config::units::Ratio(sample_ok),
    };
    let sink = sinks.get(&cfg.to).expect("sink");
    let log = AccessLog::new(Arc::from("l"), &cfg, sink);
    let req = Request::new(());
    log.begin(&req, &HeaderValue::from_static("r"), Instant::now())
}

fn out(status: u16, reason: Option<&HeaderValue>) -> Outcome<'_> {
    Outcome {
        route: None,
        tenant: None,
        status,
        reason,
        limit: None,
        bytes_out: 0,
    }
}

#[test]
fn sampling_thins_only_successes() {
    let why = HeaderValue::from_static("timeout");
    for _ in 0..50 {
        let mut e = entry(0.0);
        assert!(!e.fill(out(200, None), TryStats::default()), "2xx thinned");
        e.armed = false;
        let mut e = entry(0.0);
        assert!(!e.fill(out(304, None), TryStats::default()), "3xx thinned");
        let mut e = entry(0.0);
        assert!(e.fill(out(500, None), TryStats::default()), "5xx kept");
        e.armed = false;
        let mut e = entry(0.0);
        assert!(
            e.fill(out(504, Some(&why)), TryStats::default()),
            "ours kept"
        );
        e.armed = false;
        let mut e = entry(1.0);
        assert!(
            e.fill(out(200, None), TryStats::default()),
            "100% keeps all"
        );
        e.armed = false;
    }
}
