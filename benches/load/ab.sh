#!/usr/bin/env bash
# Two rampart builds side by side (issue 22): is a change to the request path a win in CPU time
# per request, on this noisy shared machine? full.sh takes 17 minutes and judges against the
# peers; this takes 2-3 and compares the two builds only, round by round.
#
# Starts the one-worker nginx stand-in (a fixed 200) as the upstream, then rampart A
# (RAMPART_A) and rampart B (RAMPART_B) in front of it, each with RAMPART_WORKERS=WORKERS.
# After a warm-up, ROUNDS rounds; in each, one wrk run of DURATION against each build, the
# order alternating (A first in odd rounds), and around each run the build's CPU time (user +
# system, all its threads) and its context switches (voluntary: it slept; involuntary: it was
# preempted). Prints a line per run, then per build the medians, and the median over the
# rounds of B's figure divided by A's from the same round: the two runs of a round are back to
# back, so that ratio is steadier than the ratio of the medians when the host's speed drifts.
#
# Settings (environment), defaults in brackets:
#   RAMPART_A, RAMPART_B (required)   the two builds
#   WORKERS [1]  CONNS [128]  ROUNDS [8]  DURATION [5]  (seconds)  BASE_PORT [18880]
set -euo pipefail

WORKERS=${WORKERS:-1}
CONNS=${CONNS:-128}
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-5}
BASE_PORT=${BASE_PORT:-18880}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

LOG_TAG=ab
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

[[ -x ${RAMPART_A:-} && -x ${RAMPART_B:-} ]] ||
    die "set RAMPART_A and RAMPART_B to the two rampart binaries to compare"
# shellcheck disable=SC2119 # nothing beyond the usual programs
install_missing
export PATH="$PATH:/usr/sbin:/sbin"
bench_setup

# shellcheck disable=SC2119 # no prefix: the stand-in runs unpinned
start_standin

declare -A url=()
for t in A B; do
    take_port
    listen=127.0.0.1:$port
    take_port
    render_tmpl "$here/rampart.yaml" "$work/$t.yaml" "$work" "$listen" "127.0.0.1:$port" 1
    bin_var=RAMPART_$t
    start "$t" env RAMPART_WORKERS="$WORKERS" RUST_LOG=warn "${!bin_var}" run \
        --config "$work/$t.yaml"
    url[$t]=http://$listen/
    wait_http "$t" "${url[$t]}"
done

# switches MAIN : "VOLUNTARY INVOLUNTARY" context switches, summed over MAIN's threads.
switches() {
    awk '$1 == "voluntary_ctxt_switches:" {v += $2} $1 == "nonvoluntary_ctxt_switches:" {n += $2}
         END {print v + 0, n + 0}' /proc/"$1"/task/*/status
}

log "warm-up"
for t in A B; do run_wrk -t1 -c"$CONNS" -d2s "${url[$t]}" >/dev/null; done

hz=$(getconf CLK_TCK)
rows=$work/rows
: >"$rows"
log "$ROUNDS rounds of ${DURATION}s per build, $CONNS connections, $WORKERS worker(s) each"
for r in $(seq "$ROUNDS"); do
    order=(A B)
    ((r % 2 == 0)) && order=(B A)
    for t in "${order[@]}"; do
        pid=${pid_of[$t]}
        c0=$(cpu_ticks "$pid")
        read -r v0 n0 <<<"$(switches "$pid")"
        run_wrk -t1 -c"$CONNS" -d"${DURATION}s" "${url[$t]}" >"$work/wrk.out"
        c1=$(cpu_ticks "$pid")
        read -r v1 n1 <<<"$(switches "$pid")"
        reqs=$(awk '/requests in/ {print $1}' "$work/wrk.out")
        errs=$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk.out")
        [[ -z $errs ]] || die "build $t: $errs"
        awk -v r="$r" -v t="$t" -v n="$reqs" -v c=$((c1 - c0)) -v hz="$hz" -v d="$DURATION" \
            -v vol=$((v1 - v0)) -v inv=$((n1 - n0)) 'BEGIN {
            printf "%d %s %.0f %.3f %.1f %.1f\n", r, t, n / d, c * 1e6 / hz / n,
                vol * 1000 / n, inv * 1000 / n }' | tee -a "$rows" >&2
    done
done

python3 - "$rows" <<'EOF'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
fig = {}
for r, t, rps, cpu, vol, inv in rows:
    fig.setdefault(t, {}).setdefault(int(r), (float(rps), float(cpu), float(vol), float(inv)))
names = ["req/s", "CPU µs/req", "sleeps/1,000", "preempted/1,000"]
print("| build | " + " | ".join(names) + " |")
print("| --- |" + " ---: |" * len(names))
for t in "AB":
    cols = list(zip(*fig[t].values()))
    cells = [f"{st.median(c):,.0f}" if i == 0 else f"{st.median(c):.2f}" for i, c in enumerate(cols)]
    print(f"| {t} | " + " | ".join(cells) + " |")
rounds = sorted(set(fig["A"]) & set(fig["B"]))
ratios = [[fig["B"][r][i] / fig["A"][r][i] for r in rounds] for i in range(2)]
print(f"\nB ÷ A, median of the {len(rounds)} rounds' ratios: req/s {st.median(ratios[0]):.3f}, "
      f"CPU per request {st.median(ratios[1]):.3f} (rounds: "
      + ", ".join(f"{x:.3f}" for x in ratios[1]) + ")")
EOF
