#!/usr/bin/env bash
# Where rampart's instructions per request go, function by function, counted by callgrind: the
# profile behind callgrind.sh's single figure (issue 22), steady whatever the machine's load.
#
# Starts an upstream (the one-worker nginx stand-in, which answers `connection: keep-alive` as
# most servers do, or `rampart sample`), then rampart under `valgrind --tool=callgrind` with one
# worker in front of it; sends WARMUP keep-alive `GET /` from client.py, zeroes the counts
# (`callgrind_control -z`), sends REQUESTS more and dumps the counts (`callgrind_control -d`), so
# start-up, warm-up and shutdown are left out. Prints the instructions per request, the
# functions that cost most (self cost, per request) and the same grouped by kind, and keeps the
# dump in OUT for callgrind_annotate.
#
# Settings (environment), defaults in brackets:
#   CONFIG [rampart]       rampart: the plain proxy (rampart.yaml); policy: the full policy
#                          (rampart-policy.yaml, one tenant: client.py sends no tenant id);
#                          log: the plain proxy with its access log on, every line to a file
#   UPSTREAM [nginx]       nginx (the stand-in) or sample (`rampart sample`, as callgrind.sh)
#   H2 [0]                 1: the requests over HTTP/2 with prior knowledge (h2c), from h2load
#                          (nghttp2-client) on 4 connections, 10 streams at a time on each (each
#                          h2load run opens its 4 connections: their set-up is in the count)
#   CONNS [1]              HTTP/1.1 only: the keep-alive connections the requests are spread
#                          over; 0: each request on a connection of its own (`Connection:
#                          close`), so a connection's accept, set-up and close are in the count
#   LOAD_CONNS [0]         HTTP/1.1 only: >0 sends the counted requests with wrk (1 thread, this
#                          many keep-alive connections, LOAD_SECONDS [10] long) instead of
#                          client.py's one at a time, and divides by the requests wrk completed:
#                          under valgrind rampart is the slowest part, so its worker finds
#                          several requests ready at each wake-up, as under a real load, and the
#                          scheduler's cost per wake-up is shared by them (with client.py each
#                          request wakes the worker twice)
#   HEAD [host]            with LOAD_CONNS only: host: wrk's own head (the request line and
#                          `host`); api: eight lines more, the same on every request, as a
#                          browser's or an API client's request carries them (user-agent, accept,
#                          accept-encoding, accept-language, content-type, x-request-id, a
#                          93-byte cookie, authorization with a 318-byte bearer token: a head of
#                          about 800 bytes)
#   WARMUP [500]  REQUESTS [2000]  TOP [25]  BASE_PORT [18800]
#   DUMP_INSTR [no]        yes: the dump counts each instruction (callgrind's --dump-instr), so
#                          the calls of a function (memcpy) can be told apart by call site
#   RAMPART_BIN [cargo build --release]   OUT [target/bench-callgrind-profile]
#   CACHE_SIM [0]          1: also run callgrind's cache model (32 KiB 8-way level-1 caches
#                          with 64-byte lines, a 32 MiB last level: this machine's, given
#                          because valgrind cannot read them under KVM) and print the misses
#                          of each cache per request; the run takes about twice as long
set -euo pipefail

CONFIG=${CONFIG:-rampart}
UPSTREAM=${UPSTREAM:-nginx}
WARMUP=${WARMUP:-500}
REQUESTS=${REQUESTS:-2000}
TOP=${TOP:-25}
BASE_PORT=${BASE_PORT:-18800}
CACHE_SIM=${CACHE_SIM:-0}
H2=${H2:-0}
CONNS=${CONNS:-1}
LOAD_CONNS=${LOAD_CONNS:-0}
LOAD_SECONDS=${LOAD_SECONDS:-10}
HEAD=${HEAD:-host}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/target/bench-callgrind-profile}

LOG_TAG=callgrind-profile
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

install_missing valgrind=valgrind python3=python3
case $H2 in
    0) ;;
    1) install_missing h2load=nghttp2-client ;;
    *) die "H2 must be 0 or 1, not '$H2'" ;;
esac
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup
((REQUESTS > 0 && WARMUP >= 0)) || die "need REQUESTS > 0 and WARMUP >= 0"
[[ $CONNS =~ ^[0-9]+$ ]] || die "CONNS must be a whole number, not '$CONNS'"
[[ $H2 == 0 || $CONNS == 1 ]] || die "CONNS is for HTTP/1.1; with H2=1 h2load always opens 4 connections"
[[ $LOAD_CONNS =~ ^[0-9]+$ && $LOAD_SECONDS =~ ^[1-9][0-9]*$ ]] ||
    die "LOAD_CONNS must be a whole number and LOAD_SECONDS a positive one"
[[ $H2 == 0 || $LOAD_CONNS == 0 ]] || die "LOAD_CONNS is for HTTP/1.1"
case $HEAD in
    host) head_args=() ;;
    api)
        ((LOAD_CONNS > 0)) || die "HEAD=api needs LOAD_CONNS > 0 (the lines are wrk's)"
        # An ES256 token's shape (header, claims, a 64-byte signature), not one rampart checks.
        token=eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjIwMjYtMTIifQ
        token+=.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20vIiwic3ViIjoidXNlci00ODIxMyIsImF1ZCI6ImFwaSIs
        token+=InRlbmFudCI6ImFjbWUiLCJwbGFuIjoicHJvIiwiaWF0IjoxNzk2NTE1MjAwLCJleHAiOjE3OTY1MTg4MDB9
        token+=.l5EZk7Pbs70nwQL1S5AKqoF3CL7hw67fMIvDiOTVMAc4haWBFBtbioCrJn6sbKRtrpl_63g0SDy1uJaQCBgmHg
        head_args=(
            -H "user-agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
            -H "accept: application/json, text/plain, */*"
            -H "accept-encoding: gzip, deflate, br, zstd"
            -H "accept-language: en-US,en;q=0.9"
            -H "content-type: application/json"
            -H "x-request-id: 6f1c2a9e-3b7d-4e58-9a0c-d2e4f6a8b1c3"
            -H "cookie: session=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08; theme=dark; lang=en"
            -H "authorization: Bearer $token"
        )
        ;;
    *) die "HEAD must be host or api, not '$HEAD'" ;;
esac
case $CONFIG in
    rampart | log) template=$here/rampart.yaml ;;
    policy) template=$here/rampart-policy.yaml ;;
    *) die "CONFIG must be rampart, policy or log, not '$CONFIG'" ;;
esac
case $CACHE_SIM in
    0) cache_args=() ;;
    1) cache_args=(--cache-sim=yes "--I1=32768,8,64" "--D1=32768,8,64" "--LL=33554432,16,64") ;;
    *) die "CACHE_SIM must be 0 or 1, not '$CACHE_SIM'" ;;
esac
rampart_bin

# shellcheck disable=SC2119 # start_standin with no prefix: the stand-in runs unpinned
case $UPSTREAM in
    nginx) start_standin ;;
    sample)
        take_port
        upstream=127.0.0.1:$port
        start upstream env RUST_LOG=warn "$rampart" sample --listen "$upstream" --log-format text
        wait_http upstream "http://$upstream/"
        ;;
    *) die "UPSTREAM must be nginx or sample, not '$UPSTREAM'" ;;
esac

take_port
listen=127.0.0.1:$port
take_port
render_tmpl "$template" "$work/rampart.yaml" "$work" "$listen" "127.0.0.1:$port" 1
[[ $CONFIG == log ]] && log_to "$work/access.jsonl" "$work/rampart.yaml"
mkdir -p "$OUT"
dump=$OUT/callgrind.out
rm -f "$dump" "$dump".*
start rampart env RAMPART_WORKERS=1 RUST_LOG=warn valgrind --tool=callgrind --dump-instr="${DUMP_INSTR:-no}" \
    "${cache_args[@]}" --callgrind-out-file="$dump" \
    "$rampart" run --config "$work/rampart.yaml" --log-format text
# Slow under valgrind: give it up to a minute to answer its first request.
wait_http rampart "http://$listen/" 600
vg_pid=${pid_of[rampart]}

client() {
    if [[ $H2 == 1 ]]; then
        h2load_n "http://$listen/" "$1" 4 "$work/h2load.out"
        return
    fi
    python3 "$here/client.py" requests "${listen##*:}" "$1" "$CONNS" >>"$work/client.log" 2>&1 ||
        die "the client got errors: $(tail -n 3 "$work/client.log")"
}
((WARMUP > 0)) && client "$WARMUP"
callgrind_control -z "$vg_pid" >/dev/null
if ((LOAD_CONNS > 0)); then
    run_wrk "${head_args[@]}" -t1 -c"$LOAD_CONNS" -d"${LOAD_SECONDS}s" "http://$listen/" >"$work/wrk.out" 2>&1
    # Requests still in flight when wrk stops are in the count too: at most LOAD_CONNS of them.
    REQUESTS=$(awk '/requests in/ {print $1}' "$work/wrk.out")
    if ! [[ $REQUESTS =~ ^[1-9][0-9]*$ ]]; then
        die "wrk completed no request: $(cat "$work/wrk.out")"
    fi
    grep -q 'Non-2xx\|Socket errors' "$work/wrk.out" && die "wrk saw errors: $(cat "$work/wrk.out")"
else
    client "$REQUESTS"
fi
callgrind_control -d "$vg_pid" >/dev/null
# The counted requests' dump is the first (`.1`; the old ones were removed above), written by
# valgrind's own thread: wait until its totals line is there.
part=$dump.1
for _ in $(seq 100); do
    grep -qs '^totals:' "$part" && break
    sleep 0.1
done
grep -qs '^totals:' "$part" || die "callgrind wrote no dump: $(tail -n 5 "$work/rampart.log")"
stop rampart

log "$CONFIG, upstream $UPSTREAM$([[ $H2 == 1 ]] && echo ", over h2c")$( ((LOAD_CONNS > 0)) && echo ", wrk on $LOAD_CONNS connections, head $HEAD"), $REQUESTS requests after $WARMUP: dump in $part"
# The report, in Python: callgrind_annotate's self costs per function, per request.
report=$(
    cat <<'EOF'
import re
import sys

n, top = int(sys.argv[1]), int(sys.argv[2])
rows, total = [], None
for line in sys.stdin:
    if "PROGRAM TOTALS" in line:
        if total is None:
            total = int(line.split()[0].replace(",", ""))
        continue
    # callgrind_annotate names the object file only on a function's first row; the rows of
    # code inlined into it from other source files come without it, and count as much.
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)(?: \[(.*)\])?\s*$", line)
    if m:
        rows.append((int(m.group(1).replace(",", "")), m.group(2), m.group(3) or ""))
if total is None:
    sys.exit("no PROGRAM TOTALS in callgrind_annotate's output")
# Self cost: drop the frames every instruction is below (main, the runtime's entry).
rows = [r for r in rows if r[0] < total * 0.9]


# (kind, substrings of the function's name, pattern of its object file): the first that
# matches names the kind.
KINDS = [
    ("HTTP/1 head parsing (httparse, h1::parse)", ("httparse", "h1::parse"), None),
    ("header maps (http::HeaderMap)", ("http::header", "Bucket<http"), None),
    ("memcpy (moves of futures, requests, answers)", ("memmove", "memcpy"), None),
    ("clocks and tokio timers",
     ("runtime::time", "Timespec", "clock_gettime", "clock::", "time::sleep"), r"vdso"),
    ("tokio I/O and scheduler", ("tokio", "mio"), None),
    ("C library and loader (send, recv, malloc, ...)", (), r"\.so(\.\d+)*$"),
    ("HTTP/1 head writing", ("encode_head", "h1::write"), None),
    ("upstream exchange (pool, answer head read into a map)", ("Conn::exchange", "proxy::pool"), None),
    ("policies and tenant (functions not inlined)", ("policy::", "tenant::"), None),
    ("bytes", ("bytes::",), None),
    ("rampart's request path (serve_io, stack, exchange, finish, forward)", ("rampart",), None),
]


def kind(fn, obj):
    for label, names, objects in KINDS:
        if any(k in fn for k in names) or (objects and re.search(objects, obj)):
            return label
    return "other"


print(f"instructions per request: {total / n:,.0f}")
print(f"\nTop {top} functions, self instructions per request:")
for ir, fn, obj in sorted(rows, reverse=True)[:top]:
    name = fn.split(":", 1)[1] if fn.startswith("???:") else fn
    print(f"{ir / n:8,.0f}  {name[:110]}")
kinds = {}
for ir, fn, obj in rows:
    k = kind(fn, obj)
    kinds[k] = kinds.get(k, 0) + ir
print("\nBy kind, instructions per request:")
for k, ir in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"{ir / n:8,.0f}  {k}")
EOF
)
callgrind_annotate --inclusive=no --threshold=100 --auto=no --show=Ir "$part" 2>/dev/null |
    python3 -c "$report" "$REQUESTS" "$TOP"
if ((CACHE_SIM)); then
    # The dump's own totals, one per event (Ir, Dr, Dw, I1mr, D1mr, D1mw, ILmr, DLmr, DLmw).
    echo
    echo "Cache model, per request:"
    awk -v n="$REQUESTS" '
        /^events:/ { for (i = 2; i <= NF; i++) ev[i] = $i; ne = NF }
        /^totals:/ { for (i = 2; i <= ne; i++) printf "%10.1f  %s\n", $i / n, ev[i] }
    ' "$part"
fi
