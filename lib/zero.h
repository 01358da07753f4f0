/*
 * The ZeRO schedule over the dp group, once for every backend: what each
 * stage keeps on a rank (P parameters, N = dp ranks, S ~ P/N the shard) and
 * when it communicates.
 *
 *   stage 0: parameters P, gradients P, moments 2P; gradients reduced bucket
 *            by bucket as reduce-scatter + all-gather (the summation stages
 *            1-3 use, so all four stages compute bit-identical steps)
 *   stage 1: parameters P, gradients P, moments 2S; gradients reduce-scattered,
 *            each rank updates its shard, parameters all-gathered
 *   stage 2: parameters P, gradients S, moments 2S; a bucket's gradients are
 *            reduce-scattered as soon as its units' backward ends, so only one
 *            bucket's full gradients exist at a time
 *   stage 3: parameters S, gradients S, moments 2S; a unit's parameters are
 *            all-gathered just before forward or backward uses it (the next
 *            one prefetched) and dropped after
 *
 * With parallel.tp > 1 the layout is this rank's slices of the tensors and
 * the dp group is the dp x cp ranks of its tp rank; the replicated tensors'
 * reduced gradients are then summed over the tp group too.
 *
 * With precision bf16 the working parameters are in bf16 and fp32 master
 * weights are kept apart (P at stage 0, S at stages 1-3); in fp32 the
 * working parameters are the master weights.
 *
 * Stages 0 and 1 communicate on the last micro-batch of a step only; stages 2
 * and 3 hold no full gradient buffer to accumulate in, so they reduce every
 * micro-batch into the gradient shard. Reductions and the stage 1-2 gathers
 * go by bucket (lib/shard.h: consecutive units, up to 64 MiB over all ranks,
 * one pack and one collective each); stage 3 gathers unit by unit. Every
 * collective is started from the
 * model's unit hooks through the backend and overlaps the next units'
 * compute; the hooks also poke outstanding collectives so MPI progresses.
 */
#ifndef INSITRA_ZERO_H
#define INSITRA_ZERO_H

#include <stdbool.h>

#include "backend.h"
#include "comm.h"
#include "model.h"
#include "optimizer.h"
#include "shard.h"

/* Bytes each category holds on a rank, for a stage, an element size of the
 * working parameters, and the backend's alignment; the planner and the
 * allocation share it. */
typedef struct insitra_zero_bytes {
    int64_t params;    /* working parameters, master weights, send copy, stage-3 gather slots */
    int64_t grads;     /* full gradients, or the gradient shard */
    int64_t moments;   /* AdamW m and v */
    int64_t comm;      /* reduction and gather buffers, the per-bucket gradient buffer, tables */
} insitra_zero_bytes;

insitra_zero_bytes insitra_zero_bytes_for(int stage, bool master_separate, size_t act_size, size_t align,
                                          const insitra_param_layout *layout,
                                          const insitra_shard_layout *sl);

typedef struct insitra_zero {
    int stage;
    bool master_separate;       /* bf16: fp32 master weights apart from the working copy */
    insitra_backend *be;
    insitra_group *group;       /* the dp ranks, as the backend communicates */
    const insitra_comm *dp;
    insitra_model *model;
    const insitra_param_layout *layout;
    insitra_shard_layout sl;
    int64_t max_numel;          /* the largest tensor */
    insitra_zero_bytes bytes;

    /* backend buffers, one allocation per category (views below) */
    void *mem_params, *mem_grads, *mem_moments, *mem_comm;
    float *master;              /* f32 master: P (stage 0) or S, or NULL (fp32 stages 0-2: = work) */
    void *work;                 /* stages 0-2: full working parameters (compute type) */
    void *send;                 /* this rank's updated slots to all-gather: S (compute type) with a
                                   separate master, 2 U (fp32) at fp32 stages 1-2, else NULL */
    void *gather_unit[2];       /* stage 3: a gathered unit (compute type) */
    float *grads;               /* stages 0-1: full gradients (P) */
    float *grad_shard;          /* stages 2-3: reduced gradient slots (S) */
    float *unit_grads;          /* stages 2-3: the bucket whose units' backward is running */
    float *m, *v;               /* AdamW moments, P or S */
    float *reduce_packed[2];    /* rank-major reduce-scatter send (and stage 0 all-gather receive) */
    float *reduce_recv[2];      /* this rank's reduced slots of a unit */
    void *gather_packed[2];     /* rank-major all-gather receive buffers */
    insitra_shard_copy *copies; /* per tensor, relative to its unit (backend memory) */
    insitra_shard_copy *bucket_copies; /* per tensor, relative to its bucket (backend memory) */
    insitra_update_segment *update_segs, *norm_segs; /* per tensor (backend memory) */
    int64_t n_segs, max_seg;
    /* tp > 1: the replicated tensors' gradient runs summed over the tp group (host table),
     * and that sum's send and receive buffers (R, and tp R, f32) */
    insitra_update_segment *tp_runs;
    int64_t n_tp_runs;
    float *tp_send, *tp_recv;

    /* host copies the checkpoints read and write: the backend's own buffers when they are host
     * memory, else mirrors filled by insitra_zero_export */
    float *host_params;         /* full P when host_params_full, else this rank's S slots */
    float *host_m, *host_v;     /* P at stage 0, else S */
    bool host_params_full;
    void *host_mirror;          /* the mirrors' allocation, or NULL */

    /* in flight */
    insitra_coll reduce_h[2], gather_h[2];
    int64_t reduce_id[2];       /* bucket being reduced in slot k, -1 if none */
    bool reduce_gathering[2];   /* stage 0: slot k is in its all-gather half */
    int next_reduce;
    int64_t gather_id[2];       /* stage 3: unit in gather slot k, -1 if none */
    bool gather_ready[2];
    bool communicate;           /* this backward ends the step (stages 0-1) */
    insitra_status error;       /* first failure inside a hook */
    insitra_model_hooks hooks;
} insitra_zero;

/* Allocates the stage's buffers on model's backend and installs the hooks;
 * model was created without full buffers (insitra_model_create_on with
 * false, false). Local: call insitra_zero_connect after every rank succeeded. */
insitra_status insitra_zero_create(insitra_zero *z, int stage, bool master_separate, int64_t bucket_floats,
                                   const insitra_comm *dp, insitra_model *model);
/* Collective over dp: the backend's process group. */
insitra_status insitra_zero_connect(insitra_zero *z);
void insitra_zero_free(insitra_zero *z);

/* The same initial parameters at every stage, world size and tp (each tp
 * rank's slices of the tp = 1 tensors), into the host copies (then
 * insitra_zero_import), moments zeroed. Local. */
insitra_status insitra_zero_init_host(insitra_zero *z, uint64_t seed, double std);
/* Collective: the host copies into the backend (after init or a checkpoint load). */
insitra_status insitra_zero_import(insitra_zero *z);
/* The backend's state into the host copies (before a checkpoint save). */
insitra_status insitra_zero_export(insitra_zero *z);

/* ---- the step (queued on the backend) ---- */
/* Before the first micro-batch: zero the gradients. */
insitra_status insitra_zero_begin_step(insitra_zero *z);
/* Whether the next backward is the step's last micro-batch. */
void insitra_zero_set_last_micro_batch(insitra_zero *z, bool last);
/* After the last backward: completes every reduction. */
insitra_status insitra_zero_finish_backward(insitra_zero *z);
/* *acc += sum of squares of this rank's slots of the summed gradient, tensor by
 * tensor in a fixed order (the same value at every stage). */
insitra_status insitra_zero_grad_sum_squares(insitra_zero *z, double *acc);
/* AdamW on this rank's slots (all of them at stage 0) with the step's scalars
 * and stats, then the all-gather of the parameters at stages 1-2. */
insitra_status insitra_zero_update(insitra_zero *z, const insitra_step_scalars *sc, const double *stats);
/* Before forwards of a new pass (predict, evaluate): error state cleared. */
void insitra_zero_begin_pass(insitra_zero *z);

/* Collective: every parameter into full (host, layout.total floats), e.g. for checks. */
insitra_status insitra_zero_gather_params(insitra_zero *z, float *full);
/* Collective: parameters and AdamW moments, each into a full host buffer (any may be NULL). */
insitra_status insitra_zero_gather_state(insitra_zero *z, float *params, float *m, float *v);
/* Collective: full fp32 parameters (host) into the trainer's state, e.g. from a fixture. */
insitra_status insitra_zero_set_params(insitra_zero *z, const float *full);

/* Collective, for bench/bench_gpu_comm.c: the communication of one step
 * alone (the stage's per-bucket reductions and parameter gathers, packing
 * included, as the step issues them) against one reduce-scatter and one
 * all-gather of whole buffers of the same bytes; medians over reps, in
 * seconds. Allocates its comparison buffers for the call. */
insitra_status insitra_zero_time_collectives(insitra_zero *z, int reps, double *seconds, double *raw_seconds,
                                             int64_t *bytes);

#endif /* INSITRA_ZERO_H */
