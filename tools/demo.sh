#!/usr/bin/env bash
# The main job: installs what is missing, builds insitra and the Fortran
# example heat2d, and runs it on 2 MPI ranks with its built-in configuration
# (a 256 x 256 heat equation, 4000 solver steps, training its transformer
# surrogate in-situ every 2 steps, a checkpoint every 250 training steps).
# Partway, the demo interrupts it once with SIGUSR1, as a batch system does
# before a time limit: heat2d writes a checkpoint (insitra's step-N.h5, its
# own field inside) and exits 0; started again, it resumes there and
# finishes. It ends with a table (steps, final loss, surrogate error against
# the solver, throughput, checkpoint) and a plot, all in build/cpu/heat2d-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
echo "configuring and building insitra and heat2d in build/cpu (a minute or two the first time)..."
cmake --preset cpu >/dev/null
cmake --build --preset cpu -j "$(nproc)" --target heat2d >/dev/null
echo "running heat2d on 2 ranks..."
root=$(pwd)
demo=build/cpu/heat2d-demo
rm -rf "$demo"
mkdir -p "$demo"
cd "$demo"
# Every parameter at its default but the checkpoint directory.
printf "&parameters\n  checkpoint_dir = 'checkpoints'\n/\n" >heat2d.nml
ranks=2
threads=$(( $(nproc) / ranks ))
# SIGUSR1 once the metrics show solver step 1750 (heat2d stops at its next
# training step), then the same command again.
"$root/examples/heat2d/interrupt_resume.sh" heat2d.jsonl 1750 \
  mpiexec -n "$ranks" -env OMP_NUM_THREADS "$(( threads > 0 ? threads : 1 ))" \
  ../examples/heat2d heat2d.nml
echo
"$root/examples/heat2d/plot.sh" heat2d.jsonl heat2d.png

# The table, from the metrics' records: the stop, and the end of the run.
field() {  # field EVENT KEY: KEY of the last EVENT record, blanks trimmed
  grep "\"event\": \"$1\"" heat2d.jsonl | tail -n 1 |
    sed -n "s/.*\"$2\": *\"\{0,1\}\([^\",}]*\).*/\1/p" | sed 's/^ *//'
}
# One figure: tokens trained per second of insitra_train_step (all ranks).
totals=$(awk '/"event": "(stopped|held_out)"/ {
    for (i = 1; i <= NF; i++) {
      if ($i == "\"train_tokens\":") tokens += $(i + 1)
      if ($i == "\"train_seconds\":") seconds += $(i + 1)
    }
  }
  END { printf "%.0f tokens/s (training steps only, both runs)", tokens / seconds }' heat2d.jsonl)
echo
echo "heat2d on $ranks ranks, interrupted once and resumed"
printf '  %-20s %s\n' \
  "solver steps" "$(field held_out step) (stopped by SIGUSR1 after step $(field stopped step), resumed there)" \
  "training steps" "$(field held_out train_steps)" \
  "final loss" "$(printf '%.3e' "$(field held_out loss)") (training MSE of the normalised increments)" \
  "surrogate error" "$(printf '%.3e' "$(field held_out rel_l2)") relative L2 vs the solver over $(field held_out test_steps) held-out steps" \
  "" "(predicting 'no change' instead: $(printf '%.3e' "$(field held_out no_change_rel_l2)"); $(awk -v a="$(field held_out no_change_rel_l2)" -v b="$(field held_out rel_l2)" 'BEGIN { printf "%.1f", a / b }')x better)" \
  "" "relative L2 = ||prediction - solver|| / ||solver|| over every grid point; 'no change' predicts u(t+dt) = u(t)" \
  "training throughput" "$totals" \
  "checkpoint" "$demo/$(field held_out checkpoint)"
if [ -s heat2d.png ]; then
  printf '  %-20s %s\n' "plot" "$demo/heat2d.png"
fi
