//! Records the git commit for `rampart --version`, and whether the build is profile-guided
//! (`scripts/build-pgo.sh`) or the instrumented build it trains, read from the compiler flags.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RAMPART_GIT_COMMIT={commit}");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let has = |what: &str| flags.split('\x1f').any(|f| f.contains(what));
    let kind = if has("profile-use") {
        ", profile-guided"
    } else if has("profile-generate") {
        ", instrumented for PGO"
    } else {
        ""
    };
    println!("cargo:rustc-env=RAMPART_BUILD_KIND={kind}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
