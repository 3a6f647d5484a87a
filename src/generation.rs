//! One config generation's runtime: listeners' route tables, upstreams and policy state.
//!
//! A generation is immutable once built and is swapped in whole (arc-swap). Requests load the
//! generation in force when they start and keep it to the end, so a reload never changes the
//! rules under a request in flight.
//!
//! [`Generation::build`] is THE place where state carries over between configs: an upstream
//! whose settings did not change is reused whole (its pool, endpoints and health), and each
//! policy's state is handed to the new generation when its section is unchanged. Each policy
//! module adds its carry-over rule here.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;

use crate::config::file::{self, Direction};
use crate::config::Config;
use crate::metrics::RouteMetrics;
use crate::policy::rate_limit::RateLimiter;
use crate::policy::retry::{Backoff, RetryBudget, RetryOn};
use crate::proxy::route::Matcher;
use crate::proxy::upstream::Upstream;
use crate::tenant::Identify;
use crate::Shared;

/// The runtime of one config.
#[derive(Debug)]
pub struct Generation {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Listeners by their configured address.
    pub listeners: HashMap<SocketAddr, Arc<ListenerRt>, foldhash::fast::RandomState>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Tenant identification rules.
    pub identify: Identify,
}

/// One listener's runtime.
#[derive(Debug)]
pub struct ListenerRt {
    /// Its name (metrics label).
    pub name: Arc<str>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Whether it terminates TLS (for `x-forwarded-proto`).
    pub tls: bool,
    /// Log one line per request.
    pub access_log: bool,
    /// Routes in file order.
    pub routes: Vec<RouteRt>,
    /// `rampart_in_flight_requests{listener}`.
    pub in_flight: IntGauge,
    /// Metrics of requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
}

/// One route's runtime.
#[derive(Debug)]
pub struct RouteRt {
    /// Metrics label: the route's name, else its upstream's.
    pub name: Arc<str>,
    /// Its `match`.
    pub matcher: Matcher,
    /// Where it sends.
    pub upstream: Arc<Upstream>,
    /// The policy it applies (an empty policy for a plain proxy).
    pub policy: RoutePolicy,
    /// Cached metric handles.
    pub metrics: Arc<RouteMetrics>,
}

/// The runtime of the policy a route applies.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    /// Name of the policy, if any.
    pub name: Option<Arc<str>>,
    /// `timeout.request`.
    pub request_timeout: Option<Duration>,
    /// `timeout.per_try`.
    pub per_try: Option<file::PerTry>,
    /// `retry`; absent: one try.
    pub retry: Option<RetryRt>,
    /// `rate_limit` with its per-tenant state.
    pub rate_limit: Option<RateLimitRt>,
}

/// The runtime of a policy's `rate_limit` section on one route.
#[derive(Debug)]
pub struct RateLimitRt {
    /// The section as written (to tell whether a reload changed it).
    pub cfg: file::RateLimit,
    /// Buckets of every tenant seen on the route.
    pub limiter: RateLimiter,
}

/// The runtime of a policy's `retry` section on one route.
#[derive(Debug)]
pub struct RetryRt {
    /// The section as written (to tell whether a reload changed it).
    pub cfg: file::Retry,
    /// Outcomes that are retried.
    pub on: RetryOn,
    /// Backoff between tries.
    pub backoff: Backoff,
    /// The route's retry budget (carried over while `retry.budget` is unchanged).
    pub budget: Arc<RetryBudget>,
}

// === impl Generation ===

impl Generation {
    /// Builds the runtime of `config`, carrying state over from `prev` where unchanged.
    pub fn build(config: Arc<Config>, prev: Option<&Generation>, shared: &Shared) -> Generation {
        let f = &config.file;
        let upstreams: BTreeMap<String, Arc<Upstream>> = f
            .upstreams
            .iter()
            .map(|(name, cfg)| {
                let kept = prev
                    .and_then(|p| p.upstreams.get(name))
                    .filter(|old| old.cfg == *cfg)
                    .cloned();
                let up = kept
                    .unwrap_or_else(|| Upstream::new(name, cfg, &shared.metrics, &shared.clock));
                (name.clone(), up)
            })
            .collect();
        let listeners = f
            .listeners
            .iter()
            .map(|l| {
                (
                    l.listen,
                    Arc::new(build_listener(l, f, &upstreams, prev, shared)),
                )
            })
            .collect();
        Generation {
            identify: Identify::new(&f.tenants),
            listeners,
            upstreams,
            config,
        }
    }

    /// A generation with no listeners and no upstreams (before the first config is applied).
    pub fn empty(config: Arc<Config>) -> Generation {
        Generation {
            identify: Identify::new(&config.file.tenants),
            listeners: HashMap::default(),
            upstreams: BTreeMap::new(),
            config,
        }
    }

    /// Whether every inbound listener's upstreams have a healthy endpoint.
    pub fn inbound_ready(&self) -> bool {
        self.listeners
            .values()
            .filter(|l| l.direction == Direction::Inbound)
            .flat_map(|l| l.routes.iter())
            .all(|r| r.upstream.has_healthy())
    }
}

fn build_listener(
    l: &file::Listener,
    f: &file::File,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    prev: Option<&Generation>,
    shared: &Shared,
) -> ListenerRt {
    let name: Arc<str> = Arc::from(l.name.as_str());
    let old = prev.and_then(|p| p.listeners.values().find(|o| o.name == name));
    let routes = l
        .routes
        .iter()
        .filter_map(|r| {
            // Validation guarantees the reference; a missing one would be a bug, skip the route.
            let upstream = upstreams.get(&r.upstream)?.clone();
            let label: Arc<str> = Arc::from(r.name.as_deref().unwrap_or(&r.upstream));
            let old_route = old.and_then(|o| {
                o.routes
                    .iter()
                    .find(|x| x.name == label && x.upstream.name == upstream.name)
            });
            let metrics = match old_route {
                Some(o) => o.metrics.clone(),
                None => Arc::new(shared.metrics.route(&name, &label, &upstream.name)),
            };
            let policy_cfg = r.policy.as_ref().and_then(|p| f.policies.get(p));
            let old_policy = old_route.map(|o| &o.policy);
            let policy = RoutePolicy::build(r.policy.as_deref(), policy_cfg, old_policy, shared);
            Some(RouteRt {
                name: label,
                matcher: Matcher::new(r.matches.as_ref()),
                upstream,
                policy,
                metrics,
            })
        })
        .collect();
    ListenerRt {
        in_flight: shared.metrics.in_flight(&name),
        unrouted: old
            .map(|o| o.unrouted.clone())
            .unwrap_or_else(|| Arc::new(shared.metrics.unrouted(&name))),
        name,
        direction: l.direction,
        tls: l.tls.is_some(),
        access_log: l.access_log,
        routes,
    }
}

// === impl RoutePolicy ===

impl RoutePolicy {
    fn build(
        name: Option<&str>,
        cfg: Option<&file::Policy>,
        old: Option<&RoutePolicy>,
        shared: &Shared,
    ) -> RoutePolicy {
        let Some(cfg) = cfg else {
            return RoutePolicy::default();
        };
        let retry = cfg.retry.as_ref().map(|r| {
            // Carry-over: the budget's window of counts survives a reload that keeps it.
            let budget = old
                .and_then(|o| o.retry.as_ref())
                .filter(|o| o.cfg.budget == r.budget)
                .map(|o| o.budget.clone())
                .unwrap_or_else(|| {
                    Arc::new(RetryBudget::from_config(&r.budget, shared.clock.clone()))
                });
            RetryRt {
                cfg: r.clone(),
                on: RetryOn::new(&r.on),
                backoff: Backoff::new(r.backoff.base.0, r.backoff.max.0),
                budget,
            }
        });
        let rate_limit = cfg.rate_limit.as_ref().map(|rl| {
            // Carry-over: unchanged limits keep every tenant's bucket; changed ones rescale
            // them, so a reload neither resets nor grants a fresh burst to everyone.
            let limiter = match old.and_then(|o| o.rate_limit.as_ref()) {
                Some(o) if o.cfg == *rl => o.limiter.clone(),
                Some(o) => o.limiter.reconfigure(rl),
                None => RateLimiter::new(rl, shared.tracked.clone(), shared.clock.clone()),
            };
            RateLimitRt {
                cfg: rl.clone(),
                limiter,
            }
        });
        RoutePolicy {
            name: name.map(Arc::from),
            rate_limit,
            request_timeout: cfg.timeout.as_ref().and_then(|t| t.request).map(|d| d.0),
            per_try: cfg.timeout.as_ref().and_then(|t| t.per_try),
            retry,
        }
    }
}
