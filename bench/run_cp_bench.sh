#!/usr/bin/env bash
# Context parallelism on the CPU (issue #17): tokens/s, memory per rank and
# the ring's exposed communication for one sample of T tokens spread over
# 1, 2 and 4 ranks, against cp = 1 on one rank with all the cores.
#
#   bench/run_cp_bench.sh [options] [BUILD_DIR]        (default build/cpu)
#
#   --no-build        use the bench_cp already in BUILD_DIR (no cmake --build)
#   --cpus LIST       cores to run on, taskset -c syntax ("0-15", "0,1"); default:
#                     the cores this shell may use. R ranks split them into R
#                     equal consecutive parts, rank r on part r, with
#                     OMP_NUM_THREADS = cores / R each
#   --ts LIST         sequence lengths T ("4096 8192" or "4096,8192");
#                     default 4096 8192 16384 32768 65536
#   --ranks LIST      rank counts, cp = ranks, dp = 1 (default 1 2 4; 1 is cp = 1,
#                     the baseline of the speedup)
#   --steps N         timed steps per run (3); --warmup N untimed steps before them (1)
#   --mem-mib M       memory budget per rank: a run whose planned bytes per rank
#                     (insitra_plan_stage, = insitra_memory_report) exceed it is
#                     skipped (default MemAvailable / the largest rank count)
#   --max-run-s S     skip a run predicted to take longer than S seconds (300);
#                     a run is stopped at 2 S
#   --deadline-s S    start no run predicted to end more than S seconds after the
#                     script started (0: none)
#   --set "k=v ..."   extra insitra config overrides for every run
#   --log-dir DIR     each program's output and summary.md (${OUT:-/tmp}/cp_bench)
#
# Environment: MPIEXEC (launcher, default "mpiexec"; each rank is one MPMD part
# "-n 1 env OMP_NUM_THREADS=k taskset -c CORES bench_cp ...", joined by ":").
# Prints progress on stderr, then a markdown table on stdout and a last line
# "RESULT key=value ...". See bench/README.md, "Context parallelism".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
die() { echo "run_cp_bench: $*" >&2; exit 1; }
say() { echo "run_cp_bench: $*" >&2; }

no_build=0 cpus='' ts="4096 8192 16384 32768 65536" rank_counts="1 2 4" steps=3 warmup=1
mem_mib='' max_run_s=300 deadline_s=0 extra='' log_dir=${OUT:-/tmp}/cp_bench build=build/cpu
while (($#)); do
    case $1 in
    --no-build) no_build=1 ;;
    --cpus) cpus=${2:?--cpus needs a list}; shift ;;
    --ts) ts=${2:?--ts needs a list}; shift ;;
    --ranks) rank_counts=${2:?--ranks needs a list}; shift ;;
    --steps) steps=${2:?--steps needs a count}; shift ;;
    --warmup) warmup=${2:?--warmup needs a count}; shift ;;
    --mem-mib) mem_mib=${2:?--mem-mib needs MiB}; shift ;;
    --max-run-s) max_run_s=${2:?--max-run-s needs seconds}; shift ;;
    --deadline-s) deadline_s=${2:?--deadline-s needs seconds}; shift ;;
    --set) extra=${2?--set needs \"key=value ...\"}; shift ;;
    --log-dir) log_dir=${2:?--log-dir needs a directory}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (--help lists them)" ;;
    *) build=$1 ;;
    esac
    shift
done
ts=${ts//,/ } rank_counts=${rank_counts//,/ }
for n in $ts $rank_counts $steps $warmup $max_run_s $deadline_s ${mem_mib:-1}; do
    [[ $n =~ ^[0-9]+$ ]] || die "'$n' is not a non-negative integer"
done
((steps >= 1)) || die "--steps must be at least 1"
case $build in /*) ;; *) build=$root/$build ;; esac
[[ -f $build/CMakeCache.txt ]] || die "$build is not a configured CMake build directory (configure it first)"
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
[[ $build_type == Release ]] ||
    say "WARNING: $build is a '$build_type' build; timings want Release (cmake --preset cpu)"
if ((no_build == 0)); then
    cmake --build "$build" --target bench_cp >&2 || die "building bench_cp failed"
fi
bench=$build/bench/bench_cp
[[ -x $bench ]] || bench=$(find "$build" -type f -name bench_cp -perm -u+x | head -n 1)
[[ -n $bench && -x $bench ]] || die "no bench_cp under $build"
command -v taskset >/dev/null || die "taskset (util-linux) is needed to pin the ranks"
read -r -a mpiexec <<<"${MPIEXEC:-mpiexec}"
read -r -a overrides <<<"$extra"

# The cores, one per entry, from a taskset -c list.
[[ -n $cpus ]] || cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)
core=()
for part in ${cpus//,/ }; do
    if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
        for ((c = BASH_REMATCH[1]; c <= BASH_REMATCH[2]; c++)); do core+=("$c"); done
    elif [[ $part =~ ^[0-9]+$ ]]; then
        core+=("$part")
    else
        die "--cpus: cannot read '$part' of '$cpus'"
    fi
done
ncores=${#core[@]}
((ncores > 0)) || die "--cpus '$cpus' names no core"
# Rank r of R: cores [r k, (r+1) k) of the list, k = ncores / R, as a taskset list.
rank_cores() {
    local k=$((ncores / $2)) i list=
    for ((i = $1 * k; i < ($1 + 1) * k; i++)); do list+=${list:+,}${core[i]}; done
    printf '%s\n' "$list"
}

max_ranks=1
for r in $rank_counts; do ((r > max_ranks)) && max_ranks=$r; done
avail_mib=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
[[ -n $mem_mib ]] || mem_mib=$((avail_mib / max_ranks))
mkdir -p "$log_dir"
start=$SECONDS

field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

say "bench_cp=$bench ($build_type) cores=${core[*]} ts=[$ts] ranks=[$rank_counts] steps=$steps warmup=$warmup" \
    "mem budget ${mem_mib} MiB/rank (MemAvailable ${avail_mib} MiB) max run ${max_run_s}s" \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
placement=()
for R in $rank_counts; do
    if ((R <= ncores && ncores % R == 0)); then
        p="$R rank(s), $((ncores / R)) thread(s) each:"
        for ((r = 0; r < R; r++)); do p+=" rank $r on cores $(rank_cores $r "$R");"; done
        placement+=("${p%;}")
    fi
done

declare -A res last_t last_ms same_t_ms
rows=()      # "T R" in run order
noisy=0
summary=$log_dir/summary.md
header() {
    echo "| T | ranks | cp | threads/rank | ms/step | tokens/s | MiB/rank | act MiB/rank | max RSS MiB/rank | ring exposed comm % | all comm wait % | speedup vs cp=1 | note |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
}
row() { # T R
    local k="$1,$2" base="$1,1" sp="n/a"
    if [[ -n ${res[$k,tok_s]:-} ]]; then
        local note=${res[$k,note]}
        if [[ -n ${res[$base,tok_s]:-} ]]; then
            sp=$(calc %.2f "${res[$k,tok_s]} / ${res[$base,tok_s]}")
            # the same sample and initial weights: cp changes the sums' order only
            local rel
            rel=$(calc %.2e "(${res[$k,loss]} - ${res[$base,loss]}) / ${res[$base,loss]}")
            awk "BEGIN { exit !($rel > 1e-4 || $rel < -1e-4) }" &&
                note+="${note:+; }loss differs from cp=1's by $rel relative"
        fi
        echo "| $1 | $2 | $2 | ${res[$k,threads]} | ${res[$k,step_ms]} | ${res[$k,tok_s]} | ${res[$k,mem_mib]} |" \
             "${res[$k,act_mib]} | ${res[$k,rss_mib]} | ${res[$k,ring_pct]} | ${res[$k,comm_pct]} | $sp | $note |"
    else
        echo "| $1 | $2 | $2 | | | | ${res[$k,plan_mib]:+${res[$k,plan_mib]} (plan)} | | | | | | ${res[$k,note]} |"
    fi
}
result_pairs() { # T R: the row's key=value pairs for RESULT
    local k="$1,$2" p="T${1}_r${2}" key
    if [[ -z ${res[$k,tok_s]:-} ]]; then echo "${p}=skipped"; return; fi
    for key in step_ms tok_s mem_mib rss_mib ring_pct comm_pct loss; do printf '%s ' "${p}_$key=${res[$k,$key]}"; done
    if [[ -n ${res[$1,1,tok_s]:-} ]]; then
        echo "${p}_speedup=$(calc %.2f "${res[$k,tok_s]} / ${res[$1,1,tok_s]}")"
    else
        echo "${p}_speedup=n/a"
    fi
}
write_summary() {
    { header; for k in "${rows[@]}"; do row "${k% *}" "${k#* }"; done; } >"$summary" 2>/dev/null || true
}

for T in $ts; do
    for R in $rank_counts; do
        k="$T,$R"
        rows+=("$T $R")
        skip() { res[$k,note]="skipped: $1"; say "T=$T ranks=$R skipped: $1"; write_summary; }
        if ((R > ncores)); then skip "$R ranks need $R cores, --cpus has $ncores"; continue; fi
        if ((ncores % R != 0)); then skip "$ncores cores do not split into $R equal parts"; continue; fi
        if ((T % R != 0)); then skip "cp = $R does not divide T"; continue; fi
        plan=$("${mpiexec[@]}" -n 1 "$bench" plan "$T" "$R" ${overrides[@]+"${overrides[@]}"} 2>"$log_dir/plan_T${T}_r$R.log" |
               tail -n 1) || { skip "the planner failed ($log_dir/plan_T${T}_r$R.log)"; continue; }
        plan_mib=$(field "$plan" mem_mib)
        res[$k,plan_mib]=$plan_mib
        if awk "BEGIN { exit !($plan_mib > $mem_mib) }"; then
            skip "planned ${plan_mib} MiB per rank > budget ${mem_mib} MiB (--mem-mib)"; continue
        fi
        if awk "BEGIN { exit !($plan_mib * $R > $avail_mib) }"; then
            skip "$R x ${plan_mib} MiB planned > MemAvailable ${avail_mib} MiB"; continue
        fi
        # Predicted time: the last T of this rank count, scaled as T^2 (attention's
        # share grows so; the rest grows as T, so this over-estimates); before
        # that, this T's last run at another rank count.
        pred='' from=''
        [[ ${last_t[$R]:-} == skipped ]] && { skip "a shorter T was skipped or failed at $R ranks"; continue; }
        if [[ -n ${last_t[$R]:-} ]]; then
            pred=$(calc %.0f "($warmup + $steps) * ${last_ms[$R]} / 1000 * ($T / ${last_t[$R]})^2 + 2")
            from="${last_ms[$R]} ms/step at T=${last_t[$R]}"
        elif [[ -n ${same_t_ms[$T]:-} ]]; then
            pred=$(calc %.0f "($warmup + $steps) * ${same_t_ms[$T]} / 1000 + 2")
            from="${same_t_ms[$T]} ms/step at another rank count"
        fi
        if [[ -n $pred ]]; then
            if ((pred > max_run_s)); then
                skip "predicted ${pred}s (from $from) > --max-run-s $max_run_s"
                last_t[$R]=skipped; continue
            fi
            if ((deadline_s > 0 && SECONDS - start + pred > deadline_s)); then
                skip "predicted ${pred}s would pass --deadline-s $deadline_s"; continue
            fi
        fi
        threads=$((ncores / R))
        cmd=()
        for ((r = 0; r < R; r++)); do
            ((r == 0)) || cmd+=(:)
            cmd+=(-n 1 env "OMP_NUM_THREADS=$threads" taskset -c "$(rank_cores $r "$R")"
                  "$bench" run "$T" "$warmup" "$steps" ${overrides[@]+"${overrides[@]}"})
        done
        log=$log_dir/run_T${T}_r$R.log
        say "T=$T ranks=$R${pred:+ (predicted ${pred}s)}: ${mpiexec[*]} ${cmd[*]}"
        rc=0
        timeout --kill-after=10 $((2 * max_run_s)) "${mpiexec[@]}" "${cmd[@]}" >"$log" 2>&1 || rc=$?
        line=$(grep '^cp_bench ' "$log" | tail -n 1 || true)
        if ((rc != 0)) || [[ -z $line ]]; then
            last_t[$R]=skipped
            why="failed (exit $rc)"
            ((rc == 124 || rc == 137)) && why="stopped at $((2 * max_run_s))s"
            grep -qi 'out of memory\|OUT_OF_MEMORY\|cannot allocate' "$log" && why="out of memory"
            res[$k,note]="$why, see $log"
            say "T=$T ranks=$R $why; the log's tail:"; tail -n 5 "$log" >&2
            write_summary; continue
        fi
        echo "$line" >&2
        step_ms=$(field "$line" step_ms)
        res[$k,threads]=$threads
        res[$k,step_ms]=$(calc %.1f "$step_ms")
        res[$k,tok_s]=$(calc %.0f "$(field "$line" tokens_per_s)")
        res[$k,mem_mib]=$(field "$line" mem_mib)
        res[$k,act_mib]=$(field "$line" act_mib)
        res[$k,rss_mib]=$(field "$line" rss_mib)
        res[$k,ring_pct]=$(calc %.1f "100 * $(field "$line" ring_share)")
        res[$k,comm_pct]=$(calc %.1f "100 * $(field "$line" comm_wait_ms) / $step_ms")
        res[$k,loss]=$(field "$line" loss)
        res[$k,note]=
        if awk "BEGIN { exit !($step_ms > 1.25 * $(field "$line" step_ms_min)) }"; then
            noisy=1 res[$k,note]="noisy: median $(calc %.2f "$step_ms / $(field "$line" step_ms_min)")x the fastest step"
        fi
        last_t[$R]=$T last_ms[$R]=$step_ms same_t_ms[$T]=$step_ms
        write_summary
    done
done

echo
header
for k in "${rows[@]}"; do row "${k% *}" "${k#* }"; done
echo
echo "Config S width (C=128, L=4, H=4, F=16), one sample of T tokens per step (micro-batch 1), cp = ranks, dp = 1,"
echo "ZeRO stage 0 unless --set says otherwise${extra:+ (--set \"$extra\")}; $warmup untimed + $steps timed steps,"
echo "medians; a step is the slowest rank's."
echo "Placement (taskset per rank, MPMD launch with ${mpiexec[*]}):"
for p in "${placement[@]}"; do echo "- $p"; done
echo "MiB/rank: insitra_memory_report's total (largest rank); max RSS: getrusage (largest rank)."
echo "ring exposed comm %: host time blocked in the ring's waits / step time (insitra_metrics.ring_wait_seconds);"
echo "all comm wait %: every collective wait of the step (comm_wait_seconds), the gradient reduction included."
echo "speedup: tokens/s / tokens/s of cp=1 on 1 rank at the same T (the same cores in total). Every run trains"
echo "the same samples from the same weights: a loss more than 1e-4 (relative) from cp=1's is noted."
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - start)) s in all; logs in $log_dir"
((noisy == 0)) || echo "WARNING: some median steps were over 1.25 x their fastest (note column): the machine was busy"
line="RESULT cores=$ncores mem_budget_mib=$mem_mib"
for k in "${rows[@]}"; do line+=" $(result_pairs "${k% *}" "${k#* }")"; done
echo "$line noisy=$noisy seconds=$((SECONDS - start))"
