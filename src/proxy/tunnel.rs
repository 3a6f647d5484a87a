//! CONNECT tunnels on outbound listeners (SPEC §14): what `HTTPS_PROXY` clients send.
//!
//! A CONNECT is not a request to forward: rewriting it to `CONNECT /` and sending it upstream
//! (what rampart did before) reaches no one. Instead, once the request path has admitted it
//! like any request (authority, route by the target's host, tenant, rate limit — so a route's
//! limits count tunnels), rampart picks an endpoint of the route's upstream, opens a plain TCP
//! connection to it within the upstream's `connect_timeout`, answers 200, and copies bytes both
//! ways until both sides close or no byte has moved either way for the tunnel idle timeout.
//!
//! The connection is opened here, not through the pool: a tunnel owns its socket for its whole
//! life and is never reused, so pooling buys nothing. A connect failure is answered before any
//! 200, so the client sees 502 `upstream_unavailable` as for any request.
//!
//! The route's breaker judges the connect (the tunnel's only upstream outcome): an open breaker
//! answers 503 `circuit_open` without connecting. A load-shed slot taken at step 4 rides in the
//! [`Guards`] the tunnel holds for its life, so `max_in_flight` counts open tunnels once load
//! shedding lands.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use tokio::time::Instant;

use super::body::{Body, ClientIn};
use super::ctx::{RequestCtx, TryLog};
use super::guard::Guards;
use super::respond::answer;
use crate::clock::SharedClock;
use crate::error::Reason;
use crate::generation::RouteRt;
use crate::policy::circuit_breaker::BreakerPermit;
use crate::policy::outcome::Outcome;

/// Opens a tunnel for an admitted CONNECT: connects to an endpoint of the route's upstream
/// (if its breaker admits it), answers 200 and copies bytes in the background; or answers 503
/// `circuit_open` / 502 `upstream_unavailable`. `guards` are held for the tunnel's life.
pub async fn open(
    ctx: &RequestCtx<'_>,
    clock: &SharedClock,
    req: Request<ClientIn>,
    guards: Guards,
) -> Response<Body> {
    let up = &ctx.route.upstream;
    // The breaker judges the connect: it is the tunnel's only upstream outcome.
    let permit = match super::exchange::admit(ctx) {
        Ok(p) => p,
        Err(rsp) => return *rsp,
    };
    let stream = match connect(ctx.route, permit, &ctx.tries).await {
        Ok(s) => s,
        Err(rsp) => return rsp,
    };
    let idle = ctx.route.tunnel_idle;
    let (clock, name) = (clock.clone(), up.name.clone());
    tokio::spawn(async move {
        let _guards = guards;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let client = TokioIo::new(upgraded);
                let why = pipe(client, stream, idle, clock).await;
                tracing::debug!(upstream = %name, ended = ?why, "tunnel closed");
            }
            Err(e) => tracing::debug!(upstream = %name, error = %e, "tunnel upgrade failed"),
        }
    });
    let mut rsp = Response::new(Body::Empty);
    *rsp.status_mut() = StatusCode::OK;
    rsp
}

/// Connects to an endpoint of `route`'s upstream within its `connect_timeout`, telling the
/// breaker, endpoint health and the access log (`tries`: the connect is the tunnel's one try)
/// how it went; a failure is the 502 to answer.
async fn connect(
    route: &RouteRt,
    permit: Option<BreakerPermit>,
    tries: &TryLog,
) -> Result<TcpStream, Response<Body>> {
    let up = &route.upstream;
    let started = Instant::now();
    let Some(ep) = up.pick(None, started) else {
        if let Some(p) = permit {
            p.record(Outcome::ConnectError, Duration::ZERO);
        }
        let msg = format!("upstream {} has no healthy endpoint", up.name);
        return Err(answer(Reason::UpstreamUnavailable, &msg, None));
    };
    let limit = up.cfg.connect_timeout.0;
    tries.start(ep.addr);
    let result = tokio::time::timeout(limit, TcpStream::connect(ep.addr)).await;
    let outcome = match &result {
        Ok(Ok(_)) => Outcome::Status(StatusCode::OK.as_u16()),
        _ => Outcome::ConnectError,
    };
    let ended = Instant::now();
    let took = ended.saturating_duration_since(started);
    tries.ended(took, ended);
    if let Some(p) = permit {
        p.record(outcome, took);
    }
    up.try_ended(&ep, outcome, took, ended);
    let why = match result {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => {
            route.metrics.timeout_connect.inc();
            format!("no connection within {limit:?}")
        }
    };
    up.connect_failed(&ep);
    tracing::debug!(upstream = %up.name, endpoint = %ep.addr, error = %why, "tunnel connect failed");
    let msg = format!(
        "cannot connect to upstream {} ({}): {why}",
        up.name, ep.addr
    );
    Err(answer(Reason::UpstreamUnavailable, &msg, None))
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed; bytes copied (client to upstream, upstream to client).
    Closed(u64, u64),
    /// An I/O error on either side.
    Failed(io::Error),
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Copies bytes between `a` and `b` until both close, one fails, or nothing moves for `idle`.
pub async fn pipe<A, B>(a: A, b: B, idle: Duration, clock: SharedClock) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(clock.now_nanos()));
    let mut a = Watched {
        inner: a,
        last: last.clone(),
        clock: clock.clone(),
    };
    let mut b = Watched {
        inner: b,
        last: last.clone(),
        clock: clock.clone(),
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => match r {
            Ok((up, down)) => Ended::Closed(up, down),
            Err(e) => Ended::Failed(e),
        },
        () = quiet_for(&last, idle, &clock) => Ended::Idle,
    }
}

/// Resolves once `idle` has passed since the time stored in `last`.
async fn quiet_for(last: &AtomicU64, idle: Duration, clock: &SharedClock) {
    loop {
        let since = clock
            .now_nanos()
            .saturating_sub(last.load(Ordering::Relaxed));
        let since = Duration::from_nanos(since);
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

/// A stream that notes the time of every read that returned bytes.
struct Watched<S> {
    inner: S,
    last: Arc<AtomicU64>,
    clock: SharedClock,
}

// === impl Watched ===

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.store(this.clock.now_nanos(), Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonotonicClock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_copies_both_ways_and_closes_when_quiet() {
        let clock: SharedClock = Arc::new(MonotonicClock::new());
        let (mut client, a) = tokio::io::duplex(64);
        let (mut upstream, b) = tokio::io::duplex(64);
        let t0 = tokio::time::Instant::now();
        let tunnel = tokio::spawn(pipe(a, b, Duration::from_secs(10), clock));
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        upstream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        // Traffic at 8 s restarts the idle clock.
        tokio::time::sleep(Duration::from_secs(8)).await;
        upstream.write_all(b"pong").await.expect("write");
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
        let ended = tunnel.await.expect("the tunnel task must not panic");
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(18),
            "idle counts from the last byte"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_ends_when_both_sides_close() {
        let clock: SharedClock = Arc::new(MonotonicClock::new());
        let (client, a) = tokio::io::duplex(64);
        let (upstream, b) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(pipe(a, b, Duration::from_secs(10), clock));
        drop(client);
        drop(upstream);
        let ended = tunnel.await.expect("the tunnel task must not panic");
        assert!(matches!(ended, Ended::Closed(0, 0)), "{ended:?}");
    }
}
