//! Active checks against a real loopback server whose answers the test flips.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::config::{file, Dur};

const PATIENCE: Duration = Duration::from_secs(5);

/// A tiny HTTP/1.1 server: answers every request with `status`, counts answers by class.
struct Fake {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    ok: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn fake(status: u16, answer: bool) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let status = Arc::new(AtomicU16::new(status));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, o, b) = (Arc::clone(&status), Arc::clone(&ok), Arc::clone(&bad));
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (s, o, b) = (Arc::clone(&s), Arc::clone(&o), Arc::clone(&b));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if !answer {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let code = s.load(Ordering::SeqCst);
                let counter = if (200..300).contains(&code) { &o } else { &b };
                counter.fetch_add(1, Ordering::SeqCst);
                let head =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = sock.write_all(head.as_bytes()).await;
            });
        }
    });
    Fake {
        addr,
        status,
        ok,
        bad,
        task,
    }
}

fn cfg(unhealthy_after: u32, healthy_after: u32) -> file::HealthCheck {
    file::HealthCheck {
        path: "/healthz".into(),
        interval: Dur::from_millis(20),
        timeout: Dur::from_millis(200),
        unhealthy_after,
        healthy_after,
    }
}

type Events = mpsc::UnboundedReceiver<(SocketAddr, bool, usize, usize)>;

/// Starts checks of one endpoint; each flip is sent with the server's ok/bad counts then.
fn start(
    c: file::HealthCheck,
    f: &Fake,
    h: &Arc<EndpointHealth>,
) -> (Events, tokio::task::JoinHandle<()>, Arc<()>) {
    let alive = Arc::new(());
    let weak = Arc::downgrade(&alive);
    let (addr, h) = (f.addr, Arc::clone(h));
    let targets: Targets = Arc::new(move || {
        weak.upgrade().map(|_| {
            vec![CheckTarget {
                addr,
                health: Arc::clone(&h),
                pool: plain_pool(),
            }]
        })
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let (ok, bad) = (Arc::clone(&f.ok), Arc::clone(&f.bad));
    let on_change: OnChange = Arc::new(move |a, up| {
        let _ = tx.send((a, up, ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst)));
    });
    (rx, spawn_checks(c, targets, on_change), alive)
}

async fn next(rx: &mut Events) -> (SocketAddr, bool, usize, usize) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a flip must come within the patience")
        .expect("checker alive")
}

#[tokio::test]
async fn flips_after_exactly_unhealthy_after_then_healthy_after_probes() {
    let f = fake(500, true).await;
    let h = Arc::new(EndpointHealth::new());
    let (mut rx, task, alive) = start(cfg(3, 2), &f, &h);
    let (addr, up, _, bad) = next(&mut rx).await;
    assert_eq!(
        (addr, up, bad),
        (f.addr, false, 3),
        "unhealthy after exactly 3 failed probes"
    );
    assert!(!h.available(0));
    f.status.store(204, Ordering::SeqCst);
    let (_, up, ok, _) = next(&mut rx).await;
    assert_eq!((up, ok), (true, 2), "healthy after exactly 2 good probes");
    assert!(h.available(0));
    drop(alive);
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the loop ends")
        .expect("no panic");
    f.task.abort();
}

#[tokio::test]
async fn a_stopped_or_silent_endpoint_turns_unhealthy() {
    let f = fake(200, true).await;
    let h = Arc::new(EndpointHealth::new());
    let (mut rx, task, _alive) = start(cfg(2, 1), &f, &h);
    f.task.abort();
    let (_, up, _, _) = next(&mut rx).await;
    assert!(!up, "refused connections are failures");
    task.abort();

    let silent = fake(200, false).await;
    let h = Arc::new(EndpointHealth::new());
    let (mut rx, task, _alive) = start(cfg(1, 1), &silent, &h);
    let (_, up, _, _) = next(&mut rx).await;
    assert!(!up, "a probe without answer times out");
    task.abort();
    silent.task.abort();
}

#[tokio::test]
async fn probe_reads_the_status() {
    let f = fake(200, true).await;
    let t = CheckTarget {
        addr: f.addr,
        health: Arc::new(EndpointHealth::new()),
        pool: plain_pool(),
    };
    assert!(probe(&t, "/healthz", Duration::from_secs(1)).await);
    f.status.store(503, Ordering::SeqCst);
    assert!(!probe(&t, "/healthz", Duration::from_secs(1)).await);
    f.task.abort();
}

/// The connections of a plain HTTP/1.1 endpoint, as probes dial them.
fn plain_pool() -> Arc<crate::proxy::pool::Pool> {
    use crate::proxy::pool::{Pool, PoolSettings};
    let settings = PoolSettings {
        max_idle: 1,
        max_connections: 1,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        http2: false,
    };
    let open = prometheus::IntGauge::new("probe_test_open", "test").expect("a gauge");
    Pool::new(settings, None, open)
}
