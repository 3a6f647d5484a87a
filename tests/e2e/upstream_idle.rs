//! `timeout.idle` through real sockets: an HTTP/1.1 upstream that stalls before its answer's
//! head or in its body is cut within the idle limit (its connection closed, the timeout
//! counted), a client that left no longer keeps it open, and a client slow to read is never
//! cut by it. (The HTTP/2 upstream's case is in `upstream_h2.rs`; the file's checks in
//! `config/tests`.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::{http, metric_value, metrics, raw, sample, Proxy};

/// `$APP` behind a route whose policy is `timeout: { idle: $IDLE }` and `$MORE`; its access
/// log at `$LOG`.
const IDLE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  quiet:
    timeout: { idle: $IDLE }
    $MORE
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: app, policy: quiet }
"#;

/// What the stalling answers begin with: a head that promises 100 bytes, and 5 of them.
const BEGUN: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello";

/// A rampart of [`IDLE`] in front of `app`, and its access log's file (in `dir`).
async fn fronted(app: &str, idle: &str, more: &str, dir: &tempfile::TempDir) -> Proxy {
    Proxy::builder(IDLE)
        .var("APP", app)
        .var("IDLE", idle)
        .var("MORE", more)
        .var("LOG", dir.path().join("access.jsonl").display())
        .spawn()
        .await
}

/// An HTTP/1.1 upstream that reads each request's head, sends `answer` (a head and the start
/// of its body, or nothing), then nothing more, keeping its connection open (10 s at most)
/// until rampart closes it.
struct Stalling {
    addr: SocketAddr,
    /// Requests taken.
    asked: Arc<AtomicUsize>,
    /// For each connection rampart closed: how long after the answer (or the request, for an
    /// empty answer) it closed.
    closed_after: Arc<parking_lot::Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stalling {
    async fn start(answer: &'static [u8]) -> Stalling {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let asked = Arc::new(AtomicUsize::new(0));
        let closed_after = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let task = {
            let (asked, closed_after) = (asked.clone(), closed_after.clone());
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = tcp.accept().await {
                    let (asked, closed_after) = (asked.clone(), closed_after.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        asked.fetch_add(1, Ordering::SeqCst);
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                        let sent = Instant::now();
                        let closed = async { while let Ok(1..) = conn.read(&mut buf).await {} };
                        if tokio::time::timeout(Duration::from_secs(10), closed)
                            .await
                            .is_ok()
                        {
                            closed_after.lock().push(sent.elapsed());
                        }
                    });
                }
            })
        };
        Stalling {
            addr,
            asked,
            closed_after,
            task,
        }
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    fn closed_after(&self) -> Vec<Duration> {
        self.closed_after.lock().clone()
    }
}

/// `rampart_timeouts_total{route="app", kind}` of `proxy`.
async fn timeouts(proxy: &Proxy, kind: &str) -> Option<f64> {
    let text = metrics(proxy.admin()).await;
    metric_value(
        &text,
        "rampart_timeouts_total",
        &[("route", "app"), ("kind", kind)],
    )
}

/// Whether `took` is the idle limit of 300 ms, give or take what scheduling adds.
fn about_the_limit(took: Duration) -> bool {
    took >= Duration::from_millis(280) && took < Duration::from_millis(1500)
}

/// The upstream's connection closed by rampart at the idle limit, counted once as an idle
/// timeout, and nothing left in flight.
async fn upstream_let_go_at_the_limit(up: &Stalling, proxy: &Proxy) {
    crate::assert_eventually!(
        up.closed_after().len() == 1,
        "rampart closes the upstream's connection: {:?}",
        up.closed_after()
    );
    assert!(
        about_the_limit(up.closed_after()[0]),
        "closed at the idle limit: {:?}",
        up.closed_after()
    );
    assert_eq!(timeouts(proxy, "idle").await, Some(1.0));
    let text = metrics(proxy.admin()).await;
    let in_flight = metric_value(
        &text,
        "rampart_in_flight_requests",
        &[("listener", "inbound")],
    );
    assert_eq!(in_flight, Some(0.0), "{text}");
}

/// An answer whose upstream sends its head and the start of its body, then nothing, on a
/// route without `timeout.request`, is cut at `timeout.idle`: the client's connection closed
/// without the rest (it is not kept: the body is short), the upstream's connection closed by
/// rampart, the timeout counted, nothing left in flight, and the access log line says
/// `timeout` with the status and the bytes sent. Before, the answer held the request (and the
/// client) for as long as the upstream kept its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_stalls_after_its_head_is_cut_at_the_idle_timeout() {
    let up = Stalling::start(BEGUN).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let proxy = fronted(&up.addr.to_string(), "300ms", "", &dir).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    tcp.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let t0 = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "the connection must end: {text:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("hello"),
        "the bytes that came, no more: {text:?}"
    );
    assert!(about_the_limit(took), "cut at the idle limit: {took:?}");

    upstream_let_go_at_the_limit(&up, &proxy).await;
    let lines = crate::support::wait_log_lines(&dir.path().join("access.jsonl"), 1).await;
    let line = &lines[0];
    assert_eq!(
        (
            line["status"].as_u64(),
            line["reason"].as_str(),
            line["bytes_out"].as_u64()
        ),
        (Some(200), Some("timeout"), Some(5)),
        "{line}"
    );
}

/// An upstream that takes the request and answers nothing: at `timeout.idle` after the
/// request went out the try ends as a per-try timeout does: retried on `timeout` (to the
/// other endpoint), a 504 `timeout` when the last try idles too, each try counted as a
/// timeout (`kind="idle"`) and a 504 of the upstream, each connection closed. Before, the
/// request waited for as long as the upstream kept its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_silent_after_the_request_is_a_timeout_retried_on_timeout() {
    let (a, b) = (Stalling::start(b"").await, Stalling::start(b"").await);
    let dir = tempfile::tempdir().expect("a temp dir");
    let retry = "retry: { attempts: 2, on: [timeout], backoff: { base: 1ms, max: 2ms }, budget: { ratio: 100%, min_per_second: 100 } }";
    let proxy = fronted(&format!("{}, {}", a.addr, b.addr), "300ms", retry, &dir).await;
    let t0 = Instant::now();
    let rsp = tokio::time::timeout(
        Duration::from_secs(5),
        http::get(proxy.listener("inbound"), "/silent", &[]),
    )
    .await
    .expect("answered, not left waiting");
    let took = t0.elapsed();
    rsp.assert_rampart(504, "timeout");
    assert!(
        took >= Duration::from_millis(580) && took < Duration::from_millis(2500),
        "two tries of 300 ms: {took:?}"
    );
    assert_eq!((a.asked(), b.asked()), (1, 1), "one try each");
    assert_eq!(timeouts(&proxy, "idle").await, Some(2.0));
    let text = metrics(proxy.admin()).await;
    let retries = [("route", "app"), ("upstream", "app")];
    assert_eq!(
        metric_value(&text, "rampart_retries_total", &retries),
        Some(1.0),
        "{text}"
    );
    let tries = [("upstream", "app"), ("code", "504")];
    assert_eq!(
        metric_value(&text, "rampart_upstream_requests_total", &tries),
        Some(2.0),
        "each try is the upstream's timeout: {text}"
    );
    crate::assert_eventually!(
        a.closed_after().len() == 1 && b.closed_after().len() == 1,
        "each upstream connection closed: {:?} {:?}",
        a.closed_after(),
        b.closed_after()
    );
}

/// A client that leaves (closes its HTTP/1.1 connection) while the upstream stalls in the
/// body, on a route without `timeout.request`: nothing reads the client while rampart waits
/// on the upstream (and its close could be a half-close), so only the idle timeout ends the
/// answer; the upstream sees its connection closed at `timeout.idle`. Before, it stayed open
/// (with the request's slot and counts) for as long as the upstream kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_of_a_client_that_left_is_closed_at_the_idle_timeout() {
    let up = Stalling::start(BEGUN).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let proxy = fronted(&up.addr.to_string(), "300ms", "", &dir).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    tcp.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"hello") {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) => got.extend_from_slice(&buf[..n]),
            other => panic!("the head and first bytes must come: {other:?} {got:?}"),
        }
    }
    drop(tcp);
    upstream_let_go_at_the_limit(&up, &proxy).await;
}

/// A client slow to take its answer is never cut by the idle timeout, nor is the upstream
/// blamed for it: it reads nothing of an 8 MiB answer for 800 ms (the upstream's side fills up
/// and waits), then reads it at a millisecond a read, and gets all of it, under an idle limit
/// of 200 ms; no idle timeout is counted. (A timer that ran from the last byte handed on, not
/// from a read that found nothing, would cut it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_read_is_not_cut_by_the_idle_timeout() {
    const LEN: usize = 8 << 20;
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let proxy = fronted(&app.addr().to_string(), "200ms", "", &dir).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    let ask = format!("GET /bytes/{LEN} HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n");
    tcp.write_all(ask.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = raw::drain_slowly(&mut tcp, Duration::from_secs(20))
        .await
        .expect("the answer ends");
    assert!(got.start.starts_with("HTTP/1.1 200"), "{}", got.start);
    assert!(
        got.count > LEN,
        "the whole answer came, {} bytes of {LEN} and a head",
        got.count
    );
    assert_eq!(timeouts(&proxy, "idle").await, Some(0.0));
}
