#!/usr/bin/env bash
# The test command of the README; CI runs exactly this (through .ci/run).
#
# 1. Installs the system tools the tests call when they are missing (Debian/Ubuntu apt):
#    promtool (package prometheus) checks the /metrics output, curl drives the CLI and CONNECT
#    tests, openssl makes the RSA keys of the JWT tests (ring cannot generate RSA), and a C
#    linker (cc), which rustc needs to link and a bare Debian lacks.
# 2. Checks the shipped Prometheus alert rules (deploy/prometheus) with promtool.
# 3. Runs the library unit tests, the tests/e2e binary, the doc tests and compiles the
#    benches once (as tests: no heavy measurement runs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- system packages -------------------------------------------------------------------
# command -> Debian packages that provide it
declare -A want=( [promtool]=prometheus [curl]=curl [cc]="gcc libc6-dev" [openssl]=openssl [redis-server]=redis-server )
missing=()
for cmd in promtool curl cc openssl redis-server; do
    # shellcheck disable=SC2206 # word splitting of the package list is wanted
    command -v "$cmd" >/dev/null 2>&1 || missing+=(${want[$cmd]})
done

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: missing ${missing[*]} and no apt-get here; install them and re-run" >&2
        exit 1
    fi
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "test.sh: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        sudo=(sudo)
    fi
    echo "test.sh: installing missing packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- shipped alert rules ----------------------------------------------------------------
# Cheap, and they name the metrics of SPEC §5: a renamed metric breaks the alert unit tests.
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

# --- tests -------------------------------------------------------------------------------
# Doc tests and the benches (built and run once in test mode: criterion times nothing) come
# first; the unit tests and the tests/e2e binary come last, so the output ends with their
# summaries and one plain total line.
cargo test --doc
cargo test --benches
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
