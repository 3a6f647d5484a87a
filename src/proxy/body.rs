//! The one body type that flows through rampart, both ways.
//!
//! Bodies are streamed, never collected whole: an upstream's `Incoming` is handed to the client
//! frame by frame, and a client's to the upstream. Synthetic answers carry a small `Full` body.
//! An enum instead of a boxed trait object keeps the hot path free of an allocation per body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No bytes at all.
    #[default]
    Empty,
    /// One chunk, already in memory (synthetic answers, replayed requests).
    Full(Option<Bytes>),
    /// Streamed from a peer.
    Incoming(Incoming),
}

// === impl Body ===

impl Body {
    /// A body of one chunk.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(chunk) => Poll::Ready(chunk.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(chunk) => chunk.is_none(),
            Body::Incoming(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map(|b| b.len() as u64).unwrap_or(0))
            }
            Body::Incoming(inner) => inner.size_hint(),
        }
    }
}
