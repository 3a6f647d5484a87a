//! Keys written with an empty (null) value: `tls:` with nothing under it, its keys commented
//! out, or `~`.
//!
//! serde reads a null optional key as an absent one, so such a section would vanish without a
//! word: a listener whose `tls:` lost its keys would serve plaintext. Instead every null value
//! of a key is judged as its empty mapping `{}` would be, which the rest of validation already
//! judges (a missing required key, a section that does nothing): the tree is copied with `{}`
//! in place of each null, checked again, and what is said there about those keys is said here,
//! as errors or warnings. A key whose `{}` is of the wrong kind holds a value, not a section.
//! Whatever that copy makes of them, a null key is still read as absent: it never acts, so
//! it draws at least a warning. A null `tls` is always an error (SPEC §8: a configured `tls`
//! is never silently ignored).
//!
//! One copy is checked, whatever the number of nulls: a file with nulls is validated twice.

use std::collections::HashSet;

use super::super::file::File;
use super::super::locate::{Doc, KeyPath, Node, Seg};
use super::super::ConfigError;
use super::de::is_null;
use super::{check as check_file, shape, Report};

/// Said of a null section that nothing else is said of, and whose absence is nothing (an
/// optional section: no rate limit, no fault).
const SECTION: &str = "the section is empty (null), so it is read as if it were not written and does nothing; give it its keys, or delete it";
/// Said of a null section that nothing else is said of, and that has defaults when not written
/// (`admin:`, `retry.budget:`): those apply.
const DEFAULTED: &str = "the section is empty (null), so it is read as if it were not written: its defaults apply; give it its keys, or delete it";
/// Said of a null `routes[N].match`.
const MATCH: &str = "the section is empty (null), so it is read as if it were not written, so this route matches every request; give it its keys, or delete it";
/// Said of a null key that holds a value (text, a number, a duration).
const VALUE: &str =
    "is empty (null), so it is read as if it were not written; give it a value, or delete it";

/// Adds an error or a warning for every key of `r`'s text whose value is null; `file` is the
/// text as read (null keys as not written), to tell a section that has defaults from one
/// that is simply absent.
pub(super) fn check(r: &mut Report<'_>, file: Option<&File>) {
    let mut nulls = Vec::new();
    if let Some(root) = &r.doc.root {
        find(root, &KeyPath::default(), &mut nulls);
    }
    if nulls.is_empty() {
        return;
    }
    let mut probe = Doc {
        root: r.doc.root.clone(),
        ..Doc::default()
    };
    if let Some(root) = &mut probe.root {
        fill(root);
    }
    // The file as read, as data: a null key whose place holds a value there has defaults.
    let read = file.and_then(|f| serde_json::to_value(f).ok());
    let shape = shape::deserialize(&mut probe, r.origin);
    let mut pr = Report::new(r.origin, &probe, shape.removed.clone());
    pr.errors.extend(shape.errors);
    if let Some(f) = &shape.file {
        check_file(f, &mut pr);
    }
    for path in nulls {
        let is_value = shape.mistyped.contains(&path);
        let shown = path.to_string();
        // A null a check of its own refused (`issuers: ~`, `client_ca: ~`) is told that, and
        // not also that it reads as unwritten.
        if r.errors.iter().any(|e| e.path == shown) {
            continue;
        }
        let about = |e: &&ConfigError| !is_value && is_at(&e.path, &shown);
        let errors: Vec<String> = pr.errors.iter().filter(about).map(said).collect();
        let warnings: Vec<String> = pr.warnings.iter().filter(about).map(said).collect();
        if path.last_key() == Some("tls") {
            r.written_key(&path, tls(&path), false);
        } else if !errors.is_empty() {
            for m in errors {
                r.written_key(&path, m, false);
            }
        } else if !warnings.is_empty() {
            for m in warnings {
                r.written_key(&path, m, true);
            }
        } else {
            let m = match is_value {
                // A route without `match` matches every request: that is what it does.
                false
                    if path.last_key() == Some("match")
                        && path.first_key() == Some("listeners") =>
                {
                    MATCH
                }
                true => VALUE,
                false if read.as_ref().is_some_and(|f| defaulted(f, &path)) => DEFAULTED,
                false => SECTION,
            };
            r.written_key(&path, m.into(), true);
        }
    }
}

/// The message of a null `tls`: what it would have done, and what it needs.
fn tls(path: &KeyPath) -> String {
    let lead = "is empty (null), and a configured `tls` is never silently ignored";
    match path.first_key() {
        Some("listeners") => format!(
            "{lead} (this listener would serve plaintext): it needs `cert` and `key` (PEM files; `client_ca` too for mutual TLS), or delete `tls` to serve plaintext"
        ),
        Some("upstreams") => format!(
            "{lead} (requests to this upstream would go in plaintext): give its keys (`server_name`, `ca`, `cert`, `key`), or `tls: {{}}` for TLS verified against the system's roots, or delete `tls` for plaintext"
        ),
        _ => format!(
            "{lead}: give its keys (`server_name`, `ca`, `cert`, `key`), or delete it for the defaults"
        ),
    }
}

/// True when `path` holds a value in `read` (the file as read, null keys as not written): a
/// section read from its defaults, where an optional one is null or left out.
fn defaulted(read: &serde_json::Value, path: &KeyPath) -> bool {
    let mut at = Some(read);
    for seg in path.segs() {
        at = at.and_then(|v| match seg {
            Seg::Key(k) => v.get(k.as_str()),
            Seg::Index(i) => v.get(*i),
        });
    }
    at.is_some_and(|v| !v.is_null())
}

/// What the copy said at a null key, said of the key as written.
fn said(e: &ConfigError) -> String {
    format!("the section is empty (null): {}", e.message)
}

/// True when the rendered path `p` is `at` or lies under it.
fn is_at(p: &str, at: &str) -> bool {
    p.strip_prefix(at)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The paths of the mapping entries under `node` whose value is a plain null (of a repeated
/// key, the last, which is the one read).
fn find(node: &Node, at: &KeyPath, out: &mut Vec<KeyPath>) {
    match node {
        Node::Map { entries, .. } => {
            let mut seen = HashSet::new();
            let read = entries.iter().rev().filter(|e| seen.insert(e.key.as_str()));
            for e in read {
                let here = at.key(&e.key);
                if is_plain_null(&e.value) {
                    out.push(here);
                } else {
                    find(&e.value, &here, out);
                }
            }
        }
        Node::Seq { items, .. } => {
            for (i, n) in items.iter().enumerate() {
                find(n, &at.idx(i), out);
            }
        }
        Node::Scalar { .. } | Node::Gone(_) => {}
    }
}

/// Puts an empty mapping in place of every plain null value of a mapping entry.
fn fill(node: &mut Node) {
    match node {
        Node::Map { entries, .. } => {
            for e in entries {
                if is_plain_null(&e.value) {
                    e.value = Node::Map {
                        at: e.value.pos(),
                        entries: Vec::new(),
                    };
                } else {
                    fill(&mut e.value);
                }
            }
        }
        Node::Seq { items, .. } => items.iter_mut().for_each(fill),
        Node::Scalar { .. } | Node::Gone(_) => {}
    }
}

fn is_plain_null(node: &Node) -> bool {
    matches!(node, Node::Scalar { text, plain: true, .. } if is_null(text))
}
