#!/usr/bin/env bash
# Traffic shapes beside the keep-alive GETs of run.sh and full.sh: rampart next to nginx and
# HAProxy (one worker each, their plain configs of this directory) on
#   close     GET /up with `connection: close`: a new client connection for every request
#   get64k    GET of a 64 KiB file
#   get1m     GET of a 1 MiB file
#   post16k   POST of 16 KiB, which the upstream reads and discards: more than one read of
#             rampart's 8 KiB buffer, within what its lean server reads whole (64 KiB)
#   post256k  POST of 256 KiB, which the upstream reads and discards
#   mix16k    GET /up, and every tenth request a POST of 16 KiB, on the same connections
#             (the upstream for these six: one nginx worker, nginx-files.conf)
#   post2k    POST of 2 KiB to `rampart sample`'s `/`, which answers before reading the body
#             (as hyper serves any handler that ignores it): a proxy that sends the head
#             alone loses the upstream connection with each request
# Prints a Markdown table: per shape and target the median req/s, p99 and MB/s over the rounds,
# CPU per request over all of them, errors (non-2xx and socket errors), peak RSS, and rampart's
# req/s and CPU per request as ratios to the better peer's.
#
# Settings (environment), defaults in brackets:
#   SHAPES ["close get64k get1m post16k post256k mix16k post2k"]  ROUNDS [3]  DURATION [5s]  CONNS [16]
#   RAMPART_BIN [cargo build --release]  BASE_PORT [18900]
set -euo pipefail

SHAPES=${SHAPES:-close get64k get1m post16k post256k mix16k post2k}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
BASE_PORT=${BASE_PORT:-18900}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
LOG_TAG=shapes
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"
# shellcheck disable=SC2119 # nothing beyond what it always installs (wrk, nginx, HAProxy, curl)
install_missing
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
rampart_bin

mkdir -p "$work/www"
# nginx's worker runs as nobody when started as root: it must be able to read the files.
chmod 755 "$work" "$work/www"
head -c 65536 /dev/urandom >"$work/www/64k.bin"
head -c 1048576 /dev/urandom >"$work/www/1m.bin"
for size in 2048 16384 262144; do
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n' "$size" >"$work/post$size.lua"
done
# The requests are made in init(), once wrk has set the target's path and host.
cat >"$work/mix16k.lua" <<'EOF'
local n, get, post = 0, nil, nil
init = function()
    get = wrk.format("GET")
    post = wrk.format("POST", nil, nil, string.rep("x", 16384))
end
request = function()
    n = n + 1
    if n % 10 == 0 then return post end
    return get
end
EOF

targets=(nginx haproxy rampart)
declare -A listen=()

# proxies UPSTREAM PATH : (re)starts the three proxies in front of UPSTREAM; each must answer
# 200 on PATH.
proxies() {
    local name
    for name in "${targets[@]}"; do
        [[ -n ${pid_of[$name]:-} ]] && stop "$name"
    done
    upstream=$1
    take_port; listen[nginx]=127.0.0.1:$port
    mkdir -p "$work/nginx"
    render_tmpl "$here/nginx.conf" "$work/nginx/nginx.conf" "$work/nginx" "${listen[nginx]}" "" 1
    start nginx "$(command -v nginx)" -p "$work/nginx" -e "$work/nginx/error.log" \
        -c "$work/nginx/nginx.conf"
    take_port; listen[haproxy]=127.0.0.1:$port
    render_tmpl "$here/haproxy.cfg" "$work/haproxy.cfg" "$work" "${listen[haproxy]}" "" 1
    start haproxy "$(command -v haproxy)" -db -f "$work/haproxy.cfg"
    take_port; listen[rampart]=127.0.0.1:$port
    take_port
    render_tmpl "$here/rampart.yaml" "$work/rampart.yaml" "$work" "${listen[rampart]}" \
        "127.0.0.1:$port" 1
    start rampart env RAMPART_WORKERS=1 RUST_LOG=warn "$rampart" run \
        --config "$work/rampart.yaml" --log-format text
    for name in "${targets[@]}"; do wait_http "$name" "http://${listen[$name]}$2"; done
}

take_port
files=127.0.0.1:$port
upstream=$files
render_tmpl "$here/nginx-files.conf" "$work/files.conf" "$work" "$files" "" 1
start files "$(command -v nginx)" -p "$work" -e "$work/files-error.log" -c "$work/files.conf"
wait_http files "http://$files/up"
take_port
sample=127.0.0.1:$port
start sample "$rampart" sample --listen "$sample" --log-format text
wait_http sample "http://$sample/"
behind=

raw="$work/raw.txt"
: >"$raw"
for shape in $SHAPES; do
    case $shape in
        close) want=$files args=(-H "Connection: close") path=/up ;;
        get64k) want=$files args=() path=/64k.bin ;;
        get1m) want=$files args=() path=/1m.bin ;;
        post16k) want=$files args=(-s "$work/post16384.lua") path=/up ;;
        post256k) want=$files args=(-s "$work/post262144.lua") path=/up ;;
        mix16k) want=$files args=(-s "$work/mix16k.lua") path=/up ;;
        post2k) want=$sample args=(-s "$work/post2048.lua") path=/ ;;
        *) die "unknown shape $shape (close get64k get1m post16k post256k mix16k post2k)" ;;
    esac
    if [[ $behind != "$want" ]]; then
        if [[ $want == "$files" ]]; then proxies "$want" /up; else proxies "$want" /; fi
        behind=$want
    fi
    for name in "${targets[@]}"; do
        curl -fsS -o /dev/null --max-time 5 "http://${listen[$name]}$path" ||
            die "$name does not answer 200 on $path"
    done
    for round in $(seq "$ROUNDS"); do
        # The order rotates each round, so no target always runs first or last.
        for i in 0 1 2; do
            name=${targets[$(((i + round) % 3))]}
            before=$(cpu_ticks "${pid_of[$name]}")
            run_wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${args[@]}" \
                "http://${listen[$name]}$path" >"$work/wrk.txt"
            after=$(cpu_ticks "${pid_of[$name]}")
            awk -v shape="$shape" -v name="$name" -v ticks=$((after - before)) \
                -v hz="$(getconf CLK_TCK)" -v rss="$(status_kib VmHWM "${pid_of[$name]}")" '
                function ms(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
                    return n * (u == "us" ? 0.001 : u == "ms" ? 1 : u == "s" ? 1000 : 60000) }
                function mb(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
                    return n * (u == "GB" ? 1024 : u == "MB" ? 1 : u == "KB" ? 1 / 1024 : 1 / 1048576) }
                / requests in / { n = $1 }
                /^Requests\/sec/ { rps = $2 }
                /^Transfer\/sec/ { bw = mb($2) }
                $1 == "99%" { p99 = ms($2) }
                /Non-2xx/ { err += $5 }
                /Socket errors/ { err += $4 + $6 + $8 + $10 }
                END { printf "%s %s %s %s %.3f %.2f %d %d %d\n", shape, name, n, rps, p99, bw,
                      ticks * 1000000 / hz, err + 0, rss }' "$work/wrk.txt" >>"$raw"
            log "$(tail -n 1 "$raw")"
        done
    done
done

# Medians over the rounds; CPU per request over all of them.
awk -v rounds="$ROUNDS" -v conns="$CONNS" -v dur="$DURATION" '
    function median(s,  a, k, i, j, t) {
        k = split(s, a, " ")
        for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) {
            t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
    {
        key = $1 SUBSEP $2
        if (!(key in reqs)) { order[++m] = key; if (!($1 in seen)) { shapes[++ns] = $1; seen[$1] = 1 } }
        reqs[key] += $3; rps[key] = rps[key] " " $4; p99[key] = p99[key] " " $5
        bw[key] = bw[key] " " $6; us[key] += $7; err[key] += $8
        if ($9 > rss[key]) rss[key] = $9
    }
    END {
        printf "wrk -t1 -c%s -d%s, %s rounds (order rotated); medians over the rounds, CPU per request over all of them.\n\n", conns, dur, rounds
        print "| shape | target | req/s | p99 ms | MB/s | CPU µs/request | errors | peak RSS MiB |"
        print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= m; i++) {
            split(order[i], kv, SUBSEP)
            printf "| %s | %s | %.0f | %.2f | %.1f | %.1f | %d | %.1f |\n", kv[1], kv[2],
                median(rps[order[i]]), median(p99[order[i]]), median(bw[order[i]]),
                us[order[i]] / reqs[order[i]], err[order[i]], rss[order[i]] / 1024
        }
        print ""
        print "| shape | rampart req/s ÷ better peer | rampart CPU/request ÷ better peer |"
        print "| --- | ---: | ---: |"
        for (i = 1; i <= ns; i++) {
            s = shapes[i]; r = s SUBSEP "rampart"; best = ""; bestrps = -1
            for (j = 1; j <= m; j++) {
                split(order[j], kv, SUBSEP)
                if (kv[1] == s && kv[2] != "rampart" && median(rps[order[j]]) > bestrps) {
                    bestrps = median(rps[order[j]]); best = order[j] }
            }
            split(best, bk, SUBSEP)
            printf "| %s | %.2f× %s | %.2f× %s |\n", s, median(rps[r]) / bestrps, bk[2],
                (us[r] / reqs[r]) / (us[best] / reqs[best]), bk[2]
        }
    }' "$raw"
