//! The contents of the certificate, key and CA files the policy names (SPEC §8), judged in the
//! same pass as every other check so that their errors join the one list, sorted by place
//! (SPEC §14).
//!
//! The other checks only ask whether a file is there and readable (`Report::readable`); here
//! the files are read as rustls will read them at start and reload (`TlsFiles::load_where`,
//! the same loader): a key that does not match its certificate, an expired or not yet valid
//! certificate, a `ca` that holds no certificate. A section whose file keys drew an error
//! already is not read again: that would repeat the error, and opening a FIFO there would wait
//! for a writer. Start and reload still read the files once more to build the configs they
//! serve with; what they find then only differs when a file changed in between.

use super::super::file::File;
use super::super::locate::KeyPath;
use super::super::Section;
use super::Report;
use crate::tls::{pem, SystemRoots, TlsFiles};

/// Reads the TLS files of `f` and the `jwks_ca` bundles of its `jwt` sources; each problem is
/// an error at the key that names the section (as start and reload place it).
pub(super) fn check(f: &File, r: &mut Report<'_>, roots: &SystemRoots) {
    let problems = match TlsFiles::load_where(f, roots, |s| !refused_files(s, r)) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    };
    for p in problems {
        r.key(&p.site.key_path(), p.error.to_string());
    }
    jwks_cas(f, r);
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

/// An `https://` JWKS is fetched trusting `jwks_ca`: a bundle with no usable certificate would
/// leave the keys unfetched (and `/readyz` at 503) with only a log line to say why.
fn jwks_cas(f: &File, r: &mut Report<'_>) {
    let from = KeyPath::default().key("tenants").key("from");
    for (i, s) in f.tenants.from.iter().enumerate() {
        let Some(j) = &s.jwt else { continue };
        let Some(ca) = &j.jwks_ca else { continue };
        let at = from.idx(i).key("jwt").key("jwks_ca");
        if !j.jwks.starts_with("https://") || r.has_error_under(&at) {
            continue;
        }
        if let Err(e) = pem::load_roots(ca) {
            r.value(&at, e.to_string());
        }
    }
}
