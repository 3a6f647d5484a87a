//! Where a request's bearer token is, read by one rule for `authorization` and for a
//! gateway's header of its own, whatever the HTTP version (both come as one `HeaderMap`).
//!
//! RFC 9110 §11.6.2 and RFC 6750 §2.1: credentials are a scheme and, after one or more spaces,
//! a token68; `Bearer` credentials carry the token. So:
//!
//! - a line of the header that carries no Bearer credentials is no token and is passed over:
//!   an empty line, `Bearer` alone, and in `authorization` another scheme's (`Basic ...`,
//!   `Digest ...`, a bare value);
//! - in any other header, a line that is one token68 is the token, bare (as gateways send it);
//!   a line that is neither that nor `Bearer <token>` is refused;
//! - exactly one token among all the lines is the token; more than one is refused, as is a
//!   line that holds Bearer credentials and more: text after the token, a stray comma,
//!   another credential beside it (`Basic x, Bearer T`, in either order), a tab for the space.
//!
//! A refusal is a 401 `invalid_token` whose message ([`Bad::message`]) says what is wrong.
//! Reading allocates nothing: the token is a slice of its header line.

use http::{HeaderMap, HeaderName};

/// What a `jwt` source's header lines hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found<'h> {
    /// No token: the next source is tried.
    Nothing,
    /// Exactly one token, to verify.
    Token(&'h str),
    /// A token is there, but not as one: refused, for this reason.
    Bad(Bad),
}

/// Why lines that carry a token are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bad {
    /// Two tokens or more (on two lines, or two Bearer credentials on one).
    Several,
    /// Text after the token, past a space (`Bearer T extra`).
    Trailing,
    /// A comma with nothing beside the token (`Bearer T,`).
    Comma,
    /// Other credentials on the token's line (`Basic x, Bearer T`).
    Mixed,
    /// `Bearer` and its token apart by something other than spaces (a tab).
    Separator,
    /// A character no token68 has (`Bearer a"b`, bytes past ASCII).
    Chars,
    /// A line of a header of its own that holds neither a token nor `Bearer <token>`.
    NotToken,
}

// === impl Bad ===

impl Bad {
    /// The message of the 401 that refuses it.
    pub(super) fn message(self) -> &'static str {
        match self {
            Bad::Several => "the request carries more than one bearer token; send exactly one",
            Bad::Trailing => {
                "the bearer token is followed by more text after a space; send `Bearer <token>` and nothing after the token"
            }
            Bad::Comma => {
                "the bearer token's line holds a stray comma; send `Bearer <token>` and nothing else on the line"
            }
            Bad::Mixed => {
                "the bearer token shares its line with other credentials; send `Bearer <token>` alone on the line"
            }
            Bad::Separator => {
                "`Bearer` and its token must be separated by spaces (RFC 6750 §2.1), not a tab or other character"
            }
            Bad::Chars => {
                "the bearer token holds a character no token has (RFC 6750 §2.1: letters, digits, - . _ ~ + / and trailing =)"
            }
            Bad::NotToken => {
                "the token header holds neither a bearer token nor `Bearer <token>`"
            }
        }
    }
}

/// The token of the lines of `name` in `headers`. `bare`: the header is not `authorization`,
/// so a line may hold the token alone.
pub(super) fn find<'h>(headers: &'h HeaderMap, name: &HeaderName, bare: bool) -> Found<'h> {
    let (first, more) = super::super::named(headers, name);
    let Some(first) = first else {
        return Found::Nothing;
    };
    if !more {
        return line(first.as_bytes(), bare);
    }
    let mut found = Found::Nothing;
    for v in headers.get_all(name) {
        match line(v.as_bytes(), bare) {
            Found::Nothing => {}
            Found::Token(_) if found != Found::Nothing => return Found::Bad(Bad::Several),
            t @ Found::Token(_) => found = t,
            bad @ Found::Bad(_) => return bad,
        }
    }
    found
}

/// One comma-separated element of a line, as credentials.
enum Element<'h> {
    Empty,
    /// `Bearer` with nothing after it.
    BearerAlone,
    /// `Bearer <token68>`, or (`bare`) a token68 alone.
    Token(&'h str),
    /// `Bearer` and something that is not a token.
    BadBearer(Bad),
    /// Anything else: another scheme's credentials, an auth-param, text.
    Other,
}

/// What one header line holds.
fn line(v: &[u8], bare: bool) -> Found<'_> {
    let v = trim(v);
    if v.is_empty() {
        return Found::Nothing;
    }
    if !v.contains(&b',') {
        return match element(v, bare) {
            Element::Token(t) => Found::Token(t),
            Element::BadBearer(b) => Found::Bad(b),
            Element::Other if bare => Found::Bad(Bad::NotToken),
            _ => Found::Nothing,
        };
    }
    let (mut tokens, mut others) = (0usize, 0usize);
    let mut first = Found::Nothing;
    for el in Elements::new(v) {
        match element(trim(el), bare) {
            Element::Empty => {}
            Element::BearerAlone | Element::Other => others += 1,
            Element::Token(t) => {
                tokens += 1;
                first = Found::Token(t);
            }
            Element::BadBearer(b) => {
                tokens += 1;
                first = Found::Bad(b);
            }
        }
    }
    match (tokens, others) {
        (0, _) if bare && others > 0 => Found::Bad(Bad::NotToken),
        (0, _) => Found::Nothing,
        (1, 0) if matches!(first, Found::Bad(_)) => first,
        (1, 0) => Found::Bad(Bad::Comma),
        (1, _) => Found::Bad(Bad::Mixed),
        _ => Found::Bad(Bad::Several),
    }
}

/// One trimmed element of a line.
fn element(el: &[u8], bare: bool) -> Element<'_> {
    if el.is_empty() {
        return Element::Empty;
    }
    let cut = el
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(el.len());
    let (word, rest) = el.split_at(cut);
    if word.eq_ignore_ascii_case(b"bearer") {
        let Some((&sep, _)) = rest.split_first() else {
            return Element::BearerAlone;
        };
        let after = trim_start_spaces(rest);
        if sep != b' ' || after.first() == Some(&b'\t') {
            return Element::BadBearer(Bad::Separator);
        }
        let n = token68_len(after);
        return match after.get(n) {
            None if n > 0 => Element::Token(ascii(&after[..n])),
            Some(b' ' | b'\t') if n > 0 => Element::BadBearer(Bad::Trailing),
            _ => Element::BadBearer(Bad::Chars),
        };
    }
    if bare && token68_len(el) == el.len() {
        return Element::Token(ascii(el));
    }
    Element::Other
}

/// The length of the token68 that starts `b` (RFC 9110 §11.2: `1*( ALPHA / DIGIT / "-" / "."
/// / "_" / "~" / "+" / "/" ) *"="`); 0 when none does.
fn token68_len(b: &[u8]) -> usize {
    let body = b
        .iter()
        .take_while(|&&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
        .count();
    if body == 0 {
        return 0;
    }
    body + b[body..].iter().take_while(|&&c| c == b'=').count()
}

/// `b`, all of it token68 characters, as text.
fn ascii(b: &[u8]) -> &str {
    // Token68 is ASCII: never the empty fallback.
    std::str::from_utf8(b).unwrap_or_default()
}

/// `b` without the spaces and tabs around it (HTTP's OWS; HTTP/2 does not strip them).
fn trim(b: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !is_ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    &b[start..end]
}

fn trim_start_spaces(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ').count();
    &b[n..]
}

/// The comma-separated elements of a line; a comma inside a quoted string (an auth-param's
/// value, `realm="a, b"`) separates nothing.
struct Elements<'h> {
    rest: Option<&'h [u8]>,
}

// === impl Elements ===

impl<'h> Elements<'h> {
    fn new(v: &'h [u8]) -> Self {
        Elements { rest: Some(v) }
    }
}

impl<'h> Iterator for Elements<'h> {
    type Item = &'h [u8];

    fn next(&mut self) -> Option<&'h [u8]> {
        let v = self.rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &c) in v.iter().enumerate() {
            match c {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    self.rest = Some(&v[i + 1..]);
                    return Some(&v[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(lines: &[&str], bare: bool) -> Found<'static> {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x", l.parse().expect("a header value"));
        }
        let h: &'static HeaderMap = Box::leak(Box::new(h));
        find(h, &HeaderName::from_static("x"), bare)
    }

    /// Each case of the rule, in both kinds of header where they agree.
    #[test]
    fn one_rule_for_every_line() {
        use Found::{Bad as B, Nothing, Token};
        for bare in [false, true] {
            for (lines, want) in [
                (&["Bearer a.b"][..], Token("a.b")),
                (&["bearer   a.b= "], Token("a.b=")),
                (&["Bearer a.b", ""], Token("a.b")),
                (&["", "Bearer a.b", "Bearer"], Token("a.b")),
                (&["Bearer a.b", "Bearer c"], B(Bad::Several)),
                (&["Bearer a.b, Bearer a.b"], B(Bad::Several)),
                (&["Bearer a.b extra"], B(Bad::Trailing)),
                (&["Bearer a.b,"], B(Bad::Comma)),
                (&["Bearer a.b, Basic eA=="], B(Bad::Mixed)),
                (&["Basic eA==, Bearer a.b"], B(Bad::Mixed)),
                (&["Bearer\ta.b"], B(Bad::Separator)),
                (&["Bearer a\"b"], B(Bad::Chars)),
                (&["Bearer a=b"], B(Bad::Chars)),
                (&["Bearer"], Nothing),
                (&[""], Nothing),
                (&[], Nothing),
            ] {
                assert_eq!(of(lines, bare), want, "{lines:?} (bare: {bare})");
            }
        }
        // Where the kinds differ: a value that is not Bearer credentials.
        for (lines, auth, own) in [
            (&["Basic eA=="][..], Nothing, B(Bad::NotToken)),
            (&["a.b"], Nothing, Token("a.b")),
            (&["a.b", "Bearer a.b"], Token("a.b"), B(Bad::Several)),
            (
                &["Bearer a.b", "Basic eA=="],
                Token("a.b"),
                B(Bad::NotToken),
            ),
            (
                &["Digest realm=\"a, Bearer b\", nonce=\"c\""],
                Nothing,
                B(Bad::NotToken),
            ),
        ] {
            assert_eq!(of(lines, false), auth, "{lines:?} in authorization");
            assert_eq!(of(lines, true), own, "{lines:?} in its own header");
        }
        // Bytes past ASCII are no token.
        let mut h = HeaderMap::new();
        let v = http::HeaderValue::from_bytes(b"Bearer a\xffb").expect("opaque bytes");
        h.insert("x", v);
        assert_eq!(
            find(&h, &HeaderName::from_static("x"), false),
            B(Bad::Chars)
        );
    }
}
