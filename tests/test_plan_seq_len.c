/*
 * insitra_plan_max_seq_len (insitra-plan --max-seq-len): the answer T must
 * fit the budget by insitra_plan_stage's own formula, and neither T + 1 nor
 * any longer sequence on a grid up to the key's limit may (builds with cuDNN
 * need less memory past the length where SDPA's (B,H,T,T) buffer goes), for
 * both backends' sizing, both precisions, recompute on and off, every ZeRO
 * stage and two world sizes; a budget that holds the key's limit answers the
 * limit, one that holds nothing answers 0, a negative one is an error.
 */
#include <stdio.h>

#include "config.h"
#include "test_util.h"

static int64_t total_at(insitra_test *t, insitra_config *cfg, int64_t T, int world, int stage)
{
    insitra_plan p;
    insitra_test_set(t, cfg, "model.seq_len", "%lld", (long long)T);
    if (!EXPECT_OK(t, insitra_plan_stage(cfg, world, stage, &p), "plan_stage")) return -1;
    return p.memory.total_bytes;
}

/* The budget is the plan's total at T0, less `less` bytes. */
static void check_budget(insitra_test *t, insitra_config *cfg, int world, int stage, int64_t T0, int64_t less,
                         const char *what)
{
    const int64_t budget = total_at(t, cfg, T0, world, stage) - less;
    int64_t T = -1;
    int32_t at_limit = -1;
    if (!EXPECT_OK(t, insitra_plan_max_seq_len(cfg, world, stage, budget, &T, &at_limit), "plan_max_seq_len"))
        return;
    EXPECT(t, less == 0 ? T >= T0 : T != T0, "%s, stage %d, %d ranks: T = %lld for the budget at %lld - %lld",
           what, stage, world, (long long)T, (long long)T0, (long long)less);
    /* The largest: no longer sequence fits either (a GPU run past cuDNN's
     * SDPA needs less than a shorter one with it, so T may exceed T0), on a
     * grid of lengths up to the key's limit. */
    int64_t longer = 0;
    for (int64_t u = T + 1; u <= INSITRA_SEQ_LEN_MAX && !longer; u += 61)
        if (total_at(t, cfg, u, world, stage) <= budget) longer = u;
    EXPECT(t, longer == 0, "%s, stage %d, %d ranks: T = %lld is the answer, but %lld fits too", what, stage,
           world, (long long)T, (long long)longer);
    EXPECT(t, T >= 1 && at_limit == 0, "%s: T = %lld, at_limit %d", what, (long long)T, at_limit);
    if (T < 1) return;
    const int64_t at = total_at(t, cfg, T, world, stage), after = total_at(t, cfg, T + 1, world, stage);
    EXPECT(t, at <= budget && after > budget,
           "%s, stage %d, %d ranks: T = %lld needs %lld bytes, T + 1 %lld, budget %lld", what, stage, world,
           (long long)T, (long long)at, (long long)after, (long long)budget);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "plan_seq_len");
    insitra_config *cfg = insitra_test_config(&t, "model: {seq_len: 64, in_features: 8, out_features: 8,\n"
                                                  "        d_model: 64, n_layers: 3, n_heads: 4}\n"
                                                  "training: {batch_size: 4}\n"
                                                  "data: {capacity: 16}\n");
    if (!cfg) return insitra_test_end(&t);
    const char *devices[][2] = {{"cpu", "fp32"}, {"cuda", "bf16"}, {"cuda", "fp32"}};
    const char *recompute[] = {"none", "block"};
    char what[64];
    for (int d = 0; d < 3; d++)
        for (int r = 0; r < 2; r++)
            for (int stage = 0; stage < 4; stage++)
                for (int world = 1; world <= 4; world *= 4) {
                    insitra_test_set(&t, cfg, "device", "%s", devices[d][0]);
                    insitra_test_set(&t, cfg, "precision", "%s", devices[d][1]);
                    insitra_test_set(&t, cfg, "training.recompute", "%s", recompute[r]);
                    snprintf(what, sizeof what, "%s %s recompute %s", devices[d][0], devices[d][1], recompute[r]);
                    check_budget(&t, cfg, world, stage, 1000, 0, what);
                    check_budget(&t, cfg, world, stage, 3001, 1, what);
                }

    /* A budget that holds the key's limit answers the limit; one byte, nothing. */
    insitra_test_set(&t, cfg, "device", "cuda");
    const int64_t most = total_at(&t, cfg, INSITRA_SEQ_LEN_MAX, 2, 1);
    int64_t T = -1;
    int32_t at_limit = 0;
    EXPECT_OK(&t, insitra_plan_max_seq_len(cfg, 2, 1, most, &T, &at_limit), "plan_max_seq_len");
    EXPECT(&t, T == INSITRA_SEQ_LEN_MAX && at_limit == 1, "budget %lld: T = %lld, at_limit %d", (long long)most,
           (long long)T, at_limit);
    EXPECT_OK(&t, insitra_plan_max_seq_len(cfg, 2, 1, 1, &T, &at_limit), "plan_max_seq_len");
    EXPECT(&t, T == 0 && at_limit == 0, "1 byte: T = %lld, at_limit %d", (long long)T, at_limit);
    EXPECT(&t, insitra_plan_max_seq_len(cfg, 2, 1, -1, &T, NULL) == INSITRA_STATUS_INVALID_ARGUMENT,
           "a negative budget is an error");
    EXPECT(&t, insitra_plan_max_seq_len(cfg, 0, 1, most, &T, NULL) == INSITRA_STATUS_INVALID_ARGUMENT,
           "world size 0 is an error: %s", insitra_last_error());
    insitra_config_free(cfg);
    return insitra_test_end(&t);
}
