/*
 * Finite-difference check of the whole model's backward: every parameter
 * tensor (a spread of entries in each) against central differences of the
 * MSE loss, for the bidirectional and the causal model, and a check that
 * backward accumulates (two micro-batches = one batch of both).
 *
 * Tolerance: |fd - analytic| <= 1e-4 + 1e-2 * max(|fd|, |analytic|), h = 1e-2
 * (Richardson-extrapolated with h/2, see gradcheck.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "model.h"
#include "test_util.h"

typedef struct { insitra_model *m; int64_t B; const float *x, *y; } model_case;

static double model_loss(void *p)
{
    model_case *c = p;
    return insitra_model_forward_host(c->m, c->B, c->x, c->y);
}

static void check_model(insitra_test *tc, bool causal)
{
    const insitra_model_dims d = {.seq_len = 4, .in_features = 3, .out_features = 2, .d_model = 8,
                                  .n_layers = 2, .n_heads = 2, .causal = causal};
    const int64_t B = 2;
    insitra_model m;
    if (!EXPECT_OK(tc, insitra_model_create(&m, &d, B), "model_create")) return;
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

    printf("-- %s model, %lld parameters\n", causal ? "causal" : "bidirectional",
           (long long)m.layout.total);
    for (int64_t i = 0; i < m.layout.num_tensors; i++) {
        const insitra_tensor_desc *t = &m.layout.tensors[i];
        const int off = gradcheck(t->name, (float *)m.params + t->offset, analytic + t->offset, t->numel, model_loss,
                                  &c, 24, 1e-2, 1e-4, 1e-2);
        EXPECT(tc, off == 0, "%s model, %s: %d checked entries off tolerance",
               causal ? "causal" : "bidirectional", t->name, off);
    }

    /* Two micro-batches of one sample with loss_scale 1/2 each = the batch of two. */
    insitra_model_zero_grads(&m);
    for (int b = 0; b < 2; b++) {
        insitra_model_forward_host(&m, 1, x + b * 12, y + b * 8);
        insitra_model_backward_host(&m, 1, 0.5f);
    }
    insitra_test_within(tc, "gradient accumulation (max error)",
                        insitra_test_max_error(m.grads, analytic, m.layout.total), 1e-5);

    free(analytic);
    insitra_model_free(&m);
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "model_gradcheck");
    check_model(&tc, false);
    check_model(&tc, true);
    return insitra_test_end(&tc);
}
