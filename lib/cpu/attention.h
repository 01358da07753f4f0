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

/* Tile sizes: a query block and a key block. A tile of 64 x 64 floats is
 * 16 KiB; backward's two (scores and their gradients) and the rows they
 * multiply stay in L2 on any current x86 core. */
#define INSITRA_ATTENTION_BQ 64
#define INSITRA_ATTENTION_BK 64

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

/* ---- blocks of keys: the parts of a context-parallel attention ----
 *
 * A rank holds Tq tokens of each sample, at global positions q_pos.. (qkv
 * (B,Tq,3C)), and sees the keys and values of the sample one block at a time:
 * Tk tokens at global positions k_pos.., k and v the first token's head-0
 * columns, rows at stride kvs (k = qkv + C, v = qkv + 2C, kvs = 3C for its
 * own block; a packed [k | v] block of (B,Tk,2C) has kvs = 2C). Folding every
 * block of the sample in, in any order, then finishing gives the attention
 * of the whole sample, as insitra_attention_forward would, to rounding. */

/* out (B,Tq,C) += this block's part, unnormalised; m, l (B,H,Tq) the running
 * row maximum and sum. Start from out = 0, m = -inf, l = 0. */
void insitra_attention_block_forward(float *out, float *m, float *l, const float *qkv, const float *k,
                                     const float *v, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk,
                                     int64_t C, int64_t H, int64_t q_pos, int64_t k_pos, bool causal);
/* out /= l and lse (B,H,Tq) = m + log l once every block is in; lse may be m. */
void insitra_attention_block_finish(float *out, float *lse, const float *m, const float *l, int64_t B,
                                    int64_t Tq, int64_t C, int64_t H);
/* This block's part of the gradients, given the finished out and lse and
 * dout (B,Tq,C): dq (the q columns of a (B,Tq,3C) dqkv) += dS k and dk, dv
 * (rows at stride kvs, like k and v) += dS^T q, P^T dout. dq and dk are
 * unscaled: multiply by 1/sqrt(C/H) (insitra_attention_block_scale) once
 * every block's part is in. */
void insitra_attention_block_backward(float *dqkv, float *dk, float *dv, const float *dout,
                                      const float *qkv, const float *k, const float *v, int64_t kvs,
                                      const float *out, const float *lse, int64_t B, int64_t Tq,
                                      int64_t Tk, int64_t C, int64_t H, int64_t q_pos, int64_t k_pos,
                                      bool causal);
/* rows (B,n,C) at stride rs, C columns from a: *= 1/sqrt(C/H). */
void insitra_attention_block_scale(float *a, int64_t rs, int64_t B, int64_t n, int64_t C, int64_t H);

#endif /* INSITRA_CPU_ATTENTION_H */
