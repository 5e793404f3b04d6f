#!/usr/bin/env bash
# The side-by-side: ssegate, the floor (the bare epoll server of the peers directory:
# uncoalesced, and coalesced), Nchan (1 worker) and Pushpin (tuned) through the same
# loadgen scenarios, one system at a time, each run on a freshly started server; prints a
# markdown table of medians over RUNS runs and the ratios ssegate ÷ floor and ssegate ÷
# Nchan taken from this same run (also written to $DIR/table.md, raw loadgen reports and
# one JSON line per run in $DIR/results.jsonl). Absolute figures drift from day to day on
# a shared machine; only ratios within one run compare.
#
#   benches/compare.sh                                  # everything, RUNS=3 (~25 min, see README)
#   SYSTEMS=ssegate SCENARIOS="S1 idle" RUNS=1 benches/compare.sh
#   SSEGATE_BIN=/work/main/target/release/ssegate LG=/path/to/loadgen benches/compare.sh
#
# Scenarios (100-byte events; PUB publisher connections for every system):
#   S1    S1_STREAMS (1000) streams on 1 topic, S1_RATE (50) events/s for DURATION s, PUB 4
#   S2    S2_STREAMS (10000) streams over S2_TOPICS (1) topics, 10 events/s per topic for
#         DURATION s, PUB 8. S2_TOPICS=1 is the issue's reading (delivered = published ×
#         streams); S2_TOPICS=1000 is the earlier README's (10,000 events/s in batches of
#         S2_BATCH (10) where the target takes batches: ssegate, Pushpin; Nchan one per request)
#   S3    S3_STREAMS (10000) streams on 1 topic, a burst of S3_BURST (1000) events, PUB 8
#   idle  IDLE_STREAMS (19000) streams over 100 topics, one event per topic: KB of server RSS
#         per stream and the time to connect them all (the connect storm)
# The floor has one topic for all streams: it runs S2 only with S2_TOPICS=1, and idle as
# 1 topic with one event (the same one event per stream).
# Systems: ssegate, floor (one send() per delivery: the floor of S1, S2, idle),
#   floor-coalesce (one send() per subscriber per pass: the floor of S3), nchan, pushpin,
#   ssegate-h2 (ssegate with every stream an HTTP/2 stream, prior-knowledge h2c, H2_CONNS
#   connections; default 0: one per 1,000 streams, the most ssegate allows on one),
#   ssegate-disk (ssegate on the disk broker, `sync: always`, a fresh directory under $DIR
#   each run; its ratio to ssegate is issue 16's S2 target: CPU per delivery within 5%).
# Environment (defaults): SYSTEMS="ssegate floor floor-coalesce nchan pushpin"
#   SCENARIOS="S1 S2 S3 idle" RUNS=3
#   DURATION=10 SRC_IPS=16 CONNECT_CONCURRENCY=128 (Pushpin: PUSHPIN_CONNECT_CONCURRENCY=32,
#   it refuses some connects beyond ~32 in flight) QUIET_WAIT=120 (wait up to that many s for
#   the machine to be idle before each run; the busy % is recorded in the table)
#   SSEGATE_BIN (default: target/release/ssegate, built if missing) SUBSCRIBER_BUFFER=10000
#   LG (loadgen executable; default: built with `cargo bench --no-run`)
#   LISTEN=127.0.0.1:18480 ADMIN=127.0.0.1:18481 (ssegate; Nchan and Pushpin use the fixed
#   ports of their configs: 29080/29081, 29999/29561)
#   PEERS=<repo>/../shared/peers  DIR=$(mktemp -d /tmp/ssegate-compare.XXXXXX)
#   FLOOR_BIN ($PEERS/floor/target/release/floor, built there with cargo if missing)
#   FLOOR_LISTEN=127.0.0.1:29180 FLOOR_PUB=127.0.0.1:29181  H2_CONNS=0
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
SYSTEMS="${SYSTEMS:-ssegate floor floor-coalesce nchan pushpin}"
SCENARIOS="${SCENARIOS:-S1 S2 S3 idle}"
RUNS="${RUNS:-3}" QUIET_WAIT="${QUIET_WAIT:-120}" DURATION="${DURATION:-10}"
SRC_IPS="${SRC_IPS:-16}" CC="${CONNECT_CONCURRENCY:-128}"
PUSHPIN_CC="${PUSHPIN_CONNECT_CONCURRENCY:-32}"
S1_STREAMS="${S1_STREAMS:-1000}" S1_RATE="${S1_RATE:-50}"
S2_STREAMS="${S2_STREAMS:-10000}" S2_TOPICS="${S2_TOPICS:-1}" S2_BATCH="${S2_BATCH:-10}"
S3_STREAMS="${S3_STREAMS:-10000}" S3_BURST="${S3_BURST:-1000}"
IDLE_STREAMS="${IDLE_STREAMS:-19000}"
PEERS="${PEERS:-$(cd .. && pwd)/shared/peers}"
DIR="${DIR:-$(mktemp -d /tmp/ssegate-compare.XXXXXX)}"
mkdir -p "$DIR"
OUT="$DIR/results.jsonl"
touch "$OUT"
SSEGATE_BIN=$(ssegate_bin)
case " $SYSTEMS " in
*" floor"*)
    FLOOR_BIN="${FLOOR_BIN:-$PEERS/floor/target/release/floor}"
    if [ ! -x "$FLOOR_BIN" ]; then
        (cd "$PEERS/floor" && cargo build --release -q) ||
            { echo "cannot build the floor in $PEERS/floor (set FLOOR_BIN)" >&2; exit 1; }
    fi
    ;;
esac
FLOOR_LISTEN="${FLOOR_LISTEN:-127.0.0.1:29180}" FLOOR_PUB="${FLOOR_PUB:-127.0.0.1:29181}"
H2_CONNS="${H2_CONNS:-0}"
LG="${LG:-$(bench_exe loadgen)}"
[ -x "$LG" ] || { echo "no loadgen executable (LG=$LG)" >&2; exit 1; }
# One loadgen process holds every stream of a run: 19,000 streams + publishers + a few
# descriptors fit under the 20,000 open-file hard limit here; more would need two.
HARD_NOFILE=$(ulimit -Hn)
if [ "$HARD_NOFILE" != unlimited ] && [ "$IDLE_STREAMS" -gt $((HARD_NOFILE - 100)) ]; then
    echo "IDLE_STREAMS=$IDLE_STREAMS does not fit in one loadgen process (hard limit $HARD_NOFILE files)" >&2
    exit 2
fi
export PEERS_RUN_DIR="$DIR/peers" RUN="$DIR/ssegate" SSEGATE_BIN
export SUBSCRIBER_BUFFER="${SUBSCRIBER_BUFFER:-10000}"
# Not run-ssegate.sh's default ports, so a measurement someone else has running there is
# neither disturbed nor measured by mistake.
LISTEN="${LISTEN:-127.0.0.1:18480}" ADMIN="${ADMIN:-127.0.0.1:18481}"
export LISTEN ADMIN
for a in "$LISTEN" "$ADMIN"; do
    if (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null; then
        echo "$a is in use: is another ssegate running? (set LISTEN/ADMIN)" >&2; exit 1
    fi
done

# start_floor [--coalesce]: the floor in the background, bounded in time; sets FLOOR_PID.
start_floor() {
    local a
    for a in "$FLOOR_LISTEN" "$FLOOR_PUB"; do
        if (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null; then
            echo "$a is in use: is another floor running? (set FLOOR_LISTEN/FLOOR_PUB)" >&2; exit 1
        fi
    done
    # Its own descriptor limit: 19,000 streams need more than the usual soft 1,024.
    (ulimit -n "$(ulimit -Hn)"; exec "$FLOOR_BIN" --listen "$FLOOR_LISTEN" --pub-listen "$FLOOR_PUB" \
        --max-s 3600 "$@") >> "$DIR/floor.log" 2>&1 &
    FLOOR_PID=$!
    wait_port "${FLOOR_LISTEN%:*}" "${FLOOR_LISTEN##*:}" 10 &&
        wait_port "${FLOOR_PUB%:*}" "${FLOOR_PUB##*:}" 10 ||
        { echo "the floor did not start ($FLOOR_BIN; log in $DIR/floor.log)" >&2; exit 1; }
}

RUNNING=""
FLOOR_PID=""
# start SYSTEM: a fresh server; sets PIDS (comma-separated) and TARGET_ARGS for loadgen.
start() {
    RUNNING=$1 # before starting: a start that fails halfway is cleaned up too
    case $1 in
    ssegate | ssegate-h2 | ssegate-disk)
        # ssegate-disk: the disk broker in a fresh directory of this run's.
        rm -rf "$DIR/disk"
        if [ "$1" = ssegate-disk ]; then set -- "$1" DISK_DIR="$DIR/disk" DISK_SYNC=always; fi
        PIDS=$(env "${@:2}" benches/run-ssegate.sh start) ||
            { echo "ssegate did not start ($SSEGATE_BIN; log in $RUN)" >&2; exit 1; }
        TARGET_ARGS=(--target ssegate --sub-addr "$LISTEN" --pub-addr "$ADMIN" --connect-concurrency "$CC")
        if [ "$1" = ssegate-h2 ]; then TARGET_ARGS+=(--h2 --h2-conns "$H2_CONNS"); fi
        ;;
    nchan)
        "$PEERS/run-nchan.sh" start 1 >> "$DIR/peers.log" 2>&1 ||
            { tail -3 "$DIR/peers.log" >&2; exit 1; }
        PIDS=$(tr ' ' , < "$PEERS_RUN_DIR/nchan/pids")
        TARGET_ARGS=(--target nchan --sub-addr 127.0.0.1:29080 --pub-addr 127.0.0.1:29081 --connect-concurrency "$CC")
        ;;
    pushpin)
        "$PEERS/run-pushpin.sh" start tuned >> "$DIR/peers.log" 2>&1 ||
            { tail -3 "$DIR/peers.log" >&2; exit 1; }
        PIDS=$(tr ' ' , < "$PEERS_RUN_DIR/pushpin/pids")
        TARGET_ARGS=(--target pushpin --sub-addr 127.0.0.1:29999 --pub-addr 127.0.0.1:29561 --connect-concurrency "$PUSHPIN_CC")
        ;;
    floor | floor-coalesce)
        if [ "$1" = floor ]; then start_floor; else start_floor --coalesce; fi
        PIDS=$FLOOR_PID
        TARGET_ARGS=(--target floor --sub-addr "$FLOOR_LISTEN" --pub-addr "$FLOOR_PUB" --connect-concurrency "$CC")
        ;;
    *) echo "unknown system $1 (ssegate, ssegate-h2, ssegate-disk, floor, floor-coalesce, nchan, pushpin)" >&2; RUNNING=""; exit 2 ;;
    esac
}

stop() {
    case $RUNNING in
    ssegate | ssegate-h2 | ssegate-disk) benches/run-ssegate.sh stop ;;
    nchan) "$PEERS/run-nchan.sh" stop >> "$DIR/peers.log" 2>&1 ;;
    pushpin) "$PEERS/run-pushpin.sh" stop >> "$DIR/peers.log" 2>&1 ;;
    floor | floor-coalesce)
        if [ -n "$FLOOR_PID" ]; then
            kill -TERM "$FLOOR_PID" 2>/dev/null || true
            wait "$FLOOR_PID" 2>/dev/null || true
        fi
        FLOOR_PID=""
        ;;
    esac
    RUNNING=""
}
trap stop EXIT
trap "exit 130" INT TERM

# scenario_args SYSTEM SCENARIO: the loadgen options of that scenario (nothing: the system
# cannot run it).
scenario_args() {
    local batch=$S2_BATCH
    case $1 in
    nchan) batch=1 ;; # one event per request
    floor*)
        # One topic for all streams: every stream gets every event.
        case $2 in
        S2) [ "$S2_TOPICS" -le 1 ] || return 0 ;;
        idle) echo "--streams $IDLE_STREAMS --topics 1 --burst 1 --publishers 1 --settle 2"; return 0 ;;
        esac
        ;;
    esac
    [ "$S2_TOPICS" -le 1 ] && batch=1
    case $2 in
    S1) echo "--streams $S1_STREAMS --topics 1 --rate $S1_RATE --duration $DURATION --publishers 4" ;;
    # A peer that falls behind keeps delivering long after the last publish: wait for it
    # (loadgen still stops after 3 s without a delivery).
    S2) echo "--streams $S2_STREAMS --topics $S2_TOPICS --rate $((10 * S2_TOPICS)) --duration $DURATION --batch $batch --publishers 8 --drain-max 300" ;;
    S3) echo "--streams $S3_STREAMS --topics 1 --burst $S3_BURST --publishers 8 --drain-max 300" ;;
    idle) echo "--streams $IDLE_STREAMS --topics 100 --burst 100 --publishers 4 --settle 2" ;;
    *) echo "unknown scenario $2 (S1, S2, S3, idle)" >&2; return 2 ;;
    esac
}

echo "results in $DIR; loadgen $LG; ssegate $SSEGATE_BIN" >&2
for r in $(seq 1 "$RUNS"); do
    for sys in $SYSTEMS; do
        for sc in $SCENARIOS; do
            args=$(scenario_args "$sys" "$sc")
            if [ -z "$args" ]; then
                echo "run $r: $sys $sc: not run ($sys has one topic; S2_TOPICS=$S2_TOPICS)" >&2
                continue
            fi
            BUSY=0
            wait_quiet "$QUIET_WAIT" 10
            load1=$(cut -d' ' -f1 /proc/loadavg)
            start "$sys"
            echo "run $r: $sys $sc (machine ${BUSY}% busy, load $load1): loadgen run $args" >&2
            # shellcheck disable=SC2086 # $args is a list of options
            if "$LG" --json run --label "$sc" "${TARGET_ARGS[@]}" $args --src-ips "$SRC_IPS" \
                --pid "$PIDS" > "$DIR/$sys-$sc-$r.txt" 2>> "$DIR/stderr.log"; then
                sed -n 's/^JSON //p' "$DIR/$sys-$sc-$r.txt" |
                    jq -c --arg s "$sys" --arg c "$sc" --argjson r "$r" --argjson b "$BUSY" \
                        --argjson l "$load1" \
                        '. + {system: $s, scenario: $c, run: $r, busy_before_pct: $b, load1_before: $l}' >> "$OUT"
            else
                echo "loadgen failed: $sys $sc run $r (see $DIR/$sys-$sc-$r.txt, $DIR/stderr.log)" >&2
            fi
            stop
        done
    done
done

# med SYSTEM SCENARIO JQ-EXPR [DECIMALS]: median over the runs.
med() {
    jq -r --arg s "$1" --arg c "$2" "select(.system == \$s and .scenario == \$c) | $3" "$OUT" |
        median "${4:-1}"
}
# all SYSTEM SCENARIO JQ-EXPR: every run's value, space-separated.
all() {
    jq -r --arg s "$1" --arg c "$2" "select(.system == \$s and .scenario == \$c) | $3" "$OUT" |
        tr '\n' ' ' | sed 's/ $//'
}
# one SYSTEM SCENARIO RUN JQ-EXPR: that run's value (empty if it did not run).
one() {
    jq -r --arg s "$1" --arg c "$2" --argjson r "$3" \
        "select(.system == \$s and .scenario == \$c and .run == \$r) | $4" "$OUT" | head -1
}
# div A B: A ÷ B to 2 decimals ("n/a" when either is missing or B is 0).
div() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "" || b == "" || a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"
        else printf "%.2f\n", a / b }'
}
# ratio A B SCENARIO WHAT JQ-EXPR: a row of A ÷ B, the ratio of the medians and each
# run's own ratio (A and B measured in the same run r, minutes apart).
ratio() {
    [ -n "$(all "$1" "$3" .run)" ] && [ -n "$(all "$2" "$3" .run)" ] || return 0
    local r each=""
    for r in $(seq 1 "$RUNS"); do
        each="$each $(div "$(one "$1" "$3" "$r" "$5")" "$(one "$2" "$3" "$r" "$5")")"
    done
    echo "| $1 ÷ $2 | $3 | $4 | $(div "$(med "$1" "$3" "$5" 6)" "$(med "$2" "$3" "$5" 6)") |" \
        "$(med "$1" "$3" "$5" 3) vs $(med "$2" "$3" "$5" 3) |$each |"
}
{
    echo "Medians of $RUNS run(s), each on a fresh server; $(nproc) cores, load generator on the same machine;"
    echo "ssegate: $SSEGATE_BIN (subscriber_buffer $SUBSCRIBER_BUFFER); Nchan: 1 worker; Pushpin: tuned (message_rate and message_hwm off)."
    echo "S2: $S2_STREAMS streams over $S2_TOPICS topic(s) at 10 events/s per topic. Publisher connections: S1 4, S2 8, S3 8."
    echo "Connects in flight: $CC (Pushpin $PUSHPIN_CC); source addresses: $SRC_IPS. Idle: $IDLE_STREAMS streams; its deliveries/s and latency are of one event per stream."
    echo
    echo "The floor: one send() per delivery (floor), one per subscriber per pass (floor-coalesce); one topic, no ids."
    case " $SYSTEMS " in *" ssegate-h2 "*)
        echo "ssegate-h2: every stream an HTTP/2 stream (h2c), $H2_CONNS connections (0: one per 1,000 streams)." ;;
    esac
    case " $SYSTEMS " in *" ssegate-disk "*)
        echo "ssegate-disk: ssegate on the disk broker (sync: always, a fresh directory each run)." ;;
    esac
    echo
    echo "| system | scenario | deliveries/s | delivered % | p50 ms | p99 ms | lost / dup (max) | server CPU µs/delivery | KB/stream | connect s | first publish → last delivery s | busy % before (each run) | load1 before |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for sc in $SCENARIOS; do
        for sys in $SYSTEMS; do
            [ -n "$(all "$sys" "$sc" .run)" ] || { echo "| $sys | $sc | failed or not run ||||||||||" ; continue; }
            lost=$(all "$sys" "$sc" .lost | tr ' ' '\n' | sort -g | tail -1)
            dup=$(all "$sys" "$sc" .duplicated | tr ' ' '\n' | sort -g | tail -1)
            echo "| $sys | $sc | $(med "$sys" "$sc" .deliveries_per_s 0) |" \
                "$(med "$sys" "$sc" 'if .expected > 0 then 100 * .received / .expected else "n/a" end' 1) |" \
                "$(med "$sys" "$sc" .latency.p50_ms 1) | $(med "$sys" "$sc" .latency.p99_ms 1) |" \
                "$lost / $dup | $(med "$sys" "$sc" .cpu_us_per_delivery 2) |" \
                "$(med "$sys" "$sc" .kb_per_stream 2) | $(med "$sys" "$sc" .connect_s 2) |" \
                "$(med "$sys" "$sc" .window_s 3) |" \
                "$(all "$sys" "$sc" .busy_before_pct) | $(all "$sys" "$sc" .load1_before) |"
        done
    done
    echo
    echo "Ratios from this run (lower is better for ssegate; each run's ratio compares two systems measured minutes apart):"
    echo
    echo "| ratio | scenario | measure | ratio of medians | medians | each run |"
    echo "|---|---|---|---|---|---|"
    for sc in S1 S2; do
        ratio ssegate floor "$sc" "server CPU µs/delivery" .cpu_us_per_delivery
        ratio ssegate floor "$sc" "p99 ms" .latency.p99_ms
    done
    ratio ssegate floor-coalesce S3 "first publish → last delivery s" .window_s
    ratio ssegate floor-coalesce S3 "server CPU µs/delivery" .cpu_us_per_delivery
    ratio ssegate floor idle "KB/stream" .kb_per_stream
    ratio ssegate floor idle "connect s" .connect_s
    # Where the connect storm's time goes: both share the machine's two cores.
    ratio ssegate floor idle "server CPU µs per connect" .connect_cpu_us_per_stream
    ratio ssegate floor idle "loadgen CPU µs per connect" .loadgen_connect_cpu_us_per_stream
    for sc in S1 S2 S3; do
        ratio ssegate nchan "$sc" "server CPU µs/delivery" .cpu_us_per_delivery
        ratio ssegate nchan "$sc" "p99 ms" .latency.p99_ms
    done
    ratio ssegate nchan idle "KB/stream" .kb_per_stream
    for sc in S1 S2 S3; do
        ratio ssegate-h2 ssegate "$sc" "server CPU µs/delivery" .cpu_us_per_delivery
    done
    ratio ssegate-h2 ssegate idle "KB/stream" .kb_per_stream
    for sc in S1 S2 S3; do
        ratio ssegate-disk ssegate "$sc" "server CPU µs/delivery" .cpu_us_per_delivery
    done
    echo
    echo "Connect failures (sum over runs): $(jq -s -r 'group_by(.system + " " + .scenario) | map("\(.[0].system) \(.[0].scenario): \(map(.connect_failed) | add)") | join(", ")' "$OUT")"
} | tee "$DIR/table.md"
