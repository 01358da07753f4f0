/*
 * The trainer handle behind the public API. One per communicator: the
 * configuration it was made with, the model, optimizer state, the sample
 * store and the sampler, and the small per-step buffers, all allocated in
 * insitra_trainer_create.
 */
#ifndef INSITRA_TRAINER_H
#define INSITRA_TRAINER_H

#include <stdio.h>

#include "ckpt_state.h"
#include "comm.h"
#include "config.h"
#include "engine.h"
#include "normalize.h"
#include "preempt.h"
#include "rng.h"
#include "sample_store.h"

struct insitra_trainer {
    insitra_config cfg;
    insitra_comm comm;          /* the caller's communicator, duplicated */
    insitra_comm dp;            /* the data replicas: the ranks of this rank's cp_rank */
    insitra_comm cp;            /* the cp ring: the ranks of this tp rank sharing each sample's tokens */
    insitra_comm slices;        /* every rank holding slices of the same samples (cp x tp), in token order */
    insitra_comm grad;          /* dp x cp: gradients reduced and ZeRO shards over it */
    insitra_comm tp;            /* the ranks sharing each block's tensors (parallel.tp) */
    insitra_engine engine;      /* model, ZeRO state and the step, on the configured backend */
    insitra_sample_store store; /* host store: pushes land here first (checkpoints read it) */
    insitra_sample_store held_out; /* pushes kept for the validation loss, never trained on */
    int64_t pushes;             /* samples ever pushed to this rank, both stores (the split's index) */
    insitra_normalize norm;     /* the feature statistics and maps (data.normalize, model.residual) */
    insitra_rng sampler;        /* seeded by (training.seed, dp rank): the cp x tp ranks draw the same batches */
    int64_t sample_cursor;      /* samples drawn so far (the sequential sampler's position) */
    int64_t *batch_slots;       /* (batch_size) store slots of this step's samples */
    int64_t step;               /* optimizer steps taken */
    FILE *jsonl;                /* rank 0's metrics file, or NULL */
    insitra_preempt preempt;    /* signals and the deadline (preempt.h) */
    bool stop;                  /* the ranks agreed to stop; the final checkpoint is written */
    insitra_ckpt_array arrays[INSITRA_CHECKPOINT_ARRAYS_MAX]; /* the caller's, saved under /user */
    int64_t n_arrays;
};

#endif /* INSITRA_TRAINER_H */
