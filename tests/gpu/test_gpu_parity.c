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

#include "fixture.h"
#include "gpu.h"
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
    insitra_trainer *t = NULL; /* before the first goto bad_fixture, which frees it */
    const char *ikeys[] = {"dims/batch", "dims/seq_len", "dims/in_features", "dims/out_features",
                           "dims/d_model", "dims/n_layers", "dims/n_heads", "dims/causal",
                           "hparams/warmup_steps", "hparams/decay_steps", "hparams/steps"};
    const char *fkeys[] = {"hparams/lr", "hparams/min_lr", "hparams/beta1", "hparams/beta2",
                           "hparams/eps", "hparams/weight_decay", "hparams/max_grad_norm"};
    int64_t iv[11];
    double fv[7];
    for (int i = 0; i < 11; i++)
        if (fixture_scalar_i64(&fx, ikeys[i], &iv[i])) goto bad_fixture;
    for (int i = 0; i < 7; i++)
        if (fixture_scalar_f64(&fx, fkeys[i], &fv[i])) goto bad_fixture;
    const int64_t B = iv[0], T = iv[1], Fin = iv[2], Fout = iv[3], steps = iv[10];

    insitra_config *cfg = insitra_test_config(&tc, "device: cuda\ndata: {sampler: sequential}\n");
    if (!cfg) {
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }
    insitra_test_set(&tc, cfg, "precision", "%s", argv[2]);
    insitra_test_set(&tc, cfg, "model.causal", "%s", iv[7] ? "true" : "false");
    const char *model_keys[] = {"training.batch_size", "model.seq_len", "model.in_features",
                                "model.out_features", "model.d_model", "model.n_layers", "model.n_heads"};
    for (int i = 0; i < 7; i++) insitra_test_set(&tc, cfg, model_keys[i], "%lld", (long long)iv[i]);
    insitra_test_set(&tc, cfg, "data.capacity", "%lld", (long long)B);
    insitra_test_set(&tc, cfg, "optimizer.warmup_steps", "%lld", (long long)iv[8]);
    insitra_test_set(&tc, cfg, "optimizer.decay_steps", "%lld", (long long)iv[9]);
    const char *opt_keys[] = {"optimizer.lr", "optimizer.min_lr", "optimizer.beta1", "optimizer.beta2",
                              "optimizer.eps", "optimizer.weight_decay", "training.grad_clip"};
    for (int i = 0; i < 7; i++) insitra_test_set(&tc, cfg, opt_keys[i], "%.17g", fv[i]);

    const bool created = EXPECT_OK(&tc, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "trainer_create");
    insitra_config_free(cfg);
    if (!created) {
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }

    /* the fixture's parameters into the host copy (stage 0: full), then the device */
    const insitra_param_layout *l = &t->model.layout;
    for (int64_t i = 0; i < l->num_tensors; i++) {
        char key[96];
        const float *src;
        snprintf(key, sizeof key, "param/%s", l->tensors[i].name);
        if (fixture_get_f32(&fx, key, l->tensors[i].ndim, l->tensors[i].shape, &src)) goto bad_fixture;
        memcpy(t->model.params + l->tensors[i].offset, src, (size_t)l->tensors[i].numel * sizeof(float));
    }
    EXPECT_OK(&tc, insitra_gpu_upload_state(t->gpu, t), "gpu_upload_state");

    const float *x, *y, *out_ref;
    const double *loss_ref, *norm_ref, *lr_ref;
    double loss0;
    int64_t n1, n2, n3;
    if (fixture_get_f32(&fx, "x", 3, (const int64_t[]){B, T, Fin}, &x) ||
        fixture_get_f32(&fx, "y", 3, (const int64_t[]){B, T, Fout}, &y) ||
        fixture_get_f32(&fx, "out", 3, (const int64_t[]){B, T, Fout}, &out_ref) ||
        fixture_scalar_f64(&fx, "loss", &loss0) ||
        fixture_get_f64(&fx, "train/loss", &loss_ref, &n1) ||
        fixture_get_f64(&fx, "train/grad_norm", &norm_ref, &n2) ||
        fixture_get_f64(&fx, "train/lr", &lr_ref, &n3) || n1 != steps || n2 != steps || n3 != steps)
        goto bad_fixture;

    const double tol_fwd = bf16 ? 3e-2 : 1e-5, tol_train = bf16 ? 5e-2 : 1e-4;
    printf("test_gpu_parity: %s, %s: B=%lld T=%lld C=%lld L=%lld causal=%lld, %lld steps\n", argv[1],
           argv[2], (long long)B, (long long)T, (long long)iv[4], (long long)iv[5], (long long)iv[7],
           (long long)steps);
    float *out = malloc((size_t)(B * T * Fout) * sizeof(float));
    double loss = NAN;
    if (EXPECT_OK(&tc, insitra_predict(t, B, x, out), "predict") &&
        EXPECT_OK(&tc, insitra_evaluate(t, B, x, y, &loss), "evaluate")) {
        insitra_test_within(&tc, "forward output", insitra_test_max_error(out, out_ref, B * T * Fout), tol_fwd);
        insitra_test_within(&tc, "loss", insitra_test_rel_error(loss, loss0), tol_fwd);
    }
    free(out);
    EXPECT_OK(&tc, insitra_push_samples(t, B, x, y), "push_samples");
    double worst_loss = 0, worst_norm = 0, worst_lr = 0;
    for (int64_t s = 0; s < steps; s++) {
        insitra_metrics m;
        if (!EXPECT_OK(&tc, insitra_train_step(t, &m), "train_step")) break;
        worst_loss = fmax(worst_loss, insitra_test_rel_error(m.loss, loss_ref[s]));
        worst_norm = fmax(worst_norm, insitra_test_rel_error(m.grad_norm, norm_ref[s]));
        worst_lr = fmax(worst_lr, insitra_test_rel_error(m.lr, lr_ref[s]));
    }
    insitra_test_within(&tc, "training losses", worst_loss, tol_train);
    insitra_test_within(&tc, "training gradient norms", worst_norm, tol_train);
    insitra_test_within(&tc, "learning rates", worst_lr, 1e-12);
    insitra_trainer_free(t);
    fixture_free(&fx);
    return insitra_test_end(&tc);

bad_fixture:
    EXPECT(&tc, false, "%s", fx.error);
    insitra_trainer_free(t);
    fixture_free(&fx);
    return insitra_test_end(&tc);
}
