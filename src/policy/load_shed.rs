//! Load shedding: a route's in-flight limit, a per-tenant bulkhead, a bounded waiting room that
//! serves tenants fairly, priority classes and an adaptive concurrency limit.
//!
//! Why: under overload the upstream must stay inside its capacity, and a tenant that floods must
//! not take the capacity of the others. A plain FIFO queue hands a flooding tenant most of the
//! freed slots; here freed slots go round robin over per-tenant queues.
//!
//! # Admission (the hot path)
//! A request first takes a *tenant slot* (only with `per_tenant_max_in_flight`: a CAS on the
//! tenant's count, which counts its waiting requests too, so a grant from the queue never pushes
//! a tenant over its cap; a tenant at the cap is shed `tenant_in_flight` at once, never queued).
//! Then, if nobody waits, a *route slot* is one CAS on `in_flight < limit`. The queue lock is
//! taken only when no slot is free or waiters exist. A [`ShedSlot`] gives both back on drop.
//! When every tracked-tenant entry is in use (`tenants.max_tracked`), a new tenant is admitted
//! without a tenant slot (the route limit still holds) rather than refused.
//!
//! # Waiting ([`queue`])
//! Waiters sit in per-tenant FIFOs served round robin (deficit round robin with every request
//! costing one slot and a quantum of one, which is exactly round robin), in two tiers:
//! `critical` and `normal` above, `sheddable` below, served only when nobody waits above. The
//! priority is a header the client sets, so within the upper tier it orders only a tenant's
//! own waiters (critical first): a tenant that marks every request critical gets its turn and
//! no more. When the queue is full an arrival above sheddable displaces the newest waiter of
//! the longest sheddable FIFO (that waiter is shed `priority` at once); failing that, a
//! critical arrival displaces its own tenant's newest normal waiter (`priority`); failing
//! that, in its own tier, the newest waiter of a tenant whose FIFO is at least two longer than
//! the arrival's (shed `queue_full`, as fair queueing drops from the fattest flow). Otherwise
//! the arrival is shed `queue_full`. So a flood, whatever priority it claims, cannot fill the
//! room against a tenant with one request. No lost wake-ups: a waiter publishes itself
//! (`waiting`, SeqCst) and
//! then re-tries the limit, while a release lowers `in_flight` (SeqCst) and then reads
//! `waiting`; one of the two always sees the other. A grant is a [`ShedSlot`] sent to the
//! waiter, so a grant to a waiter that is gone is dropped and thereby passed on.
//!
//! # Refusals
//! A [`Shed`] carries its reason and a `retry_after` from the measured drain rate
//! ([`drain`]): `(waiting + 1) / slots freed per second`, at most 30 s; slots freed per
//! second are counted, or, where more, found from the slots held and the upstream's latency.
//!
//! # Adaptive concurrency ([`adaptive`])
//! With `adaptive: { min, max }` the route limit is `min(max_in_flight, adaptive limit)`, and a
//! refusal past the adaptive limit is reason `adaptive`. The limit follows the tries' latency
//! against a baseline measured at `min` in flight, and backs off on timeouts and 503s; the rule
//! is written in [`adaptive`].
//!
//! # Reload
//! [`LoadShedder::reconfigure`] changes the limits in place: waiters keep their place, a raised
//! limit wakes them, a lowered one lets in-flight requests finish and grants again once below
//! it. A waiter keeps the timeout it started with. Slots taken while `per_tenant_max_in_flight`
//! was off are not counted against a cap turned on later (they finish under the old config).

mod adaptive;
mod drain;
mod queue;
mod slot;

use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::IntGauge;

pub use self::slot::ShedSlot;
use self::slot::{TenantHold, TenantSlots, Waiter};
use crate::clock::SharedClock;
use crate::config::file;
use crate::policy::outcome::Outcome;
use crate::tenant::tracked::{TenantMap, TrackedTenants};

/// A request's priority class, read from `load_shed.priority.header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Shed only when nothing lower is left.
    Critical,
    /// The default.
    Normal,
    /// Shed first, served last.
    Sheddable,
}

/// Why a request was shed; `as_str` is the `reason` label of `rampart_shed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// The route's `max_in_flight` is reached and the request may not wait.
    MaxInFlight,
    /// The tenant's `per_tenant_max_in_flight` is reached.
    TenantInFlight,
    /// The waiting room is full (or this waiter made room for a fairer one).
    QueueFull,
    /// The request waited `queue.timeout` without a slot.
    QueueTimeout,
    /// A higher-priority arrival took this waiter's place.
    Priority,
    /// The adaptive concurrency limit is reached and the request may not wait.
    Adaptive,
}

/// A refusal: answer 503 `shed` with `retry-after` = `retry_after` rounded up to whole seconds
/// (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shed ({}), retry after {retry_after:?}", reason.as_str())]
pub struct Shed {
    /// Why.
    pub reason: ShedReason,
    /// How long the queue would take to drain this request, from its measured drain rate.
    pub retry_after: Duration,
}

/// One route's load-shedding state; shared by its requests, reconfigured in place on reload.
pub struct LoadShedder {
    /// Itself, so that `&self` paths (reconfigure, release) can hand out slots.
    me: Weak<LoadShedder>,
    /// Route slots held (granted waiters included).
    in_flight: AtomicU32,
    /// Effective limit: `min(max_in_flight, adaptive limit)`; `u32::MAX` = none.
    limit: AtomicU32,
    max_in_flight: AtomicU32,
    tenant_cap: AtomicU32,
    queue_size: AtomicU32,
    queue_timeout_nanos: AtomicU64,
    /// Waiters in the queue; read without the lock by the fast paths.
    waiting: AtomicU32,
    /// Route slots ever released, for the drain rate.
    released: AtomicU64,
    /// Upstream latencies recorded since the last refusal (nanoseconds summed, and how many),
    /// for the drain rate of a route that was idle before it filled.
    latency_nanos: AtomicU64,
    latencies: AtomicU64,
    queue: Mutex<queue::FairQueue<Waiter>>,
    tenants: Arc<TenantMap<TenantSlots>>,
    adaptive: adaptive::Gradient,
    drain: Mutex<drain::DrainRate>,
    clock: SharedClock,
    /// The series this shedder writes (see [`ShedGauges`]), locked only to change one (the
    /// queue's length or the limit changed) or to move to new labels in a reload; `waiting` and
    /// `limit_shown` are this shedder's parts of them.
    gauges: parking_lot::Mutex<ShedGauges>,
    limit_shown: AtomicI64,
    /// Whether `max_in_flight` or `adaptive` is given: `limit` is then the limit in force even
    /// at `u32::MAX` (which also stands for no limit), and the gauge shows it.
    limited: AtomicBool,
}

/// The series a shedder writes. Routes may share labels (two unnamed routes to one upstream are
/// both labelled with its name), so each shedder adds its own changes to a series rather than
/// setting it: the series is their sum.
struct ShedGauges {
    /// `rampart_queue_depth` of the route's labels.
    queue_depth: IntGauge,
    /// `rampart_concurrency_limit`: the route limit in force.
    concurrency_limit: Option<IntGauge>,
}

// === impl Priority ===

impl Priority {
    /// `critical`, `normal` or `sheddable` (ASCII case-insensitive); anything else or no header
    /// is `Normal`.
    pub fn from_header(v: Option<&http::HeaderValue>) -> Priority {
        let text = v.and_then(|v| v.to_str().ok()).map(str::trim);
        match text {
            Some(t) if t.eq_ignore_ascii_case("critical") => Priority::Critical,
            Some(t) if t.eq_ignore_ascii_case("sheddable") => Priority::Sheddable,
            _ => Priority::Normal,
        }
    }
}

// === impl ShedReason ===

impl ShedReason {
    /// The `reason` label of `rampart_shed_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ShedReason::MaxInFlight => "max_in_flight",
            ShedReason::TenantInFlight => "tenant_in_flight",
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::Priority => "priority",
            ShedReason::Adaptive => "adaptive",
        }
    }
}

/// A route's `load_shed` section in force: its shedder and the priority header.
#[derive(Debug)]
pub struct RouteLoadShed {
    /// The shedder (reconfigured in place across reloads).
    pub shedder: Arc<LoadShedder>,
    /// `priority.header`, if priorities are read.
    pub priority_header: Option<http::HeaderName>,
    /// The labels (listener, route, upstream) of the gauges the shedder writes: those it was
    /// made with, kept when it is carried over (a route that changed upstream keeps its
    /// shedder, and its series).
    pub series: Arc<[Arc<str>; 3]>,
}

// === impl RouteLoadShed ===

impl RouteLoadShed {
    /// The state for `cfg`. A route that had a shedder keeps it and reconfigures it in place
    /// (SPEC §6, issue 17): waiters keep their place, and the requests in flight stay counted,
    /// so a reload can neither strand a waiter nor double the slots.
    pub fn build(
        cfg: &file::LoadShed,
        old: Option<&RouteLoadShed>,
        tracked: &Arc<TrackedTenants>,
        clock: &SharedClock,
        (gauges, series): ((IntGauge, IntGauge), [Arc<str>; 3]),
    ) -> Self {
        let (shedder, series) = match old {
            Some(o) => {
                o.shedder.reconfigure(cfg);
                if *o.series == series {
                    (o.shedder.clone(), o.series.clone())
                } else {
                    // The route kept, its upstream (or label) renamed: the shedder's parts move
                    // to the series of its new labels, and the old ones are removed.
                    o.shedder.relabel(gauges.0, Some(gauges.1));
                    (o.shedder.clone(), Arc::new(series))
                }
            }
            None => {
                let made = LoadShedder::new(cfg, tracked, clock.clone(), gauges.0, Some(gauges.1));
                (made, Arc::new(series))
            }
        };
        let priority_header = cfg
            .priority
            .as_ref()
            .and_then(|p| http::HeaderName::from_bytes(p.header.as_bytes()).ok());
        RouteLoadShed {
            shedder,
            priority_header,
            series,
        }
    }

    /// The priority a request asks for (normal without a `priority` section).
    pub fn priority(&self, headers: &http::HeaderMap) -> Priority {
        match &self.priority_header {
            Some(h) => Priority::from_header(headers.get(h)),
            None => Priority::Normal,
        }
    }
}

// === impl LoadShedder ===

impl LoadShedder {
    /// A shedder for one route. `queue_depth` is its `rampart_queue_depth`; `concurrency_limit`
    /// its `rampart_concurrency_limit`: the route limit in force (`max_in_flight`, or the
    /// adaptive limit when lower), 0 for a route with neither.
    pub fn new(
        cfg: &file::LoadShed,
        tracked: &Arc<TrackedTenants>,
        clock: SharedClock,
        queue_depth: IntGauge,
        concurrency_limit: Option<IntGauge>,
    ) -> Arc<Self> {
        let now = clock.now_nanos();
        let shedder = Arc::new_cyclic(|me| LoadShedder {
            me: me.clone(),
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(u32::MAX),
            max_in_flight: AtomicU32::new(u32::MAX),
            tenant_cap: AtomicU32::new(u32::MAX),
            queue_size: AtomicU32::new(0),
            queue_timeout_nanos: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            released: AtomicU64::new(0),
            latency_nanos: AtomicU64::new(0),
            latencies: AtomicU64::new(0),
            queue: Mutex::new(queue::FairQueue::default()),
            tenants: TenantMap::new(tracked, clock.clone()),
            adaptive: adaptive::Gradient::new(now),
            drain: Mutex::new(drain::DrainRate::new(now)),
            clock,
            gauges: parking_lot::Mutex::new(ShedGauges {
                queue_depth,
                concurrency_limit,
            }),
            limit_shown: AtomicI64::new(0),
            limited: AtomicBool::new(false),
        });
        shedder.reconfigure(cfg);
        shedder
    }

    /// Applies a reloaded `load_shed` in place: waiters keep their place and are woken if the
    /// new limit frees room; counts of requests in flight carry over.
    pub fn reconfigure(&self, cfg: &file::LoadShed) {
        let max = cfg.max_in_flight.unwrap_or(u32::MAX);
        self.max_in_flight.store(max, SeqCst);
        let cap = cfg.per_tenant_max_in_flight.unwrap_or(u32::MAX);
        self.tenant_cap.store(cap, SeqCst);
        let (size, timeout) = cfg
            .queue
            .as_ref()
            .map_or((0, Duration::ZERO), |q| (q.size, q.timeout.0));
        self.queue_size.store(size, SeqCst);
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.queue_timeout_nanos.store(timeout, SeqCst);
        let now = self.clock.now_nanos();
        self.adaptive.configure(cfg.adaptive.as_ref(), max, now);
        let limited = cfg.max_in_flight.is_some() || cfg.adaptive.is_some();
        self.limited.store(limited, SeqCst);
        self.refresh_limit();
    }

    /// Takes a slot for a request of `tenant`: at once when one is free and nobody waits, else
    /// after waiting in the fair queue (up to `queue.timeout`), else a [`Shed`]. Dropping the
    /// future while it waits leaves the queue at once.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        priority: Priority,
    ) -> Result<ShedSlot, Shed> {
        let hold = self.hold_tenant(tenant)?;
        if self.adaptive.probing() {
            let now = self.clock.now_nanos();
            if self
                .adaptive
                .end_overdue_probe(now, self.in_flight.load(SeqCst))
            {
                self.refresh_limit();
            }
        }
        if self.waiting.load(SeqCst) == 0 && self.try_take() {
            return Ok(ShedSlot::new(self.clone(), hold));
        }
        self.wait(tenant, priority, hold).await
    }

    /// Route slots held now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(SeqCst)
    }

    /// Requests waiting now.
    pub fn queue_len(&self) -> u32 {
        self.waiting.load(SeqCst)
    }

    /// The route limit in force: `min(max_in_flight, adaptive limit)`; `u32::MAX` = none.
    pub fn limit(&self) -> u32 {
        self.limit.load(SeqCst)
    }

    /// The adaptive limit in force, if adaptive concurrency is on.
    pub fn adaptive_limit(&self) -> Option<u32> {
        self.adaptive.limit()
    }

    /// A per-tenant slot, when the cap is on and the tenant can be tracked.
    fn hold_tenant(&self, tenant: &str) -> Result<Option<TenantHold>, Shed> {
        let cap = self.tenant_cap.load(SeqCst);
        if cap == u32::MAX {
            return Ok(None);
        }
        let Some(slots) = self
            .tenants
            .get_or_insert_with(tenant, TenantSlots::default)
        else {
            // Every tracked entry is in use: admit without a tenant slot (see the module doc).
            return Ok(None);
        };
        match TenantHold::take(slots, cap) {
            Some(hold) => Ok(Some(hold)),
            None => Err(self.shed(ShedReason::TenantInFlight)),
        }
    }

    /// One route slot if `in_flight < limit`.
    fn try_take(&self) -> bool {
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |n| {
                (n < self.limit.load(SeqCst)).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a route slot back and hands it to a waiter if there is one.
    fn release(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
        self.released.fetch_add(1, SeqCst);
        if self.waiting.load(SeqCst) > 0 {
            let mut q = self.queue.lock();
            self.dispatch(&mut q);
        }
    }

    /// Grants free route slots to waiters in queue order; call with the queue lock held.
    fn dispatch(&self, q: &mut queue::FairQueue<Waiter>) {
        let Some(me) = self.me.upgrade() else {
            return; // being dropped: no waiter can exist
        };
        'slots: while !q.is_empty() && self.try_take() {
            // One route slot is taken; find a waiter that is still there to take it.
            while let Some(w) = q.pop() {
                if w.grant(me.clone()) {
                    continue 'slots;
                }
            }
            self.in_flight.fetch_sub(1, SeqCst);
        }
        self.sync_waiting(q);
    }

    /// Publishes the queue length to the fast paths and the gauge (its change: see
    /// `queue_depth`).
    fn sync_waiting(&self, q: &queue::FairQueue<Waiter>) {
        let len = u32::try_from(q.len()).unwrap_or(u32::MAX);
        if self.waiting.load(SeqCst) != len {
            // Changed under the gauges' lock, so a relabel moves exactly this shedder's part.
            let g = self.gauges.lock();
            let was = self.waiting.swap(len, SeqCst);
            g.queue_depth.add(i64::from(len) - i64::from(was));
        }
    }

    /// Moves this shedder's parts of its series (waiters, limit shown) to `queue_depth` and
    /// `concurrency_limit`, the series of its route's new labels after a reload.
    fn relabel(&self, queue_depth: IntGauge, concurrency_limit: Option<IntGauge>) {
        let mut g = self.gauges.lock();
        let waiting = i64::from(self.waiting.load(SeqCst));
        let shown = self.limit_shown.load(SeqCst);
        g.queue_depth.sub(waiting);
        queue_depth.add(waiting);
        if let Some(c) = &g.concurrency_limit {
            c.sub(shown);
        }
        if let Some(c) = &concurrency_limit {
            c.add(shown);
        }
        *g = ShedGauges {
            queue_depth,
            concurrency_limit,
        };
    }

    /// Recomputes the effective limit and wakes waiters it makes room for.
    fn refresh_limit(&self) {
        // Callers race (a reload's new max_in_flight, a request's adaptive step): one that read
        // its inputs before another's store may store after it. Whoever stores reads the inputs
        // again after, and stores again if they moved, so the last store follows the last inputs.
        let limit = loop {
            let adaptive = self.adaptive.limit();
            let max = self.max_in_flight.load(SeqCst);
            let limit = adaptive.map_or(u32::MAX, |a| a.max(1)).min(max);
            self.limit.store(limit, SeqCst);
            if self.adaptive.limit() == adaptive && self.max_in_flight.load(SeqCst) == max {
                break limit;
            }
        };
        // 0 for a route without a limit; never for a limit of u32::MAX (adaptive.max
        // 4294967295 read 0).
        let shown = |limit: u32| {
            if self.limited.load(SeqCst) {
                i64::from(limit)
            } else {
                0
            }
        };
        if self.limit_shown.load(SeqCst) != shown(limit) {
            let g = self.gauges.lock();
            if let Some(c) = &g.concurrency_limit {
                // Read again under the lock: a racing caller's stale limit is not shown last.
                let now = shown(self.limit.load(SeqCst));
                let was = self.limit_shown.swap(now, SeqCst);
                c.add(now - was);
            }
        }
        if self.waiting.load(SeqCst) > 0 {
            let mut q = self.queue.lock();
            self.dispatch(&mut q);
        }
    }

    /// Which limit a request that may not wait ran into.
    fn limit_reason(&self) -> ShedReason {
        match self.adaptive.limit() {
            Some(a) if a < self.max_in_flight.load(SeqCst) => ShedReason::Adaptive,
            _ => ShedReason::MaxInFlight,
        }
    }

    /// A refusal with `retry_after` from the drain rate.
    fn shed(&self, reason: ShedReason) -> Shed {
        let now = self.clock.now_nanos();
        let released = self.released.load(SeqCst);
        let ahead = self.waiting.load(SeqCst);
        let held = self.in_flight.load(SeqCst);
        let latencies = (
            self.latency_nanos.swap(0, Relaxed),
            self.latencies.swap(0, Relaxed),
        );
        let retry_after =
            self.drain
                .lock()
                .retry_after(now, released, ahead, drain::Held { held, latencies });
        Shed {
            reason,
            retry_after,
        }
    }

    /// Feeds one try's latency to the drain rate, and what it tells, to the adaptive limit.
    fn record(&self, outcome: Outcome, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.fetch_add(nanos, Relaxed);
        self.latencies.fetch_add(1, Relaxed);
        let now = self.clock.now_nanos();
        let in_flight = self.in_flight.load(SeqCst);
        let sample = adaptive::Sample::of(outcome);
        if self.adaptive.record(sample, elapsed, now, in_flight) {
            self.refresh_limit();
        }
    }
}

impl Drop for LoadShedder {
    /// Takes this shedder's part out of the series it shares (a route gone in a reload whose
    /// labels another route still has).
    fn drop(&mut self) {
        let g = self.gauges.get_mut();
        if let Some(c) = &g.concurrency_limit {
            c.sub(self.limit_shown.load(SeqCst));
        }
        g.queue_depth.sub(i64::from(self.waiting.load(SeqCst)));
    }
}

impl std::fmt::Debug for LoadShedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadShedder")
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit())
            .field("waiting", &self.queue_len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
