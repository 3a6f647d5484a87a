//! Fault injection (SPEC §10): deliberate delays and aborts, so teams can run chaos drills
//! through the same sidecar that protects them.
//!
//! Why here and not in a test harness: a drill that goes through the real proxy exercises the
//! real timeouts, retries and breakers of the callers, which is the point of the drill. It is
//! off unless a policy has a `fault` section, and with `fault.header` set only requests that
//! carry that header are eligible, so a drill can target its own traffic alone.
//!
//! The decision is pure: it takes the headers and a source of uniform numbers in `[0, 1)`, so
//! unit tests pass fixed rolls. The request path applies it after admission (see `stack.rs`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use prometheus::IntCounter;

use crate::config::file;
use crate::metrics::Metrics;

/// Name of the header that marks an injected fault: `delay`, `abort`, or `delay, abort` when
/// both were injected into one request.
pub const FAULT_HEADER: &str = "x-rampart-fault";

/// The fault section of one route's policy, with its metric handles.
#[derive(Debug)]
pub struct RouteFault {
    header: Option<HeaderName>,
    delay: Option<(f64, Duration)>,
    abort: Option<(f64, StatusCode)>,
    delays: IntCounter,
    aborts: IntCounter,
}

/// What to do to one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// Wait this long before going on.
    pub delay: Option<Duration>,
    /// Then answer with this status instead of the upstream.
    pub abort: Option<StatusCode>,
}

// === impl RouteFault ===

impl RouteFault {
    /// The runtime of `cfg` for the route labelled `route`.
    pub fn build(cfg: &file::Fault, route: &str, metrics: &Metrics) -> RouteFault {
        let count = |kind: &str| metrics.faults_injected.with_label_values(&[route, kind]);
        RouteFault {
            // Validation checked the name; a bad one would make every request ineligible.
            header: cfg
                .header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            delay: cfg.delay.as_ref().map(|d| (d.percent.0, d.duration.0)),
            abort: cfg.abort.as_ref().and_then(|a| {
                let status = StatusCode::from_u16(a.status).ok()?;
                Some((a.percent.0, status))
            }),
            delays: count("delay"),
            aborts: count("abort"),
        }
    }

    /// Decides what to inject into a request with `headers`; `roll` yields uniform numbers in
    /// `[0, 1)`, one per configured fault. Counts what it decides.
    pub fn decide(&self, headers: &HeaderMap, mut roll: impl FnMut() -> f64) -> Injection {
        if let Some(h) = &self.header {
            if !headers.contains_key(h) {
                return Injection::default();
            }
        }
        let mut out = Injection::default();
        if let Some((share, d)) = self.delay {
            if roll() < share {
                self.delays.inc();
                out.delay = Some(d);
            }
        }
        if let Some((share, status)) = self.abort {
            if roll() < share {
                self.aborts.inc();
                out.abort = Some(status);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::{Dur, Ratio};

    fn fault(header: Option<&str>, delay: f64, abort: f64) -> (RouteFault, Metrics) {
        let m = Metrics::register();
        let cfg = file::Fault {
            header: header.map(str::to_string),
            delay: Some(file::FaultDelay {
                percent: Ratio(delay),
                duration: Dur(Duration::from_millis(200)),
            }),
            abort: Some(file::FaultAbort {
                percent: Ratio(abort),
                status: 418,
            }),
        };
        (RouteFault::build(&cfg, "r", &m), m)
    }

    fn with(name: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, http::HeaderValue::from_static("1"));
        h
    }

    #[test]
    fn only_requests_with_the_header_are_eligible() {
        let (f, _) = fault(Some("x-chaos"), 1.0, 1.0);
        assert_eq!(f.decide(&HeaderMap::new(), || 0.0), Injection::default());
        let got = f.decide(&with("x-chaos"), || 0.0);
        assert_eq!(got.delay, Some(Duration::from_millis(200)));
        assert_eq!(got.abort, Some(StatusCode::IM_A_TEAPOT));
        assert_eq!(f.delays.get(), 1);
        assert_eq!(f.aborts.get(), 1);
    }

    #[test]
    fn shares_follow_the_rolls() {
        let (f, _) = fault(None, 0.1, 0.05);
        // 0% and 100% are exact at the ends of [0, 1).
        let mut rolls = [0.09, 0.05].into_iter();
        let got = f.decide(&HeaderMap::new(), || rolls.next().unwrap_or(1.0));
        assert_eq!(got.delay, Some(Duration::from_millis(200)));
        assert_eq!(got.abort, None, "0.05 is not below 5%");
        let (never, _) = fault(None, 0.0, 0.0);
        assert_eq!(
            never.decide(&HeaderMap::new(), || 0.0),
            Injection::default()
        );
        let (always, _) = fault(None, 1.0, 1.0);
        let got = always.decide(&HeaderMap::new(), || 0.999_999);
        assert!(got.delay.is_some() && got.abort.is_some());
    }

    #[test]
    fn the_counter_is_labelled_by_route_and_kind() {
        let (f, m) = fault(None, 1.0, 0.0);
        f.decide(&HeaderMap::new(), || 0.5);
        let v = m.faults_injected.with_label_values(&["r", "delay"]).get();
        assert_eq!(v, 1);
        assert_eq!(
            m.faults_injected.with_label_values(&["r", "abort"]).get(),
            0
        );
    }
}
