//! CONNECT tunnels (SPEC §14): curl with `HTTPS_PROXY` pointed at the outbound listener
//! reaches a TLS server through rampart; a tunnel counts against its route's rate limit; an
//! unknown host is 404, an inbound listener 405, an unreachable upstream 502 (and then 503
//! from the breaker it opened).
//!
//! Before this, rampart rewrote a CONNECT to `CONNECT /` and forwarded it as an ordinary
//! request (issue 24), so every test here fails on the code before the tunnel was built.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::edges::OK;
use crate::support::capture::Capture;
use crate::support::{raw, Proxy};

const BODY: &str = "through the tunnel\n";

const POLICY: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  secure: { endpoints: [$TLS], connect_timeout: 1s }
  dead: { endpoints: [$DEAD], connect_timeout: 1s }
  plain: { endpoints: [$PLAIN] }
policies:
  once: { rate_limit: { per_tenant: { rate: 1/h, burst: 1 } } }
  fragile: { circuit_breaker: { consecutive_failures: 1, open_for: 1m } }
  drill: { fault: { abort: { percent: 100%, status: 200 } } }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - { match: { host: secure.example }, upstream: secure, policy: once }
      - { match: { host: dead.example }, upstream: dead, policy: fragile }
      - { match: { host: plain.example }, upstream: plain }
      - { match: { host: drill.example }, upstream: plain, policy: drill }
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: secure }
"#;

/// A TLS server on 127.0.0.1 for `secure.example` that answers every request with [`BODY`].
struct TlsServer {
    addr: SocketAddr,
    ca: PathBuf,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["secure.example".to_owned()])
        .expect("a self-signed certificate");
    let ca = dir.path().join("secure.pem");
    std::fs::write(&ca, ck.cert.pem()).expect("the certificate must be writable");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let certs: Vec<CertificateDer<'static>> = vec![ck.cert.der().clone()];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let task = {
        let hits = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let (acceptor, hits) = (acceptor.clone(), hits.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let rsp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                        BODY.len()
                    );
                    let _ = tls.write_all(rsp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        })
    };
    TlsServer {
        addr,
        ca,
        hits,
        task,
        _dir: dir,
    }
}

/// What curl printed and whether it succeeded.
struct Curl {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `curl https://secure.example/hello` with `HTTPS_PROXY` set to `proxy`.
async fn curl(proxy: SocketAddr, ca: &Path) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("https://secure.example/hello")
        .env("HTTPS_PROXY", format!("http://{proxy}"))
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl must run (scripts/test.sh installs it)");
    Curl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `CONNECT target` sent to `addr`, and what came back within 2 s.
pub(crate) async fn connect(addr: SocketAddr, target: &str) -> raw::RawResp {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    raw::exchange(addr, req.as_bytes(), Duration::from_secs(2)).await
}

pub(crate) fn assert_refused(rsp: &raw::RawResp, status: u16, reason: &str) {
    assert_eq!(rsp.status(), Some(status), "{}", rsp.text());
    assert_eq!(
        rsp.header("x-rampart-reason").as_deref(),
        Some(reason),
        "{}",
        rsp.text()
    );
}

async fn setup() -> (TlsServer, Proxy) {
    let (tls, _, proxy) = setup_with_plain().await;
    (tls, proxy)
}

/// As [`setup`], with `plain.example` routed to a raw-capture upstream.
async fn setup_with_plain() -> (TlsServer, Capture, Proxy) {
    let tls = tls_server().await;
    let plain = Capture::start(OK).await;
    let proxy = Proxy::builder(POLICY)
        .var("TLS", tls.addr)
        .closed("DEAD")
        .var("PLAIN", plain.addr())
        .spawn()
        .await;
    (tls, plain, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_clients_tunnel_and_each_tunnel_counts_against_the_limit() {
    let (tls, proxy) = setup().await;
    let outbound = proxy.listener("outbound");
    let first = curl(outbound, &tls.ca).await;
    assert!(first.ok, "curl through the tunnel failed: {}", first.stderr);
    assert_eq!(first.stdout, BODY);
    assert_eq!(tls.hits.load(Ordering::SeqCst), 1);
    // The tunnel's connect is the upstream's try: counted as one, with its duration.
    let text = crate::support::metrics(proxy.admin()).await;
    let upstream = |name: &str| {
        crate::support::metric_value(&text, name, &[("upstream", "secure"), ("code", "200")])
    };
    assert_eq!(
        upstream("rampart_upstream_requests_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        crate::support::metric_value(
            &text,
            "rampart_upstream_request_duration_seconds_count",
            &[("upstream", "secure")]
        ),
        Some(1.0),
        "{text}"
    );

    let second = curl(outbound, &tls.ca).await;
    assert!(!second.ok, "a second tunnel past 1/h must be refused");
    assert!(second.stderr.contains("429"), "{}", second.stderr);
    assert_refused(
        &connect(outbound, "secure.example:443").await,
        429,
        "rate_limited",
    );
    assert_eq!(tls.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connect_is_refused_without_a_route_on_inbound_to_a_dead_upstream_and_by_a_breaker() {
    let (tls, proxy) = setup().await;
    let outbound = proxy.listener("outbound");
    assert_refused(
        &connect(outbound, "unknown.example:443").await,
        404,
        "no_route",
    );
    // A 405 names what is served (RFC 9110 §15.5.6): every method but CONNECT.
    let inbound = connect(proxy.listener("inbound"), "secure.example:443").await;
    assert_refused(&inbound, 405, "method_not_allowed");
    assert_eq!(
        inbound.header("allow").as_deref(),
        Some("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
        "{}",
        inbound.text()
    );
    assert_refused(
        &connect(outbound, "dead.example:443").await,
        502,
        "upstream_unavailable",
    );
    // The failed connect opened the route's breaker: the next tunnel is refused at once.
    let open = connect(outbound, "dead.example:443").await;
    assert_refused(&open, 503, "circuit_open");
    // The refused connect is the upstream's failed try, under the 502 the client got; the
    // breaker's refusal never reached it.
    let text = crate::support::metrics(proxy.admin()).await;
    assert_eq!(
        crate::support::metric_value(
            &text,
            "rampart_upstream_requests_total",
            &[("upstream", "dead"), ("code", "502")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(open.header("retry-after").is_some(), "{}", open.text());
    assert_eq!(tls.hits.load(Ordering::SeqCst), 0);
}

/// Bytes sent right behind the CONNECT head (as a client in a hurry does) go through the
/// tunnel, and the upstream sees the tunnelled request, never the CONNECT itself.
#[tokio::test]
async fn bytes_after_the_connect_head_are_tunnelled_not_forwarded() {
    let (_tls, plain, proxy) = setup_with_plain().await;
    let req = "CONNECT plain.example:80 HTTP/1.1\r\nHost: plain.example:80\r\n\r\nGET /inside HTTP/1.1\r\nHost: plain.example\r\n\r\n";
    let rsp = raw::exchange(
        proxy.listener("outbound"),
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert!(rsp.text().ends_with("\r\n\r\nok"), "{}", rsp.text());
    assert_eq!(plain.hits(), 1);
    assert!(
        plain.requests()[0].starts_with("GET /inside HTTP/1.1\r\n"),
        "{:?}",
        plain.requests()
    );
}

/// A CONNECT's target has no path: it takes only a route without a `path_prefix` (`/`
/// included), and `validate` agrees. So a route with the host and prefix `/` takes the host's
/// requests, a route after it with the host alone its tunnels, and a host whose only route has
/// a prefix is 404 `no_route` for a CONNECT. Before, validate refused the second route as never
/// used (it took `/` for no prefix), and rampart did not start.
#[tokio::test]
async fn a_connect_skips_a_slash_prefix_route_for_the_hosts_route_without_one() {
    const ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  web: { endpoints: [$WEB] }
  tunnel: { endpoints: [$TUNNEL] }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - { match: { host: svc.example, path_prefix: / }, upstream: web }
      - { match: { host: svc.example }, upstream: tunnel }
      - { match: { host: web.example, path_prefix: / }, upstream: web }
"#;
    let (web, tunnel) = (Capture::start(OK).await, Capture::start(OK).await);
    let proxy = Proxy::builder(ROUTES)
        .var("WEB", web.addr())
        .var("TUNNEL", tunnel.addr())
        .spawn()
        .await;
    let addr = proxy.listener("outbound");
    let wait = Duration::from_secs(5);
    let get = "GET http://svc.example/x HTTP/1.1\r\nHost: svc.example\r\n\r\n";
    let rsp = raw::exchange(addr, get.as_bytes(), wait).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!((web.hits(), tunnel.hits()), (1, 0));
    let req = "CONNECT svc.example:80 HTTP/1.1\r\nHost: svc.example:80\r\n\r\nGET /inside HTTP/1.1\r\nHost: svc.example\r\n\r\n";
    let rsp = raw::exchange(addr, req.as_bytes(), wait).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert!(rsp.text().ends_with("\r\n\r\nok"), "{}", rsp.text());
    assert_eq!((web.hits(), tunnel.hits()), (1, 1));
    assert!(
        tunnel.requests()[0].starts_with("GET /inside HTTP/1.1\r\n"),
        "{:?}",
        tunnel.requests()
    );
    assert_refused(&connect(addr, "web.example:80").await, 404, "no_route");
    assert_eq!((web.hits(), tunnel.hits()), (1, 1));
}

/// An HTTP/1.1 CONNECT must carry `host` as every HTTP/1.1 request must (RFC 9112 §3.2, SPEC
/// §14): without one it is 400 `bad_request`, as a GET without one is, and opens no tunnel.
/// HTTP/1.0 needs none, for CONNECT as for GET. Before, the CONNECT without `host` tunnelled.
#[tokio::test]
async fn an_http11_connect_without_host_is_400_and_opens_no_tunnel() {
    let (_tls, plain, proxy) = setup_with_plain().await;
    let addr = proxy.listener("outbound");
    let wait = Duration::from_secs(2);
    for head in [
        "CONNECT plain.example:80 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
    ] {
        let rsp = raw::exchange(addr, head.as_bytes(), wait).await;
        assert_refused(&rsp, 400, "bad_request");
    }
    assert_eq!(plain.hits(), 0, "no tunnel was opened");
    let old = "CONNECT plain.example:80 HTTP/1.0\r\n\r\nGET /inside HTTP/1.1\r\nHost: plain.example\r\n\r\n";
    let rsp = raw::exchange(addr, old.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(plain.hits(), 1, "HTTP/1.0 tunnels without host");
}

/// The answer to `CONNECT target` sent to `addr` over h2c, its connection driven in the
/// background.
async fn h2_connect(addr: SocketAddr, target: &str) -> ::http::Response<hyper::body::Incoming> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = ::http::Request::builder()
        .method(::http::Method::CONNECT)
        .uri(target)
        .body(crate::support::http::empty())
        .expect("request");
    tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered")
}

/// HTTP/2 CONNECT (RFC 9113 §8.5) opens a tunnel on the stream.
#[tokio::test]
async fn an_h2_connect_tunnels_on_its_stream() {
    use hyper_util::rt::TokioIo;
    let (_tls, plain, proxy) = setup_with_plain().await;
    let rsp = h2_connect(proxy.listener("outbound"), "plain.example:80").await;
    assert_eq!(rsp.status(), 200);
    let mut io = TokioIo::new(
        hyper::upgrade::on(rsp)
            .await
            .expect("the stream is a tunnel"),
    );
    io.write_all(b"GET /h2 HTTP/1.1\r\nHost: plain.example\r\n\r\n")
        .await
        .expect("write into the tunnel");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got))
        .await
        .expect("the upstream closes")
        .expect("read from the tunnel");
    assert!(
        got.ends_with(b"\r\n\r\nok"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(plain.hits(), 1);
}

/// A 2xx answer to CONNECT says the tunnel is open (RFC 9110 §9.3.6), and an injected abort
/// opens none: a `fault.abort` with status 200 answers a CONNECT 200 with no content, marked
/// `x-rampart-fault: abort`, and closes the connection (over HTTP/2, ends the stream) right
/// after it, as a target that closes at once would; bytes sent behind the head go nowhere
/// and the upstream is never reached.
#[tokio::test]
async fn an_injected_2xx_abort_on_a_connect_closes_at_once() {
    use hyper_util::rt::TokioIo;
    let (_tls, plain, proxy) = setup_with_plain().await;
    let addr = proxy.listener("outbound");
    let req = "CONNECT drill.example:80 HTTP/1.1\r\nHost: drill.example:80\r\n\r\nGET /inside HTTP/1.1\r\nHost: drill.example\r\n\r\n";
    let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(rsp.header("x-rampart-fault").as_deref(), Some("abort"));
    assert_eq!(rsp.header("content-length"), None, "{}", rsp.text());
    assert!(
        rsp.text().ends_with("\r\n\r\n"),
        "nothing after the head: {}",
        rsp.text()
    );
    assert!(
        rsp.closed && rsp.elapsed < Duration::from_secs(2),
        "closed at once: {rsp:?}"
    );

    let rsp = h2_connect(addr, "drill.example:80").await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers().get("x-rampart-fault").map(|v| v.as_bytes()),
        Some(&b"abort"[..])
    );
    assert_eq!(rsp.headers().get("content-length"), None);
    let mut io = TokioIo::new(hyper::upgrade::on(rsp).await.expect("the stream"));
    let _ = io
        .write_all(b"GET /inside HTTP/1.1\r\nHost: drill.example\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(2), io.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "the stream ends at once");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(plain.hits(), 0, "no tunnel reached the upstream");
}

/// What a hostile client can put in a CONNECT target: no port, a path, userinfo, garbage.
/// Each gets a clear refusal (or hyper's 400), never a tunnel to somewhere unrouted, and the
/// proxy serves the next client normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_targets_are_refused_and_leave_the_proxy_serving() {
    let (_tls, plain, proxy) = setup_with_plain().await;
    let addr = proxy.listener("outbound");
    for target in [
        "/just/a/path",
        "no-such.example:443",
        "user@plain.example:80",
        "plain.example:99999",
        "[::1",
        "%00:1",
    ] {
        let rsp = connect(addr, target).await;
        let status = rsp.status().unwrap_or(0);
        assert!(
            status == 0 || (400..500).contains(&status),
            "CONNECT {target:?} must be refused: {}",
            rsp.text()
        );
    }
    assert_eq!(plain.hits(), 0, "no malformed target reached an upstream");
    let ok = connect(addr, "plain.example:80").await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    assert!(!proxy.log().contains("panicked"));
}

const LOGGED: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 1s }
upstreams:
  plain: { endpoints: [$PLAIN] }
  dead: { endpoints: [$DEAD], connect_timeout: 1s }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    access_log: { to: $LOG }
    routes:
      - { match: { host: plain.example }, upstream: plain }
      - { match: { host: dead.example }, upstream: dead }
      - { match: { host: quiet.example }, upstream: plain, tunnel_idle_timeout: 300ms }
"#;

/// An outbound listener with an access log at `log`: `plain.example` routed to `plain`,
/// `dead.example` to a closed port, `quiet.example` to `plain` with a 300 ms
/// `tunnel_idle_timeout`; a drain waits 1 s.
async fn logged_proxy(log: &Path, plain: SocketAddr) -> Proxy {
    Proxy::builder(LOGGED)
        .var("PLAIN", plain)
        .closed("DEAD")
        .var("LOG", log.display())
        .spawn()
        .await
}

/// A tunnel's access log line names its one try: the connect, to which endpoint, how long it
/// took; a failed connect too (before, both said `tries: 0` and `endpoint: null`).
#[tokio::test]
async fn a_tunnels_access_log_line_names_its_connect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let plain = Capture::start(OK).await;
    let proxy = logged_proxy(&log, plain.addr()).await;
    let outbound = proxy.listener("outbound");
    assert_eq!(
        connect(outbound, "plain.example:80").await.status(),
        Some(200)
    );
    let failed = connect(outbound, "dead.example:443").await;
    assert_refused(&failed, 502, "upstream_unavailable");
    let lines = crate::support::wait_log_lines(&log, 2).await;
    let by_route = |route: &str| {
        lines
            .iter()
            .find(|l| l["route"] == route)
            .unwrap_or_else(|| panic!("no {route} line: {lines:?}"))
            .clone()
    };
    let open = by_route("plain");
    assert_eq!(
        (open["method"].as_str(), open["status"].as_u64()),
        (Some("CONNECT"), Some(200)),
        "{open}"
    );
    assert_eq!(open["tries"], 1, "{open}");
    assert_eq!(open["endpoint"], plain.addr().to_string(), "{open}");
    assert!(open["upstream_ms"].is_number(), "{open}");
    let dead = by_route("dead");
    assert_eq!(
        (dead["status"].as_u64(), dead["tries"].as_u64()),
        (Some(502), Some(1)),
        "{dead}"
    );
    assert!(dead["endpoint"].is_string(), "{dead}");
}

/// A connection to `addr` that sent `CONNECT target` and read the 200's head (byte by byte, so
/// nothing after it is taken): the tunnel, open.
pub(crate) async fn open_tunnel(addr: SocketAddr, target: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .expect("write the CONNECT");
    let head = crate::upgrade::read_head(&mut tcp)
        .await
        .expect("the 200 in time");
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    tcp
}

/// `line` is an opened tunnel's (a CONNECT answered 200) that carried `up` bytes to the
/// upstream and `down` to the client.
fn assert_tunnel_line(line: &serde_json::Value, up: usize, down: usize) {
    assert_eq!(
        (line["method"].as_str(), line["status"].as_u64()),
        (Some("CONNECT"), Some(200)),
        "{line}"
    );
    assert_eq!(line["bytes_in"], up, "{line}");
    assert_eq!(line["bytes_out"], down, "{line}");
}

/// A tunnel's line is written when the tunnel ends, not when its 200 goes out: its
/// `bytes_in` and `bytes_out` are what went through it each way, and its duration is its life
/// (before, the line came with the 200 and said 0 bytes both ways).
#[tokio::test]
async fn a_tunnels_line_is_written_when_it_ends_with_the_bytes_it_carried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let plain = Capture::start(OK).await;
    let proxy = logged_proxy(&log, plain.addr()).await;
    let outbound = proxy.listener("outbound");

    let mut tcp = open_tunnel(outbound, "plain.example:80").await;

    // A request that ends while the tunnel is open has its line; the tunnel has none yet.
    assert_refused(
        &connect(outbound, "unknown.example:443").await,
        404,
        "no_route",
    );
    let lines = crate::support::wait_log_lines(&log, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 404, "{lines:?}");

    let inside = b"GET /inside HTTP/1.1\r\nHost: plain.example\r\n\r\n";
    tcp.write_all(inside).await.expect("write into the tunnel");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the upstream closes (connection: close)")
        .expect("read from the tunnel");
    assert_eq!(answer, OK, "{}", String::from_utf8_lossy(&answer));
    drop(tcp);

    let lines = crate::support::wait_log_lines(&log, 2).await;
    let tunnel = &lines[1];
    assert_tunnel_line(tunnel, inside.len(), OK.len());
    assert_eq!(tunnel["tries"], 1, "{tunnel}");
    assert_eq!(plain.hits(), 1);
}

/// A tunnel still open when rampart drains is cut when `shutdown_grace` runs out; its line is
/// in the file when the process has exited, with what the tunnel carried until then.
#[tokio::test]
async fn a_tunnel_cut_by_the_drain_still_writes_its_line() {
    let (echo_addr, server) = echo().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let mut proxy = logged_proxy(&log, echo_addr).await;
    let mut tcp = open_tunnel(proxy.listener("outbound"), "plain.example:80").await;
    let sent = b"hello through the tunnel";
    tcp.write_all(sent).await.expect("write into the tunnel");
    let mut echoed = vec![0u8; sent.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .expect("the echo in time")
        .expect("read the echo");
    assert_eq!(echoed, sent);
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proxy.log());
    server.abort();
    // No waiting for the file: the process is gone, so what it wrote is all there is.
    let lines = crate::support::log_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let tunnel = &lines[0];
    assert_tunnel_line(tunnel, sent.len(), sent.len());
    assert!(
        tunnel["duration_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 1000.0),
        "the tunnel lived through the grace: {tunnel}"
    );
}

/// A tunnel rampart closes after `tunnel_idle_timeout` with no byte either way says so in its
/// line, reason `timeout` (as an answer `timeout.idle` cut does), with what it carried; one
/// its client closed keeps reason "". Before, both said "".
#[tokio::test]
async fn a_tunnel_closed_for_its_silence_logs_timeout() {
    let (echo_addr, server) = echo().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let proxy = logged_proxy(&log, echo_addr).await;
    let outbound = proxy.listener("outbound");

    let mut quiet = open_tunnel(outbound, "quiet.example:80").await;
    echoes(&mut quiet, b"ping").await;
    // Then silence: rampart closes the tunnel 300 ms on.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), quiet.read_to_end(&mut rest))
        .await
        .expect("rampart closes the silent tunnel")
        .expect("read to the close");
    assert!(rest.is_empty(), "{rest:?}");

    let mut closed = open_tunnel(outbound, "plain.example:80").await;
    echoes(&mut closed, b"hello").await;
    drop(closed);

    let lines = crate::support::wait_log_lines(&log, 2).await;
    let by_path = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no {path} line: {lines:?}"))
            .clone()
    };
    let quiet = by_path("quiet.example:80");
    assert_tunnel_line(&quiet, 4, 4);
    assert_eq!(quiet["reason"], "timeout", "{quiet}");
    let closed = by_path("plain.example:80");
    assert_tunnel_line(&closed, 5, 5);
    assert_eq!(closed["reason"], "", "{closed}");
    server.abort();
}

/// An upstream that echoes what it reads and never closes first: its address, and its task.
async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (echo_addr, server)
}

/// `tcp`, a tunnel to an echo, carries `sent` there and back.
pub(crate) async fn echoes(tcp: &mut tokio::net::TcpStream, sent: &[u8]) {
    tcp.write_all(sent).await.expect("write into the tunnel");
    let mut echoed = vec![0u8; sent.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .expect("the echo in time")
        .expect("read the echo");
    assert_eq!(echoed, sent);
}

const REMOVED: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 500ms }
upstreams:
  echo: { endpoints: [$ECHO] }
listeners:
  - name: keep
    direction: inbound
    listen: $LISTEN_keep
    routes:
      - { upstream: echo }
"#;

/// A reload that removes a listener cuts its open tunnels when `shutdown_grace` runs out, as
/// SIGTERM does: they carry bytes within the grace, are closed after it, and each writes its
/// line with reason `shutdown` and its target (`host:port`) as its path. Before, they went on
/// until their client closed or `tunnel_idle_timeout` (1h), and a line said `"path":""` and
/// `"reason":""`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_listener_cuts_its_tunnels_at_the_grace() {
    let (echo_addr, server) = echo().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let outbound = format!(
        "  - name: outbound\n    direction: outbound\n    listen: $LISTEN_outbound\n    \
         access_log: {{ to: {} }}\n    routes:\n      - {{ match: {{ host: \"*.example\" }}, upstream: echo }}\n",
        log.display()
    );
    let mut proxy = Proxy::builder(&format!("{REMOVED}{outbound}"))
        .var("ECHO", echo_addr)
        .spawn()
        .await;
    let addr = proxy.listener("outbound");
    let mut one = open_tunnel(addr, "one.example:80").await;
    let mut two = open_tunnel(addr, "two.example:443").await;
    echoes(&mut one, b"before").await;
    echoes(&mut two, b"before").await;

    proxy.rewrite_config(REMOVED);
    let rsp = crate::support::http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let began = tokio::time::Instant::now();
    // Within the grace they still carry bytes.
    echoes(&mut one, b"within").await;
    for tcp in [&mut one, &mut two] {
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "the tunnel is cut after the grace");
    }
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "not before the grace: {:?}",
        began.elapsed()
    );
    let lines = crate::support::wait_log_lines(&log, 2).await;
    let mut paths: Vec<_> = lines.iter().map(|l| l["path"].clone()).collect();
    paths.sort_by_key(|p| p.to_string());
    assert_eq!(paths, ["one.example:80", "two.example:443"], "{lines:?}");
    for line in &lines {
        // "before" both, "within" through the first.
        let carried = if line["path"] == "one.example:80" {
            12
        } else {
            6
        };
        assert_tunnel_line(line, carried, carried);
        assert_eq!(line["reason"], "shutdown", "{line}");
    }
    server.abort();
}

/// A tunnel opened through a removed listener while it drains (a CONNECT that waited for
/// room at its upstream, `max_connections: 1`, gets it once the tunnel holding it closes) is
/// cut when that drain's `shutdown_grace` runs out, as the tunnels open at the reload are,
/// not a whole grace after it opened. Before, it was given a fresh grace from its own start:
/// the removed listener's work outlived its drain by up to one more grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_opened_while_its_removed_listener_drains_is_cut_at_that_drains_end() {
    let (echo_addr, server) = echo().await;
    let base = REMOVED
        .replace("shutdown_grace: 500ms", "shutdown_grace: 2s")
        .replace(
            "endpoints: [$ECHO]",
            "endpoints: [$ECHO], max_connections: 1, connect_timeout: 5s",
        );
    let mut proxy = Proxy::builder(&format!(
        "{base}{}",
        echo_listener("outbound", "$LISTEN_outbound")
    ))
    .var("ECHO", echo_addr)
    .spawn()
    .await;
    let (addr, admin) = (proxy.listener("outbound"), proxy.admin());
    let in_flight = || async {
        let text = crate::support::metrics::metrics(admin).await;
        let labels = [("listener", "outbound")];
        crate::support::metrics::metric_value(&text, "rampart_in_flight_requests", &labels)
            .unwrap_or(0.0)
    };
    let first = open_tunnel(addr, "one.example:80").await;
    let before = in_flight().await;
    let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
    next.write_all(b"CONNECT two.example:80 HTTP/1.1\r\nHost: two.example:80\r\n\r\n")
        .await
        .expect("write the CONNECT");
    assert_eventually!(
        in_flight().await > before,
        "the second CONNECT is in flight, waiting for room at its upstream"
    );

    proxy.rewrite_config(&base);
    let rsp = crate::support::http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let began = tokio::time::Instant::now();
    // Half the grace (2 s) later the first tunnel's client goes: the waiting CONNECT
    // connects, and its tunnel carries bytes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(first);
    let head = crate::upgrade::read_head(&mut next).await;
    assert!(
        head.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{head:?}"
    );
    echoes(&mut next, b"within the drain").await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(3), next.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the tunnel is cut");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2600),
        "cut at the drain's end (2 s after the reload), not a grace after it opened: {took:?}"
    );
    server.abort();
}

/// An outbound listener `name` at `at` (an address, or a `$LISTEN_` variable) routing
/// `*.example` to the echo upstream, as a policy file's `listeners` entry.
fn echo_listener(name: &str, at: &str) -> String {
    format!(
        "  - name: {name}\n    direction: outbound\n    listen: {at}\n    routes:\n      \
         - {{ match: {{ host: \"*.example\" }}, upstream: echo }}\n"
    )
}

/// A reload that only renames a listener (the same address, the same rules) keeps its tunnels:
/// it is the same listener. Before, the new name found no counterpart, and the tunnel was cut
/// at the grace as for a removed listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renames_a_listener_keeps_its_tunnels() {
    let (echo_addr, server) = echo().await;
    let mut proxy = Proxy::builder(&format!(
        "{REMOVED}{}",
        echo_listener("outbound", "$LISTEN_outbound")
    ))
    .var("ECHO", echo_addr)
    .spawn()
    .await;
    let addr = proxy.listener("outbound");
    let mut one = open_tunnel(addr, "one.example:80").await;
    echoes(&mut one, b"before").await;

    let renamed = format!("{REMOVED}{}", echo_listener("egress", &addr.to_string()));
    proxy.rewrite_config(&renamed);
    let rsp = crate::support::http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    // Past the grace (500ms) and more: still carrying bytes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    echoes(&mut one, b"after").await;
    server.abort();
}

/// A reload that moves a listener (its name kept, the same rules) keeps its tunnels: two
/// listeners swapping addresses, then one moving to another port, each for longer than the
/// grace. Its old socket drains all the same. A later reload that removes it still cuts them
/// at the grace. Before, a move cut them at the grace as if the listener were removed
/// ("listener removed; draining" at the old address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_a_listener_keeps_its_tunnels() {
    let (echo_addr, server) = echo().await;
    let mut proxy = Proxy::builder(&format!(
        "{REMOVED}{}{}",
        echo_listener("outbound", "$LISTEN_outbound"),
        echo_listener("egress", "$LISTEN_egress")
    ))
    .var("ECHO", echo_addr)
    .spawn()
    .await;
    let (a, b) = (proxy.listener("outbound"), proxy.listener("egress"));
    let mut one = open_tunnel(a, "one.example:80").await;
    let mut two = open_tunnel(b, "two.example:80").await;
    echoes(&mut one, b"before").await;
    echoes(&mut two, b"before").await;
    let reload = |proxy: &mut Proxy, text: String| {
        proxy.rewrite_config(&text);
        let admin = proxy.admin();
        async move {
            let rsp = crate::support::http::post(admin, "/reload", &[], "").await;
            assert_eq!(rsp.status, 200, "{}", rsp.text());
        }
    };

    // The two swap addresses.
    let swapped = format!(
        "{REMOVED}{}{}",
        echo_listener("outbound", &b.to_string()),
        echo_listener("egress", &a.to_string())
    );
    reload(&mut proxy, swapped).await;
    // Past the grace (500ms) and more: still carrying bytes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    echoes(&mut one, b"swapped").await;
    echoes(&mut two, b"swapped").await;

    // `outbound` moves to another port; its old address goes.
    let elsewhere = crate::support::free_addr();
    let moved = format!(
        "{REMOVED}{}",
        echo_listener("outbound", &elsewhere.to_string())
    );
    let moved = format!("{moved}{}", echo_listener("egress", &a.to_string()));
    reload(&mut proxy, moved).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    echoes(&mut one, b"moved").await;
    let mut three = open_tunnel(elsewhere, "three.example:80").await;
    echoes(&mut three, b"at its new address").await;

    // Removed at last: its tunnels are cut at the grace.
    reload(
        &mut proxy,
        format!("{REMOVED}{}", echo_listener("egress", &a.to_string())),
    )
    .await;
    for tcp in [&mut one, &mut three] {
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "the tunnel is cut after the grace");
    }
    echoes(&mut two, b"egress stays").await;
    server.abort();
}

/// A tunnel is a connection rampart opens to the endpoint: it counts against the upstream's
/// `max_connections` and in `rampart_upstream_connections` for its whole life. At the cap an
/// idle pooled connection is closed to make room; with none, the next CONNECT waits up to the
/// connect timeout and is answered 502, without counting against the endpoint's health or
/// breaker; when a tunnel ends its room is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_max_connections() {
    // An upstream that answers `GET`s 200 on a kept-alive connection and echoes anything else:
    // a tunnel stays open until its client leaves.
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let reply: &[u8] = if buf.starts_with(b"GET ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    } else {
                        &buf[..n]
                    };
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    const CAPPED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  plain: { endpoints: [$PLAIN], max_connections: 1, connect_timeout: 300ms }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - { match: { host: plain.example }, upstream: plain }
"#;
    let proxy = Proxy::builder(CAPPED).var("PLAIN", echo_addr).spawn().await;
    let addr = proxy.listener("outbound");
    let open = || async {
        let text = crate::support::metrics(proxy.admin()).await;
        let label = echo_addr.to_string();
        crate::support::metric_value(
            &text,
            "rampart_upstream_connections",
            &[("upstream", "plain"), ("endpoint", &label)],
        )
    };
    // A request leaves its connection idle in the pool, holding the one room.
    let get = b"GET http://plain.example/ HTTP/1.1\r\nHost: plain.example\r\n\r\n";
    let rsp = raw::exchange(addr, get, Duration::from_millis(500)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(open().await, Some(1.0), "the pooled connection is counted");
    // The tunnel takes its room: the idle connection is closed for it.
    let mut first = open_tunnel(addr, "plain.example:80").await;
    first.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    first.read_exact(&mut back).await.expect("the echo");
    assert_eq!(&back, b"ping");
    assert_eq!(
        open().await,
        Some(1.0),
        "the tunnel is counted, the idle one gone"
    );
    let started = tokio::time::Instant::now();
    let refused = connect(addr, "plain.example:80").await;
    assert_eq!(refused.status(), Some(502), "{}", refused.text());
    assert!(
        refused.text().contains("max_connections"),
        "{}",
        refused.text()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited for room first: {:?}",
        started.elapsed()
    );
    let text = crate::support::metrics(proxy.admin()).await;
    let unsent = [("upstream", "plain"), ("cause", "pool_full")];
    assert_eq!(
        crate::support::metric_value(&text, "rampart_upstream_unsent_total", &unsent),
        Some(1.0),
        "the refused CONNECT was never sent: {text}"
    );
    drop(first);
    assert_eventually!(open().await == Some(0.0), "the ended tunnel's room is free");
    let second = open_tunnel(addr, "plain.example:80").await;
    assert_eq!(open().await, Some(1.0));
    drop(second);
    server.abort();
}

/// A CONNECT tunnel keeps its client connection's place among the listener's
/// `max_connections` while it is open (SPEC §14: further connections wait in the accept
/// queue): with a cap of 1 and a tunnel open, the next client's CONNECT is not answered until
/// the tunnel's client goes. Before, the place was given back when hyper handed the socket to
/// the tunnel, so tunnels could be opened past the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_counts_against_the_listeners_max_connections() {
    const ONE: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { max_connections: 1 }
upstreams:
  plain: { endpoints: [$PLAIN] }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - { match: { host: plain.example }, upstream: plain }
"#;
    let plain = Capture::start(OK).await;
    let proxy = Proxy::builder(ONE).var("PLAIN", plain.addr()).spawn().await;
    let addr = proxy.listener("outbound");
    let first = open_tunnel(addr, "plain.example:80").await;
    let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
    next.write_all(b"CONNECT plain.example:80 HTTP/1.1\r\nHost: plain.example:80\r\n\r\n")
        .await
        .expect("write the CONNECT");
    let mut byte = [0u8; 1];
    let held = tokio::time::timeout(Duration::from_millis(700), next.read(&mut byte)).await;
    assert!(held.is_err(), "served past the cap: {held:?}");
    drop(first);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), next.read(&mut byte))
            .await
            .expect("served once the first tunnel closed")
            .expect("read");
        assert_eq!(n, 1, "closed before the 200: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
}
