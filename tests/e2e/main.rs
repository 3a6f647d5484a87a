//! End-to-end tests: the `rampart` binary in front of the sample service, over real sockets.
//!
//! One test binary (link time is the cost of each extra one); one module per area of SPEC.md.
//! Run with `cargo test --test e2e`. Knobs: `RAMPART_TEST_PATIENCE_MS` (how long
//! `assert_eventually!` waits, default 5000) and `RAMPART_BIN` (test another build of the
//! binary, e.g. `target/release/rampart`). `promtool` (Debian package `prometheus`) must be on
//! PATH for the metrics test. A failing test prints the proxy's log.

#[macro_use]
mod support;

mod access_log;
mod admin;
mod chaos;
mod circuit_breaker;
mod cli;
mod connect;
mod deploy;
mod edges;
mod extras;
mod fuzz_seeds;
mod global;
mod health;
mod hostile;
mod jwt;
mod lean;
mod load_shed;
mod log_io;
mod park;
mod paths;
mod pool;
mod proxy;
mod rate_limit;
mod reload;
mod retry;
mod robustness;
mod shutdown;
mod tenant;
mod tls;
mod tracing;
mod upgrade;
mod upstream_h1;
mod upstream_h2;
mod upstream_idle;
mod workers;
