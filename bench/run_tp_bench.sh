#!/usr/bin/env bash
# Tensor parallelism on the CPU: config M's training step at parallel.tp =
# 1, 2 and 4 on the same cores, in one run.
#
#   bench/run_tp_bench.sh [--no-build] [BUILD_DIR]    (default build/cpu)
#
# The cores in INSITRA_BENCH_CPUS (default: all this process may use) are
# split into tp equal consecutive parts; rank r of a run is pinned to part r
# and runs cores/tp OpenMP threads (one MPMD launch), so every tp uses the
# same cores. Each run is bench_step M (dp = 1: one data replica, the tp
# group holding every sample's tokens) with INSITRA_BENCH_SET on top. Prints
# a table (median ms/step, tokens/s, memory per rank from
# insitra_memory_report, the communication share: the step's time blocked in
# collectives, and the speed against tp = 1) and "RESULT ..." last.
#
# Environment: INSITRA_BENCH_CPUS (taskset list), INSITRA_BENCH_TPS ("1 2 4"),
# INSITRA_BENCH_WARMUP (1), INSITRA_BENCH_STEPS (5), INSITRA_BENCH_SET.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
no_build=0
if [[ ${1:-} == --no-build ]]; then no_build=1; shift; fi
build=${1:-build/cpu}
case $build in /*) ;; *) build=$root/$build ;; esac
die() { echo "run_tp_bench: $*" >&2; exit 1; }
(( no_build )) || cmake --build "$build" --target bench_step -j"$(nproc)" >/dev/null || die "cannot build bench_step"
exe=$build/bench/bench_step
[[ -x $exe ]] || die "no $exe"

# the cores as a list of numbers, from a taskset list such as "0-3,8"
cpus=${INSITRA_BENCH_CPUS:-$(taskset -pc $$ | sed 's/.*: //')}
cores=()
IFS=, read -r -a parts <<<"$cpus"
for p in "${parts[@]}"; do
    if [[ $p == *-* ]]; then for ((c = ${p%-*}; c <= ${p#*-}; c++)); do cores+=("$c"); done; else cores+=("$p"); fi
done
n=${#cores[@]}
read -r -a overrides <<<"${INSITRA_BENCH_SET:-}"
warmup=${INSITRA_BENCH_WARMUP:-1}
steps=${INSITRA_BENCH_STEPS:-5}

value() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
echo "config M on ${n} cores (${cpus}); tp ranks each pinned to n/tp consecutive cores, OMP threads = n/tp"
printf '| tp | ranks x threads | ms/step | tokens/s | MiB/rank | comm share | vs tp 1 |\n|---:|---|---:|---:|---:|---:|---:|\n'
base=""
result="RESULT"
for tp in ${INSITRA_BENCH_TPS:-1 2 4}; do
    if (( n % tp != 0 )); then echo "| $tp | skipped: $n cores do not split into $tp parts | | | | | |"; continue; fi
    per=$((n / tp))
    launch=()
    for ((r = 0; r < tp; r++)); do
        list=$(IFS=,; echo "${cores[*]:r*per:per}")
        (( r > 0 )) && launch+=(:)
        launch+=(-n 1 env OMP_NUM_THREADS=$per taskset -c "$list" "$exe" M "$warmup" "$steps" parallel.tp=$tp "${overrides[@]}")
    done
    line=$(mpiexec "${launch[@]}" | grep '^insitra ' | tail -1) || die "tp $tp failed"
    ms=$(value step_ms "$line"); tps=$(value tokens_per_s "$line"); mem=$(value mem_mib "$line")
    share=$(value comm_share "$line")
    [[ -z $base ]] && base=$ms
    printf '| %d | %d x %d | %s | %s | %s | %.1f%% | %.2f |\n' "$tp" "$tp" "$per" "$ms" "$tps" "$mem" \
        "$(awk -v s="$share" 'BEGIN{print 100*s}')" "$(awk -v a="$base" -v b="$ms" 'BEGIN{print a/b}')"
    result+=" tp${tp}_ms=$ms tp${tp}_mib=$mem tp${tp}_comm=$share"
done
echo "$result"
