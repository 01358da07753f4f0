/*
 * What a checkpoint saves and loads: a plain view of the training state whose
 * memory the caller owns (lib/trainer_ckpt.c builds it from the trainer).
 * ckpt/ reads it to save and fills it to load; it knows nothing of the
 * trainer, and the caller decides what a failed load resets.
 */
#ifndef INSITRA_CKPT_STATE_H
#define INSITRA_CKPT_STATE_H

#include <stdbool.h>
#include <stdint.h>

#include "comm.h"
#include "config.h"
#include "model.h"
#include "normalize.h"
#include "rng.h"
#include "sample_store.h"
#include "shard.h"

/* One of the caller's arrays (insitra_checkpoint_add_array): this rank's
 * piece of a global row-major array, where it lies in the caller's memory.
 * ndim 0 is a scalar: rank 0's value is saved, every rank's is loaded. */
typedef struct insitra_ckpt_array {
    char name[64];
    int type;                                     /* insitra_type */
    int ndim;
    int64_t global[INSITRA_ARRAY_MAX_DIMS];
    int64_t offset[INSITRA_ARRAY_MAX_DIMS], count[INSITRA_ARRAY_MAX_DIMS];
    int64_t mem_shape[INSITRA_ARRAY_MAX_DIMS], mem_offset[INSITRA_ARRAY_MAX_DIMS];
    void *data;
} insitra_ckpt_array;

typedef struct insitra_ckpt_state {
    const insitra_comm *world;          /* every rank: the file is written by all */
    int64_t dp, tp;                     /* the layout, stored as attributes: dp counts the ranks
                                         * ZeRO shards over (dp x cp), tp the tensor-parallel ones */
    int64_t tp_rank;                    /* this rank's place in its tp group: where its local
                                         * tensors sit in the whole ones the file holds */
    const insitra_config *cfg;          /* stored; its model keys are compared on load */
    const insitra_param_layout *layout; /* the tensors, names and (local) shapes, of tp ranks */
    const insitra_shard_layout *shards; /* this rank's slot of each tensor */
    int zero_stage;
    float *params;                      /* (layout.total) when held whole, else NULL */
    float *param_shard;                 /* (shards.total) when params is NULL: this rank's slots */
    float *m, *v;                       /* AdamW moments: (layout.total) at stage 0, else slots */
    int64_t *step;                      /* optimizer steps taken */
    insitra_rng *sampler;               /* this rank's sampler (4 words) */
    int64_t *sample_cursor;             /* samples drawn so far */
    insitra_sample_store *store;        /* pushed count; the samples with include_samples */
    insitra_normalize *norm;            /* the combined statistics, when data.normalize is on; else NULL */
    const insitra_ckpt_array *arrays;   /* (n_arrays) the caller's, under /user */
    int64_t n_arrays;
} insitra_ckpt_state;

/* What a load wrote into the view, whatever its outcome. */
typedef struct insitra_ckpt_touched {
    bool state;   /* parameters, moments, step, sampler, cursor, pushed count */
    bool samples; /* the sample store's contents */
    bool arrays;  /* the caller's arrays */
} insitra_ckpt_touched;

#endif /* INSITRA_CKPT_STATE_H */
