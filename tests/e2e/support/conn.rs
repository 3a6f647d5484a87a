//! A raw client connection that sends bytes and reads answers one by one, framed by their
//! heads (content-length, chunked, or to the close), for tests of what goes over the wire.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw exchange waits for its answers.
const WAIT: Duration = Duration::from_secs(5);

/// One answer read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line.
    pub line: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Closes `tcp` with a reset rather than an end of stream (linger 0). Set through socket2:
/// tokio's setter is deprecated because it can block on drop, which it cannot with no time to
/// linger.
pub fn reset(tcp: TcpStream) {
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(tcp);
}

/// A client connection reading answers one by one, framed by their heads: over TCP, or over
/// a TLS stream.
pub struct Conn<S = TcpStream> {
    /// The stream, for what the helpers do not cover (a half-close, say).
    pub io: S,
    buf: Vec<u8>,
}

impl Conn {
    /// A new client connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn::over(TcpStream::connect(addr).await.expect("connect"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A client connection over `io`, connected (and with TLS, handshaken) already.
    pub fn over(io: S) -> Conn<S> {
        Conn {
            io,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        // A TLS stream sends what it has taken only when flushed.
        self.io.flush().await.expect("flush");
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.io.read(&mut chunk))
            .await
            .expect("an answer must come within the wait")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer; `head_req` if it answers a HEAD (no body whatever it announces).
    pub async fn answer(&mut self, head_req: bool) -> Answer {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            assert!(self.fill().await, "closed inside a head: {:?}", self.text());
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default().to_owned();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut a = Answer {
            status,
            line,
            headers,
            body: Vec::new(),
        };
        if head_req || status == 204 || status == 304 {
            return a;
        }
        if a.header("transfer-encoding") == Some("chunked") {
            a.body = self.chunked().await;
        } else if let Some(len) = a.header("content-length") {
            let len: usize = len.parse().expect("a length");
            while self.buf.len() < len {
                assert!(self.fill().await, "closed inside a body");
            }
            a.body = self.buf.drain(..len).collect();
        } else {
            while self.fill().await {}
            a.body = std::mem::take(&mut self.buf);
        }
        a
    }

    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                assert!(self.fill().await, "closed inside a chunk size");
            };
            let size = std::str::from_utf8(&self.buf[..line_end]).expect("ascii");
            let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                assert!(self.fill().await, "closed inside a chunk");
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(&self.buf[..2], b"\r\n", "a chunk ends with CRLF");
            self.buf.drain(..2);
            if size == 0 {
                return body;
            }
        }
    }

    /// Reads to the end of the stream: what is not yet read as an answer, then all that comes.
    /// `Err` says how the stream did not end in order within the wait (a reset, a TLS stream
    /// cut without its `close_notify`, no end in time), beside the bytes read. Unlike
    /// [`closes`](Self::closes), an error is not an end here.
    pub async fn read_to_end(&mut self) -> (Vec<u8>, Result<(), String>) {
        let mut got = std::mem::take(&mut self.buf);
        let end = match tokio::time::timeout(WAIT, self.io.read_to_end(&mut got)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(_) => Err(format!("no end within {WAIT:?}")),
        };
        (got, end)
    }

    /// Whether the server closes the connection (nothing more comes) within the wait.
    pub async fn closes(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(WAIT, self.io.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
