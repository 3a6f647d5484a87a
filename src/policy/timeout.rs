//! Timeouts: how long a request, and each try of it, may take.
//!
//! A policy's `timeout` section has two bounds. `request` caps the whole exchange, retries and
//! backoff included: it is the caller's deadline, and no retry may start past it. `per_try`
//! caps each try, so that one stuck connection does not eat the whole request budget and a
//! retry still has time to succeed. (Connect timeouts belong to the upstream's
//! `connect_timeout`.)
//!
//! A fixed per-try bound is hard to choose: too short and healthy slow answers are cut off,
//! too long and a stuck try wastes the time a retry needed. `per_try: auto` derives the bound
//! from what the upstream has recently been doing; [`adaptive`] holds that rule.
//!
//! This module only decides durations; the request path applies them with tokio timers.

pub mod adaptive;

use std::time::Duration;

pub use self::adaptive::LatencyEstimator;
use crate::config::file;

/// The per-try timeout in force: the fixed bound, or the adaptive rule of
/// [`LatencyEstimator::per_try_timeout`] within the configured `[min, max]`.
pub fn per_try_timeout(per_try: &file::PerTry, latency: &LatencyEstimator) -> Duration {
    match *per_try {
        file::PerTry::Fixed(d) => d.0,
        file::PerTry::Auto { min, max } => latency.per_try_timeout(min.0, max.0),
    }
}
