//! cargo-fuzz's entry for the check in `fuzz/checks/h1_head.rs`, which says what it
//! checks. `tests/e2e/fuzz_seeds.rs` runs the same check on the seeds in
//! `fuzz/corpus/h1_head/` in every `cargo test`, so it keeps building against rampart's API.
#![no_main]

#[path = "../checks/h1_head.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
