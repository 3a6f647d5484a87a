//! Checks the policy file: its shape (through serde), then what serde cannot.
//!
//! Every error of the file is reported in one pass (SPEC §14). Shape errors come first:
//! `shape.rs` deserializes the span tree, and on an error records it, takes the offending node
//! out and deserializes again, so unknown keys and bad units anywhere all show. Then every
//! semantic check here runs on what deserialized, except where a node was taken out (its
//! absence would only add confusing follow-on errors). Each error is placed on the value it
//! is about (a bad value) or on its key (a key that is wrong or missing).

mod bounds;
mod certs;
mod de;
mod global;
mod inert;
mod listener;
mod never;
mod nulls;
mod plans;
mod policy;
mod resilience;
mod shape;
mod syntax;
mod tracing;
mod upstream;
mod words;

use std::path::Path;

use super::file::{ClientIp, ClientIpFrom, Direction, File, TenantSource};
use super::locate::{Doc, KeyPath, Node, Target, MAX_DEPTH};
use super::units::Size;
use super::{ConfigError, ConfigErrors, FilesRead};
use crate::tls::SystemRoots;

/// The only schema version.
const VERSION: u32 = 1;
/// Bounds of `runtime.max_header_bytes`. HTTP/1's server (hyper) reads a head in a buffer of
/// at least 8 KiB and cannot refuse a shorter head, so a smaller limit would be a promise
/// HTTP/1.1 does not keep.
const HEADER_BYTES: (u64, u64) = (8 << 10, 1 << 20);
/// Most per-tenant entries `tenants.max_tracked` may ask for.
const MAX_TRACKED: u64 = 100_000_000;
/// Most tenants `tenants.metrics_labels` may give a label of their own (SPEC §7, label
/// explosion). Each label multiplies every per-tenant series (about 18 for one route in the
/// testers' run: 20,000 labels made 360,000 series and a 36 MB `/metrics`), so this keeps a
/// scrape in the tens of MB at worst.
const MAX_METRICS_LABELS: u64 = 10_000;

/// Collects the errors and warnings of one file, each placed in the text.
pub(super) struct Report<'a> {
    origin: &'a str,
    doc: &'a Doc,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Nodes taken out after a shape error; checks about them are left out.
    removed: Vec<KeyPath>,
    /// The TLS and JWKS files read so far, kept for the load to serve.
    read: FilesRead,
}

/// A file that validated, the warnings it drew, and the files it names as read.
pub(super) type Parsed = (File, Vec<ConfigError>, FilesRead);

/// Parses `text` into the file model and validates it. `roots` are the system's trust roots of
/// this load, read (once) only if a TLS client without a `ca` is built to check its files.
pub(super) fn parse(text: &str, origin: &str, roots: &SystemRoots) -> Result<Parsed, ConfigErrors> {
    let mut doc = read(text, origin)?;
    // The tree as written, before the shape pass takes anything out (`listener::check_taken_out`).
    let written = Doc {
        root: doc.root.clone(),
        ..Doc::default()
    };
    // Top-level keys that start with `x-` are extension fields, as in docker-compose files: a
    // place for anchors (`x-common: &common {...}`, then `<<: *common`). Their aliases were
    // expanded as the tree was read; the keys themselves mean nothing to rampart and go.
    if let Some(Node::Map { entries, .. }) = &mut doc.root {
        entries.retain(|e| !e.key.starts_with("x-"));
    }
    let shape::Shape {
        file,
        mut errors,
        removed,
        stopped,
        ..
    } = shape::deserialize(&mut doc, origin);
    if file.is_none() && errors.is_empty() {
        let m = "the policy file holds no mapping: it needs at least `version: 1` and one listener";
        return whole(origin, (1, 1), m.into());
    }
    let bad_merge = doc.bad_merge.take();
    let repeated_merges = std::mem::take(&mut doc.repeated_merges);
    let mut r = Report::new(origin, &doc, removed);
    r.errors.append(&mut errors);
    if let Some((at, path, message)) = bad_merge {
        // The tree was read without that merge: the rest of the file is judged all the same.
        r.errors.push(error_at(origin, at, &path, message));
    }
    // YAML 1.1's merge key is one key of its mapping; the tree merged them, so the builder
    // noted a second one.
    for (path, at, (l, c)) in repeated_merges {
        let m = format!(
            "a second merge key (`<<`) in the same mapping (first at {l}:{c}); a mapping has one: list what it merges in that one, `<<: [*a, *b]`"
        );
        r.errors.push(error_at(origin, at, &path, m));
    }
    // Looked for in the tree as written: the shape pass takes out every copy of a key whose
    // last copy it refused, and with them the sign that there were two.
    for (path, at, (l, c)) in written.duplicate_keys() {
        let m = format!(
            "this key is given twice in the same mapping (first at {l}:{c}); only the last would count, and the first is not checked: keep one"
        );
        r.errors.push(error_at(origin, at, &path, m));
    }
    inert::check(&mut r);
    if let Some(f) = &file {
        check(f, &mut r);
        listener::check_taken_out(f, &written, &mut r);
    }
    nulls::check(&mut r, file.as_ref());
    if let Some(f) = &file {
        // Last: it reads only the files no check above has refused.
        certs::check(f, &mut r, roots);
        certs::fallback(f, &mut r, roots);
    }
    r.errors.sort_by_key(|e| (e.line, e.column));
    r.warnings.sort_by_key(|e| (e.line, e.column));
    if stopped {
        // Last, after the errors it follows, and without a place: said wherever the list is
        // (validate, the reload's log line, POST /reload, the audit entry).
        let m = format!(
            "... and more errors: rampart stopped checking after these {}; fix them and validate again",
            r.errors.len()
        );
        r.errors
            .push(error_at(origin, (0, 0), &KeyPath::default(), m));
    }
    match file {
        Some(f) if r.errors.is_empty() => Ok((f, r.warnings, r.read)),
        _ => Err(ConfigErrors(r.errors)),
    }
}

/// Reads the span tree of `text`; a text that is empty, not YAML, too deep, of several
/// documents or of another version gets that one error, as nothing else in it can be judged.
fn read(text: &str, origin: &str) -> Result<Doc, ConfigErrors> {
    if is_blank(text) {
        let m = "the policy file is empty: it needs at least `version: 1` and one listener";
        return whole(origin, (1, 1), m.into());
    }
    let mut doc = Doc::parse(text);
    if let Some(at) = doc.too_deep {
        let m = format!("the file nests deeper than {MAX_DEPTH} levels");
        return whole(origin, at, m);
    }
    if let Some((at, path, m)) = doc.syntax.take() {
        return whole_at(origin, at, &path, m);
    }
    if let Some((line, _)) = doc.second_document {
        let m = "the file holds more than one YAML document (a second `---`); rampart reads one";
        return whole(origin, (line, 1), m.into());
    }
    // Another version is another schema: its keys would only add confusing errors.
    let version = KeyPath::default().key("version");
    if let Some(v) = doc.scalar(&version).and_then(|v| v.parse::<u32>().ok()) {
        if v != VERSION {
            let mut r = Report::new(origin, &doc, Vec::new());
            r.value(
                &version,
                format!("unsupported version {v}: the only version is {VERSION}"),
            );
            return Err(ConfigErrors(r.errors));
        }
    }
    Ok(doc)
}

/// The single error of a file that cannot be read further.
fn whole<T>(origin: &str, at: (usize, usize), message: String) -> Result<T, ConfigErrors> {
    whole_at(origin, at, &KeyPath::default(), message)
}

/// [`whole`], under the key `path` (where the parser stood).
fn whole_at<T>(
    origin: &str,
    at: (usize, usize),
    path: &KeyPath,
    message: String,
) -> Result<T, ConfigErrors> {
    Err(ConfigErrors(vec![error_at(origin, at, path, message)]))
}

/// An error placed where the text says (`at`), not looked up in the tree by its path.
fn error_at(
    origin: &str,
    (line, column): (usize, usize),
    path: &KeyPath,
    message: String,
) -> ConfigError {
    ConfigError {
        origin: origin.to_string(),
        line,
        column,
        path: path.to_string(),
        message,
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
    check_admin(f, r);
    if let Some(a) = &f.audit {
        listener::check_log_file(
            &root.key("audit").key("file"),
            &a.file,
            listener::Log::Audit,
            r,
        );
    }
    check_runtime(f, r);
    check_tenants(f, r);
    for (name, up) in &f.upstreams {
        let p = root.key("upstreams").key(name);
        if let Err(m) = syntax::name("upstream", name) {
            r.key(&p, m);
        }
        upstream::check(up, &p, r);
        // An outbound listener whose route to it can take a CONNECT tunnels to it: a route
        // without a path prefix (a CONNECT's target has no path).
        let tunnels = f
            .listeners
            .iter()
            .filter(|l| l.direction == Direction::Outbound)
            .find(|l| {
                l.routes
                    .iter()
                    .any(|rt| rt.upstream == *name && rt.takes_connect())
            })
            .map(|l| l.name.as_str());
        upstream::tunnelled(up, &p, tunnels, r);
    }
    for (name, pol) in &f.policies {
        let p = root.key("policies").key(name);
        if let Err(m) = syntax::name("policy", name) {
            r.key(&p, m);
        }
        // An outbound listener whose routes that can take a CONNECT carry this policy takes
        // CONNECTs with it.
        let tunnels = f
            .listeners
            .iter()
            .filter(|l| l.direction == Direction::Outbound)
            .find(|l| {
                l.routes
                    .iter()
                    .any(|rt| rt.policy.as_deref() == Some(name) && rt.takes_connect())
            })
            .map(|l| l.name.as_str());
        policy::check(pol, &p, tunnels, r);
    }
    listener::check(f, r);
    plans::check(f, r);
    global::check(f, r);
    never::check(f, r);
    if let Some(t) = &f.tracing {
        tracing::check(t, r);
    }
}

fn check_admin(f: &File, r: &mut Report<'_>) {
    let listen = f.admin.listen;
    if !listen.ip().to_canonical().is_loopback() {
        r.warn(
            &KeyPath::default().key("admin").key("listen"),
            format!("{listen} is not a loopback address: /config, /state and /metrics are open to the network (POST /reload still answers loopback peers only)"),
        );
    }
}

fn check_runtime(f: &File, r: &mut Report<'_>) {
    let rt = &f.runtime;
    let p = KeyPath::default().key("runtime");
    let Size(bytes) = rt.max_header_bytes;
    if !(HEADER_BYTES.0..=HEADER_BYTES.1).contains(&bytes) {
        r.value(
            &p.key("max_header_bytes"),
            format!(
                "{} is out of range: it must be between 8KiB (the least HTTP/1.1 can enforce) and 1MiB",
                rt.max_header_bytes
            ),
        );
    }
    r.at_least_1(&p.key("max_connections"), rt.max_connections.into());
    r.positive(&p.key("header_read_timeout"), rt.header_read_timeout.0);
    r.positive(&p.key("idle_timeout"), rt.idle_timeout.0);
    r.positive(&p.key("body_idle_timeout"), rt.body_idle_timeout.0);
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
    let verifies_clients = f
        .listeners
        .iter()
        .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
    // The first verified source (a token, a client certificate) in `from`, if any: a header or
    // query source after it names the tenant of every request that brings no credential.
    let mut verified: Option<(&str, &str)> = None;
    // The first source that names a tenant for every request, if any: `client_ip: peer` (a
    // proxy listener's connection always has a peer address). The sources after it, and
    // `fallback`, are never reached.
    // A `jwt` source after it still acts when one before it is `jwt` too: a token that one
    // refuses passes over every source but the later `jwt` ones (two issuers on one header).
    let mut always: Option<usize> = None;
    let mut token_before = false;
    for (i, src) in t.from.iter().enumerate() {
        let sp = p.key("from").idx(i);
        tenant_source(src, i, &sp, r);
        let still_tried = token_before && src.jwt.is_some();
        token_before |= always.is_none() && src.jwt.is_some();
        if let Some(at) = always.filter(|_| !still_tried) {
            r.warn(
                &sp,
                format!("this source comes after `client_ip: peer` (tenants.from[{at}]), which names a tenant for every request; it is never tried and does nothing"),
            );
        } else if src
            .client_ip
            .as_ref()
            .is_some_and(|ip| ip.from == ClientIpFrom::Peer)
        {
            always = Some(i);
        }
        if let Some(first) = verified {
            unverified_after(src, first, &sp, r);
        }
        if verified.is_none() {
            verified = if src.jwt.is_some() {
                Some(("a `jwt` source", "a token"))
            } else if src.client_cert.is_some() && verifies_clients {
                // Without a listener that verifies client certificates it names no one (and
                // is warned about as such below).
                Some(("a `client_cert` source", "a verified client certificate"))
            } else {
                None
            };
        }
        if src.client_cert.is_some() && !verifies_clients {
            r.warn(
                &sp.key("client_cert"),
                "no listener verifies client certificates (tls.client_ca), so this source never names a tenant; it does nothing",
            );
        }
    }
    let fp = p.key("fallback");
    if let Some(at) = always.filter(|_| r.is_written(&fp)) {
        r.warn(
            &fp,
            format!("`client_ip: peer` (tenants.from[{at}]) names a tenant for every request, so no request is left without one; the fallback never acts"),
        );
    }
    if t.fallback != "reject" {
        if let Err(m) = syntax::tenant_id(&t.fallback) {
            r.value(&fp, format!("must be `reject` or a tenant id: {m}"));
        }
    }
    r.at_least_1(&p.key("max_tracked"), t.max_tracked);
    if t.max_tracked > MAX_TRACKED {
        r.value(
            &p.key("max_tracked"),
            format!(
                "{} is too large: the most is {MAX_TRACKED} (100M)",
                t.max_tracked
            ),
        );
    }
    let lp = p.key("metrics_labels");
    if t.metrics_labels > MAX_METRICS_LABELS {
        r.value(
            &lp,
            format!(
                "{} is too large: the most is {MAX_METRICS_LABELS}, as each label adds series of its own to every per-tenant metric (the tenants past the cap share `_other`)",
                t.metrics_labels
            ),
        );
    } else if t.metrics_labels > t.max_tracked && r.is_written(&lp) {
        // Acts (a label, once given, is kept for the process's life, evicted tenant or not),
        // but usually a slip: it labels tenants rampart has long forgotten.
        r.warn(
            &lp,
            format!(
                "{} is more than max_tracked ({}): labels outlive tracking, so up to {} tenants, most of them evicted long ago, keep series of their own; set metrics_labels at most max_tracked unless that is meant",
                t.metrics_labels, t.max_tracked, t.metrics_labels
            ),
        );
    }
}

/// Warns at a `header` or `query` source that comes after one that verifies (`first` says
/// which, and what it verifies): the layout of SPEC §13 (`[jwt, header: x-tenant-id]`), which acts as written, but
/// lets a request without the credential be any tenant it names, the verified ones included.
fn unverified_after(
    src: &TenantSource,
    (first, credential): (&str, &str),
    sp: &KeyPath,
    r: &mut Report<'_>,
) {
    let (at, what) = match (&src.header, &src.query) {
        (Some(_), _) => (sp.key("header"), "header"),
        (None, Some(_)) => (sp.key("query"), "query parameter"),
        (None, None) => return,
    };
    r.warn(
        &at,
        format!(
            "this {what} comes after {first}: a request without {credential} can claim any tenant id through it, verified tenants' ids included, and spend their limits and take their plan (idempotency keys are kept apart: a claimed id never replays a verified tenant's stored answer); it is safe only where a trusted party in front of rampart sets this {what} and clients cannot reach rampart without passing it"
        ),
    );
}

/// Most proxies in front that `client_ip.trusted_hops` counts: a longer chain is a mistake.
const MAX_TRUSTED_HOPS: u8 = 10;

/// `client_ip`: `trusted_hops` only where it is read (x-forwarded-for), 1 to
/// [`MAX_TRUSTED_HOPS`]; `ipv6_prefix` 1 to 128.
fn client_ip(ip: &ClientIp, p: &KeyPath, r: &mut Report<'_>) {
    if let Some(hops) = ip.trusted_hops {
        if ip.from != ClientIpFrom::XForwardedFor {
            r.key(
                &p.key("trusted_hops"),
                "trusted_hops only applies to `from: x-forwarded-for` (a peer's address is its own)",
            );
        } else if !(1..=MAX_TRUSTED_HOPS).contains(&hops) {
            r.value(
                &p.key("trusted_hops"),
                format!("{hops} is out of range: 1 (one proxy in front) to {MAX_TRUSTED_HOPS}"),
            );
        }
    }
    if let Some(bits) = ip.ipv6_prefix {
        if !(1..=128).contains(&bits) {
            r.value(
                &p.key("ipv6_prefix"),
                format!(
                    "{bits} is out of range: 1 to 128 bits (64 counts an IPv6 client by its /64)"
                ),
            );
        }
    }
}

fn tenant_source(src: &TenantSource, i: usize, sp: &KeyPath, r: &mut Report<'_>) {
    let given = [
        src.header.is_some(),
        src.query.is_some(),
        src.client_cert.is_some(),
        src.jwt.is_some(),
        src.client_ip.is_some(),
    ];
    // A source key written null (`jwt: ~`) is there: the null check says what it lacks.
    let null_key = ["header", "query", "client_cert", "jwt", "client_ip"]
        .iter()
        .any(|k| {
            let at = r.written(&sp.key(k));
            r.doc.scalar(&at).is_some_and(de::is_null)
        });
    match given.iter().filter(|g| **g).count() {
        0 if null_key => {}
        0 => r.value(
            sp,
            "a source needs one of `header: NAME`, `query: NAME`, `client_cert: cn | uri_san`, `jwt: {...}` or `client_ip: peer | x-forwarded-for`",
        ),
        1 => {}
        _ => r.value(
            sp,
            "a source has exactly one of `header`, `query`, `client_cert`, `jwt` or `client_ip`, not several",
        ),
    }
    if let Some(j) = &src.jwt {
        plans::jwt_source(j, i, &sp.key("jwt"), r);
    }
    if let Some(ip) = &src.client_ip {
        client_ip(ip, &sp.key("client_ip"), r);
    }
    if let Some(h) = &src.header {
        if let Err(m) = syntax::header_name(h) {
            r.value(&sp.key("header"), m);
        }
    }
    if src.query.as_deref() == Some("") {
        r.value(&sp.key("query"), "the query parameter name is empty");
    }
}

// === impl Report ===

impl<'a> Report<'a> {
    fn new(origin: &'a str, doc: &'a Doc, removed: Vec<KeyPath>) -> Self {
        Report {
            origin,
            doc,
            errors: Vec::new(),
            warnings: Vec::new(),
            removed,
            read: FilesRead::default(),
        }
    }

    /// An error about the value at `path`.
    pub(super) fn value(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.push(path, Target::Value, message.into());
    }

    /// An error about the key at `path` (missing, extra or misplaced).
    pub(super) fn key(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.push(path, Target::Key, message.into());
    }

    /// A warning about the key at `path`: accepted, but worth knowing.
    pub(super) fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let e = self.error(path, Target::Key, message.into());
        self.warnings.push(e);
    }

    /// An error (or a warning) about `path` as written in the text, such as a path found by
    /// walking the text rather than the file model.
    pub(super) fn written_key(&mut self, path: &KeyPath, message: String, warning: bool) {
        let e = self.error(path, Target::Key, message);
        if warning {
            self.warnings.push(e);
        } else {
            self.errors.push(e);
        }
    }

    /// The duration at `path` must not be zero.
    pub(super) fn positive(&mut self, path: &KeyPath, d: std::time::Duration) {
        if d.is_zero() {
            self.value(path, "must be longer than 0s");
        }
    }

    /// The count at `path` must be at least 1 (a bound [`bounds`] knows too, for the words of
    /// a value serde cannot read).
    pub(super) fn at_least_1(&mut self, path: &KeyPath, n: u64) {
        debug_assert_eq!(
            bounds::whole_number(path, u64::MAX).0,
            1,
            "{path}: add it to validate/bounds.rs"
        );
        if n < 1 {
            self.value(path, format!("must be at least 1 (got {n})"));
        }
    }

    /// True when a value is written at `path` (not left to its default).
    pub(super) fn is_written(&self, path: &KeyPath) -> bool {
        self.doc.scalar(&self.doc.written(path)).is_some()
    }

    /// True when `path` is written in the text with an empty (null) value: its items
    /// commented out, `~` or `null`. serde reads it as not written.
    pub(super) fn is_null(&self, path: &KeyPath) -> bool {
        self.doc
            .plain_scalar(&self.doc.written(path))
            .is_some_and(de::is_null)
    }

    /// True when `path` is written as a list in the text.
    pub(super) fn doc_has_index(&self, path: &KeyPath) -> bool {
        self.doc.is_seq(&self.doc.written(path))
    }

    /// True when an error so far is about `path` or a key under it (written paths compared).
    pub(super) fn has_error_under(&self, path: &KeyPath) -> bool {
        let at = self.doc.written(path).to_string();
        self.errors.iter().any(|e| {
            e.path
                .strip_prefix(at.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// True when the node at `path` (as written) was taken out after a shape error.
    pub(super) fn was_removed(&self, path: &KeyPath) -> bool {
        self.removed.contains(path)
    }

    /// `path` of the file model as written in the text (lists keep their written indices).
    pub(super) fn written(&self, path: &KeyPath) -> KeyPath {
        self.doc.written(path)
    }

    /// `LINE:COLUMN` of the value at `path`, for messages that point at a second place.
    pub(super) fn place(&self, path: &KeyPath) -> String {
        let (line, column) = self.doc.locate(&self.doc.written(path), Target::Value);
        format!("{line}:{column}")
    }

    /// The file at `file` must exist and be readable; reading it is allowed, binding is not.
    pub(super) fn readable(&mut self, path: &KeyPath, file: &Path, what: &str) {
        let shown = file.display();
        // Looked at before it is opened: opening a FIFO waits for a writer (for ever, in
        // `validate`).
        let meta = std::fs::metadata(file).and_then(|m| match m.is_file() {
            true => std::fs::File::open(file).map(|_| m),
            false => Ok(m),
        });
        match meta {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.value(path, crate::tls::pem::not_regular(what, file)),
            Err(e) => self.value(
                path,
                format!("cannot read {what} {:?}: {e}", shown.to_string()),
            ),
        }
    }

    fn push(&mut self, path: &KeyPath, target: Target, message: String) {
        let written = self.doc.written(path);
        // A check next to (or above) a node taken out would only echo the shape error.
        let echo = self
            .removed
            .iter()
            .any(|r| r.starts_with(&written) || written.starts_with(r));
        if !echo {
            let e = self.error(&written, target, message);
            self.errors.push(e);
        }
    }

    fn error(&self, written: &KeyPath, target: Target, message: String) -> ConfigError {
        let (line, column) = self.doc.locate(written, target);
        ConfigError {
            origin: self.origin.to_string(),
            line,
            column,
            path: written.to_string(),
            message,
        }
    }
}
