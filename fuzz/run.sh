#!/bin/sh
# Runs every fuzz target for SECONDS each (default 60), one after the other, and prints
# executions and coverage per target. Exits 1 if any target crashed (the input is saved in
# fuzz/artifacts/TARGET/; reproduce with `cargo fuzz run --sanitizer none TARGET FILE`).
#
#   fuzz/run.sh 60          # needs `cargo install cargo-fuzz`; works on stable Rust
#
# Stable Rust: `--sanitizer none` keeps cargo-fuzz from passing `-Zsanitizer=address`, the
# one nightly-only flag it adds; the coverage instrumentation it uses (`-Cpasses=sancov-module`
# and `-Cllvm-args=-sanitizer-coverage-*`) is stable. ssegate forbids `unsafe`, so ASan
# would add little; to try it anyway: `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET` (see README.md).
#
# Each run is bounded twice: libFuzzer's -max_total_time, and `timeout` around it in case a
# single input hangs (libFuzzer's own -timeout=10 then reports it as a crash).
set -eu

secs=${1:-60}
case $secs in
'' | *[!0-9]*)
    echo "usage: $0 SECONDS" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")"
targets="publish_body stream_request config sse_roundtrip"
log_dir=target/run-logs
mkdir -p "$log_dir"

echo "building fuzz targets (release, debug assertions, coverage instrumentation)..."
cargo fuzz build --sanitizer none >"$log_dir/build.log" 2>&1 || {
    cat "$log_dir/build.log" >&2
    exit 1
}

bin_dir=target/$(rustc -vV | sed -n 's/^host: //p')/release
status=0
summary=""
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=""
    [ -d "seeds/$t" ] && seeds="seeds/$t"
    # The shipped configuration files are seeds for the config loader.
    [ "$t" = config ] && seeds="$seeds ../config"
    dict=""
    [ -f "dict/$t.dict" ] && dict="-dict=dict/$t.dict"
    echo "fuzzing $t for ${secs}s..."
    # The binary built above, run directly: `cargo fuzz run` would rebuild first, and pick
    # up whatever the working tree holds by then.
    # shellcheck disable=SC2086 # $seeds and $dict are lists of words on purpose
    if timeout $((secs + 60)) "$bin_dir/$t" "corpus/$t" $seeds \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" $dict >"$log_dir/$t.log" 2>&1; then
        result=ok
    elif grep -q 'Test unit written to' "$log_dir/$t.log"; then
        result="CRASH: $(grep -o 'artifacts/[^ ]*' "$log_dir/$t.log" | tail -n 1) (log: $log_dir/$t.log)"
        status=1
    else
        result="FAILED to run (log: $log_dir/$t.log)"
        status=1
    fi
    # The last status line: "#N DONE cov: EDGES ft: FEATURES corp: UNITS/SIZE ... exec/s: R"
    last=$(grep -E '^#[0-9]+' "$log_dir/$t.log" | tail -n 1)
    execs=$(grep -E '^stat::number_of_executed_units' "$log_dir/$t.log" | awk '{print $2}')
    rate=$(grep -E '^stat::average_exec_per_sec' "$log_dir/$t.log" | awk '{print $2}')
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
    summary="$summary$(printf '%-15s %12s %9s %7s %9s %7s  %s' "$t" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result")
"
done

echo
printf '%-15s %12s %9s %7s %9s %7s  %s\n' target executions exec/s edges features corpus result
printf '%s' "$summary"
echo "(edges: libFuzzer's cov, instrumented edges reached; features: its ft, edges plus"
echo " hit counts and comparison values; logs in fuzz/$log_dir)"
exit $status
