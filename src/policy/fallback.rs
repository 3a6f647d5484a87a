//! Fallback answers (SPEC §10): when rampart would answer an error itself, answer with the last
//! good answer instead, or a fixed one.
//!
//! Why: for many reads a slightly old answer is worth far more to the caller than a 503; and
//! where it is not, a fixed "empty" answer (`{"items":[]}`) lets a page render degraded instead
//! of failing. Only rampart's own refusals listed in `fallback.on` are replaced (an upstream's
//! own 5xx is its answer, not ours), and the answer says what it is: `x-rampart-degraded:
//! stale|static`, with `x-rampart-reason` still naming the error it replaced.
//!
//! The static answer stands in for every method (SPEC §10), unless `static.methods` names the
//! ones it is for: a request of another method keeps rampart's own refusal, as if there were no
//! fallback (nor is it counted as one). A static 2xx for every method would tell a POST, PUT,
//! PATCH or DELETE whose write never ran (or ran an unknown number of times) that it
//! succeeded, so `validate` warns of a 2xx without `methods`.
//!
//! The stale answer is the last 2xx answer to the same tenant, method (GET or HEAD) and target
//! (path and query), no older than `stale`, and only if a shared cache could keep it
//! ([`may_keep`]: not private, not setting a cookie, not one that forbids being served stale,
//! not for an authorized request unless it says `public`), since it is given to any client of
//! the tenant. Keeping it costs a copy of small bodies as they stream to the client
//! (`proxy/tee.rs`); the bounds are in [`store`]. This module decides; `proxy/degrade.rs`
//! applies it on the request path and `proxy/respond.rs` builds the answer.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use prometheus::IntCounter;

use self::store::{Kept, Key, StaleStore};
use crate::clock::SharedClock;
use crate::config::file::{self, FallbackOn};
use crate::error::Reason;
use crate::metrics::Metrics;

/// Name of the header that marks a fallback answer: `stale` or `static`.
pub const DEGRADED_HEADER: http::HeaderName = http::HeaderName::from_static("x-rampart-degraded");

/// The fallback section of one route's policy: its store and metric handles.
#[derive(Debug)]
pub struct RouteFallback {
    cfg: file::Fallback,
    stale: Option<(Duration, Arc<StaleStore>)>,
    static_answer: Option<StaticParts>,
    /// `static.methods`: the methods the static answer is for; `None`, every method.
    static_methods: Option<Box<[Method]>>,
    /// Per replaced reason: the stale and the static counter.
    on: Vec<(Reason, IntCounter, IntCounter)>,
}

/// The fixed answer of `fallback.static`.
#[derive(Clone, Debug)]
pub struct StaticParts {
    /// Status.
    pub status: StatusCode,
    /// `content-type`.
    pub content_type: HeaderValue,
    /// Body.
    pub body: Bytes,
}

/// Where one request's good answer would be kept ([`RouteFallback::keep_for`]).
#[derive(Debug)]
pub struct Keep {
    /// Its key in the store (also the key a replacement for this request is looked up by).
    pub key: Key,
    /// The route's store.
    pub store: Arc<StaleStore>,
    /// Whether the request carried `authorization`.
    pub authorized: bool,
}

/// What to answer instead of a refusal.
#[derive(Debug)]
pub enum Replacement {
    /// The last good answer, this old.
    Stale(Kept, Duration),
    /// The fixed answer.
    Static(StaticParts),
}

// === impl RouteFallback ===

impl RouteFallback {
    /// The runtime of `cfg` for the route labelled `route`; the store of `old` is kept when
    /// both keep stale answers (a reload does not forget them).
    pub fn build(
        cfg: &file::Fallback,
        old: Option<&RouteFallback>,
        route: &str,
        metrics: &Metrics,
        clock: &SharedClock,
    ) -> RouteFallback {
        let stale = cfg.stale.map(|d| {
            let kept = old.and_then(|o| o.stale.as_ref()).map(|(_, s)| s.clone());
            (
                d.0,
                kept.unwrap_or_else(|| Arc::new(StaleStore::new(clock.clone()))),
            )
        });
        let static_answer = cfg.static_answer.as_ref().map(|s| StaticParts {
            status: StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK),
            content_type: HeaderValue::from_str(&s.content_type)
                .unwrap_or(HeaderValue::from_static("text/plain")),
            body: Bytes::from(s.body.clone()),
        });
        let static_methods = cfg
            .static_answer
            .as_ref()
            .and_then(|s| s.methods.as_ref())
            .map(|ms| {
                // Validation refused a name that is no method.
                ms.iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            });
        let on = cfg
            .on
            .iter()
            .map(|o| {
                let r = reason(*o);
                let c = |kind: &str| {
                    metrics
                        .fallbacks
                        .with_label_values(&[route, kind, r.as_str()])
                };
                (r, c("stale"), c("static"))
            })
            .collect();
        RouteFallback {
            cfg: cfg.clone(),
            stale,
            static_answer,
            static_methods,
            on,
        }
    }

    /// The section this was built from.
    pub fn config(&self) -> &file::Fallback {
        &self.cfg
    }

    /// Where a 2xx answer to this request would be kept, and under which key; `None` when the
    /// policy keeps nothing for it (no `stale`, or not GET/HEAD). `headers` are the request's:
    /// whether it carried `authorization` decides, with the answer's own headers, whether its
    /// answer may be kept (see [`may_keep`]).
    pub fn keep_for(
        &self,
        tenant: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Keep> {
        let (_, store) = self.stale.as_ref()?;
        if !is_read(method) {
            return None;
        }
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let key = Key {
            tenant: tenant.to_string(),
            method: method.clone(),
            target: target.to_string(),
        };
        Some(Keep {
            key,
            store: store.clone(),
            authorized: headers.contains_key(AUTHORIZATION),
        })
    }

    /// Whether the static answer may stand in for a request of `method`: every method, or those
    /// `static.methods` names.
    pub fn static_for(&self, method: &Method) -> bool {
        self.static_methods
            .as_deref()
            .is_none_or(|ms| ms.contains(method))
    }

    /// What to answer instead of a refusal whose `x-rampart-reason` is `reason_text`, if this
    /// policy replaces it; counts what it gives. `static_ok` says whether the static answer may
    /// stand in for the request ([`RouteFallback::static_for`] its method); a kept answer is
    /// only ever looked up for a GET or HEAD, by `key`.
    pub fn replacement(
        &self,
        reason_text: &[u8],
        static_ok: bool,
        key: Option<&Key>,
    ) -> Option<(Reason, Replacement)> {
        let (r, stale_count, static_count) = self
            .on
            .iter()
            .find(|(r, _, _)| r.as_str().as_bytes() == reason_text)?;
        if let (Some((max_age, store)), Some(key)) = (&self.stale, key) {
            if let Some((kept, age)) = store.get(key, *max_age) {
                stale_count.inc();
                return Some((*r, Replacement::Stale(kept, age)));
            }
        }
        let s = self.static_answer.as_ref().filter(|_| static_ok)?.clone();
        static_count.inc();
        Some((*r, Replacement::Static(s)))
    }
}

/// Whether a request of `method` is a read whose good answer `stale` keeps: GET or HEAD.
fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// Whether an answer with `headers` to a request that carried `authorization` or not
/// (`authorized`) may be kept as the last good answer, and so be given to anyone of the tenant
/// later. The stale store is a cache shared by every client of a tenant, so it keeps only what
/// a shared cache may (RFC 9111 §3): not an answer whose `cache-control` says `no-store`
/// (§5.2.2.5), `private` (§5.2.2.7; with or without a field list) or `no-cache` (§5.2.2.4: it
/// must not be reused without asking the origin, and a fallback is given exactly when the
/// origin cannot be asked); not one that sets a cookie (`set-cookie`: one client's session);
/// not one whose `vary` is `*` or names `cookie` or `authorization` (it says it differs per
/// client, and the store keeps one answer per target); not one that says `must-revalidate`,
/// `proxy-revalidate` or `s-maxage` (§4.2.4: a cache must not serve it stale, and a shared
/// cache must not when it carries `s-maxage`; a fallback is given only when the upstream
/// cannot be asked, stale or not); and, for a request that carried `authorization`, only one
/// that says `public` (§3.5: `must-revalidate` and `s-maxage` would allow it too, but they
/// forbid what a fallback does).
///
/// Cheap: a pass over these few header lines, only for a 2xx answer on a route that keeps
/// stale answers. Directive names are matched without regard to case; a directive inside a
/// quoted value may be misread as one of its own, which errs towards not keeping.
pub fn may_keep(headers: &HeaderMap, authorized: bool) -> bool {
    if headers.contains_key(SET_COOKIE) {
        return false;
    }
    let per_client = headers.get_all(VARY).iter().any(|v| {
        items(v.as_bytes()).any(|f| {
            f == b"*"
                || f.eq_ignore_ascii_case(b"cookie")
                || f.eq_ignore_ascii_case(b"authorization")
        })
    });
    if per_client {
        return false;
    }
    let mut shared = false;
    for v in headers.get_all(CACHE_CONTROL) {
        for d in items(v.as_bytes()) {
            let name = d.split(|b| *b == b'=').next().unwrap_or(d).trim_ascii();
            let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
            if is(b"no-store") || is(b"private") || is(b"no-cache") {
                return false;
            }
            if is(b"must-revalidate") || is(b"proxy-revalidate") || is(b"s-maxage") {
                return false;
            }
            shared |= is(b"public");
        }
    }
    !authorized || shared
}

/// The comma-separated items of a header value, trimmed.
fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// The reason a `fallback.on` entry names.
fn reason(on: FallbackOn) -> Reason {
    match on {
        FallbackOn::CircuitOpen => Reason::CircuitOpen,
        FallbackOn::UpstreamUnavailable => Reason::UpstreamUnavailable,
        FallbackOn::Timeout => Reason::Timeout,
        FallbackOn::Shed => Reason::Shed,
    }
}

#[cfg(test)]
mod tests;
