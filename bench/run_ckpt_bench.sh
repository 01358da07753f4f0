#!/usr/bin/env bash
# Checkpoint benchmark: save and load bandwidth of a ~100M-parameter model
# state (parameters + two AdamW moments, float32) on 1, 2 and 4 ranks, next to
# `dd ... conv=fsync` of the same number of bytes into the same directory and
# torch.save (+ fsync) of the same tensors, and the step-time overhead of
# saving every K steps (config S, 1 rank).
#
#   bench/run_ckpt_bench.sh [BUILD_DIR] [DIR]
#
# BUILD_DIR (default build/ci) must be configured already; DIR (default
# BUILD_DIR/ckpt-bench) is the directory whose file system is measured.
# Relative paths are taken from the current directory. Everything the run
# writes goes into a new subdirectory of DIR, removed at the end.
# Environment: INSITRA_BENCH_CKPT_REPEATS (3), INSITRA_BENCH_CKPT_OVERSUB_LOADS (1: loads
# timed per kind when there are more ranks than cores), INSITRA_BENCH_CKPT_RANKS ("1 2 4"),
# INSITRA_BENCH_CKPT_STAGE (3), INSITRA_BENCH_CKPT_EVERY (10),
# INSITRA_BENCH_CKPT_STEPS (30), INSITRA_BENCH_PYTHON (/usr/bin/python3),
# MPIEXEC (mpiexec).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(realpath -m "${1:-$ROOT/build/ci}")
DIR=$(realpath -m "${2:-$BUILD/ckpt-bench}")
cd "$ROOT"

R=${INSITRA_BENCH_CKPT_REPEATS:-3}
OVERSUB_LOADS=${INSITRA_BENCH_CKPT_OVERSUB_LOADS:-1}
RANKS=${INSITRA_BENCH_CKPT_RANKS:-"1 2 4"}
STAGE=${INSITRA_BENCH_CKPT_STAGE:-3}
EVERY=${INSITRA_BENCH_CKPT_EVERY:-10}
STEPS=${INSITRA_BENCH_CKPT_STEPS:-30}
PYTHON=${INSITRA_BENCH_PYTHON:-/usr/bin/python3}
MPIEXEC=${MPIEXEC:-mpiexec}
CORES=$(nproc)
# torch.save is the peer where PyTorch is installed; without it its columns say n/a.
"$PYTHON" -c 'import torch' 2>/dev/null && has_torch=1 || has_torch=0

# A build tree configured before bench_ckpt existed needs its build system regenerated.
cmake --build "$BUILD" --target bench_ckpt >/dev/null 2>&1 ||
  { cmake "$BUILD" >/dev/null && cmake --build "$BUILD" --target bench_ckpt >/dev/null; }
BENCH="$BUILD/bench/bench_ckpt"

created_dir=0
[ -d "$DIR" ] || { mkdir -p "$DIR"; created_dir=1; }
WORK=$(mktemp -d "$DIR/insitra-ckpt-bench.XXXXXX")
cleanup() {
  rm -rf "$WORK"
  [ "$created_dir" -eq 0 ] || rmdir "$DIR" 2>/dev/null || true
}
trap cleanup EXIT

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
# median of the numbers on stdin, one per line
median() { sort -g | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }
# max/min of a comma-separated list
spread() { echo "$1" | tr ',' '\n' | awk 'NR==1{lo=$1;hi=$1} {if($1<lo)lo=$1; if($1>hi)hi=$1} END{printf "%.3f", hi/lo}'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.1f", b/s/1e6}'; }

fs=$(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")
maxn=0; for n in $RANKS; do [ "$n" -le "$maxn" ] || maxn=$n; done
load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "checkpoint benchmark: $CORES cores, directory $WORK ($fs), repeats $R, ZeRO stage $STAGE," \
  "load average $load_before" >&2
# Something else already running shares the cores and the disk with every figure.
awk -v l="$load_before" 'BEGIN{exit !(l > 1.0)}' && noisy_load=1 || noisy_load=0

declare -A save cached dropped dd torch torch_nofsync torch_lc torch_ld bytes save_best dd_best torch_best
noisy=0
params=""
for n in $RANKS; do
  threads=1; [ "$n" -gt 1 ] || threads=$CORES
  # More ranks than cores: MPI's busy-waiting ranks take the cores from the
  # working ones and a save or load takes tens of seconds instead of under
  # one, so fewer timed loads there.
  loads=$R; [ "$n" -le "$CORES" ] || loads=$OVERSUB_LOADS
  out="$WORK/np$n"
  line=$(OMP_NUM_THREADS=$threads $MPIEXEC -n "$n" "$BENCH" io "$out" "$R" "$STAGE" "$loads" |
         grep '^ckpt ')
  echo "$line" >&2
  bytes[$n]=$(echo "$line" | field bytes)
  params=$(echo "$line" | field params)
  save[$n]=$(echo "$line" | field save_MBps)
  cached[$n]=$(echo "$line" | field load_cached_MBps)
  dropped[$n]=$(echo "$line" | field load_dropped_MBps)
  [ "$(echo "$line" | field verified)" = 1 ] || { echo "ranks=$n: the load did not restore the saved model" >&2; exit 1; }
  save_best[$n]=$(mbps "${bytes[$n]}" "$(echo "$line" | field save_s_min)")
  s=$(spread "$(echo "$line" | field save_s_all)")
  awk -v s="$s" 'BEGIN{exit !(s > 1.25)}' && noisy=1
  rm -rf "$out"

  # dd of the same bytes, same directory, fsync before dd exits.
  times=""
  for ((i = 0; i < R; i++)); do
    rm -f "$WORK/dd.bin"; sync
    ddline=$(LC_ALL=C dd if=/dev/zero of="$WORK/dd.bin" bs=4M count="${bytes[$n]}" \
               iflag=count_bytes conv=fsync 2>&1 | tail -n 1)
    echo "dd: $ddline" >&2
    copied=$(echo "$ddline" | sed -n 's/^\([0-9]*\) bytes.*/\1/p')
    secs=$(echo "$ddline" | sed -n 's/.* copied, \([0-9.e+-]*\) s,.*/\1/p')
    [ "$copied" = "${bytes[$n]}" ] || { echo "dd copied '$copied' bytes, not ${bytes[$n]}" >&2; exit 1; }
    times+="$secs,"
  done
  rm -f "$WORK/dd.bin"
  times=${times%,}
  dd[$n]=$(mbps "${bytes[$n]}" "$(echo "$times" | tr ',' '\n' | median)")
  dd_best[$n]=$(mbps "${bytes[$n]}" "$(echo "$times" | tr ',' '\n' | sort -g | head -n 1)")
  awk -v s="$(spread "$times")" 'BEGIN{exit !(s > 1.25)}' && noisy=1

  # torch.save (+ fsync) of the same tensors, same directory.
  if [ "$has_torch" -eq 0 ]; then
    torch[$n]=n/a; torch_nofsync[$n]=n/a; torch_lc[$n]=n/a; torch_ld[$n]=n/a; torch_best[$n]=n/a
    continue
  fi
  tline=$("$PYTHON" bench/bench_torch_save.py "$WORK/torch.pt" "$R" | grep '^torch_save ')
  echo "$tline" >&2
  torch[$n]=$(echo "$tline" | field save_MBps)
  torch_nofsync[$n]=$(echo "$tline" | field save_nofsync_MBps)
  torch_lc[$n]=$(echo "$tline" | field load_cached_MBps)
  torch_ld[$n]=$(echo "$tline" | field load_dropped_MBps)
  torch_best[$n]=$(mbps "$(echo "$tline" | field bytes)" \
                   "$(echo "$tline" | field save_s_all | tr ',' '\n' | sort -g | head -n 1)")
  awk -v s="$(spread "$(echo "$tline" | field save_s_all)")" 'BEGIN{exit !(s > 1.25)}' && noisy=1
done
[ "$has_torch" -eq 1 ] || echo "note: $PYTHON has no torch module: torch.save not measured (n/a)" >&2

oline=$(OMP_NUM_THREADS=$CORES $MPIEXEC -n 1 "$BENCH" overhead "$WORK/overhead" "$EVERY" "$STEPS" |
        grep '^ckpt ')
echo "$oline" >&2
rm -rf "$WORK/overhead"

printf '\nCheckpoint save/load, %s parameters (+ 2 AdamW moments, fp32), ZeRO stage %s, %d cores, %s\n' \
  "$params" "$STAGE" "$CORES" "$fs"
printf 'MB/s = bytes of the file / median of %s' "$R"
[ "$maxn" -le "$CORES" ] || printf ' (loads: of %s with more ranks than cores)' "$OVERSUB_LOADS"
printf '; saves, dd and torch.save end\nwith fsync; torch.save writes its own file of the same tensors\n'
printf '%-5s %13s | %9s %12s %14s | %8s %15s | %7s %10s | %-12s %-12s\n' ranks bytes "save MB/s" \
  "load cached" "load DONTNEED" "dd MB/s" "torch.save MB/s" "save/dd" save/torch ">=0.8 x dd" "> torch.save"
result="RESULT cores=$CORES stage=$STAGE repeats=$R params=$params"
for n in $RANKS; do
  r_dd=$(awk -v a="${save[$n]}" -v b="${dd[$n]}" 'BEGIN{printf "%.3f", a/b}')
  r_t=n/a; v_t=n/a
  if [ "$has_torch" -eq 1 ]; then
    r_t=$(awk -v a="${save[$n]}" -v b="${torch[$n]}" 'BEGIN{printf "%.3f", a/b}')
    v_t=$(awk -v r="$r_t" 'BEGIN{print (r > 1.0) ? "PASS" : "MISS"}')
  fi
  v_dd=$(awk -v r="$r_dd" 'BEGIN{print (r >= 0.8) ? "PASS" : "MISS"}')
  printf '%-5s %13s | %9s %12s %14s | %8s %15s | %7s %10s | %-12s %-12s\n' "$n" "${bytes[$n]}" \
    "${save[$n]}" "${cached[$n]}" "${dropped[$n]}" "${dd[$n]}" "${torch[$n]}" "$r_dd" "$r_t" "$v_dd" "$v_t"
  result+=" np${n}_bytes=${bytes[$n]} np${n}_save_MBps=${save[$n]} np${n}_load_cached_MBps=${cached[$n]}"
  result+=" np${n}_load_dropped_MBps=${dropped[$n]} np${n}_dd_MBps=${dd[$n]} np${n}_torch_MBps=${torch[$n]}"
  result+=" np${n}_torch_nofsync_MBps=${torch_nofsync[$n]} np${n}_torch_load_cached_MBps=${torch_lc[$n]}"
  result+=" np${n}_torch_load_dropped_MBps=${torch_ld[$n]}"
  result+=" np${n}_save_best_MBps=${save_best[$n]} np${n}_dd_best_MBps=${dd_best[$n]}"
  result+=" np${n}_torch_best_MBps=${torch_best[$n]}"
  result+=" np${n}_save_dd=$r_dd np${n}_save_torch=$r_t np${n}_dd_target=$v_dd np${n}_torch_target=$v_t"
done
printf '\nBest of %s, MB/s: insitra save / dd / torch.save (with fsync)\n' "$R"
for n in $RANKS; do
  printf '  ranks=%s: %s / %s / %s\n' "$n" "${save_best[$n]}" "${dd_best[$n]}" "${torch_best[$n]}"
done
printf 'torch (same run, per row): save without fsync (page cache) / load cached / load after DONTNEED, MB/s\n'
for n in $RANKS; do
  printf '  after ranks=%s: %s / %s / %s\n' "$n" "${torch_nofsync[$n]}" "${torch_lc[$n]}" "${torch_ld[$n]}"
done
echo "note: cached loads read pages the save left in the page cache; 'DONTNEED' loads follow"
echo "      posix_fadvise(POSIX_FADV_DONTNEED) on the file, but a virtual disk's host may still cache it"
[ "$maxn" -le "$CORES" ] || echo "note: $maxn ranks on $CORES cores oversubscribe the machine"

o_plain=$(echo "$oline" | field step_ms_plain)
o_ckpt=$(echo "$oline" | field step_ms_ckpt)
o_save=$(echo "$oline" | field save_ms)
o_ms=$(echo "$oline" | field overhead_ms_per_step)
o_diff=$(echo "$oline" | field mean_diff_ms)
o_pct=$(echo "$oline" | field overhead_pct)
o_usual=$(echo "$oline" | field usual_diff_ms)
o_n=$(echo "$oline" | field saves)
printf '\nSave every %s steps, config S (%s parameters), 1 rank, %s timed steps (%s saves):\n' \
  "$EVERY" "$(echo "$oline" | field params)" "$STEPS" "$o_n"
printf '  median step %s ms without checkpoints, %s ms with; a save costs %s ms\n' \
  "$o_plain" "$o_ckpt" "$o_save"
printf '  (a save step minus the plain step before it, less the usual difference, %s ms)\n' "$o_usual"
printf '  mean overhead %s ms per step (%s%% of a step), save steps included\n' "$o_ms" "$o_pct"
printf '  (difference of the plain means: %s ms per step; one step slowed by another process moves it)\n' \
  "$o_diff"
result+=" ovh_every=$EVERY ovh_steps=$STEPS ovh_saves=$o_n ovh_step_ms_plain=$o_plain"
result+=" ovh_step_ms_ckpt=$o_ckpt ovh_save_ms=$o_save ovh_ms_per_step=$o_ms ovh_pct=$o_pct"
result+=" ovh_usual_diff_ms=$o_usual ovh_mean_diff_ms=$o_diff"
load_after=$(cut -d' ' -f1 /proc/loadavg)
[ "$noisy" -eq 0 ] || echo "warning: repeats differ by more than 25% (noisy=1): the disk or cores were busy"
[ "$noisy_load" -eq 0 ] || echo "warning: load average $load_before before the run: other processes were running (noisy=1)"
[ "$noisy_load" -eq 0 ] || noisy=1
result+=" load_before=$load_before load_after=$load_after"
echo "$result noisy=$noisy"
