//! Endpoint health and choice: active health checks, passive outlier ejection and power of
//! two choices on a peak-EWMA of latency.
//!
//! Each endpoint owns one [`EndpointHealth`] (all atomics), carried over reloads by address so
//! that a reload neither forgets an ejection nor resets what the balancer learned. Three
//! writers feed it and one reader uses it:
//! - the request path: [`EndpointHealth::start`] before a try (in-flight count) and, when it
//!   ends, [`OutlierDetector::on_try_end`] (or [`EndpointHealth::end`] when the upstream has no
//!   `outlier:`), which update the EWMA and the failure streak and may eject;
//! - the active checker ([`spawn_checks`]) flips the checked verdict;
//! - time ends ejections (no task needed: [`EndpointHealth::available`] compares clock nanos);
//! - the balancer ([`p2c`], or round-robin in `upstream.rs`) picks among available endpoints.
//!
//! Why separate verdicts: active checks see an endpoint that is down before any try pays for
//! it, outlier ejection sees one that answers its health path but fails real traffic; either
//! takes it out, and each brings it back by its own rule (checks: `healthy_after` good probes;
//! ejection: time, growing on repeat).

mod check;
mod outlier;
mod p2c;
mod state;

pub use check::{probe, spawn_checks, CheckTarget, OnChange, Targets};
pub use outlier::OutlierDetector;
pub use p2c::p2c;
pub use state::{EndpointHealth, InFlight, EJECT_GROWTH_CAP, EWMA_DECAY};

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod tests;
