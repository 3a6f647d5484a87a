//! Active health checks: one task per upstream probes each endpoint with `GET path` every
//! `interval`, and flips its checked verdict after `unhealthy_after` failures or
//! `healthy_after` successes in a row.
//!
//! Why jitter: a fleet of sidecars started by one deployment would otherwise probe the same
//! service in lockstep, every `interval`, forever. Each task waits a random offset in
//! `[0, interval)` before its first round and each round lasts `interval ± 10%`.
//! Each probe uses a fresh HTTP/1.1 connection (never the request pool) so that a probe
//! measures whether the endpoint accepts and answers now, and a stuck pooled connection cannot
//! mask a dead endpoint. An upstream with `tls` is probed over TLS as its requests are
//! (verified against its `ca`, for its `server_name`): never in clear (SPEC §8).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

use super::EndpointHealth;
use crate::config::file;
use crate::proxy::pool::TlsOrigin;

/// What the checker probes: the upstream's endpoints now, or `None` once the upstream is gone
/// (the task then ends). Typically a closure over a `Weak` of the upstream.
pub type Targets = Arc<dyn Fn() -> Option<Vec<Target>> + Send + Sync>;

/// One endpoint to probe: its address, its health, and its TLS if its upstream has `tls`.
pub type Target = (SocketAddr, Arc<EndpointHealth>, Option<TlsOrigin>);

/// Called with an endpoint's address and its new verdict each time a check flips it.
pub type OnChange = Arc<dyn Fn(SocketAddr, bool) + Send + Sync>;

/// Spawns the checker of one upstream; it runs until `targets` returns `None` (or the handle
/// is aborted). Must be called inside a tokio runtime.
pub fn spawn_checks(
    cfg: file::HealthCheck,
    targets: Targets,
    on_change: OnChange,
) -> JoinHandle<()> {
    tokio::spawn(run(Arc::new(cfg), targets, on_change))
}

async fn run(cfg: Arc<file::HealthCheck>, targets: Targets, on_change: OnChange) {
    let interval = cfg.interval.0;
    let mut rng = fastrand::Rng::new();
    let offset = interval.mul_f64(rng.f64());
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(list) = targets() else { return };
        next = tokio::time::Instant::now() + interval.mul_f64(0.9 + 0.2 * rng.f64());
        let mut round = JoinSet::new();
        for (addr, health, tls) in list {
            let (cfg, on_change) = (Arc::clone(&cfg), Arc::clone(&on_change));
            round.spawn(async move {
                let ok = probe(addr, tls.as_ref(), &cfg.path, cfg.timeout.0).await;
                if let Some(now_healthy) = health.record_check(ok, &cfg) {
                    on_change(addr, now_healthy);
                }
            });
        }
        while round.join_next().await.is_some() {}
    }
}

/// One probe: true when `GET path` answers 2xx within `timeout` (the TLS handshake, if `tls`,
/// included).
pub async fn probe(
    addr: SocketAddr,
    tls: Option<&TlsOrigin>,
    path: &str,
    timeout: Duration,
) -> bool {
    match tokio::time::timeout(timeout, probe_once(addr, tls, path)).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(%addr, ?timeout, "health check timed out");
            false
        }
    }
}

async fn probe_once(
    addr: SocketAddr,
    tls: Option<&TlsOrigin>,
    path: &str,
) -> Result<bool, crate::error::BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn, host) = match tls {
        None => {
            let (sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
            (sender, AbortOnDrop(tokio::spawn(conn)), addr.to_string())
        }
        Some(tls) => {
            let cfg = tls.config.load_full();
            let stream = crate::tls::connect(cfg, &tls.server_name, stream).await?;
            let (sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
            (
                sender,
                AbortOnDrop(tokio::spawn(conn)),
                tls.server_name.to_string(),
            )
        }
    };
    // The connection task dies with the probe (timeout included): aborted on every exit.
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "close")
        .header(http::header::USER_AGENT, "rampart-health-check")
        .body(Empty::new())?;
    let rsp = sender.send_request(req).await?;
    drop(conn);
    Ok(rsp.status().is_success())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<Result<(), hyper::Error>>);

// === impl AbortOnDrop ===

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
