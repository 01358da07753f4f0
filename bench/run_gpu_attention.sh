#!/usr/bin/env bash
# One attention layer, forward + backward, on one GPU (issue #13): insitra's
# fused kernels and its former materialised path (bench_gpu_attention)
# against PyTorch's SDPA with its FlashAttention-2 and cuDNN backends
# (bench_torch_attention.py), bidirectional then causal, in one run.
#
#   bench/run_gpu_attention.sh [BUILD_DIR] [shape options]    (default build/cuda)
#
# Shape options go to both programs (--B 16 --H 12 --T 1024 --hd 64, --reps 50).
# BUILD_DIR must hold a built bench_gpu_attention (cmake --build BUILD_DIR
# --target bench_gpu_attention; a CUDA build). Prints one "attention impl=..."
# line per implementation and case; PyTorch runs without LD_LIBRARY_PATH
# (INSITRA_GPU_BENCH_PYTHON names its python, default python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:-build/cuda}
[[ $# -gt 0 ]] && shift
python=${INSITRA_GPU_BENCH_PYTHON:-python3}
bin=$(find "$build" -type f -name bench_gpu_attention -perm -u+x 2>/dev/null | head -n 1)
[[ -n $bin ]] || { echo "run_gpu_attention: no bench_gpu_attention under $build" >&2; exit 1; }
status=0
for causal in "" --causal; do
    "$bin" "$@" $causal || status=1
    env -u LD_LIBRARY_PATH "$python" "$here/bench_torch_attention.py" "$@" $causal ||
        echo "attention impl=torch failed (status $?)"
done
exit $status
