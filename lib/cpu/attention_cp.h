/*
 * Context-parallel attention on the CPU over MPI (issue #17): the cp ranks
 * of a group each hold Tc = T / cp consecutive tokens of every sample (rank
 * c: global tokens [c Tc, (c+1) Tc)). Only keys and values move: each rank's
 * packed [k | v] block travels once around the ring while every rank folds
 * the block it holds into its queries' online softmax (attention.h's block
 * kernels), the next block arriving as it computes. Backward sends the blocks
 * round again with their dk, dv accumulators, which every rank adds its part
 * to; one more hop brings each block's dk, dv home. Blocks meet the ranks in
 * a fixed order, so the result is the same bits on every run; against the
 * attention of the whole sample on one rank it agrees to rounding.
 *
 * Not reachable from the trainer yet: parallel.cp is 1 in this version.
 */
#ifndef INSITRA_CPU_ATTENTION_CP_H
#define INSITRA_CPU_ATTENTION_CP_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "insitra.h"

/* Floats of the scratch the two calls need for B samples of Tc tokens:
 * two travelling blocks of [k | v] (B,Tc,2C) and, in backward, two of
 * [dk | dv], plus the running row sums (B,H,Tc). */
int64_t insitra_cp_attention_scratch_floats(int64_t B, int64_t Tc, int64_t C, int64_t H);

/* Collective over comm (the cp group, in token order). qkv (B,Tc,3C) this
 * rank's tokens; out (B,Tc,C); lse (B,H,Tc) for backward. */
insitra_status insitra_cp_attention_forward(MPI_Comm comm, float *out, float *lse, float *scratch,
                                            const float *qkv, int64_t B, int64_t Tc, int64_t C, int64_t H,
                                            bool causal);
/* Collective over comm. dqkv (B,Tc,3C) = d(loss)/d(qkv) of this rank's
 * tokens, from dout (B,Tc,C) and forward's out and lse. */
insitra_status insitra_cp_attention_backward(MPI_Comm comm, float *dqkv, float *scratch, const float *dout,
                                             const float *qkv, const float *out, const float *lse, int64_t B,
                                             int64_t Tc, int64_t C, int64_t H, bool causal);

#endif /* INSITRA_CPU_ATTENTION_CP_H */
