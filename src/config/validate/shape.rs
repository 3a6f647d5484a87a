//! The shape of the file, every error of it: deserialize, and on an error take the node out
//! and deserialize again.
//!
//! serde stops at its first error. Rather than mirror the whole schema by hand, each error is
//! recorded and the node it is about is taken out of the tree: an unknown key simply goes (with
//! every other unknown key of its mapping, refused in the same round), a bad value leaves its key unset (its default applies, or its parent reports the key missing,
//! and then the parent goes too). A key written null is read as if it were not written, as
//! serde reads an optional one: its type error is kept back unless the key proves required. A
//! listener's bad `listen` or `direction` is stood in for rather than taken out (see
//! [`listener_stand_in`]). Each round takes out or stands in for at least one node, so the
//! rounds are bounded by the size of the tree, and by [`MAX_ROUNDS`] besides.

use std::collections::HashSet;

use serde::Deserialize;

use super::super::file::File;
use super::super::locate::{Doc, Entry, KeyPath};
use super::super::ConfigError;
use super::de::{De, DeError};

/// How much deserializing one file may cost, in nodes visited over all rounds: each round
/// deserializes the tree again, so a file with as many errors as values would otherwise cost
/// the square of its size. 200 rounds of the largest tree the reader builds (100,000 values);
/// a policy of a few thousand values gets thousands of rounds, so every error of a real file
/// shows (SPEC §14).
const WORK: usize = 200 * 100_000;
/// Fewest and most rounds, whatever the tree's size (the most also bounds the time spent
/// looking through the paths already taken out).
const ROUNDS: (usize, usize) = (200, 5_000);

/// What the shape pass made of a tree.
pub(super) struct Shape {
    /// The file, if the root itself fitted.
    pub(super) file: Option<File>,
    /// Every shape error.
    pub(super) errors: Vec<ConfigError>,
    /// The written paths of the values taken out, unknown keys aside.
    pub(super) removed: Vec<KeyPath>,
    /// The written paths of the values taken out for being of the wrong kind.
    pub(super) mistyped: Vec<KeyPath>,
    /// True when the rounds ran out with the file still not fitting: there are more errors
    /// than [`Shape::errors`] holds.
    pub(super) stopped: bool,
}

/// Deserializes `doc`, taking out what does not fit.
pub(super) fn deserialize(doc: &mut Doc, origin: &str) -> Shape {
    // Type errors of keys written null, held back: a null key is read as if it were not
    // written (`nulls.rs` says what of it), so its error is said only if the key then proves
    // required. Their entries are out of the tree while it is deserialized, then put back, so
    // that `nulls.rs` finds them and messages are placed on them.
    let mut held: Vec<(KeyPath, ConfigError, Entry)> = Vec::new();
    let shape = rounds(doc, origin, &mut held);
    for (path, _, entry) in held {
        doc.restore(&path, entry);
    }
    shape
}

fn rounds(doc: &mut Doc, origin: &str, held: &mut Vec<(KeyPath, ConfigError, Entry)>) -> Shape {
    let mut errors = Vec::new();
    let mut removed: Vec<KeyPath> = Vec::new();
    let mut mistyped = Vec::new();
    let done = |file, errors, removed, mistyped, stopped| Shape {
        file,
        errors,
        removed,
        mistyped,
        stopped,
    };
    let size = doc.root.as_ref().map_or(1, |r| r.size()).max(1);
    let rounds = (WORK / size).clamp(ROUNDS.0, ROUNDS.1);
    for _ in 0..rounds {
        let Some(root) = doc.root.as_ref() else {
            return done(None, errors, removed, mistyped, false);
        };
        let mut e = match File::deserialize(De {
            node: root,
            path: KeyPath::default(),
        }) {
            Ok(file) => return done(Some(file), errors, removed, mistyped, false),
            Err(e) => e,
        };
        // The unknown keys beside an unknown key go with it, in this round.
        let after = std::mem::take(&mut e.unknown_after);
        if !after.is_empty() {
            let mut keys = HashSet::new();
            for (s, (line, column)) in after {
                let message = capital_x(&s).unwrap_or(s.message);
                errors.push(ConfigError {
                    origin: origin.to_string(),
                    line,
                    column,
                    path: s.path.to_string(),
                    message,
                });
                keys.extend(s.path.last_key().map(str::to_string));
            }
            if let Some(parent) = e.path.parent() {
                doc.remove_keys(&parent, &keys);
            }
        }
        // A key left unset because its value was taken out is not missing a second time.
        let echo = e
            .missing
            .as_ref()
            .is_some_and(|k| removed.contains(&e.path.key(k)));
        let required = e.missing.as_ref().and_then(|k| {
            let at = e.path.key(k);
            held.iter().position(|(p, ..)| *p == at)
        });
        if let Some(i) = required {
            // The key is required after all: its own error says more than "missing".
            let (path, error, _) = held.swap_remove(i);
            errors.push(error);
            removed.push(path);
        } else if e.null_field {
            let placed = place(&e, doc, origin);
            if let Some(entry) = doc.take_entry(&e.path) {
                held.push((e.path, placed, entry));
                continue;
            }
            errors.push(placed);
        } else if !echo {
            let mut placed = place(&e, doc, origin);
            if let Some(m) = capital_x(&e).or_else(|| inline_reference(&e)) {
                placed.message = m;
            }
            errors.push(placed);
        }
        if e.path.is_root() && e.missing.as_deref() == Some("version") {
            // The one required key of the root: assume the only version, and read on.
            doc.assume_version(super::VERSION);
            continue;
        }
        if let Some((at, text)) = listener_stand_in(&e) {
            if doc.stand_in(&at, text) {
                if e.mistyped {
                    mistyped.push(at.clone());
                }
                removed.push(at);
                continue;
            }
        }
        if e.path.is_root() || !doc.remove(&e.path) {
            return done(None, errors, removed, mistyped, false);
        }
        if e.mistyped {
            mistyped.push(e.path.clone());
        }
        if !e.unknown_key {
            removed.push(e.path);
        }
    }
    // The rounds ran out: the file may fit now that the last bad node is out.
    let last = doc.root.as_ref().map(|root| {
        File::deserialize(De {
            node: root,
            path: KeyPath::default(),
        })
    });
    match last {
        Some(Ok(file)) => done(Some(file), errors, removed, mistyped, false),
        _ => done(None, errors, removed, mistyped, true),
    }
}

/// A listener's `listen` and `direction` are required: taking a bad one out would take the
/// listener with it, and every error of its routes would wait for the next pass (SPEC §14 asks
/// for all of them in one). So a bad or missing one is stood in for by a value that checks
/// nothing on its own: `0.0.0.0:0` (port 0 clashes with no address and is no endpoint's port),
/// and `inbound` (no error about a route depends on the direction; the one check that does is
/// a warning, and a file with a stand-in has this error, so its warnings are never shown).
/// The path is then counted as taken out, so no check echoes the error there.
fn listener_stand_in(e: &DeError) -> Option<(KeyPath, &'static str)> {
    let text = |key: &str| match key {
        "listen" => Some("0.0.0.0:0"),
        "direction" => Some("inbound"),
        _ => None,
    };
    // `listeners[i]` (a list, or its error would be about `listeners` itself).
    let of_listener = |depth: usize| {
        e.path.depth() == depth && e.path.starts_with(&KeyPath::default().key("listeners"))
    };
    match &e.missing {
        Some(k) if of_listener(2) => Some((e.path.key(k), text(k)?)),
        None if of_listener(3) && !e.unknown_key => {
            Some((e.path.clone(), text(e.path.last_key()?)?))
        }
        _ => None,
    }
}

/// The message for an unknown top-level key spelled `X-...` (any case but the lowercase one,
/// which `validate::parse` took out before this pass): it reads like an extension field, so
/// the message says which spelling is one, rather than only listing the keys rampart knows.
/// Still refused: a key accepted must act, warn or be refused, and YAML keys are
/// case-sensitive everywhere else in the file.
fn capital_x(e: &DeError) -> Option<String> {
    let key = e
        .path
        .last_key()
        .filter(|_| e.unknown_key && e.path.depth() == 1)?;
    let rest = key.strip_prefix("X-")?;
    let shown = crate::config::locate::printable(key);
    let lower = crate::config::locate::printable(rest);
    Some(format!(
        "unknown key \"{shown}\"; top-level keys starting with `x-` (lowercase) are ignored, for anchors: did you mean \"x-{lower}\"?"
    ))
}

/// A route's `policy` or `upstream` written as a mapping or a list (`policy: { retry: ... }`)
/// is a section written where its name goes: say that a name goes there, and where the
/// sections are defined, rather than only that text was expected.
fn inline_reference(e: &DeError) -> Option<String> {
    let (what, under) = if e.path.matches("listeners.[].routes.[].policy") {
        ("policy", "policies")
    } else if e.path.matches("listeners.[].routes.[].upstream") {
        ("upstream", "upstreams")
    } else {
        return None;
    };
    let found = ["map", "sequence"]
        .into_iter()
        .find(|t| e.mistyped && e.message.starts_with(&format!("invalid type: {t},")))?;
    let found = if found == "map" {
        "a mapping"
    } else {
        "a list"
    };
    Some(format!(
        "invalid type: {found}, expected {a} {what} name: {under} are defined under `{under}:` and a route names one (`{what}: NAME`)",
        a = if what == "upstream" { "an" } else { "a" },
    ))
}

fn place(e: &DeError, doc: &Doc, origin: &str) -> ConfigError {
    let (line, column) = doc.locate(&e.path, e.target);
    ConfigError {
        origin: origin.to_string(),
        line,
        column,
        path: e.path.to_string(),
        message: e.message.clone(),
    }
}
