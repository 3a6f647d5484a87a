# Shared pieces of the load benchmark scripts (run.sh, full.sh, callgrind.sh); sourced, not run.
#
# The sourcing script sets LOG_TAG (the prefix of its log lines) before sourcing, then calls
# `bench_setup` once: it makes the temporary directory $work and installs the trap that stops
# every process started with `start` (by PID, descendants included), checks none is left and
# removes $work, however the script ends.
# shellcheck shell=bash

LOG_TAG=${LOG_TAG:-load}
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# install_missing [PROGRAM=PACKAGE]... : wrk, haproxy, curl and nginx, plus the given programs,
# installed with apt when missing (sudo when not root).
install_missing() {
    local -a missing=() pair
    local spec
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    for spec in "$@"; do
        IFS='=' read -r -a pair <<<"$spec"
        command -v "${pair[0]}" >/dev/null 2>&1 || missing+=("${pair[1]}")
    done
    if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
        missing+=(nginx-light)
    fi
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get; install them"
    local -a sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install ${missing[*]}"
        sudo=(sudo)
    fi
    log "installing missing packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    # nginx-light is gone from newer releases; fall back to plain nginx.
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        missing=("${missing[@]/nginx-light/nginx}")
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# --- processes: started with `start`, killed by PID on exit ----------------------------------
declare -a pids=()      # every process we started
declare -A pid_of=()    # name -> PID of its main process
declare -A cmd_of=()    # name -> its command line, quoted (for restart)
wrk_pid=

# All descendants of a PID (nginx workers), read from /proc so procps is not needed.
descendants() {
    local parent=$1 stat pid ppid rest
    for stat in /proc/[0-9]*/stat; do
        { read -r rest <"$stat"; } 2>/dev/null || continue
        pid=${rest%% *}
        rest=${rest##*) }                 # drop "pid (comm) ", comm may hold spaces
        ppid=${rest#* }
        ppid=${ppid%% *}
        if [[ $ppid == "$parent" ]]; then
            echo "$pid"
            descendants "$pid"
        fi
    done
}

cleanup() {
    local rc=$? pid all=() left=()
    trap - EXIT INT TERM
    # The load generator, and what runs under it (sched.sh starts wrk under /usr/bin/time,
    # which would leave wrk running if only it were killed).
    if [[ -n ${wrk_pid:-} ]]; then
        mapfile -t all < <(descendants "$wrk_pid")
        kill -TERM "$wrk_pid" "${all[@]}" 2>/dev/null || true
        all=()
    fi
    for pid in "${pids[@]}"; do
        all+=("$pid")
        mapfile -t -O "${#all[@]}" all < <(descendants "$pid")
    done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        left=()
        for pid in "${all[@]}"; do [[ -d /proc/$pid ]] && left+=("$pid"); done
        ((${#left[@]} == 0)) && break
        sleep 0.1
    done
    for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    left=()
    for pid in "${all[@]}"; do
        # A reaped PID may already be reused by another program: compare the start time too
        # would be exact; the window is tiny, so report and move on.
        [[ -d /proc/$pid ]] && left+=("$pid")
    done
    if ((${#left[@]} > 0)); then
        log "warning: processes still alive after cleanup: ${left[*]}"
        rc=1
    else
        log "cleanup: ${#all[@]} processes stopped"
    fi
    if [[ $rc -ne 0 ]] && compgen -G "$work/*.log" >/dev/null; then
        log "logs of the failed run (last lines):"
        tail -n 5 "$work"/*.log >&2 || true
    fi
    rm -rf "$work"
    exit "$rc"
}

bench_setup() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-$LOG_TAG.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# rampart_bin : sets `rampart` to RAMPART_BIN, or builds the release binary of the repo
# (`repo` must be set) and takes that; dies if there is no executable.
rampart_bin() {
    if [[ -n ${RAMPART_BIN:-} ]]; then
        rampart=$RAMPART_BIN
    else
        log "cargo build --release"
        local repo_dir=${repo:?rampart_bin needs repo}
        (cd "$repo_dir" && cargo build --release) || die "cargo build --release failed"
        rampart="${CARGO_TARGET_DIR:-$repo_dir/target}/release/rampart"
        [[ $rampart == /* ]] || rampart="$repo_dir/$rampart"
    fi
    [[ -x $rampart ]] || die "no rampart binary at $rampart"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# take_port : sets `port` to the next free loopback port, counting up from BASE_PORT (set by the
# caller); `next_port` is where the next call starts looking.
take_port() {
    next_port=${next_port:-${BASE_PORT:?take_port needs BASE_PORT}}
    while port_in_use "$next_port"; do next_port=$((next_port + 1)); done
    # shellcheck disable=SC2034 # read by the caller
    port=$next_port
    next_port=$((next_port + 1))
}

# start_standin [PREFIX...] : takes a free port for `upstream` and serves it with the
# one-worker nginx stand-in (nginx-standin.conf: a fixed 200), started behind PREFIX (taskset).
# shellcheck disable=SC2154 # `here` is the sourcing script's directory, beside this file
start_standin() {
    take_port
    upstream=127.0.0.1:$port
    render_tmpl "$here/nginx-standin.conf" "$work/upstream.conf" "$work" "$upstream" "" 1
    start upstream "$@" "$(command -v nginx)" -p "$work" -e "$work/upstream-error.log" \
        -c "$work/upstream.conf"
    wait_http upstream "http://$upstream/"
}

# log_to FILE YAML : turns on the access log of the `inbound` listener of a config rendered from
# rampart.yaml, every line to FILE.
log_to() {
    sed -i "s|^    direction: inbound\$|&\n    access_log: { to: $1 }|" "$2"
}

# start NAME CMD... : runs CMD in the background, output to $work/NAME.log.
start() {
    local name=$1
    shift
    "$@" >>"$work/$name.log" 2>&1 &
    pids+=("$!")
    pid_of[$name]=$!
    cmd_of[$name]=$(printf '%q ' "$@")
}

# restart NAME URL : stops NAME and starts it again with the same command, fresh (its memory
# as at start), then waits until URL answers 200.
restart() {
    local name=$1 url=$2 cmd=${cmd_of[$1]}
    stop "$name"
    eval "start \"\$name\" $cmd"
    wait_http "$name" "$url"
}

# stop NAME : stops one started process (and its descendants) by PID, waits until it is gone.
stop() {
    local name=$1 main all=() pid
    main=${pid_of[$name]}
    all=("$main")
    mapfile -t -O 1 all < <(descendants "$main")
    kill -TERM "$main" 2>/dev/null || true
    for _ in $(seq 300); do
        [[ -d /proc/$main ]] || break
        sleep 0.1
    done
    for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait "$main" 2>/dev/null || true
    # Forget it, so the exit trap never signals a PID that may since belong to another program.
    local -a keep=()
    for pid in "${pids[@]}"; do [[ $pid == "$main" ]] || keep+=("$pid"); done
    pids=("${keep[@]}")
    unset "pid_of[$name]"
}

# wait_http NAME URL [TRIES] : until URL answers 200 (0.1 s apart), or fail with the log. curl
# gets the options in `wait_curl` too (e.g. --http2-prior-knowledge).
declare -a wait_curl=()
wait_http() {
    local name=$1 url=$2 tries=${3:-100}
    for _ in $(seq "$tries"); do
        curl -kfsS "${wait_curl[@]}" -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        [[ -d /proc/${pid_of[$name]} ]] || die "$name exited: $(tail -n 5 "$work/$name.log")"
        sleep 0.1
    done
    die "$name did not answer 200 on $url in time: $(tail -n 5 "$work/$name.log")"
}

# to_ms VALUE : wrk latency ("812.00us", "1.20ms", "2.01s", "1.00m") in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
        if (f < 0 || v == "") { print "nan"; exit }
        printf "%.3f", n * f }'
}

# run_wrk ARGS... : wrk in the background and `wait`, so a signal to the script stops the run
# at once (bash runs traps only between foreground commands) and cleanup kills wrk too.
run_wrk() {
    wrk "$@" &
    wrk_pid=$!
    wait "$wrk_pid"
    wrk_pid=
}

# proc_pids MAIN : MAIN and its descendants (nginx: master and workers).
proc_pids() { echo "$1"; descendants "$1"; }

# status_kib FIELD MAIN : a /proc/PID/status field (VmHWM, VmRSS) in KiB, summed over MAIN
# and its descendants.
status_kib() {
    local field=$1 pid kib total=0
    for pid in $(proc_pids "$2"); do
        kib=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# user_sys_ticks MAIN : "USER SYSTEM" CPU time (clock ticks) of MAIN and its descendants, from
# fields 14 and 15 of /proc/PID/stat (the whole thread group for a multi-threaded process).
user_sys_ticks() {
    local pid rest user=0 sys=0
    local -a fields
    for pid in $(proc_pids "$1"); do
        { read -r rest <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${rest##*) }                 # fields from 3 (state) on
        read -r -a fields <<<"$rest"
        user=$((user + fields[11]))       # utime is field 14 = index 11 from field 3
        sys=$((sys + fields[12]))
    done
    echo "$user $sys"
}

# cpu_ticks MAIN : user + system CPU time (clock ticks) of MAIN and its descendants.
cpu_ticks() {
    local user sys
    read -r user sys <<<"$(user_sys_ticks "$1")"
    echo $((user + sys))
}

# host_ticks : "STEAL TOTAL", the machine's clock ticks (all CPUs) stolen by the hypervisor and
# in all, from /proc/stat. A run during which the host took a share of our cores from us is
# a disturbed run; results.py shows that share beside the figures.
host_ticks() {
    # Fields 2-9: user nice system idle iowait irq softirq steal (guest time is inside user).
    awk '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t; exit}' /proc/stat
}

# render_tmpl TEMPLATE OUT DIR LISTEN ADMIN WORKERS : fills in a plaintext config template
# (rampart*.yaml, nginx.conf, haproxy.cfg); the upstream is $upstream, set by the caller.
# shellcheck disable=SC2154
render_tmpl() {
    sed -e "s|@DIR@|$3|g" -e "s|@UPSTREAM@|$upstream|g" -e "s|@LISTEN@|$4|g" \
        -e "s|@ADMIN@|$5|g" -e "s|@WORKERS@|$6|g" -e "s|@TLS_NGINX_LISTEN@||g" \
        -e "s|@TLS_NGINX@|# plaintext|g" -e "s|@TLS_HAPROXY@||g" -e "s|@TLS_RAMPART@|# plaintext|g" \
        "$1" >"$2"
}

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# h2c_only CONF LISTEN : makes the listener on LISTEN of a rendered nginx.conf or haproxy.cfg
# speak HTTP/2 with prior knowledge (h2c), and nothing else.
h2c_only() {
    sed -i -e "s|listen $2;|listen $2 http2;|" -e "s|bind $2\$|bind $2 proto h2|" "$1"
}

# h2load_n URL N CONNS OUT [ARGS...] : N requests `GET URL` over h2c from h2load, CONNS
# connections of 10 streams at a time each (ARGS go to h2load after those: `--h1 -m 1` for
# HTTP/1.1, one request at a time on each connection); its report goes to OUT. Fails with
# h2load's counts unless all N succeeded.
h2load_n() {
    local url=$1 n=$2 conns=$3 out=$4
    shift 4
    h2load -c "$conns" -m 10 -n "$n" "$@" "$url" >"$out" 2>&1 || true
    grep -q "requests: $n total, $n started, $n done, $n succeeded" "$out" ||
        die "h2load to $url: $(grep -E '^requests:|status codes:' "$out")"
}

# idle_per_1000 NAME PORT COUNT MODE [CERT] : holds COUNT idle connections to 127.0.0.1:PORT,
# each past one request (`client.py MODE`: idle, idle-tls, idle-h2 or idle-h2-tls, CERT for the
# TLS ones); logs NAME's RSS (summed over its processes) before and after, and prints
# "MIB_PER_1000 STILL_OPEN".
# shellcheck disable=SC2154 # `here` is the sourcing script's directory, beside this file
idle_per_1000() {
    local name=$1 port=$2 count=$3 mode=$4 before after alive
    local -a ps cert=()
    [[ -n ${5:-} ]] && cert=("$5")
    mapfile -t ps < <(proc_pids "${pid_of[$name]}")
    read -r before after alive < <(python3 "$here/client.py" "$mode" "$port" "$count" \
        "${cert[@]}" "${ps[@]}") || die "$name: client.py $mode failed"
    log "$(printf '%s %-8s %d connections: RSS %s -> %s MiB (%s still open)' \
        "$mode" "$name" "$count" "$(mib "$before")" "$(mib "$after")" "$alive")"
    echo "$(awk -v b="$before" -v a="$after" -v n="$count" \
        'BEGIN {printf "%.2f", (a - b) / 1024 * 1000 / n}') $alive"
}
