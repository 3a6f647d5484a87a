//! Hostile and clumsy clients: oversized heads, stalled heads, garbage, and more connections
//! than allowed. None of them may stop the proxy from serving the next request.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{http, one_route, raw, sample, Proxy};

async fn proxy(app: SocketAddr, max_connections: u32) -> Proxy {
    Proxy::builder(&one_route("runtime:\n  header_read_timeout: 500ms\n  max_header_bytes: 32KiB\n  max_connections: $MAXCONN"))
        .var("APP", app)
        .var("MAXCONN", max_connections)
        .spawn()
        .await
}

#[tokio::test]
async fn oversized_head_gets_431_and_the_next_request_is_served() {
    let app = sample().await;
    let proxy = proxy(app.addr(), 100).await;
    let addr = proxy.listener("inbound");

    let big = "a".repeat(40 * 1024);
    let req = format!("GET /ok HTTP/1.1\r\nHost: app.local\r\nX-Big: {big}\r\n\r\n");
    let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(
        rsp.status(),
        Some(431),
        "{:?}",
        &rsp.text()[..rsp.text().len().min(200)]
    );
    assert_eq!(
        app.hits(),
        0,
        "an oversized head must not reach the upstream"
    );

    let rsp = http::get(addr, "/ok", &[("x-small", &"b".repeat(1024))]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(app.hits_for("/ok"), 1);
}

#[tokio::test]
async fn stalled_head_is_disconnected_after_header_read_timeout() {
    let app = sample().await;
    let proxy = proxy(app.addr(), 100).await;
    let addr = proxy.listener("inbound");

    let half = b"GET /ok HTTP/1.1\r\nHost: app.local\r\nX-Slow";
    let rsp = raw::exchange(addr, half, Duration::from_secs(5)).await;
    assert!(rsp.closed, "a stalled client must be disconnected");
    assert!(
        rsp.elapsed >= Duration::from_millis(400),
        "not before the timeout: {:?}",
        rsp.elapsed
    );
    assert!(
        rsp.elapsed < Duration::from_millis(2500),
        "soon after the timeout: {:?}",
        rsp.elapsed
    );
    // Nothing, or a 408, before the close; never a forwarded request.
    assert!(matches!(rsp.status(), None | Some(408)), "{}", rsp.text());
    assert_eq!(app.hits(), 0);
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
}

#[tokio::test]
async fn garbage_gets_400_or_a_close_and_serving_goes_on() {
    let app = sample().await;
    let proxy = proxy(app.addr(), 100).await;
    let addr = proxy.listener("inbound");

    let garbage: [&[u8]; 4] = [
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"NOT-A-METHOD\x7f /\r\n\r\n",
    ];
    for bytes in garbage {
        let rsp = raw::exchange(addr, bytes, Duration::from_secs(5)).await;
        assert!(rsp.closed, "bad input must end the connection: {bytes:?}");
        assert!(
            matches!(rsp.status(), None | Some(400)),
            "bad input must get 400 or nothing: {bytes:?} -> {}",
            rsp.text()
        );
        assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    }
    assert_eq!(app.hits(), 4, "only the good requests reach the upstream");
}

/// With two workers, each on its own socket, the cap is shared: as many connections as it
/// allows are served at once wherever the kernel queued them (a worker waiting for
/// connections of its own must not hold a permit meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_are_all_served_at_once_across_workers() {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route("runtime:\n  max_connections: 4"))
        .var("APP", app.addr())
        .env("RAMPART_WORKERS", 2)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    for round in 0..3 {
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..4)
            .map(|_| tokio::spawn(async move { http::get(addr, "/slow?ms=800", &[]).await.status }))
            .collect();
        for call in calls {
            assert_eq!(call.await.expect("client task must not panic"), 200);
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "round {round}: four requests under a cap of four took {took:?}: some waited for a permit another worker held"
        );
    }
    assert_eq!(app.hits_for("/slow"), 12);
}

/// Two workers, so one of the connections is likely handed from one worker to the other
/// (`src/proxy/balance.rs`) while the other waits for a permit for a connection of its own: it
/// must serve the handed one meanwhile, since that one holds a permit already.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_makes_the_extra_one_wait_not_fail() {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route(
        "runtime:\n  header_read_timeout: 500ms\n  max_connections: 2",
    ))
    .var("APP", app.addr())
    .env("RAMPART_WORKERS", 2)
    .spawn()
    .await;
    let addr = proxy.listener("inbound");

    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let rsp = http::get(addr, "/slow?ms=800", &[]).await;
                (rsp.status, started.elapsed())
            })
        })
        .collect();
    // Two connections are served; the third waits in the accept queue.
    assert_eventually!(
        app.hits_for("/slow") == 2,
        "two requests must be served at once"
    );
    assert_eq!(app.hits_for("/slow"), 2, "the third must not be served yet");

    let mut took = Vec::new();
    for call in calls {
        let (status, elapsed) = call.await.expect("client task must not panic");
        assert_eq!(
            status, 200,
            "the extra connection must wait, not be refused"
        );
        took.push(elapsed);
    }
    took.sort();
    assert_eq!(app.hits_for("/slow"), 3);
    assert!(took[1] < Duration::from_millis(1500), "{took:?}");
    assert!(
        took[2] >= Duration::from_millis(1500),
        "the third waited: {took:?}"
    );
}

/// Out of file descriptors, `accept` fails: each worker backs off (10 ms doubling to 1 s)
/// instead of spinning, serves what it holds and what other workers hand it, and serves new
/// connections once descriptors are free again. The limit is lowered on the running process
/// with `prlimit` (Debian package `util-linux`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_descriptors_accept_backs_off_and_serving_resumes() {
    use tokio::io::AsyncWriteExt;

    let app = sample().await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", app.addr())
        .env("RAMPART_WORKERS", 2)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    let open = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .expect("the proxy's descriptors must be listable")
        .count();
    let limit = format!("--nofile={}", open + 8);
    let set = std::process::Command::new("prlimit")
        .args(["--pid", &proxy.pid().to_string(), &limit])
        .status()
        .expect("prlimit (Debian package util-linux) must be installed");
    assert!(set.success(), "prlimit {limit} failed");

    // More connections than descriptors left: the kernel completes them all, rampart can
    // accept only some.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = tcp
            .write_all(b"GET /ok HTTP/1.1\r\nHost: app.local\r\n\r\n")
            .await;
        held.push(tcp);
    }
    assert_eventually!(
        proxy.log().contains("accept failed; backing off"),
        "a failing accept must be logged: {}",
        proxy.log()
    );
    // Closed by the client, the accepted ones end and give their descriptors back; the ones
    // still queued are accepted and end too; then new connections are served.
    drop(held);
    assert_eventually!(
        http::try_get(addr, "/ok", &[])
            .await
            .is_ok_and(|r| r.status == 200),
        "serving must resume once descriptors are free: {}",
        proxy.log()
    );
    let warned = proxy.log().matches("accept failed; backing off").count();
    // A spin would log thousands a second.
    assert!(
        warned < 200,
        "one warning per back-off step, not a spin: {warned} warnings"
    );
}
