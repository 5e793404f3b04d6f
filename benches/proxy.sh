#!/usr/bin/env bash
# Proxy throughput: wrk against a tiny hyper upstream three ways in one run — direct,
# through ssegate, through nginx proxy_pass (1 worker unless NGINX_WORKERS, upstream keepalive) — as
# requests/s, p99 and CPU µs per request of the proxy process (from /proc/PID/stat).
#
#   benches/proxy.sh                 # 3 runs of 10 s each way, 1 wrk thread, 50 connections
#   RUNS=5 DURATION=20 CONNS=100 THREADS=2 benches/proxy.sh
#   WORKERS=1 benches/proxy.sh       # ssegate with one worker thread, as nginx here has
#   NGINX_WORKERS=2 benches/proxy.sh # nginx with one worker per core, as ssegate has by default
#   DERIVE=1 benches/proxy.sh        # also ssegate with 20 derive rules none of which
#                                    # matches, and with the same 20 plus one that matches
#
# Needs: wrk and nginx (apt-get install -y wrk nginx), jq. Uses loopback ports 19300-19303.
# SSEGATE_BIN / UPSTREAM_BIN pick prebuilt binaries; otherwise both are built in release.
# QUIET_WAIT=S waits up to S seconds (default 120) for the machine to be idle before each
# measurement (other builds running at the same time skew CPU numbers; it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
RUNS="${RUNS:-3}" DURATION="${DURATION:-10}" CONNS="${CONNS:-50}" THREADS="${THREADS:-1}"
QUIET_WAIT="${QUIET_WAIT:-120}"
UP=127.0.0.1:19300 SG=127.0.0.1:19301 SG_ADMIN=127.0.0.1:19302 NG=127.0.0.1:19303
DIR="$(mktemp -d /tmp/ssegate-proxy-bench.XXXXXX)"
command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "needs wrk and nginx: apt-get install -y wrk nginx" >&2; exit 1; }

SSEGATE_BIN=$(ssegate_bin)
UPSTREAM_BIN="${UPSTREAM_BIN:-$(bench_exe upstream)}"

PIDS=()
cleanup() {
    RUN="$DIR/ssegate" benches/run-ssegate.sh stop || true
    RUN="$DIR/ssegate-rules" benches/run-ssegate.sh stop 2>/dev/null || true
    RUN="$DIR/ssegate-match" benches/run-ssegate.sh stop 2>/dev/null || true
    [ -f "$DIR/nginx/nginx.pid" ] && kill -QUIT "$(cat "$DIR/nginx/nginx.pid")" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
}
trap cleanup EXIT

# The upstream: one tokio thread answering "hello\n".
"$UPSTREAM_BIN" "$UP" 1 > "$DIR/upstream.log" 2>&1 &
PIDS+=($!); UP_PID=$!
wait_port 127.0.0.1 19300 10

# ssegate in front of it.
SG_PID=$(RUN="$DIR/ssegate" LISTEN=$SG ADMIN=$SG_ADMIN UPSTREAM="http://$UP" \
    SSEGATE_BIN="$SSEGATE_BIN" benches/run-ssegate.sh start)

# With DERIVE=1: two more ssegates, with 20 derive rules that the benchmark's GETs never
# match (paths that share no prefix with /, methods the default POST/PUT/PATCH/DELETE), and
# with those 20 plus one rule that matches every GET of / and publishes meta data.
SSEGATE_VARIANTS="ssegate"
if [ "${DERIVE:-0}" = 1 ]; then
    rules="derive:"
    for i in $(seq 1 20); do
        rules="$rules
  - { name: r$i, match: { path: \"/app$i/{tenant}/items/{rest*}\" }, publish: { topic: \"t/{tenant}/r$i\" } }"
    done
    SGR_PID=$(RUN="$DIR/ssegate-rules" LISTEN=127.0.0.1:19304 ADMIN=127.0.0.1:19305 UPSTREAM="http://$UP" \
        SSEGATE_BIN="$SSEGATE_BIN" EXTRA_YAML="$rules" benches/run-ssegate.sh start)
    SGM_PID=$(RUN="$DIR/ssegate-match" LISTEN=127.0.0.1:19306 ADMIN=127.0.0.1:19307 UPSTREAM="http://$UP" \
        SSEGATE_BIN="$SSEGATE_BIN" EXTRA_YAML="$rules
  - { name: all, match: { methods: [GET], path: / }, publish: { topic: bench/derived } }" \
        benches/run-ssegate.sh start)
    SSEGATE_VARIANTS="ssegate ssegate+20rules ssegate+match"
fi

# nginx in front of it: NGINX_WORKERS (default 1) workers, upstream keepalive, the same
# forwarding headers as ssegate.
mkdir -p "$DIR/nginx/tmp"
cat > "$DIR/nginx/nginx.conf" <<NGINX
worker_processes ${NGINX_WORKERS:-1};
daemon off;
user root;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    upstream app { server $UP; keepalive 64; keepalive_requests 1000000; }
    server {
        listen $NG backlog=4096;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme";
        }
    }
}
NGINX
nginx -p "$DIR/nginx/" -c "$DIR/nginx/nginx.conf" > "$DIR/nginx/stdout.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 19303 10
NG_PIDS="$(cat "$DIR/nginx/nginx.pid") $(descendants "$(cat "$DIR/nginx/nginx.pid")" | tr '\n' ' ')"
CLK=$(getconf CLK_TCK)
echo "upstream pid $UP_PID, ssegate pid $SG_PID, nginx pids $NG_PIDS; results in $DIR"

to_ms() { # wrk latency like 812.00us, 1.23ms, 2.01s -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; print n }'
}

measure() { # name url proxy-pids...
    local name=$1 url=$2; shift 2
    curl -sf "$url" > /dev/null || { echo "$name: $url does not answer" >&2; return 1; }
    wrk -t"$THREADS" -c"$CONNS" -d2s "$url" > /dev/null   # warm-up (pools, caches)
    for r in $(seq 1 "$RUNS"); do
        wait_quiet "$QUIET_WAIT" 10
        local p0 u0 out p1 u1 reqs rps p99
        p0=$(proc_ticks "$@"); u0=$(proc_ticks "$UP_PID")
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$url")
        p1=$(proc_ticks "$@"); u1=$(proc_ticks "$UP_PID")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
        local cpu=n/a
        [ $# -gt 0 ] && cpu=$(awk -v t=$((p1 - p0)) -v r="$reqs" -v c="$CLK" 'BEGIN {printf "%.1f", t / c * 1e6 / r}')
        local ucpu
        ucpu=$(awk -v t=$((u1 - u0)) -v r="$reqs" -v c="$CLK" 'BEGIN {printf "%.1f", t / c * 1e6 / r}')
        echo "$name run $r: $rps req/s, p99 $p99 ms, proxy CPU $cpu µs/req, upstream CPU $ucpu µs/req ($reqs requests)"
        echo "$name $rps $p99 $cpu $ucpu" >> "$DIR/results"
    done
}

measure direct "http://$UP/" 
measure ssegate "http://$SG/" "$SG_PID"
if [ "${DERIVE:-0}" = 1 ]; then
    measure ssegate+20rules "http://127.0.0.1:19304/" "$SGR_PID"
    measure ssegate+match "http://127.0.0.1:19306/" "$SGM_PID"
fi
# shellcheck disable=SC2086
measure nginx "http://$NG/" $NG_PIDS

echo
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, medians of $RUNS runs ($(nproc) cores, all on this machine):"
echo
echo "| path | requests/s | p99 ms | proxy CPU µs/request | upstream CPU µs/request |"
echo "|---|---|---|---|---|"
for name in direct $SSEGATE_VARIANTS nginx; do
    col() { awk -v n="$name" -v c="$1" '$1 == n {print $c}' "$DIR/results" | median; }
    echo "| $name | $(col 2) | $(col 3) | $(col 4) | $(col 5) |"
done
