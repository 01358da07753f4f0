/*
 * Blocked multi-head self-attention on the CPU, fp32: the scores are made one
 * tile of queries x keys at a time and folded into the output with the online
 * softmax, so no (T,T) buffer exists and memory is linear in T. Backward
 * recomputes each tile's probabilities from the row log-sum-exp that forward
 * saves. Every output element is computed by one task in a fixed order, so
 * results do not depend on the thread count or schedule.
 */
#ifndef INSITRA_CPU_ATTENTION_H
#define INSITRA_CPU_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

/* Tile sizes: a query block, a key block and a slice of the head dimension
 * (the transposed key slice the score kernel reads). Four tiles of 64 x 64
 * floats (16 KiB each) are one thread's working set in backward, so they sit
 * in L2 on any current x86 core; the head dimension is taken in slices so the
 * working set does not grow with it. */
#define INSITRA_ATTENTION_BQ 64
#define INSITRA_ATTENTION_BK 64
#define INSITRA_ATTENTION_BD 64

/* qkv (B,T,3C) = [q | k | v] per token, heads of C/H columns, read in place.
 * out (B,T,C) = softmax(q k^T / sqrt(C/H)) v per head, with causal: key j
 * only for queries i >= j. lse (B,H,T) = log sum_j exp(score_ij), for backward. */
void insitra_attention_forward(float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                               int64_t C, int64_t H, bool causal);
/* dqkv (B,T,3C) = d(loss)/d(qkv) (overwritten), from dout (B,T,C) and the
 * forward's out (B,T,C) and lse (B,H,T). */
void insitra_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out,
                                const float *lse, int64_t B, int64_t T, int64_t C, int64_t H,
                                bool causal);

#endif /* INSITRA_CPU_ATTENTION_H */
