/*
 * The blocks of a context-parallel attention on the GPU: the kernels behind
 * the CUDA backend's attention_kv_pack, attention_block_forward / _finish /
 * _backward / _done (lib/backend.h, "context parallelism"; the ring that
 * calls them is lib/attention_ring.c, the CPU twin lib/cpu/attention.h).
 *
 * A rank holds Tq tokens of each sample at global positions q_pos.. (qkv
 * (B,Tq,3C)) and meets the sample's keys and values one block at a time:
 * kv (B,Tk,2C) = [k | v] of Tk tokens at positions k_pos.. With causal, key
 * position p is seen by query position r when p <= r. Forward carries the
 * online softmax between blocks in out (unnormalised, the compute type) and
 * m, l (B,H,Tq) f32, the running row maximum of the scores q.k / sqrt(hd)
 * and the sum of exp(score - m), both in natural units as on the CPU; finish
 * divides and leaves lse = m + log l. Backward recomputes each block's
 * probabilities from lse; dq and dk are left without the 1/sqrt(hd), which
 * done applies once.
 *
 * Kernels, as attention.cuh's: bf16 with hd = 32, 64 or 128 (and 16-byte
 * aligned tensors) on the tensor cores (mma.sync, fp32 accumulation,
 * probabilities rounded to bf16 for the P V and dS products); fp32, and bf16
 * with other head sizes up to 256, on the CUDA cores with fp32 arithmetic (a
 * group of lanes per row, 16-row tiles of the other operand in shared
 * memory). Forward and the dq pass give each query row to one owner, the
 * dk/dv pass each key row; every output element is summed by one thread in
 * a fixed order, no atomics, so reruns are bit-identical.
 *
 * Plain C, so that tests can call the kernels directly.
 */
#ifndef INSITRA_CUDA_ATTENTION_BLOCK_CUH
#define INSITRA_CUDA_ATTENTION_BLOCK_CUH

#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../error.h"

typedef struct insitra_attention_block_shape {
    int64_t B, Tq, Tk, C, H; /* samples, query tokens, key tokens, channels, heads (H divides C) */
    int64_t q_pos, k_pos;    /* global positions of the first query and the first key */
    bool causal;
    bool bf16; /* element type of qkv, kv, out, dout, dqkv: bf16, else fp32 */
} insitra_attention_block_shape;

/* OK, or INSITRA_STATUS_INVALID_ARGUMENT naming what the kernels cannot run. */
insitra_status insitra_cuda_attention_block_check(const insitra_attention_block_shape *sh);

/* kv (N,2C) = the k and v columns of qkv (N,3C); es bytes per element */
insitra_status insitra_cuda_attention_kv_pack(void *kv, const void *qkv, int64_t N, int64_t C, size_t es,
                                              cudaStream_t s);

/* out (B,Tq,C) += the block's part, unnormalised; m, l (B,H,Tq) the running
 * row maximum and sum; first: out, m, l start from 0, -inf, 0 */
insitra_status insitra_cuda_attention_block_forward(void *out, float *m, float *l, const void *qkv,
                                                    const void *kv, const insitra_attention_block_shape *sh,
                                                    bool first, cudaStream_t s);

/* out (B,Tq,C) /= l, lse (B,H,Tq) = m + log l; lse may be m */
insitra_status insitra_cuda_attention_block_finish(void *out, float *lse, const float *m, const float *l,
                                                   int64_t B, int64_t Tq, int64_t C, int64_t H, bool bf16,
                                                   cudaStream_t s);

/* The block's part of the gradients, from the finished out and lse and dout
 * (B,Tq,C): the q columns of dqkv (B,Tq,3C) += dS k, dkv (B,Tk,2C) f32 +=
 * [dS^T q | P^T dout]; dq and dk unscaled */
insitra_status insitra_cuda_attention_block_backward(void *dqkv, float *dkv, const void *dout,
                                                     const void *qkv, const void *kv, const void *out,
                                                     const float *lse,
                                                     const insitra_attention_block_shape *sh, cudaStream_t s);

/* dqkv (N,3C): dq *= 1/sqrt(hd); the k, v columns = dkv (N,2C) f32 with dk
 * times 1/sqrt(hd) (dkv itself is left as it is) */
insitra_status insitra_cuda_attention_block_done(void *dqkv, const float *dkv, int64_t N, int64_t C,
                                                 int64_t H, bool bf16, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* INSITRA_CUDA_ATTENTION_BLOCK_CUH */
