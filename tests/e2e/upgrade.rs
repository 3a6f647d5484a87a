//! HTTP/1.1 upgrades (WebSocket) through rampart: the upgrade request reaches the upstream with
//! `Upgrade` and `connection: upgrade`, its 101 reaches the client with the upstream's headers,
//! and bytes then go both ways until either side closes; an upstream that does not switch
//! answers as usual and the connection stays HTTP.
//!
//! Before, rampart removed `Upgrade` and `Connection` on the way in, refused the upstream's 101
//! as malformed (502), and read the client's frames as requests (400): every test here fails
//! on that code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::metrics::{metric_value, metrics};
use crate::support::Proxy;

const POLICY: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  ws: { endpoints: [$WS] }
policies:
  one_at_a_time: { load_shed: { max_in_flight: 1, queue: { size: 0 } } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: ws, policy: one_at_a_time }
"#;

/// RFC 6455 §1.3's example key, and the accept value it yields.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// What the upstream sends in the same write as its 101: the new protocol's first bytes.
pub(crate) const WELCOME: &[u8] = b"welcome";
/// What the upstream sends once the client has half-closed, before closing itself.
const BYE: &[u8] = b"bye";

/// A raw upstream: a request for `/chat` is answered `101` with `Sec-WebSocket-Accept` (and
/// [`WELCOME`] in the same write), then every byte is echoed until the client's end of stream,
/// answered with [`BYE`] and a close; any other request gets `200` with its path as the body,
/// on a kept connection (`/fail` gets `500`). Every head it reads is kept.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub(crate) async fn start() -> Upstream {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = tcp.accept().await {
                tokio::spawn(serve(conn, kept.clone()));
            }
        });
        Upstream { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

async fn serve(mut conn: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    loop {
        let Some(head) = read_head(&mut conn).await else {
            return;
        };
        heads.lock().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        if path != "/chat" {
            let status = match path.as_str() {
                "/fail" => "500 Internal Server Error",
                _ => "200 OK",
            };
            let rsp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{path}",
                path.len()
            );
            if conn.write_all(rsp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let mut rsp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\nX-Upstream: yes\r\n\r\n"
        )
        .into_bytes();
        rsp.extend_from_slice(WELCOME);
        if conn.write_all(&rsp).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) => {
                    let _ = conn.write_all(BYE).await;
                    let _ = conn.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// Reads one head off `conn`, a byte at a time (nothing after it is taken); `None` at the end
/// of the stream.
pub(crate) async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// `name`'s value in `head`, in any case.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A WebSocket handshake for `path` as a browser sends it (its `connection` list with
/// `keep-alive`, and a `keep-alive` header: hop-by-hop ones that must not reach the upstream).
pub(crate) fn handshake(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nKeep-Alive: timeout=5\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

pub(crate) async fn read_exact(conn: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    got
}

async fn setup() -> (Upstream, Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = Upstream::start().await;
    let proxy = Proxy::builder(POLICY)
        .var("WS", up.addr)
        .var("LOG", dir.path().join("access.jsonl").display())
        .spawn()
        .await;
    (up, proxy, dir)
}

/// The whole life of a WebSocket through rampart: handshake, 101 with the upstream's headers,
/// the bytes the upstream sent with its 101, several round trips, the client's half-close
/// passed on and the upstream's last bytes and close passed back. The request's access log
/// line (status 101) and its count come once, at the 101, while the socket is still open; and
/// the socket holds no load-shed slot (`max_in_flight: 1`), so a plain request still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_switches_and_carries_bytes_both_ways_until_closed() {
    let (up, proxy, dir) = setup().await;
    let mut ws = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    ws.write_all(handshake("/chat").as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut ws).await.expect("an answer head");
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert_eq!(
        header(&head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert_eq!(
        header(&head, "connection")
            .map(|c| c.to_ascii_lowercase())
            .as_deref(),
        Some("upgrade"),
        "{head}"
    );
    assert_eq!(
        header(&head, "sec-websocket-accept").as_deref(),
        Some(ACCEPT),
        "{head}"
    );
    assert_eq!(
        header(&head, "x-upstream").as_deref(),
        Some("yes"),
        "{head}"
    );
    assert!(header(&head, "x-request-id").is_some(), "{head}");

    // What the upstream saw: the upgrade, and no other hop-by-hop header.
    let seen = up.heads();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("GET /chat HTTP/1.1\r\n"), "{}", seen[0]);
    assert_eq!(
        header(&seen[0], "upgrade").as_deref(),
        Some("websocket"),
        "{}",
        seen[0]
    );
    assert_eq!(
        header(&seen[0], "connection").as_deref(),
        Some("upgrade"),
        "{}",
        seen[0]
    );
    assert_eq!(
        header(&seen[0], "sec-websocket-key").as_deref(),
        Some(KEY),
        "{}",
        seen[0]
    );
    assert!(header(&seen[0], "keep-alive").is_none(), "{}", seen[0]);

    assert_eq!(read_exact(&mut ws, WELCOME.len()).await, WELCOME);
    for i in 0..5 {
        let msg = format!("frame {i} {}", "x".repeat(i * 1000));
        ws.write_all(msg.as_bytes()).await.expect("write");
        assert_eq!(
            read_exact(&mut ws, msg.len()).await,
            msg.as_bytes(),
            "round trip {i}"
        );
    }

    // Logged and counted at the 101, once, while the socket is open.
    let log = dir.path().join("access.jsonl");
    let lines = crate::support::wait_log_lines(&log, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 101, "{}", lines[0]);
    assert_eq!(lines[0]["path"], "/chat", "{}", lines[0]);
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_requests_total", &[("code", "101")]),
        Some(1.0),
        "{text}"
    );
    // It holds no place among the requests in flight, but its upstream connection is open.
    assert_eq!(
        metric_value(
            &text,
            "rampart_in_flight_requests",
            &[("listener", "inbound")]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "rampart_upstream_connections", &[("upstream", "ws")]),
        Some(1.0),
        "{text}"
    );
    // Its load-shed slot was freed at the 101: a request passes beside the open socket.
    let plain = crate::support::raw::exchange(
        proxy.listener("inbound"),
        b"GET /beside HTTP/1.1\r\nHost: ws.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(plain.status(), Some(200), "{}", plain.text());

    // The client's half-close reaches the upstream, which says its last and closes.
    ws.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), ws.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read to the end");
    assert_eq!(rest, BYE);
    // The switched connection closed, never pooled: only the plain request's stays, idle.
    let admin = proxy.admin();
    let upstream_open = || async {
        let text = metrics(admin).await;
        metric_value(&text, "rampart_upstream_connections", &[("upstream", "ws")])
    };
    assert_eventually!(upstream_open().await == Some(1.0));
    assert_eq!(up.heads().len(), 2, "{:?}", up.heads());
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_requests_total", &[("code", "101")]),
        Some(1.0),
        "counted once: {text}"
    );
    assert_eq!(
        crate::support::log_lines(&log)
            .iter()
            .filter(|l| l["status"] == 101)
            .count(),
        1
    );
}

/// An upstream that does not switch answers the upgrade request as any other: the client gets
/// its 200, and the connection stays HTTP (the next request on it is answered).
#[tokio::test]
async fn an_upgrade_the_upstream_declines_is_an_ordinary_answer() {
    let (up, proxy, _dir) = setup().await;
    let mut conn = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    conn.write_all(handshake("/declined").as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut conn).await.expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(header(&head, "upgrade").is_none(), "{head}");
    assert_eq!(read_exact(&mut conn, "/declined".len()).await, b"/declined");
    assert_eq!(
        header(&up.heads()[0], "upgrade").as_deref(),
        Some("websocket"),
        "the upgrade was asked"
    );

    conn.write_all(b"GET /next HTTP/1.1\r\nHost: ws.example\r\n\r\n")
        .await
        .expect("write the next request");
    let head = read_head(&mut conn).await.expect("the next answer head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_exact(&mut conn, "/next".len()).await, b"/next");
    assert_eq!(up.heads().len(), 2);
}

const H2_POLICY: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  h2: { endpoints: [$H2], protocol: http2 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: h2 }
"#;

/// An h2c upstream that answers every request 200 with `upgrade` or `plain` as its body: what
/// it saw of an `upgrade` header.
async fn h2_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: ::http::Request<hyper::body::Incoming>| async move {
                        let saw = match req.headers().contains_key("upgrade") {
                            true => "upgrade",
                            false => "plain",
                        };
                        let body = Full::new(bytes::Bytes::from_static(saw.as_bytes()));
                        Ok::<_, std::convert::Infallible>(::http::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// HTTP/2 has no `Upgrade`: to a `protocol: http2` upstream the upgrade request goes plain (its
/// upgrade headers dropped), and the client gets the upstream's own answer on a connection
/// that stays HTTP (before, the same; this pins the choice, which the README states).
#[tokio::test]
async fn an_upgrade_to_an_http2_upstream_is_sent_plain() {
    let (h2, task) = h2_upstream().await;
    let proxy = Proxy::builder(H2_POLICY).var("H2", h2).spawn().await;
    let mut conn = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    conn.write_all(handshake("/chat").as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut conn).await.expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(header(&head, "upgrade").is_none(), "{head}");
    let len: usize = header(&head, "content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("a length: {head}"));
    assert_eq!(read_exact(&mut conn, len).await, b"plain");
    conn.write_all(b"GET /next HTTP/1.1\r\nHost: ws.example\r\n\r\n")
        .await
        .expect("write the next request");
    let head = read_head(&mut conn).await.expect("the next answer head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    task.abort();
}

const LIMITED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  ws: { endpoints: [$WS] }
policies:
  once:
    rate_limit:
      per_tenant: { rate: 1/h, burst: 1 }
      headers: true
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: ws, policy: once }
"#;

/// The route's rate limit applies to the upgrade request: the first is admitted (its 101
/// carries the RateLimit headers, as every admitted answer does with `headers: true`), the
/// second refused 429 without reaching the upstream.
#[tokio::test]
async fn the_rate_limit_admits_and_refuses_upgrades_like_any_request() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder(LIMITED).var("WS", up.addr).spawn().await;
    let mut ws = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    ws.write_all(handshake("/chat").as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut ws).await.expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "ratelimit").as_deref(),
        Some("\"quota\";r=0;t=3600"),
        "{head}"
    );
    assert_eq!(read_exact(&mut ws, WELCOME.len()).await, WELCOME);

    let refused = crate::support::raw::exchange(
        proxy.listener("inbound"),
        handshake("/chat").as_bytes(),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(refused.status(), Some(429), "{}", refused.text());
    assert_eq!(
        refused.header("x-rampart-reason").as_deref(),
        Some("rate_limited")
    );
    assert_eq!(up.heads().len(), 1, "{:?}", up.heads());
}

const DRAINED: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 1s }
upstreams:
  ws: { endpoints: [$WS] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: ws }
"#;

/// A drain waits for an open WebSocket as for a CONNECT tunnel: it still carries bytes after
/// SIGTERM, is cut when `shutdown_grace` runs out, and rampart then exits 0.
#[tokio::test]
async fn a_drain_waits_for_an_open_websocket_then_cuts_it() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::builder(DRAINED).var("WS", up.addr).spawn().await;
    let mut ws = TcpStream::connect(proxy.listener("inbound"))
        .await
        .expect("connect");
    ws.write_all(handshake("/chat").as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut ws).await.expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(read_exact(&mut ws, WELCOME.len()).await, WELCOME);
    let began = tokio::time::Instant::now();
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.write_all(b"after TERM").await.expect("write");
    assert_eq!(read_exact(&mut ws, 10).await, b"after TERM", "still open");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proxy.log());
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "the drain waited for the socket: {:?}",
        began.elapsed()
    );
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the socket was closed when rampart exited");
}

const GONE: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 500ms }
upstreams:
  ws: { endpoints: [$WS] }
listeners:
  - name: keep
    direction: inbound
    listen: $LISTEN_keep
    routes:
      - { upstream: ws }
"#;

/// A reload that removes a listener cuts its open WebSockets when `shutdown_grace` runs out,
/// as SIGTERM does; a WebSocket on a listener the reload keeps goes on. Before, the removed
/// listener's went on until a side closed or `tunnel_idle_timeout` (1h).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_listener_cuts_its_websockets_at_the_grace() {
    let up = Upstream::start().await;
    let gone = "  - name: gone\n    direction: inbound\n    listen: $LISTEN_gone\n    \
                routes:\n      - { upstream: ws }\n";
    let mut proxy = Proxy::builder(&format!("{GONE}{gone}"))
        .var("WS", up.addr)
        .spawn()
        .await;
    let mut cut = open_websocket(proxy.listener("gone")).await;
    let mut kept = open_websocket(proxy.listener("keep")).await;
    proxy.rewrite_config(GONE);
    let rsp = crate::support::http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let began = tokio::time::Instant::now();
    cut.write_all(b"within").await.expect("write");
    assert_eq!(
        read_exact(&mut cut, 6).await,
        b"within",
        "open in the grace"
    );
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(3), cut.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "cut after the grace");
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "{:?}",
        began.elapsed()
    );
    kept.write_all(b"after").await.expect("write");
    assert_eq!(
        read_exact(&mut kept, 5).await,
        b"after",
        "the kept listener's goes on"
    );
}

const CAPPED: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { max_connections: 2 }
upstreams:
  ws: { endpoints: [$WS] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: ws }
"#;

/// A WebSocket through rampart, switched: the 101 and the upstream's first bytes read.
pub(crate) async fn open_websocket(addr: SocketAddr) -> TcpStream {
    let mut ws = TcpStream::connect(addr).await.expect("connect");
    ws.write_all(handshake("/chat").as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut ws).await.expect("an answer head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(read_exact(&mut ws, WELCOME.len()).await, WELCOME);
    ws
}

/// An upgraded connection keeps its place among the listener's `max_connections` while its
/// socket is open: with a cap of 2 and two WebSockets open, a third client waits (SPEC §14:
/// in the accept queue) and is served once one of them closes. Before, the place was given
/// back at the 101, with the connection's task, so any number of sockets could be opened past
/// the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_against_max_connections() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder(CAPPED).var("WS", up.addr).spawn().await;
    let addr = proxy.listener("inbound");
    let mut first = open_websocket(addr).await;
    let mut second = open_websocket(addr).await;

    // The third client is accepted by the kernel, but not served while both sockets are open.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: ws.example\r\n\r\n")
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    let held = tokio::time::timeout(Duration::from_millis(700), third.read(&mut byte)).await;
    assert!(held.is_err(), "served past the cap: {held:?}");
    // Both sockets still carry bytes meanwhile.
    second.write_all(b"still").await.expect("write");
    assert_eq!(read_exact(&mut second, 5).await, b"still");

    // One socket closes (the client's half-close, the upstream's last bytes and close): its
    // place goes to the third client, whose request is answered.
    first.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read to the end");
    assert_eq!(rest, BYE);
    let head = read_head(&mut third)
        .await
        .expect("the third client is served");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_exact(&mut third, "/third".len()).await, b"/third");
}

const BREAKER: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  ws: { endpoints: [$WS] }
policies:
  fragile:
    circuit_breaker: { consecutive_failures: 2, open_for: 500ms, half_open_probes: 1 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: ws, policy: fragile }
"#;

/// `rampart_circuit_breaker_state` of upstream `ws` for `state`.
fn breaker_state(text: &str, state: &str) -> Option<f64> {
    metric_value(
        text,
        "rampart_circuit_breaker_state",
        &[("upstream", "ws"), ("tenant", ""), ("state", state)],
    )
}

/// A plain `GET path` on a connection of its own: its status.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: ws.example\r\nConnection: close\r\n\r\n");
    let rsp = crate::support::raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    rsp.status()
}

/// An upgrade's 101 ends its try for the breaker: the try is a success at the head (the
/// switched connection has no body to wait for). A half-open breaker whose one probe is a
/// WebSocket answered 101 closes, at once: counted as a failure it would reopen, and never
/// counted (its permit dropped unrecorded, or left to a body that never ends, as a 2xx's
/// is) it would stay half-open with the probe given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_closes_a_half_open_breaker() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder(BREAKER).var("WS", up.addr).spawn().await;
    let addr = proxy.listener("inbound");
    for _ in 0..2 {
        assert_eq!(get_status(addr, "/fail").await, Some(500));
    }
    let opened = tokio::time::Instant::now();
    let refused = crate::support::raw::exchange(
        addr,
        b"GET /refused HTTP/1.1\r\nHost: ws.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(refused.status(), Some(503), "{}", refused.text());
    assert_eq!(
        refused.header("x-rampart-reason").as_deref(),
        Some("circuit_open")
    );
    assert_eq!(up.heads().len(), 2, "open: refused without the upstream");

    // Past `open_for`, the WebSocket is the half-open breaker's one probe.
    tokio::time::sleep_until(opened + Duration::from_millis(650)).await;
    let mut ws = open_websocket(addr).await;
    let admin = proxy.admin();
    let closed = || async { breaker_state(&metrics(admin).await, "closed") };
    assert_eventually!(
        closed().await == Some(1.0),
        "the 101 closed the breaker: {:?}",
        {
            let text = metrics(admin).await;
            ["open", "half_open", "closed"].map(|st| (st, breaker_state(&text, st)))
        }
    );
    let text = metrics(admin).await;
    assert_eq!(breaker_state(&text, "half_open"), Some(0.0), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "rampart_circuit_breaker_transitions_total",
            &[("upstream", "ws"), ("from", "half_open"), ("to", "closed")],
        ),
        Some(1.0),
        "{text}"
    );
    // Closed: plain requests reach the upstream again, beside the open socket.
    for _ in 0..3 {
        assert_eq!(get_status(addr, "/after").await, Some(200));
    }
    ws.write_all(b"still").await.expect("write");
    assert_eq!(read_exact(&mut ws, 5).await, b"still");
}
