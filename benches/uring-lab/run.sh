#!/usr/bin/env bash
# Issue 22's io_uring question, measured before it is chosen: what does a request cost in user
# space and in the kernel on io_uring, against epoll, for the same relay logic?
#
# Five one-worker targets in front of the same one-worker nginx stand-in (a fixed 200):
#   nginx       the nginx proxy of the load benchmark (benches/load/nginx.conf)
#   rampart     `rampart run` with the plain config (benches/load/rampart.yaml)
#   lab-tokio   uring-lab's relay on tokio's current-thread runtime (epoll)
#   lab-epoll   the same relay on monoio's legacy driver (epoll)
#   lab-uring   the same relay on monoio's io_uring driver, its ring set up as monoio does
#   lab-uring-defer  the same, the ring set up with SINGLE_ISSUER and DEFER_TASKRUN
#               (completions are run when the worker waits for them, never by interrupting it)
# (see src/main.rs: the relay parses nothing but head ends and content-length, so what differs
# between the three lab targets is the I/O model.)
#
# ROUNDS rounds; in each, every target gets one wrk run (-t1, keep-alive) per connection count,
# in an order that rotates from round to round. Each run reads the target's user and system
# CPU time (/proc/PID/stat) and divides by the requests served. Then one more run per target
# under `perf stat` counts its syscalls per request (with SYSCALLS=1; perf from linux-perf).
# Prints, and writes to OUT/results.md, the medians over the rounds.
#
# Settings (environment), defaults in brackets:
#   ROUNDS [6]  DURATION [5s]  CONNS ["16 128"]  SYSCALLS [1]
#   RAMPART_BIN [cargo build --release]  BASE_PORT [18860]  OUT [target/bench-uring-lab]
#   LAB_TARGET_DIR [target/uring-lab]: where uring-lab is built
set -euo pipefail

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16 128}
SYSCALLS=${SYSCALLS:-1}
BASE_PORT=${BASE_PORT:-18860}

lab=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
here=$(cd "$lab/../load" && pwd)
repo=$(cd "$lab/../.." && pwd)
OUT=${OUT:-$repo/target/bench-uring-lab}
LAB_TARGET_DIR=${LAB_TARGET_DIR:-$repo/target/uring-lab}

# shellcheck disable=SC2034 # read by lib.sh
LOG_TAG=uring-lab
# shellcheck source=lib.sh source-path=SCRIPTDIR/../load
. "$here/lib.sh"

extra=(python3=python3)
((SYSCALLS)) && extra+=(perf=linux-perf)
install_missing "${extra[@]}"
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
((ROUNDS > 0)) || die "ROUNDS must be at least 1"
rampart_bin
log "building uring-lab (its own crate, not part of rampart)"
(cd "$lab" && CARGO_TARGET_DIR=$LAB_TARGET_DIR cargo build --release -q) ||
    die "cargo build of benches/uring-lab failed"
relay=$LAB_TARGET_DIR/release/uring-lab

# shellcheck disable=SC2119 # no prefix: nothing is pinned here
start_standin

targets=(nginx rampart lab-tokio lab-epoll lab-uring lab-uring-defer)
declare -A listen=()
for t in "${targets[@]}"; do
    take_port
    listen[$t]=127.0.0.1:$port
    case $t in
    nginx)
        mkdir -p "$work/nginx"
        render_tmpl "$here/nginx.conf" "$work/nginx/nginx.conf" "$work/nginx" "${listen[$t]}" "" 1
        start nginx "$(command -v nginx)" -p "$work/nginx" -e "$work/nginx/error.log" \
            -c "$work/nginx/nginx.conf"
        ;;
    rampart)
        take_port
        render_tmpl "$here/rampart.yaml" "$work/rampart.yaml" "$work" "${listen[$t]}" "127.0.0.1:$port" 1
        start rampart env RAMPART_WORKERS=1 RUST_LOG=warn "$rampart" run \
            --config "$work/rampart.yaml" --log-format text
        ;;
    lab-uring-defer)
        start "$t" env URING_FLAGS=single,defer "$relay" uring "${listen[$t]}" "$upstream"
        ;;
    lab-*)
        start "$t" "$relay" "${t#lab-}" "${listen[$t]}" "$upstream"
        ;;
    esac
    wait_http "$t" "http://${listen[$t]}/"
done

# measure TARGET CONNS : one wrk run; prints "REQ_PER_S REQUESTS USER_TICKS SYS_TICKS P99_MS".
measure() {
    local out rps reqs p99
    local -a a b
    read -r -a a <<<"$(user_sys_ticks "${pid_of[$1]}")"
    out=$(wrk -t1 -c"$2" -d"$DURATION" --latency "http://${listen[$1]}/")
    read -r -a b <<<"$(user_sys_ticks "${pid_of[$1]}")"
    grep -qE 'Non-2xx|Socket errors' <<<"$out" && die "$1: wrk saw errors: $out"
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    echo "$rps $reqs $((b[0] - a[0])) $((b[1] - a[1])) $p99"
}

mkdir -p "$OUT"
tsv=$OUT/runs.tsv
echo -e "target\tconns\tround\trps\trequests\tuser_ticks\tsys_ticks\tp99_ms" >"$tsv"
n=${#targets[@]}
for c in $CONNS; do
    log "$c connections: warm-up, then $ROUNDS rounds x $DURATION x ${targets[*]}"
    for t in "${targets[@]}"; do wrk -t1 -c"$c" -d1s "http://${listen[$t]}/" >/dev/null; done
    for r in $(seq "$ROUNDS"); do
        for k in $(seq 0 $((n - 1))); do
            t=${targets[$(((k + r) % n))]}
            m=$(measure "$t" "$c")
            printf '%s\t%s\t%s\t%s\n' "$t" "$c" "$r" "${m// /$'\t'}" >>"$tsv"
        done
    done
done

sys_tsv=$OUT/syscalls.tsv
echo -e "target\tconns\tsyscalls_per_request" >"$sys_tsv"
if ((SYSCALLS)); then
    for c in $CONNS; do
        for t in "${targets[@]}"; do
            pids_csv=$(proc_pids "${pid_of[$t]}" | paste -sd,)
            perf stat -x, -e raw_syscalls:sys_enter -p "$pids_csv" -o "$work/perf-$t-$c.txt" \
                -- sleep 4 &
            perf_pid=$!
            sleep 0.5
            out=$(wrk -t1 -c"$c" -d3s "http://${listen[$t]}/")
            wait "$perf_pid"
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            calls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$work/perf-$t-$c.txt")
            printf '%s\t%s\t%s\n' "$t" "$c" "$(awk -v a="$calls" -v b="$reqs" 'BEGIN {printf "%.2f", a / b}')" >>"$sys_tsv"
        done
    done
fi

python3 - "$tsv" "$sys_tsv" "$(nproc)" "$(uname -r)" "$DURATION" "$ROUNDS" <<'PY' | tee "$OUT/results.md"
import csv, statistics as st, sys
runs = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
calls = {(r["target"], r["conns"]): r["syscalls_per_request"]
         for r in csv.DictReader(open(sys.argv[2]), delimiter="\t")}
tick_us = 1e6 / 100  # USER_HZ
print(f"{sys.argv[3]} cores, kernel {sys.argv[4]}; {sys.argv[6]} rounds x {sys.argv[5]} per target "
      "and connection count, one worker each, wrk -t1; medians over the rounds.\n")
print("| target | conns | req/s | CPU µs/request | user | kernel | p99 ms | syscalls/request |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for t, c in dict.fromkeys((r["target"], r["conns"]) for r in runs):
    rs = [r for r in runs if r["target"] == t and r["conns"] == c]
    per = lambda k: st.median(int(r[k]) * tick_us / int(r["requests"]) for r in rs)
    tot = st.median((int(r["user_ticks"]) + int(r["sys_ticks"])) * tick_us / int(r["requests"]) for r in rs)
    rps = st.median(float(r["rps"]) for r in rs)
    p99 = st.median(float(r["p99_ms"]) for r in rs)
    print(f"| {t} | {c} | {rps:,.0f} | {tot:.2f} | {per('user_ticks'):.2f} | {per('sys_ticks'):.2f} "
          f"| {p99:.2f} | {calls.get((t, c), '-')} |")
PY
log "runs in $tsv; table in $OUT/results.md"
