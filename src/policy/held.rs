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

/// A kept answer's body as the tee that read it hands it over (`proxy/tee.rs`): its bytes, and
/// whether they own exactly their allocation. A body of one frame is that frame as it was read,
/// a view into the connection's read buffer; it is copied ([`ReadBody::into_owned`]) only by a
/// store that keeps it, so an answer that is not kept (a failed gRPC call, for idempotency) is
/// never copied. A body of several frames was joined into a buffer of its own already.
#[derive(Debug)]
pub struct ReadBody {
    bytes: Bytes,
    /// `bytes` own exactly their allocation (or none, when empty).
    exact: bool,
}

// === impl ReadBody ===

impl ReadBody {
    /// `bytes` as read: a view that may hold a larger buffer.
    pub fn view(bytes: Bytes) -> ReadBody {
        let exact = bytes.is_empty();
        ReadBody {
            bytes: if exact { Bytes::new() } else { bytes },
            exact,
        }
    }

    /// `bytes` that own exactly their allocation (joined from frames, or made so).
    pub fn exact(bytes: Bytes) -> ReadBody {
        ReadBody { bytes, exact: true }
    }

    /// Whether the bytes own exactly their allocation already (`into_owned` copies nothing).
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The bytes, copied into an allocation of exactly their size unless they are one already.
    pub fn into_owned(self) -> Bytes {
        match self.exact {
            true => self.bytes,
            false => Bytes::copy_from_slice(&self.bytes),
        }
    }
}

impl std::ops::Deref for ReadBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}
