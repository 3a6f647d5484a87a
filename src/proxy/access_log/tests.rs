//! The line format, the trace id, the sampling rule, and the lanes and writer, without
//! sockets: entries are made from hand-built requests, times come from an anchor the test
//! sets, and the writer's rounds are driven by the test.

use std::path::Path;
use std::time::Duration;

use http::{HeaderValue, Method};
use prometheus::IntCounter;

use super::line::{civil_from_days, Wall};
use super::writer::Writer;
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

/// 2025-12-01T06:33:31.123Z, in Unix nanoseconds.
const NOW: u64 = 1_764_570_811_123_000_000;

fn counter() -> IntCounter {
    IntCounter::new("d", "d").expect("counter")
}

fn log_to(sink: Arc<Sink>, listener: &str, sample_ok: f64) -> AccessLog {
    let cfg = file::AccessLog {
        to: sink.to().clone(),
        sample_ok: crate::config::units::Ratio(sample_ok),
    };
    AccessLog::new(Arc::from(listener), &cfg, sink)
}

/// A log whose sink's writer is not running (lines stay in the lanes).
fn log(sample_ok: f64) -> AccessLog {
    let (sink, _writer) = Sink::detached(file::LogTo::Stdout, 1, 1 << 20, counter());
    log_to(sink, "l", sample_ok)
}

fn request(method: Method, uri: &str, headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().expect("uri");
    for (k, v) in headers {
        req.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    req
}

fn refused() -> (Entry, Instant) {
    let log = log_to(log(1.0).sink, "inbound", 1.0);
    let started = Instant::now();
    let req = request(Method::POST, "/a/b?secret=1", &[]);
    let mut e = log.begin(
        &req,
        (&HeaderValue::from_static("id-\"1\""), false),
        Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
        started,
    );
    let route = json_string("api");
    let tenant = TenantId::Fallback(Arc::from("acme"));
    let why = HeaderValue::from_static("rate_limited");
    let out = Outcome {
        route: Some(&route),
        tenant: Some(&tenant),
        status: 429,
        reason: Some(&why),
        limit: Some("burst"),
        bytes_out: 21,
        grpc: Grpc::NotACall,
    };
    assert!(e.fill(out, TryStats::default()));
    (e, started)
}

/// The line of `e` as text, its time anchored so that `started` reads as [`NOW`].
fn text(e: &Entry, started: Instant, duration: Duration, bytes_in: u64) -> String {
    let mut buf = Vec::new();
    let mut wall = Wall::new(NOW, started);
    let draft = e.0.as_ref().expect("a draft");
    let listener = &draft.sink.as_ref().expect("a sink").listener;
    draft.render(&mut buf, &mut wall, listener, duration, bytes_in);
    assert_eq!(buf.last(), Some(&b'\n'), "one line");
    assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
    String::from_utf8(buf).expect("utf-8")
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("a line is one JSON object")
}

/// Disarms `e` so that dropping it writes nothing.
fn quiet(mut e: Entry) {
    if let Some(d) = &mut e.0 {
        d.armed = false;
    }
}

#[test]
fn a_line_has_exactly_the_fields_of_the_spec_in_its_order() {
    let (e, started) = refused();
    let line = text(&e, started, Duration::from_micros(1500), 0);
    quiet(e);
    let v = json(&line);
    let mut got: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = FIELDS.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    let at: Vec<usize> = FIELDS
        .iter()
        .map(|f| line.find(&format!("\"{f}\":")).expect("field"))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "SPEC order: {line}");
    assert_eq!(v["time"], "2025-12-01T06:33:31.123Z");
    assert_eq!(v["listener"], "inbound");
    assert_eq!(v["route"], "api");
    assert_eq!(v["path"], "/a/b", "no query");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["status"], 429);
    assert_eq!(v["reason"], "rate_limited");
    assert_eq!(v["limit"], "burst");
    assert_eq!(v["tries"], 0);
    assert!(v["endpoint"].is_null() && v["upstream_ms"].is_null());
    assert_eq!(v["duration_ms"], 1.5);
    assert_eq!(v["bytes_in"], 0);
    assert_eq!(v["bytes_out"], 21);
    assert_eq!(v["request_id"], "id-\"1\"", "escaped");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[test]
fn an_upstream_answer_names_its_endpoint_and_time() {
    let log = log(1.0);
    let started = Instant::now();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    let req = request(Method::GET, "/caf%C3%A9/a\"b{}", &[("traceparent", tp)]);
    let mut e = log.begin(&req, (&HeaderValue::from_static("r"), false), None, started);
    let stats = TryStats {
        tries: 2,
        endpoint: Some("127.0.0.1:8081".parse().expect("addr")),
        upstream: Some(Duration::from_millis(7)),
        ended: None,
        received: None,
        whole: 0,
    };
    assert!(e.fill(out(200, None), stats));
    e.sent(40);
    e.sent(2);
    let v = json(&text(&e, started, Duration::from_millis(9), 5));
    quiet(e);
    assert_eq!(v["reason"], "");
    assert!(v["limit"].is_null() && v["route"].is_null() && v["tenant"].is_null());
    assert_eq!(v["path"], "/caf%C3%A9/a\"b{}");
    assert_eq!(v["endpoint"], "127.0.0.1:8081");
    assert_eq!(v["upstream_ms"], 7.0);
    assert_eq!(v["duration_ms"], 9.0);
    assert_eq!(v["tries"], 2);
    assert_eq!(v["bytes_in"], 5);
    assert_eq!(v["bytes_out"], 42);
    assert_eq!(
        v["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "the client's traceparent"
    );
}

#[test]
fn the_trace_rampart_follows_wins_over_the_header_and_none_is_null() {
    let log = log(1.0);
    let started = Instant::now();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    let req = request(Method::GET, "/", &[("traceparent", tp)]);
    let mut e = log.begin(
        &req,
        (&HeaderValue::from_static("r"), false),
        Some(7),
        started,
    );
    assert!(e.fill(out(200, None), TryStats::default()));
    let v = json(&text(&e, started, Duration::ZERO, 0));
    quiet(e);
    assert_eq!(v["trace_id"], format!("{:032x}", 7));
    let req = request(Method::GET, "/", &[("traceparent", "garbage")]);
    let mut e = log.begin(&req, (&HeaderValue::from_static("r"), false), None, started);
    assert!(e.fill(out(200, None), TryStats::default()));
    let v = json(&text(&e, started, Duration::ZERO, 0));
    quiet(e);
    assert!(v["trace_id"].is_null());
    // Without a trace of rampart's, the client's valid traceparent names it: among a few
    // headers (walked) and among many (looked up).
    let many: [(&str, &str); 12] = [
        ("a", "1"),
        ("b", "1"),
        ("c", "1"),
        ("d", "1"),
        ("e", "1"),
        ("f", "1"),
        ("g", "1"),
        ("h", "1"),
        ("i", "1"),
        ("j", "1"),
        ("k", "1"),
        ("traceparent", tp),
    ];
    for headers in [&many[10..], &many[..]] {
        let req = request(Method::GET, "/", headers);
        let mut e = log.begin(&req, (&HeaderValue::from_static("r"), false), None, started);
        assert!(e.fill(out(200, None), TryStats::default()));
        let v = json(&text(&e, started, Duration::ZERO, 0));
        quiet(e);
        assert_eq!(
            v["trace_id"],
            "0af7651916cd43dd8448eb211c80319c",
            "{} headers",
            headers.len()
        );
    }
}

#[test]
fn a_thread_reuses_its_drafts_and_a_reused_one_starts_empty() {
    let log = log(1.0);
    let started = Instant::now();
    let req = request(Method::PUT, "/first", &[]);
    let mut e = log.begin(
        &req,
        (&HeaderValue::from_static("r1"), false),
        Some(1),
        started,
    );
    let stats = TryStats {
        tries: 3,
        endpoint: Some("127.0.0.1:8081".parse().expect("addr")),
        upstream: Some(Duration::from_millis(7)),
        ended: None,
        received: None,
        whole: 0,
    };
    assert!(e.fill(out(500, None), stats));
    e.sent(99);
    let first: *const Draft = &**e.0.as_ref().expect("draft");
    quiet(e);
    let req = request(Method::GET, "/second", &[]);
    let mut e = log.begin(
        &req,
        (&HeaderValue::from_static("r2"), false),
        None,
        started,
    );
    let again: *const Draft = &**e.0.as_ref().expect("draft");
    assert_eq!(first, again, "the same draft, not a new allocation");
    assert!(e.fill(out(200, None), TryStats::default()));
    let v = json(&text(&e, started, Duration::ZERO, 0));
    quiet(e);
    assert_eq!(v["path"], "/second");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["request_id"], "r2");
    assert_eq!(v["status"], 200);
    assert_eq!(v["tries"], 0);
    assert_eq!(v["bytes_out"], 0);
    assert!(v["endpoint"].is_null() && v["upstream_ms"].is_null() && v["trace_id"].is_null());
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
    let req = Request::new(());
    log(sample_ok).begin(
        &req,
        (&HeaderValue::from_static("r"), false),
        None,
        Instant::now(),
    )
}

fn out(status: u16, reason: Option<&HeaderValue>) -> Outcome<'_> {
    Outcome {
        route: None,
        tenant: None,
        status,
        reason,
        limit: None,
        bytes_out: 0,
        grpc: Grpc::NotACall,
    }
}

/// A gRPC call's line carries `grpc_status` (its head's, or its trailers'), `null` when none
/// came; a status other than OK, or none at all, writes the line whatever `sample_ok` says, as
/// an HTTP error would; other lines have no such field.
#[test]
fn a_grpc_calls_line_carries_its_status_and_a_failed_one_is_never_thinned() {
    let grpc = |g: Grpc| Outcome {
        grpc: g,
        ..out(200, None)
    };
    let line = |e: &Entry| json(&text(e, Instant::now(), Duration::ZERO, 0));
    for _ in 0..20 {
        // Sampled out entirely: kept (its trailers may arm it) but not armed.
        let mut e = entry(0.0);
        assert!(
            !e.fill(grpc(Grpc::NoStatus), TryStats::default()),
            "not armed"
        );
        e.grpc_ended(Some(0));
        assert!(!e.0.as_ref().expect("draft").armed, "OK: thinned");
        assert_eq!(line(&e)["grpc_status"], 0);
        // UNAVAILABLE in the trailers: written.
        let mut e = entry(0.0);
        e.fill(grpc(Grpc::NoStatus), TryStats::default());
        e.grpc_ended(Some(14));
        assert!(e.0.as_ref().expect("draft").armed);
        assert_eq!(line(&e)["grpc_status"], 14);
        quiet(e);
        // No status at all (a broken stream): written, with a null status.
        let mut e = entry(0.0);
        e.fill(grpc(Grpc::NoStatus), TryStats::default());
        e.grpc_ended(None);
        assert!(e.0.as_ref().expect("draft").armed);
        let v = line(&e);
        assert!(v["grpc_status"].is_null(), "{v}");
        quiet(e);
        // A Trailers-Only failure: armed at once.
        let mut e = entry(0.0);
        assert!(e.fill(grpc(Grpc::Status(8)), TryStats::default()));
        assert!(e.0.as_ref().expect("draft").armed);
        assert_eq!(line(&e)["grpc_status"], 8);
        quiet(e);
        // A Trailers-Only OK whose empty body then ends: its status stands, still thinned.
        let mut e = entry(0.0);
        e.fill(grpc(Grpc::Status(0)), TryStats::default());
        e.grpc_ended(None);
        assert!(!e.0.as_ref().expect("draft").armed);
        assert_eq!(line(&e)["grpc_status"], 0);
    }
    // Not a gRPC call: no field, and the trailers' news is ignored.
    let mut e = entry(1.0);
    assert!(e.fill(out(200, None), TryStats::default()));
    e.grpc_ended(Some(14));
    let v = line(&e);
    assert!(v.get("grpc_status").is_none(), "{v}");
    quiet(e);
}

#[test]
fn sampling_thins_only_successes() {
    let why = HeaderValue::from_static("timeout");
    for _ in 0..50 {
        let mut e = entry(0.0);
        assert!(!e.fill(out(200, None), TryStats::default()), "2xx thinned");
        let mut e = entry(0.0);
        assert!(!e.fill(out(304, None), TryStats::default()), "3xx thinned");
        let mut e = entry(0.0);
        assert!(e.fill(out(500, None), TryStats::default()), "5xx kept");
        quiet(e);
        let mut e = entry(0.0);
        assert!(
            e.fill(out(504, Some(&why)), TryStats::default()),
            "ours kept"
        );
        quiet(e);
        let mut e = entry(1.0);
        assert!(
            e.fill(out(200, None), TryStats::default()),
            "100% keeps all"
        );
        quiet(e);
    }
}

// --- lanes and the writer ---------------------------------------------------------------------

fn file_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

/// Finishes one armed line for `path` through `log` (written when the entry drops).
fn finish(log: &AccessLog, path: &'static str) {
    let req = request(Method::GET, path, &[]);
    let mut e = log.begin(
        &req,
        (&HeaderValue::from_static("r"), false),
        None,
        Instant::now(),
    );
    assert!(e.fill(out(200, None), TryStats::default()));
}

/// A log to a file in a temp dir whose writer the test drives.
fn driven(lanes: usize, cap: usize) -> (AccessLog, Writer, IntCounter, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let to = file::LogTo::File(dir.path().join("access.jsonl"));
    let dropped = counter();
    let (sink, writer) = Sink::detached(to, lanes, cap, dropped.clone());
    (log_to(sink, "inbound", 1.0), writer, dropped, dir)
}

/// One round of `writer`, begun now.
fn round(writer: &mut Writer) {
    writer.round(&Wall::new(NOW, Instant::now()), Instant::now(), false);
}

fn paths(path: &Path) -> Vec<String> {
    file_lines(path)
        .iter()
        .map(|v| v["path"].as_str().expect("path").to_owned())
        .collect()
}

/// Runs `f` on a new thread (which takes the next lane) and waits for it.
fn on_new_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(f);
    });
}

#[test]
fn lines_of_different_lanes_keep_the_order_they_were_finished_in() {
    let (log, mut writer, _dropped, dir) = driven(2, 1 << 20);
    let path = dir.path().join("access.jsonl");
    // Consecutive threads take consecutive lanes: /1 and /3 share one, /2 and /4 the other.
    let order = ["/1", "/2", "/3", "/4"];
    let (a, b) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
    std::thread::scope(|s| {
        let (a, b, log) = (&a, &b, &log);
        s.spawn(move || {
            finish(log, "/1");
            a.wait();
            b.wait();
            finish(log, "/3");
            a.wait();
        });
        s.spawn(move || {
            a.wait();
            finish(log, "/2");
            b.wait();
            a.wait();
            finish(log, "/4");
        });
    });
    round(&mut writer);
    assert_eq!(paths(&path), order);
}

#[test]
fn lines_finished_after_a_round_began_wait_for_the_next_one() {
    let (log, mut writer, _dropped, dir) = driven(2, 1 << 20);
    let path = dir.path().join("access.jsonl");
    on_new_thread(|| finish(&log, "/before"));
    let began = Instant::now();
    on_new_thread(|| finish(&log, "/after-1"));
    on_new_thread(|| finish(&log, "/after-2"));
    writer.round(&Wall::new(NOW, began), began, false);
    assert_eq!(paths(&path), ["/before"]);
    on_new_thread(|| finish(&log, "/later"));
    round(&mut writer);
    assert_eq!(paths(&path), ["/before", "/after-1", "/after-2", "/later"]);
}

#[test]
fn a_round_writes_every_line_finished_before_it_whole() {
    let (log, mut writer, dropped, dir) = driven(2, 1 << 20);
    let path = dir.path().join("access.jsonl");
    let log = Arc::new(log);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    finish(&log, "/many");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(file_lines(&path).is_empty(), "nothing before a round");
    round(&mut writer);
    let got = file_lines(&path);
    assert_eq!(got.len(), 400, "every line, each one whole JSON");
    assert!(got.iter().all(|v| v["path"] == "/many"));
    finish(&log, "/next");
    round(&mut writer);
    let got = file_lines(&path);
    assert_eq!(got.len(), 401);
    assert_eq!(got[400]["path"], "/next");
    assert_eq!(dropped.get(), 0);
}

#[test]
fn the_writer_writes_between_any_two_waits_and_everything_when_closed() {
    let (log, writer, dropped, dir) = driven(1, 1 << 20);
    let path = dir.path().join("access.jsonl");
    let sink = log.sink.clone();
    let mut waits = 0;
    // Each wait stands for one pause: the lines finished before it are in the file after it,
    // so a line waits at most one pause (plus the write).
    writer.run(|_| {
        let written = file_lines(&path).len();
        assert_eq!(written, waits, "the lines finished before the last wait");
        waits += 1;
        finish(&log, "/during");
        if waits == 3 {
            drop(sink.close());
        }
    });
    assert_eq!(
        file_lines(&path).len(),
        3,
        "the last one is written on close"
    );
    assert!(*log.sink.close().borrow(), "done is set");
    finish(&log, "/late");
    assert_eq!(
        dropped.get(),
        1,
        "after close a line is dropped and counted"
    );
    assert_eq!(file_lines(&path).len(), 3);
}

#[test]
fn an_idle_writer_sleeps_until_a_line_wakes_it() {
    let (log, writer, _dropped, dir) = driven(2, 1 << 20);
    let path = dir.path().join("access.jsonl");
    let sink = log.sink.clone();
    let mut seen = Vec::new();
    writer.run(|idle| {
        seen.push(idle);
        match seen.len() {
            // The first round finds nothing: the next wait is idle, with the flag up.
            2 => {
                assert!(idle && sink.asleep(), "{seen:?}");
                // A line pushed while it sleeps takes the flag down (and unparks the writer).
                finish(&log, "/wakes");
                assert!(!sink.asleep(), "the push woke it");
            }
            // That round wrote the line: not idle; the one after found nothing again.
            3 => assert_eq!(file_lines(&path).len(), 1),
            5 => drop(sink.close()),
            _ => {}
        }
    });
    assert_eq!(seen, [false, true, false, true, true]);
    assert_eq!(paths(&path), ["/wakes"]);
}

#[test]
fn a_full_lane_drops_and_counts_lines_without_waiting() {
    let (log, mut writer, dropped, dir) = driven(1, 1000);
    let path = dir.path().join("access.jsonl");
    for _ in 0..20 {
        finish(&log, "/full");
    }
    let kept = 20 - dropped.get() as usize;
    assert!(kept >= 1 && dropped.get() > 0, "kept {kept}");
    round(&mut writer);
    assert_eq!(file_lines(&path).len(), kept);
    finish(&log, "/room-again");
    round(&mut writer);
    assert_eq!(
        file_lines(&path).len(),
        kept + 1,
        "an emptied lane takes lines again"
    );
}

#[test]
fn lines_written_after_a_round_take_the_new_anchor() {
    let (log, mut writer, _dropped, dir) = driven(1, 1 << 20);
    let path = dir.path().join("access.jsonl");
    let at = Instant::now();
    // The anchor says `at` was NOW; lines of requests started after `at` read later.
    writer.round(&Wall::new(NOW, at), Instant::now(), false);
    finish(&log, "/t");
    writer.round(&Wall::new(NOW, at), Instant::now(), false);
    let t = file_lines(&path)[0]["time"]
        .as_str()
        .expect("time")
        .to_owned();
    assert!(t.starts_with("2025-12-01T06:33:"), "{t}");
}

#[tokio::test(flavor = "current_thread")]
async fn closing_the_sinks_writes_what_is_queued() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.jsonl");
    let dropped = counter();
    // A writer that would sleep for an hour between rounds: only closing writes.
    let sinks = Sinks::with(dropped.clone(), 2, Duration::from_secs(3600));
    let sink = sinks.get(&file::LogTo::File(path.clone())).expect("sink");
    let log = log_to(sink, "inbound", 1.0);
    for _ in 0..10 {
        finish(&log, "/last");
    }
    sinks.close(Duration::from_secs(30)).await;
    assert_eq!(file_lines(&path).len(), 10, "queued lines written at close");
    finish(&log, "/after");
    assert_eq!(dropped.get(), 1);
}

#[test]
fn checked_tenants_and_made_request_ids_are_written_as_they_are_and_the_rest_escaped() {
    let log = log(1.0);
    let started = Instant::now();
    let req = request(Method::GET, "/", &[]);
    let made = crate::proxy::forward::new_request_id();
    let cases = [
        (
            TenantId::Header(HeaderValue::from_static("acme-1")),
            "acme-1",
        ),
        (TenantId::Query(Arc::from("q.t@x")), "q.t@x"),
        (
            TenantId::Cert(Arc::from("spiffe://x/\"odd\"\\name")),
            "spiffe://x/\"odd\"\\name",
        ),
        (TenantId::Fallback(Arc::from("tab\there")), "tab\there"),
    ];
    for (tenant, want) in cases {
        let mut e = log.begin(&req, (&made, true), None, started);
        let route = json_string("r\"1");
        let o = Outcome {
            route: Some(&route),
            tenant: Some(&tenant),
            ..out(200, None)
        };
        assert!(e.fill(o, TryStats::default()));
        let v = json(&text(&e, started, Duration::ZERO, 0));
        quiet(e);
        assert_eq!(v["tenant"], want);
        assert_eq!(v["route"], "r\"1");
        assert_eq!(v["request_id"], made.to_str().expect("ascii"));
    }
}

/// An answer broken after its head arms its line however it was sampled, and its cause takes
/// the reason's place, the status and every other field as they were; the first cause stands.
#[test]
fn a_broken_answer_is_always_written_and_says_why() {
    let line = |e: &Entry| json(&text(e, Instant::now(), Duration::ZERO, 0));
    let mut e = entry(0.0);
    assert!(!e.fill(out(200, None), TryStats::default()), "thinned");
    let whole = line(&e);
    e.broken(Broken::UpstreamCut);
    e.broken(Broken::ClientGone);
    assert!(e.0.as_ref().expect("draft").armed);
    let cut = line(&e);
    assert_eq!(cut["reason"], "upstream_cut", "{cut}");
    assert_eq!(cut["status"], 200);
    let (mut a, mut b) = (whole.clone(), cut.clone());
    for v in [&mut a, &mut b] {
        v.as_object_mut().expect("object").remove("reason");
        v.as_object_mut().expect("object").remove("time");
    }
    assert_eq!(a, b, "only the reason differs");
    quiet(e);
    // Not filled yet: nothing to say it in, and nothing armed.
    let mut e = entry(0.0);
    e.broken(Broken::Timeout);
    assert!(!e.0.as_ref().expect("draft").armed);
}
