#!/usr/bin/env bash
# The test command: installs what is missing, then builds and runs every test
# three times: under AddressSanitizer + UndefinedBehaviorSanitizer (the unit
# tests), as CI builds it (warnings as errors, all tests including MPI ones),
# and the libFuzzer harnesses (clang; tests/fuzz/README.md).
#
#   tools/check.sh [--batch]
#
# --batch also installs Slurm and munge, so that the test batch_slurm_heat2d
# (a one-node Slurm started by the test; about 2.5 minutes) runs instead of
# being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# python3-torch and python3-h5py: model_doc_torch rebuilds the model from
# docs/model.md in PyTorch and loads a checkpoint (skipped without them).
tools/install-deps.sh python3-torch python3-h5py "$@"
for arg in "$@"; do [ "$arg" = --batch ] && export INSITRA_TEST_BATCH=1; done
cmake --workflow --preset asan
cmake --workflow --preset ci
cmake --workflow --preset fuzz
