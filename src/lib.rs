//! rampart: a sidecar reverse proxy that applies per-tenant rate limiting, circuit breaking,
//! timeouts, retries and load shedding from one YAML policy file.
//!
//! `main.rs` only parses the command line; everything it runs lives here so that tests and
//! benchmarks drive the same code in-process.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]
#![warn(missing_docs, unreachable_pub)]

pub mod clock;
pub mod config;
pub mod policy;
