#!/usr/bin/env bash
# `watch` at scale: TOPICS topics each followed by one stream, one rule polling the app for
# each every EVERY; reports the polls per second that reach the app (from ssegate's own
# ssegate_watch_polls_total), ssegate's CPU, and polls per topic per interval (1.0 is the
# goal: one poll per topic per interval, however many streams follow it).
#
#   benches/watch.sh                       # TOPICS=10000 EVERY=1s DURATION=10
#
# The streams are held by a small Python asyncio client (no SSE parsing: it only reads).
# Uses loopback ports 19310-19312. SSEGATE_BIN / UPSTREAM_BIN pick prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
TOPICS="${TOPICS:-10000}" EVERY="${EVERY:-1s}" DURATION="${DURATION:-10}"
UP=127.0.0.1:19310 SG=127.0.0.1:19311 SG_ADMIN=127.0.0.1:19312
DIR="$(mktemp -d /tmp/ssegate-watch-bench.XXXXXX)"
SSEGATE_BIN=$(ssegate_bin)
UPSTREAM_BIN="${UPSTREAM_BIN:-$(bench_exe upstream)}"

PIDS=()
cleanup() {
    RUN="$DIR/ssegate" benches/run-ssegate.sh stop || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

"$UPSTREAM_BIN" "$UP" 1 > "$DIR/upstream.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 19310 10
SG_PID=$(RUN="$DIR/ssegate" LISTEN=$SG ADMIN=$SG_ADMIN UPSTREAM="http://$UP" \
    SSEGATE_BIN="$SSEGATE_BIN" EXTRA_YAML="watch:
  - { name: bench, topic: \"w/{n}\", url: \"/w/{n}\", every: $EVERY }" \
    benches/run-ssegate.sh start)

polls() { # total polls so far, every outcome
    curl -s "http://$SG_ADMIN/metrics" |
        awk '/^ssegate_watch_polls_total\{/ {s += $NF} END {print s + 0}'
}

ulimit -n "$(ulimit -Hn)"
python3 - "$SG" "$TOPICS" "$((DURATION + 30))" > "$DIR/holder.log" 2>&1 <<'PY' &
import asyncio, sys
host, port = sys.argv[1].split(':')
n, hold = int(sys.argv[2]), float(sys.argv[3])
async def one(i):
    r, w = await asyncio.open_connection(host, int(port))
    w.write(f"GET /events?topic=w/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await w.drain()
    while await r.read(65536):
        pass
async def main():
    sem = asyncio.Semaphore(256)
    async def gated(i):
        async with sem:
            t = asyncio.ensure_future(one(i))
            await asyncio.sleep(0)
            return t
    tasks = [await gated(i) for i in range(n)]
    print("opened", n, flush=True)
    await asyncio.sleep(hold)
asyncio.run(main())
PY
PIDS+=($!)
for _ in $(seq 1 120); do
    n=$(curl -s "http://$SG_ADMIN/stats" | jq -r .connections)
    [ "$n" -ge "$TOPICS" ] && break
    sleep 1
done
echo "$n streams open; warming up one interval" >&2
sleep 3
p0=$(polls) t0=$(proc_ticks "$SG_PID")
sleep "$DURATION"
p1=$(polls) t1=$(proc_ticks "$SG_PID")
CLK=$(getconf CLK_TCK)
every_s=$(awk -v e="$EVERY" 'BEGIN { n = e + 0; if (e ~ /ms$/) n /= 1000; print n }')
awk -v p=$((p1 - p0)) -v d="$DURATION" -v t=$((t1 - t0)) -v c="$CLK" -v topics="$TOPICS" -v e="$every_s" 'BEGIN {
    printf "| topics | every | polls/s reaching the app | polls per topic per interval | ssegate CPU %% | CPU µs per poll |\n|---|---|---|---|---|---|\n"
    printf "| %d | %ss | %.0f | %.2f | %.1f | %.1f |\n", topics, e, p / d, (p / d) * e / topics, t / c / d * 100, t / c * 1e6 / p
}'
