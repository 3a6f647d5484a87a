//! Raw TCP for what a well-behaved client library will not send: malformed heads, oversized
//! heads, absolute-form request targets, and clients that stall.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawResp {
    /// Every byte read.
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) before the wait ran out.
    pub closed: bool,
    /// Time from the end of the write to the close (or to the end of the wait).
    pub elapsed: Duration,
}

/// Connects to `addr`, writes `request` while reading, and reads until the peer closes or
/// `wait` runs out. Reading goes on during the write so that an answer sent before the peer
/// resets an oversized request is still seen.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> RawResp {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} must succeed: {e}"));
    let (rd, mut wr) = tcp.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        // The peer may close before taking everything; that is for the test to judge.
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr // kept open: dropping it would half-close and look like a finished client
    });
    read_until_closed(rd, writer, wait).await
}

/// Connects to `addr`, writes `head`, then `body` one byte every `gap` (a slow upload, each
/// byte well inside `body_idle_timeout`), while reading; reads until the peer closes or `wait`
/// (counted from the connect) runs out. `elapsed` is counted from the connect too.
pub async fn trickle(
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
    gap: Duration,
    wait: Duration,
) -> RawResp {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} must succeed: {e}"));
    let (rd, mut wr) = tcp.into_split();
    let (head, body) = (head.to_vec(), body.to_vec());
    let writer = tokio::spawn(async move {
        // The peer may answer and close before taking everything; that is for the test to judge.
        let _ = wr.write_all(&head).await;
        for b in body {
            tokio::time::sleep(gap).await;
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
        }
        wr // kept open: dropping it would half-close and look like a finished client
    });
    read_until_closed(rd, writer, wait).await
}

/// Reads `rd` until the peer closes or `wait` (from now) runs out, then stops `writer`.
async fn read_until_closed<W>(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::task::JoinHandle<W>,
    wait: Duration,
) -> RawResp {
    let start = tokio::time::Instant::now();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(start + wait, rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let elapsed = start.elapsed();
    writer.abort();
    RawResp {
        bytes,
        closed,
        elapsed,
    }
}

// === impl RawResp ===

impl RawResp {
    /// Status code of the first answer, if one arrived.
    pub fn status(&self) -> Option<u16> {
        let text = std::str::from_utf8(&self.bytes).ok()?;
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// Value of header `name` in the first answer's head.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let head = text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Everything read, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// What [`drain_slowly`] kept of a long answer.
#[derive(Debug)]
pub struct Drained {
    /// Its first bytes (the head's start), as text.
    pub start: String,
    /// How many bytes came.
    pub count: usize,
    /// Its last 16 bytes.
    pub end: Vec<u8>,
    /// Time from the call to the end.
    pub took: Duration,
}

/// Reads `tcp` to its end, a read (of up to 64 KiB) a millisecond: slower than a peer that
/// writes as fast as it can, so that what rampart reads from such a peer never runs dry.
/// Keeps only the first bytes and the last; `None` if it has not ended within `wait`.
pub async fn drain_slowly(tcp: &mut TcpStream, wait: Duration) -> Option<Drained> {
    let t0 = tokio::time::Instant::now();
    let (mut start, mut count, mut end) = (Vec::new(), 0, Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            count += n;
            if start.len() < 64 {
                start.extend_from_slice(&buf[..n.min(64)]);
            }
            end.extend_from_slice(&buf[..n]);
            let over = end.len().saturating_sub(16);
            end.drain(..over);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    Some(Drained {
        start: String::from_utf8_lossy(&start).into_owned(),
        count,
        end,
        took: t0.elapsed(),
    })
}
