/*
 * Fused multi-head self-attention on the GPU, forward and backward, without
 * the (B,H,T,T) probabilities: per query row only the log-sum-exp of its
 * scores is kept (fp32, (B,H,T)), and backward recomputes the probabilities
 * from it tile by tile (the FlashAttention-2 scheme).
 *
 * Layouts are the model's, read and written in place (no head split/merge):
 *   qkv  (B,T,3C)  rows [q | k | v]; head h is columns h*hd .. h*hd+hd-1 of
 *                  each third, hd = C/H
 *   out  (B,T,C)   head h at columns h*hd .., the merged layout
 *   dqkv (B,T,3C)  like qkv
 * Element type: bf16 (bf16 == true) or fp32. bf16 with hd = 32, 64 or 128
 * runs on the tensor cores (mma.sync, sm_80+); fp32, and bf16 with any other
 * hd, run a CUDA-core kernel with fp32 arithmetic. hd up to
 * INSITRA_ATTENTION_MAX_HEAD_DIM is supported.
 *
 * Deterministic: every output element is written by one thread that sums in
 * a fixed order, no floating-point atomics, so reruns are bit-identical.
 *
 * Plain C, so that tests and benchmarks in C can call the kernels directly.
 */
#ifndef INSITRA_CUDA_ATTENTION_CUH
#define INSITRA_CUDA_ATTENTION_CUH

#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../error.h"

/* The largest head size (C / H) the kernels hold in registers. */
#define INSITRA_ATTENTION_MAX_HEAD_DIM 256

typedef struct insitra_attention_shape {
    int64_t B, T, C, H; /* samples, tokens, channels, heads (H divides C) */
    bool causal;        /* token t attends to tokens <= t */
    bool bf16;          /* element type of qkv, out, dout, dqkv: bf16, else fp32 */
} insitra_attention_shape;

/* OK, or INSITRA_STATUS_INVALID_ARGUMENT naming the head size when the
 * kernels cannot run this shape. */
insitra_status insitra_fused_attention_check(const insitra_attention_shape *sh);

/* out (B,T,C) = softmax(q k^T / sqrt(hd) [causal mask]) v per head;
 * lse (B,H,T) fp32 receives each row's log-sum-exp (base 2, of the scores
 * times log2(e) / sqrt(hd)) for backward. */
insitra_status insitra_fused_attention_forward(void *out, float *lse, const void *qkv,
                                               const insitra_attention_shape *sh, cudaStream_t s);

/* dqkv (B,T,3C) = d attention / d qkv, overwritten, given dout (B,T,C), the
 * forward's qkv, out and lse. delta (B,H,T) fp32 is scratch (rowsum(dout * out)). */
insitra_status insitra_fused_attention_backward(void *dqkv, float *delta, const void *dout,
                                                const void *qkv, const void *out, const float *lse,
                                                const insitra_attention_shape *sh, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* INSITRA_CUDA_ATTENTION_CUH */
