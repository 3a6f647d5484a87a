#!/usr/bin/env bash
# Soak test (not in CI): the release binary in front of `rampart sample` under mixed load for a
# long time, sampling the proxy's RSS and open file descriptors; fails if either grows past
# its bound, if the proxy dies, or if its log shows a panic.
#
#   scripts/soak.sh                         1 hour, target/release/rampart
#   SOAK_SECONDS=180 RAMPART_BIN=/path/rampart scripts/soak.sh
#
# Knobs (environment): SOAK_SECONDS (3600), SOAK_INTERVAL (10 s between samples),
# SOAK_WARMUP (60 s: the bounds are taken from the largest values seen by then),
# SOAK_RSS_FACTOR (2: RSS may not exceed twice the warm-up peak), SOAK_RSS_SLACK_KB (20480),
# SOAK_FD_SLACK (128: open fds may not exceed the warm-up peak by more), SOAK_CONNECTIONS (32),
# SOAK_RELOAD (0: seconds between reloads; with N > 0 the policy file is rewritten at the first
# sample N seconds after the last reload, its per-tenant rate and breaker pause alternating, and
# reloaded with `POST /reload`:
# every reload must succeed, and the RSS and fd bounds then also catch what a generation leaves
# behind).
# Load: wrk (keep-alive, a mix of fast, slow, flaky, large, failing and rate-limited requests
# over 1000 rotating tenant ids) plus a curl loop opening fresh HTTP/1.1 and h2c connections.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${SOAK_SECONDS:-3600}"
interval="${SOAK_INTERVAL:-10}"
warmup="${SOAK_WARMUP:-60}"
rss_factor="${SOAK_RSS_FACTOR:-2}"
rss_slack="${SOAK_RSS_SLACK_KB:-20480}"
fd_slack="${SOAK_FD_SLACK:-128}"
conns="${SOAK_CONNECTIONS:-32}"
reload_every="${SOAK_RELOAD:-0}"
bin="${RAMPART_BIN:-${CARGO_TARGET_DIR:-target}/release/rampart}"

for cmd in wrk curl python3; do
    command -v "$cmd" >/dev/null || { echo "soak: $cmd is required" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "soak: no binary at $bin (cargo build --release, or set RAMPART_BIN)" >&2; exit 2; }
for knob in SECONDS:secs INTERVAL:interval WARMUP:warmup RSS_FACTOR:rss_factor \
    RSS_SLACK_KB:rss_slack FD_SLACK:fd_slack CONNECTIONS:conns RELOAD:reload_every; do
    name=${knob#*:}
    value=${!name}
    [[ $value =~ ^[0-9]+$ ]] || { echo "soak: SOAK_${knob%%:*} must be a whole number, not '$value'" >&2; exit 2; }
done

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app=$(free_port); proxy=$(free_port); admin=$(free_port)

# The policy file, with a per-tenant rate of $1 a second and a breaker pause of $2.
write_config() {
cat >"$work/rampart.yaml.new" <<YAML
version: 1
admin: { listen: 127.0.0.1:$admin }
tenants:
  from: [ { header: x-tenant-id } ]
  fallback: anonymous
  max_tracked: 500
  metrics_labels: 20
upstreams:
  app: { endpoints: [127.0.0.1:$app], connect_timeout: 500ms }
policies:
  soak:
    timeout: { request: 2s, per_try: 1s }
    retry:
      attempts: 3
      on: [connect_error, reset, 502, 503, 504]
      backoff: { base: 5ms, max: 50ms }
    rate_limit:
      per_tenant: { rate: $1/s, burst: 100 }
    circuit_breaker:
      failure_rate: { threshold: 90%, window: 50, min_calls: 20 }
      open_for: $2
    load_shed:
      max_in_flight: 256
      queue: { size: 256, timeout: 250ms }
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:$proxy
    routes:
      - upstream: app
        policy: soak
YAML
mv "$work/rampart.yaml.new" "$work/rampart.yaml"
}
write_config 50 2s

cat >"$work/mix.lua" <<'LUA'
-- A request mix: mostly fast, some slow, flaky, large, failing; 1000 rotating tenants.
local paths = { "/ok", "/ok", "/ok", "/ok", "/slow?ms=50", "/flaky?fail=20",
                "/bytes/65536", "/status/503", "/status/404", "/echo" }
local n = 0
request = function()
  n = n + 1
  local p = paths[(n % #paths) + 1]
  local h = { ["x-tenant-id"] = "t" .. (n % 1000) }
  if p == "/echo" then
    return wrk.format("POST", p, h, string.rep("x", 1024))
  end
  return wrk.format("GET", p, h)
end
LUA

"$bin" sample --listen "127.0.0.1:$app" >"$work/sample.log" 2>&1 & pids+=($!)
"$bin" run --config "$work/rampart.yaml" >"$work/rampart.log" 2>&1 & rp=$!; pids+=("$rp")
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "soak: proxy not ready"; cat "$work/rampart.log"; exit 1; }

wrk -t 2 -c "$conns" -d "${secs}s" -s "$work/mix.lua" "http://127.0.0.1:$proxy" >"$work/wrk.txt" 2>&1 & pids+=($!)
(
    end=$(( $(date +%s) + secs ))
    while [ "$(date +%s)" -lt "$end" ]; do
        curl -s -o /dev/null "http://127.0.0.1:$proxy/ok" -H "x-tenant-id: fresh$RANDOM" || true
        curl -s -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$proxy/slow?ms=20" || true
        curl -s -o /dev/null -m 1 "http://127.0.0.1:$proxy/slow?ms=3000" || true   # client gives up
    done
) & pids+=($!)

reloads=0
reload_failed=""
reload() {
    if (( reloads % 2 == 0 )); then write_config 60 3s; else write_config 50 2s; fi
    local out
    out=$(curl -s -X POST "http://127.0.0.1:$admin/reload") || true
    case $out in
        *'"result":"success"'*) reloads=$((reloads + 1)) ;;
        *) reload_failed="reload $((reloads + 1)) did not succeed: ${out:-no answer}" ;;
    esac
}
next_reload=$(( $(date +%s) + reload_every ))

rss() { awk '/^VmRSS/ {print $2}' "/proc/$rp/status"; }
fds() { find "/proc/$rp/fd" -mindepth 1 -maxdepth 1 | wc -l; }

start=$(date +%s)
peak_rss=0; peak_fd=0; fail=""
printf '%8s %10s %6s\n' "t(s)" "rss(KiB)" "fds" | tee "$work/samples.txt"
while :; do
    sleep "$interval"
    now=$(( $(date +%s) - start ))
    [ -d "/proc/$rp" ] || { fail="the proxy exited"; break; }
    r=$(rss); f=$(fds)
    printf '%8s %10s %6s\n' "$now" "$r" "$f" | tee -a "$work/samples.txt"
    if [ "$now" -le "$warmup" ]; then
        [ "$r" -gt "$peak_rss" ] && peak_rss=$r
        [ "$f" -gt "$peak_fd" ] && peak_fd=$f
    else
        [ "$r" -le $(( peak_rss * rss_factor + rss_slack )) ] || { fail="RSS $r KiB > bound $(( peak_rss * rss_factor + rss_slack ))"; break; }
        [ "$f" -le $(( peak_fd + fd_slack )) ] || { fail="$f fds > bound $(( peak_fd + fd_slack ))"; break; }
    fi
    if (( reload_every > 0 )) && (( $(date +%s) >= next_reload )); then
        reload
        [ -z "$reload_failed" ] || { fail=$reload_failed; break; }
        next_reload=$(( $(date +%s) + reload_every ))
    fi
    [ "$now" -ge "$secs" ] && break
done

wait "${pids[2]}" 2>/dev/null || true
echo "--- wrk"; cat "$work/wrk.txt"
curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^rampart_(requests_total|shed_total|rate_limited_total|tenants_tracked|circuit_breaker_transitions_total)' \
    | awk '{split($1,a,"{"); s[a[1]]+=$2} END {for (k in s) printf "%s %d\n", k, s[k]}' | sort
if (( reload_every > 0 )); then
    ok=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^rampart_config_reloads_total\{result="success"\}/ {print $2}')
    echo "reloads: $reloads made, rampart_config_reloads_total{result=\"success\"} ${ok:-missing}"
    [ "${ok:-x}" = "$reloads" ] || fail="${fail:+$fail; }$reloads reloads made, the metric says ${ok:-nothing}"
fi
if grep -q panicked "$work/rampart.log"; then fail="${fail:+$fail; }the log shows a panic"; fi
echo "warm-up peaks: rss ${peak_rss} KiB, fds ${peak_fd}; files in $work"
if [ -n "$fail" ]; then echo "soak: FAIL: $fail"; exit 1; fi
echo "soak: PASS (${secs}s)"
