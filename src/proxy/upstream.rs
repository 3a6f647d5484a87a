//! Upstreams: endpoints, pooled keep-alive connections, and endpoint choice.
//!
//! Each endpoint owns its connection pool (`pool.rs`), so a reload that leaves the upstream
//! unchanged keeps its warm connections. Endpoints that are
//! DNS names are resolved in a background task every `resolve_every`; every address becomes
//! an endpoint of its own, and a failed lookup keeps the last good addresses. A name that never
//! resolved leaves the upstream without endpoints: requests get `upstream_unavailable`, start-up
//! goes on (Kubernetes Services appear after the pod).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;

use rustls::ClientConfig;

use super::pool::{Pool, PoolSettings, TlsOrigin};
use crate::clock::SharedClock;
use crate::config::file;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::policy::timeout::LatencyEstimator;

/// One upstream of the config in force.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the policy file (and metrics label).
    pub name: Arc<str>,
    /// Its settings.
    pub cfg: file::Upstream,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
    /// Cached metric handles.
    pub metrics: UpstreamMetrics,
    /// Recent try latencies, for `per_try: auto`.
    pub latency: LatencyEstimator,
    clock: SharedClock,
    /// The TLS client config of `tls`, shared by every endpoint's pool; a reload that keeps
    /// the upstream stores the files as they are now.
    tls: Option<Arc<ArcSwap<ClientConfig>>>,
}

/// Window of try latencies behind `per_try: auto`.
const LATENCY_WINDOW: Duration = Duration::from_secs(30);
/// How long an endpoint that refused a connection is passed over while others are available.
const CONNECT_FAILURE_HOLD: Duration = Duration::from_secs(1);

/// One address of an upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The DNS name it was resolved from (SNI and certificate name for TLS); `None` for an
    /// endpoint written as an address.
    pub host: Option<Arc<str>>,
    /// `addr` as text, the `endpoint` metric label.
    pub label: Arc<str>,
    /// `addr` as a URI authority, parsed once.
    pub authority: Authority,
    /// False while health checks or outlier detection keep it out.
    pub healthy: AtomicBool,
    /// Clock nanos before which a failed connect keeps it out of rotation (while others are
    /// available).
    hold_until: AtomicU64,
    /// Its keep-alive connections.
    pub pool: Arc<Pool>,
}

/// A written endpoint: an address, or a name to resolve.
#[derive(Debug, Clone)]
enum Target {
    Addr(SocketAddr),
    Name(String),
}

// === impl Upstream ===

impl Upstream {
    /// Builds the upstream and, if it has DNS names, starts resolving them.
    ///
    /// Endpoints of `old` (the upstream of the same name before a reload) are carried over by
    /// address while the settings of their connections are unchanged, so a tweak to another key
    /// keeps warm connections and what is known of their health.
    pub fn new(
        name: &str,
        cfg: &file::Upstream,
        old: Option<&Upstream>,
        tls: Option<Arc<ClientConfig>>,
        metrics: &Metrics,
        clock: &SharedClock,
    ) -> Arc<Upstream> {
        let name: Arc<str> = Arc::from(name);
        let metrics = metrics.upstream(&name);
        let tls = tls.map(|c| Arc::new(ArcSwap::new(c)));
        let make =
            |addr: SocketAddr, host: Option<Arc<str>>| Endpoint::new(addr, host, cfg, tls.as_ref());
        let targets: Vec<Target> = cfg.endpoints.iter().map(|e| Target::parse(e)).collect();
        let carried: Vec<Arc<Endpoint>> = old
            .filter(|o| same_transport(&o.cfg, cfg))
            .map(|o| o.endpoints.load().iter().cloned().collect())
            .unwrap_or_default();
        let mut initial: Vec<Arc<Endpoint>> = Vec::new();
        for t in &targets {
            match t {
                Target::Addr(a) => {
                    let kept = carried.iter().find(|e| e.addr == *a && e.host.is_none());
                    initial.push(kept.cloned().unwrap_or_else(|| make(*a, None)));
                }
                // Addresses a name resolved to before stay until the name is resolved again.
                Target::Name(n) => initial.extend(
                    carried
                        .iter()
                        .filter(|e| e.host.as_deref() == Some(host_of(n)))
                        .cloned(),
                ),
            }
        }
        for e in &initial {
            metrics.set_endpoint_healthy(&e.label, e.healthy.load(Ordering::Relaxed));
        }
        let up = Arc::new(Upstream {
            metrics,
            name,
            cfg: cfg.clone(),
            endpoints: ArcSwap::from_pointee(initial),
            next: AtomicUsize::new(0),
            latency: LatencyEstimator::new(LATENCY_WINDOW, clock.clone()),
            clock: clock.clone(),
            tls,
        });
        if targets.iter().any(|t| matches!(t, Target::Name(_))) {
            tokio::spawn(resolve_loop(
                Arc::downgrade(&up),
                targets,
                cfg.resolve_every.0,
            ));
        }
        up
    }

    /// Makes new connections use `tls` (the upstream's files read again by a reload).
    pub fn refresh_tls(&self, tls: Option<Arc<ClientConfig>>) {
        if let (Some(slot), Some(cfg)) = (&self.tls, tls) {
            slot.store(cfg);
        }
    }

    /// All endpoints known now.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Whether any endpoint is known and healthy.
    pub fn has_healthy(&self) -> bool {
        self.endpoints
            .load()
            .iter()
            .any(|e| e.healthy.load(Ordering::Relaxed))
    }

    /// Picks the next healthy endpoint in turn. `avoid` (the endpoint a failed try used) and
    /// endpoints that recently refused a connection are taken only when nothing else is left.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.load();
        let n = eps.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_nanos();
        let mut fallback = None;
        for i in 0..n {
            let e = &eps[(start + i) % n];
            if !e.healthy.load(Ordering::Relaxed) {
                continue;
            }
            if Some(e.addr) == avoid || e.hold_until.load(Ordering::Relaxed) > now {
                fallback = fallback.or(Some(e));
                continue;
            }
            return Some(e.clone());
        }
        fallback.cloned()
    }

    /// Notes that `ep` refused a connection: pass it over for a moment while others serve.
    pub fn connect_failed(&self, ep: &Endpoint) {
        let until = self.clock.now_nanos() + CONNECT_FAILURE_HOLD.as_nanos() as u64;
        ep.hold_until.store(until, Ordering::Relaxed);
    }

    fn set_resolved(&self, found: Vec<(SocketAddr, Option<Arc<str>>)>) {
        let old = self.endpoints.load();
        let eps: Vec<Arc<Endpoint>> = found
            .into_iter()
            .map(|(a, host)| {
                old.iter()
                    .find(|e| e.addr == a && e.host == host)
                    .cloned()
                    .unwrap_or_else(|| {
                        let e = Endpoint::new(a, host, &self.cfg, self.tls.as_ref());
                        self.metrics.set_endpoint_healthy(&e.label, true);
                        e
                    })
            })
            .collect();
        for gone in old
            .iter()
            .filter(|o| !eps.iter().any(|e| Arc::ptr_eq(e, o)))
        {
            self.metrics.remove_endpoint(&gone.label);
        }
        self.endpoints.store(Arc::new(eps));
    }
}

/// Whether endpoints built for `a` can serve `b` unchanged: the settings of their connections.
fn same_transport(a: &file::Upstream, b: &file::Upstream) -> bool {
    a.connect_timeout == b.connect_timeout
        && a.pool_max_idle == b.pool_max_idle
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.max_connections == b.max_connections
        && a.tls == b.tls
}

/// The host part of a `host:port` endpoint.
fn host_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h)
}

// === impl Endpoint ===

impl Endpoint {
    fn new(
        addr: SocketAddr,
        host: Option<Arc<str>>,
        cfg: &file::Upstream,
        tls: Option<&Arc<ArcSwap<ClientConfig>>>,
    ) -> Arc<Endpoint> {
        let label: Arc<str> = Arc::from(addr.to_string());
        let tls = tls.map(|config| TlsOrigin {
            config: config.clone(),
            // SNI and verification: `server_name`, else the name the address came from, else
            // the address itself (checked against the certificate's IP SANs).
            server_name: cfg
                .tls
                .as_ref()
                .and_then(|t| t.server_name.as_deref())
                .map(Arc::from)
                .or_else(|| host.clone())
                .unwrap_or_else(|| Arc::from(addr.ip().to_string())),
        });
        let authority =
            Authority::try_from(&*label).unwrap_or_else(|_| Authority::from_static("invalid"));
        Arc::new(Endpoint {
            addr,
            host,
            label,
            authority,
            healthy: AtomicBool::new(true),
            hold_until: AtomicU64::new(0),
            pool: Pool::new(
                PoolSettings {
                    max_idle: cfg.pool_max_idle as usize,
                    max_connections: cfg.max_connections as usize,
                    connect_timeout: cfg.connect_timeout.0,
                    idle_timeout: cfg.pool_idle_timeout.0,
                },
                tls,
            ),
        })
    }
}

// === impl Target ===

impl Target {
    fn parse(s: &str) -> Target {
        match s.parse::<SocketAddr>() {
            Ok(a) => Target::Addr(a),
            Err(_) => Target::Name(s.to_string()),
        }
    }
}

/// Resolves names now and every `every`, until the upstream is dropped.
async fn resolve_loop(up: Weak<Upstream>, targets: Vec<Target>, every: Duration) {
    type Found = Vec<(SocketAddr, Option<Arc<str>>)>;
    let mut last: Vec<Found> = vec![Vec::new(); targets.len()];
    loop {
        for (i, t) in targets.iter().enumerate() {
            match t {
                Target::Addr(a) => last[i] = vec![(*a, None)],
                Target::Name(n) => match tokio::net::lookup_host(n.as_str()).await {
                    Ok(found) => {
                        let host: Arc<str> = Arc::from(host_of(n));
                        let mut v: Vec<SocketAddr> = found.collect();
                        v.sort();
                        v.dedup();
                        if !v.is_empty() {
                            last[i] = v.into_iter().map(|a| (a, Some(host.clone()))).collect();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %n, error = %e, "dns lookup failed; keeping last addresses")
                    }
                },
            }
        }
        let Some(up) = up.upgrade() else { return };
        let mut all: Found = last.iter().flatten().cloned().collect();
        all.dedup();
        up.set_resolved(all);
        drop(up);
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
    }
}
