#!/usr/bin/env bash
# The access log's cost (issue 25's goal: at most 5 % of req/s with every line written), measured
# in pairs: two instances of the same rampart build, one with `access_log` to a file and one
# without, each RAMPART_WORKERS=1 in front of the same one-worker nginx answering a fixed 200.
# Each pair is one wrk run on each (order alternating), back to back, so the two runs of a
# pair see the same machine; the figure is the median of the pairs' ratios. Runs on this
# 2-core machine swing by 15 % or more from one to the next (a direct nginx swings as much),
# so one pair says little: use PAIRS of 20 or more.
#
# Per pair it also reads the CPU time (user + system, clock ticks) of each rampart (every
# thread: the log's writer thread included) and of the whole machine (/proc/stat), and reports
# CPU per request on and off: a second view of the cost, less tied to how wrk is scheduled.
#
# Settings (environment), defaults in brackets:
#   PAIRS [20]  DURATION [3s]  CONNS ["16 128"]  THREADS [1]
#   PIN [0]     1: rampart (both threads) on CPU 0, nginx and wrk on CPU 1
#   RAMPART_BIN [cargo build --release]  BASE_PORT [18820]  OUT [target/bench-log-cost]
set -euo pipefail

PAIRS=${PAIRS:-20}
DURATION=${DURATION:-3s}
CONNS=${CONNS:-16 128}
THREADS=${THREADS:-1}
PIN=${PIN:-0}
BASE_PORT=${BASE_PORT:-18820}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/target/bench-log-cost}

LOG_TAG=log-cost
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing python3=python3 taskset=util-linux
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
((PAIRS > 0)) || die "PAIRS must be at least 1"
rampart_bin
nginx_bin=$(command -v nginx)

# pin CPU : the taskset prefix with PIN=1, nothing otherwise.
pin() { ((PIN)) && echo "taskset -c $1"; }


take_port
upstream=127.0.0.1:$port
render_tmpl "$here/nginx-standin.conf" "$work/upstream.conf" "$work" "$upstream" "" 1
# shellcheck disable=SC2046 # the empty prefix must vanish
start upstream $(pin 1) "$nginx_bin" -p "$work" -e "$work/upstream-error.log" -c "$work/upstream.conf"
wait_http upstream "http://$upstream/"

declare -A listen=()
for target in off on; do
    take_port
    listen[$target]=127.0.0.1:$port
    take_port
    render_tmpl "$here/rampart.yaml" "$work/$target.yaml" "$work" "${listen[$target]}" "127.0.0.1:$port" 1
    [[ $target == on ]] && log_to "$work/access.jsonl" "$work/$target.yaml"
    # shellcheck disable=SC2046
    start "$target" env RAMPART_WORKERS=1 RUST_LOG=warn $(pin 0) "$rampart" run \
        --config "$work/$target.yaml" --log-format text
    wait_http "$target" "http://${listen[$target]}/"
done

machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# measure TARGET CONNS : one wrk run; prints "REQ_PER_S RAMPART_TICKS MACHINE_TICKS".
measure() {
    local t0 m0 t1 m1 out rps
    t0=$(cpu_ticks "${pid_of[$1]}")
    m0=$(machine_ticks)
    # shellcheck disable=SC2046
    out=$($(pin 1) wrk -t"$THREADS" -c"$2" -d"$DURATION" "http://${listen[$1]}/")
    t1=$(cpu_ticks "${pid_of[$1]}")
    m1=$(machine_ticks)
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    grep -qE 'Non-2xx|Socket errors' <<<"$out" && die "$1: wrk saw errors: $out"
    echo "$rps $((t1 - t0)) $((m1 - m0))"
}

mkdir -p "$OUT"
tsv="$OUT/log-cost.tsv"
echo -e "conns\tpair\toff_rps\toff_ticks\toff_machine\ton_rps\ton_ticks\ton_machine" >"$tsv"
for c in $CONNS; do
    log "$c connections: warm-up, then $PAIRS pairs x $DURATION"
    measure off "$c" >/dev/null
    measure on "$c" >/dev/null
    for i in $(seq "$PAIRS"); do
        if ((i % 2)); then
            off=$(measure off "$c")
            on=$(measure on "$c")
        else
            on=$(measure on "$c")
            off=$(measure off "$c")
        fi
        printf '%s\t%s\t%s\t%s\n' "$c" "$i" "${off// /$'\t'}" "${on// /$'\t'}" >>"$tsv"
    done
done

python3 - "$tsv" "$(wc -l <"$work/access.jsonl")" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(f"access log lines written: {sys.argv[2]}")
print("| conns | pairs | req/s off | req/s on | median of pair ratios (min-max) | rampart CPU/request on/off | machine CPU/request on/off |")
print("| ---: | ---: | ---: | ---: | --- | ---: | ---: |")
for c in dict.fromkeys(r["conns"] for r in rows):
    rs = [r for r in rows if r["conns"] == c]
    f = lambda k: sum(float(r[k]) for r in rs)
    ratios = sorted(float(r["on_rps"]) / float(r["off_rps"]) for r in rs)
    cpu = (f("on_ticks") / f("on_rps")) / (f("off_ticks") / f("off_rps"))
    machine = (f("on_machine") / f("on_rps")) / (f("off_machine") / f("off_rps"))
    print(f"| {c} | {len(rs)} | {f('off_rps') / len(rs):,.0f} | {f('on_rps') / len(rs):,.0f} | "
          f"{statistics.median(ratios):.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) | {cpu:.3f} | {machine:.3f} |")
PY
log "pairs in $tsv"
