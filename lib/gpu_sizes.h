/*
 * Device bytes the CUDA backend allocates, by category, computed in C so the
 * planner (insitra-plan, insitra_plan_stage) can answer for device = cuda in
 * any build. lib/cuda/ carves its buffers in the same order with the same
 * alignment, and checks at create time that it arrived at these totals.
 */
#ifndef INSITRA_GPU_SIZES_H
#define INSITRA_GPU_SIZES_H

#include <stdint.h>

#include "config.h"
#include "model.h"
#include "shard.h"

/* Every device buffer starts on a 256-byte boundary. */
#define INSITRA_GPU_ALIGN 256
/* cuBLASLt workspace: its recommendation for Hopper. */
#define INSITRA_GPU_GEMM_WORKSPACE ((int64_t)32 << 20)
/* Blocks of the two-pass scalar reductions (partials are doubles). */
#define INSITRA_GPU_REDUCE_BLOCKS 264

static inline int64_t insitra_gpu_align(int64_t bytes)
{
    return (bytes + INSITRA_GPU_ALIGN - 1) / INSITRA_GPU_ALIGN * INSITRA_GPU_ALIGN;
}

/* Row splits of a column reduction over rows rows. */
int64_t insitra_gpu_col_splits(int64_t rows);

typedef struct insitra_gpu_bytes {
    int64_t params;       /* fp32 master weights, working copy (compute type), gather buffers */
    int64_t grads;        /* fp32 gradients: full, or shard + per-unit buffers */
    int64_t moments;      /* AdamW m and v (fp32) and the weight-decay mask */
    int64_t activations;  /* the model's activations and scratch, and the GEMM workspace */
    int64_t comm;         /* NCCL send/receive buffers and the small per-step values */
    int64_t store;        /* the sample store and the batch's slots */
} insitra_gpu_bytes;

/* The model's activation buffer for micro-batches of max_batch samples. */
int64_t insitra_gpu_activation_bytes(const insitra_model_dims *d, int64_t max_batch, int64_t esize);

insitra_gpu_bytes insitra_gpu_bytes_for(const insitra_config *cfg, const insitra_param_layout *layout,
                                        const insitra_shard_layout *sl);

#endif /* INSITRA_GPU_SIZES_H */
