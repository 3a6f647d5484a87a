//! The built-in sample upstream: a small HTTP/1.1 + h2c server with endpoints that misbehave
//! on request.
//!
//! `rampart demo`, the load benchmark and every end-to-end test put rampart in front of this
//! service, so each policy has something to act on: slow answers for timeouts, 503s for retries
//! and breakers, streamed bodies for the proxy's streaming path, dropped connections for resets.
//! Every answer carries `x-sample-addr` so a test can tell which endpoint served it, and the
//! service counts what it served so a test can tell how many tries reached it.
//!
//! | path | answer |
//! | --- | --- |
//! | `/`, `/ok` | 200 `ok\n` |
//! | `/slow?ms=N` | 200 after N ms |
//! | `/status/CODE[?retry_after=S]` | that status (and `retry-after: S`) |
//! | `/flaky?fail=PERCENT` | 503 with that probability, else 200 |
//! | `/fail-first/N[?key=K]` | 503 for the first N hits of key K (default: the path), then 200 |
//! | `/echo` | the request body, streamed back as it arrives, same content-type |
//! | `/headers` | JSON `{method, uri, version, headers}` of the request as received |
//! | `/bytes/N` | N bytes, in 64 KiB chunks |
//! | `/drip?chunks=K&ms=N` | K chunks, N ms apart |
//! | `/abort` | the connection is dropped without an answer |
//! | `/conn` | 200, the number of the connection it came on (1 for the first accepted) |
//! | `/healthz` | 200, or 503 after `set_healthy(false)` |
//! | `/hits` | JSON `{total, by_path}` |

mod body;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type SampleBody = UnsyncBoxBody<Bytes, BoxError>;

/// Name of the header that tells which sample instance answered.
pub const ADDR_HEADER: &str = "x-sample-addr";

/// A running sample service. Dropping it (or [`Sample::stop`]) stops it.
#[derive(Debug)]
pub struct Sample {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
}

/// What the handlers share: counters and switches a test can read and flip.
#[derive(Debug)]
struct State {
    addr: HeaderValue,
    total: AtomicU64,
    by_path: DashMap<String, AtomicU64>,
    fail_first: DashMap<String, AtomicU64>,
    healthy: AtomicBool,
    open_conns: AtomicU64,
    peak_conns: AtomicU64,
    accepted: AtomicU64,
    active: AtomicU64,
    peak_active: AtomicU64,
}

/// The handler's failure; hyper closes the connection when it sees one.
#[derive(Debug, thiserror::Error)]
#[error("aborted on request")]
struct Aborted;

// === impl Sample ===

impl Sample {
    /// Binds `addr` (port 0 picks a free port), starts serving in the background and returns
    /// once the socket is listening, so a client may connect at once.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Sample> {
        // rampart's own listeners' backlog (`proxy::bind`): a proxy opening hundreds of
        // connections at once (an HTTP/2 fan-out) would overflow the 128 of
        // `TcpListener::bind`, and SYNs dropped there wait a second to be sent again.
        let listener = {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(crate::proxy::bind::BACKLOG)?;
            TcpListener::from_std(s.into())?
        };
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            addr: HeaderValue::from_str(&addr.to_string()).map_err(std::io::Error::other)?,
            total: AtomicU64::new(0),
            by_path: DashMap::new(),
            fail_first: DashMap::new(),
            healthy: AtomicBool::new(true),
            open_conns: AtomicU64::new(0),
            peak_conns: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            peak_active: AtomicU64::new(0),
        });
        let (shutdown, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), stopped));
        Ok(Sample {
            addr,
            state,
            shutdown,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests served since start (or the last [`Sample::reset`]), every path included.
    pub fn hits(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at once since start (or the last reset).
    pub fn peak_in_flight(&self) -> u64 {
        self.state.peak_active.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once since start.
    pub fn peak_connections(&self) -> u64 {
        self.state.peak_conns.load(Ordering::SeqCst)
    }

    /// Connections accepted since start (a pooled connection reused counts once).
    pub fn connections(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.state.open_conns.load(Ordering::SeqCst)
    }

    /// Requests served for `path` (the path without its query).
    pub fn hits_for(&self, path: &str) -> u64 {
        self.state
            .by_path
            .get(path)
            .map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// Zeroes the counters and forgets the `/fail-first` progress of every key.
    pub fn reset(&self) {
        self.state.total.store(0, Ordering::SeqCst);
        self.state.by_path.clear();
        self.state.fail_first.clear();
        self.state.peak_active.store(0, Ordering::SeqCst);
    }

    /// Makes `/healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, ok: bool) {
        self.state.healthy.store(ok, Ordering::SeqCst);
    }

    /// Stops accepting and closes every open connection. The same happens on drop; the
    /// listening socket is closed by the background task shortly after this returns.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

// === impl State ===

impl State {
    fn count(&self, path: &str) {
        self.total.fetch_add(1, Ordering::SeqCst);
        self.by_path
            .entry(path.to_owned())
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a `/fail-first` hit for `key`; returns how many came before it.
    fn fail_first_hit(&self, key: String) -> u64 {
        self.fail_first
            .entry(key)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::SeqCst)
    }
}

/// Serves the sample on `addr` until Ctrl-C or SIGTERM; used by `rampart sample --listen`.
pub async fn serve_forever(addr: SocketAddr) -> std::io::Result<()> {
    let sample = Sample::start(addr).await?;
    tracing::info!(addr = %sample.addr(), "sample service listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("sample service stopping");
    sample.stop();
    Ok(())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = wait_stopped(stopped.clone()) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_conn(stream, state.clone(), stopped.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn wait_stopped(mut stopped: watch::Receiver<bool>) {
    // An error means the `Sample` is gone, which is a stop too.
    let _ = stopped.wait_for(|s| *s).await;
}

async fn serve_conn(stream: TcpStream, state: Arc<State>, stopped: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let number = state.accepted.fetch_add(1, Ordering::SeqCst) + 1;
    let open = state.open_conns.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak_conns.fetch_max(open, Ordering::SeqCst);
    let counted = state.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move {
            let addr = state.addr.clone();
            let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
            state.peak_active.fetch_max(now, Ordering::SeqCst);
            let counted = state.clone();
            let rsp: Result<Response<SampleBody>, Aborted> = handle(state, req, number).await;
            counted.active.fetch_sub(1, Ordering::SeqCst);
            rsp.map(|mut rsp| {
                rsp.headers_mut().insert(ADDR_HEADER, addr);
                rsp
            })
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    // Stopping drops the connection outright: a stopped sample is a dead upstream.
    tokio::select! {
        _ = conn => {}
        _ = wait_stopped(stopped) => {}
    }
    counted.open_conns.fetch_sub(1, Ordering::SeqCst);
}

/// Answers `req`, the request that came on connection `number`.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    number: u64,
) -> Result<Response<SampleBody>, Aborted> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query());
    state.count(&path);

    let num = |key: &str| query.get(key).and_then(|v| v.parse::<u64>().ok());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rsp = match segments.as_slice() {
        [""] | ["ok"] => text(StatusCode::OK, "ok\n"),
        ["slow"] => {
            tokio::time::sleep(Duration::from_millis(num("ms").unwrap_or(0))).await;
            text(StatusCode::OK, "ok\n")
        }
        ["status", code] => status_answer(code, query.get("retry_after")),
        ["flaky"] => {
            let fail = num("fail").unwrap_or(50);
            if fastrand::u64(0..100) < fail {
                text(StatusCode::SERVICE_UNAVAILABLE, "flaky\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        ["fail-first", n] => {
            // Reads the whole upload first, as a service that validates its input does: a
            // test of retry rules must not depend on whether an early answer races the upload
            // (`/status` and `/echo` are there for early answers and streaming).
            let _ = req.into_body().collect().await;
            let n = n.parse::<u64>().unwrap_or(0);
            let key = query.get("key").cloned().unwrap_or_else(|| path.clone());
            if state.fail_first_hit(key) < n {
                text(StatusCode::SERVICE_UNAVAILABLE, "failing first\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        ["echo"] => echo(req),
        ["headers"] => json(StatusCode::OK, &headers_json(&req)),
        ["bytes", n] => match n.parse::<u64>() {
            Ok(n) => with_body(StatusCode::OK, body::Repeat::new(n).map_err(|e| match e {})),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length\n"),
        },
        ["drip"] => drip(num("chunks").unwrap_or(5), num("ms").unwrap_or(100)),
        ["abort"] => return Err(Aborted),
        ["conn"] => text_owned(StatusCode::OK, format!("{number}\n")),
        ["healthz"] if state.healthy.load(Ordering::SeqCst) => text(StatusCode::OK, "ok\n"),
        ["healthz"] => text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n"),
        ["hits"] if req.method() == Method::GET => json(StatusCode::OK, &hits_json(&state)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(rsp)
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

fn status_answer(code: &str, retry_after: Option<&String>) -> Response<SampleBody> {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return text(StatusCode::BAD_REQUEST, "bad status\n");
    };
    let mut rsp = text(status, "status\n");
    if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(s).ok()) {
        rsp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    rsp
}

fn echo(req: Request<Incoming>) -> Response<SampleBody> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    // The request body becomes the response body frame by frame: nothing is buffered here.
    let body = req.into_body().map_err(|e| -> BoxError { Box::new(e) });
    let mut rsp = with_body(StatusCode::OK, body);
    if let Some(ct) = content_type {
        rsp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    rsp
}

fn drip(chunks: u64, ms: u64) -> Response<SampleBody> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                return; // the client went away
            }
        }
    });
    with_body(
        StatusCode::OK,
        body::Channel::new(rx).map_err(|e| match e {}),
    )
}

fn headers_json(req: &Request<Incoming>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>"))
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    })
}

fn hits_json(state: &State) -> serde_json::Value {
    let by_path: BTreeMap<String, u64> = state
        .by_path
        .iter()
        .map(|e| (e.key().clone(), e.value().load(Ordering::SeqCst)))
        .collect();
    serde_json::json!({ "total": state.total.load(Ordering::SeqCst), "by_path": by_path })
}

fn text(status: StatusCode, body: &'static str) -> Response<SampleBody> {
    text_owned(status, Bytes::from_static(body.as_bytes()))
}

fn text_owned(status: StatusCode, body: impl Into<Bytes>) -> Response<SampleBody> {
    let mut rsp = with_body(
        status,
        Full::new(body.into()).map_err(|e: Infallible| match e {}),
    );
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<SampleBody> {
    let mut rsp = with_body(
        status,
        Full::new(Bytes::from(value.to_string())).map_err(|e: Infallible| match e {}),
    );
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

fn with_body<B>(status: StatusCode, body: B) -> Response<SampleBody>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    let mut rsp = Response::new(UnsyncBoxBody::new(body));
    *rsp.status_mut() = status;
    rsp
}
