#!/usr/bin/env bash
# Two ssegate builds through the same compare.sh scenarios, alternating run by run
# (A, B, A, B, …) so that drift of the machine hits both alike; prints the medians side by
# side and B ÷ A. For "within N% of today's build" questions.
#
#   BASE_BIN=/path/to/old/ssegate NEW_BIN=target/release/ssegate benches/ab.sh
#   SCENARIOS="S2 S3" RUNS=3 DURATION=10 benches/ab.sh        (the defaults)
#
# AB_SYSTEM=ssegate-h2 compares the two builds' HTTP/2 streams instead. Other settings pass
# through to benches/compare.sh (S2_STREAMS, QUIET_WAIT, LG, …).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
: "${BASE_BIN:?set BASE_BIN to the build to compare against}"
NEW_BIN="${NEW_BIN:-$PWD/target/release/ssegate}"
SCENARIOS="${SCENARIOS:-S2 S3}" RUNS="${RUNS:-3}"
DIR="$(mktemp -d /tmp/ssegate-ab.XXXXXX)"
for r in $(seq 1 "$RUNS"); do
    for side in base new; do
        bin=$BASE_BIN; [ "$side" = new ] && bin=$NEW_BIN
        SYSTEMS="${AB_SYSTEM:-ssegate}" SCENARIOS="$SCENARIOS" RUNS=1 SSEGATE_BIN="$bin" DIR="$DIR/$side-$r" \
            benches/compare.sh > "$DIR/$side-$r.log" 2>&1 ||
            { echo "compare.sh failed for $side run $r; see $DIR/$side-$r.log" >&2; exit 1; }
        jq -c --arg side "$side" '. + {side: $side}' "$DIR/$side-$r/results.jsonl" >> "$DIR/all.jsonl"
    done
done
col() { jq -r --arg s "$1" --arg c "$2" "select(.side == \$s and .scenario == \$c) | $3" "$DIR/all.jsonl" | median 4; }
echo "Medians of $RUNS alternating runs; A = $BASE_BIN, B = $NEW_BIN; raw in $DIR/all.jsonl"
echo
echo "| scenario | A µs/delivery | B µs/delivery | B ÷ A | A p99 ms | B p99 ms | A deliveries/s | B deliveries/s |"
echo "|---|---|---|---|---|---|---|---|"
for sc in $SCENARIOS; do
    a=$(col base "$sc" .cpu_us_per_delivery) b=$(col new "$sc" .cpu_us_per_delivery)
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "n/a" }')
    echo "| $sc | $a | $b | $ratio | $(col base "$sc" .latency.p99_ms) | $(col new "$sc" .latency.p99_ms) | $(col base "$sc" .deliveries_per_s) | $(col new "$sc" .deliveries_per_s) |"
done
