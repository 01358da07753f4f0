#!/usr/bin/env bash
# The test command: installs what is missing, then builds and runs every test
# twice, under AddressSanitizer + UndefinedBehaviorSanitizer (the unit tests)
# and as CI builds it (warnings as errors, all tests including MPI ones).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --workflow --preset asan
cmake --workflow --preset ci
