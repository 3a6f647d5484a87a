//! A serde `Deserializer` over the span tree, so every shape error knows its path and place.
//!
//! serde's derived code reports what went wrong through the `de::Error` constructors
//! (`unknown_field`, `missing_field`, `invalid_type`, ...); [`DeError`] keeps those apart
//! instead of rendering them into one string, and each node of the tree stamps its own path on
//! an error that passes through it. Nothing is parsed back out of a message.

use std::fmt;

use serde::de::{self, IntoDeserializer, Unexpected, Visitor};
use serde::forward_to_deserialize_any;

use super::super::locate::{KeyPath, Node, Target};
use super::{bounds, words};

mod access;

use self::access::{MapAcc, SeqAcc};

/// One shape error, with where it belongs once a node has claimed it.
#[derive(Debug)]
pub(super) struct DeError {
    /// The path the error is about (for an unknown key, the key itself).
    pub(super) path: KeyPath,
    pub(super) target: Target,
    pub(super) message: String,
    /// The required key that is missing, for `missing required key`.
    pub(super) missing: Option<String>,
    /// True for a key that is not allowed; taking it out loses nothing.
    pub(super) unknown_key: bool,
    /// True when the value is of the wrong kind (a mapping where text is wanted, say): how
    /// `nulls.rs` tells a key that holds a section from one that holds a value.
    pub(super) mistyped: bool,
    /// True when the value is a struct's key written null (`budget:`), which `shape.rs` reads
    /// as if it were not written unless the key is required.
    pub(super) null_field: bool,
    /// For an unknown key of a struct: the other unknown keys of its mapping, each with its
    /// error and the place of its key, refused in the same pass rather than one per pass.
    pub(super) unknown_after: Vec<(DeError, (usize, usize))>,
    located: bool,
}

/// Deserializes the node at `path`.
pub(super) struct De<'a> {
    pub(super) node: &'a Node,
    pub(super) path: KeyPath,
}

/// A null value as messages name it (serde's own word, "unit value", is Rust's).
const NULL: &str = "empty (null)";

/// What a plain scalar means: YAML 1.2's core schema.
enum Plain {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    /// Digits, but more than 64 bits hold.
    TooLarge,
    Text,
}

// === impl DeError ===

impl DeError {
    fn new(message: String) -> Self {
        DeError {
            path: KeyPath::default(),
            target: Target::Value,
            message,
            missing: None,
            unknown_key: false,
            mistyped: false,
            null_field: false,
            unknown_after: Vec::new(),
            located: false,
        }
    }

    fn mistyped(message: String) -> Self {
        let mut e = DeError::new(message);
        e.mistyped = true;
        e
    }

    /// Stamps the place on an error that has none yet.
    fn at(mut self, path: &KeyPath, target: Target) -> Self {
        if !self.located {
            self.located = true;
            self.path = path.clone();
            self.target = if self.missing.is_some() {
                Target::Key
            } else {
                target
            };
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        // A YAML value that serde calls a unit (a visitor's own `visit_unit`) is a null.
        let unexp = match unexp {
            Unexpected::Unit => Unexpected::Other(NULL),
            other => other,
        };
        let exp = words::expected(&exp.to_string());
        DeError::mistyped(format!("invalid type: {unexp}, expected {exp}"))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let exp = words::expected(&exp.to_string());
        DeError::new(format!("invalid value: {unexp}, expected {exp}"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut e = DeError::new(words::unknown("key", field, expected));
        e.unknown_key = true;
        e
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(words::unknown("value", variant, expected))
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = DeError::new(format!("missing required key \"{field}\""));
        e.missing = Some(field.to_string());
        e
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(format!("key \"{field}\" is given twice"))
    }
}

// === impl De ===

/// True for the plain scalars YAML's core schema reads as null (an empty value among them).
pub(super) fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn resolve(text: &str) -> Plain {
    if is_null(text) {
        return Plain::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | "+.inf" | ".Inf" | "+.Inf" | ".INF" => return Plain::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match (
            text.starts_with('-'),
            text.parse::<u64>(),
            text.parse::<i64>(),
        ) {
            (false, Ok(n), _) => Plain::Unsigned(n),
            (true, _, Ok(n)) => Plain::Signed(n),
            _ => Plain::TooLarge,
        };
    }
    let hex = text.strip_prefix("0x").map(|h| u64::from_str_radix(h, 16));
    let oct = text.strip_prefix("0o").map(|o| u64::from_str_radix(o, 8));
    if let Some(Ok(n)) = hex.or(oct) {
        return Plain::Unsigned(n);
    }
    let floaty = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && text.bytes().any(|b| b.is_ascii_digit());
    match text.parse::<f64>() {
        Ok(f) if floaty => Plain::Float(f),
        _ => Plain::Text,
    }
}

fn too_large(text: &str, max: u64) -> DeError {
    DeError::new(format!(
        "{text} is too large: the largest number allowed here is {max}"
    ))
}

impl<'a> De<'a> {
    fn unexpected(&self) -> Unexpected<'a> {
        match self.node {
            Node::Map { .. } => Unexpected::Map,
            Node::Seq { .. } => Unexpected::Seq,
            Node::Gone(_) => Unexpected::Other(NULL),
            Node::Scalar {
                text, plain: false, ..
            } => Unexpected::Str(text),
            Node::Scalar { text, .. } => match resolve(text) {
                Plain::Null => Unexpected::Other(NULL),
                Plain::Bool(b) => Unexpected::Bool(b),
                Plain::Unsigned(n) => Unexpected::Unsigned(n),
                Plain::Signed(n) => Unexpected::Signed(n),
                Plain::Float(f) => Unexpected::Float(f),
                Plain::TooLarge => Unexpected::Other("a number too large"),
                Plain::Text => Unexpected::Str(text),
            },
        }
    }

    fn wrong<V: de::Expected>(&self, v: &V) -> DeError {
        de::Error::invalid_type(self.unexpected(), v)
    }

    fn locate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.at(&self.path, Target::Value))
    }

    /// Text for `v`; at a size key, a size past 64 bits (`99999999999999GiB`) is refused as
    /// too large, with the most the key takes, rather than as a malformed size.
    fn text<'de, V: Visitor<'de>>(&self, v: V, text: &str) -> Result<V::Value, DeError> {
        match bounds::size_too_large(&self.path, text) {
            Some(m) => Err(DeError::new(m)),
            None => v.visit_str(text),
        }
    }

    /// A whole number from 0 to `max`, written plain. A refusal names the range the checks
    /// take at this key ([`bounds`]), which may start at 1 or end below `max`.
    fn unsigned<'de, V: Visitor<'de>>(self, v: V, max: u64) -> Result<V::Value, DeError> {
        let (least, most) = bounds::whole_number(&self.path, max);
        let words = if most == u64::MAX {
            format!("a whole number of {least} or more")
        } else if least == most {
            format!("the whole number {least}")
        } else {
            format!("a whole number from {least} to {most}")
        };
        let r = match self.node {
            Node::Scalar {
                text, plain: true, ..
            } => match resolve(text) {
                Plain::Unsigned(n) if n <= max => v.visit_u64(n),
                Plain::Unsigned(_) | Plain::TooLarge if !text.starts_with('-') => {
                    Err(too_large(text, most))
                }
                Plain::Signed(_) | Plain::TooLarge => Err(DeError::new(format!(
                    "invalid value: {text}, expected {words}"
                ))),
                _ => Err(DeError::mistyped(format!(
                    "invalid type: {}, expected {words}",
                    self.unexpected()
                ))),
            },
            _ => Err(DeError::mistyped(format!(
                "invalid type: {}, expected {words}",
                self.unexpected()
            ))),
        };
        self.locate(r)
    }
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Map { entries, .. } => v.visit_map(MapAcc::new(entries, &self.path)),
            Node::Seq { items, .. } => v.visit_seq(SeqAcc::new(items, &self.path)),
            Node::Gone(_) => v.visit_unit(),
            Node::Scalar {
                text, plain: false, ..
            } => self.text(v, text),
            Node::Scalar { text, .. } => match resolve(text) {
                Plain::Null => v.visit_unit(),
                Plain::Bool(b) => v.visit_bool(b),
                Plain::Unsigned(n) => v.visit_u64(n),
                // A size key's range, where the number can be no size at all.
                Plain::Signed(n) => match bounds::size_out_of_range(&self.path, text) {
                    Some(m) => Err(DeError::new(m)),
                    None => v.visit_i64(n),
                },
                Plain::Float(f) => v.visit_f64(f),
                Plain::TooLarge => Err(bounds::size_out_of_range(&self.path, text)
                    .map_or_else(|| too_large(text, u64::MAX), DeError::new)),
                Plain::Text => self.text(v, text),
            },
        };
        self.locate(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Scalar {
                text, plain: true, ..
            } => match resolve(text) {
                Plain::Bool(b) => v.visit_bool(b),
                _ => Err(self.wrong(&"true or false")),
            },
            _ => Err(self.wrong(&"true or false")),
        };
        self.locate(r)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.unsigned(v, u8::MAX.into())
    }

    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.unsigned(v, u16::MAX.into())
    }

    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.unsigned(v, u32::MAX.into())
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.unsigned(v, u64::MAX)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Scalar { text, plain, .. }
                if !(*plain && matches!(resolve(text), Plain::Null)) =>
            {
                v.visit_str(text)
            }
            _ => Err(self.wrong(&v)),
        };
        self.locate(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let none = match self.node {
            Node::Gone(_) => true,
            Node::Scalar { text, plain, .. } => *plain && matches!(resolve(text), Plain::Null),
            _ => false,
        };
        if none {
            let r = v.visit_none();
            return self.locate(r);
        }
        let path = self.path.clone();
        v.visit_some(self).map_err(|e| e.at(&path, Target::Value))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Seq { items, .. } => v.visit_seq(SeqAcc::new(items, &self.path)),
            _ => Err(self.wrong(&v)),
        };
        self.locate(r)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Map { entries, .. } => v.visit_map(MapAcc::new(entries, &self.path)),
            _ => Err(self.wrong(&v)),
        };
        self.locate(r)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Map { entries, .. } => {
                v.visit_map(MapAcc::new(entries, &self.path).of_struct(fields))
            }
            _ => Err(self.wrong(&v)),
        };
        self.locate(r)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let r = match self.node {
            // Of the wrong kind, as a null is for any other value: a struct's key written so
            // is read as not written (`shape.rs`), and a required one is told it is empty.
            Node::Scalar {
                text, plain: true, ..
            } if is_null(text) => Err(DeError::mistyped(format!(
                "is empty (null); expected one of: {}",
                variants.join(", ")
            ))),
            Node::Scalar { text, .. } => v.visit_enum(text.as_str().into_deserializer()),
            _ => Err(self.wrong(&v)),
        };
        self.locate(r)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        let path = self.path.clone();
        v.visit_newtype_struct(self)
            .map_err(|e| e.at(&path, Target::Value))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char bytes byte_buf unit unit_struct tuple
        tuple_struct
    }
}
