//! Adaptive concurrency: a route limit between `adaptive.min` and `adaptive.max` that follows
//! the upstream's measured latency, gradient style (after the idea of Netflix
//! concurrency-limits' Gradient2 and Envoy's adaptive_concurrency filter).
//!
//! Why: a fixed `max_in_flight` is either too low (wasted capacity) or too high (the upstream
//! queues internally and every request gets slow). Latency rising above its no-load baseline is
//! the sign of queueing, so the limit shrinks in proportion; when latency is back at the
//! baseline it grows again by a headroom that lets it probe for more capacity.
//!
//! # The baseline is measured, never learned from load
//! The baseline must be the latency *without* queueing. Latency measured while the limit is
//! full is queueing latency, and letting the baseline follow it (as a slow drift towards each
//! window's mean did) makes an overloaded upstream the new normal within seconds: the limit
//! went back to `max` while the upstream still queued. So, as Envoy does, the baseline is
//! re-measured by a *probe*: for one window the limit is pinned to `min`, and the mean latency
//! of the tries that *started* during it (so at most `min` in flight) is the new baseline, up
//! or down. Between probes a faster window lowers it at once (no window can be faster than no
//! load), nothing raises it. The first window after adaptive is turned on is a probe, then one
//! every [`PROBE_EVERY_NANOS`]; the probe costs up to [`PROBE_MAX_NANOS`] with the limit at
//! `min` (requests past it wait or are shed `adaptive`), about 3 % of the time at worst. A
//! probe ends at [`PROBE_MAX_NANOS`] even when no try ended in it (windows close on samples,
//! so an idle route's or a refusing upstream's probe would never close): the next request
//! after that ends it, keeping the baseline it had.
//!
//! # Overload is a signal of its own
//! A try that timed out, or that the upstream answered 503, is an *overload* sample: its
//! latency is left out of the mean (a timeout is only a lower bound, a quick 503 would make
//! the upstream look fast), and a window in which at least one try in [`DROP_SHARE`] was one
//! multiplies the limit by [`DROP_FACTOR`], whatever its latency says, as AIMD backs off on a
//! drop. A refused connection says nothing of the upstream's latency (it is also what a route
//! with no healthy endpoint records, with a latency of 0) and is no sample at all.
//!
//! # The rule
//! Samples are given to `ShedSlot::record` (cancelled and client-fault exchanges are no
//! evidence and are skipped). They are summed into a window that closes when it is at least
//! [`WINDOW_NANOS`] old and holds at least [`MIN_SAMPLES`] samples (a probe also closes when it
//! is [`PROBE_MAX_NANOS`] old). At each close, with `sample` = the mean latency of the window's
//! answers (if it has any):
//! - a probe: `baseline = sample`, and the limit goes back to where it was before the probe;
//! - otherwise `baseline = sample` if lower (or the first);
//! - a window with overload: `limit × DROP_FACTOR`;
//! - otherwise `gradient = clamp(TOLERANCE × baseline / sample, MIN_GRADIENT, 1)`,
//!   `target = limit × gradient + sqrt(limit)` (the square root is the headroom); when fewer
//!   than `limit / 2` requests are in flight at the close, `target ≤ limit` (a limit that is
//!   not used is not grown); `limit = limit × (1 − SMOOTHING) + target × SMOOTHING`;
//! - the limit is kept within `[min, max]`.
//!
//! So an upstream that queues past its capacity `c` holds the limit near where latency is
//! `TOLERANCE` × the baseline (about `1.5 c` plus the headroom), one that times out goes to
//! `min` in a few seconds, and once latency is back at the baseline the limit grows by about
//! `sqrt(limit) / 2` a window (from 2 to 50 in 2 to 5 s of full demand in the simulations
//! of `load_shed::tests`).
//!
//! Constants (the config has only `min` and `max`): `WINDOW_NANOS` = 100 ms, `MIN_SAMPLES` =
//! 10, `TOLERANCE` = 1.5 (latency may rise 50 % before the limit shrinks), `MIN_GRADIENT` =
//! 0.5 (at most halve the target per window), `SMOOTHING` = 0.5, `DROP_SHARE` = 10,
//! `DROP_FACTOR` = 0.8, `PROBE_EVERY_NANOS` = 30 s, `PROBE_MAX_NANOS` = 1 s.
//!
//! Cost: a record is a few atomic operations and a clock read; only the thread that closes a
//! window takes the (try-)lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::file;
use crate::policy::outcome::Outcome;

/// Shortest window.
pub(super) const WINDOW_NANOS: u64 = 100_000_000;
/// Fewest samples a window needs.
pub(super) const MIN_SAMPLES: u32 = 10;
const TOLERANCE: f64 = 1.5;
const MIN_GRADIENT: f64 = 0.5;
const SMOOTHING: f64 = 0.5;
/// A window with at least one overload sample in this many shrinks by [`DROP_FACTOR`].
pub(super) const DROP_SHARE: u32 = 10;
/// What a window with overload multiplies the limit by.
pub(super) const DROP_FACTOR: f64 = 0.8;
/// Time from the end of one probe to the start of the next.
pub(super) const PROBE_EVERY_NANOS: u64 = 30_000_000_000;
/// Longest probe.
pub(super) const PROBE_MAX_NANOS: u64 = 1_000_000_000;

/// What one try tells the adaptive limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sample {
    /// An answer, whose latency counts.
    Answer,
    /// A timeout or a 503: the upstream is overloaded.
    Overload,
    /// Nothing (a refused connection, a cancelled try).
    None,
}

/// The adaptive limit; see the module doc.
#[derive(Debug)]
pub(super) struct Gradient {
    enabled: AtomicBool,
    limit: AtomicU32,
    /// Latencies of the window's answers, summed, and how many.
    sum_nanos: AtomicU64,
    answers: AtomicU32,
    /// Overload samples of the window.
    drops: AtomicU32,
    window_start: AtomicU64,
    /// When the probe in progress started; 0 = none. A sample of a try that started before
    /// it is left out of the probe.
    probe_from: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    min: f64,
    max: f64,
    limit: f64,
    /// No-load latency in nanoseconds; 0 = none yet.
    baseline: f64,
    /// During a probe: the limit to go back to.
    resume: Option<f64>,
    /// When the next probe is due.
    next_probe: u64,
}

/// One closed window.
struct Window {
    sum_nanos: u64,
    answers: u32,
    drops: u32,
    in_flight: f64,
    now: u64,
}

// === impl Sample ===

impl Sample {
    /// What `outcome` tells (see the module doc).
    pub(super) fn of(outcome: Outcome) -> Sample {
        match outcome {
            Outcome::Timeout | Outcome::Status(503) => Sample::Overload,
            Outcome::ConnectError | Outcome::Cancelled | Outcome::ClientFault | Outcome::Unsent => {
                Sample::None
            }
            Outcome::Status(_) | Outcome::Reset => Sample::Answer,
        }
    }
}

// === impl Gradient ===

impl Gradient {
    /// Off until configured.
    pub(super) fn new(now: u64) -> Self {
        Gradient {
            enabled: AtomicBool::new(false),
            limit: AtomicU32::new(u32::MAX),
            sum_nanos: AtomicU64::new(0),
            answers: AtomicU32::new(0),
            drops: AtomicU32::new(0),
            window_start: AtomicU64::new(now),
            probe_from: AtomicU64::new(0),
            state: Mutex::new(State {
                min: 1.0,
                max: f64::from(u32::MAX),
                limit: f64::from(u32::MAX),
                baseline: 0.0,
                resume: None,
                next_probe: 0,
            }),
        }
    }

    /// Turns adaptive on or off, or changes its bounds; a limit in force is kept (clamped).
    /// Turning it on starts with a probe (the limit at `min` for one window).
    pub(super) fn configure(&self, cfg: Option<&file::Adaptive>, max_in_flight: u32, now: u64) {
        let mut s = self.state.lock();
        let Some(cfg) = cfg else {
            self.enabled.store(false, SeqCst);
            return;
        };
        let min = f64::from(cfg.min.max(1));
        let max = f64::from(cfg.max).max(min);
        if !self.enabled.load(SeqCst) {
            s.baseline = 0.0;
            s.resume = Some(max.min(f64::from(max_in_flight)));
            s.limit = min;
            self.answers.store(0, SeqCst);
            self.drops.store(0, SeqCst);
            self.sum_nanos.store(0, SeqCst);
            self.window_start.store(now, SeqCst);
            self.probe_from.store(now.max(1), SeqCst);
        }
        s.min = min;
        s.max = max;
        s.limit = s.limit.clamp(min, max);
        s.resume = s.resume.map(|r| r.clamp(min, max));
        self.limit.store(s.limit.round() as u32, SeqCst);
        self.enabled.store(true, SeqCst);
    }

    /// Whether a probe is in progress (one atomic load: the caller reads the clock only then).
    #[inline]
    pub(super) fn probing(&self) -> bool {
        self.probe_from.load(Relaxed) != 0
    }

    /// Ends a probe that is [`PROBE_MAX_NANOS`] old at `now`, whatever its samples: windows
    /// close on samples, so a probe that got none (an idle route, or an upstream that only
    /// refuses connections) would otherwise hold the limit at `min` until traffic came back,
    /// and shed the first burst that did. A probe without an answer keeps the baseline it had.
    /// True when the limit changed.
    pub(super) fn end_overdue_probe(&self, now: u64, in_flight: u32) -> bool {
        let probe = self.probe_from.load(SeqCst);
        if probe == 0 || now.saturating_sub(probe) < PROBE_MAX_NANOS {
            return false;
        }
        let Some(mut s) = self.state.try_lock() else {
            return false;
        };
        if s.resume.is_none() || self.probe_from.load(SeqCst) != probe {
            return false; // closed meanwhile
        }
        let w = self.take(now, in_flight);
        self.close(&mut s, w)
    }

    /// The window's counts, taken (the window left empty), as closing at `now`.
    fn take(&self, now: u64, in_flight: u32) -> Window {
        Window {
            sum_nanos: self.sum_nanos.swap(0, SeqCst),
            answers: self.answers.swap(0, SeqCst),
            drops: self.drops.swap(0, SeqCst),
            in_flight: f64::from(in_flight),
            now,
        }
    }

    /// Closes the window `w` (its counts already taken) with the state locked: a new window
    /// from `w.now`, the probe started or ended, the limit published. True when it changed.
    fn close(&self, s: &mut State, w: Window) -> bool {
        let now = w.now;
        self.window_start.store(now, SeqCst);
        let before = self.limit.load(SeqCst);
        s.close(w);
        let probe_from = if s.resume.is_some() { now.max(1) } else { 0 };
        self.probe_from.store(probe_from, SeqCst);
        let after = s.limit.round() as u32;
        self.limit.store(after, SeqCst);
        after != before
    }

    /// The limit in force, if on.
    pub(super) fn limit(&self) -> Option<u32> {
        self.enabled.load(SeqCst).then(|| self.limit.load(SeqCst))
    }

    /// Adds one try's sample; true when a window closed and the limit changed.
    pub(super) fn record(
        &self,
        sample: Sample,
        elapsed: Duration,
        now: u64,
        in_flight: u32,
    ) -> bool {
        if sample == Sample::None || !self.enabled.load(Relaxed) {
            return false;
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let probe = self.probe_from.load(Relaxed);
        let n = if probe != 0 && now.saturating_sub(nanos) < probe {
            // Started before the probe, with more than `min` in flight: not the probe's.
            self.answers.load(Relaxed) + self.drops.load(Relaxed)
        } else if sample == Sample::Overload {
            self.drops.fetch_add(1, Relaxed) + 1 + self.answers.load(Relaxed)
        } else {
            self.sum_nanos.fetch_add(nanos, Relaxed);
            self.answers.fetch_add(1, Relaxed) + 1 + self.drops.load(Relaxed)
        };
        let age = now.saturating_sub(self.window_start.load(Relaxed));
        let due =
            (n >= MIN_SAMPLES && age >= WINDOW_NANOS) || (probe != 0 && age >= PROBE_MAX_NANOS);
        if !due {
            return false;
        }
        let Some(mut s) = self.state.try_lock() else {
            return false;
        };
        let age = now.saturating_sub(self.window_start.load(SeqCst));
        let probing = s.resume.is_some();
        if age < WINDOW_NANOS {
            return false; // another thread closed it meanwhile
        }
        let w = self.take(now, in_flight);
        if w.answers + w.drops < MIN_SAMPLES && !(probing && age >= PROBE_MAX_NANOS) {
            self.answers.fetch_add(w.answers, SeqCst);
            self.drops.fetch_add(w.drops, SeqCst);
            self.sum_nanos.fetch_add(w.sum_nanos, SeqCst);
            return false;
        }
        self.close(&mut s, w)
    }
}

// === impl State ===

impl State {
    /// One window's update; see the module doc. Starts or ends a probe.
    fn close(&mut self, w: Window) {
        let sample = (w.answers > 0).then(|| w.sum_nanos as f64 / f64::from(w.answers));
        let overloaded = w.drops > 0 && w.drops.saturating_mul(DROP_SHARE) >= w.answers + w.drops;
        if let Some(resume) = self.resume.take() {
            if let Some(sample) = sample {
                self.baseline = sample;
            }
            self.limit = resume;
            self.next_probe = w.now.saturating_add(PROBE_EVERY_NANOS);
            if overloaded {
                self.limit *= DROP_FACTOR;
            }
        } else {
            if let Some(sample) = sample {
                if self.baseline <= 0.0 || sample < self.baseline {
                    self.baseline = sample;
                }
            }
            if overloaded {
                self.limit *= DROP_FACTOR;
            } else if let Some(sample) = sample {
                let gradient =
                    (TOLERANCE * self.baseline / sample.max(1.0)).clamp(MIN_GRADIENT, 1.0);
                let mut target = self.limit * gradient + self.limit.sqrt();
                if w.in_flight < self.limit / 2.0 {
                    target = target.min(self.limit);
                }
                self.limit = self.limit * (1.0 - SMOOTHING) + target * SMOOTHING;
            }
            if w.now >= self.next_probe {
                self.resume = Some(self.limit.clamp(self.min, self.max));
                self.limit = self.min;
            }
        }
        self.limit = self.limit.clamp(self.min, self.max);
    }
}
