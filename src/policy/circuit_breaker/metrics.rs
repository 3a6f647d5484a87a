//! Cached metric handles of one upstream's breakers.
//!
//! Why cached: a transition must not format label sets. The transition counters are looked up
//! once per upstream, the state gauges once per breaker (per tenant breaker, when it is made).
//!
//! Gauge meaning (`rampart_circuit_breaker_state{upstream, tenant, state}`):
//! - `scope: upstream` (tenant ""): the gauge is *set*, 1 for the state in force and 0 for the
//!   two others, from the moment the breaker is built.
//! - `scope: tenant`: each tenant breaker *adds* 1 to the series of its state and moves that 1
//!   on every transition; eviction takes it away. For a tenant with its own label that reads
//!   exactly as above (1 for its state, 0 for the others) while the tenant is tracked, and all
//!   zero once evicted. For `_other` (tenants past `tenants.metrics_labels`) the series count
//!   how many folded breakers are in each state: `{state="open"} 3` means three of them are
//!   open. Alerts on `> 0` work for both.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::state::State;
use crate::metrics::Metrics;

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];
/// The four transitions a breaker can make, in the order of `BreakerMetrics::transitions`.
const TRANSITIONS: [(State, State); 4] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Open),
    (State::HalfOpen, State::Closed),
];

/// One upstream's breaker metrics: its transition counters and the state-gauge family.
pub(crate) struct BreakerMetrics {
    upstream: Arc<str>,
    state: IntGaugeVec,
    transitions: [IntCounter; 4],
}

/// The three state gauges of one breaker.
pub(crate) struct StateGauges {
    by_state: [IntGauge; 3],
    /// Count breakers (scope tenant) instead of setting 0/1 (scope upstream).
    counting: bool,
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
    pub(crate) fn gauges(&self, tenant: &str, counting: bool) -> StateGauges {
        StateGauges {
            by_state: STATES.map(|s| {
                self.state
                    .with_label_values(&[&self.upstream, tenant, s.as_str()])
            }),
            counting,
        }
    }
}

// === impl StateGauges ===

impl StateGauges {
    /// Moves the gauges from `from` (None: the breaker is new) to `to`.
    pub(crate) fn enter(&self, from: Option<State>, to: State) {
        if self.counting {
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

    /// The breaker is gone (evicted): a counting gauge gives its 1 back. A set gauge keeps
    /// its value: the next breaker of that upstream (a reload with new settings) owns it.
    pub(crate) fn leave(&self, state: State) {
        if self.counting {
            self.by_state[index(state)].dec();
        }
    }
}
