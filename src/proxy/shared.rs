//! What every connection and request of one rampart instance shares: the generation in force,
//! metrics, the clock, tenant labels and the per-tenant cap, the draining flag and the running
//! listeners.
//!
//! It lives with the data plane, which reads it on every request; the runtime (`lib.rs`,
//! `reload.rs`) builds it once and swaps generations in it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::access_log::Sinks;
use super::listener::ListenerSet;
use crate::clock::SharedClock;
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::tenant;
use crate::tenant::tracked::TrackedTenants;

/// What every connection and request of one rampart instance shares.
#[derive(Debug)]
pub struct Shared {
    /// The config generation in force.
    pub current: ArcSwap<Generation>,
    /// This instance's metrics.
    pub metrics: Metrics,
    /// Time for the policies.
    pub clock: SharedClock,
    /// Tenant label folding (stable across reloads).
    pub labels: tenant::Labels,
    /// The empty label (requests refused before a tenant is known).
    pub empty_label: Arc<str>,
    /// Per-tenant state entries of every rate limiter, capped by `tenants.max_tracked`.
    pub tracked: Arc<TrackedTenants>,
    /// Set once shutdown began; `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Access log destinations, one writer each (reopened on reload).
    pub access_logs: Sinks,
    /// The OTLP exporters, those of older generations among them (shutdown flushes each).
    pub exporters: crate::otel::Exporters,
    /// Running listeners; the lock also serialises reloads.
    pub listeners: tokio::sync::Mutex<ListenerSet>,
    /// The listener sockets still open, the running listeners' and those of listeners a
    /// reload took away that have not closed yet: the sockets a reload may bind beside.
    pub listening: super::bind::Listening,
    /// The audit trail of starts, reloads and shutdowns.
    pub audit: crate::audit::AuditLog,
    /// The runtimes that accept and serve data connections (worker 0: the one rampart
    /// started on).
    pub workers: crate::workers::Workers,
    /// Open client connections per worker, and which worker serves the next one.
    pub balance: super::balance::Balance,
    /// Open CONNECT tunnels, which a drain waits for and then cuts.
    pub tunnels: super::tunnel::Tunnels,
    /// The addresses of listeners a reload took away that still drain (a move from there is
    /// remembered until its drain is over: `Generation::moved`).
    pub drains: crate::generation::Drains,
    /// The drains of listeners taken out of `listeners` (by a reload, or by shutdown), which
    /// shutdown waits for.
    pub retiring: super::listener::Retiring,
}

// === impl Shared ===

impl Shared {
    /// Per-tenant state entries in memory now.
    pub fn tracked_tenants(&self) -> u64 {
        self.tracked.len()
    }
}
