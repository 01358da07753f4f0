/*
 * The training engine: the model and its ZeRO schedule on one backend, the
 * backend's copy of the sample store, and the step read top to bottom:
 *
 *   slots -> gather the micro-batch from the store -> forward -> backward
 *   (the hooks gather parameters and reduce gradients unit by unit) ->
 *   loss and gradient norm summed over dp in rank order -> AdamW on this
 *   rank's slots -> parameters redistributed
 *
 * The same code runs on every backend; where the backend can record a step
 * (CUDA graphs, cuda.graphs = true), the first step is recorded and later
 * ones replay it. Nothing here knows the trainer: it takes the config, the
 * communicators and the host sample store.
 */
#ifndef INSITRA_ENGINE_H
#define INSITRA_ENGINE_H

#include "backend.h"
#include "comm.h"
#include "config.h"
#include "model.h"
#include "sample_store.h"
#include "zero.h"

/* A sample store as the backend reads it. */
typedef struct insitra_engine_store {
    const insitra_sample_store *host;
    void *mem;                    /* the backend's copy, unless it reads the host's */
    float *x, *y;                 /* (capacity, xs), (capacity, ys) */
} insitra_engine_store;

/* The stores: what training draws from, and the held-out samples (data.validation_fraction). */
enum { INSITRA_STORE_TRAIN = 0, INSITRA_STORE_HELD_OUT = 1 };

typedef struct insitra_engine {
    const insitra_config *cfg;
    insitra_backend *be;
    insitra_model model;
    insitra_zero zero;
    const insitra_comm *cp;             /* the cp ring: the ranks of this tp rank holding one sample's
                                           tokens, in token order */
    const insitra_comm *tp;             /* the ranks sharing each block's tensors (parallel.tp) */
    int64_t batch, mb, xs, ys, seq_len; /* seq_len: this rank's tokens per sample, T / (cp tp) */
    void *mem;                    /* the engine's own backend buffer: */
    double *stats;                /* [0] loss, [1] gradient sum of squares, [2] squared errors of a pass */
    insitra_step_scalars *scalars;
    int64_t *slots;               /* (batch) store rows of this step */
    insitra_feature_norm norm;    /* the feature maps (lib/normalize.h), in backend memory */
    float *x_raw;                 /* (mb, xs) a micro-batch's inputs in physical units */
    insitra_engine_store stores[2]; /* INSITRA_STORE_* */
    bool recorded;                /* a step was recorded for replay */
} insitra_engine;

/* Bytes by category, as insitra_memory_report and the planner give them (one formula). */
insitra_status insitra_engine_bytes_for(const insitra_config *cfg, int stage, int64_t dp,
                                        insitra_memory_usage *usage);

/* Local: the backend (comm picks the GPU from the node-local rank), the model, the stage's
 * buffers. dp: the ranks that reduce the gradients and share ZeRO's shards
 * (every dp x cp rank of this tp rank); cp: the ring of ranks holding one
 * sample's tokens (parallel.cp); tp: the ranks sharing each block's tensors
 * (parallel.tp). A rank holds its own T / (cp tp) tokens in the stores.
 * insitra_engine_connect follows once every rank got here. */
insitra_status insitra_engine_create(insitra_engine *e, const insitra_config *cfg, MPI_Comm comm,
                                     const insitra_comm *dp, const insitra_comm *cp, const insitra_comm *tp,
                                     const insitra_sample_store *store, const insitra_sample_store *held_out);
/* Collective over dp: the backend's process groups (dp, and cp and tp when above 1), then the
 * initial parameters. */
insitra_status insitra_engine_connect(insitra_engine *e);
void insitra_engine_free(insitra_engine *e);

/* The n samples host store `which` (INSITRA_STORE_*) holds from slot first on
 * (wrapping), into the backend's store: from x, y (host, or memory of the
 * backend's device). */
insitra_status insitra_engine_store_samples(insitra_engine *e, int which, int64_t first, int64_t n,
                                            const float *x, const float *y);
/* The backend's store rows [first, first + n) (wrapping) into the host store arrays. */
insitra_status insitra_engine_fetch_samples(insitra_engine *e, int which, int64_t first, int64_t n,
                                            float *store_x, float *store_y);

/* The feature maps every later pass applies: fm (host, its arrays one block
 * in the order insitra_feature_norm_carve lays them out) into the backend's copy. */
insitra_status insitra_engine_set_norm(insitra_engine *e, const insitra_feature_norm *fm);

/* One optimizer step over the store rows slots[0..batch) at step t (1-based)
 * and learning rate lr. Returns the global loss and gradient norm; a
 * non-finite one leaves the parameters as they were. */
insitra_status insitra_engine_step(insitra_engine *e, const int64_t *slots, int64_t t, double lr,
                                   double *loss, double *grad_norm);

/* Collective over dp: forward of n host samples in micro-batches (chunks is
 * the agreed count of forwards, so every rank joins the stage-3 gathers).
 * y_out (host, optional) receives the outputs; with y, *sse the sum of
 * squared errors. */
insitra_status insitra_engine_forward(insitra_engine *e, int64_t n, int64_t chunks, const float *x,
                                      const float *y, float *y_out, double *sse);

/* Collective over dp: the forward of every held-out sample of this rank in
 * micro-batches (chunks agreed, as for insitra_engine_forward); *sse the sum
 * of squared errors against the targets as the model learns them (the
 * training loss's units). rows: host scratch of micro-batch size. */
insitra_status insitra_engine_validate(insitra_engine *e, int64_t chunks, int64_t *rows, double *sse);

/* Host time blocked on collectives in the last step, and the part of it in
 * the context-parallel attention ring's waits. */
double insitra_engine_wait_seconds(const insitra_engine *e);
double insitra_engine_ring_wait_seconds(const insitra_engine *e);

#endif /* INSITRA_ENGINE_H */
