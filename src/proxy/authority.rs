//! What an authority may be: `uri-host [":" port]` (RFC 3986 §3.2.2–3.2.3), as a `host` line
//! must be (RFC 9112 §3.2, RFC 9110 §7.2) and an absolute-form target's authority or h2
//! `:authority` is, with no userinfo (RFC 9110 §4.2.4, RFC 9113 §8.3.1).
//!
//! Why: the route is chosen from the authority and the upstream receives it (SPEC §14). One
//! that is not a host and a port is read one way by rampart's router (which took what follows
//! an `@` and cut at the first `:`) and another by the upstream, which gets it verbatim; RFC
//! 9112 §3.2 has a server answer it 400. The check is a byte table over a `host` line's few
//! bytes, made as the head is read (`forward::Sent::note`), with nothing allocated; an
//! IP-literal (rare) is read by the standard library's IPv6 parser.

use std::net::Ipv6Addr;

/// Bytes of a reg-name besides `%`: unreserved (`A-Z a-z 0-9 - . _ ~`) and sub-delims
/// (`! $ & ' ( ) * + , ; =`). An IPv4 address is one too.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b','
            )
            || matches!(c, b';' | b'=');
        b += 1;
    }
    t
};

/// Whether `a` is `uri-host [":" port]`: a reg-name (its `%` followed by two hex digits), or
/// an IP-literal in brackets (an IPv6 address, or `v` HEX `.` ... as RFC 3986 reserves for
/// later versions), then, if a `:` follows, a port of digits no greater than 65535 (an empty
/// one is RFC 3986's too). Userinfo (`@`), a path, a query, spaces, a list: not an authority.
pub fn valid(a: &[u8]) -> bool {
    let mut i = 0;
    if let [b'[', rest @ ..] = a {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        if !ip_literal(&rest[..end]) {
            return false;
        }
        i = end + 2;
    } else {
        while i < a.len() {
            let b = a[i];
            if REG_NAME[usize::from(b)] {
                i += 1;
            } else if b == b'%'
                && a.get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
            {
                i += 3;
            } else {
                break;
            }
        }
    }
    match &a[i..] {
        [] => true,
        [b':', port @ ..] => port_ok(port),
        _ => false,
    }
}

/// A port: digits, at most 65535 (leading zeros allowed, as RFC 3986 writes `*DIGIT`).
fn port_ok(port: &[u8]) -> bool {
    let mut n = 0u32;
    for &d in port {
        if !d.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(d - b'0');
        if n > u32::from(u16::MAX) {
            return false;
        }
    }
    true
}

/// The inside of `[...]`: an IPv6 address, or an IPvFuture (`v` 1*HEXDIG `.` 1*( unreserved /
/// sub-delims / `:` )).
fn ip_literal(inside: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = inside {
        let hex = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        return match rest.get(hex..) {
            Some([b'.', tail @ ..]) if hex > 0 && !tail.is_empty() => tail
                .iter()
                .all(|&b| b == b':' || (b != b'%' && REG_NAME[usize::from(b)])),
            _ => false,
        };
    }
    std::str::from_utf8(inside).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn hosts_and_ports_as_rfc_3986_writes_them_are_authorities() {
        for a in [
            "a",
            "app.local",
            "APP.Local:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "x:0",
            "x:65535",
            "x:00080",
            "x:",
            "",
            ":80",
            "a-b_c~d.!$&'()*+,;=",
            "%41%2e",
            "[::1]",
            "[::1]:443",
            "[fe80::1:2:3:4]:9",
            "[::ffff:192.0.2.1]",
            "[v7.a:b]",
            "[VaF.x!]:1",
        ] {
            assert!(valid(a.as_bytes()), "{a:?} refused");
        }
    }

    #[test]
    fn what_is_not_host_and_port_is_refused() {
        for a in [
            "evil.com/x?@app.local",
            "user:pw@app.local",
            "@app.local",
            "a b",
            "a, b",
            "a\tb",
            "app.local:abc",
            "app.local:99999999",
            "app.local:65536",
            "app.local:8080:80",
            "app.local:-1",
            "app.local: 80",
            "a%",
            "a%4",
            "a%zz",
            "a/b",
            "a?b",
            "a#b",
            "a\\b",
            "a\"b",
            "a<b",
            "a[b]",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[]",
            "[::g]",
            "[1.2.3.4]",
            "[fe80::1%25eth0]",
            "[v.x]",
            "[v7.]",
            "[v7x]",
            "[v7.a%41]",
            "héllo",
            "a\u{0}b",
        ] {
            assert!(!valid(a.as_bytes()), "{a:?} taken");
        }
        assert!(!valid(b"a\xffb"));
    }
}
