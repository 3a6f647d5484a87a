//! A connection handed to hyper with the bytes the lean server already read in front.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};

/// `io`, whose first reads return `prefix`.
#[derive(Debug)]
pub struct Rewind<I> {
    prefix: Bytes,
    io: I,
}

// === impl Rewind ===

impl<I> Rewind<I> {
    /// `io` read after `prefix`.
    pub fn new(prefix: Bytes, io: I) -> Self {
        Rewind { prefix, io }
    }

    /// The bytes not read yet, and the stream.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // An empty `Bytes` still holds what it was cut from (the lean server's read
            // buffer, when a large one was handed over); the connection may live for hours
            // under hyper (HTTP/2).
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

write_through!(Rewind);

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream_and_then_let_go() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await.expect("write");
        drop(far);
        let mut io = Rewind::new(Bytes::from(b"hello".to_vec()), near);
        let mut small = [0u8; 3];
        let n = io.read(&mut small).await.expect("read");
        assert_eq!(&small[..n], b"hel");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"lo world");
        // Read through, the prefix holds no buffer.
        assert!(io.prefix.is_empty() && io.prefix.as_ptr() == Bytes::new().as_ptr());
    }
}
