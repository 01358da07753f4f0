/* examples/quickstart: a simulation that trains its surrogate while it runs.
 * Each rank advects and diffuses a wave on its own periodic rod, pushes
 * windows u(t) -> u(t + dt) into insitra and takes a training step; at the
 * end it compares the surrogate with the solver and writes a checkpoint.
 *   mpiexec -n 2 ./quickstart quickstart.yaml */
#include <math.h>
#include <mpi.h>
#include <stdio.h>

#include <insitra.h>

/* Every insitra call returns a status; insitra_last_error() says why it failed. */
#define CHECK(call)                                                              \
    do {                                                                         \
        if ((call) != INSITRA_STATUS_OK) {                                       \
            fprintf(stderr, "%s failed: %s\n", #call, insitra_last_error());     \
            MPI_Abort(MPI_COMM_WORLD, 1);                                        \
        }                                                                        \
    } while (0)

enum { CELLS = 128, T = 32, N = 8, STEPS = 200 }; /* T must be model.seq_len */

static void advance(const float *u, float *next) /* one explicit step */
{
    for (int i = 0; i < CELLS; i++) {
        const float l = u[(i + CELLS - 1) % CELLS], r = u[(i + 1) % CELLS];
        next[i] = u[i] - 0.5f * (u[i] - l) + 0.05f * (l - 2 * u[i] + r);
    }
}

static void windows(const float *u, int shift, float *x) /* x[N][T][1] */
{
    for (int s = 0; s < N; s++)
        for (int j = 0; j < T; j++) x[s * T + j] = u[(s * CELLS / N + shift + j) % CELLS];
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, ranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);

    insitra_config *cfg;
    CHECK(insitra_config_create(&cfg));
    CHECK(insitra_config_load_yaml(cfg, argc > 1 ? argv[1] : "quickstart.yaml"));
    insitra_trainer *t;
    CHECK(insitra_trainer_create(&t, cfg, MPI_COMM_WORLD)); /* collective */

    static float u[CELLS], next[CELLS], x[N * T], y[N * T], y_pred[N * T];
    for (int i = 0; i < CELLS; i++)
        u[i] = sinf(6.2831853f * (1 + rank) * i / CELLS) + 0.5f * cosf(6.2831853f * 5 * i / CELLS);
    insitra_metrics m = {0};
    for (int step = 0; step < STEPS; step++) {
        advance(u, next);
        windows(u, step, x);
        windows(next, step, y);
        CHECK(insitra_push_samples(t, N, x, y)); /* local: this rank's store */
        CHECK(insitra_train_step(t, &m));        /* collective */
        for (int i = 0; i < CELLS; i++) u[i] = next[i];
    }

    /* Held out: windows at offsets never pushed, from the next solver step. */
    advance(u, next);
    windows(u, CELLS / (2 * N), x);
    windows(next, CELLS / (2 * N), y);
    double loss, base = 0;
    CHECK(insitra_evaluate(t, N, x, y, &loss)); /* collective: global mean squared error */
    CHECK(insitra_predict(t, N, x, y_pred));    /* collective */
    for (int i = 0; i < N * T; i++) base += (double)(y[i] - x[i]) * (y[i] - x[i]) / (N * T);
    MPI_Allreduce(MPI_IN_PLACE, &base, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    char path[4096];
    CHECK(insitra_checkpoint_save(t, "checkpoints", path, sizeof path)); /* collective */
    if (rank == 0)
        printf("quickstart (C): %d ranks, %d steps, training loss %.3e, held-out loss %.3e "
               "(predicting no change: %.3e), y_pred[0] %.3f vs %.3f, checkpoint %s\n",
               ranks, STEPS, m.loss, loss, base / ranks, y_pred[0], y[0], path);
    CHECK(insitra_trainer_free(t)); /* collective */
    CHECK(insitra_config_free(cfg));
    MPI_Finalize();
    return isfinite(loss) ? 0 : 1;
}
