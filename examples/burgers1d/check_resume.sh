#!/usr/bin/env bash
# The CTest test example_burgers1d_resume_np2: burgers1d run straight
# through, and the same run interrupted with SIGUSR1 partway and resumed from
# its checkpoint (examples/heat2d/interrupt_resume.sh, which signals the
# launcher as a batch system does and runs the command again). The resumed
# run must end with the uninterrupted run's held-out record, every digit of
# it (solver and training steps, final loss, held-out errors): insitra's
# step-N.h5, with the sample stores and the field u and window generators
# the program adds to it, restores everything the run depends on.
#
#   check_resume.sh WORKDIR LAUNCHER...
#
# LAUNCHER... runs burgers1d on its ranks (mpiexec -n 2 .../burgers1d); the
# run's arguments are appended to it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1
shift
STEPS=600 STOP_AT=100
run=(--cells=256 --steps=$STEPS --output-every=50 --test-steps=5 --checkpoint-every=40)

rm -rf "$work"
mkdir -p "$work"
cd "$work"
echo "check_resume: the uninterrupted run"
"$@" "${run[@]}" --checkpoint-dir=straight-ckpt --metrics=straight.jsonl
echo "check_resume: the interrupted run"
"$here/../heat2d/interrupt_resume.sh" resumed.jsonl "$STOP_AT" \
  "$@" "${run[@]}" --checkpoint-dir=resumed-ckpt --metrics=resumed.jsonl

stopped=$(sed -n 's/^{"event": "stopped", "step": \([0-9]*\).*/\1/p' resumed.jsonl)
straight=$(grep '"event": "held_out"' straight.jsonl)
resumed=$(grep '"event": "held_out"' resumed.jsonl)
echo "check_resume: stopped after solver step ${stopped:-?} of $STEPS"
echo "  uninterrupted: $straight"
echo "  resumed:       $resumed"
if [ -z "$stopped" ] || [ "$stopped" -ge "$STEPS" ]; then
  echo "check_resume: FAILED: the interrupted run did not stop partway" >&2
  exit 1
fi
if [ "$straight" != "$resumed" ]; then
  echo "check_resume: FAILED: the resumed run ends differently" >&2
  exit 1
fi
echo "check_resume: ok: the resumed run ends with the uninterrupted run's record"
