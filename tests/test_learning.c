/*
 * The surrogate learns a known smooth map: one explicit finite-difference
 * step of the 1-D heat equation, u'[i] = u[i] + r (u[i-1] - 2 u[i] + u[i+1]),
 * periodic, r = 0.2, on random smooth fields of T = 32 points (one token per
 * grid point). After 400 steps the MSE on held-out fields must be below 2% of
 * their mean square (the loss of predicting zero).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "insitra.h"
#include "rng.h"

enum { T = 32, N_TRAIN = 512, N_TEST = 64, STEPS = 400 };
#define R 0.2
#define THRESHOLD 0.02

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
    MPI_Init(&argc, &argv);
    static float x[N_TRAIN][T], y[N_TRAIN][T], xt[N_TEST][T], yt[N_TEST][T];
    insitra_rng rng;
    insitra_rng_seed(&rng, 2024, 0);
    for (int n = 0; n < N_TRAIN; n++) make_sample(&rng, x[n], y[n]);
    for (int n = 0; n < N_TEST; n++) make_sample(&rng, xt[n], yt[n]);

    insitra_config *cfg = NULL;
    insitra_config_create(&cfg);
    const char *yaml = "model: {seq_len: 32, in_features: 1, out_features: 1, d_model: 32,\n"
                       "        n_layers: 2, n_heads: 4}\n"
                       "training: {batch_size: 16, seed: 5}\n"
                       "optimizer: {lr: 3.0e-3, min_lr: 1.0e-4, warmup_steps: 20, decay_steps: 400,\n"
                       "            weight_decay: 0.0}\n"
                       "data: {capacity: 512}\n";
    if (insitra_config_load_yaml_string(cfg, yaml) != INSITRA_STATUS_OK) {
        printf("config: %s\n", insitra_last_error());
        return 1;
    }
    insitra_trainer *t = NULL;
    if (insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK ||
        insitra_push_samples(t, N_TRAIN, &x[0][0], &y[0][0]) != INSITRA_STATUS_OK) {
        printf("setup: %s\n", insitra_last_error());
        return 1;
    }
    double mean_sq = 0;
    for (int i = 0; i < N_TEST * T; i++) mean_sq += (double)(&yt[0][0])[i] * (&yt[0][0])[i];
    mean_sq /= N_TEST * T;

    double first = 0, test_loss = 0;
    insitra_metrics m;
    for (int s = 0; s < STEPS; s++) {
        if (insitra_train_step(t, &m) != INSITRA_STATUS_OK) {
            printf("step %d: %s\n", s, insitra_last_error());
            return 1;
        }
        if (s == 0) first = m.loss;
        if ((s + 1) % 100 == 0) printf("step %4lld  train loss %.4e  lr %.2e\n", (long long)m.step, m.loss, m.lr);
    }
    insitra_evaluate(t, N_TEST, &xt[0][0], &yt[0][0], &test_loss);
    const double ratio = test_loss / mean_sq;
    printf("first train loss %.4e, held-out MSE %.4e = %.4f of mean square %.4e (need < %.2f)\n",
           first, test_loss, ratio, mean_sq, THRESHOLD);
    const int ok = ratio < THRESHOLD;
    printf("learning: %s\n", ok ? "passed" : "FAILED");
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    MPI_Finalize();
    return ok ? 0 : 1;
}
