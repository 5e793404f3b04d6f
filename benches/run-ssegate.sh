#!/usr/bin/env bash
# Start/stop ssegate for the benchmarks, on loopback, with a config in a temp dir.
#   benches/run-ssegate.sh start   -> prints the pid, writes $RUN/pid
#   benches/run-ssegate.sh stop
# Settings (environment, with defaults):
#   SSEGATE_BIN=target/release/ssegate    the binary (build with `cargo build --release`)
#   RUN=/tmp/ssegate-bench-run            config, log and pid file
#   LISTEN=127.0.0.1:18080 ADMIN=127.0.0.1:18081 UPSTREAM=http://127.0.0.1:19300
#   HISTORY_MAX_EVENTS=10000 HISTORY_MAX_AGE=1h SUBSCRIBER_BUFFER=1000 SLOW_CONSUMER=disconnect
#   HEARTBEAT=15s
#   REDIS_URL (unset: the memory broker; set: `broker.kind: redis` on that URL)
#   REDIS_STREAM=ssegate:events
#   EXTRA_YAML (appended to the config as it is: derive or watch rules, say)
#   DISK_DIR (unset: as above; set: `broker.kind: disk` in that directory)
#   DISK_SYNC=always
#   WORKERS (unset: one per core; set: `workers: $WORKERS`, e.g. 1 to match nginx's one worker)
# Connection limits are set far above any scenario here (a benchmark opens thousands of
# streams from a handful of loopback addresses).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${SSEGATE_BIN:-target/release/ssegate}"
RUN="${RUN:-/tmp/ssegate-bench-run}"
LISTEN="${LISTEN:-127.0.0.1:18080}"
ADMIN="${ADMIN:-127.0.0.1:18081}"

case "${1:-}" in
start)
    if [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
        echo "ssegate already running (pid $(cat "$RUN/pid")); stop it first" >&2; exit 1
    fi
    mkdir -p "$RUN"
    cat > "$RUN/ssegate.yaml" <<YAML
listen: $LISTEN
admin_listen: $ADMIN
upstream: ${UPSTREAM:-http://127.0.0.1:19300}
events:
  heartbeat: ${HEARTBEAT:-15s}
  history: { max_events: ${HISTORY_MAX_EVENTS:-10000}, max_age: ${HISTORY_MAX_AGE:-1h} }
  subscriber_buffer: ${SUBSCRIBER_BUFFER:-1000}
  slow_consumer: ${SLOW_CONSUMER:-disconnect}
limits:
  max_connections: 1000000
  max_connections_per_ip: 1000000
  connect_rate_per_ip: 1000000/s
log: { format: pretty, level: warn }
YAML
    # Only when asked: builds before the key existed refuse it.
    if [ -n "${WORKERS:-}" ]; then echo "workers: $WORKERS" >> "$RUN/ssegate.yaml"; fi
    if [ -n "${REDIS_URL:-}" ]; then
        cat >> "$RUN/ssegate.yaml" <<YAML
broker:
  kind: redis
  redis: { url: "$REDIS_URL", stream: "${REDIS_STREAM:-ssegate:events}" }
YAML
    fi
    if [ -n "${EXTRA_YAML:-}" ]; then printf '%s\n' "$EXTRA_YAML" >> "$RUN/ssegate.yaml"; fi
    if [ -n "${DISK_DIR:-}" ]; then
        cat >> "$RUN/ssegate.yaml" <<YAML
broker:
  kind: disk
  disk: { dir: "$DISK_DIR", sync: "${DISK_SYNC:-always}" }
YAML
    fi
    "$BIN" check --config "$RUN/ssegate.yaml" >/dev/null
    # Same open-file limit as the peers get (their scripts raise it to the hard limit).
    ulimit -n "$(ulimit -Hn)"
    setsid "$BIN" --config "$RUN/ssegate.yaml" > "$RUN/ssegate.log" 2>&1 < /dev/null &
    echo $! > "$RUN/pid"
    port="${ADMIN##*:}"
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/${ADMIN%:*}/$port") 2>/dev/null && break
        sleep 0.1
    done
    kill -0 "$(cat "$RUN/pid")" 2>/dev/null || { cat "$RUN/ssegate.log" >&2; exit 1; }
    echo "$(cat "$RUN/pid")"
    ;;
stop)
    if [ -f "$RUN/pid" ]; then
        pid=$(cat "$RUN/pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        rm -f "$RUN/pid"
    fi
    ;;
*) echo "usage: $0 start | stop" >&2; exit 2 ;;
esac
