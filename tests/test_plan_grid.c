/*
 * insitra_plan_suggest_grid: the grid it names fits the budget by
 * insitra_plan_stage and every grid that splits a sample less (fewer cp x tp
 * ranks, or as many with tp before cp) does not; among the fitting grids of
 * its split it has the least traffic. A budget that pure data parallelism
 * meets gives cp = tp = 1; one only tensor parallelism meets gives tp > 1; a
 * budget nothing meets gives found = 0; on device = cuda (bf16) the same rule
 * holds over the GPU's sizes; bad arguments are refused by name.
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "test_util.h"

static int64_t total_at(const insitra_config *cfg, int world, int cp, int tp, int stage, int64_t *traffic)
{
    insitra_config c = *cfg;
    c.parallel.cp = cp;
    c.parallel.tp = tp;
    insitra_plan p;
    if (insitra_plan_stage(&c, world, stage, &p) != INSITRA_STATUS_OK) return -1; /* not a grid cfg allows */
    if (traffic) *traffic = p.comm_bytes_per_step;
    return p.memory.total_bytes;
}

/* The suggestion for (world, budget) against every grid, by the rule. */
static void check(insitra_test *tc, const insitra_config *cfg, int world, int64_t budget, const char *what,
                  int want_found, int want_tp_above_1)
{
    insitra_plan_grid g;
    int32_t found = -1;
    if (!EXPECT_OK(tc, insitra_plan_suggest_grid(cfg, world, budget, &g, &found), what)) return;
    printf("%s: %d ranks, %.1f MiB: ", what, world, (double)budget / 1048576.0);
    if (found) printf("dp %d x cp %d x tp %d, stage %d, %.1f MiB\n", g.dp, g.cp, g.tp, g.plan.zero_stage,
                      (double)g.plan.memory.total_bytes / 1048576.0);
    else printf("none fits\n");
    EXPECT(tc, found == want_found, "%s: found %d, want %d", what, found, want_found);
    if (!found) {
        for (int cp = 1; cp <= world; cp++)
            for (int tp = 1; tp * cp <= world; tp++)
                for (int s = 0; s < 4; s++) {
                    const int64_t b = total_at(cfg, world, cp, tp, s, NULL);
                    EXPECT(tc, b < 0 || b > budget, "%s: cp %d tp %d stage %d fits (%lld bytes) but none was named",
                           what, cp, tp, s, (long long)b);
                }
        return;
    }
    EXPECT(tc, want_tp_above_1 < 0 || (g.tp > 1) == (want_tp_above_1 != 0), "%s: tp %d", what, g.tp);
    EXPECT(tc, g.dp * g.cp * g.tp == world, "%s: %d x %d x %d is not %d ranks", what, g.dp, g.cp, g.tp, world);
    int64_t traffic = 0;
    const int64_t mine = total_at(cfg, world, g.cp, g.tp, g.plan.zero_stage, &traffic);
    EXPECT(tc, mine == g.plan.memory.total_bytes && mine <= budget && traffic == g.plan.comm_bytes_per_step,
           "%s: the grid's plan (%lld bytes) is not insitra_plan_stage's (%lld) within %lld", what,
           (long long)g.plan.memory.total_bytes, (long long)mine, (long long)budget);
    for (int cp = 1; cp <= world; cp++)
        for (int tp = 1; tp * cp <= world; tp++) {
            if (world % (cp * tp) != 0) continue;
            const bool before = cp * tp < g.cp * g.tp || (cp * tp == g.cp * g.tp && cp < g.cp);
            const bool same = cp == g.cp && tp == g.tp;
            for (int s = 0; s < 4; s++) {
                int64_t t = 0;
                const int64_t b = total_at(cfg, world, cp, tp, s, &t);
                if (b < 0 || b > budget) continue;
                EXPECT(tc, !before, "%s: cp %d tp %d stage %d fits and splits less than the suggestion", what, cp,
                       tp, s);
                EXPECT(tc, !same || t >= g.plan.comm_bytes_per_step,
                       "%s: stage %d of the suggested grid sends less (%lld < %lld)", what, s, (long long)t,
                       (long long)g.plan.comm_bytes_per_step);
            }
        }
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "plan_grid");
    insitra_config *cfg = insitra_test_config(&tc, "model: {seq_len: 1024, in_features: 4, out_features: 4,\n"
                                                   "        d_model: 256, n_layers: 4, n_heads: 8}\n"
                                                   "training: {batch_size: 2}\n"
                                                   "data: {capacity: 16}\n");
    if (!cfg) return insitra_test_end(&tc);
    /* the budgets from the one-rank plans: roomy, between dp's best and tp 2's, below anything */
    int64_t dp_best = INT64_MAX, tp2_best = INT64_MAX;
    for (int s = 0; s < 4; s++) {
        const int64_t a = total_at(cfg, 4, 1, 1, s, NULL), b = total_at(cfg, 4, 1, 2, s, NULL);
        if (a > 0 && a < dp_best) dp_best = a;
        if (b > 0 && b < tp2_best) tp2_best = b;
    }
    EXPECT(&tc, tp2_best < dp_best, "tp 2 (%lld bytes) should need less than dp alone (%lld)", (long long)tp2_best,
           (long long)dp_best);
    check(&tc, cfg, 4, dp_best, "dp's smallest", 1, 0);
    check(&tc, cfg, 4, (dp_best + tp2_best) / 2, "below dp's smallest", 1, 1);
    check(&tc, cfg, 4, 1 << 20, "1 MiB", 0, 0);
    /* CUDA in bf16: the GPU's own sizes (workspace, attention state), the same rule; at
     * its own dp-only smallest, dp only */
    insitra_test_set(&tc, cfg, "device", "cuda");
    insitra_test_set(&tc, cfg, "precision", "bf16");
    int64_t gpu_best = INT64_MAX;
    for (int s = 0; s < 4; s++) {
        const int64_t a = total_at(cfg, 4, 1, 1, s, NULL);
        if (a > 0 && a < gpu_best) gpu_best = a;
    }
    check(&tc, cfg, 4, gpu_best, "cuda bf16", 1, 0);
    insitra_plan_grid g;
    int32_t found = 0;
    /* bad arguments */
    insitra_status s = insitra_plan_suggest_grid(cfg, 0, 1, &g, &found);
    EXPECT(&tc, s == INSITRA_STATUS_INVALID_ARGUMENT && strstr(insitra_last_error(), "world_size"),
           "world_size 0: %s", insitra_last_error());
    s = insitra_plan_suggest_grid(cfg, 4, 1, NULL, &found);
    EXPECT(&tc, s == INSITRA_STATUS_INVALID_ARGUMENT && strstr(insitra_last_error(), "best"), "best NULL: %s",
           insitra_last_error());
    insitra_config_free(cfg);
    return insitra_test_end(&tc);
}
