#!/usr/bin/env bash
# How long each proxy waits for a core, and where wrk's connections land (issue 22: the tail
# with two workers at 16 connections; benches/PROFILE.md has what it found).
#
# rampart (RAMPART_WORKERS=WORKERS), nginx (worker_processes WORKERS) and HAProxy (nbthread
# WORKERS) in front of the same `rampart sample` upstream, as full.sh runs them. For each of
# RUNS rounds, one wrk run per proxy; around each, the kernel's scheduler counts of every
# thread of the proxy (/proc/PID/task/TID/schedstat: time on a core, time waiting for one,
# times put on one), summed. Prints per request: run and wait µs, and the times put on a core
# per 1,000 requests and the wait each time; the times it went to sleep itself (voluntary
# context switches: it had nothing to do) per 1,000 requests, and the share of the machine's
# time no thread used (idle, from /proc/stat); with wrk's p99. The same run time and sleeps are
# read for the upstream, and wrk's CPU time (`/usr/bin/time`), per request: a proxy's pace
# shows in what the other two spend (benches/PROFILE.md, "What a proxy leaves to the others").
# Half way into each run it
# counts wrk's connections per process of the proxy (`ss -tnp`; nginx's workers are
# processes, rampart's and HAProxy's are threads of one, shown as one).
#
# Settings (environment), defaults in brackets:
#   WORKERS [2]  CONNS [16]  RUNS [3]  DURATION [5s]  UPSTREAM_WORKERS [2]
#   RAMPART_BIN [cargo build --release]  BASE_PORT [18860]  OUT [target/bench-sched]
set -euo pipefail

WORKERS=${WORKERS:-2}
CONNS=${CONNS:-16}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-2}
BASE_PORT=${BASE_PORT:-18860}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/target/bench-sched}

LOG_TAG=sched
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing ss=iproute2 /usr/bin/time=time
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
((RUNS > 0)) || die "RUNS must be at least 1"
[[ -r /proc/self/schedstat ]] || die "no /proc/PID/schedstat: a kernel with CONFIG_SCHEDSTATS is needed"
rampart_bin

take_port
upstream=127.0.0.1:$port
start upstream env RAMPART_WORKERS="$UPSTREAM_WORKERS" RUST_LOG=warn \
    "$rampart" sample --listen "$upstream" --log-format text
wait_http upstream "http://$upstream/"

declare -A listen=()
take_port
listen[rampart]=127.0.0.1:$port
take_port
render_tmpl "$here/rampart.yaml" "$work/rampart.yaml" "$work" "${listen[rampart]}" "127.0.0.1:$port" "$WORKERS"
start rampart env RAMPART_WORKERS="$WORKERS" RUST_LOG=warn "$rampart" run \
    --config "$work/rampart.yaml" --log-format text
take_port
listen[nginx]=127.0.0.1:$port
mkdir -p "$work/nginx"
render_tmpl "$here/nginx.conf" "$work/nginx/nginx.conf" "$work/nginx" "${listen[nginx]}" "" "$WORKERS"
start nginx "$(command -v nginx)" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
take_port
listen[haproxy]=127.0.0.1:$port
render_tmpl "$here/haproxy.cfg" "$work/haproxy.cfg" "$work" "${listen[haproxy]}" "" "$WORKERS"
start haproxy "$(command -v haproxy)" -db -f "$work/haproxy.cfg"
proxies=(rampart nginx haproxy)
for p in "${proxies[@]}"; do wait_http "$p" "http://${listen[$p]}/"; done

# sched_sums MAIN : "RUN_NS WAIT_NS SLICES" summed over every thread of MAIN and its descendants.
sched_sums() {
    local pid task run wait slices r=0 w=0 s=0
    for pid in $(proc_pids "$1"); do
        for task in /proc/"$pid"/task/*; do
            { read -r run wait slices <"$task/schedstat"; } 2>/dev/null || continue
            r=$((r + run)) w=$((w + wait)) s=$((s + slices))
        done
    done
    echo "$r $w $s"
}

# sleeps MAIN : voluntary context switches of every thread of MAIN and its descendants.
sleeps() {
    local pid n=0 v
    for pid in $(proc_pids "$1"); do
        v=$(awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}' /proc/"$pid"/task/*/status 2>/dev/null) || continue
        n=$((n + v))
    done
    echo "$n"
}

# idle_total : "IDLE TOTAL" ticks of the whole machine (/proc/stat; idle includes iowait).
idle_total() { awk '$1 == "cpu" {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat; }

# owners PORT : how many established connections to PORT each process holds, largest first.
owners() {
    ss -Htnp state established "( sport = :$1 )" | grep -o 'pid=[0-9]*' | sort | uniq -c |
        sort -rn | awk '{printf "%s%s", sep, $1; sep = "/"}'
}

mkdir -p "$OUT"
tsv="$OUT/sched.tsv"
echo -e "proxy\trun\treq_per_s\tp99_ms\trun_us_req\twait_us_req\toncore_per_1000\twait_us_each\tsleeps_per_1000\tidle_pct\tconns\tupstream_run_us_req\tupstream_sleeps_per_1000\twrk_cpu_us_req" >"$tsv"
log "$WORKERS worker(s) each, $CONNS connections: warm-up, then $RUNS run(s) x $DURATION per proxy"
for p in "${proxies[@]}"; do wrk -t1 -c"$CONNS" -d1s "http://${listen[$p]}/" >/dev/null; done
# Half of DURATION, in seconds (read by lib.sh's `to_ms`: a number with its unit, s or m).
half=$(awk -v ms="$(to_ms "$DURATION")" 'BEGIN { if (ms + 0 <= 0) exit 1; print ms / 2000 }') ||
    die "DURATION must be a number of seconds or minutes with its unit (5s, 1m), not $DURATION"
for i in $(seq "$RUNS"); do
    for p in "${proxies[@]}"; do
        read -r r0 w0 s0 <<<"$(sched_sums "${pid_of[$p]}")"
        v0=$(sleeps "${pid_of[$p]}")
        read -r ur0 _ _ <<<"$(sched_sums "${pid_of[upstream]}")"
        uv0=$(sleeps "${pid_of[upstream]}")
        read -r i0 t0 <<<"$(idle_total)"
        /usr/bin/time -f '%U %S' -o "$work/wrk.time" \
            wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://${listen[$p]}/" >"$work/wrk.out" &
        wrk_pid=$!
        sleep "$half"
        split=$(owners "${listen[$p]##*:}")
        wait "$wrk_pid"
        wrk_pid=
        read -r r1 w1 s1 <<<"$(sched_sums "${pid_of[$p]}")"
        v1=$(sleeps "${pid_of[$p]}")
        read -r ur1 _ _ <<<"$(sched_sums "${pid_of[upstream]}")"
        uv1=$(sleeps "${pid_of[upstream]}")
        read -r wrk_user wrk_sys <"$work/wrk.time"
        read -r i1 t1 <<<"$(idle_total)"
        grep -qE 'Non-2xx|Socket errors' "$work/wrk.out" && die "$p: wrk saw errors: $(cat "$work/wrk.out")"
        requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
        rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/wrk.out")")
        awk -v p="$p" -v i="$i" -v rps="$rps" -v p99="$p99" -v n="$requests" -v conns="$split" \
            -v r=$((r1 - r0)) -v w=$((w1 - w0)) -v s=$((s1 - s0)) -v v=$((v1 - v0)) \
            -v idle=$((i1 - i0)) -v total=$((t1 - t0)) -v ur=$((ur1 - ur0)) -v uv=$((uv1 - uv0)) \
            -v wu="$wrk_user" -v ws="$wrk_sys" 'BEGIN {
            printf "%s\t%d\t%s\t%s\t%.2f\t%.2f\t%.0f\t%.1f\t%.1f\t%.1f\t%s\t%.2f\t%.1f\t%.2f\n", p, i, rps,
                p99, r / n / 1000, w / n / 1000, s * 1000 / n, s ? w / s / 1000 : 0, v * 1000 / n,
                total ? 100 * idle / total : 0, conns, ur / n / 1000, uv * 1000 / n,
                (wu + ws) * 1e6 / n }' >>"$tsv"
    done
done

{
    echo
    printf '%-8s %3s %10s %8s %12s %13s %16s %12s %16s %7s %14s %18s %12s  %s\n' proxy run req/s \
        p99_ms run_us/req wait_us/req on_core/1000req wait_us/each sleeps/1000req idle% \
        up_run_us/req up_sleeps/1000req wrk_us/req "conns per process"
    tail -n +2 "$tsv" | while IFS=$'\t' read -r p i rps p99 run wait on each slept idle split urun uslept wcpu; do
        printf '%-8s %3s %10s %8s %12s %13s %16s %12s %16s %7s %14s %18s %12s  %s\n' "$p" "$i" \
            "$rps" "$p99" "$run" "$wait" "$on" "$each" "$slept" "$idle" "$urun" "$uslept" "$wcpu" "$split"
    done
} >&2
log "figures in $tsv"
