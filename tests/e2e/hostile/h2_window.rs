//! An HTTP/2 client that keeps one stream's flow-control window shut while its connection
//! goes on (PINGs answered, other streams served): the stream's answer is bounded as a slow
//! reader's is (`proxy::stall`), not held, with its upstream connection, for ever.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::support::{metric_value, metrics, Proxy};

/// A route of 3 s (`timeout.request`) to `$APP`, its lines in the access log at `$LOG`.
const BOUNDED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  bounded:
    timeout: { request: 3s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: app, policy: bounded }
"#;

/// The route's deadline.
const DEADLINE: Duration = Duration::from_secs(3);

/// What the control's answer holds: 8 chunks of 16 KiB.
const SMALL: usize = 8 * 16 * 1024;

/// An HTTP/1.1 upstream, keep-alive, counting the connections it accepted and those that
/// ended. `GET /tiny` is answered `ok`; `GET /small` [`SMALL`] bytes, chunked; any other path
/// a chunked body of 16 KiB chunks written as fast as the socket takes them for 30 s (so a
/// reader that stops leaves its writes blocked, until its connection is closed).
struct Upstream {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (o, c) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = tcp.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                serve(&mut conn).await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        opened,
        closed,
    }
}

/// Serves requests on `conn` until it ends or breaks.
async fn serve(conn: &mut tokio::net::TcpStream) {
    let mut chunk = b"4000\r\n".to_vec();
    chunk.extend_from_slice(&[b'x'; 16 * 1024]);
    chunk.extend_from_slice(b"\r\n");
    let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    loop {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&head);
        let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
        let wrote = match path.as_str() {
            "/tiny" => {
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            }
            "/small" => {
                let mut all = start.to_vec();
                for _ in 0..SMALL / (16 * 1024) {
                    all.extend_from_slice(&chunk);
                }
                all.extend_from_slice(b"0\r\n\r\n");
                conn.write_all(&all).await
            }
            _ => {
                if conn.write_all(start).await.is_err() {
                    return;
                }
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(30) {
                    if conn.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                conn.write_all(b"0\r\n\r\n").await
            }
        };
        if wrote.is_err() {
            return;
        }
    }
}

/// An h2c connection from the `h2` crate, whose streams' receive windows are `window` bytes
/// and are opened only when the test releases what it read; its PINGs go out every 100 ms
/// (the connection moves) until it ends.
async fn h2_client(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("the connection's ping-pong");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
        }
    });
    send
}

/// Sends `GET path` on `send`; its answer's head and body.
async fn get(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
) -> (http::StatusCode, h2::RecvStream) {
    let mut send = send
        .clone()
        .ready()
        .await
        .expect("the connection takes a stream");
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .expect("request");
    let (rsp, _) = send.send_request(req, true).expect("sent");
    let rsp = tokio::time::timeout(Duration::from_secs(5), rsp)
        .await
        .expect("an answer's head within 5 s")
        .expect("an answer");
    let (parts, body) = rsp.into_parts();
    (parts.status, body)
}

/// The `BOUNDED` proxy before `app`, its access log in a directory of its own: the proxy, the
/// directory (kept for the test's length) and the log file.
async fn bounded(app: std::net::SocketAddr) -> (Proxy, tempfile::TempDir, std::path::PathBuf) {
    let log = tempfile::tempdir().expect("a temp dir");
    let file = log.path().join("access.jsonl");
    let proxy = Proxy::builder(BOUNDED)
        .var("APP", app)
        .var("LOG", file.display())
        .spawn()
        .await;
    (proxy, log, file)
}

/// A client keeps one stream's window shut (1 KiB, never opened: it reads what came but
/// releases none of it) while its connection moves (PINGs every 100 ms), on a route of 3 s,
/// behind which the upstream streams without end. At the deadline the stream is reset
/// (`CANCEL`), the upstream sees its connection closed (one opened, one closed), the timeout is
/// counted (`rampart_timeouts_total{kind="request"}`), the request's line is written (200,
/// the bytes that went, cut at about 3 s), nothing stays in flight, and the same connection
/// serves a request after. Before, hyper never polled the answer's body again once it held a
/// frame with no window for it: the stream was still open 8 s on, the upstream connection
/// held, no line written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_window_stays_shut_is_reset_and_its_upstream_closed() {
    let up = upstream().await;
    let (proxy, _log, file) = bounded(up.addr).await;
    let addr = proxy.listener("inbound");

    let send = h2_client(addr, 1024).await;
    let t0 = Instant::now();
    let (status, mut body) = get(&send, addr, "/flood").await;
    assert_eq!(status, 200);
    let read = async {
        let mut got = 0;
        loop {
            match body.data().await {
                Some(Ok(b)) => got += b.len(),
                Some(Err(e)) => return (got, Err(e)),
                None => return (got, Ok(())),
            }
        }
    };
    let (got, ended) = tokio::time::timeout(Duration::from_secs(8), read)
        .await
        .expect("the stream is reset, not still open 8 s on");
    let took = t0.elapsed();
    let e = ended.expect_err("reset, never ended whole");
    assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}");
    assert!(got <= 1024, "no more than the window: {got} bytes");
    assert!(
        took >= DEADLINE - Duration::from_millis(100) && took < DEADLINE + Duration::from_secs(2),
        "reset at the deadline: {took:?}"
    );

    assert_eventually!(
        up.closed.load(Ordering::SeqCst) == 1,
        "the upstream connection closed: {} of {}",
        up.closed.load(Ordering::SeqCst),
        up.opened.load(Ordering::SeqCst)
    );
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
    let lines = crate::support::wait_log_lines(&file, 1).await;
    let line = &lines[0];
    assert_eq!(line["path"].as_str(), Some("/flood"), "{line}");
    assert_eq!(line["status"].as_u64(), Some(200), "{line}");
    assert!(
        line["bytes_out"].as_u64().is_some_and(|b| b < 1024 * 1024),
        "{line}"
    );
    let ms = line["duration_ms"].as_f64().expect("a duration");
    assert!(
        (2900.0..4500.0).contains(&ms),
        "cut at the deadline: {line}"
    );
    let text = metrics(proxy.admin()).await;
    let request = [("route", "app"), ("kind", "request")];
    assert_eq!(
        metric_value(&text, "rampart_timeouts_total", &request),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "rampart_in_flight_requests",
            &[("listener", "inbound")]
        ),
        Some(0.0),
        "{text}"
    );

    // Only the stream was reset: its connection serves on.
    let (status, mut body) = get(&send, addr, "/tiny").await;
    assert_eq!(status, 200);
    let ok = body.data().await.expect("a body").expect("its bytes");
    assert_eq!(&ok[..], b"ok");
}

/// The control: a slow reader whose window keeps opening (a 16 KiB window, each piece
/// released 20 ms after it came, the stream waiting for the window in between) is not cut: its answer comes whole, the upstream connection
/// goes back to the pool (none closed), and nothing is counted as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_whose_window_keeps_opening_is_not_cut() {
    let up = upstream().await;
    let (proxy, _log, file) = bounded(up.addr).await;
    let addr = proxy.listener("inbound");

    let send = h2_client(addr, 16 * 1024).await;
    let t0 = Instant::now();
    let (status, mut body) = get(&send, addr, "/small").await;
    assert_eq!(status, 200);
    let mut got = 0;
    let mut pieces = 0;
    while let Some(data) = body.data().await {
        let data = data.expect("never reset");
        got += data.len();
        pieces += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = body.flow_control().release_capacity(data.len());
    }
    assert_eq!(got, SMALL, "the whole answer");
    assert!(pieces >= 8, "read in pieces: {pieces}");
    assert!(t0.elapsed() < DEADLINE, "within the route's deadline");

    let lines = crate::support::wait_log_lines(&file, 1).await;
    assert_eq!(lines[0]["status"].as_u64(), Some(200), "{}", lines[0]);
    assert_eq!(
        lines[0]["bytes_out"].as_u64(),
        Some(SMALL as u64),
        "{}",
        lines[0]
    );
    assert_eq!(up.closed.load(Ordering::SeqCst), 0, "pooled, not closed");
    let text = metrics(proxy.admin()).await;
    let request = [("route", "app"), ("kind", "request")];
    assert!(
        metric_value(&text, "rampart_timeouts_total", &request).unwrap_or(0.0) == 0.0,
        "{text}"
    );
}
