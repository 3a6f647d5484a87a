//! Adaptive concurrency: a route limit between `adaptive.min` and `adaptive.max` that follows
//! the upstream's measured latency, gradient style (after the idea of Netflix
//! concurrency-limits' Gradient2 and Envoy's adaptive_concurrency filter).
//!
//! Why: a fixed `max_in_flight` is either too low (wasted capacity) or too high (the upstream
//! queues internally and every request gets slow). Latency rising above its no-load baseline is
//! the sign of queueing, so the limit shrinks in proportion; when latency is back at the
//! baseline it grows again by a headroom that lets it probe for more capacity.
//!
//! # The rule
//! Samples are the latencies of upstream exchanges given to `ShedSlot::record` (cancelled and
//! client-fault exchanges are no evidence and are skipped). They are summed into a window that
//! closes when it is at least [`WINDOW_NANOS`] old and holds at least [`MIN_SAMPLES`] samples.
//! At each close, with `sample` = the window's mean latency:
//! - `baseline` (the no-load latency): `sample` if lower (or the first), else
//!   `baseline += (sample - baseline) × DRIFT` — it drops at once to a faster window and rises
//!   slowly (~50 windows), so a lasting change of the upstream becomes the new normal, as
//!   Gradient2's long window does;
//! - `gradient = clamp(TOLERANCE × baseline / sample, MIN_GRADIENT, 1)`;
//! - `target = limit × gradient + sqrt(limit)` (the square root is the headroom);
//!   when fewer than `limit / 2` requests are in flight at the close, `target ≤ limit`
//!   (a limit that is not used is not grown);
//! - `limit = clamp(limit × (1 − SMOOTHING) + target × SMOOTHING, min, max)`.
//!
//! Constants (the config has only `min` and `max`): `WINDOW_NANOS` = 100 ms, `MIN_SAMPLES` =
//! 10, `DRIFT` = 0.02, `TOLERANCE` = 1.5 (latency may rise 50 % before the limit shrinks),
//! `MIN_GRADIENT` = 0.5 (at most halve the target per window), `SMOOTHING` = 0.5. The limit
//! starts at `min(max, max_in_flight)` when adaptive is turned on.
//!
//! Cost: a record is two relaxed atomic adds and a clock read; only the thread that closes a
//! window takes the (try-)lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::file;

/// Shortest window.
pub(super) const WINDOW_NANOS: u64 = 100_000_000;
/// Fewest samples a window needs.
pub(super) const MIN_SAMPLES: u32 = 10;
const DRIFT: f64 = 0.02;
const TOLERANCE: f64 = 1.5;
const MIN_GRADIENT: f64 = 0.5;
const SMOOTHING: f64 = 0.5;

/// The adaptive limit; see the module doc.
#[derive(Debug)]
pub(super) struct Gradient {
    enabled: AtomicBool,
    limit: AtomicU32,
    sum_nanos: AtomicU64,
    count: AtomicU32,
    window_start: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    min: f64,
    max: f64,
    limit: f64,
    /// No-load latency in nanoseconds; 0 = none yet.
    baseline: f64,
}

// === impl Gradient ===

impl Gradient {
    /// Off until configured.
    pub(super) fn new(now: u64) -> Self {
        Gradient {
            enabled: AtomicBool::new(false),
            limit: AtomicU32::new(u32::MAX),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU32::new(0),
            window_start: AtomicU64::new(now),
            state: Mutex::new(State {
                min: 1.0,
                max: f64::from(u32::MAX),
                limit: f64::from(u32::MAX),
                baseline: 0.0,
            }),
        }
    }

    /// Turns adaptive on or off, or changes its bounds; a limit in force is kept (clamped).
    pub(super) fn configure(&self, cfg: Option<&file::Adaptive>, max_in_flight: u32, now: u64) {
        let mut s = self.state.lock();
        let Some(cfg) = cfg else {
            self.enabled.store(false, SeqCst);
            return;
        };
        let min = f64::from(cfg.min.max(1));
        let max = f64::from(cfg.max).max(min);
        if !self.enabled.load(SeqCst) {
            s.limit = max.min(f64::from(max_in_flight));
            s.baseline = 0.0;
            self.count.store(0, SeqCst);
            self.sum_nanos.store(0, SeqCst);
            self.window_start.store(now, SeqCst);
        }
        s.min = min;
        s.max = max;
        s.limit = s.limit.clamp(min, max);
        self.limit.store(s.limit.round() as u32, SeqCst);
        self.enabled.store(true, SeqCst);
    }

    /// The limit in force, if on.
    pub(super) fn limit(&self) -> Option<u32> {
        self.enabled.load(SeqCst).then(|| self.limit.load(SeqCst))
    }

    /// Adds one latency sample; true when a window closed and the limit changed.
    pub(super) fn record(&self, elapsed: Duration, now: u64, in_flight: u32) -> bool {
        if !self.enabled.load(SeqCst) {
            return false;
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, SeqCst);
        let n = self.count.fetch_add(1, SeqCst) + 1;
        if n < MIN_SAMPLES || now.saturating_sub(self.window_start.load(SeqCst)) < WINDOW_NANOS {
            return false;
        }
        let Some(mut s) = self.state.try_lock() else {
            return false;
        };
        if now.saturating_sub(self.window_start.load(SeqCst)) < WINDOW_NANOS {
            return false; // another thread closed it meanwhile
        }
        let count = self.count.swap(0, SeqCst);
        let sum = self.sum_nanos.swap(0, SeqCst);
        if count < MIN_SAMPLES {
            self.count.fetch_add(count, SeqCst);
            self.sum_nanos.fetch_add(sum, SeqCst);
            return false;
        }
        self.window_start.store(now, SeqCst);
        let before = self.limit.load(SeqCst);
        s.close(sum as f64 / f64::from(count), f64::from(in_flight));
        let after = s.limit.round() as u32;
        self.limit.store(after, SeqCst);
        after != before
    }
}

// === impl State ===

impl State {
    /// One window's update with mean latency `sample` (nanoseconds); see the module doc.
    fn close(&mut self, sample: f64, in_flight: f64) {
        if self.baseline <= 0.0 || sample < self.baseline {
            self.baseline = sample;
        } else {
            self.baseline += (sample - self.baseline) * DRIFT;
        }
        let gradient = (TOLERANCE * self.baseline / sample.max(1.0)).clamp(MIN_GRADIENT, 1.0);
        let mut target = self.limit * gradient + self.limit.sqrt();
        if in_flight < self.limit / 2.0 {
            target = target.min(self.limit);
        }
        let next = self.limit * (1.0 - SMOOTHING) + target * SMOOTHING;
        self.limit = next.clamp(self.min, self.max);
    }
}
