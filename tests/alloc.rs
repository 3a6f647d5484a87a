//! The request path allocates nothing per request, plain or under the full policy (issue 22:
//! the hot path makes no allocation it can avoid), and a new connection little, checked so
//! that a change which adds one fails here rather than showing up, months later, as a few per
//! cent in a benchmark.
//!
//! Its own test binary: `allocation-counter` becomes the process's global allocator wherever it
//! is linked, and counts each thread's allocations apart. rampart runs in-process on this test's
//! thread (one current-thread runtime, as `rampart run` with one worker), the upstream (the
//! sample service) and the clients each on threads of their own, so the count is the proxy's
//! alone: its accept loop, the lean HTTP/1.1 server, the request path, the upstream pool and
//! the metrics. What a connection sets up once (buffers, pooled upstream connections, timer
//! entries, a tenant's label handles) is paid in the warm-up and not counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use allocation_counter::AllocationInfo;

/// What each client sends.
#[derive(Clone, Copy)]
enum Load {
    /// Requests on one keep-alive connection: `GET /`, or `POST /` of this many bytes if not 0.
    KeepAlive(usize),
    /// `GET /`, each on a new connection, with `connection: close`.
    Fresh,
    /// `GET /` on one keep-alive connection, answered by rampart itself: 404 `no_route`
    /// ([`REFUSING`]).
    Refused,
}

/// Clients, each on a keep-alive connection of its own (so the pool holds several upstream
/// connections, and the listener serves several connections in one turn).
const CLIENTS: usize = 4;
/// Requests per client before counting: connections, buffers and label handles are made here.
const WARMUP: usize = 200;
/// Requests per client while counting.
const COUNTED: usize = 500;

/// The load benchmark's plain proxy (`benches/load/rampart.yaml`, filled in as its scripts do).
const PLAIN: &str = include_str!("../benches/load/rampart.yaml");
/// The load benchmark's full policy (`benches/load/rampart-policy.yaml`): per-tenant rate
/// limit, load shedding with its queue, the breaker, retry with budget, both timeouts; limits
/// far above the load, so every request is admitted and forwarded.
const FULL: &str = include_str!("../benches/load/rampart-policy.yaml");

/// The plain proxy with no route for `/`: every `GET /` is answered by rampart, 404 `no_route`.
const REFUSING: &str = "version: 1
admin:
  listen: @ADMIN@
upstreams:
  app:
    endpoints: [@UPSTREAM@]
listeners:
  - name: inbound
    direction: inbound
    listen: @LISTEN@
    @TLS_RAMPART@
    routes:
      - { match: { path_prefix: /app }, upstream: app }
";

/// An answer rampart makes itself (404 `no_route`, on a keep-alive connection) allocates to
/// build it (its JSON body, its message, the request id joined to the body), and nothing to
/// mark it as rampart's own (`respond::mark_own`, its body's variant): 15.0 allocations an
/// answer (rustc 1.95, debug), 17.0 while the mark was an extension of the answer (the
/// extensions' map and its table).
#[test]
fn an_own_answer_allocates_nothing_to_mark_it() {
    let run = count_allocations(REFUSING, false, &[], Load::Refused);
    let (count, requests) = (run.count.count_total, run.requests);
    println!(
        "own answers: {count} allocations ({} bytes) on the proxy's thread for {requests} \
         requests",
        run.count.bytes_total
    );
    assert!(
        count <= requests * 31 / 2,
        "{count} allocations for {requests} own answers, over 15.5 an answer: see this test's \
         doc, and `assert_at_most` for how to find the callers"
    );
}

#[test]
fn a_plain_keep_alive_request_allocates_nothing_on_the_proxys_thread() {
    let run = count_allocations(PLAIN, false, &[], Load::KeepAlive(0));
    assert_at_most(&run, "plain");
}

/// A request on a connection of its own (`connection: close`) pays what a connection sets up:
/// its task and the connection's future (boxed in it), the peer and connection state, the
/// head timer, the socket's registration. Buffers, the parser's vectors and the first
/// request's header map come from those the thread's earlier connections left. 7.7
/// allocations a connection (rustc 1.95, release), where it was 17.6 before connections left
/// their buffers and parser to the next, and 9.6 at 654315a (before the peer's address text
/// went straight into its header value, without a `String`, and the pool became a stack).
#[test]
fn a_new_connection_allocates_little_on_the_proxys_thread() {
    let run = count_allocations(PLAIN, false, &[], Load::Fresh);
    let (count, requests) = (run.count.count_total, run.requests);
    println!(
        "a connection a request: {count} allocations ({} bytes) on the proxy's thread for \
         {requests} requests",
        run.count.bytes_total
    );
    assert!(
        count <= requests * 10,
        "{count} allocations for {requests} connections, over 10 a connection: see this test's \
         doc, and `tests/alloc.rs`'s other tests for how to find the callers"
    );
}

#[test]
fn a_small_upload_allocates_nothing_on_the_proxys_thread() {
    // 2 KiB `POST /`, sent with its head: the lean server takes the body with the head, as a
    // slice of its read buffer, and the pool writes it out with the upstream request's head.
    // (Through hyper's server, which served every request with a body before, each one cost
    // a dozen allocations and more.)
    let run = count_allocations(PLAIN, false, &[], Load::KeepAlive(2048));
    assert_at_most(&run, "2 KiB upload");
}

#[test]
fn the_full_policy_allocates_nothing_per_admitted_request() {
    // Eight tenants, each seen in the warm-up: a tenant's first request makes its buckets and
    // label handles; the ones after it must not allocate.
    const TENANTS: &[&str] = &["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    let run = count_allocations(FULL, false, TENANTS, Load::KeepAlive(0));
    assert_at_most(&run, "full-policy");
    // The policy was in force: its breaker and shedder report, and each tenant was counted.
    for line in [
        "rampart_circuit_breaker_state{",
        "rampart_concurrency_limit{",
        "tenant=\"t7\"",
    ] {
        assert!(
            run.metrics.contains(line),
            "no `{line}` in rampart's metrics: was the policy applied?\n{}",
            run.metrics
        );
    }
}

#[test]
fn the_access_log_allocates_nothing_per_line_on_the_proxys_thread() {
    // Every answer logged, to a file: the line is rendered on the proxy's thread into a lane
    // its writer thread takes, and that must not cost an allocation a line either.
    let run = count_allocations(PLAIN, true, &[], Load::KeepAlive(0));
    assert_at_most(&run, "logged");
    // Every request was logged: the warm-up's and the counted ones, written by the time
    // rampart stopped.
    let all = (CLIENTS * (WARMUP + COUNTED)) as u64;
    assert_eq!(run.log_lines, all, "access log lines after {all} requests");
}

/// Connections held open, idle, by [`idle_heap`].
const IDLE: usize = 200;

/// A keep-alive connection waiting for its next request holds little: once it has waited
/// `h1::PARK_AFTER` (250 ms), the future that serves its requests (about 5 KiB) is freed, and
/// what is left is its task, a small wait for its socket, and what it shares: 1,683 to 1,780
/// bytes a connection over runs (rustc 1.95, release); 6,194 before connections were parked
/// (then the benchmark's 5.36 MiB of RSS per 1,000 idle connections).
#[test]
fn an_idle_connection_holds_little_of_the_heap() {
    let each = idle_heap(None);
    assert!(
        each <= 2_048,
        "an idle connection holds {each} bytes of the proxy thread's heap, over 2,048: is the \
         connection's future still held while it waits (`h1::End::Park`)?"
    );
}

/// The same over TLS: parked, a TLS connection keeps its session (1,224 bytes, boxed; its keys;
/// and its read buffer, where rustls keeps 4 KiB for the next record) and frees the futures of
/// its handshake and its requests: 9,273 to 9,395 bytes a connection over runs (rustc 1.95,
/// release); 21,488 before TLS connections were parked.
#[test]
fn an_idle_tls_connection_holds_little_of_the_heap() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let each = idle_heap(Some(test_tls(&dir, b"http/1.1")));
    assert!(
        each <= 12_288,
        "an idle TLS connection holds {each} bytes of the proxy thread's heap, over 12,288: is \
         the connection's future still held while it waits (`h1::End::Park`)?"
    );
}

/// A TLS listener on a certificate made in `dir`, and a client that trusts it and asks for
/// `alpn`.
fn test_tls(dir: &tempfile::TempDir, alpn: &[u8]) -> Tls {
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("a self-signed certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("writing the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing the key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("a usable root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Tls {
        listener: format!(
            "tls: {{ cert: {}, key: {} }}",
            cert_path.display(),
            key_path.display()
        ),
        client: std::sync::Arc::new(config),
    }
}

/// An idle HTTP/2 connection (h2c, prior knowledge) is hyper's: it does not park, and holds
/// hyper's connection state (its codec's buffers: 16 KiB to write, 8 KiB to read, 4 KiB for
/// header strings; header tables, stream store, and the boxed future that serves it) as long
/// as it is open: 37,384 bytes a connection (rustc 1.95, release), against 1.7 KiB for a parked
/// HTTP/1.1 one. 50,393 before the lean server's future was dropped before hyper's began, and
/// its read buffer went back to the thread. Bounded here so that it shows when it grows.
#[test]
fn an_idle_h2_connection_holds_what_hyper_keeps() {
    let each = idle_h2_heap(None);
    assert!(
        each <= 44_000,
        "an idle HTTP/2 connection holds {each} bytes of the proxy thread's heap, over 44,000"
    );
}

/// The same over TLS (ALPN `h2`): hyper's state and the TLS session's, 44,871 bytes a
/// connection (59,764 while the handshake's future stayed under hyper's).
#[test]
fn an_idle_h2_tls_connection_holds_what_hyper_and_rustls_keep() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let each = idle_h2_heap(Some(test_tls(&dir, b"h2")));
    assert!(
        each <= 52_000,
        "an idle HTTP/2 TLS connection holds {each} bytes of the proxy thread's heap, over 52,000"
    );
}

/// A body kept for replay (`retry.buffer`) costs about its size while it is read, not twice
/// that: with its `content-length` known, each frame hyper hands over (a view of its read
/// buffer) is copied into one buffer of the body's size and let go. An 8 MiB upload through
/// hyper's HTTP/1.1 server, on this thread: the heap's peak was 24.3 MiB when the frames were
/// all kept and copied at the end, 8.4 MiB now.
#[test]
fn a_body_kept_for_replay_costs_about_its_size() {
    use rampart::proxy::body::{Buffered, ClientBody, ClientIn, FaultCell};
    use tokio::io::AsyncWriteExt;
    const LEN: usize = 8 << 20;
    assert_counting();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let kept = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = kept.clone();
    let info = allocation_counter::measure(|| {
        rt.block_on(async move {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let seen = seen.clone();
                async move {
                    let fault = std::sync::Arc::new(FaultCell::default());
                    let body = ClientIn::Hyper(req.into_body());
                    let body = ClientBody::new(body, fault);
                    if let Ok(Buffered::Replayable(all, _)) = body.buffer(16 << 20).await {
                        seen.store(all.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                }
            });
            let served = tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(server), service),
            );
            let head = format!(
                "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {LEN}\r\nconnection: close\r\n\r\n"
            );
            client.write_all(head.as_bytes()).await.expect("head");
            static PIECE: [u8; 64 * 1024] = [7; 64 * 1024];
            for _ in 0..LEN / PIECE.len() {
                client.write_all(&PIECE).await.expect("body");
            }
            let mut answer = Vec::with_capacity(1024);
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer)
                .await
                .expect("answer");
            drop(served.await);
        })
    });
    assert_eq!(
        kept.load(std::sync::atomic::Ordering::Relaxed),
        LEN,
        "the body was kept whole"
    );
    let peak = info.bytes_max;
    println!("buffering {LEN} bytes: heap peak {peak} bytes");
    assert!(
        peak <= (LEN + LEN / 8) as u64,
        "buffering a body of {LEN} bytes took the heap to {peak} bytes"
    );
}

/// [`idle_heap_with`] for HTTP/2 connections (h2c with prior knowledge, or over TLS with `tls`).
fn idle_h2_heap(tls: Option<Tls>) -> i64 {
    let line = tls.as_ref().map(|t| t.listener.as_str().to_owned());
    // Over TLS, enough connections first to fill the session cache (see idle_heap_with).
    let warm = if tls.is_some() { 160 } else { 1 };
    idle_heap_with(line.as_deref(), warm, move |side| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the client's runtime");
        let mut conns = Vec::new();
        while let Ok(n) = side.rounds.recv() {
            let r = rt.block_on(h2_round(&side, tls.as_ref(), &mut conns, n));
            if side.done.send(r).is_err() {
                return;
            }
        }
    })
}

/// A round of [`an_idle_h2_connection_holds_what_hyper_keeps`]'s client: `n` connections of
/// their own for a `GET /` each (`n` > 0), or a `GET /` on each of the `IDLE` kept in `conns`.
async fn h2_round(
    side: &ClientSide,
    tls: Option<&Tls>,
    conns: &mut Vec<hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>>,
    n: usize,
) -> Result<(), String> {
    let open = || async {
        let tcp = tokio::net::TcpStream::connect(side.listen)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let exec = hyper_util::rt::TokioExecutor::new();
        let Some(tls) = tls else {
            let (send, conn) =
                hyper::client::conn::http2::handshake(exec, hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            return Ok::<_, String>(send);
        };
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls.client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("the listener did not choose h2".into());
        }
        let (send, conn) =
            hyper::client::conn::http2::handshake(exec, hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(send)
    };
    let get = |send: &mut hyper::client::conn::http2::SendRequest<_>| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let req = http::Request::get(format!("{scheme}://{}/", side.listen))
            .body(http_body_util::Empty::new())
            .expect("a request");
        let rsp = send.send_request(req);
        async move {
            let rsp = rsp.await.map_err(|e| format!("h2 request: {e}"))?;
            let by = rsp.headers().get(rampart::sample::ADDR_HEADER).cloned();
            if rsp.status() != 200
                || by.as_ref().and_then(|v| v.to_str().ok()) != Some(&side.upstream)
            {
                return Err(format!("not the upstream's 200: {rsp:?}"));
            }
            http_body_util::BodyExt::collect(rsp.into_body())
                .await
                .map_err(|e| format!("h2 body: {e}"))?;
            Ok(())
        }
    };
    for _ in 0..n {
        let mut send = open().await?;
        get(&mut send).await?;
    }
    if n > 0 {
        return Ok(());
    }
    if conns.is_empty() {
        for _ in 0..IDLE {
            conns.push(open().await?);
        }
    }
    for send in conns.iter_mut() {
        get(send).await?;
    }
    Ok(())
}

/// A TLS listener's `tls` line and a client config that trusts its certificate.
struct Tls {
    listener: String,
    client: std::sync::Arc<rustls::ClientConfig>,
}

/// A client stream: plain TCP or TLS over it.
trait Stream: Read + Write + Send {}
impl<S: Read + Write + Send> Stream for S {}

/// Opens a client connection to `listen`, over TLS with `tls`.
fn connect(listen: SocketAddr, tls: Option<&Tls>) -> Result<Box<dyn Stream>, String> {
    let s = TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let Some(tls) = tls else {
        return Ok(Box::new(s));
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(tls.client.clone(), name)
        .map_err(|e| format!("a TLS client: {e}"))?;
    Ok(Box::new(rustls::StreamOwned::new(conn, s)))
}

/// [`idle_heap_with`] for HTTP/1.1 keep-alive connections, over TLS with `tls`.
fn idle_heap(tls: Option<Tls>) -> i64 {
    let line = tls.as_ref().map(|t| t.listener.as_str().to_owned());
    // Over TLS, enough connections first to fill the session cache (below).
    let warm = if tls.is_some() { 160 } else { 1 };
    idle_heap_with(line.as_deref(), warm, move |side| {
        let (listen, upstream) = (side.listen, side.upstream);
        let mut conns = Vec::new();
        // `n` connections of their own first (`n` > 0: not counted, nor kept), or one more
        // request on each of the `IDLE` kept ones (opened on the first round).
        let round = |conns: &mut Vec<BufReader<Box<dyn Stream>>>, n| -> Result<(), String> {
            for _ in 0..n {
                let mut c = BufReader::new(connect(listen, tls.as_ref())?);
                get(&mut c, &upstream, None, 0)?;
            }
            if n > 0 {
                return Ok(());
            }
            if conns.is_empty() {
                for _ in 0..IDLE {
                    conns.push(BufReader::new(connect(listen, tls.as_ref())?));
                }
            }
            conns
                .iter_mut()
                .try_for_each(|c| get(c, &upstream, None, 0))
        };
        while let Ok(n) = side.rounds.recv() {
            if side.done.send(round(&mut conns, n)).is_err() {
                return;
            }
        }
    })
}

/// What the clients of [`idle_heap_with`] get on their thread.
struct ClientSide {
    /// rampart's inbound listener.
    listen: SocketAddr,
    /// The upstream's address, which names itself in each answer.
    upstream: String,
    /// The rounds asked for.
    rounds: mpsc::Receiver<usize>,
    /// Where each round is reported done.
    done: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
}

/// The heap the proxy's thread still holds for each of `IDLE` connections (on a listener with
/// the `tls` line, if given) after 700 ms, each past one request. `clients` runs on a thread
/// of its own: asked for a round of `n` > 0, it opens `n` connections for a request each and
/// closes them (the warm-up, `warm` of them, not counted); for a round of 0, it sends a request
/// on each of its `IDLE` connections, opened on the first such round. The second such round
/// finds each connection taken up again after its pause.
fn idle_heap_with(
    tls: Option<&str>,
    warm: usize,
    clients: impl FnOnce(ClientSide) + Send + 'static,
) -> i64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (rt, proxy, listen, upstream) = start(PLAIN, false, tls, &dir);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let (go, rx) = mpsc::channel::<usize>();
    let side = ClientSide {
        listen,
        upstream,
        rounds: rx,
        done: done_tx,
    };
    std::thread::spawn(move || clients(side));
    let mut round = |n: usize| {
        go.send(n).expect("the client thread ended early");
        rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => panic!("the client failed: {e}"),
                Ok(None) => panic!("the client is gone"),
                Err(_) => panic!("the client did not finish within 60 s"),
            }
        });
    };
    assert_counting();
    // Connections first, closed again, so that what the first of any connections sets up (the
    // upstream connection, the thread's spare buffers, label handles) is not counted; over TLS,
    // enough of them to fill the session cache, which keeps up to 256 sessions for resumption
    // (two tickets a connection), whoever holds them.
    round(warm);
    let info = allocation_counter::measure(|| {
        round(0);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(700)).await });
    });
    // Each parked connection serves its next request.
    round(0);
    rt.block_on(proxy.shutdown());
    let each = info.bytes_current / IDLE as i64;
    println!(
        "{IDLE} idle connections: {} bytes held on the proxy's thread, {each} a connection",
        info.bytes_current
    );
    each
}

/// What [`count_allocations`] saw.
struct Run {
    /// The proxy thread's allocations while the counted requests were served.
    count: AllocationInfo,
    /// Requests counted.
    requests: u64,
    /// rampart's metrics (the Prometheus text) after them.
    metrics: String,
    /// Lines in the access log file after rampart stopped (0 without one).
    log_lines: u64,
}

/// Fails if the proxy's thread made more than one allocation per four requests in `run`.
/// Nothing is allocated per request. What is allocated at all is request ids' blocks: one
/// allocation for 32 ids, and a second for its shared count when the first id is cut
/// (`forward::new_request_id`; a block still held by a request in flight is left to it and a
/// new one taken), at most 2 in 32, about 0.055 a request with four connections. (With 128
/// ids a block the count fell to 25 for 2,000 requests, every one of them a block or its
/// count by their bytes.) One allocation added to the request path would count one per
/// request, four times this bound.
fn assert_at_most(run: &Run, what: &str) {
    let (count, requests) = (run.count, run.requests);
    let most = requests / 4;
    println!(
        "{what}: {} allocations ({} bytes) on the proxy's thread for {requests} requests",
        count.count_total, count.bytes_total
    );
    assert!(
        count.count_total <= most,
        "the proxy's thread allocated {} times ({} bytes) while serving {requests} {what} \
         keep-alive requests: more than {most}, so something on the request path allocates per \
         request. This test's binary under `valgrind --tool=callgrind \
         '--toggle-collect=allocation_counter::measure*'` names the callers of __rust_alloc",
        count.count_total,
        count.bytes_total,
    );
}

/// Starts rampart in-process on this thread with `template` (one of the load benchmark's
/// policy files, its `@...@` fields filled in as `benches/load/lib.sh` does, one left unfilled
/// failing to load; with `log`, every answer logged to a file, as its `log_to`) in front of the
/// sample service, sends `WARMUP` then `COUNTED` keep-alive `GET /` on each of `CLIENTS`
/// connections (each request naming the next of `tenants` in `x-tenant-id`, if any; a `POST /`
/// of `upload` bytes instead, for `Load::KeepAlive(upload)` not 0; a new connection for each
/// request, for `Load::Fresh`), and stops it.
fn count_allocations(
    template: &str,
    log: bool,
    tenants: &'static [&'static str],
    load: Load,
) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (rt, proxy, listen, upstream) = start(template, log, None, &dir);

    // Each client waits for a number of requests to send, sends them, and reports back; the
    // proxy's tasks run only while this thread is inside `block_on`.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut go = Vec::new();
    for _ in 0..CLIENTS {
        let (tx, rx) = mpsc::channel::<usize>();
        go.push(tx);
        let done = done_tx.clone();
        let from = upstream.clone();
        std::thread::spawn(move || client(listen, &from, tenants, load, &rx, &done));
    }
    let mut phase = |n: usize| {
        for tx in &go {
            tx.send(n).expect("a client thread ended early");
        }
        rt.block_on(async {
            for _ in 0..CLIENTS {
                let r = tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await;
                match r {
                    Ok(Some(Ok(()))) => {}
                    Ok(Some(Err(e))) => panic!("a client failed: {e}"),
                    Ok(None) => panic!("the clients are gone"),
                    Err(_) => panic!("the clients did not finish within 60 s"),
                }
            }
        });
    };

    assert_counting();
    phase(WARMUP);
    let info = allocation_counter::measure(|| phase(COUNTED));
    drop(go);
    let metrics = proxy.shared().metrics.render();
    rt.block_on(proxy.shutdown());
    let log_lines = std::fs::read(dir.path().join("access.jsonl"))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0);
    Run {
        count: info,
        requests: (CLIENTS * COUNTED) as u64,
        metrics,
        log_lines,
    }
}

/// The counter counts: a measurement of nothing must not pass vacuously.
fn assert_counting() {
    let one = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(
        one.count_total, 1,
        "allocation-counter is not the global allocator"
    );
}

/// Starts the sample service on a thread of its own, and rampart in-process on this thread
/// with `template` (its `@...@` fields filled in as `benches/load/lib.sh` does, one left
/// unfilled failing to load; with `log`, an access log in `dir`; with `tls`, that `tls` line on
/// the inbound listener) in front of it: the runtime to run rampart's tasks on, rampart, its
/// inbound listener's address, and the upstream's.
fn start(
    template: &str,
    log: bool,
    tls: Option<&str>,
    dir: &tempfile::TempDir,
) -> (
    tokio::runtime::Runtime,
    rampart::Rampart,
    SocketAddr,
    String,
) {
    let upstream = start_upstream().to_string();
    let mut yaml = template
        .replace("@UPSTREAM@", &upstream)
        .replace("@LISTEN@", "127.0.0.1:0")
        .replace("@ADMIN@", "127.0.0.1:0")
        .replace("@TLS_RAMPART@", tls.unwrap_or("# plaintext"));
    if log {
        let to = dir.path().join("access.jsonl");
        let line = format!("    access_log: {{ to: {} }}\n", to.display());
        let at = yaml
            .find("    direction: inbound\n")
            .expect("the template has an inbound listener");
        yaml.insert_str(at + "    direction: inbound\n".len(), &line);
    }
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, yaml).expect("writing the policy file");
    // A field left unfilled is refused here: YAML allows no `@` at the start of a value.
    let config = rampart::load_config(&path).expect("the policy file must load");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let proxy = rt
        .block_on(rampart::Rampart::start(config))
        .expect("rampart must start");
    let listen = rt
        .block_on(proxy.listener_addr("inbound"))
        .expect("the inbound listener's address");
    (rt, proxy, listen, upstream)
}

/// The sample service on a thread and runtime of its own; its address.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        rt.block_on(async move {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let sample = rampart::sample::Sample::start(any)
                .await
                .expect("the sample service must start");
            tx.send(sample.addr()).expect("the test is waiting");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the upstream's address")
}

/// One keep-alive connection (or, for `Load::Fresh`, one for each request): for each number
/// received, that many `GET /` (naming `tenants` in turn, if any; or `POST /` of the load's
/// bytes), each answered `200` by the upstream at `from` with a body read whole; then a report
/// on `done`.
fn client(
    listen: SocketAddr,
    from: &str,
    tenants: &[&str],
    load: Load,
    go: &mpsc::Receiver<usize>,
    done: &tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while let Ok(n) = go.recv() {
        let r = (|| -> Result<(), String> {
            let upload = match load {
                Load::KeepAlive(upload) => Some(upload),
                Load::Refused => None,
                Load::Fresh => return (0..n).try_for_each(|_| fresh_get(listen, from)),
            };
            if conn.is_none() {
                let s = TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())?;
                conn = Some(BufReader::new(s));
            }
            let c = conn.as_mut().ok_or("no connection")?;
            let Some(upload) = upload else {
                return (0..n).try_for_each(|_| refused(c));
            };
            for i in 0..n {
                get(
                    c,
                    from,
                    tenants.get(i % tenants.len().max(1)).copied(),
                    upload,
                )?;
            }
            Ok(())
        })();
        if done.send(r).is_err() {
            return;
        }
    }
}

/// One `GET /` on a new connection, with `connection: close`: answered 200 by the upstream at
/// `from`, then closed by the proxy.
fn fresh_get(listen: SocketAddr, from: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .map_err(|e| format!("read to the close: {e}"))?;
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    let by = format!(
        "{}: {from}\r\n",
        rampart::sample::ADDR_HEADER.to_ascii_lowercase()
    );
    if !text.starts_with("http/1.1 200 ") || !text.contains(&by) {
        return Err(format!("not the upstream's 200: {text:?}"));
    }
    Ok(())
}

/// One `GET /` on `c` that no route matches: rampart's own 404 `no_route`, with a
/// `content-length`, leaving the connection open.
fn refused<S: Read + Write>(c: &mut BufReader<S>) -> Result<(), String> {
    c.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let reason = answer(c, "404", "x-rampart-reason")?;
    if reason.as_deref() != Some("no_route") {
        return Err(format!("reason {reason:?}, not no_route"));
    }
    Ok(())
}

/// Reads an answer on `c` whose status must be `status`, with a `content-length` and no
/// `connection: close`, its body read whole; gives the value of its header `named`.
fn answer<S: Read>(
    c: &mut BufReader<S>,
    status: &str,
    named: &str,
) -> Result<Option<String>, String> {
    let mut line = String::new();
    c.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if !line.starts_with(&format!("HTTP/1.1 {status} ")) {
        return Err(format!("status line {line:?}, not a {status}"));
    }
    let (mut length, mut value_of) = (None, None);
    loop {
        line.clear();
        c.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| format!("header line {l:?}"))?;
        if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
            return Err("the proxy closed a keep-alive connection".into());
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        }
        if name.eq_ignore_ascii_case(named) {
            value_of = Some(value.trim().to_string());
        }
    }
    let length = length.ok_or("an answer without content-length")?;
    let mut body = vec![0; length];
    c.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(value_of)
}

/// One `GET /` on `c` (or a `POST /` of `upload` bytes, head and body in one write): the
/// answer must be the upstream's (the sample service names itself in `x-sample-addr`, so an
/// answer rampart made itself fails), a 200 with a `content-length`, and leave the connection
/// open.
fn get<S: Read + Write>(
    c: &mut BufReader<S>,
    from: &str,
    tenant: Option<&str>,
    upload: usize,
) -> Result<(), String> {
    let mut req = match (tenant, upload) {
        (Some(t), 0) => format!("GET / HTTP/1.1\r\nhost: app\r\nx-tenant-id: {t}\r\n\r\n"),
        (None, 0) => "GET / HTTP/1.1\r\nhost: app\r\n\r\n".to_string(),
        (_, n) => format!("POST / HTTP/1.1\r\nhost: app\r\ncontent-length: {n}\r\n\r\n"),
    }
    .into_bytes();
    req.resize(req.len() + upload, b'u');
    c.get_mut()
        .write_all(&req)
        .map_err(|e| format!("write: {e}"))?;
    let served_by = answer(c, "200", rampart::sample::ADDR_HEADER)?;
    if served_by.as_deref() != Some(from) {
        return Err(format!(
            "an answer from {served_by:?}, not the upstream at {from}"
        ));
    }
    Ok(())
}
