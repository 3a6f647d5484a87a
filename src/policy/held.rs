//! What a kept answer's header fields hold, for the stores that keep answers past their request
//! (the idempotency store, the stale store of a fallback).
//!
//! A header value parsed from a connection is a view into that connection's read buffer, which
//! a kept answer would hold whole for as long as it is kept; [`owned_fields`] copies the fields
//! into a map of their own, once per kept answer. [`fields_size`] is what such a map holds, as
//! near as can be told without asking the allocator, so a store's byte bound is on what it
//! really holds.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

/// What a header map keeps per slot of its capacity beside the field's own bytes: the field's
/// name and value handles, its hash and links, and its index (a map keeps a third more).
pub const FIELD_SLOT: usize =
    std::mem::size_of::<http::HeaderName>() + std::mem::size_of::<HeaderValue>() + 32;

/// What a field keeps beside its bytes when it is a second value of its name.
pub const EXTRA_VALUE: usize = std::mem::size_of::<HeaderValue>() + 32;

/// What `h` holds: its fields' names and values, its slots and its extra values.
pub fn fields_size(h: &HeaderMap) -> usize {
    let bytes = h
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum::<usize>();
    bytes + h.capacity() * FIELD_SLOT + (h.len() - h.keys_len()) * EXTRA_VALUE
}

/// `h` in a map of its own, each value a copy of exactly its bytes: a value parsed from a
/// connection is a view into its read buffer (as a body frame is), which a kept answer would
/// hold whole for as long as it is kept; and a cloned or grown map may have spare capacity.
pub fn owned_fields(h: &HeaderMap) -> HeaderMap {
    let mut own = HeaderMap::with_capacity(h.keys_len());
    for (name, value) in h {
        let mut copy = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
            .unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        own.append(name.clone(), copy);
    }
    own
}
