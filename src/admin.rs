//! The admin listener (SPEC §4): `/metrics`, `/healthz`, `/readyz`, `/config`, `/reload`,
//! `/state`.
//!
//! It runs on its own socket, apart from traffic, so operators and probes reach it while the
//! data listeners drain. `POST /reload` is honoured only from loopback peers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::proxy::conn::{Close, ConnState};

use crate::proxy::body::Body;
use crate::proxy::shared::Shared;
use crate::reload::{self, ReloadError};

/// Connections the admin listener serves at once; more wait in the accept queue. Probes and a
/// scraper need a handful; the cap keeps idle sockets from piling up on an exposed admin port.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long an admin connection may wait for its first request's head before it is closed (at
/// most; the config's `header_read_timeout` when shorter). Admin clients (probes, scrapers,
/// curl) send at once; silent holders are shed well within `rampart health`'s default 2 s
/// budget, so [`ADMIN_MAX_CONNECTIONS`] sockets opened and left silent cannot keep a probe
/// waiting past it.
pub const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an admin connection may sit between an answer and its next request (at most; the
/// config's `idle_timeout` when shorter). Longer than [`ADMIN_HEAD_TIMEOUT`]: a client that
/// reuses its connection a second or more later (a scraper every few seconds) must not race
/// the close, which a client that does not retry a reused connection (Python's `http.client`)
/// sees as a failed request. Idle holders are still shed within this.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints on `tcp` until the process ends.
///
/// Connections get the data listeners' head and idle timeouts (from the config in force),
/// capped at [`ADMIN_HEAD_TIMEOUT`] and [`ADMIN_IDLE_TIMEOUT`], and at most
/// [`ADMIN_MAX_CONNECTIONS`] are served at once (SPEC §14). A connection that comes when all
/// places are taken closes the longest-idle kept-alive one (no request in flight) to take its
/// place, so kept-alive connections cannot keep a probe waiting for their idle timeout; when
/// none is idle it waits for a place.
pub fn spawn(shared: Arc<Shared>, tcp: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let limit = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
        let held = Arc::new(Held::default());
        loop {
            let (stream, peer) = match tcp.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let permit = match limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if !held.evict_longest_idle() {
                        tracing::debug!(
                            "admin connections all busy; the new one waits for a place"
                        );
                    }
                    match limit.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    }
                }
            };
            let shared = shared.clone();
            let builder = builder.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let (head, idle) = {
                    let gen = shared.current.load();
                    let rt = &gen.config.file.runtime;
                    (
                        rt.header_read_timeout.0.min(ADMIN_HEAD_TIMEOUT),
                        rt.idle_timeout.0.min(ADMIN_IDLE_TIMEOUT),
                    )
                };
                let state = ConnState::new();
                let place = held.add(state.clone());
                let svc = {
                    let state = state.clone();
                    service_fn(move |req| {
                        let shared = shared.clone();
                        let active = state.begin();
                        async move {
                            let rsp = route(&shared, req, peer).await;
                            drop(active);
                            Ok::<_, Infallible>(rsp)
                        }
                    })
                };
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    close = state.watch(head, idle) => {
                        if close == Close::Idle {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(head, conn).await;
                        }
                    }
                    () = place.evict.notified() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(head, conn).await;
                    }
                }
                held.remove(place.id);
                drop(permit);
            });
        }
    })
}

/// The admin connections being served, for closing the longest-idle one when a new connection
/// finds every place taken. Only the accept loop and connections' starts and ends touch it (never
/// a request), and no lock is held across an await.
#[derive(Default)]
struct Held {
    conns: parking_lot::Mutex<Vec<Place>>,
    next: std::sync::atomic::AtomicU64,
}

/// One admin connection's entry in [`Held`].
#[derive(Clone)]
struct Place {
    id: u64,
    state: Arc<ConnState>,
    /// Told once, to close the connection gracefully (h1: closed between requests; h2: GOAWAY).
    evict: Arc<tokio::sync::Notify>,
}

impl Held {
    fn add(&self, state: Arc<ConnState>) -> Place {
        let place = Place {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            state,
            evict: Arc::new(tokio::sync::Notify::new()),
        };
        self.conns.lock().push(place.clone());
        place
    }

    fn remove(&self, id: u64) {
        self.conns.lock().retain(|p| p.id != id);
    }

    /// Tells the connection idle for longest (a request answered, none in flight) to close, and
    /// takes it out of the table so it is not picked twice. Returns whether there was one.
    fn evict_longest_idle(&self) -> bool {
        let mut conns = self.conns.lock();
        let oldest = conns
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.state.idle_since().map(|since| (since, i)))
            .min();
        let Some((_, i)) = oldest else {
            return false;
        };
        let place = conns.swap_remove(i);
        drop(conns);
        place.evict.notify_one();
        true
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // HEAD is GET without the body (hyper leaves the body out of a HEAD answer), as probes and
    // monitors expect of any GET endpoint (RFC 9110 §9.3.2).
    let method = match req.method() {
        &Method::HEAD => &Method::GET,
        m => m,
    };
    match (method, req.uri().path()) {
        (&Method::GET, "/metrics") => {
            shared
                .metrics
                .tenants_tracked
                .set(shared.tracked_tenants() as i64);
            for up in shared.current.load().upstreams.values() {
                up.refresh_health_gauges();
            }
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                shared.metrics.render(),
            )
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(shared),
        (&Method::GET, "/config") => config(shared),
        (&Method::GET, "/state") => json(StatusCode::OK, state(shared)),
        (&Method::POST, "/reload") => {
            // A dual-stack (`[::]`) admin listener sees an IPv4 client as `::ffff:a.b.c.d`.
            if !peer.ip().to_canonical().is_loopback() {
                let msg = "reload is allowed from loopback peers only";
                return json(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({"result": "forbidden", "errors": [msg]}),
                );
            }
            match reload::reload(shared, crate::audit::Source::Post).await {
                Ok(sha) => json(
                    StatusCode::OK,
                    serde_json::json!({"result": "success", "sha256": sha}),
                ),
                Err(ReloadError::Invalid(errs)) => {
                    let list: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
                    json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"result": "failure", "errors": list}),
                    )
                }
                Err(e @ ReloadError::Draining) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"result": "failure", "errors": [e.to_string()]}),
                ),
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"result": "failure", "errors": [e.to_string()]}),
                ),
            }
        }
        (_, path @ ("/metrics" | "/healthz" | "/readyz" | "/config" | "/state" | "/reload")) => {
            let allow = match path {
                "/reload" => "POST",
                _ => "GET, HEAD",
            };
            let mut rsp = json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method not allowed", "allow": allow}),
            );
            rsp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            rsp
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

fn readyz(shared: &Shared) -> Response<Body> {
    if shared.draining.load(Ordering::SeqCst) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "draining"}),
        );
    }
    if !shared.current.load().identify.is_ready() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "a jwt source's JWKS has not been fetched yet"}),
        );
    }
    if !shared.current.load().inbound_ready() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "no healthy endpoint for an inbound upstream"}),
        );
    }
    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
}

fn config(shared: &Shared) -> Response<Body> {
    let gen = shared.current.load();
    let c = &gen.config;
    let loaded_at = c
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    json(
        StatusCode::OK,
        serde_json::json!({
            "sha256": c.sha256,
            "loaded_at": loaded_at,
            "path": c.path.as_ref().map(|p| p.display().to_string()),
            "config": c.file,
        }),
    )
}

fn state(shared: &Shared) -> serde_json::Value {
    let gen = shared.current.load();
    let endpoints: serde_json::Map<String, serde_json::Value> = gen
        .upstreams
        .iter()
        .map(|(name, up)| (name.clone(), up.snapshot()))
        .collect();
    serde_json::json!({
        "draining": shared.draining.load(Ordering::SeqCst),
        "config_sha256": gen.config.sha256,
        "endpoints": endpoints,
        "breakers": gen
            .breakers
            .values()
            .map(|b| b.snapshot())
            .collect::<Vec<_>>(),
        "tenants_tracked": shared.tracked_tenants(),
        "global_store": gen.store.as_ref().map(|s| serde_json::json!({ "up": s.is_up() })),
        // The audit file written last, its head (sha256 of its last line) and its number of
        // entries: what to record elsewhere for `rampart audit verify --expect-head`.
        "audit": shared.audit.head(),
    })
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    text(status, "application/json", v.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut rsp = Response::new(Body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}
