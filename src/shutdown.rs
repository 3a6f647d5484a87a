//! Signals: SIGHUP reloads; SIGTERM and SIGINT drain and exit.
//!
//! On SIGTERM `/readyz` turns 503 at once, so the orchestrator stops sending new work; every
//! listener stops accepting; requests in flight finish, up to `runtime.shutdown_grace`. A
//! second SIGTERM or SIGINT during the drain ends the wait: what is queued for the access log
//! and the trace exporter is written, and rampart exits (0, as a drain that ran out of grace).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::audit::Source;
use crate::Rampart;

/// SIGHUP, SIGTERM and SIGINT, caught from [`Signals::catch`] on: one that arrives before
/// rampart has started waits for it (a SIGHUP reloads then, a SIGTERM drains) instead of
/// ending the process as the default action would (exit 129 for a SIGHUP sent just after
/// exec, while the policy is read and the listeners bound).
#[derive(Debug)]
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Catches the three signals from now on; within a runtime with its I/O driver.
    pub fn catch() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Runs until SIGTERM or SIGINT, reloading on SIGHUP (and on file change with `watch`), then
/// drains.
pub async fn run_until_signalled(rampart: Rampart, watch: bool) -> std::io::Result<()> {
    run_with(rampart, watch, Signals::catch()?).await
}

/// [`run_until_signalled`] with signals caught before (at the start of `rampart run`).
pub async fn run_with(rampart: Rampart, watch: bool, signals: Signals) -> std::io::Result<()> {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    let mut seen = watched(&rampart);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let source = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = rampart.reload_from(Source::Sighup).await;
            }
            _ = tick.tick(), if watch => {
                let now = watched(&rampart);
                if now.first().is_some_and(Option::is_some) && now != seen {
                    tracing::info!("config file or a TLS file it names changed: reloading");
                    let _ = rampart.reload_from(Source::Watch).await;
                    // The files of the config in force now (a refused one's are not watched);
                    // the config file as it was read, so a save during the reload is seen.
                    let mut after = watched(&rampart);
                    after[0] = now[0].clone();
                    seen = after;
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break Source::Sigterm; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break Source::Sigint; }
        }
    };
    // A second SIGTERM or SIGINT during the drain: exit now (an operator's second Ctrl-C). A
    // SIGHUP then reloads nothing (the listeners are draining, and the trail ends with the
    // shutdown), and says so.
    let again = async move {
        let signal = loop {
            tokio::select! {
                Some(()) = hup.recv() => tracing::warn!(
                    "SIGHUP while shutting down: the configuration is not reloaded"
                ),
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
            }
        };
        tracing::warn!(
            signal,
            "second signal while draining: not waiting for requests in flight"
        );
    };
    rampart.shutdown_unless(source, again).await;
    Ok(())
}

/// The versions of the files `--watch` looks at: the config file first (`None` while it
/// cannot be read, as during an editor's save: no reload then), then every certificate, key
/// and CA file the config in force names, so a rotation (cert-manager swaps a Secret's files
/// by a symlink) is taken as a change of the config is.
fn watched(rampart: &Rampart) -> Vec<Option<(PathBuf, SystemTime, u64)>> {
    let gen = rampart.shared().current.load();
    let config = &gen.config;
    let tls = crate::tls::TlsFiles::paths(&config.file);
    std::iter::once(config.path.as_deref().and_then(fingerprint))
        .chain(tls.into_iter().map(fingerprint))
        .collect()
}

/// What identifies a version of the file: the resolved target (ConfigMap symlink swaps change
/// it), its modification time and its length.
fn fingerprint(path: &Path) -> Option<(PathBuf, SystemTime, u64)> {
    let target = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    Some((target, meta.modified().ok()?, meta.len()))
}
