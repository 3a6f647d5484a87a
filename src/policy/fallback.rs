//! Fallback answers (SPEC §10): when rampart would answer an error itself, answer with the last
//! good answer instead, or a fixed one.
//!
//! Why: for many reads a slightly old answer is worth far more to the caller than a 503; and
//! where it is not, a fixed "empty" answer (`{"items":[]}`) lets a page render degraded instead
//! of failing. Only rampart's own refusals listed in `fallback.on` are replaced (an upstream's
//! own 5xx is its answer, not ours), and the answer says what it is: `x-rampart-degraded:
//! stale|static`, with `x-rampart-reason` still naming the error it replaced.
//!
//! The stale answer is the last 2xx answer to the same tenant, method (GET or HEAD) and target
//! (path and query), no older than `stale`. Keeping it costs a copy of small bodies as they
//! stream to the client (`proxy/tee.rs`); the bounds are in [`store`]. This module decides;
//! `proxy/degrade.rs` applies it on the request path and `proxy/respond.rs` builds the answer.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
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
            on,
        }
    }

    /// The section this was built from.
    pub fn config(&self) -> &file::Fallback {
        &self.cfg
    }

    /// Where a 2xx answer to this request would be kept, and under which key; `None` when the
    /// policy keeps nothing for it (no `stale`, or not GET/HEAD).
    pub fn keep_for(
        &self,
        tenant: &str,
        method: &Method,
        uri: &Uri,
    ) -> Option<(Key, Arc<StaleStore>)> {
        let (_, store) = self.stale.as_ref()?;
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let key = Key {
            tenant: tenant.to_string(),
            method: method.clone(),
            target: target.to_string(),
        };
        Some((key, store.clone()))
    }

    /// What to answer instead of a refusal whose `x-rampart-reason` is `reason_text`, if this
    /// policy replaces it; counts what it gives.
    pub fn replacement(
        &self,
        reason_text: &[u8],
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
        let s = self.static_answer.clone()?;
        static_count.inc();
        Some((*r, Replacement::Static(s)))
    }
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
