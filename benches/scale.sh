#!/usr/bin/env bash
# What an idle stream costs, for extrapolating to 1M streams: benches/scale.sh
#
# Starts a fresh release ssegate with a short heartbeat, opens STREAMS idle streams from
# several 127.0.0.x addresses, holds them for HOLD seconds with one event a second (so the
# heartbeats run), and reports per stream:
#   - user-space RSS (VmRSS of ssegate, before vs connected);
#   - kernel memory: Slab + the TCP buffer pages of /proc/net/sockstat, before vs connected,
#     halved (both ends of every loopback connection are on this machine);
#   - CPU per heartbeat: ssegate's CPU over the hold ÷ heartbeats received (a heartbeat is an
#     SSE comment line; the events add a few per cent).
# Environment (defaults): STREAMS=19000 HOLD=12 HEARTBEAT=1s SRC_IPS=16 LG=<loadgen>
#   LISTEN=127.0.0.1:18580 ADMIN=127.0.0.1:18581 RUN=/tmp/ssegate-scale
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS="${STREAMS:-19000}" HOLD="${HOLD:-12}" SRC_IPS="${SRC_IPS:-16}"
export HEARTBEAT="${HEARTBEAT:-1s}" LISTEN="${LISTEN:-127.0.0.1:18580}"
export ADMIN="${ADMIN:-127.0.0.1:18581}" RUN="${RUN:-/tmp/ssegate-scale}"
if [ -z "${LG:-}" ]; then
    LG=$(ls -t target/release/deps/loadgen-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
fi
[ -x "${LG:-}" ] || { echo "scale: no loadgen; run cargo bench --no-run --bench loadgen" >&2; exit 2; }
trap 'benches/run-ssegate.sh stop >/dev/null 2>&1 || true' EXIT

# Kernel memory in KB: slab caches plus TCP buffer pages (4 KiB each).
kernel_kb() {
    local slab tcp
    slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
    tcp=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
    echo $(( slab + tcp * 4 ))
}

PID=$(benches/run-ssegate.sh start)
K0=$(kernel_kb)
# One event a second keeps the loadgen's window open; the heartbeats are what is measured.
"$LG" run --sub-addr "$LISTEN" --pub-addr "$ADMIN" --streams "$STREAMS" --topics 100 --rate 1 --duration "$HOLD" --src-ips "$SRC_IPS" \
    --publishers 1 --settle 2 --pid "$PID" --json > "$RUN/scale.out" 2>&1 &
LGPID=$!
# Kernel memory once every stream is open (the loadgen settles 2 s after connecting).
for _ in $(seq 1 100); do
    n=$(curl -s "http://$ADMIN/stats" | sed -n 's/.*"connections":\([0-9]*\).*/\1/p')
    [ "${n:-0}" -ge "$STREAMS" ] && break
    sleep 0.2
done
K1=$(kernel_kb)
wait "$LGPID"
json=$(sed -n 's/^JSON //p' "$RUN/scale.out")
echo "$json" | jq -r --argjson streams "$STREAMS" --argjson k0 "$K0" --argjson k1 "$K1" '
  "streams: \(.connected), connected in \(.connect_s) s",
  "user RSS: \(.kb_per_stream * 100 | round / 100) KB per stream",
  "kernel (slab + TCP buffers, halved for the two ends): \((($k1 - $k0) / 2 / $streams) * 100 | round / 100) KB per stream",
  "heartbeats received: \(.comments); server CPU \(.server_cpu_s) s = \((.server_cpu_s * 1e6 / (.comments + .delivered + 1)) * 100 | round / 100) µs per heartbeat or delivery"'
