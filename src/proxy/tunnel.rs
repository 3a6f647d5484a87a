//! CONNECT tunnels on outbound listeners (SPEC §14): what `HTTPS_PROXY` clients send.
//!
//! A CONNECT is not a request to forward: rewriting it to `CONNECT /` and sending it upstream
//! (what rampart did before) reaches no one. Instead, once the request path has admitted it
//! like any request (authority, route by the target's host, tenant, rate limit — so a route's
//! limits count tunnels), rampart picks an endpoint of the route's upstream, connects to it
//! within the upstream's `connect_timeout`, answers 200, and copies bytes both ways until both
//! sides close or no byte has moved either way for the tunnel idle timeout.
//!
//! The connection is made as every connection to the endpoint is (`Pool::dial`): TCP, and when
//! the upstream has `tls`, rampart's TLS handshake with its `ca`, `server_name` and client
//! certificate, so the tunnel's bytes go inside rampart's TLS session (SPEC §8: never plaintext
//! to an upstream with `tls`; as Envoy tunnels to a cluster with a TLS transport). Its clients
//! send plaintext inside (`validate` warns at such an upstream's `tls`); one that did its own
//! TLS there would be TLS in TLS. An upstream of `protocol: http2` over `tls` must agree to `h2`
//! by ALPN, as for its requests: the session is an HTTP/2 one, and a client speaks HTTP/2 inside
//! it (with prior knowledge, as to an h2c upstream's plain tunnel). The connection is not taken
//! from the pool nor given back to it: a tunnel owns it for its whole life. A connect or
//! handshake failure is answered before any 200, so the client sees 502
//! `upstream_unavailable` as for any request.
//!
//! The route's breaker judges the connect (the tunnel's only upstream outcome): an open breaker
//! answers 503 `circuit_open` without connecting. A load-shed slot taken at step 4 rides in the
//! [`Guards`] the tunnel holds for its life, so `max_in_flight` counts open tunnels. So does the
//! request's access log line: it is written when the tunnel ends (however it ends: a drain that
//! runs out of time drops the tunnel mid-copy), with the bytes the tunnel carried each way and
//! the tunnel's life as its duration. The client's connection keeps its place among its
//! listener's `runtime.max_connections` until the tunnel ends (its `Peer` rides with it): the
//! connection's task ends when hyper hands the socket over, not when the socket closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use tokio::time::Instant;

use super::access_log::Broken;
use super::body::{Body, ClientIn};
use super::ctx::{RequestCtx, TryLog};
use super::forward::Peer;
use super::guard::Guards;
use super::h1::Rewind;
use super::pool::{SendError, Slot, Stream, Switched};
use super::respond::answer;
use super::shared::Shared;
use super::upgrade::Upgrade;
use super::upstream::{Endpoint, Upstream};
use crate::clock::SharedClock;
use crate::error::Reason;
use crate::generation::RouteRt;
use crate::otel::{ClientSpan, SpanParent, TryTarget};
use crate::policy::circuit_breaker::BreakerPermit;
use crate::policy::outcome::Outcome;

/// Connects an admitted CONNECT to an endpoint of the route's upstream, if its breaker admits
/// it: the stream to [`spawn`] the tunnel on once the 200 is settled, or the answer to give
/// instead (503 `circuit_open`, 502 `upstream_unavailable`).
pub async fn open(ctx: &RequestCtx<'_>) -> Result<Opened, Response<Body>> {
    // The breaker judges the connect: it is the tunnel's only upstream outcome.
    let permit = super::exchange::admit(ctx).map_err(|rsp| *rsp)?;
    connect(ctx.route, permit, ctx.tries, ctx.trace.as_ref()).await
}

/// A tunnel's connection to its endpoint, with its place among the endpoint's
/// `max_connections` (held until the tunnel ends).
#[derive(Debug)]
pub struct Opened {
    /// Plain TCP, or rampart's TLS session with the endpoint when its upstream has `tls`, after
    /// what the endpoint sent while rampart waited for its verdict on rampart's client
    /// certificate (`Pool::dial_tunnel`).
    stream: Rewind<Stream>,
    slot: Slot,
}

/// The answer that opens a tunnel.
pub fn established() -> Response<Body> {
    let mut rsp = Response::new(Body::Empty);
    *rsp.status_mut() = StatusCode::OK;
    rsp
}

/// Copies bytes between the client (once hyper hands over its connection after the 200) and
/// `stream`, in the background, until the tunnel ends. `guards` are held for the tunnel's life;
/// its access log line among them is written when it ends, with the bytes that went each way
/// (`bytes_in`: client to upstream) and the tunnel's whole life as its duration. So is `peer`,
/// the client's connection, with its place among the listener's `max_connections`: the
/// connection's task ends when hyper hands the socket over, the socket is open until the
/// tunnel ends.
pub fn spawn(
    req: Request<ClientIn>,
    opened: Opened,
    route: &RouteRt,
    shared: &Shared,
    guards: Guards,
    peer: Arc<Peer>,
) {
    let Opened { stream, slot } = opened;
    let carried = Arc::new(Carried::default());
    let held = TunnelGuards {
        guards,
        carried: carried.clone(),
    };
    let closing = Closing::of(&peer);
    carry(
        hyper::upgrade::on(req),
        (stream, closing),
        route,
        shared,
        carried,
        (held, slot, peer),
    );
}

/// Joins the client's connection and the upstream's after a `101 Switching Protocols`
/// (`upgrade.rs`), as a CONNECT tunnel joins them: the bytes the upstream sent after its 101
/// go to the client first. The request's guards ended at the 101; what is held for the
/// tunnel's life is the upstream connection's place among its endpoint's `max_connections`,
/// and the client's connection (`peer`) with its place among the listener's.
pub fn spawn_upgraded(up: Upgrade, route: &RouteRt, shared: &Shared, peer: Arc<Peer>) {
    let Upgrade { client, upstream } = up;
    let Switched { stream, read, slot } = upstream;
    let stream = Rewind::new(read, stream);
    let closing = Closing::of(&peer);
    carry(
        client,
        (stream, closing),
        route,
        shared,
        Arc::default(),
        (slot, peer),
    );
}

/// Copies bytes between the client (once hyper hands over its connection, `client`) and
/// `stream` in the background until the tunnel ends, holding `held` until then. `closing` is
/// its listener's tunnel stop ([`Peer::closing`]): once it is told (a reload removed the
/// listener, or changed the TLS rules the connection was made under; not a move or a rename),
/// the tunnel is cut at the end of that reload's shutdown grace, even one opened after the
/// reload ([`Peer::cut_at`]); at once if the TLS rules the reload put in force refuse its
/// client ([`Peer::refused_now`]). At shutdown [`Tunnels::drain`] cuts it.
fn carry<S, H>(
    client: OnUpgrade,
    (stream, closing): (S, Option<Closing>),
    route: &RouteRt,
    shared: &Shared,
    carried: Arc<Carried>,
    held: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    let idle = route.tunnel_idle;
    let (clock, name) = (shared.clock.clone(), route.upstream.name.clone());
    let marks = carried.clone();
    let tunnel = async move {
        let _held = held;
        match client.await {
            Ok(upgraded) => {
                let client = TokioIo::new(upgraded);
                let why = pipe(client, stream, idle, clock, &carried).await;
                if matches!(why, Ended::Idle) {
                    // Marked before the guards (the log line) are dropped, below.
                    carried.idle.store(true, Ordering::Relaxed);
                }
                tracing::debug!(upstream = %name, ended = ?why, carried = ?carried, "tunnel closed");
            }
            Err(e) => tracing::debug!(upstream = %name, error = %e, "tunnel upgrade failed"),
        }
    };
    shared.tunnels.spawn(tunnel, closing, marks);
}

/// A tunnel's client connection's stop ([`Peer::closing`]), and the peer to judge by the rules
/// in force once it is told.
struct Closing {
    told: watch::Receiver<bool>,
    peer: Arc<Peer>,
}

impl Closing {
    fn of(peer: &Arc<Peer>) -> Option<Closing> {
        let told = peer.closing()?;
        Some(Closing {
            told,
            peer: peer.clone(),
        })
    }
}

/// The open tunnels of a rampart: a drain waits for them as for connections, and cuts those
/// still open when its grace runs out (each writes its access log line as it ends, with
/// reason `shutdown`). A tunnel whose listener a reload removes, or whose TLS rules it
/// changes, is cut the same way, when the reload's shutdown grace runs out (as the removed
/// listener's drain ends), whenever it opened; at once when the new
/// TLS rules refuse its client (a `client_ca` that no longer verifies its certificate, `tls`
/// on a plaintext one): a client the listener no longer trusts is not served for the grace.
/// One whose listener moves (the same name, another address) goes on, though its old socket
/// drains.
#[derive(Debug)]
pub struct Tunnels {
    tasks: TaskTracker,
    cut: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            tasks: TaskTracker::new(),
            cut: watch::channel(false).0,
        }
    }
}

impl Tunnels {
    /// Runs `tunnel` until it ends, the drain cuts it, or `closing` is told and the end of the
    /// grace it was told with has come (at once if the rules now refuse its peer); a cut is
    /// marked in `carried` before the tunnel is dropped (its log line says `shutdown`).
    fn spawn(
        &self,
        tunnel: impl Future<Output = ()> + Send + 'static,
        closing: Option<Closing>,
        carried: Arc<Carried>,
    ) {
        let mut drain_cut = self.cut.subscribe();
        self.tasks.spawn(async move {
            let drained = async {
                let _ = drain_cut.wait_for(|c| *c).await;
            };
            let told = async {
                // A sender dropped without telling (never the case: the reload after which
                // no listener carries it tells it, while the old generation holds it) leaves
                // the tunnel be.
                let Some(mut c) = closing else {
                    return std::future::pending::<()>().await;
                };
                if c.told.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
                if c.peer.refused_now() {
                    tracing::info!(peer = %c.peer.addr, "a reload's TLS rules refuse a tunnel's client; cutting it now");
                    return;
                }
                // The end of the grace of the reload that told it, set before it is told (so
                // always there now): the same for a tunnel opened since, not a new grace.
                let until = c.peer.cut_at().unwrap_or_else(Instant::now);
                tokio::time::sleep_until(until).await;
            };
            let cut = async {
                tokio::select! {
                    () = drained => {}
                    () = told => {}
                }
                // Marked before the tunnel (its guards, its log line) is dropped.
                carried.cut.store(true, Ordering::Relaxed);
            };
            tokio::select! {
                () = tunnel => {}
                () = cut => {}
            }
        });
    }

    /// Waits until `until` for the open tunnels to end, then cuts the rest and waits (briefly)
    /// for them to write their lines.
    pub async fn drain(&self, until: Instant) {
        self.tasks.close();
        if tokio::time::timeout_at(until, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tasks.len(),
                "tunnels still open after the shutdown grace; closing them"
            );
            let _ = self.cut.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        }
    }
}

/// A tunnel's guards, and what it carried: the counts go into its log line as the guards drop.
struct TunnelGuards {
    guards: Guards,
    carried: Arc<Carried>,
}

impl Drop for TunnelGuards {
    fn drop(&mut self) {
        if let Some(log) = &mut self.guards.log {
            let c = &self.carried;
            log.tunnelled(c.up.load(Ordering::Relaxed), c.down.load(Ordering::Relaxed));
            if c.cut.load(Ordering::Relaxed) {
                log.broken(Broken::Shutdown);
            } else if c.idle.load(Ordering::Relaxed) {
                // rampart closed it: `tunnel_idle_timeout`, as `timeout.idle` cuts a silent
                // answer (`timeout`).
                log.broken(Broken::Timeout);
            }
        }
    }
}

/// Connects to an endpoint of `route`'s upstream within its `connect_timeout` (TLS included
/// when the upstream has `tls`: a failed handshake is a failed connect), telling the
/// breaker, endpoint health, the access log (`tries`: the connect is the tunnel's one try)
/// and, when the request's trace is sampled (`trace`), a CLIENT span (`CONNECT upstream`,
/// under the request's SERVER span) how it went; a failure is the 502 to answer. A connect
/// whose CONNECT is dropped before it ends (its client went away) is recorded as cancelled
/// ([`Connecting`]).
async fn connect(
    route: &RouteRt,
    permit: Option<BreakerPermit>,
    tries: &TryLog,
    trace: Option<&SpanParent<'_>>,
) -> Result<Opened, Response<Body>> {
    let up = &route.upstream;
    let started = Instant::now();
    let Some(ep) = up.pick(None, started) else {
        if let Some(p) = permit {
            p.record(Outcome::ConnectError, Duration::ZERO);
        }
        let msg = up.no_endpoint_message();
        return Err(answer(Reason::UpstreamUnavailable, &msg, None));
    };
    let limit = up.cfg.connect_timeout.0;
    let connecting = Connecting::start(up, &ep, tries, trace, permit, started);
    // A tunnel is a connection to the endpoint: it counts against `max_connections` and in
    // `rampart_upstream_connections` for its whole life, and waits for room within the
    // connect timeout.
    let deadline = started + limit;
    let Some(slot) = ep.pool.slot_by(deadline).await else {
        // The endpoint is busy, not failing: no evidence for the breaker. The span says
        // `cancelled` (its answer is 502 `upstream_unavailable`, not a timeout).
        connecting.end(Outcome::Cancelled, Outcome::Unsent, Instant::now());
        // Nor a try: nothing went to the endpoint.
        up.metrics.unsent(crate::metrics::Unsent::PoolFull);
        let msg = format!(
            "upstream {} ({}) has max_connections connections open; none closed within {limit:?}",
            up.name, ep.addr
        );
        return Err(answer(Reason::UpstreamUnavailable, &msg, None));
    };
    // Made as every connection to the endpoint is (`Pool::dial`): TCP, then rampart's TLS
    // handshake when the upstream has `tls` (its `ca`, `server_name` and client certificate),
    // both within the connect timeout, so the tunnel's bytes go inside rampart's TLS session,
    // never in clear (SPEC §8). A failed handshake is a failed connect, said at `warn`; so is
    // a TLS 1.3 server's refusal of rampart's client certificate (or of its absence), which
    // comes after it, also within the connect timeout. The connect ends when the connection
    // was made (the server's verdict, if one was waited for and came): rampart's wait for a
    // verdict that never came is not the endpoint's connect time, nor its try's.
    let result = ep.pool.dial_tunnel(ep.addr, deadline).await;
    let (outcome, made) = match &result {
        Ok((_, _, made)) => (Outcome::Status(StatusCode::OK.as_u16()), *made),
        Err(_) => (Outcome::ConnectError, Instant::now()),
    };
    let (took, ended) = connecting.end(outcome, outcome, made);
    up.try_ended(&ep, outcome, took, ended);
    // The connect is the tunnel's try, counted as tries are (a refusal under the 502 the client
    // gets), its connect time the try's duration: without it an upstream reached only by
    // CONNECT (all HTTPS egress) had no series in the upstream's metrics.
    up.metrics.count(match outcome {
        Outcome::Status(code) => code,
        _ => 502,
    });
    up.metrics.duration.observe(took);
    let e = match result {
        Ok((stream, first, _)) => {
            let stream = Rewind::new(first, stream);
            return Ok(Opened { stream, slot });
        }
        Err(e) => e,
    };
    up.connect_failed(&ep);
    tracing::debug!(upstream = %up.name, endpoint = %ep.addr, error = %e, "tunnel connect failed");
    let (name, addr) = (&up.name, ep.addr);
    let msg = match e {
        // What the handshake said, as a request's 502 says it (`exchange.rs`).
        SendError::Handshake { source, .. } => {
            format!("TLS handshake failed with upstream {name} ({addr}): {source}")
        }
        SendError::Connect {
            timed_out: true, ..
        } => {
            route.metrics.timeout_connect.inc();
            format!("cannot connect to upstream {name} ({addr}): no connection within {limit:?}")
        }
        SendError::Connect { source, .. } => {
            format!("cannot connect to upstream {name} ({addr}): {source}")
        }
        // The connection lost while rampart waited for the server's verdict, or closed by
        // the server before it said anything.
        SendError::Reset(e) => format!("cannot connect to upstream {name} ({addr}): {e}"),
    };
    Err(answer(Reason::UpstreamUnavailable, &msg, None))
}

/// A tunnel's connect, its one try, recorded once: with its outcome when it ends
/// ([`Connecting::end`]), or as [`Outcome::Cancelled`] when the CONNECT's future is dropped
/// first (its client went away while rampart waited for room or connected; a drain cut its
/// connection), as `exchange::TryRecord` records a request's try: its time in the access log
/// line, its CLIENT span (`error.type` `cancelled`), no verdict for the breaker, and
/// `rampart_upstream_tries_abandoned_total` (`client_gone`, or `shutdown` for a cut). Before,
/// such a connect left no span, no try time and no count.
struct Connecting<'a> {
    up: &'a Upstream,
    ep: &'a Endpoint,
    tries: &'a TryLog,
    started: Instant,
    /// The CLIENT span, when the request's trace is sampled.
    span: Option<ClientSpan<'a>>,
    permit: Option<BreakerPermit>,
    /// Whether [`Connecting::end`] recorded it.
    ended: bool,
}

// === impl Connecting ===

impl<'a> Connecting<'a> {
    /// Starts the connect, begun at `started`, to `ep` of `up`: a try in `tries`, and a span
    /// under `trace` (nothing goes upstream to carry a `traceparent`: the tunnel is bytes).
    fn start(
        up: &'a Upstream,
        ep: &'a Endpoint,
        tries: &'a TryLog,
        trace: Option<&SpanParent<'a>>,
        permit: Option<BreakerPermit>,
        started: Instant,
    ) -> Self {
        let n = tries.start(ep.addr);
        let span = trace.map(|p| ClientSpan::begin(p.clone(), &Method::CONNECT, n, started));
        Connecting {
            up,
            ep,
            tries,
            started,
            span,
            permit,
            ended: false,
        }
    }

    /// Ends the connect, which ended at `ended`: its span with `outcome`, the breaker told
    /// `verdict`. Returns how long it took, and when it ended.
    fn end(mut self, outcome: Outcome, verdict: Outcome, ended: Instant) -> (Duration, Instant) {
        self.ended = true;
        self.record(outcome, verdict, ended)
    }

    fn record(
        &mut self,
        outcome: Outcome,
        verdict: Outcome,
        ended: Instant,
    ) -> (Duration, Instant) {
        let took = ended.saturating_duration_since(self.started);
        self.tries.ended(took, ended);
        if let Some(p) = self.permit.take() {
            p.record(verdict, took);
        }
        if let Some(span) = self.span.take() {
            let ep = self.ep;
            let to = TryTarget {
                upstream: &self.up.name,
                endpoint: &ep.label,
                host: ep.host.as_ref(),
                addr: ep.addr,
            };
            span.end(to, outcome, took);
        }
        (took, ended)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.record(Outcome::Cancelled, Outcome::Cancelled, Instant::now());
        // Not the upstream's doing: kept out of its requests and durations.
        self.up.metrics.abandoned(Outcome::Cancelled);
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed.
    Closed,
    /// An I/O error on either side.
    Failed(io::Error),
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// The bytes a tunnel has delivered each way, counted as they are written.
#[derive(Debug, Default)]
pub struct Carried {
    /// Client to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
    /// Whether rampart cut it (a drain's grace ran out).
    pub cut: AtomicBool,
    /// Whether rampart closed it for `tunnel_idle_timeout` (no byte either way for so long).
    pub idle: AtomicBool,
}

/// Copies bytes between `a` (the client) and `b` (the upstream) until both close, one fails,
/// or nothing moves for `idle`, counting into `carried` what it writes each way.
pub async fn pipe<A, B>(a: A, b: B, idle: Duration, clock: SharedClock, carried: &Carried) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(clock.now_nanos()));
    let mut a = Watched {
        inner: a,
        last: last.clone(),
        clock: clock.clone(),
        written: &carried.down,
    };
    let mut b = Watched {
        inner: b,
        last: last.clone(),
        clock: clock.clone(),
        written: &carried.up,
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => match r {
            Ok(_) => Ended::Closed,
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

/// A stream that notes the time of every read that returned bytes, and counts the bytes
/// written to it.
struct Watched<'c, S> {
    inner: S,
    last: Arc<AtomicU64>,
    clock: SharedClock,
    written: &'c AtomicU64,
}

// === impl Watched ===

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
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

    fn counts(c: &Carried) -> (u64, u64) {
        (c.up.load(Ordering::Relaxed), c.down.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_copies_both_ways_and_closes_when_quiet() {
        let clock: SharedClock = Arc::new(MonotonicClock::new());
        let (mut client, a) = tokio::io::duplex(64);
        let (mut upstream, b) = tokio::io::duplex(64);
        let t0 = tokio::time::Instant::now();
        let carried = Arc::new(Carried::default());
        let c = carried.clone();
        let tunnel =
            tokio::spawn(async move { pipe(a, b, Duration::from_secs(10), clock, &c).await });
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
        // Counted however the tunnel ended.
        assert_eq!(counts(&carried), (4, 4));
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(18),
            "idle counts from the last byte"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_ends_when_both_sides_close_and_counts_each_way() {
        let clock: SharedClock = Arc::new(MonotonicClock::new());
        let (client, a) = tokio::io::duplex(64);
        let (upstream, b) = tokio::io::duplex(64);
        let carried = Arc::new(Carried::default());
        let c = carried.clone();
        let tunnel =
            tokio::spawn(async move { pipe(a, b, Duration::from_secs(10), clock, &c).await });
        let (mut client, mut upstream) = (client, upstream);
        client.write_all(b"abc").await.expect("write");
        let mut got = [0u8; 3];
        upstream.read_exact(&mut got).await.expect("read");
        upstream.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.expect("read");
        drop(client);
        drop(upstream);
        let ended = tunnel.await.expect("the tunnel task must not panic");
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(counts(&carried), (3, 5));
    }
}
