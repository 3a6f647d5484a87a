//! The global store (SPEC §9): state shared by every rampart that names the same Redis.
//!
//! Why Redis and not a cluster of our own: the fleet already runs one, it decides atomically
//! (a Lua script runs alone), and keys expire by themselves. The client is the `redis` crate on
//! tokio, one multiplexed connection per URL (every request of every route pipelines on it).
//! Its own `ConnectionManager` reconnects on its own schedule and hides whether the link is
//! up; we keep the link in an `ArcSwapOption` and reconnect from one supervisor task behind a
//! breaker (`breaker.rs`), so the request path can tell "down" without waiting and
//! `rampart_global_store_up` says what the breaker says.
//!
//! Rules that hold whatever happens to Redis:
//! - a call never takes longer than the store's `timeout` (a tokio timeout around it);
//! - while the breaker is open no call is made at all: the caller decides at once;
//! - the supervisor reconnects with jittered backoff and probes with `PING`; when the probe
//!   answers, calls resume by themselves;
//! - a connection that ends (Redis restarted or killed, an idle timeout, a reset) is noticed
//!   when it ends, with no call in flight: we drive each connection's reader ourselves, and its
//!   end marks the store down and wakes the supervisor, which reconnects at once, so
//!   `rampart_global_store_up` never reads 1 over a dead link;
//! - for one `timeout` after a connection is lost, while that immediate reconnect runs, a call
//!   waits for it (within its own timeout) instead of deciding by `on_store_error`, and a call
//!   that finds its connection broken under it tries once more on the new one: a Redis that
//!   dropped the link but answers (a restart, its idle `timeout`, a proxy in between) costs a
//!   connect, not refusals;
//! - a link that goes quiet without closing (a Redis stopped by SIGSTOP or stuck in a long
//!   script, a host gone silent, a proxy in between that holds the socket) is noticed with no
//!   traffic too: a connection that has answered nothing for [`KEEPALIVE`] is sent a `PING`, and
//!   one left unanswered for [`KEEPALIVE_PATIENCE`] (or the store's `timeout`, if longer) is
//!   dropped as lost;
//! - `/readyz` never looks here.
//!
//! The store outlives reloads: [`GlobalStore::build`] keeps the link when the URL is the same.
//! Keys (`key_prefix`, route, tenant) are built here, so every user of the store agrees on them.

pub(crate) mod breaker;
pub mod idempotency;
pub mod lease;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntGauge};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisError, RedisResult};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use self::breaker::{Breaker, Failure};
use crate::clock::SharedClock;
use crate::config::file::{self, redact_url as redacted};
use crate::metrics::{Metrics, RATELIMIT_BACKEND};

/// Longest a (re)connect may take; it runs in the supervisor, never on a request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle supervisor checks that its store still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long a connection may answer nothing before the supervisor sends it a `PING`.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long that `PING` may go unanswered before the connection is dropped as lost. Longer
/// than a call's usual timeout: one slow answer from a busy Redis must not cost a reconnect.
const KEEPALIVE_PATIENCE: Duration = Duration::from_secs(1);

/// One configured store: its link, its key prefix and its timeout.
#[derive(Debug)]
pub struct GlobalStore {
    cfg: file::RedisStore,
    link: Arc<Link>,
}

/// Why a store call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The breaker is open or there is no connection: no call was made.
    #[error("global store is down")]
    Down,
    /// No answer within the timeout.
    #[error("global store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error, or the connection failed.
    #[error("global store error: {0}")]
    Failed(#[from] RedisError),
}

/// The connection to one URL, shared by every generation that names it.
#[derive(Debug)]
struct Link {
    url: String,
    /// The client of the URL (a `rediss://` one's in its `redis://` form: the TLS is ours).
    client: redis::Client,
    /// How a `rediss://` store's connections are made secure, as the config in force says
    /// (a reload swaps it in; the next connection uses it, an open one goes on).
    tls: ArcSwapOption<Secure>,
    conn: ArcSwapOption<Conn>,
    /// The id of the next connection.
    next_id: AtomicU64,
    /// Woken when a probe ends (a call waiting for the reconnect after a lost connection).
    probed: Notify,
    /// Clock nanoseconds until which a reconnect started by a lost connection is awaited by
    /// calls (0: none).
    reconnect_until: AtomicU64,
    /// Clock nanoseconds of the last answer the store gave (a call's or a `PING`'s).
    answered: AtomicU64,
    /// Mirrors `breaker.is_closed()` for a lock-free look on the request path.
    up: AtomicBool,
    /// An outage was logged (once per outage, not per probe).
    warned: AtomicBool,
    breaker: parking_lot::Mutex<Breaker>,
    wake: Arc<Notify>,
    errors: IntCounter,
    up_gauge: IntGauge,
    clock: SharedClock,
    /// The probe's patience in nanoseconds: the timeout of the config in force (a store that
    /// answers slower than that is down by definition). A reload that keeps the link sets it,
    /// so a longer `timeout` lets a store that was too slow for the old one come up.
    probe_timeout: AtomicU64,
}

/// One connection, with an id that tells it from the connection that replaced it.
#[derive(Debug)]
struct Conn {
    conn: MultiplexedConnection,
    id: u64,
}

/// A `rediss://` store's TLS: the client config (verified against `tls.ca` or the system roots,
/// with the client certificate if given) and the name the store's certificate must carry.
#[derive(Debug)]
struct Secure {
    config: Arc<ClientConfig>,
    server_name: String,
}

// === impl GlobalStore ===

impl GlobalStore {
    /// The store of `cfg`; the link of `old` is kept when its URL is the same, so a reload
    /// that does not change the URL does not reconnect. `tls` is the client config of a
    /// `rediss://` URL (`TlsFiles::store`); a kept link takes it for its next connection.
    ///
    /// Must run inside a tokio runtime (the supervisor task is spawned here). A URL that the
    /// client refuses (validation checked it), or a `rediss://` one without `tls`, gives `None`.
    pub fn build(
        cfg: &file::GlobalStore,
        old: Option<&Arc<GlobalStore>>,
        tls: Option<Arc<ClientConfig>>,
        metrics: &Metrics,
        clock: &SharedClock,
    ) -> Option<Arc<GlobalStore>> {
        let cfg = &cfg.redis;
        let (client, secure) = match client_of(cfg, tls) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "global_store.redis refused by the client");
                return None;
            }
        };
        if let Some(o) = old.filter(|o| o.link.url == cfg.url) {
            o.link.tls.store(secure);
            o.link
                .probe_timeout
                .store(breaker::nanos(cfg.timeout.0), Ordering::Relaxed);
            if o.cfg == *cfg {
                return Some(o.clone());
            }
            return Some(Arc::new(GlobalStore {
                cfg: cfg.clone(),
                link: o.link.clone(),
            }));
        }
        let wake = Arc::new(Notify::new());
        let link = Arc::new(Link {
            url: cfg.url.clone(),
            client,
            tls: ArcSwapOption::new(secure),
            conn: ArcSwapOption::empty(),
            next_id: AtomicU64::new(0),
            probed: Notify::new(),
            reconnect_until: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            up: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            breaker: parking_lot::Mutex::new(Breaker::new()),
            wake: wake.clone(),
            errors: metrics
                .ratelimit_backend_errors
                .with_label_values(&[RATELIMIT_BACKEND]),
            up_gauge: metrics.global_store_up.with_label_values::<&str>(&[]),
            clock: clock.clone(),
            probe_timeout: AtomicU64::new(breaker::nanos(cfg.timeout.0)),
        });
        link.up_gauge.set(0);
        tokio::spawn(supervise(Arc::downgrade(&link), wake));
        Some(Arc::new(GlobalStore {
            cfg: cfg.clone(),
            link,
        }))
    }

    /// Longest a request waits on the store.
    pub fn timeout(&self) -> Duration {
        self.cfg.timeout.0
    }

    /// Whether calls go to the store now (breaker closed, connected).
    pub fn is_up(&self) -> bool {
        self.link.up.load(Ordering::Acquire)
    }

    /// Whether a call would go to the store: it is up, or its connection was just lost and
    /// the immediate reconnect is running (a call waits for it within the timeout).
    pub fn may_answer(&self) -> bool {
        self.is_up() || self.link.reconnecting()
    }

    /// The key of `tenant` on the route labelled `route`: `PREFIX{ROUTE}:t:TENANT`.
    ///
    /// The hash tag is the route, so the tenant's keys and the route's `total` key sit in one
    /// Redis Cluster slot and one script may touch both. The route label is escaped so that a
    /// brace in it can never move the tag.
    pub fn tenant_key(&self, route: &str, tenant: &str) -> String {
        let mut k = route_base(&self.cfg.key_prefix, route);
        k.push_str(":t:");
        k.push_str(tenant);
        k
    }

    /// `PREFIX{ROUTE}`: the start of every key of the route labelled `route`.
    pub(crate) fn key_base(&self, route: &str) -> String {
        route_base(&self.cfg.key_prefix, route)
    }

    /// The key of the route's `total` limits: `PREFIX{ROUTE}:total`.
    pub fn total_key(&self, route: &str) -> String {
        let mut k = route_base(&self.cfg.key_prefix, route);
        k.push_str(":total");
        k
    }

    /// Runs `f` on the connection, within the timeout and behind the breaker.
    ///
    /// A connection found broken by the call is replaced at once (the supervisor reconnects
    /// with no wait); the call waits for that within its timeout and runs `f` once more on the
    /// new connection.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let link = &*self.link;
        let timeout = self.timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        if !link.up.load(Ordering::Acquire) && !link.reconnected_by(deadline).await {
            return Err(StoreError::Down);
        }
        let mut retried = false;
        loop {
            let Some(conn) = link.conn.load_full() else {
                return Err(StoreError::Down);
            };
            match tokio::time::timeout_at(deadline, f(conn.conn.clone())).await {
                Ok(Ok(v)) => {
                    link.breaker.lock().success();
                    link.answered
                        .store(link.clock.now_nanos(), Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let kind = failure_of(&e);
                    link.failed(kind, conn.id);
                    if kind == Failure::Soft || retried || !link.reconnected_by(deadline).await {
                        return Err(StoreError::Failed(e));
                    }
                    retried = true;
                }
                Err(_) => {
                    link.failed(Failure::Soft, conn.id);
                    return Err(StoreError::Timeout(timeout));
                }
            }
        }
    }
}

// === impl Link ===

impl Link {
    /// A call on connection `id` failed. A broken connection counts once, by whoever saw it
    /// first (a call, or its reader ending): a late report of a connection already replaced
    /// must not open the breaker over the new one.
    fn failed(&self, kind: Failure, id: u64) {
        if kind == Failure::Broken {
            self.lost(id, "the connection broke under a call");
            return;
        }
        self.errors.inc();
        let now = self.clock.now_nanos();
        if self.breaker.lock().failure(kind, now, fastrand::f64()) {
            self.down("calls failed");
        }
    }

    /// Connection `id` is gone (its reader ended, or a call found it broken): if it is still
    /// the one in use, drop it, open the breaker and wake the supervisor to reconnect at once.
    fn lost(&self, id: u64, why: &str) {
        let current = self.conn.load();
        if current.as_ref().is_none_or(|c| c.id != id) {
            return;
        }
        let prev = self.conn.compare_and_swap(&*current, None);
        if !same(&prev, &current) {
            return;
        }
        self.errors.inc();
        let now = self.clock.now_nanos();
        let opened = self
            .breaker
            .lock()
            .failure(Failure::Broken, now, fastrand::f64());
        if opened {
            self.reconnect_until.store(
                now.saturating_add(self.probe_timeout_nanos()),
                Ordering::Release,
            );
            self.down(why);
        } else {
            self.wake.notify_one();
        }
    }

    fn probe_timeout_nanos(&self) -> u64 {
        self.probe_timeout.load(Ordering::Relaxed)
    }

    fn probe_timeout(&self) -> Duration {
        Duration::from_nanos(self.probe_timeout_nanos())
    }

    /// A lost connection's immediate reconnect is running and may still be waited for.
    fn reconnecting(&self) -> bool {
        self.clock.now_nanos() < self.reconnect_until.load(Ordering::Acquire)
    }

    /// Whether the store is up, waiting (at most until `deadline`) for the reconnect of a
    /// connection just lost when one is running; an outage does not wait.
    async fn reconnected_by(&self, deadline: tokio::time::Instant) -> bool {
        let probed = self.probed.notified();
        tokio::pin!(probed);
        probed.as_mut().enable();
        if self.up.load(Ordering::Acquire) {
            return true;
        }
        if !self.reconnecting() {
            return false;
        }
        let _ = tokio::time::timeout_at(deadline, probed).await;
        self.up.load(Ordering::Acquire)
    }

    fn down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) && !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(url = %redacted(&self.url), why, "global store down; rate limits follow on_store_error");
        }
        self.up_gauge.set(0);
        self.wake.notify_one();
    }

    /// Reconnects if needed, then `PING`s; closes the breaker on an answer in time.
    async fn probe(self: &Arc<Self>) {
        let conn = match self.conn.load_full() {
            Some(c) => c.conn.clone(),
            None => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&cfg)).await {
                    Ok(Ok(c)) => {
                        let conn = c.conn.clone();
                        self.conn.store(Some(c));
                        conn
                    }
                    Ok(Err(e)) => return self.probe_failed(failure_of(&e), &e),
                    Err(_) => return self.probe_failed(Failure::Soft, &"connect timed out"),
                }
            }
        };
        let mut conn = conn;
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.probe_timeout(), ping).await {
            Ok(Ok(_)) => {
                self.answered
                    .store(self.clock.now_nanos(), Ordering::Relaxed);
                self.breaker.lock().close();
                self.up.store(true, Ordering::Release);
                self.warned.store(false, Ordering::Release);
                self.up_gauge.set(1);
                self.reconnect_until.store(0, Ordering::Release);
                self.probed.notify_waiters();
                tracing::info!(url = %redacted(&self.url), "global store up");
            }
            Ok(Err(e)) => self.probe_failed(failure_of(&e), &e),
            Err(_) => self.probe_failed(Failure::Soft, &"PING timed out"),
        }
    }

    /// The keepalive of an up link whose connection has answered nothing for [`KEEPALIVE`]: a
    /// `PING`; no answer within its patience drops the connection as lost (the breaker opens,
    /// the supervisor reconnects and probes), an error answer counts as a call's failure.
    async fn keepalive(&self) {
        let now = self.clock.now_nanos();
        let quiet = now.saturating_sub(self.answered.load(Ordering::Relaxed));
        if !self.up.load(Ordering::Acquire) || quiet < breaker::nanos(KEEPALIVE) {
            return;
        }
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let mut c = conn.conn.clone();
        let cmd = redis::cmd("PING");
        let patience = self.probe_timeout().max(KEEPALIVE_PATIENCE);
        match tokio::time::timeout(patience, cmd.query_async::<String>(&mut c)).await {
            Ok(Ok(_)) => self
                .answered
                .store(self.clock.now_nanos(), Ordering::Relaxed),
            Ok(Err(e)) => self.failed(failure_of(&e), conn.id),
            Err(_) => self.lost(conn.id, "the connection went quiet (a PING unanswered)"),
        }
    }

    /// A new connection: TCP, for `rediss://` then our TLS handshake (the store's certificate
    /// verified for its name), over which the client speaks (`AUTH`, `SELECT` as the URL says).
    ///
    /// The connection's driver (its reader and writer) is our task, not the client's: when it
    /// ends, the connection is closed (Redis went away, or every handle of it was dropped), and
    /// [`Link::lost`] hears of it at once, whether or not a call was in flight.
    async fn connect(self: &Arc<Self>, cfg: &AsyncConnectionConfig) -> RedisResult<Arc<Conn>> {
        let info = self.client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(RedisError::from(std::io::Error::other(
                "the store must be a host and port",
            )));
        };
        let tcp = TcpStream::connect((host.as_str(), *port)).await?;
        tcp.set_nodelay(true)?;
        let settings = info.redis_settings();
        let Some(secure) = self.tls.load_full() else {
            let (conn, driver) =
                MultiplexedConnection::new_with_config(settings, tcp, cfg.clone()).await?;
            return Ok(self.drive(conn, driver));
        };
        let stream =
            crate::tls::client::connect(secure.config.clone(), &secure.server_name, tcp).await?;
        let (conn, driver) =
            MultiplexedConnection::new_with_config(settings, stream, cfg.clone()).await?;
        Ok(self.drive(conn, driver))
    }

    /// Runs a new connection's `driver` in a task that reports its end to [`Link::lost`].
    fn drive(
        self: &Arc<Self>,
        conn: MultiplexedConnection,
        driver: impl Future<Output = ()> + Send + 'static,
    ) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            driver.await;
            if let Some(link) = link.upgrade() {
                link.lost(id, "the connection closed");
            }
        });
        Arc::new(Conn { conn, id })
    }

    /// A probe got no answer; the first of an outage is logged with why (a refused connect,
    /// a certificate that does not verify, a wrong password).
    fn probe_failed(&self, kind: Failure, why: &dyn std::fmt::Display) {
        self.errors.inc();
        if !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(url = %redacted(&self.url), error = %why, "global store unreachable; rate limits follow on_store_error until it answers");
        }
        if kind == Failure::Broken {
            self.conn.store(None);
        }
        let now = self.clock.now_nanos();
        self.breaker.lock().probe_failed(now, fastrand::f64());
        self.reconnect_until.store(0, Ordering::Release);
        self.probed.notify_waiters();
    }
}

/// The supervisor of one link: probes while the breaker is open, sleeps while it is closed,
/// and ends when the link is dropped (its URL left the config).
async fn supervise(link: Weak<Link>, wake: Arc<Notify>) {
    loop {
        let Some(l) = link.upgrade() else { return };
        let (closed, retry_at) = {
            let b = l.breaker.lock();
            (b.is_closed(), b.retry_at())
        };
        let now = l.clock.now_nanos();
        drop(l);
        if closed {
            let woken = tokio::time::timeout(IDLE_CHECK, wake.notified()).await;
            if woken.is_err() {
                let Some(l) = link.upgrade() else { return };
                l.keepalive().await;
            }
            continue;
        }
        let wait = Duration::from_nanos(retry_at.saturating_sub(now)).min(IDLE_CHECK);
        tokio::time::sleep(wait).await;
        let Some(l) = link.upgrade() else { return };
        if l.clock.now_nanos() >= l.breaker.lock().retry_at() {
            l.probe().await;
        }
    }
}

/// The client of `cfg`'s URL and, for `rediss://`, how its connections are made secure: the
/// client gets the URL in its `redis://` form (host, port, credentials, database), and the
/// handshake is ours, on `tls` (which start and reload read for every `rediss://` store). The
/// certificate's name is `tls.server_name`, else the URL's host (an IPv6 one without brackets,
/// as the client gives it).
fn client_of(
    cfg: &file::RedisStore,
    tls: Option<Arc<ClientConfig>>,
) -> RedisResult<(redis::Client, Option<Arc<Secure>>)> {
    if !cfg.is_tls() {
        return Ok((redis::Client::open(cfg.url.as_str())?, None));
    }
    let Some(config) = tls else {
        return Err(RedisError::from(std::io::Error::other(
            "a rediss:// store has no TLS config",
        )));
    };
    let plain = format!("redis://{}", &cfg.url["rediss://".len()..]);
    let client = redis::Client::open(plain.as_str())?;
    let ConnectionAddr::Tcp(host, _) = client.get_connection_info().addr() else {
        return Err(RedisError::from(std::io::Error::other(
            "a rediss:// store must be a host and port",
        )));
    };
    let server_name = cfg
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| host.clone());
    Ok((
        client,
        Some(Arc::new(Secure {
            config,
            server_name,
        })),
    ))
}

/// `PREFIX{ROUTE}` with `{`, `}` and `%` of the route percent-escaped.
fn route_base(prefix: &str, route: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + route.len() + 16);
    k.push_str(prefix);
    k.push('{');
    for c in route.chars() {
        match c {
            '{' => k.push_str("%7B"),
            '}' => k.push_str("%7D"),
            '%' => k.push_str("%25"),
            c => k.push(c),
        }
    }
    k.push('}');
    k
}

/// Whether two loads of the connection slot hold the same connection.
fn same(a: &Option<Arc<Conn>>, b: &Option<Arc<Conn>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A refused, reset or closed connection must be made anew; anything else may pass.
fn failure_of(e: &RedisError) -> Failure {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        Failure::Broken
    } else {
        Failure::Soft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_prefix_route_tag_and_tenant_and_a_brace_cannot_move_the_tag() {
        let mut k = route_base("rampart:", "app");
        k.push_str(":t:acme");
        assert_eq!(k, "rampart:{app}:t:acme");
        assert_eq!(route_base("p:", "a{b}%c"), "p:{a%7Bb%7D%25c}");
        assert_eq!(
            route_base("p:", "a%7Bb"),
            "p:{a%257Bb}",
            "escapes never collide"
        );
    }

    #[test]
    fn passwords_stay_out_of_logs_and_config_dumps() {
        assert_eq!(redacted("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redacted("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redacted("redis://token@h"), "redis://***@h");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        let cfg = file::RedisStore {
            url: "redis://u:p@ss@h:1".into(),
            key_prefix: "x:".into(),
            timeout: crate::config::units::Dur::from_millis(5),
            tls: None,
        };
        let shown = serde_json::to_string(&cfg).expect("serializable");
        assert!(
            shown.contains("redis://u:***@h:1") && !shown.contains("ss@"),
            "{shown}"
        );
    }
}
