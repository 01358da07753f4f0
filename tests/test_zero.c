/*
 * ZeRO equivalence. The same global batch trained for 20 steps
 *   - by one rank holding every sample (the reference, on MPI_COMM_SELF), and
 *   - by all ranks at each ZeRO stage 0-3, each rank holding its share,
 * must give the same loss trajectory and final parameters. With the
 * sequential sampler, step k's global batch is samples [12k, 12k + 12) in
 * both cases (rank r holds [12k + r b, 12k + (r + 1) b), b = 12 / ranks).
 *
 * Tolerances: across stages at one world size the results must be
 * bit-identical. Against the one-rank reference, summation order differs, so
 * losses must agree to 1e-5 relative and parameters to 1e-4 of their largest
 * magnitude. Replicated parameters (stages 0-2) must be bit-identical on every
 * rank, and micro-batching at stages 2-3 (which reduce every micro-batch)
 * must follow the un-micro-batched run to 1e-5.
 *
 * The default parallel.bucket_mib puts this small model's units in one
 * bucket (one reduction per step); the same checks run again with buckets of
 * 0.02 MiB, which make two buckets of two units each (checked), so that
 * reductions and gathers of several buckets with several units each are
 * bit-identical across stages too.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "trainer.h"

enum { STEPS = 20, T = 8, F = 3, BG = 12, N_SAMPLES = STEPS * BG };
#define TOL_LOSS 1e-5
#define TOL_PARAM 1e-4

static float gx[N_SAMPLES][T][F], gy[N_SAMPLES][T][F];
static const char *const YAML = "model: {seq_len: 8, in_features: 3, out_features: 3,\n"
                                "        d_model: 16, n_layers: 2, n_heads: 2}\n"
                                "training: {seed: 7}\n"
                                "optimizer: {lr: 1.0e-2, warmup_steps: 2, decay_steps: 20}\n"
                                "data: {capacity: 240, sampler: sequential}\n";

typedef struct {
    double loss[STEPS];
    float *params; /* full parameters after the last step */
    int64_t count;
} trajectory;

/* Trains on comm and records the trajectory; samples [first, first + per) of
 * every step's global batch are this rank's. False (agreed on comm: the
 * library's collective calls agree on failure) when the run did not finish. */
#define SMALL_BUCKETS "0.02" /* parallel.bucket_mib: two buckets of two units each */

static bool run(insitra_test *tc, MPI_Comm comm, int stage, int64_t per, int64_t micro, int64_t first,
                const char *bucket_mib, trajectory *out)
{
    out->params = NULL;
    insitra_config *cfg = insitra_test_config(tc, YAML);
    if (!cfg) return false;
    insitra_test_set(tc, cfg, "parallel.zero_stage", "%d", stage);
    if (bucket_mib) insitra_test_set(tc, cfg, "parallel.bucket_mib", "%s", bucket_mib);
    insitra_test_set(tc, cfg, "training.batch_size", "%lld", (long long)per);
    insitra_test_set(tc, cfg, "training.micro_batch_size", "%lld", (long long)micro);
    insitra_trainer *t = NULL;
    bool ok = EXPECT_OK(tc, insitra_trainer_create(&t, cfg, comm), "trainer_create");
    insitra_config_free(cfg);
    for (int k = 0; ok && k < STEPS; k++)
        EXPECT_OK(tc, insitra_push_samples(t, per, &gx[k * BG + first][0][0], &gy[k * BG + first][0][0]),
                  "push_samples");
    for (int k = 0; ok && k < STEPS; k++) {
        insitra_metrics m;
        ok = EXPECT_OK(tc, insitra_train_step(t, &m), "train_step");
        out->loss[k] = m.loss;
    }
    if (!ok) {
        insitra_trainer_free(t);
        return false;
    }
    const insitra_shard_layout *sl = &t->engine.zero.sl;
    int64_t most_units = 0;
    for (int64_t b = 0; b < sl->num_buckets; b++)
        if (sl->bucket_units[b] > most_units) most_units = sl->bucket_units[b];
    if (bucket_mib)
        EXPECT(tc, sl->num_buckets == 2 && most_units == 2, "parallel.bucket_mib %s: %lld buckets of up to %lld units",
               bucket_mib, (long long)sl->num_buckets, (long long)most_units);
    out->count = t->engine.model.layout.total;
    out->params = malloc((size_t)out->count * sizeof(float));
    insitra_zero_gather_params(&t->engine.zero, out->params);

    if (stage <= 2) { /* replicas: every rank's parameters equal rank 0's, bit for bit */
        float *root = malloc((size_t)out->count * sizeof(float));
        memcpy(root, t->engine.zero.host_params, (size_t)out->count * sizeof(float));
        MPI_Bcast(root, (int)out->count, MPI_FLOAT, 0, comm);
        EXPECT(tc, memcmp(root, t->engine.zero.host_params, (size_t)out->count * sizeof(float)) == 0,
               "stage %d: parameters differ from rank 0's", stage);
        free(root);
    }
    insitra_trainer_free(t);
    return true;
}

static double max_rel_loss(const trajectory *a, const trajectory *b)
{
    double worst = 0;
    for (int k = 0; k < STEPS; k++) worst = fmax(worst, insitra_test_rel_error(a->loss[k], b->loss[k]));
    return worst;
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "zero");
    const int rank = tc.rank, size = tc.size;
    for (int i = 0; i < N_SAMPLES * T * F; i++) {
        (&gx[0][0][0])[i] = (float)sin(0.37 * i);
        /* a smooth map of the input the model can learn */
        (&gy[0][0][0])[i] = 0.6f * (&gx[0][0][0])[i] + 0.3f * (&gx[0][0][0])[i] * (&gx[0][0][0])[i];
    }
    if (!EXPECT(&tc, BG % size == 0, "%d ranks do not divide the global batch of %d", size, BG))
        return insitra_test_end(&tc);
    const int64_t b = BG / size;

    trajectory ref, stage[4], micro[4] = {{.params = NULL}}, bucketed[4] = {{.params = NULL}},
               bucketed_micro = {.params = NULL};
    /* Every run is made even after one failed: the runs on MPI_COMM_WORLD are
     * collective, and a failure on MPI_COMM_SELF is this rank's alone. */
    bool ok = run(&tc, MPI_COMM_SELF, 0, BG, BG, 0, NULL, &ref);
    for (int s = 0; s < 4; s++) ok &= run(&tc, MPI_COMM_WORLD, s, b, b, rank * b, NULL, &stage[s]);
    for (int s = 2; s < 4; s++) ok &= run(&tc, MPI_COMM_WORLD, s, b, 1, rank * b, NULL, &micro[s]);
    for (int s = 0; s < 4; s++) ok &= run(&tc, MPI_COMM_WORLD, s, b, b, rank * b, SMALL_BUCKETS, &bucketed[s]);
    ok &= run(&tc, MPI_COMM_WORLD, 2, b, 1, rank * b, SMALL_BUCKETS, &bucketed_micro);
    if (!ok) goto done;

    for (int s = 0; s < 4; s++) {
        const double dl = max_rel_loss(&bucketed[s], &ref);
        const double dp = insitra_test_max_error(bucketed[s].params, ref.params, ref.count);
        const int same = memcmp(bucketed[s].loss, bucketed[0].loss, sizeof ref.loss) == 0 &&
                         memcmp(bucketed[s].params, bucketed[0].params, (size_t)ref.count * sizeof(float)) == 0;
        if (rank == 0)
            printf("stage %d on %d ranks, buckets of " SMALL_BUCKETS " MiB: vs 1 rank: loss %.2e, params %.2e | "
                   "vs stage 0: %s\n", s, size, dl, dp, same ? "bit-identical" : "DIFFERENT");
        EXPECT(&tc, dl <= TOL_LOSS, "small buckets, stage %d: losses differ from one rank's by %.3e", s, dl);
        EXPECT(&tc, dp <= TOL_PARAM, "small buckets, stage %d: parameters differ from one rank's by %.3e", s, dp);
        EXPECT(&tc, same, "small buckets, stage %d: not bit-identical to stage 0", s);
    }
    const double dlm = max_rel_loss(&bucketed_micro, &bucketed[2]);
    EXPECT(&tc, dlm <= TOL_LOSS, "small buckets, stage 2: micro-batched losses differ by %.3e", dlm);

    for (int s = 0; s < 4; s++) {
        const double dl = max_rel_loss(&stage[s], &ref);
        const double dp = insitra_test_max_error(stage[s].params, ref.params, ref.count);
        const int same_loss = memcmp(stage[s].loss, stage[0].loss, sizeof ref.loss) == 0;
        const int same_params =
            memcmp(stage[s].params, stage[0].params, (size_t)ref.count * sizeof(float)) == 0;
        if (rank == 0)
            printf("stage %d on %d ranks: vs 1 rank: loss %.2e, params %.2e | vs stage 0: %s\n", s,
                   size, dl, dp, same_loss && same_params ? "bit-identical" : "DIFFERENT");
        EXPECT(&tc, dl <= TOL_LOSS, "stage %d: losses differ from one rank's by %.3e", s, dl);
        EXPECT(&tc, dp <= TOL_PARAM, "stage %d: parameters differ from one rank's by %.3e", s, dp);
        EXPECT(&tc, same_loss && same_params, "stage %d: not bit-identical to stage 0", s);
    }
    for (int s = 2; s < 4; s++) {
        const double dl = max_rel_loss(&micro[s], &stage[s]);
        if (rank == 0) printf("stage %d, micro-batches of 1: vs whole batch: loss %.2e\n", s, dl);
        EXPECT(&tc, dl <= TOL_LOSS, "stage %d: micro-batched losses differ by %.3e", s, dl);
    }
    if (rank == 0)
        printf("final loss %.6f (1 rank) %.6f (stage 3, %d ranks), first %.6f\n", ref.loss[STEPS - 1],
               stage[3].loss[STEPS - 1], size, ref.loss[0]);

done:
    free(ref.params);
    for (int s = 0; s < 4; s++) free(stage[s].params);
    for (int s = 2; s < 4; s++) free(micro[s].params);
    for (int s = 0; s < 4; s++) free(bucketed[s].params);
    free(bucketed_micro.params);
    return insitra_test_end(&tc);
}
