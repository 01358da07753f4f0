/*
 * The surrogate learns a known smooth map: one explicit finite-difference
 * step of the 1-D heat equation, u'[i] = u[i] + r (u[i-1] - 2 u[i] + u[i+1]),
 * periodic, r = 0.2, on random smooth fields of T = 32 points (one token per
 * grid point). After 400 steps the MSE on held-out fields must be below 2% of
 * their mean square (the loss of predicting zero).
 */
#include <math.h>
#include <stdio.h>

#include "rng.h"
#include "test_util.h"

enum { T = 32, N_TRAIN = 512, N_TEST = 64, STEPS = 400 };
#define R 0.2
#define THRESHOLD 0.02

static const char *const YAML = "model: {seq_len: 32, in_features: 1, out_features: 1, d_model: 32,\n"
                                "        n_layers: 2, n_heads: 4}\n"
                                "training: {batch_size: 16, seed: 5}\n"
                                "optimizer: {lr: 3.0e-3, min_lr: 1.0e-4, warmup_steps: 20,\n"
                                "            decay_steps: 400, weight_decay: 0.0}\n"
                                "data: {capacity: 512}\n";

/* A random field of four Fourier modes and its heat step. */
static void make_sample(insitra_rng *rng, float *u, float *u_next)
{
    double a[4], b[4];
    for (int k = 0; k < 4; k++) {
        a[k] = (2 * insitra_rng_uniform(rng) - 1) / (k + 1);
        b[k] = (2 * insitra_rng_uniform(rng) - 1) / (k + 1);
    }
    for (int i = 0; i < T; i++) {
        double v = 0;
        for (int k = 0; k < 4; k++) {
            const double th = 2 * 3.141592653589793 * (k + 1) * i / T;
            v += a[k] * cos(th) + b[k] * sin(th);
        }
        u[i] = (float)v;
    }
    for (int i = 0; i < T; i++)
        u_next[i] = u[i] + (float)R * (u[(i + T - 1) % T] - 2 * u[i] + u[(i + 1) % T]);
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "learning");
    static float x[N_TRAIN][T], y[N_TRAIN][T], xt[N_TEST][T], yt[N_TEST][T];
    insitra_rng rng;
    insitra_rng_seed(&rng, 2024, 0);
    for (int n = 0; n < N_TRAIN; n++) make_sample(&rng, x[n], y[n]);
    for (int n = 0; n < N_TEST; n++) make_sample(&rng, xt[n], yt[n]);

    insitra_config *cfg = insitra_test_config(&tc, YAML);
    insitra_trainer *t = NULL;
    if (!cfg || !EXPECT_OK(&tc, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "trainer_create") ||
        !EXPECT_OK(&tc, insitra_push_samples(t, N_TRAIN, &x[0][0], &y[0][0]), "push_samples"))
        goto done;
    double mean_sq = 0;
    for (int i = 0; i < N_TEST * T; i++) mean_sq += (double)(&yt[0][0])[i] * (&yt[0][0])[i];
    mean_sq /= N_TEST * T;

    double first = 0, test_loss = 0;
    insitra_metrics m;
    for (int s = 0; s < STEPS; s++) {
        if (!EXPECT_OK(&tc, insitra_train_step(t, &m), "train_step")) goto done;
        if (s == 0) first = m.loss;
        if ((s + 1) % 100 == 0)
            printf("step %4lld  train loss %.4e  lr %.2e\n", (long long)m.step, m.loss, m.lr);
    }
    EXPECT_OK(&tc, insitra_evaluate(t, N_TEST, &xt[0][0], &yt[0][0], &test_loss), "evaluate");
    const double ratio = test_loss / mean_sq;
    printf("first train loss %.4e, held-out MSE %.4e = %.4f of mean square %.4e (need < %.2f)\n",
           first, test_loss, ratio, mean_sq, THRESHOLD);
    EXPECT(&tc, ratio < THRESHOLD, "held-out MSE is %.4f of the mean square, not below %.2f", ratio,
           THRESHOLD);
done:
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    return insitra_test_end(&tc);
}
