/*
 * Context-parallel attention (issue #17, docs/parallel.md) over any backend:
 * the cp ranks of a group each hold Tc = T / cp consecutive tokens of every
 * sample (rank c: global tokens [c Tc, (c+1) Tc)). Only keys and values
 * move: each rank's packed [k | v] block travels once around the ring
 * (ring_shift) while every rank folds the block it holds into its queries'
 * online softmax (attention_block_forward), the next block arriving as it
 * computes. Backward sends the blocks round again with f32 [dk | dv]
 * accumulators, to which every rank adds its part; one more hop brings each
 * block's dk, dv home. Blocks meet the ranks in a fixed order, so reruns give
 * the same bits; against the attention of the whole sample on one rank the
 * result agrees to rounding.
 *
 * The trainer reaches it through lib/model_step.c when parallel.cp > 1.
 */
#ifndef INSITRA_ATTENTION_RING_H
#define INSITRA_ATTENTION_RING_H

#include "backend.h"

/* Bytes of the scratch both calls take for B samples of Tc tokens: two
 * travelling [k | v] blocks (B,Tc,2C) act, two f32 [dk | dv] blocks, the
 * running row sums (B,H,Tc) f32. */
int64_t insitra_attention_ring_scratch_bytes(int64_t B, int64_t Tc, int64_t C, int64_t H, size_t act_size);

/* Collective over g, this rank being rank of size (the cp group, in token
 * order). qkv (B,Tc,3C) act this rank's tokens; out (B,Tc,C) act; lse
 * (B,H,Tc) f32 for backward. scratch: insitra_attention_ring_scratch_bytes. */
insitra_status insitra_attention_ring_forward(insitra_backend *be, insitra_group *g, int rank, int size,
                                              void *out, float *lse, void *scratch, const void *qkv, int64_t B,
                                              int64_t Tc, int64_t C, int64_t H, bool causal);
/* Collective over g. dqkv (B,Tc,3C) act = d(loss)/d(qkv) of this rank's
 * tokens, from dout (B,Tc,C) act and forward's out and lse. */
insitra_status insitra_attention_ring_backward(insitra_backend *be, insitra_group *g, int rank, int size,
                                               void *dqkv, void *scratch, const void *dout, const void *qkv,
                                               const void *out, const float *lse, int64_t B, int64_t Tc,
                                               int64_t C, int64_t H, bool causal);

#endif /* INSITRA_ATTENTION_RING_H */
