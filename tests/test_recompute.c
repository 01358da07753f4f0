/*
 * training.recompute = block keeps only each block's input and recomputes
 * the block in backward. The kernels are deterministic, so it must give the
 * same bits as keeping every activation: the loss, every gradient, and (through
 * the trainer, at ZeRO stages 0 and 3) every step's loss. It must keep less:
 * the activation bytes shrink, and the planner equals the memory report.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insitra.h"
#include "model.h"
#include "test_util.h"

enum { B = 3, T = 8, F_IN = 3, F_OUT = 2, STEPS = 5, SAMPLES = 12 };

static double wave(double x) { return sin(x); }

/* One forward and backward of a model of L = 3 blocks; its loss, gradients and activation bytes. */
static double model_pass(insitra_test *t, bool recompute, float **grads, int64_t *act_bytes, int64_t *count)
{
    const insitra_model_dims d = {.seq_len = T, .in_features = F_IN, .out_features = F_OUT, .d_model = 16,
                                  .n_layers = 3, .n_heads = 2, .causal = true, .recompute = recompute};
    insitra_model m;
    if (!EXPECT_OK(t, insitra_model_create(&m, &d, B), "model_create")) return NAN;
    insitra_model_init_params(&m, 5, 0.3);
    float x[B * T * F_IN], y[B * T * F_OUT];
    insitra_test_fill_wave(x, B * T * F_IN, wave, 0.37, 0.1, 1.0);
    insitra_test_fill_wave(y, B * T * F_OUT, wave, 0.23, 0.7, 0.5);
    insitra_model_zero_grads(&m);
    const double loss = insitra_model_forward_host(&m, B, x, y);
    insitra_model_backward_host(&m, B, 1.0f);
    *count = m.layout.total;
    *grads = malloc((size_t)m.layout.total * sizeof(float));
    memcpy(*grads, m.grads, (size_t)m.layout.total * sizeof(float));
    *act_bytes = m.act_bytes;
    insitra_model_free(&m);
    return loss;
}

/* STEPS training steps of a trainer on every rank; the losses and the memory report. */
static void train(insitra_test *t, const char *recompute, int stage, double *losses, insitra_memory_usage *mem,
                  insitra_plan *plan)
{
    insitra_config *cfg = insitra_test_config(t, "model: {seq_len: 8, in_features: 3, out_features: 2,\n"
                                                 "        d_model: 16, n_layers: 3, n_heads: 2}\n"
                                                 "training: {seed: 3, batch_size: 4, micro_batch_size: 2}\n"
                                                 "data: {capacity: 12, sampler: sequential}\n");
    insitra_test_set(t, cfg, "training.recompute", "%s", recompute);
    insitra_test_set(t, cfg, "parallel.zero_stage", "%d", stage);
    insitra_trainer *tr = NULL;
    if (!EXPECT_OK(t, insitra_trainer_create(&tr, cfg, MPI_COMM_WORLD), "trainer_create")) {
        insitra_config_free(cfg);
        return;
    }
    float x[SAMPLES * T * F_IN], y[SAMPLES * T * F_OUT];
    insitra_test_fill_wave(x, SAMPLES * T * F_IN, wave, 0.31, 0.2 + t->rank, 1.0);
    insitra_test_fill_wave(y, SAMPLES * T * F_OUT, wave, 0.17, 0.5 + t->rank, 0.5);
    EXPECT_OK(t, insitra_push_samples(tr, SAMPLES, x, y), "push_samples");
    for (int k = 0; k < STEPS; k++) {
        insitra_metrics m;
        EXPECT_OK(t, insitra_train_step(tr, &m), "train_step");
        losses[k] = m.loss;
    }
    EXPECT_OK(t, insitra_memory_report(tr, mem), "memory_report");
    EXPECT_OK(t, insitra_plan_stage(cfg, t->size, stage, plan), "plan_stage");
    insitra_trainer_free(tr);
    insitra_config_free(cfg);
}

int main(int argc, char **argv)
{
    insitra_test test = insitra_test_begin(&argc, &argv, "recompute");
    insitra_test *t = &test;

    float *g_keep = NULL, *g_rec = NULL;
    int64_t bytes_keep = 0, bytes_rec = 0, n = 0;
    const double loss_keep = model_pass(t, false, &g_keep, &bytes_keep, &n);
    const double loss_rec = model_pass(t, true, &g_rec, &bytes_rec, &n);
    EXPECT(t, loss_keep == loss_rec, "model loss %.17g with recompute, %.17g without", loss_rec, loss_keep);
    EXPECT(t, g_keep && g_rec && memcmp(g_keep, g_rec, (size_t)n * sizeof(float)) == 0,
           "the gradients with recompute differ from those without (max error %g)",
           g_keep && g_rec ? insitra_test_max_error(g_rec, g_keep, n) : NAN);
    EXPECT(t, bytes_rec < bytes_keep, "activations: %lld bytes with recompute, %lld without",
           (long long)bytes_rec, (long long)bytes_keep);
    free(g_keep);
    free(g_rec);

    for (int stage = 0; stage <= 3; stage += 3) {
        double keep[STEPS] = {0}, rec[STEPS] = {0};
        insitra_memory_usage mem_keep, mem_rec;
        insitra_plan plan_keep, plan_rec;
        train(t, "none", stage, keep, &mem_keep, &plan_keep);
        train(t, "block", stage, rec, &mem_rec, &plan_rec);
        EXPECT(t, memcmp(keep, rec, sizeof keep) == 0, "stage %d: the losses with recompute differ (%.17g vs %.17g)",
               stage, rec[STEPS - 1], keep[STEPS - 1]);
        EXPECT(t, memcmp(&plan_rec.memory, &mem_rec, sizeof mem_rec) == 0,
               "stage %d: the plan with recompute (%lld bytes) differs from the report (%lld)", stage,
               (long long)plan_rec.memory.total_bytes, (long long)mem_rec.total_bytes);
        EXPECT(t, mem_rec.activation_bytes < mem_keep.activation_bytes,
               "stage %d: activations %lld bytes with recompute, %lld without", stage,
               (long long)mem_rec.activation_bytes, (long long)mem_keep.activation_bytes);
        if (t->rank == 0)
            printf("stage %d: activations %lld bytes with recompute, %lld without; losses equal\n", stage,
                   (long long)mem_rec.activation_bytes, (long long)mem_keep.activation_bytes);
    }
    return insitra_test_end(t);
}
