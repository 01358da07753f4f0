#!/usr/bin/env bash
# The CTest test batch_slurm_heat2d: preemption under a real Slurm.
#
#   slurm_heat2d.sh WORKDIR SBATCH_SCRIPT HEAT2D LAUNCHER...
#
# Starts a one-node Slurm on this machine (munged, slurmctld, slurmd, every
# file under WORKDIR, ports that are free), submits heat2d through
# SBATCH_SCRIPT (examples/batch/slurm.sbatch) on 2 tasks with a 1-minute
# time limit and --signal=B:USR1@30, and checks the whole cycle from the
# job's output and metrics: Slurm signals the batch shell, the shell
# forwards the signal to srun, heat2d writes its checkpoint pair and exits,
# the script requeues the job, the job starts again (SLURM_RESTART_COUNT 1),
# resumes from the checkpoint and finishes. The final training loss and
# held-out error must equal, bit for bit, those of the same run made
# straight through (LAUNCHER... runs heat2d, the program HEAT2D, on 2 ranks
# outside Slurm, with the namelist's path appended), as
# examples/heat2d/check_resume.sh checks.
#
# Two things the test does that a site would not:
# - Slurm checks time limits every 30 s, so in a 1-minute job the warning
#   comes within the first 30 s of every start. Once the first part has
#   been signalled and requeued, the test gives the job 5 minutes
#   (scontrol update TimeLimit=5), so that the resumed part finishes before
#   its own warning: one cycle, the same every time.
# - Slurm 22.05 holds a requeued job about two minutes (BeginTime); the
#   test releases it at once (StartTime=now).
#
# Opt-in: it runs only with INSITRA_TEST_BATCH=1 in the environment
# (tools/check.sh --batch sets it), as it takes minutes. Exit 77 (CTest:
# skipped) with the reason otherwise, or where Slurm cannot run here: not
# root, a package missing (tools/install-deps.sh --batch installs them), or
# a daemon that does not start. Every wait is bounded; the daemons and the
# job are stopped on every exit, failure included.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '4,5p' "$0" >&2; exit 2; }
work=$1 script=$2 heat2d=$3
shift 3
# The run: heat2d on a small grid, about 80 s on two idle cores, so that the
# first part is still running when Slurm's warning comes (30 to 60 s after
# the start: Slurm checks time limits every 30 s) however fast the machine.
# The uninterrupted run goes on beside the job's first part: it costs no
# extra time (the job waits for its warning anyway).
STEPS=9600
PARAMETERS="nx = 64, ny = 64, steps = $STEPS, push_every = 2, output_every = 400,
  eval_patches = 16, test_steps = 4, checkpoint_every = 800"
TIME_LIMIT=1 WARNING=30
JOB_WAIT=400      # seconds the whole job may take, requeue included
MAX_ERROR=0.1

say() { echo "slurm_heat2d: $*"; }
[ "${INSITRA_TEST_BATCH:-0}" = 1 ] || {
  say "SKIPPED: opt-in, it takes minutes: set INSITRA_TEST_BATCH=1 (tools/check.sh --batch does)"
  exit 77
}
skip() { say "SKIPPED: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "slurmd and munged need root here (run ctest as root, e.g. in a container)"
for cmd in munged slurmctld slurmd sbatch squeue scontrol scancel sinfo; do
  command -v "$cmd" >/dev/null ||
    skip "$cmd not found: install slurmctld slurmd slurm-client munge (tools/install-deps.sh --batch)"
done

rm -rf "$work"
mkdir -p "$work"/{munge,state,spool,log,run}
work=$(cd "$work" && pwd)
ctld_pid= slurmd_pid= munged_pid= job= straight_pid=

# Stops, in order, the job, slurmd (and any process of the job it still
# lists), slurmctld and munged: by process id, each bounded.
stop_pid() {  # stop_pid PID NAME
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  say "$2 (pid $pid) ignored SIGTERM for 10 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pids=
  trap - EXIT INT TERM
  if [ -n "$job" ] && [ -n "$ctld_pid" ]; then
    pids=$(timeout 10 scontrol listpids "$job" 2>/dev/null | awk 'NR > 1 { print $1 }') || pids=
    timeout 10 scancel "$job" 2>/dev/null || true
    for _ in $(seq 1 20); do
      [ -z "$(timeout 5 squeue -h -j "$job" -t RUNNING,COMPLETING 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  stop_pid "$straight_pid" "the uninterrupted run"
  stop_pid "$slurmd_pid" slurmd
  for pid in $pids; do stop_pid "$pid" "job process"; done
  stop_pid "$ctld_pid" slurmctld
  stop_pid "$munged_pid" munged
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two free TCP ports in a range that depends on this process, so that two
# runs of the test at once do not collide.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=$(( 20000 + ($$ % 2000) * 10 ))
ports=()
for p in $(seq "$base" $(( base + 9 ))); do
  port_free "$p" && ports+=("$p")
  [ ${#ports[@]} -eq 2 ] && break
done
[ ${#ports[@]} -eq 2 ] || skip "no two free TCP ports in $base-$(( base + 9 ))"

# munge: a fresh key; munged refuses keys and directories others can read.
chmod 700 "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
munged --force --key-file="$work/munge/munge.key" --socket="$work/munge/socket" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" \
  --seed-file="$work/munge/seed" >"$work/log/munged.out" 2>&1 ||
  skip "munged does not start: $(tail -n 3 "$work/log/munged.log" "$work/log/munged.out" 2>/dev/null)"
munged_pid=$(cat "$work/munge/munged.pid")

cpus=$(getconf _NPROCESSORS_ONLN)   # not nproc: it obeys OMP_NUM_THREADS
export SLURM_CONF=$work/slurm.conf
cat >"$SLURM_CONF" <<EOF
# One node, this machine; written by tests/batch/slurm_heat2d.sh.
ClusterName=insitratest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
# No cgroups in a container: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
NodeName=insitranode NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=insitranode Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -i >"$work/log/slurmctld.out" 2>&1 &
ctld_pid=$!
slurmd -D -N insitranode >"$work/log/slurmd.out" 2>&1 &
slurmd_pid=$!
up=0
for _ in $(seq 1 30); do
  if timeout 5 sinfo -h -o %t 2>/dev/null | grep -qx idle; then up=1; break; fi
  kill -0 "$ctld_pid" 2>/dev/null && kill -0 "$slurmd_pid" 2>/dev/null || break
  sleep 1
done
if [ "$up" -ne 1 ]; then
  tail -n 5 "$work/log/slurmctld.log" "$work/log/slurmd.log" "$work/log/"*.out 2>/dev/null || true
  skip "Slurm did not come up within 30 s (logs above, in $work/log)"
fi
say "Slurm $(sinfo -V | awk '{print $2}') up: node insitranode, $cpus CPUs, ports ${ports[*]}"

# The job. sbatch passes this environment on: the script's settings.
export HEAT2D=$heat2d RUN_DIR=$work/run HEAT2D_PARAMETERS=$PARAMETERS MAX_RESTARTS=3
export DEADLINE_MARGIN=0   # the deadline stays behind the warning signal
job=$(cd "$work" && timeout 30 sbatch --parsable --ntasks=2 --time="$TIME_LIMIT" \
        --signal=B:USR1@"$WARNING" --output="$work/job-%j.out" "$script")
say "submitted job $job: 2 tasks, --time=$TIME_LIMIT --signal=B:USR1@$WARNING"
for _ in $(seq 1 60); do
  [[ $(timeout 10 squeue -h -j "$job" -o %T 2>/dev/null) == PENDING ]] || break
  sleep 1
done

# The uninterrupted run, outside Slurm, beside the job's first part.
mkdir -p "$work/straight"
cat >"$work/straight/heat2d.nml" <<EOF
&parameters
  $PARAMETERS
  checkpoint_dir = 'checkpoints'
  metrics = 'heat2d.jsonl'
/
EOF
say "the uninterrupted run, beside the job: $* heat2d.nml"
(cd "$work/straight" && exec timeout 600 "$@" heat2d.nml >run.out 2>&1) &
straight_pid=$!

# Follows the job until it leaves the queue: releases and extends it once
# it is requeued (see the top of this file).
started=$(date +%s)
released=0
while :; do
  state=$(timeout 10 squeue -h -j "$job" -o '%T %r' 2>/dev/null) || state="?"
  [ -z "$state" ] && break
  if [ "$released" -eq 0 ] && [[ $state == "PENDING BeginTime" ]]; then
    say "job $job requeued after $(( $(date +%s) - started )) s; releasing it with a 5-minute limit"
    timeout 10 scontrol update JobId="$job" StartTime=now TimeLimit=5
    released=1
  fi
  # Pending for a reason other than waiting its turn: it never will run.
  if [[ $state == PENDING* ]] && ! [[ $state =~ ^PENDING\ (None|Priority|Resources|BeginTime)$ ]]; then
    say "FAILED: job $job cannot start: $state"
    exit 1
  fi
  if [ $(( $(date +%s) - started )) -gt "$JOB_WAIT" ]; then
    say "FAILED: job $job still in the queue ($state) after $JOB_WAIT s"
    exit 1
  fi
  sleep 1
done
say "job $job left the queue after $(( $(date +%s) - started )) s"
rc=0
wait "$straight_pid" || rc=$?
straight_pid=
if [ "$rc" -ne 0 ]; then
  tail -n 20 "$work/straight/run.out"
  say "FAILED: the uninterrupted run (status $rc)"
  exit 1
fi
out="$work/job-$job.out"
echo "---- $out"
cat "$out"
echo "----"

# What happened, from the job's output and the run's metrics.
metrics=$work/run/heat2d.jsonl
held_out() {  # held_out FILE FIELD: a field of the held_out record
  grep '"event": "held_out"' "$1" | sed -n "s/.*\"$2\": *\([^,}]*\).*/\1/p"
}
fail=0
check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then say "ok: $what"; else say "FAILED: $what"; fail=1; fi
}
stopped_at=$(sed -n 's/^{"event": "stopped", "step": \([0-9]*\).*/\1/p' "$metrics" | head -n 1)
loss=$(held_out "$metrics" loss)
error=$(held_out "$metrics" rel_l2)
steps=$(held_out "$metrics" step)
check "Slurm signalled the batch shell, which forwarded SIGUSR1 to srun" \
  grep -q "SIGUSR1 (time limit near), forwarding it to srun" "$out"
check "heat2d stopped at a checkpoint partway (solver step ${stopped_at:-none} < $STEPS)" \
  test "${stopped_at:-$STEPS}" -lt "$STEPS"
check "the script requeued the job" grep -q "requeueing job $job" "$out"
check "the job started again (restart 1)" grep -q "heat2d job $job, start 2" "$out"
check "heat2d resumed from the checkpoint" grep -q '"event": "resumed"' "$metrics"
check "and finished the planned $STEPS solver steps" test "${steps:-0}" = "$STEPS"
check "the job ended with the run finished" grep -q "slurm.sbatch: the run finished" "$out"
check "the held-out error is finite and below $MAX_ERROR" \
  awk -v e="$error" -v max="$MAX_ERROR" \
    'BEGIN { exit !(e ~ /^ *[-+]?[0-9.]+([eE][-+]?[0-9]+)?$/ && e + 0 < max) }'
check "the final loss equals the uninterrupted run's, bit for bit ($loss)" \
  test "$loss" = "$(held_out "$work/straight/heat2d.jsonl" loss)"
check "the held-out error equals the uninterrupted run's ($error)" \
  test "$error" = "$(held_out "$work/straight/heat2d.jsonl" rel_l2)"
[ "$fail" -eq 0 ] || tail -n 20 "$work/log/slurmctld.log" "$work/log/slurmd.log"
exit "$fail"
