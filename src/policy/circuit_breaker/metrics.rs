//! Cached metric handles of one upstream's breakers.
//!
//! Why cached: a transition must not format label sets. The transition counters are looked up
//! once per upstream, the state gauges once per breaker (per tenant breaker, when it is made).
//!
//! Gauge meaning (`rampart_circuit_breaker_state{upstream, tenant, state}`), SPEC §5: 1 for the
//! state in force, 0 for the two others.
//! - `scope: upstream` (tenant "") and `scope: tenant` for a tenant with its own label: the
//!   gauge is *set*, from the moment the breaker is made. A tenant's breaker that is evicted
//!   (`tenants.max_tracked`) leaves its series at closed=1: a fresh closed breaker is what
//!   judges that tenant when it comes back, so closed is the state in force (all three at 0
//!   would fire an alert on `{state="closed"} == 0` for a tenant that is fine).
//! - `_other` (tenants past `tenants.metrics_labels`): each folded breaker *adds* 1 to the
//!   series of its state and moves that 1 on every transition; eviction takes it away. The
//!   series count how many folded breakers are in each state: `{state="open"} 3` means three
//!   of them are open. Alerts on `> 0` work for every series.
//!
//! A breaker that a reload replaces (its settings changed) is reset to closed at the reload:
//! the reset is counted as a transition (`open` or `half_open` to `closed`) and moves its
//! gauges; from then on the retired breaker (which requests of the old generation still in
//! flight may use) touches neither, and the series belong to its successor.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::state::State;
use crate::metrics::Metrics;

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];
/// The transitions a breaker can make, in the order of `BreakerMetrics::transitions`; the last
/// happens only when a reload that changed its settings resets an open breaker.
const TRANSITIONS: [(State, State); 5] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Open),
    (State::HalfOpen, State::Closed),
    (State::Open, State::Closed),
];

/// One upstream's breaker metrics: its transition counters and the state-gauge family.
pub(crate) struct BreakerMetrics {
    upstream: Arc<str>,
    state: IntGaugeVec,
    transitions: [IntCounter; 5],
}

/// The three state gauges of one breaker.
pub(crate) struct StateGauges {
    by_state: [IntGauge; 3],
    kind: Kind,
}

/// Whose series a breaker's gauges are, which decides how they move (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `scope: upstream`, tenant "": set; the series outlives the breaker (its successor after
    /// a reload owns it, or the reload removes it).
    Upstream,
    /// A tenant with its own label: set; back to closed when the breaker is evicted.
    Own,
    /// `_other`: counts the folded breakers in each state.
    Folded,
}

fn index(state: State) -> usize {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

// === impl BreakerMetrics ===

impl BreakerMetrics {
    /// Looks up `upstream`'s transition counters (created at 0, so `rate()` works before the
    /// first trip).
    pub(crate) fn new(upstream: &str, metrics: &Metrics) -> Arc<Self> {
        let transitions = TRANSITIONS.map(|(from, to)| {
            metrics
                .breaker_transitions
                .with_label_values(&[upstream, from.as_str(), to.as_str()])
        });
        Arc::new(BreakerMetrics {
            upstream: Arc::from(upstream),
            state: metrics.breaker_state.clone(),
            transitions,
        })
    }

    /// Counts one transition.
    pub(crate) fn transition(&self, from: State, to: State) {
        if let Some(i) = TRANSITIONS.iter().position(|&t| t == (from, to)) {
            self.transitions[i].inc();
        }
    }

    /// The state gauges of the breaker labelled `tenant` ("" for scope upstream).
    pub(crate) fn gauges(&self, tenant: &str, kind: Kind) -> StateGauges {
        StateGauges {
            by_state: STATES.map(|s| {
                self.state
                    .with_label_values(&[&self.upstream, tenant, s.as_str()])
            }),
            kind,
        }
    }
}

// === impl StateGauges ===

impl StateGauges {
    /// Moves the gauges from `from` (None: the breaker is new) to `to`.
    pub(crate) fn enter(&self, from: Option<State>, to: State) {
        if self.kind == Kind::Folded {
            if let Some(from) = from {
                self.by_state[index(from)].dec();
            }
            self.by_state[index(to)].inc();
        } else {
            for s in STATES {
                self.by_state[index(s)].set(i64::from(s == to));
            }
        }
    }

    /// The breaker is gone (evicted, or retired by a reload) while in `state`: a folded one
    /// gives its 1 back; a tenant's own series read closed, the state of the fresh breaker
    /// that judges the tenant from now on. The upstream series keeps its value: the next
    /// breaker of that upstream (a reload with new settings) owns it.
    pub(crate) fn leave(&self, state: State) {
        match self.kind {
            Kind::Folded => self.by_state[index(state)].dec(),
            Kind::Own => self.enter(Some(state), State::Closed),
            Kind::Upstream => {}
        }
    }
}
