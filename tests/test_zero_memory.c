/*
 * Memory per rank at each ZeRO stage, and the planner. For N ranks and P
 * parameters, model-state bytes (parameters + gradients + AdamW moments) must
 * be within 5% of the theory for fp32 Adam:
 *   stage 0: 16P   stage 1: 8P + 8P/N   stage 2: 4P + 12P/N
 *   stage 3: 16P/N + the two per-unit gather buffers (prefetch double-buffering)
 * and insitra_plan_stage must predict exactly what insitra_memory_report says,
 * also with parallel.cp = 2 (on an even rank count: ZeRO shards over all
 * dp x cp ranks, activations are for seq_len / 2 tokens plus the ring's
 * scratch, so fewer than at cp = 1) and with parallel.tp = 2 (ZeRO shards each
 * rank's tensor slices over the dp ranks; fewer activations than at tp = 1).
 * Also: ranks whose configurations differ, or a grid that does not match the
 * communicator, fail on every rank with a message naming the key.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "attention_ring.h"
#include "test_util.h"
#include "trainer.h"

static insitra_config *make_config(insitra_test *tc, int stage)
{
    insitra_config *cfg = insitra_test_config(tc, "model: {seq_len: 16, in_features: 4, out_features: 4,\n"
                                                  "        d_model: 64, n_layers: 3, n_heads: 4}\n"
                                                  "training: {batch_size: 4}\n");
    if (cfg) insitra_test_set(tc, cfg, "parallel.zero_stage", "%d", stage);
    return cfg;
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "zero_memory");
    const int rank = tc.rank, size = tc.size;
    int64_t act_cp1[4] = {0};
    /* stages 0-3 at cp = 1, then (on an even rank count) at cp = 2 and at tp = 2 */
    for (int run = 0; run < (size % 2 == 0 ? 12 : 4); run++) {
        const int stage = run % 4, cp = run / 4 == 1 ? 2 : 1, tp = run / 4 == 2 ? 2 : 1;
        const double N = (double)(size / tp); /* the ranks ZeRO shards a tensor slice over */
        insitra_config *cfg = make_config(&tc, stage);
        if (cfg) insitra_test_set(&tc, cfg, "parallel.cp", "%d", cp);
        if (cfg) insitra_test_set(&tc, cfg, "parallel.tp", "%d", tp);
        insitra_trainer *t = NULL;
        if (!cfg || !EXPECT_OK(&tc, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "trainer_create")) {
            insitra_config_free(cfg);
            return insitra_test_end(&tc);
        }
        insitra_memory_usage r;
        insitra_memory_report(t, &r);
        const double P = (double)t->engine.model.layout.total;
        const double gather = 2.0 * (double)t->engine.model.layout.max_unit_numel * 4.0;
        const double theory[4] = {16 * P, 8 * P + 8 * P / N, 4 * P + 12 * P / N, 16 * P / N + gather};
        const double state = (double)(r.parameter_bytes + r.gradient_bytes + r.optimizer_bytes);
        const double dev = fabs(state - theory[stage]) / theory[stage];
        if (rank == 0)
            printf("cp %d, tp %d, stage %d, %d ranks, P = %.0f: model state %.0f bytes, theory %.0f (%.2f%% off); "
                   "activations %lld, comm buffers %lld, total %lld\n",
                   cp, tp, stage, size, P, state, theory[stage], 100 * dev, (long long)r.activation_bytes,
                   (long long)r.communication_bytes, (long long)r.total_bytes);
        EXPECT(&tc, dev <= 0.05, "stage %d: model state %.0f bytes is %.1f%% off the theory %.0f", stage,
               state, 100 * dev, theory[stage]);

        insitra_plan plan;
        EXPECT_OK(&tc, insitra_plan_stage(cfg, size, stage, &plan), "plan_stage");
        EXPECT(&tc, memcmp(&plan.memory, &r, sizeof r) == 0,
               "stage %d: the plan (total %lld) differs from the report (total %lld)", stage,
               (long long)plan.memory.total_bytes, (long long)r.total_bytes);
        EXPECT(&tc, (size == 1) == (plan.comm_bytes_per_step == 0), "stage %d: traffic %lld bytes", stage,
               (long long)plan.comm_bytes_per_step);
        if (cp == 1 && tp == 1) act_cp1[stage] = r.activation_bytes;
        const int64_t ring =
            insitra_attention_ring_scratch_bytes(4, 8, 64, 4, sizeof(float)); /* B, T/2, C, H */
        if (tp == 2) /* the residual stream, the MLP and the heads divided by two; the gathered LNs not */
            EXPECT(&tc, r.activation_bytes < act_cp1[stage],
                   "tp 2, stage %d: activations %lld bytes, want below tp 1's %lld", stage,
                   (long long)r.activation_bytes, (long long)act_cp1[stage]);
        if (cp == 2)
            EXPECT(&tc, r.activation_bytes < act_cp1[stage] && r.activation_bytes > ring,
                   "cp 2, stage %d: activations %lld bytes, want below cp 1's %lld and above the ring's %lld",
                   stage, (long long)r.activation_bytes, (long long)act_cp1[stage], (long long)ring);
        insitra_trainer_free(t);
        insitra_config_free(cfg);
    }

    /* a configuration that differs on the last rank */
    insitra_config *cfg = make_config(&tc, 1);
    if (!cfg) return insitra_test_end(&tc);
    if (size > 1 && rank == size - 1) insitra_config_set(cfg, "optimizer.lr", "0.5");
    insitra_trainer *t = NULL;
    insitra_status s = insitra_trainer_create(&t, cfg, MPI_COMM_WORLD);
    if (size > 1) {
        EXPECT(&tc, s != INSITRA_STATUS_OK && t == NULL, "differing configs were accepted");
        EXPECT(&tc,
               strstr(insitra_last_error(), "optimizer.lr") != NULL &&
                   strstr(insitra_last_error(), "0.5") != NULL,
               "message does not name the key and value: %s", insitra_last_error());
        if (rank == 0) printf("differing configs: %s\n", insitra_last_error());
    } else {
        EXPECT_OK(&tc, s, "trainer_create on one rank");
        insitra_trainer_free(t);
    }
    /* a grid that does not match the communicator */
    insitra_test_set(&tc, cfg, "optimizer.lr", "1e-3");
    insitra_test_set(&tc, cfg, "parallel.dp", "%d", size + 1);
    s = insitra_trainer_create(&t, cfg, MPI_COMM_WORLD);
    EXPECT(&tc,
           s == (rank == 0 ? INSITRA_STATUS_CONFIG_ERROR : INSITRA_STATUS_REMOTE_ERROR) &&
               strstr(insitra_last_error(), "parallel.dp"),
           "wrong grid: %s %s", insitra_status_name(s), insitra_last_error());
    if (rank == 0) printf("wrong grid: %s\n", insitra_last_error());
    insitra_config_free(cfg);
    return insitra_test_end(&tc);
}
