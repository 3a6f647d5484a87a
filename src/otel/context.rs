//! W3C Trace Context (`traceparent`): parsing what a client sends, writing what the upstream
//! gets, and drawing new ids.

use http::header::{HeaderName, HeaderValue};

use crate::proxy::wire::put_hex;

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C header of vendor trace state, passed on untouched with its `traceparent`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A parsed `traceparent`: `VV-TRACEID-PARENTID-FLAGS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 128-bit trace id, never 0.
    pub trace_id: u128,
    /// 64-bit id of the parent span, never 0.
    pub parent_id: u64,
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

// === impl TraceParent ===

impl TraceParent {
    /// A valid `traceparent` (lowercase hex, ids not all zeros, version not `ff`; a version
    /// `00` header is exactly 55 bytes, a later version may append `-` and more); `None` for
    /// anything else.
    pub fn parse(v: &HeaderValue) -> Option<TraceParent> {
        let b = v.as_bytes();
        if b.len() < 55
            || (b.len() > 55 && b[0..2] == *b"00")
            || b.get(55).is_some_and(|c| *c != b'-')
        {
            return None;
        }
        let dashes = b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
        let version = hex(&b[0..2])?;
        let trace_id = hex(&b[3..35])?;
        let parent_id = u64::try_from(hex(&b[36..52])?).ok()?;
        let flags = u8::try_from(hex(&b[53..55])?).ok()?;
        (dashes && version != 0xff && trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The version-00 header naming this context.
    pub fn to_header(&self) -> HeaderValue {
        let mut buf = [b'-'; 55];
        buf[0] = b'0';
        buf[1] = b'0';
        put_hex(&mut buf[3..35], self.trace_id);
        put_hex(&mut buf[36..52], u128::from(self.parent_id));
        put_hex(&mut buf[53..55], u128::from(self.flags));
        // Only ASCII hex digits and dashes were written: always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static(""))
    }
}

/// The value of lowercase hex digits `s` (at most 32), or `None` for any other byte.
fn hex(s: &[u8]) -> Option<u128> {
    let mut n = 0u128;
    for c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(d);
    }
    Some(n)
}

/// A new random trace id (never 0).
pub(super) fn trace_id() -> u128 {
    fastrand::u128(1..)
}

/// A new random span id (never 0).
pub(super) fn span_id() -> u64 {
    fastrand::u64(1..)
}
