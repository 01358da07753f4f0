/*
 * Several ranks train one replicated model: each pushes its own samples,
 * gradients are averaged, and after every step all ranks hold bit-identical
 * parameters and report the same loss. A local failure on one rank (an empty
 * store) fails the step on every rank, naming that rank, instead of hanging.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insitra.h"
#include "trainer.h"

enum { N = 16, T = 8, F = 3 };

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size, failures = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    insitra_config *cfg = NULL;
    insitra_config_create(&cfg);
    insitra_config_load_yaml_string(cfg, "model: {seq_len: 8, in_features: 3, out_features: 3,\n"
                                         "        d_model: 16, n_layers: 2, n_heads: 2}\n"
                                         "training: {batch_size: 4}\n");
    insitra_trainer *t = NULL;
    if (insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK) {
        printf("create: %s\n", insitra_last_error());
        return 1;
    }

    /* Rank 1 has no samples yet: every rank's step fails, naming rank 1. */
    static float x[N][T][F], y[N][T][F];
    for (int i = 0; i < N * T * F; i++) {
        (&x[0][0][0])[i] = (float)sin(0.3 * i + rank);
        (&y[0][0][0])[i] = (float)cos(0.2 * i - rank);
    }
    if (rank != 1) insitra_push_samples(t, N, &x[0][0][0], &y[0][0][0]);
    insitra_status s = insitra_train_step(t, NULL);
    const char *msg = insitra_last_error();
    const insitra_status want = rank == 1 ? INSITRA_STATUS_NOT_READY : INSITRA_STATUS_REMOTE_ERROR;
    if (s != want || !strstr(msg, "rank 1") || !strstr(msg, "empty")) {
        printf("rank %d: expected %s naming rank 1, got %s: %s\n", rank, insitra_status_name(want),
               insitra_status_name(s), msg);
        failures++;
    } else if (rank == 0) {
        printf("empty store on rank 1 fails everywhere: %s\n", msg);
    }
    if (rank == 1) insitra_push_samples(t, N, &x[0][0][0], &y[0][0][0]);

    const int64_t P = t->engine.model.layout.total;
    float *theirs = malloc((size_t)P * sizeof(float));
    for (int step = 0; step < 10; step++) {
        insitra_metrics m;
        if (insitra_train_step(t, &m) != INSITRA_STATUS_OK) {
            printf("rank %d step %d: %s\n", rank, step, insitra_last_error());
            return 1;
        }
        /* Rank 0's parameters and loss, compared bit for bit on every rank. */
        memcpy(theirs, t->engine.zero.host_params, (size_t)P * sizeof(float));
        double loss0 = m.loss;
        MPI_Bcast(theirs, (int)P, MPI_FLOAT, 0, MPI_COMM_WORLD);
        MPI_Bcast(&loss0, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        if (memcmp(theirs, t->engine.zero.host_params, (size_t)P * sizeof(float)) != 0 || loss0 != m.loss) {
            printf("rank %d step %d: parameters or loss differ from rank 0\n", rank, step);
            failures++;
            break;
        }
        if (m.tokens != (int64_t)4 * T * size) {
            printf("rank %d: global tokens %lld, expected %d\n", rank, (long long)m.tokens, 4 * T * size);
            failures++;
        }
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("replicated on %d ranks: %s (%d failures)\n", size, total ? "FAILED" : "passed", total);
    free(theirs);
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    MPI_Finalize();
    return total ? 1 : 0;
}
