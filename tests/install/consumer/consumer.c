/*
 * A user's program built against an installed insitra (the install_* tests
 * build it with find_package(insitra) and with pkg-config --static): the
 * header and the library agree on the version, and a tiny model trains for a
 * few steps on every rank with a finite loss.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include <insitra.h>

enum { N = 8, T = 4, F_IN = 2, F_OUT = 1, STEPS = 3 };

static int check(insitra_status s, const char *call)
{
    if (s == INSITRA_STATUS_OK) return 0;
    fprintf(stderr, "consumer: %s failed: %s\n", call, insitra_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    char header_version[32];
    snprintf(header_version, sizeof header_version, "%d.%d.%d", INSITRA_VERSION_MAJOR,
             INSITRA_VERSION_MINOR, INSITRA_VERSION_PATCH);
    int bad = strcmp(header_version, insitra_version()) != 0;
    if (bad) fprintf(stderr, "consumer: header %s, library %s\n", header_version, insitra_version());

    /* x[N][T][F_IN], y[N][T][F_OUT]: y is the sum of a token's two features.
     * (No libm calls: a program that does not use libm must not need it.) */
    float x[N * T * F_IN], y[N * T * F_OUT];
    for (int i = 0; i < N * T; i++) {
        x[2 * i] = (float)((7 * i + 3 * rank) % 11) / 11.0f - 0.5f;
        x[2 * i + 1] = (float)((5 * i) % 13) / 13.0f - 0.5f;
        y[i] = x[2 * i] + x[2 * i + 1];
    }

    insitra_config *cfg = NULL;
    insitra_trainer *t = NULL;
    insitra_metrics m;
    double loss = NAN;
    bad |= check(insitra_config_create(&cfg), "insitra_config_create");
    bad |= check(insitra_config_load_yaml_string(cfg,
                     "model: {seq_len: 4, in_features: 2, out_features: 1, d_model: 8,"
                     " n_layers: 1, n_heads: 2}\n"
                     "training: {batch_size: 4}\n"
                     "optimizer: {warmup_steps: 1, decay_steps: 10}\n"
                     "data: {capacity: 16}\n"),
                 "insitra_config_load_yaml_string");
    if (!bad) bad |= check(insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "insitra_trainer_create");
    if (!bad) bad |= check(insitra_push_samples(t, N, x, y), "insitra_push_samples");
    for (int step = 0; step < STEPS && !bad; step++)
        bad |= check(insitra_train_step(t, &m), "insitra_train_step");
    if (!bad) bad |= check(insitra_evaluate(t, N, x, y, &loss), "insitra_evaluate");
    if (!bad && !isfinite(loss)) {
        fprintf(stderr, "consumer: loss %g\n", loss);
        bad = 1;
    }
    insitra_trainer_free(t);
    insitra_config_free(cfg);

    int any_bad = 0;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0 && !any_bad)
        printf("consumer (C): insitra %s, %d ranks, loss %.4g after %d steps\n", insitra_version(),
               size, loss, STEPS);
    MPI_Finalize();
    return any_bad;
}
