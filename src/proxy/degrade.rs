//! Fallback answers on the request path (policy `fallback`, SPEC §10): keeps a copy of small
//! 2xx GET/HEAD answers as they stream to the client (through a [`Tee`]), and replaces
//! rampart's own refusals.
//!
//! A body over the store's size cap, one that ends in an error, or one the client abandons is
//! not kept. Deciding what replaces what is `policy::fallback`; the answer itself is built by
//! `respond::degraded`.

use std::sync::Arc;

use http::{HeaderMap, Response, StatusCode};
use http_body::Body as _;

use super::body::Body;
use super::respond;
use super::tee::{Ending, Keeper, Tee};
use crate::policy::fallback::store::{Key, StaleStore, MAX_BODY};
use crate::policy::fallback::{may_keep, Keep, RouteFallback};

/// Keeps a finished 2xx body in the stale store.
#[derive(Debug)]
struct StaleKeeper {
    store: Arc<StaleStore>,
    key: Key,
    status: StatusCode,
    headers: HeaderMap,
}

/// Applies `fb` to the answer of one request (`static_ok`: its static answer may stand in for
/// it, [`RouteFallback::static_for`]): a refusal it replaces becomes the fallback answer; a 2xx
/// upstream answer to a request it keeps (`keep`,
/// from [`RouteFallback::keep_for`]) gets its body teed into the store, unless a shared cache
/// could not keep it ([`may_keep`]: private, uncacheable, setting a cookie, or answering a
/// request that carried `authorization`).
pub fn apply(
    fb: &RouteFallback,
    static_ok: bool,
    keep: Option<Keep>,
    rsp: Response<Body>,
) -> Response<Body> {
    if !rsp.body().is_upstream() {
        // rampart's own answer (`respond::mark_own`): its reason header names why. Any other
        // (an upstream's with no body, a replay) is left as it is, whatever its headers say.
        let Some(reason) = respond::own_reason(&rsp) else {
            return rsp;
        };
        return match fb.replacement(reason.as_bytes(), static_ok, keep.as_ref().map(|k| &k.key)) {
            Some((reason, with)) => respond::degraded(reason, with),
            None => rsp,
        };
    }
    match keep {
        Some(k) if rsp.status().is_success() && may_keep(rsp.headers(), k.authorized) => {
            tee(rsp, k.key, k.store)
        }
        _ => rsp,
    }
}

fn tee(rsp: Response<Body>, key: Key, store: Arc<StaleStore>) -> Response<Body> {
    if rsp.body().size_hint().lower() > MAX_BODY as u64 {
        return rsp;
    }
    let (parts, inner) = rsp.into_parts();
    let keeper = StaleKeeper {
        store,
        key,
        status: parts.status,
        headers: parts.headers.clone(),
    };
    let body = Tee::new(inner, MAX_BODY, Box::new(keeper));
    Response::from_parts(parts, Body::Teed(Box::new(body)))
}

// === impl StaleKeeper ===

impl Keeper for StaleKeeper {
    fn kept(self: Box<Self>, ending: Ending) {
        if let Ending::Whole(body, trailers) = ending {
            self.store
                .insert_trailed(self.key, self.status, self.headers, body, trailers);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::Method;
    use http_body_util::BodyExt;

    use super::*;
    use crate::clock::ManualClock;
    use crate::error::Reason;
    use crate::proxy::respond::REASON_HEADER;

    fn key() -> Key {
        Key {
            tenant: "t".into(),
            method: Method::GET,
            target: "/a".into(),
        }
    }

    fn teed(inner: Body, store: &Arc<StaleStore>) -> Tee {
        let keeper = StaleKeeper {
            store: store.clone(),
            key: key(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        };
        Tee::new(inner, MAX_BODY, Box::new(keeper))
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_kept_and_passed_on_whole() {
        let store = Arc::new(StaleStore::new(Arc::new(ManualClock::new())));
        let got = teed(Body::full("hello"), &store)
            .collect()
            .await
            .expect("a full body must be readable")
            .to_bytes();
        assert_eq!(got, "hello");
        let (kept, _) = store.get(&key(), Duration::MAX).expect("must be kept");
        assert_eq!(kept.body, "hello");
    }

    /// An answer kept for a key is a copy of exactly its bytes, not a view into the buffer it
    /// was read in; the same answer again is kept by sharing those bytes, not copied again (a
    /// target asked again and again paid a copy of its body, up to 256 KiB, on every request);
    /// a different one replaces it with a copy of its own.
    #[tokio::test]
    async fn the_same_body_again_shares_the_kept_copy_and_a_new_one_replaces_it() {
        let store = Arc::new(StaleStore::new(Arc::new(ManualClock::new())));
        let mut kept_at = Vec::new();
        for body in ["hello", "hello", "world"] {
            let buffer = Bytes::from(format!("....{body}...."));
            let view = buffer.slice(4..9);
            let got = teed(Body::full(view.clone()), &store)
                .collect()
                .await
                .expect("a full body must be readable")
                .to_bytes();
            assert_eq!(got, body, "passed on whole");
            let (kept, _) = store.get(&key(), Duration::MAX).expect("must be kept");
            assert_eq!(kept.body, body, "the kept answer is this one");
            let within = buffer.as_ptr_range();
            assert!(!within.contains(&kept.body.as_ptr()), "a copy, not a view");
            kept_at.push(kept.body.as_ptr());
        }
        assert_eq!(
            kept_at[1], kept_at[0],
            "the same body again: its copy shared"
        );
        assert_ne!(kept_at[2], kept_at[0], "a new body: a copy of its own");
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_passed_on_and_not_kept() {
        let store = Arc::new(StaleStore::new(Arc::new(ManualClock::new())));
        let big = Bytes::from(vec![7u8; MAX_BODY + 1]);
        let got = teed(Body::full(big.clone()), &store)
            .collect()
            .await
            .expect("readable")
            .to_bytes();
        assert_eq!(got, big);
        assert!(store.is_empty());
    }

    #[test]
    fn a_refusal_not_listed_is_left_alone() {
        use crate::config::file::{Fallback, FallbackOn};
        let m = crate::metrics::Metrics::register();
        let clock: crate::clock::SharedClock = Arc::new(ManualClock::new());
        let cfg = Fallback {
            on: vec![FallbackOn::Timeout],
            stale: None,
            static_answer: Some(crate::config::file::StaticAnswer {
                status: 200,
                content_type: "text/plain".into(),
                body: "fine".into(),
                methods: None,
            }),
        };
        let fb = RouteFallback::build(&cfg, None, "r", &m, &clock);
        let refused = respond::answer(Reason::RateLimited, "slow down", None);
        assert_eq!(apply(&fb, true, None, refused).status(), 429);
        let timed_out = respond::answer(Reason::Timeout, "late", None);
        let rsp = apply(&fb, true, None, timed_out);
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["x-rampart-degraded"], "static");
        assert_eq!(rsp.headers()[REASON_HEADER], "timeout");
    }
}
