//! The one body type that flows through rampart, both ways.
//!
//! Bodies are streamed, never collected whole: an upstream's `Incoming` is handed to the client
//! frame by frame, and a client's to the upstream. Synthetic answers carry a small `Full` body.
//! An enum instead of a boxed trait object keeps the hot path free of an allocation per body.

use std::collections::VecDeque;
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
    /// Frames already read from a peer, then the rest of its stream.
    Prefixed(VecDeque<Frame<Bytes>>, Incoming),
    /// An upstream's answer, whose connection goes back to the pool when it ends.
    Upstream(super::pool::Returning),
}

/// A request body after trying to keep it for replay.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body, small enough to send again on a retry.
    Replayable(Bytes),
    /// Too large (or with trailers): it streams once and the request is not retried.
    Streaming(Body),
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

/// Reads `body` into memory if it is at most `limit` bytes, so that a retry can send it again.
///
/// A body announced (or found) larger than `limit` is not kept: what was read so far is put in
/// front of the rest, and the body streams once. Bodies with trailers are not kept either.
pub async fn buffer(mut body: Incoming, limit: usize) -> Result<Buffered, hyper::Error> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return Ok(Buffered::Replayable(Bytes::new()));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::Streaming(Body::Incoming(body)));
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let is_data = frame.is_data();
        size += frame.data_ref().map_or(0, |d| d.len());
        frames.push_back(frame);
        if size > limit || !is_data {
            return Ok(Buffered::Streaming(Body::Prefixed(frames, body)));
        }
    }
    let mut all = bytes::BytesMut::with_capacity(size);
    for f in frames {
        if let Ok(d) = f.into_data() {
            all.extend_from_slice(&d);
        }
    }
    Ok(Buffered::Replayable(all.freeze()))
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
            Body::Prefixed(frames, rest) => match frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Body::Upstream(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(chunk) => chunk.is_none(),
            Body::Incoming(inner) => inner.is_end_stream(),
            Body::Prefixed(frames, rest) => frames.is_empty() && rest.is_end_stream(),
            Body::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map(|b| b.len() as u64).unwrap_or(0))
            }
            Body::Incoming(inner) => inner.size_hint(),
            Body::Prefixed(frames, rest) => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|b| b.len() as u64)
                    .sum();
                let mut hint = rest.size_hint();
                hint.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
            Body::Upstream(inner) => inner.size_hint(),
        }
    }
}
