#!/usr/bin/env bash
# GEMM candidates on the model's linear-layer shapes, in one run.
#
#   bench/run_gemm_bench.sh [--no-build] [BUILD_DIR]      (default build/cpu)
#
# Runs every bench_gemm_<provider> the build made (bench/CMakeLists.txt: the
# build's BLAS, oneDNN, BLIS), ROUNDS times in turn so that load on a shared
# machine falls on all of them alike, and prints each provider's median over
# the rounds of the S and M rates (total FLOPs / total median time over the
# shapes of a step). The build's BLAS runs once as the environment has it and
# once more per core name in INSITRA_BENCH_CORETYPES (OpenBLAS only; a
# comparison, stated in the table: the library itself never sets it).
#
# Environment (all optional):
#   OMP_NUM_THREADS            threads (default: the cores it may use)
#   INSITRA_BENCH_CPUS         taskset -c list to pin to ("0,1", "0-7")
#   INSITRA_BENCH_ROUNDS       rounds (3)
#   INSITRA_BENCH_REPS         timed calls per shape in a round (5)
#   INSITRA_BENCH_CORETYPES    OpenBLAS core names to try too ("SkylakeX Haswell")
#   INSITRA_BENCH_CONFIGS      S, M or SM (SM)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
no_build=0
if [[ ${1:-} == --no-build ]]; then no_build=1; shift; fi
build=${1:-build/cpu}
case $build in /*) ;; *) build=$root/$build ;; esac
die() { echo "run_gemm_bench: $*" >&2; exit 1; }
[[ -f $build/CMakeCache.txt ]] || die "$build is not a configured CMake build directory"

pin=()
[[ -n ${INSITRA_BENCH_CPUS:-} ]] && pin=(taskset -c "$INSITRA_BENCH_CPUS")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$("${pin[@]}" nproc)}
rounds=${INSITRA_BENCH_ROUNDS:-3}
reps=${INSITRA_BENCH_REPS:-5}
configs=${INSITRA_BENCH_CONFIGS:-SM}

programs=()
for p in blas onednn blis; do
    if ((no_build == 0)); then cmake --build "$build" --target bench_gemm_$p >&2 2>/dev/null || true; fi
    exe=$(find "$build" -type f -name "bench_gemm_$p" -perm -u+x | head -n 1)
    [[ -n $exe ]] && programs+=("$p=$exe")
done
((${#programs[@]})) || die "no bench_gemm_* under $build"

# A run: label, then the environment and program.
declare -A s_rates m_rates s_cpu m_cpu kernels
run_one() {
    local label=$1 line
    shift
    line=$("${pin[@]}" env "$@" "$reps" 1 "$configs" | tail -n 1) || die "failed: $*"
    echo "$label $line" >&2
    kernels[$label]=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^kernel=//p')
    s_rates[$label]+="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^S_gflops=//p') "
    m_rates[$label]+="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^M_gflops=//p') "
    s_cpu[$label]+="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^S_cpu_gflops=//p') "
    m_cpu[$label]+="$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^M_cpu_gflops=//p') "
    [[ $configs == *S* ]] || { s_rates[$label]+="- "; s_cpu[$label]+="- "; }
    [[ $configs == *M* ]] || { m_rates[$label]+="- "; m_cpu[$label]+="- "; }
}
labels=()
for ((r = 0; r < rounds; r++)); do
    for entry in "${programs[@]}"; do
        p=${entry%%=*} exe=${entry#*=}
        run_one "$p" "$exe"
        ((r == 0)) && labels+=("$p")
        if [[ $p == blas ]]; then
            for core in ${INSITRA_BENCH_CORETYPES:-SkylakeX Haswell}; do
                run_one "blas:OPENBLAS_CORETYPE=$core" OPENBLAS_CORETYPE="$core" "$exe"
                ((r == 0)) && labels+=("blas:OPENBLAS_CORETYPE=$core")
            done
        fi
    done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{v[NR] = $1} END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "threads=$OMP_NUM_THREADS cores=${INSITRA_BENCH_CPUS:-all (not pinned)} rounds=$rounds reps=$reps" \
     "load=$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s | %-18s | %10s | %10s | %10s | %10s | %s\n' provider kernel "S GFLOP/s" "M GFLOP/s" \
       "S per CPU" "M per CPU" "all rounds (S; M)"
printf '%s\n' "-----------------------------------+--------------------+------------+------------+------------+------------+------------------"
for label in "${labels[@]}"; do
    printf '%-34s | %-18s | %10s | %10s | %10s | %10s | %s; %s\n' "$label" "${kernels[$label]}" \
           "$(median <<<"${s_rates[$label]}")" "$(median <<<"${m_rates[$label]}")" \
           "$(median <<<"${s_cpu[$label]}")" "$(median <<<"${m_cpu[$label]}")" \
           "${s_rates[$label]% }" "${m_rates[$label]% }"
done
echo "GFLOP/s: wall clock; per CPU: per second of the process's CPU time over all its threads (with one"
echo "thread on a shared machine, the rate the library reaches when it has the core to itself)"
