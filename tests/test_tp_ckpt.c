/*
 * Checkpoints and exports across parallel.tp (issue #18, docs/checkpoint.md),
 * a chain of processes sharing DIR (CTest fixtures):
 *
 *   write DIR TP STAGE   6 steps at parallel.tp = TP and ZeRO stage STAGE on
 *                        every rank given (dp = ranks / TP); a checkpoint; the
 *                        whole parameters and AdamW moments to DIR/state.bin
 *                        and the predictions of fixed inputs to DIR/pred.bin.
 *                        An export, and surrogates made from it and from the
 *                        live trainer, predict what the trainer does (and
 *                        tools/insitra_torch.py's, tests/test_tp_torch.py).
 *   read DIR TP STAGE    another tp, stage and rank count: the loaded state,
 *                        gathered whole, equals state.bin bit for bit; the
 *                        predictions equal pred.bin to rounding (the tp
 *                        split changes the order of the GEMMs' sums), and so
 *                        do a surrogate's made from the checkpoint file (which
 *                        checks every tensor's CRC32C over the whole tensor);
 *                        training goes on.
 *
 *   straight DIR TP STAGE  with the samples in the checkpoint: 6 steps, a
 *                        checkpoint, 4 more steps whose losses go to DIR
 *   resume DIR TP STAGE  the same grid: load, 4 steps, the same losses bit
 *                        for bit (samplers and samples restored exactly)
 *
 * With "norm" after STAGE: data.normalize running and the samples in the
 * checkpoint. The statistics, counted per token slice, load at another tp as
 * the same statistics (the predictions say so); the samples, stored whole,
 * load at another tp (each rank its token slice of them).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insitra.h"
#include "test_util.h"
#include "tp_params.h"
#include "trainer.h"

enum { T = 8, FI = 3, FO = 2, N = 5, STEPS = 6 };

/* Predictions across tp agree to rounding: the largest error over the
 * largest prediction. */
#define PRED_TOL 1e-5

static bool normalised, keep_samples;

static insitra_trainer *make(insitra_test *t, int tp, int stage)
{
    insitra_config *cfg = insitra_test_config(t, "model: {seq_len: 8, in_features: 3, out_features: 2,\n"
                                                 "        d_model: 16, n_layers: 2, n_heads: 2}\n"
                                                 "training: {batch_size: 4, micro_batch_size: 2, seed: 7}\n"
                                                 "optimizer: {lr: 1.0e-2, warmup_steps: 2, decay_steps: 20}\n"
                                                 "data: {capacity: 32}\n");
    if (!cfg) MPI_Abort(MPI_COMM_WORLD, 2);
    insitra_test_set(t, cfg, "parallel.tp", "%d", tp);
    insitra_test_set(t, cfg, "parallel.zero_stage", "%d", stage);
    if (normalised) insitra_test_set(t, cfg, "data.normalize", "running");
    if (normalised || keep_samples) insitra_test_set(t, cfg, "checkpoint.include_samples", "true");
    insitra_trainer *tr = NULL;
    if (insitra_trainer_create(&tr, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK) {
        printf("rank %d: create at tp %d, stage %d: %s\n", t->rank, tp, stage, insitra_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    insitra_config_free(cfg);
    return tr;
}

/* 16 samples per rank, this rank's token slice of each (T / tp tokens at tp > 1). */
static void push(insitra_test *t, insitra_trainer *tr, int salt)
{
    static float x[16 * T * FI], y[16 * T * FO];
    int64_t Tl = 0;
    EXPECT_OK(t, insitra_trainer_sample_shape(tr, &Tl, NULL, NULL), "sample_shape");
    insitra_test_fill_wave(x, 16 * Tl * FI, sin, 0.23, t->rank + salt, 1);
    insitra_test_fill_wave(y, 16 * Tl * FO, cos, 0.11, salt - t->rank, 1);
    EXPECT_OK(t, insitra_push_samples(tr, 16, x, y), "push");
}

/* The fixed inputs every rank predicts. */
static void inputs(float *x)
{
    insitra_test_fill_wave(x, N * T * FI, sin, 0.31, 0.5, 1.5);
}

static void file_io(insitra_test *t, const char *dir, const char *name, void *data, size_t bytes, int write)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, write ? "wb" : "rb");
    const size_t done = f ? (write ? fwrite(data, 1, bytes, f) : fread(data, 1, bytes, f)) : 0;
    if (f) fclose(f);
    if (done != bytes) {
        printf("rank %d: cannot %s %s\n", t->rank, write ? "write" : "read", path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

/* Parameters and AdamW moments of the whole model (3 x *n floats), on every
 * rank: gathered over ZeRO's ranks, then over the tp group. */
static float *whole_state(insitra_test *t, insitra_trainer *tr, int64_t *n)
{
    const insitra_param_layout *local = &tr->engine.model.layout;
    insitra_model_dims dims = tr->engine.model.dims;
    dims.tp = 1;
    insitra_param_layout whole;
    EXPECT_OK(t, insitra_param_layout_create(&whole, &dims), "whole layout");
    const int64_t P = local->total, W = whole.total;
    float *l = malloc((size_t)(3 * P) * sizeof(float)), *scratch = malloc((size_t)P * sizeof(float));
    float *w = malloc((size_t)(3 * W) * sizeof(float));
    EXPECT_OK(t, insitra_zero_gather_state(&tr->engine.zero, l, l + P, l + 2 * P), "gather state");
    for (int k = 0; k < 3; k++)
        EXPECT_OK(t, insitra_tp_params_gather(&tr->tp, local, l + k * P, scratch, &whole, w + k * W), "tp gather");
    free(l);
    free(scratch);
    insitra_param_layout_free(&whole);
    *n = W;
    return w;
}

/* insitra_predict of the whole samples x into pred (N, T, FO) on every rank:
 * each rank predicts its token slice of them (T / tp tokens at tp > 1, as
 * it is pushed), and the slices are put together (data replicas predict
 * the same). */
static void predict_whole(insitra_test *t, insitra_trainer *tr, const float *x, float *pred)
{
    int64_t Tl = 0;
    EXPECT_OK(t, insitra_trainer_sample_shape(tr, &Tl, NULL, NULL), "sample_shape");
    const int64_t slice = insitra_model_token_slice(&tr->engine.model);
    float *xl = malloc((size_t)(N * Tl * FI) * sizeof(float)), *yl = malloc((size_t)(N * Tl * FO) * sizeof(float));
    for (int64_t s = 0; s < N; s++)
        memcpy(xl + s * Tl * FI, x + (s * T + slice * Tl) * FI, (size_t)(Tl * FI) * sizeof(float));
    EXPECT_OK(t, insitra_predict(tr, N, xl, yl), "predict");
    /* every rank's slice index and predictions */
    int64_t *slices = malloc((size_t)t->size * sizeof(int64_t));
    float *all = malloc((size_t)(t->size * N * Tl * FO) * sizeof(float));
    MPI_Allgather(&slice, 1, MPI_INT64_T, slices, 1, MPI_INT64_T, MPI_COMM_WORLD);
    MPI_Allgather(yl, (int)(N * Tl * FO), MPI_FLOAT, all, (int)(N * Tl * FO), MPI_FLOAT, MPI_COMM_WORLD);
    for (int r = 0; r < t->size; r++)
        for (int64_t s = 0; s < N; s++)
            memcpy(pred + (s * T + slices[r] * Tl) * FO, all + ((int64_t)r * N + s) * Tl * FO,
                   (size_t)(Tl * FO) * sizeof(float));
    free(xl);
    free(yl);
    free(slices);
    free(all);
}

/* A surrogate from path (every rank) predicts ref to rounding. */
static void surrogate_matches(insitra_test *t, const char *path, const float *x, const float *ref, const char *what)
{
    static float got[N * T * FO];
    insitra_surrogate *s = NULL;
    if (!EXPECT_OK(t, insitra_surrogate_create(&s, path, NULL, 2, MPI_COMM_WORLD), what)) return;
    memset(got, 0, sizeof got);
    EXPECT_OK(t, insitra_surrogate_predict(s, N, x, got), what);
    insitra_test_within(t, what, insitra_test_max_error(got, ref, N * T * FO), PRED_TOL);
    insitra_surrogate_free(s);
}

static void write_mode(insitra_test *t, const char *dir, int tp, int stage)
{
    insitra_trainer *tr = make(t, tp, stage);
    push(t, tr, 0);
    for (int k = 0; k < STEPS; k++) EXPECT_OK(t, insitra_train_step(tr, NULL), "train_step");
    char path[4096];
    EXPECT_OK(t, insitra_checkpoint_save(tr, dir, path, sizeof path), "checkpoint_save");
    static float x[N * T * FI], pred[N * T * FO], got[N * T * FO];
    inputs(x);
    predict_whole(t, tr, x, pred);
    int64_t W = 0;
    float *state = whole_state(t, tr, &W);
    if (t->rank == 0) {
        file_io(t, dir, "state.bin", state, (size_t)(3 * W) * sizeof(float), 1);
        file_io(t, dir, "pred.bin", pred, sizeof pred, 1);
        file_io(t, dir, "x.bin", x, sizeof x, 1); /* for test_tp_torch.py */
    }
    /* the export holds the whole model: a surrogate made from it predicts what the trainer does */
    char exported[4200];
    snprintf(exported, sizeof exported, "%s/export.h5", dir);
    EXPECT_OK(t, insitra_export_save(tr, exported), "export_save");
    surrogate_matches(t, exported, x, pred, "surrogate from the export");
    insitra_surrogate *live = NULL;
    if (EXPECT_OK(t, insitra_surrogate_create_from_trainer(&live, tr, NULL, 2), "surrogate from the trainer")) {
        EXPECT_OK(t, insitra_surrogate_predict(live, N, x, got), "predict (live)");
        insitra_test_within(t, "surrogate from the trainer", insitra_test_max_error(got, pred, N * T * FO),
                            PRED_TOL);
        insitra_surrogate_free(live);
    }
    if (t->rank == 0)
        printf("written at tp %d, stage %d, %d ranks: %s (%lld parameters)\n", tp, stage, t->size, path,
               (long long)W);
    free(state);
    insitra_trainer_free(tr);
}

static void read_mode(insitra_test *t, const char *dir, int tp, int stage)
{
    insitra_trainer *tr = make(t, tp, stage);
    char path[4096] = "";
    EXPECT_OK(t, insitra_checkpoint_load(tr, dir, path, sizeof path), "checkpoint_load");
    EXPECT(t, tr->step == STEPS, "step after the load is %lld", (long long)tr->step);
    if (normalised) {
        int64_t held = -1;
        insitra_samples_stored(tr, &held);
        EXPECT(t, held > 0, "%lld samples after a load at tp %d", (long long)held, tp);
    }
    int64_t W = 0;
    float *got = whole_state(t, tr, &W), *want = malloc((size_t)(3 * W) * sizeof(float));
    file_io(t, dir, "state.bin", want, (size_t)(3 * W) * sizeof(float), 0);
    const char *what[3] = {"parameters", "AdamW m", "AdamW v"};
    for (int k = 0; k < 3; k++)
        EXPECT(t, memcmp(got + k * W, want + k * W, (size_t)W * sizeof(float)) == 0,
               "%s differ from the saved ones after loading at tp %d, stage %d", what[k], tp, stage);
    static float x[N * T * FI], pred[N * T * FO], ref[N * T * FO];
    inputs(x);
    file_io(t, dir, "pred.bin", ref, sizeof ref, 0);
    predict_whole(t, tr, x, pred);
    insitra_test_within(t, "predictions after the resume", insitra_test_max_error(pred, ref, N * T * FO), PRED_TOL);
    surrogate_matches(t, path, x, ref, "surrogate from the checkpoint");
    /* training goes on */
    push(t, tr, 1);
    insitra_metrics m = {0};
    for (int k = 0; k < 2; k++) EXPECT_OK(t, insitra_train_step(tr, &m), "train_step after the load");
    EXPECT(t, isfinite(m.loss) && tr->step == STEPS + 2, "after the load: loss %g, step %lld", m.loss,
           (long long)tr->step);
    if (t->rank == 0)
        printf("read at tp %d, stage %d, %d ranks from %s: state exact, loss %.6g after 2 more steps\n", tp, stage,
               t->size, path, m.loss);
    free(got);
    free(want);
    insitra_trainer_free(tr);
}

static void straight_mode(insitra_test *t, const char *dir, int tp, int stage)
{
    insitra_trainer *tr = make(t, tp, stage);
    push(t, tr, 0);
    for (int k = 0; k < STEPS; k++) EXPECT_OK(t, insitra_train_step(tr, NULL), "train_step");
    EXPECT_OK(t, insitra_checkpoint_save(tr, dir, NULL, 0), "checkpoint_save");
    double losses[4];
    for (int k = 0; k < 4; k++) {
        insitra_metrics m = {0};
        EXPECT_OK(t, insitra_train_step(tr, &m), "train_step after the save");
        losses[k] = m.loss;
    }
    if (t->rank == 0) file_io(t, dir, "losses.bin", losses, sizeof losses, 1);
    insitra_trainer_free(tr);
}

static void resume_mode(insitra_test *t, const char *dir, int tp, int stage)
{
    insitra_trainer *tr = make(t, tp, stage); /* no push: the samples come from the checkpoint */
    EXPECT_OK(t, insitra_checkpoint_load(tr, dir, NULL, 0), "checkpoint_load");
    double losses[4], want[4];
    for (int k = 0; k < 4; k++) {
        insitra_metrics m = {0};
        EXPECT_OK(t, insitra_train_step(tr, &m), "train_step after the load");
        losses[k] = m.loss;
    }
    file_io(t, dir, "losses.bin", want, sizeof want, 0);
    EXPECT(t, memcmp(losses, want, sizeof want) == 0, "resumed losses differ: %.17g vs %.17g (last)", losses[3],
           want[3]);
    if (t->rank == 0)
        printf("resumed at tp %d, stage %d on %d ranks: 4 steps %s (last loss %.9g)\n", tp, stage, t->size,
               memcmp(losses, want, sizeof want) == 0 ? "bit-identical" : "DIFFERENT", losses[3]);
    insitra_trainer_free(tr);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "tp_ckpt");
    if (argc < 5) {
        EXPECT(&t, false, "usage: test_tp_ckpt write|read|straight|resume DIR TP STAGE [norm]");
        return insitra_test_end(&t);
    }
    const char *mode = argv[1], *dir = argv[2];
    const int tp = atoi(argv[3]), stage = atoi(argv[4]);
    normalised = argc > 5 && strcmp(argv[5], "norm") == 0;
    keep_samples = strcmp(mode, "straight") == 0 || strcmp(mode, "resume") == 0;
    if (strcmp(mode, "write") == 0) write_mode(&t, dir, tp, stage);
    else if (strcmp(mode, "straight") == 0) straight_mode(&t, dir, tp, stage);
    else if (strcmp(mode, "resume") == 0) resume_mode(&t, dir, tp, stage);
    else if (strcmp(mode, "read") == 0) read_mode(&t, dir, tp, stage);
    else EXPECT(&t, false, "unknown mode '%s'", mode);
    return insitra_test_end(&t);
}
