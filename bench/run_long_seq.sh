#!/usr/bin/env bash
# Long sequences on one GPU: the largest model.seq_len T that completes a
# training step at the M width (C 768, 12 layers, 12 heads, 64 features),
# found by trying, for insitra with training.recompute none and block and for
# PyTorch eager and with torch.utils.checkpoint per block (bench_torch_long.py),
# with the planner's answer (insitra-plan --max-seq-len) beside insitra's.
#
#   bench/run_long_seq.sh [options] [BUILD_DIR]        (default build/cuda)
#
#   --batch B          samples per step (1)
#   --memory-gib X     leave each program X GiB of the device, the rest held by a
#                      ballast (0: the whole device); the planner is asked for X
#   --grain G          T is searched in multiples of G (512)
#   --max-tries N      tries per variant (6)
#   --try-seconds S    an insitra try is killed after S seconds, and no side goes
#                      up once a step took longer (60)
#   --no-build         use the binaries in BUILD_DIR as they are (a packed build
#                      tree has no object files to build from)
#   --no-torch         insitra only
#   --python P         the python that has torch (python3); run without LD_LIBRARY_PATH
#
# insitra's search starts at the planner's T, torch's at insitra's answer for
# the matching mode; each gallops (up or down by G, 2G, 4G, ...) and then
# bisects to G. An insitra try is `bench_gpu_step M 1 1` (one warm-up step,
# one timed) at that T under mpiexec -n 1; it fails when the program does (out
# of device memory at create names the buffer) or is killed at --try-seconds.
# T cannot pass model.seq_len's limit (65536) on insitra's side.
#
# Prints a markdown table and, last, "RESULT key=value ...". Logs go to
# ${OUT:-/tmp}/long_seq/. See bench/README.md, "Long sequences".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
batch=1 memory_gib=0 grain=512 max_tries=6 try_seconds=60 build_it=1 torch=1 python=python3
build=build/cuda
while (($#)); do
    case $1 in
    --batch) batch=$2; shift ;;
    --memory-gib) memory_gib=$2; shift ;;
    --grain) grain=$2; shift ;;
    --max-tries) max_tries=$2; shift ;;
    --try-seconds) try_seconds=$2; shift ;;
    --no-build) build_it=0 ;;
    --no-torch) torch=0 ;;
    --python) python=$2; shift ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "run_long_seq: unknown option '$1'" >&2; exit 2 ;;
    *) build=$1 ;;
    esac
    shift
done
case $build in /*) ;; *) build=$root/$build ;; esac
for v in "$batch" "$grain" "$max_tries" "$try_seconds"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "run_long_seq: not a positive count: '$v'" >&2; exit 2; }
done
[[ $memory_gib =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run_long_seq: --memory-gib '$memory_gib'" >&2; exit 2; }
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
read -r -a mpiexec <<<"${MPIEXEC:-mpiexec}"
outdir=${OUT:-/tmp}/long_seq
mkdir -p "$outdir"
# shellcheck source=bench/gpu_bench_lib.sh
. "$here/gpu_bench_lib.sh"

if ((build_it)); then
    cmake --build "$build" --target bench_gpu_step insitra-plan >"$outdir/build.log" 2>&1 ||
        { echo "run_long_seq: build failed, see $outdir/build.log" >&2; exit 1; }
fi
step=$build/bench/bench_gpu_step plan=$build/tools/insitra-plan
[[ -x $step && -x $plan ]] || { echo "run_long_seq: no bench_gpu_step/insitra-plan in $build" >&2; exit 1; }

# The planner's budget: X, or the whole device as nvidia-smi gives it.
budget=$memory_gib
if [[ $memory_gib == 0 ]]; then
    budget=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 |
        awk '{ printf "%.2f", $1 / 1024 }')
fi
width=(--set device=cuda --set precision=bf16 --set model.d_model=768 --set model.n_layers=12
    --set model.n_heads=12 --set model.in_features=64 --set model.out_features=64
    --set "training.batch_size=$batch" --set "data.capacity=$batch")
ballast=()
[[ $memory_gib == 0 ]] || ballast=("--memory-gib=$memory_gib")

# try RECOMPUTE T: one insitra try; sets ok (1/0), why (memory/time/error), and
# the figures of a successful one.
try_insitra() {
    local r=$1 T=$2 name="insitra_$1_$2" rc=0
    timeout "$try_seconds" "${mpiexec[@]}" -n 1 "$step" M 1 1 "model.seq_len=$T" \
        "training.batch_size=$batch" "data.capacity=$batch" "training.recompute=$r" \
        "${ballast[@]}" >"$outdir/$name.log" 2>&1 || rc=$?
    local line
    line=$(result_line "$name" insitra)
    ok=0 why=error
    if ((rc == 0)) && [[ -n $line ]]; then
        ok=1 why=
        last_ms=$(field "$line" step_ms) last_peak=$(field "$line" peak_mem_gib)
        last_report=$(field "$line" mem_report_gib)
    elif ((rc == 124)); then
        why="time"
    elif grep -qi "OUT_OF_MEMORY\|out of memory" "$outdir/$name.log"; then
        why=memory
    fi
    local status
    # the status, and which call failed where it names one (NCCL's init runs after the buffers)
    status=$(grep -m 1 -o "INSITRA_STATUS_[A-Z_]*" "$outdir/$name.log" || true)
    status+=$(grep -m 1 -o "nccl[A-Za-z]* failed\|cannot allocate [0-9.]* GiB" "$outdir/$name.log" |
        tr ' ' '_' | sed 's/^/:/' || true)
    echo "try insitra recompute=$r seq_len=$T ok=$ok ${why:+why=$why }${status:+status=$status }rc=$rc" \
        "${line:+step_ms=$(field "$line" step_ms) peak_mem_gib=$(field "$line" peak_mem_gib)}"
}

# search_insitra RECOMPUTE START: the gallop and bisection of bench_torch_long.py.
search_insitra() {
    local r=$1 T=$(($2 / grain * grain)) lo=0 hi=0 stride=$grain tries=0 cap=65536
    ((T >= grain)) || T=$grain
    ((T <= cap)) || T=$cap
    best_T=0 best_ms=n/a best_peak=n/a best_report=n/a bound=tries
    while ((tries < max_tries)); do
        try_insitra "$r" "$T"
        tries=$((tries + 1))
        if ((ok)); then
            lo=$T best_T=$T best_ms=$last_ms best_peak=$last_peak best_report=$last_report
        else
            hi=$T hi_why=$why
        fi
        if ((lo > 0 && hi > 0)); then
            if ((hi - lo <= grain)); then bound=$hi_why; break; fi
            T=$(((lo + hi) / 2 / grain * grain))
            ((T > lo)) || T=$((lo + grain))
            if ((T >= hi)); then bound=$hi_why; break; fi
        elif ((ok)); then
            if ((T >= cap)); then bound=limit; break; fi
            if [[ $(calc '%d' 'a > b * 1000' "$last_ms" "$try_seconds") == 1 ]]; then bound="time"; break; fi
            T=$((lo + stride)); ((T <= cap)) || T=$cap
            stride=$((stride * 2))
        else
            if ((T <= grain)); then bound=none; break; fi
            T=$((hi - stride)); ((T >= grain)) || T=$grain
            stride=$((stride * 2))
        fi
    done
}

declare -A res
for r in none block; do
    plan_T=$("$plan" --ranks 1 --max-seq-len --memory-per-rank "$budget" "${width[@]}" \
        --set "training.recompute=$r" | awk '$1 == 1 && $2 == 0 { print $3 }')
    [[ -n $plan_T ]] || { echo "run_long_seq: insitra-plan gave no answer" >&2; exit 1; }
    search_insitra "$r" "$plan_T"
    res[$r]="$plan_T $best_T $bound $best_ms $best_peak $best_report"
done

declare -A tres
if ((torch)); then
    read -r _ none_T _ <<<"${res[none]}"
    read -r _ block_T _ <<<"${res[block]}"
    tl=(env -u LD_LIBRARY_PATH "$python" "$here/bench_torch_long.py" --batch "$batch"
        --memory-gib "$memory_gib" --grain "$grain" --max-tries "$max_tries"
        --try-seconds "$try_seconds" --mode "eager:$((none_T > 0 ? none_T : grain))"
        --mode "checkpoint:$((block_T > 0 ? block_T : grain))")
    if "${tl[@]}" >"$outdir/torch.log" 2>&1; then :; else echo "run_long_seq: torch failed, see $outdir/torch.log" >&2; fi
    grep '^try ' "$outdir/torch.log" || true
    for m in eager checkpoint; do
        line=$(grep -o "torch_long mode=$m .*" "$outdir/torch.log" | tail -n 1 || true)
        tres[$m]="$(field "$line" max_seq_len) $(field "$line" bound) $(field "$line" step_ms) $(field "$line" peak_mem_gib)"
    done
fi

{
    echo
    echo "Largest T at M width (C 768, L 12, H 12), B=$batch, memory: ${ballast[*]:-the whole device}"
    echo "memory budget ${budget} GiB (planner); grain $grain; at most $max_tries tries; $try_seconds s per try"
    echo
    echo "| program | recompute | planner T | largest T trained | bound | step ms at T | peak GiB (measured) | planner GiB at T |"
    echo "|---|---|---|---|---|---|---|---|"
    for r in none block; do
        read -r pT T b ms peak rep <<<"${res[$r]}"
        echo "| insitra | $r | $pT | $T | $b | $ms | $peak | $rep |"
    done
    if ((torch)); then
        read -r T b ms peak <<<"${tres[eager]}"
        echo "| torch eager | none | - | ${T:-failed} | ${b:-} | ${ms:-} | ${peak:-} | - |"
        read -r T b ms peak <<<"${tres[checkpoint]}"
        echo "| torch eager | checkpoint per block | - | ${T:-failed} | ${b:-} | ${ms:-} | ${peak:-} | - |"
    fi
} | tee "$outdir/summary.md"
read -r _ in_none _ <<<"${res[none]}"
read -r _ in_block _ <<<"${res[block]}"
t_none=$(cut -d' ' -f1 <<<"${tres[eager]:-}") t_block=$(cut -d' ' -f1 <<<"${tres[checkpoint]:-}")
echo "RESULT batch=$batch memory_gib=$memory_gib insitra_none=$in_none insitra_block=$in_block" \
    "torch_eager=${t_none:-n/a} torch_checkpoint=${t_block:-n/a}" \
    "none_vs_torch=$(verdict "$(calc '%.3f' 'a - b' "$in_none" "$t_none")" 0)" \
    "block_vs_torch=$(verdict "$(calc '%.3f' 'a - b' "$in_block" "$t_block")" 0)"
