//! Upstreams that speak HTTP/2 (`protocol: http2`): gRPC services behind rampart. A real h2
//! server (hyper's, h2c with prior knowledge or TLS with ALPN `h2`) answers with trailers;
//! clients reach it through rampart over HTTP/2 and HTTP/1.1.

mod connect;
mod odd;
mod tiny;
mod waiting;
mod window;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use ::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::http::Frames;
use crate::support::tls::{certs, key, server_config, Ca, Pki};
use crate::support::{http, metric_value, metrics, Proxy};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    scheme: Option<String>,
    authority: Option<String>,
    path: String,
    headers: HeaderMap,
}

/// A hyper HTTP/2 server on 127.0.0.1: `/grpc` answers `hello` with the trailers
/// `grpc-status: 0` (`/grpc/sized` too, with a `content-length`; `/grpc/announced` with
/// `trailer: grpc-status`), `/echo` its request body, `/status/503` a 503, `/slow` 200 `slow` after a
/// second, `/unavailable` a gRPC UNAVAILABLE (Trailers-Only), `/ok-at-head` a gRPC OK
/// (Trailers-Only), `/bytes/N` N bytes (as fast as flow control lets them go), anything else
/// 200 `ok`. Neither Trailers-Only answer ends its stream with its HEADERS frame: hyper ends it
/// with an empty DATA frame, its body (no frames) unable to tell it is empty. HEAD of `/bytes/N` gets the length N and
/// no content (its stream ended by an empty DATA frame, as hyper ends a body it cannot tell
/// is empty).
struct H2Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    /// `/trailed/hang` answers dropped before their end (rampart let the stream go).
    let_go: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// The body of one of the test server's answers.
enum Served {
    /// Frames given in advance.
    Frames(Frames),
    /// A message, then nothing: the stream never ends by itself. Counts into the server's
    /// `let_go` when dropped.
    Hang { sent: bool, let_go: Arc<AtomicU64> },
    /// A message, then, a little later (so that the head and the message are read before
    /// it), an error: hyper resets the stream (no trailers, no status).
    Broken {
        sent: bool,
        later: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// This many bytes more, in chunks of [`CHUNK`].
    Many(usize),
}

/// What [`Served::Many`] sends, a chunk at a time.
static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl Drop for Served {
    fn drop(&mut self) {
        if let Served::Hang { let_go, .. } = self {
            let_go.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl http_body::Body for Served {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let message = || Frame::data(Bytes::from_static(b"message"));
        match self.get_mut() {
            Served::Frames(f) => Pin::new(f).poll_frame(cx).map_err(|e| match e {}),
            Served::Hang { sent, .. } | Served::Broken { sent, .. } if !*sent => {
                *sent = true;
                Poll::Ready(Some(Ok(message())))
            }
            Served::Hang { .. } => Poll::Pending,
            Served::Many(0) => Poll::Ready(None),
            Served::Many(left) => {
                let n = (*left).min(CHUNK.len());
                *left -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            Served::Broken { later, .. } => {
                let later = later.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep(std::time::Duration::from_millis(100)))
                });
                std::task::ready!(later.as_mut().poll(cx));
                Poll::Ready(Some(Err(std::io::Error::other("the stream breaks"))))
            }
        }
    }
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    let_go: Arc<AtomicU64>,
) -> Response<Served> {
    let (parts, body) = req.into_parts();
    seen.lock().push(Seen {
        version: parts.version,
        scheme: parts.uri.scheme_str().map(str::to_owned),
        authority: parts.uri.authority().map(|a| a.to_string()),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
    });
    let data = |b: &'static str| Frame::data(Bytes::from_static(b.as_bytes()));
    let (status, frames) = match parts.uri.path() {
        "/grpc" | "/grpc/sized" | "/grpc/announced" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            trailers.insert("grpc-message", "fine".parse().expect("value"));
            (
                StatusCode::OK,
                vec![data("hello"), Frame::trailers(trailers)],
            )
        }
        "/echo" => {
            let got = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (StatusCode::OK, vec![Frame::data(got)])
        }
        // gRPC answers that stream: a message, then the status in the trailers (OK,
        // UNAVAILABLE), or no trailers at all.
        path @ ("/trailed/ok" | "/trailed/unavailable" | "/trailed/odd") => {
            // `/trailed/odd`: a status no gRPC server writes (a leading zero).
            let code = match path {
                "/trailed/ok" => "0",
                "/trailed/odd" => "00",
                _ => "14",
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.parse().expect("value"));
            (
                StatusCode::OK,
                vec![data("message"), Frame::trailers(trailers)],
            )
        }
        "/trailed/none" => (StatusCode::OK, vec![data("message")]),
        // Trailers with fields that have no place there (RFC 9110 §6.5.1) beside two that do.
        "/forbidden-trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            trailers.insert("x-checksum", "c0ffee".parse().expect("value"));
            for (n, v) in FORBIDDEN_TRAILERS {
                trailers.insert(n, v.parse().expect("value"));
            }
            (
                StatusCode::OK,
                vec![data("message"), Frame::trailers(trailers)],
            )
        }
        "/status/503" => (StatusCode::SERVICE_UNAVAILABLE, vec![data("busy")]),
        "/unavailable" | "/ok-at-head" => (StatusCode::OK, Vec::new()),
        "/slow" => {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            (StatusCode::OK, vec![data("slow")])
        }
        _ => (StatusCode::OK, vec![data("ok")]),
    };
    let body = match parts.uri.path() {
        path if parts.method == ::http::Method::HEAD && path.starts_with("/bytes/") => {
            let mut rsp = Response::new(Served::Frames(Frames(Default::default())));
            let len = &path["/bytes/".len()..];
            rsp.headers_mut()
                .insert("content-length", len.parse().expect("/bytes/N"));
            return rsp;
        }
        "/trailed/hang" => Served::Hang {
            sent: false,
            let_go,
        },
        "/trailed/broken" => Served::Broken {
            sent: false,
            later: None,
        },
        path if path.starts_with("/bytes/") => {
            Served::Many(path["/bytes/".len()..].parse().expect("/bytes/N"))
        }
        _ => Served::Frames(Frames(frames.into())),
    };
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    if parts.uri.path() == "/huge" {
        let big = "h".repeat(100 * 1024);
        rsp.headers_mut()
            .insert("x-huge", big.parse().expect("value"));
    }
    if parts.uri.path().starts_with("/grpc") || parts.uri.path().starts_with("/trailed/") {
        rsp.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
    }
    if parts.uri.path() == "/grpc/sized" {
        // What `/grpc` sends, its length stated.
        rsp.headers_mut()
            .insert("content-length", "5".parse().expect("value"));
    }
    if parts.uri.path() == "/grpc/announced" {
        // What `/grpc` sends, one of its trailers announced.
        rsp.headers_mut()
            .insert("trailer", "grpc-status".parse().expect("value"));
    }
    if parts.uri.path() == "/padded" {
        // Values malformed over HTTP/2 (RFC 9113 §8.2.1), as a careless server sends them.
        let h = rsp.headers_mut();
        h.insert("x-a", HeaderValue::from_static(" v"));
        h.insert("x-b", HeaderValue::from_static("w\t"));
        h.insert("x-c", HeaderValue::from_static(" \t "));
    }
    if parts.uri.path() == "/unavailable" {
        // A gRPC error as servers send it: Trailers-Only, the status in the headers.
        let h = rsp.headers_mut();
        h.insert("content-type", "application/grpc".parse().expect("value"));
        h.insert("grpc-status", "14".parse().expect("value"));
        h.insert("grpc-message", "overloaded".parse().expect("value"));
    }
    if parts.uri.path() == "/ok-at-head" {
        // A call with no message to answer: Trailers-Only, its OK in the headers.
        let h = rsp.headers_mut();
        h.insert("content-type", "application/grpc".parse().expect("value"));
        h.insert("grpc-status", "0".parse().expect("value"));
    }
    rsp
}

impl H2Server {
    /// h2c with prior knowledge, or over TLS (`acceptor`, ALPN `h2`).
    async fn start(acceptor: Option<tokio_rustls::TlsAcceptor>) -> H2Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let let_go = Arc::new(AtomicU64::new(0));
        let task = {
            let (seen, connections, let_go) = (seen.clone(), connections.clone(), let_go.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (seen, acceptor, let_go) = (seen.clone(), acceptor.clone(), let_go.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let (seen, let_go) = (seen.clone(), let_go.clone());
                            async move { Ok::<_, Infallible>(answer(req, seen, let_go).await) }
                        });
                        let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        let _ = match acceptor {
                            None => server.serve_connection(TokioIo::new(tcp), svc).await,
                            Some(a) => match a.accept(tcp).await {
                                Ok(tls) => server.serve_connection(TokioIo::new(tls), svc).await,
                                Err(_) => return,
                            },
                        };
                    });
                }
            })
        };
        H2Server {
            addr,
            seen,
            connections,
            let_go,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// Trailer fields `/forbidden-trailers` sends that no trailer may carry.
const FORBIDDEN_TRAILERS: [(&str, &str); 6] = [
    ("content-length", "99"),
    ("host", "evil.example"),
    ("set-cookie", "sid=1"),
    ("content-type", "text/html"),
    ("location", "/elsewhere"),
    ("www-authenticate", "Basic"),
];

const POLICY: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 $EXTRA }
policies:
  again:
    retry: { attempts: 2, on: [503], backoff: { base: 1ms, max: 2ms }, budget: { ratio: 100%, min_per_second: 100 } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { match: { path_prefix: /status }, upstream: grpc, policy: again }
      - { upstream: grpc }
"#;

/// A rampart in front of `up`, with its access log in a directory of its own.
struct Fronted {
    proxy: Proxy,
    log: tempfile::TempDir,
}

impl std::ops::Deref for Fronted {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

async fn proxy(up: SocketAddr, extra: &str) -> Fronted {
    fronted(POLICY, up, extra).await
}

/// A rampart of `policy` (its `$UP`, `$EXTRA` and `$LOG` filled in) in front of `up`.
async fn fronted(policy: &str, up: SocketAddr, extra: &str) -> Fronted {
    let log = tempfile::tempdir().expect("a temp dir");
    let proxy = Proxy::builder(policy)
        .var("UP", up)
        .var("EXTRA", extra)
        .var("LOG", log.path().join("access.jsonl").display())
        .spawn()
        .await;
    Fronted { proxy, log }
}

/// An h2c test server, a rampart of [`GRPC_ROUTES`] in front of it, and its listener.
async fn grpc_routes() -> (H2Server, Fronted, SocketAddr) {
    let up = H2Server::start(None).await;
    let proxy = fronted(GRPC_ROUTES, up.addr, "").await;
    let addr = proxy.listener("inbound");
    (up, proxy, addr)
}

/// The access log lines of `proxy` for `path`, waited for (bounded) until there are `n`.
async fn logged(proxy: &Fronted, path: &str, n: usize) -> Vec<serde_json::Value> {
    let file = proxy.log.path().join("access.jsonl");
    let of = || -> Vec<serde_json::Value> {
        crate::support::log_lines(&file)
            .into_iter()
            .filter(|l| l["path"] == path)
            .collect()
    };
    crate::assert_eventually!(of().len() >= n, "{n} lines for {path}: {:?}", of());
    of()
}

/// A response over h2c, its trailers collected.
struct Answer {
    status: StatusCode,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// `n` GETs of `path` at once on one h2c connection to `addr`.
async fn h2_calls(addr: SocketAddr, path: &str, n: usize) -> Vec<Answer> {
    let send = http::h2c(addr).await;
    let calls = (0..n).map(|_| {
        let mut send = send.clone();
        let req = Request::builder()
            .uri(format!("http://grpc.internal{path}"))
            .header("content-type", "application/grpc")
            .body(http::empty())
            .expect("request");
        tokio::spawn(async move {
            let rsp = send.send_request(req).await.expect("an answer");
            let status = rsp.status();
            let collected = rsp.into_body().collect().await.expect("the body");
            let trailers = collected.trailers().cloned();
            Answer {
                status,
                body: collected.to_bytes(),
                trailers,
            }
        })
    });
    let mut out = Vec::with_capacity(n);
    for c in calls.collect::<Vec<_>>() {
        out.push(c.await.expect("a call task"));
    }
    out
}

/// `rampart_upstream_connections` of the `grpc` upstream's endpoint `up`.
async fn connections(proxy: &Fronted, up: SocketAddr) -> Option<f64> {
    let text = metrics(proxy.admin()).await;
    let label = up.to_string();
    metric_value(
        &text,
        "rampart_upstream_connections",
        &[("upstream", "grpc"), ("endpoint", &label)],
    )
}

/// gRPC through rampart: an h2 client's calls reach an h2c upstream over one connection, the
/// answers' trailers (`grpc-status`) come back, and the upstream sees HTTP/2, the client's
/// authority, `te: trailers` and the lines rampart adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_an_h2c_upstream_with_their_trailers_on_one_connection() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let answers = h2_calls(proxy.listener("inbound"), "/grpc", 20).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "hello");
        let t = a.trailers.as_ref().expect("the trailers come back");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["grpc-message"], "fine");
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
    assert_eq!(connections(&proxy, up.addr).await, Some(1.0));
    let seen = up.seen();
    assert_eq!(seen.len(), 20);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.authority.as_deref(), Some("grpc.internal"));
        assert_eq!(s.path, "/grpc");
        assert_eq!(s.headers["te"], "trailers");
        assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(s.headers["x-forwarded-proto"], "http");
        assert_eq!(s.headers["content-type"], "application/grpc");
        assert!(s.headers.contains_key("x-request-id"), "{:?}", s.headers);
        assert!(!s.headers.contains_key("host"), "{:?}", s.headers);
    }
}

/// An HTTP/2 upstream's answer to HEAD reaches an HTTP/2 client as the upstream gave it: its
/// length, no content, no stream error (rampart empties only the bodies of its own answers
/// to HEAD, `body::for_head`).
#[tokio::test]
async fn an_h2_upstreams_answer_to_head_keeps_its_length() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let rsp = http::h2_head(proxy.listener("inbound"), "/bytes/5000", &[]).await;
    assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
    assert_eq!(rsp.headers["content-length"], "5000", "{rsp:?}");
    assert!(rsp.headers.get("x-rampart-reason").is_none(), "{rsp:?}");
    assert!(rsp.body.as_ref().is_ok_and(|b| b.is_empty()), "{rsp:?}");
    assert_eq!(up.seen().len(), 1);
}

/// An HTTP/2 upstream's trailers reach the client without the fields that have no place in
/// trailers (RFC 9110 §6.5.1: framing, routing, cookies, content format, response controls);
/// `grpc-status` and the others pass. Before, hyper's HTTP/2 server sent them on as given
/// (`content-length: 99`, `host`, `set-cookie` in the client's trailers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstreams_trailers_reach_the_client_without_forbidden_fields() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let answers = h2_calls(proxy.listener("inbound"), "/forbidden-trailers", 1).await;
    let a = &answers[0];
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "message");
    let t = a.trailers.as_ref().expect("the trailers come back");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-checksum"], "c0ffee");
    for (name, _) in FORBIDDEN_TRAILERS {
        assert!(
            !t.contains_key(name),
            "{name} passed in the trailers: {t:?}"
        );
    }
}

/// An HTTP/1.1 client that asks for trailers (`TE: trailers`) gets a gRPC answer's status
/// from an HTTP/2 upstream that announced none (gRPC servers never do): the answer's head
/// announces gRPC's trailer fields, as hyper's HTTP/1.1 server sends only those announced, and
/// an answer that stated its length goes chunked, which alone has room for them. Before,
/// HTTP/2 clients alone got them. A client that does not ask gets neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h1_client_that_asks_gets_an_h2_upstreams_unannounced_grpc_trailers() {
    use std::time::Duration;
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    for path in ["/grpc", "/grpc/sized"] {
        let asks = format!(
            "POST {path} HTTP/1.1\r\nhost: grpc.internal\r\ncontent-type: application/grpc\r\n\
             te: trailers\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let rsp =
            crate::support::raw::exchange(addr, asks.as_bytes(), Duration::from_secs(10)).await;
        let text = rsp.text();
        assert_eq!(rsp.status(), Some(200), "{text}");
        assert_eq!(
            rsp.header("trailer").as_deref(),
            Some("grpc-status, grpc-message, grpc-status-details-bin"),
            "{text}"
        );
        assert_eq!(
            rsp.header("transfer-encoding").as_deref(),
            Some("chunked"),
            "{text}"
        );
        assert_eq!(rsp.header("content-length"), None, "{text}");
        assert!(
            text.ends_with(
                "\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n"
            ),
            "{path}: {text:?}"
        );
    }
    // An upstream's own announcement is the one the client gets.
    let asks = b"POST /grpc/announced HTTP/1.1\r\nhost: grpc.internal\r\n\
                 content-type: application/grpc\r\nte: trailers\r\ncontent-length: 0\r\n\
                 connection: close\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, asks, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(
        rsp.header("trailer").as_deref(),
        Some("grpc-status"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "{text:?}"
    );
    // HTTP/1.0 has no chunked coding, hence no trailers: a sized answer keeps its length.
    let old = b"POST /grpc/sized HTTP/1.0\r\nhost: grpc.internal\r\n\
                content-type: application/grpc\r\nte: trailers\r\ncontent-length: 0\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, old, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(rsp.header("content-length").as_deref(), Some("5"), "{text}");
    assert_eq!(rsp.header("trailer"), None, "{text}");
    let plain = b"POST /grpc HTTP/1.1\r\nhost: grpc.internal\r\ncontent-type: application/grpc\r\n\
                  content-length: 0\r\nconnection: close\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, plain, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(rsp.status(), Some(200), "{text}");
    assert_eq!(rsp.header("trailer"), None, "{text}");
    assert!(!text.contains("grpc-status"), "{text:?}");
}

/// An HTTP/1.1 client reaches the HTTP/2 upstream too (bodies both ways), retries go out on
/// it, an answer with headers past the bound is a 502, and a dead HTTP/2 endpoint is a 502
/// like any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_retries_and_a_dead_endpoint_over_http2() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let rsp = http::get(addr, "/plain", &[("host", "app.internal")]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "ok");
    let rsp = http::post(addr, "/echo", &[], "a body to echo").await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "a body to echo");
    // The answer's bytes are counted as they go, and its line written when it ends.
    let line = &logged(&proxy, "/echo", 1).await[0];
    assert_eq!(
        (line["status"].as_u64(), line["bytes_out"].as_u64()),
        (Some(200), Some(14)),
        "{line}"
    );
    assert_eq!(line["bytes_in"], 14, "{line}");
    let before = up.seen().len();
    let rsp = http::get(addr, "/status/503", &[]).await;
    assert_eq!(rsp.status, 503);
    assert_eq!(
        up.seen().len(),
        before + 2,
        "the retry went out over HTTP/2 too"
    );
    let seen = up.seen();
    assert_eq!(seen[0].authority.as_deref(), Some("app.internal"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);

    // An answer whose headers are past the bound (64 KiB, as an HTTP/1.1 head) is refused as a
    // broken one, and the connection serves the next request.
    http::get(addr, "/huge", &[])
        .await
        .assert_rampart(502, "upstream_unavailable");
    assert_eq!(http::get(addr, "/plain", &[]).await.status, 200);

    let dead = crate::support::free_addr();
    let proxy = self::proxy(dead, "").await;
    http::get(proxy.listener("inbound"), "/x", &[])
        .await
        .assert_rampart(502, "upstream_unavailable");
}

/// Over `tls` an HTTP/2 upstream is offered ALPN `h2` only and verified as any; its health
/// checks go over the same (TLS, HTTP/2) and keep it healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstream_over_tls_is_served_and_health_checked() {
    let (ca, pki) = (Ca::new("grpc ca"), Pki::new());
    let ca_path = pki.ca("ca", &ca);
    let issued = ca.server(3);
    let config = server_config(certs(&issued.cert), key(&issued.key), None, &[b"h2"]);
    let up = H2Server::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let extra = format!(
        ", tls: {{ ca: {}, server_name: localhost }}, health_check: {{ path: /healthz, interval: 50ms, unhealthy_after: 1, healthy_after: 1 }}",
        ca_path.display()
    );
    let proxy = proxy(up.addr, &extra).await;
    crate::assert_eventually!(
        up.seen().iter().filter(|s| s.path == "/healthz").count() >= 3,
        "the probes arrive over TLS and HTTP/2; log:\n{}",
        proxy.log()
    );
    // `:scheme` says TLS, for the probes as for the requests.
    let schemes: Vec<Option<String>> = up.seen().into_iter().map(|s| s.scheme).collect();
    assert!(
        schemes.iter().all(|s| s.as_deref() == Some("https")),
        "{schemes:?}"
    );
    let answers = h2_calls(proxy.listener("inbound"), "/grpc", 3).await;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.trailers.as_ref().map(|t| t["grpc-status"].clone()),
            Some("0".parse().expect("value"))
        );
    }
    let calls: Vec<Seen> = up
        .seen()
        .into_iter()
        .filter(|s| s.path == "/grpc")
        .collect();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|s| s.headers["x-forwarded-proto"] == "http" && s.scheme.as_deref() == Some("https")));
    let text = metrics(proxy.admin()).await;
    let label = up.addr.to_string();
    let healthy = metric_value(
        &text,
        "rampart_upstream_endpoint_healthy",
        &[("upstream", "grpc"), ("endpoint", &label)],
    );
    assert_eq!(healthy, Some(1.0), "{text}");
}

/// A server on 127.0.0.1 that answers whatever comes with `reply` and closes: an HTTP/1.1-only
/// server (or garbage) behind `protocol: http2`.
async fn replies(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(reply).await;
            });
        }
    });
    (addr, task)
}

/// What a hostile or mistaken upstream can send an HTTP/2 connection: an HTTP/1.1 answer to
/// the preface, bytes that are no frame, or nothing before it closes. Each is a 502
/// `upstream_unavailable` in time, and rampart serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_speak_http2_is_a_502() {
    let good = H2Server::start(None).await;
    for reply in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        &b"\x00\x00\x04\xff\xff\xff\xff\xff\xffgarbage"[..],
        &b""[..],
    ] {
        let (addr, task) = replies(reply).await;
        let proxy = proxy(addr, "").await;
        let listener = proxy.listener("inbound");
        let started = tokio::time::Instant::now();
        http::get(listener, "/grpc", &[])
            .await
            .assert_rampart(502, "upstream_unavailable");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{reply:?}: answered in {:?}",
            started.elapsed()
        );
        assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
        task.abort();
        // The same process serves a sound upstream next (a reload to it).
        let mut proxy = proxy;
        proxy
            .proxy
            .rewrite_config(&POLICY.replace("$UP", &good.addr.to_string()));
        proxy.proxy.signal("HUP");
        crate::assert_eventually!(
            http::get(listener, "/plain", &[]).await.status == 200,
            "{reply:?}: serving on after the reload; log:\n{}",
            proxy.log()
        );
    }
}

/// Routes for the gRPC calls' tests: `/limited` takes one call a minute, `/unavailable` (and
/// `/ok-at-head`) is behind a breaker that opens after two failures, `/grpc` and `/slow` take any; every other
/// path is rampart's `no_route`. A breaker guards every route to its upstream (SPEC §2), so
/// the routes without `guarded` go to the same server under another upstream name, `free`:
/// their calls (answers without a `grpc-status` are failed calls) must not open it.
const GRPC_ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 $EXTRA }
  free: { endpoints: [$UP], protocol: http2 $EXTRA }
policies:
  limited:
    rate_limit: { per_tenant: { rate: 1/min, burst: 1 } }
  guarded:
    circuit_breaker: { consecutive_failures: 2, open_for: 10s }
  per_try:
    timeout: { request: 5s, per_try: 700ms }
  bounded:
    timeout: { request: 2s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { match: { path_prefix: /limited }, upstream: free, policy: limited }
      - { match: { path_prefix: /grpc }, upstream: free }
      - { match: { path_prefix: /slow }, upstream: free }
      - { match: { path_prefix: /unavailable }, upstream: grpc, policy: guarded }
      - { match: { path_prefix: /ok-at-head }, upstream: grpc, policy: guarded }
      - { match: { path_prefix: /trailed }, upstream: grpc, policy: guarded }
      - { match: { path_prefix: /per-try }, upstream: free, policy: per_try }
      - { match: { path_prefix: /bounded }, upstream: free, policy: bounded }
"#;

/// One answer over h2c, as a gRPC client reads it.
struct Called {
    status: StatusCode,
    headers: HeaderMap,
    /// Whether the answer's HEADERS frame ended the stream (gRPC's "Trailers-Only").
    ended_at_head: bool,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// One POST of `path` with `content-type: ct` on a new h2c connection to `addr`.
async fn h2_post(addr: SocketAddr, path: &str, ct: &str) -> Called {
    h2_post_with(addr, path, &[("content-type", ct)]).await
}

/// A POST of `path` with `headers` and `te: trailers`, its body one empty gRPC message.
fn post(path: &str, headers: &[(&str, &str)]) -> Request<http::ReqBody> {
    let mut req = Request::post(format!("http://grpc.internal{path}")).header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(http::full(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request")
}

/// One POST of `path` with `headers` on a new h2c connection to `addr`.
async fn h2_post_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Called {
    use http_body::Body as _;
    let mut send = http::h2c(addr).await;
    let rsp = send
        .send_request(post(path, headers))
        .await
        .expect("an answer");
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let ended_at_head = rsp.body().is_end_stream();
    let collected = rsp.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned();
    Called {
        status,
        headers,
        ended_at_head,
        body: collected.to_bytes(),
        trailers,
    }
}

/// rampart's own answers to a gRPC call (`content-type: application/grpc`, a POST) are in the
/// form gRPC clients read: HTTP 200, one HEADERS frame that ends the stream, the outcome in
/// `grpc-status` and `grpc-message`, `retry-after` also as `grpc-retry-pushback-ms`, and
/// `x-rampart-reason` as ever. The upstream's answers, and rampart's to other requests
/// (gRPC-Web's among them), are as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampart_answers_grpc_calls_in_grpc_form() {
    let (up, proxy, addr) = grpc_routes().await;

    let first = h2_post(addr, "/limited", "application/grpc").await;
    assert_eq!(
        (first.status, first.body.as_ref()),
        (StatusCode::OK, &b"ok"[..])
    );
    assert!(
        first.headers.get("grpc-status").is_none(),
        "the upstream's answer, untouched"
    );

    let refused = h2_post(addr, "/limited", "application/grpc+proto").await;
    assert_eq!(refused.status, StatusCode::OK);
    assert!(
        refused.ended_at_head,
        "a Trailers-Only answer: the HEADERS frame ends the stream"
    );
    assert!(refused.body.is_empty());
    let h = &refused.headers;
    assert_eq!(h["grpc-status"], "8", "RESOURCE_EXHAUSTED: {h:?}");
    assert!(
        h["grpc-message"]
            .to_str()
            .expect("text")
            .contains("rate limit"),
        "{h:?}"
    );
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["x-rampart-reason"], "rate_limited");
    let secs: u64 = h["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!(secs >= 1, "{h:?}");
    assert_eq!(
        h["grpc-retry-pushback-ms"],
        (secs * 1000).to_string().as_str()
    );
    assert!(
        h.contains_key("x-request-id") && h.contains_key("ratelimit"),
        "{h:?}"
    );

    let unrouted = h2_post(addr, "/nowhere", "application/grpc").await;
    assert_eq!(unrouted.status, StatusCode::OK);
    assert_eq!(unrouted.headers["grpc-status"], "12", "UNIMPLEMENTED");
    assert_eq!(unrouted.headers["x-rampart-reason"], "no_route");

    // Not gRPC: the JSON answers of SPEC §3.
    for ct in ["application/json", "application/grpc-web"] {
        let plain = h2_post(addr, "/limited", ct).await;
        assert_eq!(plain.status, StatusCode::TOO_MANY_REQUESTS, "{ct}");
        assert!(plain.headers.get("grpc-status").is_none(), "{ct}");
        let body: serde_json::Value = serde_json::from_slice(&plain.body).expect("json");
        assert_eq!(body["error"], "rate_limited", "{ct}");
    }

    // The access log says what was sent, and why.
    let lines = logged(&proxy, "/limited", 4).await;
    let grpc_refusal = lines
        .iter()
        .find(|l| l["status"] == 200 && l["reason"] == "rate_limited");
    assert!(grpc_refusal.is_some(), "{lines:?}");
    assert_eq!(
        up.seen().len(),
        1,
        "only the first call reached the upstream"
    );
}

/// A gRPC call's own deadline (`grpc-timeout`) bounds its request timeout: past it rampart
/// answers DEADLINE_EXCEEDED, the upstream's answer not waited for. A request that is not a
/// gRPC call keeps to the policy (here none), whatever it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_calls_deadline_bounds_its_request_timeout() {
    let (_up, _proxy, addr) = grpc_routes().await;

    let started = tokio::time::Instant::now();
    let grpc = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "150m"),
    ];
    let late = h2_post_with(addr, "/slow", &grpc).await;
    let waited = started.elapsed();
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(
        late.headers["grpc-status"], "4",
        "DEADLINE_EXCEEDED: {:?}",
        late.headers
    );
    assert_eq!(late.headers["x-rampart-reason"], "timeout");
    assert!(
        late.headers["grpc-message"]
            .to_str()
            .expect("text")
            .contains("150ms"),
        "{:?}",
        late.headers
    );
    assert!(
        waited < std::time::Duration::from_millis(900),
        "answered at the call's deadline, not the upstream's second: {waited:?}"
    );

    // Within its deadline a call is answered by the upstream.
    let grpc = [("content-type", "application/grpc"), ("grpc-timeout", "5S")];
    let fine = h2_post_with(addr, "/grpc", &grpc).await;
    assert_eq!(
        (fine.status, fine.body.as_ref()),
        (StatusCode::OK, &b"hello"[..])
    );

    // Not a gRPC call: the header bounds nothing.
    let plain = [
        ("content-type", "application/json"),
        ("grpc-timeout", "150m"),
    ];
    let waited_for = h2_post_with(addr, "/slow", &plain).await;
    assert_eq!(
        (waited_for.status, waited_for.body.as_ref()),
        (StatusCode::OK, &b"slow"[..])
    );
}

/// Each try of a gRPC call tells the upstream its deadline in `grpc-timeout`: the time the try
/// has left, whichever bounds it (the per-try timeout, the route's request timeout, the client's
/// own `grpc-timeout`), so a gRPC server stops the call's work when rampart stops waiting. A
/// call rampart does not bound keeps what it sent (here nothing); a deadline past 30 days is
/// passed on as 30 days; a request that is not a gRPC call is passed on as it came, its
/// `grpc-timeout` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_try_of_a_grpc_call_tells_the_upstream_its_deadline() {
    use std::time::Duration;
    let (up, _proxy, addr) = grpc_routes().await;

    // What the upstream saw of the last request to `path`: its grpc-timeout, read as gRPC reads it.
    let told = |path: &str| -> (Option<String>, Option<Duration>) {
        let seen = up.seen();
        let last = seen.iter().rev().find(|s| s.path == path).expect("seen");
        let text = last
            .headers
            .get("grpc-timeout")
            .map(|v| v.to_str().expect("ascii").to_owned());
        (text, rampart::proxy::grpc::timeout(&last.headers))
    };
    let within = |got: Option<Duration>, most: u64, least: u64| {
        let got = got.expect("a deadline");
        assert!(
            got <= Duration::from_millis(most) && got > Duration::from_millis(least),
            "{got:?} not in ({least}ms, {most}ms]"
        );
    };
    let grpc = ("content-type", "application/grpc");

    // Bound by the per-try timeout (700ms), though the client allows 10 s and the route 5 s.
    let call = h2_post_with(addr, "/per-try", &[grpc, ("grpc-timeout", "10S")]).await;
    assert_eq!(call.status, StatusCode::OK);
    within(told("/per-try").1, 700, 500);
    // The same with no deadline of the client's own.
    h2_post_with(addr, "/per-try", &[grpc]).await;
    within(told("/per-try").1, 700, 500);
    // Bound by the route's request timeout (2 s), the client allowing 10 s...
    h2_post_with(addr, "/bounded", &[grpc, ("grpc-timeout", "10S")]).await;
    within(told("/bounded").1, 2_000, 1_800);
    // ...or by the client's own 500 ms, which is sooner.
    h2_post_with(addr, "/bounded", &[grpc, ("grpc-timeout", "500m")]).await;
    within(told("/bounded").1, 500, 300);
    // No policy: the client's deadline alone, less the time already spent.
    h2_post_with(addr, "/grpc", &[grpc, ("grpc-timeout", "3S")]).await;
    let (text, read) = told("/grpc");
    assert_ne!(text.as_deref(), Some("3S"), "rewritten to what is left");
    within(read, 3_000, 2_800);
    // Nothing bounds the call: nothing is added.
    h2_post_with(addr, "/grpc", &[grpc]).await;
    assert_eq!(told("/grpc"), (None, None));
    // A deadline gRPC cannot read is ignored and not passed on (a gRPC C-core server that
    // fails to parse one fails later calls on the same connection, other clients' too).
    for bad in ["abc", "10", "123456789S", "1.5S"] {
        h2_post_with(addr, "/grpc", &[grpc, ("grpc-timeout", bad)]).await;
        assert_eq!(told("/grpc"), (None, None), "{bad:?}");
    }
    // One longer than rampart takes (30 days) is taken as 30 days, and the upstream is told
    // that, less the time spent (rounded up to the second): never the 1,157 days asked for.
    for long in ["721H", "99999999S", "99999999H"] {
        h2_post_with(addr, "/grpc", &[grpc, ("grpc-timeout", long)]).await;
        let (text, read) = told("/grpc");
        assert_eq!(text.as_deref(), Some("2592000S"), "{long:?}");
        assert_eq!(read, Some(Duration::from_secs(30 * 24 * 3600)), "{long:?}");
    }
    // Not a gRPC call: its headers go as they came.
    let json = ("content-type", "application/json");
    h2_post_with(addr, "/per-try", &[json, ("grpc-timeout", "10S")]).await;
    assert_eq!(told("/per-try").0.as_deref(), Some("10S"));
}

/// An upstream's gRPC error (UNAVAILABLE, Trailers-Only: HTTP 200 with `grpc-status: 14`) is a
/// failed try for the breaker, as a 503 would be: after two the breaker opens and rampart
/// answers the third call itself (`circuit_open`, in gRPC's form). The upstream's own errors
/// reach the client as they came. A plain request to the same path is not a gRPC call: its
/// 200s are successes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_grpc_errors_open_the_breaker() {
    let (up, proxy, addr) = grpc_routes().await;

    // Not gRPC calls: three 200s, no failure counted.
    for _ in 0..3 {
        let plain = h2_post(addr, "/unavailable", "application/json").await;
        assert_eq!(plain.status, StatusCode::OK);
        assert!(plain.headers.get("x-rampart-reason").is_none());
    }
    for _ in 0..2 {
        let call = h2_post(addr, "/unavailable", "application/grpc").await;
        assert_eq!(call.status, StatusCode::OK);
        assert_eq!(call.headers["grpc-status"], "14");
        assert_eq!(
            call.headers["grpc-message"], "overloaded",
            "the upstream's own answer"
        );
        assert!(call.headers.get("x-rampart-reason").is_none());
    }
    let refused = h2_post(addr, "/unavailable", "application/grpc").await;
    assert_eq!(
        refused.headers["x-rampart-reason"], "circuit_open",
        "{:?}",
        refused.headers
    );
    assert_eq!(refused.headers["grpc-status"], "14");
    assert!(refused.headers.contains_key("grpc-retry-pushback-ms"));
    assert_eq!(
        up.seen().len(),
        5,
        "the open breaker kept the third call from the upstream"
    );

    // The upstream's metrics count the calls' failures as the 503s they stand for.
    let text = metrics(proxy.admin()).await;
    let failed = metric_value(
        &text,
        "rampart_upstream_requests_total",
        &[("upstream", "grpc"), ("code", "503")],
    );
    assert_eq!(failed, Some(2.0), "{text}");
}

/// A Trailers-Only answer whose stream its HEADERS frame does not end (an empty DATA frame ends
/// it) has given its call's status in its head, and that is its try's outcome: OK is a success
/// for the breaker, however many come (before, rampart waited for trailers that never came and
/// counted each a failure, and two opened the breaker), and UNAVAILABLE still a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_status_is_its_tries_outcome_though_its_stream_goes_on() {
    let (up, proxy, addr) = grpc_routes().await;
    for _ in 0..3 {
        let ok = h2_post(addr, "/ok-at-head", "application/grpc").await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.headers["grpc-status"], "0", "{:?}", ok.headers);
        assert!(ok.headers.get("x-rampart-reason").is_none());
    }
    let text = metrics(proxy.admin()).await;
    let state = |text: &str, state: &str| {
        metric_value(
            text,
            "rampart_circuit_breaker_state",
            &[("upstream", "grpc"), ("state", state)],
        )
    };
    assert_eq!(state(&text, "closed"), Some(1.0), "{text}");
    let heads = metric_value(
        &text,
        "rampart_upstream_requests_total",
        &[("upstream", "grpc"), ("code", "200")],
    );
    assert_eq!(heads, Some(3.0), "{text}");

    // The same answer with UNAVAILABLE in its head: two failures open the breaker.
    for _ in 0..2 {
        let failed = h2_post(addr, "/unavailable", "application/grpc").await;
        assert_eq!(failed.headers["grpc-status"], "14");
        assert!(failed.headers.get("x-rampart-reason").is_none());
    }
    let refused = h2_post(addr, "/ok-at-head", "application/grpc").await;
    assert_eq!(
        refused.headers["x-rampart-reason"], "circuit_open",
        "{:?}",
        refused.headers
    );
    assert_eq!(up.seen().len(), 5, "the open breaker kept the call away");
    let text = metrics(proxy.admin()).await;
    assert_eq!(state(&text, "open"), Some(1.0), "{text}");
}

/// A gRPC answer that streams (HTTP 200, a message, then `grpc-status` in the trailers) ends its
/// try for the breaker when its trailers come: a failing status there (UNAVAILABLE), or none at
/// all, is a failure, and an OK status a success. Failures that alternate with successes open
/// nothing; two in a row open the breaker. The head's 200 is what the metrics and the client see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_streams_trailing_status_is_its_tries_outcome() {
    let (up, proxy, addr) = grpc_routes().await;
    let grpc = "application/grpc";

    for _ in 0..3 {
        let failed = h2_post(addr, "/trailed/unavailable", grpc).await;
        assert_eq!(
            (failed.status, failed.body.as_ref()),
            (StatusCode::OK, &b"message"[..])
        );
        assert!(failed.headers.get("x-rampart-reason").is_none());
        let fine = h2_post(addr, "/trailed/ok", grpc).await;
        assert!(fine.headers.get("x-rampart-reason").is_none());
    }
    // A stream with no status, then a failing one: two failures in a row.
    let bare = h2_post(addr, "/trailed/none", grpc).await;
    assert_eq!(bare.body.as_ref(), b"message");
    h2_post(addr, "/trailed/unavailable", grpc).await;
    let refused = h2_post(addr, "/trailed/ok", grpc).await;
    assert_eq!(
        refused.headers["x-rampart-reason"], "circuit_open",
        "{:?}",
        refused.headers
    );
    assert_eq!(up.seen().len(), 8, "the open breaker kept the call away");
    let text = metrics(proxy.admin()).await;
    let heads = metric_value(
        &text,
        "rampart_upstream_requests_total",
        &[("upstream", "grpc"), ("code", "200")],
    );
    assert_eq!(heads, Some(8.0), "{text}");

    // The access log: every line a 200, its gRPC status beside it (the trailers', or rampart's
    // own), `null` where none came.
    let status = |lines: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        lines
            .iter()
            .inspect(|l| assert_eq!(l["status"], 200, "{l}"))
            .map(|l| l["grpc_status"].clone())
            .collect()
    };
    let failed = status(logged(&proxy, "/trailed/unavailable", 4).await);
    assert_eq!(failed, vec![serde_json::json!(14); 4]);
    let ok = status(logged(&proxy, "/trailed/ok", 4).await);
    assert_eq!(ok[..3], vec![serde_json::json!(0); 3], "{ok:?}");
    assert_eq!(ok[3], 14, "rampart's own circuit_open: UNAVAILABLE");
    let none = status(logged(&proxy, "/trailed/none", 1).await);
    assert!(none[0].is_null(), "{none:?}");
}

/// What a hostile upstream can put in a stream's trailers: a `grpc-status` no gRPC server
/// writes (`00`) is no status, so never an OK: a failure for the breaker (two open it) and a
/// line whose `grpc_status` is `null`, written though nothing else would arm it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_status_in_a_streams_trailers_is_a_failure_never_an_ok() {
    let (up, proxy, addr) = grpc_routes().await;
    for _ in 0..2 {
        let odd = h2_post(addr, "/trailed/odd", "application/grpc").await;
        assert_eq!(
            (odd.status, odd.body.as_ref()),
            (StatusCode::OK, &b"message"[..]),
            "passed on as it came"
        );
        assert!(odd.headers.get("x-rampart-reason").is_none());
    }
    let refused = h2_post(addr, "/trailed/ok", "application/grpc").await;
    assert_eq!(
        refused.headers["x-rampart-reason"], "circuit_open",
        "{:?}",
        refused.headers
    );
    assert_eq!(up.seen().len(), 2);
    let lines = logged(&proxy, "/trailed/odd", 2).await;
    assert!(
        lines.iter().all(|l| l["grpc_status"].is_null()),
        "{lines:?}"
    );
}

/// A gRPC stream's try that ends without its trailers: abandoned by the client (it read the
/// head and a message, then reset the stream) it is cancelled, neither a failure nor a
/// success, so two in a row open nothing; broken by the upstream (its stream reset after a
/// message) it is a failure, and two in a row open the breaker. An abandoned stream's access
/// log line says the client went (`client_gone`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_abandoned_is_cancelled_and_one_broken_is_a_failure() {
    use http_body_util::BodyExt as _;
    let (up, proxy, addr) = grpc_routes().await;
    // The head and the first frame of a call to `path`, on a connection of its own, then the
    // stream and the connection dropped; the second value is how the body went on.
    let call = |path: &'static str| async move {
        let mut send = http::h2c(addr).await;
        let req = post(path, &[("content-type", "application/grpc")]);
        let rsp = send.send_request(req).await.expect("an answer");
        let (head, mut body) = rsp.into_parts();
        let first = body
            .frame()
            .await
            .unwrap_or_else(|| panic!("a frame: {head:?}"))
            .expect("a message");
        assert_eq!(first.into_data().expect("data").as_ref(), b"message");
        (head, body)
    };

    for n in 1..=2u64 {
        let (head, body) = call("/trailed/hang").await;
        assert!(head.headers.get("x-rampart-reason").is_none());
        drop(body);
        // rampart lets the upstream's stream go when the client's goes (bounded wait).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while up.let_go.load(Ordering::SeqCst) < n {
            assert!(tokio::time::Instant::now() < deadline, "stream {n} kept");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let fine = h2_post(addr, "/trailed/ok", "application/grpc").await;
    assert!(
        fine.headers.get("x-rampart-reason").is_none(),
        "two abandoned streams are no failures: {:?}",
        fine.headers
    );
    for line in logged(&proxy, "/trailed/hang", 2).await {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["reason"], "client_gone", "{line}");
    }

    for _ in 0..2 {
        let (_, mut body) = call("/trailed/broken").await;
        // The upstream's reset reaches the client as an error, never as an end with trailers.
        let rest = body.frame().await;
        assert!(!matches!(&rest, Some(Ok(f)) if f.is_trailers()), "{rest:?}");
    }
    let refused = h2_post(addr, "/trailed/ok", "application/grpc").await;
    assert_eq!(
        refused.headers["x-rampart-reason"], "circuit_open",
        "{:?}",
        refused.headers
    );
}

/// A traced gRPC call's SERVER span carries `rpc.grpc.status_code`: the trailers' of an answer
/// that streams, or a Trailers-Only head's, and its status is Error for a server's error
/// (UNAVAILABLE) and not for OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_calls_span_carries_its_status() {
    use crate::support::otlp::{attr, Collector};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let up = H2Server::start(None).await;
    let otlp = Collector::start().await;
    let policy = r#"
version: 1
admin: { listen: $ADMIN }
tracing:
  otlp: { endpoint: "http://$OTLP", protocol: http/protobuf, flush_every: 20ms, timeout: 300ms }
  sample: 0%
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 }
listeners:
  - { name: inbound, direction: inbound, listen: $LISTEN_inbound, routes: [{ upstream: grpc }] }
"#;
    let proxy = Proxy::builder(policy)
        .var("UP", up.addr)
        .var("OTLP", otlp.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    for (n, path, code, error) in [
        (1, "/trailed/unavailable", "14", true),
        (2, "/trailed/ok", "0", false),
        (3, "/unavailable", "14", true),
    ] {
        // A sampled trace of the client's, so the call is traced (`sample: 0%` otherwise).
        let trace = format!("{n:032x}");
        let tp = format!("00-{trace}-00f067aa0ba902b7-01");
        let call = h2_post_with(
            addr,
            path,
            &[("content-type", "application/grpc"), ("traceparent", &tp)],
        )
        .await;
        assert_eq!(call.status, StatusCode::OK);
        crate::assert_eventually!(
            otlp.trace(&trace)
                .iter()
                .any(|s| s.kind == SpanKind::Server as i32),
            "{:#?}",
            otlp.spans()
        );
        let spans = otlp.trace(&trace);
        let server = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .expect("the SERVER span");
        assert_eq!(
            attr(&server.attributes, "rpc.grpc.status_code").as_deref(),
            Some(code),
            "{path}: {server:#?}"
        );
        let is_error = server.status.as_ref().map(|s| s.code) == Some(2);
        assert_eq!(is_error, error, "{path}: {server:#?}");
    }
}

/// Outlier detection reads a gRPC stream's trailers too. Two endpoints, taken in turn: each gets
/// a failing stream, then an OK one (which ends its streak), then a failing one; the first then
/// gets one with no status, its second failure in a row, and is ejected; the other is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_reads_a_grpc_streams_trailers() {
    let (a, b) = (H2Server::start(None).await, H2Server::start(None).await);
    let policy = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc:
    endpoints: [$A, $B]
    protocol: http2
    outlier: { consecutive_failures: 2, eject_for: 30s, max_ejected: 50% }
listeners:
  - { name: inbound, direction: inbound, listen: $LISTEN_inbound, routes: [{ upstream: grpc }] }
"#;
    let proxy = Proxy::builder(policy)
        .var("A", a.addr)
        .var("B", b.addr)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let healthy = |text: &str, up: &H2Server| {
        metric_value(
            text,
            "rampart_upstream_endpoint_healthy",
            &[("upstream", "grpc"), ("endpoint", &up.addr.to_string())],
        )
    };
    // One call to each endpoint per path, in turn.
    for path in [
        "/trailed/unavailable",
        "/trailed/ok",
        "/trailed/unavailable",
    ] {
        for _ in 0..2 {
            let call = h2_post(addr, path, "application/grpc").await;
            assert_eq!(call.status, StatusCode::OK);
        }
    }
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        (healthy(&text, &a), healthy(&text, &b)),
        (Some(1.0), Some(1.0)),
        "an OK stream ended each streak: {text}"
    );
    // Round robin takes the endpoints in their order: the seventh call goes to the first, its
    // second failure in a row.
    let next = h2_post(addr, "/trailed/none", "application/grpc").await;
    assert_eq!(next.body.as_ref(), b"message");
    assert_eq!((a.seen().len(), b.seen().len()), (4, 3), "turns alternate");
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        (healthy(&text, &a), healthy(&text, &b)),
        (Some(0.0), Some(1.0)),
        "ejected: {text}"
    );
}

/// What a hostile client can put in `grpc-timeout`: a deadline of nothing is met at once; one
/// past 30 days is taken as 30 days; a sign, a fraction, nine digits, bytes outside ASCII or no
/// unit bound nothing (in each case the call is answered by the upstream), and none of them breaks the connection or rampart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grpc_timeouts_bound_nothing_or_end_the_call_at_once() {
    let (_up, _proxy, addr) = grpc_routes().await;

    let now = [("content-type", "application/grpc"), ("grpc-timeout", "0n")];
    let at_once = h2_post_with(addr, "/slow", &now).await;
    assert_eq!(at_once.headers["grpc-status"], "4", "{:?}", at_once.headers);
    assert_eq!(at_once.headers["x-rampart-reason"], "timeout");

    for bad in [
        "99999999H",
        "721H",
        "-1S",
        "1.5S",
        "123456789m",
        "10",
        "S",
        "1s",
        "\u{e9}1S",
    ] {
        let calls = [("content-type", "application/grpc"), ("grpc-timeout", bad)];
        let answered = h2_post_with(addr, "/grpc", &calls).await;
        assert_eq!(
            (answered.status, answered.body.as_ref()),
            (StatusCode::OK, &b"hello"[..]),
            "grpc-timeout {bad:?}: {:?}",
            answered.headers
        );
        assert!(
            answered.headers.get("x-rampart-reason").is_none(),
            "{bad:?}"
        );
    }
}

/// A client that asks for `path` over HTTP/1.1, reads the answer's first bytes and then no
/// more: its receive buffer kept small, so that what rampart holds for it is soon all it may.
async fn slow_reader(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut tcp = socket.connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nhost: grpc.internal\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("the request");
    let mut first = [0u8; 64];
    let n = tcp.read(&mut first).await.expect("the answer begins");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    tcp
}

/// Answers their clients do not read never stall the other requests on the HTTP/2 upstream
/// connection they share: three HTTP/1.1 clients and one h2c client that read nothing of their
/// large answers (before, hyper's default windows, 2 MiB a stream and 5 MiB the connection,
/// gave three such streams the whole connection window: every other request got its head and
/// then no byte), and another request on the same connection still gets its whole answer, in
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_never_stall_the_others_on_the_connection() {
    const LARGE: &str = "/bytes/268435456"; // 256 MiB: far more than any buffer on the way
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(slow_reader(addr, LARGE).await);
    }
    // A gRPC-like client that never sends a WINDOW_UPDATE: its answer's body is never polled.
    let mut h2 = http::h2c(addr).await;
    let req = Request::get(format!("http://grpc.internal{LARGE}"))
        .body(http::empty())
        .expect("request");
    let unread = h2.send_request(req).await.expect("a head");
    assert_eq!(unread.status(), StatusCode::OK);
    // Time for the unread answers to fill every buffer and window on their way.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http::get(addr, "/bytes/4194304", &[]),
    )
    .await
    .expect("the other request must get its whole answer while the unread ones wait");
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), 4 * 1024 * 1024);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one connection carried them all"
    );
    drop((held, unread));
}

/// How [`GoingAway`]'s first connection says `GOAWAY(NO_ERROR, last stream 1)` while its
/// stream 1 is held (unanswered until [`GoingAway::release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Away {
    /// As soon as stream 1 has come.
    AtOnce,
    /// When the next stream comes, which it thereby refuses (it is above the last).
    OnTheNext,
    /// When the next stream's request has come whole (its body read to the end), which it
    /// thereby refuses, unprocessed.
    AtTheNextsEnd,
    /// As soon as stream 1 has come, after its answer's head and first bytes (`conn `): the
    /// stream still streams, its last byte (`1`) held.
    Streaming,
}

/// A raw HTTP/2 server on 127.0.0.1, frame by frame, for what hyper's server does not do: its
/// first connection goes away ([`Away`]) with stream 1 in flight; every later connection
/// answers each request 200 with the body `conn N` (N counted from 1), followed by `: ` and the
/// request's body if it had one.
struct GoingAway {
    addr: SocketAddr,
    /// `(connection, stream)` of every request's HEADERS, in order.
    streams: Arc<Mutex<Vec<(u64, u32)>>>,
    release: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GoingAway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A 200 answer with `body` on `stream`: HEADERS (`:status: 200`, HPACK's static entry 8)
/// and one DATA frame that ends the stream.
fn h2_ok(stream: u32, body: &str) -> Vec<u8> {
    let mut out = h2_frame(0x1, 0x4, stream, &[0x88]);
    out.extend(h2_frame(0x0, 0x1, stream, body.as_bytes()));
    out
}

impl GoingAway {
    async fn start(away: Away) -> GoingAway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (streams, release) = (streams.clone(), release.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while let Ok((tcp, _)) = listener.accept().await {
                    n += 1;
                    let (streams, release) = (streams.clone(), release.clone());
                    tokio::spawn(Self::serve(tcp, n, away, streams, release));
                }
            })
        };
        GoingAway {
            addr,
            streams,
            release,
            task,
        }
    }

    /// Lets the first connection answer its stream 1.
    fn release(&self) {
        self.release.notify_one();
    }

    fn streams(&self) -> Vec<(u64, u32)> {
        self.streams.lock().clone()
    }

    async fn serve(
        tcp: tokio::net::TcpStream,
        n: u64,
        away: Away,
        streams: Arc<Mutex<Vec<(u64, u32)>>>,
        release: Arc<tokio::sync::Notify>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rd, wr) = tcp.into_split();
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let send = |bytes: Vec<u8>| {
            let wr = wr.clone();
            async move {
                let _ = wr.lock().await.write_all(&bytes).await;
            }
        };
        let mut preface = [0u8; 24];
        if rd.read_exact(&mut preface).await.is_err() {
            return;
        }
        send(h2_frame(0x4, 0, 0, &[])).await;
        let goaway = || {
            let mut last_and_code = 1u32.to_be_bytes().to_vec();
            last_and_code.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
            h2_frame(0x7, 0, 0, &last_and_code)
        };
        let mut gone = false;
        let mut bodies: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        loop {
            let mut head = [0u8; 9];
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return;
            }
            match kind {
                // SETTINGS and PING are acknowledged.
                0x4 if flags & 0x1 == 0 => send(h2_frame(0x4, 0x1, 0, &[])).await,
                0x6 if flags & 0x1 == 0 => send(h2_frame(0x6, 0x1, 0, &payload)).await,
                0x1 => streams.lock().push((n, stream)),
                _ => {}
            }
            if kind == 0x0 {
                bodies
                    .entry(stream)
                    .or_default()
                    .extend_from_slice(&payload);
            }
            let ends = matches!(kind, 0x0 | 0x1) && flags & 0x1 != 0;
            if n > 1 {
                if ends {
                    let body = bodies.remove(&stream).unwrap_or_default();
                    let answer = match body.is_empty() {
                        true => format!("conn {n}"),
                        false => format!("conn {n}: {}", String::from_utf8_lossy(&body)),
                    };
                    send(h2_ok(stream, &answer)).await;
                }
                continue;
            }
            // The first connection: stream 1 held, then GOAWAY; nothing above it answered.
            match (kind, stream) {
                (0x1, 1) => {
                    let answer = match away {
                        Away::Streaming => {
                            let mut head = h2_frame(0x1, 0x4, 1, &[0x88]);
                            head.extend(h2_frame(0x0, 0, 1, b"conn "));
                            send(head).await;
                            h2_frame(0x0, 0x1, 1, b"1")
                        }
                        _ => h2_ok(1, "conn 1"),
                    };
                    if matches!(away, Away::AtOnce | Away::Streaming) {
                        gone = true;
                        send(goaway()).await;
                    }
                    let release = release.clone();
                    let answer = send(answer);
                    tokio::spawn(async move {
                        release.notified().await;
                        answer.await;
                    });
                }
                (0x1, _) if !gone && away == Away::OnTheNext => {
                    gone = true;
                    send(goaway()).await;
                }
                (_, s) if s > 1 && ends && !gone && away == Away::AtTheNextsEnd => {
                    gone = true;
                    send(goaway()).await;
                }
                _ => {}
            }
        }
    }
}

/// An upstream's graceful `GOAWAY` (as gRPC servers rotate connections at
/// `max_connection_age`) costs no request: rampart sends nothing more on that connection, a
/// request the connection did not process goes again on a new one whatever its method (here
/// a POST, on a route without retries), and neither counts as an upstream failure. Before, the
/// next request was handed to the going connection and answered 502 (hyper's "connection
/// closed") without reaching the upstream, and a stream above the `GOAWAY`'s last was a 502
/// too, each counted against the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_an_upstream_going_away_did_not_process_go_again_on_a_new_connection() {
    for away in [Away::AtOnce, Away::OnTheNext] {
        let up = GoingAway::start(away).await;
        let proxy = proxy(up.addr, "").await;
        let addr = proxy.listener("inbound");
        // Stream 1, held by the upstream through its GOAWAY.
        let held = tokio::spawn(async move { http::get(addr, "/held", &[]).await });
        crate::assert_eventually!(up.streams().len() == 1, "{away:?}: {:?}", up.streams());
        if away == Away::AtOnce {
            // The GOAWAY reaches rampart before the next request does.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let rsp = http::post(addr, "/next", &[], "not idempotent").await;
        assert_eq!(
            (rsp.status, rsp.text()),
            (StatusCode::OK, "conn 2: not idempotent".to_owned()),
            "{away:?}: {}",
            proxy.log()
        );
        let streams = up.streams();
        match away {
            // Nothing more went on the going connection.
            Away::AtOnce | Away::Streaming => {
                assert_eq!(streams, [(1, 1), (2, 1)], "{away:?}")
            }
            // Stream 3 came before the GOAWAY did, which refused it.
            Away::OnTheNext | Away::AtTheNextsEnd => {
                assert_eq!(streams, [(1, 1), (1, 3), (2, 1)], "{away:?}")
            }
        }
        up.release();
        let rsp = held.await.expect("the held request");
        assert_eq!(
            (rsp.status, rsp.text()),
            (StatusCode::OK, "conn 1".to_owned())
        );
        let text = metrics(proxy.admin()).await;
        let codes =
            crate::support::metrics::label_values(&text, "rampart_upstream_requests_total", "code");
        assert_eq!(codes, ["200"], "{away:?}: no failure counted");
        let total = &[("upstream", "grpc"), ("code", "200")];
        assert_eq!(
            metric_value(&text, "rampart_upstream_requests_total", total),
            Some(2.0),
            "{away:?}: one try each"
        );
    }
}

/// An HTTP/2 upstream connection counts in `rampart_upstream_connections` until its socket
/// closes: one going away (`GOAWAY`) with a stream still streaming its answer counts beside the
/// new connection the next request opens, until that stream ends and it closes. Before, its
/// count went when hyper's dispatch task for it ended (as soon as the new connection took its
/// place), while its socket stayed open with the stream on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_going_away_counts_until_its_socket_closes() {
    let up = GoingAway::start(Away::Streaming).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let held = tokio::spawn(async move { http::get(addr, "/held", &[]).await });
    crate::assert_eventually!(up.streams().len() == 1, "{:?}", up.streams());
    // The GOAWAY reaches rampart before the next request does.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(connections(&proxy, up.addr).await, Some(1.0));
    let rsp = http::get(addr, "/next", &[]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 2".to_owned())
    );
    // The first connection's dispatch task ended with its last handle, replaced: its socket
    // is still open, its stream 1 streaming.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        connections(&proxy, up.addr).await,
        Some(2.0),
        "the connection going away still counts"
    );
    up.release();
    let rsp = held.await.expect("the held request");
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 1".to_owned())
    );
    crate::assert_eventually!(
        connections(&proxy, up.addr).await == Some(1.0),
        "the first closed with its stream: {:?}",
        connections(&proxy, up.addr).await
    );
}

/// What [`H2Crate`] does with each stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serve {
    /// Answers 200 (`content-type: application/grpc`) and the first bytes of a body, then
    /// stalls until the stream is reset: `/framed` sends one whole gRPC message, any other path
    /// bytes that end inside one ([`STALL_PARTIAL`]); `/silent` sends no answer at all.
    Stall,
    /// Resets with `REFUSED_STREAM` the first stream of each path; answers a later one 200
    /// `served: ` and the request's body.
    RefuseFirst,
    /// Answers 200 `hello` with `content-length: 5` given twice (the h2 library sends it).
    TwoLengths,
    /// Resets every stream with `REFUSED_STREAM`.
    RefuseAll,
    /// Reads each stream's request body to its end (kept in [`H2Crate::bodies`]), then resets
    /// the first stream of each path with `REFUSED_STREAM` (unprocessed, though all of it
    /// came) and answers a later one 200 `served: ` and the body.
    RefuseFirstWhole,
    /// Answers 204 with `content-length: 5` (which RFC 9110 §8.6 forbids) and `x-up: 1`.
    NoContent,
}

/// One gRPC message, `hi`: what `/framed` sends before it stalls.
const STALL_FRAMED: &[u8] = b"\0\0\0\0\x02hi";
/// The prefix of a 100-byte gRPC message and 3 of its bytes: what other paths send.
const STALL_PARTIAL: &[u8] = b"\0\0\0\0\x64abc";

/// An HTTP/2 server of the h2 crate on 127.0.0.1 (h2c), for what hyper's server does not show
/// or do: the reset a stream gets, a stream refused.
struct H2Crate {
    addr: SocketAddr,
    /// `(method, path)` of every stream, in order.
    streams: Arc<Mutex<Vec<(String, String)>>>,
    /// The reset each stalled stream got.
    resets: Arc<Mutex<Vec<h2::Reason>>>,
    /// `(path, body)` of every stream whose body was read whole ([`Serve::RefuseFirstWhole`]).
    bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Crate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Crate {
    async fn start(serve: Serve) -> H2Crate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let resets = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (streams, resets, bodies) = (streams.clone(), resets.clone(), bodies.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (streams, resets) = (streams.clone(), resets.clone());
                    let bodies = bodies.clone();
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(tcp).await else {
                            return;
                        };
                        while let Some(Ok((req, respond))) = conn.accept().await {
                            let (method, path) = (req.method().to_string(), req.uri().path());
                            let first = {
                                let mut s = streams.lock();
                                let first = !s.iter().any(|(_, p)| p == path);
                                s.push((method, path.to_owned()));
                                first
                            };
                            let resets = resets.clone();
                            if serve == Serve::RefuseFirstWhole {
                                let bodies = bodies.clone();
                                tokio::spawn(Self::whole(first, req, respond, bodies));
                                continue;
                            }
                            tokio::spawn(Self::stream(serve, first, req, respond, resets));
                        }
                    });
                }
            })
        };
        H2Crate {
            addr,
            streams,
            resets,
            bodies,
            task,
        }
    }

    /// [`Serve::RefuseFirstWhole`]'s stream.
    async fn whole(
        first: bool,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
    ) {
        let (parts, mut body) = req.into_parts();
        let mut got = Vec::new();
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        let got = Bytes::from(got);
        bodies
            .lock()
            .push((parts.uri.path().to_owned(), got.clone()));
        if first {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            return;
        }
        let Ok(mut send) = respond.send_response(Response::new(()), false) else {
            return;
        };
        let mut answer = b"served: ".to_vec();
        answer.extend_from_slice(&got);
        let _ = send.send_data(answer.into(), true);
    }

    fn bodies(&self) -> Vec<(String, Bytes)> {
        self.bodies.lock().clone()
    }

    async fn stream(
        serve: Serve,
        first: bool,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        resets: Arc<Mutex<Vec<h2::Reason>>>,
    ) {
        let (parts, mut body) = req.into_parts();
        if serve == Serve::RefuseAll || (serve == Serve::RefuseFirst && first) {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            return;
        }
        if serve == Serve::NoContent {
            let head = Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("content-length", "5")
                .header("x-up", "1")
                .body(())
                .expect("head");
            let _ = respond.send_response(head, true);
            return;
        }
        let mut got = Vec::new();
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        if serve == Serve::TwoLengths {
            let head = Response::builder()
                .header("content-length", "5")
                .header("content-length", "5")
                .body(())
                .expect("head");
            if let Ok(mut send) = respond.send_response(head, false) {
                let _ = send.send_data(Bytes::from_static(b"hello"), true);
            }
            return;
        }
        if serve == Serve::Stall && parts.uri.path() == "/silent" {
            if let Ok(reason) = std::future::poll_fn(|cx| respond.poll_reset(cx)).await {
                resets.lock().push(reason);
            }
            return;
        }
        let head = Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("head");
        let Ok(mut send) = respond.send_response(head, false) else {
            return;
        };
        if serve == Serve::RefuseFirst {
            let mut answer = b"served: ".to_vec();
            answer.extend_from_slice(&got);
            let _ = send.send_data(answer.into(), true);
            return;
        }
        let first = match parts.uri.path() {
            "/framed" => STALL_FRAMED,
            _ => STALL_PARTIAL,
        };
        let _ = send.send_data(Bytes::from_static(first), false);
        if let Ok(reason) = std::future::poll_fn(|cx| send.poll_reset(cx)).await {
            resets.lock().push(reason);
        }
    }

    fn streams(&self) -> Vec<(String, String)> {
        self.streams.lock().clone()
    }

    fn resets(&self) -> Vec<h2::Reason> {
        self.resets.lock().clone()
    }
}

/// A route whose requests have 500 ms (`timeout.request`) to the HTTP/2 upstream.
const BOUNDED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 $EXTRA }
policies:
  bounded:
    timeout: { request: 500ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: grpc, policy: bounded }
"#;

/// A route whose answers from the HTTP/2 upstream may pause 300 ms at most
/// (`timeout.idle`), and no request timeout.
const IDLE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 $EXTRA }
policies:
  quiet:
    timeout: { idle: 300ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: grpc, policy: quiet }
"#;

/// `timeout.idle` bounds an HTTP/2 upstream as it bounds an HTTP/1.1 one, on a route without
/// `timeout.request`: a stream that stalls after its head and some bytes is let go at the
/// limit (the upstream sees it reset, `CANCEL`), the client's answer cut short there, the line
/// logged `timeout`; one that sends no head at all is a 504 `timeout` at the limit, its
/// stream reset too; both counted as `kind="idle"`. Before, each held its request for as
/// long as the upstream stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_cuts_an_h2_upstream_that_stalls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = H2Crate::start(Serve::Stall).await;
    let proxy = fronted(IDLE, up.addr, "").await;
    let addr = proxy.listener("inbound");
    let about_the_limit = |t0: tokio::time::Instant, what: &str| {
        let took = t0.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(280)
                && took < std::time::Duration::from_millis(1500),
            "{what}: cut at the idle limit: {took:?}"
        );
    };

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let t0 = tokio::time::Instant::now();
    let mut got = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "the connection ends: {text:?}");
    about_the_limit(t0, "in the body");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("abc"), "the bytes that came passed: {text:?}");
    assert!(!text.ends_with("0\r\n\r\n"), "cut short: {text:?}");

    let t0 = tokio::time::Instant::now();
    let rsp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http::get(addr, "/silent", &[]),
    )
    .await
    .expect("answered, not left waiting");
    rsp.assert_rampart(504, "timeout");
    about_the_limit(t0, "before the head");

    crate::assert_eventually!(
        up.resets() == [h2::Reason::CANCEL; 2],
        "the upstream's streams were reset: {:?}",
        up.resets()
    );
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_timeouts_total", &[("kind", "idle")]),
        Some(2.0),
        "{text}"
    );
    let line = &logged(&proxy, "/stall", 1).await[0];
    assert_eq!(
        (line["status"].as_u64(), line["reason"].as_str()),
        (Some(200), Some("timeout")),
        "{line}"
    );
}

/// How long after `t0` an answer cut at the 500 ms deadline may end.
fn at_the_deadline(t0: tokio::time::Instant, what: &str) {
    let took = t0.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(450)
            && took < std::time::Duration::from_millis(1500),
        "{what}: ended at the deadline, not the upstream's stall: {took:?}"
    );
}

/// The request timeout covers an HTTP/2 upstream's answer body as it covers an HTTP/1.1
/// one's: a stream that stalls after its head and some bytes is let go at the deadline (the
/// upstream sees it reset with CANCEL, and stops), the client's answer is cut short there (an
/// HTTP/1.1 client's connection closed without the last chunk, an HTTP/2 client's stream
/// reset), and the timeout is counted and logged (the answer's status, the bytes sent). Before,
/// it held the client (and the request's slot) for as long as the upstream stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_cuts_an_h2_upstreams_stalled_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = H2Crate::start(Serve::Stall).await;
    let proxy = fronted(BOUNDED, up.addr, "").await;
    let addr = proxy.listener("inbound");

    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let t0 = tokio::time::Instant::now();
    let mut got = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the connection ends: {:?}",
        String::from_utf8_lossy(&got)
    );
    at_the_deadline(t0, "HTTP/1.1");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("abc"), "the bytes that came passed: {text:?}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "cut short, never a whole chunked body: {text:?}"
    );

    let mut send = http::h2c(addr).await;
    let req = Request::get("http://grpc.internal/stall")
        .body(http::empty())
        .expect("request");
    let t0 = tokio::time::Instant::now();
    let rsp = send.send_request(req).await.expect("an answer");
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), rsp.into_body().collect())
        .await
        .expect("the stream ends");
    assert!(
        body.is_err(),
        "reset, never an end: {:?}",
        body.map(|b| b.to_bytes())
    );
    at_the_deadline(t0, "HTTP/2");

    crate::assert_eventually!(
        up.resets() == [h2::Reason::CANCEL; 2],
        "the upstream's streams were reset: {:?}",
        up.resets()
    );
    assert_eq!(up.streams().len(), 2, "a cut answer is never asked again");
    let text = metrics(proxy.admin()).await;
    let request = [("kind", "request")];
    assert_eq!(
        metric_value(&text, "rampart_timeouts_total", &request),
        Some(2.0),
        "{text}"
    );
    for line in logged(&proxy, "/stall", 2).await {
        assert_eq!(
            (line["status"].as_u64(), line["bytes_out"].as_u64()),
            (Some(200), Some(STALL_PARTIAL.len() as u64)),
            "{line}"
        );
    }
}

/// The request deadline cuts an HTTP/2 upstream's answer whose frames never stop coming on
/// time, as it cuts one that stalls: the upstream sends as fast as flow control lets it, and
/// the client (HTTP/2, its stream window 64 KiB, a frame read a millisecond) lets rampart
/// take less at a time than its own window for the upstream holds, so a frame is always
/// waiting. The client's stream is reset within a few milliseconds of the 500 ms deadline,
/// the upstream's stream too, the timeout counted and the line logged. Before, the deadline
/// was looked at only when the stream had nothing to give, so this one ran on (for the 10 GB
/// it was asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_cuts_an_h2_upstreams_answer_that_never_pauses() {
    const ENDLESS: &str = "/bytes/10000000000";
    let up = H2Server::start(None).await;
    let proxy = fronted(BOUNDED, up.addr, "").await;
    let addr = proxy.listener("inbound");

    let mut send = http::h2c_window(addr, 64 * 1024).await;
    let req = Request::get(format!("http://grpc.internal{ENDLESS}"))
        .body(http::empty())
        .expect("request");
    let t0 = tokio::time::Instant::now();
    let rsp = send.send_request(req).await.expect("an answer");
    assert_eq!(rsp.status(), StatusCode::OK);
    let ended = http::frames_slowly(rsp.into_body(), std::time::Duration::from_secs(5))
        .await
        .expect("the stream ends, not still streaming 5 s on");
    assert!(ended.is_err(), "reset, never an end: {ended:?}");
    at_the_deadline(t0, "HTTP/2");

    let text = metrics(proxy.admin()).await;
    let request = [("kind", "request")];
    assert_eq!(
        metric_value(&text, "rampart_timeouts_total", &request),
        Some(1.0),
        "{text}"
    );
    let line = &logged(&proxy, ENDLESS, 1).await[0];
    assert_eq!(line["status"].as_u64(), Some(200), "{line}");
    let ms = line["duration_ms"].as_f64().expect("a duration");
    assert!((450.0..800.0).contains(&ms), "cut at the deadline: {line}");
    assert!(
        line["bytes_out"].as_u64().is_some_and(|b| b > 64 * 1024),
        "{line}"
    );
}

/// A gRPC call's answer still streaming at its deadline ends as rampart ends a call whose
/// deadline passes before the head: `grpc-status` DEADLINE_EXCEEDED, here in trailers after
/// the messages that came whole; its line has that status, and the upstream's stream is reset.
/// One cut inside a message cannot end with a status a client would read (the message is
/// broken): its stream is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_at_its_deadline_ends_with_deadline_exceeded() {
    let up = H2Crate::start(Serve::Stall).await;
    let proxy = fronted(BOUNDED, up.addr, "").await;
    let addr = proxy.listener("inbound");
    let call = |path: &'static str| async move {
        let mut send = http::h2c(addr).await;
        let req = post(path, &[("content-type", "application/grpc")]);
        let t0 = tokio::time::Instant::now();
        let rsp = send.send_request(req).await.expect("an answer");
        assert_eq!(rsp.status(), StatusCode::OK);
        let body =
            tokio::time::timeout(std::time::Duration::from_secs(5), rsp.into_body().collect())
                .await
                .expect("the stream ends");
        at_the_deadline(t0, path);
        body
    };

    let whole = call("/framed").await.expect("an end with trailers");
    let trailers = whole.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    assert!(trailers.contains_key("grpc-message"), "{trailers:?}");
    assert_eq!(whole.to_bytes().as_ref(), STALL_FRAMED);

    let broken = call("/partial").await;
    assert!(
        broken.is_err(),
        "reset: {:?}",
        broken.map(|b| b.trailers().cloned())
    );

    // An HTTP/1.1 client that did not say `te: trailers` would read trailers it never gets as
    // a whole answer: its connection is closed without the last chunk instead.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(
            b"POST /framed HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\n\
              content-length: 5\r\n\r\n\0\0\0\0\0",
        )
        .await
        .expect("write");
        let t0 = tokio::time::Instant::now();
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut got))
                .await;
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "the connection ends: {text:?}");
        at_the_deadline(t0, "HTTP/1.1 without te");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.ends_with("0\r\n\r\n") && !text.contains("grpc-status"),
            "cut short, never a whole answer: {text:?}"
        );
    }

    crate::assert_eventually!(
        up.resets() == [h2::Reason::CANCEL; 3],
        "the upstream's streams were reset: {:?}",
        up.resets()
    );
    let line = &logged(&proxy, "/framed", 2).await[0];
    assert_eq!(
        (line["status"].as_u64(), line["grpc_status"].as_u64()),
        (Some(200), Some(4)),
        "{line}"
    );
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_timeouts_total", &[("kind", "request")]),
        Some(3.0),
        "{text}"
    );
}

/// A stream the upstream resets with `REFUSED_STREAM` was not processed (RFC 9113 §8.7): rampart
/// sends the request again, whatever its method (a POST too, its body with it), on a route
/// without `retry`, and the client gets the answer; nothing counts it as a failure. Before
/// only `GOAWAY`'s refusals had a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_upstream_refused_goes_again() {
    let up = H2Crate::start(Serve::RefuseFirst).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");

    let rsp = http::get(addr, "/first", &[]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "served: ".to_owned())
    );
    let rsp = http::post(addr, "/second", &[], "not idempotent").await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "served: not idempotent".to_owned())
    );
    let streams = up.streams();
    let seen: Vec<(&str, &str)> = streams
        .iter()
        .map(|(m, p)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/first"),
            ("GET", "/first"),
            ("POST", "/second"),
            ("POST", "/second"),
        ],
        "each refused stream went again once"
    );
    let text = metrics(proxy.admin()).await;
    let codes =
        crate::support::metrics::label_values(&text, "rampart_upstream_requests_total", "code");
    assert_eq!(codes, ["200"], "no failure counted");
    let total = &[("upstream", "grpc"), ("code", "200")];
    assert_eq!(
        metric_value(&text, "rampart_upstream_requests_total", total),
        Some(2.0),
        "one try each"
    );
}

/// A stream the upstream refuses every time it goes (`REFUSED_STREAM`: it went again twice,
/// then the refusal is the try's) is a 502 that says so, to a GET and to a POST alike: the
/// upstream did not take the request, its connection was not lost. Before, the message said
/// "connection lost to upstream", which sent operators looking for a network fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_upstream_keeps_refusing_is_a_502_that_says_so() {
    let up = H2Crate::start(Serve::RefuseAll).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let get = http::get(addr, "/get", &[]).await;
    let post = http::post(addr, "/post", &[], "not idempotent").await;
    for rsp in [get, post] {
        rsp.assert_rampart(502, "upstream_unavailable");
        let text = rsp.text();
        assert!(
            text.contains(&format!("upstream grpc ({}) refused the stream", up.addr)),
            "{text}"
        );
        assert!(!text.contains("connection lost"), "{text}");
    }
    let streams = up.streams();
    let paths: Vec<&str> = streams.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/get", "/get", "/get", "/post", "/post", "/post"],
        "each went again twice before its refusal was the answer"
    );
}

/// A POST of `body` to `path` from an HTTP/2 client (h2c, a connection of its own): the
/// answer's status and body.
async fn h2_client_post(addr: SocketAddr, path: &str, body: http::ReqBody) -> (StatusCode, Bytes) {
    let mut send = http::h2c(addr).await;
    let req = Request::post(format!("http://grpc.internal{path}"))
        .body(body)
        .expect("request");
    let call = async {
        let rsp = send.send_request(req).await.expect("an answer");
        let status = rsp.status();
        (
            status,
            rsp.into_body()
                .collect()
                .await
                .expect("the body")
                .to_bytes(),
        )
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("answered in time")
}

/// An HTTP/2 client's POST (its body streamed, as every HTTP/2 upload is) whose stream the
/// upstream refused unprocessed (`REFUSED_STREAM`, after reading all of the body) goes again
/// as an HTTP/1.1 client's does, on a route without `retry`: the upstream gets the whole body
/// twice and the client its answer; one body in one DATA frame, and one in three (small
/// frames: sent again from the copy kept of them, in order). Before, the streamed body could not go again, and
/// the client got 502 "refused the stream" while the same POST from an HTTP/1.1 client got 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_clients_post_the_upstream_refused_unprocessed_goes_again() {
    let up = H2Crate::start(Serve::RefuseFirstWhole).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");

    let (status, body) = h2_client_post(addr, "/one", http::full("hello")).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"served: hello"[..]),
        "{}",
        proxy.log()
    );
    let frames = ["abc", "defg", "hij"].map(|d| Frame::data(Bytes::from_static(d.as_bytes())));
    let frames = http_body_util::combinators::UnsyncBoxBody::new(Frames(frames.into()));
    let (status, body) = h2_client_post(addr, "/three", frames).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"served: abcdefghij"[..]),
        "{}",
        proxy.log()
    );
    let seen: Vec<(String, Bytes)> = up.bodies();
    let expected = [
        ("/one", "hello"),
        ("/one", "hello"),
        ("/three", "abcdefghij"),
        ("/three", "abcdefghij"),
    ]
    .map(|(p, b)| (p.to_owned(), Bytes::from_static(b.as_bytes())));
    assert_eq!(seen, expected, "each went whole, refused, then whole again");
    let text = metrics(proxy.admin()).await;
    let codes =
        crate::support::metrics::label_values(&text, "rampart_upstream_requests_total", "code");
    assert_eq!(codes, ["200"], "no failure counted");
}

/// An HTTP/2 client's POST whose stream the upstream refused (`REFUSED_STREAM`) as soon as it
/// saw its head, while the client was still sending the body (three pieces, 300 ms apart),
/// goes again on a route without `retry`: what was read of it, then the rest as it comes. The
/// upstream gets the whole body once, on the stream it takes, and the client its answer.
/// Before, a refusal that found the body still coming could not send it again: a 502
/// "refused the stream", though the upstream had processed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_clients_post_refused_while_it_is_still_sending_goes_again() {
    let up = H2Crate::start(Serve::RefuseFirst).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let (tx, body) = http::piecemeal();
    let sending = tokio::spawn(async move {
        for piece in ["abc", "defg", "hij"] {
            let piece = Bytes::from_static(piece.as_bytes());
            tx.send(piece).await.expect("the client's body is read");
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    let (status, body) = h2_client_post(addr, "/trickled", body).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"served: abcdefghij"[..]),
        "{}",
        proxy.log()
    );
    sending.await.expect("all of it sent");
    let streams = up.streams();
    let seen: Vec<(&str, &str)> = streams
        .iter()
        .map(|(m, p)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(seen, [("POST", "/trickled"), ("POST", "/trickled")]);
}

/// An HTTP/2 client's upload larger than what a route without `retry` keeps for sending again
/// (64 KiB) is not kept: its stream refused unprocessed is a 502 that says so, as before, and
/// the upstream saw it once. One of exactly 64 KiB is kept and goes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_clients_upload_over_the_replay_cap_is_not_sent_again() {
    let up = H2Crate::start(Serve::RefuseFirstWhole).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");

    let large = Bytes::from(vec![b'x'; 64 * 1024 + 1]);
    let (status, body) = h2_client_post(addr, "/large", http::full(large.clone())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{}", proxy.log());
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("refused the stream"), "{text}");
    let at_cap = Bytes::from(vec![b'y'; 64 * 1024]);
    let (status, body) = h2_client_post(addr, "/at-cap", http::full(at_cap.clone())).await;
    assert_eq!(status, StatusCode::OK, "{}", proxy.log());
    assert_eq!(body.len(), "served: ".len() + at_cap.len());
    let seen: Vec<(String, usize)> = up.bodies().into_iter().map(|(p, b)| (p, b.len())).collect();
    let expected = [
        ("/large", large.len()),
        ("/at-cap", at_cap.len()),
        ("/at-cap", at_cap.len()),
    ]
    .map(|(p, n)| (p.to_owned(), n));
    assert_eq!(seen, expected);
}

/// An HTTP/2 client's POST on a stream above an upstream's `GOAWAY` (sent once the request
/// came whole) was not processed: it goes again, body and all, on a new connection, on a
/// route without `retry`. Before, only a body in memory (an HTTP/1.1 client's) went again,
/// and an HTTP/2 client's was a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_clients_post_above_a_goaway_goes_again() {
    let up = GoingAway::start(Away::AtTheNextsEnd).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let held = tokio::spawn(async move { http::get(addr, "/held", &[]).await });
    crate::assert_eventually!(up.streams().len() == 1, "{:?}", up.streams());
    let (status, body) = h2_client_post(addr, "/next", http::full("hello")).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, &b"conn 2: hello"[..]),
        "{}",
        proxy.log()
    );
    assert_eq!(up.streams(), [(1, 1), (1, 3), (2, 1)]);
    up.release();
    let rsp = held.await.expect("the held request");
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 1".to_owned())
    );
}

/// An HTTP/2 upstream's 204 with a `content-length` reaches an HTTP/2 client and an HTTP/1.1
/// one without it (RFC 9110 §8.6: a server must not send one in a 204), its other headers
/// kept, as an HTTP/1.1 upstream's 204 does (`upstream_h1/framing.rs`). Before, both clients
/// got `content-length: 5`: an HTTP/2 client other than the h2 library's may reset such a
/// stream, and an HTTP/1.1 one may wait for 5 bytes that never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstreams_204_reaches_clients_without_its_content_length() {
    let up = H2Crate::start(Serve::NoContent).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let rsp = http::h2_get(addr, "/204", &[]).await;
    assert_eq!(rsp.status, StatusCode::NO_CONTENT);
    assert!(
        rsp.headers.get("content-length").is_none(),
        "{:?}",
        rsp.headers
    );
    assert_eq!(rsp.header("x-up"), Some("1"), "{:?}", rsp.headers);
    let req = b"GET /204 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let rsp = crate::support::raw::exchange(addr, req, std::time::Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(rsp.status(), Some(204), "{text}");
    assert!(rsp.header("content-length").is_none(), "{text}");
    assert_eq!(rsp.header("x-up").as_deref(), Some("1"), "{text}");
}

/// An HTTP/2 upstream's answer with `content-length: 5` given twice (the h2 library takes
/// equal values) reaches an HTTP/2 client with one `content-length`, as an HTTP/1.1 upstream's
/// does; an HTTP/1.1 client gets one line too. Before, hyper's side of the listener passed both
/// fields on, and an HTTP/2 client other than the h2 library's (python-h2, browsers) resets
/// such a stream as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstreams_repeated_content_length_reaches_clients_as_one() {
    let up = H2Crate::start(Serve::TwoLengths).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let rsp = http::h2_get(addr, "/two", &[]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "hello".to_owned())
    );
    let lengths: Vec<_> = rsp.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"], "{:?}", rsp.headers);
    let rsp = http::get(addr, "/two", &[]).await;
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "hello".to_owned())
    );
    let lengths: Vec<_> = rsp.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"], "{:?}", rsp.headers);
}

/// A route whose calls carry idempotency keys, in front of the h2c test server.
const KEYED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  grpc: { endpoints: [$UP], protocol: http2 $EXTRA }
policies:
  keyed:
    idempotency: { ttl: 1h, max_body: 4KiB, max_entries: 100 }
    circuit_breaker: { consecutive_failures: 100, open_for: 1s }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $LOG }
    routes:
      - { upstream: grpc, policy: keyed }
"#;

/// A keyed gRPC call whose answer streams is kept with its trailers, and its repeat gets them
/// back after the message (`grpc-status: 0`), over HTTP/2 and to an HTTP/1.1 client that asks
/// for trailers (chunked, the trailers announced), without reaching the upstream again. Before,
/// the repeat ended with the message alone: "stream ended without status" for a gRPC client.
/// A failed call is not kept, so its repeat runs again: a failing status in the trailers
/// (UNAVAILABLE), none at all, or one in a Trailers-Only head, all HTTP 200s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_grpc_call_is_replayed_with_its_trailers_and_a_failed_one_is_not_kept() {
    use std::time::Duration;
    let up = H2Server::start(None).await;
    let proxy = fronted(KEYED, up.addr, "").await;
    let addr = proxy.listener("inbound");
    let grpc = |key: &'static str| {
        [
            ("content-type", "application/grpc"),
            ("idempotency-key", key),
        ]
    };
    let calls = |path: &str| up.seen().iter().filter(|s| s.path == path).count();

    let first = h2_post_with(addr, "/trailed/ok", &grpc("ok-1")).await;
    assert_eq!(first.body.as_ref(), b"message");
    assert_eq!(
        first.trailers.as_ref().map(|t| &t["grpc-status"]),
        Some(&"0".parse().expect("value"))
    );
    assert!(first.headers.get("x-rampart-idempotent-replay").is_none());
    let again = h2_post_with(addr, "/trailed/ok", &grpc("ok-1")).await;
    assert_eq!(again.headers["x-rampart-idempotent-replay"], "true");
    assert_eq!(
        (again.status, again.body.as_ref()),
        (StatusCode::OK, &b"message"[..])
    );
    let t = again
        .trailers
        .expect("the replay ends with the kept trailers");
    assert_eq!(t["grpc-status"], "0", "{t:?}");
    assert_eq!(calls("/trailed/ok"), 1, "the repeat was replayed");

    // The same repeat from an HTTP/1.1 client that reads trailers.
    let asks =
        b"POST /trailed/ok HTTP/1.1\r\nhost: grpc.internal\r\ncontent-type: application/grpc\r\n\
                 idempotency-key: ok-1\r\nte: trailers\r\ncontent-length: 5\r\n\
                 connection: close\r\n\r\n\0\0\0\0\0";
    let rsp = crate::support::raw::exchange(addr, asks, Duration::from_secs(10)).await;
    let text = rsp.text();
    assert_eq!(
        rsp.header("x-rampart-idempotent-replay").as_deref(),
        Some("true"),
        "{text}"
    );
    assert_eq!(
        rsp.header("transfer-encoding").as_deref(),
        Some("chunked"),
        "{text}"
    );
    assert_eq!(rsp.header("content-length"), None, "{text}");
    assert!(
        text.ends_with("\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "{text:?}"
    );
    assert_eq!(calls("/trailed/ok"), 1);

    for (path, key) in [
        ("/trailed/unavailable", "failed-1"),
        ("/trailed/none", "bare-1"),
        ("/unavailable", "head-1"),
    ] {
        for n in 1..=2 {
            let rsp = h2_post_with(addr, path, &grpc(key)).await;
            assert_eq!(rsp.status, StatusCode::OK, "{path}");
            assert!(
                rsp.headers.get("x-rampart-idempotent-replay").is_none(),
                "{path} #{n}"
            );
            assert_eq!(
                calls(path),
                n,
                "{path}: a failed call is not kept, its repeat runs"
            );
        }
    }
}

/// An HTTP/1.1 client's `expect: 100-continue` is met by rampart (its `100 Continue`, then the
/// body read): the HTTP/2 upstream gets the request without it, as an expectation already
/// met. Before, it was passed on, asking the upstream for a `100` nobody waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_not_passed_to_an_h2_upstream() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let req = b"POST /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    let rsp = crate::support::raw::exchange(
        proxy.listener("inbound"),
        req,
        std::time::Duration::from_secs(10),
    )
    .await;
    let text = rsp.text();
    assert!(text.contains("hello"), "{text}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].headers.contains_key("expect"),
        "{:?}",
        seen[0].headers
    );
}

/// An HTTP/2 upstream's field values with spaces or tabs at either end (malformed over HTTP/2,
/// RFC 9113 §8.2.1) reach the client trimmed, as an HTTP/1.1 upstream's are read: an HTTP/2
/// client gets a stream it can read, and an HTTP/1.1 one the same values. Before, they went
/// out as sent and an HTTP/2 client (nghttp, h2) reset the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstreams_padded_field_values_are_trimmed() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    for rsp in [
        http::h2_get(addr, "/padded", &[]).await,
        http::get(addr, "/padded", &[]).await,
    ] {
        assert_eq!(rsp.status, StatusCode::OK, "{rsp:?}");
        assert_eq!(rsp.headers["x-a"], "v", "{rsp:?}");
        assert_eq!(rsp.headers["x-b"], "w", "{rsp:?}");
        assert_eq!(rsp.headers["x-c"], "", "{rsp:?}");
        assert_eq!(rsp.body, "ok");
    }
}
