#!/usr/bin/env bash
# A profile-guided (PGO) release build of rampart: the binary to ship when its CPU per request
# matters (issue 22; benches/PROFILE.md has the figures). `cargo build --release` stays the
# plain build; this one is built from the same tree in three steps:
#
#   1. a release build instrumented to count where it goes (`-Cprofile-generate`);
#   2. training: that build as a proxy (one worker) in front of `rampart sample` on loopback,
#      under wrk, for TRAIN_SECONDS per load: keep-alive `GET /` at 16 and at 128
#      connections, POSTs with a body, the full policy of the load benchmark over 10,000
#      tenants (benches/load/rampart-policy.yaml), and the access log on; each proxy is
#      stopped with SIGTERM, so it writes its counts on the way out;
#   3. the counts merged (`llvm-profdata`, from rustup's `llvm-tools`), and a release build
#      that uses them (`-Cprofile-use`).
#
#   scripts/build-pgo.sh                 -> target/pgo/rampart (and target/pgo/rampart.profdata)
#   OUT=/tmp/pgo TRAIN_SECONDS=10 scripts/build-pgo.sh
#
# `rampart --version` of the result says "profile-guided". The counts belong to the tree they
# were taken from: this script always builds both from the checkout it is in. Needs wrk and
# curl (installed with apt when missing) and llvm-tools (`rustup component add llvm-tools`,
# done here when missing). Two release builds: about 10 minutes on 2 cores.
#
# Settings (environment), defaults in brackets:
#   TRAIN_SECONDS [5]  BASE_PORT [18960]  OUT [$CARGO_TARGET_DIR/pgo, else target/pgo]
set -euo pipefail

TRAIN_SECONDS=${TRAIN_SECONDS:-5}
BASE_PORT=${BASE_PORT:-18960}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
load=$repo/benches/load
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
OUT=${OUT:-$target/pgo}
[[ $OUT == /* ]] || OUT=$PWD/$OUT

LOG_TAG=pgo
# shellcheck source=benches/load/lib.sh source-path=SCRIPTDIR/..
. "$load/lib.sh"

[[ $TRAIN_SECONDS =~ ^[1-9][0-9]*$ ]] || die "TRAIN_SECONDS must be a whole number of seconds"

# --- tools -----------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get; install them"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log "installing missing packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
fi
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    log "llvm-profdata missing: rustup component add llvm-tools"
    rustup component add llvm-tools || die "could not add llvm-tools (rustup component add llvm-tools)"
fi
[[ -x $profdata ]] || die "no llvm-profdata at $profdata"

bench_setup
mkdir -p "$OUT" "$work/counts" "$work/discard"

# --- 1. the instrumented build ---------------------------------------------------------------
# Build scripts and proc macros are instrumented too and write counts while cargo runs them:
# the path built in is a scratch directory; the proxy's counts go where LLVM_PROFILE_FILE says.
log "instrumented release build (1 of 2)"
(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/discard" \
    cargo build --release --locked --target-dir "$OUT/instrumented") ||
    die "the instrumented build failed"
instrumented=$OUT/instrumented/release/rampart

# --- 2. training -----------------------------------------------------------------------------
take_port
upstream=127.0.0.1:$port
# The upstream is the same binary; its counts are not kept (they are the sample service's).
start upstream env LLVM_PROFILE_FILE="$work/discard/sample-%p.profraw" RAMPART_WORKERS=2 \
    RUST_LOG=warn "$instrumented" sample --listen "$upstream" --log-format text
wait_http upstream "http://$upstream/"
take_port
listen=127.0.0.1:$port
take_port
admin=127.0.0.1:$port
url=http://$listen/

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["content-type"] = "application/octet-stream"
EOF

# train NAME : the proxy for one kind of traffic (plain, policy, log) under its loads, then
# stopped.
train() {
    local name=$1 cfg=$work/$1.yaml
    local tmpl=rampart.yaml
    [[ $name == policy ]] && tmpl="rampart-policy.yaml"
    render_tmpl "$load/$tmpl" "$cfg" "$work" "$listen" "$admin" 1
    [[ $name == log ]] && log_to "$work/access.log" "$cfg"
    start "$name" env LLVM_PROFILE_FILE="$work/counts/$name-%p.profraw" RAMPART_WORKERS=1 \
        RUST_LOG=warn "$instrumented" run --config "$cfg" --log-format text
    wait_http "$name" "$url"
    case $name in
    plain)
        run_wrk -t1 -c16 -d"${TRAIN_SECONDS}s" "$url"
        run_wrk -t1 -c128 -d"${TRAIN_SECONDS}s" "$url"
        run_wrk -t1 -c16 -d"${TRAIN_SECONDS}s" -s "$work/post.lua" "$url"
        ;;
    policy) run_wrk -t1 -c16 -d"${TRAIN_SECONDS}s" -s "$load/tenants.lua" "$url" -- 10000 ;;
    log) run_wrk -t1 -c16 -d"${TRAIN_SECONDS}s" "$url" ;;
    *) die "train: no kind of traffic named $name (plain, policy, log)" ;;
    esac
    stop "$name"
    compgen -G "$work/counts/$name-*.profraw" >/dev/null ||
        die "the $name proxy left no counts (did it exit cleanly?): $(tail -n 5 "$work/$name.log")"
    log "trained: $name"
}
train plain
train policy
train log
stop upstream

# --- 3. merged, and the build that uses them -------------------------------------------------
"$profdata" merge -o "$OUT/rampart.profdata" "$work"/counts/*.profraw ||
    die "llvm-profdata could not merge the counts"
log "profile-guided release build (2 of 2)"
(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$OUT/rampart.profdata" \
    cargo build --release --locked --target-dir "$OUT/guided") ||
    die "the profile-guided build failed"
install -m 0755 "$OUT/guided/release/rampart" "$OUT/rampart"
version=$("$OUT/rampart" --version)
[[ $version == *profile-guided* ]] || die "the built binary does not say it is profile-guided: $version"
log "built $OUT/rampart: $version"
