/*
 * Finite-difference check of the whole model's backward: every parameter
 * tensor (a spread of entries in each) against central differences of the
 * MSE loss, for the bidirectional and the causal model, and a check that
 * backward accumulates (two micro-batches = one batch of both).
 *
 * Tolerance: |fd - analytic| <= 1e-4 + 1e-2 * max(|fd|, |analytic|), h = 1e-2
 * (Richardson-extrapolated with h/2, see gradcheck.c).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "model.h"

typedef struct { insitra_model *m; int64_t B; const float *x, *y; } model_case;

static double model_loss(void *p)
{
    model_case *c = p;
    return insitra_model_forward_host(c->m, c->B, c->x, c->y);
}

static int check_model(bool causal)
{
    const insitra_model_dims d = {.seq_len = 4, .in_features = 3, .out_features = 2, .d_model = 8,
                                  .n_layers = 2, .n_heads = 2, .causal = causal};
    const int64_t B = 2;
    insitra_model m;
    if (insitra_model_create(&m, &d, B) != INSITRA_STATUS_OK) {
        printf("model_create failed: %s\n", insitra_last_error());
        return 1;
    }
    /* A larger init than training uses, so every path carries real signal. */
    insitra_model_init_params(&m, 7, 0.3);
    for (int64_t i = 0; i < m.layout.num_tensors; i++) { /* non-trivial biases and LN params */
        insitra_tensor_desc *t = &m.layout.tensors[i];
        if (t->ndim == 1) {
            float *p = (float *)m.params + t->offset;
            float noise[64];
            fill_uniform(noise, t->numel, 100 + (uint64_t)i, 0.2f);
            for (int64_t j = 0; j < t->numel; j++) p[j] += noise[j];
        }
    }
    float x[2 * 4 * 3], y[2 * 4 * 2];
    fill_uniform(x, 24, 1, 1.0f);
    fill_uniform(y, 16, 2, 1.0f);
    model_case c = {&m, B, x, y};

    insitra_model_zero_grads(&m);
    insitra_model_forward_host(&m, B, x, y);
    insitra_model_backward_host(&m, B, 1.0f);
    float *analytic = malloc((size_t)m.layout.total * sizeof(float));
    memcpy(analytic, m.grads, (size_t)m.layout.total * sizeof(float));

    int failures = 0;
    printf("-- %s model, %lld parameters\n", causal ? "causal" : "bidirectional",
           (long long)m.layout.total);
    for (int64_t i = 0; i < m.layout.num_tensors; i++) {
        const insitra_tensor_desc *t = &m.layout.tensors[i];
        failures += gradcheck(t->name, (float *)m.params + t->offset, analytic + t->offset, t->numel,
                              model_loss, &c, 24, 1e-2, 1e-4, 1e-2);
    }

    /* Two micro-batches of one sample with loss_scale 1/2 each = the batch of two. */
    insitra_model_zero_grads(&m);
    for (int b = 0; b < 2; b++) {
        insitra_model_forward_host(&m, 1, x + b * 12, y + b * 8);
        insitra_model_backward_host(&m, 1, 0.5f);
    }
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < m.layout.total; i++) {
        worst = fmax(worst, fabs(m.grads[i] - analytic[i]));
        scale = fmax(scale, fabs(analytic[i]));
    }
    const bool accum_ok = worst <= 1e-5 * scale;
    printf("%-28s %s: max |micro-batched - batched| = %.3e (max |g| = %.3e, allowed 1e-5 x)\n",
           "gradient accumulation", accum_ok ? "ok" : "FAIL", worst, scale);
    failures += !accum_ok;

    free(analytic);
    insitra_model_free(&m);
    return failures;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const int failures = check_model(false) + check_model(true);
    printf("model_gradcheck: %s (%d failing entries)\n", failures ? "FAILED" : "passed", failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
