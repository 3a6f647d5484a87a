//! An HTTP/2 upstream that takes uploads and never reopens its connection's send window: once
//! the window has stayed shut for its bound, new uploads go on a new connection (requests
//! without a body stay), an upload waiting there for a stream moves too, and past the shut
//! connections kept an upload is refused; one that reopens it late has its uploads' answers
//! waited for past `timeout.idle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::StatusCode;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::{connections, fronted, h2_frame, h2_ok, proxy, IDLE};
use crate::support::http;
use crate::support::raw::{self, RawResp};

/// How long rampart lets a connection's send window stay shut before no new upload goes on it
/// (`pool::h2::SHUT_WINDOW`).
const SHUT_WINDOW: Duration = Duration::from_secs(10);

/// A raw HTTP/2 server on 127.0.0.1 that gives each stream a 1 MiB window and never sends a
/// `WINDOW_UPDATE`: each connection takes 65,535 bytes of `DATA` in all (its first window).
/// It answers each request 200 `conn N` (N counted from 1) once the request has ended.
/// [`Shut::with`] sets a stream limit, reopens a window found shut (1 MiB more) after a
/// while, or sends each answer's head as soon as its request's head comes.
struct Shut {
    addr: SocketAddr,
    /// The `DATA` bytes each connection took, in the order they were made.
    taken: Arc<Mutex<Vec<usize>>>,
    /// The connections rampart closed, by number.
    closed: Arc<Mutex<Vec<u64>>>,
    /// The streams rampart reset (`RST_STREAM`), by connection number and stream id.
    resets: Arc<Mutex<Vec<(u64, u32)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`Shut`] server records of its connections: the bytes taken, the connections
/// closed, the streams reset.
type Seen = (
    Arc<Mutex<Vec<usize>>>,
    Arc<Mutex<Vec<u64>>>,
    Arc<Mutex<Vec<(u64, u32)>>>,
);

/// How a [`Shut`] server differs from the plain one.
#[derive(Clone, Copy, Default)]
struct Opts {
    /// Its `SETTINGS_MAX_CONCURRENT_STREAMS`.
    max_streams: Option<u32>,
    /// How long after a connection's window is spent it sends a `WINDOW_UPDATE` of 1 MiB.
    reopen_after: Option<Duration>,
    /// Each answer's head goes as soon as its request's head comes (as a gRPC server's to a
    /// streaming call), its body (`conn N`) once the request has ended.
    head_first: bool,
}

impl Shut {
    async fn start() -> Shut {
        Self::with(Opts::default()).await
    }

    async fn with(opts: Opts) -> Shut {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let taken = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let resets = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (taken, closed, resets) = (taken.clone(), closed.clone(), resets.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while let Ok((tcp, _)) = listener.accept().await {
                    n += 1;
                    taken.lock().push(0);
                    let seen = (taken.clone(), closed.clone(), resets.clone());
                    tokio::spawn(Self::serve(tcp, n, opts, seen));
                }
            })
        };
        Shut {
            addr,
            taken,
            closed,
            resets,
            task,
        }
    }

    fn taken(&self) -> Vec<usize> {
        self.taken.lock().clone()
    }

    fn closed(&self) -> Vec<u64> {
        self.closed.lock().clone()
    }

    fn resets(&self) -> Vec<(u64, u32)> {
        self.resets.lock().clone()
    }

    async fn serve(tcp: tokio::net::TcpStream, n: u64, opts: Opts, (taken, closed, resets): Seen) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rd, mut wr) = tcp.into_split();
        let mut preface = [0u8; 24];
        // What the connection's window allowed so far.
        let mut allowed = 65_535;
        if rd.read_exact(&mut preface).await.is_ok() {
            // SETTINGS_INITIAL_WINDOW_SIZE = 1 MiB: only the connection's window binds.
            let mut entries = vec![0, 4, 0, 0x10, 0, 0];
            if let Some(max) = opts.max_streams {
                entries.extend_from_slice(&[0, 3]);
                entries.extend_from_slice(&max.to_be_bytes());
            }
            let settings = h2_frame(0x4, 0, 0, &entries);
            if wr.write_all(&settings).await.is_ok() {
                loop {
                    let mut head = [0u8; 9];
                    if rd.read_exact(&mut head).await.is_err() {
                        break;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if rd.read_exact(&mut payload).await.is_err() {
                        break;
                    }
                    let index = usize::try_from(n - 1).expect("small");
                    let out = match kind {
                        0x4 if flags & 0x1 == 0 => h2_frame(0x4, 0x1, 0, &[]),
                        0x6 if flags & 0x1 == 0 => h2_frame(0x6, 0x1, 0, &payload),
                        0x3 => {
                            resets.lock().push((n, stream));
                            continue;
                        }
                        0x0 | 0x1 => {
                            if kind == 0x0 {
                                let all = {
                                    let mut taken = taken.lock();
                                    taken[index] += len;
                                    taken[index]
                                };
                                if let Some(after) = opts.reopen_after.filter(|_| all >= allowed) {
                                    tokio::time::sleep(after).await;
                                    allowed += 1 << 20;
                                    let more = (1u32 << 20).to_be_bytes();
                                    if wr.write_all(&h2_frame(0x8, 0, 0, &more)).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            let ends = flags & 0x1 != 0;
                            let body = format!("conn {n}");
                            match (opts.head_first, kind == 0x1, ends) {
                                (false, _, true) => h2_ok(stream, &body),
                                (true, true, true) => h2_ok(stream, &body),
                                (true, true, false) => h2_frame(0x1, 0x4, stream, &[0x88]),
                                (true, false, true) => h2_frame(0x0, 0x1, stream, body.as_bytes()),
                                _ => continue,
                            }
                        }
                        _ => continue,
                    };
                    if wr.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
        }
        closed.lock().push(n);
    }
}

/// An upstream that never reopens a connection's send window stalls every upload on it. Once
/// the window has been shut for its bound (10 s), a GET (which needs no send window) still goes
/// on it; the next upload goes on a new connection and is answered, the requests after it
/// follow it there, and the shut one, taking no new request, closes once the upload stalled
/// on it has ended. Before, every new request went on the shut connection: a POST's body
/// never left rampart, and the client got no answer until its deadline; and then (the first
/// fix) a GET there was moved to a new connection too, as if it had an upload to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_send_window_stays_shut_takes_no_new_upload() {
    let up = Shut::start().await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    // An upload larger than the connection's window: it stalls there for good.
    let stalled = tokio::spawn(async move {
        let body = vec![b'x'; 100 * 1024];
        http::post(addr, "/stalled", &[], body).await
    });
    crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
    tokio::time::sleep(SHUT_WINDOW + Duration::from_millis(500)).await;
    let get = tokio::time::timeout(Duration::from_secs(5), http::get(addr, "/get", &[]))
        .await
        .unwrap_or_else(|_| panic!("not answered: {}", proxy.log()));
    assert_eq!(
        (get.status, get.text()),
        (StatusCode::OK, "conn 1".to_owned()),
        "a request without a body stays on the shut connection"
    );
    assert_eq!(up.taken(), [65_535], "no new connection for it");
    let next = http::post(addr, "/next", &[], "hello");
    let rsp = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .unwrap_or_else(|_| panic!("not answered: {}", proxy.log()));
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 2".to_owned())
    );
    assert_eq!(
        up.taken(),
        [65_535, 5],
        "the new request went on a new connection"
    );
    assert!(up.closed().is_empty(), "{:?}", up.closed());
    let get = http::get(addr, "/get", &[]).await;
    assert_eq!(
        (get.status, get.text()),
        (StatusCode::OK, "conn 2".to_owned()),
        "the new connection takes the requests after the upload"
    );
    // The stalled upload's client goes: its stream ends, and the shut connection with it.
    stalled.abort();
    crate::assert_eventually!(up.closed() == [1], "{:?}", up.closed());
}

/// Starts a 100 KiB upload to `addr` (larger than a connection's first window: it stalls for
/// good on a [`Shut`] connection), from a client that waits for its answer for 2 minutes.
fn stall(addr: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<RawResp> {
    let len = 100 * 1024;
    let mut req =
        format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n").into_bytes();
    req.resize(req.len() + len, b'x');
    tokio::spawn(async move { raw::exchange(addr, &req, Duration::from_secs(120)).await })
}

/// Two connections to one endpoint whose send window has stayed shut are the most kept: the
/// one in use, and one let go for it while it is open. An upload that then finds the one in
/// use shut is a 502 at once, unsent, saying why (no third connection), while a GET still goes
/// on the one in use; once the connection let go has closed, the next upload opens a new one.
/// Before, each upload after another 10 s of a shut window opened one more connection, and on a
/// route without `timeout.request` they all stayed open with their stalled uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_shut_connections_kept_are_refused_unsent() {
    past_the_shut_connections_kept(Opts::default()).await;
}

/// [`uploads_past_the_shut_connections_kept_are_refused_unsent`] with the stalled uploads'
/// answers streaming (their heads came): the connection let go still counts among those kept,
/// and in `rampart_upstream_connections`, until its socket closes. Before, both went as soon as
/// it was let go (hyper's dispatch task for it ended with its last handle, while its socket
/// stayed open with the upload on it), and each upload after another 10 s of a shut window
/// opened one more connection, as before the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_shut_connections_kept_are_refused_with_their_answers_streaming() {
    let head_first = Opts {
        head_first: true,
        ..Opts::default()
    };
    past_the_shut_connections_kept(head_first).await;
}

/// Two uploads stalled on two connections of a [`Shut`] server of `opts`, each shut for the
/// bound, both counted; a third refused, the one in use still taking a GET; then the first's
/// client gone, its connection closes, counts no more, and the next upload opens a new one.
async fn past_the_shut_connections_kept(opts: Opts) {
    let up = Shut::with(opts).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let first = stall(addr, "/first");
    crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
    tokio::time::sleep(SHUT_WINDOW + Duration::from_millis(500)).await;
    let second = stall(addr, "/second");
    crate::assert_eventually!(up.taken() == [65_535, 65_535], "{:?}", up.taken());
    tokio::time::sleep(SHUT_WINDOW + Duration::from_millis(500)).await;
    assert_eq!(
        connections(&proxy, up.addr).await,
        Some(2.0),
        "both open: {:?}",
        up.closed()
    );

    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        http::post(addr, "/third", &[], "hello"),
    )
    .await
    .unwrap_or_else(|_| panic!("not answered: {}", proxy.log()));
    refused.assert_rampart(502, "upstream_unavailable");
    let message = refused.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("send window shut") && message.contains("not sent"),
        "{message}"
    );
    assert_eq!(up.taken(), [65_535, 65_535], "no third connection");
    let get = http::get(addr, "/get", &[]).await;
    assert_eq!(
        (get.status, get.text()),
        (StatusCode::OK, "conn 2".to_owned())
    );
    assert!(
        proxy.log().contains("uploads are answered 502"),
        "warned: {}",
        proxy.log()
    );

    // The first upload's client goes (its answer's head came or not: `an_upload_stalled_after_
    // its_answers_head_is_reset_when_its_http1_client_goes`): the connection let go closes, and
    // is shut no more.
    first.abort();
    crate::assert_eventually!(up.closed() == [1], "{:?}", up.closed());
    crate::assert_eventually!(
        connections(&proxy, up.addr).await == Some(1.0),
        "{:?}",
        connections(&proxy, up.addr).await
    );
    let rsp = http::post(addr, "/fourth", &[], "hello").await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 3".to_owned())
    );
    second.abort();
}

/// An upload stalled behind a shut send window, whose answer's head came (the client has it),
/// is reset (`RST_STREAM(CANCEL)`) once its HTTP/2 client resets its stream, and that stream
/// alone: the connection stays, and a request after it is answered there.
///
/// Before, hyper's task that sends the upload held the stream (its `SendStream`) while it
/// waited for room to send the chunk it took, and polled nothing else then (not the body,
/// which would fail once its client went): rampart dropped the answer, and the stream was
/// never reset. The upstream never heard the client went, and the stream (and its connection,
/// let go or not) stayed open for ever on a route without `timeout.request`: no `RST_STREAM`
/// within the patience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stalled_after_its_answers_head_is_reset_when_its_client_goes() {
    stalled_after_its_answers_head(super::POLICY, "/stalled", Client::GoesH2, false).await;
}

/// So is one sent on a connection whose send window another upload spent already: hyper
/// polls its body first (inside its dispatch task, where the task it spawns for the upload is
/// bound to it, `pool/h2/pipe.rs`) and only then waits for window, so its task is bound as
/// well. (A hyper that waited for window before its first poll of the body would poll it in
/// that task alone, bound to nothing: no `RST_STREAM` of stream 3 within the patience.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_sent_behind_a_shut_window_is_reset_when_its_client_goes() {
    stalled_after_its_answers_head(super::POLICY, "/stalled", Client::GoesH2, true).await;
}

/// So is one whose HTTP/1.1 client closes its connection: the answer's body watches the client
/// while the upload is unfinished (`h1/gone.rs`, `Uploading`), and lets the answer go.
///
/// Before, rampart did not see it go: hyper's HTTP/1 server reads the upload only as it is
/// sent on (not while the window is shut) and writes nothing while the answer waits, and the
/// client-gone watch ended with the answer's head. The answer was never dropped (nor its
/// stream reset). Seen failing: no `RST_STREAM` within the patience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stalled_after_its_answers_head_is_reset_when_its_http1_client_goes() {
    stalled_after_its_answers_head(super::POLICY, "/stalled", Client::GoesH1, false).await;
}

/// So is one whose deadline (`timeout.request`, 300 ms) passes after its answer's head came:
/// rampart lets the answer go (`H2Answer::end_by`), and the connection stays. Before, that
/// reset nothing while hyper's task waited to send the upload; seen failing the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stalled_after_its_answers_head_is_reset_at_its_deadline() {
    let short = (super::waiting::SHORT, "/short/stalled");
    stalled_after_its_answers_head(short.0, short.1, Client::Stays, false).await;
}

/// What the client of [`stalled_after_its_answers_head`] does once it has its answer's head.
#[derive(Clone, Copy, PartialEq)]
enum Client {
    /// Waits (over HTTP/1.1).
    Stays,
    /// Closes its HTTP/1.1 connection.
    GoesH1,
    /// Drops its answer: its HTTP/2 stream is reset, its connection stays.
    GoesH2,
}

/// A 100 KiB upload to `path` of a rampart of `policy` in front of a [`Shut`] server that
/// sends answers' heads first: once its head came and the window is spent, its `client` goes
/// or stays; the upstream is to see that stream reset, and nothing else: the connection stays
/// open, and (unless the deadline opened `SHORT`'s breaker) a GET is answered on it. `behind`:
/// another upload (to `/stalled`) spent the window first (stream 1, whose client waits), and
/// this one is stream 3.
async fn stalled_after_its_answers_head(policy: &str, path: &str, client: Client, behind: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Shut::with(Opts {
        head_first: true,
        ..Opts::default()
    })
    .await;
    let proxy = fronted(policy, up.addr, "").await;
    let addr = proxy.listener("inbound");
    let len = 100 * 1024;
    let first = behind.then(|| stall(addr, "/stalled"));
    if behind {
        crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
    }
    let reset = (1, if behind { 3 } else { 1 });
    if client == Client::GoesH2 {
        // The whole upload fits rampart's stream window: the client's own task sends it all.
        let mut send = http::h2c(addr).await;
        let req = ::http::Request::post(format!("http://{addr}{path}"))
            .body(http::full(vec![b'x'; len]))
            .expect("request");
        let rsp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("no head: {}", proxy.log()))
            .expect("answered");
        assert_eq!(rsp.status(), StatusCode::OK);
        crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
        assert!(up.resets().is_empty(), "{:?}", up.resets());
        drop(rsp);
        crate::assert_eventually!(up.resets() == [reset], "{:?}: {}", up.resets(), proxy.log());
        sibling(&up, addr, &proxy, reset).await;
        return first.into_iter().for_each(|f| f.abort());
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let mut req =
        format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n").into_bytes();
    req.resize(req.len() + len, b'x');
    // Its bytes past the window stay in the sockets' buffers, or here.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        wr
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no head: {}", proxy.log()))
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
    if client == Client::GoesH1 {
        assert!(up.resets().is_empty(), "{:?}", up.resets());
        writer.abort();
        drop(writer);
        drop(rd);
    }
    crate::assert_eventually!(up.resets() == [reset], "{:?}: {}", up.resets(), proxy.log());
    if client == Client::GoesH1 {
        sibling(&up, addr, &proxy, reset).await;
    }
    assert!(up.closed().is_empty(), "{:?}", up.closed());
    first.into_iter().for_each(|f| f.abort());
}

/// The connection of a stream just reset (`reset`: its connection and id) still serves: a GET
/// to `addr` is answered on it (connection 1), and nothing else was reset or closed.
async fn sibling(
    up: &Shut,
    addr: SocketAddr,
    proxy: &crate::support::proxy::Proxy,
    reset: (u64, u32),
) {
    let get = tokio::time::timeout(Duration::from_secs(5), http::get(addr, "/get", &[]))
        .await
        .unwrap_or_else(|_| panic!("not answered: {}", proxy.log()));
    assert_eq!(
        (get.status, get.text()),
        (StatusCode::OK, "conn 1".to_owned())
    );
    assert_eq!(up.resets(), [reset]);
    assert!(up.closed().is_empty(), "{:?}", up.closed());
}

/// An upload waiting for a stream (the upstream takes one at a time) on a connection whose
/// send window then stays shut for its bound stops waiting and goes on a new connection, where
/// it is answered. Before, it waited there until its deadline (on a route without one, for
/// ever): no stream of that connection would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_waiting_for_a_stream_on_a_shut_connection_goes_on_another() {
    let taken = waiting_on_a_shut_connection_goes_on_another(true).await;
    assert_eq!(taken, [65_535, 5]);
}

/// So does a request without a body: it needs no send window, but every place for a stream
/// on that connection is held by an upload the shut window stalls. Before, it stayed on the
/// shut connection, waiting for a place that never came (review of the shut-window change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_waiting_for_a_stream_on_a_shut_connection_goes_on_another() {
    let taken = waiting_on_a_shut_connection_goes_on_another(false).await;
    assert_eq!(
        taken,
        [65_535, 0],
        "the GET took no bytes, on the second connection"
    );
}

/// A request (`upload`: a POST of 5 bytes, else a GET) sent while the one stream the upstream
/// allows is held by an upload its shut window stalls: answered on a second connection within
/// a little more than [`SHUT_WINDOW`]. Gives what the upstream took.
async fn waiting_on_a_shut_connection_goes_on_another(upload: bool) -> Vec<usize> {
    let up = Shut::with(Opts {
        max_streams: Some(1),
        ..Opts::default()
    })
    .await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let stalled = stall(addr, "/stalled");
    crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
    let t0 = tokio::time::Instant::now();
    let waiting = async {
        match upload {
            true => http::post(addr, "/waiting", &[], "hello").await,
            false => http::get(addr, "/waiting", &[]).await,
        }
    };
    let rsp = tokio::time::timeout(SHUT_WINDOW + Duration::from_secs(5), waiting)
        .await
        .unwrap_or_else(|_| panic!("still waiting: {}", proxy.log()));
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 2".to_owned())
    );
    assert!(
        t0.elapsed() < SHUT_WINDOW + Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    stalled.abort();
    up.taken()
}

/// `timeout.idle` (300 ms here) waits for an HTTP/2 upstream's answer from no earlier than the
/// connection's send window was last open: an upload rampart read whole, whose last bytes wait
/// for the upstream's `WINDOW_UPDATE` (1 s here), is answered once they went. Before, the wait
/// counted from the end of rampart's reading of the upload, and the request was a 504 `timeout`
/// 300 ms in, its last bytes never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_waits_for_an_upload_behind_a_shut_send_window() {
    let up = Shut::with(Opts {
        reopen_after: Some(Duration::from_secs(1)),
        ..Opts::default()
    })
    .await;
    let proxy = fronted(IDLE, up.addr, "").await;
    let addr = proxy.listener("inbound");
    // 535 bytes of the window left.
    let rsp = http::post(addr, "/first", &[], vec![b'x'; 65_000]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 1".to_owned())
    );
    let t0 = tokio::time::Instant::now();
    let rsp = tokio::time::timeout(
        Duration::from_secs(5),
        http::post(addr, "/behind", &[], vec![b'y'; 2_000]),
    )
    .await
    .unwrap_or_else(|_| panic!("not answered: {}", proxy.log()));
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 1".to_owned()),
        "after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(up.taken(), [67_000]);
}
