#!/usr/bin/env bash
# The heat2d demo: builds heat2d (cpu preset) if needed, runs it on 4 MPI
# ranks, and plots its metrics (plot.sh; skipped with a note without gnuplot).
#
#   examples/heat2d/run.sh [ranks] [parameters.nml]
#
# HEAT2D=/path/to/heat2d runs another build. Output lands in the current
# directory: heat2d.jsonl (metrics) and heat2d.png (the plot).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ranks=${1:-4}
shift || true

exe=${HEAT2D:-$root/build/cpu/examples/heat2d}
if [ ! -x "$exe" ]; then
  echo "run.sh: building heat2d (cmake --preset cpu)"
  (cd "$root" && cmake --preset cpu >/dev/null &&
     cmake --build --preset cpu -j "$(nproc)" --target heat2d >/dev/null)
fi

cores=$(nproc)
if [ "$cores" -lt "$ranks" ]; then
  # MPICH ranks spin while they wait for each other; oversubscribed, they
  # take turns on the cores and the run is many times slower.
  echo "run.sh: $ranks ranks on $cores cores will be slow; 'run.sh $cores' uses one rank per core" >&2
fi
threads=$(( cores / ranks ))
mpiexec -n "$ranks" -env OMP_NUM_THREADS "$(( threads > 0 ? threads : 1 ))" "$exe" "$@"
# The metrics file: the namelist's `metrics`, if it names one.
metrics=heat2d.jsonl
if [ $# -gt 0 ] && [ -r "$1" ]; then
  named=$(grep -oiE "metrics[[:space:]]*=[[:space:]]*['\"][^'\"]+" "$1" | tail -1 |
          sed -E "s/^[^'\"]*['\"]//") || true
  metrics=${named:-$metrics}
fi
"$here/plot.sh" "$metrics"
