//! The shape of the file, every error of it: deserialize, and on an error take the node out
//! and deserialize again.
//!
//! serde stops at its first error. Rather than mirror the whole schema by hand, each error is
//! recorded and the node it is about is taken out of the tree: an unknown key simply goes, a bad
//! value leaves its key unset (its default applies, or its parent reports the key missing,
//! and then the parent goes too). Each round removes at least one node, so the rounds are
//! bounded by the size of the tree, and by [`MAX_ROUNDS`] besides.

use serde::Deserialize;

use super::super::file::File;
use super::super::locate::{Doc, KeyPath};
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
        let e = match File::deserialize(De {
            node: root,
            path: KeyPath::default(),
        }) {
            Ok(file) => return done(Some(file), errors, removed, mistyped, false),
            Err(e) => e,
        };
        // A key left unset because its value was taken out is not missing a second time.
        let echo = e
            .missing
            .as_ref()
            .is_some_and(|k| removed.contains(&e.path.key(k)));
        if !echo {
            let mut placed = place(&e, doc, origin);
            if let Some(m) = capital_x(&e) {
                placed.message = m;
            }
            errors.push(placed);
        }
        if e.path.is_root() && e.missing.as_deref() == Some("version") {
            // The one required key of the root: assume the only version, and read on.
            doc.assume_version(super::VERSION);
            continue;
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
