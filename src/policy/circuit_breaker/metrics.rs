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
//! - `_other` (tenants past `tenants.metrics_labels`): 1 for each state that at least one
//!   folded breaker is in, 0 for the others, so `== 1` and `> 0` alerts read alike on every
//!   series. Several folded breakers in different states set several series to 1 (they are
//!   several breakers, folded into one label). Behind each series is a count, kept per
//!   upstream ([`FoldedCount`]): a folded breaker adds 1 to its state's count when made,
//!   moves it on every transition, and takes it away when evicted; the series is
//!   min(count, 1), written by whoever moved the count, so the work is done on transitions,
//!   never on a request that changes nothing. A tenant leaving `open` drops
//!   `{tenant="_other",state="open"}` to 0 only when no folded breaker is left open.
//!
//! A breaker that a reload replaces (its settings changed) is reset to closed at the reload:
//! the reset is counted as a transition (`open` or `half_open` to `closed`) and moves its
//! gauges; from then on the retired breaker (which requests of the old generation still in
//! flight may use) touches neither, and the series belong to its successor.

use std::sync::atomic::{fence, AtomicI64, Ordering};
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
    /// How many of its folded breakers are in each state.
    folded: Arc<FoldedCount>,
}

/// How many folded (`_other`) breakers of one upstream are in each state, in `STATES` order;
/// the `_other` series show min(count, 1). One per [`BreakerMetrics`]: a reload that replaces
/// the breaker retires every breaker counted here (each gives its 1 back) before the
/// successor, with a count of its own, makes any.
type FoldedCount = [AtomicI64; 3];

/// The three state gauges of one breaker.
pub(crate) struct StateGauges {
    by_state: [IntGauge; 3],
    kind: Kind,
    /// `Kind::Folded`: the upstream's count behind the `_other` series.
    folded: Option<Arc<FoldedCount>>,
}

/// Whose series a breaker's gauges are, which decides how they move (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `scope: upstream`, tenant "": set; the series outlives the breaker (its successor after
    /// a reload owns it, or the reload removes it).
    Upstream,
    /// A tenant with its own label: set; back to closed when the breaker is evicted.
    Own,
    /// `_other`: 1 for each state at least one folded breaker is in.
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
            folded: Arc::default(),
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
            folded: (kind == Kind::Folded).then(|| self.folded.clone()),
        }
    }
}

// === impl StateGauges ===

impl StateGauges {
    /// Moves the gauges from `from` (None: the breaker is new) to `to`.
    pub(crate) fn enter(&self, from: Option<State>, to: State) {
        if self.kind == Kind::Folded {
            if let Some(from) = from {
                self.count(from, -1);
            }
            self.count(to, 1);
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
            Kind::Folded => self.count(state, -1),
            Kind::Own => self.enter(Some(state), State::Closed),
            Kind::Upstream => {}
        }
    }

    /// Adds `delta` to the folded breakers counted in `state`, and shows min(count, 1).
    ///
    /// Why the loop: two folded breakers moving at once (one into `open`, the last one out)
    /// could have their gauge writes land in the other order than their counts, leaving 1
    /// with none open. So each writer reads the count back after its write and writes again
    /// if it moved meanwhile: the last write made is of the count as it then stood, and any
    /// later move has a write of its own after it. The fences keep a write from being
    /// overtaken by the read after it (a store buffer would let it), and order it after the
    /// count moves of the others. Only transitions come here, and the loop turns again only
    /// while other folded breakers of the upstream move: no lock, no wait on the request path.
    fn count(&self, state: State, delta: i64) {
        let Some(count) = &self.folded else { return };
        let i = index(state);
        count[i].fetch_add(delta, Ordering::SeqCst);
        loop {
            fence(Ordering::SeqCst);
            let seen = count[i].load(Ordering::SeqCst);
            self.by_state[i].set(seen.clamp(0, 1));
            fence(Ordering::SeqCst);
            if count[i].load(Ordering::SeqCst) == seen {
                return;
            }
        }
    }
}
