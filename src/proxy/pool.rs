//! Upstream connections: keep-alive HTTP/1.1 connections per endpoint, reused in turn.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to hand the connection
//! back, clones the URI and pool key per request, and its pool is behind a mutex. Here a
//! connection goes back to its endpoint's lock-free queue when the response body ends (see
//! [`Returning`]), so the hot path has no spawn, no lock and no extra allocation. A connection
//! that the upstream closed is noticed when taken and discarded; a request that a dead pooled
//! connection did not send goes out on the next one, so keep-alive races never surface.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::Body;
use super::guard::Guards;

/// Idle connections of one endpoint.
#[derive(Debug)]
pub struct Pool {
    idle: ArrayQueue<Idle>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<TlsOrigin>,
    /// One permit per connection this endpoint may have open (`max_connections`); a permit
    /// lives as long as its connection.
    slots: Arc<Semaphore>,
    /// Woken when a connection goes idle or closes: a request waiting for one may go on.
    freed: Arc<Notify>,
}

/// An open connection's claim on one of its endpoint's `max_connections`.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

/// TLS towards an endpoint: the upstream's client config (swapped in place when a reload
/// re-reads its files) and the name to send as SNI and to verify.
#[derive(Debug, Clone)]
pub struct TlsOrigin {
    /// The upstream's client config, shared by its endpoints.
    pub config: Arc<ArcSwap<rustls::ClientConfig>>,
    /// SNI and verification name.
    pub server_name: Arc<str>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why a try got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// True when `connect_timeout` ran out.
        timed_out: bool,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The connection broke before a whole answer head came.
    #[error("connection to upstream lost: {0}")]
    Reset(#[source] hyper::Error),
}

/// The settings of one endpoint's pool, from its upstream's section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// `pool_max_idle`.
    pub max_idle: usize,
    /// `max_connections`.
    pub max_connections: usize,
    /// `connect_timeout` (TLS handshake included).
    pub connect_timeout: Duration,
    /// `pool_idle_timeout`.
    pub idle_timeout: Duration,
}

/// A response body that gives its connection back to the pool when it ends.
#[derive(Debug)]
pub struct Returning {
    body: Incoming,
    back: Option<(SendRequest<Body>, Arc<Pool>)>,
    /// What the request holds until this body ends (see `guard.rs`).
    pub(super) guards: Guards,
}

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle connections.
    pub fn new(settings: PoolSettings, tls: Option<TlsOrigin>) -> Arc<Pool> {
        Arc::new(Pool {
            idle: ArrayQueue::new(settings.max_idle.max(1)),
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            tls,
            slots: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            freed: Arc::new(Notify::new()),
        })
    }

    /// Sends `req` to `addr` over an idle connection, or a new one if the endpoint has fewer
    /// than `max_connections`; otherwise waits until one is free. The caller bounds the wait
    /// (the try's deadline).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        loop {
            while let Some(idle) = self.idle.pop() {
                if idle.since.elapsed() > self.idle_timeout {
                    continue;
                }
                let mut sender = idle.sender;
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(rsp) => return Ok(self.returning(rsp, sender)),
                    Err(mut e) => match e.take_message() {
                        // Not sent: the connection died while idle. Use the next one.
                        Some(unsent) => req = unsent,
                        None => return Err(SendError::Reset(e.into_error())),
                    },
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                let slot = Slot {
                    _permit: permit,
                    freed: self.freed.clone(),
                };
                let mut sender = self.connect(addr, slot).await?;
                let rsp = sender.send_request(req).await.map_err(SendError::Reset)?;
                return Ok(self.returning(rsp, sender));
            }
            // At the cap: wait for a connection to go idle or close, then look again.
            let freed = self.freed.notified();
            if self.idle.is_empty() {
                freed.await;
            }
        }
    }

    async fn connect(&self, addr: SocketAddr, slot: Slot) -> Result<SendRequest<Body>, SendError> {
        let deadline = Instant::now() + self.connect_timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(SendError::Connect {
                    addr,
                    timed_out: false,
                    source,
                })
            }
            Err(_) => return Err(connect_timed_out(addr)),
        };
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => handshake(addr, stream, slot).await,
            Some(tls) => {
                // Never plaintext to an upstream with `tls`: a failed handshake is a failed
                // connect (502), within the same connect timeout.
                let cfg = tls.config.load_full();
                let shake = crate::tls::connect(cfg, &tls.server_name, stream);
                match tokio::time::timeout_at(deadline, shake).await {
                    Ok(Ok(s)) => handshake(addr, s, slot).await,
                    Ok(Err(source)) => Err(SendError::Connect {
                        addr,
                        timed_out: false,
                        source,
                    }),
                    Err(_) => Err(connect_timed_out(addr)),
                }
            }
        }
    }

    fn returning(
        self: &Arc<Self>,
        rsp: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<Body> {
        rsp.map(|body| {
            let mut r = Returning {
                body,
                back: Some((sender, self.clone())),
                guards: Guards::default(),
            };
            if http_body::Body::is_end_stream(&r.body) {
                // Nobody may poll an empty body: hand the connection back now.
                r.give_back();
            }
            Body::Upstream(r)
        })
    }

    fn put(&self, sender: SendRequest<Body>) {
        if !sender.is_closed() {
            // A full queue drops the connection: more idle ones than `pool_max_idle` are waste.
            let _ = self.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
            self.freed.notify_one();
        }
    }
}

fn connect_timed_out(addr: SocketAddr) -> SendError {
    let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    SendError::Connect {
        addr,
        timed_out: true,
        source,
    }
}

/// Runs the HTTP/1.1 client handshake over `io` and drives the connection in its own task.
async fn handshake<I>(addr: SocketAddr, io: I, slot: Slot) -> Result<SendRequest<Body>, SendError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Reset)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
        drop(slot);
    });
    Ok(sender)
}

// === impl Returning ===

impl Returning {
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.put(sender);
        }
        self.guards = Guards::default();
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            // Counted before the guards go with the last frame.
            if let (Some(d), Some(log)) = (f.data_ref(), self.guards.log.as_mut()) {
                log.sent(d.len());
            }
        }
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            // A broken body breaks its connection: drop it, never pool it.
            Poll::Ready(Some(Err(_))) => {
                self.back = None;
                self.guards = Guards::default();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
