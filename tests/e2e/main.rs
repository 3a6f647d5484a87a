//! End-to-end tests: the `rampart` binary in front of the sample service, over real sockets.
//!
//! One test binary (link time is the cost of each extra one); one module per area of SPEC.md.

#[macro_use]
mod support;

mod admin;
mod cli;
mod proxy;
mod reload;
mod retry;
mod robustness;
mod shutdown;
mod tenant;
