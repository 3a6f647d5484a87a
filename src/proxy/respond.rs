//! The answers rampart makes itself (SPEC §3): the only place that picks their status.
//!
//! Each carries `x-rampart-reason` and a JSON body `{"error", "message"}`; refusals that can be
//! retried later carry `retry-after` in whole seconds (at least 1), computed by the policy that
//! refused, never a constant. The request id is added to the body at the end of the request
//! path ([`with_request_id`]), so the many places that refuse need not carry it. To a gRPC call
//! the same answer goes in gRPC's form instead ([`to_grpc`]): a 200 whose `grpc-status` says
//! what happened, with no body.

use std::time::Duration;

use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::Response;

use super::body::Body;
use super::grpc::{self, GRPC_STATUS};
use crate::error::Reason;
use crate::policy::fallback::{Replacement, DEGRADED_HEADER};
use crate::policy::fault::FAULT_HEADER;
use crate::policy::idempotency::{StoredAnswer, REPLAY_HEADER};

/// Name of the header that says why rampart answered.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-rampart-reason");

/// Marks `rsp` as rampart's own answer, whose `x-rampart-reason` says why. The mark is its
/// body's variant ([`Body::mark_own`]; every own answer's body is in memory), so it costs
/// nothing: no extension, no allocation. Its `x-rampart-reason` is read only on an answer with
/// it ([`own_reason`]): an upstream's answer may carry that header too (another rampart's, in
/// front of its own service, or any upstream's), and it is passed on as any upstream header
/// is, never taken for rampart's.
pub fn mark_own(rsp: &mut Response<Body>) {
    rsp.body_mut().mark_own();
}

/// The reason of rampart's own answer ([`mark_own`]); `None` for an upstream's answer,
/// whatever its headers say.
pub fn own_reason(rsp: &Response<Body>) -> Option<&HeaderValue> {
    if !rsp.body().is_own() {
        return None;
    }
    rsp.headers().get(REASON_HEADER)
}

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
    mark_own(&mut rsp);
    rsp
}

/// Adds `"request_id": id` to the JSON body of rampart's own answer (the caller knows it is:
/// [`own_reason`]; it carries `x-rampart-reason`); other answers are left alone, and so is a fallback answer, whose body
/// is a kept upstream answer or the operator's static one, never to be rewritten.
pub fn with_request_id(rsp: &mut Response<Body>, id: &HeaderValue) {
    let h = rsp.headers();
    if !h.contains_key(REASON_HEADER) || h.contains_key(DEGRADED_HEADER) {
        return;
    }
    let Body::Own(Some(body)) = rsp.body() else {
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
    *rsp.body_mut() = Body::Own(Some(out.into()));
}

/// rampart's own answer `rsp` (the caller knows it is: [`own_reason`]) in the form a gRPC client reads:
/// HTTP 200, no body, `content-type: application/grpc`, and the outcome in `grpc-status` (the
/// code for the reason, [`grpc::code_for`]) and `grpc-message` (the JSON body's message,
/// percent-encoded as gRPC asks). Over HTTP/2 that is a "Trailers-Only" answer: one HEADERS
/// frame that ends the stream. `retry-after` stays and is given to gRPC's retry policy too, as
/// `grpc-retry-pushback-ms`; every other header stays. A fallback answer (`x-rampart-degraded`)
/// is the operator's chosen answer and is left as it is.
pub fn to_grpc(rsp: &mut Response<Body>) {
    let h = rsp.headers();
    if h.contains_key(DEGRADED_HEADER) {
        return;
    }
    let Some(reason) = h
        .get(REASON_HEADER)
        .and_then(|r| Reason::from_text(r.as_bytes()))
    else {
        return;
    };
    let code = grpc::code_for(reason, rsp.status());
    let pushback = h
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|secs| secs.saturating_mul(1000));
    let message = match rsp.body() {
        Body::Own(Some(body)) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(grpc_message)),
        _ => None,
    };
    *rsp.status_mut() = http::StatusCode::OK;
    rsp.body_mut().clear();
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.remove(CONTENT_LENGTH);
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Some(m) = message.and_then(|m| HeaderValue::from_str(&m).ok()) {
        h.insert(GRPC_MESSAGE, m);
    }
    if let Some(ms) = pushback {
        h.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from(ms));
    }
}

const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// `text` percent-encoded as `grpc-message` wants it: every byte outside printable ASCII, and
/// `%` itself, as `%XX` (upper-case hex).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// An injected abort (`fault.abort`): `fault_injected` with the configured `status`, marked
/// `x-rampart-fault: abort`, or `delay, abort` when an injected delay came before it (both
/// were injected and both counted).
///
/// To a CONNECT (`connect`), a 2xx says the tunnel is open (RFC 9110 §9.3.6), and none is:
/// it goes with no content (a 2xx to CONNECT states no length, and what follows its head is
/// read as the target's bytes), and no tunnel takes the connection hyper hands over after it,
/// so the connection (over HTTP/2, the stream) is closed at once: the client sees a tunnel
/// whose target closed on connect. `validate` says so where such an abort is configured.
pub fn fault_abort(status: http::StatusCode, delayed: bool, connect: bool) -> Response<Body> {
    let mut rsp = answer(
        Reason::FaultInjected,
        "fault injected by policy (fault.abort); the upstream was not called",
        None,
    );
    *rsp.status_mut() = status;
    let mark = if delayed { "delay, abort" } else { "abort" };
    rsp.headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static(mark));
    if connect && status.is_success() {
        rsp.body_mut().clear();
        let h = rsp.headers_mut();
        h.remove(CONTENT_TYPE);
        h.remove(CONTENT_LENGTH);
    } else {
        without_content(&mut rsp);
    }
    rsp
}

/// A fallback answer in place of a refusal for `replaced`: the kept answer marked
/// `x-rampart-degraded: stale` (with its `age`), or the static one marked `static`.
pub fn degraded(replaced: Reason, with: Replacement) -> Response<Body> {
    let (mut rsp, kind) = match with {
        Replacement::Stale(kept, age) => {
            // Served as it was kept, with the trailers its body ended with. One with trailers
            // states no length, as a replay's (see `replay`): an HTTP/1.1 client that asked
            // for them gets it chunked, which has room for them.
            let trailed = kept.trailers.is_some();
            let mut rsp = Response::new(Body::with_trailers(kept.body, kept.trailers));
            *rsp.status_mut() = kept.status;
            *rsp.headers_mut() = kept.headers;
            if trailed {
                rsp.headers_mut().remove(CONTENT_LENGTH);
            }
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
    without_content(&mut rsp);
    mark_own(&mut rsp);
    rsp
}

/// Whether an answer of `status` carries no content: 204 (RFC 9110 §15.3.5), 205 (§15.3.6)
/// and 304 (§15.4.5). rampart's own answers of these statuses go without a body
/// ([`without_content`]); `validate` warns of a `fallback.static` body that would not be sent.
pub fn contentless(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 204 | 205 | 304)
}

/// rampart's own answer `rsp` with no body, no `content-length` and no `content-type` when
/// its status is [`contentless`] (a configured status: an injected abort's, a static
/// fallback's, or a kept answer's). Over HTTP/2 a length on a 204, or a length other than the
/// 200's on a 304, makes the client reset the stream (RFC 9110 §8.6, RFC 9113 §8.1.1). A 205
/// says `content-length: 0` over both (RFC 9110 §15.3.6 asks for it, and RFC 9112 §6.3 frames
/// only 1xx, 204 and 304 by their head), to a HEAD as to a GET.
fn without_content(rsp: &mut Response<Body>) {
    if !contentless(rsp.status()) {
        return;
    }
    rsp.body_mut().clear();
    let reset = rsp.status() == http::StatusCode::RESET_CONTENT;
    let h = rsp.headers_mut();
    h.remove(CONTENT_TYPE);
    if reset {
        h.insert(CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    } else {
        h.remove(CONTENT_LENGTH);
    }
}

/// A kept answer replayed for a repeated idempotency key, byte for byte, marked
/// `x-rampart-idempotent-replay: true`.
pub fn replay(kept: &StoredAnswer) -> Response<Body> {
    let body = Body::with_trailers(kept.body.clone(), kept.trailers.clone());
    let mut rsp = Response::new(body);
    *rsp.status_mut() = kept.status;
    *rsp.headers_mut() = kept.headers.clone();
    // The length is the kept body's, whatever the store says: a stored answer may come from a
    // shared store that another writer filled, and a stale length would desynchronise the
    // client's connection. One with trailers states none: an HTTP/1.1 client then gets it
    // chunked, which has room for them (`grpc::announce_trailers` names gRPC's).
    match kept.trailers {
        None => rsp
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(kept.body.len())),
        Some(_) => rsp.headers_mut().remove(CONTENT_LENGTH),
    };
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
            trailers: None,
        };
        let rsp = replay(&kept);
        assert_eq!(rsp.status(), http::StatusCode::CREATED);
        assert_eq!(rsp.headers()[CONTENT_LENGTH], "3");
        assert_eq!(rsp.headers().get_all(CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(rsp.headers()[REPLAY_HEADER], "true");
    }

    #[test]
    fn a_refusal_for_a_grpc_call_is_a_trailers_only_answer() {
        let mut rsp = answer(
            Reason::RateLimited,
            "rate limit \"burst\" for tenant é: 100%",
            Some(Duration::from_millis(1500)),
        );
        to_grpc(&mut rsp);
        assert_eq!(rsp.status(), http::StatusCode::OK);
        assert!(
            matches!(rsp.body(), Body::Own(None)),
            "still marked, and empty"
        );
        let h = rsp.headers();
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[GRPC_STATUS], "8");
        assert_eq!(
            h[GRPC_MESSAGE],
            "rate limit \"burst\" for tenant %C3%A9: 100%25"
        );
        assert_eq!(h[RETRY_AFTER], "2");
        assert_eq!(h[GRPC_RETRY_PUSHBACK_MS], "2000");
        assert_eq!(h[REASON_HEADER], "rate_limited");
        assert!(h.get(CONTENT_LENGTH).is_none());

        // Each reason has its code; an injected abort maps its configured status.
        let code = |mut rsp: Response<Body>| {
            to_grpc(&mut rsp);
            rsp.headers()[GRPC_STATUS]
                .to_str()
                .expect("text")
                .to_owned()
        };
        assert_eq!(code(answer(Reason::Timeout, "t", None)), "4");
        assert_eq!(code(answer(Reason::CircuitOpen, "c", None)), "14");
        assert_eq!(code(answer(Reason::NoRoute, "n", None)), "12");
        assert_eq!(code(answer(Reason::TenantRequired, "t", None)), "16");
        assert_eq!(
            code(fault_abort(http::StatusCode::FORBIDDEN, false, false)),
            "7"
        );
        assert_eq!(
            code(fault_abort(http::StatusCode::IM_A_TEAPOT, false, false)),
            "2"
        );

        // A fallback answer is the operator's: left alone.
        let kept =
            crate::policy::fallback::Replacement::Static(crate::policy::fallback::StaticParts {
                status: http::StatusCode::OK,
                content_type: HeaderValue::from_static("text/plain"),
                body: bytes::Bytes::from_static(b"cached"),
            });
        let mut rsp = degraded(Reason::Shed, kept);
        to_grpc(&mut rsp);
        assert!(rsp.headers().get(GRPC_STATUS).is_none());
        assert_eq!(rsp.headers()[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn a_contentless_status_goes_without_body_or_type() {
        for code in [204, 205, 304] {
            let status = http::StatusCode::from_u16(code).expect("status");
            let rsp = fault_abort(status, false, false);
            assert!(matches!(rsp.body(), Body::Own(None)), "{code}");
            assert!(rsp.headers().get(CONTENT_TYPE).is_none(), "{code}");
            assert_eq!(rsp.headers()[FAULT_HEADER], "abort");
            let fixed = crate::policy::fallback::Replacement::Static(
                crate::policy::fallback::StaticParts {
                    status,
                    content_type: HeaderValue::from_static("text/plain"),
                    body: bytes::Bytes::from_static(b"hello"),
                },
            );
            let mut rsp = degraded(Reason::Timeout, fixed);
            with_request_id(&mut rsp, &HeaderValue::from_static("id"));
            assert!(matches!(rsp.body(), Body::Own(None)), "{code}");
            let length = rsp.headers().get(CONTENT_LENGTH).map(HeaderValue::as_bytes);
            let zero = (code == 205).then_some(&b"0"[..]);
            assert_eq!(
                length, zero,
                "{code}: a 205 says its length is 0, the others none"
            );
            assert_eq!(rsp.headers()[REASON_HEADER], "timeout");
        }
        let rsp = fault_abort(http::StatusCode::OK, false, false);
        assert!(matches!(rsp.body(), Body::Own(Some(_))));
        // A 2xx to CONNECT says a tunnel is open: no content (nor a length) that would be read
        // as the target's bytes. Another status keeps its body.
        let rsp = fault_abort(http::StatusCode::OK, false, true);
        assert!(matches!(rsp.body(), Body::Own(None)));
        assert!(rsp.headers().get(CONTENT_TYPE).is_none());
        assert!(rsp.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(rsp.headers()[REASON_HEADER], "fault_injected");
        let rsp = fault_abort(http::StatusCode::SERVICE_UNAVAILABLE, false, true);
        assert!(matches!(rsp.body(), Body::Own(Some(_))));
    }

    /// Every answer rampart makes is marked as its own, by its body alone (no extension), and
    /// stays marked as it is rewritten (a request id, gRPC's form, no content); an answer
    /// that only carries `x-rampart-reason` (an upstream's) is not.
    #[test]
    fn own_answers_are_marked_by_their_body_and_others_are_not() {
        let reason = |rsp: &Response<Body>| own_reason(rsp).map(|v| v.as_bytes().to_vec());
        let mut rsp = answer(Reason::Shed, "busy", Some(Duration::from_secs(1)));
        assert!(rsp.extensions().is_empty(), "the mark costs no extension");
        assert_eq!(reason(&rsp).as_deref(), Some(&b"shed"[..]));
        with_request_id(&mut rsp, &HeaderValue::from_static("id"));
        assert_eq!(reason(&rsp).as_deref(), Some(&b"shed"[..]));
        to_grpc(&mut rsp);
        assert_eq!(reason(&rsp).as_deref(), Some(&b"shed"[..]));
        let rsp = fault_abort(http::StatusCode::NO_CONTENT, false, false);
        assert!(own_reason(&rsp).is_some());
        // A kept answer served with its trailers (a stale fallback's body) is marked too.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let data = bytes::Bytes::from_static(b"kept");
        let mut stale = Response::new(Body::with_trailers(data.clone(), Some(trailers.clone())));
        stale
            .headers_mut()
            .insert(REASON_HEADER, HeaderValue::from_static("timeout"));
        assert!(own_reason(&stale).is_none());
        mark_own(&mut stale);
        assert!(matches!(stale.body(), Body::Trailed(_)));
        assert_eq!(reason(&stale).as_deref(), Some(&b"timeout"[..]));
        let mut head = answer(Reason::NoRoute, "none", None);
        crate::proxy::body::for_head(&mut head);
        assert!(
            own_reason(&head).is_some(),
            "emptied for HEAD, still marked"
        );

        // Not rampart's: an answer with the header and any other body, a replay of a kept one.
        for body in [Body::Empty, Body::full("{}")] {
            let mut up = Response::new(body);
            up.headers_mut()
                .insert(REASON_HEADER, HeaderValue::from_static("shed"));
            assert!(own_reason(&up).is_none());
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(REASON_HEADER, HeaderValue::from_static("timeout"));
        let kept = StoredAnswer {
            status: http::StatusCode::OK,
            headers,
            body: data,
            trailers: Some(trailers),
        };
        assert!(own_reason(&replay(&kept)).is_none());
    }

    #[test]
    fn every_reason_is_read_back_from_its_text() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_text(r.as_str().as_bytes()), Some(r));
        }
        assert_eq!(Reason::from_text(b"nope"), None);
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
        let Body::Own(Some(b)) = r.body() else {
            panic!("an own answer's full body")
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
            (Reason::IdempotencyTableFull, 503),
            (Reason::FaultInjected, 503),
            (Reason::InvalidToken, 401),
            (Reason::JwksUnavailable, 503),
            (Reason::MisdirectedRequest, 421),
            (Reason::HttpsDowngrade, 421),
        ] {
            assert_eq!(answer(reason, "", None).status(), code, "{reason}");
        }
    }
}
