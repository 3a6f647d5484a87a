#!/usr/bin/env bash
# The test command of the README; CI runs exactly this (through .ci/run).
#
# 1. Installs the system tools the tests call when they are missing (Debian/Ubuntu apt):
#    promtool and the prometheus server (package prometheus) check the /metrics output and
#    scrape a running rampart, curl drives the CLI and CONNECT tests, openssl makes the RSA
#    keys of the JWT tests (ring cannot generate RSA), a C linker (cc), which rustc needs to
#    link and a bare Debian lacks, python3 with venv for the PyPI tools below, and
#    redis-server, which the global rate-limit tests start on free loopback ports, and
#    fincore (util-linux-extra), which counts the access log's pages left in the page cache,
#    and unshare (util-linux), in whose mount namespace a test gives rampart a full tmpfs.
# 2. Installs kubernetes-validate (PyPI; JSON schemas of the Kubernetes API, offline) into
#    target/deploy-venv; the deploy tests validate deploy/k8s with it.
# 3. Checks the shipped Prometheus alert rules (deploy/prometheus) with promtool.
# 4. With RAMPART_CONTAINER_TEST=1 (CI sets it): builds the container image and runs it with
#    podman (deploy/container/test.sh; installs podman, debootstrap and runc; needs root and
#    the Debian mirror; a release build, so a few minutes).
# 5. Runs the library unit tests, the tests/e2e binary, the doc tests and compiles the
#    benches once (as tests: no heavy measurement runs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- system packages -------------------------------------------------------------------
# command -> Debian packages that provide it
declare -A want=( [promtool]=prometheus [prometheus]=prometheus [curl]=curl [cc]="gcc libc6-dev"
                  [openssl]=openssl [python3]="python3 python3-venv" [redis-server]=redis-server
                  [prlimit]=util-linux [unshare]=util-linux [fincore]=util-linux-extra )
cmds=(promtool prometheus curl cc openssl python3 redis-server prlimit unshare fincore)
container_test=${RAMPART_CONTAINER_TEST:-0}
if [[ $container_test == 1 ]]; then
    want+=( [podman]=podman [debootstrap]=debootstrap [runc]=runc )
    cmds+=(podman debootstrap runc)
fi
missing=()
for cmd in "${cmds[@]}"; do
    # shellcheck disable=SC2206 # word splitting of the package list is wanted
    command -v "$cmd" >/dev/null 2>&1 || missing+=(${want[$cmd]})
done
# A python3 without its venv module (Debian splits it out) needs python3-venv.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

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

# --- PyPI tools -------------------------------------------------------------------------
# kubernetes-validate bundles the Kubernetes JSON schemas (no cluster, no download at run
# time); the deploy tests find it through RAMPART_PY_TOOLS.
venv=target/deploy-venv
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    echo "test.sh: installing kubernetes-validate into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
RAMPART_PY_TOOLS=$(cd "$venv/bin" && pwd)
export RAMPART_PY_TOOLS

# --- shipped alert rules ----------------------------------------------------------------
# Cheap, and they name the metrics of SPEC §5: a renamed metric breaks the alert unit tests.
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

# --- the container image, built and run -------------------------------------------------
if [[ $container_test == 1 ]]; then
    bash deploy/container/test.sh
else
    echo "test.sh: container image test skipped (RAMPART_CONTAINER_TEST=1 runs it; CI does)"
fi

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
