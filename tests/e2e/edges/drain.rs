//! Shutdown with `drain_delay`: a load balancer that polls `/readyz` stops sending once it
//! fails; rampart keeps serving for the delay, so not one request is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::http::Method;

use crate::support::{http, one_route, sample, Proxy};

/// Before 2464352 SIGTERM closed the listeners at once, so requests sent in the gap before the
/// balancer's next `/readyz` poll were refused, and `runtime.drain_delay` did not exist (the
/// file is refused). Fails on the old code (reasoned; the key is unknown at 8024b07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_drain_delay_loses_no_request() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&one_route(
        "runtime: { drain_delay: 2s, shutdown_grace: 5s }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let ready = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));

    let poller = {
        let ready = ready.clone();
        tokio::spawn(async move {
            loop {
                let up = http::try_get(admin, "/readyz", &[])
                    .await
                    .is_ok_and(|r| r.status == 200);
                if !up {
                    ready.store(false, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let load = {
        let (ready, ok, failed) = (ready.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = http::client();
            while ready.load(Ordering::SeqCst) {
                let r = http::send(&client, addr, Method::GET, "/ok", &[], http::empty()).await;
                match r {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    assert_eventually!(
        ok.load(Ordering::SeqCst) >= 10,
        "steady load must be served"
    );

    proxy.signal("TERM");
    poller.await.expect("the poller must not panic");
    load.await.expect("the load loop must not panic");
    // The balancer has only just seen /readyz fail: rampart still serves for the delay.
    let late = http::try_get(addr, "/ok", &[]).await;
    assert!(
        late.is_ok_and(|r| r.status == 200),
        "rampart must keep serving during drain_delay"
    );

    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request may fail");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
}
