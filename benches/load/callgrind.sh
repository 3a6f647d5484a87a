#!/usr/bin/env bash
# Instructions per request of rampart, nginx and HAProxy, counted by callgrind: a figure that does
# not depend on how busy the machine is. Each proxy runs alone under
# `valgrind --tool=callgrind` (rampart with RAMPART_WORKERS=1, nginx with one worker and
# `master_process off`, HAProxy with one thread) in front of the same native upstream, serves a
# fixed number of keep-alive `GET /` from a deterministic client (client.py), and is stopped;
# this is done twice, with CG_SMALL and with CG_LARGE requests, and
#   instructions per request = (Ir(CG_LARGE) - Ir(CG_SMALL)) / (CG_LARGE - CG_SMALL),
# so start-up, configuration and shutdown cancel out. See benches/load/README.md.
#
# Settings (environment), defaults in brackets:
#   CG_SMALL [500] CG_LARGE [2500]   request counts of the two runs
#   CG_CONNS [1]                     keep-alive connections the requests are spread over;
#                                    0: a new connection for each request (`Connection: close`),
#                                    so the figure is what a connection costs
#   CG_AT_ONCE [0]                   HTTP/1.1: >0 sends the requests with h2load --h1 on this
#                                    many connections at once (one request at a time on each)
#                                    instead of client.py's one after another: under valgrind
#                                    the proxy is the slowest part, so it finds several requests
#                                    ready at each wake-up, as under a real load, and what a
#                                    wake-up costs is shared by them (CG_CONNS is then unused)
#   CG_LOG [1]                       1: count rampart with its access log on too (rampart-log)
#   CG_H2 [0]                        1: the requests over HTTP/2 with prior knowledge (h2c),
#                                    from h2load (nghttp2-client), 10 streams at a time on each
#                                    of CG_CONNS connections; nginx `listen ... http2`, HAProxy
#                                    `bind ... proto h2`
#   RAMPART_BIN [cargo build --release]   RAMPART_BASE_BIN [unset]: a second build, counted alike
#   BASE_PORT [18760]                ports from here up on 127.0.0.1
#   OUT [target/bench-callgrind]     callgrind.tsv goes here (full.sh passes its own OUT)
set -euo pipefail

CG_SMALL=${CG_SMALL:-500}
CG_LARGE=${CG_LARGE:-2500}
CG_CONNS=${CG_CONNS:-1}
CG_LOG=${CG_LOG:-1}
CG_H2=${CG_H2:-0}
CG_AT_ONCE=${CG_AT_ONCE:-0}
BASE_PORT=${BASE_PORT:-18760}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/target/bench-callgrind}

LOG_TAG=callgrind
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing valgrind=valgrind python3=python3 h2load=nghttp2-client
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
((CG_LARGE > CG_SMALL && CG_SMALL > 0)) || die "need 0 < CG_SMALL < CG_LARGE"
[[ $CG_AT_ONCE =~ ^[0-9]+$ ]] || die "CG_AT_ONCE must be a whole number, not '$CG_AT_ONCE'"
[[ $CG_H2 == 0 || $CG_AT_ONCE == 0 ]] || die "CG_AT_ONCE is for HTTP/1.1 (CG_H2=1 runs 10 streams at a time already)"
if [[ $CG_H2 == 1 ]]; then
    ((CG_CONNS > 0)) || die "CG_H2=1 needs CG_CONNS > 0: HTTP/2 connections carry many requests"
    # The readiness checks speak HTTP/2 too: nginx's and HAProxy's h2c listeners speak nothing else.
    wait_curl=(--http2-prior-knowledge)
fi

rampart_bin
nginx_bin=$(command -v nginx)
haproxy_bin=$(command -v haproxy)

take_port
upstream=127.0.0.1:$port
start upstream env RUST_LOG=warn "$rampart" sample --listen "$upstream" --log-format text
wait_http upstream "http://$upstream/"

vg=(valgrind --tool=callgrind --trace-children=no --dump-instr=no)

# count TARGET REQUESTS : runs TARGET under callgrind for REQUESTS requests; sets $ir to its
# instruction total. (Not in a $(...) subshell: the processes it starts must stay known to the
# exit trap.)
count() {
    local target=$1 n=$2 dir="$work/$1-$2" bin=$rampart listen admin_port name="$1-$2"
    mkdir -p "$dir"
    take_port
    listen=127.0.0.1:$port
    case $target in
        rampart | rampart-base | rampart-log)
            [[ $target == rampart-base ]] && bin=$RAMPART_BASE_BIN
            take_port
            admin_port=127.0.0.1:$port
            render_tmpl "$here/rampart.yaml" "$dir/rampart.yaml" "$dir" "$listen" "$admin_port" 1
            [[ $target == rampart-log ]] &&
                log_to "$dir/access.jsonl" "$dir/rampart.yaml"
            start "$name" env RAMPART_WORKERS=1 RUST_LOG=warn "${vg[@]}" \
                --callgrind-out-file="$dir/callgrind.out" \
                "$bin" run --config "$dir/rampart.yaml" --log-format text
            ;;
        nginx)
            render_tmpl "$here/nginx.conf" "$dir/nginx.conf" "$dir" "$listen" "" 1
            [[ $CG_H2 == 1 ]] && h2c_only "$dir/nginx.conf" "$listen"
            start "$name" "${vg[@]}" --callgrind-out-file="$dir/callgrind.out" \
                "$nginx_bin" -g "master_process off;" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf"
            ;;
        haproxy)
            render_tmpl "$here/haproxy.cfg" "$dir/haproxy.cfg" "$dir" "$listen" "" 1
            [[ $CG_H2 == 1 ]] && h2c_only "$dir/haproxy.cfg" "$listen"
            start "$name" "${vg[@]}" --callgrind-out-file="$dir/callgrind.out" \
                "$haproxy_bin" -db -f "$dir/haproxy.cfg"
            ;;
    esac
    # Slow under valgrind: give it up to a minute to answer its first request.
    wait_http "$name" "http://$listen/" 600
    if [[ $CG_H2 == 1 ]]; then
        h2load_n "http://$listen/" "$n" "$CG_CONNS" "$work/$name.h2load"
    elif ((CG_AT_ONCE > 0)); then
        h2load_n "http://$listen/" "$n" "$CG_AT_ONCE" "$work/$name.h2load" --h1 -m 1
    else
        python3 "$here/client.py" requests "${listen##*:}" "$n" "$CG_CONNS" >>"$work/$name.log" 2>&1 ||
            die "$target: the client got errors: $(tail -n 3 "$work/$name.log")"
    fi
    stop "$name"
    # callgrind writes its totals when the program exits; "totals:" (or "summary:") holds Ir.
    ir=$(awk '/^totals:/ {t = $2} /^summary:/ {s = $2} END {print (t != "") ? t : s}' "$dir/callgrind.out" 2>/dev/null || true)
    [[ -n $ir ]] || die "$target: no callgrind totals (did it exit cleanly?): $(tail -n 5 "$work/$name.log")"
}

targets=(rampart)
[[ -n ${RAMPART_BASE_BIN:-} ]] && targets+=(rampart-base)
[[ $CG_LOG == 1 ]] && targets+=(rampart-log)
targets+=(nginx haproxy)

mkdir -p "$OUT"
tsv="$OUT/callgrind.tsv"
echo -e "target\tsmall\tlarge\tir_small\tir_large\tir_per_request" >"$tsv"
for t in "${targets[@]}"; do
    count "$t" "$CG_SMALL"
    small=$ir
    count "$t" "$CG_LARGE"
    large=$ir
    per=$(awk -v a="$small" -v b="$large" -v m="$CG_SMALL" -v n="$CG_LARGE" 'BEGIN {printf "%.0f", (b - a) / (n - m)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$CG_SMALL" "$CG_LARGE" "$small" "$large" "$per" >>"$tsv"
    log "$(printf '%-13s %12s Ir (%s requests)  %12s Ir (%s requests)  %8s instructions/request' \
        "$t" "$small" "$CG_SMALL" "$large" "$CG_LARGE" "$per")"
done
log "written to $tsv"
