//! The plain proxy's request path allocates nothing per request (issue 22: the hot path makes
//! no allocation it can avoid), checked so that a change which adds one fails here rather than
//! showing up, months later, as a few per cent in a benchmark.
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

/// Clients, each on a keep-alive connection of its own (so the pool holds several upstream
/// connections, and the listener serves several connections in one turn).
const CLIENTS: usize = 4;
/// Requests per client before counting: connections, buffers and label handles are made here.
const WARMUP: usize = 200;
/// Requests per client while counting.
const COUNTED: usize = 500;

#[test]
fn a_plain_keep_alive_request_allocates_nothing_on_the_proxys_thread() {
    let upstream = start_upstream();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rampart.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\n\
             admin: {{ listen: 127.0.0.1:0 }}\n\
             upstreams:\n  app: {{ endpoints: [{upstream}] }}\n\
             listeners:\n  - name: inbound\n    direction: inbound\n    listen: 127.0.0.1:0\n    \
             routes:\n      - upstream: app\n"
        ),
    )
    .expect("writing the policy file");
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

    // Each client waits for a number of requests to send, sends them, and reports back; the
    // proxy's tasks run only while this thread is inside `block_on`.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut go = Vec::new();
    for _ in 0..CLIENTS {
        let (tx, rx) = mpsc::channel::<usize>();
        go.push(tx);
        let done = done_tx.clone();
        let from = upstream.to_string();
        std::thread::spawn(move || client(listen, &from, &rx, &done));
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

    // The counter counts: a measurement of nothing must not pass vacuously.
    let one = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(
        one.count_total, 1,
        "allocation-counter is not the global allocator"
    );

    phase(WARMUP);
    let info = allocation_counter::measure(|| phase(COUNTED));
    let requests = (CLIENTS * COUNTED) as u64;

    // Nothing is allocated per request; a few allocations are spread over many: a block of
    // request ids is one allocation for 32 ids, and a second one for its shared count when the
    // first id is cut (`forward::new_request_id`; a block still held by a request in flight is
    // left to it and a new one taken), about 0.06 a request with four connections; a read
    // buffer whose bytes an answer still holds is replaced rather than reused. One allocation
    // added to the request path would count `requests` more here, four times this bound.
    let most = requests / 4;
    println!(
        "{} allocations ({} bytes) on the proxy's thread for {requests} requests",
        info.count_total, info.bytes_total
    );
    assert!(
        info.count_total <= most,
        "the proxy's thread allocated {} times ({} bytes) while serving {requests} plain \
         keep-alive requests: more than {most}, so something on the request path allocates per \
         request. This test's binary under `valgrind --tool=callgrind \
         '--toggle-collect=allocation_counter::measure*'` names the callers of __rust_alloc",
        info.count_total,
        info.bytes_total,
    );
    drop(go);
    rt.block_on(proxy.shutdown());
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

/// One keep-alive connection: for each number received, that many `GET /`, each answered
/// `200` by the upstream at `from` with a body read whole; then a report on `done`.
fn client(
    listen: SocketAddr,
    from: &str,
    go: &mpsc::Receiver<usize>,
    done: &tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while let Ok(n) = go.recv() {
        let r = (|| -> Result<(), String> {
            if conn.is_none() {
                let s = TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())?;
                conn = Some(BufReader::new(s));
            }
            let c = conn.as_mut().ok_or("no connection")?;
            for _ in 0..n {
                get(c, from)?;
            }
            Ok(())
        })();
        if done.send(r).is_err() {
            return;
        }
    }
}

/// One `GET /` on `c`: the answer must be the upstream's (the sample service names itself in
/// `x-sample-addr`, so an answer rampart made itself fails), a 200 with a `content-length`,
/// and leave the connection open.
fn get(c: &mut BufReader<TcpStream>, from: &str) -> Result<(), String> {
    c.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    c.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if !line.starts_with("HTTP/1.1 200 ") {
        return Err(format!("status line {line:?}, not a 200"));
    }
    let (mut length, mut served_by) = (None, None);
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
        if name.eq_ignore_ascii_case(rampart::sample::ADDR_HEADER) {
            served_by = Some(value.trim().to_string());
        }
    }
    if served_by.as_deref() != Some(from) {
        return Err(format!(
            "an answer from {served_by:?}, not the upstream at {from}"
        ));
    }
    let length = length.ok_or("an answer without content-length")?;
    let mut body = vec![0; length];
    c.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(())
}
