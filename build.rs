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
    // Where git keeps HEAD and the branches: `.git/` in a clone, elsewhere in a worktree (whose
    // `.git` is a file). A path that does not exist would have cargo run this script, and build
    // the crate again, on every build.
    println!("cargo:rerun-if-changed=build.rs");
    for what in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git_path(what) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// `git rev-parse --git-path WHAT`: the file git keeps `what` in, if there is a repository.
fn git_path(what: &str) -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--git-path", what])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|p| std::path::Path::new(p).exists())
}
