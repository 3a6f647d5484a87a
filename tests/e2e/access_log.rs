//! Seeing every request (SPEC §12) through real sockets: the access log's lines and fields,
//! sampling, rotation by rename and reload, the request id round trip, and metric labels that
//! name the tenant and the limit.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::support::{http, metric_value, metrics, sample, Closed, Proxy};
use crate::support::{log_lines as lines, wait_log_lines as wait_lines};

/// `$LOG` is the access log file, `$SAMPLE` its `sample_ok`, `$DEAD` an address nobody serves.
const LOGGED: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from: [ { header: x-tenant-id } ]
  fallback: anonymous
  metrics_labels: 1
upstreams:
  app: { endpoints: [$APP] }
  dead: { endpoints: [$DEAD] }
policies:
  limited:
    rate_limit:
      per_tenant: { rate: 1/min, burst: 1 }
      overrides:
        vip: { rate: 1/min, burst: 2, name: vip-burst }
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
    access_log: { to: $LOG, sample_ok: $SAMPLE }
    routes:
      - name: limited
        match: { path_prefix: /bytes }
        upstream: app
        policy: limited
      - name: flaky
        match: { path_prefix: /fail-first }
        upstream: app
        policy: retrying
      - name: dead
        match: { path_prefix: /dead }
        upstream: dead
      - upstream: app
"#;

/// A proxy logging to a file in its own temp dir, and the file's path.
struct Logged {
    proxy: Proxy,
    log: PathBuf,
    dead: Closed,
    _dir: tempfile::TempDir,
}

async fn logged(app: SocketAddr, sample_ok: &str) -> Logged {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let dead = Closed::new();
    let proxy = Proxy::builder(LOGGED)
        .var("APP", app)
        .var("DEAD", &dead)
        .var("LOG", log.display())
        .var("SAMPLE", sample_ok)
        .spawn()
        .await;
    Logged {
        proxy,
        log,
        dead,
        _dir: dir,
    }
}

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

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_per_request_says_what_happened() {
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    let t = [("x-tenant-id", "acme"), ("traceparent", TRACEPARENT)];
    let ok = http::post(addr, "/echo?secret=1", &t, "hello").await;
    assert_eq!(ok.status, 200);
    let first = &wait_lines(&l.log, 1).await[0];
    let keys: Vec<&String> = first.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), FIELDS.len(), "{first}");
    for f in FIELDS {
        assert!(first.get(f).is_some(), "{f} missing: {first}");
    }
    assert_eq!(first["listener"], "inbound");
    assert_eq!(first["route"], "app");
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/echo", "no query");
    assert_eq!(first["status"], 200);
    assert_eq!(first["reason"], "");
    assert!(first["limit"].is_null());
    assert_eq!(first["tries"], 1);
    assert_eq!(first["endpoint"], app.addr().to_string());
    assert!(first["upstream_ms"].as_f64().is_some_and(|v| v >= 0.0));
    assert!(first["duration_ms"].as_f64().is_some_and(|v| v > 0.0));
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], ok.body.len() as u64);
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    // A 429 names its limit and made no try.
    let a = [("x-tenant-id", "acme")];
    assert_eq!(http::get(addr, "/bytes/3", &a).await.status, 200);
    http::get(addr, "/bytes/3", &a)
        .await
        .assert_rampart(429, "rate_limited");
    let refused = &wait_lines(&l.log, 3).await[2];
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["reason"], "rate_limited");
    assert_eq!(refused["limit"], "burst");
    assert_eq!(refused["route"], "limited");
    assert_eq!(refused["tries"], 0);
    assert!(refused["endpoint"].is_null() && refused["upstream_ms"].is_null());
    assert!(refused["trace_id"].is_null());

    // A retried request counts its tries.
    let flaky = http::get(addr, "/fail-first/2?key=one", &a).await;
    assert_eq!(flaky.status, 200);
    let retried = &wait_lines(&l.log, 4).await[3];
    assert_eq!(retried["tries"], 3, "{retried}");
    assert_eq!(retried["status"], 200);

    // A 502 names the endpoint it could not reach.
    http::get(addr, "/dead", &a)
        .await
        .assert_rampart(502, "upstream_unavailable");
    let dead = &wait_lines(&l.log, 5).await[4];
    assert_eq!(dead["status"], 502);
    assert_eq!(dead["reason"], "upstream_unavailable");
    assert_eq!(dead["endpoint"], l.dead.addr().to_string());
    assert_eq!(dead["tries"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_goes_round_trip() {
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    // The client's own id: to the upstream, back on the answer, in the line.
    let rsp = http::get(addr, "/headers", &[("x-request-id", "client-id-1")]).await;
    assert_eq!(rsp.header("x-request-id"), Some("client-id-1"));
    assert_eq!(
        rsp.json()["headers"]["x-request-id"],
        "client-id-1",
        "{}",
        rsp.text()
    );
    assert_eq!(wait_lines(&l.log, 1).await[0]["request_id"], "client-id-1");
    // One rampart made: on the answer and the upstream's copy alike.
    let rsp = http::get(addr, "/headers", &[]).await;
    let made = rsp.header("x-request-id").expect("a request id").to_owned();
    assert_eq!(made.len(), 32);
    assert_eq!(rsp.json()["headers"]["x-request-id"], made.as_str());
    assert_eq!(wait_lines(&l.log, 2).await[1]["request_id"], made.as_str());
    // A refusal carries it in its header, its error body and its line.
    let rsp = http::get(addr, "/dead", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    let made = rsp.header("x-request-id").expect("a request id").to_owned();
    assert_eq!(rsp.json()["request_id"], made.as_str());
    assert_eq!(wait_lines(&l.log, 3).await[2]["request_id"], made.as_str());
    let rsp = http::get(addr, "/dead", &[("x-request-id", "mine")]).await;
    assert_eq!(rsp.header("x-request-id"), Some("mine"));
    assert_eq!(rsp.json()["request_id"], "mine");
    // An id no log line would carry as it came (here, with a space) is replaced by one made
    // here, the same on the upstream's copy, the answer and the line.
    let rsp = http::get(addr, "/headers", &[("x-request-id", "two words")]).await;
    let made = rsp.header("x-request-id").expect("a request id").to_owned();
    assert_eq!(made.len(), 32, "{made}");
    assert_eq!(rsp.json()["headers"]["x-request-id"], made.as_str());
    assert_eq!(wait_lines(&l.log, 5).await[4]["request_id"], made.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_log_is_let_go_on_reload() {
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok?n=1", &[]).await.status, 200);
    wait_lines(&l.log, 1).await;
    let rotated = l.log.with_extension("jsonl.1");
    std::fs::rename(&l.log, &rotated).expect("rename");
    // Until the reload the old file (now renamed) is still the one written.
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    wait_lines(&rotated, 2).await;
    let rsp = http::post(l.proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(http::get(addr, "/after", &[]).await.status, 404);
    let fresh = wait_lines(&l.log, 1).await;
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["path"], "/after");
    assert_eq!(
        lines(&rotated).len(),
        2,
        "nothing more goes to the rotated file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_log_is_let_go_on_a_refused_reload_too() {
    // logrotate renames, then signals: the policy file may be broken at that moment, and the
    // refused reload must still let the renamed file go.
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok?n=1", &[]).await.status, 200);
    wait_lines(&l.log, 1).await;
    let rotated = l.log.with_extension("jsonl.1");
    std::fs::rename(&l.log, &rotated).expect("rename");
    std::fs::write(l.proxy.config_path(), "listeners: [ {").expect("break the policy file");
    let rsp = http::post(l.proxy.admin(), "/reload", &[], "").await;
    assert_ne!(
        rsp.status,
        200,
        "the broken file is refused: {}",
        rsp.text()
    );
    assert_eq!(http::get(addr, "/ok?n=2", &[]).await.status, 200);
    let fresh = wait_lines(&l.log, 1).await;
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["path"], "/ok");
    assert_eq!(
        lines(&rotated).len(),
        1,
        "nothing more goes to the rotated file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_at_zero_keeps_refusals_and_drops_successes() {
    let app = sample().await;
    let l = logged(app.addr(), "0%").await;
    let addr = l.proxy.listener("inbound");
    for _ in 0..5 {
        assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    }
    let t = [("x-tenant-id", "t1")];
    assert_eq!(http::get(addr, "/bytes/3", &t).await.status, 200);
    assert_eq!(http::get(addr, "/bytes/3", &t).await.status, 429);
    assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    assert_eq!(http::get(addr, "/dead", &[]).await.status, 502);
    let got = wait_lines(&l.log, 3).await;
    let statuses: Vec<u64> = got.iter().filter_map(|v| v["status"].as_u64()).collect();
    assert_eq!(statuses, [429, 500, 502], "{got:?}");
    // The 2xx were dropped by sampling, not by pressure.
    let text = metrics(l.proxy.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_access_log_dropped_total", &[]),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_tenant_keeps_its_label_and_refusals_name_the_limit() {
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    // `metrics_labels: 1`: the first tenant takes the only place.
    for t in ["first", "second", "vip", "vip", "vip"] {
        http::get(addr, "/bytes/3", &[("x-tenant-id", t)]).await;
    }
    let text = metrics(l.proxy.admin()).await;
    let reqs = |tenant: &str, code: &str| {
        metric_value(
            &text,
            "rampart_requests_total",
            &[("route", "limited"), ("tenant", tenant), ("code", code)],
        )
    };
    assert_eq!(reqs("first", "200"), Some(1.0), "{text}");
    assert_eq!(reqs("_other", "200"), Some(1.0), "second is folded: {text}");
    assert_eq!(
        reqs("vip", "200"),
        Some(2.0),
        "an override is never folded: {text}"
    );
    assert_eq!(reqs("vip", "429"), Some(1.0), "{text}");
    let limited = metric_value(
        &text,
        "rampart_rate_limited_total",
        &[("tenant", "vip"), ("limit", "vip-burst")],
    );
    assert_eq!(limited, Some(1.0), "{text}");
    let last = &wait_lines(&l.log, 5).await[4];
    assert_eq!(last["limit"], "vip-burst");
    assert_eq!(last["tenant"], "vip");
}

/// A line finished while rampart drains (its answer's body ends just before exit) is in the
/// file when the process has exited: exit waits for the writer to write what is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_lines_are_written_before_exit() {
    use http_body_util::BodyExt;

    let app = sample().await;
    let mut l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    for i in 0..20 {
        let path = format!("/ok?n={i}");
        assert_eq!(http::get(addr, &path, &[]).await.status, 200);
    }
    // The head is back and the body still dripping when SIGTERM comes.
    let req = ::http::Request::get(format!("http://{addr}/drip?chunks=4&ms=50"))
        .body(http::empty())
        .expect("request");
    let rsp = http::client().request(req).await.expect("head");
    assert_eq!(rsp.status(), 200);
    l.proxy.signal("TERM");
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let status = l.proxy.wait_exit(std::time::Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", l.proxy.log());
    // No waiting for the file: the process is gone, so what it wrote is all there is.
    let got = lines(&l.log);
    let paths: Vec<&str> = got.iter().filter_map(|v| v["path"].as_str()).collect();
    assert_eq!(got.len(), 21, "{paths:?}");
    let last = &got[20];
    assert_eq!(last["path"], "/drip");
    assert_eq!(last["bytes_out"], body.len() as u64);
}

/// `bytes_in` counts a request body however it came: whole with its head (the lean server
/// takes it with the head, and no cell counts it as it streams) or after it (hyper streams it).
#[tokio::test]
async fn bytes_in_counts_a_body_taken_with_its_head_and_one_streamed_after_it() {
    use crate::support::conn::Conn;
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    let head = "POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: 11\r\n\r\n";
    let mut c = Conn::open(addr).await;
    c.send(format!("{head}hello world").as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello world"));
    let mut c = Conn::open(addr).await;
    c.send(head.as_bytes()).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    c.send(b"hello there").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello there"));
    let lines = wait_lines(&l.log, 2).await;
    for line in &lines {
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["bytes_in"], 11, "{line}");
        assert_eq!(line["bytes_out"], 11, "{line}");
    }
}

/// A head rampart cannot read (not HTTP/1.1 as hyper's parser reads it, or longer than
/// `max_header_bytes`) is answered by rampart like any refusal: its reason, an id, a JSON body,
/// a line in the access log and a count; and the connection closes. Before, hyper answered
/// them with a bare 400 or 431 that nothing counted or logged. An HTTP/2 head is held to the
/// same length as HTTP/1.1 would carry it, and refused the same way: before, the h2 library
/// answered one over the limit (each field counted 32 bytes more) with its own bare 431, and
/// refused a head of 90 fields that HTTP/1.1 takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_cannot_be_read_is_answered_counted_and_logged() {
    use std::time::Duration;

    use crate::support::raw;

    let app = sample().await;
    let l = logged(app.addr(), "0%").await;
    let addr = l.proxy.listener("inbound");
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let cases: [(&[u8], u16, &str, &str); 3] = [
        (
            b"GET /fold HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
            400,
            "bad_request",
            "/fold",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            400,
            "bad_request",
            "*",
        ),
        (big.as_bytes(), 431, "head_too_large", "/big"),
    ];
    let mut ids = Vec::new();
    for (bytes, status, reason, _) in cases {
        let rsp = raw::exchange(addr, bytes, Duration::from_secs(4)).await;
        assert_eq!(rsp.status(), Some(status), "{}", rsp.text());
        assert!(rsp.closed, "the connection closes after it");
        assert_eq!(rsp.header("x-rampart-reason").as_deref(), Some(reason));
        let id = rsp.header("x-request-id").expect("an id");
        let text = rsp.text();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(json["error"], reason, "{json}");
        assert_eq!(json["request_id"].as_str(), Some(id.as_str()), "{json}");
        ids.push(id);
    }
    let mut want: Vec<_> = cases.iter().map(|&(_, s, r, p)| (s, r, p)).collect();
    let rsp = http::h2_get(addr, "/big", &[("x-big", &"a".repeat(40 * 1024))]).await;
    rsp.assert_rampart(431, "head_too_large");
    let id = rsp.header("x-request-id").expect("an id").to_owned();
    assert_eq!(rsp.json()["request_id"].as_str(), Some(id.as_str()));
    ids.push(id);
    want.push((431, "head_too_large", "/big"));
    let got = wait_lines(&l.log, want.len()).await;
    for ((status, reason, path), id) in want.iter().zip(&ids) {
        let line = got
            .iter()
            .find(|v| v["request_id"].as_str() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no line for {id}: {got:?}"));
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["reason"], *reason, "{line}");
        assert_eq!(line["path"], *path, "{line}");
        assert_eq!(line["tries"], 0, "{line}");
    }
    let text = metrics(l.proxy.admin()).await;
    let count = |code| metric_value(&text, "rampart_requests_total", &[("code", code)]);
    assert_eq!(count("400"), Some(2.0), "{text}");
    assert_eq!(count("431"), Some(2.0), "{text}");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200, "serving on");
    // 90 fields of 340 bytes: 31.5 KB as HTTP/1.1 carries them, within the 32 KiB limit (34 KB
    // as the h2 layer counts them). (The sample upstream takes 100 lines, rampart's among them.)
    let value = "v".repeat(340);
    let names: Vec<String> = (10..100).map(|i| format!("x-f-{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    assert_eq!(
        http::get(addr, "/ok", &fields).await.status,
        200,
        "HTTP/1.1"
    );
    let rsp = http::h2_get(addr, "/ok", &fields).await;
    assert_eq!(rsp.status, 200, "HTTP/2: {}", rsp.text());
}

/// An HTTP/2 request refused before routing for a field it sent (a value padded with a space,
/// a head longer than `max_header_bytes`) had its head read, so
/// its answer, error body and line carry the client's own `x-request-id` (SPEC §12). Before,
/// each got an id made here, as a head that could not be read does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_head_refused_for_its_fields_keeps_the_clients_request_id() {
    let app = sample().await;
    let l = logged(app.addr(), "0%").await;
    let addr = l.proxy.listener("inbound");
    let big = "a".repeat(40 * 1024);
    let cases = [
        ("x-padded", " lead", 400, "bad_request", "padded-1"),
        ("x-big", big.as_str(), 431, "head_too_large", "big-2"),
    ];
    for (n, (name, value, status, reason, id)) in cases.into_iter().enumerate() {
        let rsp = http::h2_get(addr, "/ok", &[(name, value), ("x-request-id", id)]).await;
        rsp.assert_rampart(status, reason);
        assert_eq!(rsp.header("x-request-id"), Some(id), "{name}");
        assert_eq!(rsp.json()["request_id"], id, "{name}: {}", rsp.text());
        let line = &wait_lines(&l.log, n + 1).await[n];
        assert_eq!(line["request_id"], id, "{name}: {line}");
        assert_eq!(line["status"], status, "{name}: {line}");
    }
}

/// A client that goes away while its answer is awaited (an HTTP/1.1 client that closes its
/// connection, one that resets it, an HTTP/2 client that resets its stream) ends its request
/// there: the try is cancelled (the upstream's connection let go), and the request is counted
/// and logged as a 499 (nginx's "client closed request") with its route and its try, at once,
/// not when the upstream would have answered. Before, an HTTP/1.1 client's going was not
/// noticed (the request ran on, held its slot, and was logged as the upstream's 200 seconds
/// later), and an HTTP/2 one left no line and no count at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_before_its_answer_is_a_499_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let (addr, admin) = (l.proxy.listener("inbound"), l.proxy.admin());
    let slow = "/slow?ms=4000";
    let started = tokio::time::Instant::now();

    for (id, reset) in [("gone-fin", false), ("gone-rst", true)] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {slow} HTTP/1.1\r\nHost: a\r\nx-request-id: {id}\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if reset {
            socket2::SockRef::from(&tcp)
                .set_linger(Some(std::time::Duration::ZERO))
                .expect("SO_LINGER 0: the close resets");
        }
        drop(tcp);
    }
    // HTTP/2: the stream is reset when the client drops its request.
    let mut h2 = http::h2c(addr).await;
    let req = ::http::Request::builder()
        .uri(format!("http://{addr}{slow}"))
        .header("x-request-id", "gone-h2")
        .body(http::empty())
        .expect("request");
    let call = h2.send_request(req);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), call)
            .await
            .is_err(),
        "the upstream is slower than the client's patience"
    );

    let got = wait_lines(&l.log, 3).await;
    assert!(
        started.elapsed() < std::time::Duration::from_millis(3000),
        "ended when the client went, not when the upstream answered"
    );
    for id in ["gone-fin", "gone-rst", "gone-h2"] {
        let line = got
            .iter()
            .find(|v| v["request_id"] == id)
            .unwrap_or_else(|| panic!("a line for {id}: {got:?}"));
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["route"], "app", "{line}");
        assert_eq!(line["tries"], 1, "{line}");
        assert_eq!(line["bytes_out"], 0, "{line}");
        assert!(line["duration_ms"].as_f64().expect("a duration") < 3000.0);
    }
    let text = metrics(admin).await;
    let count = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        count("rampart_requests_total", &[("code", "499")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count(
            "rampart_upstream_tries_abandoned_total",
            &[("cause", "client_gone")]
        ),
        Some(3.0)
    );
    assert_eq!(
        count("rampart_upstream_requests_total", &[]),
        None,
        "no try is the upstream's to answer for"
    );
    assert_eq!(
        count("rampart_in_flight_requests", &[("listener", "inbound")]),
        Some(0.0)
    );
    // The listener serves on, and a client that shuts its side with its request still gets
    // its answer (a half-close, not a going away).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    tcp.shutdown().await.expect("half-close");
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut got)
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// An upstream that reads each request to the end of its chunked body and answers `200 ok` a
/// while later, unless rampart closes the connection first: the upstream's own view of whether
/// a try was cancelled.
struct Held {
    addr: SocketAddr,
    /// Requests read whole.
    got: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Connections rampart closed before their answer was due.
    cancelled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Held {
    async fn start(answer_after: std::time::Duration) -> Held {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("address");
        let (got, cancelled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (g, c) = (got.clone(), cancelled.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let (g, c) = (g.clone(), c.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(5).any(|w| w == b"0\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    g.fetch_add(1, Ordering::SeqCst);
                    let closed = async {
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                    };
                    if tokio::time::timeout(answer_after, closed).await.is_ok() {
                        c.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                        .await;
                });
            }
        });
        Held {
            addr,
            got,
            cancelled,
        }
    }

    fn got(&self) -> usize {
        self.got.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cancelled(&self) -> usize {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The same for a connection the lean server hands to hyper (a chunked upload, one sent after
/// `Expect: 100-continue`): a client that resets or closes its
/// connection once its upload is sent, while the upstream is slow, ends its request at once. The upstream sees
/// its connection closed (the try is cancelled), and the request is counted and logged once as
/// a 499. A client that shuts its side with its upload (a half-close) still gets its answer.
/// Before, hyper (which rampart runs with `half_close`, so does not read a connection whose
/// answer it awaits) noticed nothing: the upstream answered 2 s later and the line said 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_after_a_chunked_upload_is_a_499_at_once() {
    use tokio::io::AsyncWriteExt;
    let up = Held::start(std::time::Duration::from_millis(2000)).await;
    let l = logged(up.addr, "100%").await;
    let (addr, admin) = (l.proxy.listener("inbound"), l.proxy.admin());
    let upload = |id: &str| {
        format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nx-request-id: {id}\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    };

    let cases = [
        ("gone-rst", true, false),
        ("gone-fin", false, false),
        ("gone-expect", true, true),
    ];
    for (n, (id, reset, expect)) in cases.into_iter().enumerate() {
        let started = tokio::time::Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        if expect {
            // The body goes once hyper asks for it.
            let (head, body) = upload(id)
                .split_once("\r\n\r\n")
                .map(|(h, b)| (format!("{h}\r\nExpect: 100-continue\r\n\r\n"), b.to_owned()))
                .expect("a head");
            tcp.write_all(head.as_bytes()).await.expect("write");
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)
                    .await
                    .expect("read");
                assert!(
                    n > 0,
                    "a 100 Continue: {:?}",
                    String::from_utf8_lossy(&seen)
                );
                seen.extend_from_slice(&buf[..n]);
            }
            assert!(
                seen.starts_with(b"HTTP/1.1 100"),
                "{:?}",
                String::from_utf8_lossy(&seen)
            );
            tcp.write_all(body.as_bytes()).await.expect("write");
        } else {
            tcp.write_all(upload(id).as_bytes()).await.expect("write");
        }
        crate::assert_eventually!(up.got() == n + 1, "the upstream has the upload");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if reset {
            crate::support::conn::reset(tcp);
        } else {
            drop(tcp);
        }
        crate::assert_eventually!(up.cancelled() == n + 1, "the upstream's connection closed");
        let got = wait_lines(&l.log, n + 1).await;
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1500),
            "ended when the client went, not when the upstream answered"
        );
        assert_eq!(got[n]["request_id"], id, "{got:?}");
        assert_eq!(got[n]["status"], 499, "{got:?}");
        assert_eq!(got[n]["tries"], 1, "{got:?}");
    }
    let text = metrics(admin).await;
    let count = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        count("rampart_requests_total", &[("code", "499")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count(
            "rampart_upstream_tries_abandoned_total",
            &[("cause", "client_gone")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count("rampart_in_flight_requests", &[("listener", "inbound")]),
        Some(0.0)
    );

    // A half-close with the upload: answered when the upstream answers.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(upload("half-closed").as_bytes())
        .await
        .expect("write");
    tcp.shutdown().await.expect("half-close");
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut got)
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        up.cancelled(),
        3,
        "the half-closed client's try ran to its answer"
    );
    let text = metrics(admin).await;
    assert_eq!(
        metric_value(&text, "rampart_requests_total", &[("code", "499")]),
        Some(3.0),
        "{text}"
    );
}

/// `bytes_out` counts the body bytes the client got: none for a HEAD answer (RFC 9110 §9.3.2),
/// over every way rampart answers, and a GET's whole body for the same resource. An upstream's
/// answer (`/ok`) and rampart's own (`/dead`, 502 with a JSON body), each to HEAD and to GET
/// over the lean HTTP/1.1 server, hyper's (a `te` header hands the connection to it) and
/// HTTP/2. Before, a HEAD answer of rampart's own logged the length of the body it did not send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_out_of_a_head_answer_is_zero_and_of_a_get_its_body() {
    use crate::support::conn::Conn;
    let app = sample().await;
    let l = logged(app.addr(), "100%").await;
    let addr = l.proxy.listener("inbound");
    let mut sent = Vec::new();
    for path in ["/ok", "/dead"] {
        for te in ["", "TE: trailers\r\n"] {
            for method in ["HEAD", "GET"] {
                let mut c = Conn::open(addr).await;
                let req = format!("{method} {path} HTTP/1.1\r\nHost: a\r\n{te}\r\n");
                c.send(req.as_bytes()).await;
                let a = c.answer(method == "HEAD").await;
                let len: u64 = a
                    .header("content-length")
                    .expect("a length")
                    .parse()
                    .expect("digits");
                assert!(len > 0, "{method} {path} {te:?}: {a:?}");
                let body = if method == "HEAD" { 0 } else { len };
                assert_eq!(a.body.len() as u64, body, "{method} {path} {te:?}: {a:?}");
                sent.push((method, path, body));
            }
        }
        let head = http::h2_head(addr, path, &[]).await;
        assert!(head.body.as_ref().is_ok_and(|b| b.is_empty()), "{head:?}");
        sent.push(("HEAD", path, 0));
        let get = http::h2_get(addr, path, &[]).await;
        assert!(!get.body.is_empty(), "{get:?}");
        sent.push(("GET", path, get.body.len() as u64));
    }
    // Compared as sets: a line is written as its answer's body is dropped, which may come
    // after the next request's on another connection.
    let lines = wait_lines(&l.log, sent.len()).await;
    let mut logged: Vec<(&str, &str, u64)> = lines
        .iter()
        .map(|line| {
            let text = |k: &str| line[k].as_str().unwrap_or_default();
            let out = line["bytes_out"].as_u64().unwrap_or(u64::MAX);
            (text("method"), text("path"), out)
        })
        .collect();
    logged.sort_unstable();
    sent.sort_unstable();
    assert_eq!(logged, sent, "(method, path, bytes_out): {lines:#?}");
}

/// A proxy whose `/cut` route goes to an upstream that sends 5 bytes of a 100-byte answer and
/// closes, whose `/drip` one has a 400 ms request deadline, and whose lines of successes are
/// all thinned (`sample_ok: 0%`).
const BROKEN: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
  short: { endpoints: [$SHORT] }
policies:
  quick:
    timeout: { request: 400ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG, sample_ok: 0% }
    routes:
      - { name: cut, match: { path_prefix: /cut }, upstream: short }
      - { name: quick, match: { path_prefix: /drip }, upstream: app, policy: quick }
      - upstream: app
"#;

/// An answer that breaks after its head is logged with the status sent and, in `reason`, why
/// it broke: the upstream closed it short (`upstream_cut`, for an HTTP/1.1 and an HTTP/2
/// client), the request's deadline cut it (`timeout`), or the client went away before its end
/// (`client_gone`); such lines are written whatever `sample_ok` says, and a whole answer's is
/// still thinned. Before, each was a plain `200` with an empty reason, dropped by sampling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_broken_after_its_head_says_why() {
    use crate::support::capture::Capture;
    use crate::support::conn::Conn;
    use http_body_util::BodyExt;
    let app = sample().await;
    let short =
        Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nshort")
            .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let proxy = Proxy::builder(BROKEN)
        .var("APP", app.addr())
        .var("SHORT", short.addr())
        .var("LOG", log.display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let get = |path: &str, id: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nx-request-id: {id}\r\n\r\n").into_bytes()
    };

    // A whole answer: thinned.
    assert_eq!(http::get(addr, "/bytes/10", &[]).await.status, 200);
    // (a) The upstream closes 95 bytes short: the client's connection closes with them.
    let mut c = Conn::open(addr).await;
    c.send(&get("/cut", "cut-h1")).await;
    let (got, _) = c.read_to_end().await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("short"), "{text}");
    // The same over HTTP/2: the stream is reset.
    let mut h2 = http::h2c(addr).await;
    let req = ::http::Request::get(format!("http://{addr}/cut"))
        .header("x-request-id", "cut-h2")
        .body(http::empty())
        .expect("request");
    // (The reset may overtake the head, its frames being sent together.)
    if let Ok(rsp) = h2.send_request(req).await {
        assert_eq!(rsp.status(), 200);
        assert!(rsp.into_body().collect().await.is_err(), "reset");
    }
    // (b) The deadline cuts a body that would take 3 s.
    let mut c = Conn::open(addr).await;
    c.send(&get("/drip?chunks=10&ms=300", "deadline")).await;
    let (got, _) = c.read_to_end().await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // (c) The client reads the head and goes.
    let mut c = Conn::open(addr).await;
    c.send(&get("/bytes/20000000", "gone")).await;
    let mut head = [0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut c.io, &mut head)
        .await
        .expect("read");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    socket2::SockRef::from(&c.io)
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("SO_LINGER 0: the close resets");
    drop(c);

    let got = wait_lines(&log, 4).await;
    for (id, why) in [
        ("cut-h1", "upstream_cut"),
        ("cut-h2", "upstream_cut"),
        ("deadline", "timeout"),
        ("gone", "client_gone"),
    ] {
        let line = got
            .iter()
            .find(|v| v["request_id"] == id)
            .unwrap_or_else(|| panic!("a line for {id}: {got:?}"));
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["reason"], why, "{line}");
        let keys: Vec<&String> = line.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), FIELDS.len(), "{line}");
    }
    let cut = got
        .iter()
        .find(|v| v["request_id"] == "cut-h1")
        .expect("line");
    assert_eq!(cut["bytes_out"], 5, "{cut}");
    assert_eq!(got.len(), 4, "the whole answer's line thinned: {got:?}");
}

/// Two upstreams whose answers carry an `x-rampart-reason` of their own (as another rampart's
/// do, in front of its service): `/grpc` a gRPC call's success, `/json` a 503 with a JSON body.
const UPSTREAM_REASON: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  ok: { endpoints: [$OK] }
  busy: { endpoints: [$BUSY] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG, sample_ok: 100% }
    routes:
      - { match: { path_prefix: /grpc }, upstream: ok }
      - { upstream: busy }
"#;

const GRPC_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 0\r\nx-rampart-reason: upstream_unavailable\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-rampart-reason: timeout\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

/// An upstream's `x-rampart-reason` is the upstream's header, never taken for rampart's own
/// answer: a gRPC call's 200 with `grpc-status: 0` reaches the client as it came (status 0,
/// its body, the header), a 503's JSON body is not given a `request_id`, and the access log's
/// `reason` is empty for both. Fails before the fix: the call got `grpc-status: 14` and no
/// body, the 503's body was rewritten, and both lines had the upstream's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_reason_header_is_passed_on_not_taken_for_ramparts() {
    use crate::support::capture::Capture;
    use crate::support::raw;
    let (ok, busy) = (Capture::start(GRPC_OK).await, Capture::start(BUSY).await);
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("access.jsonl");
    let proxy = Proxy::builder(UPSTREAM_REASON)
        .var("OK", ok.addr())
        .var("BUSY", busy.addr())
        .var("LOG", log.display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let wait = std::time::Duration::from_secs(5);

    let call = b"POST /grpc/Svc/M HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let rsp = raw::exchange(addr, call, wait).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(
        rsp.header("grpc-status").as_deref(),
        Some("0"),
        "{}",
        rsp.text()
    );
    assert_eq!(
        rsp.header("x-rampart-reason").as_deref(),
        Some("upstream_unavailable")
    );
    assert!(rsp.text().ends_with("\r\n\r\nhello"), "{}", rsp.text());

    let get = b"GET /json HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n";
    let rsp = raw::exchange(addr, get, wait).await;
    assert_eq!(rsp.status(), Some(503), "{}", rsp.text());
    assert_eq!(rsp.header("x-rampart-reason").as_deref(), Some("timeout"));
    assert!(rsp.text().ends_with("\r\n\r\n{}"), "{}", rsp.text());

    let got = wait_lines(&log, 2).await;
    for line in &got {
        assert_eq!(line["reason"], "", "{line}");
    }
    assert_eq!(got[0]["status"], 200, "{}", got[0]);
    assert_eq!(got[1]["status"], 503, "{}", got[1]);
}
