//! Two workers through real sockets: connections the kernel queues at one worker are spread
//! over both (`src/proxy/balance.rs`), and a connection handed to the other worker is served
//! like any other, request after request.
//!
//! Which worker's socket the kernel picks for a connection is a hash of the client's address
//! and port, so the test first finds source ports that land on one worker: with no other
//! connection open, the worker that accepts a connection keeps it, and
//! `rampart_open_connections{worker}` shows which one did.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpSocket;

use crate::support::conn::Conn;
use crate::support::metrics::{metric_value, metrics};
use crate::support::{one_route, sample, Proxy};

/// How long one exchange may take.
const WAIT: Duration = Duration::from_secs(5);

/// Open client connections of workers 0 and 1, from `/metrics`.
async fn open_per_worker(admin: SocketAddr) -> [i64; 2] {
    let text = metrics(admin).await;
    [0, 1].map(|w| {
        let v = metric_value(
            &text,
            "rampart_open_connections",
            &[("worker", &w.to_string())],
        );
        v.map_or(0, |v| v as i64)
    })
}

/// A connection to `addr` from source port `port`, or `None` if that port is taken. It closes
/// with a reset (linger 0), so no TIME_WAIT keeps the port from the next use.
async fn connect_from(addr: SocketAddr, port: u16) -> Option<Conn> {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_reuseaddr(true).expect("SO_REUSEADDR");
    s.bind((Ipv4Addr::LOCALHOST, port).into()).ok()?;
    let tcp = tokio::time::timeout(WAIT, s.connect(addr))
        .await
        .ok()?
        .ok()?;
    tcp.set_zero_linger().expect("SO_LINGER");
    Some(Conn::over(tcp))
}

/// Sends `GET /ok` on `conn` (kept alive) and reads the answer; returns its status.
async fn get_on(conn: &mut Conn) -> u16 {
    conn.send(b"GET /ok HTTP/1.1\r\nHost: app.local\r\n\r\n")
        .await;
    conn.answer(false).await.status
}

#[tokio::test]
async fn connections_the_kernel_queues_at_one_worker_are_spread_over_both() {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", app.addr())
        .env("RAMPART_WORKERS", 2)
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    // The readiness probe's connection has gone: neither worker serves any.
    let settled = || async move { open_per_worker(admin).await == [0, 0] };
    assert_eventually!(settled().await, "no connection open before the test's");
    let base = [0, 0];

    // Source ports by the worker whose socket the kernel queues them at.
    let mut by_worker: [Vec<u16>; 2] = [Vec::new(), Vec::new()];
    // Below Linux's ephemeral range (32768 up), so other tests' connections do not take
    // these ports between the two phases.
    let first = 10_000 + (std::process::id() % 20_000) as u16;
    for port in (first..).take(400) {
        if by_worker.iter().any(|p| p.len() == 16) {
            break;
        }
        let Some(mut tcp) = connect_from(addr, port).await else {
            continue;
        };
        assert_eq!(get_on(&mut tcp).await, 200);
        let now = open_per_worker(admin).await;
        let grew: Vec<usize> = (0..2).filter(|&w| now[w] == base[w] + 1).collect();
        assert_eq!(
            grew.len(),
            1,
            "one connection open, one worker counts it: {base:?} -> {now:?}"
        );
        by_worker[grew[0]].push(port);
        drop(tcp);
        assert_eventually!(settled().await, "a closed connection is no longer counted");
    }
    let (busy, ports) = by_worker
        .iter()
        .enumerate()
        .find(|(_, p)| p.len() == 16)
        .expect("16 of 400 source ports hash to the same worker");

    // All 16 at once, each kept open: the kernel queues every one at worker `busy`.
    let mut conns = Vec::new();
    for &port in ports {
        let mut tcp = connect_from(addr, port)
            .await
            .expect("a port used a moment ago is free again");
        assert_eq!(get_on(&mut tcp).await, 200);
        conns.push(tcp);
    }
    let now = open_per_worker(admin).await;
    let delta = [now[0] - base[0], now[1] - base[1]];
    assert_eq!(
        delta,
        [8, 8],
        "16 connections queued at worker {busy} must be served 8 and 8: {delta:?}"
    );
    // Served connections stay served, on whichever worker took them.
    for c in &mut conns {
        assert_eq!(get_on(c).await, 200);
        assert_eq!(get_on(c).await, 200);
    }
    drop(conns);
    assert_eventually!(settled().await, "closed connections are no longer counted");
}
