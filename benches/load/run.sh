#!/usr/bin/env bash
# Load benchmark: rampart as a plain proxy next to nginx and HAProxy, all in front of the same
# upstream, measured with wrk in interleaved rounds. See benches/load/README.md.
#
# Settings (environment):
#   ROUNDS=3 DURATION=10s CONNS=32 THREADS=1   wrk rounds and shape, per target and round
#   WARMUP=3s                                  wrk run per target before measuring
#   BASE_PORT=18700                            ports BASE_PORT..BASE_PORT+4 on 127.0.0.1
#   RAMPART_BIN=path                           use this binary, skip `cargo build --release`
#   UPSTREAM_WORKERS=N                         worker threads of the sample upstream (default:
#                                              rampart's default, one per core)
#   BENCH_STANDIN=1                            upstream = an nginx `return 200`, no rampart
#                                              target (checks the harness itself only)
#   TLS=1                                      every proxy terminates TLS with one generated
#                                              certificate; wrk over https, once on keep-alive
#                                              connections and once with a new connection
#                                              (and handshake) per request
#   IDLE_CONNS=2000                            with TLS=1: idle TLS keep-alive connections
#                                              opened to each proxy after the runs, for its
#                                              RSS per 1,000 of them, HTTP/1.1 and then (the
#                                              proxy restarted) HTTP/2 (0: skip)
#   RAMPART_ACCESS_LOG=path                    rampart writes its access log to this file
#                                              (synced after every run, so its writeback is
#                                              not charged to the next target)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-3s}
BASE_PORT=${BASE_PORT:-18700}
BENCH_STANDIN=${BENCH_STANDIN:-0}
TLS=${TLS:-0}
IDLE_CONNS_SET=${IDLE_CONNS:+1}
IDLE_CONNS=${IDLE_CONNS:-2000}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_md="$repo/target/load-bench.md"

LOG_TAG=load
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
if [[ -n $IDLE_CONNS_SET && $TLS != 1 ]]; then
    log "IDLE_CONNS is measured only with TLS=1 (full.sh measures plain idle connections); ignored"
fi

# --- system packages -------------------------------------------------------------------------
if [[ $TLS == 1 ]]; then install_missing openssl=openssl; else install_missing; fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- processes: started once, killed by PID on exit (lib.sh) --------------------------------
bench_setup

# The TLS pieces of each template: empty (or a comment) in plaintext mode.
scheme=http
tls_nginx_listen="" tls_nginx="# plaintext" tls_haproxy="" tls_rampart="# plaintext"
if [[ $TLS == 1 ]]; then
    # One certificate for every proxy: ECDSA P-256, the common choice for a new deployment.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$work/key.pem" -out "$work/cert.pem" >"$work/openssl.log" 2>&1 ||
        die "openssl could not make the certificate: $(cat "$work/openssl.log")"
    cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"
    scheme=https
    # http2: ALPN offers h2 too (the idle HTTP/2 connections below); wrk asks for no
    # protocol and is served HTTP/1.1, as by the others.
    tls_nginx_listen=" ssl http2"
    # TLS 1.3 named: Debian's nginx 1.22 offers only up to TLS 1.2 by default (its default
    # gained 1.3 in 1.23.4), and its resumed TLS 1.2 sessions skip the key exchange the others'
    # resumed TLS 1.3 sessions make.
    tls_nginx="ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
    tls_haproxy=" ssl crt $work/haproxy.pem alpn h2,http/1.1"
    tls_rampart="tls: { cert: $work/cert.pem, key: $work/key.pem }"
fi

render() { # render TEMPLATE OUT LISTEN [ADMIN]
    sed -e "s|@DIR@|$work|g" -e "s|@UPSTREAM@|$upstream|g" \
        -e "s|@LISTEN@|$3|g" -e "s|@ADMIN@|${4:-}|g" -e "s|@WORKERS@|1|g" \
        -e "s|@TLS_NGINX_LISTEN@|$tls_nginx_listen|g" -e "s|@TLS_NGINX@|$tls_nginx|g" \
        -e "s|@TLS_HAPROXY@|$tls_haproxy|g" -e "s|@TLS_RAMPART@|$tls_rampart|g" "$1" >"$2"
}

p_up=$BASE_PORT p_rampart=$((BASE_PORT + 1)) p_admin=$((BASE_PORT + 2))
p_nginx=$((BASE_PORT + 3)) p_haproxy=$((BASE_PORT + 4))
p_base=$((BASE_PORT + 5)) p_base_admin=$((BASE_PORT + 6))
for p in "$p_up" "$p_rampart" "$p_admin" "$p_nginx" "$p_haproxy"; do
    port_in_use "$p" && die "127.0.0.1:$p is in use; set BASE_PORT to a free range"
done
upstream=127.0.0.1:$p_up
nginx_bin=$(command -v nginx)

# --- the upstream ---------------------------------------------------------------------------
declare -a targets=(direct)
declare -A port=([direct]=$p_up)
declare -A url=([direct]="http://$upstream/")   # the upstream is plaintext in both modes
if [[ $BENCH_STANDIN == 1 ]]; then
    log "BENCH_STANDIN=1: nginx stand-in upstream, rampart not measured"
    render "$here/nginx-standin.conf" "$work/standin.conf" "$upstream"
    start upstream "$nginx_bin" -p "$work" -e "$work/standin-error.log" -c "$work/standin.conf"
else
    rampart_bin
    sample_help=$("$rampart" sample --help 2>&1 || true)
    [[ $sample_help == *--listen* ]] ||
        die "this rampart build has no working 'sample --listen ADDR' subcommand (the built-in" \
            "upstream the benchmark proxies to). BENCH_STANDIN=1 checks the harness without rampart."
    start upstream env ${UPSTREAM_WORKERS:+RAMPART_WORKERS=$UPSTREAM_WORKERS} \
        "$rampart" sample --listen "$upstream"
fi
wait_http upstream "http://$upstream/"

# --- the proxies ----------------------------------------------------------------------------
if [[ $BENCH_STANDIN != 1 ]]; then
    render "$here/rampart.yaml" "$work/rampart.yaml" "127.0.0.1:$p_rampart" "127.0.0.1:$p_admin"
    if [[ -n ${RAMPART_ACCESS_LOG:-} ]]; then
        # The access log's cost: one JSON line per request to this file.
        log_to "$RAMPART_ACCESS_LOG" "$work/rampart.yaml"
    fi
    "$rampart" validate --config "$work/rampart.yaml" >"$work/validate.log" 2>&1 ||
        die "rampart refused the bench config: $(cat "$work/validate.log")"
    start rampart env RAMPART_WORKERS=1 RUST_LOG=warn \
        "$rampart" run --config "$work/rampart.yaml" --log-format text
    wait_http rampart "http://127.0.0.1:$p_admin/readyz"
    wait_http rampart "$scheme://127.0.0.1:$p_rampart/"
    targets+=(rampart)
    port[rampart]=$p_rampart
    if [[ -n ${RAMPART_BASE_BIN:-} ]]; then
        # Another rampart build (e.g. before a change) in the same interleaved rounds.
        render "$here/rampart.yaml" "$work/base.yaml" "127.0.0.1:$p_base" "127.0.0.1:$p_base_admin"
        start rampart-base env RAMPART_WORKERS=1 RUST_LOG=warn \
            "$RAMPART_BASE_BIN" run --config "$work/base.yaml" --log-format text
        wait_http rampart-base "http://127.0.0.1:$p_base_admin/readyz"
        targets+=(rampart-base)
        port[rampart-base]=$p_base
    fi
fi

render "$here/nginx.conf" "$work/nginx.conf" "127.0.0.1:$p_nginx"
start nginx "$nginx_bin" -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf"
wait_http nginx "$scheme://127.0.0.1:$p_nginx/"
targets+=(nginx)
port[nginx]=$p_nginx

render "$here/haproxy.cfg" "$work/haproxy.cfg" "127.0.0.1:$p_haproxy"
start haproxy haproxy -db -f "$work/haproxy.cfg"
wait_http haproxy "$scheme://127.0.0.1:$p_haproxy/"
targets+=(haproxy)
port[haproxy]=$p_haproxy
for t in "${targets[@]}"; do
    [[ $t == direct ]] || url[$t]="$scheme://127.0.0.1:${port[$t]}/"
done

# Connection modes measured: keep-alive always; with TLS also a new connection per request,
# which puts a full handshake in front of every request.
declare -a modes=(keepalive)
[[ $TLS == 1 ]] && modes+=(close)

# --- measuring ------------------------------------------------------------------------------
# measure TARGET MODE ROUND : one wrk run; appends "target mode round rps p50 p99 errors" to
# results. MODE close sends `Connection: close`, so every request opens a new connection.
measure() {
    local t=$1 m=$2 r=$3 f="$work/wrk-$1-$2-$3.txt" rps p50 p99 errs reqs cpu0 cpu1 who=$1
    local -a hdr=()
    [[ $m == close ]] && hdr=(-H "Connection: close")
    [[ $t == direct ]] && who=upstream
    cpu0=$(cpu_ticks "${pid_of[$who]}")
    run_wrk -t "$THREADS" -c "$CONNS" -d "$DURATION" --latency "${hdr[@]}" "${url[$t]}" >"$f"
    cpu1=$(cpu_ticks "${pid_of[$who]}")
    reqs=$(awk '/requests in/ {print $1; exit}' "$f")
    # With the access log on, flush its dirty pages now: left to the kernel's writeback, they
    # would be written during (and cost) the next target's run.
    if [[ -n ${RAMPART_ACCESS_LOG:-} ]]; then sync; fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
    # Non-2xx answers and socket errors: a proxy that fails fast must not look fast.
    errs=$(awk '/Non-2xx or 3xx responses:/ {e += $NF}
                /Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
                END {print e + 0}' "$f")
    [[ -n $rps && -n $reqs && $p50 != nan && $p99 != nan ]] || die "cannot parse wrk output: $(cat "$f")"
    printf '%s %s %s %s %s %s %s %s %s\n' "$t" "$m" "$r" "$rps" "$p50" "$p99" "$errs" "$reqs" \
        "$((cpu1 - cpu0))" >>"$work/results"
    log "$(printf 'round %s %-8s %-9s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %s' \
        "$r" "$t" "$m" "$rps" "$p50" "$p99" "$errs")"
}

log "warm-up: $WARMUP per target"
for t in "${targets[@]}"; do
    run_wrk -t "$THREADS" -c "$CONNS" -d "$WARMUP" "${url[$t]}" >/dev/null
done

log "measuring: $ROUNDS rounds x ${#targets[@]} targets x ${modes[*]} x $DURATION ($CONNS connections, $THREADS wrk threads)"
: >"$work/results"
n=${#targets[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no target always runs first or last.
    for m in "${modes[@]}"; do
        for ((i = 0; i < n; i++)); do
            measure "${targets[$(((i + r - 1) % n))]}" "$m" "$r"
        done
    done
done

# Peak RSS (VmHWM) summed over a target's processes (nginx: master + worker), read before
# anything is stopped. "direct" is the upstream itself, which served every target's load.
peak_rss_mib() { mib "$(status_kib VmHWM "$1")"; }
declare -A rss=()
for t in "${targets[@]}"; do
    if [[ $t == direct ]]; then rss[$t]=$(peak_rss_mib "${pid_of[upstream]}"); else rss[$t]=$(peak_rss_mib "${pid_of[$t]}"); fi
done

# With TLS: each proxy's RSS per 1,000 idle TLS connections, each past one request (after the
# peak above, which they must not raise), summed over its processes: HTTP/1.1 first, then
# HTTP/2 in the proxy started afresh, so that those do not reuse what the first ones freed.
declare -A idle_tls=() idle_h2=()
if [[ $TLS == 1 ]] && ((IDLE_CONNS > 0)); then
    for t in "${targets[@]}"; do
        [[ $t == direct ]] && continue
        idle_tls[$t]=$(idle_per_1000 "$t" "${port[$t]}" "$IDLE_CONNS" idle-tls "$work/cert.pem")
        restart "$t" "${url[$t]}"
        idle_h2[$t]=$(idle_per_1000 "$t" "${port[$t]}" "$IDLE_CONNS" idle-h2-tls "$work/cert.pem")
    done
fi

# median COLUMN TARGET MODE : median over rounds of a results column (4 rps, 5 p50, 6 p99).
median() {
    awk -v c="$1" -v t="$2" -v m="$3" '$1 == t && $2 == m {print $c}' "$work/results" | sort -g |
        awk '{v[NR] = $1} END {
            if (NR == 0) { print "nan"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m }'
}
errors_of() { awk -v t="$1" -v m="$2" '$1 == t && $2 == m {e += $7} END {print e + 0}' "$work/results"; }
# cpu_of TARGET MODE : CPU µs per request over all rounds (the upstream's for direct).
clk_tck=$(getconf CLK_TCK)
cpu_of() {
    awk -v t="$1" -v m="$2" -v k="$clk_tck" '$1 == t && $2 == m {n += $8; c += $9}
        END {if (n > 0) printf "%.1f", c / k * 1e6 / n; else print "nan"}' "$work/results"
}

# Medians keyed "target mode".
declare -A med_rps=() med_p50=() med_p99=()
for m in "${modes[@]}"; do
    for t in "${targets[@]}"; do
        med_rps[$t $m]=$(median 4 "$t" "$m")
        med_p50[$t $m]=$(median 5 "$t" "$m")
        med_p99[$t $m]=$(median 6 "$t" "$m")
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# table MODE : the rows and ratios of one connection mode.
table() {
    local m=$1 t o label
    echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in "${targets[@]}"; do
        label=$t
        [[ $t == direct ]] && label="direct (upstream only; CPU = upstream's)"
        [[ $t == direct && $TLS == 1 ]] && label="direct (upstream only, plaintext; CPU = upstream's)"
        printf '| %s | %.0f | %.3f | %.3f | %s | %s | %s |\n' "$label" "${med_rps[$t $m]}" \
            "${med_p50[$t $m]}" "${med_p99[$t $m]}" "$(cpu_of "$t" "$m")" "${rss[$t]}" \
            "$(errors_of "$t" "$m")"
    done
    echo
    if [[ -n ${med_rps[rampart $m]:-} ]]; then
        echo "| rampart vs | req/s (>1 better) | p50 (<1 better) | p99 (<1 better) | CPU/req (<1 better) | peak RSS (<1 better) |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        for o in nginx haproxy; do
            printf '| %s | %s | %s | %s | %s | %s |\n' "$o" \
                "$(ratio "${med_rps[rampart $m]}" "${med_rps[$o $m]}")" \
                "$(ratio "${med_p50[rampart $m]}" "${med_p50[$o $m]}")" \
                "$(ratio "${med_p99[rampart $m]}" "${med_p99[$o $m]}")" \
                "$(ratio "$(cpu_of rampart "$m")" "$(cpu_of "$o" "$m")")" \
                "$(ratio "${rss[rampart]}" "${rss[$o]}")"
        done
    else
        echo "(rampart not measured: BENCH_STANDIN=1)"
    fi
}

{
    if [[ $TLS == 1 ]]; then
        # shellcheck disable=SC2016 # the backquotes are markdown
        printf '## Load benchmark: TLS termination (https) of `GET /` (200 "ok\\n")\n'
    else
        # shellcheck disable=SC2016 # the backquotes are markdown
        printf '## Load benchmark: plain proxying of `GET /` (200 "ok\\n")\n'
    fi
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); wrk $THREADS thread(s), $CONNS connections,"
    echo "$ROUNDS rounds x $DURATION per target, interleaved; medians over rounds."
    echo "One worker thread/process per proxy; the same upstream behind all of them."
    if [[ $TLS == 1 ]]; then
        echo "Each proxy terminates TLS (one ECDSA P-256 certificate, the proxy's default TLS"
        echo "settings) and forwards plaintext HTTP/1.1; peak RSS covers both runs."
        echo
        echo "### Keep-alive connections"
        echo
        table keepalive
        echo
        echo "### A new connection per request (\`Connection: close\`: a TLS handshake per request)"
        echo
        table close
        if ((${#idle_tls[@]} > 0)); then
            echo
            echo "### Idle TLS connections"
            echo
            echo "RSS growth while $IDLE_CONNS TLS connections, each past one request, are held open,"
            echo "scaled to 1,000; summed over the proxy's processes. HTTP/1.1 keep-alive connections"
            echo "(\`client.py idle-tls\`), then, in the proxy restarted, HTTP/2 ones (ALPN h2,"
            echo "\`client.py idle-h2-tls\`)."
            echo
            echo "| target | MiB per 1,000 idle TLS conns, HTTP/1.1 | still open | HTTP/2 | still open |"
            echo "| --- | ---: | ---: | ---: | ---: |"
            for t in "${targets[@]}"; do
                [[ -n ${idle_tls[$t]:-} ]] || continue
                read -r per alive <<<"${idle_tls[$t]}"
                read -r per2 alive2 <<<"${idle_h2[$t]}"
                printf '| %s | %s | %s of %s | %s | %s of %s |\n' "$t" "$per" "$alive" \
                    "$IDLE_CONNS" "$per2" "$alive2" "$IDLE_CONNS"
            done
        fi
    else
        echo
        table keepalive
    fi
} >"$work/table.md"

mkdir -p "$(dirname "$out_md")"
cp "$work/table.md" "$out_md"
cat "$work/table.md"
echo
log "table written to $out_md"
