//! cargo-fuzz's entry for the check in `fuzz/checks/units.rs`, which says what it
//! checks. `tests/e2e/fuzz_seeds.rs` runs the same check on the seeds in
//! `fuzz/corpus/units/` in every `cargo test`, so it keeps building against rampart's API.
#![no_main]

#[path = "../checks/units.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
