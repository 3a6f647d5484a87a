#!/usr/bin/env bash
# Builds the rampart image with podman on a machine that cannot pull base images (no registry
# access, only the Debian package mirror), e.g. a CI runner or a sandbox:
#
#   1. debootstrap a minimal Debian 12 with ca-certificates and import it as `rampart-base` (once;
#      REBUILD_BASE=1 redoes it). The image takes only glibc, libgcc_s and the CA bundle from it
#      (see the Dockerfile);
#   2. `cargo build --release` on the host (or BINARY=path: a release binary built already);
#   3. `podman build` the repo's Dockerfile with RUNTIME_IMAGE=rampart-base and the host binary
#      fed in through `--build-context prebuilt=...`, so the builder stage never runs.
#
# Needs root (debootstrap) and the packages podman, debootstrap and runc (installed with apt
# when missing). Settings: IMAGE (default localhost/rampart:dev), MIRROR (a Debian mirror URL
# for debootstrap; default: debootstrap's own), SUITE (default bookworm; must match the glibc
# the binary was built against), BINARY (skip step 2 and take this file).
set -euo pipefail

IMAGE=${IMAGE:-localhost/rampart:dev}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-}
BASE=localhost/rampart-base:$SUITE

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf '[build-local] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "run as root (debootstrap and rootful podman need it)"; exit 1; }

missing=()
for pair in podman:podman debootstrap:debootstrap runc:runc; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if ((${#missing[@]} > 0)); then
    log "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Plain settings that work without overlayfs, cgroup delegation or raised ulimits.
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []
CONF
export CONTAINERS_CONF="$work/containers.conf"
podman=(podman --storage-driver vfs --runtime runc)

# --- 1. base image ---------------------------------------------------------------------------
if [[ ${REBUILD_BASE:-0} == 1 ]] || ! "${podman[@]}" image exists "$BASE"; then
    log "debootstrap --variant=minbase $SUITE (a few minutes)"
    rootfs="$work/rootfs"
    # ca-certificates: the CA bundle the image ships (see the Dockerfile's rootfs stage).
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" ${MIRROR:+"$MIRROR"} \
        >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    # Drop caches and logs that only make the image bigger.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
    tar -C "$rootfs" -c . | "${podman[@]}" import - "$BASE" >/dev/null
    log "imported $BASE"
else
    log "reusing $BASE (REBUILD_BASE=1 to redo it)"
fi

# --- 2. binary -------------------------------------------------------------------------------
mkdir -p "$work/prebuilt"
if [[ -n ${BINARY:-} ]]; then
    log "taking $BINARY"
    cp "$BINARY" "$work/prebuilt/rampart"
else
    log "cargo build --release"
    (cd "$repo" && cargo build --release --locked)
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    [[ $target_dir == /* ]] || target_dir="$repo/$target_dir"
    cp "$target_dir/release/rampart" "$work/prebuilt/rampart"
fi

# --- 3. image --------------------------------------------------------------------------------
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
log "podman build -> $IMAGE"
"${podman[@]}" build \
    --format docker \
    --network host \
    --build-arg RUNTIME_IMAGE="$BASE" \
    --build-context prebuilt="$work/prebuilt" \
    --file "$repo/Dockerfile" \
    --tag "$IMAGE" \
    "$repo"

"${podman[@]}" image ls "$IMAGE"
log "done: run it with"
log "  CONTAINERS_CONF=<file with default_ulimits = []> podman --storage-driver vfs --runtime runc run --rm --network host $IMAGE --version"
log "(podman build leaves dangling intermediate images; 'podman image prune' removes them)"
