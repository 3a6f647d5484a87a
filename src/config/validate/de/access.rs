//! serde's access to the span tree's mappings, sequences and keys: each item handed out
//! carries its own path, and an error from it is placed there.

use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;

use super::super::super::locate::{Entry, KeyPath, Node, Target};
use super::super::words;
use super::{is_null, De, DeError};

/// A mapping key, deserialized as the text it is.
struct KeyDe<'a> {
    key: &'a str,
    path: KeyPath,
}

/// A mapping's entries, handed out in order.
pub(super) struct MapAcc<'a> {
    entries: Vec<&'a Entry>,
    next: usize,
    path: KeyPath,
    /// The mapping is a struct's: its keys are fields, not names the file chose.
    of_struct: bool,
    /// The struct's fields (aliases among them), as serde names them to `deserialize_struct`.
    fields: &'static [&'static str],
}

/// A sequence's items (those not taken out), with the index each is written at.
pub(super) struct SeqAcc<'a> {
    items: Vec<(usize, &'a Node)>,
    next: usize,
    path: KeyPath,
}

// === impl KeyDe ===

impl<'de> de::Deserializer<'de> for KeyDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str(self.key)
            .map_err(|e: DeError| e.at(&self.path, Target::Key))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

// === impl MapAcc, SeqAcc ===

impl<'a> MapAcc<'a> {
    /// The entries of a mapping, the last of a repeated key only (it is the one that wins;
    /// the repeat is reported on its own).
    pub(super) fn new(entries: &'a [Entry], path: &KeyPath) -> Self {
        let mut seen = HashSet::new();
        let mut entries: Vec<&Entry> = entries
            .iter()
            .rev()
            .filter(|e| seen.insert(e.key.as_str()))
            .collect();
        entries.reverse();
        MapAcc {
            entries,
            next: 0,
            path: path.clone(),
            of_struct: false,
            fields: &[],
        }
    }

    /// The same, for a struct of `fields`: a field written null that its type refuses is
    /// marked ([`DeError::null_field`]), and an unknown key brings its unknown siblings along.
    pub(super) fn of_struct(mut self, fields: &'static [&'static str]) -> Self {
        self.of_struct = true;
        self.fields = fields;
        self
    }

    /// The keys after the one at `self.next` that are not among the fields, as the errors
    /// serde would give them one at a time. Only when `first`, the error of the key at
    /// `self.next`, is serde's own refusal of an unknown key among these very fields: then the
    /// struct denies every key that is not one, and each would be refused in its turn (one
    /// more pass of the whole tree each, in `shape.rs`, so the square of their number).
    fn unknown_after(&self, first: &DeError) -> Vec<(DeError, (usize, usize))> {
        let Some(e) = self.entries.get(self.next) else {
            return Vec::new();
        };
        let denies = self.of_struct
            && first.unknown_key
            && first.message == words::unknown("key", &e.key, self.fields);
        if !denies {
            return Vec::new();
        }
        self.entries[self.next + 1..]
            .iter()
            .filter(|s| !self.fields.contains(&s.key.as_str()))
            .map(|s| {
                let e: DeError = de::Error::unknown_field(&s.key, self.fields);
                (e.at(&self.path.key(&s.key), Target::Key), s.at)
            })
            .collect()
    }
}

impl<'de> MapAccess<'de> for MapAcc<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(e) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let key = KeyDe {
            key: &e.key,
            path: self.path.key(&e.key),
        };
        seed.deserialize(key).map(Some).map_err(|mut first| {
            first.unknown_after = self.unknown_after(&first);
            first
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(e) = self.entries.get(self.next) else {
            return Err(DeError::new("a value without a key".into()));
        };
        self.next += 1;
        let path = self.path.key(&e.key);
        let de = De {
            node: &e.value,
            path: path.clone(),
        };
        let null = self.of_struct
            && matches!(&e.value, Node::Scalar { text, plain: true, .. } if is_null(text));
        // A `deserialize_with` function's own error passes through no node: place it here.
        seed.deserialize(de).map_err(|e| {
            let mut e = e.at(&path, Target::Value);
            // Set here, where the value is; the mappings it passes through leave it.
            e.null_field |= null && e.mistyped && e.path == path;
            e
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

impl<'a> SeqAcc<'a> {
    pub(super) fn new(items: &'a [Node], path: &KeyPath) -> Self {
        let items = items
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_gone())
            .collect();
        SeqAcc {
            items,
            next: 0,
            path: path.clone(),
        }
    }
}

impl<'de> SeqAccess<'de> for SeqAcc<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.get(self.next).copied() else {
            return Ok(None);
        };
        self.next += 1;
        let path = self.path.idx(i);
        let de = De {
            node,
            path: path.clone(),
        };
        seed.deserialize(de)
            .map(Some)
            .map_err(|e| e.at(&path, Target::Value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}
