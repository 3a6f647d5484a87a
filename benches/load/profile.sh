#!/usr/bin/env bash
# Where a request's CPU time goes, in rampart and in nginx, under the same wrk load: issue 22
# asks, for every goal not met, for the profile that shows it. This machine has no hardware
# counters, but the kernel's software clock (`perf record -e cpu-clock`) and its syscall
# tracepoints work, kernel included, at little cost to the process measured.
#
# Starts a one-worker nginx answering a fixed 200 (the upstream), then rampart as a plain proxy
# (RAMPART_WORKERS=WORKERS, 1 by default), rampart with its access log on, and nginx as a
# proxy (one worker, `master_process off`; with WORKERS > 1, that many under a master), all in
# front of it. For each target in turn: a warm-up, then one wrk run of DURATION while `perf
# stat` counts its syscalls, and one while `perf record` samples it (4,000 samples a second of
# CPU time). Prints, per request served:
#   - syscalls, all and by kind;
#   - CPU time, split into the kernel, the program itself, the C library and the vDSO (where
#     clock reads run);
#   - the user-space symbols (the program's, the C library's, the vDSO's) that cost most, in
#     nanoseconds (TOP of them).
#   - TCP segments sent and received (the machine's, from /proc/net/snmp: wrk's, the proxy's
#     and the upstream's together; the same load for every target, so they compare) and
#     segments sent without data (ACKs alone); and the target's context switches (voluntary: it
#     slept; involuntary: it was preempted), from /proc/PID/task/*/status;
#   - CPU time per thread, from /proc/PID/task/*/stat (rampart-log: the access log's writer
#     thread apart from the worker);
# Sample counts are turned into time at 250 µs a sample; the figures of one run move by 10 %
# with the load's batching (a run that batches more pays fewer syscalls per request), so
# compare targets within one run.
#
# Settings (environment), defaults in brackets:
#   CONNS [16]  DURATION [5]  (seconds)  TOP [25]  BASE_PORT [18840]
#   WORKERS [1]  rampart's RAMPART_WORKERS and nginx's worker_processes (with more than one,
#                nginx runs its master process too, and every process of it is counted)
#   RAMPART_BIN [cargo build --release]  OUT [target/bench-profile]
set -euo pipefail

CONNS=${CONNS:-16}
DURATION=${DURATION:-5}
TOP=${TOP:-25}
BASE_PORT=${BASE_PORT:-18840}
WORKERS=${WORKERS:-1}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/target/bench-profile}

LOG_TAG=profile
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing perf=linux-perf
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
rampart_bin
nginx_bin=$(command -v nginx)
perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 ||
    die "perf cannot count syscall tracepoints here (kernel.perf_event_paranoid, tracefs)"

# shellcheck disable=SC2119 # no prefix: the stand-in runs unpinned
start_standin

declare -A listen=()
for target in rampart rampart-log; do
    take_port
    listen[$target]=127.0.0.1:$port
    take_port
    render_tmpl "$here/rampart.yaml" "$work/$target.yaml" "$work" "${listen[$target]}" "127.0.0.1:$port" 1
    [[ $target == rampart-log ]] && log_to "$work/access.jsonl" "$work/$target.yaml"
    start "$target" env RAMPART_WORKERS="$WORKERS" RUST_LOG=warn "$rampart" run \
        --config "$work/$target.yaml" --log-format text
    wait_http "$target" "http://${listen[$target]}/"
done
take_port
listen[nginx]=127.0.0.1:$port
mkdir -p "$work/nginx"
render_tmpl "$here/nginx.conf" "$work/nginx/nginx.conf" "$work/nginx" "${listen[nginx]}" "" "$WORKERS"
# One worker: no master process (it would only wait); more: the master starts them.
nginx_master=()
((WORKERS == 1)) && nginx_master=(-g "master_process off;")
start nginx "$nginx_bin" "${nginx_master[@]}" -p "$work/nginx" -e "$work/nginx/error.log" \
    -c "$work/nginx/nginx.conf"
wait_http nginx "http://${listen[nginx]}/"

kinds=(recvfrom sendto read write readv writev epoll_wait epoll_ctl futex accept4 close setsockopt getsockopt ioctl)
events=raw_syscalls:sys_enter
for k in "${kinds[@]}"; do events+=",syscalls:sys_enter_$k"; done

# counters FILE SECTION NAME... : the machine's counters NAME of SECTION in FILE (a header line
# of names, then a line of values), space-separated.
counters() {
    local file=$1 section=$2
    shift 2
    awk -v s="$section:" -v names="$*" '$1 == s && !h {for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next}
         $1 == s {n = split(names, w, " "); for (j = 1; j <= n; j++) printf "%s%s", $col[w[j]], (j < n ? " " : "\n")}' "$file"
}
# tcp_counts : "IN OUT DATA": TCP segments the machine has received and sent (/proc/net/snmp),
# and those it sent with new data (/proc/net/netstat); the others it sent carried only an ACK
# (or a retransmission, none on loopback).
tcp_counts() {
    echo "$(counters /proc/net/snmp Tcp InSegs OutSegs) $(counters /proc/net/netstat TcpExt TCPOrigDataSent)"
}
# threads PID : one line per thread of PID and of its descendants (nginx's workers):
# "TID NAME VOLUNTARY INVOLUNTARY CPU_TICKS".
threads() {
    local t p
    for p in $(proc_pids "$1"); do for t in /proc/"$p"/task/*; do
        awk -v tid="${t##*/}" '/^Name:/ {n = $2} /^voluntary_ctxt_switches:/ {v = $2}
            /^nonvoluntary_ctxt_switches:/ {i = $2} END {printf "%s %s %s %s ", tid, n, v, i}' "$t/status"
        awk '{sub(/^.*\) /, ""); print $12 + $13}' "$t/stat"
    done; done
}
clk_tck=$(getconf CLK_TCK)

mkdir -p "$OUT"
: >"$OUT/profile.md"
# load TARGET : one wrk run of DURATION; prints the requests it completed.
load() {
    local out
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://${listen[$1]}/")
    grep -qE 'Non-2xx|Socket errors' <<<"$out" && die "$1: wrk saw errors: $out"
    awk '/requests in/ {print $1}' <<<"$out"
}

for target in rampart rampart-log nginx; do
    pid=${pid_of[$target]}
    # Every process of the target (nginx's master and workers), for perf's -p.
    pid_list=$(proc_pids "$pid" | paste -sd, -)
    log "$target: warm-up, then $DURATION s counted and $DURATION s sampled, $CONNS connections, $WORKERS worker(s)"
    wrk -t1 -c"$CONNS" -d2s "http://${listen[$target]}/" >/dev/null
    perf stat -x, -e "$events" -p "$pid_list" -o "$OUT/$target.stat" -- sleep "$DURATION" &
    counter=$!
    read -r in0 out0 data0 <<<"$(tcp_counts)"
    threads "$pid" | sort >"$OUT/$target.threads0"
    served=$(load "$target")
    threads "$pid" | sort >"$OUT/$target.threads1"
    read -r in1 out1 data1 <<<"$(tcp_counts)"
    wait "$counter"
    perf record -q -e cpu-clock -p "$pid_list" -o "$OUT/$target.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    sampler=$!
    sampled=$(load "$target")
    wait "$sampler"
    {
        echo "## $target ($CONNS connections, $WORKERS worker(s))"
        echo
        awk -F, -v n="$served" '$1 + 0 > 0 {sub(/.*:sys_enter_?/, "", $3); printf "%s %.2f, ", ($3 == "" ? "syscalls" : $3), $1 / n}' \
            "$OUT/$target.stat" | sed 's/, $//; s/^/syscalls per request: /'
        echo
        echo
        awk -v n="$served" -v i=$((in1 - in0)) -v o=$((out1 - out0)) -v a=$((out1 - out0 - data1 + data0)) \
            'BEGIN {printf "TCP segments per request (the machine'"'"'s): %.2f in, %.2f out, %.3f ACK only\n", i / n, o / n, a / n}'
        echo
        echo "Per thread, per 1,000 requests (context switches) and per request (CPU):"
        echo
        join "$OUT/$target.threads0" "$OUT/$target.threads1" |
            awk -v n="$served" -v k="$clk_tck" '{printf "- %s: %.1f voluntary, %.1f involuntary switches; %.2f µs CPU\n",
                $2, ($7 - $3) * 1000 / n, ($8 - $4) * 1000 / n, ($9 - $5) / k * 1e6 / n}'
        echo
        echo "CPU per request ($sampled requests sampled):"
        echo
        perf report -i "$OUT/$target.data" --stdio --no-children -n --sort dso 2>/dev/null |
            awk -v n="$sampled" '!/^#/ && NF >= 3 && ++k <= 6 {printf "- %s: %.2f µs\n", $3, $2 * 250 / n}'
        echo
        echo "Top $TOP user-space symbols (ns per request):"
        echo
        perf report -i "$OUT/$target.data" --stdio --no-children -n --sort dso,sym 2>/dev/null |
            awk -v n="$sampled" -v top="$TOP" '!/^#/ && NF >= 5 && $3 !~ /kernel/ && ++k <= top {
                c = $2; $1 = $2 = $3 = $4 = ""; sub(/^ +/, ""); printf "- %5.0f %s\n", c * 250000 / n, $0}'
        echo
    } | tee -a "$OUT/profile.md"
done
log "written to $OUT/profile.md"
