//! What of a client's streamed upload an HTTP/2 try sent, kept so that the request can go
//! again if the upstream certainly did not process it (`REFUSED_STREAM`, a stream above a
//! `GOAWAY`'s last stream id: RFC 9113 §8.7).
//!
//! Why: a body in memory (the lean HTTP/1.1 server's, one buffered for `retry`) is simply sent
//! again, but a streamed one (every HTTP/2 client's) is handed to hyper's HTTP/2 client, which
//! drops it with the refused stream. So an HTTP/2 client's POST was a 502 where the same POST
//! from an HTTP/1.1 client got its answer. A streamed body sent to an HTTP/2 upstream now keeps
//! each frame it gives (a count on its bytes, not a copy) up to a cap; a refusal that finds the
//! body read to its end within the cap sends the kept frames again on a new stream. A body
//! still coming when the refusal comes (its rest went with hyper's stream) or larger than the
//! cap is not kept: it fails as before. An HTTP/1.1 upstream arms none of this.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;

use super::{Body, ClientBody, ClientIn, FaultCell};

/// The most of a streamed upload kept for sending again on a route without `retry` (with one,
/// its `retry.buffer`): what the lean server reads whole with the head, and `retry.buffer`'s
/// default.
pub const REPLAY_CAP: usize = 64 * 1024;

/// The frames of an upload as they came from the client, shared between the body (in hyper's
/// hands while the stream goes) and the try that may send it again.
#[derive(Debug)]
pub(super) struct Kept {
    data: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
    size: usize,
    cap: usize,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Frames are being kept; the client has not finished sending.
    Keeping,
    /// Every frame of the upload is kept.
    Whole,
    /// Not replayable: over the cap, broken, or a frame out of order.
    Lost,
}

/// A try's hold on its upload's [`Kept`] frames ([`ClientBody::keep`]).
#[derive(Debug)]
pub struct Replay {
    kept: Arc<parking_lot::Mutex<Kept>>,
    fault: Arc<FaultCell>,
    idle: Duration,
}

// === impl Kept ===

impl Kept {
    /// A record that starts with `prefix` (frames read from the client and not sent yet).
    pub(super) fn new(cap: usize, prefix: &VecDeque<Frame<Bytes>>) -> Kept {
        let mut kept = Kept {
            data: Vec::new(),
            trailers: None,
            size: 0,
            cap,
            state: State::Keeping,
        };
        for f in prefix {
            kept.take(f);
        }
        kept
    }

    /// Keeps `frame`, just read from the client.
    pub(super) fn take(&mut self, frame: &Frame<Bytes>) {
        if self.state != State::Keeping {
            return;
        }
        if self.trailers.is_some() {
            // Nothing follows trailers.
            return self.lose();
        }
        if let Some(d) = frame.data_ref() {
            self.size += d.len();
            if self.size > self.cap {
                return self.lose();
            }
            if !d.is_empty() {
                self.data.push(d.clone());
            }
        } else if let Some(t) = frame.trailers_ref() {
            self.trailers = Some(t.clone());
        } else {
            self.lose();
        }
    }

    /// The client sent the last of its upload.
    pub(super) fn end(&mut self) {
        if self.state == State::Keeping {
            self.state = State::Whole;
        }
    }

    /// The upload cannot be sent again (too large, or broken); what was kept is let go.
    pub(super) fn lose(&mut self) {
        self.state = State::Lost;
        self.data = Vec::new();
        self.trailers = None;
    }

    /// Whether frames are still being taken.
    pub(super) fn keeping(&self) -> bool {
        self.state == State::Keeping
    }
}

// === impl Replay ===

impl Replay {
    pub(super) fn new(
        kept: Arc<parking_lot::Mutex<Kept>>,
        fault: Arc<FaultCell>,
        idle: Duration,
    ) -> Replay {
        Replay { kept, fault, idle }
    }

    /// The whole upload again, if every byte of it was kept (none copied): one chunk (with its
    /// trailers) as an in-memory body; more as a client body that has nothing left to read
    /// and keeps the same record, so a refusal of this sending can send it again too.
    pub fn again(&self) -> Option<Body> {
        let kept = self.kept.lock();
        if kept.state != State::Whole {
            return None;
        }
        if kept.data.len() <= 1 {
            let data = kept.data.first().cloned().unwrap_or_default();
            return Some(Body::with_trailers(data, kept.trailers.clone()));
        }
        let mut prefix: VecDeque<Frame<Bytes>> =
            kept.data.iter().cloned().map(Frame::data).collect();
        if let Some(t) = &kept.trailers {
            prefix.push_back(Frame::trailers(t.clone()));
        }
        Some(Body::Client(ClientBody {
            prefix,
            rest: ClientIn::Empty,
            idle: self.idle,
            timer: None,
            fault: self.fault.clone(),
            replay_cap: kept.cap,
            kept: Some(self.kept.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(frames: &[&'static str], cap: usize) -> ClientBody {
        // As if read ahead from the client: counted as received.
        let fault = Arc::new(FaultCell::default());
        let read: usize = frames.iter().map(|f| f.len()).sum();
        fault
            .received
            .store(read as u64, std::sync::atomic::Ordering::Relaxed);
        let mut b = ClientBody::new(ClientIn::Empty, Duration::from_secs(30), fault);
        for f in frames.iter().rev() {
            b.unread(Frame::data(Bytes::from_static(f.as_bytes())));
        }
        b.replayable_up_to(cap)
    }

    /// A body read to its end within the cap goes again whole, as often as asked; one still
    /// being read, or over the cap, does not.
    #[tokio::test]
    async fn only_a_whole_body_within_the_cap_goes_again() {
        let mut b = body(&["abc", "de"], 5);
        // All of it came from the client already (read ahead): whole before it goes.
        let replay = b.keep().expect("kept");
        let sent = b.collect().await.expect("sent").to_bytes();
        assert_eq!(sent, "abcde");
        for _ in 0..2 {
            let again = replay.again().expect("whole");
            let bytes = again.collect().await.expect("again").to_bytes();
            assert_eq!(bytes, "abcde");
        }

        let mut over = body(&["abc", "def"], 5);
        assert!(over.keep().is_none(), "known to be over the cap");
        // A body of no stated size passes its cap as it comes.
        let mut kept = Kept::new(5, &VecDeque::new());
        kept.take(&Frame::data(Bytes::from_static(b"abc")));
        kept.take(&Frame::data(Bytes::from_static(b"def")));
        kept.end();
        assert_eq!((kept.state, kept.data.len()), (State::Lost, 0), "let go");

        let mut none = body(&["abc"], 0);
        assert!(none.keep().is_none(), "no cap");
    }
}
