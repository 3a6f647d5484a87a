//! The contents of the certificate, key and CA files the policy names (SPEC §8), judged in the
//! same pass as every other check so that their errors join the one list, sorted by place
//! (SPEC §14).
//!
//! The other checks only ask whether a file is there and readable (`Report::readable`); here
//! the files are read as rustls will read them at start and reload (`TlsFiles::load_where`,
//! the same loader): a key that does not match its certificate, an expired or not yet valid
//! certificate, a `ca` that holds no certificate. A file whose key drew an error already is not
//! read again: that would repeat the error, and opening a FIFO there would wait for a writer.
//! The other files of its section are still read, each alone (the cert and key together when
//! both can be), so every problem of every file shows in the one pass, at the key naming it.
//! What is read here is kept (`FilesRead`): start and reload serve these configs and do not
//! read the files again, so what serves is what validated.

use super::super::file::{File, UpstreamTls};
use super::super::locate::{KeyPath, Target};
use super::super::Section;
use super::Report;
use crate::tenant::jwt::JwksRead;
use std::path::Path;

use crate::tls::pem::{load_chain, load_key, load_roots, CertPair};
use crate::tls::roots::fallback_warning;
use crate::tls::{client_config, SystemRoots, TlsFileError, TlsFiles};

/// Reads the TLS files of `f` and builds the clients of its `https://` JWKS (reading their
/// `jwks_ca`); each problem is an error at the key that names its file (`tls.key` for a key
/// that does not match its certificate). What was built is kept for the load to serve.
pub(super) fn check(f: &File, r: &mut Report<'_>, roots: &SystemRoots) {
    let sections = tls_sections(f);
    // Judged before the loader's own errors join the report.
    let unread: Vec<bool> = sections
        .iter()
        .map(|s| match &s.site {
            Section::Tracing(_) => ["ca", "cert", "key"]
                .into_iter()
                .any(|k| refused_files(&Section::Tracing(k), r)),
            site => refused_files(site, r),
        })
        .collect();
    match TlsFiles::load_where(f, roots, |s| !refused_files(s, r)) {
        Ok(files) => r.read.tls = files,
        Err(problems) => {
            for p in problems {
                let at = match &p.site {
                    Section::Tracing(_) => p.site.key_path(),
                    site => match sections.iter().find(|s| s.site == *site) {
                        Some(s) => s.key_of(&p.error),
                        None => site.key_path(),
                    },
                };
                r.key(&at, p.error.to_string());
            }
        }
    }
    // A section not read above because some of it drew an error already: every file of it
    // that did not is still read, alone, so its own problems show in this pass too (SPEC §14).
    for (s, _) in sections.iter().zip(unread).filter(|(_, u)| *u) {
        read_alone(s, r);
    }
    jwks_clients(f, r, roots);
}

/// The file keys of one `tls` section (for `tracing.otlp`, of the exporter's section).
struct Files<'f> {
    /// The section as the loader names it (for `tracing.otlp`, `Section::Tracing("ca")`).
    site: Section,
    /// Where the section's keys are.
    base: KeyPath,
    /// The trusted CAs: `ca` of a client, `client_ca` of a listener.
    ca: Option<(&'static str, &'f Path)>,
    cert: Option<&'f Path>,
    key: Option<&'f Path>,
}

impl<'f> Files<'f> {
    /// The files of a client's `tls` section (an upstream's, the store's) at `site`.
    fn client(site: Section, t: &'f UpstreamTls) -> Self {
        Files {
            base: site.key_path(),
            site,
            ca: t.ca.as_deref().map(|p| ("ca", p)),
            cert: t.cert.as_deref(),
            key: t.key.as_deref(),
        }
    }

    /// The key an error of this section's files is about: the file it names, a key that does
    /// not match at `key`, a file that holds no key at `key` (a combined cert and key file).
    fn key_of(&self, e: &TlsFileError) -> KeyPath {
        let file = Some(e.file());
        let at = match e {
            TlsFileError::KeyMismatch { .. } | TlsFileError::NoKey { .. } => Some("key"),
            _ if file == self.cert => Some("cert"),
            _ if file == self.key => Some("key"),
            _ => self.ca.filter(|(_, p)| file == Some(*p)).map(|(k, _)| k),
        };
        match at {
            Some(k) => self.base.key(k),
            None => self.base.clone(),
        }
    }

    /// True when the file key `k` (or the section itself) has an error already.
    fn refused(&self, k: &str, r: &Report<'_>) -> bool {
        r.has_error_under(&self.base.key(k)) || r.was_removed(&self.base)
    }
}

/// Every section that names TLS files the loader reads.
fn tls_sections(f: &File) -> Vec<Files<'_>> {
    let mut out = Vec::new();
    for (i, l) in f.listeners.iter().enumerate() {
        let Some(t) = &l.tls else { continue };
        let site = Section::Listener(i);
        out.push(Files {
            base: site.key_path(),
            site,
            ca: t.client_ca.as_deref().map(|p| ("client_ca", p)),
            cert: Some(&t.cert),
            key: Some(&t.key),
        });
    }
    for (name, u) in &f.upstreams {
        let Some(t) = &u.tls else { continue };
        out.push(Files::client(Section::Upstream(name.clone()), t));
    }
    if let Some(o) = f.tracing.as_ref().map(|t| &t.otlp).filter(|o| o.is_https()) {
        out.push(Files {
            site: Section::Tracing("ca"),
            base: KeyPath::default().key("tracing").key("otlp"),
            ca: o.ca.as_deref().map(|p| ("ca", p)),
            cert: o.cert.as_deref(),
            key: o.key.as_deref(),
        });
    }
    if let Some(redis) = f.global_store.as_ref().map(|g| &g.redis) {
        if let Some(t) = redis.tls.as_ref().filter(|_| redis.is_tls()) {
            out.push(Files::client(Section::Store, t));
        }
    }
    out
}

/// Reads each file of `s` whose key drew no error, as the loader would: the CA bundle, and
/// the cert and key together (so their mismatch shows) when both are there to read, or each
/// alone. A half pair is not said again: the check that refused the section said it.
fn read_alone(s: &Files<'_>, r: &mut Report<'_>) {
    let mut found: Vec<(KeyPath, TlsFileError)> = Vec::new();
    if let Some((k, ca)) = s.ca.filter(|(k, _)| !s.refused(k, r)) {
        if let Err(e) = load_roots(ca) {
            found.push((s.base.key(k), e));
        }
    }
    let cert = s.cert.filter(|_| !s.refused("cert", r));
    let key = s.key.filter(|_| !s.refused("key", r));
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if let Err(es) = CertPair::load_all(cert, key) {
                found.extend(es.into_iter().map(|e| (s.key_of(&e), e)));
            }
        }
        (Some(cert), None) => {
            if let Err(e) = load_chain(cert) {
                found.push((s.base.key("cert"), e));
            }
        }
        (None, Some(key)) => {
            if let Err(e) = load_key(key) {
                found.push((s.base.key("key"), e));
            }
        }
        (None, None) => {}
    }
    for (at, e) in found {
        r.key(&at, e.to_string());
    }
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
