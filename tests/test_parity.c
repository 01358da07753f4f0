/*
 * Parity with the PyTorch reference (tests/reference/insitra_reference.py).
 *
 *   test_parity FIXTURE
 *
 * The fixture (tests/reference/make_parity_fixture.py) holds a small model's
 * parameters, one batch, and what PyTorch computed from them: the forward
 * output and loss, every parameter gradient, and the loss and gradient norm
 * of 10 AdamW steps on that batch. This program loads the same parameters
 * into an insitra_model, recomputes each quantity with the library and
 * compares. Exit status 0 when every quantity is within its tolerance.
 *
 * Error measure. A tensor's error is normalized by its own scale:
 *     err = max_i |c_i - r_i| / max(max_i |r_i|, 1e-30)     (c: C, r: reference)
 * so "1e-4" means "wrong by at most 1e-4 of the tensor's largest entry".
 * Elementwise relative errors would be meaningless for entries that are
 * zero in exact arithmetic and fp32 rounding noise in both codes (the k part
 * of a qkv bias gradient: softmax ignores a shift shared by all scores). A
 * scalar's error is |c - r| / max(|r|, 1e-30); for the 10-step series it is
 * the worst step. NaN or Inf anywhere in c counts as an infinite error.
 *
 * Tolerances. Two independent float32 implementations that sum in
 * different orders (BLAS vs torch) agree to ~1e-6 on this model; the
 * fixture's own numbers agree with a float64 evaluation to under 1e-6 (out,
 * grads) and 2e-7 (the 10-step losses). The tolerances leave headroom for
 * summation order and nothing more:
 *   forward output, loss          1e-5
 *   gradients                     1e-4  (a backward pass compounds more roundings)
 *   10-step losses, grad norms    1e-4  (the same, after 10 updates)
 *   learning rates                1e-12 (both are double evaluations of one formula)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parity_case.h"
#include "test_util.h"

#define TOL_OUT 1e-5
#define TOL_LOSS 1e-5
#define TOL_GRAD 1e-4
#define TOL_TRAIN 1e-4
#define TOL_LR 1e-12

/* The error measures are insitra_test_max_error and insitra_test_rel_error
 * (test_util.h), which test_test_util.c checks on known mismatches: a
 * comparison that cannot fail would pass anything. */

/* The tensors must tile the buffer exactly, each float in one tensor: the
 * optimizer and the gradient norm treat the buffer as one range, so a gap
 * or an overlap would be updated or counted wrongly without any tensor
 * comparison noticing. */
static int check_layout_tiles(const insitra_param_layout *layout) {
    unsigned char *owner = calloc((size_t)layout->total, 1);
    if (!owner) {
        fprintf(stderr, "test_parity: out of memory\n");
        return -1;
    }
    int rc = 0;
    for (int64_t i = 0; i < layout->num_tensors && rc == 0; i++) {
        const insitra_tensor_desc *t = &layout->tensors[i];
        int64_t cols = t->ndim == 2 ? t->shape[1] : 1;
        if (t->numel != t->shape[0] * cols || t->offset < 0 ||
            t->offset + t->numel > layout->total) {
            fprintf(stderr, "test_parity: layout tensor '%s': numel %lld offset %lld "
                    "inconsistent with its shape or the total %lld\n", t->name,
                    (long long)t->numel, (long long)t->offset, (long long)layout->total);
            rc = -1;
        }
        for (int64_t k = 0; k < t->numel && rc == 0; k++) {
            if (owner[t->offset + k]++) {
                fprintf(stderr, "test_parity: layout tensor '%s' overlaps another at float %lld\n",
                        t->name, (long long)(t->offset + k));
                rc = -1;
            }
        }
    }
    for (int64_t k = 0; k < layout->total && rc == 0; k++) {
        if (!owner[k]) {
            fprintf(stderr, "test_parity: float %lld of the buffer is in no tensor\n",
                    (long long)k);
            rc = -1;
        }
    }
    free(owner);
    return rc;
}

int main(int argc, char **argv) {
    insitra_test tc = insitra_test_begin(&argc, &argv, "parity");
    if (!EXPECT(&tc, argc == 2, "usage: %s FIXTURE", argv[0])) {
        return insitra_test_end(&tc);
    }
    fixture fx;
    if (!EXPECT(&tc, fixture_load(&fx, argv[1]) == 0, "%s", fx.error)) {
        return insitra_test_end(&tc);
    }

    /* ---- the case: dims, hyper-parameters and data, as the reference used them ---- */
    parity_case pc;
    if (!EXPECT(&tc, parity_case_read(&fx, &pc) == 0, "%s", fx.error)) {
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }
    const insitra_model_dims dims = pc.dims;
    const insitra_adamw_hparams hp = pc.hp;
    const int64_t B = pc.batch, steps = pc.steps;
    const int64_t T = dims.seq_len, Fout = dims.out_features;
    const float *x = pc.x, *y = pc.y, *grad_ref;
    printf("test_parity: %s\n  B=%lld T=%lld F_in=%lld F_out=%lld C=%lld L=%lld H=%lld causal=%d, "
           "%lld AdamW steps\n", argv[1], (long long)B, (long long)T, (long long)dims.in_features,
           (long long)Fout, (long long)dims.d_model, (long long)dims.n_layers,
           (long long)dims.n_heads, (int)dims.causal, (long long)steps);

    insitra_model m;
    if (!EXPECT_OK(&tc, insitra_model_create(&m, &dims, B), "model_create")) {
        fixture_free(&fx);
        return insitra_test_end(&tc);
    }
    const insitra_param_layout *layout = &m.layout;
    const int64_t total = layout->total;
    float *adam_m = calloc((size_t)total, sizeof(float));
    float *adam_v = calloc((size_t)total, sizeof(float));
    double *loss_c = calloc((size_t)steps, sizeof(double));
    double *norm_c = calloc((size_t)steps, sizeof(double));
    double *lr_c = calloc((size_t)steps, sizeof(double));
    if (!EXPECT(&tc, adam_m && adam_v && loss_c && norm_c && lr_c, "out of memory")) {
        goto done;
    }
    printf("  %lld parameter tensors, %lld parameters\n", (long long)layout->num_tensors,
           (long long)total);
    if (!EXPECT(&tc, check_layout_tiles(layout) == 0, "the layout (above)") ||
        !EXPECT(&tc, parity_case_load_params(&fx, layout, (float *)m.params) == 0, "%s", fx.error)) {
        goto done;
    }

    /* ---- forward ---- */
    printf("forward\n");
    double loss = insitra_model_forward_host(&m, B, x, y);
    insitra_test_within(&tc, "out", insitra_test_max_error(m.a.out, pc.out, B * T * Fout), TOL_OUT);
    insitra_test_within(&tc, "loss", insitra_test_rel_error(loss, pc.loss), TOL_LOSS);

    /* ---- backward: every gradient tensor, by name ---- */
    printf("backward\n");
    insitra_model_zero_grads(&m);
    insitra_model_backward_host(&m, B, 1.0f);
    int64_t grads_in_fixture = 0;
    for (int64_t i = 0; i < fx.num_records; i++) {
        grads_in_fixture += strncmp(fx.records[i].name, "grad/", 5) == 0;
    }
    if (grads_in_fixture != layout->num_tensors) {
        EXPECT(&tc, false, "fixture has %lld gradients, the layout %lld tensors", (long long)grads_in_fixture,
               (long long)layout->num_tensors);
        goto done;
    }
    for (int64_t i = 0; i < layout->num_tensors; i++) {
        const insitra_tensor_desc *d = &layout->tensors[i];
        char key[96];
        snprintf(key, sizeof(key), "grad/%s", d->name);
        if (fixture_get_f32(&fx, key, d->ndim, d->shape, &grad_ref) != 0) {
            EXPECT(&tc, false, "%s", fx.error);
            goto done;
        }
        insitra_test_within(&tc, key, insitra_test_max_error(m.grads + d->offset, grad_ref, d->numel),
                            TOL_GRAD);
    }

    /* ---- training: the reference's loop, step for step ---- */
    printf("training, %lld AdamW steps on the same batch from the initial parameters\n",
           (long long)steps);
    if (!EXPECT(&tc, parity_case_load_params(&fx, layout, (float *)m.params) == 0, "%s", fx.error)) {
        goto done;
    }
    for (int64_t s = 0; s < steps; s++) {
        insitra_model_zero_grads(&m);
        loss_c[s] = insitra_model_forward_host(&m, B, x, y);
        insitra_model_backward_host(&m, B, 1.0f);
        norm_c[s] = sqrt(insitra_sum_squares(m.grads, total));
        float scale = insitra_clip_factor(norm_c[s], pc.max_grad_norm);
        lr_c[s] = insitra_lr_at(&hp, s);
        insitra_adamw_update_all((float *)m.params, m.grads, adam_m, adam_v, layout, s + 1, lr_c[s],
                                 scale, &hp);
    }
    double worst_loss = 0.0, worst_norm = 0.0, worst_lr = 0.0;
    printf("  step  loss (C)      loss (torch)  grad norm (C)  grad norm (torch)  lr\n");
    for (int64_t s = 0; s < steps; s++) {
        printf("  %4lld  %.8f  %.8f  %.8f     %.8f         %.6g\n", (long long)s, loss_c[s],
               pc.train_loss[s], norm_c[s], pc.train_grad_norm[s], lr_c[s]);
        worst_loss = fmax(worst_loss, insitra_test_rel_error(loss_c[s], pc.train_loss[s]));
        worst_norm = fmax(worst_norm, insitra_test_rel_error(norm_c[s], pc.train_grad_norm[s]));
        worst_lr = fmax(worst_lr, insitra_test_rel_error(lr_c[s], pc.train_lr[s]));
        /* fmax drops a NaN operand; insitra_test_rel_error never returns NaN, only INFINITY. */
    }
    insitra_test_within(&tc, "train/loss", worst_loss, TOL_TRAIN);
    insitra_test_within(&tc, "train/grad_norm", worst_norm, TOL_TRAIN);
    insitra_test_within(&tc, "train/lr", worst_lr, TOL_LR);

done:
    free(adam_m);
    free(adam_v);
    free(loss_c);
    free(norm_c);
    free(lr_c);
    insitra_model_free(&m);
    fixture_free(&fx);
    return insitra_test_end(&tc);
}
