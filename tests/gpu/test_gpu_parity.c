/*
 * The CUDA backend against the PyTorch fixtures (tests/reference/), through
 * the trainer: the fixture's parameters are placed in the trainer's host
 * copy and uploaded to the device, then
 *   - predict and evaluate must give the fixture's forward output and loss,
 *   - train_step, on the fixture's batch (batch_size = the fixture's batch,
 *     sequential sampler over exactly those samples), must give its loss,
 *     gradient norm and learning rate at every one of its AdamW steps.
 *
 *   test_gpu_parity FIXTURE fp32|bf16
 *
 * Error measure as in tests/test_parity.c: a tensor's error is max|c - r| /
 * max|r|, a scalar's |c - r| / |r|. Tolerances: fp32 as test_parity (1e-5
 * forward, 1e-4 over the training steps: the GPU sums in other orders than
 * PyTorch's CPU run, nothing more). bf16 rounds every activation to 8
 * mantissa bits (~4e-3 relative each), through 2 blocks: 3e-2 on the
 * forward output and loss, 5e-2 on the training series.
 *
 * Exit 77 (CTest: skipped) when no CUDA device is usable.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parity_case.h"
#include "test_util.h"
#include "trainer.h"

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "gpu_parity");
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
        return insitra_test_skip(&tc, "no usable CUDA device");
    if (!EXPECT(&tc, argc == 3 && (!strcmp(argv[2], "fp32") || !strcmp(argv[2], "bf16")),
                "usage: %s FIXTURE fp32|bf16", argv[0]))
        return insitra_test_end(&tc);
    const int bf16 = strcmp(argv[2], "bf16") == 0;
    fixture fx;
    if (!EXPECT(&tc, fixture_load(&fx, argv[1]) == 0, "%s", fx.error)) return insitra_test_end(&tc);
    parity_case pc;
    if (!EXPECT(&tc, parity_case_read(&fx, &pc) == 0, "%s", fx.error)) {
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }
    const insitra_model_dims *d = &pc.dims;
    const int64_t B = pc.batch, T = d->seq_len, Fout = d->out_features, steps = pc.steps;

    /* the trainer of the reference's model and optimizer, training on exactly its batch */
    insitra_config *cfg = insitra_test_config(&tc, "device: cuda\ndata: {sampler: sequential}\n");
    insitra_trainer *t = NULL;
    if (cfg) {
        insitra_test_set(&tc, cfg, "precision", "%s", argv[2]);
        insitra_test_set(&tc, cfg, "model.causal", "%s", d->causal ? "true" : "false");
        const struct {
            const char *key;
            int64_t value;
        } ints[] = {{"model.seq_len", d->seq_len},
                    {"model.in_features", d->in_features},
                    {"model.out_features", d->out_features},
                    {"model.d_model", d->d_model},
                    {"model.n_layers", d->n_layers},
                    {"model.n_heads", d->n_heads},
                    {"training.batch_size", B},
                    {"data.capacity", B},
                    {"optimizer.warmup_steps", pc.hp.warmup_steps},
                    {"optimizer.decay_steps", pc.hp.decay_steps}};
        const struct {
            const char *key;
            double value;
        } reals[] = {{"optimizer.lr", pc.hp.lr},
                     {"optimizer.min_lr", pc.hp.min_lr},
                     {"optimizer.beta1", pc.hp.beta1},
                     {"optimizer.beta2", pc.hp.beta2},
                     {"optimizer.eps", pc.hp.eps},
                     {"optimizer.weight_decay", pc.hp.weight_decay},
                     {"training.grad_clip", pc.max_grad_norm}};
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
            insitra_test_set(&tc, cfg, ints[i].key, "%lld", (long long)ints[i].value);
        for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++)
            insitra_test_set(&tc, cfg, reals[i].key, "%.17g", reals[i].value);
        EXPECT_OK(&tc, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "trainer_create");
    }
    insitra_config_free(cfg);
    if (!t) {
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }

    /* the fixture's parameters into the host copy of the state (stage 0: full), then onto the device */
    if (!EXPECT(&tc, parity_case_load_params(&fx, &t->engine.model.layout, t->engine.zero.host_params) == 0, "%s", fx.error)) {
        insitra_trainer_free(t);
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }
    EXPECT_OK(&tc, insitra_zero_import(&t->engine.zero), "zero_import");
    const float *x = pc.x, *y = pc.y;

    const double tol_fwd = bf16 ? 3e-2 : 1e-5, tol_train = bf16 ? 5e-2 : 1e-4;
    printf("test_gpu_parity: %s, %s: B=%lld T=%lld C=%lld L=%lld causal=%d, %lld steps\n", argv[1], argv[2],
           (long long)B, (long long)T, (long long)d->d_model, (long long)d->n_layers, (int)d->causal,
           (long long)steps);
    float *out = malloc((size_t)(B * T * Fout) * sizeof(float));
    double loss = NAN;
    if (EXPECT_OK(&tc, insitra_predict(t, B, x, out), "predict") &&
        EXPECT_OK(&tc, insitra_evaluate(t, B, x, y, &loss), "evaluate")) {
        insitra_test_within(&tc, "forward output", insitra_test_max_error(out, pc.out, B * T * Fout),
                            tol_fwd);
        insitra_test_within(&tc, "loss", insitra_test_rel_error(loss, pc.loss), tol_fwd);
    }
    free(out);
    EXPECT_OK(&tc, insitra_push_samples(t, B, x, y), "push_samples");
    double worst_loss = 0, worst_norm = 0, worst_lr = 0;
    for (int64_t s = 0; s < steps; s++) {
        insitra_metrics m;
        if (!EXPECT_OK(&tc, insitra_train_step(t, &m), "train_step")) break;
        worst_loss = fmax(worst_loss, insitra_test_rel_error(m.loss, pc.train_loss[s]));
        worst_norm = fmax(worst_norm, insitra_test_rel_error(m.grad_norm, pc.train_grad_norm[s]));
        worst_lr = fmax(worst_lr, insitra_test_rel_error(m.lr, pc.train_lr[s]));
    }
    insitra_test_within(&tc, "training losses", worst_loss, tol_train);
    insitra_test_within(&tc, "training gradient norms", worst_norm, tol_train);
    insitra_test_within(&tc, "learning rates", worst_lr, 1e-12);
    insitra_trainer_free(t);
    fixture_free(&fx);
    return insitra_test_end(&tc);
}
