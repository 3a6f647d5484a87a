#!/usr/bin/env bash
# The whole comparison of issue 22 in one run: rampart next to nginx and HAProxy with one and
# with two workers each, rampart with the full policy, memory (idle, peak, per idle
# connection), CPU per request, rampart with its access log on against off (issue 25), and
# instructions per request under callgrind (callgrind.sh).
# Raw figures go to OUT (default target/bench-full); results.py turns them into
# benches/RESULTS.md. See benches/load/README.md ("The full comparison").
#
# Settings (environment), defaults in brackets:
#   ROUNDS [6] DURATION [5s] WARMUP [2s] THREADS [1]   wrk rounds and shape (the goals are
#                                medians of the rounds' ratios: more, shorter rounds)
#   CONNS_LIST ["16 128"]        wrk connection counts, each measured in every round
#   WORKERS_LIST ["1 2"]         worker counts: RAMPART_WORKERS, nginx worker_processes, HAProxy nbthread
#   POLICY_WORKERS ["1"]         worker counts at which rampart with the full policy is measured
#   POLICY_ROUNDS [20] POLICY_DURATION [3s]  rounds and wrk run length of the full policy against
#                                rampart plain (its goal, too, is the median of the rounds' ratios)
#   LOG_WORKERS ["1"]            worker counts at which rampart with its access log on (every line,
#                                to a file) is measured against the same build with it off
#   LOG_ROUNDS [20] LOG_DURATION [3s]  rounds and wrk run length of that comparison: more, shorter
#                                pairs of runs, since its goal is the median of the rounds' ratios
#   TENANTS [10000]              tenant ids rotated by tenants.lua
#   IDLE_CONNS [2000]            idle keep-alive connections opened to each proxy (0: skip)
#   DIRECT [1]                   1: wrk straight to the upstream too (the ceiling), first worker count only
#   CALLGRIND [1]                1: run callgrind.sh at the end (CG_SMALL, CG_LARGE passed on)
#   RAMPART_BIN [cargo build --release]   RAMPART_BASE_BIN [unset]: a second build, measured alike
#   UPSTREAM_WORKERS [cores]     worker threads of the sample upstream
#   BASE_PORT [18700]            ports from BASE_PORT up on 127.0.0.1
#   OUT [target/bench-full]      raw figures; RESULTS_MD [benches/RESULTS.md] the report
#   RESULTS_TITLE [unset]        a heading line for the report (e.g. "smoke run - not the result")
set -euo pipefail

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
CONNS_LIST=${CONNS_LIST:-16 128}
WORKERS_LIST=${WORKERS_LIST:-1 2}
POLICY_WORKERS=${POLICY_WORKERS:-1}
LOG_WORKERS=${LOG_WORKERS:-1}
POLICY_ROUNDS=${POLICY_ROUNDS:-20}
POLICY_DURATION=${POLICY_DURATION:-3s}
LOG_ROUNDS=${LOG_ROUNDS:-20}
LOG_DURATION=${LOG_DURATION:-3s}
TENANTS=${TENANTS:-10000}
IDLE_CONNS=${IDLE_CONNS:-2000}
DIRECT=${DIRECT:-1}
CALLGRIND=${CALLGRIND:-1}
BASE_PORT=${BASE_PORT:-18700}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/target/bench-full}
RESULTS_MD=${RESULTS_MD:-$repo/benches/RESULTS.md}
started=$(date +%s)
command_line="$(env | grep -E '^(ROUNDS|DURATION|WARMUP|THREADS|CONNS_LIST|WORKERS_LIST|POLICY_WORKERS|POLICY_ROUNDS|POLICY_DURATION|LOG_WORKERS|LOG_ROUNDS|LOG_DURATION|TENANTS|IDLE_CONNS|DIRECT|CALLGRIND|CG_SMALL|CG_LARGE|RAMPART_BIN|RAMPART_BASE_BIN|UPSTREAM_WORKERS|BASE_PORT)=' | sort | tr '\n' ' ')bash benches/load/full.sh"

LOG_TAG=full
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing python3=python3
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup

# Idle connections need file descriptors; the proxies inherit the limit from this shell.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]] || ((hard > 65536)); then hard=65536; fi
ulimit -n "$hard" || true
(($(ulimit -n) > IDLE_CONNS + 100)) || die "ulimit -n is $(ulimit -n): too low for IDLE_CONNS=$IDLE_CONNS"

# --- binaries --------------------------------------------------------------------------------
rampart_bin
[[ -z ${RAMPART_BASE_BIN:-} || -x $RAMPART_BASE_BIN ]] || die "RAMPART_BASE_BIN=$RAMPART_BASE_BIN is not executable"
nginx_bin=$(command -v nginx)
haproxy_bin=$(command -v haproxy)

mkdir -p "$OUT"
rm -f "$OUT"/{meta.txt,wrk.tsv,mem.tsv,idle.tsv,policy.tsv,log.tsv,callgrind.tsv}
clk_tck=$(getconf CLK_TCK)
{
    echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "command=$command_line"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "cores=$(nproc)"
    echo "memory=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "os=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
    echo "rampart=$("$rampart" --version)"
    [[ -n ${RAMPART_BASE_BIN:-} ]] && echo "rampart_base=$("$RAMPART_BASE_BIN" --version)"
    echo "nginx=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')"
    echo "haproxy=$("$haproxy_bin" -v | head -n 1 | sed 's/ - https.*//')"
    echo "wrk=$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')"
    echo "python=$(python3 --version 2>&1)"
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "policy_rounds=$POLICY_ROUNDS"
    echo "policy_duration=$POLICY_DURATION"
    echo "log_rounds=$LOG_ROUNDS"
    echo "log_duration=$LOG_DURATION"
    echo "warmup=$WARMUP"
    echo "threads=$THREADS"
    echo "conns_list=$CONNS_LIST"
    echo "workers_list=$WORKERS_LIST"
    echo "policy_workers=$POLICY_WORKERS"
    echo "log_workers=$LOG_WORKERS"
    echo "tenants=$TENANTS"
    echo "idle_conns=$IDLE_CONNS"
    echo "clk_tck=$clk_tck"
} >"$OUT/meta.txt"

# --- ports and templates ---------------------------------------------------------------------
take_port
upstream=127.0.0.1:$port
start upstream env ${UPSTREAM_WORKERS:+RAMPART_WORKERS=$UPSTREAM_WORKERS} RUST_LOG=warn \
    "$rampart" sample --listen "$upstream" --log-format text
wait_http upstream "http://$upstream/"

declare -A url=([direct]="http://$upstream/") admin=()

# start_proxy KIND NAME WORKERS : starts one proxy instance named NAME (e.g. nginx@2).
start_proxy() {
    local kind=$1 name=$2 w=$3 dir="$work/$2" bin=$rampart tmpl=rampart.yaml port listen admin_port
    mkdir -p "$dir"
    take_port
    listen=127.0.0.1:$port
    case $kind in
        rampart | rampart-base | rampart-policy | rampart-log)
            [[ $kind == rampart-base ]] && bin=$RAMPART_BASE_BIN
            [[ $kind == rampart-policy ]] && tmpl="rampart-policy.yaml"
            admin_port=$listen
            take_port
            admin_port=127.0.0.1:$port
            render_tmpl "$here/$tmpl" "$dir/rampart.yaml" "$dir" "$listen" "$admin_port" "$w"
            # The access log's cost: every request's line, to a file.
            [[ $kind == rampart-log ]] &&
                log_to "$dir/access.jsonl" "$dir/rampart.yaml"
            "$bin" validate --config "$dir/rampart.yaml" >"$dir/validate.log" 2>&1 ||
                die "$name: rampart refused its config: $(cat "$dir/validate.log")"
            grep -q ' 0 warning(s)' "$dir/validate.log" ||
                die "$name: rampart validate warns about the bench config: $(cat "$dir/validate.log")"
            start "$name" env RAMPART_WORKERS="$w" RUST_LOG=warn \
                "$bin" run --config "$dir/rampart.yaml" --log-format text
            admin[$name]=$admin_port
            wait_http "$name" "http://$admin_port/readyz"
            ;;
        nginx)
            render_tmpl "$here/nginx.conf" "$dir/nginx.conf" "$dir" "$listen" "" "$w"
            start "$name" "$nginx_bin" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf"
            ;;
        haproxy)
            render_tmpl "$here/haproxy.cfg" "$dir/haproxy.cfg" "$dir" "$listen" "" "$w"
            start "$name" "$haproxy_bin" -db -f "$dir/haproxy.cfg"
            ;;
    esac
    url[$name]="http://$listen/"
    wait_http "$name" "${url[$name]}"
}

# --- measuring -------------------------------------------------------------------------------
# measure SCENARIO WORKERS NAME CONNS ROUND [WRK ARGS... URL ...] : one wrk run of DUR seconds
# (default DURATION; set DUR for one call to change it) (by default
# of the target's URL; else of the given wrk options, URL and script arguments); appends a row
# to wrk.tsv: scenario workers target conns round rps p50_ms p99_ms errors requests cpu_ticks
# steal_ticks host_ticks.
# cpu_ticks: user+system time the target's processes (nginx: master and workers; direct: the
# upstream) spent during the run, from /proc/PID/stat. steal_ticks, host_ticks: the machine's
# ticks stolen by the hypervisor and in all during the run (host_ticks, lib.sh).
echo -e "scenario\tworkers\ttarget\tconns\tround\trps\tp50_ms\tp99_ms\terrors\trequests\tcpu_ticks\tsteal_ticks\thost_ticks" >"$OUT/wrk.tsv"
measure() {
    local scen=$1 w=$2 name=$3 c=$4 r=$5 target pid f cpu0 cpu1 rps p50 p99 errs reqs
    local steal0 host0 steal1 host1
    shift 5
    target=${name%@*}
    pid=${pid_of[$name]:-${pid_of[upstream]}}
    f="$work/wrk-$scen-$w-$target-$c-$r.txt"
    (($# > 0)) || set -- "${url[$name]}"
    cpu0=$(cpu_ticks "$pid")
    read -r steal0 host0 <<<"$(host_ticks)"
    run_wrk -t "$THREADS" -c "$c" -d "${DUR:-$DURATION}" --latency "$@" >"$f"
    cpu1=$(cpu_ticks "$pid")
    read -r steal1 host1 <<<"$(host_ticks)"
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    reqs=$(awk '/ requests in / {print $1}' "$f")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
    # Non-2xx answers and socket errors: a proxy that fails fast must not look fast.
    errs=$(awk '/Non-2xx or 3xx responses:/ {e += $NF}
                /Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
                END {print e + 0}' "$f")
    [[ -n $rps && -n $reqs && $p50 != nan && $p99 != nan ]] || die "cannot parse wrk output: $(cat "$f")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$w" "$target" "$c" "$r" \
        "$rps" "$p50" "$p99" "$errs" "$reqs" "$((cpu1 - cpu0))" \
        "$((steal1 - steal0))" "$((host1 - host0))" >>"$OUT/wrk.tsv"
    log "$(printf '%-6s w%s c%-4s round %s %-15s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %6.1f us CPU/req  steal %4.1f%%  errors %s' \
        "$scen" "$w" "$c" "$r" "$target" "$rps" "$p50" "$p99" \
        "$(awk -v t="$((cpu1 - cpu0))" -v n="$reqs" -v k="$clk_tck" 'BEGIN {print (n > 0) ? t / k * 1e6 / n : 0}')" \
        "$(awk -v s="$((steal1 - steal0))" -v h="$((host1 - host0))" 'BEGIN {print (h > 0) ? 100 * s / h : 0}')" "$errs")"
}

# rotate ROUND ITEMS... : prints the items rotated by ROUND-1, so no target always goes first.
rotate() {
    local r=$1 n i
    shift
    n=$#
    local -a items=("$@")
    for ((i = 0; i < n; i++)); do echo "${items[$(((i + r - 1) % n))]}"; done
}

# sum_metric NAME : the sum of a metric's samples in $metrics (Prometheus text).
sum_metric() { awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}' <<<"$metrics"; }

echo -e "target\tworkers\tidle_rss_kib\tpeak_rss_kib" >"$OUT/mem.tsv"
echo -e "target\tworkers\tconns\tbefore_kib\tafter_kib\talive" >"$OUT/idle.tsv"
echo -e "target\tworkers\ttenants_tracked\trate_limited\tshed" >"$OUT/policy.tsv"
echo -e "target\tworkers\trequests\tlines\tdropped" >"$OUT/log.tsv"
lua_args=(-s "$here/tenants.lua")

first_w=${WORKERS_LIST%% *}
for w in $WORKERS_LIST; do
    kinds=(rampart)
    [[ -n ${RAMPART_BASE_BIN:-} ]] && kinds+=(rampart-base)
    kinds+=(nginx haproxy)
    with_policy=0
    [[ " $POLICY_WORKERS " == *" $w "* ]] && with_policy=1 && kinds+=(rampart-policy)
    with_log=0
    [[ " $LOG_WORKERS " == *" $w "* ]] && with_log=1 && kinds+=(rampart-log)
    names=()
    declare -A idle_rss=()
    for k in "${kinds[@]}"; do
        start_proxy "$k" "$k@$w" "$w"
        names+=("$k@$w")
    done
    # Idle memory: after start and one request (wait_http), before any load.
    sleep 1
    for n in "${names[@]}"; do idle_rss[$n]=$(status_kib VmRSS "${pid_of[$n]}"); done

    plain=()
    for n in "${names[@]}"; do [[ $n == rampart-policy@* || $n == rampart-log@* ]] || plain+=("$n"); done
    [[ $DIRECT == 1 && $w == "$first_w" ]] && plain+=(direct)

    log "workers $w: warm-up $WARMUP per target and connection count"
    warm=("${names[@]}")
    [[ " ${plain[*]} " == *" direct "* ]] && warm+=(direct)
    for n in "${warm[@]}"; do
        for c in $CONNS_LIST; do
            args=()
            [[ $n == rampart-policy@* ]] && args=("${lua_args[@]}" "${url[$n]}" -- "$TENANTS")
            if ((${#args[@]} > 0)); then
                run_wrk -t "$THREADS" -c "$c" -d "$WARMUP" "${args[@]}" >/dev/null
            else
                run_wrk -t "$THREADS" -c "$c" -d "$WARMUP" "${url[$n]}" >/dev/null
            fi
        done
    done

    log "workers $w: plain proxy, $ROUNDS rounds x (${CONNS_LIST}) connections x ${#plain[@]} targets x $DURATION"
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in $CONNS_LIST; do
            while read -r n; do
                measure plain "$w" "$n" "$c" "$r"
            done < <(rotate "$r" "${plain[@]}")
        done
    done

    if ((with_policy)); then
        # rampart plain and rampart with the policy, both driven by tenants.lua (the same wrk
        # cost for both): the ratio is the policy's cost. Many short rounds, the two runs of
        # a round back to back, as for the access log below: a round's ratio sees one state of
        # the machine, and the median of the ratios outlasts a few disturbed rounds.
        log "workers $w: full policy, $TENANTS tenants, $POLICY_ROUNDS rounds x $POLICY_DURATION"
        for ((r = 1; r <= POLICY_ROUNDS; r++)); do
            for c in $CONNS_LIST; do
                while read -r n; do
                    DUR=$POLICY_DURATION measure policy "$w" "$n" "$c" "$r" "${lua_args[@]}" "${url[$n]}" -- "$TENANTS"
                done < <(rotate "$r" "rampart@$w" "rampart-policy@$w")
            done
        done
        metrics=$(curl -fsS --max-time 5 "http://${admin[rampart-policy@$w]}/metrics" || true)
        printf 'rampart-policy\t%s\t%s\t%s\t%s\n' "$w" "$(sum_metric rampart_tenants_tracked)" \
            "$(sum_metric rampart_rate_limited_total)" "$(sum_metric rampart_shed_total)" >>"$OUT/policy.tsv"
    fi

    if ((with_log)); then
        # The same build with its access log on and off, interleaved. Every run is followed by
        # `sync` (both targets alike), so the log's dirty pages are written back before the
        # next run instead of during it, where they would be charged to whichever target runs
        # next.
        log "workers $w: access log on and off, $LOG_ROUNDS rounds x $LOG_DURATION"
        sync
        for ((r = 1; r <= LOG_ROUNDS; r++)); do
            for c in $CONNS_LIST; do
                while read -r n; do
                    DUR=$LOG_DURATION measure log "$w" "$n" "$c" "$r"
                    sync
                done < <(rotate "$r" "rampart@$w" "rampart-log@$w")
            done
        done
        # Every request the log target served must be in its file (or counted as dropped).
        metrics=$(curl -fsS --max-time 5 "http://${admin[rampart-log@$w]}/metrics" || true)
        sleep 0.5
        printf 'rampart-log\t%s\t%s\t%s\t%s\n' "$w" "$(sum_metric rampart_requests_total)" \
            "$(wc -l <"$work/rampart-log@$w/access.jsonl")" \
            "$(sum_metric rampart_access_log_dropped_total)" >>"$OUT/log.tsv"
    fi

    # Peak memory: the high-water mark after all the load (16 and 128 connections), read
    # before the idle connections below can raise it.
    for n in "${names[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "${n%@*}" "$w" "${idle_rss[$n]}" \
            "$(status_kib VmHWM "${pid_of[$n]}")" >>"$OUT/mem.tsv"
    done

    if ((IDLE_CONNS > 0)); then
        for n in "${names[@]}"; do
            port=${url[$n]##*:}
            port=${port%/}
            mapfile -t ps < <(proc_pids "${pid_of[$n]}")
            read -r before after alive < <(python3 "$here/client.py" idle "$port" "$IDLE_CONNS" "${ps[@]}") ||
                die "$n: the idle-connection client failed"
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${n%@*}" "$w" "$IDLE_CONNS" "$before" "$after" "$alive" >>"$OUT/idle.tsv"
            log "$(printf 'idle   w%s %-15s %d connections: RSS %s -> %s MiB (%s still open)' \
                "$w" "${n%@*}" "$IDLE_CONNS" "$(mib "$before")" "$(mib "$after")" "$alive")"
        done
    fi
    # This worker count is done: stop its proxies so the next one runs alone.
    for n in "${names[@]}"; do stop "$n"; done
    unset idle_rss
done

echo "load_seconds=$(($(date +%s) - started))" >>"$OUT/meta.txt"
if [[ $CALLGRIND == 1 ]]; then
    log "callgrind: instructions per request"
    RAMPART_BIN=$rampart OUT=$OUT BASE_PORT=$next_port bash "$here/callgrind.sh" ||
        die "callgrind.sh failed"
fi
echo "total_seconds=$(($(date +%s) - started))" >>"$OUT/meta.txt"

python3 "$here/results.py" "$OUT" >"$RESULTS_MD"
log "raw figures in $OUT; report written to $RESULTS_MD ($(($(date +%s) - started)) s in all)"
