/*
 * ZeRO data parallelism over the dp communicator. What each stage keeps on a
 * rank (P parameters, N = dp ranks, S ~ P/N the shard):
 *
 *   stage 0: parameters P, gradients P, moments 2P; gradients all-reduced
 *            (as reduce-scatter + all-gather, the summation stages 1-3 use,
 *            so all four stages compute bit-identical steps)
 *   stage 1: parameters P, gradients P, moments 2S; gradients reduce-scattered,
 *            each rank updates its shard, parameters all-gathered
 *   stage 2: parameters P, gradients S, moments 2S; a unit's gradients are
 *            reduce-scattered as soon as its backward ends, so only one unit's
 *            full gradients exist at a time
 *   stage 3: parameters S, gradients S, moments 2S; a unit's parameters are
 *            all-gathered just before forward or backward uses it (the next
 *            one prefetched) and dropped after
 *
 * Stages 0 and 1 communicate on the last micro-batch of a step only; stages 2
 * and 3 hold no full gradient buffer to accumulate in, so they reduce every
 * micro-batch into the gradient shard. All collectives are non-blocking and
 * started from the model's unit hooks; the hooks also test outstanding
 * requests so MPI makes progress while the CPU computes.
 */
#ifndef INSITRA_ZERO_H
#define INSITRA_ZERO_H

#include <mpi.h>
#include <stdbool.h>

#include "comm.h"
#include "model.h"
#include "optimizer.h"
#include "shard.h"

/* Floats each stage holds, by category; the planner and the trainer share it. */
typedef struct insitra_zero_sizes {
    int64_t params;    /* full parameters, or shard + the stage-3 gather buffers */
    int64_t grads;     /* full gradients, or the gradient shard */
    int64_t moments;   /* AdamW m and v */
    int64_t comm;      /* reduction buffers, gather send buffers, the per-unit gradient buffer */
} insitra_zero_sizes;

insitra_zero_sizes insitra_zero_sizes_for(int stage, const insitra_param_layout *layout,
                                          const insitra_shard_layout *sl);

typedef struct insitra_zero {
    int stage;
    const insitra_comm *dp;
    insitra_model *model;
    const insitra_param_layout *layout;
    insitra_shard_layout sl;
    float *memory;              /* one allocation holding every buffer below */
    float *param_shard;         /* stage 3: this rank's parameter slots (sl.total) */
    float *grad_shard;          /* stages 1-3: reduced gradient slots (sl.total) */
    float *m, *v;               /* AdamW moments, full (stage 0) or slots */
    float *unit_grads;          /* stages 2-3: the unit whose backward is running */
    float *send;                /* stages 1-2: this rank's slots of a unit, to all-gather */
    float *gather_packed[2];    /* stages 1-3: rank-major all-gather receive buffers */
    float *gather_unit[2];      /* stage 3: unpacked parameters of a gathered unit */
    float *reduce_packed[2];    /* stages 1-3: rank-major reduce-scatter send buffers */
    float *reduce_recv[2];      /* stages 1-3: this rank's reduced slots of a unit */
    MPI_Request gather_req[2], reduce_req[2];
    int64_t gather_id[2];       /* unit in gather slot k, -1 if none */
    bool gather_ready[2];       /* gather slot k is unpacked */
    int64_t reduce_id[2];       /* unit being reduced in slot k, -1 if none */
    bool reduce_gathering[2];   /* stage 0: slot k is in its all-gather half */
    int next_reduce;            /* slot the next reduction uses */
    bool communicate;           /* this backward ends the step (stages 0-1) */
    insitra_status error;       /* first failure inside a hook */
    double wait_seconds;        /* blocked in MPI_Wait this step */
    insitra_model_hooks hooks;
} insitra_zero;

/* Allocates the stage's buffers and installs the hooks on model, which must
 * have been created with full parameters for stages 0-2 and full gradients
 * for stages 0-1 (insitra_model_create_partial). */
insitra_status insitra_zero_create(insitra_zero *z, int stage, const insitra_comm *dp,
                                   insitra_model *model);
void insitra_zero_free(insitra_zero *z);

/* The same initial parameters at every stage and world size. */
void insitra_zero_init_params(insitra_zero *z, uint64_t seed, double std);

/* Before the first micro-batch of a step: zero the gradients. */
void insitra_zero_begin_step(insitra_zero *z);
/* Whether the next backward is the step's last micro-batch. */
void insitra_zero_set_last_micro_batch(insitra_zero *z, bool last);
/* After the last backward: completes every reduction. */
insitra_status insitra_zero_finish_backward(insitra_zero *z);
/* Sum of squares of this rank's slots of the summed gradient, tensor by
 * tensor in a fixed order (the same value at every stage). */
double insitra_zero_grad_sum_squares(const insitra_zero *z);
/* AdamW on this rank's slots (all of them at stage 0), then the all-gather of
 * the parameters at stages 1-2. grad_scale multiplies the summed gradient. */
insitra_status insitra_zero_update(insitra_zero *z, int64_t t, double lr, float grad_scale,
                                   const insitra_adamw_hparams *hp);
/* Collective: every parameter into full (layout.total floats), e.g. for checks. */
insitra_status insitra_zero_gather_params(insitra_zero *z, float *full);
/* Collective: parameters and AdamW moments, each into a full buffer (any may be NULL). */
insitra_status insitra_zero_gather_state(insitra_zero *z, float *params, float *m, float *v);

#endif /* INSITRA_ZERO_H */
