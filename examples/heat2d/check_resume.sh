#!/usr/bin/env bash
# The CTest test example_heat2d_resume_np2: heat2d on a small grid run
# straight through, and the same run interrupted with SIGUSR1 partway and
# resumed from its checkpoint (interrupt_resume.sh). The resumed run must
# finish the planned steps with a finite held-out error below MAX_ERROR, and
# end with exactly the uninterrupted run's final training loss and held-out
# error: the checkpoint (insitra's step-N.h5 with the sample stores and
# samplers, and the field u and the patch generators heat2d adds to it)
# restores everything the run depends on, so resuming changes no bit.
#
#   check_resume.sh WORKDIR LAUNCHER...
#
# LAUNCHER... runs heat2d on its ranks (mpiexec -n 2 .../heat2d); the
# namelist's path is appended to it. The environment may change the run:
# HEAT2D_STEPS, HEAT2D_SPINUP, HEAT2D_STOP_AT, and HEAT2D_NAMELIST, lines
# added to the namelist (example_heat2d_field_resume_np2: mode = 'field').
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1
shift

STEPS=${HEAT2D_STEPS:-400} SPINUP=${HEAT2D_SPINUP:-0} STOP_AT=${HEAT2D_STOP_AT:-100}
PUSH_EVERY=2 MAX_ERROR=0.1

rm -rf "$work"
mkdir -p "$work"
cd "$work"
for run in straight resumed; do
  cat >"$run.nml" <<EOF
&parameters
  nx = 64, ny = 64
  steps = $STEPS
  spinup = $SPINUP
  ${HEAT2D_NAMELIST:-}
  push_every = $PUSH_EVERY
  output_every = 50
  eval_patches = 16
  test_steps = 4
  checkpoint_dir = '$run-ckpt'
  checkpoint_every = 40
  metrics = '$run.jsonl'
/
EOF
done

echo "check_resume: the uninterrupted run"
"$@" straight.nml
echo "check_resume: the interrupted run"
"$here/interrupt_resume.sh" resumed.jsonl "$STOP_AT" "$@" resumed.nml

# A field of the held_out record of a metrics file, as written.
held_out() {
  grep '"event": "held_out"' "$1" | sed -n "s/.*\"$2\": *\([^,}]*\).*/\1/p"
}
fail=0
check() {  # check DESCRIPTION CONDITION...
  local what=$1
  shift
  if "$@"; then echo "check_resume: ok: $what"; else echo "check_resume: FAILED: $what" >&2; fail=1; fi
}
stopped_at=$(sed -n 's/^{"event": "stopped", "step": \([0-9]*\).*/\1/p' resumed.jsonl)
steps=$(held_out resumed.jsonl step)
train_steps=$(held_out resumed.jsonl train_steps)
error=$(held_out resumed.jsonl rel_l2)
loss=$(held_out resumed.jsonl loss)
echo "check_resume: stopped after solver step $stopped_at; resumed run: $steps solver steps," \
     "$train_steps training steps, final loss $loss, held-out error $error;" \
     "uninterrupted: final loss $(held_out straight.jsonl loss), held-out error $(held_out straight.jsonl rel_l2)"

check "the run stopped partway ($stopped_at < $STEPS)" test "${stopped_at:-$STEPS}" -lt "$STEPS"
check "the resumed run finished the planned $STEPS solver steps" test "$steps" = "$STEPS"
check "and $(((STEPS - SPINUP) / PUSH_EVERY)) training steps" \
  test "$train_steps" = "$(((STEPS - SPINUP) / PUSH_EVERY))"
check "the held-out error is finite and below $MAX_ERROR" \
  awk -v e="$error" -v max="$MAX_ERROR" \
    'BEGIN { exit !(e ~ /^ *[-+]?[0-9.]+([eE][-+]?[0-9]+)?$/ && e + 0 < max) }'
check "the final loss equals the uninterrupted run's, bit for bit" \
  test "$loss" = "$(held_out straight.jsonl loss)"
check "the held-out error equals the uninterrupted run's" \
  test "$error" = "$(held_out straight.jsonl rel_l2)"
exit "$fail"
