//! cargo-fuzz's entry for the check in `fuzz/checks/upstream_h1.rs`, which says what it
//! checks. `tests/e2e/fuzz_seeds.rs` runs the same check on the seeds in
//! `fuzz/corpus/upstream_h1/` in every `cargo test`, so it keeps building against rampart's API.
#![no_main]

#[path = "../checks/upstream_h1.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
