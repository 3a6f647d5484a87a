//! Requests that wait for a stream at an HTTP/2 upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`:
//! they are rampart's until a stream is free, so a connection that goes away sends them to a
//! new one (they never reached the upstream), and one whose client leaves is never sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, StatusCode};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{h2_frame, h2_ok, proxy};
use crate::support::http;

/// What the test tells [`Limited`]'s first connection to do.
#[derive(Debug, Clone, Copy)]
enum Say {
    /// `GOAWAY(NO_ERROR)` with this last stream id.
    GoAway(u32),
    /// Answer stream 1 (200 `conn 1`).
    Release,
    /// Close the connection.
    Close,
}

/// A raw HTTP/2 server on 127.0.0.1 whose `SETTINGS` allow one stream at a time. Its first
/// connection holds stream 1 unanswered and does what it is told ([`Say`]); every later
/// connection answers each request 200 `conn N` (N counted from 1) when it ends.
struct Limited {
    addr: SocketAddr,
    /// `(connection, stream, request body)` of every request, as it ends (or as its HEADERS
    /// come, with an empty body, if it never does).
    streams: Arc<Mutex<Vec<(u64, u32, String)>>>,
    say: mpsc::UnboundedSender<Say>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Limited {
    async fn start() -> Limited {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (say, mut told) = mpsc::unbounded_channel();
        let task = {
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while let Ok((tcp, _)) = listener.accept().await {
                    n += 1;
                    let told = match n {
                        1 => Some(std::mem::replace(&mut told, mpsc::unbounded_channel().1)),
                        _ => None,
                    };
                    tokio::spawn(Self::serve(tcp, n, streams.clone(), told));
                }
            })
        };
        Limited {
            addr,
            streams,
            say,
            task,
        }
    }

    fn say(&self, what: Say) {
        self.say.send(what).expect("the server is there");
    }

    fn streams(&self) -> Vec<(u64, u32, String)> {
        self.streams.lock().clone()
    }

    async fn serve(
        tcp: tokio::net::TcpStream,
        n: u64,
        streams: Arc<Mutex<Vec<(u64, u32, String)>>>,
        mut told: Option<mpsc::UnboundedReceiver<Say>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rd, mut wr) = tcp.into_split();
        let mut preface = [0u8; 24];
        if rd.read_exact(&mut preface).await.is_err() {
            return;
        }
        // SETTINGS_MAX_CONCURRENT_STREAMS = 1.
        let settings = h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 1]);
        if wr.write_all(&settings).await.is_err() {
            return;
        }
        // Frames are read by a task of their own, so that the test's word comes between them.
        let (frames, mut incoming) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let mut head = [0u8; 9];
                if rd.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                if frames.send((head[3], head[4], stream, payload)).is_err() {
                    return;
                }
            }
        });
        let mut bodies: Vec<(u32, Vec<u8>)> = Vec::new();
        loop {
            let word = async {
                match told.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            let (kind, flags, stream, payload) = tokio::select! {
                f = incoming.recv() => match f {
                    Some(f) => f,
                    None => return,
                },
                w = word => {
                    let out = match w {
                        Some(Say::GoAway(last)) => {
                            let mut p = last.to_be_bytes().to_vec();
                            p.extend_from_slice(&0u32.to_be_bytes());
                            h2_frame(0x7, 0, 0, &p)
                        }
                        Some(Say::Release) => h2_ok(1, "conn 1"),
                        Some(Say::Close) | None => {
                            reader.abort();
                            return;
                        }
                    };
                    let _ = wr.write_all(&out).await;
                    continue;
                }
            };
            let out = match kind {
                0x4 if flags & 0x1 == 0 => h2_frame(0x4, 0x1, 0, &[]),
                0x6 if flags & 0x1 == 0 => h2_frame(0x6, 0x1, 0, &payload),
                0x1 => {
                    bodies.push((stream, Vec::new()));
                    if flags & 0x1 == 0 {
                        continue;
                    }
                    Vec::new()
                }
                0x0 => {
                    if let Some((_, b)) = bodies.iter_mut().find(|(s, _)| *s == stream) {
                        b.extend_from_slice(&payload);
                    }
                    if flags & 0x1 == 0 {
                        continue;
                    }
                    Vec::new()
                }
                _ => continue,
            };
            if !out.is_empty() {
                let _ = wr.write_all(&out).await;
                continue;
            }
            // A request's end.
            let body = bodies
                .iter()
                .find(|(s, _)| *s == stream)
                .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            streams.lock().push((n, stream, body));
            if n == 1 && stream == 1 {
                continue;
            }
            let _ = wr.write_all(&h2_ok(stream, &format!("conn {n}"))).await;
        }
    }
}

/// Until the upstream holds stream 1 of its first connection (a GET of `/held`).
async fn held(up: &Limited, addr: SocketAddr) -> tokio::task::JoinHandle<http::Resp> {
    let held = tokio::spawn(async move { http::get(addr, "/held", &[]).await });
    crate::assert_eventually!(!up.streams().is_empty(), "{:?}", up.streams());
    held
}

/// A POST (on a route without retries) waiting for the one stream an upstream allows is sent
/// on a new connection when the one it waits on goes away: a graceful `GOAWAY` whose last
/// stream is the one open (the waiter is above it), one that lets every stream finish (the
/// first phase of a graceful close: the open stream still finishes there), or the connection
/// closed. Before, the h2 library held the first waiter with a stream id of the going
/// connection, and hyper dropped it when the connection went away: a 502 "connection lost"
/// for a request never processed (with `GOAWAY(2^31-1)` sent, then cancelled by rampart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_stream_goes_to_a_new_connection_when_the_old_goes_away() {
    for say in [Say::GoAway(1), Say::GoAway(u32::MAX >> 1), Say::Close] {
        let up = Limited::start().await;
        let proxy = proxy(up.addr, "").await;
        let addr = proxy.listener("inbound");
        let held = held(&up, addr).await;
        let waiters: Vec<_> = ["first", "second"]
            .into_iter()
            .map(|b| tokio::spawn(async move { http::post(addr, "/next", &[], b).await }))
            .collect();
        // Both wait in rampart for the one stream.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.streams().len(), 1, "{say:?}: {:?}", up.streams());
        up.say(say);
        for w in waiters {
            let rsp = w.await.expect("a waiter");
            assert_eq!(
                (rsp.status, rsp.text()),
                (StatusCode::OK, "conn 2".to_owned()),
                "{say:?}: {}",
                proxy.log()
            );
        }
        // Nothing more went on the going connection; the waiters went on the next, in
        // either order.
        let mut sent: Vec<(u64, String)> =
            up.streams().into_iter().map(|(c, _, b)| (c, b)).collect();
        sent.sort();
        let want = [(1, ""), (2, "first"), (2, "second")].map(|(c, b)| (c, b.to_owned()));
        assert_eq!(sent, want, "{say:?}");
        if matches!(say, Say::Close) {
            continue;
        }
        // The stream the going connection had open still finishes there.
        up.say(Say::Release);
        let rsp = held.await.expect("the held request");
        assert_eq!(
            (rsp.status, rsp.text()),
            (StatusCode::OK, "conn 1".to_owned()),
            "{say:?}"
        );
    }
}

/// A request whose client leaves while it waits for a stream is never sent: not later, when
/// the stream frees, whole (an HTTP/1.1 client's POST, before), nor its head alone then reset
/// (an HTTP/2 client's). Its place goes to the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_while_it_waited_for_a_stream_is_never_sent() {
    use tokio::io::AsyncWriteExt;
    let up = Limited::start().await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let held = held(&up, addr).await;
    // An HTTP/1.1 client's POST, its client gone after 300 ms.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"POST /charge HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\ncharge")
        .await
        .expect("write");
    // An HTTP/2 client's, its stream dropped (reset) after 300 ms.
    let mut h2 = http::h2c(addr).await;
    let req = Request::post("http://a/charge2")
        .body(http::full("charge2"))
        .expect("request");
    let answer = h2.send_request(req);
    let gone = tokio::time::timeout(Duration::from_millis(300), answer).await;
    assert!(gone.is_err(), "no answer while the stream is held");
    drop(tcp);
    for path in ["/charge", "/charge2"] {
        let lines = super::logged(&proxy, path, 1).await;
        assert_eq!(lines[0]["status"], 499, "{path}: {lines:?}");
    }
    up.say(Say::Release);
    let rsp = held.await.expect("the held request");
    assert_eq!(rsp.status, StatusCode::OK);
    // The next request takes the freed stream; the gone ones never went.
    let rsp = http::post(addr, "/after", &[], "after").await;
    assert_eq!(rsp.status, StatusCode::OK, "{}", proxy.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.streams(),
        [(1, 1, String::new()), (1, 3, "after".to_owned())],
        "only the held request and the one after were sent"
    );
}

/// With `max_connections: 1`, a connection going away (`GOAWAY`) with a long stream still open
/// on it does not hold back the next: a request after the `GOAWAY` goes on a new connection at
/// once, and the long stream still finishes on the old one. Before, the new connection waited
/// for the old one's `max_connections` place until `connect_timeout`: a 502 "cannot connect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_going_away_does_not_hold_max_connections_from_the_next() {
    let up = Limited::start().await;
    let proxy = proxy(up.addr, ", max_connections: 1").await;
    let addr = proxy.listener("inbound");
    let held = held(&up, addr).await;
    up.say(Say::GoAway(1));
    let rsp = http::get(addr, "/next", &[]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 2".to_owned()),
        "{}",
        proxy.log()
    );
    up.say(Say::Release);
    let rsp = held.await.expect("the held request");
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 1".to_owned())
    );
}

/// `/short` under a 300 ms `timeout.request` and a breaker that opens at the first failure;
/// anything else under no policy.
pub(super) const SHORT: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 $EXTRA }
policies:
  short:
    timeout: { request: 300ms }
    circuit_breaker: { consecutive_failures: 1, open_for: 30s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { match: { path_prefix: /short }, upstream: grpc, policy: short }
      - { upstream: grpc }
"#;

/// A request whose deadline passes while it waits in rampart for the one stream the upstream
/// allows was never sent: a 504 that says so, counted in
/// `rampart_upstream_unsent_total{cause="stream_slot"}`, not as a try in
/// `rampart_upstream_requests_total`, and no failure for the breaker, which lets the next
/// request through. Before, it was a `504` try and opened the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_for_a_stream_past_its_deadline_is_no_try() {
    let up = Limited::start().await;
    let proxy = super::fronted(SHORT, up.addr, "").await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let held = held(&up, addr).await;

    let rsp = http::get(addr, "/short", &[]).await;
    rsp.assert_rampart(504, "timeout");
    let msg = super::odd::message(&rsp);
    assert!(msg.contains("no stream free"), "{msg}");
    assert!(msg.contains("not sent"), "{msg}");

    up.say(Say::Release);
    assert_eq!(held.await.expect("the held request").status, StatusCode::OK);
    let rsp = http::get(addr, "/short", &[]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 1".to_owned()),
        "the breaker stays closed"
    );
    assert_eq!(
        up.streams(),
        [(1, 1, String::new()), (1, 3, String::new())],
        "the request that waited was never sent"
    );

    crate::support::metrics::one_unsent_two_tries(admin, "grpc", "stream_slot").await;
}
