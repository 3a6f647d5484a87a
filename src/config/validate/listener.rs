//! Checks of `listeners`: names, addresses, TLS files, routes and what they refer to, and the
//! SPEC §2 rule that the policies reaching one upstream agree on its circuit breaker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::super::file::{Direction, File, Listener, LogTo};
use super::super::locate::{Doc, KeyPath, Target};
use super::super::ConfigError;
use super::{syntax, Report};
use crate::logfile::{Unfit, Use};

/// Checks every listener and its routes.
pub(super) fn check(f: &File, r: &mut Report<'_>) {
    let lp = KeyPath::default().key("listeners");
    if f.listeners.is_empty() {
        r.key(&lp, "at least one listener is needed");
    }
    let mut names = HashSet::new();
    for (i, l) in f.listeners.iter().enumerate() {
        let p = lp.idx(i);
        if let Err(m) = syntax::name("listener", &l.name) {
            r.value(&p.key("name"), m);
        } else if !names.insert(l.name.as_str()) {
            r.value(
                &p.key("name"),
                format!("another listener is already named {:?}", l.name),
            );
        }
        check_listen(f, i, r);
        if let Some(tls) = &l.tls {
            let tp = p.key("tls");
            r.readable(&tp.key("cert"), &tls.cert, "certificate");
            r.readable(&tp.key("key"), &tls.key, "private key");
            if let Some(ca) = &tls.client_ca {
                r.readable(&tp.key("client_ca"), ca, "client ca bundle");
            } else if r.is_null(&tp.key("client_ca")) {
                // Read as not written, it would turn mutual TLS off: every client admitted
                // without a certificate, where the file asked for one.
                r.key(
                    &tp.key("client_ca"),
                    "is empty (null), which would be read as not written and turn mutual TLS off (clients admitted without a certificate): name the PEM bundle of the CAs whose client certificates this listener requires, or delete `client_ca` to serve without mutual TLS",
                );
            }
        }
        if let Some(LogTo::File(path)) = l.access_log.as_ref().map(|a| &a.to) {
            let to = p.key("access_log").key("to");
            // `STDERR` wrote a file of that name in the working directory, silently.
            if let Some(name) = path
                .to_str()
                .map(str::to_ascii_lowercase)
                .filter(|n| n == "stdout" || n == "stderr")
            {
                r.warn(
                    &to,
                    format!("{:?} is taken as a file path (a file of that name in the working directory); only the lowercase `{name}` means the stream: write `to: {name}`", path.display().to_string()),
                );
            }
            check_log_file(&to, path, Log::Access, r);
            if let Some(audit) = f.audit.as_ref().filter(|a| same_file(path, &a.file)) {
                r.value(
                    &to,
                    format!("{} is also audit.file ({}): access log lines written into the audit trail would break its hash chain (each entry chains to the file's last line); give the access log a file of its own", path.display(), audit.file.display()),
                );
            }
        }
        check_routes(f, l, &p, r);
    }
    check_breakers(f, r);
    check_unused(f, r);
}

/// A policy or an upstream that no route names acts on no request: a route that was meant to
/// name a policy and lacks its `policy:` line is a plain proxy, with no word. Each warns at its
/// key. When the shape pass took out a listener or a route, the names its routes held are not
/// known here, so nothing is warned about (the file is refused anyway).
fn check_unused(f: &File, r: &mut Report<'_>) {
    let lp = KeyPath::default().key("listeners");
    if r.removed.iter().any(|p| p.starts_with(&lp)) {
        return;
    }
    let routes = || f.listeners.iter().flat_map(|l| &l.routes);
    let root = KeyPath::default();
    for name in f.policies.keys() {
        if !routes().any(|rt| rt.policy.as_deref() == Some(name.as_str())) {
            r.warn(
                &root.key("policies").key(name),
                format!("no route names this policy (`policy: {name}`), so it acts on no request: a route without `policy:` is a plain proxy"),
            );
        }
    }
    for name in f.upstreams.keys() {
        if !routes().any(|rt| rt.upstream == *name) {
            r.warn(
                &root.key("upstreams").key(name),
                format!("no route names this upstream (`upstream: {name}`), so no request is sent to it"),
            );
        }
    }
}

/// Which log a file is for, for the words of its errors.
#[derive(Clone, Copy, Debug)]
pub(super) enum Log {
    /// `listeners[i].access_log.to`.
    Access,
    /// `audit.file`.
    Audit,
}

/// A log file (an access log, the audit trail) is created on demand, but its directory must
/// exist: a path that can never be written would leave the log empty without a word. What is
/// there already must be a regular file: opening a FIFO for writing waits for a reader (the
/// file is opened without waiting, so the log would lose every line), a device fails or never
/// ends (`/dev/full`). And this process must be able to open it (or create it) as the log
/// does: a start or reload is refused rather than run with a log that takes nothing.
pub(super) fn check_log_file(p: &KeyPath, path: &Path, log: Log, r: &mut Report<'_>) {
    let how = match log {
        Log::Access => Use::Append,
        Log::Audit => Use::ReadAppend,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.is_dir() {
        r.value(p, format!("{} is a directory", path.display()));
    } else if path.file_name().is_none() {
        r.value(p, format!("{} names no file", path.display()));
    } else if !dir.is_dir() {
        r.value(p, format!("the directory {} does not exist", dir.display()));
    } else if let Err(e) = crate::logfile::check(path, how) {
        let why = match (&e, log) {
            (Unfit::NotRegular(_), Log::Access) => {
                ": rampart appends its access log to regular files only; to feed a pipe or a collector, use `to: stdout` or `to: stderr`"
            }
            (Unfit::NotRegular(_), Log::Audit) => {
                ": the audit trail must be a regular file, whose last line the next entry chains to"
            }
            _ => "",
        };
        r.value(p, format!("{} {e}{why}", path.display()));
    }
}

/// Whether `a` and `b` are one file: the same inode when both exist (through symbolic or hard
/// links), else the same path once symbolic links and the directory are resolved as far as
/// they exist (a file not created yet is created where its link points).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return (ma.dev(), ma.ino()) == (mb.dev(), mb.ino());
    }
    resolved(a) == resolved(b)
}

/// `path` with its symbolic links followed (at most 40, as the kernel does) and its directory
/// made canonical, as far as they exist; else as written.
fn resolved(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        if let Ok(c) = std::fs::canonicalize(&path) {
            return c;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::read_link(&path) {
            Ok(target) => path = dir.join(target),
            Err(_) => {
                return match (std::fs::canonicalize(&dir), path.file_name()) {
                    (Ok(d), Some(name)) => d.join(name),
                    _ => path,
                };
            }
        }
    }
    path
}

fn check_listen(f: &File, i: usize, r: &mut Report<'_>) {
    let l = &f.listeners[i];
    let p = KeyPath::default().key("listeners").idx(i).key("listen");
    let earlier = f.listeners[..i]
        .iter()
        .position(|o| clash(o.listen, l.listen));
    // Rampart tells its listeners apart by the address written: a second one on port 0 of
    // the same IP would replace the first (not a stand-in for a listen that is no address).
    let stood_in = |j: usize| {
        let jp = KeyPath::default().key("listeners").idx(j).key("listen");
        r.was_removed(&r.written(&jp))
    };
    let twice = (l.listen.port() == 0)
        .then(|| (0..i).find(|&j| f.listeners[j].listen == l.listen && !stood_in(j)))
        .flatten();
    if clash(l.listen, f.admin.listen) {
        r.value(
            &p,
            format!("{} clashes with admin.listen {}", l.listen, f.admin.listen),
        );
    } else if let Some(j) = twice {
        r.value(
            &p,
            format!("{} is listeners[{j}].listen too: port 0 takes a free port, but listeners are told apart by the address written, so each on port 0 needs an IP of its own (or a port)", l.listen),
        );
    } else if let Some(j) = earlier {
        let other = f.listeners[j].listen;
        r.value(
            &p,
            format!("{} clashes with listeners[{j}].listen {other}", l.listen),
        );
    }
}

/// Two addresses that cannot both be bound: the same port on the same IP, or on a wildcard
/// IP (`0.0.0.0`, `::`) that covers the other. Port 0 asks the system for a free port, so it
/// clashes with nothing here (the same port 0 written twice is refused apart).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// What a route's `match` matches: its host as matched (`route::host_key`), its path prefix
/// (`/` as none where no CONNECT is routed).
type MatchKey<'a> = (Option<String>, Option<&'a str>);

fn check_routes(f: &File, l: &Listener, lp: &KeyPath, r: &mut Report<'_>) {
    if l.routes.is_empty() {
        r.value(&lp.key("routes"), "needs at least one route");
    }
    let mut catch_all: Option<usize> = None;
    // An outbound listener routes CONNECTs too, whose target has no path: only a route
    // without a `path_prefix` takes one (as at runtime), so there `/` is not the same as no
    // prefix. An inbound listener answers CONNECT 405 before routing.
    let connects = l.direction == Direction::Outbound;
    // Outbound, the first route with no host and prefix `/`: every request but a CONNECT.
    let mut all_but_connect: Option<usize> = None;
    let mut names: HashMap<&str, usize> = HashMap::new();
    // Without merging, `//` is in the normal form, so a prefix with it can match.
    let merge = l.merges_slashes();
    // The first route with each match (host as matched, path prefix): a later one with the
    // same match is never used.
    let mut seen: Vec<(usize, MatchKey<'_>)> = Vec::new();
    for (j, route) in l.routes.iter().enumerate() {
        let p = lp.key("routes").idx(j);
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
            } else if let Some(flaw) = syntax::path_flaw(pp, false) {
                let message = match flaw {
                    // Request paths are matched with such bytes escaped: what is written is
                    // what is matched, so the prefix is written as the paths it matches are.
                    syntax::PathFlaw::Unescaped(escaped) => format!("path prefix {pp:?} has characters a request path is matched with percent-encoded (UTF-8 beyond ASCII, and \" < > [ \\ ] ^ ` {{ | }}), and written as they are it would never match: write {escaped:?}"),
                    syntax::PathFlaw::Never(what) => {
                        format!("path prefix {pp:?} can never match: it has {what}")
                    }
                };
                r.value(&p.key("match").key("path_prefix"), message);
            } else if !crate::proxy::normalize::prefix_can_match(pp, merge) {
                // Request paths are matched in their normal form: this prefix never would be.
                let slashes = if merge { "no `//`, " } else { "" };
                r.value(
                    &p.key("match").key("path_prefix"),
                    format!("path prefix {pp:?} can never match: request paths are matched after normalisation ({slashes}no `.` or `..` segments, `%` escapes of letters, digits and `-._~` decoded, other escapes in upper case)"),
                );
            }
        }
        // Hosts match as requests are matched (without regard to case, a trailing dot, or how
        // an IPv6 address is written); `/` is no prefix where no CONNECT is routed.
        let key = (
            host.map(crate::proxy::route::host_key),
            prefix.filter(|pp| connects || *pp != "/"),
        );
        // A later route with prefix `/` is never used after one with its host and none
        // (which takes all it would); the other way round, the later one takes CONNECTs.
        let same = seen.iter().find(|(_, k)| *k == key).map(|(k, _)| *k);
        let wider = seen
            .iter()
            .find(|(_, k)| key.1 == Some("/") && k.0 == key.0 && k.1.is_none())
            .map(|(k, _)| *k);
        if let Some(k) = catch_all {
            r.key(
                &p,
                format!("this route is never used: routes[{k}] before it matches every request"),
            );
        } else if let Some(k) = all_but_connect.filter(|_| prefix.is_some()) {
            r.key(
                &p,
                format!("this route is never used: routes[{k}] before it matches every request but a CONNECT, and a route with a path_prefix takes no CONNECT (its target has no path)"),
            );
        } else if let Some(k) = same {
            r.key(
                &p,
                format!("this route is never used: routes[{k}] before it has the same match (hosts compare without regard to case, a trailing dot, or how an IPv6 address is written)"),
            );
        } else if let Some(k) = wider {
            r.key(
                &p,
                format!("this route is never used: routes[{k}] before it has the same host and no path_prefix, which matches every request this one does"),
            );
        }
        if same.is_none() {
            seen.push((j, key));
        }
        if host.is_none() && catch_all.is_none() {
            match prefix {
                None => catch_all = Some(j),
                Some("/") if !connects => catch_all = Some(j),
                Some("/") => {
                    all_but_connect.get_or_insert(j);
                }
                Some(_) => {}
            }
        }
        if let Some(name) = &route.name {
            route_name(name, j, &mut names, lp, r);
        }
        if let Some(t) = route.tunnel_idle_timeout {
            // It acts on every listener: an upgraded connection (WebSocket) is a tunnel too.
            r.positive(&p.key("tunnel_idle_timeout"), t.0);
        }
        check_refs(f, route, &p, r);
        if let Some(e) = f
            .upstreams
            .get(&route.upstream)
            .and_then(|u| u.endpoints.iter().find(|e| is_own(l.listen, e)))
        {
            r.value(
                &p.key("upstream"),
                format!("upstream {:?} has endpoint {e}, this listener's own address: its requests would come back here without end", route.upstream),
            );
        }
    }
}

/// Whether `endpoint` is `listen` itself: the same port, and the same IP address, or a
/// loopback one where the listener takes every address of the host.
fn is_own(listen: SocketAddr, endpoint: &str) -> bool {
    let Ok(e) = endpoint.parse::<SocketAddr>() else {
        return false; // a DNS name: not judged here
    };
    let (lip, eip) = (listen.ip().to_canonical(), e.ip().to_canonical());
    e.port() == listen.port()
        && (lip == eip || (lip.is_unspecified() && (eip.is_loopback() || eip.is_unspecified())))
}

/// A route's `name:` names it in metrics and messages, so it is unique within its
/// listener.
fn route_name<'a>(
    name: &'a str,
    j: usize,
    names: &mut HashMap<&'a str, usize>,
    lp: &KeyPath,
    r: &mut Report<'_>,
) {
    let p = lp.key("routes").idx(j).key("name");
    if let Err(m) = syntax::name("route", name) {
        r.value(&p, m);
    } else if let Some(k) = names.get(name) {
        let first = r.place(&lp.key("routes").idx(*k).key("name"));
        r.value(
            &p,
            format!("routes[{k}] of this listener ({first}) is already named {name:?}; route names must differ within a listener"),
        );
    } else {
        names.insert(name, j);
    }
}

fn check_refs(f: &File, route: &super::super::file::Route, p: &KeyPath, r: &mut Report<'_>) {
    for (key, m) in dangling(f, Some(&route.upstream), route.policy.as_deref(), r) {
        r.value(&p.key(key), m);
    }
}

/// The names a route refers to that nothing defines: the key, and what is wrong.
fn dangling(
    f: &File,
    up: Option<&str>,
    pol: Option<&str>,
    r: &Report<'_>,
) -> Vec<(&'static str, String)> {
    let root = KeyPath::default();
    let mut out = Vec::new();
    if let Some(up) = up {
        if !f.upstreams.contains_key(up) && !r.was_removed(&root.key("upstreams").key(up)) {
            let known = known(f.upstreams.keys());
            out.push(("upstream", format!("no upstream named {up:?} ({known})")));
        }
    }
    if let Some(pol) = pol {
        if !f.policies.contains_key(pol) && !r.was_removed(&root.key("policies").key(pol)) {
            let known = known(f.policies.keys());
            out.push(("policy", format!("no policy named {pol:?} ({known})")));
        }
    }
    out
}

/// A listener the shape pass took out (a required key of its own missing or bad: `direction:
/// sideways`, `listen: nohost`) takes its routes with it; their references are still read
/// from the text as written (`whole`, the tree before anything was taken out) and checked, so
/// that a dangling `upstream` or `policy` shows in the same pass (SPEC §14) rather than after
/// the listener is mended.
pub(super) fn check_taken_out(f: &File, whole: &Doc, r: &mut Report<'_>) {
    let taken: Vec<KeyPath> = whole
        .glob("listeners.[]")
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| r.was_removed(p))
        .collect();
    if taken.is_empty() {
        return;
    }
    for (rp, _) in whole.glob("listeners.[].routes.[]") {
        if !taken.iter().any(|l| rp.starts_with(l)) {
            continue;
        }
        let text = |k: &str| whole.scalar(&rp.key(k)).filter(|t| !t.is_empty());
        for (key, message) in dangling(f, text("upstream"), text("policy"), r) {
            let path = rp.key(key);
            let (line, column) = whole.locate(&path, Target::Value);
            r.errors.push(ConfigError {
                origin: r.origin.to_string(),
                line,
                column,
                path: path.to_string(),
                message,
            });
        }
    }
}

/// SPEC §2: a breaker guards an upstream, so every policy with a `circuit_breaker` that
/// reaches one upstream must carry the same section. A policy without one adds no breaker
/// rules, so it conflicts with none (its routes are still guarded by the upstream's breaker).
fn check_breakers(f: &File, r: &mut Report<'_>) {
    // upstream → (policy, the route's path) of the first route that reaches it.
    let mut first: BTreeMap<&str, (&str, KeyPath)> = BTreeMap::new();
    let lp = KeyPath::default().key("listeners");
    for (i, l) in f.listeners.iter().enumerate() {
        for (j, route) in l.routes.iter().enumerate() {
            let Some(pol) = route.policy.as_deref() else {
                continue;
            };
            let Some(this) = f.policies.get(pol).and_then(|p| p.circuit_breaker.as_ref()) else {
                continue;
            };
            let here = lp.idx(i).key("routes").idx(j).key("policy");
            let up = route.upstream.as_str();
            let Some((other, at)) = first.get(up) else {
                first.insert(up, (pol, here));
                continue;
            };
            let differ = f
                .policies
                .get(*other)
                .and_then(|o| o.circuit_breaker.as_ref())
                .is_some_and(|o| o != this);
            if *other != pol && differ {
                let there = r.place(at);
                let at = r.written(at);
                r.value(
                    &here,
                    format!("policies {other:?} ({at} at {there}) and {pol:?} (here) both reach upstream {up:?} with different circuit_breaker sections; a breaker guards an upstream, so they must be the same"),
                );
            }
        }
    }
}

/// `known: a, b` or `none are defined`, for messages about a dangling reference.
fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<_> = names.map(|n| crate::config::locate::printable(n)).collect();
    if all.is_empty() {
        "none are defined".into()
    } else {
        format!("known: {}", all.join(", "))
    }
}
