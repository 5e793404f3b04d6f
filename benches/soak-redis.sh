#!/usr/bin/env bash
# Soak with Redis killed and restarted under load (issue 9): benches/soak-redis.sh DURATION_SECONDS
#
# Starts its own redis-server on a free port (never 6379; AOF with fsync always, data in
# $OUT/redis) and two release ssegate instances on it (benches/run-ssegate.sh with
# REDIS_URL: A on A_LISTEN/A_ADMIN, B on B_LISTEN/B_ADMIN), then runs one loadgen `run` for
# about DURATION_SECONDS in all:
#   STREAMS streams over TOPICS topics, each topic's streams spread over A and B
#   (`--sub-addr` twice); RATE events/s published through A in batches of BATCH over one
#   connection; forced reconnects with Last-Event-ID every 0.5–1.5 × RECONNECT_EVERY s;
#   SLOW_FRACTION slow readers (as in soak.sh).
# Meanwhile redis-server is SIGKILLed KILLS times, evenly spread over the publishing window,
# kept down DOWN s each time and restarted on the same port with its AOF. Publishes refused
# meanwhile (503) are not accepted events: loadgen keeps publishing, and expects every
# stream to receive exactly the sequence numbers the server accepted (2xx) for its topic.
# RSS (VmRSS) and open fds of both instances are sampled every SAMPLE_EVERY s into
# $OUT/soak.csv. At the end it checks:
#   - fast and slow streams: lost 0, duplicated 0, out of order 0, nothing received that
#     was not accepted, on both instances;
#   - every refused publish was a 503, and some were refused (the outages hit the load);
#   - redis-server was killed and restarted KILLS times, and both instances are ready again;
#   - Redis lost no acknowledged write: its stream's entries-added ≥ events accepted;
#   - per instance: RSS flat after WARMUP (as soak.sh) and open fds back to the baseline.
# Exit status 0 only if every check passed. Everything runs on 127.0.0.x.
#
# Environment (defaults): STREAMS=2000 TOPICS=200 RATE=500 BATCH=50 SIZE=200
#   RECONNECT_EVERY=30 SLOW_FRACTION=0.1 SLOW_PAUSE_MS=5000 SLOW_READ_MS=5000
#   KILLS=2 DOWN=5 SAMPLE_EVERY=5 WARMUP=60 RSS_SLACK=1.2 OUT=/tmp/ssegate-soak-redis
#   A_LISTEN=127.0.0.1:18380 A_ADMIN=127.0.0.1:18381 B_LISTEN=127.0.0.1:18382
#   B_ADMIN=127.0.0.1:18383 REDIS_PORT=<a free port> LG=<loadgen>
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:?usage: benches/soak-redis.sh DURATION_SECONDS}"
[ "$DURATION" -ge 90 ] || { echo "soak-redis: DURATION_SECONDS must be at least 90" >&2; exit 2; }
STREAMS="${STREAMS:-2000}" TOPICS="${TOPICS:-200}" RATE="${RATE:-500}" BATCH="${BATCH:-50}"
SIZE="${SIZE:-200}" RECONNECT_EVERY="${RECONNECT_EVERY:-30}"
SLOW_FRACTION="${SLOW_FRACTION:-0.1}" SLOW_PAUSE_MS="${SLOW_PAUSE_MS:-5000}"
SLOW_READ_MS="${SLOW_READ_MS:-5000}" KILLS="${KILLS:-2}" DOWN="${DOWN:-5}"
SAMPLE_EVERY="${SAMPLE_EVERY:-5}" WARMUP="${WARMUP:-60}" RSS_SLACK="${RSS_SLACK:-1.2}"
OUT="${OUT:-/tmp/ssegate-soak-redis}"
A_LISTEN="${A_LISTEN:-127.0.0.1:18380}" A_ADMIN="${A_ADMIN:-127.0.0.1:18381}"
B_LISTEN="${B_LISTEN:-127.0.0.1:18382}" B_ADMIN="${B_ADMIN:-127.0.0.1:18383}"
if [ -z "${LG:-}" ]; then
    LG=$(ls -t target/release/deps/loadgen-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
fi
[ -x "${LG:-}" ] || { echo "soak-redis: no loadgen binary; run cargo bench --no-run --bench loadgen" >&2; exit 2; }
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    { echo "soak-redis: needs redis-server and redis-cli (Debian package redis-server)" >&2; exit 2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${REDIS_PORT:-}" ]; then
    for p in $(shuf -i 20000-29999 -n 100); do
        [ "$p" != 6379 ] && ! listening "$p" && { REDIS_PORT=$p; break; }
    done
fi
[ -n "${REDIS_PORT:-}" ] && [ "$REDIS_PORT" != 6379 ] ||
    { echo "soak-redis: no free port for redis-server (6379 is never used)" >&2; exit 2; }
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"

# Time budget as soak.sh: ~2 s to connect and settle, DURATION - 25 s of publishing, then
# the drain (the slow readers' pauses) and a few seconds for the fds to settle.
PUBLISH=$(( DURATION - 25 ))
rm -rf "$OUT/redis" "$OUT/a" "$OUT/b"
mkdir -p "$OUT/redis"
CSV="$OUT/soak.csv" CHAOS_LOG="$OUT/chaos.log"
: > "$CHAOS_LOG"
SAMPLER="" CHAOS=""
redis_pid() { cat "$OUT/redis/pid" 2>/dev/null || true; }
# Starts redis-server on REDIS_PORT with the AOF in $OUT/redis; waits (10 s at most) for PONG.
redis_start() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
        --appendfsync always --dir "$OUT/redis" --logfile "$OUT/redis/redis.log" \
        < /dev/null > /dev/null 2>&1 &
    echo $! > "$OUT/redis/pid"
    disown $!  # no "Killed" notice from bash when the outage kills it
    for _ in $(seq 1 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
        kill -0 "$(redis_pid)" 2>/dev/null || break
        sleep 0.1
    done
    echo "soak-redis: redis-server did not answer on port $REDIS_PORT" >&2
    return 1
}
instance() { # instance NAME LISTEN ADMIN [start|stop]
    RUN="$OUT/$1" LISTEN="$2" ADMIN="$3" benches/run-ssegate.sh "$4"
}
cleanup() {
    [ -n "$CHAOS" ] && kill "$CHAOS" 2>/dev/null || true
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    instance a "$A_LISTEN" "$A_ADMIN" stop || true
    instance b "$B_LISTEN" "$B_ADMIN" stop || true
    local pid
    pid=$(redis_pid)
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
}
trap cleanup EXIT
now() { echo "$(date +%s.%N) - $T0" | bc; }
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz")" = 200 ]; }
wait_ready() { # wait_ready ADMIN SECONDS
    for _ in $(seq 1 $(( $2 * 10 ))); do ready "$1" && return 0; sleep 0.1; done
    return 1
}

T0=$(date +%s.%N)
redis_start
PID_A=$(instance a "$A_LISTEN" "$A_ADMIN" start)
PID_B=$(instance b "$B_LISTEN" "$B_ADMIN" start)
wait_ready "$A_ADMIN" 10 && wait_ready "$B_ADMIN" 10 ||
    { echo "soak-redis: an instance never became ready on redis" >&2; exit 1; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
FD_BASE_A=$(fds "$PID_A") FD_BASE_B=$(fds "$PID_B")
RSS_BASE_A=$(rss "$PID_A") RSS_BASE_B=$(rss "$PID_B")
echo "t_s,rss_a_kb,fds_a,rss_b_kb,fds_b,redis_up,phase" > "$CSV"
sample() { # sample PHASE
    local up=0
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && up=1
    printf '%.0f,%s,%s,%s,%s,%s,%s\n' "$(now)" "$(rss "$PID_A")" "$(fds "$PID_A")" \
        "$(rss "$PID_B")" "$(fds "$PID_B")" "$up" "$1" >> "$CSV"
}
(
    while kill -0 "$PID_A" 2>/dev/null && kill -0 "$PID_B" 2>/dev/null; do
        phase=load
        [ -f "$OUT/loadgen.done" ] && phase=after
        sample "$phase"
        sleep "$SAMPLE_EVERY"
    done
) &
SAMPLER=$!
rm -f "$OUT/loadgen.done"

# The outages: kill k at 2 + k × PUBLISH / (KILLS + 1) s after loadgen starts.
T_LG=$(now)
(
    for k in $(seq 1 "$KILLS"); do
        at=$(echo "$T_LG + 2 + $k * $PUBLISH / ($KILLS + 1)" | bc)
        wait_s=$(echo "$at - $(now)" | bc)
        [ "${wait_s:0:1}" = - ] || sleep "$wait_s"
        kill -KILL "$(redis_pid)"
        for _ in $(seq 1 50); do listening "$REDIS_PORT" || break; sleep 0.1; done
        echo "$(printf '%.1f' "$(now)") killed" >> "$CHAOS_LOG"
        sleep "$DOWN"
        redis_start
        echo "$(printf '%.1f' "$(now)") restarted" >> "$CHAOS_LOG"
        wait_ready "$A_ADMIN" 10 && wait_ready "$B_ADMIN" 10
        echo "$(printf '%.1f' "$(now)") both instances ready again" >> "$CHAOS_LOG"
    done
) &
CHAOS=$!

echo "soak-redis: redis-server on port $REDIS_PORT (AOF in $OUT/redis); ssegate A pid $PID_A on $A_LISTEN (admin $A_ADMIN), B pid $PID_B on $B_LISTEN (admin $B_ADMIN); fds $FD_BASE_A/$FD_BASE_B, RSS $RSS_BASE_A/$RSS_BASE_B KB; loadgen $LG"
CMD=("$LG" --json run --label soak-redis --sub-addr "$A_LISTEN" --sub-addr "$B_LISTEN"
    --pub-addr "$A_ADMIN"
    --streams "$STREAMS" --topics "$TOPICS" --rate "$RATE" --batch "$BATCH" --publishers 1
    --size "$SIZE" --duration "$PUBLISH" --src-ips 8
    --reconnect-every "$RECONNECT_EVERY" --slow-fraction "$SLOW_FRACTION"
    --slow-pause-ms "$SLOW_PAUSE_MS" --slow-read-ms "$SLOW_READ_MS" --slow-rcvbuf 4096
    --drain-idle "$(( SLOW_PAUSE_MS / 1000 + 5 ))" --drain-max "$(( SLOW_PAUSE_MS / 1000 + 15 ))"
    --pid "$PID_A,$PID_B")
echo "soak-redis: ${CMD[*]}"
"${CMD[@]}" 2>&1 | tee "$OUT/loadgen.out"
touch "$OUT/loadgen.done"
T_LOAD_END=$(now)
CHAOS_OK=1
wait "$CHAOS" || CHAOS_OK=0
CHAOS=""
READY_END=1
wait_ready "$A_ADMIN" 10 && wait_ready "$B_ADMIN" 10 || READY_END=0
# The streams are closed when loadgen exits: give the servers a moment to notice.
for _ in $(seq 1 50); do
    FD_END_A=$(fds "$PID_A") FD_END_B=$(fds "$PID_B")
    [ "$FD_END_A" -le "$FD_BASE_A" ] && [ "$FD_END_B" -le "$FD_BASE_B" ] && break
    sleep 0.2
done
sample end
STATS_A=$(curl -s "http://$A_ADMIN/stats" || true)
STATS_B=$(curl -s "http://$B_ADMIN/stats" || true)
ENTRIES_ADDED=$(redis-cli -p "$REDIS_PORT" xinfo stream ssegate:events 2>/dev/null |
    awk 'p { print; exit } $0 == "entries-added" { p = 1 }')
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=""
WARN_A=$(grep -ci redis "$OUT/a/ssegate.log" || true)
WARN_B=$(grep -ci redis "$OUT/b/ssegate.log" || true)

J=$(sed -n 's/^JSON //p' "$OUT/loadgen.out")
[ -n "$J" ] || { echo "soak-redis: FAIL: loadgen gave no report" >&2; exit 1; }
q() { jq -r "$1" <<< "$J"; }

echo
echo "== RSS / fd curve ($CSV; t from start, every ${SAMPLE_EVERY} s; redis 0 = down)"
awk -F, 'NR > 1 { printf "%6s s  A %8s KB %5s fds  B %8s KB %5s fds  redis %s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$CSV"
echo "== outages ($CHAOS_LOG, t from start)"
cat "$CHAOS_LOG"

# RSS flat per instance: load-phase samples after the warm-up, first third against last third.
flat() { # flat COLUMN -> "first_third_max last_third_max samples"
    awk -F, -v w="$WARMUP" -v c="$1" 'NR > 1 && $7 == "load" && $1 >= w { v[n++] = $c }
        END { if (n < 3) { print "0 0", n + 0; exit }
              a = 0; b = 0; for (i = 0; i < n; i++) { if (i < n / 3 && v[i] > a) a = v[i]; if (i >= n - n / 3 && v[i] > b) b = v[i] }
              print a, b, n }' "$CSV"
}
peak() { awk -F, -v c="$1" 'NR > 1 && $c > m { m = $c } END { print m + 0 }' "$CSV"; }
read -r RSS_FIRST_A RSS_LAST_A RSS_N <<< "$(flat 2)"
read -r RSS_FIRST_B RSS_LAST_B _ <<< "$(flat 4)"
KILLED=$(grep -c killed "$CHAOS_LOG" || true)
RESTARTED=$(grep -c restarted "$CHAOS_LOG" || true)

fail=0
check() { # check NAME CONDITION(0/1) DETAIL
    if [ "$2" = 1 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; fail=1; fi
}
echo
echo "== soak-redis summary (${DURATION} s asked, load ended at ${T_LOAD_END%.*} s)"
echo "published through A: $(q .accepted) events accepted, $(q .publish_failed) refused ($(q '.publish_refused | tostring')) over $(q .topics) topics; deliveries $(q .delivered)/$(q .expected); Redis stream entries-added $ENTRIES_ADDED"
for g in fast slow; do
    echo "$g: $(q ".groups.$g.streams") streams, $(q ".groups.$g.distinct") distinct deliveries, lost $(q ".groups.$g.lost") (on $(q ".groups.$g.lossy_streams") streams), not accepted $(q ".groups.$g.unaccepted"), duplicated $(q ".groups.$g.duplicated"), out of order $(q ".groups.$g.out_of_order"), reconnects $(q ".groups.$g.reconnects") ($(q ".groups.$g.forced") forced, $(q ".groups.$g.server_ended") ended by the server, $(q ".groups.$g.errors") errors), pauses $(q ".groups.$g.pauses"), control events $(q ".groups.$g.control | tostring")"
done
echo "per instance: $(q '.by_sub_addr | map("\(.addr): \(.streams) streams, \(.distinct) distinct, lost \(.lost), \(.reconnects) reconnects") | join("; ")')"
echo "redis: killed $KILLED times, restarted $RESTARTED times, down $DOWN s each; log lines naming redis: A $WARN_A, B $WARN_B"
echo "A: RSS baseline $RSS_BASE_A KB, peak $(peak 2) KB; after ${WARMUP} s ($RSS_N samples) first-third max $RSS_FIRST_A KB, last-third max $RSS_LAST_A KB; fds baseline $FD_BASE_A, peak $(peak 3), end $FD_END_A; /stats $STATS_A"
echo "B: RSS baseline $RSS_BASE_B KB, peak $(peak 4) KB; first-third max $RSS_FIRST_B KB, last-third max $RSS_LAST_B KB; fds baseline $FD_BASE_B, peak $(peak 5), end $FD_END_B; /stats $STATS_B"
echo
ok() { [ "$1" = true ] && echo 1 || echo 0; }
clean='.lost == 0 and .unaccepted == 0 and .duplicated == 0 and .out_of_order == 0 and .bad_payloads == 0 and .out_of_range == 0 and .sse_errors == 0'
check "streams connected" "$(ok "$(q '.connect_failed == 0 and .connected == .streams')")" "$(q .connected)/$(q .streams)"
check "streams on both instances" "$(ok "$(q '[.by_sub_addr[] | .streams > 0 and .lost == 0] | length == 2 and all')")" \
    "$(q '.by_sub_addr | map("\(.streams) streams, lost \(.lost)") | join(" / ")')"
check "publishing went on through the outages" \
    "$(ok "$(q '.accepted > 0 and .publish_failed > 0 and (.publish_refused | keys == ["503"])')")" \
    "$(q .accepted) accepted, $(q .publish_failed) refused: $(q '.publish_refused | tostring')"
check "fast readers: received = accepted" "$(ok "$(q ".groups.fast | $clean")")" \
    "lost $(q .groups.fast.lost), not accepted $(q .groups.fast.unaccepted), duplicated $(q .groups.fast.duplicated), out of order $(q .groups.fast.out_of_order)"
check "slow readers: received = accepted" "$(ok "$(q ".groups.slow | $clean")")" \
    "lost $(q .groups.slow.lost), not accepted $(q .groups.slow.unaccepted), duplicated $(q .groups.slow.duplicated), out of order $(q .groups.slow.out_of_order)"
check "reconnects with Last-Event-ID happened" "$(ok "$(q '.reconnects > 0')")" "$(q .reconnects)"
check "redis killed and restarted $KILLS times" \
    "$([ "$CHAOS_OK" = 1 ] && [ "$KILLED" = "$KILLS" ] && [ "$RESTARTED" = "$KILLS" ] && echo 1 || echo 0)" \
    "killed $KILLED, restarted $RESTARTED"
check "both instances ready on redis at the end" "$READY_END" "A and B /readyz"
check "redis kept every acknowledged write" \
    "$([ -n "$ENTRIES_ADDED" ] && [ "$ENTRIES_ADDED" -ge "$(q .accepted)" ] && echo 1 || echo 0)" \
    "entries-added $ENTRIES_ADDED ≥ accepted $(q .accepted)"
for i in A B; do
    if [ "$i" = A ]; then first=$RSS_FIRST_A last=$RSS_LAST_A fe=$FD_END_A fb=$FD_BASE_A
    else first=$RSS_FIRST_B last=$RSS_LAST_B fe=$FD_END_B fb=$FD_BASE_B; fi
    check "$i: RSS flat after warm-up" \
        "$(awk -v a="$first" -v b="$last" -v s="$RSS_SLACK" 'BEGIN { print (a > 0 && b <= a * s) ? 1 : 0 }')" \
        "last-third max $last KB ≤ $RSS_SLACK × first-third max $first KB"
    check "$i: fds back to baseline" "$([ "$fe" -le "$fb" ] && echo 1 || echo 0)" "baseline $fb, end $fe"
done
exit "$fail"
