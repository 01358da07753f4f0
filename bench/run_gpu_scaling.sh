#!/usr/bin/env bash
# Multi-GPU weak scaling of insitra's CUDA backend (issue #8), against
# PyTorch DDP and FSDP2, the largest model each ZeRO stage fits, and a
# checkpoint saved on G GPUs and resumed on G/2 at another stage.
#
#   bench/run_gpu_scaling.sh [--table] [--max-model] [--ckpt] [BUILD_DIR]   (default build/cuda)
#
# Parts, run in this order (the scaling table alone when no part is named):
#   --table      for each config and GPU count G: insitra at each ZeRO stage
#                (mpiexec -n G bench_gpu_step CFG W S parallel.zero_stage=s),
#                then PyTorch DDP and FSDP2 (torchrun --standalone
#                --nproc_per_node G bench_torch_gpu.py CFG [--fsdp]); the
#                tables, the insitra/torch ratios and the targets.
#   --ckpt       saves config L on the largest G (stage 3) and loads it on
#                G/2 (stage 1) with bench_gpu_ckpt: times, GB/s, and whether
#                the resumed model predicts the same outputs.
#   --max-model  on the largest G, for each stage, searches the largest
#                model.n_layers of config L that trains (1 warmup + 2 steps),
#                next to the planner's (BUILD_DIR's insitra-plan) prediction.
#
# Never builds: BUILD_DIR must hold bench_gpu_step (and bench_gpu_ckpt,
# tools/insitra-plan for the other parts) of a CUDA build. Prints a markdown
# summary on stdout (program output and progress go to stderr), and as its
# last line "RESULT key=value ...". Every program's output is kept in
# ${OUT:-/tmp}/gpu_scaling/<name>.log, the summary in summary.md there.
# Exits non-zero when an insitra table run failed or the checkpoint check
# failed. See bench/README.md, "Multi-GPU scaling (issue #8)".
#
# Environment (all optional):
#   INSITRA_SCALING_CONFIGS        table configs ("M L")
#   INSITRA_SCALING_GPUS           GPU counts ("1 2 4", plus 8 when nvidia-smi lists 8 or more);
#                                  counts above the GPUs present are dropped
#   INSITRA_SCALING_STAGES         ZeRO stages ("0 1 2 3"), table and --max-model
#   INSITRA_SCALING_TORCH          torch modes, "ddp fsdp2" (default), one of them, or "none"
#   INSITRA_SCALING_WARMUP / _STEPS              insitra untimed / timed steps (5 / 10)
#   INSITRA_SCALING_TORCH_WARMUP / _TORCH_STEPS  torch untimed / timed steps (8 / 10)
#   INSITRA_SCALING_TIMEOUT        seconds before one program is killed (300; 0: never)
#   INSITRA_SCALING_DEADLINE       seconds after the start past which no new program starts,
#                                  and the running one is cut at; its rows read "skipped"
#                                  (0: none). Set it below the caller's own limit.
#   INSITRA_SCALING_SET            extra insitra overrides, "key=value ..."
#   INSITRA_SCALING_TORCH_ARGS     extra bench_torch_gpu.py options
#   INSITRA_SCALING_TABLE / _MAXMODEL / _CKPT   1 selects a part, 0 drops it (as the flags)
#   INSITRA_SCALING_MAXMODEL_GPUS  GPUs for --max-model (the largest count)
#   INSITRA_SCALING_MAXMODEL_STAGES stages searched (INSITRA_SCALING_STAGES)
#   INSITRA_SCALING_MAXMODEL_TRIES most runs per stage (6)
#   INSITRA_SCALING_MAXMODEL_BUDGET seconds for the whole search (220); each stage gets an
#                                  equal share of what is left
#   INSITRA_SCALING_MAXMODEL_TIMEOUT seconds per run (120)
#   INSITRA_SCALING_MAXMODEL_RES   stop once the largest fit and smallest failure are this
#                                  many layers apart (4)
#   INSITRA_SCALING_MEM_GIB        device memory for the planner's prediction (nvidia-smi's
#                                  memory.total of GPU 0)
#   INSITRA_SCALING_PLAN_ARGS      extra insitra-plan arguments for the logged planner runs
#   INSITRA_SCALING_CKPT_DIR       scratch directory for --ckpt (/tmp/insitra_ckpt_scaling);
#                                  its step-*.h5, latest and *.tmp are removed before and after
#   INSITRA_SCALING_CKPT_GPUS / _CKPT_LOAD_GPUS  ranks that save / load (largest G / half)
#   INSITRA_SCALING_CKPT_SAVE_STAGE / _CKPT_LOAD_STAGE  ZeRO stages (3 / 1)
#   INSITRA_SCALING_CKPT_CONFIG    config saved (L)
#   INSITRA_SCALING_CKPT_KEEP      1: leave the checkpoint in the scratch directory
#   INSITRA_SCALING_PYTHON         the python that has torch (python3); run without LD_LIBRARY_PATH
#   INSITRA_SCALING_VERBOSE        1: copy every program's output to stderr too
#   INSITRA_SCALING_PACK_LOGS      1: at the end, move the *.log files into logs.tar.gz
#   MPIEXEC                        launcher ("mpiexec"); "-n G" is appended
#   NCCL_NVLS_ENABLE               exported as 0 unless already set (likewise
#                                  TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1)
#   OUT                            where gpu_scaling/ goes (/tmp)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "run_gpu_scaling: $*" >&2; exit 1; }
warn() { echo "run_gpu_scaling: WARNING: $*" >&2; }
note() { echo "run_gpu_scaling: $*" >&2; }

do_table=${INSITRA_SCALING_TABLE:-}
do_max=${INSITRA_SCALING_MAXMODEL:-0}
do_ckpt=${INSITRA_SCALING_CKPT:-0}
build=
while (($# > 0)); do
    case $1 in
        --table) do_table=1 ;;
        --no-table) do_table=0 ;;
        --max-model) do_max=1 ;;
        --ckpt) do_ckpt=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (--table, --max-model, --ckpt, or BUILD_DIR)" ;;
        *) [[ -z $build ]] || die "more than one BUILD_DIR: '$build' and '$1'"; build=$1 ;;
    esac
    shift
done
# The table runs unless only the other parts were asked for.
if [[ -z $do_table ]]; then
    if [[ $do_max == 1 || $do_ckpt == 1 ]]; then do_table=0; else do_table=1; fi
fi
build=${build:-build/cuda}
case $build in /*) ;; *) build=$PWD/$build ;; esac
[[ -d $build ]] || die "no build directory '$build' (pass BUILD_DIR)"

# NVLink multicast (NVLS) stays off for every program unless the caller set these.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}

read -r -a configs <<<"${INSITRA_SCALING_CONFIGS:-M L}"
read -r -a stages <<<"${INSITRA_SCALING_STAGES:-0 1 2 3}"
torch_spec=${INSITRA_SCALING_TORCH:-ddp fsdp2}
read -r -a torch_modes <<<"$torch_spec"
[[ $torch_spec == none ]] && torch_modes=()
warmup=${INSITRA_SCALING_WARMUP:-5}
steps=${INSITRA_SCALING_STEPS:-10}
t_warmup=${INSITRA_SCALING_TORCH_WARMUP:-8}
t_steps=${INSITRA_SCALING_TORCH_STEPS:-10}
timeout_s=${INSITRA_SCALING_TIMEOUT:-300}
deadline=${INSITRA_SCALING_DEADLINE:-0}
read -r -a overrides <<<"${INSITRA_SCALING_SET:-}"
read -r -a torch_args <<<"${INSITRA_SCALING_TORCH_ARGS:-}"
read -r -a plan_args <<<"${INSITRA_SCALING_PLAN_ARGS:-}"
mm_tries=${INSITRA_SCALING_MAXMODEL_TRIES:-6}
mm_budget=${INSITRA_SCALING_MAXMODEL_BUDGET:-220}
mm_timeout=${INSITRA_SCALING_MAXMODEL_TIMEOUT:-120}
mm_res=${INSITRA_SCALING_MAXMODEL_RES:-4}
read -r -a mm_stages <<<"${INSITRA_SCALING_MAXMODEL_STAGES:-${stages[*]}}"
ckpt_dir=${INSITRA_SCALING_CKPT_DIR:-/tmp/insitra_ckpt_scaling}
ckpt_cfg=${INSITRA_SCALING_CKPT_CONFIG:-L}
ckpt_save_stage=${INSITRA_SCALING_CKPT_SAVE_STAGE:-3}
ckpt_load_stage=${INSITRA_SCALING_CKPT_LOAD_STAGE:-1}
python=${INSITRA_SCALING_PYTHON:-python3}
verbose=${INSITRA_SCALING_VERBOSE:-0}
read -r -a mpiexec <<<"${MPIEXEC:-mpiexec}"
outdir=${OUT:-/tmp}/gpu_scaling

for v in "$warmup" "$steps" "$t_warmup" "$t_steps" "$timeout_s" "$deadline" "$mm_tries" \
         "$mm_budget" "$mm_timeout" "$mm_res" "$ckpt_save_stage" "$ckpt_load_stage"; do
    [[ $v =~ ^[0-9]+$ ]] || die "not a count: '$v' (see the INSITRA_SCALING_* variables)"
done
((steps >= 1 && t_steps >= 1 && mm_res >= 1 && mm_tries >= 1)) || die "steps, tries and RES must be >= 1"
for s in "${stages[@]}" "${mm_stages[@]}"; do
    [[ $s =~ ^[0-3]$ ]] || die "ZeRO stage '$s' is not 0-3"
done
for m in ${torch_modes[@]+"${torch_modes[@]}"}; do
    case $m in ddp | fsdp2) ;; *) die "torch mode '$m' is not ddp, fsdp2 or none" ;; esac
done

# Config table of bench_gpu_step.c: T F C L H B (B per GPU).
declare -A shape=(
    [S]="256 16 128 4 4 16"
    [M]="1024 64 768 12 12 16"
    [L]="1024 64 1024 24 16 16"
)
for cfg in "${configs[@]}" "$ckpt_cfg"; do
    [[ -n ${shape[$cfg]:-} ]] || die "unknown config '$cfg' (S, M or L)"
done

# GPUs present, and the counts that fit.
if command -v nvidia-smi >/dev/null 2>&1; then
    ngpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
else
    ngpus=0
fi
((ngpus >= 1)) || die "no GPU found (nvidia-smi -L lists none)"
if [[ -n ${INSITRA_SCALING_GPUS:-} ]]; then
    read -r -a asked <<<"$INSITRA_SCALING_GPUS"
else
    asked=(1 2 4)
    ((ngpus >= 8)) && asked+=(8)
fi
gpu_counts=()
for g in "${asked[@]}"; do
    [[ $g =~ ^[1-9][0-9]*$ ]] || die "not a GPU count: '$g'"
    if ((g > ngpus)); then warn "skipping $g GPUs: only $ngpus present"; continue; fi
    gpu_counts+=("$g")
done
((${#gpu_counts[@]} > 0)) || die "no GPU count fits the $ngpus GPU(s) present"
gmax=${gpu_counts[-1]}
for g in "${gpu_counts[@]}"; do ((g > gmax)) && gmax=$g; done
mm_gpus=${INSITRA_SCALING_MAXMODEL_GPUS:-$gmax}
ckpt_gpus=${INSITRA_SCALING_CKPT_GPUS:-$gmax}
ckpt_load_gpus=${INSITRA_SCALING_CKPT_LOAD_GPUS:-$(( ckpt_gpus / 2 > 0 ? ckpt_gpus / 2 : 1 ))}
for g in "$mm_gpus" "$ckpt_gpus" "$ckpt_load_gpus"; do
    if ! [[ $g =~ ^[1-9][0-9]*$ ]] || ((g > ngpus)); then die "GPU count '$g' is not in 1..$ngpus"; fi
done

# Device memory for the planner's prediction, in MiB.
mem_mib=
if [[ -n ${INSITRA_SCALING_MEM_GIB:-} ]]; then
    mem_mib=$(awk -v g="$INSITRA_SCALING_MEM_GIB" 'BEGIN { printf "%d", g * 1024 }')
else
    mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 2>/dev/null |
              tr -dc '0-9' || true)
fi

# Binaries: never built here.
find_binary() {
    local candidate
    for candidate in "$build/$2/$1" "$build/$1"; do
        [[ -x $candidate ]] && { printf '%s\n' "$candidate"; return; }
    done
    find "$build" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1
}
bench_gpu_step=$(find_binary bench_gpu_step bench)
bench_gpu_ckpt=$(find_binary bench_gpu_ckpt bench)
insitra_plan=$(find_binary insitra-plan tools)
[[ $do_table == 0 && $do_max == 0 ]] || [[ -n $bench_gpu_step ]] ||
    die "no bench_gpu_step under $build (cmake --build $build --target bench_gpu_step)"
[[ $do_ckpt == 0 || -n $bench_gpu_ckpt ]] ||
    die "no bench_gpu_ckpt under $build (cmake --build $build --target bench_gpu_ckpt)"
[[ $do_max == 0 || -n $insitra_plan ]] || warn "no insitra-plan under $build: no planner figures"

mkdir -p "$outdir"
start=$SECONDS
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) host=${HOSTNAME:-unknown} gpus=$ngpus" \
         "counts=${gpu_counts[*]} mem_mib=${mem_mib:-?} NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
    echo "parts: table=$do_table max_model=$do_max ckpt=$do_ckpt build=$build"
    echo "bench_gpu_step=${bench_gpu_step:-none} bench_gpu_ckpt=${bench_gpu_ckpt:-none}" \
         "insitra-plan=${insitra_plan:-none} python=$python"
    nvidia-smi -L 2>&1 || true
    if [[ $do_table == 1 && ${#torch_modes[@]} -gt 0 ]]; then
        env -u LD_LIBRARY_PATH "$python" -c 'import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "nccl", ".".join(map(str, torch.cuda.nccl.version())))' 2>&1 || true
    fi
} | tee "$outdir/setup.txt" >&2

# Seconds the next program may run: the per-program limit, cut to what the
# deadline leaves; "" when the deadline leaves less than 20 s (skip it).
time_left_for() {
    local limit=$1 left
    if ((deadline > 0)); then
        left=$((deadline - (SECONDS - start)))
        ((left >= 20)) || { echo ""; return; }
        if ((limit == 0 || left < limit)); then limit=$left; fi
    fi
    echo "$limit"
}

# run_logged NAME LIMIT COMMAND...: runs COMMAND under timeout LIMIT (0:
# none), all its output into $outdir/NAME.log (and stderr when verbose);
# returns its status, or 125 when the deadline leaves no time (not run).
run_logged() {
    local name=$1 limit rc t0=$SECONDS
    limit=$(time_left_for "$2")
    shift 2
    if [[ -z $limit ]]; then
        printf '# skipped: past INSITRA_SCALING_DEADLINE\n' >"$outdir/$name.log"
        note "$name: skipped (deadline)"
        return 125
    fi
    local -a lim=()
    ((limit > 0)) && lim=(timeout --kill-after=20 "$limit")
    printf '# %s\n' "$*" >"$outdir/$name.log"
    set +e
    if [[ $verbose == 1 ]]; then
        echo "+ $*" >&2
        ${lim[@]+"${lim[@]}"} "$@" 2>&1 | tee -a "$outdir/$name.log" >&2
        rc=${PIPESTATUS[0]}
    else
        ${lim[@]+"${lim[@]}"} "$@" >>"$outdir/$name.log" 2>&1
        rc=$?
    fi
    set -e
    note "$name: status $rc, $((SECONDS - t0)) s (total $((SECONDS - start)) s)"
    return "$rc"
}
# result_line, field, is_num, calc, verdict, gt
# shellcheck source=bench/gpu_bench_lib.sh
source "$here/gpu_bench_lib.sh"

declare -A r      # r[key] = figure
failed_insitra=0
failed_torch=0
skipped=0
noisy=0
status_of() { # status word for a run that gave no result line
    case $1 in 125) echo skipped ;; 124 | 137) echo timeout ;; *) echo failed ;; esac
}
check_noise() { # check_noise LINE WHAT
    local ms fastest
    ms=$(field "$1" step_ms) fastest=$(field "$1" step_ms_min)
    if is_num "$ms" && is_num "$fastest" &&
        awk -v a="$ms" -v b="$fastest" 'BEGIN { exit !(a > 1.25 * b) }'; then
        noisy=1
        warn "$2: the median step is over 1.25x the fastest; something else may have used the GPU"
    fi
}

# ----------------------------------------------------------------------------
# Part 1: the scaling table.
# ----------------------------------------------------------------------------
# The torch mode that runs for MODE on G GPUs: DDP on one GPU is the plain
# single-process model.
torch_mode() { if [[ $1 == ddp && $2 == 1 ]]; then echo single; else echo "$1"; fi; }

if [[ $do_table == 1 ]]; then
    for cfg in "${configs[@]}"; do
        for g in "${gpu_counts[@]}"; do
            for s in "${stages[@]}"; do
                name=insitra_${cfg}_${g}gpu_z$s
                rc=0
                run_logged "$name" "$timeout_s" "${mpiexec[@]}" -n "$g" "$bench_gpu_step" "$cfg" \
                    "$warmup" "$steps" "parallel.zero_stage=$s" \
                    ${overrides[@]+"${overrides[@]}"} || rc=$?
                line=$(result_line "$name" insitra)
                if [[ -z $line ]]; then
                    st=$(status_of "$rc")
                    if [[ $st == skipped ]]; then skipped=$((skipped + 1)); else failed_insitra=$((failed_insitra + 1)); fi
                    line="step_ms=$st tok_s=$st"
                else
                    check_noise "$line" "insitra $cfg $g GPU(s) stage $s"
                fi
                for key in step_ms tok_s peak_mem_gib comm_wait_ms params mfu; do
                    v=$(field "$line" "$key")
                    r[$cfg,$g,z$s,$key]=${v:-n/a}
                done
            done
            for mode in ${torch_modes[@]+"${torch_modes[@]}"}; do
                tm=$(torch_mode "$mode" "$g")
                name=torch_${cfg}_${g}gpu_$tm
                topts=(--warmup "$t_warmup" --steps "$t_steps")
                [[ $tm == fsdp2 ]] && topts+=(--fsdp)
                rc=0
                if [[ $tm == single ]]; then
                    run_logged "$name" "$timeout_s" env -u LD_LIBRARY_PATH "$python" \
                        "$here/bench_torch_gpu.py" "$cfg" "${topts[@]}" \
                        ${torch_args[@]+"${torch_args[@]}"} || rc=$?
                else
                    run_logged "$name" "$timeout_s" env -u LD_LIBRARY_PATH "$python" \
                        -m torch.distributed.run --standalone --nproc_per_node "$g" \
                        "$here/bench_torch_gpu.py" "$cfg" "${topts[@]}" \
                        ${torch_args[@]+"${torch_args[@]}"} || rc=$?
                fi
                line=$(result_line "$name" torch)
                if [[ -z $line ]]; then
                    st=$(status_of "$rc")
                    if [[ $st == skipped ]]; then skipped=$((skipped + 1)); else failed_torch=$((failed_torch + 1)); fi
                    line="step_ms=$st tok_s=$st"
                else
                    check_noise "$line" "torch $tm $cfg $g GPU(s)"
                    got=$(field "$line" mode)
                    [[ -z $got || $got == "$tm" ]] || warn "$name: ran as mode=$got, not $tm"
                fi
                for key in step_ms tok_s peak_mem_gib reserved_mem_gib params first_step_s; do
                    v=$(field "$line" "$key")
                    r[$cfg,$g,$tm,$key]=${v:-n/a}
                done
            done
        done

        # Derived figures. Weak scaling: every GPU trains B samples a step.
        for g in "${gpu_counts[@]}"; do
            for s in "${stages[@]}"; do
                k=$cfg,$g,z$s b=$cfg,1,z$s
                r[$k,eff]=$(calc %.3f 'a / (c * b)' "${r[$k,tok_s]}" "${r[$b,tok_s]:-}" "$g")
                r[$k,comm]=$(calc %.3f '1 - b / a' "${r[$k,step_ms]}" "${r[$b,step_ms]:-}")
            done
            for mode in ${torch_modes[@]+"${torch_modes[@]}"}; do
                tm=$(torch_mode "$mode" "$g") b=$cfg,1,$(torch_mode "$mode" 1)
                k=$cfg,$g,$tm
                r[$k,eff]=$(calc %.3f 'a / (c * b)' "${r[$k,tok_s]}" "${r[$b,tok_s]:-}" "$g")
                r[$k,comm]=$(calc %.3f '1 - b / a' "${r[$k,step_ms]}" "${r[$b,step_ms]:-}")
            done
            # The best stage and the best torch mode, by tokens/s.
            best_s='' best_m=''
            for s in "${stages[@]}"; do
                v=${r[$cfg,$g,z$s,tok_s]}
                is_num "$v" || continue
                if [[ -z $best_s ]] || gt "$v" "${r[$cfg,$g,z$best_s,tok_s]}"; then best_s=$s; fi
            done
            for mode in ${torch_modes[@]+"${torch_modes[@]}"}; do
                tm=$(torch_mode "$mode" "$g")
                v=${r[$cfg,$g,$tm,tok_s]}
                is_num "$v" || continue
                if [[ -z $best_m ]] || gt "$v" "${r[$cfg,$g,$best_m,tok_s]}"; then best_m=$tm; fi
            done
            r[$cfg,$g,best_stage]=${best_s:-n/a}
            r[$cfg,$g,best_mode]=${best_m:-n/a}
            ins=n/a tor=n/a
            [[ -n $best_s ]] && ins=${r[$cfg,$g,z$best_s,tok_s]}
            [[ -n $best_m ]] && tor=${r[$cfg,$g,$best_m,tok_s]}
            r[$cfg,$g,ratio]=$(calc %.3f 'a / b' "$ins" "$tor")
            missing=n/a
            is_num "$ins" || missing=MISS
            r[$cfg,$g,ratio_target]=$(verdict "${r[$cfg,$g,ratio]}" 1.2 "$missing")
            ((${#torch_modes[@]} > 0)) || r[$cfg,$g,ratio_target]=n/a
        done
        # Efficiency target: the fastest stage on the largest G.
        if [[ ${r[$cfg,$gmax,best_stage]} != n/a ]]; then
            r[$cfg,eff]=${r[$cfg,$gmax,z${r[$cfg,$gmax,best_stage]},eff]}
        else
            r[$cfg,eff]=n/a
        fi
        r[$cfg,eff_target]=$(verdict "${r[$cfg,eff]}" 0.90 MISS)
        ((gmax > 1)) || r[$cfg,eff_target]=n/a
    done
fi

# ----------------------------------------------------------------------------
# Part 2: save on G GPUs at one stage, load on G/2 at another.
# ----------------------------------------------------------------------------
ckpt_status=skipped
clean_ckpt_dir() {
    rm -f "$ckpt_dir"/step-*.h5 "$ckpt_dir"/step-*.h5.tmp "$ckpt_dir"/latest "$ckpt_dir"/latest.tmp
}
if [[ $do_ckpt == 1 ]]; then
    mkdir -p "$ckpt_dir"
    clean_ckpt_dir
    for op in save load; do
        if [[ $op == save ]]; then g=$ckpt_gpus s=$ckpt_save_stage; else g=$ckpt_load_gpus s=$ckpt_load_stage; fi
        name=ckpt_${op}_${ckpt_cfg}_${g}gpu_z$s
        rc=0
        run_logged "$name" "$timeout_s" "${mpiexec[@]}" -n "$g" "$bench_gpu_ckpt" "$op" \
            "$ckpt_dir" "$ckpt_cfg" "parallel.zero_stage=$s" \
            ${overrides[@]+"${overrides[@]}"} || rc=$?
        line=$(grep -o "gpu_ckpt op=$op .*" "$outdir/$name.log" | tail -n 1 || true)
        r[ck,$op,ranks]=$g r[ck,$op,stage]=$s
        for key in seconds gbps bytes sum sumsq sumabs fnv loss ranks_agree cache; do
            v=$(field "$line" "$key")
            r[ck,$op,$key]=${v:-$(status_of "$rc")}
        done
    done
    # Same outputs: |sum difference| and |sumsq difference| under 1e-6 of
    # the sum of |outputs| and of the sum of squares.
    if is_num "${r[ck,save,sum]}" && is_num "${r[ck,load,sum]}"; then
        r[ck,reldiff]=$(awk -v a="${r[ck,save,sum]}" -v b="${r[ck,load,sum]}" \
            -v qa="${r[ck,save,sumsq]}" -v qb="${r[ck,load,sumsq]}" -v m="${r[ck,save,sumabs]}" '
            function abs(x) { return x < 0 ? -x : x }
            BEGIN { d1 = m > 0 ? abs(a - b) / m : abs(a - b)
                    d2 = qa > 0 ? abs(qa - qb) / qa : abs(qa - qb)
                    printf "%.3e", (d1 > d2 ? d1 : d2) }')
        if is_num "${r[ck,reldiff]}" &&
            awk -v d="${r[ck,reldiff]}" 'BEGIN { exit !(d + 0 < 1e-6) }'; then
            ckpt_status=PASS
        else
            ckpt_status=FAIL
        fi
        r[ck,bitwise]=0
        [[ ${r[ck,save,fnv]} != "${r[ck,load,fnv]}" ]] || r[ck,bitwise]=1
    else
        ckpt_status=FAIL r[ck,reldiff]=n/a r[ck,bitwise]=n/a
    fi
    [[ ${INSITRA_SCALING_CKPT_KEEP:-0} == 1 ]] || clean_ckpt_dir
fi

# ----------------------------------------------------------------------------
# Part 3: the largest model that trains, per stage, and the planner's view.
# ----------------------------------------------------------------------------
# plan_sets CFG N_LAYERS STAGE: insitra-plan --set arguments for that model.
plan_sets() {
    local T F C H B
    read -r T F C _ H B <<<"${shape[$1]}"
    printf '%s\n' --set device=cuda --set precision=bf16 --set "model.seq_len=$T" \
        --set "model.in_features=$F" --set "model.out_features=$F" --set "model.d_model=$C" \
        --set "model.n_layers=$2" --set "model.n_heads=$H" --set "training.batch_size=$B" \
        --set data.capacity=64
    local o
    for o in ${overrides[@]+"${overrides[@]}"}; do printf '%s\n' --set "$o"; done
}
# plan_total_mib CFG N_LAYERS G STAGE: the planner's total MiB per rank (""
# when it cannot tell). The value sits under the "total MiB" header, both
# right-aligned.
plan_total_mib() {
    [[ -n $insitra_plan ]] || return 0
    local -a sets
    mapfile -t sets < <(plan_sets "$1" "$2")
    "$insitra_plan" --ranks "$3" "${sets[@]}" 2>/dev/null | awk -v g="$3" -v s="$4" '
        /total MiB/ && !end { end = index($0, "total MiB") + length("total MiB") - 1 }
        end && $1 == g && $2 == s {
            n = split(substr($0, 1, end), f, " ")
            if (f[n] ~ /^[0-9.]+$/) { print f[n]; exit }
        }'
}
# plan_max_layers CFG G STAGE: the largest n_layers (1..1024) whose planned
# total fits mem_mib, by bisection over the planner ("" if it cannot tell).
plan_max_layers() {
    [[ -n $insitra_plan && -n $mem_mib ]] || return 0
    local lo=0 hi=1025 mid t
    while ((hi - lo > 1)); do
        mid=$(((lo + hi) / 2))
        t=$(plan_total_mib "$1" "$mid" "$2" "$3")
        is_num "$t" || return 0
        if awk -v t="$t" -v m="$mem_mib" 'BEGIN { exit !(t <= m) }'; then lo=$mid; else hi=$mid; fi
    done
    ((lo > 0)) && echo "$lo"
    return 0
}

mm_cfg=L
if [[ $do_max == 1 ]]; then
    mm_start=$SECONDS
    nst=${#mm_stages[@]}
    prev_lo=
    for ((si = 0; si < nst; si++)); do
        s=${mm_stages[si]}
        pred=$(plan_max_layers "$mm_cfg" "$mm_gpus" "$s")
        r[mm,z$s,plan]=${pred:-n/a}
        r[mm,z$s,lo]=0 r[mm,z$s,hi]=0 r[mm,z$s,tries]=0
        r[mm,z$s,plan_gib_lo]=n/a r[mm,z$s,plan_gib_hi]=n/a
        if ((SECONDS - mm_start >= mm_budget)); then
            note "max-model stage $s: not run, the ${mm_budget} s budget is spent"
            r[mm,z$s,why]=budget
            continue
        fi
        # Each stage gets an equal share of the budget that is left.
        share=$(((mm_budget - (SECONDS - mm_start)) / (nst - si)))
        st_start=$SECONDS
        # First size: the planner's prediction, else the last stage's
        # largest fit (a higher stage holds less), else 96.
        if [[ -n $pred ]]; then n=$pred step=$((pred / 8))
        elif [[ -n $prev_lo ]]; then n=$prev_lo step=$((prev_lo / 8))
        else n=96 step=48
        fi
        ((step >= mm_res)) || step=$mm_res
        lo=0 hi=0 dir=0 tries=0 why=
        while ((tries < mm_tries)); do
            if ((tries > 0 && SECONDS - st_start >= share)); then
                note "max-model stage $s: out of its ${share} s share after $tries run(s)"
                break
            fi
            name=maxmodel_${mm_cfg}_${mm_gpus}gpu_z${s}_n$n
            rc=0
            run_logged "$name" "$mm_timeout" "${mpiexec[@]}" -n "$mm_gpus" "$bench_gpu_step" \
                "$mm_cfg" 1 2 "parallel.zero_stage=$s" "model.n_layers=$n" \
                ${overrides[@]+"${overrides[@]}"} || rc=$?
            ((rc == 125)) && break
            tries=$((tries + 1))
            line=$(result_line "$name" insitra)
            if [[ -n $line ]]; then
                lo=$n
                r[mm,z$s,mem]=$(field "$line" peak_mem_max_gib)
                r[mm,z$s,params]=$(field "$line" params)
            else
                hi=$n
                if grep -qiE 'OUT_OF_MEMORY|out of memory|cannot allocate' "$outdir/$name.log"; then
                    why=oom
                elif ((rc == 124 || rc == 137)); then why=timeout
                else why=error
                fi
                r[mm,z$s,why]=$why
            fi
            # Next size: step away (doubling the step) until both a fit and a
            # failure are known, then bisect.
            if ((lo > 0 && hi > 0)); then
                ((hi - lo > mm_res)) || break
                n=$(((lo + hi) / 2))
            elif ((hi == 0)); then
                ((lo < 1024)) || break
                ((dir == 1)) && step=$((step * 2))
                dir=1 n=$((lo + step))
                ((n <= 1024)) || n=1024
            else
                ((hi > 1)) || break
                ((dir == -1)) && step=$((step * 2))
                dir=-1 n=$((hi - step))
                ((n >= 1)) || n=1
            fi
        done
        r[mm,z$s,lo]=$lo r[mm,z$s,hi]=$hi r[mm,z$s,tries]=$tries
        ((lo > 0)) && prev_lo=$lo
        # The planner at the largest fit and the smallest failure, in GiB.
        for side in lo hi; do
            n=${r[mm,z$s,$side]} v=n/a
            if ((n > 0)); then
                t=$(plan_total_mib "$mm_cfg" "$n" "$mm_gpus" "$s")
                is_num "$t" && v=$(calc %.2f 'a / 1024' "$t")
            fi
            r[mm,z$s,plan_gib_$side]=$v
        done
    done
    # The planner's own output for each stage's bracket, for the log.
    if [[ -n $insitra_plan ]]; then
        {
            for s in "${mm_stages[@]}"; do
                for n in ${r[mm,z$s,lo]} ${r[mm,z$s,hi]}; do
                    ((n > 0)) || continue
                    mapfile -t sets < <(plan_sets "$mm_cfg" "$n")
                    mem_arg=()
                    [[ -n $mem_mib ]] && mem_arg=(--memory-per-rank "$(calc %.2f 'a / 1024' "$mem_mib")")
                    echo "# stage $s, n_layers=$n"
                    "$insitra_plan" --ranks "$mm_gpus" "${sets[@]}" ${mem_arg[@]+"${mem_arg[@]}"} \
                        ${plan_args[@]+"${plan_args[@]}"} 2>&1 || true
                done
            done
        } >"$outdir/maxmodel_plan.log"
    fi
fi

# ----------------------------------------------------------------------------
# Summary: stdout and $outdir/summary.md; RESULT is the last line.
# ----------------------------------------------------------------------------
{
    if [[ $do_table == 1 ]]; then
        echo
        echo "## Multi-GPU weak scaling: insitra (bf16, ZeRO stages) vs PyTorch (DDP, FSDP2)"
        echo
        echo "Every GPU trains B = 16 samples a step; tok/s counts all GPUs."
        echo "efficiency = tok/s on G / (G x tok/s on 1 GPU, same stage or mode);"
        echo "exposed comm = 1 - (1-GPU step time / G-GPU step time), an estimate (see bench/README.md)."
        echo
        echo "| config | gpus | stage | insitra tok/s | step ms | scaling efficiency | exposed comm share | peak mem GiB | comm wait ms |"
        echo "|--------|------|-------|---------------|---------|--------------------|--------------------|--------------|--------------|"
        for cfg in "${configs[@]}"; do
            for g in "${gpu_counts[@]}"; do
                for s in "${stages[@]}"; do
                    k=$cfg,$g,z$s
                    echo "| $cfg | $g | $s | ${r[$k,tok_s]} | ${r[$k,step_ms]} | ${r[$k,eff]} |" \
                         "${r[$k,comm]} | ${r[$k,peak_mem_gib]} | ${r[$k,comm_wait_ms]} |"
                done
            done
        done
        if ((${#torch_modes[@]} > 0)); then
            echo
            echo "| config | gpus | mode | torch tok/s | step ms | scaling efficiency | exposed comm share | peak mem GiB | reserved GiB |"
            echo "|--------|------|------|-------------|---------|--------------------|--------------------|--------------|--------------|"
            for cfg in "${configs[@]}"; do
                for g in "${gpu_counts[@]}"; do
                    for mode in "${torch_modes[@]}"; do
                        tm=$(torch_mode "$mode" "$g") k=$cfg,$g,$(torch_mode "$mode" "$g")
                        echo "| $cfg | $g | $tm | ${r[$k,tok_s]} | ${r[$k,step_ms]} | ${r[$k,eff]} |" \
                             "${r[$k,comm]} | ${r[$k,peak_mem_gib]} | ${r[$k,reserved_mem_gib]} |"
                    done
                done
            done
            echo
            echo "Ratio: insitra tok/s at its fastest stage / torch tok/s in its fastest mode."
            echo
            echo "| config | gpus | best stage | best torch mode | ratio | >= 1.2 |"
            echo "|--------|------|------------|-----------------|-------|--------|"
            for cfg in "${configs[@]}"; do
                for g in "${gpu_counts[@]}"; do
                    echo "| $cfg | $g | ${r[$cfg,$g,best_stage]} | ${r[$cfg,$g,best_mode]} |" \
                         "${r[$cfg,$g,ratio]} | ${r[$cfg,$g,ratio_target]} |"
                done
            done
        fi
        echo
        echo "Targets:"
        for cfg in "${configs[@]}"; do
            for g in "${gpu_counts[@]}"; do
                echo "  $cfg on $g GPU(s): insitra/torch >= 1.2: ${r[$cfg,$g,ratio]}  ${r[$cfg,$g,ratio_target]}"
            done
            echo "  $cfg: scaling efficiency on $gmax GPUs (stage ${r[$cfg,$gmax,best_stage]}) >= 0.90:" \
                 "${r[$cfg,eff]}  ${r[$cfg,eff_target]}"
        done
        ((noisy == 0)) || echo "WARNING: some median step was over 1.25x its fastest step (see stderr)"
        ((failed_insitra == 0)) || echo "WARNING: $failed_insitra insitra run(s) failed (logs in $outdir)"
        ((failed_torch == 0)) || echo "WARNING: $failed_torch torch run(s) failed (logs in $outdir)"
        ((skipped == 0)) || echo "WARNING: $skipped run(s) skipped: INSITRA_SCALING_DEADLINE passed"
    fi
    if [[ $do_max == 1 ]]; then
        echo
        echo "## Largest model that trains: config L on $mm_gpus GPUs, model.n_layers grown (1 warmup + 2 steps)"
        echo
        echo "Planner: insitra-plan's per-rank total for device=cuda precision=bf16; its largest"
        echo "n_layers is the largest whose total fits ${mem_mib:-?} MiB (the GPU's memory)."
        echo
        echo "| stage | largest L that trained | measured GiB | smallest L that failed | why | runs | planner largest L | planner GiB at largest | planner GiB at failed |"
        echo "|-------|------------------------|--------------|------------------------|-----|------|-------------------|------------------------|-----------------------|"
        for s in "${mm_stages[@]}"; do
            lo=${r[mm,z$s,lo]} hi=${r[mm,z$s,hi]}
            ((lo > 0)) || lo=none
            ((hi > 0)) || hi=none
            echo "| $s | $lo | ${r[mm,z$s,mem]:-n/a} | $hi | ${r[mm,z$s,why]:-} | ${r[mm,z$s,tries]} |" \
                 "${r[mm,z$s,plan]} | ${r[mm,z$s,plan_gib_lo]} | ${r[mm,z$s,plan_gib_hi]} |"
        done
        echo
        echo "The planner's tables for these sizes: $outdir/maxmodel_plan.log"
    fi
    if [[ $do_ckpt == 1 ]]; then
        echo
        echo "## Checkpoint of config $ckpt_cfg: save on $ckpt_gpus GPUs (stage $ckpt_save_stage)," \
             "load on $ckpt_load_gpus (stage $ckpt_load_stage)"
        echo
        echo "| op | ranks | stage | bytes | seconds | GB/s | checksum sum | checksum sumsq | loss |"
        echo "|----|-------|-------|-------|---------|------|--------------|----------------|------|"
        for op in save load; do
            echo "| $op | ${r[ck,$op,ranks]} | ${r[ck,$op,stage]} | ${r[ck,$op,bytes]} |" \
                 "${r[ck,$op,seconds]} | ${r[ck,$op,gbps]} | ${r[ck,$op,sum]} | ${r[ck,$op,sumsq]} |" \
                 "${r[ck,$op,loss]} |"
        done
        echo
        echo "Resumed model predicts the saved one's outputs (relative difference < 1e-6):" \
             "${r[ck,reldiff]}  $ckpt_status (bit-identical outputs: ${r[ck,bitwise]})"
        echo "(load page cache: ${r[ck,load,cache]}; loss: the save run's 2nd step, the load run's first step after it)"
    fi

    line="RESULT gpus=$ngpus counts=$(IFS=,; echo "${gpu_counts[*]}") table=$do_table max_model=$do_max ckpt=$do_ckpt"
    if [[ $do_table == 1 ]]; then
        line+=" configs=$(IFS=,; echo "${configs[*]}")"
        for cfg in "${configs[@]}"; do
            for g in "${gpu_counts[@]}"; do
                for s in "${stages[@]}"; do
                    for key in tok_s step_ms eff comm peak_mem_gib comm_wait_ms; do
                        line+=" ${cfg}_${g}gpu_z${s}_$key=${r[$cfg,$g,z$s,$key]}"
                    done
                done
                for mode in ${torch_modes[@]+"${torch_modes[@]}"}; do
                    tm=$(torch_mode "$mode" "$g")
                    for key in tok_s step_ms eff comm peak_mem_gib; do
                        line+=" ${cfg}_${g}gpu_${tm}_$key=${r[$cfg,$g,$tm,$key]}"
                    done
                done
                line+=" ${cfg}_${g}gpu_best_stage=${r[$cfg,$g,best_stage]}"
                line+=" ${cfg}_${g}gpu_best_torch=${r[$cfg,$g,best_mode]}"
                line+=" ${cfg}_${g}gpu_ratio=${r[$cfg,$g,ratio]}"
                line+=" ${cfg}_${g}gpu_ratio_target=${r[$cfg,$g,ratio_target]}"
            done
            line+=" ${cfg}_eff=${r[$cfg,eff]} ${cfg}_eff_target=${r[$cfg,eff_target]}"
        done
        line+=" insitra_failed=$failed_insitra torch_failed=$failed_torch skipped=$skipped noisy=$noisy"
    fi
    if [[ $do_max == 1 ]]; then
        line+=" maxmodel_gpus=$mm_gpus"
        for s in "${mm_stages[@]}"; do
            line+=" maxL_z${s}=${r[mm,z$s,lo]} maxL_z${s}_failed=${r[mm,z$s,hi]}"
            line+=" maxL_z${s}_why=${r[mm,z$s,why]:-none} maxL_z${s}_plan=${r[mm,z$s,plan]}"
            line+=" maxL_z${s}_mem_gib=${r[mm,z$s,mem]:-n/a} maxL_z${s}_plan_gib=${r[mm,z$s,plan_gib_lo]}"
        done
    fi
    if [[ $do_ckpt == 1 ]]; then
        for op in save load; do
            for key in ranks stage bytes seconds gbps; do
                line+=" ckpt_${op}_$key=${r[ck,$op,$key]}"
            done
        done
        line+=" ckpt_reldiff=${r[ck,reldiff]} ckpt_bitwise=${r[ck,bitwise]} ckpt_match=$ckpt_status"
    fi
    line+=" seconds=$((SECONDS - start))"
    echo "$line"
} | tee "$outdir/summary.md"

# One archive instead of dozens of logs, for transports that bring back few files.
if [[ ${INSITRA_SCALING_PACK_LOGS:-0} == 1 ]]; then
    (cd "$outdir" && shopt -s nullglob && logs=(*.log) && ((${#logs[@]} > 0)) &&
        tar -czf logs.tar.gz "${logs[@]}" && rm -f -- "${logs[@]}") ||
        warn "could not pack the logs into $outdir/logs.tar.gz"
fi

((failed_insitra == 0)) && [[ $ckpt_status != FAIL ]]
