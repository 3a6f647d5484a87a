//! A raw-capture upstream: records the exact bytes each connection sent and answers every
//! request with one fixed response, then closes.
//!
//! The sample service sees requests through hyper, which normalises what it parses; a test of
//! what rampart puts on the wire (which `host`, which forwarding headers, which framing) needs
//! the bytes themselves.

// A test harness, off rampart's request path: a plain mutex around the captured bytes is fine.
#![allow(clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the upstream waits for the rest of a request before giving up on it.
const READ_PATIENCE: Duration = Duration::from_secs(15);

/// A running capture upstream; stops accepting when dropped.
#[derive(Debug)]
pub struct Capture {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl Capture ===

impl Capture {
    /// Listens on a free loopback port; each whole request is answered with `response`.
    pub async fn start(response: &'static [u8]) -> Capture {
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 must work");
        let addr = tcp.local_addr().expect("a bound socket has an address");
        let got = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let got = got.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = tcp.accept().await {
                    tokio::spawn(serve(stream, got.clone(), response));
                }
            })
        };
        Capture { addr, got, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests (heads and bodies) received whole so far, as text.
    pub fn requests(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// The requests received whole so far, as bytes.
    pub fn requests_raw(&self) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many whole requests arrived.
    pub fn hits(&self) -> usize {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The value of header `name` in request `i` (case-insensitive name), every occurrence.
    pub fn header(&self, i: usize, name: &str) -> Vec<String> {
        let req = self.requests().get(i).cloned().unwrap_or_default();
        let head = req.split("\r\n\r\n").next().unwrap_or_default().to_owned();
        head.lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads requests off one connection and answers each; records only whole requests.
async fn serve(mut stream: TcpStream, got: Arc<Mutex<Vec<Vec<u8>>>>, response: &'static [u8]) {
    let mut buf = Vec::new();
    loop {
        let Some(len) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let req: Vec<u8> = buf.drain(..len).collect();
        got.lock().unwrap_or_else(PoisonError::into_inner).push(req);
        if stream.write_all(response).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        let text = String::from_utf8_lossy(response).to_ascii_lowercase();
        if text.contains("connection: close") {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads until `buf` holds one whole request; returns its length.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(len) = whole_request(buf) {
            return Some(len);
        }
        match tokio::time::timeout(READ_PATIENCE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length of the first whole request in `buf`, if it is all there. Content-length and
/// chunked bodies (trailers included) are understood; nothing else is needed here.
pub fn whole_request(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        return chunked_end(buf, head_end);
    }
    let len: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// Where a chunked body starting at `at` ends (after its trailers), if it has.
fn chunked_end(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// Decodes a chunked body (for checking what a client received); `None` if malformed.
pub fn dechunk(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + body[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(at..at + size)?);
        at += size + 2;
    }
}

#[test]
fn whole_request_understands_lengths_and_chunks() {
    assert_eq!(whole_request(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
    assert_eq!(
        whole_request(b"PUT / HTTP/1.1\r\ncontent-length: 2\r\n\r\nab"),
        Some(39)
    );
    assert_eq!(
        whole_request(b"PUT / HTTP/1.1\r\ncontent-length: 2\r\n\r\na"),
        None
    );
    let c = b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx: y\r\n\r\n";
    assert_eq!(whole_request(c), Some(c.len()));
    assert_eq!(whole_request(&c[..c.len() - 2]), None);
    assert_eq!(
        dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
        Some(&b"hello world"[..])
    );
}
