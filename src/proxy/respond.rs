//! The answers rampart makes itself (SPEC §3): the only place that picks their status.
//!
//! Each carries `x-rampart-reason` and a JSON body `{"error", "message"}`; refusals that can be
//! retried later carry `retry-after` in whole seconds (at least 1), computed by the policy that
//! refused, never a constant. The request id is added to the body at the end of the request
//! path ([`with_request_id`]), so the many places that refuse need not carry it.

use std::time::Duration;

use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::Response;

use super::body::Body;
use crate::error::Reason;
use crate::policy::fallback::{Replacement, DEGRADED_HEADER};
use crate::policy::fault::FAULT_HEADER;
use crate::policy::idempotency::{StoredAnswer, REPLAY_HEADER};

/// Name of the header that says why rampart answered.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-rampart-reason");

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

/// Adds `"request_id": id` to the JSON body of rampart's own answer (one that carries
/// `x-rampart-reason`); other answers are left alone, and so is a fallback answer, whose body
/// is a kept upstream answer or the operator's static one, never to be rewritten.
pub fn with_request_id(rsp: &mut Response<Body>, id: &HeaderValue) {
    let h = rsp.headers();
    if !h.contains_key(REASON_HEADER) || h.contains_key(DEGRADED_HEADER) {
        return;
    }
    let Body::Full(Some(body)) = rsp.body() else {
        return;
    };
    let Some(head) = body.strip_suffix(b"}") else {
        return;
    };
    let id = String::from_utf8_lossy(id.as_bytes());
    let Ok(quoted) = serde_json::to_string(&id) else {
        return;
    };
    let mut out = Vec::with_capacity(body.len() + quoted.len() + 16);
    out.extend_from_slice(head);
    out.extend_from_slice(b",\"request_id\":");
    out.extend_from_slice(quoted.as_bytes());
    out.push(b'}');
    if let Some(len) = rsp.headers_mut().get_mut(CONTENT_LENGTH) {
        *len = HeaderValue::from(out.len());
    }
    *rsp.body_mut() = Body::full(out);
}

/// An injected abort (`fault.abort`): `fault_injected` with the configured `status`, marked
/// `x-rampart-fault: abort`.
pub fn fault_abort(status: http::StatusCode) -> Response<Body> {
    let mut rsp = answer(
        Reason::FaultInjected,
        "fault injected by policy (fault.abort); the upstream was not called",
        None,
    );
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static("abort"));
    rsp
}

/// A fallback answer in place of a refusal for `replaced`: the kept answer marked
/// `x-rampart-degraded: stale` (with its `age`), or the static one marked `static`.
pub fn degraded(replaced: Reason, with: Replacement) -> Response<Body> {
    let (mut rsp, kind) = match with {
        Replacement::Stale(kept, age) => {
            let mut rsp = Response::new(Body::full(kept.body));
            *rsp.status_mut() = kept.status;
            *rsp.headers_mut() = kept.headers;
            rsp.headers_mut()
                .insert(AGE, HeaderValue::from(age.as_secs()));
            (rsp, "stale")
        }
        Replacement::Static(s) => {
            let mut rsp = Response::new(Body::full(s.body));
            *rsp.status_mut() = s.status;
            rsp.headers_mut().insert(CONTENT_TYPE, s.content_type);
            rsp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            (rsp, "static")
        }
    };
    let h = rsp.headers_mut();
    h.insert(DEGRADED_HEADER, HeaderValue::from_static(kind));
    h.insert(REASON_HEADER, HeaderValue::from_static(replaced.as_str()));
    rsp
}

/// A kept answer replayed for a repeated idempotency key, byte for byte, marked
/// `x-rampart-idempotent-replay: true`.
pub fn replay(kept: &StoredAnswer) -> Response<Body> {
    let mut rsp = Response::new(Body::full(kept.body.clone()));
    *rsp.status_mut() = kept.status;
    *rsp.headers_mut() = kept.headers.clone();
    // The length is the kept body's, whatever the store says: a stored answer may come from a
    // shared store that another writer filled, and a stale length would desynchronise the
    // client's connection.
    rsp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(kept.body.len()));
    rsp.headers_mut()
        .insert(REPLAY_HEADER, HeaderValue::from_static("true"));
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
    fn a_replayed_answer_states_the_length_of_its_own_body() {
        let mut headers = http::HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        let kept = StoredAnswer {
            status: http::StatusCode::CREATED,
            headers,
            body: bytes::Bytes::from_static(b"abc"),
        };
        let rsp = replay(&kept);
        assert_eq!(rsp.status(), http::StatusCode::CREATED);
        assert_eq!(rsp.headers()[CONTENT_LENGTH], "3");
        assert_eq!(rsp.headers().get_all(CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(rsp.headers()[REPLAY_HEADER], "true");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn the_request_id_joins_the_error_body() {
        let mut r = answer(Reason::NoRoute, "no route", None);
        with_request_id(&mut r, &HeaderValue::from_static("ab\"c"));
        let Body::Full(Some(b)) = r.body() else {
            panic!("a full body")
        };
        let v: serde_json::Value = serde_json::from_slice(b).expect("json");
        assert_eq!(v["request_id"], "ab\"c");
        assert_eq!(v["error"], "no_route");
        let mut plain = Response::new(Body::full("{}"));
        with_request_id(&mut plain, &HeaderValue::from_static("x"));
        assert!(matches!(plain.body(), Body::Full(Some(b)) if b.as_ref() == b"{}"));
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
            (Reason::IdempotencyInFlight, 409),
            (Reason::IdempotencyKeyReused, 422),
            (Reason::IdempotencyNotReplayable, 422),
            (Reason::FaultInjected, 503),
            (Reason::InvalidToken, 401),
        ] {
            assert_eq!(answer(reason, "", None).status(), code, "{reason}");
        }
    }
}
