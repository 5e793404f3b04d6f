#!/usr/bin/env bash
# The cost of access control (issue 4): streams opened per second with `auth.mode: none`
# vs `jwt` (HS256, token in access_token=), and proxied requests/s with and without
# `requests_per_ip` (set far above the offered rate, so only the limiter's bookkeeping is
# measured). Medians of RUNS runs. Needs: cargo build --release; cargo bench --no-run; wrk.
#   benches/auth.sh            STREAMS=5000 RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
BIN=target/release/ssegate
LG=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
UP=$(ls -t target/release/deps/upstream-* | grep -v '\.d$' | head -1)
STREAMS=${STREAMS:-5000}
RUNS=${RUNS:-3}
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$RUN"' EXIT
SECRET=bench-secret
# An HS256 token with admin: true, made with the standard library only.
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"sub": "bench", "admin": True}).encode())
s = b(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)

"$UP" 127.0.0.1:19300 >/dev/null 2>&1 &

start() { # start AUTH_YAML LIMIT_YAML
    cat > "$RUN/ssegate.yaml" <<YAML
listen: 127.0.0.1:18080
admin_listen: 127.0.0.1:18081
upstream: http://127.0.0.1:19300
limits: { max_connections: 1000000, max_connections_per_ip: 1000000, connect_rate_per_ip: 1000000/s, requests_per_ip: $2 }
auth: $1
log: { level: warn }
YAML
    "$BIN" --config "$RUN/ssegate.yaml" 2>"$RUN/log" &
    echo $! > "$RUN/pid"
    for _ in $(seq 100); do curl -fs http://127.0.0.1:18081/healthz >/dev/null && return; sleep 0.1; done
    echo "ssegate did not start" >&2; cat "$RUN/log" >&2; exit 1
}
stop() { kill "$(cat "$RUN/pid")"; wait "$(cat "$RUN/pid")" 2>/dev/null || true; }

connect_rate() { # label sub-path
    local rates=()
    for _ in $(seq "$RUNS"); do
        start "$3" null
        local out
        out=$("$LG" run --streams "$STREAMS" --topics 100 --burst 1 --src-ips 8 \
              --sub-path "$2" --pid "$(cat "$RUN/pid")" --json | grep '^JSON ')
        rates+=("$(python3 -c 'import json,sys; r=json.loads(sys.argv[1][5:]); print(round(r["connected"]/r["connect_s"]))' "$out")")
        stop
    done
    echo "$1: streams opened/s (median of $RUNS): $(printf '%s\n' "${rates[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")  runs: ${rates[*]}"
}

requests() { # label requests_per_ip
    local rps=()
    for _ in $(seq "$RUNS"); do
        start "{ mode: none }" "$2"
        rps+=("$(wrk -t1 -c32 -d5s http://127.0.0.1:18080/ | awk '/Requests\/sec/ {print int($2)}')")
        stop
    done
    echo "$1: proxied requests/s (median of $RUNS): $(printf '%s\n' "${rps[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")  runs: ${rps[*]}"
}

connect_rate "auth none" "/events/{topic}" "{ mode: none }"
connect_rate "auth jwt " "/events/{topic}?access_token=$TOKEN" "{ mode: jwt, jwt: { algorithms: [HS256], secret: $SECRET } }"
requests "requests_per_ip off    " null
requests "requests_per_ip 1000000/s" 1000000/s
