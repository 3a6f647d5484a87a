//! The contents of the certificate, key and CA files the policy names (SPEC §8), judged in the
//! same pass as every other check so that their errors join the one list, sorted by place
//! (SPEC §14).
//!
//! The other checks only ask whether a file is there and readable (`Report::readable`); here
//! the files are read as rustls will read them at start and reload (`TlsFiles::load_where`,
//! the same loader): a key that does not match its certificate, an expired or not yet valid
//! certificate, a `ca` that holds no certificate. A section whose file keys drew an error
//! already is not read again: that would repeat the error, and opening a FIFO there would wait
//! for a writer. What is read here is kept (`FilesRead`): start and reload serve these configs
//! and do not read the files again, so what serves is what validated.

use super::super::file::File;
use super::super::locate::{KeyPath, Target};
use super::super::Section;
use super::Report;
use crate::tenant::jwt::JwksRead;
use crate::tls::roots::fallback_warning;
use crate::tls::{client_config, SystemRoots, TlsFiles};

/// Reads the TLS files of `f` and builds the clients of its `https://` JWKS (reading their
/// `jwks_ca`); each problem is an error at the key that names the section (as start and reload
/// place it). What was built is kept for the load to serve.
pub(super) fn check(f: &File, r: &mut Report<'_>, roots: &SystemRoots) {
    match TlsFiles::load_where(f, roots, |s| !refused_files(s, r)) {
        Ok(files) => r.read.tls = files,
        Err(problems) => {
            for p in problems {
                r.key(&p.site.key_path(), p.error.to_string());
            }
        }
    }
    jwks_clients(f, r, roots);
}

/// When the system store gave no usable root (read above, for a client without a `ca`), a
/// warning at the first section that trusts it, so `validate` counts it and start and reload
/// log it with the others; at the file when no section can be told.
pub(super) fn fallback(f: &File, r: &mut Report<'_>, roots: &SystemRoots) {
    let Some(reason) = roots.fallback() else {
        return;
    };
    let message = fallback_warning(reason);
    let first = trusting_system(f)
        .into_iter()
        .map(|at| r.error(&r.written(&at), Target::Key, String::new()))
        .filter(|e| e.line > 0)
        .min_by_key(|e| (e.line, e.column));
    match first {
        Some(mut w) => {
            w.message = message;
            r.warnings.push(w);
        }
        None => r.written_key(&KeyPath::default(), message, true),
    }
}

/// The sections whose TLS client has no `ca`, so trusts the system roots.
fn trusting_system(f: &File) -> Vec<KeyPath> {
    let root = KeyPath::default();
    let mut out = Vec::new();
    for (name, u) in &f.upstreams {
        if u.tls.as_ref().is_some_and(|t| t.ca.is_none()) {
            out.push(root.key("upstreams").key(name).key("tls"));
        }
    }
    if let Some(o) = f.tracing.as_ref().map(|t| &t.otlp) {
        if o.is_https() && o.ca.is_none() {
            out.push(root.key("tracing").key("otlp"));
        }
    }
    if let Some(redis) = f.global_store.as_ref().map(|g| &g.redis) {
        if redis.is_tls() && redis.tls.as_ref().is_none_or(|t| t.ca.is_none()) {
            out.push(root.key("global_store").key("redis"));
        }
    }
    for (i, s) in f.tenants.from.iter().enumerate() {
        let Some(j) = &s.jwt else { continue };
        if j.jwks.starts_with("https://") && j.jwks_ca.is_none() {
            out.push(
                root.key("tenants")
                    .key("from")
                    .idx(i)
                    .key("jwt")
                    .key("jwks"),
            );
        }
    }
    out
}

/// True when a file key of `site` (or the section itself) has drawn an error.
fn refused_files(site: &Section, r: &Report<'_>) -> bool {
    let base = site.key_path();
    let keys: &[&str] = match site {
        Section::Listener(_) => &["cert", "key", "client_ca"],
        Section::Upstream(_) | Section::Store => &["ca", "cert", "key"],
        _ => &[],
    };
    let mut paths = vec![base.clone()];
    paths.extend(keys.iter().map(|k| base.key(k)));
    paths.iter().any(|p| r.has_error_under(p))
}

/// An `https://` JWKS is fetched trusting `jwks_ca` (or the system roots): a bundle with no
/// usable certificate would leave the keys unfetched (and `/readyz` at 503) with only a log
/// line to say why. The client is built here, once, and kept for the load to serve.
fn jwks_clients(f: &File, r: &mut Report<'_>, roots: &SystemRoots) {
    let from = KeyPath::default().key("tenants").key("from");
    for (i, s) in f.tenants.from.iter().enumerate() {
        let Some(j) = &s.jwt else { continue };
        let at = from.idx(i).key("jwt").key("jwks_ca");
        if !j.jwks.starts_with("https://") || r.has_error_under(&at) {
            continue;
        }
        match client_config(j.jwks_ca.as_deref(), None, None, roots) {
            Ok(c) => {
                r.read.jwks.insert(i, JwksRead::Https(c));
            }
            Err(e) => r.value(&at, e.to_string()),
        }
    }
}
