//! Every TLS config a policy file names, read from disk once per config load.
//!
//! Validation reads every file through [`TlsFiles::load_where`] in the pass that checks the rest
//! of the policy (so `validate`, a refused start and a refused reload list these errors sorted
//! with the others), and the configs it built are kept in the load's `Config` (`read.tls`):
//! start and every reload serve those, without reading the files again, so what serves is what
//! validated even when a file is replaced in between. A missing, mismatched or expired file
//! refuses the whole config (the one in force stays), and a reload that succeeds makes new
//! handshakes use the files as they were at that reload, even when their paths did not change
//! (certificate rotation in place).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::client::{CLIENT_ALPN, H2_ALPN};
use super::server::server_config_verifying;
use super::{client_config_all, SystemRoots, TlsFileError};
use crate::config::file::{File, UpstreamProtocol};
use crate::config::Section;

/// The TLS configs of one policy file: per listener name and per upstream name.
#[derive(Debug, Default)]
pub struct TlsFiles {
    /// Server configs of listeners with `tls`.
    pub listeners: HashMap<String, Arc<ServerConfig>>,
    /// The trust anchors of listeners with `client_ca` (mTLS), as read with their configs.
    pub client_cas: HashMap<String, Arc<RootCertStore>>,
    /// Client configs of upstreams with `tls`.
    pub upstreams: HashMap<String, Arc<ClientConfig>>,
    /// The client config of an `https://` OTLP collector.
    pub tracing: Option<Arc<ClientConfig>>,
    /// The client config of a `rediss://` global store (no ALPN: Redis names no protocol).
    pub store: Option<Arc<ClientConfig>>,
}

/// One unusable file, with the `tls` section that names it.
#[derive(Debug)]
pub struct TlsFileProblem {
    /// Whose `tls` section.
    pub site: Section,
    /// What is wrong (the message names the file).
    pub error: TlsFileError,
}

// === impl TlsFiles ===

impl TlsFiles {
    /// Every certificate, key and CA file `file` names (those [`TlsFiles::load`] reads), for
    /// `--watch` to notice when one is replaced.
    pub fn paths(file: &File) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for t in file.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            out.extend([t.cert.as_path(), t.key.as_path()]);
            out.extend(t.client_ca.as_deref());
        }
        let client = file.upstreams.values().filter_map(|u| u.tls.as_ref());
        let store = file.global_store.as_ref().map(|g| &g.redis);
        for t in client.chain(store.filter(|r| r.is_tls()).and_then(|r| r.tls.as_ref())) {
            out.extend(
                [t.ca.as_deref(), t.cert.as_deref(), t.key.as_deref()]
                    .into_iter()
                    .flatten(),
            );
        }
        if let Some(o) = file
            .tracing
            .as_ref()
            .map(|t| &t.otlp)
            .filter(|o| o.is_https())
        {
            out.extend(
                [o.ca.as_deref(), o.cert.as_deref(), o.key.as_deref()]
                    .into_iter()
                    .flatten(),
            );
        }
        out
    }

    /// Reads every certificate, key and CA file `file` names; every problem is reported. A
    /// client without a `ca` trusts `system` (its config load's system roots).
    pub fn load(file: &File, system: &SystemRoots) -> Result<TlsFiles, Vec<TlsFileProblem>> {
        Self::load_where(file, system, |_| true)
    }

    /// [`TlsFiles::load`], reading only the sections `read` says yes to (and leaving them out of
    /// the result otherwise). Validation asks it not to read a section whose file keys it has
    /// already refused (a missing file, a FIFO that opening would wait on, a half pair); for
    /// `tracing.otlp` it is asked once per file key (`Section::Tracing("ca")`, `"cert"`,
    /// `"key"`), and the section is read when all three are yes.
    pub fn load_where(
        file: &File,
        system: &SystemRoots,
        read: impl Fn(&Section) -> bool,
    ) -> Result<TlsFiles, Vec<TlsFileProblem>> {
        let mut out = TlsFiles::default();
        let mut problems = Vec::new();
        for (i, l) in file.listeners.iter().enumerate() {
            let Some(t) = &l.tls else { continue };
            if !read(&Section::Listener(i)) {
                continue;
            }
            match server_config_verifying(&t.cert, &t.key, t.client_ca.as_deref()) {
                Ok((c, anchors)) => {
                    out.listeners.insert(l.name.clone(), c);
                    if let Some(a) = anchors {
                        out.client_cas.insert(l.name.clone(), a);
                    }
                }
                Err(errors) => problems.extend(errors.into_iter().map(|error| TlsFileProblem {
                    site: Section::Listener(i),
                    error,
                })),
            }
        }
        for (name, u) in &file.upstreams {
            let Some(t) = &u.tls else { continue };
            if !read(&Section::Upstream(name.clone())) {
                continue;
            }
            // An HTTP/2 upstream is offered `h2` only: a server that picked HTTP/1.1 would be
            // spoken to in the wrong protocol.
            let alpn: &[&[u8]] = match u.protocol {
                UpstreamProtocol::Http1 => &CLIENT_ALPN,
                UpstreamProtocol::Http2 => &H2_ALPN,
            };
            let (ca, cert, key) = (t.ca.as_deref(), t.cert.as_deref(), t.key.as_deref());
            match client_config_all(ca, cert, key, alpn, system) {
                Ok(c) => {
                    out.upstreams.insert(name.clone(), c);
                }
                Err(errors) => problems.extend(errors.into_iter().map(|error| TlsFileProblem {
                    site: Section::Upstream(name.clone()),
                    error,
                })),
            }
        }
        if let Some(otlp) = file.tracing.as_ref().map(|t| &t.otlp) {
            let keys = ["ca", "cert", "key"];
            if otlp.is_https() && keys.into_iter().all(|k| read(&Section::Tracing(k))) {
                let (cert, key) = (otlp.cert.as_deref(), otlp.key.as_deref());
                // No ALPN here: the exporter's connector offers its own.
                match client_config_all(otlp.ca.as_deref(), cert, key, &[], system) {
                    Ok(c) => out.tracing = Some(c),
                    Err(errors) => {
                        for error in errors {
                            // Each error names one file: placed at the key that names it.
                            let file = error.file();
                            let at = if Some(file) == cert {
                                "cert"
                            } else if Some(file) == key {
                                "key"
                            } else {
                                "ca"
                            };
                            problems.push(TlsFileProblem {
                                site: Section::Tracing(at),
                                error,
                            });
                        }
                    }
                }
            }
        }
        if let Some(redis) = file.global_store.as_ref().map(|g| &g.redis) {
            if redis.is_tls() && read(&Section::Store) {
                let t = redis.tls.clone().unwrap_or_default();
                // No ALPN: Redis names no protocol.
                match client_config_all(
                    t.ca.as_deref(),
                    t.cert.as_deref(),
                    t.key.as_deref(),
                    &[],
                    system,
                ) {
                    Ok(c) => out.store = Some(c),
                    Err(errors) => {
                        problems.extend(errors.into_iter().map(|error| TlsFileProblem {
                            site: Section::Store,
                            error,
                        }))
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}
