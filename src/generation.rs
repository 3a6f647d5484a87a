//! One config generation's runtime: listeners' route tables, upstreams and policy state.
//!
//! A generation is immutable once built and is swapped in whole (arc-swap). Requests load the
//! generation in force when they start and keep it to the end, so a reload never changes the
//! rules under a request in flight.
//!
//! [`Generation::build`] only orchestrates the carry-over from the generation before: it finds
//! each piece's old counterpart and hands it to the piece's own `build`, which owns the rule of
//! what survives (`RouteRateLimit::build`, `RouteRetry::build`, `Upstream::new` for endpoints).
//! Counterparts are found by stable identity:
//! - an upstream by its name; its endpoints by address (so a tweak to one upstream key keeps
//!   warm connections and health);
//! - the global store by its URL (`GlobalStore::build`: the same URL keeps its connection);
//! - a route by [`RouteKey`]: its listener's name, its label (`name:` or upstream), and its
//!   ordinal among the routes of that listener with the same label. Two unnamed routes to one
//!   upstream are thus told apart by position among themselves, and naming routes makes the
//!   identity survive any reordering.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper_util::server::conn::auto;

use crate::clock::WallClock;
use crate::config::file::{self, Direction};
use crate::config::Config;
use crate::metrics::{HeldGauge, LiveSeries, Metrics, RouteMetrics};
use crate::otel::Tracer;
use crate::policy::circuit_breaker::CircuitBreaker;
use crate::policy::fallback::RouteFallback;
use crate::policy::fault::RouteFault;
use crate::policy::idempotency::RouteIdempotency;
use crate::policy::load_shed::RouteLoadShed;
use crate::policy::rate_limit::{GlobalCtx, RouteRateLimit};
use crate::policy::retry::RouteRetry;
use crate::proxy::access_log::AccessLog;
use crate::proxy::listener::{h1_server_builder, max_head, server_builder};
use crate::proxy::route::Matcher;
use crate::proxy::shared::Shared;
use crate::proxy::upstream::Upstream;
use crate::store::GlobalStore;
use crate::tenant::{configured_plans, Identify};
use crate::tls::TlsFiles;

mod moves;

pub use moves::{Draining, Drains, Moved};

/// The runtime of one config.
#[derive(Debug)]
pub struct Generation {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Listeners by their configured address.
    pub listeners: HashMap<SocketAddr, Arc<ListenerRt>, foldhash::fast::RandomState>,
    /// Where a listener a reload moved (same name, new address) went: from each address it had
    /// before to its address now. Connections the old socket accepted, still open or still
    /// queued while it drains, are served as the listener is configured now ([`Self::listener`]).
    /// A move is carried to the next generation only while that drain runs (`moves.rs`).
    pub moved: Moved,
    /// The listeners a reload removed, by the address they had, as they were configured then:
    /// the connections their old sockets accepted, still open or still queued while they
    /// drain, are served by them ([`Self::listener`]), as a moved listener's are by it where it
    /// went. Carried to the next generation only while that drain runs (`moves.rs`). Held
    /// weakly: the drains at its address hold each (`Drains::hold`, from `reload::apply`),
    /// whichever generation held it before, so that once they are over the listener, and
    /// through its routes the upstreams, stores and tables only it had, are let go then, not
    /// at some later reload (nor before).
    pub removed: HashMap<SocketAddr, Weak<ListenerRt>>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Circuit breakers by upstream name (SPEC §2: a breaker guards an upstream, and every route
    /// that sends there shares it, whether or not its own policy has `circuit_breaker`).
    pub breakers: BTreeMap<String, Arc<CircuitBreaker>>,
    /// Tenant identification rules.
    pub identify: Identify,
    /// The global store (`global_store`), its connection kept across reloads of the same URL.
    pub store: Option<Arc<GlobalStore>>,
    /// OpenTelemetry tracing (`tracing`), if on.
    pub tracer: Option<Arc<Tracer>>,
}

/// One listener's runtime.
#[derive(Debug)]
pub struct ListenerRt {
    /// Its name (metrics label).
    pub name: Arc<str>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Routes in file order.
    pub routes: Vec<RouteRt>,
    /// `rampart_in_flight_requests{listener}`.
    pub in_flight: Arc<HeldGauge>,
    /// Metrics of requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
    /// The HTTP server settings (from `runtime`) for connections accepted under this generation.
    pub server: Arc<auto::Builder<crate::proxy::stall::Exec>>,
    /// The HTTP/1 server settings for what the lean server hands over (not HTTP/2).
    pub h1_server: Arc<hyper::server::conn::http1::Builder>,
    /// `runtime.header_read_timeout`: a new connection must start a request within it.
    pub head_timeout: Duration,
    /// `runtime.idle_timeout`: a connection with no request in flight is closed after it.
    pub idle_timeout: Duration,
    /// The longest HTTP/1 request head served (`runtime.max_header_bytes`, which `validate`
    /// keeps at 8 KiB or more, hyper's least read buffer); longer ones are answered 431.
    pub max_head: usize,
    /// `runtime.body_idle_timeout`: longest stall between request body frames.
    pub body_idle_timeout: Duration,
    /// The TLS acceptor of a listener with `tls` (its files as read by this generation).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `rampart_tls_handshake_failures_total{listener, reason}`, one handle per reason.
    pub tls_failures: Vec<(&'static str, prometheus::IntCounter)>,
    /// The trust anchors of its `client_ca` (mTLS), as read by this generation.
    pub client_ca: Option<Arc<rustls::RootCertStore>>,
    /// Which TLS rules a connection accepted under this generation is served by: 0 for a
    /// plaintext listener; for a TLS one, a number that stays across reloads while `tls` stays
    /// on and `client_ca` trusts every CA it did (the same anchors, or more: a CA added takes no
    /// trust away; a new certificate and key keep it too: a session already made is not the
    /// worse for them), and is new when they change otherwise. A connection keeps
    /// the number of its handshake (`Peer::tls_epoch`), so one comparison per request tells a
    /// connection made under other rules ([`TlsRules`]).
    pub tls_epoch: u64,
    /// Tells the connections accepted under this `tls_epoch` at this address to close, once
    /// idle: sent `true` by the listener's handle when a reload changes the epoch, or when it
    /// drains (`ListenerHandle::follow`).
    pub conns_stop: Arc<ConnsStop>,
    /// Tells the CONNECT tunnels and upgraded connections (WebSockets) opened through this
    /// listener that it is gone, with the rules of the listener that replaced it if any: told
    /// by the reload after which no listener carries it ([`Generation::stop_tunnels_left`]).
    /// The same listener (its name, else its address, with the same `tls_epoch`) carries it
    /// across reloads wherever it moves, so a move keeps its tunnels while its old socket
    /// drains ([`TlsRules`]); at shutdown the tunnels' own drain cuts them.
    pub tunnels_stop: Arc<ConnsStop>,
    /// Its access log, if `access_log` is on.
    pub access_log: Option<AccessLog>,
    /// `trust_plan_header`: whether `tenants.plans.plan_header` is read here.
    pub trust_plan_header: bool,
    /// `merge_slashes` (or its default for the direction): whether request paths have runs
    /// of `/` merged when normalised (`normalize.rs`).
    pub merge_slashes: bool,
    /// The generation's tracer (`tracing`), if on.
    pub tracer: Option<Arc<Tracer>>,
}

/// Identity of a route across reloads (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The route's label: its `name:`, else its upstream's name.
    pub label: Arc<str>,
    /// Position among the listener's routes with the same label.
    pub ordinal: u32,
}

/// One route's runtime.
#[derive(Debug)]
pub struct RouteRt {
    /// Metrics label: the route's name, else its upstream's.
    pub name: Arc<str>,
    /// `name` as a JSON string, for the access log (escaped once, here).
    pub log_name: Box<[u8]>,
    /// Identity across reloads.
    pub key: RouteKey,
    /// Its `match`.
    pub matcher: Matcher,
    /// Where it sends.
    pub upstream: Arc<Upstream>,
    /// The policy it applies (an empty policy for a plain proxy).
    pub policy: RoutePolicy,
    /// Its upstream's breaker, when a policy of any route to that upstream has
    /// `circuit_breaker` (SPEC §2: the breaker guards the upstream, so this route's tries are
    /// admitted by it and counted in it even if its own policy has no breaker).
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// `tunnel_idle_timeout`: a tunnel (CONNECT, or an upgraded connection) with no bytes
    /// either way for this long closes.
    pub tunnel_idle: Duration,
    /// Cached metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// `tenant: optional`: a request without a tenant is served as `-`.
    pub tenant_optional: bool,
}

/// The runtime of the policy a route applies.
#[derive(Debug)]
pub struct RoutePolicy {
    /// Name of the policy, if any.
    pub name: Option<Arc<str>>,
    /// `timeout.request`.
    pub request_timeout: Option<Duration>,
    /// `timeout.per_try`.
    pub per_try: Option<file::PerTry>,
    /// `timeout.idle` in whole milliseconds ([`file::IDLE_TIMEOUT`] when not written, on every
    /// route); 0: off (`0s`). Milliseconds in a `u32`: what the upstream writer carries
    /// (`forward::Added::idle_ms`), and durations are whole milliseconds of at most 30 days.
    pub idle_ms: u32,
    /// `retry`; absent: one try.
    pub retry: Option<RouteRetry>,
    /// `rate_limit` with its per-tenant state.
    pub rate_limit: Option<RouteRateLimit>,
    /// `load_shed` with its slots and fair queue.
    pub load_shed: Option<RouteLoadShed>,
    /// `fault`: deliberate delays and aborts.
    pub fault: Option<RouteFault>,
    /// `fallback`, with its store of stale answers.
    pub fallback: Option<RouteFallback>,
    /// `idempotency`, with its store of keys.
    pub idempotency: Option<RouteIdempotency>,
}

/// `timeout.idle` as [`RoutePolicy::idle_ms`] holds it (bounded to 30 days by the file).
fn idle_ms(d: crate::config::Dur) -> u32 {
    u32::try_from(d.0.as_millis()).unwrap_or(u32::MAX)
}

/// A route without a policy: a plain proxy, under the default idle timeout.
impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            name: None,
            request_timeout: None,
            per_try: None,
            idle_ms: idle_ms(file::IDLE_TIMEOUT),
            retry: None,
            rate_limit: None,
            load_shed: None,
            fault: None,
            fallback: None,
            idempotency: None,
        }
    }
}

// === impl Generation ===

impl Generation {
    /// Builds the runtime of `config`, carrying state over from `prev` where unchanged.
    ///
    /// `tls` holds the TLS configs of `config`, read from their files just before.
    pub fn build(
        config: Arc<Config>,
        prev: Option<&Generation>,
        tls: &TlsFiles,
        shared: &Shared,
    ) -> Generation {
        let f = &config.file;
        let upstreams: BTreeMap<String, Arc<Upstream>> = f
            .upstreams
            .iter()
            .map(|(name, cfg)| {
                let old = prev.and_then(|p| p.upstreams.get(name));
                let client_tls = tls.upstreams.get(name).cloned();
                let up = match old {
                    // Unchanged: the whole upstream goes on (endpoints, pools, latency window);
                    // only its TLS files are taken as they are now.
                    Some(o) if o.cfg == *cfg => {
                        o.refresh_tls(client_tls);
                        o.clone()
                    }
                    old => {
                        let old = old.map(|o| &**o);
                        Upstream::new(name, cfg, old, client_tls, &shared.metrics, &shared.clock)
                    }
                };
                (name.clone(), up)
            })
            .collect();
        let breakers = build_breakers(f, prev, shared);
        let store = f.global_store.as_ref().and_then(|g| {
            let old = prev.and_then(|p| p.store.as_ref());
            GlobalStore::build(g, old, tls.store.clone(), &shared.metrics, &shared.clock)
        });
        let tracer = f.tracing.as_ref().map(|t| {
            let old = prev.and_then(|p| p.tracer.as_deref());
            let exporters = &shared.exporters;
            Arc::new(Tracer::build(t, old, exporters, tls.tracing.as_deref()))
        });
        let listeners = f
            .listeners
            .iter()
            .map(|l| {
                let tables = (&upstreams, &breakers, store.as_ref());
                let mut rt = build_listener(l, f, tables, prev, shared);
                rt.tls = tls.listeners.get(&l.name).cloned();
                rt.client_ca = tls.client_cas.get(&l.name).cloned();
                TlsRules::carry(&mut rt, l.listen, prev, |name| {
                    f.listeners.iter().any(|n| *n.name == *name)
                });
                rt.tracer = tracer.clone();
                (l.listen, Arc::new(rt))
            })
            .collect();
        let wall = WallClock::system(shared.clock.clone());
        let moved = prev
            .map(|p| {
                let live = p.listeners.iter().map(|(a, l)| (*a, &*l.name));
                moves::moves(live, &p.moved, &f.listeners, |a| shared.drains.at(a))
            })
            .unwrap_or_default();
        let removed = prev
            .map(|p| {
                let live = p.listeners.iter().map(|(a, l)| (*a, Arc::downgrade(l)));
                let drains = |a: &SocketAddr| shared.drains.at(a);
                moves::removed(live, &p.removed, &p.moved, &moved, &f.listeners, drains)
            })
            .unwrap_or_default();
        Generation {
            identify: Identify::build(
                &f.tenants,
                &configured_plans(f),
                prev.map(|p| &p.identify),
                &wall,
                &config.read.jwks,
                &config.system_roots,
            ),
            moved,
            removed,
            listeners,
            upstreams,
            breakers,
            store,
            tracer,
            config,
        }
    }

    /// A generation with no listeners and no upstreams (before the first config is applied).
    /// Its `jwt` sources, kept by the first real generation, trust `config`'s system roots.
    pub fn empty(config: Arc<Config>) -> Generation {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::MonotonicClock::new());
        Generation {
            identify: Identify::build(
                &config.file.tenants,
                &configured_plans(&config.file),
                None,
                &WallClock::system(clock),
                &config.read.jwks,
                &config.system_roots,
            ),
            listeners: HashMap::default(),
            moved: Moved::new(),
            removed: HashMap::new(),
            upstreams: BTreeMap::new(),
            breakers: BTreeMap::new(),
            store: None,
            tracer: None,
            config,
        }
    }

    /// The listener a connection accepted at `addr` is served by: the one configured there,
    /// the one a reload moved from there, or the one a reload removed from there, as it was
    /// (while its drain holds it: owned then, the others borrowed).
    pub fn listener(&self, addr: &SocketAddr) -> Option<Cow<'_, Arc<ListenerRt>>> {
        match self.listeners.get(addr) {
            Some(l) => Some(Cow::Borrowed(l)),
            None => match self.moved.get(addr) {
                Some(to) => self.listeners.get(to).map(Cow::Borrowed),
                None => self.removed.get(addr)?.upgrade().map(Cow::Owned),
            },
        }
    }

    /// The listeners removed by a reload whose drains still hold them.
    fn removed_held(&self) -> Vec<Arc<ListenerRt>> {
        self.removed.values().filter_map(Weak::upgrade).collect()
    }

    /// Whether every inbound listener's upstreams have a healthy endpoint.
    pub fn inbound_ready(&self) -> bool {
        self.listeners
            .values()
            .filter(|l| l.direction == Direction::Inbound)
            .flat_map(|l| l.routes.iter())
            .all(|r| r.upstream.has_healthy())
    }

    /// Lets go of what `old` had and this generation has not, now that this one is in force:
    /// the upstreams it replaced or removed are retired (their health checks and DNS lookups
    /// stop, and what their requests still in flight learn no longer reaches the metrics), and
    /// the series of removed routes, listeners, upstreams, breakers, endpoints, shedders and
    /// store are dropped from `metrics`. Requests still in flight under `old` finish as they began; what
    /// they count on a removed series is not exported (their routes' and upstreams' metric
    /// handles are retired first, so they make no new series for a name that is gone).
    pub fn retire(&self, old: &Generation, metrics: &Metrics) {
        let mut live = self.live_series();
        // A listener the reload removes drains: its requests still in flight finish, or are
        // cut at the grace's end and counted 503 `shutdown`, on its series. Those stay (as
        // its routes' do), so the cut is seen; only names a kept listener dropped go. So do
        // those of a listener removed before, while its connections are served.
        let (removed, removed_before) = (self.removed_held(), old.removed_held());
        for l in old.listeners.values().chain(&removed) {
            if !live.routes.contains_key(&l.name) {
                listener_series(&mut live, l);
            }
        }
        for (name, up) in &old.upstreams {
            if !self
                .upstreams
                .get(name)
                .is_some_and(|now| Arc::ptr_eq(now, up))
            {
                up.retire();
            }
            if !live.upstreams.contains(name.as_str()) {
                up.metrics.retire();
            }
        }
        for l in old.listeners.values().chain(&removed_before) {
            let routes = live.routes.get(&l.name);
            if routes.is_none() {
                l.unrouted.retire();
            }
            for r in &l.routes {
                if !routes.is_some_and(|rs| rs.contains(&r.name)) {
                    r.metrics.retire();
                }
            }
        }
        self.retire_idempotency(old);
        metrics.retain_live(&live);
    }

    /// Tells the tunnels and upgraded connections of each listener of `old` that no listener of
    /// this generation carries on (removed, or its TLS rules changed: `TlsRules::carry`) to
    /// close by `until` (the end of this reload's `runtime.shutdown_grace`, when the drains
    /// it begins end), those opened through it later included. Those of a listener moved or
    /// renamed with the same rules go on.
    pub fn stop_tunnels_left(&self, old: &Generation, until: tokio::time::Instant) {
        for (at, o) in &old.listeners {
            let carried = self
                .listeners
                .values()
                .any(|l| Arc::ptr_eq(&l.tunnels_stop, &o.tunnels_stop));
            if !carried {
                // The listener that took its place (its name, else its address, as
                // `TlsRules::carry` matches them), whose rules a tunnel is judged by.
                let next = self
                    .listeners
                    .values()
                    .find(|l| l.name == o.name)
                    .or_else(|| {
                        // Renamed in place: not a listener of `old` moved here.
                        let renamed = |l: &&Arc<ListenerRt>| {
                            !old.listeners.values().any(|x| x.name == l.name)
                        };
                        self.listeners.get(at).filter(renamed)
                    });
                o.tunnels_stop.tell(next.map(|l| &**l), until);
            }
        }
    }

    /// The idempotency stores of `old` this generation does not carry stop writing their
    /// route's gauges; those of a route left without `idempotency` are set to 0 first (its
    /// keys are gone, and the old store would otherwise leave its last count showing).
    fn retire_idempotency(&self, old: &Generation) {
        fn routes(g: &Generation) -> Vec<(Arc<str>, &RouteIdempotency)> {
            let all = g.listeners.values().flat_map(|l| l.routes.iter());
            all.filter_map(|r| Some((r.key.label.clone(), r.policy.idempotency.as_ref()?)))
                .collect()
        }
        let now = routes(self);
        for (label, was) in routes(old) {
            if now.iter().any(|(_, i)| Arc::ptr_eq(&i.store, &was.store)) {
                continue;
            }
            let written = now.iter().any(|(l, _)| *l == label);
            was.store.retire(!written);
        }
    }

    /// Resets the breakers of `old` that this generation replaced with new settings (scope
    /// included) to closed, counting each reset transition (see [`CircuitBreaker::retire`]);
    /// called before the swap so that no breaker of this generation has moved yet. A breaker
    /// this generation no longer has is left alone: its gauges go with
    /// [`retire`](Self::retire).
    pub fn reset_replaced_breakers(&self, old: &Generation) {
        for (upstream, b) in &old.breakers {
            if self
                .breakers
                .get(upstream)
                .is_some_and(|now| !Arc::ptr_eq(now, b))
            {
                b.retire();
            }
        }
    }

    /// What this generation exports gauges for.
    fn live_series(&self) -> LiveSeries {
        let breakers = self
            .breakers
            .values()
            .map(|b| {
                let tenant = b.cfg().scope == file::BreakerScope::Tenant;
                (Arc::from(b.upstream()), tenant)
            })
            .collect();
        let endpoints = self
            .upstreams
            .values()
            .flat_map(|u| {
                let eps = u.endpoints();
                eps.iter()
                    .map(|e| (u.name.clone(), e.label.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        // The labels each shedder writes (a carried one keeps those it was made with).
        let shed_routes = self
            .listeners
            .values()
            .flat_map(|l| l.routes.iter())
            .filter_map(|r| r.policy.load_shed.as_ref())
            .map(|ls| {
                let [l, r, u] = &*ls.series;
                (l.clone(), r.clone(), u.clone())
            })
            .collect();
        let mut live = LiveSeries {
            breakers,
            endpoints,
            shed_routes,
            store: self.store.is_some(),
            upstreams: self.upstreams.values().map(|u| u.name.clone()).collect(),
            ..LiveSeries::default()
        };
        for l in self.listeners.values() {
            listener_series(&mut live, l);
            for r in &l.routes {
                let ups = live.route_upstreams.entry(r.name.clone()).or_default();
                ups.insert(r.upstream.name.clone());
                if r.policy.idempotency.is_some() {
                    live.idempotency.insert(r.name.clone());
                }
            }
        }
        live
    }

    fn route(&self, key: &RouteKey) -> Option<&RouteRt> {
        self.listeners
            .values()
            .filter(|l| l.name == key.listener)
            .flat_map(|l| l.routes.iter())
            .find(|r| r.key == *key)
    }
}

/// Adds the series labelled by listener `l` to `live`: its routes' (and its unrouted
/// requests', route `""`), and its TLS handshake failures' when it has `tls`.
fn listener_series(live: &mut LiveSeries, l: &ListenerRt) {
    let routes = live.routes.entry(l.name.clone()).or_default();
    routes.insert(Arc::from(""));
    routes.extend(l.routes.iter().map(|r| r.name.clone()));
    if l.tls.is_some() {
        live.tls_listeners.insert(l.name.clone());
    }
}

/// One breaker per upstream that a policy with `circuit_breaker` sends to (validation makes all
/// such policies agree), guarding every route to that upstream; a breaker whose settings are unchanged carries over whole, state and
/// counters included (SPEC §6).
fn build_breakers(
    f: &file::File,
    prev: Option<&Generation>,
    shared: &Shared,
) -> BTreeMap<String, Arc<CircuitBreaker>> {
    let mut out = BTreeMap::new();
    for route in f.listeners.iter().flat_map(|l| l.routes.iter()) {
        let policy = route.policy.as_ref().and_then(|p| f.policies.get(p));
        let Some(cfg) = policy.and_then(|p| p.circuit_breaker.as_ref()) else {
            continue;
        };
        out.entry(route.upstream.clone()).or_insert_with(|| {
            let old = prev.and_then(|p| p.breakers.get(&route.upstream));
            match old {
                Some(o) if o.cfg() == cfg => o.clone(),
                _ => CircuitBreaker::new(
                    &route.upstream,
                    cfg,
                    &shared.tracked,
                    shared.clock.clone(),
                    &shared.metrics,
                ),
            }
        });
    }
    out
}

/// What the routes of a listener refer to: upstreams, breakers and the global store.
type Tables<'a> = (
    &'a BTreeMap<String, Arc<Upstream>>,
    &'a BTreeMap<String, Arc<CircuitBreaker>>,
    Option<&'a Arc<GlobalStore>>,
);

fn build_listener(
    l: &file::Listener,
    f: &file::File,
    (upstreams, breakers, store): Tables<'_>,
    prev: Option<&Generation>,
    shared: &Shared,
) -> ListenerRt {
    let name: Arc<str> = Arc::from(l.name.as_str());
    let old = prev.and_then(|p| p.listeners.values().find(|o| o.name == name));
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let routes = l
        .routes
        .iter()
        .filter_map(|r| {
            // Validation guarantees the reference; a missing one would be a bug, skip the route.
            let upstream = upstreams.get(&r.upstream)?.clone();
            let label_text = r.name.as_deref().unwrap_or(&r.upstream);
            let ordinal = seen.entry(label_text).or_insert(0);
            let key = RouteKey {
                listener: name.clone(),
                label: Arc::from(label_text),
                ordinal: *ordinal,
            };
            *ordinal += 1;
            let old_route = prev.and_then(|p| p.route(&key));
            let metrics = match old_route.filter(|o| o.upstream.name == upstream.name) {
                Some(o) => o.metrics.clone(),
                None => Arc::new(shared.metrics.route(&name, &key.label, &upstream.name)),
            };
            let policy_cfg = r.policy.as_ref().and_then(|p| f.policies.get(p));
            let old_policy = old_route.map(|o| &o.policy);
            let mut policy = RoutePolicy::build(
                r.policy.as_deref(),
                policy_cfg,
                old_policy,
                (&key, &upstream.name, store),
                shared,
            );
            policy.build_resilience(policy_cfg, old_policy, (&key.label, store), shared);
            // SPEC §2: a breaker guards an upstream, so every route to it is guarded, whatever
            // its own policy (none, or one without `circuit_breaker`) says.
            let breaker = breakers.get(&r.upstream).cloned();
            Some(RouteRt {
                breaker,
                tunnel_idle: r.tunnel_idle_timeout.unwrap_or(file::TUNNEL_IDLE_TIMEOUT).0,
                name: key.label.clone(),
                log_name: crate::proxy::access_log::json_string(&key.label),
                key,
                matcher: Matcher::new(r.matches.as_ref()),
                upstream,
                policy,
                metrics,
                tenant_optional: r.tenant == file::TenantMode::Optional,
            })
        })
        .collect();
    let rt = &f.runtime;
    ListenerRt {
        in_flight: shared.metrics.in_flight(&name),
        unrouted: old
            .map(|o| o.unrouted.clone())
            .unwrap_or_else(|| Arc::new(shared.metrics.unrouted(&name))),
        direction: l.direction,
        routes,
        server: Arc::new(server_builder(rt)),
        h1_server: Arc::new(h1_server_builder(rt)),
        head_timeout: rt.header_read_timeout.0,
        idle_timeout: rt.idle_timeout.0,
        max_head: max_head(rt),
        body_idle_timeout: rt.body_idle_timeout.0,
        tls: None,
        access_log: l.access_log.as_ref().and_then(|cfg| {
            let sink = shared.access_logs.get(&cfg.to)?;
            Some(AccessLog::new(name.clone(), cfg, sink))
        }),
        trust_plan_header: l.trust_plan_header,
        merge_slashes: l.merges_slashes(),
        tracer: None,
        tls_failures: match l.tls {
            Some(_) => shared.metrics.tls_failures(&l.name),
            None => Vec::new(),
        },
        client_ca: None,
        tls_epoch: 0,
        conns_stop: Arc::new(ConnsStop::new()),
        tunnels_stop: Arc::new(ConnsStop::new()),
        name,
    }
}

/// Tells what a listener serves to close, and says what rules replaced those it was served
/// under. Two uses: [`ListenerRt::conns_stop`], the connections accepted under one
/// `tls_epoch` at one address (told when a reload changes the rules at the address, or the
/// listener drains); and [`ListenerRt::tunnels_stop`], the tunnels and upgraded connections
/// opened through one listener wherever it moves (told when a reload leaves no listener to
/// carry it). Only the tunnels read `next` (`Peer::refused_now`) and `until`.
#[derive(Debug)]
pub struct ConnsStop {
    /// Told `true` to close.
    pub told: tokio::sync::watch::Sender<bool>,
    /// The rules of the listener that took the place of the one told (by name, else at its
    /// address), set before it is told; `None` when that one has no `tls`, when there is
    /// none, and for a drain.
    pub next: arc_swap::ArcSwapOption<NextRules>,
    /// When the tunnels told by [`ConnsStop::tell`] are cut: the end of the reload's
    /// `shutdown_grace` (that of the drain of a listener it removed), set once, before they
    /// are told. A tunnel opened later through that listener (by a connection its old socket
    /// still serves) is cut then too, not a whole grace after it opened.
    until: std::sync::OnceLock<tokio::time::Instant>,
}

/// The TLS rules of a listener with `tls`, as a tunnel made under earlier ones is judged by
/// (`Peer::refused_now`).
#[derive(Debug)]
pub struct NextRules {
    /// The anchors of its `client_ca`; `None`: no client certificate is asked for.
    pub client_ca: Option<Arc<rustls::RootCertStore>>,
}

// === impl ConnsStop ===

impl ConnsStop {
    /// Not told, no rules after.
    pub fn new() -> Self {
        ConnsStop {
            told: tokio::sync::watch::Sender::new(false),
            next: arc_swap::ArcSwapOption::empty(),
            until: std::sync::OnceLock::new(),
        }
    }

    /// Tells the connections to close by `until`, `next` (the listener now at the address, if
    /// any) giving the rules that replaced theirs. Told once (no listener carries it after),
    /// so the first `until` stays.
    pub fn tell(&self, next: Option<&ListenerRt>, until: tokio::time::Instant) {
        let rules = next.filter(|l| l.tls.is_some()).map(|l| NextRules {
            client_ca: l.client_ca.clone(),
        });
        self.next.store(rules.map(Arc::new));
        let _ = self.until.set(until);
        self.told.send_replace(true);
    }

    /// When what [`ConnsStop::tell`] told is cut; `None` before it is told.
    pub fn until(&self) -> Option<tokio::time::Instant> {
        self.until.get().copied()
    }
}

impl Default for ConnsStop {
    fn default() -> Self {
        ConnsStop::new()
    }
}

/// How a listener's TLS rules carry across a reload (`ListenerRt::tls_epoch`).
pub struct TlsRules;

/// The last `tls_epoch` handed out; the next is one more (0 is plaintext's).
static TLS_EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TlsRules {
    /// Gives `rt` (its `tls` and `client_ca` set, at address `at`) the epoch of its counterpart
    /// in `prev` (the listener of the same name, else the one at the same address) if that
    /// served the same rules or ones it still trusts ([`Self::still_trusted`]), else a new one;
    /// that counterpart's `tunnels_stop` if the epoch is the same, wherever the counterpart
    /// was (a listener moved keeps its tunnels); and its `conns_stop` if it is at the same
    /// address with the same epoch (else the new one `build_listener` made, which the
    /// listener's handle then follows: the connections at a socket a listener left drain).
    ///
    /// `named` says whether the new file has a listener of a name: one at the same address
    /// whose name the new file still has is that listener's counterpart (moved), not this
    /// one's, and two listeners never carry one `tunnels_stop`.
    fn carry(
        rt: &mut ListenerRt,
        at: SocketAddr,
        prev: Option<&Generation>,
        named: impl Fn(&str) -> bool,
    ) {
        let old = prev.and_then(|p| {
            p.listeners
                .iter()
                .find(|(_, o)| o.name == rt.name)
                .map(|(a, o)| (*a, o))
                // A listener renamed in place (the same address) is the same listener: its
                // connections, tunnels and upgrades go on as under any reload that keeps it.
                .or_else(|| {
                    p.listeners
                        .get(&at)
                        .filter(|o| !named(&o.name))
                        .map(|o| (at, o))
                })
        });
        rt.tls_epoch = match (&rt.tls, old) {
            (None, _) => 0,
            (Some(_), Some((_, o))) if o.tls.is_some() && Self::still_trusted(o, rt) => o.tls_epoch,
            (Some(_), _) => TLS_EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        };
        if let Some((a, o)) = old {
            if o.tls_epoch == rt.tls_epoch {
                rt.tunnels_stop = o.tunnels_stop.clone();
                if a == at {
                    rt.conns_stop = o.conns_stop.clone();
                }
            }
        }
    }

    /// Whether every client `old` admitted is still admitted by `new`: both without
    /// `client_ca`, or `new` trusting every CA `old` did, in whatever order its bundle lists
    /// them and however often. A CA added (the first step of a rotation) takes no trust away;
    /// a CA taken away does, and so do `client_ca` given or taken away.
    fn still_trusted(old: &ListenerRt, new: &ListenerRt) -> bool {
        match (&old.client_ca, &new.client_ca) {
            (None, None) => true,
            (Some(x), Some(y)) => anchors_within(&x.roots, &y.roots),
            _ => false,
        }
    }
}

/// Whether every trust anchor in `a` is in `b` (as sets). Bundles hold a few CAs: the
/// quadratic look is cheaper than sorting copies, and runs once a listener a reload.
fn anchors_within<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().all(|t| b.contains(t))
}

// === impl RoutePolicy ===

impl RoutePolicy {
    fn build(
        name: Option<&str>,
        cfg: Option<&file::Policy>,
        old: Option<&RoutePolicy>,
        (key, upstream, store): (&RouteKey, &str, Option<&Arc<GlobalStore>>),
        shared: &Shared,
    ) -> RoutePolicy {
        let Some(cfg) = cfg else {
            return RoutePolicy::default();
        };
        let idle = cfg.timeout.as_ref().and_then(|t| t.idle);
        let retry = cfg.retry.as_ref().map(|r| {
            let old = old.and_then(|o| o.retry.as_ref());
            RouteRetry::build(r, old, &shared.clock)
        });
        let rate_limit = cfg.rate_limit.as_ref().map(|rl| {
            let old = old.and_then(|o| o.rate_limit.as_ref());
            let global = GlobalCtx {
                store,
                route: &key.label,
                metrics: &shared.metrics,
            };
            RouteRateLimit::build(rl, old, &shared.tracked, &shared.clock, global)
        });
        let load_shed = cfg.load_shed.as_ref().map(|ls| {
            let old = old.and_then(|o| o.load_shed.as_ref());
            let m = &shared.metrics;
            let gauges = (
                m.queue_depth
                    .with_label_values(&[&*key.listener, &*key.label]),
                m.concurrency_limit
                    .with_label_values(&[&*key.label, upstream]),
            );
            let series = [key.listener.clone(), key.label.clone(), Arc::from(upstream)];
            let at = (gauges, series);
            RouteLoadShed::build(ls, old, &shared.tracked, &shared.clock, at)
        });
        RoutePolicy {
            name: name.map(Arc::from),
            rate_limit,
            load_shed,
            request_timeout: cfg.timeout.as_ref().and_then(|t| t.request).map(|d| d.0),
            per_try: cfg.timeout.as_ref().and_then(|t| t.per_try),
            idle_ms: idle_ms(idle.unwrap_or(file::IDLE_TIMEOUT)),
            retry,
            ..RoutePolicy::default()
        }
    }

    /// `fault` and `fallback`, whose metrics are labelled by the route; a fallback's stale
    /// answers are carried over from `old` when the route's fallback keeps them still.
    fn build_resilience(
        &mut self,
        cfg: Option<&file::Policy>,
        old: Option<&RoutePolicy>,
        (route, store): (&Arc<str>, Option<&Arc<GlobalStore>>),
        shared: &Shared,
    ) {
        let Some(cfg) = cfg else { return };
        let m = &shared.metrics;
        self.fault = cfg.fault.as_ref().map(|f| RouteFault::build(f, route, m));
        self.fallback = cfg.fallback.as_ref().map(|f| {
            let old = old.and_then(|o| o.fallback.as_ref());
            RouteFallback::build(f, old, route, m, &shared.clock)
        });
        self.idempotency = cfg.idempotency.as_ref().map(|i| {
            let old = old.and_then(|o| o.idempotency.as_ref());
            RouteIdempotency::build(i, old, route, m, &shared.clock, store)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::anchors_within;

    #[test]
    fn client_cas_compare_as_sets() {
        let (a, b, c) = ("ca-a", "ca-b", "ca-c");
        assert!(anchors_within(&[a, b], &[b, a]), "reordered");
        assert!(anchors_within(&[a, b, a], &[a, b]), "one repeated");
        assert!(!anchors_within(&[a, b], &[a]), "one taken away");
        assert!(anchors_within(&[a], &[a, c]), "one added");
        assert!(!anchors_within(&[a, b], &[a, c]), "one swapped");
    }
}
