//! Upstreams: endpoints, pooled keep-alive connections, and endpoint choice.
//!
//! Each endpoint owns its connection pool (`pool.rs`), so a reload that leaves the upstream
//! unchanged keeps its warm connections. Endpoints that are
//! DNS names are resolved in a background task every `resolve_every`; every address becomes
//! an endpoint of its own, and a failed lookup keeps the last good addresses. A name that never
//! resolved leaves the upstream without endpoints: requests get `upstream_unavailable`, start-up
//! goes on (Kubernetes Services appear after the pod).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;

use rustls::ClientConfig;

use super::health::{
    p2c, spawn_checks, CheckTarget, EndpointHealth, OnChange, OutlierDetector, Targets,
};
use super::pool::{Pool, PoolSettings, TlsOrigin};
use crate::clock::SharedClock;
use crate::config::file;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::policy::outcome::Outcome;
use crate::policy::timeout::LatencyEstimator;
use tokio::task::AbortHandle;
use tokio::time::Instant;

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
    /// the upstream, or only its endpoints, stores the files as they are now.
    tls: Option<Arc<ArcSwap<ClientConfig>>>,
    /// Passive ejection (`outlier`).
    outlier: Option<OutlierDetector>,
    /// The active health checker (`health_check`); stopped when the upstream is replaced.
    checker: Option<AbortHandle>,
    /// Set when a reload replaced or removed it: what its requests still in flight learn is
    /// no longer written to the metrics, whose series are the new generation's, and its names
    /// are no longer resolved.
    retired: AtomicBool,
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
    /// Health checks, outlier ejection, in-flight count and latency EWMA (kept by address
    /// across reloads).
    pub health: Arc<EndpointHealth>,
    /// Clock nanos before which a failed connect keeps it out of rotation (while others are
    /// available).
    hold_until: AtomicU64,
    /// Its keep-alive connections.
    pub pool: Arc<Pool>,
}

/// Resolves one written `host:port` endpoint to its addresses: the OS resolver in production,
/// a scripted answer in tests (a lookup failing on demand, without real DNS).
pub(crate) type Lookup = Arc<dyn Fn(&str) -> LookupFuture + Send + Sync>;
/// The answer of a [`Lookup`].
pub(crate) type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Addresses of one written endpoint, with the name they came from (`None` for an address).
type Found = Vec<(SocketAddr, Option<Arc<str>>)>;

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
        Upstream::with_lookup(name, cfg, old, tls, metrics, clock, system_lookup())
    }

    /// [`Upstream::new`] with names resolved by `lookup`.
    pub(crate) fn with_lookup(
        name: &str,
        cfg: &file::Upstream,
        old: Option<&Upstream>,
        tls: Option<Arc<ClientConfig>>,
        metrics: &Metrics,
        clock: &SharedClock,
        lookup: Lookup,
    ) -> Arc<Upstream> {
        let name: Arc<str> = Arc::from(name);
        let metrics = metrics.upstream(&name);
        let carrying = old.filter(|o| same_transport(&o.cfg, cfg));
        // One holder for every endpoint: those carried over keep the pools built on the old
        // one, which takes the files as read now; a new one would leave them on the files as
        // they were until a restart.
        let tls = match (carrying.and_then(|o| o.tls.clone()), tls) {
            (Some(held), read) => {
                if let Some(c) = read {
                    held.store(c);
                }
                Some(held)
            }
            (None, read) => read.map(|c| Arc::new(ArcSwap::new(c))),
        };
        let make = |addr: SocketAddr, host: Option<Arc<str>>| {
            Endpoint::new(addr, host, cfg, tls.as_ref(), &metrics)
        };
        let targets: Vec<Target> = cfg.endpoints.iter().map(|e| Target::parse(e)).collect();
        let carried: Vec<Arc<Endpoint>> = carrying
            .map(|o| o.endpoints.load().iter().cloned().collect())
            .unwrap_or_default();
        // Per target, what it starts with; the resolver starts from the same addresses, so a
        // lookup that fails right after a reload keeps them.
        let per_target: Vec<Vec<Arc<Endpoint>>> = targets
            .iter()
            .map(|t| match t {
                Target::Addr(a) => {
                    let kept = carried.iter().find(|e| e.addr == *a && e.host.is_none());
                    vec![kept.cloned().unwrap_or_else(|| make(*a, None))]
                }
                // Addresses a name resolved to before stay until the name is resolved again.
                Target::Name(n) => carried
                    .iter()
                    .filter(|e| e.host.as_deref() == Some(host_of(n)))
                    .filter(|e| port_of(n).is_none_or(|p| e.addr.port() == p))
                    .cloned()
                    .collect(),
            })
            .collect();
        let start: Vec<Found> = per_target
            .iter()
            .map(|eps| eps.iter().map(|e| (e.addr, e.host.clone())).collect())
            .collect();
        let initial: Vec<Arc<Endpoint>> = per_target.into_iter().flatten().collect();
        if let Some(o) = old {
            // One writer per endpoint's check verdicts: the old checker stops now.
            o.stop_checks();
        }
        let now = clock.now_nanos();
        for e in &initial {
            if cfg.health_check.is_none() {
                // Checks were removed: nothing would ever bring a checked-down endpoint back.
                e.health.reset_checks();
            }
            metrics.set_endpoint_healthy(&e.label, e.health.available(now));
        }
        let up = Arc::new_cyclic(|weak: &Weak<Upstream>| Upstream {
            metrics,
            name,
            cfg: cfg.clone(),
            endpoints: ArcSwap::from_pointee(initial),
            next: AtomicUsize::new(0),
            latency: LatencyEstimator::new(LATENCY_WINDOW, clock.clone()),
            clock: clock.clone(),
            tls,
            outlier: cfg.outlier.as_ref().map(OutlierDetector::new),
            checker: cfg
                .health_check
                .as_ref()
                .map(|hc| start_checks(weak.clone(), hc.clone())),
            retired: AtomicBool::new(false),
        });
        if targets.iter().any(|t| matches!(t, Target::Name(_))) {
            tokio::spawn(resolve_loop(
                Arc::downgrade(&up),
                targets,
                start,
                cfg.resolve_every.0,
                lookup,
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

    /// Whether its connections are TLS (`tls`).
    pub fn speaks_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// All endpoints known now.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Whether any endpoint is known and available (checked healthy, not ejected).
    pub fn has_healthy(&self) -> bool {
        let now = self.clock.now_nanos();
        self.endpoints
            .load()
            .iter()
            .any(|e| e.health.available(now))
    }

    /// The message of the 502 when [`Upstream::pick`] found no endpoint, naming the DNS names
    /// that have resolved to no address yet (a typo in a name, a service not yet up): without
    /// them "no healthy endpoint" sends one to look at health checks. Built on that error path
    /// only.
    pub fn no_endpoint_message(&self) -> String {
        let eps = self.endpoints.load();
        let unresolved: Vec<&str> = self
            .cfg
            .endpoints
            .iter()
            .filter(|e| matches!(Target::parse(e), Target::Name(_)))
            .filter(|n| !eps.iter().any(|e| e.host.as_deref() == Some(host_of(n))))
            .map(String::as_str)
            .collect();
        match unresolved.as_slice() {
            [] => format!("upstream {} has no healthy endpoint", self.name),
            [one] => format!(
                "upstream {} has no healthy endpoint; {one} has not resolved to any address (DNS)",
                self.name
            ),
            many => format!(
                "upstream {} has no healthy endpoint; {} have not resolved to any address (DNS)",
                self.name,
                many.join(", ")
            ),
        }
    }

    /// Picks an available endpoint: the cheaper of two random ones (`balance: p2c`) or the
    /// next in turn. `avoid` (the endpoint a failed try used) and endpoints that recently
    /// refused a connection are taken only when nothing else is left, and then `avoid` before
    /// one that refused: an endpoint that answered (a 503 that is retried) is likelier to
    /// answer again than one that refused a connection a moment ago, whose try would only be
    /// spent on another refusal. `now`: the time the caller read just before.
    pub fn pick(&self, avoid: Option<SocketAddr>, now: Instant) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.load();
        if eps.is_empty() {
            return None;
        }
        if self.cfg.balance == file::Balance::P2c {
            let now = self.clock.nanos_at(now);
            let held = |e: &Arc<Endpoint>| e.hold_until.load(Ordering::Relaxed) > now;
            let shunned = |e: &Arc<Endpoint>| Some(e.addr) == avoid || held(e);
            let mut rng = fastrand::Rng::new();
            return p2c(&eps, |e| &e.health, shunned, now, &mut rng)
                .or_else(|| p2c(&eps, |e| &e.health, held, now, &mut rng))
                .or_else(|| p2c(&eps, |e| &e.health, |_| false, now, &mut rng))
                .cloned();
        }
        // Round robin reads the clock only for an endpoint with a hold or an ejection on record
        // (0: never had one), to see whether it has ended: most picks read none (the reading,
        // about 55 instructions, was a third of a pick).
        let at = std::cell::OnceCell::new();
        let now = || *at.get_or_init(|| self.clock.nanos_at(now));
        let held = |e: &Arc<Endpoint>| match e.hold_until.load(Ordering::Relaxed) {
            0 => false,
            until => until > now(),
        };
        let n = eps.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (mut avoided, mut refused) = (None, None);
        for i in 0..n {
            let e = &eps[(start + i) % n];
            if !e.health.available_by(now) {
                continue;
            }
            if held(e) {
                refused = refused.or(Some(e));
                continue;
            }
            if Some(e.addr) == avoid {
                avoided = avoided.or(Some(e));
                continue;
            }
            return Some(e.clone());
        }
        avoided.or(refused).cloned()
    }

    /// Tells endpoint health how a try against `ep` ended: the latency EWMA, and outlier
    /// ejection when configured (logged, and the endpoint's gauge set to 0). `ended`: when
    /// the try ended, as the caller read it.
    pub fn try_ended(&self, ep: &Endpoint, outcome: Outcome, took: Duration, ended: Instant) {
        let now = self.clock.nanos_at(ended);
        let streak = ep.health.end(outcome, took, now);
        let Some(detector) = &self.outlier else {
            return;
        };
        let threshold = detector.consecutive_failures();
        if threshold == 0 || streak < threshold || ep.health.is_ejected(now) {
            // The common case: no list of endpoints is gathered, nothing is allocated.
            return;
        }
        let eps = self.endpoints.load();
        let all: Vec<Arc<EndpointHealth>> = eps.iter().map(|e| e.health.clone()).collect();
        if detector.eject_if_allowed(&ep.health, &all, now) {
            tracing::warn!(upstream = %self.name, endpoint = %ep.addr, "endpoint ejected by outlier detection");
            self.gauge_healthy(&ep.label, false);
        }
    }

    /// Sets every endpoint's `rampart_upstream_endpoint_healthy` from its state now (ejections
    /// end by time, with no event to hook): called at scrape time.
    pub fn refresh_health_gauges(&self) {
        let now = self.clock.now_nanos();
        for e in self.endpoints.load().iter() {
            self.gauge_healthy(&e.label, e.health.available(now));
        }
    }

    /// Sets an endpoint's `rampart_upstream_endpoint_healthy`, unless a reload retired this
    /// upstream (its series were dropped, or are the new generation's to write).
    fn gauge_healthy(&self, label: &str, healthy: bool) {
        if !self.retired.load(Ordering::Relaxed) {
            self.metrics.set_endpoint_healthy(label, healthy);
        }
    }

    /// `/state`: every endpoint with its health.
    pub fn snapshot(&self) -> serde_json::Value {
        let now = self.clock.now_nanos();
        let eps: Vec<serde_json::Value> = self
            .endpoints
            .load()
            .iter()
            .map(|e| {
                let mut v = e.health.snapshot(now);
                if let Some(m) = v.as_object_mut() {
                    m.insert("address".into(), serde_json::json!(&*e.label));
                }
                v
            })
            .collect();
        serde_json::Value::Array(eps)
    }

    /// Stops the active health checks (a reload replaced or removed this upstream).
    fn stop_checks(&self) {
        if let Some(c) = &self.checker {
            c.abort();
        }
    }

    /// A reload put another upstream in its place, or none: its checks and DNS lookups stop,
    /// and nothing its requests still in flight learn is written to the metrics any more.
    pub(crate) fn retire(&self) {
        self.stop_checks();
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Notes that `ep` refused a connection: pass it over for a moment while others serve.
    pub fn connect_failed(&self, ep: &Endpoint) {
        let until = self.clock.now_nanos() + CONNECT_FAILURE_HOLD.as_nanos() as u64;
        ep.hold_until.store(until, Ordering::Relaxed);
    }

    fn set_resolved(&self, found: Found) {
        let old = self.endpoints.load();
        let eps: Vec<Arc<Endpoint>> = found
            .into_iter()
            .map(|(a, host)| {
                old.iter()
                    .find(|e| e.addr == a && e.host == host)
                    .cloned()
                    .unwrap_or_else(|| {
                        let e = Endpoint::new(a, host, &self.cfg, self.tls.as_ref(), &self.metrics);
                        self.gauge_healthy(&e.label, true);
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

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop_checks();
    }
}

/// Starts the active checker of the upstream behind `weak`; it ends with the upstream.
fn start_checks(weak: Weak<Upstream>, cfg: file::HealthCheck) -> AbortHandle {
    let targets_of = weak.clone();
    let targets: Targets = Arc::new(move || {
        let up = targets_of.upgrade()?;
        let list = up
            .endpoints
            .load()
            .iter()
            .map(|e| CheckTarget {
                addr: e.addr,
                health: e.health.clone(),
                pool: e.pool.clone(),
            })
            .collect();
        Some(list)
    });
    let on_change: OnChange = Arc::new(move |addr, healthy| {
        let Some(up) = weak.upgrade() else { return };
        if healthy {
            tracing::info!(upstream = %up.name, endpoint = %addr, "endpoint healthy again");
        } else {
            tracing::warn!(upstream = %up.name, endpoint = %addr, "endpoint failed its health checks");
        }
        up.refresh_health_gauges();
    });
    spawn_checks(cfg, targets, on_change).abort_handle()
}

/// Whether endpoints built for `a` can serve `b` unchanged: the settings of their connections.
fn same_transport(a: &file::Upstream, b: &file::Upstream) -> bool {
    a.connect_timeout == b.connect_timeout
        && a.pool_max_idle == b.pool_max_idle
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.max_connections == b.max_connections
        && a.tls == b.tls
        && a.protocol == b.protocol
}

/// The host part of a `host:port` endpoint.
fn host_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h)
}

/// The port of a `host:port` endpoint: every address its name resolves to has it.
fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// The OS resolver (`getaddrinfo` on tokio's blocking pool).
fn system_lookup() -> Lookup {
    Arc::new(|endpoint: &str| {
        let endpoint = endpoint.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host(endpoint).await?.collect()) })
    })
}

// === impl Endpoint ===

impl Endpoint {
    fn new(
        addr: SocketAddr,
        host: Option<Arc<str>>,
        cfg: &file::Upstream,
        tls: Option<&Arc<ArcSwap<ClientConfig>>>,
        metrics: &UpstreamMetrics,
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
        let open = metrics.connections(&label);
        Arc::new(Endpoint {
            addr,
            host,
            label,
            authority,
            health: Arc::new(EndpointHealth::new()),
            hold_until: AtomicU64::new(0),
            pool: Pool::new(
                PoolSettings {
                    max_idle: cfg.pool_max_idle as usize,
                    max_connections: cfg.max_connections as usize,
                    connect_timeout: cfg.connect_timeout.0,
                    idle_timeout: cfg.pool_idle_timeout.0,
                    http2: cfg.protocol == file::UpstreamProtocol::Http2,
                },
                tls,
                open,
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

/// Resolves names now and every `every`, until a reload retires the upstream (or it is
/// dropped). `start` holds, per target, the addresses the upstream starts with (those a reload
/// carried over): a name whose lookup fails keeps its last addresses, these until it resolves
/// once.
///
/// A retired upstream lives on while requests begun under it are in flight (or its listener
/// drains), but its loop stops at once: the endpoints it shares with its successor (same
/// address) have the successor's metric series, which an answer seen only by the old loop
/// would remove, and an address only it saw would get series under a name a reload may have
/// removed.
async fn resolve_loop(
    up: Weak<Upstream>,
    targets: Vec<Target>,
    start: Vec<Found>,
    every: Duration,
    lookup: Lookup,
) {
    let mut last = start;
    loop {
        if live(&up).is_none() {
            // Replaced by a reload or removed while asleep: no lookup for it any more.
            return;
        }
        for (i, t) in targets.iter().enumerate() {
            match t {
                Target::Addr(a) => last[i] = vec![(*a, None)],
                Target::Name(n) => match lookup(n).await {
                    Ok(mut v) => {
                        let host: Arc<str> = Arc::from(host_of(n));
                        v.sort();
                        v.dedup();
                        if !v.is_empty() {
                            last[i] = v.into_iter().map(|a| (a, Some(host.clone()))).collect();
                        }
                    }
                    Err(e) if last[i].is_empty() => {
                        tracing::warn!(endpoint = %n, error = %e, "dns lookup failed; no addresses yet")
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %n, error = %e, "dns lookup failed; keeping last addresses")
                    }
                },
            }
        }
        // Retired during the lookups: the answer is the new generation's to apply.
        let Some(up) = live(&up) else { return };
        let mut all: Found = last.iter().flatten().cloned().collect();
        all.dedup();
        up.set_resolved(all);
        drop(up);
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
    }
}

/// The upstream behind `up`, unless it was dropped or a reload retired it.
fn live(up: &Weak<Upstream>) -> Option<Arc<Upstream>> {
    up.upgrade().filter(|u| !u.retired.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests;
