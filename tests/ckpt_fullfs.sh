#!/usr/bin/env bash
# A checkpoint directory on a real, small file system (issue #16.1): mounts
# an 8 MiB tmpfs at DIR, runs test_ckpt_enospc DIR real on 2 ranks, unmounts.
# Exit 77 (skipped) where mounting is not permitted (not root, a container
# without CAP_SYS_ADMIN).
#   ckpt_fullfs.sh MPIEXEC NUMPROC_FLAG PROGRAM DIR
set -u
mpiexec=$1 np_flag=$2 program=$3 dir=$4
mkdir -p "$dir"
if ! mount -t tmpfs -o size=8m insitra-ckpt-test "$dir" 2>/dev/null; then
  echo "SKIP: cannot mount a tmpfs at $dir (needs root or CAP_SYS_ADMIN)"
  exit 77
fi
trap 'umount "$dir"' EXIT
OMP_NUM_THREADS=1 "$mpiexec" "$np_flag" 2 "$program" "$dir" real
