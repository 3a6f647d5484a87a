//! The command line: `validate` verdicts with exact error locations, `--version`, and `run`
//! refusing a bad file before it listens.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::proxy::run as rampart;
use crate::support::{free_addr, Proxy};

const GOOD: &str = r#"version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [127.0.0.1:3000] }
policies:
  std:
    timeout: { request: 15s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: std
"#;

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Validates `template` (rendered); returns the file path and the output.
async fn validate(template: &str) -> (tempfile::TempDir, String, Output) {
    let rendered = Proxy::builder(template).render();
    let path = rendered.path.display().to_string();
    let out = rampart(&["validate", "--config", &path]).await;
    (rendered.dir, path, out)
}

#[tokio::test]
async fn validate_good_file_exits_0_with_one_line() {
    let (_dir, _path, out) = validate(GOOD).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "one line: {stdout:?}");
    assert!(stdout.contains("ok"), "a summary saying ok: {stdout:?}");
    assert!(!stdout.contains("error"), "{stdout:?}");
}

/// Asserts exit 1 and an error line `PATH:LINE:COL: KEY...` whose rest mentions `needle`.
fn assert_error_at(out: &Output, path: &str, line: usize, col: usize, key: &str, needle: &str) {
    let text = both(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let prefix = format!("{path}:{line}:{col}: {key}");
    let found = text.lines().find(|l| l.starts_with(&prefix));
    let found = found.unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    assert!(found.contains(needle), "{found:?} must mention {needle:?}");
}

#[tokio::test]
async fn validate_unknown_key_points_at_the_key() {
    // `retyr` starts at line 7, column 5.
    let bad = GOOD.replace(
        "    timeout: { request: 15s }",
        "    retyr: { attempts: 2 }",
    );
    let (_dir, path, out) = validate(&bad).await;
    assert_error_at(&out, &path, 7, 5, "policies.std", "retyr");
}

/// A collector `ca` that holds no certificate refuses the file at the `ca` key (the TLS file
/// checks run in `validate` as at start and reload), not at the first export.
#[tokio::test]
async fn validate_reads_the_collector_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let bad = format!(
        "{GOOD}tracing:\n  otlp:\n    endpoint: https://collector.example:4318\n    ca: {}\n",
        not_pem.display()
    );
    let (_dir, path, out) = validate(&bad).await;
    assert_error_at(&out, &path, 18, 5, "tracing.otlp.ca", "no certificate");
}

/// A collector client key that holds no key refuses the file at `tracing.otlp.key` (the key that
/// names the file), not at the collector's `ca`.
#[tokio::test]
async fn validate_places_a_collector_key_error_at_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("client.key");
    std::fs::write(&not_pem, "not a key\n").expect("write");
    let cert = dir.path().join("client.pem");
    let issued = rcgen::generate_simple_self_signed(vec!["rampart".to_owned()]).expect("cert");
    std::fs::write(&cert, issued.cert.pem()).expect("write");
    let bad = format!(
        "{GOOD}tracing:\n  otlp:\n    endpoint: https://collector.example:4318\n    cert: {}\n    key: {}\n",
        cert.display(),
        not_pem.display()
    );
    let (_dir, path, out) = validate(&bad).await;
    assert_error_at(&out, &path, 19, 5, "tracing.otlp.key", "no private key");
}

/// The same for a `rediss://` store: its `tls` files are read by `validate`, and a `ca` that
/// holds no certificate refuses the file at the store's `tls`.
#[tokio::test]
async fn validate_reads_the_store_tls_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let bad = format!(
        "{GOOD}global_store:\n  redis:\n    url: rediss://redis.internal:6380/0\n    tls: {{ ca: {} }}\n",
        not_pem.display()
    );
    let (_dir, path, out) = validate(&bad).await;
    assert_error_at(
        &out,
        &path,
        18,
        5,
        "global_store.redis.tls",
        "no certificate",
    );
}

#[tokio::test]
async fn validate_bad_duration_points_at_the_value() {
    // `15x` starts at line 8, column 16.
    let bad = GOOD.replace(
        "    timeout: { request: 15s }",
        "    timeout:\n      request: 15x",
    );
    let (_dir, path, out) = validate(&bad).await;
    assert_error_at(&out, &path, 8, 16, "policies.std.timeout.request: ", "15x");
}

#[tokio::test]
async fn validate_dangling_upstream_points_at_the_reference() {
    // `nope` starts at line 13, column 19; the key path names the route's `upstream`.
    let bad = GOOD.replace("      - upstream: app", "      - upstream: nope");
    let (_dir, path, out) = validate(&bad).await;
    assert_error_at(&out, &path, 13, 19, "listeners", "nope");
    let text = both(&out);
    let line = text
        .lines()
        .find(|l| l.contains("nope"))
        .unwrap_or_default();
    let key = line.split(": ").nth(1).unwrap_or_default();
    assert!(
        key.ends_with("upstream"),
        "key path {key:?} must end in `upstream`"
    );
    assert!(
        key.contains("routes"),
        "key path {key:?} must name the route"
    );
}

#[tokio::test]
async fn version_prints_the_version() {
    let out = rampart(&["--version"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("rampart "), "{stdout:?}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout:?}");
}

#[tokio::test]
async fn run_with_invalid_file_exits_1_without_listening() {
    let bad = GOOD.replace("15s", "15x");
    let rendered = Proxy::builder(&bad).render();
    let listen = rendered.listeners["inbound"];
    let path = rendered.path.display().to_string();
    let out = rampart(&["run", "--config", &path, "--log-format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    // `15x` is at line 7, column 25 of the file.
    assert!(
        both(&out).contains(&format!("{path}:7:25: ")),
        "{}",
        both(&out)
    );
    for addr in [listen, rendered.admin] {
        let conn = tokio::net::TcpStream::connect(addr).await;
        assert!(conn.is_err(), "nothing may listen on {addr}");
    }
    assert!(Path::new(&path).exists());
}

#[tokio::test]
async fn validate_never_binds() {
    // The listener's address is taken by us: validate must still pass, and not steal it.
    let taken = std::net::TcpListener::bind(free_addr()).expect("bind");
    let addr = taken.local_addr().expect("addr");
    let rendered = Proxy::builder(&GOOD.replace("$LISTEN_inbound", &addr.to_string())).render();
    let path = rendered.path.display().to_string();
    let out = rampart(&["validate", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
}

/// A start that cannot bind a listener says where the file gives its address, as every other
/// refusal of the file does (before: the name and address only).
#[tokio::test]
async fn a_listen_address_that_is_taken_is_placed_in_the_file() {
    let taken = std::net::TcpListener::bind(free_addr()).expect("bind");
    let addr = taken.local_addr().expect("addr");
    let rendered = Proxy::builder(&GOOD.replace("$LISTEN_inbound", &addr.to_string())).render();
    let path = rendered.path.display().to_string();
    let out = rampart(&["run", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let line = GOOD
        .lines()
        .position(|l| l.contains("$LISTEN_inbound"))
        .expect("the listen line")
        + 1;
    let want = format!("{path}:{line}:");
    let text = both(&out);
    assert!(
        text.contains(&want) && text.contains("listeners[0].listen: cannot bind listener"),
        "want {want:?} in:\n{text}"
    );
}

/// A start that cannot bind the admin listener says where the file gives its address, at the
/// `admin.listen` value (line 2, column 18 of `GOOD`), as a listener's bind failure does.
/// Before, it named the address alone.
#[tokio::test]
async fn an_admin_address_that_is_taken_is_placed_in_the_file() {
    let taken = std::net::TcpListener::bind(free_addr()).expect("bind");
    let addr = taken.local_addr().expect("addr");
    let rendered = Proxy::builder(&GOOD.replace("$ADMIN", &addr.to_string())).render();
    let path = rendered.path.display().to_string();
    let out = rampart(&["run", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let want = format!("{path}:2:18: admin.listen: cannot bind the admin listener on {addr}");
    let text = both(&out);
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
}

#[tokio::test]
async fn run_logs_one_json_object_per_line() {
    let app = crate::support::sample().await;
    let template = GOOD.replace("127.0.0.1:3000", "$APP");
    let mut proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .spawn()
        .await;
    let rsp = crate::support::http::get(proxy.listener("inbound"), "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proxy.log());
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "rampart must log at info");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        assert!(v.get("level").is_some(), "a level in {line:?}");
    }
}

/// `RAMPART_WORKERS` that is not a number is not silently ignored: the log says so, and the
/// proxy serves with its default workers.
#[tokio::test]
async fn a_workers_count_that_is_not_a_number_is_named_in_the_log() {
    let log = serving_with_workers("two").await;
    assert!(
        log.contains("RAMPART_WORKERS is not a number") && log.contains("\"two\""),
        "{log}"
    );
}

/// `RAMPART_WORKERS=0` is no count of workers: warned about as a value that is not a number
/// is, and served with one worker per core (before: one worker, without a word).
#[tokio::test]
async fn a_workers_count_of_zero_is_named_in_the_log_and_one_per_core_serve() {
    let (log, workers) = serving_with_workers_counted("0").await;
    assert!(
        log.contains("RAMPART_WORKERS is 0") && log.contains("one worker per core"),
        "{log}"
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(workers, cores, "{log}");
}

/// The log of a proxy started with `RAMPART_WORKERS=workers`, once it has served a request.
async fn serving_with_workers(workers: &str) -> String {
    serving_with_workers_counted(workers).await.0
}

/// [`serving_with_workers`], and how many workers `/metrics` shows
/// (`rampart_open_connections{worker}`).
async fn serving_with_workers_counted(workers: &str) -> (String, usize) {
    let app = crate::support::sample().await;
    let proxy = Proxy::builder(&crate::support::one_route(""))
        .var("APP", app.addr())
        .env("RAMPART_WORKERS", workers)
        .spawn()
        .await;
    let rsp = crate::support::http::get(proxy.listener("inbound"), "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
    let text = crate::support::metrics(proxy.admin()).await;
    let label = crate::support::metrics::label_values(&text, "rampart_open_connections", "worker");
    (proxy.log(), label.len())
}

/// A `RAMPART_WORKERS` far past any core count is capped, and the log says so (it made
/// thousands of threads, then ran out of descriptors).
#[tokio::test]
async fn a_workers_count_past_the_most_is_capped_and_named_in_the_log() {
    let log = serving_with_workers("100000").await;
    assert!(
        log.contains("RAMPART_WORKERS is above the most") && log.contains("256"),
        "{log}"
    );
}

/// `health --timeout 0s` is refused as a bad argument, not tried and reported as a dead admin.
#[tokio::test]
async fn health_refuses_a_zero_timeout() {
    let out = rampart(&["health", "--admin", "127.0.0.1:9", "--timeout", "0s"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        both(&out).contains("must be longer than 0s"),
        "{}",
        both(&out)
    );
}

/// A start that cannot bind its admin port is recorded in the audit trail, as one that cannot
/// bind a listener is (SPEC §11: every start attempt).
#[tokio::test]
async fn a_start_whose_admin_port_is_taken_is_in_the_trail() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("temp dir");
    let trail = dir.path().join("audit.jsonl");
    let config = dir.path().join("rampart.yaml");
    let text = format!(
        "version: 1\nadmin: {{ listen: {admin} }}\naudit: {{ file: \"{}\" }}\nupstreams:\n  app: {{ endpoints: [127.0.0.1:9] }}\nlisteners:\n  - {{ name: i, direction: inbound, listen: 127.0.0.1:0, routes: [ {{ upstream: app }} ] }}\n",
        trail.display()
    );
    std::fs::write(&config, text).expect("write");
    let out = rampart(&["run", "--config", &config.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&trail)
            .expect("the refused start is in the trail")
            .lines()
            .next()
            .expect("one line"),
    )
    .expect("JSON");
    assert_eq!(line["result"], "error", "{line}");
    assert!(
        line["errors"][0].as_str().unwrap_or("").contains("admin"),
        "{line}"
    );
    drop(taken);
}
