#!/usr/bin/env bash
# The container image, built and run for real (issue 21). scripts/test.sh runs this when
# RAMPART_CONTAINER_TEST=1 (CI sets it). Steps, each one a check that fails the script:
#
#   1. build the image with build-local.sh (debootstrap base + the host's release binary);
#   2. run it with podman (--network host) in front of `rampart sample` on a free loopback port,
#      the policy bind-mounted at /etc/rampart/rampart.yaml;
#   3. the container's process runs as uid/gid 65532 (read from /proc/PID/status on the host:
#      the image has no shell to run `id` in);
#   4. /readyz answers 200, and the log says no fallback from the image's CA bundle to the
#      compiled-in roots (the policy has a TLS upstream without a ca); a request through the inbound listener, and one through the outbound
#      listener as an HTTP proxy (what HTTP_PROXY does), reach the upstream;
#   5. `podman healthcheck run` is healthy (the image's HEALTHCHECK runs `rampart health`);
#   6. the policy file is replaced, `podman kill --signal HUP` reloads it: the reload is counted
#      and the new rate limit answers 429;
#   7. `podman stop` with a request in flight: the request completes, the container exits 0
#      well before podman's kill timeout;
#   8. the image size is printed (and must stay under IMAGE_MAX_MB, default 20).
#
# Needs root and podman, debootstrap, runc, curl (Debian packages of the same names). Settings:
# BINARY (a release binary; default: cargo build --release), IMAGE, KEEP_BASE=1 (keep the
# debootstrap base image for the next run; default: removed with everything else).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=${IMAGE:-localhost/rampart:container-test}
IMAGE_MAX_MB=${IMAGE_MAX_MB:-20}
BASE=localhost/rampart-base:${SUITE:-bookworm}
NAME=rampart-container-test-$$
GRACE=5          # runtime.shutdown_grace of the test policy, seconds
STOP_TIMEOUT=20  # podman stop's wait before SIGKILL, seconds

t_start=$(date +%s)
log() { printf '[container-test +%ss] %s\n' "$(($(date +%s) - t_start))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (debootstrap and rootful podman need it)"
for pkg in podman debootstrap runc curl; do
    command -v "$pkg" >/dev/null 2>&1 || fail "$pkg is missing: apt-get install $pkg (scripts/test.sh does this when RAMPART_CONTAINER_TEST=1)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-container-test.XXXXXX")
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []
CONF
export CONTAINERS_CONF="$work/containers.conf"
podman=(podman --storage-driver vfs --runtime runc)

sample_pid=
cleanup() {
    set +e
    [[ -n $sample_pid ]] && kill "$sample_pid" 2>/dev/null && wait "$sample_pid" 2>/dev/null
    "${podman[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1
    "${podman[@]}" rmi -f "$IMAGE" >/dev/null 2>&1
    [[ ${KEEP_BASE:-0} == 1 ]] || "${podman[@]}" rmi -f "$BASE" >/dev/null 2>&1
    "${podman[@]}" image prune -f >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# --- 1. image ----------------------------------------------------------------------------------
if [[ -z ${BINARY:-} ]]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release --locked)
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    [[ $target_dir == /* ]] || target_dir="$repo/$target_dir"
    BINARY=$target_dir/release/rampart
fi
[[ -x $BINARY ]] || fail "no binary at $BINARY"
log "building $IMAGE from $BINARY"
IMAGE=$IMAGE BINARY=$BINARY bash "$repo/deploy/container/build-local.sh" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; fail "the image did not build"; }
size=$("${podman[@]}" image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1048576 }')
binary_mb=$(awk -v b="$(stat -c %s "$BINARY")" 'BEGIN { printf "%.1f", b / 1048576 }')
log "image $IMAGE: $size bytes ($size_mb MiB; the binary is $binary_mb MiB)"
awk -v s="$size" -v m="$IMAGE_MAX_MB" 'BEGIN { exit !(s <= m * 1048576) }' \
    || fail "the image is $size_mb MiB, more than IMAGE_MAX_MB=$IMAGE_MAX_MB"
[[ $("${podman[@]}" image inspect -f '{{.Config.User}}' "$IMAGE") == 65532:65532 ]] \
    || fail "the image's USER is not 65532:65532"
hc=$("${podman[@]}" image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE")
[[ $hc == *'"Test":["CMD","/usr/local/bin/rampart","health",'* ]] || fail "the image's HEALTHCHECK is not rampart health: $hc"
# No shell in the image: the runtime stage holds the binary and its libraries only.
if "${podman[@]}" run --rm --network host --health-interval disable --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
    fail "the image has a shell"
fi

# --- 2. run ------------------------------------------------------------------------------------
# A free loopback port: nothing answers a connection to it.
used_ports=()
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ " ${used_ports[*]} " == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports+=("$p")
            echo "$p"
            return
        fi
    done
}
app=$(free_port); inbound=$(free_port); outbound=$(free_port); admin=$(free_port)

"$BINARY" sample --listen "127.0.0.1:$app" >"$work/sample.log" 2>&1 &
sample_pid=$!

policy() { # $1: extra policy lines for the `guarded` policy
    cat <<YAML
version: 1
admin: { listen: 127.0.0.1:$admin }
runtime: { shutdown_grace: ${GRACE}s }
tenants:
  from: [ { header: x-tenant-id } ]
  fallback: anonymous
upstreams:
  app: { endpoints: [127.0.0.1:$app] }
  # TLS without a ca: each config load reads the image's system roots (its CA bundle).
  public: { endpoints: [127.0.0.1:$app], tls: { server_name: public.example } }
policies:
  guarded:
    timeout: { request: 10s }
$1
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:$inbound
    routes:
      - { upstream: app, policy: guarded }
  - name: outbound
    direction: outbound
    listen: 127.0.0.1:$outbound
    routes:
      - { match: { host: app.local }, upstream: app, policy: guarded }
      - { match: { host: public.example }, upstream: public, policy: guarded }
YAML
}
mkdir -m 0755 "$work/etc"
policy "" >"$work/etc/rampart.yaml"
chmod 0644 "$work/etc/rampart.yaml"
"$BINARY" validate --config "$work/etc/rampart.yaml" >/dev/null || fail "the test policy does not validate"

# The timer podman makes for periodic health checks needs systemd, which is not running here
# (podman says so on stderr, kept in podman.log); step 5 runs the check by hand.
"${podman[@]}" run -d --name "$NAME" --network host --health-interval disable \
    -v "$work/etc:/etc/rampart:ro" "$IMAGE" >/dev/null 2>"$work/podman.log" \
    || { cat "$work/podman.log" >&2; fail "podman run failed"; }

url() { printf 'http://127.0.0.1:%s%s' "$1" "$2"; }
ready=
for _ in $(seq 100); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$(url "$admin" /readyz)") == 200 ]]; then ready=1; break; fi
    sleep 0.1
done
[[ -n $ready ]] || { "${podman[@]}" logs "$NAME" >&2; fail "/readyz never answered 200"; }
log "ready: /readyz 200"
# The image's CA bundle is the system trust store: no fallback to the compiled-in roots.
# (The log is read whole first: `podman logs | grep -q` under pipefail fails when grep stops
# early at a match, and the check would pass.)
container_log=$("${podman[@]}" logs "$NAME" 2>&1)
if grep -q 'no usable system trust roots' <<<"$container_log"; then
    printf '%s\n' "$container_log" >&2
    fail "the image has no usable CA bundle: rampart fell back to its compiled-in roots"
fi
log "system roots: the image's CA bundle is read, no fallback"

# --- 3. non-root ------------------------------------------------------------------------------
pid=$("${podman[@]}" inspect -f '{{.State.Pid}}' "$NAME")
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
[[ $uids == "65532 65532 65532 65532" && $gids == "65532 65532 65532 65532" ]] \
    || fail "the container's process runs as uid ($uids) gid ($gids), not 65532"
[[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == "/usr/local/bin/rampart run " ]] \
    || fail "pid $pid is not rampart: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
log "non-root: uid/gid 65532 (host pid $pid)"

# --- 4. proxying -------------------------------------------------------------------------------
body=$(curl -sS -H 'x-tenant-id: acme' "$(url "$inbound" /ok)") || fail "inbound request failed"
[[ $body == ok ]] || fail "inbound answer: $body"
body=$(curl -sS -x "http://127.0.0.1:$outbound" http://app.local/ok) || fail "outbound request failed"
[[ $body == ok ]] || fail "outbound answer: $body"
log "proxied: inbound and outbound (HTTP proxy) reach the loopback upstream"

# --- 5. HEALTHCHECK ----------------------------------------------------------------------------
"${podman[@]}" healthcheck run "$NAME" || fail "podman healthcheck run: unhealthy"
# The same command in the image fails where no admin listener answers.
if "${podman[@]}" run --rm --network host --health-interval disable "$IMAGE" \
    health --admin "127.0.0.1:$(free_port)" --timeout 1s >/dev/null 2>>"$work/podman.log"; then
    fail "rampart health in the image passed with no admin listener"
fi
log "healthcheck: healthy; and unhealthy where nothing answers"

# --- 6. reload on SIGHUP -----------------------------------------------------------------------
sha_before=$(curl -sS "$(url "$admin" /config)" | grep -o '"sha256":"[0-9a-f]*"' | head -n 1)
policy "    rate_limit: { per_tenant: { rate: 1/min, burst: 1 } }" >"$work/etc/rampart.yaml.new"
chmod 0644 "$work/etc/rampart.yaml.new"
mv "$work/etc/rampart.yaml.new" "$work/etc/rampart.yaml"
"${podman[@]}" kill --signal HUP "$NAME" >/dev/null
reloaded=
for _ in $(seq 100); do
    metrics=$(curl -s "$(url "$admin" /metrics)" || true)
    if grep -q '^rampart_config_reloads_total{result="success"} 1$' <<<"$metrics"; then reloaded=1; break; fi
    sleep 0.1
done
[[ -n $reloaded ]] || { "${podman[@]}" logs "$NAME" >&2; fail "no successful reload counted after SIGHUP"; }
sha_after=$(curl -sS "$(url "$admin" /config)" | grep -o '"sha256":"[0-9a-f]*"' | head -n 1)
[[ $sha_before != "$sha_after" ]] || fail "/config still shows $sha_before after the reload"
first=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-tenant-id: acme' "$(url "$inbound" /ok)")
second=$(curl -s -D - -o /dev/null -H 'x-tenant-id: acme' "$(url "$inbound" /ok)")
[[ $first == 200 ]] || fail "first request after the reload: $first"
grep -q '^HTTP/1.1 429' <<<"$second" && grep -qi '^x-rampart-reason: rate_limited' <<<"$second" \
    || fail "the reloaded rate limit did not act: $second"
log "reload: SIGHUP counted, sha256 changed, the new limit answers 429"

# --- 7. stop with a request in flight -----------------------------------------------------------
curl -s -o "$work/slow.body" -w '%{http_code}' -H 'x-tenant-id: slow' "$(url "$inbound" '/slow?ms=1500')" \
    >"$work/slow.code" &
slow_pid=$!
sleep 0.5
t0=$(date +%s%N)
"${podman[@]}" stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null 2>>"$work/podman.log"
t1=$(date +%s%N)
wait "$slow_pid" || true
stop_ms=$(((t1 - t0) / 1000000))
code=$("${podman[@]}" inspect -f '{{.State.ExitCode}}' "$NAME")
[[ $code == 0 ]] || { "${podman[@]}" logs "$NAME" >&2; fail "exit code $code after podman stop"; }
((stop_ms < GRACE * 1000 + 2000)) || fail "podman stop took ${stop_ms}ms (shutdown_grace ${GRACE}s)"
[[ $(cat "$work/slow.code") == 200 ]] || fail "the request in flight at stop got $(cat "$work/slow.code")"
"${podman[@]}" logs "$NAME" >"$work/container.log" 2>&1
grep -q '"level":"INFO"' "$work/container.log" || fail "no JSON log lines in podman logs"
log "stop: exit 0 after ${stop_ms}ms, the request in flight answered 200"

log "PASS: image $size_mb MiB, $(($(date +%s) - t_start))s in all"
