/*
 * The smallest in-situ loop: every MPI rank plays a simulation that owns a
 * stretch of a periodic 1-D rod, advances the heat equation on it, and
 * every few timesteps hands insitra samples (u(t) -> u(t + dt) windows of its
 * own cells). Training steps run in between; at the end the surrogate's
 * one-step prediction is compared with the solver on fresh windows.
 *
 *   mpiexec -n 2 ./synthetic_train [config.yaml]
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "insitra.h"

#define CHECK(call)                                                                   \
    do {                                                                              \
        insitra_status s_ = (call);                                                   \
        if (s_ != INSITRA_STATUS_OK) {                                                \
            fprintf(stderr, "%s failed: %s\n", #call, insitra_last_error());          \
            MPI_Abort(MPI_COMM_WORLD, 1);                                             \
        }                                                                             \
    } while (0)

enum { CELLS = 4096, WINDOW = 64, PUSH_EVERY = 5, SIM_STEPS = 1500, TEST = 32 };
#define PI 3.141592653589793
#define R 0.2 /* diffusion number dt * kappa / dx^2 of the explicit scheme */

/* A smooth random initial field on this rank's cells. */
static void init_field(double *u, int rank)
{
    for (int i = 0; i < CELLS; i++) {
        const double x = (double)i / CELLS;
        u[i] = sin(2 * PI * (3 + rank) * x) + 0.5 * cos(2 * PI * 7 * x + rank) +
               0.25 * sin(2 * PI * 17 * x);
    }
}

static void heat_step(const double *u, double *next)
{
    for (int i = 0; i < CELLS; i++)
        next[i] = u[i] + R * (u[(i + CELLS - 1) % CELLS] - 2 * u[i] + u[(i + 1) % CELLS]);
}

/* n windows of WINDOW cells at spread-out offsets: x = u(t), y = u(t + dt). */
static void make_samples(const double *u, const double *next, int n, int shift, float *x, float *y)
{
    for (int s = 0; s < n; s++) {
        const int start = (s * (CELLS / n) + shift) % CELLS;
        for (int j = 0; j < WINDOW; j++) {
            x[s * WINDOW + j] = (float)u[(start + j) % CELLS];
            y[s * WINDOW + j] = (float)next[(start + j) % CELLS];
        }
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    insitra_config *cfg = NULL;
    CHECK(insitra_config_create(&cfg));
    CHECK(insitra_config_load_yaml_string(cfg,
        "model: {seq_len: 64, in_features: 1, out_features: 1, d_model: 64, n_layers: 2, n_heads: 4}\n"
        "training: {batch_size: 16}\n"
        "optimizer: {lr: 2.0e-3, min_lr: 1.0e-4, warmup_steps: 30, decay_steps: 300}\n"
        "data: {capacity: 2048}\n"
        "log: {every_steps: 25, jsonl: synthetic_train.jsonl}\n"));
    if (argc > 1) CHECK(insitra_config_load_yaml(cfg, argv[1]));

    insitra_trainer *t = NULL;
    CHECK(insitra_trainer_create(&t, cfg, MPI_COMM_WORLD));
    if (rank == 0) {
        int64_t params = 0;
        insitra_trainer_num_parameters(t, &params);
        printf("insitra %s: %d ranks, %lld parameters, training every %d solver steps\n",
               insitra_version(), size, (long long)params, PUSH_EVERY);
    }

    double *u = malloc(CELLS * sizeof *u), *next = malloc(CELLS * sizeof *next);
    float *x = malloc(64 * WINDOW * sizeof *x), *y = malloc(64 * WINDOW * sizeof *y);
    init_field(u, rank);
    insitra_metrics m = {0};
    double t0 = MPI_Wtime();
    for (int step = 1; step <= SIM_STEPS; step++) {
        heat_step(u, next);
        if (step % PUSH_EVERY == 0) {
            make_samples(u, next, 64, step, x, y);
            CHECK(insitra_push_samples(t, 64, x, y));
            CHECK(insitra_train_step(t, &m));
        }
        double *tmp = u;
        u = next;
        next = tmp;
    }
    const double seconds = MPI_Wtime() - t0;

    /* Held-out check: windows of the field as it is now, never pushed. */
    heat_step(u, next);
    make_samples(u, next, TEST, 17, x, y);
    double loss = 0, sq = 0;
    CHECK(insitra_evaluate(t, TEST, x, y, &loss));
    for (int i = 0; i < TEST * WINDOW; i++) sq += (double)y[i] * y[i];
    MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    const double rel = sqrt(loss / (sq / ((double)size * TEST * WINDOW)));
    if (rank == 0) {
        printf("\n%-28s %lld\n", "training steps", (long long)m.step);
        printf("%-28s %.4e\n", "final training loss", m.loss);
        printf("%-28s %.4e\n", "held-out relative L2 error", rel);
        printf("%-28s %.0f\n", "tokens/s (last step)", m.tokens_per_second);
        printf("%-28s %.1f s\n", "wall time", seconds);
        printf("%-28s %s\n", "metrics", "synthetic_train.jsonl");
    }
    free(u), free(next), free(x), free(y);
    CHECK(insitra_trainer_free(t));
    CHECK(insitra_config_free(cfg));
    MPI_Finalize();
    return 0;
}
