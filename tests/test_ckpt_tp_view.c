/*
 * The checkpoint module at parallel.tp > 1 without a trainer: a state view
 * (ckpt/ckpt_state.h) built here as a trainer at that tp would hold it, its
 * local tensors cut from known whole ones (lib/tp_params.h), saved by
 * insitra_ckpt_save and loaded by insitra_ckpt_load at another tp, rank
 * count and ZeRO stage. A chain of processes sharing DIR (CTest fixtures):
 *
 *   write DIR TP STAGE   the view at step 11 saved into DIR
 *   read DIR TP STAGE    loaded: every rank's parameters and AdamW moments are
 *                        its part of the known whole ones, exactly; the model
 *                        reader of exports and surrogates (one process, the
 *                        whole datasets, every CRC32C) reads the whole ones
 *
 * The values are a function of the whole tensors' element index, so a piece
 * put in the wrong place, or a CRC share combined wrong, fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "ckpt_model.h"
#include "ckpt_state.h"
#include "test_util.h"
#include "tp_params.h"

enum { STEP = 11 };

/* Group g's (parameters, m, v) known whole values. */
static float known(int g, int64_t i)
{
    return (float)(g == 2 ? 1e-3 * (double)(i % 97) : sin(0.1 * (double)i + g));
}

typedef struct view {
    insitra_comm world, grad;
    insitra_config *cfg;
    insitra_param_layout whole, local;
    insitra_shard_layout sl;
    float *buf[3]; /* parameters, m, v: whole local tensors or this rank's slots */
    bool full[3];
    int64_t step, cursor;
    insitra_rng sampler;
    insitra_sample_store store;
    insitra_ckpt_state st;
} view;

/* The view of a rank of the grid rank = grad_rank * tp + tp_rank at stage
 * (the trainer's grid with cp = 1), empty. */
static void view_make(insitra_test *t, view *v, int tp, int stage)
{
    memset(v, 0, sizeof *v);
    EXPECT_OK(t, insitra_comm_create(&v->world, MPI_COMM_WORLD), "world");
    EXPECT_OK(t, insitra_comm_split(&v->world, v->world.rank % tp, v->world.rank, &v->grad), "grad");
    v->cfg = insitra_test_config(t, "model: {seq_len: 8, in_features: 3, out_features: 2,\n"
                                    "        d_model: 16, n_layers: 2, n_heads: 4}\n");
    insitra_test_set(t, v->cfg, "parallel.tp", "%d", tp);
    insitra_test_set(t, v->cfg, "parallel.zero_stage", "%d", stage);
    insitra_model_dims d = insitra_config_model_dims(v->cfg);
    EXPECT_OK(t, insitra_param_layout_create(&v->whole, &d), "whole layout");
    d.tp = tp;
    EXPECT_OK(t, insitra_param_layout_create(&v->local, &d), "local layout");
    EXPECT_OK(t, insitra_shard_layout_create(&v->sl, &v->local, v->grad.size, v->grad.rank, 0), "shards");
    /* as lib/zero.c holds them: parameters whole below stage 3, moments whole at stage 0 */
    v->full[0] = stage < 3;
    v->full[1] = v->full[2] = stage == 0;
    for (int g = 0; g < 3; g++)
        v->buf[g] = calloc((size_t)(v->full[g] ? v->local.total : v->sl.total), sizeof(float));
    insitra_rng_seed(&v->sampler, 1, 1 + (uint64_t)v->grad.rank);
    EXPECT_OK(t, insitra_sample_store_create(&v->store, 4, 8 * 3, 8 * 2), "store");
    v->st = (insitra_ckpt_state){
        .world = &v->world, .dp = v->grad.size, .tp = tp, .tp_rank = v->world.rank % tp, .cfg = v->cfg,
        .layout = &v->local, .shards = &v->sl, .zero_stage = stage,
        .params = v->full[0] ? v->buf[0] : NULL, .param_shard = v->full[0] ? NULL : v->buf[0],
        .m = v->buf[1], .v = v->buf[2], .step = &v->step, .sampler = &v->sampler,
        .sample_cursor = &v->cursor, .store = &v->store,
    };
}

static void view_free(view *v)
{
    for (int g = 0; g < 3; g++) free(v->buf[g]);
    insitra_sample_store_free(&v->store);
    insitra_shard_layout_free(&v->sl);
    insitra_param_layout_free(&v->local);
    insitra_param_layout_free(&v->whole);
    insitra_config_free(v->cfg);
    insitra_comm_free(&v->grad);
    insitra_comm_free(&v->world);
}

/* What group g of this rank must hold: its part of the known whole tensors,
 * as its whole local tensors or its slots of them. */
static float *expected(const view *v, int g)
{
    float *w = malloc((size_t)v->whole.total * sizeof(float)), *l = malloc((size_t)v->local.total * sizeof(float));
    for (int64_t i = 0; i < v->whole.total; i++) w[i] = known(g, i);
    insitra_tp_params_slice(&v->whole, w, &v->local, v->st.tp_rank, l);
    free(w);
    if (v->full[g]) return l;
    float *slots = calloc((size_t)v->sl.total, sizeof(float));
    for (int64_t i = 0; i < v->local.num_tensors; i++) {
        const insitra_tensor_desc *d = &v->local.tensors[i];
        const int64_t first = v->sl.rank * v->sl.len[i], n = insitra_shard_count(&v->sl, i, d->numel, v->sl.rank);
        if (n > 0) memcpy(slots + v->sl.offset[i], l + d->offset + first, (size_t)n * sizeof(float));
    }
    free(l);
    return slots;
}

static void write_mode(insitra_test *t, const char *dir, int tp, int stage)
{
    view v;
    view_make(t, &v, tp, stage);
    for (int g = 0; g < 3; g++) {
        float *e = expected(&v, g);
        memcpy(v.buf[g], e, (size_t)(v.full[g] ? v.local.total : v.sl.total) * sizeof(float));
        free(e);
    }
    v.step = STEP;
    char path[4096] = "";
    EXPECT_OK(t, insitra_ckpt_save(&v.st, dir, path, sizeof path), "save");
    if (t->rank == 0) printf("saved at tp %d, stage %d, %d ranks: %s\n", tp, stage, t->size, path);
    view_free(&v);
}

static void read_mode(insitra_test *t, const char *dir, int tp, int stage)
{
    view v;
    view_make(t, &v, tp, stage);
    char path[4096] = "";
    insitra_ckpt_touched touched;
    EXPECT_OK(t, insitra_ckpt_load(&v.st, dir, path, sizeof path, &touched), "load");
    EXPECT(t, v.step == STEP, "step %lld after the load", (long long)v.step);
    const char *what[3] = {"parameters", "AdamW m", "AdamW v"};
    for (int g = 0; g < 3; g++) {
        float *e = expected(&v, g);
        const int64_t n = v.full[g] ? v.local.total : v.sl.total;
        EXPECT(t, memcmp(e, v.buf[g], (size_t)n * sizeof(float)) == 0,
               "tp %d rank %d, stage %d: %s are not this rank's part of the saved ones", tp, t->rank, stage,
               what[g]);
        free(e);
    }
    /* the whole tensors, as an export or a surrogate reads a checkpoint */
    insitra_model_file f;
    if (t->rank == 0 && EXPECT_OK(t, insitra_model_file_read(path, &f), "model file read")) {
        int bad = 0;
        for (int64_t i = 0; i < f.num_params; i++) bad += f.params[i] != known(0, i);
        EXPECT(t, f.num_params == v.whole.total && bad == 0, "the model reader: %d of %lld parameters wrong", bad,
               (long long)f.num_params);
        insitra_model_file_free(&f);
    }
    if (t->rank == 0)
        printf("loaded at tp %d, stage %d, %d ranks from %s: every part exact\n", tp, stage, t->size, path);
    view_free(&v);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "ckpt_tp_view");
    if (argc < 5) {
        EXPECT(&t, false, "usage: test_ckpt_tp_view write|read DIR TP STAGE");
        return insitra_test_end(&t);
    }
    const char *mode = argv[1], *dir = argv[2];
    const int tp = atoi(argv[3]), stage = atoi(argv[4]);
    if (t.size % tp != 0) EXPECT(&t, false, "tp %d does not divide %d ranks", tp, t.size);
    else if (strcmp(mode, "write") == 0) write_mode(&t, dir, tp, stage);
    else if (strcmp(mode, "read") == 0) read_mode(&t, dir, tp, stage);
    else EXPECT(&t, false, "unknown mode '%s'", mode);
    return insitra_test_end(&t);
}
