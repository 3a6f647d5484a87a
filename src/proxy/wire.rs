//! Numbers as HTTP/1.1 writes them: decimal lengths and hex chunk sizes, without `fmt`. Shared
//! by the client side (`h1`) and the upstream side (`pool::h1`).

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

/// The size line of a chunk of `n` bytes (`"{n:x}\r\n"`) into `dst`.
pub fn chunk_line(dst: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
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
    fn numbers_are_written_as_http_reads_them() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234, &mut [0; 20]), b"1234");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut line = Vec::new();
        chunk_line(&mut line, 0x1a2b);
        chunk_line(&mut line, 0);
        assert_eq!(line, b"1a2b\r\n0\r\n");
    }
}
