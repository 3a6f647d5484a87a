//! One breaker's state machine: closed → open → half_open → closed, on an injected clock.
//!
//! Why this shape: admission runs on every try, so in the closed state it is one atomic load
//! of a state word (no lock, no clock read). Everything else (counting outcomes, the sliding
//! window, transitions, probe accounting) happens under one short `parking_lot` mutex that no
//! caller holds across an await. The state word carries an epoch that moves on every
//! transition; a try records against the epoch it was admitted in, so an outcome that arrives
//! after the state changed (a slow call admitted before the trip, a probe of an earlier
//! half-open round) is ignored instead of counting in the wrong round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::metrics::{BreakerMetrics, StateGauges};
use super::rules::Rules;
use super::window::{Window, FAILED, SLOW};
use super::CircuitOpen;
use crate::clock::SharedClock;
use crate::policy::outcome::Outcome;
use crate::tenant::tracked::TenantState;

/// The three states of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are counted against the trip rules.
    Closed,
    /// Calls are refused until `open_for` has passed.
    Open,
    /// A fixed number of trial calls decide whether to close or open again.
    HalfOpen,
}

/// What an admitted try carries back to [`Breaker::record`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    /// The state word when admitted (epoch and state).
    word: u64,
    /// Whether the try holds one of the half-open probe permits.
    probe: bool,
}

/// One breaker: for an upstream, or for one tenant of it.
pub(super) struct Breaker {
    /// `epoch << 2 | state`; written only under `inner`, read lock-free by `admit`.
    word: AtomicU64,
    /// Clock nanos when an open breaker half-opens; stored before `word` publishes `Open`.
    open_until: AtomicU64,
    /// Tries refused (open, or half-open with every probe out).
    rejected: AtomicU64,
    inner: Mutex<Inner>,
    rules: Arc<Rules>,
    clock: SharedClock,
    gauges: StateGauges,
    metrics: Arc<BreakerMetrics>,
}

/// Counts that change with outcomes; guarded by the breaker's mutex.
struct Inner {
    consecutive: u32,
    window: Window,
    /// Trips since the last close; `open_for` doubles with each after the first.
    trips: u32,
    /// The `open_for` of the current (or last) open period, in nanos.
    open_for: u64,
    probes_granted: u32,
    probes_ok: u32,
    probes_slow: u32,
    successes: u64,
    failures: u64,
    /// Reset by a reload that replaced it ([`Breaker::retire`]): its transitions no longer
    /// reach the metrics, whose series belong to its successor.
    retired: bool,
}

fn state_of(word: u64) -> State {
    match word & 3 {
        0 => State::Closed,
        1 => State::Open,
        _ => State::HalfOpen,
    }
}

fn code(state: State) -> u64 {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

// === impl State ===

impl State {
    /// The `state` label value and the name in `/state`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker; its gauges already read closed. A `retired` one (made for a request
    /// of a generation a reload replaced) never touches the metrics.
    pub(super) fn new(
        rules: Arc<Rules>,
        clock: SharedClock,
        gauges: StateGauges,
        metrics: Arc<BreakerMetrics>,
        retired: bool,
    ) -> Self {
        if !retired {
            gauges.enter(None, State::Closed);
        }
        Breaker {
            word: AtomicU64::new(code(State::Closed)),
            open_until: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                consecutive: 0,
                window: Window::new(rules.window),
                trips: 0,
                open_for: rules.open_for,
                probes_granted: 0,
                probes_ok: 0,
                probes_slow: 0,
                successes: 0,
                failures: 0,
                retired,
            }),
            rules,
            clock,
            gauges,
            metrics,
        }
    }

    /// The state in force (an open breaker past its `open_for` still reads open until the
    /// next admit moves it to half-open).
    pub(super) fn state(&self) -> State {
        state_of(self.word.load(Ordering::Acquire))
    }

    /// Lets a try through or refuses it. Closed: one atomic load.
    pub(super) fn admit(&self) -> Result<Ticket, CircuitOpen> {
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) == State::Closed {
            return Ok(Ticket { word, probe: false });
        }
        self.admit_slow(word)
    }

    #[cold]
    fn admit_slow(&self, word: u64) -> Result<Ticket, CircuitOpen> {
        let now = self.clock.now_nanos();
        if state_of(word) == State::Open {
            self.refuse_if_open(now)?;
        }
        let mut inner = self.inner.lock();
        let word = self.word.load(Ordering::Acquire);
        match state_of(word) {
            State::Closed => Ok(Ticket { word, probe: false }),
            State::Open => {
                self.refuse_if_open(now)?;
                let word = self.transition(&mut inner, word, State::HalfOpen, now);
                self.grant_probe(&mut inner, word)
            }
            State::HalfOpen => self.grant_probe(&mut inner, word),
        }
    }

    fn refuse_if_open(&self, now: u64) -> Result<(), CircuitOpen> {
        let until = self.open_until.load(Ordering::Acquire);
        if now < until {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(CircuitOpen {
                retry_after: Duration::from_nanos(until - now),
            });
        }
        Ok(())
    }

    /// Half-open: one of exactly `half_open_probes` permits, or a refusal. The time until
    /// half-open is zero here: the breaker is waiting for its probes, not for the clock.
    fn grant_probe(&self, inner: &mut Inner, word: u64) -> Result<Ticket, CircuitOpen> {
        if inner.probes_granted < self.rules.probes {
            inner.probes_granted += 1;
            return Ok(Ticket { word, probe: true });
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(CircuitOpen {
            retry_after: Duration::ZERO,
        })
    }

    /// Counts how an admitted try ended. A try admitted in an earlier state or round counts
    /// for nothing.
    pub(super) fn record(&self, ticket: Ticket, outcome: Outcome, elapsed: Duration) {
        if !ticket.probe && !outcome.is_verdict() {
            // Cancelled, the client's fault, or never sent: no evidence about the upstream.
            return;
        }
        let mut inner = self.inner.lock();
        if self.word.load(Ordering::Acquire) != ticket.word {
            return;
        }
        let slow = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX) > self.rules.slow_nanos;
        if ticket.probe {
            self.judge_probe(&mut inner, ticket.word, outcome, slow);
        } else {
            self.count(&mut inner, ticket.word, outcome.is_failure(), slow);
        }
    }

    /// Closed: counts a verdict and trips the breaker if a rule says so.
    fn count(&self, inner: &mut Inner, word: u64, failed: bool, slow: bool) {
        if failed {
            inner.failures += 1;
            inner.consecutive = inner.consecutive.saturating_add(1);
        } else {
            inner.successes += 1;
            inner.consecutive = 0;
        }
        inner
            .window
            .push((u8::from(failed) * FAILED) | (u8::from(slow) * SLOW));
        if self.rules.trips(inner.consecutive, &inner.window.counts()) {
            let now = self.clock.now_nanos();
            self.transition(inner, word, State::Open, now);
        }
    }

    /// Half-open: any failed probe reopens; once every probe succeeded, the breaker closes
    /// unless the slow ones reach the slow-call threshold.
    fn judge_probe(&self, inner: &mut Inner, word: u64, outcome: Outcome, slow: bool) {
        let now = self.clock.now_nanos();
        match outcome {
            // The client broke the exchange or went away, or the probe was never sent (it
            // waited in rampart for a connection until its deadline): no verdict on the
            // upstream (SPEC §14: a client's faults never trip a breaker), and the permit goes
            // back for another request to probe with.
            Outcome::ClientFault | Outcome::Cancelled | Outcome::Unsent => {
                inner.probes_granted = inner.probes_granted.saturating_sub(1);
            }
            _ if outcome.is_failure() => {
                inner.failures += 1;
                self.transition(inner, word, State::Open, now);
            }
            _ => {
                inner.successes += 1;
                inner.probes_ok += 1;
                inner.probes_slow += u32::from(slow);
                if inner.probes_ok >= self.rules.probes {
                    let to = if self.rules.probes_too_slow(inner.probes_slow) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.transition(inner, word, to, now);
                }
            }
        }
    }

    /// Moves to `to` under the lock: resets what the new state starts from, publishes the new
    /// word, and moves the metrics. Returns the new word.
    fn transition(&self, inner: &mut Inner, word: u64, to: State, now: u64) -> u64 {
        let from = state_of(word);
        match to {
            State::Open => {
                inner.trips = inner.trips.saturating_add(1);
                inner.open_for = self.rules.open_for_after(inner.trips);
                self.open_until
                    .store(now.saturating_add(inner.open_for), Ordering::Release);
            }
            State::HalfOpen => {
                inner.probes_granted = 0;
                inner.probes_ok = 0;
                inner.probes_slow = 0;
            }
            State::Closed => {
                inner.trips = 0;
                inner.consecutive = 0;
                inner.window.clear();
            }
        }
        let next = ((word & !3).wrapping_add(4)) | code(to);
        self.word.store(next, Ordering::Release);
        if !inner.retired {
            self.gauges.enter(Some(from), to);
            self.metrics.transition(from, to);
        }
        next
    }

    /// A reload replaced this breaker (its settings changed): resets it to closed, counting
    /// that transition (`open` or `half_open` to `closed`) and moving the gauges, then gives
    /// its gauges up. Tries admitted before are ignored (the epoch moved); requests of the old
    /// generation still in flight may go on using it, unseen by the metrics.
    pub(super) fn retire(&self) {
        let mut inner = self.inner.lock();
        if inner.retired {
            return;
        }
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) != State::Closed {
            let now = self.clock.now_nanos();
            self.transition(&mut inner, word, State::Closed, now);
        }
        self.gauges.leave(State::Closed);
        inner.retired = true;
    }

    /// Operator view for `GET /state`.
    pub(super) fn snapshot(&self) -> serde_json::Value {
        let inner = self.inner.lock();
        let state = self.state();
        let now = self.clock.now_nanos();
        let until = self.open_until.load(Ordering::Acquire);
        let mut v = serde_json::json!({
            "state": state.as_str(),
            "consecutive_failures": inner.consecutive,
            "window": {
                "size": self.rules.window,
                "calls": inner.window.len,
                "failures": inner.window.failures,
                "slow": inner.window.slow,
            },
            "trips": inner.trips,
            "open_for_seconds": Duration::from_nanos(inner.open_for).as_secs_f64(),
            "successes": inner.successes,
            "failures": inner.failures,
            "rejected": self.rejected.load(Ordering::Relaxed),
        });
        if state == State::Open {
            let left = Duration::from_nanos(until.saturating_sub(now));
            v["half_open_in_seconds"] = left.as_secs_f64().into();
        }
        if state == State::HalfOpen {
            v["probes"] = serde_json::json!({
                "allowed": self.rules.probes,
                "granted": inner.probes_granted,
                "succeeded": inner.probes_ok,
            });
        }
        v
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        if !self.inner.get_mut().retired {
            self.gauges.leave(self.state());
        }
    }
}

impl TenantState for Breaker {
    /// Closed with nothing counted: a fresh breaker would behave the same.
    fn is_idle(&self, _now_nanos: u64) -> bool {
        self.state() == State::Closed
            && self
                .inner
                .try_lock()
                .is_some_and(|i| i.consecutive == 0 && i.window.len == 0)
    }

    /// Open and half-open breakers are kept above all closed ones (dropping them would let
    /// a failing tenant through at once); closed ones by the evidence they hold.
    fn keep_score(&self, _now_nanos: u64) -> u64 {
        if self.state() != State::Closed {
            return u64::MAX;
        }
        self.inner.try_lock().map_or(u64::MAX - 1, |i| {
            let bad = u64::from(i.consecutive) + u64::from(i.window.failures + i.window.slow);
            (bad << 32) | u64::from(i.window.len)
        })
    }
}
