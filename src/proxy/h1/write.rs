//! Writing one answer: its head, framed as hyper's HTTP/1 server frames it, then its body.
//!
//! The framing rules are hyper's (1.x, `proto/h1/role.rs` and `conn.rs`), so a client cannot
//! tell which server answered: the length header when the body's size is known (a
//! `content-length` already in the answer is kept as sent), `chunked` otherwise (or a
//! close-delimited body for HTTP/1.0), no body for HEAD, 1xx, 204 and 304, a `date` when the
//! answer has none, `connection: close` on the last answer of an HTTP/1.1 connection and
//! `connection: keep-alive` on a kept-alive HTTP/1.0 one. Bodies are streamed frame by frame,
//! the head riding in the same write as the first frame when that frame is ready.
//!
//! One difference from hyper, by design: an upstream's plain answer (see
//! `pool::h1::RawLines`) has its header lines written as the upstream sent them, names in
//! its spelling (as nginx passes them on), where hyper writes every name in lower case.
//! Header names are case-insensitive (RFC 9110 §5.1). Another: an HTTP/1.0 client that asked to
//! keep its connection is told `connection: close` when its answer's body is delimited by
//! the close (hyper says `keep-alive`, then closes; `listener::serve` makes hyper say `close`).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::parse::has_token;
use crate::proxy::body::Body;
use crate::proxy::pool::h1::RawLines;
use crate::proxy::wire::{chunk_line, itoa};

/// Data chunks up to this size are copied behind the head (one buffer, one write); larger
/// ones are written beside it with a vectored write.
const COPY_MAX: usize = 16 * 1024;

/// What the request asked of its answer's framing.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    /// The request was HEAD: the answer has no body.
    pub head: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// The connection may live after this answer (the client's wish, and not draining).
    pub keep_alive: bool,
}

/// The body's size as the head must announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Len {
    /// The body is over already.
    Empty,
    /// Exactly this many bytes.
    Known(u64),
    /// Unknown until it ends.
    Unknown,
}

/// How the body follows the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body at all).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Bytes until the connection closes (HTTP/1.0 with an unknown length).
    CloseDelimited,
}

/// The encoded head's consequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// How to write the body.
    pub framing: Framing,
    /// Close the connection once the answer is out.
    pub last: bool,
}

/// An answer hyper would refuse to send (conflicting length headers): the connection is
/// closed without it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the answer's length headers conflict")]
pub struct Unsendable;

/// A header line being written whose later values join it after a comma.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    None,
    Plain,
    Connection,
    /// `transfer-encoding`, and whether `chunked` must be added at its end.
    Coding(bool),
}

/// Appends the head of the answer `rsp` (its body is not read) to `dst`, and says how its body
/// must follow. `raw`: an upstream's header lines that are not in the map, written as they came
/// before the map's (their `content-length`, if any, is the body's `Len::Known`; see
/// `pool::h1::RawLines`).
pub fn encode_head<B>(
    dst: &mut Vec<u8>,
    rsp: &Response<B>,
    raw: Option<&RawLines>,
    ask: Ask,
    body: Len,
    date: &[u8],
) -> Result<Plan, Unsendable> {
    let status = rsp.status();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        // hyper cannot send a 1xx as a final answer: it sends a bare 500 and closes.
        dst.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n");
        end_head(dst, false, date);
        return Ok(Plan {
            framing: Framing::Length(0),
            last: true,
        });
    }
    let mut keep_alive = ask.keep_alive;
    // The `connection` value hyper adds: `keep-alive` to an HTTP/1.0 client it keeps, `close`
    // to an HTTP/1.1 client it leaves.
    let mut add: Option<&'static [u8]> = None;
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_chunk = !ask.head && !no_length;
    let http10_out = if ask.http10 {
        // An HTTP/1.0 client's answer of no length is delimited by the connection's close
        // (below): it says so, `connection: close`, rather than `keep-alive` for a connection
        // that then closes, losing what the client sent behind its request.
        let by_close = can_chunk
            && body == Len::Unknown
            && !rsp.headers().contains_key(header::CONTENT_LENGTH)
            && !raw.is_some_and(|r| r.length);
        if by_close && keep_alive {
            keep_alive = false;
            add = Some(b"close");
        } else if !any_token(rsp.headers(), b"keep-alive") {
            match rsp.version() {
                Version::HTTP_10 => keep_alive = false,
                Version::HTTP_11 if keep_alive => add = Some(b"keep-alive"),
                _ => {}
            }
        }
        true
    } else {
        if !keep_alive && !any_token(rsp.headers(), b"close") {
            add = Some(b"close");
        }
        rsp.version() == Version::HTTP_10
    };
    let mut last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS;
    let reason = rsp.extensions().get::<hyper::ext::ReasonPhrase>();
    if !http10_out && status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10_out {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(r) => dst.extend_from_slice(r.as_bytes()),
            None => {
                // A code without a canonical phrase (599, 999) gets an empty one (RFC 9112
                // §4 allows it), never text that was not sent.
                let canonical = status.canonical_reason().unwrap_or("");
                dst.extend_from_slice(canonical.as_bytes());
            }
        }
        dst.extend_from_slice(b"\r\n");
    }

    let mut framing = Framing::Length(0);
    let (mut wrote_len, mut wrote_date, mut saw_connection) = (false, false, false);
    let mut length_seen: Option<u64> = None;
    let mut line = Line::None;
    let mut prev: Option<&HeaderName> = None;
    if let Some(r) = raw {
        r.write(dst);
        wrote_date = r.date;
        if let (true, Len::Known(n)) = (r.length, body) {
            framing = Framing::Length(n);
            wrote_len = true;
        }
    }
    for (name, value) in rsp.headers().iter() {
        // Values of one name come together, under the same name reference.
        let same = prev.is_some_and(|p| std::ptr::eq(p, name));
        if !same {
            close_line(dst, line, add);
            line = Line::None;
            prev = Some(name);
        }
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && line == Line::None {
                    return Err(Unsendable);
                }
                match body {
                    Len::Known(n) => {
                        // The body's own size wins; the header is written as sent, once.
                        if line == Line::None {
                            framing = Framing::Length(n);
                            open_line(dst, b"content-length: ", value);
                            wrote_len = true;
                            line = Line::Plain;
                        }
                        continue;
                    }
                    Len::Unknown => {
                        let n = digits(value.as_bytes()).ok_or(Unsendable)?;
                        match length_seen {
                            Some(seen) if seen != n => return Err(Unsendable),
                            Some(_) => {}
                            None => {
                                framing = Framing::Length(n);
                                open_line(dst, b"content-length: ", value);
                                wrote_len = true;
                                line = Line::Plain;
                                length_seen = Some(n);
                            }
                        }
                        continue;
                    }
                    Len::Empty if !ask.head => continue,
                    Len::Empty => wrote_len = true,
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && line == Line::None {
                    return Err(Unsendable);
                }
                if http10_out || !can_chunk {
                    continue;
                }
                wrote_len = true;
                let chunked_last = chunked_last(value.as_bytes());
                if line == Line::None {
                    framing = Framing::Chunked;
                    open_line(dst, b"transfer-encoding: ", value);
                } else {
                    dst.extend_from_slice(b", ");
                    dst.extend_from_slice(value.as_bytes());
                }
                line = Line::Coding(!chunked_last);
                continue;
            }
            header::CONNECTION => {
                saw_connection = true;
                last |= has_token(value.as_bytes(), b"close");
                if line == Line::None {
                    open_line(dst, b"connection: ", value);
                } else {
                    dst.extend_from_slice(b", ");
                    dst.extend_from_slice(value.as_bytes());
                }
                line = Line::Connection;
                continue;
            }
            header::TRAILER => {
                // No trailers are ever sent (the lean server never serves `TE: trailers`),
                // but the announcement is kept as hyper keeps it.
                if http10_out || !can_chunk {
                    continue;
                }
                if line == Line::None {
                    open_line(dst, b"trailer: ", value);
                } else {
                    dst.extend_from_slice(b", ");
                    dst.extend_from_slice(value.as_bytes());
                }
                line = Line::Plain;
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    close_line(dst, line, add);
    if let Some(v) = add.filter(|_| !saw_connection) {
        dst.extend_from_slice(b"connection: ");
        dst.extend_from_slice(v);
        dst.extend_from_slice(b"\r\n");
    }

    if !wrote_len {
        framing = match body {
            Len::Unknown if http10_out || !can_chunk => Framing::CloseDelimited,
            Len::Unknown => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            Len::Empty | Len::Known(0) => {
                if !no_length && !ask.head {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Len::Known(_) if no_length => Framing::Length(0),
            Len::Known(n) => {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(itoa(n, &mut [0; 20]));
                dst.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
        };
    }
    if !can_chunk {
        framing = Framing::Length(0);
    }
    end_head(dst, wrote_date, date);
    if framing == Framing::CloseDelimited {
        last = true;
    }
    Ok(Plan { framing, last })
}

fn open_line(dst: &mut Vec<u8>, name_colon: &[u8], value: &HeaderValue) {
    dst.extend_from_slice(name_colon);
    dst.extend_from_slice(value.as_bytes());
}

fn close_line(dst: &mut Vec<u8>, line: Line, add: Option<&[u8]>) {
    match line {
        Line::None => {}
        Line::Plain | Line::Coding(false) => dst.extend_from_slice(b"\r\n"),
        Line::Coding(true) => dst.extend_from_slice(b", chunked\r\n"),
        Line::Connection => {
            if let Some(v) = add {
                dst.extend_from_slice(b", ");
                dst.extend_from_slice(v);
            }
            dst.extend_from_slice(b"\r\n");
        }
    }
}

fn end_head(dst: &mut Vec<u8>, wrote_date: bool, date: &[u8]) {
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        dst.extend_from_slice(date);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// Whether any `connection` value of `headers` holds `token`.
fn any_token(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), token))
}

/// Whether the last coding of a `transfer-encoding` value is `chunked` (as hyper reads it: a
/// value that is not visible ASCII names none).
pub(super) fn chunked_last(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b' '..0x7f).contains(&b) || b == b'\t')
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A length of decimal digits only (no sign, no list), as hyper reads one.
pub(super) fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |n, &d| match d {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(d - b'0')),
        _ => None,
    })
}

/// The `date` value for now, formatted once a second per thread. The second comes from the
/// coarse wall clock (a few milliseconds behind at most; a tenth of the cost of a precise
/// reading, and a `date` header names whole seconds).
pub fn date() -> [u8; 29] {
    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let secs = crate::clock::coarse::unix_secs();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                c.1.copy_from_slice(text.as_bytes());
            }
            c.0 = secs;
        }
        c.1
    })
}

// === writing ===

/// Writes `rsp` (to a request described by `ask`) on `io`, head then body, using `out` as the
/// write buffer. Says whether the connection may serve another request. (Not an `async fn`,
/// so the answer is not copied into a second place in the future: see `stack::handle`.)
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
pub fn answer<'a, I>(
    io: &'a mut I,
    out: &'a mut Vec<u8>,
    mut rsp: Response<Body>,
    ask: Ask,
) -> impl Future<Output = (bool, Option<HeaderMap>)> + 'a
where
    I: AsyncWrite + Unpin,
{
    async move {
        // Its body, taken out (what it holds, the request's guards among them, goes when this
        // ends); the rest is read where it lies, not moved out of it.
        let mut body = std::mem::take(rsp.body_mut());
        let len = if body.is_end_stream() {
            Len::Empty
        } else {
            body.size_hint().exact().map_or(Len::Unknown, Len::Known)
        };
        // An upstream's lines are written as they came when the body is framed as they say (a
        // pool's answer always is); otherwise they join the map and are written from it.
        let fits = body.raw_lines().map(|r| match len {
            Len::Known(n) => n > 0 && r.length,
            Len::Unknown => !r.length,
            Len::Empty => false,
        });
        if fits == Some(false) {
            body.fill_headers(rsp.headers_mut());
        }
        out.clear();
        let plan = match encode_head(out, &rsp, body.raw_lines(), ask, len, &date()) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "answer not sent");
                return (false, None);
            }
        };
        // The answer's map, emptied, holds the next request's headers (unless it grew large).
        let spare = crate::proxy::spare::emptied(std::mem::take(rsp.headers_mut()));
        let sent = match plan.framing {
            Framing::Length(0) => {
                // No body to send: drop it (an upstream's connection is dropped with it unless
                // it was over already, as hyper does).
                drop(body);
                write_parts(io, &[out]).await.map(|()| true)
            }
            framing => match body.deadline() {
                // The request's deadline bounds the whole answer, the time its client takes to
                // read it included: a client that reads slowly (or not at all) is cut there, as
                // an upstream that stalls is when the body is polled (and over HTTP/2,
                // `stall.rs`). The timer is armed only if the body is still being written when
                // first polled.
                Some(at) => {
                    match tokio::time::timeout_at(at, stream(io, out, &mut body, framing)).await {
                        Ok(sent) => sent,
                        Err(_) => {
                            body.count_if_late();
                            Ok(false)
                        }
                    }
                }
                None => stream(io, out, &mut body, framing).await,
            },
        };
        let sent = match sent {
            Ok(done) => done,
            Err(e) => {
                tracing::debug!(error = %e, "answer write failed");
                false
            }
        };
        let flushed = io.flush().await.is_ok();
        (sent && flushed && !plan.last, spare)
    }
}

/// Streams `body` after the head in `out`; says whether the message ended well (the
/// connection may be kept).
async fn stream<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut Body,
    framing: Framing,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let chunked = framing == Framing::Chunked;
    loop {
        // Ask for a frame without waiting; if none is ready, what is buffered goes first.
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    write_parts(io, &[out]).await?;
                    out.clear();
                    io.flush().await?;
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => {
                // The body ended: complete the message if its framing allows.
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                write_parts(io, &[out]).await?;
                return Ok(match framing {
                    Framing::Length(_) => left == 0,
                    Framing::Chunked => true,
                    Framing::CloseDelimited => false,
                });
            }
            Some(Err(e)) => {
                // A broken body breaks the connection, as in hyper: no end of message.
                tracing::debug!(error = %e, "answer body failed");
                if !out.is_empty() {
                    write_parts(io, &[out]).await?;
                }
                return Ok(false);
            }
            Some(Ok(f)) => f,
        };
        let Ok(mut data) = frame.into_data() else {
            // Trailers: never sent here (see `TRAILER` above); the body is over.
            continue;
        };
        let end = body.is_end_stream();
        if data.is_empty() && !end {
            continue;
        }
        if let Framing::Length(_) = framing {
            if data.len() as u64 > left {
                data.truncate(left as usize);
            }
            left -= data.len() as u64;
        }
        let done = end || (matches!(framing, Framing::Length(_)) && left == 0);
        if chunked && !data.is_empty() {
            chunk_line(out, data.len());
        }
        let tail: &[u8] = match (chunked, done) {
            (true, true) if data.is_empty() => b"0\r\n\r\n",
            (true, true) => b"\r\n0\r\n\r\n",
            (true, false) => b"\r\n",
            (false, _) => b"",
        };
        if data.len() <= COPY_MAX {
            out.extend_from_slice(&data);
            out.extend_from_slice(tail);
            write_parts(io, &[out]).await?;
        } else {
            write_parts(io, &[out, &data, tail]).await?;
        }
        out.clear();
        if done {
            return Ok(match framing {
                Framing::Length(_) => left == 0,
                Framing::Chunked => true,
                Framing::CloseDelimited => false,
            });
        }
        if !body.is_end_stream() {
            // More to come: what was written must reach the client now (TLS buffers).
            io.flush().await?;
        }
    }
}

/// Writes every byte of `parts`, in order, with vectored writes.
async fn write_parts<I>(io: &mut I, parts: &[&[u8]]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if off == parts[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let n = if idx + 1 == parts.len() || !io.is_write_vectored() {
            io.write(&parts[idx][off..]).await?
        } else {
            let mut slices = [IoSlice::new(&[]); 4];
            slices[0] = IoSlice::new(&parts[idx][off..]);
            let mut k = 1;
            for p in &parts[idx + 1..] {
                if k == slices.len() {
                    break;
                }
                slices[k] = IoSlice::new(p);
                k += 1;
            }
            io.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && idx < parts.len() {
            let rest = parts[idx].len() - off;
            if n < rest {
                off += n;
                n = 0;
            } else {
                n -= rest;
                idx += 1;
                off = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
