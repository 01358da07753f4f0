#!/usr/bin/env bash
# Installs, on Debian/Ubuntu, the packages insitra needs to build and test,
# skipping those already present. Pass extra package names to add them (the
# benchmarks add python3-torch), or --batch for Slurm and munge (the test
# batch_slurm_heat2d; without them it is skipped: it takes minutes, so CI
# leaves it out unless asked).
set -euo pipefail

extra=()
for arg in "$@"; do
  if [ "$arg" = --batch ]; then
    extra+=(slurmctld slurmd slurm-client munge)   # Debian's Slurm 22.05; no PBS is packaged
  else
    extra+=("$arg")
  fi
done
# clang-14, its runtime (libFuzzer, sanitizers) and OpenMP: the fuzz preset.
packages=(cmake make gcc gfortran pkg-config mpich libmpich-dev libhdf5-mpich-dev
          libopenblas-openmp-dev libyaml-dev gnuplot-nox  # gnuplot: the demo's plot
          libdnnl-dev  # oneDNN: bench_gemm_onednn, and the opt-in INSITRA_CPU_GEMM=oneDNN
          clang-14 libclang-rt-14-dev libomp-14-dev ${extra[@]+"${extra[@]}"})

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install-deps: missing ${missing[*]}, and apt-get is not available; install them by hand" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
