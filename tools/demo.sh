#!/usr/bin/env bash
# The main job: installs what is missing, builds insitra, and trains a
# surrogate in-situ on 2 MPI ranks (examples/c/synthetic_train.c), printing
# progress and a summary. Metrics land in build/cpu/synthetic_train.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset cpu >/dev/null
cmake --build --preset cpu -j "$(nproc)" --target synthetic_train >/dev/null
cd build/cpu
ranks=2
threads=$(( $(nproc) / ranks ))
exec mpiexec -n "$ranks" -env OMP_NUM_THREADS "$(( threads > 0 ? threads : 1 ))" \
  ./examples/synthetic_train "$@"
