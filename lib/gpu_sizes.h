/*
 * What the CUDA backend allocates besides the engine's buffers, computed in C
 * so the planner (insitra-plan, insitra_plan_stage) can answer for
 * device = cuda in any build: the backend's descriptor
 * (insitra_backend_cuda_desc) and the constants its kernels size by.
 * lib/cuda/backend_cuda.cu carves its workspace with the same function.
 */
#ifndef INSITRA_GPU_SIZES_H
#define INSITRA_GPU_SIZES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Every device buffer starts on a 256-byte boundary (vector access, cuBLASLt). */
#define INSITRA_GPU_ALIGN 256
/* cuBLASLt workspace: its recommendation for Hopper. */
#define INSITRA_GPU_GEMM_WORKSPACE ((int64_t)32 << 20)
/* Blocks of the two-pass scalar reductions (partials are doubles). */
#define INSITRA_GPU_REDUCE_BLOCKS 264

/* Blocks per segment of the gradient norm's partial sums. */
#define INSITRA_GPU_SEGMENT_BLOCKS 8

/* Row splits of a column reduction over rows rows. */
int64_t insitra_gpu_col_splits(int64_t rows);

/* How the CUDA backend runs attention: bf16 fused (flash) kernels that keep
 * a log-sum-exp per row (lib/cuda/attention.cu, or cuDNN's SDPA as
 * insitra_gpu_sdpa_choice says); fp32, the reference
 * precision, as batched GEMMs around a row softmax that keeps the (B,H,T,T)
 * probabilities (its CUDA-core fused kernel is 3x slower at the M shape). */
static inline bool insitra_gpu_attention_fused(size_t act_size) { return act_size == 2; }

/* Which bf16 attention the CUDA backend runs (docs/gpu.md, "cuDNN's fused
 * attention"): the environment variable INSITRA_GPU_ATTENTION = fused (our
 * kernels), cudnn (cuDNN's SDPA, deterministic backward) or cudnn-fast
 * (cuDNN, fp32 dQ accumulation: reruns not bit-identical); unset or auto:
 * cudnn in builds with cuDNN while its deterministic backward's (B,H,T,T)
 * bf16 dP buffer fits in INSITRA_GPU_SDPA_AUTO_BYTES, else fused. Read by
 * the planner and the backend alike, so both reserve the same workspace. */
typedef enum insitra_gpu_sdpa {
    INSITRA_GPU_SDPA_NONE = 0,      /* our fused kernels */
    INSITRA_GPU_SDPA_DETERMINISTIC, /* cuDNN, deterministic backward */
    INSITRA_GPU_SDPA_FAST           /* cuDNN, fp32 dQ accumulation */
} insitra_gpu_sdpa;
#define INSITRA_GPU_SDPA_AUTO_BYTES ((int64_t)1 << 30)
/* cuDNN's execution plans' own workspace beyond what is counted below
 * (seen 0 on cuDNN 9.14 at the benchmark shapes): a margin. */
#define INSITRA_GPU_SDPA_PLAN_MARGIN ((int64_t)4 << 20)

/* The choice for micro-batches of B; INSITRA_GPU_SDPA_NONE for fp32, builds
 * without cuDNN and a value of INSITRA_GPU_ATTENTION it does not know (the
 * backend refuses that one at trainer creation). */
insitra_gpu_sdpa insitra_gpu_sdpa_choice(const insitra_model_dims *d, int64_t B, size_t act_size);
/* Bytes of cuDNN's attention workspace for B samples of T tokens, H heads of
 * hd: rowsum(dO * O) (B,H,T fp32); deterministic: the (B,H,T,T) bf16 dP
 * buffer (T rounded up to 128); fast: the fp32 dQ accumulator (B,H,T,hd);
 * plus INSITRA_GPU_SDPA_PLAN_MARGIN. 0 for INSITRA_GPU_SDPA_NONE. */
int64_t insitra_gpu_sdpa_bytes(int64_t B, int64_t H, int64_t T, int64_t hd, insitra_gpu_sdpa mode);

/* The CUDA backend's workspace for micro-batches of B, carved in this order
 * (offsets in bytes from its base): for materialised attention the head-split
 * q/k/v, the output per head and its gradient, the gradient of the split
 * q/k/v and the scores' gradient; for fused attention rowsum(dO * O) per row;
 * then column-reduction partials, scalar-reduction partials, the gradient
 * norm's per-tensor partials, the GEMM workspace, cuDNN's attention
 * workspace (insitra_gpu_sdpa_bytes). Unused parts are empty. */
typedef struct insitra_gpu_workspace {
    int64_t qkvr, yr, dyr, dqkvr, datt, delta, col_partial, reduce_partial, segment_partial, gemm, sdpa,
        sdpa_bytes, total;
} insitra_gpu_workspace;

insitra_gpu_workspace insitra_gpu_workspace_for(const insitra_model_dims *d, int64_t B, size_t act_size);

#endif /* INSITRA_GPU_SIZES_H */
