/*
 * Normalisation, residual targets and held-out samples (lib/normalize.h,
 * data.normalize, model.residual, data.validation_fraction):
 *   moments      pushes of uneven sizes accumulated (batch moments merged by
 *                Chan's update) equal a two-pass mean and variance in long
 *                double, inputs and increments;
 *   combine      every rank's share combined in rank order equals one
 *                accumulator over the union, and every rank has the same bits
 *                (run on 2 ranks as normalize_np2);
 *   physical     predict = outputs(model(inputs(x))) with the host maps: the
 *                caller sees physical units, the residual added once;
 *   residual     one explicit heat step with a 1% increment, learned with
 *                normalisation and residual targets, is at least 50x better
 *                than "no change" on held-out fields, and 10x better than
 *                the same model on raw values;
 *   held-out     data.validation_fraction = 0.25: a quarter of the pushes go
 *                to the held-out store and none into the training store; the
 *                validation loss is in the metrics at progress steps only;
 *   config       bad residual maps and a frozen mode without a limit are
 *                refused naming the key;
 *   units        a checkpoint of other normalisation settings (every file
 *                from before them) is refused naming data.normalize; the
 *                same settings load the statistics back.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normalize.h"
#include "rng.h"
#include "test_util.h"
#include "trainer.h"

/* ---- moments ---- */

static void two_pass(const float *a, const float *b, int64_t rows, int64_t w, int64_t bw, const int32_t *map,
                     int64_t f, long double *mean, long double *var)
{
    long double s = 0, q = 0;
    const bool sub = map && map[f] >= 0;
    for (int64_t r = 0; r < rows; r++) s += (long double)a[r * w + f] - (sub ? (long double)b[r * bw + map[f]] : 0);
    *mean = s / rows;
    for (int64_t r = 0; r < rows; r++) {
        const long double d = (long double)a[r * w + f] - (sub ? (long double)b[r * bw + map[f]] : 0) - *mean;
        q += d * d;
    }
    *var = q / rows;
}

static void test_moments(insitra_test *T)
{
    enum { ROWS = 5000, W = 3, BW = 4 };
    static float a[ROWS * W], b[ROWS * BW];
    insitra_rng rng;
    insitra_rng_seed(&rng, 7, 0);
    /* a large offset and a small spread: where a one-pass sum of squares fails */
    for (int i = 0; i < ROWS * W; i++) a[i] = 1000.0f + (float)insitra_rng_uniform(&rng);
    for (int i = 0; i < ROWS * BW; i++) b[i] = 1000.0f + (float)(0.001 * insitra_rng_uniform(&rng));
    const int32_t map[W] = {2, -1, 0};
    for (int with_map = 0; with_map < 2; with_map++) {
        double mean[W] = {0}, m2[W] = {0};
        insitra_moments m = {.width = W, .count = 0, .mean = mean, .m2 = m2};
        const int64_t chunks[] = {1, 7, 100, 892, 2000, 2000};
        int64_t at = 0;
        for (size_t k = 0; k < sizeof chunks / sizeof *chunks; k++) {
            insitra_moments_add(&m, chunks[k], a + at * W, b + at * BW, BW, with_map ? map : NULL);
            at += chunks[k];
        }
        EXPECT(T, m.count == ROWS, "count %lld", (long long)m.count);
        double worst_mean = 0, worst_var = 0;
        for (int f = 0; f < W; f++) {
            long double mu, var;
            two_pass(a, b, ROWS, W, BW, with_map ? map : NULL, f, &mu, &var);
            worst_mean = fmax(worst_mean, insitra_test_rel_error(mean[f], (double)mu));
            worst_var = fmax(worst_var, insitra_test_rel_error(m2[f] / ROWS, (double)var));
        }
        insitra_test_within(T, with_map ? "merged mean vs two-pass, increments" : "merged mean vs two-pass",
                            worst_mean, 1e-13);
        insitra_test_within(T, with_map ? "merged variance vs two-pass, increments" : "merged variance vs two-pass",
                            worst_var, 1e-9);
    }
}

/* ---- combine over ranks ---- */

static void apply_settings(insitra_test *T, insitra_config *cfg, const char *settings);

/* A small model, then "key=value" settings separated by ';'. */
static insitra_config *small_config(insitra_test *T, const char *settings)
{
    insitra_config *cfg = insitra_test_config(
        T, "model: {seq_len: 4, in_features: 3, out_features: 2, d_model: 16, n_layers: 1, n_heads: 2}\n"
           "training: {batch_size: 4, seed: 11}\n"
           "data: {capacity: 64}\n");
    apply_settings(T, cfg, settings);
    return cfg;
}

static void apply_settings(insitra_test *T, insitra_config *cfg, const char *settings)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", settings);
    for (char *save = NULL, *kv = strtok_r(buf, ";", &save); cfg && kv; kv = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) continue;
        *eq = '\0';
        if (insitra_config_set(cfg, kv, eq + 1) != INSITRA_STATUS_OK) {
            EXPECT(T, false, "%s = %s: %s", kv, eq + 1, insitra_last_error());
        }
    }
}

static void test_combine(insitra_test *T)
{
    enum { S = 40, TOK = 4, FI = 3, FO = 2 };
    static float x[S][TOK][FI], y[S][TOK][FO];
    insitra_test_fill_wave(&x[0][0][0], S * TOK * FI, sin, 0.37, 0.5, 3.0);
    insitra_test_fill_wave(&y[0][0][0], S * TOK * FO, cos, 0.11, 0.2, 2.0);
    insitra_config *cfg = small_config(T, "data.normalize=running;model.residual=true;model.residual_inputs=2, 0");
    if (!cfg) return;
    /* every rank its own share of the samples, uneven */
    insitra_normalize many, one;
    EXPECT_OK(T, insitra_normalize_create(&many, cfg, T->size), "create");
    EXPECT_OK(T, insitra_normalize_create(&one, cfg, 1), "create");
    int64_t first = 0;
    for (int r = 0; r < T->size; r++) {
        const int64_t n = r == T->size - 1 ? S - first : (S / T->size) + r + 1;
        if (r == T->rank) insitra_normalize_observe(&many, n, &x[first][0][0], &y[first][0][0]);
        first += n;
    }
    EXPECT_OK(T, insitra_normalize_combine(&many, MPI_COMM_WORLD, 0), "combine");
    insitra_normalize_observe(&one, S, &x[0][0][0], &y[0][0][0]);
    EXPECT_OK(T, insitra_normalize_combine(&one, MPI_COMM_SELF, 0), "combine one");
    EXPECT(T, many.samples == S && many.x.count == S * TOK, "samples %lld", (long long)many.samples);
    double err = 0;
    for (int f = 0; f < FI; f++) {
        err = fmax(err, insitra_test_rel_error(many.x.mean[f], one.x.mean[f]));
        err = fmax(err, insitra_test_rel_error(many.x.m2[f], one.x.m2[f]));
    }
    for (int o = 0; o < FO; o++) {
        err = fmax(err, insitra_test_rel_error(many.y.mean[o], one.y.mean[o]));
        err = fmax(err, insitra_test_rel_error(many.y.m2[o], one.y.m2[o]));
    }
    insitra_test_within(T, "ranks combined vs one accumulator over the union", err, 1e-12);
    /* the same bits everywhere: rank 0's statistics against each rank's */
    double mine[2 * (FI + FO)], root[2 * (FI + FO)];
    memcpy(mine, many.x.mean, sizeof(double) * FI);
    memcpy(mine + FI, many.x.m2, sizeof(double) * FI);
    memcpy(mine + 2 * FI, many.y.mean, sizeof(double) * FO);
    memcpy(mine + 2 * FI + FO, many.y.m2, sizeof(double) * FO);
    memcpy(root, mine, sizeof mine);
    MPI_Bcast(root, 2 * (FI + FO), MPI_DOUBLE, 0, MPI_COMM_WORLD);
    EXPECT(T, memcmp(root, mine, sizeof mine) == 0, "rank %d's statistics differ from rank 0's", T->rank);
    /* the coefficients: standardised values have mean 0 and variance 1 */
    EXPECT(T, fabs(many.coef.x_mean[1] - (float)one.x.mean[1]) == 0, "x_mean coefficient");
    EXPECT(T, many.coef.residual[0] == 2 && many.coef.residual[1] == 0, "residual map %d %d",
           many.coef.residual[0], many.coef.residual[1]);
    insitra_normalize_free(&many);
    insitra_normalize_free(&one);
    insitra_config_free(cfg);
}

/* ---- predict in physical units ---- */

static void test_physical(insitra_test *T)
{
    enum { S = 24, TOK = 4, FI = 3, FO = 2 };
    static float x[S][TOK][FI], y[S][TOK][FO], pred[S][TOK][FO], xh[S][TOK][FI], raw[S][TOK][FO];
    insitra_test_fill_wave(&x[0][0][0], S * TOK * FI, sin, 0.37, 0.5 + T->rank, 30.0);
    for (int s = 0; s < S; s++)
        for (int t = 0; t < TOK; t++) {
            y[s][t][0] = x[s][t][2] + 0.01f * x[s][t][1];
            y[s][t][1] = 500.0f + x[s][t][0];
        }
    insitra_config *cfg = small_config(T, "data.normalize=frozen;data.normalize_samples=8;model.residual=true;"
                                          "model.residual_inputs=2,0");
    insitra_trainer *t = NULL;
    if (!cfg || !EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create")) goto done;
    EXPECT_OK(T, insitra_push_samples(t, S, &x[0][0][0], &y[0][0][0]), "push");
    for (int k = 0; k < 3; k++) EXPECT_OK(T, insitra_train_step(t, NULL), "step");
    EXPECT(T, t->norm.frozen, "not frozen after %lld samples", (long long)t->norm.samples);
    EXPECT(T, t->norm.samples == (int64_t)S * T->size, "samples %lld", (long long)t->norm.samples);
    EXPECT(T, t->norm.coef.y_mean[1] > 100.0f, "y_mean[1] = %g: the increment's mean, about 500 - x", t->norm.coef.y_mean[1]);
    EXPECT_OK(T, insitra_predict(t, S, &x[0][0][0], &pred[0][0][0]), "predict");
    /* the same model with identity maps, fed host-normalised inputs */
    const insitra_feature_norm *fm = &t->norm.coef;
    insitra_feature_norm_inputs(fm, S * TOK, &x[0][0][0], &xh[0][0][0]);
    char *ident_mem = calloc(1, (size_t)insitra_feature_norm_bytes(FI, FO));
    insitra_feature_norm id;
    insitra_feature_norm_carve(&id, ident_mem, FI, FO);
    for (int i = 0; i < FI; i++) id.x_inv_std[i] = 1.0f;
    for (int o = 0; o < FO; o++) id.y_std[o] = id.y_inv_std[o] = 1.0f, id.residual[o] = -1;
    EXPECT_OK(T, insitra_engine_set_norm(&t->engine, &id), "identity maps");
    EXPECT_OK(T, insitra_predict(t, S, &xh[0][0][0], &raw[0][0][0]), "predict raw");
    insitra_feature_norm_outputs(fm, S * TOK, &x[0][0][0], &raw[0][0][0]);
    insitra_test_within(T, "predict vs host maps around the raw model", insitra_test_max_error(&pred[0][0][0], &raw[0][0][0], S * TOK * FO), 1e-6);
    EXPECT_OK(T, insitra_engine_set_norm(&t->engine, fm), "maps back");
    free(ident_mem);
    /* evaluate is in physical units: the squared error of predict's outputs */
    double loss = 0, sse = 0;
    EXPECT_OK(T, insitra_evaluate(t, S, &x[0][0][0], &y[0][0][0], &loss), "evaluate");
    for (int i = 0; i < S * TOK * FO; i++) {
        const double d = (double)(&pred[0][0][0])[i] - (&y[0][0][0])[i];
        sse += d * d;
    }
    double acc[2] = {sse, S * TOK * FO};
    MPI_Allreduce(MPI_IN_PLACE, acc, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    insitra_test_within(T, "evaluate vs squared error of predict", insitra_test_rel_error(loss, acc[0] / acc[1]), 1e-5);
done:
    insitra_trainer_free(t);
    insitra_config_free(cfg);
}

/* ---- a linear increment, learned ---- */

enum { HT = 16, HF = 3, H_TRAIN = 256, H_TEST = 32 };
#define HEAT_R 0.2

/* A random smooth periodic field u on HT points as tokens (u[i-1], u[i],
 * u[i+1]) around 1 (a temperature-like offset), and its heat step. */
static void heat_sample(insitra_rng *rng, float x[HT][HF], float y[HT])
{
    double a[3], b[3], u[HT];
    for (int k = 0; k < 3; k++) {
        a[k] = (2 * insitra_rng_uniform(rng) - 1) / (k + 1);
        b[k] = (2 * insitra_rng_uniform(rng) - 1) / (k + 1);
    }
    for (int i = 0; i < HT; i++) {
        u[i] = 2.0;
        for (int k = 0; k < 3; k++) {
            const double th = 2 * 3.141592653589793 * (k + 1) * i / HT;
            u[i] += 0.5 * (a[k] * cos(th) + b[k] * sin(th));
        }
    }
    for (int i = 0; i < HT; i++) {
        x[i][0] = (float)u[(i + HT - 1) % HT];
        x[i][1] = (float)u[i];
        x[i][2] = (float)u[(i + 1) % HT];
        y[i] = x[i][1] + (float)HEAT_R * (x[i][0] - 2 * x[i][1] + x[i][2]);
    }
}

/* Relative L2 error of the trained surrogate on the test fields. */
static double heat_error(insitra_test *T, const char *extra, int steps, float (*x)[HT][HF], float (*y)[HT],
                         float (*xt)[HT][HF], float (*yt)[HT])
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "model: {seq_len: %d, in_features: %d, out_features: 1, d_model: 32, n_layers: 1, n_heads: 4}\n"
             "training: {batch_size: 16, seed: 5}\n"
             "optimizer: {lr: 1.0e-2, min_lr: 1.0e-4, warmup_steps: 20, decay_steps: %d, weight_decay: 0.0}\n"
             "data: {capacity: %d}\n",
             HT, HF, steps, H_TRAIN);
    insitra_config *cfg = insitra_test_config(T, yaml);
    if (cfg) apply_settings(T, cfg, extra);
    insitra_trainer *t = NULL;
    static float pred[H_TEST][HT];
    double err = INFINITY;
    if (!cfg || !EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create") ||
        !EXPECT_OK(T, insitra_push_samples(t, H_TRAIN, &x[0][0][0], &y[0][0]), "push"))
        goto done;
    for (int s = 0; s < steps; s++)
        if (!EXPECT_OK(T, insitra_train_step(t, NULL), "train_step")) goto done;
    if (EXPECT_OK(T, insitra_predict(t, H_TEST, &xt[0][0][0], &pred[0][0]), "predict"))
        err = insitra_test_l2_error(&pred[0][0], &yt[0][0], H_TEST * HT);
done:
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    return err;
}

static void test_residual(insitra_test *T)
{
    static float x[H_TRAIN][HT][HF], y[H_TRAIN][HT], xt[H_TEST][HT][HF], yt[H_TEST][HT], same[H_TEST][HT];
    insitra_rng rng;
    insitra_rng_seed(&rng, 2024, 0);
    for (int n = 0; n < H_TRAIN; n++) heat_sample(&rng, x[n], y[n]);
    for (int n = 0; n < H_TEST; n++) heat_sample(&rng, xt[n], yt[n]);
    for (int n = 0; n < H_TEST; n++)
        for (int i = 0; i < HT; i++) same[n][i] = xt[n][i][1];
    const double no_change = insitra_test_l2_error(&same[0][0], &yt[0][0], H_TEST * HT);
    const int steps = 600;
    const double learned = heat_error(T, "data.normalize=frozen;data.normalize_samples=256;model.residual=true;"
                                         "model.residual_inputs=1",
                                      steps, x, y, xt, yt);
    const double raw = heat_error(T, "", steps, x, y, xt, yt);
    if (T->rank == 0)
        printf("heat step, %d training steps: relative L2 error %.3e normalised + residual, %.3e raw values, "
               "%.3e 'no change' (%.0fx better than no change, %.0fx better than raw)\n",
               steps, learned, raw, no_change, no_change / learned, raw / learned);
    EXPECT(T, learned * 50 < no_change, "normalised + residual: %.3e is not 50x below 'no change' %.3e", learned,
           no_change);
    EXPECT(T, learned * 10 < raw, "normalised + residual: %.3e is not 10x below raw values' %.3e", learned, raw);
}

/* ---- held-out samples ---- */

static void test_held_out(insitra_test *T)
{
    enum { S = 40, TOK = 4, FI = 3, FO = 2 };
    static float x[S][TOK][FI], y[S][TOK][FO];
    for (int s = 0; s < S; s++)
        for (int t = 0; t < TOK; t++) {
            for (int f = 0; f < FI; f++) x[s][t][f] = (float)s; /* the sample's number, to find it again */
            for (int o = 0; o < FO; o++) y[s][t][o] = (float)(s % 7);
        }
    insitra_config *cfg = small_config(T, "data.validation_fraction=0.25;data.normalize=running;log.every_steps=2");
    insitra_trainer *t = NULL;
    if (!cfg || !EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create")) goto done;
    EXPECT_OK(T, insitra_push_samples(t, 13, &x[0][0][0], &y[0][0][0]), "push 13");
    EXPECT_OK(T, insitra_push_samples(t, S - 13, &x[13][0][0], &y[13][0][0]), "push the rest");
    int64_t stored = -1;
    insitra_samples_stored(t, &stored);
    EXPECT(T, stored == 30 && t->held_out.count == 10, "training store %lld, held-out %lld (want 30, 10)",
           (long long)stored, (long long)t->held_out.count);
    EXPECT(T, t->norm.samples_new == 30, "statistics counted %lld samples, want the 30 trained on",
           (long long)t->norm.samples_new);
    /* every 4th sample (3, 7, 11, ...) is held out, and never in the training store */
    int wrong = 0;
    for (int64_t i = 0; i < t->store.count; i++) wrong += ((int)t->store.x[i * t->store.x_numel] % 4) == 3;
    for (int64_t i = 0; i < t->held_out.count; i++) wrong += ((int)t->held_out.x[i * t->held_out.x_numel] % 4) != 3;
    EXPECT(T, wrong == 0, "%d samples in the wrong store", wrong);
    insitra_metrics m;
    for (int k = 1; k <= 4; k++) {
        EXPECT_OK(T, insitra_train_step(t, &m), "step");
        EXPECT(T, (k % 2 == 0) == isfinite(m.validation_loss), "step %d: validation loss %g", k, m.validation_loss);
    }
    EXPECT(T, m.validation_loss > 0, "validation loss %g", m.validation_loss);
done:
    insitra_trainer_free(t);
    insitra_config_free(cfg);
}

/* ---- checkpoints of other units ---- */

/* A checkpoint of raw-unit weights (written without normalisation, as every
 * older file was) is refused by a normalising trainer naming the key, and
 * the other way round. */
static void test_checkpoint_units(insitra_test *T)
{
    enum { S = 8, TOK = 4, FI = 3, FO = 2 };
    static float x[S][TOK][FI], y[S][TOK][FO];
    insitra_test_fill_wave(&x[0][0][0], S * TOK * FI, sin, 0.37, 0.5, 3.0);
    insitra_test_fill_wave(&y[0][0][0], S * TOK * FO, cos, 0.11, 0.2, 2.0);
    char off[64], on[64]; /* one pair per rank count: normalize and normalize_np2 may run at once */
    snprintf(off, sizeof off, "normalize_ckpt_np%d_off", T->size);
    snprintf(on, sizeof on, "normalize_ckpt_np%d_on", T->size);
    const char *dirs[2] = {off, on};
    const char *settings[2] = {"", "data.normalize=running"};
    for (int k = 0; k < 2; k++) {
        insitra_config *cfg = small_config(T, settings[k]);
        insitra_trainer *t = NULL;
        if (cfg && EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create")) {
            EXPECT_OK(T, insitra_push_samples(t, S, &x[0][0][0], &y[0][0][0]), "push");
            EXPECT_OK(T, insitra_train_step(t, NULL), "step");
            EXPECT_OK(T, insitra_checkpoint_save(t, dirs[k], NULL, 0), "save");
        }
        insitra_trainer_free(t);
        insitra_config_free(cfg);
    }
    for (int k = 0; k < 2; k++) {
        insitra_config *cfg = small_config(T, settings[1 - k]);
        insitra_trainer *t = NULL;
        if (cfg && EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create")) {
            const insitra_status s = insitra_checkpoint_load(t, dirs[k], NULL, 0);
            EXPECT(T, s != INSITRA_STATUS_OK && strstr(insitra_last_error(), "'data.normalize'"),
                   "loading %s with other normalisation: status %d, %s", dirs[k], (int)s, insitra_last_error());
        }
        insitra_trainer_free(t);
        insitra_config_free(cfg);
    }
    /* the same settings load, and the statistics come back */
    insitra_config *cfg = small_config(T, settings[1]);
    insitra_trainer *t = NULL;
    if (cfg && EXPECT_OK(T, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create")) {
        EXPECT_OK(T, insitra_checkpoint_load(t, dirs[1], NULL, 0), "load");
        EXPECT(T, t->norm.samples == (int64_t)S * T->size, "statistics of %lld samples after the load",
               (long long)t->norm.samples);
    }
    insitra_trainer_free(t);
    insitra_config_free(cfg);
}

/* ---- configuration ---- */

static void expect_refused(insitra_test *T, const char *settings, const char *needle)
{
    insitra_config *cfg = small_config(T, settings);
    if (!cfg) return;
    const insitra_status s = insitra_config_validate(cfg);
    EXPECT(T, s == INSITRA_STATUS_CONFIG_ERROR && strstr(insitra_last_error(), needle),
           "'%s' gave status %d: %s", settings, (int)s, insitra_last_error());
    insitra_config_free(cfg);
}

static void test_config(insitra_test *T)
{
    expect_refused(T, "model.residual=true;model.residual_inputs=0", "one per output feature");
    expect_refused(T, "model.residual=true;model.residual_inputs=0,3", "[0, 3)");
    expect_refused(T, "model.residual=true;model.residual_inputs=0 1", "comma-separated");
    expect_refused(T, "model.residual=true;model.in_features=1", "exceeds model.in_features");
    expect_refused(T, "data.normalize=frozen;data.normalize_samples=0", "data.normalize_samples");
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "normalize");
    /* "mpi": the parts that involve several ranks (normalize_np2) */
    const bool all = argc < 2, mpi = argc > 1 && !strcmp(argv[1], "mpi");
    if (all) test_moments(&t);
    if (all || mpi) test_combine(&t);
    if (all || mpi) test_physical(&t);
    if (all || mpi) test_held_out(&t);
    if (all) test_config(&t);
    if (all || mpi) test_checkpoint_units(&t);
    if (all || (argc > 1 && !strcmp(argv[1], "residual"))) test_residual(&t);
    return insitra_test_end(&t);
}
