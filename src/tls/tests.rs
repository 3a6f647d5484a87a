//! Tests of the TLS building blocks, with certificates made by rcgen at test time.
//!
//! `files` covers what `rampart validate` reports; `handshake` runs real handshakes over
//! loopback sockets (ALPN, mTLS, peer names, upstream CA checks, reload); `words` what a
//! refused handshake is said as.

mod files;
mod handshake;
mod roots;
pub(crate) mod support;
mod words;
