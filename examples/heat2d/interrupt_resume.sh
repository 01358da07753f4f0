#!/usr/bin/env bash
# Preemption, the way a batch system does it, on one machine: runs heat2d,
# interrupts it once with SIGUSR1, and runs it again so that it resumes from
# its checkpoint and finishes.
#
#   examples/heat2d/interrupt_resume.sh METRICS STOP_AT LAUNCHER...
#
# LAUNCHER... is the whole command line that runs heat2d on its ranks, e.g.
#   mpiexec -n 2 build/cpu/examples/heat2d run.nml
# with a namelist that sets checkpoint_dir (a fresh directory) and whose
# metrics file is METRICS. Once METRICS records solver step STOP_AT or later,
# SIGUSR1 goes to the launcher process: MPICH's mpiexec (Hydra) and Slurm's
# srun forward it to every rank, where insitra's handler only sets a flag;
# the next training step writes the checkpoint and heat2d exits 0. The
# second run of the same command finds the checkpoint and continues.
#
# Exits non-zero, saying why, unless the first run stopped cleanly before
# the end (status 0 and a "stopped" record) and the second resumed there and
# finished (a "resumed" record, then "held_out").
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
metrics=$1
stop_at=$2
shift 2

# The last solver step METRICS has an interval record for (0 if none).
last_step() {
  [ -r "$metrics" ] || { echo 0; return; }
  awk 'match($0, /"event": "interval", "step": [0-9]+/) {
         s = substr($0, RSTART, RLENGTH); sub(/.*: /, "", s); last = s }
       END { print last + 0 }' "$metrics"
}
# The last record of METRICS.
last_event() {
  tail -n 1 "$metrics" 2>/dev/null | sed -n 's/^{"event": "\([a-z_]*\)".*/\1/p'
}

pid=
# Ctrl-C or a TERM to this script: ask heat2d to stop cleanly too (mpiexec
# forwards SIGTERM; heat2d treats it like SIGUSR1).
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; exit 130' INT TERM

echo "interrupt_resume: run 1: $*"
"$@" &
pid=$!
while [ "$(last_step)" -lt "$stop_at" ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    rc=0
    wait "$pid" || rc=$?
    echo "interrupt_resume: run 1 ended (status $rc) before solver step $stop_at" >&2
    exit 1
  fi
  sleep 0.1
done
echo "interrupt_resume: solver step $(last_step) reached; kill -USR1 $pid (the launcher, which forwards it to the ranks)"
kill -USR1 "$pid"
rc=0
wait "$pid" || rc=$?
pid=
if [ "$rc" -ne 0 ] || [ "$(last_event)" != stopped ]; then
  echo "interrupt_resume: run 1 did not stop cleanly (status $rc, last record '$(last_event)')" >&2
  exit 1
fi

echo "interrupt_resume: run 2 (resumes from the checkpoint): $*"
rc=0
"$@" || rc=$?
if [ "$rc" -ne 0 ] || [ "$(last_event)" != held_out ] || ! grep -q '"event": "resumed"' "$metrics"; then
  echo "interrupt_resume: run 2 did not resume and finish (status $rc, last record '$(last_event)')" >&2
  exit 1
fi
