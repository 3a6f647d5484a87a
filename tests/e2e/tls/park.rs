//! Parked TLS connections (`h1::End::Park` over TLS): a keep-alive TLS connection that waits
//! 250 ms for a head, with nothing of one read, drops the futures of its handshake and its
//! requests and waits for its socket, keeping only its session. Parked, it must do all a
//! waiting TLS connection does: serve its next requests, complete a record begun before the
//! pause, close at its idle timeout, give up its `max_connections` slot when the client goes
//! (close_notify or reset), close when bytes that are no TLS record come, and close at once
//! when the listener drains. (Plain connections: `park.rs`.)

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};
use tokio_rustls::client::TlsStream;

use super::{pki, tls_proxy};
use crate::park::{
    drain_closes_at_once, next_is_served, pause_around_the_park_point, two_in_one_write, CONNS,
    ROUNDS,
};
use crate::support::conn::{reset, Conn};
use crate::support::tls::{self, H1Conn, Pki};
use crate::support::{sample, Proxy};

/// Longer than the wait before a connection is parked (250 ms).
const PAUSE: Duration = Duration::from_millis(400);

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

/// The sample service behind a TLS listener with `runtime` settings, and a client config
/// (HTTP/1.1) that trusts it.
struct Setup {
    app: rampart::sample::Sample,
    proxy: Proxy,
    cfg: Arc<ClientConfig>,
    _pki: Pki,
}

impl Setup {
    async fn new(runtime: &str) -> Setup {
        let app = sample().await;
        let (ca, pki) = pki();
        let proxy = tls_proxy(app.addr(), &pki, false, runtime).await;
        let cfg = tls::client_config(&ca.pem, None, &[b"http/1.1"]);
        Setup {
            app,
            proxy,
            cfg,
            _pki: pki,
        }
    }

    /// A TLS connection past one request (`GET /ok`, answered 200), then idle for [`PAUSE`]:
    /// parked.
    async fn parked(&self) -> Conn<TlsStream<TcpStream>> {
        let stream = tls::connect(self.proxy.listener("inbound"), self.cfg.clone())
            .await
            .expect("a TLS connection");
        let mut c = Conn::over(stream);
        c.send(get("/ok").as_bytes()).await;
        assert_eq!(c.answer(false).await.status, 200);
        sleep(PAUSE).await;
        c
    }
}

#[tokio::test]
async fn a_parked_tls_connection_serves_its_next_requests() {
    let s = Setup::new("").await;
    let mut c = H1Conn::open(s.proxy.listener("inbound"), s.cfg.clone())
        .await
        .expect("a TLS connection");
    for i in 0..3 {
        let path = format!("/headers?i={i}");
        let rsp = c.get(&path, &[]).await.expect("an answer after a pause");
        assert_eq!(rsp.status, 200, "request {i}: {}", rsp.text());
        assert!(rsp.text().contains(&format!("i={i}")), "{}", rsp.text());
        sleep(PAUSE).await;
    }
    assert_eq!(s.app.hits_for("/headers"), 3);
}

/// A TLS record of which the proxy has read a part when the connection parks is kept in the
/// session, completed when the rest comes, and its request served. Then two requests in one
/// record after a pause: both answered, in order.
#[tokio::test]
async fn a_record_begun_before_a_pause_is_served_whole() {
    let s = Setup::new("").await;
    let mut c = s.parked().await;
    // The record of the next request, sealed by the client's session, sent in two parts.
    let (tcp, session) = c.io.get_mut();
    session
        .writer()
        .write_all(get("/headers?split=1").as_bytes())
        .expect("plaintext taken");
    let mut record = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut record).expect("the record");
    }
    let half = record.len() / 2;
    tcp.write_all(&record[..half])
        .await
        .expect("the first part");
    sleep(PAUSE).await;
    tcp.write_all(&record[half..]).await.expect("the rest");
    let a = c.answer(false).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.text().contains("split=1"), "{}", a.text());
    sleep(PAUSE).await;
    two_in_one_write(&mut c).await;
    assert_eq!(s.app.hits_for("/headers"), 2);
}

/// The idle timeout still closes a parked TLS connection, at its time (counted from the end of
/// the answer before, so from [`PAUSE`] before the connection comes back).
#[tokio::test]
async fn a_parked_tls_connection_closes_at_its_idle_timeout() {
    let s = Setup::new("runtime: { header_read_timeout: 20s, idle_timeout: 1s }").await;
    let mut c = s.parked().await;
    let paused = Instant::now();
    assert!(c.closes().await, "the idle connection is closed");
    let after = paused.elapsed() + PAUSE;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "closed {after:?} after its answer, not at the idle timeout (1s)"
    );
}

/// A client that goes while its connection is parked frees its slot at once, whether it closes
/// its TLS session (close_notify, then the end of its stream) or resets the socket under it:
/// with `max_connections: 1`, the next client is served, not held until the idle timeout (60 s).
#[tokio::test]
async fn a_tls_client_that_goes_while_parked_frees_its_slot() {
    let s = Setup::new("runtime: { max_connections: 1 }").await;
    let addr = s.proxy.listener("inbound");
    for close_notify in [true, false] {
        let mut first = s.parked().await;
        if close_notify {
            first.io.shutdown().await.expect("close_notify");
            drop(first);
        } else {
            reset(first.io.into_inner().0);
        }
        let next = async {
            let mut next = H1Conn::open(addr, s.cfg.clone())
                .await
                .expect("the next TLS connection");
            let rsp = next.get("/ok", &[]).await.expect("an answer");
            (rsp.status.as_u16(), rsp.text())
        };
        let what = format!("close_notify {close_notify}: the next client waited");
        let took = next_is_served(next, &what).await;
        assert!(
            took < Duration::from_secs(2),
            "close_notify {close_notify}: {took:?}"
        );
    }
}

/// Bytes that are no TLS record, sent to a parked TLS connection, close it (rustls refuses
/// them), and the listener serves the next connection.
#[tokio::test]
async fn garbage_on_a_parked_tls_connection_closes_it() {
    let s = Setup::new("").await;
    let mut c = s.parked().await;
    let (tcp, _) = c.io.get_mut();
    tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("plaintext bytes");
    assert!(
        c.closes().await,
        "a connection that sent no TLS record is closed"
    );
    let mut next = H1Conn::open(s.proxy.listener("inbound"), s.cfg.clone())
        .await
        .expect("the next TLS connection");
    let rsp = next.get("/ok", &[]).await.expect("an answer");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(s.app.hits_for("/ok"), 2);
}

/// Many TLS connections pausing for about the park point, some with a head in two records
/// across the pause: every request is answered, in order, on its own connection
/// (`park::pause_around_the_park_point`).
#[tokio::test]
async fn tls_connections_pausing_around_the_park_point_are_all_served() {
    let s = Setup::new("").await;
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let stream = tls::connect(s.proxy.listener("inbound"), s.cfg.clone())
            .await
            .expect("a TLS connection");
        conns.push(Conn::over(stream));
    }
    pause_around_the_park_point(conns).await;
    assert_eq!(s.app.hits_for("/headers"), (CONNS * ROUNDS) as u64);
}

/// A drain closes a parked TLS connection at once, and the process exits without waiting for
/// the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_a_parked_tls_connection_at_once() {
    let mut s = Setup::new("runtime: { shutdown_grace: 10s }").await;
    let mut c = s.parked().await;
    drain_closes_at_once(&mut s.proxy, &mut c).await;
}
