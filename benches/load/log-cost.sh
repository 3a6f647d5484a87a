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
# For scale, with PEER=1 it measures nginx's own access log the same way, in the same pairs:
# two one-worker nginx proxies (benches/load/nginx.conf), one writing every request as a JSON
# line with the fields of rampart's (`escape=json`, `buffer=64k`: nginx's cheapest way to log
# every request), one not logging.
#
# Settings (environment), defaults in brackets:
#   PAIRS [20]  DURATION [3s]  CONNS ["16 128"]  THREADS [1]
#   PIN [0]     1: rampart (both threads) on CPU 0, nginx and wrk on CPU 1
#   PEER [1]    1: also nginx's access log, on and off (the proxies on CPU 0 with PIN=1)
#   RAMPART_BIN [cargo build --release]  BASE_PORT [18820]  OUT [target/bench-log-cost]
set -euo pipefail

PAIRS=${PAIRS:-20}
DURATION=${DURATION:-3s}
CONNS=${CONNS:-16 128}
THREADS=${THREADS:-1}
PIN=${PIN:-0}
PEER=${PEER:-1}
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

# shellcheck disable=SC2046 # the empty prefix must vanish
start_standin $(pin 1)

# nginx's line: the fields of rampart's, in its order, from nginx's variables (those nginx has
# no counterpart for are written as rampart writes them for this route).
# shellcheck disable=SC2016 # nginx variables, not the shell's
nginx_line='{"time":"$time_iso8601","listener":"inbound","route":"app","tenant":"anonymous",'\
'"method":"$request_method","path":"$uri","status":$status,"reason":"","limit":null,'\
'"tries":1,"endpoint":"$upstream_addr","duration_ms":$request_time,'\
'"upstream_ms":$upstream_response_time,"bytes_in":$request_length,"bytes_out":$bytes_sent,'\
'"request_id":"$request_id","trace_id":null}'

proxies=(rampart)
((PEER)) && proxies+=(nginx)
declare -A listen=()
for proxy in "${proxies[@]}"; do
    for target in "$proxy-off" "$proxy-on"; do
        take_port
        listen[$target]=127.0.0.1:$port
        if [[ $proxy == rampart ]]; then
            take_port
            render_tmpl "$here/rampart.yaml" "$work/$target.yaml" "$work" "${listen[$target]}" "127.0.0.1:$port" 1
            [[ $target == *-on ]] && log_to "$work/$target.jsonl" "$work/$target.yaml"
            # shellcheck disable=SC2046
            start "$target" env RAMPART_WORKERS=1 RUST_LOG=warn $(pin 0) "$rampart" run \
                --config "$work/$target.yaml" --log-format text
        else
            mkdir -p "$work/$target"
            render_tmpl "$here/nginx.conf" "$work/$target/nginx.conf" "$work/$target" "${listen[$target]}" "" 1
            if [[ $target == *-on ]]; then
                line=${nginx_line//&/\\&}
                sed -i "s|^    access_log off;\$|    log_format rampart escape=json '$line';\n    access_log $work/$target.jsonl rampart buffer=64k;|" \
                    "$work/$target/nginx.conf"
                grep -q "access_log $work/$target.jsonl" "$work/$target/nginx.conf" ||
                    die "nginx.conf changed: no http-level 'access_log off;' to replace"
            fi
            # shellcheck disable=SC2046
            start "$target" $(pin 0) "$nginx_bin" -p "$work/$target" -e "$work/$target/error.log" \
                -c "$work/$target/nginx.conf"
        fi
        wait_http "$target" "http://${listen[$target]}/"
    done
done

machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# measure TARGET CONNS : one wrk run; prints "REQ_PER_S PROXY_TICKS MACHINE_TICKS".
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
echo -e "proxy\tconns\tpair\toff_rps\toff_ticks\toff_machine\ton_rps\ton_ticks\ton_machine" >"$tsv"
for c in $CONNS; do
    log "$c connections: warm-up, then $PAIRS pairs x $DURATION (${proxies[*]})"
    for proxy in "${proxies[@]}"; do
        measure "$proxy-off" "$c" >/dev/null
        measure "$proxy-on" "$c" >/dev/null
    done
    for i in $(seq "$PAIRS"); do
        for proxy in "${proxies[@]}"; do
            if ((i % 2)); then
                off=$(measure "$proxy-off" "$c")
                on=$(measure "$proxy-on" "$c")
            else
                on=$(measure "$proxy-on" "$c")
                off=$(measure "$proxy-off" "$c")
            fi
            printf '%s\t%s\t%s\t%s\t%s\n' "$proxy" "$c" "$i" "${off// /$'\t'}" "${on// /$'\t'}" >>"$tsv"
        done
    done
done

for proxy in "${proxies[@]}"; do
    [[ -s $work/$proxy-on.jsonl ]] || die "$proxy wrote no access log line"
    log "$proxy: $(wc -l <"$work/$proxy-on.jsonl") access log lines written"
done
python3 - "$tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| proxy | conns | pairs | req/s off | req/s on | median of pair ratios (min-max) | proxy CPU/request on/off | machine CPU/request on/off |")
print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
for p, c in dict.fromkeys((r["proxy"], r["conns"]) for r in rows):
    rs = [r for r in rows if r["proxy"] == p and r["conns"] == c]
    f = lambda k: sum(float(r[k]) for r in rs)
    ratios = sorted(float(r["on_rps"]) / float(r["off_rps"]) for r in rs)
    cpu = (f("on_ticks") / f("on_rps")) / (f("off_ticks") / f("off_rps"))
    machine = (f("on_machine") / f("on_rps")) / (f("off_machine") / f("off_rps"))
    print(f"| {p} | {c} | {len(rs)} | {f('off_rps') / len(rs):,.0f} | {f('on_rps') / len(rs):,.0f} | "
          f"{statistics.median(ratios):.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) | {cpu:.3f} | {machine:.3f} |")
PY
log "pairs in $tsv"
