//! Parked connections (`h1::End::Park`, issue 22's memory per idle connection): a plain
//! keep-alive connection that waits 250 ms for a head, with nothing of one read, drops the
//! future that serves its requests and waits for its socket with a small one. Parked, it must
//! still do all a waiting connection does: serve its next requests in order, keep a head begun
//! before the pause, give up its `max_connections` slot when the client goes, and close at
//! once when the listener drains. (Its head and idle timeouts: `edges/idle.rs`, whose
//! timeouts of 1 s park every connection it times.)

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant};

use crate::support::conn::{reset, Conn};
use crate::support::{one_route, sample, Proxy};

/// Longer than the wait before a connection is parked (250 ms).
const PAUSE: Duration = Duration::from_millis(400);

async fn proxy_with(rt: &str, app: &rampart::sample::Sample) -> Proxy {
    Proxy::builder(&one_route(rt))
        .var("APP", app.addr())
        .spawn()
        .await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.local\r\n\r\n")
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_in_order() {
    let app = sample().await;
    let proxy = proxy_with("", &app).await;
    let mut c = Conn::open(proxy.listener("inbound")).await;
    for i in 0..3 {
        c.send(get(&format!("/headers?i={i}")).as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        assert!(a.text().contains(&format!("i={i}")), "{}", a.text());
        sleep(PAUSE).await;
    }
    // Two requests in one write, after the pause: both answered, in order.
    two_in_one_write(&mut c).await;
    assert_eq!(app.hits_for("/headers"), 4);
}

/// A head begun before the pause keeps its bytes: a connection with part of a head in its
/// buffer is never parked (parking drops the buffer's place in the connection's future).
#[tokio::test]
async fn a_head_begun_before_a_pause_is_served_whole() {
    let app = sample().await;
    let proxy = proxy_with("", &app).await;
    let mut c = Conn::open(proxy.listener("inbound")).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    c.send(b"GET /headers?part=1 HT").await;
    sleep(PAUSE).await;
    c.send(b"TP/1.1\r\nHost: app.local\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.text().contains("part=1"), "{}", a.text());
}

/// A client that goes while its connection is parked frees its slot at once: with
/// `max_connections: 1`, the next client is served, not held until the idle timeout (60 s).
#[tokio::test]
async fn a_client_that_goes_while_parked_frees_its_slot() {
    let app = sample().await;
    let proxy = proxy_with("runtime: { max_connections: 1 }", &app).await;
    let addr = proxy.listener("inbound");
    let first = parked(addr).await;
    drop(first);
    let took = next_is_served(
        next_get(addr),
        "the next client is served once the parked one has gone",
    )
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// The same for a client that resets its parked connection (an error on the socket, not an
/// end of stream).
#[tokio::test]
async fn a_client_that_resets_while_parked_frees_its_slot() {
    let app = sample().await;
    let proxy = proxy_with("runtime: { max_connections: 1 }", &app).await;
    let addr = proxy.listener("inbound");
    let first = parked(addr).await;
    reset(first.io);
    next_is_served(
        next_get(addr),
        "the next client is served once the parked one was reset",
    )
    .await;
}

/// Two requests in one write, `GET /headers?n=a` and `GET /status/404`: both answered, in
/// order.
pub async fn two_in_one_write<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Conn<S>) {
    c.send(format!("{}{}", get("/headers?n=a"), get("/status/404")).as_bytes())
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.text().contains("n=a"), "{}", a.text());
    assert_eq!(c.answer(false).await.status, 404);
}

/// A connection to `addr` past one request (`GET /ok`, answered 200), then idle for [`PAUSE`]:
/// parked.
async fn parked(addr: std::net::SocketAddr) -> Conn {
    let mut c = Conn::open(addr).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    sleep(PAUSE).await;
    c
}

/// A `GET /ok` on a new connection to `addr`: its status, and the answer for a failure's message.
async fn next_get(addr: std::net::SocketAddr) -> (u16, String) {
    let mut next = Conn::open(addr).await;
    next.send(get("/ok").as_bytes()).await;
    let a = next.answer(false).await;
    (a.status, format!("{a:?}"))
}

/// Waits up to 3 s for `next` (the next client: it connects, asks and reads its answer), whose
/// status must be 200 (`what` says what the wait is for); how long it took.
pub async fn next_is_served(next: impl Future<Output = (u16, String)>, what: &str) -> Duration {
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(Duration::from_secs(3), next)
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    assert_eq!(status, 200, "{answer}");
    started.elapsed()
}

/// Many connections pausing for about the park point (200 to 320 ms, so some park and some
/// are about to when their next request comes), some sending a head in two parts across the
/// pause: every request is answered, in order, on its own connection.
#[tokio::test]
async fn connections_pausing_around_the_park_point_are_all_served() {
    let app = sample().await;
    let proxy = proxy_with("", &app).await;
    let addr = proxy.listener("inbound");
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(Conn::open(addr).await);
    }
    pause_around_the_park_point(conns).await;
    assert_eq!(app.hits_for("/headers"), (CONNS * ROUNDS) as u64);
}

/// Connections and requests of [`pause_around_the_park_point`].
pub const CONNS: usize = 12;
pub const ROUNDS: usize = 6;

/// Sends [`ROUNDS`] requests for `/headers?c=C&r=R` on each of `conns` at once, each after a
/// pause of 200 to 320 ms (spread over the connections and rounds), every third one's head in
/// two parts with a pause of the same kind between them; each answer must be 200 and echo its
/// own request.
pub async fn pause_around_the_park_point<S>(conns: Vec<Conn<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        tasks.spawn(async move {
            for r in 0..ROUNDS {
                // 200..=320 ms in steps of 10, a different sequence on each connection.
                let pause =
                    |k: usize| Duration::from_millis(200 + ((c * 7 + r * 5 + k) % 13) as u64 * 10);
                sleep(pause(0)).await;
                let req = get(&format!("/headers?c={c}&r={r}"));
                if (c + r) % 3 == 0 {
                    let (first, rest) = req.as_bytes().split_at(10);
                    conn.send(first).await;
                    sleep(pause(3)).await;
                    conn.send(rest).await;
                } else {
                    conn.send(req.as_bytes()).await;
                }
                let a = conn.answer(false).await;
                assert_eq!(a.status, 200, "connection {c}, request {r}: {a:?}");
                let echo = format!("c={c}&r={r}");
                assert!(
                    a.text().contains(&echo),
                    "connection {c}, request {r}: {}",
                    a.text()
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a client task");
    }
}

/// A drain closes a parked connection at once, and the process exits without waiting for
/// the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_a_parked_connection_at_once() {
    let app = sample().await;
    let mut proxy = proxy_with("runtime: { shutdown_grace: 10s }", &app).await;
    let mut c = parked(proxy.listener("inbound")).await;
    drain_closes_at_once(&mut proxy, &mut c).await;
}

/// Signals `proxy` (whose `shutdown_grace` is 10 s) to drain: `c`, parked, must be closed at
/// once, and the process exit 0 within 3 s, without waiting for the grace.
pub async fn drain_closes_at_once<S: AsyncRead + AsyncWrite + Unpin>(
    proxy: &mut Proxy,
    c: &mut Conn<S>,
) {
    let signalled = Instant::now();
    proxy.signal("TERM");
    assert!(
        c.closes().await,
        "the parked connection is closed by the drain"
    );
    let status = proxy.wait_exit(Duration::from_secs(12)).await;
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the drain waited for the parked connection: {:?}",
        signalled.elapsed()
    );
}
