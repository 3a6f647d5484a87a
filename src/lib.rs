//! rampart: a sidecar reverse proxy that applies per-tenant rate limiting, circuit breaking,
//! timeouts, retries and load shedding from one YAML policy file.
//!
//! `main.rs` only parses the command line; everything it runs lives here so that tests and
//! benchmarks drive the same code in-process. [`Rampart::start`] binds the admin and data
//! listeners of a validated [`config::Config`] and returns a handle to reload or stop it.

// `deny`, not `forbid`: one module, `proxy::sock`, allows it for two lines that tell tokio's read
// buffer which bytes the kernel filled (a measured win: its module says which). Nothing else may.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod generation;
pub mod health;
pub mod logfile;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod sample;
pub mod shutdown;
pub mod store;
pub mod tenant;
pub mod throttle;
pub mod tls;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::{MonotonicClock, SharedClock};
use crate::config::Config;
use crate::generation::Generation;
use crate::metrics::Metrics;
pub use crate::proxy::shared::Shared;
use crate::reload::{ListenerSet, ReloadError};
use crate::tenant::tracked::TrackedTenants;

/// How long exit waits for the access log writers to write the lines still queued.
const ACCESS_LOG_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// A running rampart instance.
#[derive(Debug, Clone)]
pub struct Rampart {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
}

/// Why rampart could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin address could not be bound.
    #[error("{at}: cannot bind the admin listener on {addr}: {error}")]
    Admin {
        /// Where the file gives the address (`FILE:LINE:COL: admin.listen`).
        at: String,
        /// Address.
        addr: SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("{0}")]
    Listener(ReloadError),
}

/// Reads and validates the policy file at `path`, the certificate and key files it names
/// included (their errors sorted with the others, SPEC §14): what `rampart validate` reports,
/// and what `rampart run` refuses to start with. A reload reads the file the same way
/// ([`Config::load`]).
pub fn load_config(path: &std::path::Path) -> Result<Config, config::ConfigErrors> {
    Config::load(path)
}

/// Records in the audit trail a start refused because the policy file at `path` is invalid
/// (`errors`), when the file names an audit file all the same: a refused start is a start
/// attempt (SPEC §11). A failure to write is logged and changes nothing.
pub fn audit_refused_start(path: &std::path::Path, errors: &config::ConfigErrors) {
    let Ok(text) = config::read_policy(path) else {
        return;
    };
    let Some(file) = config::audit_file_of(&String::from_utf8_lossy(&text)) else {
        return;
    };
    let errors = errors.0.iter().map(|e| e.to_string()).collect();
    let entry = audit::Entry::failed_start(audit::sha256_hex(&text), errors);
    let failures = prometheus::IntCounter::new("unused", "a refused start exports no metrics");
    if let Ok(failures) = failures {
        audit::AuditLog::new(failures).record(Some(&file), &entry);
    }
}

// === impl Rampart ===

impl Rampart {
    /// Binds the admin and data listeners of `config` and starts serving, on the calling
    /// runtime only.
    pub async fn start(config: Config) -> Result<Rampart, StartError> {
        Self::start_on(config, workers::Workers::here()).await
    }

    /// Like [`Rampart::start`], with every worker of `workers` accepting and serving data
    /// connections (`rampart run` with `RAMPART_WORKERS` above 1).
    pub async fn start_on(
        config: Config,
        workers: workers::Workers,
    ) -> Result<Rampart, StartError> {
        let clock: SharedClock = Arc::new(MonotonicClock::new());
        let metrics = Metrics::register();
        let audit = audit::AuditLog::new(metrics.audit_write_failures.clone());
        let labels = tenant::Labels::new(config.file.tenants.metrics_labels as usize);
        let admin_listen = config.file.admin.listen;
        let admin_tcp = match proxy::listener::bind(admin_listen) {
            Ok(tcp) => tcp,
            Err(error) => {
                let failed = StartError::Admin {
                    at: config.place(&config::Section::AdminListen),
                    addr: admin_listen,
                    error,
                };
                // A start attempt all the same (SPEC §11), as one whose listener cannot bind.
                let entry =
                    audit::Entry::failed_start(config.sha256.clone(), vec![failed.to_string()]);
                audit.record(audit_path(&config), &entry);
                return Err(failed);
            }
        };
        let admin_addr = admin_tcp.local_addr().unwrap_or(admin_listen);
        // An empty generation first; `apply` builds the real one and binds its listeners.
        let empty = Config {
            file: config::File {
                listeners: Vec::new(),
                ..config.file.clone()
            },
            ..config.clone()
        };
        let balance = proxy::balance::Balance::new(&metrics, workers.handles().len());
        let shared = Arc::new(Shared {
            balance,
            access_logs: proxy::access_log::Sinks::new(metrics.access_log_dropped.clone()),
            exporters: otel::Exporters::new(&metrics),
            current: ArcSwap::from_pointee(Generation::empty(Arc::new(empty))),
            metrics,
            clock,
            labels,
            tracked: TrackedTenants::new(config.file.tenants.max_tracked),
            empty_label: Arc::from(""),
            draining: AtomicBool::new(false),
            listeners: tokio::sync::Mutex::new(ListenerSet::new()),
            listening: proxy::bind::Listening::default(),
            audit,
            workers,
            tunnels: proxy::tunnel::Tunnels::default(),
            drains: generation::Drains::default(),
            retiring: proxy::listener::Retiring::default(),
        });
        let started = {
            let mut set = shared.listeners.lock().await;
            reload::apply(&shared, &mut set, config.clone())
        };
        let mut entry = reload::audit_entry(audit::Event::Start, audit::Source::Start, &started);
        // A start that failed to bind still names the (valid) config it tried.
        entry.sha256.get_or_insert_with(|| config.sha256.clone());
        shared.audit.record(audit_path(&config), &entry);
        started.map_err(StartError::Listener)?;
        admin::spawn(shared.clone(), admin_tcp);
        tracing::info!(admin = %admin_addr, "rampart started");
        Ok(Rampart { shared, admin_addr })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of the listener named `name`.
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let gen = self.shared.current.load_full();
        let l = gen.config.file.listeners.iter().find(|l| l.name == name)?;
        self.shared
            .listeners
            .lock()
            .await
            .get(&l.listen)
            .map(|h| h.local_addr)
    }

    /// The file the config in force came from.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.shared.current.load().config.path.clone()
    }

    /// Reloads the config file (as SIGHUP does); returns the new sha256.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        self.reload_from(audit::Source::Sighup).await
    }

    /// Reloads the config file, recording `source` in the audit trail.
    pub async fn reload_from(&self, source: audit::Source) -> Result<String, ReloadError> {
        reload::reload(&self.shared, source).await
    }

    /// What every connection shares; for tests and the admin endpoints.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets requests in flight finish (up to `shutdown_grace`), returns.
    ///
    /// `/readyz` answers 503 at once; listeners keep serving for `runtime.drain_delay`, so load
    /// balancers that poll readiness stop sending first, and only then stop accepting.
    pub async fn shutdown(&self) {
        self.shutdown_from(audit::Source::Sigterm).await
    }

    /// [`Rampart::shutdown`], recording `source` in the audit trail as shutdown begins.
    pub async fn shutdown_from(&self, source: audit::Source) {
        self.shutdown_unless(source, std::future::pending()).await
    }

    /// [`Rampart::shutdown_from`], unless `hurry` ends first (a second SIGTERM or SIGINT):
    /// then it stops waiting, for the drain delay, requests in flight and tunnels alike, and
    /// returns once the spans and access log lines already queued are written (at most
    /// 2 s each). Requests still in flight then end with the process,
    /// unanswered and unlogged; the audit trail has the shutdown already (each entry is
    /// fsynced as it is written).
    pub async fn shutdown_unless(&self, source: audit::Source, hurry: impl Future<Output = ()>) {
        // From here a reload is refused (`ReloadError::Draining`), unaudited.
        self.shared.draining.store(true, Ordering::SeqCst);
        let mut hurry = std::pin::pin!(hurry);
        // A reload already under way (it looked at `draining` before) holds the listeners'
        // lock until its entry is written: the shutdown's comes after it, and names the
        // policy in force at exit. Before, it was written at once, and such a reload's after
        // it. (A second signal does not wait for the reload: the entry is written then.)
        let set = tokio::select! {
            set = self.shared.listeners.lock() => Some(set),
            () = &mut hurry => None,
        };
        let hurried = set.is_none();
        let gen = self.shared.current.load_full();
        let entry = audit::Entry {
            event: audit::Event::Shutdown,
            source,
            sha256: Some(gen.config.sha256.clone()),
            errors: Vec::new(),
        };
        self.shared.audit.record(audit_path(&gen.config), &entry);
        drop(set);
        let hurried = hurried
            || tokio::select! {
                () = self.drain() => false,
                () = &mut hurry => true,
            };
        // The spans of the last requests, bounded by each exporter's timeout (and hurried, by
        // the access log's bound): those of the config in force, and those of requests begun
        // before a reload that replaced their exporter.
        let flush = self.shared.exporters.flush();
        if hurried {
            let _ = tokio::time::timeout(ACCESS_LOG_CLOSE, flush).await;
        } else {
            flush.await;
        }
        // The access log lines still queued, bounded in case a destination hangs.
        self.shared.access_logs.close(ACCESS_LOG_CLOSE).await;
        if hurried {
            tracing::warn!("exiting before requests in flight finished");
        } else {
            tracing::info!("drained; exiting");
        }
    }

    /// The drain delay, then the listeners' drain and the tunnels', within `shutdown_grace`.
    /// The listeners' are those in force and those a reload took away that still drain.
    async fn drain(&self) {
        let (grace, delay) = {
            let gen = self.shared.current.load();
            let rt = &gen.config.file.runtime;
            (rt.shutdown_grace.0, rt.drain_delay.0)
        };
        if !delay.is_zero() {
            tracing::info!(drain_delay = ?delay, "not ready; still serving until the drain delay ends");
            tokio::time::sleep(delay).await;
        }
        let until = tokio::time::Instant::now() + grace;
        let handles: Vec<_> = self
            .shared
            .listeners
            .lock()
            .await
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            self.shared.retiring.drain(h, until, ());
        }
        self.shared.retiring.wait(until).await;
        // Tunnels are not connections the listeners track: the same grace, then cut.
        self.shared.tunnels.drain(until).await;
    }
}

/// The audit file `cfg` names, if any.
fn audit_path(cfg: &Config) -> Option<&std::path::Path> {
    cfg.file.audit.as_ref().map(|a| a.file.as_path())
}
