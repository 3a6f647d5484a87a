//! Every metric rampart exports (SPEC §5), named in one place, with label handles cached.
//!
//! To add a metric: declare its name and help in [`Metrics::register`], keep a field for the
//! vector, and hand out handles from a per-route / per-upstream struct built once (at config load
//! or first sight of a tenant label), never by formatting labels per request.
//!
//! Each [`crate::Rampart`] owns one `Registry`, so several proxies in one test process keep
//! their numbers apart.

mod shard;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub use self::shard::{Counter, Family, Gauge as HeldGauge, Held, Histogram};

/// The metric families of one rampart instance.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    requests: Family<Counter>,
    request_duration: Family<Histogram>,
    upstream_requests: Family<Counter>,
    upstream_duration: Family<Histogram>,
    upstream_abandoned: IntCounterVec,
    upstream_unsent: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    in_flight: Family<HeldGauge>,
    open_connections: IntGaugeVec,
    rate_limited: IntCounterVec,
    /// `rampart_shed_total{listener, route, tenant, reason}`.
    pub shed: IntCounterVec,
    /// `rampart_circuit_breaker_state{upstream, tenant, state}`.
    pub breaker_state: IntGaugeVec,
    /// `rampart_circuit_breaker_transitions_total{upstream, from, to}`.
    pub breaker_transitions: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    retry_circuit_open: IntCounterVec,
    timeouts: IntCounterVec,
    /// `rampart_upstream_endpoint_healthy{upstream, endpoint}`.
    pub endpoint_healthy: IntGaugeVec,
    /// `rampart_upstream_connections{upstream, endpoint}` (not in SPEC §5: added).
    pub upstream_connections: IntGaugeVec,
    /// `rampart_tenants_tracked`.
    pub tenants_tracked: IntGauge,
    /// `rampart_queue_depth{listener, route}`.
    pub queue_depth: IntGaugeVec,
    /// `rampart_concurrency_limit{route, upstream}`.
    pub concurrency_limit: IntGaugeVec,
    /// `rampart_ratelimit_backend_errors_total{backend}`.
    pub ratelimit_backend_errors: IntCounterVec,
    /// `rampart_global_store_up` (no labels; exported once a store is configured).
    pub global_store_up: IntGaugeVec,
    /// `rampart_ratelimit_store_fallbacks_total{route}`.
    pub store_fallbacks: IntCounterVec,
    /// `rampart_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `rampart_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: Gauge,
    /// `rampart_config_info{sha256}`.
    pub config_info: IntGaugeVec,
    /// `rampart_access_log_dropped_total`.
    pub access_log_dropped: IntCounter,
    /// `rampart_audit_write_failures_total`.
    pub audit_write_failures: IntCounter,
    /// `rampart_log_lines_dropped_total`: kept up with `crate::logging::dropped_lines` at
    /// every render.
    log_lines_dropped: IntCounter,
    /// What of `dropped_lines` `log_lines_dropped` holds.
    log_lines_synced: Arc<AtomicU64>,
    /// `rampart_trace_spans_exported_total`.
    pub trace_spans_exported: IntCounter,
    /// `rampart_trace_spans_dropped_total{reason}`.
    pub trace_spans_dropped: IntCounterVec,
    /// `rampart_faults_injected_total{route, kind}`.
    pub faults_injected: IntCounterVec,
    /// `rampart_fallbacks_total{route, kind, reason}`.
    pub fallbacks: IntCounterVec,
    /// `rampart_idempotency_keys{route}`.
    pub idempotency_keys: IntGaugeVec,
    /// `rampart_idempotency_bytes{route}`.
    pub idempotency_bytes: IntGaugeVec,
}

/// Cached handles for one route: what the request path touches on every request.
#[derive(Debug)]
pub struct RouteMetrics {
    listener: Arc<str>,
    route: Arc<str>,
    metrics: Metrics,
    by_tenant: DashMap<Arc<str>, Arc<TenantMetrics>, foldhash::fast::RandomState>,
    /// Set when a reload took the route away ([`RouteMetrics::retire`]): series its requests
    /// still in flight see first are made unexported, so they do not bring back what the
    /// reload removed.
    retired: Arc<AtomicBool>,
    /// `rampart_retries_total{route, upstream}`.
    pub retries: IntCounter,
    /// `rampart_retry_budget_exhausted_total{route, upstream}`.
    pub retry_budget_exhausted: IntCounter,
    /// `rampart_retry_circuit_open_total{route, upstream}` (not in SPEC §5: added).
    pub retry_circuit_open: IntCounter,
    /// `rampart_timeouts_total{route, upstream, kind="request"}`.
    pub timeout_request: IntCounter,
    /// `rampart_timeouts_total{route, upstream, kind="per_try"}`.
    pub timeout_per_try: IntCounter,
    /// `rampart_timeouts_total{route, upstream, kind="connect"}`.
    pub timeout_connect: IntCounter,
    /// `rampart_timeouts_total{route, upstream, kind="idle"}`: `timeout.idle` cut a try
    /// before its answer's head, or an answer's body.
    pub timeout_idle: IntCounter,
}

/// Cached handles for one (route, tenant label).
#[derive(Debug)]
pub struct TenantMetrics {
    labels: [Arc<str>; 3],
    /// Its route's `retired`.
    retired: Arc<AtomicBool>,
    requests: Family<Counter>,
    codes: CodeCounters,
    /// `rampart_request_duration_seconds{listener, route, tenant}`.
    pub duration: Arc<Histogram>,
    rate_limited: IntCounterVec,
    /// `rampart_rate_limited_total{listener, route, tenant, limit}` by limit name.
    limits: ArcSwap<Vec<(Box<str>, IntCounter)>>,
    shed_vec: IntCounterVec,
    /// `rampart_shed_total{listener, route, tenant, reason}`, made on first use per reason.
    shed: [std::sync::OnceLock<IntCounter>; SHED_REASONS.len()],
}

/// The `backend` label of `rampart_ratelimit_backend_errors_total`: Redis, the only global
/// store rampart speaks to.
pub const RATELIMIT_BACKEND: &str = "redis";

/// The `reason` values of `rampart_shed_total`, in `ShedReason` order.
pub const SHED_REASONS: [&str; 6] = [
    "max_in_flight",
    "tenant_in_flight",
    "queue_full",
    "queue_timeout",
    "priority",
    "adaptive",
];

/// Why a request was never sent to its upstream (`rampart_upstream_unsent_total`'s `cause`):
/// what it waited for in rampart when its deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsent {
    /// A connection of the endpoint's pool: `max_connections` open, none idle.
    PoolFull = 0,
    /// A stream of the endpoint's HTTP/2 connection, at its limit of concurrent streams.
    StreamSlot = 1,
}

// === impl Unsent ===

impl Unsent {
    const ALL: [Unsent; 2] = [Unsent::PoolFull, Unsent::StreamSlot];

    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            Unsent::PoolFull => "pool_full",
            Unsent::StreamSlot => "stream_slot",
        }
    }
}

/// Cached handles for one upstream.
#[derive(Debug)]
pub struct UpstreamMetrics {
    name: Arc<str>,
    /// Set when a reload took the upstream (its name) away: as [`RouteMetrics`]' `retired`.
    retired: AtomicBool,
    client_gone: IntCounter,
    client_fault: IntCounter,
    /// The family, for `cause="shutdown"`, made when a try is first cut (rare).
    abandoned: IntCounterVec,
    /// `rampart_upstream_unsent_total{upstream, cause}`, by [`Unsent`].
    unsent: [IntCounter; 2],
    requests: Family<Counter>,
    endpoint_healthy: IntGaugeVec,
    connections: IntGaugeVec,
    codes: CodeCounters,
    /// `rampart_upstream_request_duration_seconds{upstream}`.
    pub duration: Arc<Histogram>,
}

// === impl Metrics ===

impl Metrics {
    /// Creates a registry and registers every family in it.
    pub fn register() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            v
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            v
        };
        // The families every request updates: one cell per worker (see `shard.rs`).
        let requests = per_worker(
            &registry,
            "rampart_requests_total",
            "Requests answered, by listener, route, tenant and status code.",
            &["listener", "route", "tenant", "code"],
        );
        let request_duration = per_worker(
            &registry,
            "rampart_request_duration_seconds",
            "Time from request received to response head sent, seconds.",
            &["listener", "route", "tenant"],
        );
        let upstream_requests = per_worker(
            &registry,
            "rampart_upstream_requests_total",
            "Tries against upstreams, by status (failed tries: 502 connect/reset, 504 timeout); a request whose deadline passed while it waited in rampart for a connection or stream was never sent and is no try (rampart_upstream_unsent_total).",
            &["upstream", "code"],
        );
        let upstream_duration = per_worker(
            &registry,
            "rampart_upstream_request_duration_seconds",
            "Duration of one try against an upstream, seconds.",
            &["upstream"],
        );
        let upstream_abandoned = counter(
            "rampart_upstream_tries_abandoned_total",
            "Tries ended by the client, not the upstream (cause: client_gone, client_fault), or cut by rampart's drain (cause: shutdown); kept out of rampart_upstream_requests_total.",
            &["upstream", "cause"],
        );
        let upstream_unsent = counter(
            "rampart_upstream_unsent_total",
            "Requests answered 504 (or a CONNECT 502) because their deadline passed while they waited in rampart for a place on the endpoint's connections, never sent, by cause (pool_full: max_connections in use; stream_slot: the HTTP/2 connection's stream limit); not tries: kept out of rampart_upstream_requests_total, breakers, outlier detection and latency.",
            &["upstream", "cause"],
        );
        let tls_handshake_failures = counter(
            "rampart_tls_handshake_failures_total",
            "TLS handshakes that failed on a listener, by reason (timeout, no_client_cert, bad_client_cert, protocol, io).",
            &["listener", "reason"],
        );
        let in_flight = per_worker(
            &registry,
            "rampart_in_flight_requests",
            "Requests being handled now, from arrival to the end of their answer, those waiting in a load-shed queue included.",
            &["listener"],
        );
        let open_connections = gauge(
            "rampart_open_connections",
            "Client connections open now, by the worker serving them.",
            &["worker"],
        );
        let rate_limited = counter(
            "rampart_rate_limited_total",
            "Requests refused by a rate limit, by the limit that refused.",
            &["listener", "route", "tenant", "limit"],
        );
        let shed = counter(
            "rampart_shed_total",
            "Requests refused by load shedding.",
            &["listener", "route", "tenant", "reason"],
        );
        let breaker_state = gauge(
            "rampart_circuit_breaker_state",
            "1 for the breaker state in force, 0 for the others.",
            &["upstream", "tenant", "state"],
        );
        let breaker_transitions = counter(
            "rampart_circuit_breaker_transitions_total",
            "Circuit breaker state changes.",
            &["upstream", "from", "to"],
        );
        let retries = counter(
            "rampart_retries_total",
            "Retries sent (tries after the first).",
            &["route", "upstream"],
        );
        let retry_budget_exhausted = counter(
            "rampart_retry_budget_exhausted_total",
            "Retries not sent because the retry budget was spent.",
            &["route", "upstream"],
        );
        let retry_circuit_open = counter(
            "rampart_retry_circuit_open_total",
            "Retries not sent because the upstream's circuit breaker refused them.",
            &["route", "upstream"],
        );
        let timeouts = counter(
            "rampart_timeouts_total",
            "Timeouts that fired, by kind (request, per_try, connect, idle).",
            &["route", "upstream", "kind"],
        );
        let endpoint_healthy = gauge(
            "rampart_upstream_endpoint_healthy",
            "1 when the endpoint is healthy, 0 when not.",
            &["upstream", "endpoint"],
        );
        let upstream_connections = gauge(
            "rampart_upstream_connections",
            "Connections open (or being opened) to an endpoint, in use or idle in its pool.",
            &["upstream", "endpoint"],
        );
        let tenants_tracked = IntGauge::new(
            "rampart_tenants_tracked",
            "Per-tenant state entries in memory.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(tenants_tracked.clone()))
            .expect("unique metric");
        let queue_depth = gauge(
            "rampart_queue_depth",
            "Requests waiting for a load-shedding slot.",
            &["listener", "route"],
        );
        let concurrency_limit = gauge(
            "rampart_concurrency_limit",
            "Concurrency limit in force (adaptive load shedding).",
            &["route", "upstream"],
        );
        let ratelimit_backend_errors = counter(
            "rampart_ratelimit_backend_errors_total",
            "Errors talking to a global rate limit backend (failed or timed-out calls, failed connects).",
            &["backend"],
        );
        // Present at 0 from the start, store configured or not (SPEC §5 lists it
        // unconditionally), so `rate()` over it reads 0 rather than no data. `redis` is the one
        // backend there is, so it is the only value the label can take.
        ratelimit_backend_errors.with_label_values(&[RATELIMIT_BACKEND]);
        let global_store_up = gauge(
            "rampart_global_store_up",
            "1 while the global store answers, 0 while its breaker is open or it is unreachable.",
            &[],
        );
        let store_fallbacks = counter(
            "rampart_ratelimit_store_fallbacks_total",
            "Global rate-limit decisions made by on_store_error because the store was down or slow.",
            &["route"],
        );
        let config_reloads = counter(
            "rampart_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        // Both results exist from the start, so a rate() over them never starts from nothing.
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_last_success = Gauge::new(
            "rampart_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_last_success.clone()))
            .expect("unique metric");
        let config_info = gauge(
            "rampart_config_info",
            "Always 1; the sha256 label names the configuration in force.",
            &["sha256"],
        );
        let access_log_dropped = IntCounter::new(
            "rampart_access_log_dropped_total",
            "Access log lines that did not reach their destination: dropped while the writer fell behind, or lost to a failed write or a log file that could not be opened.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(access_log_dropped.clone()))
            .expect("unique metric");
        let log_lines_dropped = IntCounter::new(
            "rampart_log_lines_dropped_total",
            "rampart's own log lines dropped because stdout did not take them in time (its queue was full).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(log_lines_dropped.clone()))
            .expect("unique metric");
        let audit_write_failures = counter(
            "rampart_audit_write_failures_total",
            "Audit trail entries that could not be written (the proxy serves on).",
            &[],
        )
        .with_label_values::<&str>(&[]);
        let trace_spans_exported = counter(
            "rampart_trace_spans_exported_total",
            "Spans the OTLP collector accepted.",
            &[],
        )
        .with_label_values::<&str>(&[]);
        let trace_spans_dropped = counter(
            "rampart_trace_spans_dropped_total",
            "Spans dropped: queue_full (the exporter fell behind; requests never wait) or export_failed (the collector refused or could not be reached).",
            &["reason"],
        );
        // Both reasons exist from the start, with or without `tracing`, as the exported count
        // does: a rate() over them reads 0, not no data.
        for reason in ["queue_full", "export_failed"] {
            trace_spans_dropped.with_label_values(&[reason]);
        }
        let faults_injected = counter(
            "rampart_faults_injected_total",
            "Faults injected on purpose (policy fault), by kind: delay or abort.",
            &["route", "kind"],
        );
        let fallbacks = counter(
            "rampart_fallbacks_total",
            "Fallback answers given instead of rampart's own error, by kind (stale or static) and the reason replaced.",
            &["route", "kind", "reason"],
        );
        let idempotency_keys = gauge(
            "rampart_idempotency_keys",
            "Idempotency keys held in memory (in flight or kept for replay), per route.",
            &["route"],
        );
        let idempotency_bytes = gauge(
            "rampart_idempotency_bytes",
            "Bytes of answers kept in memory for idempotent replay (bodies, header and trailer fields), per route.",
            &["route"],
        );
        Metrics {
            access_log_dropped,
            registry,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_abandoned,
            upstream_unsent,
            tls_handshake_failures,
            in_flight,
            open_connections,
            rate_limited,
            shed,
            breaker_state,
            breaker_transitions,
            retries,
            retry_budget_exhausted,
            retry_circuit_open,
            timeouts,
            endpoint_healthy,
            upstream_connections,
            tenants_tracked,
            queue_depth,
            concurrency_limit,
            ratelimit_backend_errors,
            global_store_up,
            store_fallbacks,
            config_reloads,
            config_last_success,
            config_info,
            audit_write_failures,
            log_lines_dropped,
            log_lines_synced: Arc::default(),
            trace_spans_exported,
            trace_spans_dropped,
            faults_injected,
            fallbacks,
            idempotency_keys,
            idempotency_bytes,
        }
    }

    /// The in-flight gauge of a listener.
    pub fn in_flight(&self, listener: &str) -> Arc<HeldGauge> {
        self.in_flight.with_label_values(&[listener])
    }

    /// `rampart_open_connections{worker}` of worker `worker` (see `proxy::balance`).
    pub fn open_connections(&self, worker: usize) -> IntGauge {
        self.open_connections
            .with_label_values(&[worker.to_string().as_str()])
    }

    /// Handles for one route.
    pub fn route(
        &self,
        listener: &Arc<str>,
        route: &Arc<str>,
        upstream: &Arc<str>,
    ) -> RouteMetrics {
        let two = |v: &IntCounterVec| v.with_label_values(&[route, upstream]);
        let t = |kind: &str| self.timeouts.with_label_values(&[route, upstream, kind]);
        let counters = [
            two(&self.retries),
            two(&self.retry_budget_exhausted),
            two(&self.retry_circuit_open),
            t("request"),
            t("per_try"),
            t("connect"),
            t("idle"),
        ];
        self.route_with(listener, route, counters)
    }

    /// Handles for requests of `listener` that matched no route: they count in
    /// `rampart_requests_total` and the duration histogram (route ""), but have no upstream,
    /// so their retry and timeout handles are left out of the registry.
    pub fn unrouted(&self, listener: &Arc<str>) -> RouteMetrics {
        let detached =
            || IntCounter::new("rampart_unrouted", "not exported").expect("valid metric");
        self.route_with(
            listener,
            &Arc::from(""),
            std::array::from_fn(|_| detached()),
        )
    }

    /// `counters`: retries, retry budget exhausted, retry circuit open, timeouts request /
    /// per_try / connect / idle.
    fn route_with(
        &self,
        listener: &Arc<str>,
        route: &Arc<str>,
        counters: [IntCounter; 7],
    ) -> RouteMetrics {
        let [retries, retry_budget_exhausted, retry_circuit_open, timeout_request, timeout_per_try, timeout_connect, timeout_idle] =
            counters;
        RouteMetrics {
            listener: listener.clone(),
            route: route.clone(),
            metrics: self.clone(),
            by_tenant: DashMap::default(),
            retired: Arc::default(),
            retries,
            retry_budget_exhausted,
            retry_circuit_open,
            timeout_request,
            timeout_per_try,
            timeout_connect,
            timeout_idle,
        }
    }

    /// `rampart_tls_handshake_failures_total` handles of one listener, one per reason (the
    /// series exist at 0 from the start, so a rate can be taken before the first failure).
    pub fn tls_failures(&self, listener: &str) -> Vec<(&'static str, IntCounter)> {
        crate::tls::HandshakeError::REASONS
            .iter()
            .map(|r| {
                let c = self
                    .tls_handshake_failures
                    .with_label_values(&[listener, r]);
                (*r, c)
            })
            .collect()
    }

    /// Handles for one upstream.
    pub fn upstream(&self, name: &Arc<str>) -> UpstreamMetrics {
        UpstreamMetrics {
            client_gone: self
                .upstream_abandoned
                .with_label_values(&[name, "client_gone"]),
            client_fault: self
                .upstream_abandoned
                .with_label_values(&[name, "client_fault"]),
            abandoned: self.upstream_abandoned.clone(),
            unsent: Unsent::ALL.map(|c| self.upstream_unsent.with_label_values(&[name, c.label()])),
            name: name.clone(),
            retired: AtomicBool::new(false),
            requests: self.upstream_requests.clone(),
            endpoint_healthy: self.endpoint_healthy.clone(),
            connections: self.upstream_connections.clone(),
            codes: CodeCounters::default(),
            duration: self.upstream_duration.with_label_values(&[name]),
        }
    }

    /// Sets `rampart_config_info` to name `sha256` alone: the new series first, then the
    /// others go, so a scrape meanwhile sees one or, for an instant, both; never none.
    pub fn set_config_info(&self, sha256: &str) {
        self.config_info.with_label_values(&[sha256]).set(1);
        retain(&self.config_info, |l| label(l, "sha256") == sha256);
    }

    /// Drops the series of what a reload took away: a breaker, an endpoint or an upstream, a
    /// route, a listener, a route's shedder or idempotency store, the global store. Left
    /// behind, a gauge keeps its last value for ever (a breaker's `open` at 1 fires its alert
    /// after the breaker is gone; a removed endpoint reads healthy), and the series of routes
    /// renamed by every reload would grow `/metrics` without bound. A counter of a name that
    /// comes back starts again from 0, which `rate()` reads as a counter reset. Called after
    /// the new generation is in force (the old one's routes and upstreams already retired, so
    /// their requests still in flight make no series again), never on the request path.
    pub fn retain_live(&self, live: &LiveSeries) {
        let listener_route = |l: &HashMap<&str, &str>| {
            let (li, r) = (label(l, "listener"), label(l, "route"));
            live.routes.get(li).is_some_and(|rs| rs.contains(r))
        };
        self.requests.retain(listener_route);
        self.request_duration.retain(listener_route);
        retain(&self.rate_limited, listener_route);
        retain(&self.shed, listener_route);
        self.in_flight
            .retain(|l| live.routes.contains_key(label(l, "listener")));
        retain(&self.tls_handshake_failures, |l| {
            live.tls_listeners.contains(label(l, "listener"))
        });
        let route_upstream = |l: &HashMap<&str, &str>| {
            let (r, u) = (label(l, "route"), label(l, "upstream"));
            live.route_upstreams.get(r).is_some_and(|us| us.contains(u))
        };
        retain(&self.retries, route_upstream);
        retain(&self.retry_budget_exhausted, route_upstream);
        retain(&self.retry_circuit_open, route_upstream);
        retain(&self.timeouts, route_upstream);
        let route = |l: &HashMap<&str, &str>| live.route_upstreams.contains_key(label(l, "route"));
        retain(&self.store_fallbacks, route);
        retain(&self.faults_injected, route);
        retain(&self.fallbacks, route);
        let idempotent = |l: &HashMap<&str, &str>| live.idempotency.contains(label(l, "route"));
        retain(&self.idempotency_keys, idempotent);
        retain(&self.idempotency_bytes, idempotent);
        let upstream = |l: &HashMap<&str, &str>| live.upstreams.contains(label(l, "upstream"));
        self.upstream_requests.retain(upstream);
        self.upstream_duration.retain(upstream);
        retain(&self.upstream_abandoned, upstream);
        retain(&self.upstream_unsent, upstream);
        retain(&self.breaker_transitions, upstream);
        retain(&self.breaker_state, |l| {
            // Scope tenant has a set of series per tenant label, scope upstream one with "".
            let per_tenant = l.get("tenant").is_some_and(|t| !t.is_empty());
            let upstream = l.get("upstream").copied().unwrap_or_default();
            live.breakers.get(upstream) == Some(&per_tenant)
        });
        let endpoint = |l: &HashMap<&str, &str>| {
            let key = (l.get("upstream").copied(), l.get("endpoint").copied());
            live.endpoints
                .iter()
                .any(|(u, e)| key == (Some(&**u), Some(&**e)))
        };
        retain(&self.endpoint_healthy, endpoint);
        retain(&self.upstream_connections, endpoint);
        retain(&self.queue_depth, |l| {
            let key = (l.get("listener").copied(), l.get("route").copied());
            live.shed_routes
                .iter()
                .any(|(li, r, _)| key == (Some(&**li), Some(&**r)))
        });
        retain(&self.concurrency_limit, |l| {
            let key = (l.get("route").copied(), l.get("upstream").copied());
            live.shed_routes
                .iter()
                .any(|(_, r, u)| key == (Some(&**r), Some(&**u)))
        });
        retain(&self.global_store_up, |_| live.store);
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        self.sync_log_lines_dropped(crate::logging::dropped_lines());
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }
}

// === impl Metrics: the process's log ===

impl Metrics {
    /// Brings `rampart_log_lines_dropped_total` up to `dropped` (the log's own count, which
    /// only grows); two renders at once add each line once.
    fn sync_log_lines_dropped(&self, dropped: u64) {
        let before = self.log_lines_synced.fetch_max(dropped, Ordering::Relaxed);
        if dropped > before {
            self.log_lines_dropped.inc_by(dropped - before);
        }
    }
}

/// What a generation in force has gauges for (see [`Metrics::retain_live`]).
#[derive(Debug, Default)]
pub struct LiveSeries {
    /// Upstreams with a breaker, and whether its scope is `tenant`.
    pub breakers: HashMap<Arc<str>, bool>,
    /// `(upstream, endpoint)` of every endpoint.
    pub endpoints: Vec<(Arc<str>, Arc<str>)>,
    /// `(listener, route, upstream)` of every route with `load_shed`.
    pub shed_routes: Vec<(Arc<str>, Arc<str>, Arc<str>)>,
    /// Whether a global store is configured.
    pub store: bool,
    /// The route labels of each listener (`""`, the label of requests no route matched,
    /// among them).
    pub routes: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// The upstreams each route label sends to.
    pub route_upstreams: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Listeners with `tls`.
    pub tls_listeners: HashSet<Arc<str>>,
    /// Route labels with `idempotency`.
    pub idempotency: HashSet<Arc<str>>,
    /// Upstream names.
    pub upstreams: HashSet<Arc<str>>,
}

/// The value of label `name` (`""` when absent).
fn label<'a>(labels: &HashMap<&str, &'a str>, name: &str) -> &'a str {
    labels.get(name).copied().unwrap_or_default()
}

/// Removes the series of `vec` whose labels (name to value) `keep` refuses.
fn retain<B: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<B>,
    keep: impl Fn(&HashMap<&str, &str>) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if !keep(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Handles for `tenant_label` on this route (created on first sight of the label).
    pub fn tenant(&self, tenant_label: &Arc<str>) -> Arc<TenantMetrics> {
        if let Some(t) = self.by_tenant.get(tenant_label) {
            return t.clone();
        }
        let m = &self.metrics;
        let labels = [
            self.listener.clone(),
            self.route.clone(),
            tenant_label.clone(),
        ];
        let l3: [&str; 3] = [&labels[0], &labels[1], &labels[2]];
        let retired = self.retired.load(Ordering::Relaxed);
        let t = Arc::new(TenantMetrics {
            duration: match retired {
                true => Arc::default(),
                false => m.request_duration.with_label_values(&l3),
            },
            retired: self.retired.clone(),
            rate_limited: m.rate_limited.clone(),
            limits: ArcSwap::from_pointee(Vec::new()),
            shed_vec: m.shed.clone(),
            shed: Default::default(),
            requests: m.requests.clone(),
            codes: CodeCounters::default(),
            labels,
        });
        self.by_tenant
            .entry(tenant_label.clone())
            .or_insert(t)
            .clone()
    }

    /// The handles of `tenant`'s requests on this route, its label given by `labels`.
    ///
    /// Looked up by the id itself first: the map is keyed by label, a tenant's label is its own
    /// id unless it is folded, and a label once given stays (`Labels`). So the usual request
    /// hashes its id once and never touches the label map; a folded tenant's id is not a key
    /// (ids are never empty, and `_other` as an id has `_other` as its label either way), so it
    /// goes through `labels` to `_other`.
    pub fn tenant_of(&self, tenant: &str, labels: &crate::tenant::Labels) -> Arc<TenantMetrics> {
        if let Some(t) = self.by_tenant.get(tenant) {
            return t.clone();
        }
        self.tenant(&labels.label(tenant))
    }

    /// Marks the route taken away by a reload (see `retired`).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }
}

// === impl TenantMetrics ===

impl TenantMetrics {
    /// Counts one request shed for `reason` (one of [`SHED_REASONS`]); the series is made on
    /// the first shed of that reason, so tenants never shed export none.
    pub fn shed(&self, reason: &'static str) {
        let Some(i) = SHED_REASONS.iter().position(|r| *r == reason) else {
            return;
        };
        self.shed[i]
            .get_or_init(|| {
                let l = &self.labels;
                if self.retired.load(Ordering::Relaxed) {
                    return unexported();
                }
                self.shed_vec
                    .with_label_values(&[&*l[0], &*l[1], &*l[2], reason])
            })
            .inc();
    }

    /// Counts one answered request with status `code`.
    pub fn count(&self, code: u16) {
        count_code(&self.codes, code, || {
            if self.retired.load(Ordering::Relaxed) {
                return Arc::default();
            }
            let l = &self.labels;
            let code = code.to_string();
            self.requests
                .with_label_values(&[&*l[0], &*l[1], &*l[2], code.as_str()])
        });
    }

    /// Counts one refusal by the rate limit named `limit` (its handle made on first sight).
    pub fn rate_limited(&self, limit: &str) {
        if let Some((_, c)) = self.limits.load().iter().find(|(k, _)| &**k == limit) {
            c.inc();
            return;
        }
        let l = &self.labels;
        let c = match self.retired.load(Ordering::Relaxed) {
            true => unexported(),
            false => self
                .rate_limited
                .with_label_values(&[&*l[0], &*l[1], &*l[2], limit]),
        };
        c.inc();
        self.limits.rcu(|v| {
            let mut v = Vec::clone(v);
            if !v.iter().any(|(k, _)| &**k == limit) {
                v.push((Box::from(limit), c.clone()));
            }
            v
        });
    }
}

// === impl UpstreamMetrics ===

impl UpstreamMetrics {
    /// Sets `rampart_upstream_endpoint_healthy{upstream, endpoint}` (not on the request path).
    pub fn set_endpoint_healthy(&self, endpoint: &str, healthy: bool) {
        self.endpoint_healthy
            .with_label_values(&[&*self.name, endpoint])
            .set(i64::from(healthy));
    }

    /// Counts a try the client ended (gone, or a broken upload), or rampart cut (its
    /// connection's task dropped unfinished at the end of a drain's grace: `finish::Cut`).
    pub fn abandoned(&self, outcome: crate::policy::outcome::Outcome) {
        match outcome {
            crate::policy::outcome::Outcome::ClientFault => self.client_fault.inc(),
            _ if crate::proxy::finish::cutting() => {
                if !self.retired.load(Ordering::Relaxed) {
                    self.abandoned
                        .with_label_values(&[&*self.name, "shutdown"])
                        .inc();
                }
            }
            _ => self.client_gone.inc(),
        }
    }

    /// Counts a request never sent: its deadline passed while it waited in rampart (`cause`).
    pub fn unsent(&self, cause: Unsent) {
        self.unsent[cause as usize].inc();
    }

    /// `rampart_upstream_connections{upstream, endpoint}`, for the endpoint's pool to count
    /// its connections on (made once per endpoint, not on the request path).
    pub fn connections(&self, endpoint: &str) -> IntGauge {
        self.connections.with_label_values(&[&*self.name, endpoint])
    }

    /// Marks the upstream's name taken away by a reload: its requests still in flight make no
    /// series again.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Drops the series of an endpoint that left the upstream.
    pub fn remove_endpoint(&self, endpoint: &str) {
        let _ = self
            .endpoint_healthy
            .remove_label_values(&[&*self.name, endpoint]);
        let _ = self
            .connections
            .remove_label_values(&[&*self.name, endpoint]);
    }

    /// Counts one try that ended with `code`.
    pub fn count(&self, code: u16) {
        count_code(&self.codes, code, || {
            if self.retired.load(Ordering::Relaxed) {
                return Arc::default();
            }
            let code = code.to_string();
            self.requests
                .with_label_values(&[&*self.name, code.as_str()])
        });
    }
}

/// A counter that is not exported: what a retired route's first sight of a label gets.
fn unexported() -> IntCounter {
    IntCounter::new("rampart_retired", "not exported").expect("valid metric")
}

/// Counter handles by status code, made on first sight of each code: the common codes in
/// slots of their own (found with one atomic load, where a list behind an `ArcSwap` cost a
/// load of the list and a walk, twice per request), any other in a list.
#[derive(Debug, Default)]
struct CodeCounters {
    common: [std::sync::OnceLock<Arc<Counter>>; COMMON_CODES.len()],
    other: ArcSwap<Vec<(u16, Arc<Counter>)>>,
}

/// A family of per-worker series (see `shard.rs`), registered in `registry`.
fn per_worker<S: shard::Series>(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Family<S> {
    let v = Family::new(name, help, labels).expect("valid metric");
    registry.register(v.collector()).expect("unique metric");
    v
}

/// The codes with a slot of their own in [`CodeCounters`].
const COMMON_CODES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504, 206,
];

/// Where `code` is in [`COMMON_CODES`] (the most frequent first, so the walk is short).
fn common_slot(code: u16) -> Option<usize> {
    COMMON_CODES.iter().position(|&c| c == code)
}

/// Increments the counter of `code`, creating its handle on first sight only.
fn count_code(cache: &CodeCounters, code: u16, make: impl FnOnce() -> Arc<Counter>) {
    if let Some(i) = common_slot(code) {
        cache.common[i].get_or_init(make).inc();
        return;
    }
    if let Some((_, c)) = cache.other.load().iter().find(|(k, _)| *k == code) {
        c.inc();
        return;
    }
    let c = make();
    c.inc();
    cache.other.rcu(|v| {
        let mut v = Vec::clone(v);
        if !v.iter().any(|(k, _)| *k == code) {
            v.push((code, c.clone()));
        }
        v
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_code_has_its_own_slot() {
        for (i, code) in COMMON_CODES.iter().enumerate() {
            assert_eq!(common_slot(*code), Some(i), "{code}");
        }
        assert_eq!(common_slot(418), None);
    }

    #[test]
    fn a_tenant_found_by_its_id_has_the_handles_its_label_gives() {
        let m = Metrics::register();
        let (lst, route, up) = (Arc::from("inbound"), Arc::from("api"), Arc::from("app"));
        let rm = m.route(&lst, &route, &up);
        let labels = crate::tenant::Labels::new(2);
        labels.pin(["vip"]);
        // Under the cap, pinned, folded past the cap, and an id that reads like the fold.
        for id in ["a", "b", "vip", "c", "d", "_other", "a", "vip", "c"] {
            let by_id = rm.tenant_of(id, &labels);
            let by_label = rm.tenant(&labels.label(id));
            assert!(Arc::ptr_eq(&by_id, &by_label), "{id}");
        }
        let folded = rm.tenant_of("c", &labels);
        assert_eq!(&*folded.labels[2], crate::tenant::OTHER_LABEL);
        assert!(Arc::ptr_eq(&folded, &rm.tenant_of("d", &labels)));
        assert_eq!(&*rm.tenant_of("vip", &labels).labels[2], "vip");
        // One entry per label: a, b, vip and the fold; folded ids add none.
        assert_eq!(rm.by_tenant.len(), 4);
    }

    /// Requests still in flight on a route a reload took away make no series of it again,
    /// whatever label (tenant, status code, limit, shed reason) they see first.
    #[test]
    fn a_retired_route_brings_back_no_series() {
        let m = Metrics::register();
        let (lst, route, up) = (Arc::from("inbound"), Arc::from("gone"), Arc::from("app"));
        let rm = m.route(&lst, &route, &up);
        let seen = rm.tenant(&Arc::from("a"));
        seen.count(200);
        rm.retire();
        m.retain_live(&LiveSeries::default());
        assert!(!m.render().contains("gone"), "{}", m.render());
        seen.count(200);
        seen.count(418);
        seen.rate_limited("burst");
        seen.shed("queue_full");
        let late = rm.tenant(&Arc::from("b"));
        late.count(200);
        late.duration.observe(std::time::Duration::from_millis(1));
        let text = m.render();
        assert!(!text.contains("gone"), "{text}");
    }

    #[test]
    fn common_and_rare_codes_are_counted_under_their_own_label() {
        let m = Metrics::register();
        let up = m.upstream(&Arc::from("app"));
        for code in [200, 200, 418, 502, 418, 200] {
            up.count(code);
        }
        let text = m.render();
        for (code, n) in [(200, 3), (418, 2), (502, 1)] {
            let line =
                format!("rampart_upstream_requests_total{{code=\"{code}\",upstream=\"app\"}} {n}");
            assert!(text.contains(&line), "no `{line}` in:\n{text}");
        }
    }

    /// The log's own drop count is followed, each line once, however many renders (or clones
    /// of the metrics) see it.
    #[test]
    fn log_lines_dropped_follow_the_log_s_count() {
        let m = Metrics::register();
        let other = m.clone();
        m.sync_log_lines_dropped(3);
        other.sync_log_lines_dropped(3);
        m.sync_log_lines_dropped(2);
        assert_eq!(m.log_lines_dropped.get(), 3);
        other.sync_log_lines_dropped(10);
        assert_eq!(m.log_lines_dropped.get(), 10);
        assert!(m.render().contains("rampart_log_lines_dropped_total 10"));
    }

    /// A scrape while a reload changes `rampart_config_info` sees the new series or, for an
    /// instant, both: never none (an alert on its absence would fire).
    #[test]
    fn config_info_never_vanishes_while_it_changes() {
        use prometheus::core::Collector;
        let m = Metrics::register();
        m.set_config_info("a");
        let series = || -> Vec<String> {
            let families = m.config_info.collect();
            let metrics = families.iter().flat_map(|f| f.get_metric());
            metrics
                .map(|x| x.get_label()[0].value().to_owned())
                .collect()
        };
        let done = AtomicBool::new(false);
        let empty = std::thread::scope(|s| {
            let scraper = s.spawn(|| {
                let mut empty = 0;
                while !done.load(Ordering::Relaxed) {
                    empty += usize::from(series().is_empty());
                }
                empty
            });
            for i in 0..20_000 {
                m.set_config_info(if i % 2 == 0 { "b" } else { "a" });
            }
            done.store(true, Ordering::Relaxed);
            scraper.join().expect("the scraper must not panic")
        });
        assert_eq!(empty, 0, "scrapes that saw no rampart_config_info");
        assert_eq!(series(), ["a"], "the last one set, alone");
    }
}
