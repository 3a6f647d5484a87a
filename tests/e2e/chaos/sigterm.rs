//! SIGTERM under load: every request the proxy accepted before the signal is answered, then it
//! exits 0.

use std::time::Duration;

use super::{ms, table, Load};
use crate::support::{one_route, sample, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_request_accepted_before_it() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&one_route("runtime: { shutdown_grace: 10s }"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    // Slow enough that many requests are in flight when the signal lands.
    let load = Load::start(addr, "/slow?ms=400", 16);
    load.wait_more(40).await;
    // The clients move in step; land the signal in the middle of a round of answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = load.now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(12)).await;
    let exited = load.now() - signalled;
    let tally = load.finish().await;

    // A request sent this long before the signal was surely accepted (its connection is
    // pooled and open); anything later may have met a closed listener, which is allowed.
    let margin = Duration::from_millis(50);
    let before: Vec<_> = tally
        .outcomes
        .iter()
        .filter(|o| o.sent + margin < signalled)
        .collect();
    let in_flight = before
        .iter()
        .filter(|o| o.sent + o.took > signalled)
        .count();
    let lost: Vec<_> = before.iter().filter(|o| o.result != Ok(200)).collect();
    let ok = tally
        .outcomes
        .iter()
        .filter(|o| o.result == Ok(200))
        .count();
    table(
        "SIGTERM under load (16 clients, 400 ms answers)",
        &[
            ("requests sent", tally.sent().to_string()),
            (
                "sent before the signal / in flight at it",
                format!("{} / {in_flight}", before.len()),
            ),
            ("errors among them", lost.len().to_string()),
            ("refused after the signal", (tally.sent() - ok).to_string()),
            ("signal → exit", ms(exited)),
        ],
    );
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    assert!(
        in_flight > 0,
        "the signal must land with requests in flight"
    );
    assert!(lost.is_empty(), "accepted requests lost: {lost:?}");
    // Every request that reached the upstream came back to its client.
    assert_eq!(app.hits_for("/slow"), ok as u64);
}
