//! The span tree of the policy file, and where a key path sits in it.
//!
//! The text is read once, by saphyr-parser (`locate/build.rs`), into a small tree whose every
//! node keeps its `LINE:COLUMN`. The serde mirror is deserialized from that tree, and semantic
//! errors look their place up in it. Lookups never fail: a path that is not in the text (a
//! default value, a key left out) resolves to its nearest ancestor that is, and a text that
//! does not parse resolves everything to line 1, column 1.

mod build;

use std::borrow::Cow;
use std::collections::hash_map::Entry as Seen;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// A 1-based line and column.
pub(super) type Pos = (usize, usize);

/// One step of a key path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `listeners[1].routes[0].upstream`, built one step at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct KeyPath(Vec<Seg>);

/// Whether an error is about a key's value (a bad value) or the key itself (missing, extra).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Key,
    Value,
}

/// The nodes of one YAML document, each with its place.
#[derive(Debug, Default)]
pub(super) struct Doc {
    pub(super) root: Option<Node>,
    /// Where the text first nests deeper than [`MAX_DEPTH`], if it does.
    pub(super) too_deep: Option<Pos>,
    /// The text is not YAML: where, under which key (the collections the parser had open when
    /// it stopped), and why.
    pub(super) syntax: Option<(Pos, KeyPath, String)>,
    /// Where a second document starts (`---` after content), if there is one.
    pub(super) second_document: Option<Pos>,
    /// The first merge key (`<<`) whose value is not a mapping nor a list of mappings: where
    /// that value is, the key's path, and why. The tree is read without that merge, so the
    /// file's other errors are reported beside it.
    pub(super) bad_merge: Option<(Pos, KeyPath, String)>,
    /// Merge keys (`<<`) written a second time in one mapping: the path, where the repeat is,
    /// and where the first is. The merged tree no longer holds them, so they are found here.
    pub(super) repeated_merges: Vec<(KeyPath, Pos, Pos)>,
}

/// One node of the tree.
#[derive(Clone, Debug)]
pub(super) enum Node {
    /// A scalar's text; `plain` when unquoted (only plain scalars are numbers, booleans, null).
    Scalar {
        at: Pos,
        text: String,
        plain: bool,
    },
    Seq {
        at: Pos,
        items: Vec<Node>,
    },
    Map {
        at: Pos,
        entries: Vec<Entry>,
    },
    /// A value taken out after an error (or an alias to nothing); a sequence keeps its place
    /// so the items after it keep the index they are written with.
    Gone(Pos),
}

/// One `key: value` of a mapping.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) at: Pos,
    pub(super) value: Node,
}

/// Deepest nesting accepted. A policy file nests about eight levels; the bound keeps the tree
/// (and the recursion over it) small.
pub(super) const MAX_DEPTH: usize = 64;

// === impl KeyPath ===

impl KeyPath {
    /// The path one key deeper.
    pub(super) fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    /// The path one sequence item deeper.
    pub(super) fn idx(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// The steps of the path, first to last.
    pub(super) fn segs(&self) -> &[Seg] {
        &self.0
    }

    /// True when `self` is `other` or lies under it.
    pub(super) fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.starts_with(&other.0)
    }

    /// True when the path is one `pattern` names: keys joined by `.`, where `*` is any key,
    /// `[]` any item and `**` any number of steps (`policies.*.rate_limit.**.burst`).
    pub(super) fn matches(&self, pattern: &str) -> bool {
        fn walk(segs: &[Seg], pat: &[&str]) -> bool {
            match (pat.split_first(), segs.split_first()) {
                (None, None) => true,
                (Some((&"**", rest)), _) => {
                    walk(segs, rest) || segs.split_first().is_some_and(|(_, s)| walk(s, pat))
                }
                (Some((p, rest)), Some((seg, s))) => {
                    let fits = match seg {
                        Seg::Key(k) => *p == "*" || p == k,
                        Seg::Index(_) => *p == "[]",
                    };
                    fits && walk(s, rest)
                }
                _ => false,
            }
        }
        let pat: Vec<&str> = pattern.split('.').collect();
        walk(&self.0, &pat)
    }

    /// The key the path starts with, if it starts with one.
    pub(super) fn first_key(&self) -> Option<&str> {
        match self.0.first() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The key the path ends with, if it ends with one.
    pub(super) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The path one step up; None for the whole file.
    pub(super) fn parent(&self) -> Option<KeyPath> {
        let (_, up) = self.0.split_last()?;
        Some(KeyPath(up.to_vec()))
    }

    /// How many steps the path has (0 for the whole file, 1 for a top-level key).
    pub(super) fn depth(&self) -> usize {
        self.0.len()
    }

    /// True for the path of the whole file.
    pub(super) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses a rendered path (`a.b[2].c`; empty is the root), as tests write them.
    ///
    /// Keys that themselves contain `.` or `[` cannot be told apart here; such a path
    /// resolves to an ancestor, which still gives a useful place.
    #[cfg(test)]
    pub(super) fn parse(s: &str) -> KeyPath {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                segs.push(Seg::Key(name.to_string()));
            }
            while let Some(body) = rest.strip_prefix('[') {
                let Some(end) = body.find(']') else { break };
                match body[..end].parse() {
                    Ok(i) => segs.push(Seg::Index(i)),
                    Err(_) => segs.push(Seg::Key(body[..end].to_string())),
                }
                rest = &body[end + 1..];
            }
        }
        KeyPath(segs)
    }
}

/// A key of the file as an error message shows it: as written, unless it holds control
/// characters (an escape sequence, a line break), which are escaped (`\u{1b}`, `\n`), so that
/// a file's text cannot recolour a terminal or forge a log line through an error about it.
pub(in crate::config) fn printable(key: &str) -> Cow<'_, str> {
    match key.chars().any(char::is_control) {
        true => Cow::Owned(key.escape_debug().to_string()),
        false => Cow::Borrowed(key),
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(&printable(k))?,
                Seg::Key(k) => write!(f, ".{}", printable(k))?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// === impl Doc ===

impl Doc {
    /// Reads `text`'s first document; an unreadable text gives an empty tree and its error.
    pub(super) fn parse(text: &str) -> Doc {
        build::parse(without_bom(text))
    }

    /// Where `path` is written: its value or its key, else its nearest written ancestor.
    pub(super) fn locate(&self, path: &KeyPath, target: Target) -> Pos {
        let Some(mut node) = self.root.as_ref() else {
            return (1, 1);
        };
        // The key of the deepest entry reached so far (None after a sequence index).
        let mut key_at = None;
        for seg in &path.0 {
            let Some((at, child)) = node.child(seg) else {
                // Not written: the nearest written ancestor, by its key when it has one.
                return key_at.unwrap_or_else(|| node.pos());
            };
            node = child;
            key_at = at;
        }
        match target {
            Target::Value => node.pos(),
            Target::Key => key_at.unwrap_or_else(|| node.pos()),
        }
    }

    /// True when `path` is written as a sequence.
    pub(super) fn is_seq(&self, path: &KeyPath) -> bool {
        matches!(self.find(path), Some(Node::Seq { .. }))
    }

    /// The text of the scalar at `path`, if it is one.
    pub(super) fn scalar(&self, path: &KeyPath) -> Option<&str> {
        match self.find(path) {
            Some(Node::Scalar { text, .. }) => Some(text),
            _ => None,
        }
    }

    /// The text of the plain (unquoted) scalar at `path`, if it is one: where a null
    /// (`~`, `null`, nothing) is told from the string `"~"`.
    pub(super) fn plain_scalar(&self, path: &KeyPath) -> Option<&str> {
        match self.find(path) {
            Some(Node::Scalar {
                text, plain: true, ..
            }) => Some(text),
            _ => None,
        }
    }

    fn find(&self, path: &KeyPath) -> Option<&Node> {
        let mut node = self.root.as_ref();
        for seg in &path.0 {
            node = node?.child(seg).map(|(_, n)| n);
        }
        node
    }

    /// Takes the value at `path` out: a mapping loses the key, a sequence keeps a
    /// [`Node::Gone`] in its place. False when there is nothing to take (or `path` is the root).
    pub(super) fn remove(&mut self, path: &KeyPath) -> bool {
        let Some((last, parents)) = path.0.split_last() else {
            return false;
        };
        let mut node = self.root.as_mut();
        for seg in parents {
            node = node.and_then(|n| n.child_mut(seg));
        }
        match (node, last) {
            (Some(Node::Map { entries, .. }), Seg::Key(k)) => {
                let before = entries.len();
                entries.retain(|e| e.key != *k);
                entries.len() != before
            }
            (Some(Node::Seq { items, .. }), Seg::Index(i)) => match items.get_mut(*i) {
                Some(n) if !matches!(n, Node::Gone(_)) => {
                    *n = Node::Gone(n.pos());
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Takes the `keys` out of the mapping at `path` (every copy of each), in one sweep of it
    /// however many they are.
    pub(super) fn remove_keys(&mut self, path: &KeyPath, keys: &HashSet<String>) {
        if let Some(Node::Map { entries, .. }) = self.node_mut(&path.0) {
            entries.retain(|e| !keys.contains(&e.key));
        }
    }

    /// Adds `version: N` to a root mapping that lacks it (after its error was reported), so
    /// the rest of the file can still be read.
    pub(super) fn assume_version(&mut self, version: u32) {
        if let Some(Node::Map { at, entries }) = &mut self.root {
            entries.retain(|e| e.key != "version");
            entries.push(Entry {
                key: "version".into(),
                at: *at,
                value: Node::Scalar {
                    at: *at,
                    text: version.to_string(),
                    plain: true,
                },
            });
        }
    }

    /// Takes the entry at `path`, a mapping's key, out of the tree for a while (see
    /// [`Doc::restore`]); `None` when it is not written there.
    pub(super) fn take_entry(&mut self, path: &KeyPath) -> Option<Entry> {
        let (Seg::Key(k), parents) = path.0.split_last()? else {
            return None;
        };
        let Some(Node::Map { entries, .. }) = self.node_mut(parents) else {
            return None;
        };
        let i = entries.iter().rposition(|e| e.key == *k)?;
        let e = entries.remove(i);
        entries.retain(|e| e.key != *k);
        Some(e)
    }

    /// Puts back an entry [`Doc::take_entry`] took from under `path`'s parent.
    pub(super) fn restore(&mut self, path: &KeyPath, entry: Entry) {
        if let Some((_, parents)) = path.0.split_last() {
            if let Some(Node::Map { entries, .. }) = self.node_mut(parents) {
                entries.push(entry);
            }
        }
    }

    fn node_mut(&mut self, path: &[Seg]) -> Option<&mut Node> {
        let mut node = self.root.as_mut();
        for seg in path {
            node = node.and_then(|n| n.child_mut(seg));
        }
        node
    }

    /// Puts the plain scalar `text` at `path`, a mapping's key: in place of the value written
    /// there (kept at its place), or as a new entry placed at the mapping. For a required value
    /// that was bad or missing, after its error was reported, so that what holds it is still
    /// read and checked. False when the parent is not a mapping.
    pub(super) fn stand_in(&mut self, path: &KeyPath, text: &str) -> bool {
        let Some((Seg::Key(k), parents)) = path.0.split_last() else {
            return false;
        };
        let Some(Node::Map { at, entries }) = self.node_mut(parents) else {
            return false;
        };
        let scalar = |at| Node::Scalar {
            at,
            text: text.to_string(),
            plain: true,
        };
        match entries.iter_mut().rev().find(|e| e.key == *k) {
            Some(e) => e.value = scalar(e.value.pos()),
            None => entries.push(Entry {
                key: k.clone(),
                at: *at,
                value: scalar(*at),
            }),
        }
        true
    }

    /// Turns a path of the file model, whose lists lack the items taken out, into the path as
    /// written: `routes[1]` is `routes[2]` when the text's `routes[1]` was taken out.
    pub(super) fn written(&self, path: &KeyPath) -> KeyPath {
        let mut node = self.root.as_ref();
        let mut out = Vec::with_capacity(path.0.len());
        for seg in &path.0 {
            let seg = match (node, seg) {
                (Some(Node::Seq { items, .. }), Seg::Index(i)) => {
                    let live = items.iter().enumerate().filter(|(_, n)| !n.is_gone());
                    live.map(|(j, _)| Seg::Index(j))
                        .nth(*i)
                        .unwrap_or(Seg::Index(*i))
                }
                _ => seg.clone(),
            };
            node = node.and_then(|n| n.child(&seg).map(|(_, c)| c));
            out.push(seg);
        }
        KeyPath(out)
    }

    /// Every written path that matches `pattern` (`*` any key, `[]` any item), with the
    /// scalar text there, if a scalar.
    pub(super) fn glob(&self, pattern: &str) -> Vec<(KeyPath, Option<&str>)> {
        let mut found = Vec::new();
        if let Some(root) = &self.root {
            let segs: Vec<&str> = pattern.split('.').collect();
            root.glob(&segs, KeyPath::default(), &mut found);
        }
        found
    }

    /// Keys written twice in one mapping: the path of the repeat, where it is, and where the
    /// key is first written in that mapping.
    pub(super) fn duplicate_keys(&self) -> Vec<(KeyPath, Pos, Pos)> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            root.duplicates(&KeyPath::default(), &mut out);
        }
        out
    }
}

// === impl Node ===

impl Node {
    /// Where the node starts; for a mapping, its first key.
    pub(super) fn pos(&self) -> Pos {
        match self {
            Node::Map { entries, .. } if !entries.is_empty() => entries[0].at,
            Node::Scalar { at, .. } | Node::Seq { at, .. } | Node::Map { at, .. } => *at,
            Node::Gone(at) => *at,
        }
    }

    /// True for a value taken out.
    pub(super) fn is_gone(&self) -> bool {
        matches!(self, Node::Gone(_))
    }

    /// Nodes in this subtree, for the alias budget.
    pub(super) fn size(&self) -> usize {
        match self {
            Node::Scalar { .. } | Node::Gone(_) => 1,
            Node::Seq { items, .. } => 1 + items.iter().map(Node::size).sum::<usize>(),
            Node::Map { entries, .. } => {
                1 + entries.iter().map(|e| 1 + e.value.size()).sum::<usize>()
            }
        }
    }

    /// The child at `seg` and its key's place; the last entry wins, as it does for serde.
    fn child(&self, seg: &Seg) -> Option<(Option<Pos>, &Node)> {
        match (self, seg) {
            (Node::Map { entries, .. }, Seg::Key(k)) => entries
                .iter()
                .rev()
                .find(|e| e.key == *k)
                .map(|e| (Some(e.at), &e.value)),
            (Node::Seq { items, .. }, Seg::Index(i)) => items.get(*i).map(|n| (None, n)),
            _ => None,
        }
    }

    fn child_mut(&mut self, seg: &Seg) -> Option<&mut Node> {
        match (self, seg) {
            (Node::Map { entries, .. }, Seg::Key(k)) => entries
                .iter_mut()
                .rev()
                .find(|e| e.key == *k)
                .map(|e| &mut e.value),
            (Node::Seq { items, .. }, Seg::Index(i)) => items.get_mut(*i),
            _ => None,
        }
    }

    fn glob<'a>(&'a self, segs: &[&str], at: KeyPath, out: &mut Vec<(KeyPath, Option<&'a str>)>) {
        let Some((first, rest)) = segs.split_first() else {
            let text = match self {
                Node::Scalar { text, .. } => Some(text.as_str()),
                _ => None,
            };
            out.push((at, text));
            return;
        };
        match (self, *first) {
            (Node::Seq { items, .. }, "[]") => {
                for (i, n) in items.iter().enumerate().filter(|(_, n)| !n.is_gone()) {
                    n.glob(rest, at.idx(i), out);
                }
            }
            (Node::Map { entries, .. }, k) => {
                // The last of a repeated key is the one that counts.
                let mut seen = HashSet::new();
                let mut live: Vec<&Entry> = entries
                    .iter()
                    .rev()
                    .filter(|e| seen.insert(e.key.as_str()))
                    .collect();
                live.reverse();
                for e in live.into_iter().filter(|e| k == "*" || e.key == k) {
                    e.value.glob(rest, at.key(&e.key), out);
                }
            }
            _ => {}
        }
    }

    fn duplicates(&self, path: &KeyPath, out: &mut Vec<(KeyPath, Pos, Pos)>) {
        match self {
            Node::Scalar { .. } | Node::Gone(_) => {}
            Node::Seq { items, .. } => {
                for (i, n) in items.iter().enumerate() {
                    n.duplicates(&path.idx(i), out);
                }
            }
            Node::Map { entries, .. } => {
                let mut seen = HashMap::new();
                for e in entries {
                    let here = path.key(&e.key);
                    match seen.entry(e.key.as_str()) {
                        Seen::Occupied(first) => out.push((here.clone(), e.at, *first.get())),
                        Seen::Vacant(v) => {
                            v.insert(e.at);
                        }
                    }
                    e.value.duplicates(&here, out);
                }
            }
        }
    }
}

/// `text` without the byte order mark an editor may have put before it (YAML 1.2 §5.2 allows
/// one at the start of a stream; Windows editors write it).
pub(super) fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}
