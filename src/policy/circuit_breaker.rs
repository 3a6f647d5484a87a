//! Circuit breaking: stop sending to an upstream that keeps failing, and probe it back.
//!
//! Why: retries and timeouts protect one request; a breaker protects the upstream and the
//! callers from each other when failures persist. An open breaker answers at once
//! (`circuit_open`, 503, `retry-after` = time until half-open) instead of spending a
//! connection and a deadline on a call that will most likely fail, and gives the upstream
//! room to recover.
//!
//! A breaker guards an upstream (SPEC §2), so one [`CircuitBreaker`] is built per upstream and
//! shared by every route to it; with `scope: tenant` it holds one breaker per tenant in a
//! [`TenantMap`], counted against `tenants.max_tracked`, so one tenant's failing traffic never
//! opens the breaker of the others.
//!
//! Life of a try: [`CircuitBreaker::admit`] gives a [`BreakerPermit`] or a [`CircuitOpen`];
//! the permit's [`BreakerPermit::record`] reports the try's [`Outcome`] and duration. Rules
//! (a rule left out is off): `consecutive_failures`; `failure_rate` over the last `window`
//! calls once `min_calls` are in it; `slow_call` (calls slower than `duration`) over the same
//! window. Open lasts `open_for`, doubled on each trip that follows a failed half-open round,
//! up to `open_for_max`, and back to `open_for` after a close. Half-open admits exactly
//! `half_open_probes` tries; all succeeding closes, any failing reopens.
//!
//! Outcomes that are not verdicts ([`Outcome::Cancelled`], [`Outcome::ClientFault`],
//! [`Outcome::Unsent`]) count for nothing. A half-open probe that ends so (its client went
//! away, its permit dropped unrecorded, the client broke the exchange, or its deadline passed
//! while it waited in rampart for a connection and it was never sent) gives its permit back so
//! another request can probe: a client's doing, or rampart's own queue, never reopens a breaker
//! or lengthens its `open_for` (SPEC §14).
//!
//! When `scope: tenant` finds `max_tracked` reached with every tracked entry in use, the try
//! goes through without a breaker (a pass-through permit): the breaker must never be the
//! reason for refusing a healthy upstream. Metrics: see `circuit_breaker/metrics.rs` for what
//! the state gauges show, `_other` included.

mod metrics;
mod rules;
mod state;
mod window;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use self::metrics::{BreakerMetrics, Kind};
use self::rules::Rules;
use self::state::{Breaker, Ticket};
use crate::clock::SharedClock;
use crate::config::file::{self, BreakerScope};
use crate::metrics::Metrics;
use crate::policy::outcome::Outcome;
use crate::tenant::tracked::{TenantMap, TrackedTenants};
use crate::tenant::Labels;

pub use self::rules::{DEFAULT_MIN_CALLS, DEFAULT_WINDOW};
pub use self::state::State;

/// Tenants listed per breaker in [`CircuitBreaker::snapshot`]; the rest are only counted.
pub const SNAPSHOT_TENANTS: usize = 100;

/// The breaker of one upstream: a single breaker, or one per tenant (`scope: tenant`).
pub struct CircuitBreaker {
    upstream: Arc<str>,
    cfg: file::CircuitBreaker,
    scope: Scope,
    /// Set by [`retire`](Self::retire): tenant breakers made from then on stay off the metrics.
    retired: AtomicBool,
}

enum Scope {
    Upstream(Arc<Breaker>),
    Tenant {
        map: Arc<TenantMap<Breaker>>,
        rules: Arc<Rules>,
        clock: SharedClock,
        metrics: Arc<BreakerMetrics>,
    },
}

/// A try refused because the breaker is open (or half-open with every probe out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", Says(*retry_after))]
pub struct CircuitOpen {
    /// Time until the breaker half-opens; zero while it is half-open and every probe is out.
    /// The answer's `retry-after` is this rounded up to whole seconds, at least 1.
    pub retry_after: Duration,
}

/// What a refusal says: when an open breaker half-opens, or, once it is half-open, that it waits
/// for the outcome of its probes (it closes or opens again on them, not on the clock).
struct Says(Duration);

impl std::fmt::Display for Says {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_zero() {
            f.write_str("circuit half-open: every probe is out, waiting for their outcome")
        } else {
            write!(f, "circuit open: half-open in {:.3}s", self.0.as_secs_f64())
        }
    }
}

/// Leave to send one try; report how it ended with [`record`](Self::record).
///
/// Dropping it without a record counts as [`Outcome::Cancelled`] (no verdict; a probe permit
/// goes back for another request to probe with).
#[must_use = "a permit dropped unrecorded counts as a cancelled try"]
pub struct BreakerPermit {
    /// None: a pass-through permit (no breaker applied).
    breaker: Option<Arc<Breaker>>,
    ticket: Option<Ticket>,
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    /// Builds `upstream`'s breaker from `cfg`. Scope upstream: its state series
    /// (`tenant=""`) appear at once, closed=1. Scope tenant: each tenant's series appear when
    /// its breaker is made, and its entries count against `tracked`.
    pub fn new(
        upstream: &str,
        cfg: &file::CircuitBreaker,
        tracked: &Arc<TrackedTenants>,
        clock: SharedClock,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let rules = Arc::new(Rules::new(cfg));
        let metrics = BreakerMetrics::new(upstream, metrics);
        let scope = match cfg.scope {
            BreakerScope::Upstream => {
                let gauges = metrics.gauges("", Kind::Upstream);
                Scope::Upstream(Arc::new(Breaker::new(rules, clock, gauges, metrics, false)))
            }
            BreakerScope::Tenant => Scope::Tenant {
                map: TenantMap::new(tracked, clock.clone()),
                rules,
                clock,
                metrics,
            },
        };
        Arc::new(CircuitBreaker {
            upstream: Arc::from(upstream),
            cfg: cfg.clone(),
            scope,
            retired: AtomicBool::new(false),
        })
    }

    /// Asks leave for one try of `tenant` (ignored for scope upstream). `labels` names a new
    /// tenant breaker's metric series; it is read only when that breaker is made.
    pub fn admit(&self, tenant: &str, labels: &Labels) -> Result<BreakerPermit, CircuitOpen> {
        let breaker = match &self.scope {
            Scope::Upstream(b) => b.clone(),
            Scope::Tenant {
                map,
                rules,
                clock,
                metrics,
            } => {
                let made = map.get(tenant).or_else(|| {
                    map.get_or_insert_with(tenant, || {
                        let label = labels.label(tenant);
                        let kind = if labels.is_other(&label) {
                            Kind::Folded
                        } else {
                            Kind::Own
                        };
                        let gauges = metrics.gauges(&label, kind);
                        // Read under the map's shard lock, as `retire` walks it: a breaker
                        // made before `retire` set the flag is one the walk finds.
                        let retired = self.retired.load(Ordering::SeqCst);
                        let (r, c, m) = (rules.clone(), clock.clone(), metrics.clone());
                        Breaker::new(r, c, gauges, m, retired)
                    })
                });
                match made {
                    Some(b) => b,
                    None => return Ok(BreakerPermit::pass_through()),
                }
            }
        };
        let ticket = breaker.admit()?;
        Ok(BreakerPermit {
            breaker: Some(breaker),
            ticket: Some(ticket),
        })
    }

    /// The settings it was built from; a reload whose settings for this upstream are equal
    /// keeps this breaker (and its state).
    pub fn cfg(&self) -> &file::CircuitBreaker {
        &self.cfg
    }

    /// A reload replaced this breaker with one of other settings: every breaker it holds is
    /// reset to closed now, each reset of an open (or half-open) one counted in
    /// `rampart_circuit_breaker_transitions_total` and its state gauge moved to closed; from
    /// then on it (still serving requests of the old generation in flight) reports nothing.
    /// Called before the new generation is in force, once nothing can fail the reload.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        match &self.scope {
            Scope::Upstream(b) => b.retire(),
            Scope::Tenant { map, .. } => map.for_each(|_, b| b.retire()),
        }
    }

    /// The upstream it guards.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The state of the breaker that would judge `tenant` (scope upstream: the one breaker);
    /// None when scope tenant does not track `tenant`.
    pub fn state(&self, tenant: &str) -> Option<State> {
        match &self.scope {
            Scope::Upstream(b) => Some(b.state()),
            Scope::Tenant { map, .. } => map.get(tenant).map(|b| b.state()),
        }
    }

    /// Operator view for `GET /state`: state, counters, window, time until half-open; for
    /// scope tenant, the count per state and at most [`SNAPSHOT_TENANTS`] tenants, those not
    /// closed first.
    pub fn snapshot(&self) -> serde_json::Value {
        match &self.scope {
            Scope::Upstream(b) => {
                let mut v = b.snapshot();
                v["upstream"] = self.upstream.as_ref().into();
                v["scope"] = "upstream".into();
                v
            }
            Scope::Tenant { map, .. } => self.tenant_snapshot(map),
        }
    }

    fn tenant_snapshot(&self, map: &TenantMap<Breaker>) -> serde_json::Value {
        let mut counts = [0u64; 3];
        let mut picked: Vec<(bool, Box<str>, Arc<Breaker>)> = Vec::new();
        map.for_each(|tenant, b| {
            let state = b.state();
            counts[match state {
                State::Closed => 0,
                State::Open => 1,
                State::HalfOpen => 2,
            }] += 1;
            let closed = state == State::Closed;
            // Keep the list bounded while walking: closed entries only fill spare room.
            if picked.len() < SNAPSHOT_TENANTS || !closed {
                picked.push((closed, Box::from(tenant), b.clone()));
            }
            if picked.len() > 2 * SNAPSHOT_TENANTS {
                picked.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                picked.truncate(SNAPSHOT_TENANTS);
            }
        });
        picked.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        picked.truncate(SNAPSHOT_TENANTS);
        let mut tenants = serde_json::Map::new();
        for (_, tenant, b) in picked {
            tenants.insert(tenant.into(), b.snapshot());
        }
        serde_json::json!({
            "upstream": self.upstream.as_ref(),
            "scope": "tenant",
            "tenants_tracked": map.len(),
            "states": { "closed": counts[0], "open": counts[1], "half_open": counts[2] },
            "tenants_shown": tenants.len(),
            "tenants": tenants,
        })
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("upstream", &self.upstream)
            .field("scope", &self.cfg.scope)
            .finish()
    }
}

// === impl BreakerPermit ===

impl BreakerPermit {
    /// A permit that records nothing: no breaker applies (scope tenant with no room left).
    pub fn pass_through() -> Self {
        BreakerPermit {
            breaker: None,
            ticket: None,
        }
    }

    /// Reports how the try ended and how long it took (for the slow-call rule).
    pub fn record(mut self, outcome: Outcome, elapsed: Duration) {
        self.finish(outcome, elapsed);
    }

    fn finish(&mut self, outcome: Outcome, elapsed: Duration) {
        if let (Some(b), Some(t)) = (self.breaker.take(), self.ticket.take()) {
            b.record(t, outcome, elapsed);
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled, Duration::ZERO);
    }
}

impl std::fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("ticket", &self.ticket)
            .finish()
    }
}
