//! Hardened edges (SPEC §14, issues 15 and 24): regression tests through real sockets for the
//! defects the seams and edges work fixed. Each test says whether it fails on the code before
//! commit 2464352 (checked on a worktree at 8024b07 where noted, else reasoned).

mod authority;
mod body;
mod drain;
pub(crate) mod idle;
mod reload;
mod slow_upload;

use std::net::SocketAddr;

use crate::support::{metric_value, metrics, Proxy};

/// A fixed upstream answer that closes its connection.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// Every try counted in `rampart_upstream_requests_total`, whatever its code.
pub async fn upstream_tries(admin: SocketAddr) -> f64 {
    metric_value(
        &metrics(admin).await,
        "rampart_upstream_requests_total",
        &[],
    )
    .unwrap_or(0.0)
}

/// Panics if the proxy's log shows a panic.
pub fn assert_no_panic(proxy: &Proxy) {
    let log = proxy.log();
    assert!(!log.contains("panicked"), "rampart panicked; log:\n{log}");
}
