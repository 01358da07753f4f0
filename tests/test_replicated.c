/*
 * Several ranks train one replicated model: each pushes its own samples,
 * gradients are averaged, and after every step all ranks hold bit-identical
 * parameters and report the same loss. A local failure on one rank (an empty
 * store) fails the step on every rank, naming that rank, instead of hanging.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "trainer.h"

enum { N = 16, T = 8, F = 3 };

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "replicated");
    const int rank = tc.rank;
    insitra_config *cfg = insitra_test_config(&tc, "model: {seq_len: 8, in_features: 3, out_features: 3,\n"
                                                   "        d_model: 16, n_layers: 2, n_heads: 2}\n"
                                                   "training: {batch_size: 4}\n");
    insitra_trainer *t = NULL;
    float *theirs = NULL;
    if (!cfg || !EXPECT_OK(&tc, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "trainer_create")) goto done;

    /* Rank 1 has no samples yet: every rank's step fails, naming rank 1. */
    static float x[N][T][F], y[N][T][F];
    insitra_test_fill_wave(&x[0][0][0], N * T * F, sin, 0.3, rank, 1);
    insitra_test_fill_wave(&y[0][0][0], N * T * F, cos, 0.2, -rank, 1);
    if (rank != 1) insitra_push_samples(t, N, &x[0][0][0], &y[0][0][0]);
    insitra_status s = insitra_train_step(t, NULL);
    const char *msg = insitra_last_error();
    const insitra_status want = rank == 1 ? INSITRA_STATUS_NOT_READY : INSITRA_STATUS_REMOTE_ERROR;
    if (EXPECT(&tc, s == want && strstr(msg, "rank 1") && strstr(msg, "empty"),
               "expected %s naming rank 1, got %s: %s", insitra_status_name(want), insitra_status_name(s),
               msg) &&
        rank == 0)
        printf("empty store on rank 1 fails everywhere: %s\n", msg);
    if (rank == 1) insitra_push_samples(t, N, &x[0][0][0], &y[0][0][0]);

    const int64_t P = t->engine.model.layout.total;
    theirs = malloc((size_t)P * sizeof(float));
    for (int step = 0; step < 10; step++) {
        insitra_metrics m;
        if (!EXPECT_OK(&tc, insitra_train_step(t, &m), "train_step")) break;
        /* Rank 0's parameters and loss, compared bit for bit on every rank. */
        memcpy(theirs, t->engine.zero.host_params, (size_t)P * sizeof(float));
        double loss0 = m.loss;
        MPI_Bcast(theirs, (int)P, MPI_FLOAT, 0, MPI_COMM_WORLD);
        MPI_Bcast(&loss0, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        /* No break on a mismatch: the other ranks would wait in the next step. */
        EXPECT(&tc, memcmp(theirs, t->engine.zero.host_params, (size_t)P * sizeof(float)) == 0 && loss0 == m.loss,
               "step %d: parameters or loss differ from rank 0", step);
        EXPECT(&tc, m.tokens == (int64_t)4 * T * tc.size, "global tokens %lld, expected %d",
               (long long)m.tokens, 4 * T * tc.size);
    }
done:
    free(theirs);
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    return insitra_test_end(&tc);
}
