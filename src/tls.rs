//! TLS for listeners and upstreams (SPEC §8): PEM files in, rustls configs out.
//!
//! This module owns everything that touches certificates so the request path only sees
//! `TlsAcceptor`/`ClientConfig` values and a small [`ConnInfo`]:
//!
//! - [`pem`] reads certificate chains, private keys and CA bundles and checks them the way
//!   `rampart validate` reports them: every error names the file and says what is wrong
//!   (missing, unreadable, no certificate, no key, key does not match, expired, not yet valid).
//!   Start, validate and reload all go through the same loaders, so what validates is what serves.
//! - [`server`] terminates TLS: ALPN `h2` and `http/1.1`, optional required client certificates
//!   (mTLS), a [`ReloadableAcceptor`] whose config is swapped on reload while open connections
//!   keep the config they shook hands with, and [`accept`], which bounds the handshake by a
//!   timeout and reports failures with a closed set of metric reasons.
//! - [`client`] originates TLS to upstreams. ALPN offers only the protocol the upstream is
//!   spoken to in (`http/1.1`, or `h2` for `protocol: http2`), so a server cannot pick one the
//!   pool does not speak; a refused handshake is told in words (the server's alert by name).
//!
//! Choices, and why:
//! - The `ring` crypto provider, passed explicitly to every config builder (never the process
//!   default): it builds with a C compiler alone, while aws-lc-rs needs cmake (and nasm on some
//!   targets) and takes minutes longer on a 2-core CI machine.
//! - A TLS listener picks the cipher suite by its own order, AES-128-GCM first
//!   (`server_provider`): OpenSSL's clients ask for AES-256-GCM with SHA-384 first, whose key
//!   schedule costs a resumed handshake about a sixth more CPU where SHA-512 has no hardware path.
//! - A client without a `ca` trusts the system's roots ([`roots`]: `SSL_CERT_FILE`,
//!   `SSL_CERT_DIR`, the OS bundle), as SPEC §8 says and as `curl` on the same host does, so a
//!   private CA installed there is trusted. Slim and distroless images often have no
//!   `/etc/ssl/certs`: there the compiled-in `webpki-roots` (Mozilla's list) stand in, with a
//!   warning at each config load that names why.
//! - `x509-parser` reads the leaf's validity period and the client's CN and URI SAN; rustls
//!   verifies certificates but does not expose those fields.
//! - Expiry compares with the wall clock (`SystemTime`): certificate dates are calendar
//!   times, which the monotonic [`crate::clock::Clock`] cannot express.

pub mod client;
mod error;
pub mod files;
pub mod pem;
pub mod roots;
pub mod server;
mod words;

pub use client::{check_client, client_config, client_config_all, client_config_offering, connect};
pub use error::{HandshakeError, TlsFileError};
pub use files::{TlsFileProblem, TlsFiles};
pub use roots::SystemRoots;
pub use server::{
    accept, accepts_client, check_server, server_config, server_config_all, ConnInfo,
    ReloadableAcceptor,
};

/// The longest tenant id taken from a client certificate, in bytes. 2048 is the longest URI a
/// SPIFFE id may be, so any valid SPIFFE id fits.
pub const MAX_CERT_TENANT_LEN: usize = 2048;

/// Whether `id`, read from a verified client certificate (CN or first URI SAN), is usable as a
/// tenant id.
///
/// Rule: 1 to [`MAX_CERT_TENANT_LEN`] bytes of printable ASCII (`!` through `~`) and spaces, a
/// space neither first nor last. That admits `/`, `:` and `.` so SPIFFE ids such as
/// `spiffe://example.org/ns/prod/sa/billing` pass as they are, and a CN such as `Billing
/// Service` (a subject name is often words); it refuses control characters and non-ASCII,
/// which would make log lines and metric labels ambiguous, and spaces at either end, which a
/// reader of a log line or a label would not see; and `_other`, the label of folded tenants,
/// and `-`, the tenant of a `tenant: optional` route's request that names none. An interior
/// space is safe where the id goes: a Prometheus label value and a JSON string (the access log,
/// `/state`) hold it as it is, and a Redis key is binary-safe (the hash tag is the route's).
/// A certificate's id is never written into a request header (only a token's is).
pub fn is_valid_cert_tenant(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_CERT_TENANT_LEN).contains(&id.len())
        && bytes.iter().all(|&b| b.is_ascii_graphic() || b == b' ')
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
        && id != crate::config::file::FOLDED_TENANTS
        && id != crate::config::file::NO_TENANT
}

/// The crypto provider every rampart TLS config uses (see the module doc for why `ring`).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The crypto provider of TLS listeners: [`provider`]'s suites, AES-128-GCM first, chosen by
/// the server's order rather than the client's (`ignore_client_order` in `server_config`).
///
/// Clients built on OpenSSL offer AES-256-GCM with SHA-384 first; its key schedule runs on
/// SHA-512's compression function, which has no hardware path on most x86 servers, where
/// SHA-256 has (SHA-NI). With resumed TLS 1.3 sessions (wrk's `Connection: close`, one worker)
/// that cut the server's CPU per connection by about 13 % (210 to 183 µs). AES-128-GCM is the
/// first suite of Mozilla's "modern" and "intermediate" profiles. Every suite stays on offer:
/// a client that offers only AES-256 gets it.
fn server_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut p = std::sync::Arc::unwrap_or_clone(provider());
    // A stable sort: within each rank, ring's own order.
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 | S::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 2,
        _ => 3,
    });
    std::sync::Arc::new(p)
}

#[cfg(test)]
pub(crate) mod tests;
