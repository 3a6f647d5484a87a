//! The fuzz targets' checks (`fuzz/checks/`) on their seed inputs (`fuzz/corpus/*/seed-*`).
//!
//! Why here: the fuzz crate needs nightly and cargo-fuzz, so nothing else builds it, and two of
//! its targets did not compile for several sessions after an API change (ca172d1). Compiled
//! into this test binary, every check builds against rampart's API in each `cargo test` and
//! runs on the seeds that start each fuzz run, so a seed that stops passing fails a test here.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks/config.rs"]
mod config;
#[path = "../../fuzz/checks/h1_head.rs"]
mod h1_head;
#[path = "../../fuzz/checks/ratelimit.rs"]
mod ratelimit;
#[path = "../../fuzz/checks/tenant.rs"]
mod tenant;
#[path = "../../fuzz/checks/units.rs"]
mod units;
#[path = "../../fuzz/checks/upstream_h1.rs"]
mod upstream_h1;

/// A check: one input, a panic on a finding.
type Check = fn(&[u8]);

/// Every check, by its target's name.
const CHECKS: [(&str, Check); 6] = [
    ("config", config::run),
    ("h1_head", h1_head::run),
    ("ratelimit", ratelimit::run),
    ("tenant", tenant::run),
    ("units", units::run),
    ("upstream_h1", upstream_h1::run),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The names of the files in `dir` (sorted) that start with `prefix`.
fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.starts_with(prefix))
        .collect();
    found.sort();
    found
}

#[test]
fn every_fuzz_target_has_its_check_here() {
    let targets: Vec<String> = names(&fuzz_dir().join("fuzz_targets"), "")
        .into_iter()
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_owned))
        .collect();
    let checked: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        targets, checked,
        "a fuzz target without its check in tests/e2e/fuzz_seeds.rs"
    );
}

#[test]
fn every_fuzz_check_passes_on_its_seeds() {
    for (target, run) in CHECKS {
        let dir = fuzz_dir().join("corpus").join(target);
        let seeds = names(&dir, "seed-");
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        for seed in seeds {
            let data = std::fs::read(dir.join(&seed)).expect("a seed file");
            // A panic names the check and the seed.
            let ran = std::panic::catch_unwind(|| run(&data));
            assert!(ran.is_ok(), "fuzz check {target} failed on seed {seed}");
        }
    }
}
