#!/usr/bin/env bash
# Training-step benchmark: insitra against its PyTorch twin, in one run.
#
#   bench/run_step_bench.sh [BUILD_DIR]          (default build/ci)
#
# Builds target bench_step in BUILD_DIR (a no-op when it is up to date), then
# on OMP_NUM_THREADS threads (default: nproc) measures, one after another:
#   1. OpenBLAS cblas_sgemm on config M's GEMM shapes   (bench_step sgemm)
#   2. config S: insitra (bench_step under mpiexec -n 1), then PyTorch
#   3. config M: the same
# and prints a table, the targets with PASS/MISS, and as its last line
# "RESULT key=value ..." with every figure. See bench/README.md.
#
# Environment (all optional):
#   OMP_NUM_THREADS             threads for insitra, OpenBLAS and torch (nproc)
#   INSITRA_BENCH_S_WARMUP      untimed steps for S (5)
#   INSITRA_BENCH_S_STEPS       timed steps for S (20)
#   INSITRA_BENCH_M_WARMUP      untimed steps for M (2)
#   INSITRA_BENCH_M_STEPS       timed steps for M (10)
#   INSITRA_BENCH_SGEMM_REPS    timed calls per sgemm shape (10)
#   INSITRA_BENCH_SET           extra insitra config overrides, "key=value ..."
#   INSITRA_BENCH_PYTHON        python with torch (/usr/bin/python3)
#   MPIEXEC                     launcher for bench_step ("mpiexec -n 1")
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build/ci}
case $build in /*) ;; *) build=$root/$build ;; esac

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
s_warmup=${INSITRA_BENCH_S_WARMUP:-5}
s_steps=${INSITRA_BENCH_S_STEPS:-20}
m_warmup=${INSITRA_BENCH_M_WARMUP:-2}
m_steps=${INSITRA_BENCH_M_STEPS:-10}
sgemm_reps=${INSITRA_BENCH_SGEMM_REPS:-10}
python=${INSITRA_BENCH_PYTHON:-/usr/bin/python3}
read -r -a mpiexec <<<"${MPIEXEC:-mpiexec -n 1}"
read -r -a overrides <<<"${INSITRA_BENCH_SET:-}"

die() { echo "run_step_bench: $*" >&2; exit 1; }

[[ -f $build/CMakeCache.txt ]] ||
    die "$build is not a configured CMake build directory (configure it first)"
cmake --build "$build" --target bench_step >&2 || die "building bench_step failed"
bench_step=
for candidate in "$build/bench/bench_step" "$build/bench_step"; do
    [[ -x $candidate ]] && { bench_step=$candidate; break; }
done
[[ -n $bench_step ]] || bench_step=$(find "$build" -type f -name bench_step -perm -u+x | head -n 1)
[[ -n $bench_step ]] || die "no bench_step binary under $build"

# Runs a benchmark, echoes its output to stderr, and prints its last line.
run() {
    local out
    echo "+ $*" >&2
    out=$("$@") || die "failed: $*"
    printf '%s\n' "$out" >&2
    printf '%s\n' "$out" | tail -n 1
}
# The value of key in a line of key=value pairs.
field() {
    local v
    v=$(printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1)
    [[ -n $v ]] || die "no $2= in: $1"
    printf '%s\n' "$v"
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
# Warns when a program's median step is well above its fastest one: something
# else was using the cores, and the figures of this run are not to be trusted.
noisy=0
check_noise() {
    local spread
    spread=$(calc %.2f "$(field "$1" step_ms) / $(field "$1" step_ms_min)")
    if awk "BEGIN { exit !($spread > 1.25) }"; then
        noisy=1
        echo "run_step_bench: WARNING: $2: median step is ${spread}x the fastest one;" \
             "the machine was busy, run again on a quiet machine" >&2
    fi
}
verdict() { awk "BEGIN { print ($1 >= $2) ? \"PASS\" : \"MISS\" }"; }

echo "threads=$OMP_NUM_THREADS OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}" \
     "OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset} bench_step=$bench_step" >&2

sgemm_line=$(run "${mpiexec[@]}" "$bench_step" sgemm "$sgemm_reps")
sgemm=$(field "$sgemm_line" gflops)
spread=$(calc %.2f "$(field "$sgemm_line" gflops_best) / $sgemm")
if awk "BEGIN { exit !($spread > 1.25) }"; then
    noisy=1
    echo "run_step_bench: WARNING: sgemm: fastest call is ${spread}x the median;" \
         "the machine was busy, run again on a quiet machine" >&2
fi

declare -A r
for cfg in S M; do
    if [[ $cfg == S ]]; then w=$s_warmup; n=$s_steps; else w=$m_warmup; n=$m_steps; fi
    ins=$(run "${mpiexec[@]}" "$bench_step" "$cfg" "$w" "$n" ${overrides[@]+"${overrides[@]}"})
    tor=$(run "$python" "$here/bench_torch.py" "$cfg" "$w" "$n" --threads "$OMP_NUM_THREADS")
    check_noise "$ins" "insitra $cfg"
    check_noise "$tor" "torch $cfg"
    r[${cfg}_insitra_step_ms]=$(field "$ins" step_ms)
    r[${cfg}_insitra_tok_s]=$(field "$ins" tokens_per_s)
    r[${cfg}_gflops]=$(field "$ins" gflops)
    r[${cfg}_params]=$(field "$ins" params)
    r[${cfg}_torch_step_ms]=$(field "$tor" step_ms)
    r[${cfg}_torch_tok_s]=$(field "$tor" tokens_per_s)
    r[${cfg}_torch_gflops]=$(field "$tor" gflops)
    torch_params=$(field "$tor" params)
    [[ ${r[${cfg}_params]} == "$torch_params" ]] ||
        echo "run_step_bench: WARNING: $cfg has ${r[${cfg}_params]} parameters in insitra" \
             "but $torch_params in torch: the models differ" >&2
    r[${cfg}_ratio]=$(calc %.3f "${r[${cfg}_insitra_tok_s]} / ${r[${cfg}_torch_tok_s]}")
    r[${cfg}_sgemm_frac]=$(calc %.3f "${r[${cfg}_gflops]} / $sgemm")
done

echo
printf '%-6s | %15s | %16s | %14s | %6s | %15s | %10s\n' config "insitra step ms" \
       "insitra tokens/s" "torch tokens/s" ratio "insitra GFLOP/s" "% of sgemm"
printf '%s\n' "-------+-----------------+------------------+----------------+--------+-----------------+-----------"
for cfg in S M; do
    printf '%-6s | %15s | %16s | %14s | %6s | %15s | %9s%%\n' "$cfg" \
           "${r[${cfg}_insitra_step_ms]}" "${r[${cfg}_insitra_tok_s]}" "${r[${cfg}_torch_tok_s]}" \
           "${r[${cfg}_ratio]}" "${r[${cfg}_gflops]}" "$(calc %.1f "100 * ${r[${cfg}_sgemm_frac]}")"
done
echo "sgemm (OpenBLAS, $OMP_NUM_THREADS threads): $sgemm GFLOP/s"
echo
s_target=$(verdict "${r[S_ratio]}" 2.0)
m_target=$(verdict "${r[M_ratio]}" 1.3)
f_target=$(verdict "${r[M_sgemm_frac]}" 0.5)
echo "target S tokens/s >= 2.0 x torch:   ${r[S_ratio]} x   $s_target"
echo "target M tokens/s >= 1.3 x torch:   ${r[M_ratio]} x   $m_target"
echo "target M GFLOP/s >= 50% of sgemm:   $(calc %.1f "100 * ${r[M_sgemm_frac]}")%   $f_target"
((noisy == 0)) || echo "WARNING: step times varied by more than 25% (see above): the machine was busy"

line="RESULT threads=$OMP_NUM_THREADS"
for cfg in S M; do
    for k in insitra_step_ms torch_step_ms insitra_tok_s torch_tok_s ratio gflops torch_gflops \
             sgemm_frac params; do
        line+=" ${cfg}_$k=${r[${cfg}_$k]}"
    done
done
line+=" sgemm_gflops=$sgemm S_target=$s_target M_target=$m_target M_sgemm_target=$f_target"
line+=" noisy=$noisy"
echo "$line"
