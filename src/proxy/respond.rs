//! The answers rampart makes itself (SPEC §3): the only place that picks their status.
//!
//! Each carries `x-rampart-reason` and a JSON body `{"error", "message"}`; refusals that can be
//! retried later carry `retry-after` in whole seconds (at least 1), computed by the policy that
//! refused, never a constant.

use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::Response;

use super::body::Body;
use crate::error::Reason;

/// Name of the header that says why rampart answered.
pub const REASON_HEADER: &str = "x-rampart-reason";

/// Builds the answer for `reason` with a human `message`.
pub fn answer(reason: Reason, message: &str, retry_after: Option<Duration>) -> Response<Body> {
    let body = serde_json::json!({ "error": reason.as_str(), "message": message }).to_string();
    let mut rsp = Response::new(Body::full(body));
    *rsp.status_mut() = reason.status();
    let h = rsp.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(wait) = retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    if reason == Reason::InvalidToken {
        // RFC 6750 §3: a refused bearer token says so in the challenge.
        let challenge = HeaderValue::from_static("Bearer error=\"invalid_token\"");
        h.insert(WWW_AUTHENTICATE, challenge);
    }
    rsp
}

/// Whole seconds for `retry-after`: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn answers_follow_the_table() {
        let r = answer(
            Reason::RateLimited,
            "slow down",
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[REASON_HEADER], "rate_limited");
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        let r = answer(Reason::InvalidToken, "bad token", None);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let r = answer(Reason::NoRoute, "no route", None);
        assert_eq!(r.status(), 404);
        assert!(r.headers().get(RETRY_AFTER).is_none());
        for (reason, code) in [
            (Reason::Shed, 503),
            (Reason::CircuitOpen, 503),
            (Reason::Timeout, 504),
            (Reason::UpstreamUnavailable, 502),
            (Reason::TenantRequired, 401),
            (Reason::InvalidTenant, 400),
            (Reason::BadRequest, 400),
            (Reason::ClientTimeout, 408),
            (Reason::MethodNotAllowed, 405),
            (Reason::InvalidToken, 401),
        ] {
            assert_eq!(answer(reason, "", None).status(), code, "{reason}");
        }
    }
}
