//! Reload: read, validate, build, bind, swap — or keep the config in force.
//!
//! Triggered by SIGHUP, `POST /reload` or `--watch`. Reloads are serialised. New listener
//! addresses are bound before the swap (a bind failure fails the reload and changes nothing);
//! the generation is swapped atomically; listeners whose address left the file drain and close.
//! Requests in flight finish under the generation they started with.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit::{Entry, Event, Source};
use crate::config::{Config, ConfigErrors, Section};
use crate::generation::Generation;
use crate::proxy::listener;
use crate::proxy::shared::Shared;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A new listener address could not be bound.
    #[error("{at}: cannot bind listener {name} on {addr}: {error}")]
    Bind {
        /// Where the file gives the address (`FILE:LINE:COL: listeners[i].listen`).
        at: String,
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The change needs a restart; the config in force stays.
    #[error("{0}")]
    RestartNeeded(String),
    /// No file to reload from (the config was given as text).
    #[error("no config file to reload from")]
    NoFile,
    /// Shutdown has begun: the listeners are draining, and none is bound again.
    #[error("rampart is shutting down; the configuration is not reloaded")]
    Draining,
}

pub use crate::proxy::listener::ListenerSet;

/// Reloads from the file in force's path; returns the new sha256. The attempt, whatever its
/// result, is recorded in the audit trail with `source`.
pub async fn reload(shared: &Arc<Shared>, source: Source) -> Result<String, ReloadError> {
    let mut set = shared.listeners.lock().await;
    // The trail in force before the attempt: a reload that moves the trail away from it (or
    // turns auditing off) is recorded there too, so no change leaves it unrecorded.
    let before = shared.current.load_full().config.clone();
    let result = reload_inner(shared, &mut set).await;
    if let Err(ReloadError::Draining) = result {
        // Not an attempt at a policy change: the trail ends with the shutdown.
        tracing::warn!("reload asked for while shutting down; refused");
        return result;
    }
    if result.is_err() {
        // Log rotation (rename, then SIGHUP) asks for the reopen whatever the file now says: a
        // refused reload still lets the renamed access log file go (a success did in `apply`).
        shared.access_logs.reopen();
    }
    // After a success the new config names the trail; after a failure, the one still in force.
    let cfg = shared.current.load_full().config.clone();
    let mut entry = audit_entry(Event::Reload, source, &result);
    if entry.sha256.is_none() {
        entry.sha256 = cfg.path.as_deref().and_then(file_sha256);
    }
    let path = cfg.file.audit.as_ref().map(|a| a.file.as_path());
    let was = before.file.audit.as_ref().map(|a| a.file.as_path());
    // Still under the listeners' lock: entries go to the trail in the order reloads applied.
    shared.audit.record_change(was, path, &entry);
    drop(set);
    let m = &shared.metrics;
    match &result {
        Ok(sha) => {
            m.config_reloads.with_label_values(&["success"]).inc();
            tracing::info!(sha256 = %sha, "configuration reloaded");
        }
        Err(ReloadError::Invalid(errs)) => {
            m.config_reloads.with_label_values(&["failure"]).inc();
            for e in &errs.0 {
                tracing::error!(error = %e, "reload refused; the configuration in force stays");
            }
        }
        Err(e @ ReloadError::RestartNeeded(_)) => {
            // A file that validates but changes what only a restart applies: refused as an
            // invalid file is, not failed as a bind is.
            m.config_reloads.with_label_values(&["failure"]).inc();
            tracing::error!(error = %e, "reload refused; the configuration in force stays");
        }
        Err(e) => {
            m.config_reloads.with_label_values(&["failure"]).inc();
            tracing::error!(error = %e, "reload failed; the configuration in force stays");
        }
    }
    result
}

async fn reload_inner(shared: &Arc<Shared>, set: &mut ListenerSet) -> Result<String, ReloadError> {
    // Shutdown marks this before it takes the listeners (under this lock): a reload after
    // it would bind them again, to be cut when the process exits.
    if shared.draining.load(Ordering::SeqCst) {
        return Err(ReloadError::Draining);
    }
    let path = shared
        .current
        .load()
        .config
        .path
        .clone()
        .ok_or(ReloadError::NoFile)?;
    let path2 = path.clone();
    let cfg = tokio::task::spawn_blocking(move || Config::load(&path2))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors(vec![crate::config::ConfigError {
                origin: path.display().to_string(),
                line: 0,
                column: 0,
                path: String::new(),
                message: format!("reading the file failed: {e}"),
            }]))
        })
        .map_err(ReloadError::Invalid)?;
    apply(shared, set, cfg)
}

/// Swaps in `cfg`: binds new listeners, swaps the generation, drains removed listeners.
pub fn apply(
    shared: &Arc<Shared>,
    set: &mut ListenerSet,
    cfg: Config,
) -> Result<String, ReloadError> {
    let cfg = Arc::new(cfg);
    let old = shared.current.load_full();
    refuse_restart_only(&old.config, &cfg)?;
    // Certificates and keys were read by this load's validation (`Config::load`), at every
    // reload: a bad file refused the whole config, its errors sorted with the rest. The configs
    // it built are served as they are: what serves is what validated.
    let tls = &cfg.read.tls;
    let mut bound = Vec::new();
    // A listener may move to an address overlapping one rampart listens on now (`127.0.0.1:P`
    // to `0.0.0.0:P`): the new socket binds beside the old, which drains after the swap. So may
    // one put back where a reload just before took it away, beside its old socket still
    // closing: rampart's own sockets are all those still open, not only the set's.
    let workers = shared.workers.handles().len();
    for (i, l) in cfg.file.listeners.iter().enumerate() {
        if set.contains_key(&l.listen) {
            continue;
        }
        match listener::bind_each(l.listen, workers, &shared.listening) {
            Ok(tcp) => bound.push((l.listen, tcp)),
            Err(error) => {
                return Err(ReloadError::Bind {
                    at: cfg.place(&Section::Listen(i)),
                    name: l.name.clone(),
                    addr: l.listen,
                    error,
                });
            }
        }
    }
    let gen = Generation::build(cfg.clone(), Some(&old), tls, shared);
    shared
        .labels
        .set_cap(cfg.file.tenants.metrics_labels as usize);
    shared.labels.pin(named_tenants(&cfg.file));
    shared.tracked.set_max_tracked(cfg.file.tenants.max_tracked);
    // Listeners that stay take the new `runtime` for new connections through the generation;
    // their connection cap is resized in place.
    for h in set.values() {
        h.set_max_connections(cfg.file.runtime.max_connections);
    }
    // Nothing can fail the reload from here: breakers replaced with new settings are reset.
    gen.reset_replaced_breakers(&old);
    let gen = Arc::new(gen);
    // The end of this reload's grace: of the drains it begins below, and of the tunnels it
    // tells to close (those opened meanwhile through a connection a drain serves included).
    let until = tokio::time::Instant::now() + cfg.file.runtime.shutdown_grace.0;
    shared.current.store(gen.clone());
    gen.retire(&old, &shared.metrics);
    // Tunnels of a listener gone (or whose TLS rules changed) are told now; those of one that
    // moved or was renamed stay with it, while its old socket drains below.
    gen.stop_tunnels_left(&old, until);
    // Connections accepted under TLS rules this reload changed are told to close once idle
    // (after the swap: one that loads the generation meanwhile is told too).
    for (addr, h) in set.iter() {
        h.follow(gen.listeners.get(addr).map(|l| &**l));
    }
    // Log rotation: a renamed access log file is let go, and its path opened anew.
    shared.access_logs.reopen();
    for (addr, tcp) in bound {
        let h = listener::spawn(shared.clone(), addr, tcp, &cfg.file.runtime);
        tracing::info!(listen = %h.local_addr, "listener bound");
        set.insert(addr, h);
    }
    let removed: Vec<SocketAddr> = set
        .keys()
        .filter(|a| !cfg.file.listeners.iter().any(|l| l.listen == **a))
        .copied()
        .collect();
    let mut draining = Vec::new();
    for addr in removed {
        if let Some(h) = set.remove(&addr) {
            tracing::info!(listen = %h.local_addr, "listener removed; draining");
            // Counted from now, before the next reload can look: that reload remembers a
            // move from this address (and the listener removed there) only while this drain
            // runs. Shutdown waits for it too.
            draining.push((h, shared.drains.begin(addr)));
        }
    }
    // The listeners removed (here, or by a reload before at an address that still drains),
    // held by the drains at their addresses alone, the generations only point to them: once
    // the last drain at an address is over, its listener goes, and with it what only it held
    // (its routes' upstreams, pools, stores and tables). Held before this reload's drains
    // run: one over at once lets go of its listener then.
    shared.drains.hold(&gen.removed);
    for (h, d) in draining {
        shared.retiring.drain(h, until, d);
    }
    for w in &cfg.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    note_success(shared, &cfg);
    Ok(cfg.sha256.clone())
}

/// Tenants the policy names (`rate_limit.overrides`, `tenants.plans.assign`): their metric
/// labels are never folded.
fn named_tenants(f: &crate::config::File) -> impl Iterator<Item = &str> {
    let overrides = f
        .policies
        .values()
        .filter_map(|p| p.rate_limit.as_ref())
        .flat_map(|rl| rl.overrides.keys().map(String::as_str));
    // Tenants assigned to a plan by name are named in the file too (SPEC §12).
    let assigned = f
        .tenants
        .plans
        .iter()
        .flat_map(|p| p.assign.values().flatten().map(String::as_str));
    overrides.chain(assigned)
}

/// Refuses a reload that changes what only a restart can change, saying so, at the place of
/// the new value in the file (`FILE:LINE:COL: admin.listen: changed ...`); nothing is ignored
/// silently. `admin.listen` is the only such key: the admin socket is where the reload came
/// from, and operators' probes point at it.
fn refuse_restart_only(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let (was, now) = (old.file.admin.listen, new.file.admin.listen);
    if was != now {
        return Err(ReloadError::RestartNeeded(format!(
            "{}: changed from {was} to {now}: a restart is needed to move the admin listener; nothing was reloaded",
            new.place(&Section::AdminListen)
        )));
    }
    Ok(())
}

/// The audit entry for a start or reload that ended with `result`; `sha256` is that of the
/// config applied (unknown here when it was refused).
pub fn audit_entry(event: Event, source: Source, result: &Result<String, ReloadError>) -> Entry {
    let (sha256, errors) = match result {
        Ok(sha) => (Some(sha.clone()), Vec::new()),
        Err(ReloadError::Invalid(errs)) => (None, errs.0.iter().map(|e| e.to_string()).collect()),
        Err(e) => (None, vec![e.to_string()]),
    };
    Entry {
        event,
        source,
        sha256,
        errors,
    }
}

/// The sha256 of the file at `path` as it is now (a refused config's text); none for one that
/// cannot be read as a policy file is (not a regular file, too large).
fn file_sha256(path: &std::path::Path) -> Option<String> {
    crate::config::read_policy(path)
        .ok()
        .map(|b| crate::audit::sha256_hex(&b))
}

/// Records a config taking force in the metrics.
pub fn note_success(shared: &Shared, cfg: &Config) {
    let m = &shared.metrics;
    m.set_config_info(&cfg.sha256);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    m.config_last_success.set(now);
}
