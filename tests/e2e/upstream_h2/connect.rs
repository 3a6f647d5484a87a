//! Connecting to an HTTP/2 upstream: the requests that find no connection wait for one
//! connect together, and share its outcome.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{fronted, h2_frame, h2_ok};
use crate::support::http;

const TIMED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2, connect_timeout: 1s $EXTRA }
policies:
  short: { timeout: { request: 300ms } }
  long: { timeout: { request: 20s } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { match: { path_prefix: /short }, upstream: grpc, policy: short }
      - { upstream: grpc, policy: long }
"#;

/// A server on 127.0.0.1 that takes connections, reads what comes and never says a word (no
/// HTTP/2 `SETTINGS`), and how many connections it took.
async fn silent() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let taken = Arc::new(AtomicUsize::new(0));
    let counted = taken.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, taken, task)
}

/// Six requests at once to an upstream that never sends `SETTINGS` (`connect_timeout: 1s`):
/// they wait for the same connect, and all get its failure when it fails, at 1 s: a 502 that
/// says the upstream may not speak HTTP/2. Before, connects were made one at a time, each
/// request waiting for those before it: the sixth was answered after 6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_connect_that_fails_all_fail_with_it_at_once() {
    let (up, taken, task) = silent().await;
    let proxy = fronted(TIMED, up, "").await;
    let addr = proxy.listener("inbound");
    let t0 = tokio::time::Instant::now();
    let asked: Vec<_> = (0..6)
        .map(|i| tokio::spawn(async move { http::get(addr, &format!("/w{i}"), &[]).await }))
        .collect();
    for a in asked {
        let rsp = a.await.expect("task");
        rsp.assert_rampart(502, "upstream_unavailable");
        let msg = super::odd::message(&rsp);
        assert!(msg.contains("may not speak HTTP/2"), "{msg}");
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1900), "{took:?}");
    assert_eq!(
        taken.load(Ordering::SeqCst),
        1,
        "one connect for all of them"
    );
    task.abort();
}

/// An upstream that takes the connection and never sends `SETTINGS` within `connect_timeout`
/// is a connect that timed out: counted in `rampart_timeouts_total{kind="connect"}`, once for
/// each request that waited for it, as a TCP connect that times out is. Before, the 502 was
/// given and nothing counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_settings_within_connect_timeout_counts_as_a_connect_timeout() {
    let (up, _, task) = silent().await;
    let proxy = fronted(TIMED, up, "").await;
    let addr = proxy.listener("inbound");
    let asked: Vec<_> = (0..2)
        .map(|i| tokio::spawn(async move { http::get(addr, &format!("/c{i}"), &[]).await }))
        .collect();
    for a in asked {
        a.await
            .expect("task")
            .assert_rampart(502, "upstream_unavailable");
    }
    let text = crate::support::metrics(proxy.admin()).await;
    let labels = [("route", "grpc"), ("kind", "connect")];
    let counted = crate::support::metric_value(&text, "rampart_timeouts_total", &labels);
    assert_eq!(counted, Some(2.0), "{text}");
    task.abort();
}

/// A request whose deadline (300 ms) passes while the connection it would go on is still
/// being made (the upstream says nothing, `connect_timeout: 1s`) is a 504 that says it was
/// not sent. Before: "no answer from upstream". It is still a try (a `504` in
/// `rampart_upstream_requests_total`, none in `rampart_upstream_unsent_total`): the endpoint
/// took no connection in its time, which is the endpoint's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passes_while_its_connection_is_made_was_not_sent() {
    let (up, _, task) = silent().await;
    let proxy = fronted(TIMED, up, "").await;
    let rsp = http::get(proxy.listener("inbound"), "/short", &[]).await;
    rsp.assert_rampart(504, "timeout");
    let msg = super::odd::message(&rsp);
    assert!(msg.contains("still being made"), "{msg}");
    assert!(msg.contains("not sent"), "{msg}");
    let text = crate::support::metrics(proxy.admin()).await;
    let try_504 = [("upstream", "grpc"), ("code", "504")];
    assert_eq!(
        crate::support::metric_value(&text, "rampart_upstream_requests_total", &try_504),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        crate::support::metric_value(
            &text,
            "rampart_upstream_unsent_total",
            &[("cause", "connecting")]
        ),
        None,
        "{text}"
    );
    task.abort();
}

/// What [`scripted`]'s connections do.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// The first connection sends `SETTINGS` and `GOAWAY(0)` in one write; later ones answer.
    GoAwayWithSettings,
    /// Every connection answers each request's HEADERS with `GOAWAY(0)`.
    GoAwayEachRequest,
}

/// A raw HTTP/2 server on 127.0.0.1 that does what `script` says, and answers each request
/// it takes 200 `conn N` (its connection, counted from 1).
async fn scripted(script: Script) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(serve(tcp, n, script));
        }
    });
    (addr, task)
}

async fn serve(mut tcp: tokio::net::TcpStream, n: u32, script: Script) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    let goaway = h2_frame(0x7, 0, 0, &[0; 8]);
    let mut first = h2_frame(0x4, 0, 0, &[]);
    if matches!(script, Script::GoAwayWithSettings) && n == 1 {
        first.extend_from_slice(&goaway);
    }
    if tcp.write_all(&first).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let out = match (head[3], script) {
            (0x4, _) if head[4] & 0x1 == 0 => h2_frame(0x4, 0x1, 0, &[]),
            (0x1, Script::GoAwayEachRequest) => goaway.clone(),
            (0x1, _) => h2_ok(stream, &format!("conn {n}")),
            _ => continue,
        };
        if tcp.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// An upstream whose first connection sends `SETTINGS` and `GOAWAY(0)` in one write (it
/// speaks HTTP/2, and is going away at once): the request goes on a new connection, as any
/// waiter of a connection going away does. Before: a 502 saying the upstream may not speak
/// HTTP/2 ("closed the connection before sending SETTINGS").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_with_the_first_settings_sends_the_request_to_a_new_connection() {
    let (up, task) = scripted(Script::GoAwayWithSettings).await;
    let proxy = fronted(TIMED, up, "").await;
    let rsp = http::get(proxy.listener("inbound"), "/sg", &[]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.text(), "conn 2");
    task.abort();
}

/// An upstream that answers every request with `GOAWAY(0)` on every connection: the 502
/// (after the request went again, on new connections) names the GOAWAY and says the request
/// was not processed. Before: "refused the stream".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_by_goaway_on_every_connection_is_a_502_that_says_so() {
    let (up, task) = scripted(Script::GoAwayEachRequest).await;
    let proxy = fronted(TIMED, up, "").await;
    let rsp = http::get(proxy.listener("inbound"), "/ge", &[]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    let msg = super::odd::message(&rsp);
    assert!(msg.contains("GOAWAY"), "{msg}");
    assert!(msg.contains("not processed"), "{msg}");
    task.abort();
}
