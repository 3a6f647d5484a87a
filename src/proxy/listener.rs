//! Listeners: accept connections, serve HTTP/1.1 and HTTP/2 (h2c) on each, drain gracefully.
//!
//! A listener task is keyed by the address it was configured with. It looks up the generation
//! in force for every connection and request, so a reload changes routes, policies and the
//! `runtime` settings of new connections without touching sockets; only an added or removed
//! address binds or closes one. `max_connections` is a semaphore whose permit a connection
//! needs before it is served, and holds until its socket closes (a tunnel it became, CONNECT or
//! upgrade, included: [`Held`]), so connections beyond it wait (at most one per worker
//! accepted, the rest in the kernel's accept queues) instead of being refused; a reload
//! resizes it in place.
//!
//! Each connection runs in its own task beside its watchdog (`conn.rs`), which closes silent and
//! idle connections, and a stop signal, which closes it gracefully when the listener drains.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::balance::Open;
use super::bind::Socket;
use super::body::ClientIn;
use super::conn::{Close, ConnState};
use super::finish::{ConnCut, Cut, CutAlong, MarksCut, PREMATURE_RESETS};
use super::forward::Peer;
use super::h1;
use super::respond::answer;
use super::shared::Shared;
use super::sock::Sock;
use super::stack;
use super::stall::{Answering, Exec};
use crate::config::file;
use crate::error::Reason;
use crate::generation::{ConnsStop, ListenerRt};
use crate::tenant::CertIds;

/// The listeners running now, by configured address.
pub type ListenerSet = HashMap<SocketAddr, ListenerHandle>;

/// A running listener.
#[derive(Debug)]
pub struct ListenerHandle {
    /// The address it is bound to (differs from the configured one for port 0).
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Told when its drain's time is up ([`ListenerHandle::wait`]): the accept loops cut the
    /// connections still open, and give up on those still waiting for a place.
    cut: watch::Sender<bool>,
    limit: Arc<Semaphore>,
    capacity: Arc<AtomicUsize>,
    /// One accept loop per worker (see `workers.rs`).
    tasks: Vec<JoinHandle<()>>,
    /// The `conns_stop` of the listener as the generation in force configures it at this
    /// address: the connections subscribed to it close (once idle) when a reload changes its
    /// TLS rules or the listener drains ([`ListenerHandle::follow`]).
    conns_stop: parking_lot::Mutex<Option<Arc<ConnsStop>>>,
}

pub use super::bind::{bind, bind_each, Bound};

/// The longest HTTP/1 request head served under `rt`: `max_header_bytes`, which `validate` keeps
/// at 8 KiB or more (hyper refuses smaller read buffers). Longer heads are answered 431.
pub fn max_head(rt: &file::Runtime) -> usize {
    (rt.max_header_bytes.0 as usize).max(8192)
}

/// hyper's head timer for a listener under `rt`. It runs from the moment hyper waits for a
/// head, the next one included, so at `header_read_timeout` alone it would close an idle
/// keep-alive connection then. The first head is timed from accept by the watchdog
/// (`conn.rs`); a later one may take as long as a connection may idle (SPEC §14), where the
/// lean server gives it `header_read_timeout` from its first byte.
fn head_timer(rt: &file::Runtime) -> Duration {
    rt.header_read_timeout.0.max(rt.idle_timeout.0)
}

/// The HTTP/1 server settings of a listener, from `runtime`, for what the lean server hands
/// over. hyper's own HTTP/1 server, not the auto one's: only it takes `max_header_size`, which
/// holds every head to `max_header_bytes` to the byte as the lean server does. `max_buf_size`
/// alone (all the auto server takes) refuses a head only while it is partial and the read
/// buffer has reached the limit, so a longer head read whole went through.
pub fn h1_server_builder(rt: &file::Runtime) -> http1::Builder {
    let mut b = http1::Builder::new();
    let max_head = max_head(rt);
    b.timer(TokioTimer::new())
        .header_read_timeout(head_timer(rt))
        .max_buf_size(max_head)
        .max_header_size(max_head)
        .max_headers(h1::parse::MAX_HEADERS)
        // A client may shut its write side once the request is sent (`nc -N`, one-shot
        // scripts); without this hyper drops such a connection unanswered on the read EOF.
        // (Nor does hyper then read a connection whose answer it awaits: a client that goes
        // away meanwhile is seen by `h1/gone.rs`.)
        .half_close(true)
        .keep_alive(true);
    b
}

/// The HTTP server settings of a listener, from `runtime`, for HTTP/2 (ALPN `h2`, or the
/// prior-knowledge preface), which it tells from HTTP/1 by the first bytes. Its executor runs
/// each HTTP/2 stream under a bound on how long its answer may wait for the client's window
/// (`stall.rs`).
pub fn server_builder(rt: &file::Runtime) -> auto::Builder<Exec> {
    let mut b = auto::Builder::new(Exec);
    let max_head = max_head(rt);
    let head_timer = head_timer(rt);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timer)
        .max_buf_size(max_head)
        .max_headers(h1::parse::MAX_HEADERS)
        // A client may shut its write side once the request is sent (`nc -N`, one-shot
        // scripts); without this hyper drops such a connection unanswered on the read EOF.
        .half_close(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        // Above `max_head`: rampart holds the head to it as HTTP/1.1 would carry it (`serve`).
        .max_header_list_size(h1::parse::h2_header_list_size(max_head))
        .max_concurrent_streams(256)
        .max_send_buf_size(H2_SEND_BUF);
    b
}

/// How much of an answer an HTTP/2 stream holds, taken from the upstream, that its client's
/// connection has not taken yet (h2's send buffer per stream; hyper's default is 400 KiB, which
/// let one client connection with 256 streams open on 10 MB downloads take 100 MiB and more
/// of answers, past a 128 MiB pod limit). At 64 KiB a connection's 256 streams hold 16 MiB at
/// most; the answer is read from its upstream as the client takes it. A single 100 MB
/// download over h2c was no slower for it (debug build: 102 to 455 MB/s against 63 to 276).
pub const H2_SEND_BUF: usize = 64 * 1024;

/// Starts serving `bound`, configured as `addr`: every worker runs an accept loop on its own
/// socket (registered with that worker's I/O driver). A worker serves what it accepts, start
/// to end, unless another worker serves clearly fewer connections: then it hands the
/// connection to that one (`balance.rs`), through the other's inbox. Call on worker 0.
pub fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    bound: Bound,
    rt: &file::Runtime,
) -> ListenerHandle {
    let (stop, stopped) = watch::channel(false);
    let cut = watch::Sender::new(false);
    let max_conns = (rt.max_connections as usize).max(1);
    let limit = Arc::new(Semaphore::new(max_conns));
    let mut local_addr = addr;
    let mut tasks = Vec::with_capacity(bound.sockets.len());
    let workers = shared.workers.handles();
    let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..bound.sockets.len())
        .map(|_| mpsc::unbounded_channel::<Handed>())
        .unzip();
    let inboxes: Arc<[Inbox]> = inboxes.into();
    let each = bound.sockets.into_iter().zip(workers).zip(receivers);
    for (i, ((socket, worker), inbox)) in each.enumerate() {
        if i == 0 {
            local_addr = socket.tcp.local_addr().unwrap_or(addr);
        }
        let (shared, limit, stopped) = (shared.clone(), limit.clone(), stopped.clone());
        let peers = Peers {
            me: i,
            inbox,
            inboxes: inboxes.clone(),
            cut: cut.subscribe(),
        };
        tasks.push(worker.spawn(async move {
            let Socket { tcp, mark } = socket;
            // In the worker's runtime: the socket registers with its I/O driver.
            match TcpListener::from_std(tcp) {
                Ok(tcp) => accept_loop(shared, addr, tcp, limit, stopped, peers).await,
                Err(e) => tracing::warn!(%addr, worker = i, error = %e, "a worker cannot poll its listening socket; it serves no connections of this listener"),
            }
            // The socket counts as rampart's own until now, its listener in force or retiring
            // (a reload may bind its address again meanwhile: `bind.rs`); the accept loop has
            // closed it. Aborted, the task drops the loop, and the socket, before this.
            drop(mark);
        }));
    }
    let h = ListenerHandle {
        local_addr,
        stop,
        cut,
        limit,
        capacity: Arc::new(AtomicUsize::new(max_conns)),
        tasks,
        conns_stop: parking_lot::Mutex::new(None),
    };
    h.follow(shared.current.load().listeners.get(&addr).map(|l| &**l));
    h
}

/// A connection accepted by one worker and handed to another, with what it holds.
#[derive(Debug)]
struct Handed {
    /// Out of the accepting worker's I/O driver; the serving worker registers it with its own.
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    open: Open,
}

/// What an accepted connection holds while it is open, tunnel or not: its place among the
/// listener's `max_connections` (a permit) and its count for the worker serving it. It rides
/// in the connection's [`Peer`], so it is given back when the last of what serves the
/// connection is done: its task, or the tunnel it became (a CONNECT, or an upgrade after its
/// 101), which outlives the task.
#[derive(Debug)]
pub(super) struct Held {
    _permit: OwnedSemaphorePermit,
    _open: Open,
}

/// Where connections handed to one worker (of one listener) arrive.
type Inbox = mpsc::UnboundedSender<Handed>;

/// What one worker's accept loop has of the others: its own inbox, and every worker's; and
/// the word they all wait for once the listener has stopped.
#[derive(Debug)]
struct Peers {
    me: usize,
    inbox: mpsc::UnboundedReceiver<Handed>,
    inboxes: Arc<[Inbox]>,
    /// [`ListenerHandle`]'s `cut`.
    cut: watch::Receiver<bool>,
}

// === impl ListenerHandle ===

impl ListenerHandle {
    /// Asks the listener to stop and drain, without waiting.
    pub fn begin_drain(&self) {
        let _ = self.stop.send(true);
        if let Some(conns) = self.conns_stop.lock().take() {
            conns.told.send_replace(true);
        }
    }

    /// Follows the listener configured at this address in the generation just put in force
    /// (`None`: it has none there). When its TLS rules changed (a new `conns_stop`: see
    /// `ListenerRt::tls_epoch`), the connections accepted under the old ones are told to close
    /// as a drain tells them: an idle one at once (HTTP/1.1 closed, HTTP/2 sent GOAWAY), one
    /// with requests in flight once they are answered.
    pub fn follow(&self, lst: Option<&ListenerRt>) {
        let new = lst.map(|l| l.conns_stop.clone());
        let mut cur = self.conns_stop.lock();
        let same = match (&*cur, &new) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = std::mem::replace(&mut *cur, new) {
            // No rules to pass on: only tunnels read them, and they follow the listener's
            // `tunnels_stop`, not this.
            old.told.send_replace(true);
        }
    }

    /// Waits for the listener, stopped ([`ListenerHandle::begin_drain`]), to finish draining:
    /// until `until`, or until `sooner` ends if it ends first. Then its connections still open
    /// are cut (and logged as cut) and those still waiting for a place closed; the accept
    /// loops are aborted if they have not ended [`CUT_LATE`] after.
    pub async fn wait(self, until: Instant, sooner: impl Future<Output = ()>) {
        let ListenerHandle { tasks, cut, .. } = self;
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::pin!(all);
        let ended = tokio::select! {
            r = tokio::time::timeout_at(until, &mut all) => r.is_ok(),
            () = sooner => false,
        };
        if ended {
            return;
        }
        cut.send_replace(true);
        if tokio::time::timeout(CUT_LATE, all).await.is_err() {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    /// Applies a reloaded `max_connections`: more room at once; less as connections end
    /// (open connections are never cut to fit).
    pub fn set_max_connections(&self, max: u32) {
        let new = (max as usize).max(1);
        let old = self.capacity.swap(new, Ordering::AcqRel);
        if new > old {
            self.limit.add_permits(new - old);
        } else if new < old {
            let (limit, excess) = (self.limit.clone(), (old - new) as u32);
            tokio::spawn(async move {
                if let Ok(p) = limit.acquire_many_owned(excess).await {
                    p.forget();
                }
            });
        }
    }
}

/// The drains of the listeners taken out of the running set: those a reload took away (removed,
/// or moved from an address) and, at shutdown, all of them. Shutdown waits for each, its
/// requests in flight and connections waiting for a place included, up to its own deadline
/// at the latest ([`Retiring::wait`]): then those still open are cut and logged as cut,
/// whichever drain they belong to.
#[derive(Debug)]
pub struct Retiring {
    tasks: TaskTracker,
    /// Told at the end of shutdown's grace: every drain still running cuts what it has.
    cut: watch::Sender<bool>,
}

impl Default for Retiring {
    fn default() -> Self {
        Retiring {
            tasks: TaskTracker::new(),
            cut: watch::Sender::new(false),
        }
    }
}

// === impl Retiring ===

impl Retiring {
    /// Stops `h` and lets its connections finish, in a task of its own, until `until` or the
    /// end of shutdown's grace, whichever comes first; `kept` is dropped once that is over.
    pub fn drain(&self, h: ListenerHandle, until: Instant, kept: impl Send + 'static) {
        h.begin_drain();
        let mut cut = self.cut.subscribe();
        self.tasks.spawn(async move {
            h.wait(until, async move { told(&mut cut).await }).await;
            drop(kept);
        });
    }

    /// Waits for every drain, until `until`; then those still running cut their connections,
    /// and are waited for [`CUT_LATE`] more at most.
    pub async fn wait(&self, until: Instant) {
        self.tasks.close();
        if tokio::time::timeout_at(until, self.tasks.wait())
            .await
            .is_err()
        {
            self.cut.send_replace(true);
            let _ = tokio::time::timeout(2 * CUT_LATE, self.tasks.wait()).await;
        }
    }
}

/// One worker's accept loop on its own socket of the listener.
///
/// A connection is accepted first and served once a `max_connections` permit is in hand: the
/// workers' sockets are separate queues, and a worker that took a permit before accepting would
/// hold it while waiting for a connection of its own, keeping it from connections queued at
/// another worker. So at the cap each worker holds at most one accepted connection until a
/// permit frees (the semaphore hands them out in order); the rest wait in the kernel's queues.
/// The loop also serves the connections other workers hand to it (`peers`), and those still
/// in its inbox when the listener stops.
async fn accept_loop(
    shared: Arc<Shared>,
    addr: SocketAddr,
    tcp: TcpListener,
    limit: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
    peers: Peers,
) {
    let mut a = Acceptor {
        conns: TaskTracker::new(),
        cuts: parking_lot::Mutex::new(Vec::new()),
        shared,
        addr,
        stopped,
        peers,
        late: None,
    };
    let mut backoff = Duration::ZERO;
    // A connection accepted but still waiting for a permit when the listener stopped.
    let mut waiting = None;
    loop {
        let Some(accepted) = a.serving(tcp.accept()).await else {
            break;
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off, doubling up to 1 s, instead of
                // spinning; log once per back-off step, not once per try.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(%addr, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                if a.serving(tokio::time::sleep(backoff)).await.is_none() {
                    break;
                }
                continue;
            }
        };
        backoff = Duration::ZERO;
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match a.serving(limit.clone().acquire_owned()).await {
                Some(Ok(p)) => p,
                _ => {
                    waiting = Some((stream, peer));
                    break;
                }
            },
        };
        // On Linux an accepted socket inherits `TCP_NODELAY` from its listener ([`bind_each`]
        // sets it there): no `setsockopt` per connection. Elsewhere it is set on each.
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        let me = a.peers.me;
        let to = a.shared.balance.choose(me);
        let open = a.shared.balance.open(to);
        if to == me {
            a.serve(stream, peer, (permit, open));
            continue;
        }
        if let Err(mut h) = hand_over(&a.peers.inboxes[to], stream, peer, permit, open) {
            // That worker has stopped taking connections: serve it here.
            h.open = a.shared.balance.open(me);
            a.take(h);
        }
    }
    // Connections served from now on see the stop at once: each gets one answer and closes.
    a.stopped.mark_changed();
    a.late = Some(
        a.shared
            .current
            .load()
            .config
            .file
            .runtime
            .header_read_timeout
            .0,
    );
    // Connections handed over before this worker stopped taking them are served all the same.
    a.peers.inbox.close();
    while let Ok(h) = a.peers.inbox.try_recv() {
        a.take(h);
    }
    // So are those it accepted, or the kernel queued at its socket, and had not served yet:
    // closing the socket would reset them. A reload that moves or removes a listener drops
    // none that reached it; only one whose handshake completes between the last accept and
    // the close is reset. They wait for permits as before, within the grace: until the
    // listener's handle says its time is up (one deadline for all of the drain).
    let mut cut = a.peers.cut.clone();
    for (stream, peer) in waiting.into_iter().chain(queued(tcp, addr)) {
        let permit = tokio::select! {
            biased;
            () = told(&mut cut) => None,
            p = limit.clone().acquire_owned() => p.ok(),
        };
        match permit {
            Some(permit) => {
                let open = a.shared.balance.open(a.peers.me);
                a.serve(stream, peer, (permit, open));
            }
            None => {
                tracing::warn!(%addr, %peer, "no room for a queued connection within the shutdown grace; closing it")
            }
        }
    }
    a.conns.close();
    let ended = tokio::select! {
        () = a.conns.wait() => true,
        () = told(&mut cut) => false,
    };
    if !ended {
        tracing::warn!(%addr, "connections still open after the shutdown grace; closing them");
        // Dropped here, not when the process exits: the requests among them are counted and
        // logged (as cut, `finish::CUT`) while the access log still takes lines.
        for t in a.cuts.lock().drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(CUT_WAIT, a.conns.wait()).await;
    }
}

/// Resolves once `cut` is told, or its sender (the listener's handle) is gone: no one waits
/// for the drain any more.
async fn told(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|c| *c).await;
}

/// What the kernel has queued at a stopping listener's socket, accepted (at most its backlog);
/// the socket closes after.
fn queued(tcp: TcpListener, addr: SocketAddr) -> Vec<(TcpStream, SocketAddr)> {
    // Out of tokio, still non-blocking: `accept` ends at the first `WouldBlock`.
    let Ok(tcp) = tcp.into_std() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while out.len() < 1024 {
        let Ok((s, peer)) = tcp.accept() else { break };
        // An accepted socket does not inherit `O_NONBLOCK`; tokio needs it.
        match s
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(s))
        {
            Ok(s) => out.push((s, peer)),
            Err(e) => {
                tracing::warn!(%addr, %peer, error = %e, "a queued connection could not be served; closing it")
            }
        }
    }
    out
}

/// Longest wait for the connection tasks aborted at the end of a drain's grace to be dropped
/// (they run on this worker: a turn of its scheduler). Within the [`CUT_LATE`]
/// `ListenerHandle::wait` gives the accept loop past the grace.
const CUT_WAIT: Duration = Duration::from_millis(50);

/// How long past its drain's grace [`ListenerHandle::wait`] waits for the accept loops to cut
/// their connections and end, before it aborts them.
pub const CUT_LATE: Duration = Duration::from_millis(100);

/// One worker's accept loop's state: what it serves connections with.
struct Acceptor {
    conns: TaskTracker,
    /// Its connections' tasks, to be aborted if they outlast a drain's grace. Finished ones are
    /// let go when the vector would grow; until then each keeps its task's cell (the size of
    /// a connection's task), so at most about twice as many cells as the most connections
    /// open at once. Locked once per connection, by this loop only.
    cuts: parking_lot::Mutex<Vec<tokio::task::AbortHandle>>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    stopped: watch::Receiver<bool>,
    peers: Peers,
    /// Once the listener has stopped: how long a connection served from then on may take to
    /// send its request (`header_read_timeout`).
    late: Option<Duration>,
}

impl Acceptor {
    /// Waits for `fut`, serving meanwhile the connections other workers hand this one: they
    /// hold permits already, so no wait of this worker's (for a connection, a permit, the end
    /// of a back-off) may keep them waiting. `None` once the listener stops.
    async fn serving<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                Some(h) = self.peers.inbox.recv() => self.take(h),
                _ = self.stopped.changed() => return None,
            }
        }
    }

    /// Serves an accepted connection on this worker.
    ///
    /// The task's own future is small: it holds the arguments, and boxes the connection's
    /// future (about 5 KiB) when first polled. Spawned inline, that future was copied whole
    /// about nine times per connection (into the tracker's wrapper, through tokio's spawn into
    /// the task's cell, and by each change of the task's stage), 4,000 instructions of
    /// `memcpy` a connection; boxed, it is written once, and the task's cell is small enough
    /// for the C library's per-thread cache.
    ///
    /// An HTTP/1.1 connection that waits for a head long enough is parked (`h1::End::Park`):
    /// its boxed future ends and is freed, the task waits for the socket with what the
    /// connection needs to be served again ([`Parked`]; with the task, about 1 KiB, and a TLS
    /// connection's session), and boxes a new future when the socket wakes.
    fn serve(&self, stream: TcpStream, peer: SocketAddr, held: (OwnedSemaphorePermit, Open)) {
        let (shared, addr, stopped) = (self.shared.clone(), self.addr, self.stopped.clone());
        let (_permit, _open) = held;
        let peer = Arc::new(Peer::holding(peer, Held { _permit, _open }));
        let task = match self.late {
            None => self
                .conns
                .spawn(conn_task(shared, addr, stream, peer, stopped)),
            // The listener has stopped, so the connection closes as soon as it waits for a
            // request: it is served once its request has come (the first read of a socket just
            // registered with tokio waits for the I/O driver's word even when bytes are there).
            Some(head) => self.conns.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(head, stream.readable()).await {
                    conn_task(shared, addr, stream, peer, stopped).await;
                }
            }),
        };
        let mut cuts = self.cuts.lock();
        if cuts.len() == cuts.capacity() {
            cuts.retain(|t| !t.is_finished());
        }
        cuts.push(task.abort_handle());
    }

    /// Serves a handed connection: registers its socket with this worker's I/O driver first.
    fn take(&self, h: Handed) {
        match TcpStream::from_std(h.stream) {
            Ok(stream) => self.serve(stream, h.peer, (h.permit, h.open)),
            Err(e) => {
                tracing::warn!(peer = %h.peer, error = %e, "a worker could not take a handed connection; closing it")
            }
        }
    }
}

/// Hands an accepted connection to another worker's inbox; gives it back if that worker no
/// longer takes connections. A socket that cannot leave this worker's I/O driver (which
/// takes an `epoll_ctl` failing) is closed.
fn hand_over(
    to: &Inbox,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    open: Open,
) -> Result<(), Handed> {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "could not hand a connection to another worker; closing it");
            return Ok(());
        }
    };
    to.send(Handed {
        stream,
        peer,
        permit,
        open,
    })
    .map_err(|e| e.0)
}

/// A connection's task: [`serve_conn`], boxed, and after each time it parks, the wait for the
/// socket and [`serve_io`] again, each boxed in turn; hyper's server, boxed, once the lean
/// server hands the connection over (or for HTTP/2 from the start), the lean server's future
/// dropped first.
#[allow(clippy::manual_async_fn)] // not `async fn`: see serve_conn
fn conn_task(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stream: TcpStream,
    peer: Arc<Peer>,
    stopped: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Each future is awaited as a `Cut`: dropped unfinished (the task aborted at the end
        // of a drain's grace), its requests are logged as cut by rampart, not as 499s.
        let mut next = Cut::new(super::boxed(|| {
            serve_conn(shared, addr, stream, peer, stopped)
        }))
        .await;
        loop {
            next = match next {
                Next::Closed => return,
                Next::Park(p) => {
                    // Boxed too: inline, the wait's futures would grow every connection's task.
                    let p = super::boxed(|| p.wake()).await;
                    let start = h1::Start::Resumed(p.wait);
                    // `Box::pin`, copied in: built in its box, the lean server's future left
                    // the task 32 bytes larger in a test build (520 bytes).
                    match p.io {
                        KeptIo::Plain(io) => {
                            Cut::new(Box::pin(serve_io(p.conn, io, start, false))).await
                        }
                        KeptIo::Tls(io) => {
                            Cut::new(Box::pin(serve_io(p.conn, *io, start, false))).await
                        }
                    }
                }
                Next::Hyper(h) => return Cut::new(h.serve()).await,
            };
        }
    }
}

/// Serves one connection with the lean server until it ends, its watchdog closes it, the
/// listener stops, it is parked (HTTP/1.1 only), or it is for hyper (HTTP/2, or handed over):
/// [`Next`] says which. On a TLS listener the handshake runs here, in the connection's own
/// task, within the head timeout, so a slow handshake never holds the accept loop.
///
/// This and [`serve_io`] are plain `fn`s returning `async move` blocks, as `stack::handle` is:
/// an `async fn` keeps a second copy of its arguments, and these futures set the size of every
/// connection's task. The peer comes in an `Arc` (8 bytes, where it was 144 in each layer).
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
fn serve_conn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stream: TcpStream,
    mut peer: Arc<Peer>,
    stopped: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Next> {
    async move {
        let gen = shared.current.load_full();
        let Some(lst) = gen.listener(&addr).map(std::borrow::Cow::into_owned) else {
            return Next::Closed;
        };
        // Told to close by a drain, and by a reload that changes the TLS rules this connection
        // is accepted under (`ListenerHandle::follow`). A listener moved away from `addr`
        // drains there: its connections keep the stop of the socket they came to.
        let stopped = match gen.listeners.get(&addr) {
            Some(own) if !*stopped.borrow() => {
                let mut conns = own.conns_stop.told.subscribe();
                if *conns.borrow() {
                    // Told already (a reload between the load above and now).
                    conns.mark_changed();
                }
                conns
            }
            _ => stopped,
        };
        drop(gen);
        // The only reference yet (one peer a connection, made at accept and moved here): a
        // tunnel the connection becomes follows its listener's, wherever a reload moves it.
        if let Some(p) = Arc::get_mut(&mut peer) {
            p.closing = Some(lst.tunnels_stop.told.subscribe());
            p.rules = Some(lst.tunnels_stop.clone());
        }
        let Some(tls) = lst.tls.clone() else {
            let head = lst.head_timeout;
            let conn = Served::new(shared, addr, lst, peer, stopped);
            return serve_io(conn, Sock(stream), h1::Start::Accepted(head), false).await;
        };
        // Boxed: the handshake and a TLS stream make a future about twice a plain connection's,
        // and inline they would set the size of every connection's task.
        super::boxed(|| serve_tls(shared, addr, lst, tls, stream, peer, stopped)).await
    }
}

/// What serving a connection takes besides its stream, from accept (or its handshake) to its
/// end.
struct Served {
    shared: Arc<Shared>,
    /// The listener's configured address (its key in each generation).
    addr: SocketAddr,
    /// The listener as configured when the connection was accepted.
    lst: Arc<ListenerRt>,
    peer: Arc<Peer>,
    /// What the watchdog knows (kept while parked: hyper's watchdog reads it after a hand-off).
    state: Arc<ConnState>,
    stopped: watch::Receiver<bool>,
}

impl Served {
    /// A connection accepted now (a new watchdog state).
    fn new(
        shared: Arc<Shared>,
        addr: SocketAddr,
        lst: Arc<ListenerRt>,
        peer: Arc<Peer>,
        stopped: watch::Receiver<bool>,
    ) -> Served {
        let state = ConnState::new();
        Served {
            shared,
            addr,
            lst,
            peer,
            state,
            stopped,
        }
    }
}

/// What a connection's task does next, when the future serving it so far has ended (and is
/// dropped: each of them sized for the request path's futures, or for a TLS handshake).
enum Next {
    Closed,
    /// Waits for its socket, then the lean server again.
    Park(Parked),
    /// hyper serves it from here on.
    Hyper(ToHyper),
}

/// A connection for hyper's servers: HTTP/2, or what the lean server hands over.
struct ToHyper {
    conn: Served,
    io: KeptIo,
    /// What the lean server read and did not serve: hyper reads it first.
    read: bytes::Bytes,
    /// Where the first head's wait ends: the watchdog keeps to it.
    head_end: Instant,
    /// When the head of the first request came, if the lean server read it and waited for
    /// its body (`h1::End::HandOff`): that request's time runs from it.
    arrived: Option<Instant>,
    /// HTTP/1 for sure: handed over by the lean server, no HTTP/2 preface in `read`.
    h1: bool,
}

impl ToHyper {
    /// Serves it with [`serve_hyper`], boxed: inline, hyper's part would set the size of every
    /// connection's task, though a connection the lean server keeps never touches it. One
    /// that may be HTTP/2 runs its requests in tasks of their own, which learn from a
    /// [`ConnCut`] whether it was cut (at the end of a drain's grace).
    fn serve(self) -> MarksCut<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let ToHyper {
            conn,
            io,
            read,
            head_end,
            arrived,
            h1,
        } = self;
        // hyper's HTTP/1 server does not watch the client while an answer is awaited: this
        // does (`h1/gone.rs`). HTTP/2 has its own word for it (a stream's reset).
        let watch = if h1 {
            Some(h1::gone::Watch::new(io.socket()))
        } else {
            None
        };
        let cut = (!h1).then(|| Arc::new(ConnCut::default()));
        let streams = cut.clone();
        let fut: Pin<Box<dyn Future<Output = ()> + Send>> = match io {
            KeptIo::Plain(io) => {
                let io = h1::Rewind::new(read, io);
                super::boxed(|| serve_hyper(conn, io, (head_end, arrived), watch, streams))
            }
            // The session stays boxed: inline, serve_hyper's future would hold it twice.
            KeptIo::Tls(io) => {
                let io = h1::Rewind::new(read, io);
                super::boxed(|| serve_hyper(conn, io, (head_end, arrived), watch, streams))
            }
        };
        MarksCut::new(fut, cut)
    }
}

/// A connection parked while it waits for a head (`h1::End::Park`).
struct Parked {
    conn: Served,
    io: KeptIo,
    wait: h1::Wait,
}

/// A connection's stream while its task holds it between the futures that serve it: parked,
/// or on its way to hyper.
enum KeptIo {
    Plain(Sock),
    /// Boxed: a TLS session is over a kilobyte, and inline it would grow every connection's
    /// task, plain ones too.
    Tls(Box<TlsStream<Sock>>),
}

impl KeptIo {
    /// The socket under the stream.
    fn socket(&self) -> &TcpStream {
        match self {
            KeptIo::Plain(io) => &io.0,
            KeptIo::Tls(io) => &io.get_ref().0 .0,
        }
    }
}

impl Parked {
    /// Resolves when the socket has something to read (or is closed or broken), when the wait
    /// for the head ends, or when the listener stops: in each case the lean server, resumed,
    /// does what it would have done in the wait (serve, close, drain).
    async fn wake(self) -> Parked {
        {
            // A clone: waiting on it leaves the stop unseen by the connection's own receiver,
            // which the resumed server then sees.
            let mut stop = self.conn.stopped.clone();
            tokio::select! {
                _ = self.io.socket().readable() => {}
                _ = tokio::time::sleep_until(self.wait.due) => {}
                _ = stop.changed() => {}
            }
        }
        self
    }
}

/// Serves a connection to a TLS listener: the handshake (within the head timeout), then the
/// connection over it until it ends or is parked.
async fn serve_tls(
    shared: Arc<Shared>,
    addr: SocketAddr,
    lst: Arc<ListenerRt>,
    tls: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    mut peer: Arc<Peer>,
    stopped: watch::Receiver<bool>,
) -> Next {
    let started = Instant::now();
    // The first byte, peeked (the handshake reads it again): a client that closes before
    // sending any (a TCP probe of a load balancer or a kubelet) has failed no handshake, and
    // one that starts with a letter sends HTTP in plaintext (a TLS record starts with 0x16).
    let mut first = [0u8; 1];
    match tokio::time::timeout(lst.head_timeout, stream.peek(&mut first)).await {
        Ok(Ok(0)) => return Next::Closed,
        Ok(Ok(_)) if first[0].is_ascii_uppercase() => {
            count_tls_failure(&lst, "protocol");
            tracing::debug!(peer = %peer.addr, "plain HTTP sent to a TLS listener");
            Box::pin(plain_to_tls(stream)).await;
            return Next::Closed;
        }
        _ => {}
    }
    let left = lst.head_timeout.saturating_sub(started.elapsed());
    match crate::tls::accept(TlsAcceptor::from(tls), Sock(stream), left).await {
        Ok((tls_stream, info)) => {
            // The only reference yet (one peer a connection, made at accept and moved here):
            // changed in place.
            if let Some(p) = Arc::get_mut(&mut peer) {
                p.tls = true;
                p.tls_epoch = lst.tls_epoch;
                if lst.client_ca.is_some() {
                    // Kept to judge a tunnel by, if a reload changes `client_ca` while it is
                    // open (`Peer::refused_now`): one copy a mutual-TLS connection.
                    let chain = tls_stream.get_ref().1.peer_certificates();
                    p.chain = chain.map(Arc::from);
                }
                if info.client_cn.is_some() || info.client_uri_san.is_some() {
                    p.cert = Some(CertIds {
                        cn: info.client_cn.map(Arc::from),
                        uri_san: info.client_uri_san.map(Arc::from),
                    });
                }
            } else {
                tracing::error!(peer = %peer.addr, "a TLS connection's peer was shared before its handshake; closing it");
                return Next::Closed;
            }
            // The handshake spent part of the head timeout; the rest is the first head's.
            let head = lst.head_timeout.saturating_sub(started.elapsed());
            let h2 = info.is_h2;
            let conn = Served::new(shared, addr, lst, peer, stopped);
            serve_io(conn, tls_stream, h1::Start::Accepted(head), h2).await
        }
        Err(e) => {
            count_tls_failure(&lst, e.reason());
            tracing::debug!(peer = %peer.addr, error = %e, "tls handshake failed");
            Next::Closed
        }
    }
}

/// Counts a failed handshake in `rampart_tls_handshake_failures_total{reason}`.
fn count_tls_failure(lst: &ListenerRt, reason: &str) {
    if let Some((_, c)) = lst.tls_failures.iter().find(|(r, _)| *r == reason) {
        c.inc();
    }
}

/// The answer to plain HTTP sent to a TLS listener, as nginx gives one: a plaintext 400 the
/// client can read, saying so, and the connection closed. Bounded by the time the write may
/// take; what the client sent is not read.
async fn plain_to_tls(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "this port takes HTTPS: the plain HTTP request was sent to a TLS port\n";
    const ANSWER: &str = concat!(
        "HTTP/1.1 400 Bad Request\r\n",
        "content-type: text/plain\r\n",
        "content-length: 69\r\n",
        "connection: close\r\n\r\n",
        "this port takes HTTPS: the plain HTTP request was sent to a TLS port\n",
    );
    debug_assert_eq!(BODY.len(), 69);
    let write = async {
        stream.write_all(ANSWER.as_bytes()).await?;
        stream.shutdown().await?;
        // What the client sent is read and dropped until it closes: closed with unread bytes,
        // the socket would be reset and the answer could be lost.
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Serves one accepted (and, with TLS, handshaken) connection: the lean HTTP/1.1 server
/// (`h1.rs`) first, hyper for HTTP/2 (ALPN `h2`, or the prior-knowledge preface) and for
/// whatever the lean server hands over, in the connection's task once this future is dropped
/// ([`Next::Hyper`]). A connection the lean server parks comes back as [`Next::Park`].
#[allow(clippy::manual_async_fn)] // not `async fn`: see serve_conn
fn serve_io<I>(
    mut conn: Served,
    io: I,
    start: h1::Start,
    h2: bool,
) -> impl std::future::Future<Output = Next>
where
    I: tokio::io::AsyncRead + Send + 'static + TaskIo,
{
    async move {
        // Where the first head's wait ends: the watchdog keeps to it if hyper takes over.
        let head_end = match start {
            h1::Start::Accepted(head) => Instant::now() + head,
            h1::Start::Resumed(w) => w.due,
        };
        let (read, io, arrived) = if h2 {
            (bytes::Bytes::new(), io, None)
        } else {
            let c = h1::Conn {
                shared: &conn.shared,
                addr: conn.addr,
                lst: &conn.lst,
                peer: &conn.peer,
                state: &conn.state,
            };
            match h1::serve(c, io, start, &mut conn.stopped).await {
                h1::End::Closed => return Next::Closed,
                h1::End::HandOff(io, arrived) => {
                    let (read, io) = io.into_parts();
                    (read, io, arrived)
                }
                h1::End::Park(io, wait) => {
                    let io = io.kept();
                    return Next::Park(Parked { conn, io, wait });
                }
            }
        };
        let io = io.kept();
        let h1 = !h2 && !h1::parse::h2_preface(&read);
        Next::Hyper(ToHyper {
            conn,
            io,
            read,
            head_end,
            arrived,
            h1,
        })
    }
}

/// A stream a connection's task can keep between the futures that serve it (and that the lean
/// server knows how to close).
trait TaskIo: h1::Close {
    fn kept(self) -> KeptIo;
}

impl TaskIo for Sock {
    fn kept(self) -> KeptIo {
        KeptIo::Plain(self)
    }
}

/// A TLS stream's socket alone says when it has more, where the lean server parks: after a
/// read that returned `Pending`, which tokio-rustls says only when its session holds no
/// plaintext and the socket has nothing left to read. A part of a record read before stays in
/// the session and is completed when the socket wakes.
impl TaskIo for TlsStream<Sock> {
    fn kept(self) -> KeptIo {
        KeptIo::Tls(Box::new(self))
    }
}

/// Serves a connection with hyper's HTTP/1 and HTTP/2 servers until it ends, its watchdog
/// closes it, or the listener stops (or had stopped already). The watchdog counts the head
/// timeout to `head_end`, from accept, whoever served the connection so far.
/// `h1`: the lean server handed it over, with no HTTP/2 preface read: hyper's HTTP/1 server
/// serves it ([`h1_server_builder`]), with the client watched while an answer is awaited
/// (`h1/gone.rs`; `Some(None)` if the watch could not be made), else the auto server, whose
/// HTTP/2 requests each run in a task of their own, are cut with the connection by
/// `streams` ([`CutAlong`]), and are reset when their answers wait too long for the client's
/// window (`stall.rs`: their bodies are [`Answering`]'s).
async fn serve_hyper<I>(
    conn: Served,
    io: I,
    (head_end, arrived): (Instant, Option<Instant>),
    h1: Option<Option<Arc<h1::gone::Watch>>>,
    streams: Option<Arc<ConnCut>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        shared,
        addr,
        lst,
        peer: client,
        state,
        mut stopped,
    } = conn;
    let left = head_end.saturating_duration_since(Instant::now());
    let watchdog = state.watch(left, lst.idle_timeout);
    tokio::pin!(watchdog);
    let draining = *stopped.borrow();
    let peer_addr = client.addr;
    let svc = |watch: Option<Arc<h1::gone::Watch>>, cut: Option<Arc<ConnCut>>| {
        let state = state.clone();
        // Only the first request's head may have come before (the one the lean server read).
        let first = std::cell::Cell::new(arrived);
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (shared, client) = (shared.clone(), client.clone());
            let arrived = first.take();
            let active = state.begin();
            let req = req.map(ClientIn::Hyper);
            // Boxed: the request path's future is about 5 KiB, and hyper moves what this
            // returns about ten times on its way into an HTTP/2 stream's task and out again
            // (4,700 instructions of `memcpy` a request, against one allocation).
            let handling = super::boxed(|| serve(shared, addr, req, arrived, client, active));
            CutAlong::new(h1::gone::unless_gone(handling, watch.clone()), cut.clone())
        })
    };
    let ends = Ends {
        watchdog: watchdog.as_mut(),
        stopped: &mut stopped,
        draining,
        peer: peer_addr,
        state: &state,
        streams: streams.as_deref(),
    };
    match h1 {
        Some(watch) => {
            let io = TokioIo::new(h1::gone::Watched {
                io,
                watch: watch.clone(),
            });
            // Its answers' bodies give their errors late, once their heads are out.
            let each = svc(watch, None);
            let answering = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                h1::late::Answering(hyper::service::Service::call(&each, req))
            });
            let conn = lst
                .h1_server
                .serve_connection(io, answering)
                .with_upgrades();
            drive(conn, |c| c.graceful_shutdown(), ends).await;
        }
        None => {
            // Its answers' bodies tell each stream's watch when they wait for the window.
            let each = svc(None, streams.clone());
            let answering = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let head = req.method() == http::Method::HEAD;
                Answering {
                    call: hyper::service::Service::call(&each, req),
                    head,
                }
            });
            // A whole h2 preface makes it an idle connection, not a silent one; a header
            // block must then come whole within the head timeout.
            let io = super::conn::SeesPreface::new(io, state.clone(), lst.head_timeout);
            let conn = lst
                .server
                .serve_connection_with_upgrades(TokioIo::new(io), answering);
            drive(conn, |c| c.graceful_shutdown(), ends).await;
        }
    }
}

/// What ends a connection hyper serves, besides the connection itself.
struct Ends<'a, W> {
    watchdog: Pin<&'a mut W>,
    stopped: &'a mut watch::Receiver<bool>,
    /// The listener was stopping already.
    draining: bool,
    peer: SocketAddr,
    /// What its requests in flight are ([`ConnState::quiet`]).
    state: &'a ConnState,
    /// What its HTTP/2 requests share with it: a storm of premature resets closes it.
    streams: Option<&'a ConnCut>,
}

/// How long a connection whose graceful close has begun (idle, or a drain) may go on with no
/// request in flight before it is dropped. hyper's HTTP/2 graceful close sends GOAWAY and a
/// PING, and ends only once the PING is answered: a client that never answers it would keep
/// the connection, and its `max_connections` place, for ever, and hold a drain for its whole
/// `shutdown_grace`. Requests in flight keep their grace; a connection is dropped only after a
/// whole period in which none was (two readings of [`ConnState::quiet`] a period apart).
pub const CLOSING_QUIET: Duration = Duration::from_secs(2);

/// Drives `conn` (one of hyper's connections, `shut` its graceful shutdown) until it ends, its
/// watchdog closes it, or the listener stops. Once closing, it is dropped after a
/// [`CLOSING_QUIET`] with no request in flight; an HTTP/2 connection whose client resets most
/// of its requests before their answers is dropped at once ([`ConnCut::reset_storm`]).
async fn drive<C, E, W>(conn: C, shut: fn(Pin<&mut C>), ends: Ends<'_, W>)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    W: Future<Output = Close>,
{
    let Ends {
        mut watchdog,
        stopped,
        draining,
        peer,
        state,
        streams,
    } = ends;
    tokio::pin!(conn);
    // Polled once before anything may shut it: hyper then reads what the lean server handed
    // over (a request's head at least, replayed at once by `Rewind`). A connection shut before
    // hyper has read a byte is closed at once, so a drain that began before this (the listener
    // stopping as the request came, or while the connection waited for a place) dropped that
    // request unanswered; read, it is answered and the connection closed after it.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(conn.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(r) = first {
        if let Err(e) = r {
            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
        }
        return;
    }
    let mut closing = draining;
    // Where the next look at a closing connection is, and the events it must still find.
    let mut look = Instant::now() + CLOSING_QUIET;
    let mut seen = state.quiet().1;
    if closing {
        shut(conn.as_mut());
    }
    let storm = async {
        match streams {
            Some(s) => s.reset_storm().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(storm);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            close = watchdog.as_mut(), if !closing => match close {
                Close::Silent => return,
                Close::Idle => {
                    shut(conn.as_mut());
                    closing = true;
                    (look, seen) = (Instant::now() + CLOSING_QUIET, state.quiet().1);
                }
            },
            _ = stopped.changed(), if !closing => {
                shut(conn.as_mut());
                closing = true;
                (look, seen) = (Instant::now() + CLOSING_QUIET, state.quiet().1);
            }
            _ = tokio::time::sleep_until(look), if closing => {
                let (active, events) = state.quiet();
                if active == 0 && events == seen {
                    tracing::debug!(peer = %peer, "closing connection quiet too long: dropped");
                    return;
                }
                (look, seen) = (look + CLOSING_QUIET, events);
            }
            () = storm.as_mut() => {
                tracing::info!(
                    peer = %peer,
                    bound = PREMATURE_RESETS,
                    "HTTP/2 client reset most of its requests before their answers: connection closed"
                );
                return;
            }
        }
    }
}

/// Serves one request from hyper's server under the generation in force now. (The lean
/// server does the same inline: one future fewer to build and copy per request.) A `fn`
/// returning an `async move` block, as on the lean path: the request path's future is then
/// built in place in this one's state, where an `async fn` taking the request built it
/// aside and copied it in (3,904 bytes a request).
#[allow(clippy::manual_async_fn)] // an `async fn` would copy its arguments: see above
fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut req: http::Request<ClientIn>,
    arrived: Option<Instant>,
    peer: Arc<Peer>,
    active: super::conn::ConnActive,
) -> impl Future<Output = Result<http::Response<super::body::Body>, Infallible>> {
    async move {
        let gen = shared.current.load_full();
        Ok(match gen.listener(&addr).as_deref() {
            // A reload changed the TLS rules of this connection's listener: gave it `tls`, or
            // changed (or took away) its `client_ca`. The one comparison every request pays.
            Some(lst) if lst.tls_epoch != peer.tls_epoch => {
                let (parts, _) = req.into_parts();
                let head = http::Request::from_parts(parts, ());
                let mut rsp = stack::refuse_outdated(&shared, lst, head, &peer, active);
                rsp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                rsp
            }
            // More fields than an HTTP/1.1 head may have lines, or longer than
            // `max_header_bytes` as HTTP/1.1 would carry it: refused as the lean server
            // refuses such a head (hyper's HTTP/1 server answers those itself).
            Some(lst)
                if req.version() == http::Version::HTTP_2
                    && (h1::parse::too_many_fields(req.headers())
                        || h1::parse::h2_too_long(
                            req.method(),
                            req.uri(),
                            req.headers(),
                            lst.max_head,
                        )) =>
            {
                let (parts, _) = req.into_parts();
                let head = http::Request::from_parts(parts, ());
                stack::refuse_head(&shared, lst, head, h1::parse::Refusal::TooLarge, active)
            }
            // A field value with a space or a tab at either end is malformed over HTTP/2 (RFC
            // 9113 §8.2.1); the h2 library passes it on as sent. Refused 400 as the request
            // heads the lean server cannot read are (HTTP/1.1's parser takes such whitespace
            // off, so only HTTP/2 is looked at).
            Some(lst)
                if req.version() == http::Version::HTTP_2
                    && h1::parse::padded_value(req.headers()) =>
            {
                let (parts, _) = req.into_parts();
                let head = http::Request::from_parts(parts, ());
                stack::refuse_head(&shared, lst, head, h1::parse::Refusal::PaddedValue, active)
            }
            // A field name with `"`, which the `http` crate takes over HTTP/2 and no HTTP/1.1
            // peer reads: refused 400 rather than dropped (what the name meant is unknown).
            Some(lst)
                if req.version() == http::Version::HTTP_2
                    && h1::parse::untokened_name(req.headers()) =>
            {
                let (parts, _) = req.into_parts();
                let head = http::Request::from_parts(parts, ());
                stack::refuse_head(
                    &shared,
                    lst,
                    head,
                    h1::parse::Refusal::UntokenedName,
                    active,
                )
            }
            // `chunked` named twice: hyper's HTTP/1.1 parser reads it as once, the lean
            // server refuses it 400; a connection hyper took over (after a chunked upload,
            // say) refuses it the same way, and closes as the lean server does.
            Some(lst)
                if req.version() != http::Version::HTTP_2
                    && h1::parse::chunked_twice(req.headers()) =>
            {
                let (parts, _) = req.into_parts();
                let head = http::Request::from_parts(parts, ());
                let mut rsp =
                    stack::refuse_head(&shared, lst, head, h1::parse::Refusal::Malformed, active);
                rsp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                rsp
            }
            Some(lst) => {
                if req.version() == http::Version::HTTP_2 {
                    // `content-length: 5` twice: one line upstream, as from an HTTP/1.1 client.
                    super::forward::one_length(req.headers_mut());
                }
                let sent = super::forward::Sent::of(req.headers());
                let http10 =
                    req.version() == http::Version::HTTP_10 && req.method() != http::Method::HEAD;
                let mut rsp =
                    stack::handle(&shared, &gen, lst, req, sent, arrived, &peer, active).await;
                // hyper writes the answer from its map alone.
                super::body::whole_headers(&mut rsp);
                if http10 {
                    close_delimited_http10(&mut rsp);
                }
                rsp
            }
            None => removed(),
        })
    }
}

/// An answer to an HTTP/1.0 client (not to HEAD) that hyper's server writes delimited by the
/// connection's close (it has a body of no known length, and HTTP/1.0 has no chunks) says
/// `connection: close`. hyper says `connection: keep-alive` to a client that asked for it and
/// then closes anyway, and a request the client sent behind its own was lost without a word.
/// Written as HTTP/1.0 (which hyper does for such a client anyway), the answer's `close` is
/// kept and the connection ends with it, as the lean server's (`h1::write`).
fn close_delimited_http10(rsp: &mut http::Response<super::body::Body>) {
    use http_body::Body as _;
    let status = rsp.status();
    let bodyless = status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    if bodyless
        || rsp.body().is_end_stream()
        || rsp.body().size_hint().exact().is_some()
        || rsp.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        return;
    }
    *rsp.version_mut() = http::Version::HTTP_10;
    rsp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
}

/// The answer to a request on a listener the generation in force no longer has.
pub(super) fn removed() -> http::Response<super::body::Body> {
    answer(Reason::NoRoute, "this listener is being removed", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, read from its type: no argument is made.
    fn output_size<F, R>(_: F) -> usize
    where
        F: FnOnce(Arc<Shared>, SocketAddr, TcpStream, Arc<Peer>, watch::Receiver<bool>) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn task_size<F, R>(_: F) -> usize
    where
        F: FnOnce(Arc<Shared>, SocketAddr, TcpStream, Arc<Peer>, watch::Receiver<bool>) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// An endless answer in 16 KiB frames that counts what is taken of it.
    struct Endless(Arc<AtomicUsize>);

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
            static CHUNK: [u8; 16 * 1024] = [0; 16 * 1024];
            self.0.fetch_add(CHUNK.len(), Ordering::Relaxed);
            let chunk = bytes::Bytes::from_static(&CHUNK);
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
        }
    }

    /// An HTTP/2 stream holds at most [`H2_SEND_BUF`] of an answer its client has not taken
    /// (h2's send buffer; hyper's default, 400 KiB a stream, let one connection's 256 streams
    /// hold 100 MiB): a client that opened its windows wide and reads nothing has the answer
    /// taken from its body only that far, and what the pipe between them holds. (Paused
    /// time: the sleep ends once both sides have nothing more to do.)
    #[tokio::test(start_paused = true)]
    async fn an_h2_stream_holds_at_most_its_send_buffer_of_an_answer_not_read() {
        let taken = Arc::new(AtomicUsize::new(0));
        let (client, server) = tokio::io::duplex(16 * 1024);
        let builder = server_builder(&file::Runtime::default());
        let counted = taken.clone();
        let service = service_fn(move |_| {
            let body = Endless(counted.clone());
            async move { Ok::<_, Infallible>(http::Response::new(body)) }
        });
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (mut send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 30)
            .initial_connection_window_size(1 << 30)
            .handshake::<_, bytes::Bytes>(client)
            .await
            .expect("handshake");
        let mut conn = std::pin::pin!(conn);
        let request = http::Request::get("http://a/").body(()).expect("request");
        let (answer, _) = send.send_request(request, true).expect("stream");
        let answer = tokio::select! {
            answer = answer => answer.expect("answer"),
            end = &mut conn => panic!("the connection ended: {end:?}"),
        };
        assert_eq!(answer.status(), 200);
        // The client's connection is polled no more: nothing more is read of it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let taken = taken.load(Ordering::Relaxed);
        assert!(
            taken > 0 && taken <= 2 * H2_SEND_BUF,
            "{taken} bytes of an answer not read were taken from its body"
        );
    }

    /// A worker's socket hands out connections with `TCP_NODELAY` (and keepalive probes)
    /// already on, so the acceptor does not set them per connection (one syscall fewer each). (One worker: with two, the
    /// kernel picks which socket a connection goes to.)
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive_from_their_listener() {
        let own = super::super::bind::Listening::default();
        let Bound { sockets } =
            bind_each("127.0.0.1:0".parse().expect("addr"), 1, &own).expect("bind");
        let listener = &sockets[0].tcp;
        listener.set_nonblocking(false).expect("blocking");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("TCP_NODELAY"), "not inherited");
        // A client that takes none of its answer is aborted by the kernel after this long.
        let stall = socket2::SockRef::from(&accepted).tcp_user_timeout();
        assert_eq!(
            stall.expect("TCP_USER_TIMEOUT"),
            Some(super::super::bind::SEND_STALL)
        );
        // A client gone silently (a quiet tunnel, a long HTTP/2 stream) is found out as an
        // upstream is.
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"), "no keepalive");
        let keepalive = super::super::sock::KEEPALIVE;
        assert_eq!(
            sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            keepalive.idle
        );
        assert_eq!(
            sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            keepalive.interval
        );
        assert_eq!(
            sock.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            keepalive.probes
        );
    }

    fn wake_size<F: FnOnce(Parked) -> R, R>(_: F) -> usize {
        std::mem::size_of::<R>()
    }

    /// A connection serving requests holds the request path's futures inline: 5,312
    /// bytes in a test build of rustc 1.95 (5,248 before a token of a key its JWKS lacks came
    /// to wait for the JWKS's early read: a new await in the request path, 64 bytes however
    /// the verdict is kept through it (borrowed, moved out before, or not kept at all), 5,360
    /// with that verdict moved out before the wait; 5,328 before a client body's idle time moved into its fault
    /// cell, 16 bytes off a body that the request path's futures hold inline in several places:
    /// 80 came back, the 80 a session's merges had added when the joining of small upload
    /// frames for HTTP/2 upstreams grew the body by 16; 5,312 before
    /// a removed listener came to be held weakly, its lookup a borrowed-or-owned listener, 16
    /// more; 5,232 before that session's merges, and the bound moved to 5,344; 5,200 before a retry took its breaker's leave before its
    /// wait, to end the retries when the breaker would refuse it: the retry loop keeps the
    /// permit, 24 bytes, and a try the place it is in, 8, and the bound moved to 5,248; 5,168 before the upstream answer's idle timer, a small
    /// upload's head instant and tunnels following their connection's stop signal, each
    /// within 5,184 alone, and the bound moved to 5,216; 4,816 before the request path learnt to judge a try without
    /// the client's upload time, to keep a streamed body for a refused HTTP/2 stream, to wait
    /// for an HTTP/2 upstream's stream slot in rampart, to note a TLS connection's
    /// client-certificate rules and to note why an answer broke: each branch stayed under
    /// 5,120 alone, together they came to 5,168, and the bound moved to 5,184; 5,104 before the pool's `send`, the upstream connection's
    /// `exchange` and `exchange::try_once` became `fn`s returning `async move` blocks; 5,056 before a moved listener's connections looked up its
    /// new address and an HTTP/2 answer's body got the request's deadline, 32 bytes each; the
    /// lean server's parsed head, taken apart at once, gave 16 back; 4,928 before an awaited answer watched for its client's
    /// going and a request dropped unanswered kept what its 499 needs; 5,136 before its
    /// buffers were boxed, 6,144 before the path's
    /// `async fn`s became `fn`s returning `async move` blocks, 5,056 before parking added its
    /// state, 5,152 before hyper's part moved out to the connection's task). An `async fn`
    /// taking the request or the peer by value adds their size again.
    #[test]
    fn a_plain_connections_future_stays_small() {
        let size = output_size(serve_conn);
        assert!(
            size <= 5_312,
            "a plain connection's future is {size} bytes, over 5,312: see stack::handle's doc, \
             and `cargo +nightly rustc --lib -- -Zprint-type-sizes` for what grew"
        );
    }

    /// What stays of a parked connection is its task's own future (which boxes the rest) and
    /// the boxed wait for its socket: 488 and 712 bytes in a test build of rustc 1.95, a
    /// fifth of the future dropped, and the task within the C library's per-thread cache
    /// (1,032 bytes).
    #[test]
    fn a_parked_connection_keeps_little() {
        let task = task_size(conn_task);
        let wait = wake_size(Parked::wake);
        assert!(task <= 512, "a connection's task is {task} bytes");
        assert!(wait <= 1_024, "a parked connection's wait is {wait} bytes");
    }
}
