# Helpers for the bench scripts (sourced).

# cpu_busy_pct: share of all cores busy over the next second, from /proc/stat.
cpu_busy_pct() {
    local a b
    read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
    a=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) ))
    b=$(( a + (i2+w2) - (i1+w1) ))
    echo $(( b > 0 ? 100 * a / b : 0 ))
}

# wait_quiet [MAX_S] [PCT]: wait until the machine is quiet (other builds finished), at
# most MAX_S seconds (default 300); a measurement taken anyway is flagged on stderr.
wait_quiet() {
    local max="${1:-300}" pct="${2:-10}" start busy
    start=$(date +%s)
    while :; do
        busy=$(cpu_busy_pct)
        BUSY=$busy
        [ "$busy" -le "$pct" ] && return 0
        if [ $(( $(date +%s) - start )) -ge "$max" ]; then
            echo "warning: machine still ${busy}% busy after ${max}s; measuring anyway" >&2
            return 0
        fi
    done
}

# proc_ticks PID...: utime+stime summed over the processes, in clock ticks.
proc_ticks() {
    local p t=0 x
    for p in "$@"; do
        # Fields after the command name: state is $1, utime (field 14) $12, stime $13.
        x=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || continue
        t=$(( t + ${x:-0} ))
    done
    echo "$t"
}

# descendants PID: all descendant pids.
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done
}

# wait_port HOST PORT [TIMEOUT_S]
wait_port() {
    local i
    for i in $(seq 1 $(( ${3:-10} * 10 ))); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# median [DECIMALS]: median of the numbers on stdin (one per line), rounded
median() {
    sort -g | awk -v d="${1:-2}" '{a[NR]=$1}
        END {
            if (NR == 0 || a[1] == "n/a") { print "n/a"; exit }
            m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
            printf "%.*f\n", d, m
        }'
}

# bench_exe NAME: path of the release executable of bench target NAME (builds it).
bench_exe() {
    cargo bench --no-run --bench "$1" --message-format=json 2>/dev/null |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "'"$1"'" and .executable != null) | .executable' |
        tail -1
}

# ssegate_bin: the ssegate executable to measure: $SSEGATE_BIN if set, else the release
# build (built first). One rule for every script.
ssegate_bin() {
    if [ -n "${SSEGATE_BIN:-}" ]; then echo "$SSEGATE_BIN"; return; fi
    cargo build --release -q >&2 && echo "$PWD/target/release/ssegate"
}
