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
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "insitra.h"
#include "trainer.h"

static int failures;

static void report(const char *what, double err, double tol)
{
    const int ok = err <= tol; /* NaN fails */
    printf("  %-28s err %.3e  tol %.0e  %s\n", what, err, tol, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static double tensor_err(const float *c, const float *r, int64_t n)
{
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(c[i])) return INFINITY;
        d = fmax(d, fabs((double)c[i] - r[i]));
        m = fmax(m, fabs((double)r[i]));
    }
    return d / fmax(m, 1e-30);
}

static double scalar_err(double c, double r) { return isfinite(c) ? fabs(c - r) / fmax(fabs(r), 1e-30) : INFINITY; }

static void set(insitra_config *cfg, const char *key, double v, int integer)
{
    char text[64];
    if (integer) snprintf(text, sizeof text, "%lld", (long long)v);
    else snprintf(text, sizeof text, "%.17g", v);
    if (insitra_config_set(cfg, key, text) != INSITRA_STATUS_OK) {
        printf("FAIL config %s = %s: %s\n", key, text, insitra_last_error());
        failures++;
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("SKIP: no usable CUDA device\n");
        MPI_Finalize();
        return 77;
    }
    if (argc != 3 || (strcmp(argv[2], "fp32") && strcmp(argv[2], "bf16"))) {
        fprintf(stderr, "usage: %s FIXTURE fp32|bf16\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    const int bf16 = strcmp(argv[2], "bf16") == 0;
    fixture fx;
    if (fixture_load(&fx, argv[1]) != 0) {
        fprintf(stderr, "test_gpu_parity: %s\n", fx.error);
        MPI_Finalize();
        return 1;
    }
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

    insitra_config *cfg;
    insitra_config_create(&cfg);
    insitra_config_set(cfg, "device", "cuda");
    insitra_config_set(cfg, "precision", argv[2]);
    insitra_config_set(cfg, "data.sampler", "sequential");
    insitra_config_set(cfg, "model.causal", iv[7] ? "true" : "false");
    const char *model_keys[] = {"training.batch_size", "model.seq_len", "model.in_features",
                                "model.out_features", "model.d_model", "model.n_layers", "model.n_heads"};
    for (int i = 0; i < 7; i++) set(cfg, model_keys[i], (double)iv[i], 1);
    set(cfg, "data.capacity", (double)B, 1);
    set(cfg, "optimizer.warmup_steps", (double)iv[8], 1);
    set(cfg, "optimizer.decay_steps", (double)iv[9], 1);
    const char *opt_keys[] = {"optimizer.lr", "optimizer.min_lr", "optimizer.beta1", "optimizer.beta2",
                              "optimizer.eps", "optimizer.weight_decay", "training.grad_clip"};
    for (int i = 0; i < 7; i++) set(cfg, opt_keys[i], fv[i], 0);

    insitra_trainer *t = NULL;
    if (insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK) {
        printf("FAIL trainer_create: %s\n", insitra_last_error());
        insitra_config_free(cfg);
        fixture_free(&fx);
        MPI_Finalize();
        return 1;
    }
    insitra_config_free(cfg);

    /* the fixture's parameters, then onto the device */
    const insitra_param_layout *l = &t->engine.model.layout;
    float *full = calloc((size_t)l->total, sizeof(float));
    for (int64_t i = 0; i < l->num_tensors; i++) {
        char key[96];
        const float *src;
        snprintf(key, sizeof key, "param/%s", l->tensors[i].name);
        if (fixture_get_f32(&fx, key, l->tensors[i].ndim, l->tensors[i].shape, &src)) goto bad_fixture;
        memcpy(full + l->tensors[i].offset, src, (size_t)l->tensors[i].numel * sizeof(float));
    }
    const insitra_status up = insitra_zero_set_params(&t->engine.zero, full);
    free(full);
    if (up != INSITRA_STATUS_OK) {
        printf("FAIL upload: %s\n", insitra_last_error());
        failures++;
    }

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
    if (insitra_predict(t, B, x, out) != INSITRA_STATUS_OK || insitra_evaluate(t, B, x, y, &loss) != INSITRA_STATUS_OK) {
        printf("FAIL predict/evaluate: %s\n", insitra_last_error());
        failures++;
    } else {
        report("forward output", tensor_err(out, out_ref, B * T * Fout), tol_fwd);
        report("loss", scalar_err(loss, loss0), tol_fwd);
    }
    free(out);
    if (insitra_push_samples(t, B, x, y) != INSITRA_STATUS_OK) {
        printf("FAIL push_samples: %s\n", insitra_last_error());
        failures++;
    }
    double worst_loss = 0, worst_norm = 0, worst_lr = 0;
    for (int64_t s = 0; s < steps; s++) {
        insitra_metrics m;
        if (insitra_train_step(t, &m) != INSITRA_STATUS_OK) {
            printf("FAIL train_step %lld: %s\n", (long long)s + 1, insitra_last_error());
            failures++;
            break;
        }
        worst_loss = fmax(worst_loss, scalar_err(m.loss, loss_ref[s]));
        worst_norm = fmax(worst_norm, scalar_err(m.grad_norm, norm_ref[s]));
        worst_lr = fmax(worst_lr, scalar_err(m.lr, lr_ref[s]));
    }
    report("training losses", worst_loss, tol_train);
    report("training gradient norms", worst_norm, tol_train);
    report("learning rates", worst_lr, 1e-12);
    insitra_trainer_free(t);
    fixture_free(&fx);
    printf("%s\n", failures ? "FAILED" : "PASSED");
    MPI_Finalize();
    return failures ? 1 : 0;

bad_fixture:
    fprintf(stderr, "test_gpu_parity: %s\n", fx.error);
    fixture_free(&fx);
    MPI_Finalize();
    return 1;
}
