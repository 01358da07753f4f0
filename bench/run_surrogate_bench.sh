#!/usr/bin/env bash
# The latency of one surrogate prediction in a simulation's loop against
# PyTorch inference on the same model (the same exported weights), in the
# same run (issue #19 item 2):
#   CPU: config S, 16 x 256 tokens, fp32, 1 and 2 threads; PyTorch in
#        torch.inference_mode with the same threads (compiled where
#        torch.compile exists);
#   GPU (where nvidia-smi lists one, or INSITRA_SURROGATE_BENCH_GPU=1):
#        config M (C=768, L=12), 16 x 1024 tokens, bf16; insitra from host
#        arrays and from device arrays on the caller's stream; PyTorch
#        compiled, bf16 autocast, inference_mode (target: insitra <= 8 ms).
#
#   bench/run_surrogate_bench.sh [BUILD_DIR]        (default build/cpu)
#
# Prints a markdown table and, last, "RESULT key=value ...". Logs go to
# ${OUT:-/tmp}/surrogate_bench/.
#
# Environment (all optional):
#   INSITRA_SURROGATE_BENCH_BUILD   0: use the binaries in BUILD_DIR as they are (a packed
#                                   build tree, no cmake --build); default 1
#   INSITRA_SURROGATE_BENCH_CPU     0: skip the CPU part
#   INSITRA_SURROGATE_BENCH_GPU     1: run the GPU part, 0: skip it (default: when a GPU is listed)
#   INSITRA_SURROGATE_BENCH_REPS    timed calls per side (50), after 5 untimed
#   INSITRA_SURROGATE_BENCH_PYTHON  the python that has torch and h5py (python3)
#   INSITRA_SURROGATE_BENCH_MODES   torch.compile modes on the GPU ("default reduce-overhead")
#   INSITRA_SURROGATE_BENCH_CPU_MODES  torch.compile modes on the CPU ("default": reduce-overhead
#                                   is CUDA graphs, nothing on a CPU but a second compilation)
#   INSITRA_SURROGATE_BENCH_CPUS    cores to pin both CPU sides to (taskset -c list, e.g. "0,1")
#   MPIEXEC                         launcher of the insitra side ("mpiexec"; "-n 1" is appended)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build/cpu}
case $build in /*) ;; *) build=$root/$build ;; esac
reps=${INSITRA_SURROGATE_BENCH_REPS:-50}
python=${INSITRA_SURROGATE_BENCH_PYTHON:-python3}
modes=${INSITRA_SURROGATE_BENCH_MODES:-default reduce-overhead}
read -r -a mpiexec <<<"${MPIEXEC:-mpiexec}"
outdir=${OUT:-/tmp}/surrogate_bench
mkdir -p "$outdir"
die() { echo "run_surrogate_bench: $*" >&2; exit 1; }

if [[ ${INSITRA_SURROGATE_BENCH_BUILD:-1} != 0 ]]; then
    [[ -f $build/CMakeCache.txt ]] || die "$build is not a configured CMake build (or set INSITRA_SURROGATE_BENCH_BUILD=0)"
    cmake --build "$build" --target bench_surrogate >&2
fi
bin=$build/bench/bench_surrogate
[[ -x $bin ]] || die "no $bin"
gpu=${INSITRA_SURROGATE_BENCH_GPU:-}
if [[ -z $gpu ]]; then
    gpu=0
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then gpu=1; fi
fi

# value LOG KEY: KEY's value in the RESULT line of LOG
value() { grep -o 'RESULT .*' "$1" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", b / a; else print "n/a" }'; }

rows=() result=()
# both sides on the same cores when asked (taskset -c LIST)
pin=()
[[ -n ${INSITRA_SURROGATE_BENCH_CPUS:-} ]] && pin=(taskset -c "$INSITRA_SURROGATE_BENCH_CPUS")
if [[ ${INSITRA_SURROGATE_BENCH_CPU:-1} != 0 ]]; then
    for threads in 1 2; do
        name=cpu_S_t$threads
        export_file=$outdir/S.h5
        OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads ${pin[@]+"${pin[@]}"} "${mpiexec[@]}" -n 1 "$bin" --config S --device cpu \
            --precision fp32 --n 16 --reps "$reps" --export "$export_file" >"$outdir/$name.log" 2>&1 ||
            die "insitra failed, see $outdir/$name.log"
        OMP_NUM_THREADS=$threads ${pin[@]+"${pin[@]}"} "$python" "$here/bench_torch_surrogate.py" "$export_file" \
            --device cpu --n 16 --threads "$threads" --reps "$reps" --config S \
            --modes "${INSITRA_SURROGATE_BENCH_CPU_MODES:-default}" >"$outdir/${name}_torch.log" 2>&1 ||
            echo "run_surrogate_bench: torch failed, see $outdir/${name}_torch.log" >&2
        ours=$(value "$outdir/$name.log" host_ms)
        theirs=$(value "$outdir/${name}_torch.log" torch_ms)
        rows+=("| S, 16 x 256, CPU fp32, $threads thread(s) | $ours ms | - | ${theirs:-failed} ms ($(value "$outdir/${name}_torch.log" mode)) | $(ratio "$ours" "${theirs:-0}") |")
        result+=("cpu_t${threads}_ms=$ours" "cpu_t${threads}_torch_ms=${theirs:-nan}")
    done
fi
if [[ $gpu == 1 ]]; then
    name=gpu_M
    export_file=$outdir/M.h5
    "${mpiexec[@]}" -n 1 "$bin" --config M --device cuda --precision bf16 --n 16 --reps "$reps" \
        --export "$export_file" >"$outdir/$name.log" 2>&1 || die "insitra failed, see $outdir/$name.log"
    "$python" "$here/bench_torch_surrogate.py" "$export_file" --device cuda --n 16 --reps "$reps" \
        --modes "$modes" --config M >"$outdir/${name}_torch.log" 2>&1 ||
        echo "run_surrogate_bench: torch failed, see $outdir/${name}_torch.log" >&2
    host=$(value "$outdir/$name.log" host_ms)
    dev=$(value "$outdir/$name.log" device_ms)
    theirs=$(value "$outdir/${name}_torch.log" torch_ms)
    verdict=$(awk -v v="$dev" 'BEGIN { print (v > 0 && v <= 8) ? "PASS" : "MISS" }')
    rows+=("| M, 16 x 1024, GPU bf16 | $host ms | $dev ms (target <= 8 ms: $verdict) | ${theirs:-failed} ms ($(value "$outdir/${name}_torch.log" mode)) | $(ratio "$dev" "${theirs:-0}") |")
    result+=("gpu_host_ms=$host" "gpu_device_ms=$dev" "gpu_torch_ms=${theirs:-nan}" "gpu_target=$verdict")
fi
echo
echo "| model, tokens, where | insitra, host arrays | insitra, device arrays | PyTorch inference | PyTorch / insitra |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "(one call, median of $reps; logs in $outdir)"
echo "RESULT ${result[*]}"
