//! The command line: `validate` verdicts with exact error locations, `--version`, and `run`
//! refusing a bad file before it listens.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::proxy::{run as rampart, run_env};
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

/// The verdict is the exit code, whether or not the output could be written: with stdout on
/// `/dev/full` (every write fails, as into a pipe `head -1` closed), a good file still exits 0
/// and a bad one 1, never a panic's 101.
#[tokio::test]
async fn validate_exits_with_its_verdict_when_stdout_takes_nothing() {
    for (template, code) in [(GOOD, 0), ("version: 1\nbogus: 1\n", 1)] {
        let rendered = Proxy::builder(template).render();
        let full = std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let child = tokio::process::Command::new(crate::support::proxy::bin())
            .args(["validate", "--config", &rendered.path.display().to_string()])
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the rampart binary must start");
        let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
            .await
            .expect("validate must exit within 15 s")
            .expect("its stderr must be readable");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
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
        12,
        "global_store.redis.tls.ca",
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

/// `rampart health` with `RAMPART_CONFIG` naming `path`, the container's HEALTHCHECK.
async fn health_of(path: &Path) -> Output {
    let path = path.display().to_string();
    run_env(&["health", "--timeout", "2s"], &[("RAMPART_CONFIG", &path)]).await
}

/// A policy on disk that fails validation (a typo a reload refused, while the policy before it
/// serves) still tells `health` where the admin listener is: it reads `admin.listen` alone,
/// and answers 0 while rampart serves. Also with a YAML syntax error elsewhere in the file.
/// Before, health validated the whole file and said 1 ("cannot take admin.listen").
#[tokio::test]
async fn health_reads_admin_listen_alone_from_a_file_that_does_not_validate() {
    let app = crate::support::sample().await;
    let template = "version: 1\nadmin:\n  listen: $ADMIN   # the admin\nupstreams:\n  app: { endpoints: [$APP] }\nlisteners:\n  - { name: inbound, direction: inbound, listen: $LISTEN_inbound, routes: [ { upstream: app } ] }\n";
    let proxy = Proxy::builder(template)
        .var("APP", app.addr())
        .spawn()
        .await;
    let path = proxy.config_path().to_path_buf();
    let good = std::fs::read_to_string(&path).expect("the policy");
    let out = health_of(&path).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    for broken in [
        format!("{good}bogus: 1\n"),
        format!("{good}x: [\n"),
        good.replace("upstreams:", "upstreams: {\n"),
    ] {
        std::fs::write(&path, &broken).expect("write");
        let out = health_of(&path).await;
        assert_eq!(out.status.code(), Some(0), "{broken}\n{}", both(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&proxy.admin().to_string()),
            "{}",
            both(&out)
        );
    }
}

/// A policy file that is not one (a FIFO nobody writes) neither holds `health` past its
/// `--timeout` nor fails it unexplained: it warns and probes the default admin address.
/// Before, `health --config FIFO --timeout 1s` waited for a writer for ever.
#[tokio::test]
async fn health_within_its_timeout_whatever_the_config_path_is() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = crate::support::fifo(dir.path());
    let began = tokio::time::Instant::now();
    let fifo = fifo.display().to_string();
    let out = rampart(&["health", "--config", &fifo, "--timeout", "1s"]).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: cannot take admin.listen") && err.contains("FIFO"),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:9901"), "{err}");
}

/// A policy file of two YAML documents (rampart refuses it) gives no `admin.listen` to trust:
/// `health` warns, naming the second document, and probes the default. Before, it probed the
/// default silently.
#[tokio::test]
async fn health_warns_of_a_policy_file_of_two_documents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("two.yaml");
    let text = format!("version: 1\n---\nadmin: {{ listen: {} }}\n", free_addr());
    std::fs::write(&path, text).expect("write");
    let path = path.display().to_string();
    let out = rampart(&["health", "--config", &path, "--timeout", "300ms"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("warning: cannot take admin.listen from {path}"))
            && err.contains("more than one YAML document"),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:9901"), "{err}");
}

/// A connection reset says so, and a silent admin says "timed out", not "Resource temporarily
/// unavailable" (EAGAIN) nor "within 2s" for a reset that came at once.
#[tokio::test]
async fn health_says_what_happened_to_the_probe() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let out = rampart(&["health", "--admin", &addr, "--timeout", "300ms"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("timed out") && !err.contains("os error 11"),
        "{err}"
    );

    let resets = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = resets.local_addr().expect("addr").to_string();
    let reset = std::thread::spawn(move || {
        let (conn, _) = resets.accept().expect("accept");
        // SO_LINGER 0: close sends a reset.
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(conn);
    });
    let out = rampart(&["health", "--admin", &addr, "--timeout", "2s"]).await;
    reset.join().expect("the reset");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("broke before an answer") && !err.contains("within"),
        "{err}"
    );
}

/// A policy path that is not a regular file is refused, naming what it is, without being
/// read: a FIFO (before: `validate` waited for a writer for ever) and a device (before,
/// `/dev/null` read as an empty file, and `/dev/zero` grew without bound).
#[tokio::test]
async fn validate_refuses_a_policy_path_that_is_not_a_regular_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = crate::support::fifo(dir.path()).display().to_string();
    for (path, what) in [
        (fifo.as_str(), "a FIFO"),
        ("/dev/null", "a character device"),
    ] {
        let out = rampart(&["validate", "--config", path]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{path}: the policy file is {what}")),
            "{err}"
        );
    }
}

/// A policy file past 4 MiB is refused, saying the cap (before: read whole, however large).
#[tokio::test]
async fn validate_refuses_a_policy_file_past_the_cap() {
    let rendered = Proxy::builder(GOOD).render();
    let mut text = rendered.text.clone();
    let comment = format!("# {}\n", "x".repeat(1022));
    while text.len() <= 4 << 20 {
        text.push_str(&comment);
    }
    std::fs::write(&rendered.path, &text).expect("write");
    let path = rendered.path.display().to_string();
    let out = rampart(&["validate", "--config", &path]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("larger than 4 MiB"), "{err}");
}

/// A reload of a policy path that became a FIFO is refused at once and the policy in force
/// stays (before, the reload waited on the FIFO for ever, and every reload after it).
#[tokio::test]
async fn a_reload_of_a_fifo_is_refused_and_the_policy_stays() {
    let app = crate::support::sample().await;
    let proxy = Proxy::builder(&crate::support::one_route(""))
        .var("APP", app.addr())
        .spawn()
        .await;
    std::fs::remove_file(proxy.config_path()).expect("remove");
    let fifo = crate::support::fifo(proxy.dir());
    std::fs::rename(&fifo, proxy.config_path()).expect("rename");
    let rsp = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::http::post(proxy.admin(), "/reload", &[], ""),
    )
    .await
    .expect("POST /reload must be answered at once");
    assert_eq!(rsp.status, 400, "{}", proxy.log());
    assert!(rsp.text().contains("FIFO"), "{}", rsp.text());
    let rsp = crate::support::http::get(proxy.listener("inbound"), "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
}

/// Every error of a file shows (SPEC §14): 20,000 unknown keys give 20,000 lines (before: 200,
/// and nothing said the rest was left out; then one pass of the file per key, so 4,000 took
/// 4 s and 20,000 were cut short). Past the work the check may take, the list ends saying
/// there are more. Checked by count, not by time: the old code fails it on any machine.
#[tokio::test]
async fn validate_shows_every_error_or_says_some_were_left_out() {
    // Unknown keys of one mapping are refused together: 20,000 are all shown (before, one
    // pass of the whole file each: 4,000 took 4 s in a debug build, and past the work
    // bound the rest were "... and more errors").
    let mut keys = GOOD.to_owned();
    for i in 0..20_000 {
        keys.push_str(&format!("bogus{i}: 1\n"));
    }
    let (_dir, _path, out) = validate(&keys).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines = err.lines().filter(|l| l.contains("unknown key")).count();
    assert_eq!(lines, 20_000, "{err}");
    assert!(!err.contains("and more errors"), "{err}");

    // 6,000 list items of the wrong kind: each takes its own pass of the tree (a value error
    // is taken out before the next can show), so the work bound stops them, and says so.
    let items = vec!["1"; 6000].join(", ");
    let (_dir, path, out) = validate(&format!("{GOOD}tenants:\n  from: [{items}]\n")).await;
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!("{path}: ... and more errors")),
        "{last}"
    );
}

/// `RUST_LOG=` (set, empty: an env file's line) logs at the default, info (before: nothing at
/// all, "reload refused" included); a `RUST_LOG` that is no filter is named on stderr.
#[tokio::test]
async fn an_empty_rust_log_logs_at_info_and_a_bad_one_is_named() {
    let app = crate::support::sample().await;
    let proxy = Proxy::builder(&crate::support::one_route(""))
        .var("APP", app.addr())
        .env("RUST_LOG", "")
        .spawn()
        .await;
    assert!(proxy.log().contains("rampart started"), "{}", proxy.log());
    let out = run_env(&["--version"], &[("RUST_LOG", "bogus=[")]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "--version logs nothing: {err}");
    let (_dir, path, _) = validate(GOOD).await;
    let out = run_env(&["validate", "--config", &path], &[("RUST_LOG", "bogus=[")]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("RUST_LOG=\"bogus=[\" is not a log filter")
            .count(),
        1,
        "{err}"
    );
}

/// `RAMPART_CONFIG=` (empty) is named when no policy file is given otherwise, instead of
/// clap's "a value is required for '--config'" about a flag nobody passed.
#[tokio::test]
async fn an_empty_rampart_config_is_named() {
    let out = run_env(&["validate"], &[("RAMPART_CONFIG", "")]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("RAMPART_CONFIG is set but empty"), "{err}");
    assert!(!err.contains("a value is required"), "{err}");
}

/// A SIGHUP while rampart still reads its policy (a large one: tens of milliseconds) waits
/// for the start and reloads, instead of ending the process (before: exit 129).
#[tokio::test]
async fn a_sighup_during_the_start_does_not_end_it() {
    let app = crate::support::sample().await;
    let rendered = Proxy::builder(&crate::support::one_route(""))
        .var("APP", app.addr())
        .render();
    let mut text = rendered.text.clone();
    let comment = format!("# {}\n", "x".repeat(1022));
    while text.len() + comment.len() < 4 << 20 {
        text.push_str(&comment);
    }
    std::fs::write(&rendered.path, &text).expect("write");
    let mut child = tokio::process::Command::new(crate::support::proxy::bin())
        .args(["run", "--config"])
        .arg(&rendered.path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("rampart must start");
    let pid = child.id().expect("running").to_string();
    // Sent once rampart catches SIGHUP, or 80 ms after exec (well before a 4 MiB policy is
    // read, when it catches it only once started), whichever comes first.
    let sent_by = tokio::time::Instant::now() + Duration::from_millis(80);
    while !catches_sighup(&pid) && tokio::time::Instant::now() < sent_by {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            panic!("rampart ended on a SIGHUP during its start: {exit}");
        }
        if crate::support::http::try_get(rendered.admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when process `pid` catches SIGHUP (bit 0 of `SigCgt` in /proc/PID/status).
fn catches_sighup(pid: &str) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 == 1)
}
