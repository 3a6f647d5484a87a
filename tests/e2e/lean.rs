//! The lean HTTP/1.1 server (`src/proxy/h1.rs`, issue 22) through real sockets: what it
//! serves itself (bodiless keep-alive requests, pipelined or not, HEAD, HTTP/1.0, close) and
//! what it hands to hyper mid-connection with the bytes it read (a request with a body after
//! bodiless ones; HTTP/2 prior knowledge), in front of the sample service.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{http, one_route, sample, Proxy};

/// How long a raw exchange waits for its answers.
const WAIT: Duration = Duration::from_secs(5);

/// One answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The status line.
    line: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection reading answers one by one, framed by their heads.
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Conn {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("an answer must come within the wait")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer; `head_req` if it answers a HEAD (no body whatever it announces).
    async fn answer(&mut self, head_req: bool) -> Answer {
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

    /// Whether the server closes the connection (nothing more comes) within the wait.
    async fn closes(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

async fn setup() -> (rampart::sample::Sample, Proxy, SocketAddr) {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    (app, proxy, addr)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.local\r\n\r\n")
}

#[tokio::test]
async fn pipelined_gets_are_answered_in_order() {
    let (app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    let all = format!(
        "{}{}{}",
        get("/headers?n=1"),
        get("/status/404"),
        "GET /ok HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n"
    );
    c.send(all.as_bytes()).await;
    let first = c.answer(false).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.text().contains("/headers?n=1"), "{}", first.text());
    let second = c.answer(false).await;
    assert_eq!(second.status, 404, "{second:?}");
    let third = c.answer(false).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.text(), "ok\n");
    assert_eq!(third.header("connection"), Some("close"));
    assert!(c.closes().await, "closed after the answer to `close`");
    assert_eq!(app.hits_for("/ok"), 1);
}

#[tokio::test]
async fn one_connection_serves_many_requests() {
    let (app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    for i in 0..200 {
        c.send(get(&format!("/headers?i={i}")).as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        assert!(a.text().contains(&format!("i={i}")), "{}", a.text());
        assert!(a.header("date").is_some(), "a date on every answer");
        assert!(a.header("x-request-id").is_some());
        assert_eq!(a.header("connection"), None, "keep-alive is the default");
    }
    assert_eq!(app.hits_for("/headers"), 200);
}

#[tokio::test]
async fn a_body_after_bodiless_requests_goes_to_hyper_with_the_bytes_read() {
    let (app, _proxy, addr) = setup().await;
    // All at once: the lean server reads the POST's head, its body and the GET after it
    // before it hands the connection over.
    let mut c = Conn::open(addr).await;
    let post = "POST /echo HTTP/1.1\r\nHost: app.local\r\nContent-Length: 5\r\n\r\nhello";
    let all = format!("{}{post}{}", get("/ok"), get("/headers?after=post"));
    c.send(all.as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "ok\n"));
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello"), "{a:?}");
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert!(a.text().contains("after=post"), "{}", a.text());

    // One by one, the body arriving after its head.
    let mut c = Conn::open(addr).await;
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    c.send(b"POST /echo HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"3\r\nabc\r\n0\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.text().as_str()), (200, "abc"), "{a:?}");
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(
        c.answer(false).await.status,
        200,
        "hyper keeps the connection"
    );
    assert_eq!(app.hits_for("/echo"), 2);
}

#[tokio::test]
async fn head_announces_the_length_and_sends_no_body() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    let both = format!(
        "HEAD /bytes/1000 HTTP/1.1\r\nHost: app.local\r\n\r\n{}",
        get("/ok")
    );
    c.send(both.as_bytes()).await;
    let head = c.answer(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"), "{head:?}");
    let next = c.answer(false).await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "ok\n"),
        "no body bytes between the HEAD answer and the next: {next:?}"
    );
}

#[tokio::test]
async fn http10_closes_unless_kept_alive() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(b"GET /ok HTTP/1.0\r\nHost: app.local\r\n\r\n").await;
    let a = c.answer(false).await;
    assert!(a.line.starts_with("HTTP/1.0 200"), "{a:?}");
    assert_eq!(a.text(), "ok\n");
    assert!(c.closes().await, "HTTP/1.0 closes by default");

    let mut c = Conn::open(addr).await;
    for _ in 0..2 {
        c.send(b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let a = c.answer(false).await;
        assert!(a.line.starts_with("HTTP/1.0 200"), "{a:?}");
        assert_eq!(a.header("connection"), Some("keep-alive"));
    }
    // An unknown length to HTTP/1.0: the body runs to the close.
    c.send(b"GET /drip?chunks=2&ms=10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.header("transfer-encoding"), None, "{a:?}");
    assert_eq!(a.text(), "chunk 0\nchunk 1\n");
}

#[tokio::test]
async fn a_chunked_upstream_answer_is_chunked_to_the_client() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    c.send(get("/drip?chunks=3&ms=30").as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert_eq!(a.text(), "chunk 0\nchunk 1\nchunk 2\n");
    c.send(get("/bytes/200000").as_bytes()).await;
    let a = c.answer(false).await;
    assert_eq!(a.body.len(), 200_000, "a large body whole");
    c.send(get("/ok").as_bytes()).await;
    assert_eq!(
        c.answer(false).await.text(),
        "ok\n",
        "the connection lives on"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_goes_to_hyper() {
    let (app, _proxy, addr) = setup().await;
    for _ in 0..2 {
        let rsp = http::h2_get(addr, "/ok", &[]).await;
        assert_eq!(rsp.version, ::http::Version::HTTP_2);
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.text(), "ok\n");
    }
    assert_eq!(app.hits_for("/ok"), 2);
}

#[tokio::test]
async fn a_whole_request_then_fin_is_answered_by_the_lean_server() {
    let (_app, _proxy, addr) = setup().await;
    let mut c = Conn::open(addr).await;
    let two = format!("{}{}", get("/ok"), get("/status/201"));
    c.send(two.as_bytes()).await;
    c.tcp.shutdown().await.expect("half-close");
    assert_eq!(c.answer(false).await.status, 200);
    assert_eq!(c.answer(false).await.status, 201);
    assert!(c.closes().await);
}
