//! What of a client's streamed upload an HTTP/2 try sent, kept so that the request can go
//! again if the upstream certainly did not process it (`REFUSED_STREAM`, a stream above a
//! `GOAWAY`'s last stream id: RFC 9113 §8.7).
//!
//! Why: a body in memory (the lean HTTP/1.1 server's, one buffered for `retry`) is simply sent
//! again, but a streamed one (every HTTP/2 client's) is handed to hyper's HTTP/2 client, which
//! drops it with the refused stream. So an HTTP/2 client's POST was a 502 where the same POST
//! from an HTTP/1.1 client got its answer. A streamed body sent to an HTTP/2 upstream now keeps
//! each frame it gives (a count on its bytes, or a copy of a small one) up to a cap; a refusal sends the kept
//! frames again on a new stream, followed by the rest of the client's body when it was still
//! coming (the refusal can come as soon as the upstream saw the head, long before hyper's
//! upload task read the body's end). The client's stream lives in the record ([`Kept::rest`])
//! once it is kept, and whoever reads it does so under the record's lock: the refused sending
//! hands on each frame either read and kept, or not read yet, and reads nothing more once its
//! turn is over ([`Kept::turn`]). A body larger than the cap is let go as soon as it passes it
//! (so no more than about the cap is held) and cannot go again: it fails as before. An
//! HTTP/1.1 upstream arms none of this.
//!
//! A small frame is copied rather than counted on ([`COPY_BELOW`]): a count on a frame costs
//! its handle (32 bytes) and pins the server's read buffer it was cut from, with the framing
//! and padding around it. A body of one-byte frames (chunked HTTP/1.1, or HTTP/2 DATA frames)
//! held about 32 times its bytes that way, 512 MiB per request under a `retry.buffer` of 16 MiB.
//! Copied one after another into buffers of their own, small frames cost their bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body::Frame;

use super::{Body, ClientBody, ClientIn, FaultCell};

/// The most of a streamed upload kept for sending again on a route without `retry` (with one,
/// its `retry.buffer`): what the lean server reads whole with the head, and `retry.buffer`'s
/// default.
pub const REPLAY_CAP: usize = 64 * 1024;

/// A data frame shorter than this is kept as a copy, joined to the small frames around it; a
/// longer one by a count on its bytes (its handle and what it pins are then a few per cent of
/// it at most).
const COPY_BELOW: usize = 1024;
/// The least and the most room of one buffer of copies: each new one holds about as much as
/// was kept before it, so that a body of small frames is copied into few buffers.
const COPIES_LEAST: usize = 256;
const COPIES_MOST: usize = 16 * 1024;

/// The frames of an upload as they came from the client, shared between the body (in hyper's
/// hands while the stream goes) and the try that may send it again.
#[derive(Debug)]
pub(super) struct Kept {
    /// The upload's data, in order; then what is in `copies`.
    data: Vec<Bytes>,
    /// Small frames copied since the last of `data` ([`COPY_BELOW`]), with room for more.
    copies: BytesMut,
    trailers: Option<http::HeaderMap>,
    size: usize,
    cap: usize,
    state: State,
    /// The client's body still to read: read only by the sending whose turn it is.
    pub(super) rest: ClientIn,
    /// Whose turn it is to read `rest`: bumped as [`Replay::again`] hands the upload to a new
    /// sending, whose [`ClientBody`] bears the new number (a refused one's bears the old).
    pub(super) turn: u32,
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
}

// === impl Kept ===

impl Kept {
    /// A record that starts with `prefix` (frames read from the client and not sent yet), then
    /// takes what `rest`, the client's body still to read, gives.
    pub(super) fn new(cap: usize, prefix: &VecDeque<Frame<Bytes>>, rest: ClientIn) -> Kept {
        let mut kept = Kept {
            data: Vec::new(),
            copies: BytesMut::new(),
            trailers: None,
            size: 0,
            cap,
            state: State::Keeping,
            rest,
            turn: 0,
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
            if d.len() < COPY_BELOW {
                self.copy(d);
            } else {
                self.seal();
                self.data.push(d.clone());
            }
        } else if let Some(t) = frame.trailers_ref() {
            self.trailers = Some(t.clone());
        } else {
            self.lose();
        }
    }

    /// Copies `d`, a small frame, after those copied before it: into the room left, else into
    /// a new buffer (never room beyond the cap).
    fn copy(&mut self, d: &[u8]) {
        if self.copies.capacity() - self.copies.len() < d.len() {
            self.seal();
            let before = self.size - d.len();
            let room = before
                .clamp(COPIES_LEAST, COPIES_MOST)
                .min(self.cap - before)
                .max(d.len());
            self.copies = BytesMut::with_capacity(room);
        }
        self.copies.extend_from_slice(d);
    }

    /// Puts what was copied since the last of `data` at its end (a frame that comes next goes
    /// after it); the room left stays for the next copies.
    fn seal(&mut self) {
        if !self.copies.is_empty() {
            self.data.push(self.copies.split().freeze());
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
        self.copies = BytesMut::new();
        self.trailers = None;
    }

    /// Whether frames are still being taken.
    pub(super) fn keeping(&self) -> bool {
        self.state == State::Keeping
    }

    /// Whether the upload cannot be sent again.
    pub(super) fn lost(&self) -> bool {
        self.state == State::Lost
    }
}

// === impl Replay ===

impl Replay {
    pub(super) fn new(kept: Arc<parking_lot::Mutex<Kept>>, fault: Arc<FaultCell>) -> Replay {
        Replay { kept, fault }
    }

    /// The try was answered, so the upload will not go again: what was kept is let go now (the
    /// rest of the upload then streams without the record), not held to the upload's end.
    pub fn release(&self) {
        let mut kept = self.kept.lock();
        if !kept.lost() {
            kept.lose();
        }
    }

    /// The upload again, after a refusal, unless it was let go (over the cap, broken; none of
    /// its bytes copied). Read to its end: one chunk (with its trailers) as an in-memory body;
    /// more as a client body that has nothing left to read. Still coming: a client body that
    /// sends what was kept, then reads on where the refused sending stopped, which reads no
    /// more. Either keeps the same record, so a refusal of this sending can send it again too.
    pub fn again(&self) -> Option<Body> {
        let mut kept = self.kept.lock();
        kept.seal();
        match kept.state {
            State::Lost => return None,
            State::Whole if kept.data.len() <= 1 => {
                let data = kept.data.first().cloned().unwrap_or_default();
                return Some(Body::with_trailers(data, kept.trailers.clone()));
            }
            State::Whole | State::Keeping => {}
        }
        kept.turn = kept.turn.wrapping_add(1);
        let mut prefix: VecDeque<Frame<Bytes>> =
            kept.data.iter().cloned().map(Frame::data).collect();
        if let Some(t) = &kept.trailers {
            prefix.push_back(Frame::trailers(t.clone()));
        }
        Some(Body::Client(ClientBody {
            prefix,
            rest: ClientIn::Empty,
            timer: None,
            fault: self.fault.clone(),
            replay_cap: u32::try_from(kept.cap).unwrap_or(u32::MAX),
            kept: Some(self.kept.clone()),
            turn: kept.turn,
            gathers: false,
            small_sent: false,
            gathered: None,
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
        let mut b = ClientBody::new(ClientIn::Empty, fault);
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
        let mut kept = Kept::new(5, &VecDeque::new(), ClientIn::Empty);
        kept.take(&Frame::data(Bytes::from_static(b"abc")));
        kept.take(&Frame::data(Bytes::from_static(b"def")));
        kept.end();
        assert_eq!((kept.state, kept.data.len()), (State::Lost, 0), "let go");

        let mut none = body(&["abc"], 0);
        assert!(none.keep().is_none(), "no cap");
    }

    /// A refusal that comes while the client is still sending hands the upload on: the next
    /// sending sends what was kept, then reads on where the refused one stopped, and the
    /// refused one reads nothing more. Sent again after that, it goes whole.
    #[tokio::test]
    async fn a_body_still_coming_goes_on_with_the_next_sending() {
        use http_body::Body as _;
        let fault = Arc::new(FaultCell::default());
        fault
            .received
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let rest = ClientIn::Whole(Some(Bytes::from_static(b"defg")));
        let mut refused = ClientBody::new(rest, fault).replayable_up_to(16);
        refused.unread(Frame::data(Bytes::from_static(b"abc")));
        let replay = refused.keep().expect("kept");
        let first = refused.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        assert!(!refused.is_end_stream());

        let next = replay.again().expect("still coming: it goes on");
        assert!(
            refused.frame().await.expect("an error").is_err(),
            "the refused sending reads no more"
        );
        let sent = next.collect().await.expect("sent").to_bytes();
        assert_eq!(sent, "abcdefg");
        let again = replay.again().expect("whole now");
        assert_eq!(again.collect().await.expect("again").to_bytes(), "abcdefg");
    }

    /// A body of one-byte frames, each cut from the server's read buffer among the framing
    /// around it (`1\r\nx\r\n`, a chunked upload), is kept as copies in a few buffers of its
    /// own: its bytes, not a handle per frame (32 bytes) and the read buffers they pin, which
    /// held about 32 times the cap. Large frames between small ones are counted on, not
    /// copied, and the upload goes again in order.
    #[tokio::test]
    async fn small_frames_are_kept_as_copies_within_the_cap() {
        const N: usize = REPLAY_CAP;
        let wire = Bytes::from(b"1\r\nx\r\n".repeat(N));
        let mut kept = Kept::new(REPLAY_CAP, &VecDeque::new(), ClientIn::Empty);
        for i in 0..N {
            kept.take(&Frame::data(wire.slice(i * 6 + 3..i * 6 + 4)));
        }
        kept.end();
        let within = wire.as_ptr_range();
        let pins = kept.data.iter().filter(|d| within.contains(&d.as_ptr()));
        assert_eq!(
            pins.count(),
            0,
            "no frame is kept by a count on the read buffer"
        );
        assert!(kept.data.len() <= 16, "{} handles", kept.data.len());
        let room: usize = kept.data.iter().map(Bytes::len).sum::<usize>() + kept.copies.capacity();
        assert!(room <= REPLAY_CAP + 1024, "{room} bytes held");

        let big = Bytes::from(vec![b'B'; COPY_BELOW]);
        let small = |s: &'static str| Bytes::from_static(s.as_bytes());
        let parts = [
            small("a"),
            big.clone(),
            small("cd"),
            small("e"),
            big.clone(),
            small("f"),
        ];
        let mut kept = Kept::new(4 * COPY_BELOW, &VecDeque::new(), ClientIn::Empty);
        for p in &parts {
            kept.take(&Frame::data(p.clone()));
        }
        kept.end();
        kept.seal();
        let shared = kept.data.iter().filter(|d| d.as_ptr() == big.as_ptr());
        assert_eq!(shared.count(), 2, "a large frame is counted on, not copied");
        let replay = Replay::new(
            Arc::new(parking_lot::Mutex::new(kept)),
            Arc::new(FaultCell::default()),
        );
        let again = replay
            .again()
            .expect("whole")
            .collect()
            .await
            .expect("again");
        assert_eq!(again.to_bytes(), parts.concat(), "in order");
    }

    /// An answered try lets its record go: what was kept is freed at once, the rest of the
    /// upload still streams whole, and nothing goes again.
    #[tokio::test]
    async fn an_answered_try_lets_what_it_kept_go_and_still_sends_the_rest() {
        let fault = Arc::new(FaultCell::default());
        fault
            .received
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let rest = ClientIn::Whole(Some(Bytes::from_static(b"defg")));
        let mut sending = ClientBody::new(rest, fault).replayable_up_to(16);
        sending.unread(Frame::data(Bytes::from_static(b"abc")));
        let replay = sending.keep().expect("kept");
        let first = sending.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        assert_eq!(replay.kept.lock().size, 3, "the first frame is kept");

        replay.release();
        let now = {
            let kept = replay.kept.lock();
            (kept.state, kept.data.len())
        };
        assert_eq!(now, (State::Lost, 0), "let go");
        let rest = sending.collect().await.expect("the rest").to_bytes();
        assert_eq!(rest, "defg", "the upload goes on without the record");
        assert!(replay.again().is_none(), "answered: never sent again");
    }
}
