//! Numbers as HTTP writes them: decimal lengths, hex chunk sizes and fixed-width hex ids, without
//! `fmt`. Shared by the client side (`h1`), the upstream side (`pool::h1`), request ids,
//! `traceparent` (`otel`) and the access log.

/// Lowercase hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two lowercase hex digits of every byte: one lookup per byte, not two shifts per digit.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// Writes the low digits of `n` as lowercase hex into all of `out`, most significant first
/// (zero-padded; digits beyond `out` are dropped).
pub fn put_hex(out: &mut [u8], mut n: u128) {
    let mut rest = out;
    while let [head @ .., hi, lo] = rest {
        [*hi, *lo] = HEX_PAIRS[(n & 0xff) as usize];
        n >>= 8;
        rest = head;
    }
    if let [digit] = rest {
        *digit = HEX[(n & 0xf) as usize];
    }
}

/// `n` in decimal, written at the end of `buf`; returns the digits.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `ip` in dotted decimal (`"10.1.2.3"`), written into `buf`; returns the text.
pub fn ipv4(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &[u8] {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let mut d = [0u8; 20];
        let digits = itoa(u64::from(octet), &mut d);
        buf[n..n + digits.len()].copy_from_slice(digits);
        n += digits.len();
    }
    &buf[..n]
}

/// The size line of a chunk of `n` bytes (`"{n:x}\r\n"`) into `dst`.
pub fn chunk_line(dst: &mut Vec<u8>, n: usize) {
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = n as u64;
    loop {
        i -= 1;
        buf[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&buf[i..]);
    dst.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_address_is_written_as_the_standard_library_writes_it() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.10.99.9",
            "127.0.0.1",
            "255.255.255.255",
        ] {
            let addr: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ipv4(addr, &mut [0; 15]), ip.as_bytes());
        }
    }

    #[test]
    fn numbers_are_written_as_http_reads_them() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234, &mut [0; 20]), b"1234");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut line = Vec::new();
        chunk_line(&mut line, 0x1a2b);
        chunk_line(&mut line, 0);
        assert_eq!(line, b"1a2b\r\n0\r\n");
    }

    #[test]
    fn fixed_width_hex_is_zero_padded_and_cut_to_width() {
        let hex = |width: usize, n: u128| {
            let mut out = vec![b'?'; width];
            put_hex(&mut out, n);
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(hex(32, 0x4bf9_2f35), format!("{:032x}", 0x4bf9_2f35));
        assert_eq!(hex(32, u128::MAX), "f".repeat(32));
        assert_eq!(hex(16, 0x00f0_67aa_0ba9_02b7), "00f067aa0ba902b7");
        assert_eq!(hex(2, 1), "01");
        assert_eq!(hex(3, 0xabc), "abc", "an odd width");
        assert_eq!(hex(2, 0x1ff), "ff", "digits beyond the width are dropped");
        assert_eq!(hex(0, 7), "");
    }
}
