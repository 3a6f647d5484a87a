//! One endpoint's health, all in atomics: active-check verdict, outlier streak and ejection,
//! in-flight count and a peak-EWMA of try latency.
//!
//! Every try reads this state (to pick an endpoint) and writes it (start and end hooks), from
//! many connections at once, so it holds no lock: each field is its own atomic, and the few
//! multi-field updates tolerate a race by design (documented where they happen).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::file;
use crate::policy::outcome::Outcome;

/// Time constant of the latency EWMA: a sample's weight fades by `1/e` every 10 s, as in the
/// Finagle and Linkerd peak-EWMA balancers. Long enough to smooth noise, short enough that an
/// endpoint that recovered is trusted again within a minute.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The cost of an endpoint that has no latency sample yet but already has tries in flight.
/// Such an endpoint costs 0 while idle (so a new endpoint is tried at once) and this much per
/// try in flight until its first answer, so it is not flooded before it is measured.
const UNMEASURED_BUSY_COST: f64 = 1e12;

/// Ejections grow as `eject_for × 2^(n-1)` up to this many times `eject_for`. The level `n`
/// starts over once the endpoint has stayed in for that long after its last ejection ended.
pub const EJECT_GROWTH_CAP: u32 = 10;

/// The health of one upstream endpoint; shared by the request path, the outlier detector, the
/// balancer and the active health checker, and carried over reloads by address.
#[derive(Debug)]
pub struct EndpointHealth {
    /// Verdict of the active health checks; true until they say otherwise.
    checked_healthy: AtomicBool,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    /// Consecutive failed tries (outlier detection); reset by a success and by an ejection.
    streak: AtomicU32,
    /// Clock nanos until which the endpoint is ejected; 0 if never ejected.
    ejected_until: AtomicU64,
    /// Ejections so far (for `/state`).
    ejections: AtomicU64,
    /// Exponent of the current ejection length.
    eject_level: AtomicU32,
    in_flight: AtomicUsize,
    /// `f64` bits of the latency EWMA in nanoseconds; 0.0 while unmeasured.
    ewma_bits: AtomicU64,
    /// Clock nanos of the last EWMA sample.
    ewma_stamp: AtomicU64,
}

/// A try in flight on one endpoint; dropping it releases the count that [`EndpointHealth::cost`]
/// weighs.
#[derive(Debug)]
pub struct InFlight {
    health: Arc<EndpointHealth>,
}

// === impl EndpointHealth ===

impl Default for EndpointHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointHealth {
    /// A healthy, never-ejected, unmeasured endpoint.
    pub fn new() -> Self {
        EndpointHealth {
            checked_healthy: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            streak: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            eject_level: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            ewma_bits: AtomicU64::new(0),
            ewma_stamp: AtomicU64::new(0),
        }
    }

    /// Whether tries may go here at clock time `now`: the active checks call it healthy and it
    /// is not ejected.
    pub fn available(&self, now: u64) -> bool {
        self.checked_healthy() && !self.is_ejected(now)
    }

    /// [`EndpointHealth::available`] at the time `now` gives, which is asked only if an
    /// ejection is on record (`ejected_until` is 0 until the first): a pick that finds none
    /// reads no clock.
    pub fn available_by(&self, now: impl FnOnce() -> u64) -> bool {
        self.checked_healthy()
            && match self.ejected_until.load(Ordering::Relaxed) {
                0 => true,
                until => now() >= until,
            }
    }

    /// The active checks' verdict alone.
    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection keeps it out at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Counts a try as in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            health: Arc::clone(self),
        }
    }

    /// Tries in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records how a try ended and returns the failure streak after it (0 after a success).
    ///
    /// Only verdicts count (`Cancelled` and `ClientFault` change nothing and return the
    /// current streak). A success feeds its latency into the EWMA; a failure feeds
    /// `max(elapsed, ewma)`, so an endpoint that fails fast never looks cheap to the balancer.
    pub fn end(&self, outcome: Outcome, elapsed: Duration, now: u64) -> u32 {
        if !outcome.is_verdict() {
            return self.streak.load(Ordering::Relaxed);
        }
        let failed = outcome.is_failure();
        self.observe(elapsed, failed, now);
        if failed {
            self.streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            self.streak.store(0, Ordering::Relaxed);
            0
        }
    }

    /// The balancer's cost at `now`: the EWMA (decayed for the time since its last sample)
    /// times `in_flight + 1`. Lower is better. An unmeasured endpoint costs 0 while idle and a
    /// large constant per try in flight, so a new endpoint gets exactly one try until measured.
    pub fn cost(&self, now: u64) -> f64 {
        let in_flight = self.in_flight() as f64;
        let ewma = self.ewma_nanos(now);
        if ewma == 0.0 {
            return if in_flight == 0.0 {
                0.0
            } else {
                UNMEASURED_BUSY_COST * in_flight
            };
        }
        ewma * (in_flight + 1.0)
    }

    /// The latency EWMA in nanoseconds at `now`, decayed toward zero for the time since its
    /// last sample (so an endpoint that was slow long ago gets another look); 0 if unmeasured.
    pub fn ewma_nanos(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let idle = now.saturating_sub(self.ewma_stamp.load(Ordering::Relaxed));
        ewma * decay_weight(idle)
    }

    /// Operator view for `GET /state`.
    pub fn snapshot(&self, now: u64) -> serde_json::Value {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let ejected_secs = until.saturating_sub(now) as f64 / 1e9;
        json!({
            "healthy": self.available(now),
            "checked_healthy": self.checked_healthy(),
            "ejected_until_secs": (ejected_secs * 1000.0).ceil() / 1000.0,
            "ejections": self.ejections.load(Ordering::Relaxed),
            "ewma_ms": (self.ewma_nanos(now) / 1e3).round() / 1e3,
            "in_flight": self.in_flight(),
        })
    }

    /// Feeds one active-check result; returns `Some(new verdict)` when it flips. Called by one
    /// checker task per upstream only, so the counters need no compare-and-swap.
    pub fn record_check(&self, ok: bool, cfg: &file::HealthCheck) -> Option<bool> {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self
                .check_successes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !self.checked_healthy() && n >= cfg.healthy_after.max(1) {
                self.checked_healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self
                .check_failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if self.checked_healthy() && n >= cfg.unhealthy_after.max(1) {
                self.checked_healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Forgets the active checks' verdict and streaks (healthy again). For a reload that
    /// removes an upstream's `health_check:`: without it nothing would ever flip the endpoint
    /// back.
    pub fn reset_checks(&self) {
        self.check_successes.store(0, Ordering::Relaxed);
        self.check_failures.store(0, Ordering::Relaxed);
        self.checked_healthy.store(true, Ordering::Relaxed);
    }

    /// Ejects until `now + eject_for × 2^(n-1)` (capped at [`EJECT_GROWTH_CAP`] × `eject_for`)
    /// and resets the failure streak; returns the ejection's length. The caller
    /// ([`super::OutlierDetector`]) has already checked the cap on ejected endpoints.
    pub(super) fn eject(&self, now: u64, eject_for: Duration) -> Duration {
        let cap = eject_for.saturating_mul(EJECT_GROWTH_CAP);
        let prev_until = self.ejected_until.load(Ordering::Relaxed);
        let repeat = prev_until != 0 && now.saturating_sub(prev_until) <= nanos(cap);
        let level = if repeat {
            self.eject_level.load(Ordering::Relaxed).saturating_add(1)
        } else {
            1
        };
        self.eject_level.store(level, Ordering::Relaxed);
        let factor = 1u32.checked_shl(level - 1).unwrap_or(u32::MAX);
        let length = eject_for.saturating_mul(factor).min(cap);
        self.ejected_until
            .store(now.saturating_add(nanos(length)), Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.streak.store(0, Ordering::Relaxed);
        length
    }

    /// Peak-EWMA update. The stamp swap and the value CAS are two steps: two tries ending at
    /// once each decay by their own share of the elapsed time, which is the same total decay.
    ///
    /// Every try ends here: the sample goes to `f64` from 64 bits (not through `u128`), and the
    /// decay's `exp` is computed only when the sample is the lower one and so blends.
    fn observe(&self, elapsed: Duration, failed: bool, now: u64) {
        let sample = (nanos(elapsed) as f64).max(1.0);
        let prev = self.ewma_stamp.swap(now, Ordering::Relaxed);
        let idle = now.saturating_sub(prev);
        let mut cur = self.ewma_bits.load(Ordering::Relaxed);
        loop {
            let old = f64::from_bits(cur);
            let sample = if failed { sample.max(old) } else { sample };
            let new = if old == 0.0 || sample >= old {
                sample
            } else {
                // Computed again only if the swap below loses a race: rare.
                let w = decay_weight(idle);
                old * w + sample * (1.0 - w)
            };
            match self.ewma_bits.compare_exchange_weak(
                cur,
                new.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

// === impl InFlight ===

impl InFlight {
    /// The endpoint this try runs on.
    pub fn health(&self) -> &Arc<EndpointHealth> {
        &self.health
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Weight left to an old EWMA after `idle_nanos`: `e^(-idle / EWMA_DECAY)`.
fn decay_weight(idle_nanos: u64) -> f64 {
    (-(idle_nanos as f64) / EWMA_DECAY.as_nanos() as f64).exp()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
