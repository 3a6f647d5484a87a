//! cargo-fuzz's entry for the check in `fuzz/checks/tenant.rs`, which says what it
//! checks. `tests/e2e/fuzz_seeds.rs` runs the same check on the seeds in
//! `fuzz/corpus/tenant/` in every `cargo test`, so it keeps building against rampart's API.
#![no_main]

#[path = "../checks/tenant.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
