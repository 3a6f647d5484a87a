//! Finds where a key path sits in the policy text, so semantic errors carry `LINE:COLUMN`.
//!
//! serde_yaml keeps no positions for a document that parsed, so the text is read a second
//! time with yaml-rust2's event parser, whose events carry marks, into a small tree of
//! positions. Lookups never fail: a path that is not in the text (a default value, a key left
//! out) resolves to its nearest ancestor that is, and a text that does not parse resolves
//! everything to line 1, column 1.

use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

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

/// The positions of every node of one YAML document.
#[derive(Debug, Default)]
pub(super) struct Doc {
    root: Option<Node>,
    /// Where the text first nests deeper than [`MAX_DEPTH`], if it does.
    pub(super) too_deep: Option<Pos>,
}

#[derive(Debug)]
enum Node {
    /// A scalar and its text (none for an alias).
    Scalar(Pos, Option<String>),
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<Entry>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    at: Pos,
    value: Node,
}

/// Builds the tree from parser events; `stack` holds the collections still open.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    done: bool,
    /// Collections still open below [`MAX_DEPTH`]; their content is not recorded.
    skipped: usize,
    too_deep: Option<Pos>,
}

/// Deepest nesting accepted. A policy file nests about eight levels; the bound keeps the tree
/// (and the recursion over it) small, and spares serde_yaml, whose time grows with the square
/// of the depth, a pathological input.
pub(super) const MAX_DEPTH: usize = 64;

enum Open {
    Seq(Pos, Vec<Node>),
    /// A mapping, with the key read and waiting for its value, if any.
    Map(Pos, Vec<Entry>, Option<(String, Pos)>),
}

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

    /// Parses serde_yaml's rendering of a path (`a.b[2].c`; `.` is the root).
    ///
    /// Keys that themselves contain `.` or `[` cannot be told apart here; such a path
    /// resolves to an ancestor, which still gives a useful place.
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

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// === impl Doc ===

impl Doc {
    /// Reads the positions of `text`'s first document; an unreadable text gives an empty tree.
    pub(super) fn parse(text: &str) -> Doc {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        match parser.load(&mut b, false) {
            Ok(()) => Doc {
                root: b.root,
                too_deep: b.too_deep,
            },
            // The scanner gives up on very deep flow nesting before the builder sees it.
            Err(e) if e.info().contains("recursion limit") => Doc {
                root: None,
                too_deep: b.too_deep.or(Some(pos(*e.marker()))),
            },
            Err(_) => Doc {
                root: None,
                too_deep: b.too_deep,
            },
        }
    }

    /// Where `path` is written: its value or its key, else its nearest written ancestor.
    pub(super) fn locate(&self, path: &KeyPath, target: Target) -> Pos {
        let Some(mut node) = self.root.as_ref() else {
            return (1, 1);
        };
        // The key of the deepest entry reached so far (None after a sequence index).
        let mut key_at = None;
        for seg in &path.0 {
            let next = match (node, seg) {
                (Node::Map(_, entries), Seg::Key(k)) => {
                    // The last entry wins, as it does for serde_yaml's maps.
                    entries
                        .iter()
                        .rev()
                        .find(|e| e.key == *k)
                        .map(|e| (Some(e.at), &e.value))
                }
                (Node::Seq(_, items), Seg::Index(i)) => items.get(*i).map(|n| (None, n)),
                _ => None,
            };
            let Some((at, child)) = next else {
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
        matches!(self.find(path), Some(Node::Seq(..)))
    }

    /// True when `path` is written in the text.
    pub(super) fn contains(&self, path: &KeyPath) -> bool {
        self.find(path).is_some()
    }

    /// The text of the scalar at `path`, if it is one.
    pub(super) fn scalar(&self, path: &KeyPath) -> Option<&str> {
        match self.find(path) {
            Some(Node::Scalar(_, text)) => text.as_deref(),
            _ => None,
        }
    }

    fn find(&self, path: &KeyPath) -> Option<&Node> {
        let mut node = self.root.as_ref();
        for seg in &path.0 {
            node = match (node?, seg) {
                (Node::Map(_, es), Seg::Key(k)) => {
                    es.iter().rev().find(|e| e.key == *k).map(|e| &e.value)
                }
                (Node::Seq(_, items), Seg::Index(i)) => items.get(*i),
                _ => None,
            };
        }
        node
    }

    /// Keys written twice in one mapping: the path of the repeat and where it is.
    pub(super) fn duplicate_keys(&self) -> Vec<(KeyPath, Pos)> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            root.duplicates(&KeyPath::default(), &mut out);
        }
        out
    }
}

// === impl Node ===

impl Node {
    /// Where the node starts; for a mapping, its first key (the parser marks a block
    /// mapping's start only once its first key has been read).
    fn pos(&self) -> Pos {
        match self {
            Node::Map(_, entries) if !entries.is_empty() => entries[0].at,
            Node::Scalar(p, _) | Node::Seq(p, _) | Node::Map(p, _) => *p,
        }
    }

    fn duplicates(&self, path: &KeyPath, out: &mut Vec<(KeyPath, Pos)>) {
        match self {
            Node::Scalar(..) => {}
            Node::Seq(_, items) => {
                for (i, n) in items.iter().enumerate() {
                    n.duplicates(&path.idx(i), out);
                }
            }
            Node::Map(_, entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let here = path.key(&e.key);
                    if entries[..i].iter().any(|o| o.key == e.key) {
                        out.push((here.clone(), e.at));
                    }
                    e.value.duplicates(&here, out);
                }
            }
        }
    }
}

// === impl Builder ===

fn pos(m: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    (m.line().max(1), m.col() + 1)
}

impl Builder {
    /// Places a finished node in the collection that is open, or makes it the root.
    fn push(&mut self, node: Node, at: Pos, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => {
                if !self.done {
                    self.root = Some(node);
                    self.done = true;
                }
            }
            Some(Open::Seq(_, items)) => items.push(node),
            Some(Open::Map(_, entries, pending)) => match pending.take() {
                Some((key, key_at)) => entries.push(Entry {
                    key,
                    at: key_at,
                    value: node,
                }),
                // A key: scalars keep their text; a collection used as a key gets none.
                None => *pending = Some((key_text.unwrap_or_default(), at)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = pos(mark);
        let start = matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..));
        let end = matches!(ev, Event::SequenceEnd | Event::MappingEnd);
        if self.skipped > 0 {
            if start {
                self.skipped += 1;
            } else if end {
                self.skipped -= 1;
            }
            return;
        }
        if start && self.stack.len() >= MAX_DEPTH {
            // Too deep: the whole collection stands as one node at its start.
            self.skipped = 1;
            self.too_deep.get_or_insert(at);
            self.push(Node::Scalar(at, None), at, None);
            return;
        }
        match ev {
            Event::Scalar(text, ..) => {
                self.push(Node::Scalar(at, Some(text.clone())), at, Some(text))
            }
            Event::Alias(_) => self.push(Node::Scalar(at, None), at, None),
            Event::SequenceStart(..) => self.stack.push(Open::Seq(at, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Open::Map(at, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq(p, items)) => Node::Seq(p, items),
                    Some(Open::Map(p, entries, _)) => Node::Map(p, entries),
                    None => return,
                };
                let p = node.pos();
                self.push(node, p, None);
            }
            _ => {}
        }
    }
}
