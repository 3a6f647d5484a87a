//! Fallback answers on the request path (policy `fallback`, SPEC §10): keeps a copy of small
//! 2xx GET/HEAD answers as they stream to the client, and replaces rampart's own refusals.
//!
//! The copy never delays the client: each data frame is handed on at once, and what is kept is
//! a reference-counted handle to the same bytes, not a copy, until the body ends; only then are
//! the frames joined and stored. A body over the store's size cap, one that ends in an error,
//! or one the client abandons is not kept. Deciding what replaces what is `policy::fallback`;
//! the answer itself is built by `respond::degraded`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};

use super::body::Body;
use super::respond::{self, REASON_HEADER};
use crate::error::BoxError;
use crate::policy::fallback::store::{Key, StaleStore, MAX_BODY};
use crate::policy::fallback::RouteFallback;

/// A body that hands every frame on and keeps a copy for the stale store.
#[derive(Debug)]
pub struct Tee {
    inner: Body,
    frames: Vec<Bytes>,
    len: usize,
    sink: Option<Sink>,
}

/// Where a finished body goes.
#[derive(Debug)]
struct Sink {
    store: Arc<StaleStore>,
    key: Key,
    status: StatusCode,
    headers: HeaderMap,
}

/// Applies `fb` to the answer of one request: a refusal it replaces becomes the fallback
/// answer; a 2xx upstream answer to a request it keeps (`keep`, from
/// [`RouteFallback::keep_for`]) gets its body teed into the store.
pub fn apply(
    fb: &RouteFallback,
    keep: Option<(Key, Arc<StaleStore>)>,
    rsp: Response<Body>,
) -> Response<Body> {
    if !matches!(rsp.body(), Body::Upstream(_)) {
        // rampart's own answer: the reason header names why (an upstream's is never trusted).
        let Some(reason) = rsp.headers().get(REASON_HEADER) else {
            return rsp;
        };
        return match fb.replacement(reason.as_bytes(), keep.as_ref().map(|(k, _)| k)) {
            Some((reason, with)) => respond::degraded(reason, with),
            None => rsp,
        };
    }
    match keep {
        Some((key, store)) if rsp.status().is_success() => tee(rsp, key, store),
        _ => rsp,
    }
}

fn tee(rsp: Response<Body>, key: Key, store: Arc<StaleStore>) -> Response<Body> {
    if rsp.body().size_hint().lower() > MAX_BODY as u64 {
        return rsp;
    }
    let (parts, inner) = rsp.into_parts();
    let sink = Sink {
        store,
        key,
        status: parts.status,
        headers: parts.headers.clone(),
    };
    let body = Tee {
        inner,
        frames: Vec::new(),
        len: 0,
        sink: Some(sink),
    };
    Response::from_parts(parts, Body::Teed(Box::new(body)))
}

// === impl Tee ===

impl Tee {
    /// The body it wraps (for guards that ride on an upstream's body).
    pub fn inner_mut(&mut self) -> &mut Body {
        &mut self.inner
    }

    fn keep(&mut self, data: &Bytes) {
        if self.sink.is_none() {
            return;
        }
        self.len += data.len();
        if self.len > MAX_BODY {
            self.sink = None;
            self.frames = Vec::new();
        } else {
            self.frames.push(data.clone());
        }
    }

    fn finish(&mut self) {
        let Some(sink) = self.sink.take() else { return };
        let frames = std::mem::take(&mut self.frames);
        let body = match frames.len() {
            0 => Bytes::new(),
            1 => frames.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for f in frames {
                    all.extend_from_slice(&f);
                }
                all.freeze()
            }
        };
        sink.store.insert(sink.key, sink.status, sink.headers, body);
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                }
                // The server stops polling once the body says it has ended, so a known length
                // ends here, not with a last `None`.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.sink = None,
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;
    use http_body_util::BodyExt;

    use super::*;
    use crate::clock::ManualClock;
    use crate::error::Reason;

    fn key() -> Key {
        Key {
            tenant: "t".into(),
            method: Method::GET,
            target: "/a".into(),
        }
    }

    fn teed(inner: Body, store: &Arc<StaleStore>) -> Tee {
        Tee {
            inner,
            frames: Vec::new(),
            len: 0,
            sink: Some(Sink {
                store: store.clone(),
                key: key(),
                status: StatusCode::OK,
                headers: HeaderMap::new(),
            }),
        }
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
            }),
        };
        let fb = RouteFallback::build(&cfg, None, "r", &m, &clock);
        let refused = respond::answer(Reason::RateLimited, "slow down", None);
        assert_eq!(apply(&fb, None, refused).status(), 429);
        let timed_out = respond::answer(Reason::Timeout, "late", None);
        let rsp = apply(&fb, None, timed_out);
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["x-rampart-degraded"], "static");
        assert_eq!(rsp.headers()[REASON_HEADER], "timeout");
    }
}
