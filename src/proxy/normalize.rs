//! The request path routes are matched on and the upstream is sent: normalised once, before
//! routing (`stack::handle`), on every server (the lean HTTP/1.1 one, hyper's, HTTP/2).
//!
//! Why: a route's `path_prefix` compares bytes, and upstreams resolve `..`, `//` and `%2e`
//! themselves. Matched on the path as sent, `/healthz/../orders` would take the `/healthz`
//! route (tenant optional, no rate limit) and reach the upstream's `/orders`; `/%61dmin` would
//! miss an `/admin` route. So the path is put in one canonical form (as Envoy's
//! `normalize_path`, with its `merge_slashes` where the listener's is on, and nginx, do), and
//! that form is both matched and forwarded: the upstream is sent the path its route was chosen
//! by.
//!
//! The form, in this order:
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) are
//!    decoded, and every other escape's hex digits are upper-cased (§6.2.2.1–2): `%2F`, `%5C`,
//!    `%3F` and the like stay escaped, so a segment never gains a `/` it did not have; and
//!    every byte a path may not hold as it is (outside §3.3's `pchar` and `/`: UTF-8 beyond
//!    ASCII, `"`, `[`, `\`, `]`, `^`, `{`, `|`, `}`: the ones the `http` crate takes raw in a
//!    path) is escaped, with upper-case hex: `/café` is `/caf%C3%A9`, as a browser
//!    sends it, and `/a"b` is `/a%22b`. Left raw, one resource would have two spellings and so
//!    two routes (an HTTP/2 `:path` of raw UTF-8 would miss a `/caf%C3%A9` route), and raw
//!    UTF-8 would go to an HTTP/1.1 upstream in a request line rampart refuses itself;
//! 2. with the listener's `merge_slashes` (the default on inbound listeners), runs of `/`
//!    become one (an empty segment is no segment, as in a file system); without it (the
//!    default on outbound ones: `//` can be part of an external API's resource name, an S3
//!    key's, and its request signature covers it), an empty segment is a segment like any
//!    other, so `/a//../b` is `/a/b` as RFC 3986 §5.2.4 has it;
//! 3. dot segments (`.` and `..`) are removed (RFC 3986 §5.2.4), a last one leaving a `/`;
//! 4. an empty path before a query (`http://x?a=b`) is `/` (RFC 9112 §3.2.1: it is sent as
//!    `/`, and routed and logged as `/` already).
//!
//! Refused (400 `bad_request`), as nginx does: a `..` that would climb above the root (`/../x`;
//! RFC 3986 clamps it to `/x`, but no client means that, and a path that has to be clamped is
//! one crafted to reach what it does not name), and a `%` not followed by two hex digits: left
//! as it is it could join with what follows once decoded (`%%32%65` would become `%2e`, which
//! the upstream decodes to `.`), so it has no one meaning to match on.
//!
//! Not handled, forwarded as they are: `;` path parameters (Tomcat reads `/a/..;/b` as
//! `/a/../b`), and `\` sent as `%5C` (IIS reads a raw one as `/`, and some servers decode the
//! escape before they resolve the path). An upstream that reads them so is reached by paths
//! that match no route of what it resolves them to.
//!
//! The query is left as it is. A path already in the form (the common case: only `pchar`s and
//! `/`, no `%` to change, no `//`, no dot segment) costs one scan of its bytes and nothing else:
//! the URI is rebuilt only when the form differs.

use http::uri::{PathAndQuery, Uri};
use http::Request;

/// Why a path has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// A `..` segment climbs above the root.
    AboveRoot,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The normal form (its raw bytes escaped) is longer than a request target may be.
    TooLong,
}

// === impl Unfit ===

impl Unfit {
    /// The message of its 400 answer.
    pub fn message(self) -> &'static str {
        match self {
            Unfit::AboveRoot => "the request path's `..` segments climb above its root",
            Unfit::BadEscape => "the request path has a `%` not followed by two hex digits",
            Unfit::TooLong => {
                "the request path, its raw bytes percent-encoded, is longer than 65534 bytes"
            }
        }
    }
}

/// Normalises `req`'s path in place (its query, scheme and authority kept), merging runs of
/// `/` if `merge_slashes`. A target that is no path (`*`, CONNECT's `host:port`) is left
/// alone.
pub fn request<B>(req: &mut Request<B>, merge_slashes: bool) -> Result<(), Unfit> {
    let uri = req.uri();
    let Some(given) = uri.path_and_query() else {
        return Ok(());
    };
    // `path()` of an empty path is `/`, so an empty one before a query is told by its `?`.
    let normal = match path(given.path(), merge_slashes)? {
        Some(normal) => normal,
        None if given.as_str().starts_with('?') => String::from("/"),
        None => return Ok(()),
    };
    let mut pq = normal;
    if let Some(q) = given.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    // The normal form holds only `pchar`s, `/` and escapes, so it parses unless escaping made
    // it longer than the `http` crate takes (65534 bytes).
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| Unfit::TooLong)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Unfit::TooLong)?;
    Ok(())
}

/// The normal form of `path` (without its query), runs of `/` merged if `merge_slashes`, or
/// `None` if it is in it already (or is no path: it does not start with `/`).
pub fn path(path: &str, merge_slashes: bool) -> Result<Option<String>, Unfit> {
    let p = path.as_bytes();
    if p.first() != Some(&b'/') || is_normal(p, merge_slashes)? {
        return Ok(None);
    }
    let decoded = decode(path)?;
    Ok(Some(segments(&decoded, merge_slashes)?))
}

/// Whether a `path_prefix` can match a normalised path (runs of `/` merged if
/// `merge_slashes`): whether some path in the normal form starts with it. An escape cut short
/// at its end (`/a%4`) is taken as completed.
pub fn prefix_can_match(prefix: &str, merge_slashes: bool) -> bool {
    let b = prefix.as_bytes();
    let cut = match b {
        [.., b'%'] => 1,
        [.., b'%', h] if h.is_ascii_digit() || (b'A'..=b'F').contains(h) => 2,
        _ => 0,
    };
    // A last segment may go on in the path (`/api/.` matches `/api/.well-known`): complete it
    // with a byte that makes it no dot segment, and see if the result is in the form.
    let mut whole = prefix[..b.len() - cut].to_owned();
    whole.push('x');
    matches!(path(&whole, merge_slashes), Ok(None))
}

/// `prefix` with each byte a path in the normal form holds only escaped (outside `pchar`, `/`
/// and `%`) escaped, or `None` if it has none: what `validate` tells a `path_prefix` written
/// with them to be written as.
pub fn escape_raw(prefix: &str) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if prefix.bytes().all(|b| RAW[usize::from(b)]) {
        return None;
    }
    let mut out = String::with_capacity(prefix.len() * 3);
    for b in prefix.bytes() {
        if RAW[usize::from(b)] {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    Some(out)
}

/// One scan: no byte to escape, no escape to change, no `//` (if `merge_slashes`), no dot
/// segment. `Err` for a bad escape.
fn is_normal(p: &[u8], merge_slashes: bool) -> Result<bool, Unfit> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b if !RAW[usize::from(b)] => return Ok(false),
            b'%' => {
                let (hi, lo) = escape(p, i)?;
                if is_unreserved((hi << 4) | lo) || is_lower_hex(p[i + 1]) || is_lower_hex(p[i + 2])
                {
                    return Ok(false);
                }
                i += 3;
                continue;
            }
            b'/' => match p.get(i + 1) {
                Some(b'/') if merge_slashes => return Ok(false),
                Some(b'.') if is_dot_segment(&p[i + 1..]) => return Ok(false),
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    Ok(true)
}

/// Whether `rest` (what follows a `/`) starts with a `.` or `..` segment.
fn is_dot_segment(rest: &[u8]) -> bool {
    matches!(
        rest,
        [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
    )
}

/// The values of the two hex digits after the `%` at `i`.
fn escape(p: &[u8], i: usize) -> Result<(u8, u8), Unfit> {
    let hex = |j: usize| p.get(j).and_then(|b| (*b as char).to_digit(16));
    match (hex(i + 1), hex(i + 2)) {
        // A hex digit is below 16.
        (Some(hi), Some(lo)) => Ok((hi as u8, lo as u8)),
        _ => Err(Unfit::BadEscape),
    }
}

fn is_lower_hex(b: u8) -> bool {
    (b'a'..=b'f').contains(&b)
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The bytes a path in the normal form holds as they are: RFC 3986 §3.3's `pchar` (unreserved,
/// sub-delims, `:` and `@`), `/`, and `%`, which starts an escape. Every other byte is escaped.
static RAW: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'%'
            );
        b += 1;
    }
    t
};

/// Step 1: unreserved escapes decoded, the others' hex upper-cased, bytes a path may not hold
/// raw escaped.
fn decode(s: &str) -> Result<String, Unfit> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let p = s.as_bytes();
    // Room for a few escapes beyond the bytes given.
    let mut out = String::with_capacity(p.len() + 16);
    let mut i = 0;
    while i < p.len() {
        if p[i] != b'%' && RAW[usize::from(p[i])] {
            // Up to the next escape or byte to escape, whole (both ends are next to ASCII
            // bytes, so on char boundaries).
            let end = p[i..]
                .iter()
                .position(|&b| b == b'%' || !RAW[usize::from(b)])
                .map_or(p.len(), |n| i + n);
            out.push_str(&s[i..end]);
            i = end;
            continue;
        }
        if p[i] != b'%' {
            out.push('%');
            out.push(char::from(HEX[usize::from(p[i] >> 4)]));
            out.push(char::from(HEX[usize::from(p[i] & 0xF)]));
            i += 1;
            continue;
        }
        let (hi, lo) = escape(p, i)?;
        let byte = (hi << 4) | lo;
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

/// Steps 2 and 3 on a path that starts with `/`.
fn segments(p: &str, merge_slashes: bool) -> Result<String, Unfit> {
    // Built as `/` and a segment for each segment kept, without the `/` a last dot segment (or
    // merged empty one) leaves: `/a/b`, and `` for the root. Unmerged, an empty segment is kept
    // as one (`/a/` is `/a` and ``), and a `..` after it removes it.
    let mut out = String::with_capacity(p.len());
    let mut trailing = false;
    for seg in p[1..].split('/') {
        trailing = matches!(seg, "." | "..") || (merge_slashes && seg.is_empty());
        match seg {
            "" if !merge_slashes => out.push('/'),
            "" | "." => {}
            ".." => {
                let Some(cut) = out.rfind('/') else {
                    return Err(Unfit::AboveRoot);
                };
                out.truncate(cut);
            }
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
