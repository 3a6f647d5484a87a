//! HTTP clients for tests: HTTP/1.1 through hyper-util's legacy client, HTTP/2 with prior
//! knowledge (h2c) through hyper's connection API. Every call is bounded in time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::BoxError;

/// Longest any single request may take before the test gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

pub type ReqBody = UnsyncBoxBody<Bytes, Infallible>;
pub type HttpClient = Client<HttpConnector, ReqBody>;

/// A whole answer.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request body of `len` bytes of [`pattern`], handed over in 64 KiB chunks with no
/// length announced, so it travels chunked and is never whole in memory on the way.
#[derive(Debug)]
pub struct PatternBody {
    sent: usize,
    len: usize,
}

/// The deterministic bytes `PatternBody` sends: byte `i` is `i % 251`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A pooled HTTP/1.1 client (keep-alive), for loops that should reuse connections.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn empty() -> ReqBody {
    UnsyncBoxBody::new(Empty::new())
}

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    UnsyncBoxBody::new(Full::new(bytes.into()))
}

/// A request body whose chunks the test sends through the returned sender as it goes (a
/// client still sending); it ends when the sender is dropped.
pub fn piecemeal() -> (tokio::sync::mpsc::Sender<Bytes>, ReqBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (tx, UnsyncBoxBody::new(Piecemeal(rx)))
}

/// Sends one HTTP/1.1 request with `client` to `addr` and reads the whole answer.
pub async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Result<Resp, BoxError> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body)?;
    let call = async {
        let rsp = client.request(req).await?;
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, BoxError>(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await?
}

/// GET on a fresh connection; an error if there is no answer.
pub async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, BoxError> {
    send(&client(), addr, Method::GET, path, headers, empty()).await
}

/// GET on a fresh connection; panics if there is no answer.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_get(addr, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path} must be answered: {e}"))
}

/// POST of a whole body on a fresh connection; panics if there is no answer.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    send(&client(), addr, Method::POST, path, headers, full(body))
        .await
        .unwrap_or_else(|e| panic!("POST http://{addr}{path} must be answered: {e}"))
}

/// POST of a streamed `len`-byte [`PatternBody`]; panics if there is no answer.
pub async fn post_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    len: usize,
) -> Resp {
    let body = UnsyncBoxBody::new(PatternBody { sent: 0, len });
    send(&client(), addr, Method::POST, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("POST http://{addr}{path} must be answered: {e}"))
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`, driven by a task of its own.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Reads an answer's body to its end, a frame a millisecond (see `raw::drain_slowly`): how
/// it ended (the bytes it had, or the error it broke with); `None` if it has not ended
/// within `wait`.
pub async fn frames_slowly(
    mut body: hyper::body::Incoming,
    wait: Duration,
) -> Option<Result<usize, hyper::Error>> {
    let read = async {
        let mut count = 0;
        while let Some(frame) = body.frame().await {
            count += frame?.data_ref().map_or(0, Bytes::len);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(count)
    };
    tokio::time::timeout(wait, read).await.ok()
}

/// [`h2c`] with a stream receive window of `window` bytes (hyper's default is 2 MiB): the
/// client lets rampart send only that much of an answer ahead of what it has read.
pub async fn h2c_window(
    addr: SocketAddr,
    window: u32,
) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// GET over HTTP/2 with prior knowledge (h2c) on a fresh connection.
pub async fn h2_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let call = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder().uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let rsp = send.send_request(req.body(empty())?).await?;
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, BoxError>(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(BoxError::from)
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("h2c GET http://{addr}{path} must be answered: {e}"))
}

/// An answer to HEAD over h2c, as an HTTP/2 client reads it.
#[derive(Debug)]
pub struct Headed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Whether its HEADERS frame ended the stream.
    pub ended_at_head: bool,
    /// Its body read to the end: the bytes, or the error the client's stream broke with
    /// (h2 refuses any data on an answer to HEAD).
    pub body: Result<Bytes, hyper::Error>,
}

/// HEAD over HTTP/2 with prior knowledge (h2c) on a fresh connection.
pub async fn h2_head(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Headed {
    let call = async {
        let mut send = h2c(addr).await;
        let mut req = Request::head(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let rsp = send.send_request(req.body(empty())?).await?;
        let ended_at_head = rsp.body().is_end_stream();
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes());
        Ok::<_, BoxError>(Headed {
            status: parts.status,
            headers: parts.headers,
            ended_at_head,
            body,
        })
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(BoxError::from)
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("h2c HEAD http://{addr}{path} must be answered: {e}"))
}

// === impl Resp ===

impl Resp {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body must be JSON ({e}): {:?}", self.text()))
    }

    /// Asserts this is an answer rampart made itself: `status`, `x-rampart-reason: reason`
    /// and a JSON body `{"error": reason, "message": "..."}`.
    pub fn assert_rampart(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(self.header("x-rampart-reason"), Some(reason), "{self:?}");
        let body = self.json();
        assert_eq!(body["error"], reason, "body: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message must be a non-empty string: {body}"
        );
    }

    /// The `x-sample-addr` of the sample endpoint that answered.
    pub fn served_by(&self) -> Option<SocketAddr> {
        self.header(rampart::sample::ADDR_HEADER)
            .and_then(|v| v.parse().ok())
    }
}

// === impl PatternBody ===

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(64 * 1024);
        let chunk: Vec<u8> = (self.sent..self.sent + n)
            .map(|i| (i % 251) as u8)
            .collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

/// See [`piecemeal`].
struct Piecemeal(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Piecemeal {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A body of frames given in advance (data, then trailers, say): a request body for a client,
/// or an answer body for a test server.
pub struct Frames(pub VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}
