//! Builds the span tree of a policy file from saphyr-parser's events.
//!
//! One read of the text yields every node with its place, its text and whether it was
//! quoted; the serde mirror is then deserialized from this tree (`validate/de.rs`), so values
//! and positions can never disagree. Aliases are expanded here, within a node budget, so a
//! small file cannot grow into a huge tree, and so are merge keys (`<<: *defaults`).

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Span, SpannedEventReceiver};

use super::{Doc, Entry, KeyPath, Node, Pos, MAX_DEPTH};

/// Most nodes one file may expand to, aliases included.
const MAX_NODES: usize = 100_000;

/// Builds the tree from parser events; `stack` holds the collections still open.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    /// Where a second document starts, if the text has one.
    second: Option<Pos>,
    documents: usize,
    /// Collections still open below [`MAX_DEPTH`]; their content is not recorded.
    skipped: usize,
    too_deep: Option<Pos>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    /// Of `nodes`, those that aliases added (an alias counts the whole node it repeats).
    aliased: usize,
    too_big: Option<Pos>,
    /// The first merge key (`<<`) whose value is not a mapping nor a list of mappings: where
    /// that value is, and the key's path.
    bad_merge: Option<(Pos, KeyPath)>,
    /// Merge keys written again in a mapping that has one: the path, where the repeat is, and
    /// where the mapping's first `<<` is.
    repeated_merges: Vec<(KeyPath, Pos, Pos)>,
}

enum Open {
    Seq(Pos, usize, Vec<Node>),
    /// A mapping: its entries, the key read and waiting for its value if any (and whether it
    /// is a merge key), and which of its entries are merge keys.
    Map(Pos, usize, Vec<Entry>, Option<Pending>, Vec<usize>),
}

/// A mapping's key waiting for its value.
struct Pending {
    key: String,
    at: Pos,
    /// The key is `<<` written plain: YAML's merge key, not a key of the policy.
    merge: bool,
}

/// What a merge key takes, as the error names it.
const MERGE_WANTS: &str =
    "a merge key (`<<`) takes a mapping or a list of mappings, such as `<<: *defaults`";

pub(super) fn pos(m: Marker) -> Pos {
    (m.line().max(1), m.col() + 1)
}

/// Reads `text` into a [`Doc`]; a text that does not parse keeps its error and no tree.
pub(super) fn parse(text: &str) -> Doc {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let result = parser.load(&mut b, true);
    let mut doc = Doc {
        root: None,
        too_deep: b.too_deep,
        syntax: None,
        second_document: b.second,
        bad_merge: None,
        repeated_merges: Vec::new(),
    };
    match result {
        // The scanner gives up on very deep flow nesting before the builder sees it.
        Err(e) if e.info().contains("recursion limit") => {
            doc.too_deep = doc.too_deep.or(Some(pos(*e.marker())));
        }
        Err(e) => doc.syntax = Some(syntax_error(text, &e, b.open_path())),
        Ok(()) if b.too_big.is_some() => {
            let at = b.too_big.unwrap_or((1, 1));
            // Only aliases can make a small file big; a file over the budget on its own
            // values is told so, not that it expands.
            let m = if b.aliased == 0 {
                format!("the file has more than {MAX_NODES} values, the most rampart takes in one policy file")
            } else {
                format!("the file expands to more than {MAX_NODES} values through aliases")
            };
            doc.syntax = Some((at, KeyPath::default(), m));
        }
        Ok(()) => {
            doc.bad_merge = b.bad_merge.map(|(at, path)| (at, path, MERGE_WANTS.into()));
            doc.repeated_merges = b.repeated_merges;
            doc.root = b.root;
        }
    }
    doc
}

/// The parser's complaint, under the key it was reading (`open`), with tabs named for what
/// they are: the parser notices a tab where it ends the token before it, so the tab itself is
/// looked for from there on (and the key it was reading is not the tab's: none is named).
fn syntax_error(text: &str, e: &ScanError, open: KeyPath) -> (Pos, KeyPath, String) {
    let (line, col) = pos(*e.marker());
    if e.info().contains("tab") {
        let lines = text.lines().enumerate().skip(line.saturating_sub(1));
        for (i, l) in lines {
            let indent = &l[..l.len() - l.trim_start().len()];
            if let Some(t) = indent.find('\t') {
                let m = "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces";
                return ((i + 1, t + 1), KeyPath::default(), m.into());
            }
            if let Some(t) = l.find('\t') {
                let m = "a tab where YAML allows none (it indents and separates with spaces); replace the tab with spaces";
                return ((i + 1, t + 1), KeyPath::default(), m.into());
            }
        }
    }
    ((line, col), open, format!("invalid YAML: {}", e.info()))
}

// === impl Builder ===

impl Builder {
    /// Where the parser stood when it stopped: the key or item each collection still open was
    /// reading. A mapping between two entries ends the path (nothing below it is open).
    fn open_path(&self) -> KeyPath {
        let mut path = KeyPath::default();
        for open in &self.stack {
            path = match open {
                Open::Seq(_, _, items) => path.idx(items.len()),
                Open::Map(_, _, _, Some(p), _) => path.key(&p.key),
                Open::Map(_, _, _, None, _) => break,
            };
        }
        path
    }

    /// Places a finished node in the collection that is open, or makes it the root.
    fn push(&mut self, node: Node, at: Pos, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => {
                if self.documents == 1 && self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, pending, merges)) => match pending.take() {
                Some(Pending { key, at, merge }) => {
                    if merge {
                        merges.push(entries.len());
                    }
                    entries.push(Entry {
                        key,
                        at,
                        value: node,
                    });
                }
                // A key: scalars keep their text; a collection used as a key gets none.
                None => {
                    let merge =
                        matches!(&node, Node::Scalar { text, plain: true, .. } if text == "<<");
                    let key = key_text.unwrap_or_default();
                    *pending = Some(Pending { key, at, merge });
                }
            },
        }
    }

    /// Counts a node against the budget; false once the budget is spent.
    fn count(&mut self, n: usize, at: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.too_big.get_or_insert(at);
            return false;
        }
        true
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let p = node.pos();
        let key_text = match &node {
            Node::Scalar { text, .. } => Some(text.clone()),
            _ => None,
        };
        self.push(node, p, key_text);
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let at = pos(span.start);
        let start = matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..));
        let end = matches!(ev, Event::SequenceEnd | Event::MappingEnd);
        if self.skipped > 0 || self.too_big.is_some() {
            if start {
                self.skipped += 1;
            } else if end {
                self.skipped = self.skipped.saturating_sub(1);
            }
            return;
        }
        if start && self.stack.len() >= MAX_DEPTH {
            // Too deep: the whole collection stands as one node at its start.
            self.skipped = 1;
            self.too_deep.get_or_insert(at);
            self.push(Node::Gone(at), at, None);
            return;
        }
        match ev {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second = Some(at);
                }
            }
            Event::Scalar(text, style, anchor, _) if self.count(1, at) => {
                let plain = style == ScalarStyle::Plain;
                let text = text.into_owned();
                self.finish(Node::Scalar { at, text, plain }, anchor);
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node::Gone(at));
                self.aliased = self.aliased.saturating_add(node.size());
                if self.count(node.size(), at) {
                    self.finish(node, 0);
                }
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(at, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack
                    .push(Open::Map(at, anchor, Vec::new(), None, Vec::new()));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq(at, a, items)) => (Node::Seq { at, items }, a),
                    Some(Open::Map(at, a, entries, _, merges)) => {
                        // YAML 1.1's merge type has one `<<` a mapping (its value may list
                        // several mappings): a second is a key given twice.
                        if let Some((first, rest)) = merges.split_first() {
                            let path = self.open_path().key("<<");
                            for &i in rest {
                                let dup = (path.clone(), entries[i].at, entries[*first].at);
                                self.repeated_merges.push(dup);
                            }
                        }
                        let entries = match merged(entries, &merges) {
                            Ok(entries) => entries,
                            Err((bad, entries)) => {
                                let path = self.open_path().key("<<");
                                self.bad_merge.get_or_insert((bad, path));
                                entries
                            }
                        };
                        (Node::Map { at, entries }, a)
                    }
                    None => return,
                };
                if self.count(1, at) {
                    self.finish(node, anchor);
                }
            }
            _ => {}
        }
    }
}

/// A mapping's `entries` with its merge keys (`merges`, their indices) applied, as YAML's merge
/// key type has it: every entry of each mapping merged in whose key the mapping does not write
/// itself, an earlier mapping winning over a later one (`<<: [*a, *b]`: `a`'s). The merged
/// entries follow the mapping's own, so the mapping's place is still its first own key; each
/// keeps where it is written (in the anchored mapping), where an error in it is then shown.
/// `Err`: where a merge key's value is not a mapping nor a list of mappings, with the entries
/// the others gave.
fn merged(entries: Vec<Entry>, merges: &[usize]) -> Result<Vec<Entry>, (Pos, Vec<Entry>)> {
    if merges.is_empty() {
        return Ok(entries);
    }
    let own: HashSet<String> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !merges.contains(i))
        .map(|(_, e)| e.key.clone())
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    let mut from_merges = Vec::new();
    let mut taken = HashSet::new();
    let mut bad = None;
    for (i, e) in entries.into_iter().enumerate() {
        if !merges.contains(&i) {
            out.push(e);
            continue;
        }
        let sources = match e.value {
            Node::Map { entries, .. } => vec![entries],
            Node::Seq { items, .. } => items
                .into_iter()
                .filter_map(|n| match n {
                    Node::Map { entries, .. } => Some(entries),
                    Node::Gone(_) => None,
                    other => {
                        bad.get_or_insert(other.pos());
                        None
                    }
                })
                .collect(),
            // Too deep (reported as such), or an alias to nothing.
            Node::Gone(_) => Vec::new(),
            Node::Scalar { at, .. } => {
                bad.get_or_insert(at);
                Vec::new()
            }
        };
        for m in sources.into_iter().flatten() {
            if !own.contains(&m.key) && taken.insert(m.key.clone()) {
                from_merges.push(m);
            }
        }
    }
    out.append(&mut from_merges);
    match bad {
        None => Ok(out),
        Some(at) => Err((at, out)),
    }
}
