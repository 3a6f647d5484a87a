//! Listeners: accept connections, serve HTTP/1.1 and HTTP/2 (h2c) on each, drain gracefully.
//!
//! A listener task is keyed by the address it was configured with. It looks up the generation
//! in force for every request, so a reload changes routes and policies without touching
//! sockets; only an added or removed address binds or closes one. `max_connections` is a
//! semaphore taken before `accept`, so connections beyond it wait in the kernel's accept queue
//! instead of being refused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::forward::Peer;
use super::respond::answer;
use super::stack;
use crate::config::file;
use crate::error::Reason;
use crate::Shared;

/// A running listener.
#[derive(Debug)]
pub struct ListenerHandle {
    /// The address it is bound to (differs from the configured one for port 0).
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Binds `addr` with a large backlog and `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The HTTP server settings of a listener, from `runtime`.
pub fn server_builder(rt: &file::Runtime) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper refuses read buffers under 8 KiB; heads over the limit are answered 431 by hyper.
    let max_head = (rt.max_header_bytes.0 as usize).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(rt.header_read_timeout.0)
        .max_buf_size(max_head)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(rt.max_header_bytes.0).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// Starts serving `tcp`, configured as `addr`.
pub fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    tcp: TcpListener,
    rt: &file::Runtime,
) -> ListenerHandle {
    let local_addr = tcp.local_addr().unwrap_or(addr);
    let (stop, stopped) = watch::channel(false);
    let builder = Arc::new(server_builder(rt));
    let max_conns = rt.max_connections as usize;
    let task = tokio::spawn(accept_loop(shared, addr, tcp, builder, max_conns, stopped));
    ListenerHandle {
        local_addr,
        stop,
        task,
    }
}

// === impl ListenerHandle ===

impl ListenerHandle {
    /// Stops accepting, lets open connections finish (up to `grace`), then returns.
    pub async fn drain(self, grace: Duration) {
        self.begin_drain();
        self.wait(grace).await;
    }

    /// Asks the listener to stop and drain, without waiting.
    pub fn begin_drain(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the listener to finish draining, at most `grace`.
    pub async fn wait(self, grace: Duration) {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace + Duration::from_millis(100), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    addr: SocketAddr,
    tcp: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    max_conns: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_conns.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let client = Arc::new(Peer::new(peer));
        let svc = service_fn(move |req| {
            let shared = shared.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(serve(&shared, addr, req, &client).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(tcp);
    let grace = shared.current.load().config.file.runtime.shutdown_grace.0;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%addr, "connections still open after the shutdown grace; closing them");
    }
}

async fn serve(
    shared: &Shared,
    addr: SocketAddr,
    req: http::Request<hyper::body::Incoming>,
    peer: &Peer,
) -> http::Response<super::body::Body> {
    let gen = shared.current.load_full();
    match gen.listeners.get(&addr) {
        Some(lst) => stack::handle(shared, &gen, lst, req, peer).await,
        None => answer(Reason::NoRoute, "this listener is being removed", None),
    }
}
