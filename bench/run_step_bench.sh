#!/usr/bin/env bash
# Training-step benchmark: insitra against its PyTorch twin, in one run.
#
#   bench/run_step_bench.sh [--no-build] [BUILD_DIR]    (default build/ci)
#
# Builds targets bench_step and bench_gemm_* in BUILD_DIR (a no-op when they
# are up to date; --no-build skips it, for a packed tree without object
# files), then on OMP_NUM_THREADS threads (default: the cores it may use)
# measures, one after another:
#   1. the chosen GEMM (INSITRA_CPU_GEMM) on S's and M's linear-layer shapes
#      (bench_gemm_<provider>)
#   2. config S: insitra (bench_step under mpiexec -n 1), then PyTorch
#   3. config M: the same
# PyTorch is the newest one found (INSITRA_BENCH_PYTHON, else every python3
# on PATH, /usr/local/bin and /usr/bin: a pip wheel beats Debian's), run
# without LD_LIBRARY_PATH. With INSITRA_BENCH_CPUS both sides run pinned
# there (taskset -c).
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
#   INSITRA_BENCH_PYTHON        python with torch (default: the newest found)
#   INSITRA_BENCH_CPUS          cores to pin both sides to, taskset -c list ("0,1", "0-7")
#   INSITRA_BENCH_NO_BUILD      1: as --no-build
#   MPIEXEC                     launcher for bench_step ("mpiexec -n 1")
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
no_build=${INSITRA_BENCH_NO_BUILD:-0}
if [[ ${1:-} == --no-build ]]; then no_build=1; shift; fi
build=${1:-build/ci}
case $build in /*) ;; *) build=$root/$build ;; esac

cpus=${INSITRA_BENCH_CPUS:-}
pin=()
if [[ -n $cpus ]]; then
    command -v taskset >/dev/null || { echo "run_step_bench: INSITRA_BENCH_CPUS needs taskset" >&2; exit 1; }
    pin=(taskset -c "$cpus")
fi
# nproc counts the cores this process may use: under taskset, the pinned ones.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$("${pin[@]}" nproc)}
s_warmup=${INSITRA_BENCH_S_WARMUP:-5}
s_steps=${INSITRA_BENCH_S_STEPS:-20}
m_warmup=${INSITRA_BENCH_M_WARMUP:-2}
m_steps=${INSITRA_BENCH_M_STEPS:-10}
sgemm_reps=${INSITRA_BENCH_SGEMM_REPS:-10}

read -r -a mpiexec <<<"${MPIEXEC:-mpiexec -n 1}"
read -r -a overrides <<<"${INSITRA_BENCH_SET:-}"

die() { echo "run_step_bench: $*" >&2; exit 1; }

[[ -f $build/CMakeCache.txt ]] ||
    die "$build is not a configured CMake build directory (configure it first)"
# The GEMM provider the build chose (cmake/insitraDependencies.cmake).
gemm=$(sed -n 's/^INSITRA_CPU_GEMM_USED:INTERNAL=//p' "$build/CMakeCache.txt")
case $gemm in oneDNN) gemm_target=bench_gemm_onednn ;; *) gemm=BLAS gemm_target=bench_gemm_blas ;; esac
if ((no_build == 0)); then
    cmake --build "$build" --target bench_step $gemm_target >&2 || die "building the benchmarks failed"
fi
find_program() {
    local candidate
    for candidate in "$build/bench/$1" "$build/$1"; do
        [[ -x $candidate ]] && { printf '%s\n' "$candidate"; return; }
    done
    candidate=$(find "$build" -type f -name "$1" -perm -u+x | head -n 1)
    [[ -n $candidate ]] || die "no $1 binary under $build"
    printf '%s\n' "$candidate"
}
bench_step=$(find_program bench_step)
bench_gemm=$(find_program $gemm_target)

# The newest PyTorch on the machine: the strongest peer.
torch_version() { env -u LD_LIBRARY_PATH "$1" -c 'import torch; print(torch.__version__)' 2>/dev/null; }
python=${INSITRA_BENCH_PYTHON:-}
if [[ -z $python ]]; then
    best=
    while read -r candidate; do
        [[ -x $candidate ]] || continue
        v=$(torch_version "$candidate") || continue
        [[ -n $v ]] || continue
        if [[ -z $best ]] || [[ $(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -n 1) == "$v" && $v != "$best" ]]; then
            best=$v python=$candidate
        fi
    done < <({ type -ap python3; echo /usr/local/bin/python3; echo /usr/bin/python3; } | awk '!seen[$0]++')
    [[ -n $python ]] || die "no python3 with torch found (set INSITRA_BENCH_PYTHON)"
fi
torch_v=$(torch_version "$python") || die "$python cannot import torch"

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

echo "threads=$OMP_NUM_THREADS cpus=${cpus:-all} gemm=$gemm OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}" \
     "OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset} bench_step=$bench_step" \
     "python=$python torch=$torch_v" >&2

gemm_line=$(run "${pin[@]}" "$bench_gemm" "$sgemm_reps" 2)
gemm_kernel=$(field "$gemm_line" kernel)
declare -A sgemm
sgemm[S]=$(field "$gemm_line" S_gflops)
sgemm[M]=$(field "$gemm_line" M_gflops)

declare -A r
for cfg in S M; do
    if [[ $cfg == S ]]; then w=$s_warmup; n=$s_steps; else w=$m_warmup; n=$m_steps; fi
    ins=$(run "${pin[@]}" "${mpiexec[@]}" "$bench_step" "$cfg" "$w" "$n" ${overrides[@]+"${overrides[@]}"})
    tor=$(run "${pin[@]}" env -u LD_LIBRARY_PATH "$python" "$here/bench_torch.py" "$cfg" "$w" "$n" \
              --threads "$OMP_NUM_THREADS")
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
    r[${cfg}_gemm_frac]=$(calc %.3f "${r[${cfg}_gflops]} / ${sgemm[$cfg]}")
    torch_blas=$(field "$tor" torch_blas)
done

echo
printf '%-6s | %15s | %16s | %14s | %6s | %15s | %10s\n' config "insitra step ms" \
       "insitra tokens/s" "torch tokens/s" ratio "insitra GFLOP/s" "% of GEMM"
printf '%s\n' "-------+-----------------+------------------+----------------+--------+-----------------+-----------"
for cfg in S M; do
    printf '%-6s | %15s | %16s | %14s | %6s | %15s | %9s%%\n' "$cfg" \
           "${r[${cfg}_insitra_step_ms]}" "${r[${cfg}_insitra_tok_s]}" "${r[${cfg}_torch_tok_s]}" \
           "${r[${cfg}_ratio]}" "${r[${cfg}_gflops]}" "$(calc %.1f "100 * ${r[${cfg}_gemm_frac]}")"
done
echo "GEMM ($gemm, kernels $gemm_kernel) on the linear layers' shapes: S ${sgemm[S]}, M ${sgemm[M]} GFLOP/s"
echo "threads $OMP_NUM_THREADS, cores ${cpus:-all (not pinned)}; torch $torch_v (BLAS $torch_blas) from $python"
echo
s_target=$(verdict "${r[S_ratio]}" 2.0)
m_target=$(verdict "${r[M_ratio]}" 1.3)
f_target=$(verdict "${r[M_gemm_frac]}" 0.9)
echo "target S tokens/s >= 2.0 x torch:   ${r[S_ratio]} x   $s_target"
echo "target M tokens/s >= 1.3 x torch:   ${r[M_ratio]} x   $m_target"
echo "target M GFLOP/s >= 90% of GEMM:    $(calc %.1f "100 * ${r[M_gemm_frac]}")%   $f_target"
((noisy == 0)) || echo "WARNING: step times varied by more than 25% (see above): the machine was busy"

line="RESULT threads=$OMP_NUM_THREADS cpus=${cpus:-all} gemm=$gemm gemm_kernel=$gemm_kernel"
line+=" torch_version=$torch_v torch_blas=$torch_blas"
for cfg in S M; do
    for k in insitra_step_ms torch_step_ms insitra_tok_s torch_tok_s ratio gflops torch_gflops \
             gemm_frac params; do
        line+=" ${cfg}_$k=${r[${cfg}_$k]}"
    done
done
line+=" S_gemm_gflops=${sgemm[S]} M_gemm_gflops=${sgemm[M]}"
line+=" S_target=$s_target M_target=$m_target M_gemm_target=$f_target"
line+=" noisy=$noisy"
echo "$line"
