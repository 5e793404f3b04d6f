#!/usr/bin/env bash
# Soak test (issue 9): benches/soak.sh DURATION_SECONDS
#
# Starts a release ssegate (benches/run-ssegate.sh, default settings: slow_consumer
# disconnect, subscriber_buffer 1000, history 10,000 events / 1 h) and runs one loadgen
# `run` for about DURATION_SECONDS in all:
#   STREAMS streams over TOPICS topics, RATE events/s published in batches of BATCH over one
#   publisher connection (so a topic's events are accepted in sequence order), every stream
#   dropping its connection and resuming with Last-Event-ID every 0.5–1.5 × RECONNECT_EVERY s,
#   SLOW_FRACTION of the streams slow readers (stop reading SLOW_PAUSE_MS every
#   SLOW_READ_MS, 4 KiB receive buffer).
# Meanwhile the server's RSS (VmRSS) and open fds are sampled every SAMPLE_EVERY s into
# $OUT/soak.csv. At the end it checks:
#   - fast streams: lost 0, duplicated 0, out of order 0 (received ids = published ids);
#   - slow streams: reported (lost / duplicated / disconnects), checked for loss too;
#   - RSS flat after warm-up: max over the last third of the load window ≤ RSS_SLACK × max
#     over its first third (the window after WARMUP s);
#   - open fds back to the baseline (taken before the streams opened) once they closed.
# Exit status 0 only if every check passed. Everything runs on 127.0.0.x.
#
# Environment (defaults): STREAMS=2000 TOPICS=200 RATE=500 BATCH=50 SIZE=200
#   RECONNECT_EVERY=60 SLOW_FRACTION=0.1 SLOW_PAUSE_MS=5000 SLOW_READ_MS=5000
#   SAMPLE_EVERY=10 WARMUP=60 RSS_SLACK=1.2 OUT=/tmp/ssegate-soak
#   LISTEN=127.0.0.1:18180 ADMIN=127.0.0.1:18181 (passed to run-ssegate.sh), LG=<loadgen>
#   H2_CONNS (unset: HTTP/1.1 streams; set: every stream an HTTP/2 stream over H2_CONNS h2c
#   connections per address, 0 for one per 1,000 streams, as an h2 ingress sends them; a
#   slow stream then holds its own flow-control window shut rather than a socket)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:?usage: benches/soak.sh DURATION_SECONDS}"
[ "$DURATION" -ge 30 ] || { echo "soak: DURATION_SECONDS must be at least 30" >&2; exit 2; }
STREAMS="${STREAMS:-2000}" TOPICS="${TOPICS:-200}" RATE="${RATE:-500}" BATCH="${BATCH:-50}"
SIZE="${SIZE:-200}" RECONNECT_EVERY="${RECONNECT_EVERY:-60}"
SLOW_FRACTION="${SLOW_FRACTION:-0.1}" SLOW_PAUSE_MS="${SLOW_PAUSE_MS:-5000}"
SLOW_READ_MS="${SLOW_READ_MS:-5000}" SAMPLE_EVERY="${SAMPLE_EVERY:-10}"
WARMUP="${WARMUP:-60}" RSS_SLACK="${RSS_SLACK:-1.2}" OUT="${OUT:-/tmp/ssegate-soak}"
export LISTEN="${LISTEN:-127.0.0.1:18180}" ADMIN="${ADMIN:-127.0.0.1:18181}"
export RUN="$OUT/server"
if [ -z "${LG:-}" ]; then
    LG=$(ls -t target/release/deps/loadgen-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
fi
[ -x "${LG:-}" ] || { echo "soak: no loadgen binary; run cargo bench --no-run --bench loadgen" >&2; exit 2; }

# Time budget: ~2 s to connect and settle, DURATION - 25 s of publishing, then up to SLOW_PAUSE + 15 s (20 s) of draining
# (the slow readers' pauses) and a few seconds for the fds to settle.
PUBLISH=$(( DURATION - 25 ))
mkdir -p "$OUT"
CSV="$OUT/soak.csv"
SAMPLER=""
cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    benches/run-ssegate.sh stop || true
}
trap cleanup EXIT

PID=$(benches/run-ssegate.sh start)
sleep 1
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
fds() { ls "/proc/$PID/fd" | wc -l; }
FD_BASE=$(fds)
RSS_BASE=$(rss)
T0=$(date +%s.%N)
echo "t_s,rss_kb,fds,phase" > "$CSV"
(
    while kill -0 "$PID" 2>/dev/null; do
        phase=load
        [ -f "$OUT/loadgen.done" ] && phase=after
        printf '%.0f,%s,%s,%s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$(rss)" "$(fds)" "$phase" >> "$CSV"
        sleep "$SAMPLE_EVERY"
    done
) &
SAMPLER=$!
rm -f "$OUT/loadgen.done"

echo "soak: ssegate pid $PID on $LISTEN (admin $ADMIN), fds $FD_BASE, RSS $RSS_BASE KB; loadgen $LG"
CMD=("$LG" --json run --label soak --sub-addr "$LISTEN" --pub-addr "$ADMIN"
    --streams "$STREAMS" --topics "$TOPICS" --rate "$RATE" --batch "$BATCH" --publishers 1
    --size "$SIZE" --duration "$PUBLISH" --src-ips 8
    --reconnect-every "$RECONNECT_EVERY" --slow-fraction "$SLOW_FRACTION"
    --slow-pause-ms "$SLOW_PAUSE_MS" --slow-read-ms "$SLOW_READ_MS" --slow-rcvbuf 4096
    --drain-idle "$(( SLOW_PAUSE_MS / 1000 + 5 ))" --drain-max "$(( SLOW_PAUSE_MS / 1000 + 15 ))" --pid "$PID")
if [ -n "${H2_CONNS:-}" ]; then CMD+=(--h2 --h2-conns "$H2_CONNS"); fi
echo "soak: ${CMD[*]}"
"${CMD[@]}" 2>&1 | tee "$OUT/loadgen.out"
touch "$OUT/loadgen.done"
T_LOAD_END=$(echo "$(date +%s.%N) - $T0" | bc)
# The streams are closed when loadgen exits: give the server a moment to notice.
FD_END=$(fds)
for _ in $(seq 1 50); do
    FD_END=$(fds)
    [ "$FD_END" -le "$FD_BASE" ] && break
    sleep 0.2
done
RSS_END=$(rss)
printf '%.0f,%s,%s,end\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$RSS_END" "$FD_END" >> "$CSV"
STATS=$(curl -s "http://$ADMIN/stats" || true)
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=""
benches/run-ssegate.sh stop

J=$(sed -n 's/^JSON //p' "$OUT/loadgen.out")
[ -n "$J" ] || { echo "soak: FAIL: loadgen gave no report" >&2; exit 1; }
q() { jq -r "$1" <<< "$J"; }

echo
echo "== RSS / fd curve ($CSV; t from server start, every ${SAMPLE_EVERY} s)"
awk -F, 'NR > 1 { if ($2 > m) m = $2; r[NR] = $0 } END {
    for (i = 2; i <= NR; i++) { split(r[i], f, ","); bar = ""
        for (k = 0; k < 40 * f[2] / m; k++) bar = bar "#"
        printf "%6s s  %8s KB  %5s fds  %-5s %s\n", f[1], f[2], f[3], f[4], bar } }' "$CSV"

# RSS flat: load-phase samples after the warm-up, first third against last third.
read -r RSS_FIRST RSS_LAST RSS_N <<< "$(awk -F, -v w="$WARMUP" 'NR > 1 && $4 == "load" && $1 >= w { t[n] = $1; v[n++] = $2 }
    END { if (n < 3) { print "0 0", n; exit }
          a = 0; b = 0; for (i = 0; i < n; i++) { if (i < n / 3 && v[i] > a) a = v[i]; if (i >= n - n / 3 && v[i] > b) b = v[i] }
          print a, b, n }' "$CSV")"
FD_PEAK=$(awk -F, 'NR > 1 && $3 > m { m = $3 } END { print m + 0 }' "$CSV")
RSS_PEAK=$(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "$CSV")

fail=0
check() { # check NAME CONDITION(0/1) DETAIL
    if [ "$2" = 1 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; fail=1; fi
}
echo
echo "== soak summary (${DURATION} s asked, load ended at ${T_LOAD_END%.*} s)"
echo "published: $(q .accepted) events accepted ($(q .publish_failed) failed) over $(q .topics) topics; deliveries $(q .delivered)/$(q .expected); server /stats after: $STATS"
for g in fast slow; do
    echo "$g: $(q ".groups.$g.streams") streams, $(q ".groups.$g.distinct") distinct deliveries, lost $(q ".groups.$g.lost") (on $(q ".groups.$g.lossy_streams") streams), duplicated $(q ".groups.$g.duplicated"), out of order $(q ".groups.$g.out_of_order"), reconnects $(q ".groups.$g.reconnects") ($(q ".groups.$g.forced") forced, $(q ".groups.$g.server_ended") ended by the server, $(q ".groups.$g.errors") errors), pauses $(q ".groups.$g.pauses"), control events $(q ".groups.$g.control | tostring")"
done
echo "RSS: baseline $RSS_BASE KB, peak $RSS_PEAK KB, end $RSS_END KB; after ${WARMUP} s warm-up ($RSS_N samples) first-third max $RSS_FIRST KB, last-third max $RSS_LAST KB"
echo "fds: baseline $FD_BASE, peak $FD_PEAK, end $FD_END"
echo
ok() { [ "$1" = true ] && echo 1 || echo 0; }
check "streams connected" "$(ok "$(q '.connect_failed == 0 and .connected == .streams')")" "$(q .connected)/$(q .streams)"
check "publishing" "$(ok "$(q '.publish_failed == 0 and .accepted > 0')")" "$(q .accepted) accepted, $(q .publish_failed) failed"
check "fast readers: received = published" \
    "$(ok "$(q '.groups.fast | .lost == 0 and .unaccepted == 0 and .duplicated == 0 and .out_of_order == 0 and .bad_payloads == 0 and .out_of_range == 0 and .sse_errors == 0')")" \
    "lost $(q .groups.fast.lost), duplicated $(q .groups.fast.duplicated), out of order $(q .groups.fast.out_of_order)"
check "slow readers: nothing lost after disconnect + resume" \
    "$(ok "$(q '.groups.slow | .lost == 0 and .unaccepted == 0 and .duplicated == 0 and .out_of_order == 0')")" \
    "lost $(q .groups.slow.lost), duplicated $(q .groups.slow.duplicated), out of order $(q .groups.slow.out_of_order), ended by the server $(q .groups.slow.server_ended)"
check "reconnects with Last-Event-ID happened" "$(ok "$(q '.reconnects > 0')")" "$(q .reconnects)"
check "RSS flat after warm-up" \
    "$(awk -v a="$RSS_FIRST" -v b="$RSS_LAST" -v s="$RSS_SLACK" 'BEGIN { print (a > 0 && b <= a * s) ? 1 : 0 }')" \
    "last-third max $RSS_LAST KB ≤ $RSS_SLACK × first-third max $RSS_FIRST KB"
check "fds back to baseline" "$([ "$FD_END" -le "$FD_BASE" ] && echo 1 || echo 0)" "baseline $FD_BASE, end $FD_END"
exit "$fail"
