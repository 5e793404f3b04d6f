#!/usr/bin/env bash
# The measurements of issues 2–3 against ssegate, each on a freshly started server:
#   2a publish throughput (no subscriber): single events, and batches of 100
#   2b fan-out to 1,000 subscribers on one topic: 20 events/s for 10 s, and a burst of 200
#   2c memory of 100,000 job topics created and closed (history: 1,000 events / 10 s)
#   2d the webhook's latency seen by a separate publisher (curl) while 2b's fan-out runs
# Runs each RUNS times (default 3) and prints the medians as a markdown table; the raw
# reports go to $DIR (printed at the start).
#
#   benches/measure.sh            # everything
#   benches/measure.sh 2b 2c      # some
#
# LOADGEN_BIN / SSEGATE_BIN pick prebuilt binaries; otherwise both are built in release.
# QUIET_WAIT=S (default 120): wait up to S s for the machine to be idle before each run.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
RUNS="${RUNS:-3}" QUIET_WAIT="${QUIET_WAIT:-120}"
DIR="$(mktemp -d /tmp/ssegate-measure.XXXXXX)"
OUT="$DIR/results.jsonl"
SSEGATE_BIN=$(ssegate_bin)
LOADGEN_BIN="${LOADGEN_BIN:-$(bench_exe loadgen)}"
SCENARIOS="${*:-2a 2b 2d 2c}"
export RUN="$DIR/ssegate" LISTEN=127.0.0.1:18080 ADMIN=127.0.0.1:18081 SSEGATE_BIN
trap 'benches/run-ssegate.sh stop' EXIT
echo "results in $DIR"

# one LABEL [ENV=VALUE...] -- LOADGEN ARGS: a fresh server, one loadgen report.
one() {
    local label=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    BUSY=0
    wait_quiet "$QUIET_WAIT" 10
    local pid
    pid=$(env "${envs[@]}" benches/run-ssegate.sh start)
    "$LOADGEN_BIN" --json "$@" --pid "$pid" 2>>"$DIR/stderr.log" | tee -a "$DIR/report.txt" |
        sed -n 's/^JSON //p' | jq -c --arg l "$label" --argjson b "$BUSY" '. + {label: $l, busy_before_pct: $b}' >> "$OUT"
    benches/run-ssegate.sh stop
}

for r in $(seq 1 "$RUNS"); do
    for s in $SCENARIOS; do
        case $s in
        2a)
            one 2a-single -- run --streams 0 --rate 0 --duration 5 --batch 1 --publishers 4 --topics 100
            one 2a-batch100 -- run --streams 0 --rate 0 --duration 5 --batch 100 --publishers 4 --topics 100
            ;;
        2b)
            one 2b-rate -- run --streams 1000 --topics 1 --rate 20 --duration 10 --publishers 2
            one 2b-burst -- run --streams 1000 --topics 1 --burst 200 --publishers 4
            ;;
        2d)
            # The webhook's own latency while 2b-rate's fan-out runs, seen by a publisher
            # outside the load generator (whose runtime is busy reading the deliveries).
            BUSY=0
            wait_quiet "$QUIET_WAIT" 10
            pid=$(benches/run-ssegate.sh start)
            "$LOADGEN_BIN" --json run --streams 1000 --topics 1 --rate 20 --duration 15 \
                --publishers 2 --pid "$pid" > "$DIR/2d-loadgen.txt" 2>>"$DIR/stderr.log" &
            lg=$!
            sleep 4
            for _ in $(seq 1 200); do
                curl -s -o /dev/null -w '%{time_total}\n' -H 'content-type: application/json' \
                    -d '{"topic":"elsewhere","data":"x"}' "http://$ADMIN/publish"
                sleep 0.04
            done | sort -n | awk -v l=2d-webhook -v b="$BUSY" '{ a[NR] = $1 * 1000 } END {
                printf "{\"label\":\"%s\",\"busy_before_pct\":%s,\"webhook\":{\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}}\n",
                    l, b, a[int(NR * 0.5)], a[int(NR * 0.99)], a[NR] }' >> "$OUT"
            wait "$lg"
            benches/run-ssegate.sh stop
            ;;
        2c)
            one 2c-jobs HISTORY_MAX_EVENTS=1000 HISTORY_MAX_AGE=10s -- \
                jobs --count 100000 --concurrency 32 --wait 15 --sample-every 5
            ;;
        esac
    done
done

med() { # LABEL JQ-EXPR [DECIMALS] -> median over runs
    jq -r --arg l "$1" "select(.label == \$l) | $2" "$OUT" | median "${3:-2}"
}
echo
echo "Medians of $RUNS runs, each on a fresh server ($(nproc) cores, load generator on the same machine):"
echo
echo "machine busy before each run (%, other processes): $(jq -r .busy_before_pct "$OUT" | tr '\n' ' ')"
echo
if grep -q '"2a-' "$OUT"; then
    echo "| 2a publish, no subscriber, 4 connections | events/s accepted | request p99 ms | server CPU µs/event |"
    echo "|---|---|---|---|"
    for l in 2a-single 2a-batch100; do
        echo "| $l | $(med $l .publish_per_s 0) | $(med $l .publish_rtt.p99_ms) | $(med $l .cpu_us_per_event 1) |"
    done
    echo
fi
if grep -q '"2b-' "$OUT"; then
    echo "| 2b 1,000 subscribers, 1 topic | deliveries/s | publish→receive p50 / p99 ms | publish→last delivery p50 / p99 / max ms | lost | dup | server CPU µs/delivery | KB/stream | connect 1,000 s |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for l in 2b-rate 2b-burst; do
        echo "| $l | $(med $l .deliveries_per_s 0) | $(med $l .latency.p50_ms) / $(med $l .latency.p99_ms) | $(med $l .last_delivery.p50_ms) / $(med $l .last_delivery.p99_ms) / $(med $l .last_delivery.max_ms) | $(med $l .lost 0) | $(med $l .duplicated 0) | $(med $l .cpu_us_per_delivery) | $(med $l .kb_per_stream 1) | $(med $l .connect_s 3) |"
    done
    echo
fi
if grep -q '"2d-' "$OUT"; then
    echo "| 2d webhook while 2b-rate's fan-out runs (200 publishes by curl, ~20/s) | p50 ms | p99 ms | max ms |"
    echo "|---|---|---|---|"
    l=2d-webhook
    echo "| $l | $(med $l .webhook.p50_ms) | $(med $l .webhook.p99_ms) | $(med $l .webhook.max_ms) |"
    echo
fi
if grep -q '"2c-' "$OUT"; then
    echo "| 2c 100,000 jobs, 32 at once | jobs/s | RSS before KB | right after KB | after the wait + trim KB | topics after | history after trim |"
    echo "|---|---|---|---|---|---|---|"
    l=2c-jobs
    echo "| $l | $(med $l .jobs_per_s 0) | $(med $l .rss_before_kb 0) | $(med $l .rss_after_kb 0) | $(med $l .rss_end_kb 0) | $(med $l '.stats_end[0]' 0) | $(med $l '.stats_end[1]' 0) |"
fi
