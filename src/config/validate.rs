//! Checks what serde cannot: references, bounds, and combinations.
//!
//! serde_yaml stops at the first error, which is right for the shape of the file: after a
//! wrong shape nothing else can be trusted. Once the shape is right, every check here runs
//! and every problem is reported, so one `rampart validate` shows all that needs fixing.
//! Each error is placed on the value it is about (a bad value) or on its key (a key that is
//! wrong or missing), found in the text by [`Doc`](super::locate::Doc).

mod de;
mod policy;
mod syntax;
mod upstream;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use super::file::{File, Listener, TenantSource};
use super::locate::{Doc, KeyPath, Target, MAX_DEPTH};
use super::units::Size;
use super::{ConfigError, ConfigErrors};

/// The only schema version.
const VERSION: u32 = 1;
/// Bounds of `runtime.max_header_bytes`.
const HEADER_BYTES: (u64, u64) = (1 << 10, 1 << 20);

/// Collects the errors of one file, each placed in the text.
pub(super) struct Report<'a> {
    origin: &'a str,
    doc: &'a Doc,
    errors: Vec<ConfigError>,
}

/// Parses `text` into the file model and validates it.
pub(super) fn parse(text: &str, origin: &str) -> Result<File, ConfigErrors> {
    let doc = Doc::parse(text);
    let whole = |(line, column), message: String| {
        let path = String::new();
        let origin = origin.to_string();
        Err(ConfigErrors(vec![ConfigError {
            origin,
            line,
            column,
            path,
            message,
        }]))
    };
    if is_blank(text) {
        let m = "the policy file is empty: it needs at least `version: 1` and one listener";
        return whole((1, 1), m.into());
    }
    if let Some(at) = doc.too_deep {
        return whole(at, format!("the file nests deeper than {MAX_DEPTH} levels"));
    }
    // Another version is another schema: its keys would only add confusing errors.
    let version = KeyPath::default().key("version");
    if let Some(v) = doc.scalar(&version).and_then(|v| v.parse::<u32>().ok()) {
        if v != VERSION {
            let mut r = Report {
                origin,
                doc: &doc,
                errors: Vec::new(),
            };
            r.value(
                &version,
                format!("unsupported version {v}: the only version is {VERSION}"),
            );
            return Err(ConfigErrors(r.errors));
        }
    }
    let file = serde_yaml::from_str::<File>(text)
        .map_err(|e| ConfigErrors(vec![de::from_serde(&e, origin, text, &doc)]))?;
    let mut r = Report {
        origin,
        doc: &doc,
        errors: Vec::new(),
    };
    for (path, _) in doc.duplicate_keys() {
        r.key(
            &path,
            "this key is given twice in the same mapping; the last one would win",
        );
    }
    check(&file, &mut r);
    if r.errors.is_empty() {
        Ok(file)
    } else {
        r.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(r.errors))
    }
}

/// No content at all: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

fn check(f: &File, r: &mut Report<'_>) {
    let root = KeyPath::default();
    if f.version != VERSION {
        r.value(
            &root.key("version"),
            format!(
                "unsupported version {}: the only version is {VERSION}",
                f.version
            ),
        );
    }
    check_runtime(f, r);
    check_tenants(f, r);
    for (name, up) in &f.upstreams {
        upstream::check(up, &root.key("upstreams").key(name), r);
    }
    for (name, p) in &f.policies {
        policy::check(p, &root.key("policies").key(name), r);
    }
    check_listeners(f, r);
}

fn check_runtime(f: &File, r: &mut Report<'_>) {
    let rt = &f.runtime;
    let p = KeyPath::default().key("runtime");
    let Size(bytes) = rt.max_header_bytes;
    if !(HEADER_BYTES.0..=HEADER_BYTES.1).contains(&bytes) {
        r.value(
            &p.key("max_header_bytes"),
            format!(
                "{} is out of range: it must be between 1KiB and 1MiB",
                rt.max_header_bytes
            ),
        );
    }
    if rt.max_connections < 1 {
        r.value(&p.key("max_connections"), "must be at least 1 (got 0)");
    }
    if rt.header_read_timeout.0.is_zero() {
        r.value(&p.key("header_read_timeout"), "must be longer than 0s");
    }
}

fn check_tenants(f: &File, r: &mut Report<'_>) {
    let t = &f.tenants;
    let p = KeyPath::default().key("tenants");
    if t.from.is_empty() {
        r.value(
            &p.key("from"),
            "needs at least one source, like `- header: x-tenant-id`",
        );
    }
    for (i, src) in t.from.iter().enumerate() {
        let sp = p.key("from").idx(i);
        match src {
            TenantSource {
                header: Some(h),
                query: None,
            } => {
                if let Err(m) = syntax::header_name(h) {
                    r.value(&sp.key("header"), m);
                }
            }
            TenantSource {
                header: None,
                query: Some(q),
            } if q.is_empty() => {
                r.value(&sp.key("query"), "the query parameter name is empty");
            }
            TenantSource {
                header: None,
                query: Some(_),
            } => {}
            TenantSource {
                header: Some(_),
                query: Some(_),
            } => {
                r.value(
                    &sp,
                    "a source has exactly one of `header` or `query`, not both",
                );
            }
            TenantSource {
                header: None,
                query: None,
            } => {
                r.value(&sp, "a source needs one of `header: NAME` or `query: NAME`");
            }
        }
    }
    if t.fallback != "reject" {
        if let Err(m) = syntax::tenant_id(&t.fallback) {
            r.value(
                &p.key("fallback"),
                format!("must be `reject` or a tenant id: {m}"),
            );
        }
    }
    if t.max_tracked < 1 {
        r.value(&p.key("max_tracked"), "must be at least 1 (got 0)");
    }
}

fn check_listeners(f: &File, r: &mut Report<'_>) {
    let lp = KeyPath::default().key("listeners");
    if f.listeners.is_empty() {
        r.key(&lp, "at least one listener is needed");
    }
    let mut names = HashSet::new();
    for (i, l) in f.listeners.iter().enumerate() {
        let p = lp.idx(i);
        if l.name.trim().is_empty() {
            r.value(&p.key("name"), "the listener name is empty");
        } else if !names.insert(l.name.as_str()) {
            r.value(
                &p.key("name"),
                format!("another listener is already named {:?}", l.name),
            );
        }
        let earlier = f.listeners[..i]
            .iter()
            .position(|o| clash(o.listen, l.listen));
        if clash(l.listen, f.admin.listen) {
            r.value(
                &p.key("listen"),
                format!("{} clashes with admin.listen {}", l.listen, f.admin.listen),
            );
        } else if let Some(j) = earlier {
            let other = f.listeners[j].listen;
            r.value(
                &p.key("listen"),
                format!("{} clashes with listeners[{j}].listen {other}", l.listen),
            );
        }
        if let Some(tls) = &l.tls {
            r.readable(&p.key("tls").key("cert"), &tls.cert, "certificate");
            r.readable(&p.key("tls").key("key"), &tls.key, "private key");
        }
        check_routes(f, l, &p, r);
    }
}

/// Two addresses that cannot both be bound: the same port on the same IP, or on a wildcard
/// IP (`0.0.0.0`, `::`) that covers the other. Port 0 asks the system for a free port, so any
/// number of listeners may use it.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_routes(f: &File, l: &Listener, lp: &KeyPath, r: &mut Report<'_>) {
    if l.routes.is_empty() {
        r.value(&lp.key("routes"), "needs at least one route");
    }
    let mut catch_all: Option<usize> = None;
    for (j, route) in l.routes.iter().enumerate() {
        let p = lp.key("routes").idx(j);
        if let Some(k) = catch_all {
            r.key(
                &p,
                format!("this route is never used: routes[{k}] before it matches every request"),
            );
        }
        let m = route.matches.as_ref();
        let host = m.and_then(|m| m.host.as_deref());
        let prefix = m.and_then(|m| m.path_prefix.as_deref());
        if let Some(h) = host {
            if let Err(msg) = syntax::match_host(h) {
                r.value(&p.key("match").key("host"), msg);
            }
        }
        if let Some(pp) = prefix {
            if !pp.starts_with('/') {
                r.value(
                    &p.key("match").key("path_prefix"),
                    format!("path prefix {pp:?} must start with /"),
                );
            }
        }
        if host.is_none() && prefix.map_or(true, |pp| pp == "/") && catch_all.is_none() {
            catch_all = Some(j);
        }
        if let Some(name) = &route.name {
            if name.trim().is_empty() {
                r.value(&p.key("name"), "the route name is empty");
            }
        }
        if !f.upstreams.contains_key(&route.upstream) {
            let known = known(f.upstreams.keys());
            r.value(
                &p.key("upstream"),
                format!("no upstream named {:?} ({known})", route.upstream),
            );
        }
        if let Some(pol) = &route.policy {
            if !f.policies.contains_key(pol) {
                let known = known(f.policies.keys());
                r.value(
                    &p.key("policy"),
                    format!("no policy named {pol:?} ({known})"),
                );
            }
        }
    }
}

/// `known: a, b` or `none are defined`, for messages about a dangling reference.
fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<&str> = names.map(String::as_str).collect();
    if all.is_empty() {
        "none are defined".into()
    } else {
        format!("known: {}", all.join(", "))
    }
}

// === impl Report ===

impl Report<'_> {
    /// An error about the value at `path`.
    pub(super) fn value(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.push(path, Target::Value, message.into());
    }

    /// An error about the key at `path` (missing, extra or misplaced).
    pub(super) fn key(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.push(path, Target::Key, message.into());
    }

    /// The duration at `path` must not be zero.
    pub(super) fn positive(&mut self, path: &KeyPath, d: std::time::Duration) {
        if d.is_zero() {
            self.value(path, "must be longer than 0s");
        }
    }

    /// The count at `path` must be at least 1.
    pub(super) fn at_least_1(&mut self, path: &KeyPath, n: u64) {
        if n < 1 {
            self.value(path, format!("must be at least 1 (got {n})"));
        }
    }

    /// True when `path` is written as a list in the text.
    pub(super) fn doc_has_index(&self, path: &KeyPath) -> bool {
        self.doc.is_seq(path)
    }

    /// The file at `file` must exist and be readable; reading it is allowed, binding is not.
    pub(super) fn readable(&mut self, path: &KeyPath, file: &Path, what: &str) {
        let shown = file.display();
        match std::fs::File::open(file).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.value(
                path,
                format!("{what} {:?} is not a regular file", shown.to_string()),
            ),
            Err(e) => self.value(
                path,
                format!("cannot read {what} {:?}: {e}", shown.to_string()),
            ),
        }
    }

    fn push(&mut self, path: &KeyPath, target: Target, message: String) {
        let (line, column) = self.doc.locate(path, target);
        self.errors.push(ConfigError {
            origin: self.origin.to_string(),
            line,
            column,
            path: path.to_string(),
            message,
        });
    }
}
