#!/usr/bin/env bash
# HTTP/2 side by side: rampart, nginx and HAProxy serving `GET /` over h2c (HTTP/2 with prior
# knowledge) in front of the same HTTP/1.1 upstream, one worker each, under h2load
# (nghttp2-client) in interleaved rounds. Prints, per target, req/s and CPU µs per request
# (the proxy's user + system time over the requests h2load counted), medians over the rounds;
# then, each proxy restarted, its RSS per 1,000 idle h2c connections (IDLE_CONNS of them, one
# `GET /` each, held: `client.py idle-h2`).
#
# Settings (environment), defaults in brackets:
#   ROUNDS [4]  DURATION [4] (seconds)  CONNS [16]  STREAMS [10] (concurrent streams per
#   connection)  BASE_PORT [18820]  RAMPART_BIN [cargo build --release]
#   RAMPART_BASE_BIN [unset]: a second rampart build, measured alike (rampart-base)
#   IDLE_CONNS [1000] (0: skip)
set -euo pipefail

ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-4}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-10}
BASE_PORT=${BASE_PORT:-18820}
IDLE_CONNS=${IDLE_CONNS:-1000}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

LOG_TAG=h2
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing h2load=nghttp2-client python3=python3
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
rampart_bin

take_port
upstream=127.0.0.1:$port
start upstream env RUST_LOG=warn "$rampart" sample --listen "$upstream" --log-format text
wait_http upstream "http://$upstream/"
# nginx's and HAProxy's h2c listeners speak HTTP/2 alone: so do the readiness checks.
wait_curl=(--http2-prior-knowledge)

declare -A listen=()
targets=(rampart)
[[ -n ${RAMPART_BASE_BIN:-} ]] && targets+=(rampart-base)
targets+=(nginx haproxy)
for t in "${targets[@]}"; do
    take_port
    listen[$t]=127.0.0.1:$port
    dir="$work/$t"
    mkdir -p "$dir"
    case $t in
        rampart | rampart-base)
            bin=$rampart
            [[ $t == rampart-base ]] && bin=$RAMPART_BASE_BIN
            take_port
            render_tmpl "$here/rampart.yaml" "$dir/rampart.yaml" "$dir" "${listen[$t]}" "127.0.0.1:$port" 1
            start "$t" env RAMPART_WORKERS=1 RUST_LOG=warn "$bin" run --config "$dir/rampart.yaml" --log-format text
            ;;
        nginx)
            render_tmpl "$here/nginx.conf" "$dir/nginx.conf" "$dir" "${listen[$t]}" "" 1
            h2c_only "$dir/nginx.conf" "${listen[$t]}"
            start "$t" "$(command -v nginx)" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf"
            ;;
        haproxy)
            render_tmpl "$here/haproxy.cfg" "$dir/haproxy.cfg" "$dir" "${listen[$t]}" "" 1
            h2c_only "$dir/haproxy.cfg" "${listen[$t]}"
            start "$t" haproxy -db -f "$dir/haproxy.cfg"
            ;;
    esac
    wait_http "$t" "http://${listen[$t]}/"
done

# One line per target and round: TARGET REQ_PER_S CPU_US_PER_REQUEST.
clk_tck=$(getconf CLK_TCK)
: >"$work/results"
for r in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
        c0=$(cpu_ticks "${pid_of[$t]}")
        h2load -c "$CONNS" -m "$STREAMS" -t 1 -D "$DURATION" "http://${listen[$t]}/" >"$work/h2load.out" 2>&1 || true
        c1=$(cpu_ticks "${pid_of[$t]}")
        # "requests: N total, N started, DONE done, OK succeeded, ..."
        read -r finished ok < <(awk '/^requests:/ {print $6, $8}' "$work/h2load.out")
        [[ -n ${ok:-} && $ok -gt 0 && $ok == "$finished" ]] ||
            die "$t: h2load: $(grep -E '^requests:|status codes:' "$work/h2load.out")"
        rps=$(awk '/^finished in/ {print $4}' "$work/h2load.out")
        cpu=$(awk -v a="$c0" -v b="$c1" -v n="$ok" -v k="$clk_tck" 'BEGIN {printf "%.1f", (b - a) / k * 1e6 / n}')
        echo "$t $rps $cpu" >>"$work/results"
        log "round $r: $t $rps req/s, $cpu CPU µs/request"
    done
done

# RSS per 1,000 idle h2c connections, each proxy started afresh.
declare -A idle=()
if ((IDLE_CONNS > 0)); then
    for t in "${targets[@]}"; do
        restart "$t" "http://${listen[$t]}/"
        read -r per alive < <(idle_per_1000 "$t" "${listen[$t]##*:}" "$IDLE_CONNS" idle-h2) ||
            die "$t: the idle h2c client failed"
        idle[$t]=$per
        ((alive == IDLE_CONNS)) || die "$t closed $((IDLE_CONNS - alive)) of the idle connections"
    done
fi

median() { # median COLUMN TARGET
    awk -v c="$1" -v t="$2" '$1 == t {print $c}' "$work/results" | sort -g |
        awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
echo
echo "h2c, $CONNS connections x $STREAMS streams, $ROUNDS rounds x ${DURATION}s, one worker each; medians:"
echo
echo "| target | req/s | CPU µs/req | MiB per 1,000 idle h2c conns |"
echo "| --- | ---: | ---: | ---: |"
for t in "${targets[@]}"; do
    printf '| %s | %.0f | %s | %s |\n' "$t" "$(median 2 "$t")" "$(median 3 "$t")" "${idle[$t]:-}"
done
