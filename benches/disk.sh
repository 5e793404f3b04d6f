#!/usr/bin/env bash
# The disk broker (docs/disk-broker.md) against the memory broker:
#   - publish throughput, no subscriber: 64 connections publishing single events, and
#     4, 16 and 64 connections publishing batches of 100 (with `sync: always` the rate
#     grows with the publishes in flight, which share each flush), 5 s each, for memory,
#     disk with sync: always, and disk with sync: 100ms;
#   - start-up with a full history of 100,000 events of 1 KiB: the loader's own time
#     (its `history loaded from disk` log line) and the process's RSS afterwards.
# One run each, each on a fresh server and a fresh directory (under $DIR, printed).
#
#   benches/disk.sh
#
# SHAPES (default "64x1 4x100 16x100 64x100"): the connections × events per request to
# measure; DURATION (default 5): seconds per run. PASSES (default 1): measure every shape
# that many times (memory, always, 100ms each pass, so drift hits all three alike) and end
# with each shape's median `100ms ÷ memory` and `always ÷ memory` over the passes' own
# ratios; STARTUP=0 skips the start-up measurement. LOADGEN_BIN / SSEGATE_BIN pick prebuilt
# binaries (default: target/release/ssegate, and the loadgen bench built on demand). QUIET_WAIT=S (default 30): wait up to S s for the
# machine to be idle before each run; the busy share is printed either way.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
QUIET_WAIT="${QUIET_WAIT:-30}"
SSEGATE_BIN="${SSEGATE_BIN:-target/release/ssegate}"
LOADGEN_BIN="${LOADGEN_BIN:-$(bench_exe loadgen)}"
DIR="$(mktemp -d /tmp/ssegate-disk.XXXXXX)"
export RUN="$DIR/run" LISTEN=127.0.0.1:18080 ADMIN=127.0.0.1:18081 SSEGATE_BIN
trap 'benches/run-ssegate.sh stop' EXIT
echo "results in $DIR"

# publish LABEL PUBLISHERS BATCH [ENV=VALUE...]: events/s accepted by a fresh server.
publish() {
    local label=$1 publishers=$2 batch=$3; shift 3
    BUSY=0
    wait_quiet "$QUIET_WAIT" 10
    local pid rate
    pid=$(env "$@" benches/run-ssegate.sh start)
    rate=$("$LOADGEN_BIN" --json run --streams 0 --rate 0 --duration "${DURATION:-5}" --batch "$batch" \
        --publishers "$publishers" --topics 100 --pid "$pid" 2>>"$DIR/stderr.log" |
        tee -a "$DIR/report.txt" | sed -n 's/^JSON //p' | jq -r '.publish_per_s | floor')
    benches/run-ssegate.sh stop
    echo "| $label | $publishers × $batch | $rate | $BUSY |"
    echo "$publishers×$batch ${label##*: } $rate" >> "$DIR/rates.txt"
}

echo
echo "| broker | connections × events per request | events/s accepted | machine busy before (%) |"
echo "|---|---|---|---|"
for pass in $(seq 1 "${PASSES:-1}"); do
    for shape in ${SHAPES:-64x1 4x100 16x100 64x100}; do
        set -- "${shape%x*}" "${shape#*x}"
        publish memory "$@"
        rm -rf "$DIR/always" "$DIR/100ms"
        publish "disk, sync: always" "$@" DISK_DIR="$DIR/always" DISK_SYNC=always
        publish "disk, sync: 100ms" "$@" DISK_DIR="$DIR/100ms" DISK_SYNC=100ms
    done
done
# Each pass's ratio (the three lines of a shape in one pass are consecutive), then the
# median over the passes.
if [ "${PASSES:-1}" -gt 1 ]; then
    echo
    echo "| connections × events per request | sync | ÷ memory, each pass | median |"
    echo "|---|---|---|---|"
    awk '$2 == "memory" {m[$1] = $3} $2 != "memory" && m[$1] > 0 {r[$1 " " $2] = r[$1 " " $2] " " sprintf("%.2f", $3 / m[$1])}
        END {for (k in r) print k, r[k]}' "$DIR/rates.txt" | sort |
        while read -r shape sync ratios; do
            # shellcheck disable=SC2086 # $ratios is a list of numbers
            echo "| $shape | $sync | $ratios | $(printf '%s\n' $ratios | median 2) |"
        done
fi
[ "${STARTUP:-1}" = 0 ] && exit 0

# Start-up: fill a history of 100,000 events of 1 KiB, stop, start again.
rm -rf "$DIR/startup"
export DISK_DIR="$DIR/startup" HISTORY_MAX_EVENTS=100000
pid=$(benches/run-ssegate.sh start)
"$LOADGEN_BIN" run --streams 0 --burst 100000 --batch 100 --size 1024 --publishers 4 \
    --topics 100 --pid "$pid" >>"$DIR/report.txt" 2>>"$DIR/stderr.log"
benches/run-ssegate.sh stop
BUSY=0
wait_quiet "$QUIET_WAIT" 10
start=$(date +%s%N)
pid=$(RUST_LOG="warn,ssegate=info" benches/run-ssegate.sh start)
# The listeners are bound before the history is read: wait for the `listening` line.
for _ in $(seq 1 1000); do grep -q listening "$RUN/ssegate.log" && break; sleep 0.01; done
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
loaded=$(grep -o 'history loaded from disk.*' "$RUN/ssegate.log" || echo "no 'history loaded' line")
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
echo
echo "start-up with $(du -sh "$DISK_DIR" | cut -f1) of history: $loaded; process start to \`listening\` ${took_ms} ms; RSS ${rss} KiB; machine busy before ${BUSY}%"
