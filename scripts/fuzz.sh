#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (not part of CI or scripts/test.sh).
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh config units
#
# Needs a nightly toolchain; cargo-fuzz is installed (`cargo install --locked cargo-fuzz`, from
# crates.io) when missing. Each target starts
# from its seeds in fuzz/corpus/<target>/ (the new inputs libFuzzer finds stay there, git-ignored);
# a crash leaves its input in fuzz/artifacts/<target>/ and makes this script exit 1. Replay one
# with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

if ! rustc +nightly -V >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing; installing it (cargo install --locked cargo-fuzz)"
    cargo install --locked cargo-fuzz
fi

seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build once, then run the binaries: `cargo fuzz run` would rebuild before every target.
cargo +nightly fuzz build 2>&1 | tail -1
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"

failed=()
for t in "${targets[@]}"; do
    echo "=== fuzz $t for ${seconds}s"
    start=$(date +%s)
    mkdir -p "artifacts/$t"
    # -rss_limit_mb bounds memory; -timeout flags any single input slower than 10 s as a hang.
    if "target/$host/release/$t" -artifact_prefix="artifacts/$t/" "corpus/$t" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
        echo "=== $t: no crash in $(( $(date +%s) - start ))s"
    else
        echo "=== $t: CRASH (see fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
echo "all targets ran ${seconds}s without a crash: ${targets[*]}"
