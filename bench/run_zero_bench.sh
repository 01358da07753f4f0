#!/usr/bin/env bash
# ZeRO benchmark: step time of every stage on 1, 2 and 4 ranks (weak scaling:
# each rank trains config S's batch of 16 samples), the share of the step spent
# waiting on communication, and each stage against stage 0 at the same world
# size. On a 2-core machine 4 ranks oversubscribe the cores (2 ranks per core),
# so the 4-rank figures measure the protocol under contention, not scaling.
#
#   bench/run_zero_bench.sh [BUILD_DIR]     (default build/ci)
# Environment: INSITRA_BENCH_ZERO_RANKS (default "1 2 4"), INSITRA_BENCH_ZERO_WARMUP (2),
# INSITRA_BENCH_ZERO_STEPS (6), INSITRA_BENCH_ZERO_CONFIG (S).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/ci}
cmake --build "$BUILD" --target bench_step >/dev/null
BENCH="$BUILD/bench/bench_step"
RANKS=${INSITRA_BENCH_ZERO_RANKS:-"1 2 4"}
WARMUP=${INSITRA_BENCH_ZERO_WARMUP:-2}
STEPS=${INSITRA_BENCH_ZERO_STEPS:-6}
CONFIG=${INSITRA_BENCH_ZERO_CONFIG:-S}
CORES=$(nproc)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

declare -A ms share
for n in $RANKS; do
  threads=$(( CORES / n )); [ "$threads" -ge 1 ] || threads=1
  for stage in 0 1 2 3; do
    line=$(OMP_NUM_THREADS=$threads mpiexec -n "$n" "$BENCH" "$CONFIG" "$WARMUP" "$STEPS" \
             "parallel.zero_stage=$stage" | grep '^insitra ')
    echo "$line" >&2
    ms[$n,$stage]=$(echo "$line" | field step_ms)
    share[$n,$stage]=$(echo "$line" | field comm_share)
  done
done

printf '\nZeRO stages, config %s, %d cores; weak scaling (16 samples per rank per step)\n' "$CONFIG" "$CORES"
printf '%-6s %-6s %8s | %10s %10s %12s\n' ranks stage threads "step ms" "vs stage 0" "comm wait %"
result="RESULT config=$CONFIG cores=$CORES"
verdict=""
for n in $RANKS; do
  threads=$(( CORES / n )); [ "$threads" -ge 1 ] || threads=1
  for stage in 0 1 2 3; do
    ratio=$(awk -v a="${ms[$n,$stage]}" -v b="${ms[$n,0]}" 'BEGIN{printf "%.3f", a/b}')
    pct=$(awk -v s="${share[$n,$stage]}" 'BEGIN{printf "%.1f", 100*s}')
    printf '%-6s %-6s %8s | %10s %10s %12s\n' "$n" "$stage" "$threads" "${ms[$n,$stage]}" "$ratio" "$pct"
    result+=" np${n}_s${stage}_ms=${ms[$n,$stage]} np${n}_s${stage}_ratio=$ratio np${n}_s${stage}_comm=$pct"
    if [ "$stage" -gt 0 ]; then
      limit=1.05; [ "$stage" -eq 3 ] && limit=1.15
      ok=$(awk -v r="$ratio" -v l="$limit" 'BEGIN{print (r <= l) ? "PASS" : "MISS"}')
      verdict+=" np${n}_s${stage}=$ok"
    fi
  done
done
[ "$CORES" -lt 4 ] && echo "note: 4 ranks on $CORES cores oversubscribe the machine" 
echo "targets (stage 1/2 <= 1.05 x stage 0, stage 3 <= 1.15 x stage 0):$verdict"
echo "$result$verdict"
