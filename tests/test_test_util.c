/*
 * The shared test helpers (test_util.h) on known answers, since every other
 * test trusts them to turn a wrong result into a failure:
 *   - EXPECT, EXPECT_OK and insitra_test_within count exactly the checks that
 *     fail (a NaN error included) and evaluate to the verdict;
 *   - the failure count is summed over the ranks;
 *   - the error measures give their defined values and INFINITY on NaN;
 *   - insitra_test_set formats the value and reports a refused key.
 * Deliberate failures go to a scratch context, never to the test's own.
 *
 *   test_test_util                 the checks above
 *   test_test_util fail-last-rank  the last rank fails one check; every rank
 *                                  prints the exit status insitra_test_end
 *                                  gave it (CTest expects 1 on rank 0 too)
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

static void counting(insitra_test *t)
{
    insitra_test probe = *t;
    probe.failures = 0;
    printf("(deliberate failures follow, counted in a scratch context)\n");
    EXPECT(t, EXPECT(&probe, 1 + 1 == 2, "true") && probe.failures == 0, "a true check counted");
    EXPECT(t, !EXPECT(&probe, 1 + 1 == 3, "deliberate") && probe.failures == 1, "a false check: %d failures",
           probe.failures);
    EXPECT(t, !EXPECT_OK(&probe, INSITRA_STATUS_CONFIG_ERROR, "deliberate") && probe.failures == 2,
           "a failed status: %d failures", probe.failures);
    EXPECT(t, EXPECT_OK(&probe, INSITRA_STATUS_OK, "ok") && probe.failures == 2, "OK counted");

    EXPECT(t, insitra_test_within(&probe, "small", 1e-6, 1e-5) && probe.failures == 2, "1e-6 <= 1e-5");
    EXPECT(t, insitra_test_within(&probe, "closest", 9e-6, 1e-5), "9e-6 <= 1e-5");
    EXPECT(t, strcmp(probe.worst_name, "closest") == 0 && fabs(probe.worst_ratio - 0.9) < 1e-12,
           "closest quantity '%s' at %g", probe.worst_name, probe.worst_ratio);
    EXPECT(t, !insitra_test_within(&probe, "deliberate NaN", NAN, 1.0) && probe.failures == 3,
           "a NaN error passed");
    EXPECT(t, !insitra_test_within(&probe, "deliberate 2e-5", 2e-5, 1e-5) && probe.failures == 4,
           "2e-5 <= 1e-5");
    EXPECT(t, strcmp(probe.worst_name, "deliberate NaN") == 0 && probe.compared == 4,
           "the first failure stays named: '%s', %d compared", probe.worst_name, probe.compared);
    printf("(end of deliberate failures)\n");

    /* rank r contributes r + 1 */
    probe.failures = t->rank + 1;
    const int total = insitra_test_failures_total(&probe);
    EXPECT(t, total == t->size * (t->size + 1) / 2, "failures summed over %d ranks: %d", t->size, total);
}

static void error_measures(insitra_test *t)
{
    const float ref[3] = {1.0f, -2.0f, 4.0f};
    const float off[3] = {1.0f, -2.0f, 4.004f}; /* 1e-3 of the largest entry */
    const float bad[3] = {1.0f, NAN, 4.0f};
    const float zero[3] = {0, 0, 0};
    EXPECT(t, insitra_test_max_error(ref, ref, 3) == 0.0, "max error of equal tensors");
    EXPECT(t, fabs(insitra_test_max_error(off, ref, 3) - 1e-3) < 1e-6, "max error %g, expected 1e-3",
           insitra_test_max_error(off, ref, 3));
    EXPECT(t, isinf(insitra_test_max_error(bad, ref, 3)), "max error with a NaN");
    EXPECT(t, insitra_test_max_error(zero, zero, 3) == 0.0, "max error of zero tensors");
    /* ||(0, 0, 0.004)|| / ||(1, -2, 4)|| = 0.004 / sqrt(21) */
    EXPECT(t, fabs(insitra_test_l2_error(off, ref, 3) - 0.004 / sqrt(21.0)) < 1e-7, "L2 error %g",
           insitra_test_l2_error(off, ref, 3));
    EXPECT(t, isinf(insitra_test_l2_error(bad, ref, 3)), "L2 error with a NaN");
    EXPECT(t,
           insitra_test_rel_error(1.0 + 2e-5, 1.0) > 1e-5 &&
               fabs(insitra_test_rel_error(1.0 + 2e-5, 1.0) - 2e-5) < 1e-12,
           "relative error %g", insitra_test_rel_error(1.0 + 2e-5, 1.0));
    EXPECT(t, isinf(insitra_test_rel_error(NAN, 1.0)), "relative error of NaN");
    EXPECT(t, insitra_test_rel_error(-3.0, -3.0) == 0.0, "relative error of equal values");
}

static void config_helpers(insitra_test *t)
{
    insitra_test probe = *t;
    probe.failures = 0;
    insitra_config *cfg = insitra_test_config(t, "model: {d_model: 48}\n");
    if (!EXPECT(t, cfg != NULL, "insitra_test_config")) return;
    char v[64];
    EXPECT(t, insitra_test_set(t, cfg, "parallel.zero_stage", "%d", 2), "set an integer");
    EXPECT(t, insitra_test_set(t, cfg, "optimizer.lr", "%.17g", 2.5e-4), "set a double");
    insitra_config_get(cfg, "parallel.zero_stage", v, sizeof v);
    EXPECT(t, strcmp(v, "2") == 0, "zero_stage reads back '%s'", v);
    insitra_config_get(cfg, "model.d_model", v, sizeof v);
    EXPECT(t, strcmp(v, "48") == 0, "d_model from the YAML reads back '%s'", v);
    printf("(deliberate failures follow)\n");
    EXPECT(t, !insitra_test_set(&probe, cfg, "model.no_such_key", "%d", 1) && probe.failures == 1,
           "an unknown key was accepted");
    EXPECT(t, insitra_test_config(&probe, "model: [unclosed\n") == NULL && probe.failures == 2,
           "malformed YAML gave a config");
    printf("(end of deliberate failures)\n");
    insitra_config_free(cfg);

    float a[4];
    insitra_test_fill_wave(a, 4, sin, 0.5, 1.0, 2.0);
    for (int i = 0; i < 4; i++)
        EXPECT(t, a[i] == (float)(2.0 * sin(0.5 * i + 1.0)), "wave[%d] = %g", i, a[i]);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "test_util");
    if (argc > 1 && strcmp(argv[1], "fail-last-rank") == 0) {
        EXPECT(&t, t.rank != t.size - 1, "deliberate failure on the last rank");
        const int status = insitra_test_end(&t);
        printf("rank %d: exit status %d\n", t.rank, status);
        return status;
    }
    counting(&t);
    error_measures(&t);
    config_helpers(&t);
    return insitra_test_end(&t);
}
