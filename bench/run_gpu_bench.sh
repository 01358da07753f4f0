#!/usr/bin/env bash
# GPU training-step benchmark: insitra's CUDA backend against a fast PyTorch
# twin (bf16 autocast, torch.compile, fused AdamW, flash attention), on 1 GPU
# and, where there are two or more, on 2 GPUs (insitra under mpiexec -n 2,
# torch under DistributedDataParallel); then raw NCCL bandwidth on 2 GPUs.
#
#   bench/run_gpu_bench.sh [BUILD_DIR]            (default build/cuda)
#
# Builds bench_gpu_step (and bench_nccl) in BUILD_DIR, which must be a
# configured CUDA build (cmake --preset cuda). For each config in turn it runs
# insitra on 1 GPU, torch on 1 GPU, and with 2+ GPUs insitra on 2 and torch on
# 2, one program at a time. It prints a markdown table, the 2-GPU scaling
# efficiency, the targets with PASS/MISS, and as its last line
# "RESULT key=value ...". Each program's whole output is kept in
# ${OUT:-/tmp}/gpu_bench/<name>.log, the summary in summary.md there.
# A torch run that fails is recorded as "failed" and the run goes on; the
# script exits non-zero only when an insitra run failed. See bench/README.md.
#
# Environment (all optional):
#   INSITRA_GPU_BENCH_CONFIGS     configs to run ("S M L")
#   INSITRA_GPU_BENCH_GPUS        GPUs to assume (default: nvidia-smi -L); 1 skips the 2-GPU runs
#   INSITRA_GPU_BENCH_WARMUP      untimed steps, both sides (program defaults: 10)
#   INSITRA_GPU_BENCH_STEPS       timed steps, both sides (program defaults: 30 S, 20 M/L)
#   INSITRA_GPU_BENCH_SET         extra insitra overrides, "key=value ..." (e.g. precision=fp32)
#   INSITRA_GPU_BENCH_TORCH_ARGS  extra bench_torch_gpu.py options (e.g. "--no-compile")
#   INSITRA_GPU_BENCH_TORCH_MODES torch.compile modes to run, each in turn; the table compares
#                                 against the fastest ("default reduce-overhead": the latter is
#                                 CUDA graphs, PyTorch's strongest mode for small models)
#   INSITRA_GPU_BENCH_NCCL_SIZES  bench_nccl sizes ("8M 64M 256M 1G")
#   INSITRA_GPU_BENCH_TIMEOUT     seconds after which one program is killed (0: never)
#   INSITRA_GPU_BENCH_BUILD       0: do not run cmake --build, use the binaries already there (1)
#   INSITRA_GPU_BENCH_PYTHON      the python that has torch (python3); run without LD_LIBRARY_PATH
#   MPIEXEC                       launcher for insitra and bench_nccl ("mpiexec"); "-n G" is appended
#   NCCL_NVLS_ENABLE              exported as 0 unless already set (likewise
#                                 TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1)
#   OUT                           where gpu_bench/ goes (/tmp)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build/cuda}
case $build in /*) ;; *) build=$root/$build ;; esac

# NVLink multicast (NVLS) stays off for every program, torch's and NVSHMEM's
# use of it included, unless the caller set these.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
read -r -a configs <<<"${INSITRA_GPU_BENCH_CONFIGS:-S M L}"
warmup=${INSITRA_GPU_BENCH_WARMUP:-}
steps=${INSITRA_GPU_BENCH_STEPS:-}
read -r -a overrides <<<"${INSITRA_GPU_BENCH_SET:-}"
read -r -a torch_args <<<"${INSITRA_GPU_BENCH_TORCH_ARGS:-}"
read -r -a torch_modes <<<"${INSITRA_GPU_BENCH_TORCH_MODES:-default reduce-overhead}"
read -r -a nccl_sizes <<<"${INSITRA_GPU_BENCH_NCCL_SIZES:-8M 64M 256M 1G}"
timeout_s=${INSITRA_GPU_BENCH_TIMEOUT:-0}
python=${INSITRA_GPU_BENCH_PYTHON:-python3}
read -r -a mpiexec <<<"${MPIEXEC:-mpiexec}"
outdir=${OUT:-/tmp}/gpu_bench

die() { echo "run_gpu_bench: $*" >&2; exit 1; }
warn() { echo "run_gpu_bench: WARNING: $*" >&2; }

for cfg in "${configs[@]}"; do
    case $cfg in S | M | L) ;; *) die "unknown config '$cfg' (S, M or L)" ;; esac
done
for v in "$timeout_s" ${warmup:+"$warmup"} ${steps:+"$steps"}; do
    [[ $v =~ ^[0-9]+$ ]] || die "not a count: '$v' (INSITRA_GPU_BENCH_WARMUP/STEPS/TIMEOUT)"
done
mkdir -p "$outdir"

# GPUs: as told, or as nvidia-smi lists them (GPU lines only, not MIG ones).
if [[ -n ${INSITRA_GPU_BENCH_GPUS:-} ]]; then
    ngpus=$INSITRA_GPU_BENCH_GPUS
    [[ $ngpus =~ ^[0-9]+$ ]] || die "INSITRA_GPU_BENCH_GPUS must be a count, got '$ngpus'"
elif command -v nvidia-smi >/dev/null 2>&1; then
    ngpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
else
    ngpus=0
fi
((ngpus >= 1)) || die "no GPU found (nvidia-smi -L lists none; set INSITRA_GPU_BENCH_GPUS to override)"
gpu_counts=(1)
((ngpus >= 2)) && gpu_counts+=(2)

# Binaries.
if [[ ${INSITRA_GPU_BENCH_BUILD:-1} != 0 ]]; then
    [[ -f $build/CMakeCache.txt ]] ||
        die "$build is not a configured CMake build directory (cmake --preset cuda, or pass BUILD_DIR)"
    cmake --build "$build" --target bench_gpu_step >&2 ||
        die "building bench_gpu_step failed (is $build configured with INSITRA_ENABLE_CUDA=ON?)"
    if ((ngpus >= 2)); then
        cmake --build "$build" --target bench_nccl >&2 ||
            warn "building bench_nccl failed (is $build configured with INSITRA_ENABLE_CUDA=ON?): no NCCL figures"
    fi
fi
find_binary() {
    local candidate
    for candidate in "$build/bench/$1" "$build/$1"; do
        [[ -x $candidate ]] && { printf '%s\n' "$candidate"; return; }
    done
    find "$build" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1
}
bench_gpu_step=$(find_binary bench_gpu_step)
[[ -n $bench_gpu_step ]] || die "no bench_gpu_step binary under $build"
bench_nccl=$(find_binary bench_nccl)

# run_logged NAME COMMAND...: runs COMMAND (under timeout if asked), its
# stdout and stderr both into $outdir/NAME.log and onto this script's
# stderr; returns COMMAND's status.
run_logged() {
    local name=$1 rc
    shift
    local -a limit=()
    ((timeout_s > 0)) && limit=(timeout --kill-after=30 "$timeout_s")
    echo "+ $*" >&2
    printf '# %s\n' "$*" >"$outdir/$name.log"
    set +e
    ${limit[@]+"${limit[@]}"} "$@" 2>&1 | tee -a "$outdir/$name.log" >&2
    rc=${PIPESTATUS[0]}
    set -e
    ((rc == 0)) || warn "$name exited with status $rc (log: $outdir/$name.log)"
    return "$rc"
}
# result_line, field, is_num, calc, verdict, gt
# shellcheck source=bench/gpu_bench_lib.sh
source "$here/gpu_bench_lib.sh"

{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) host=${HOSTNAME:-unknown} gpus=$ngpus" \
         "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
    echo "bench_gpu_step=$bench_gpu_step bench_nccl=${bench_nccl:-none} python=$python"
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>&1 || true; fi
    env -u LD_LIBRARY_PATH "$python" -c 'import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "nccl", ".".join(map(str, torch.cuda.nccl.version())))' 2>&1 || true
} | tee "$outdir/setup.txt" >&2

declare -A r # r[cfg,gpus,side,key]
failed_insitra=0
failed_torch=0
noisy=0
for cfg in "${configs[@]}"; do
    for g in "${gpu_counts[@]}"; do
        # insitra: positional warmup and steps, then the overrides.
        counts=()
        if [[ -n $warmup || -n $steps ]]; then
            counts+=("${warmup:-10}")
            [[ -n $steps ]] && counts+=("$steps")
        fi
        name=insitra_${cfg}_${g}gpu
        run_logged "$name" "${mpiexec[@]}" -n "$g" "$bench_gpu_step" "$cfg" \
            ${counts[@]+"${counts[@]}"} ${overrides[@]+"${overrides[@]}"} || true
        ins=$(result_line "$name" insitra)
        [[ -n $ins ]] || { failed_insitra=$((failed_insitra + 1)); warn "$name gave no result"; }

        topts=()
        [[ -n $warmup ]] && topts+=(--warmup "$warmup")
        [[ -n $steps ]] && topts+=(--steps "$steps")
        # PyTorch in each compile mode; the fastest is the peer.
        tor="" r[$cfg,$g,torch,mode]=failed
        for mode in "${torch_modes[@]}"; do
            name=torch_${cfg}_${g}gpu_${mode}
            if ((g == 1)); then
                run_logged "$name" env -u LD_LIBRARY_PATH "$python" "$here/bench_torch_gpu.py" "$cfg" \
                    --compile-mode "$mode" ${topts[@]+"${topts[@]}"} ${torch_args[@]+"${torch_args[@]}"} || true
            else
                run_logged "$name" env -u LD_LIBRARY_PATH "$python" -m torch.distributed.run \
                    --standalone --nproc_per_node "$g" "$here/bench_torch_gpu.py" "$cfg" \
                    --compile-mode "$mode" ${topts[@]+"${topts[@]}"} ${torch_args[@]+"${torch_args[@]}"} || true
            fi
            line=$(result_line "$name" torch)
            if [[ -z $line ]]; then
                warn "$name gave no result"
            elif [[ -z $tor ]] || awk -v a="$(field "$line" step_ms)" -v b="$(field "$tor" step_ms)" \
                                       'BEGIN { exit !(a < b) }'; then
                tor=$line r[$cfg,$g,torch,mode]=$mode
            fi
        done
        [[ -n $tor ]] || failed_torch=$((failed_torch + 1))

        for side in insitra torch; do
            if [[ $side == insitra ]]; then line=$ins; else line=$tor; fi
            for key in step_ms tok_s mfu peak_mem_gib params; do
                v=$(field "$line" "$key")
                r[$cfg,$g,$side,$key]=${v:-failed}
            done
            ms=${r[$cfg,$g,$side,step_ms]} fastest=$(field "$line" step_ms_min)
            if is_num "$ms" && is_num "$fastest" &&
                awk -v a="$ms" -v b="$fastest" 'BEGIN { exit !(a > 1.25 * b) }'; then
                noisy=1
                warn "$side $cfg on $g GPU(s): the median step is over 1.25x the fastest;" \
                     "something else may have used the GPU"
            fi
        done
        r[$cfg,$g,ratio]=$(calc %.3f 'a / b' "${r[$cfg,$g,insitra,tok_s]}" "${r[$cfg,$g,torch,tok_s]}")
        pi=${r[$cfg,$g,insitra,params]} pt=${r[$cfg,$g,torch,params]}
        if is_num "$pi" && is_num "$pt" && [[ $pi != "$pt" ]]; then
            warn "$cfg: insitra has $pi parameters, torch $pt: the models differ"
        fi
    done
    for side in insitra torch; do
        r[$cfg,$side,scaling]=n/a
        ((ngpus >= 2)) && r[$cfg,$side,scaling]=$(calc %.3f 'b / (2 * a)' \
            "${r[$cfg,1,$side,tok_s]}" "${r[$cfg,2,$side,tok_s]}")
    done
done

nccl_lines=()
nccl_status=skipped
if ((ngpus >= 2)); then
    if [[ -n $bench_nccl ]]; then
        if run_logged nccl_2gpu "${mpiexec[@]}" -n 2 "$bench_nccl" "${nccl_sizes[@]}"; then
            nccl_status=ok
        else
            nccl_status=failed
        fi
        mapfile -t nccl_lines < <(grep -o 'nccl op=.*' "$outdir/nccl_2gpu.log" || true)
    else
        nccl_status=not_built
        warn "no bench_nccl binary under $build: skipping the NCCL figures"
    fi
fi

# The summary: stdout and $outdir/summary.md; RESULT is the last line.
{
    echo
    echo "## GPU training step: insitra vs PyTorch (bf16 autocast + torch.compile + fused AdamW)"
    echo
    echo "| config | gpus | insitra ms | torch ms | torch mode | insitra tok/s | torch tok/s | ratio | insitra MFU | torch MFU | insitra mem GiB | torch mem GiB |"
    echo "|--------|------|------------|----------|------------|---------------|-------------|-------|-------------|-----------|-----------------|---------------|"
    for cfg in "${configs[@]}"; do
        for g in "${gpu_counts[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$cfg" "$g" \
                "${r[$cfg,$g,insitra,step_ms]}" "${r[$cfg,$g,torch,step_ms]}" "${r[$cfg,$g,torch,mode]}" \
                "${r[$cfg,$g,insitra,tok_s]}" "${r[$cfg,$g,torch,tok_s]}" "${r[$cfg,$g,ratio]}" \
                "${r[$cfg,$g,insitra,mfu]}" "${r[$cfg,$g,torch,mfu]}" \
                "${r[$cfg,$g,insitra,peak_mem_gib]}" "${r[$cfg,$g,torch,peak_mem_gib]}"
        done
    done
    echo
    echo "tok/s counts all GPUs' tokens; MFU is per GPU against 989 TFLOP/s (dense BF16)."
    echo "insitra mem: device memory the trainer holds (cudaMemGetInfo drop on rank 0);"
    echo "torch mem: torch.cuda.max_memory_allocated on rank 0 (tensors only, not the cache)."
    if ((ngpus >= 2)); then
        echo
        echo "2-GPU scaling efficiency, tok/s on 2 GPUs / (2 x tok/s on 1):"
        echo
        echo "| config | insitra | torch |"
        echo "|--------|---------|-------|"
        for cfg in "${configs[@]}"; do
            echo "| $cfg | ${r[$cfg,insitra,scaling]} | ${r[$cfg,torch,scaling]} |"
        done
    fi
    if ((${#nccl_lines[@]} > 0)); then
        echo
        echo "NCCL on 2 GPUs (bench_nccl; busbw as nccl-tests counts it):"
        echo
        echo "| op | bytes | ms | algbw GB/s | busbw GB/s |"
        echo "|----|-------|----|------------|------------|"
        for l in "${nccl_lines[@]}"; do
            echo "| $(field "$l" op) | $(field "$l" bytes) | $(field "$l" ms) |" \
                 "$(field "$l" algbw_gbs) | $(field "$l" busbw_gbs) |"
        done
    fi

    echo
    echo "Targets:"
    declare -A t
    for cfg in "${configs[@]}"; do
        if [[ $cfg == S ]]; then min_ratio=5; else min_ratio=1.2; fi
        for g in "${gpu_counts[@]}"; do
            # No insitra figure: the target is missed; no torch figure: unknown.
            missing=n/a
            is_num "${r[$cfg,$g,insitra,tok_s]}" || missing=MISS
            t[${cfg}_${g}gpu_ratio_target]=$(verdict "${r[$cfg,$g,ratio]}" "$min_ratio" "$missing")
            echo "  $cfg on $g GPU(s): insitra tok/s >= $min_ratio x torch:" \
                 "${r[$cfg,$g,ratio]}  ${t[${cfg}_${g}gpu_ratio_target]}"
            if [[ $cfg == L ]]; then
                t[L_${g}gpu_mfu_target]=$(verdict "${r[L,$g,insitra,mfu]}" 0.5 MISS)
                echo "  L on $g GPU(s): insitra MFU >= 0.5: ${r[L,$g,insitra,mfu]}" \
                     " ${t[L_${g}gpu_mfu_target]}"
            fi
        done
        if ((ngpus >= 2)); then
            t[${cfg}_scaling_target]=$(verdict "${r[$cfg,insitra,scaling]}" 0.95 MISS)
            echo "  $cfg: insitra 2-GPU scaling >= 0.95: ${r[$cfg,insitra,scaling]}" \
                 " ${t[${cfg}_scaling_target]}"
        fi
    done
    ((noisy == 0)) || echo "WARNING: some median step was over 1.25x its fastest step (see above)"
    ((failed_torch == 0)) || echo "WARNING: $failed_torch torch run(s) failed (logs in $outdir)"
    ((failed_insitra == 0)) || echo "WARNING: $failed_insitra insitra run(s) failed (logs in $outdir)"

    line="RESULT gpus=$ngpus configs=$(IFS=,; echo "${configs[*]}")"
    for cfg in "${configs[@]}"; do
        for g in "${gpu_counts[@]}"; do
            for side in insitra torch; do
                for key in step_ms tok_s mfu peak_mem_gib params; do
                    line+=" ${cfg}_${g}gpu_${side}_$key=${r[$cfg,$g,$side,$key]}"
                done
            done
            line+=" ${cfg}_${g}gpu_ratio=${r[$cfg,$g,ratio]} ${cfg}_${g}gpu_torch_mode=${r[$cfg,$g,torch,mode]}"
        done
        if ((ngpus >= 2)); then
            line+=" ${cfg}_insitra_scaling=${r[$cfg,insitra,scaling]}"
            line+=" ${cfg}_torch_scaling=${r[$cfg,torch,scaling]}"
        fi
    done
    for l in ${nccl_lines[@]+"${nccl_lines[@]}"}; do
        line+=" nccl_$(field "$l" op)_$(field "$l" bytes)_busbw_gbs=$(field "$l" busbw_gbs)"
    done
    line+=" nccl=$nccl_status"
    for k in $(printf '%s\n' "${!t[@]}" | sort); do
        line+=" $k=${t[$k]}"
    done
    line+=" insitra_failed=$failed_insitra torch_failed=$failed_torch noisy=$noisy"
    echo "$line"
} | tee "$outdir/summary.md"

((failed_insitra == 0))
