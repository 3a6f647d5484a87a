//! Passive outlier ejection: an endpoint whose tries fail `consecutive_failures` times in a row
//! is taken out of rotation for a while, without waiting for the active checks.
//!
//! The cap (`max_ejected`) is what keeps a fleet-wide blip (the upstream's database is down,
//! every endpoint answers 503) from ejecting everything: past the cap, and always for the last
//! available endpoint, failures are left to the circuit breaker and retries instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::EndpointHealth;
use crate::config::file;
use crate::policy::outcome::Outcome;

/// Outlier detection for one upstream, built from its `outlier:` settings.
#[derive(Debug)]
pub struct OutlierDetector {
    consecutive_failures: u32,
    eject_for: Duration,
    max_ejected: f64,
    /// Held while one ejection is being decided, so two endpoints failing at once cannot both
    /// pass the cap check; a try that finds it held skips (its next failure asks again).
    deciding: AtomicBool,
}

// === impl OutlierDetector ===

impl OutlierDetector {
    /// A detector with the upstream's settings.
    pub fn new(cfg: &file::Outlier) -> Self {
        OutlierDetector {
            consecutive_failures: cfg.consecutive_failures,
            eject_for: cfg.eject_for.0,
            max_ejected: cfg.max_ejected.0,
            deciding: AtomicBool::new(false),
        }
    }

    /// Records how a try on `ep` ended (this calls [`EndpointHealth::end`]; do not call both)
    /// and ejects `ep` when its failure streak has reached `consecutive_failures`, it is not
    /// already ejected, and ejecting it keeps the ejected endpoints of `all` (the upstream's
    /// endpoints, `ep` among them) at most `floor(max_ejected × all.len())` and at least one
    /// other endpoint available. Returns whether it ejected `ep` now: the caller then logs and
    /// updates `rampart_upstream_endpoint_healthy`. Ejection ends by itself with time.
    pub fn on_try_end(
        &self,
        ep: &EndpointHealth,
        all: &[Arc<EndpointHealth>],
        outcome: Outcome,
        elapsed: Duration,
        now: u64,
    ) -> bool {
        let streak = ep.end(outcome, elapsed, now);
        if self.consecutive_failures == 0
            || streak < self.consecutive_failures
            || ep.is_ejected(now)
        {
            return false;
        }
        self.try_eject(ep, all, now).is_some()
    }

    /// Ejects `ep` if the cap allows; returns the ejection's length.
    /// Ejects `ep` if the cap allows (for a caller that fed the try to [`EndpointHealth::end`]
    /// itself and found the streak at the threshold); returns whether it did.
    pub fn eject_if_allowed(
        &self,
        ep: &EndpointHealth,
        all: &[Arc<EndpointHealth>],
        now: u64,
    ) -> bool {
        self.try_eject(ep, all, now).is_some()
    }

    fn try_eject(
        &self,
        ep: &EndpointHealth,
        all: &[Arc<EndpointHealth>],
        now: u64,
    ) -> Option<Duration> {
        if self
            .deciding
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let verdict = self
            .allowed(ep, all, now)
            .then(|| ep.eject(now, self.eject_for));
        self.deciding.store(false, Ordering::Release);
        verdict
    }

    /// Whether one more ejection (of `ep`) fits under the cap.
    fn allowed(&self, ep: &EndpointHealth, all: &[Arc<EndpointHealth>], now: u64) -> bool {
        // A small epsilon so that 30% of 10 is 3, not 2.9999….
        let cap = (self.max_ejected * all.len() as f64 + 1e-9).floor() as usize;
        let ejected = all.iter().filter(|e| e.is_ejected(now)).count();
        let others_available = all
            .iter()
            .filter(|e| !std::ptr::eq(e.as_ref(), ep) && e.available(now))
            .count();
        ejected < cap && others_available > 0
    }

    /// The configured streak that ejects.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}
