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
use http::uri::Scheme;
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::{JoinHandle, JoinSet};

use super::EndpointHealth;
use crate::config::file;
use crate::proxy::pool::Pool;

/// What the checker probes: the upstream's endpoints now, or `None` once the upstream is gone
/// (the task then ends). Typically a closure over a `Weak` of the upstream.
pub type Targets = Arc<dyn Fn() -> Option<Vec<CheckTarget>> + Send + Sync>;

/// One endpoint to probe.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its health, which the probes feed.
    pub health: Arc<EndpointHealth>,
    /// Its connections: a probe is dialed as they are (TLS if the upstream has `tls`) and
    /// speaks their protocol (HTTP/2 with `protocol: http2`).
    pub pool: Arc<Pool>,
}

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
        for t in list {
            let (cfg, on_change) = (Arc::clone(&cfg), Arc::clone(&on_change));
            round.spawn(async move {
                let ok = probe(&t, &cfg.path, cfg.timeout.0).await;
                if let Some(now_healthy) = t.health.record_check(ok, &cfg) {
                    on_change(t.addr, now_healthy);
                }
            });
        }
        while round.join_next().await.is_some() {}
    }
}

/// One probe of `t`: true when `GET path` answers 2xx within `timeout` (the TLS handshake, if
/// its upstream has `tls`, included).
pub async fn probe(t: &CheckTarget, path: &str, timeout: Duration) -> bool {
    let addr = t.addr;
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, probe_once(t, path, deadline)).await {
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
    t: &CheckTarget,
    path: &str,
    deadline: tokio::time::Instant,
) -> Result<bool, crate::error::BoxError> {
    let stream = t.pool.dial(t.addr, deadline).await?;
    let (host, scheme) = match t.pool.tls() {
        Some(tls) => (tls.server_name.to_string(), Scheme::HTTPS),
        None => (t.addr.to_string(), Scheme::HTTP),
    };
    let http2 = t.pool.is_http2().then_some(scheme);
    ask(TokioIo::new(stream), http2, host, path).await
}

/// `GET path` of `host` on `io`, in HTTP/2 when `http2` holds its `:scheme` (`https` over
/// TLS, as the requests have it), else HTTP/1.1; true on a 2xx answer.
async fn ask<T>(
    io: T,
    http2: Option<Scheme>,
    host: String,
    path: &str,
) -> Result<bool, crate::error::BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let req = http::Request::get(path).header(http::header::USER_AGENT, "rampart-health-check");
    // The connection task dies with the probe (timeout included): aborted on every exit.
    let rsp = if let Some(scheme) = http2 {
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(host)
            .path_and_query(path)
            .build()?;
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(io)
            .await?;
        let _conn = AbortOnDrop(tokio::spawn(conn));
        sender
            .send_request(req.uri(uri).body(Empty::new())?)
            .await?
    } else {
        let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(io).await?;
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let req = req
            .header(http::header::HOST, host)
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())?;
        sender.send_request(req).await?
    };
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
