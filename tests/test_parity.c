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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "model.h"
#include "optimizer.h"

#define TOL_OUT 1e-5
#define TOL_LOSS 1e-5
#define TOL_GRAD 1e-4
#define TOL_TRAIN 1e-4
#define TOL_LR 1e-12
#define TINY 1e-30
#define MAX_STEPS 1000

/* Tally of every comparison made, for the summary line. */
typedef struct tally {
    int compared;
    int failed;
    double worst;          /* largest err / tol seen */
    char worst_name[96];
} tally;

/* max |c - r| / max(max |r|, TINY) over n values; INFINITY if c is not finite. */
static double normalized_error(const float *c, const float *r, int64_t n) {
    double max_diff = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(c[i])) {
            return INFINITY;
        }
        double diff = fabs((double)c[i] - (double)r[i]);
        max_diff = diff > max_diff ? diff : max_diff;
        max_ref = fabs((double)r[i]) > max_ref ? fabs((double)r[i]) : max_ref;
    }
    return max_diff / (max_ref > TINY ? max_ref : TINY);
}

/* |c - r| / max(|r|, TINY); INFINITY if c is not finite. */
static double relative_error(double c, double r) {
    if (!isfinite(c)) {
        return INFINITY;
    }
    return fabs(c - r) / (fabs(r) > TINY ? fabs(r) : TINY);
}

/* Records one comparison and prints it. Written as !(err <= tol) so that a
 * NaN error fails too. */
static void report(tally *t, const char *name, double err, double tol) {
    bool ok = err <= tol;
    t->compared++;
    t->failed += !ok;
    /* err / tol, so quantities with different tolerances can be ranked; the
     * first failure stays the named one. */
    double ratio = ok ? err / tol : INFINITY;
    if (t->compared == 1 || ratio > t->worst) {
        t->worst = ratio;
        snprintf(t->worst_name, sizeof(t->worst_name), "%s", name);
    }
    printf("  %-36s worst err %.3e  tol %.0e  %s\n", name, err, tol, ok ? "ok" : "FAIL");
}

/* The comparison itself must be able to fail; check it on known answers
 * before trusting a "pass" from it. */
static bool error_measure_works(void) {
    const float ref[3] = {1.0f, -2.0f, 4.0f};
    const float off[3] = {1.0f, -2.0f, 4.004f};   /* 1e-3 of the largest entry */
    const float bad[3] = {1.0f, NAN, 4.0f};
    return normalized_error(ref, ref, 3) == 0.0 &&
           fabs(normalized_error(off, ref, 3) - 1e-3) < 1e-6 &&
           !(normalized_error(bad, ref, 3) <= TOL_GRAD) &&
           !(relative_error(NAN, 1.0) <= TOL_LOSS) &&
           relative_error(1.0 + 2e-5, 1.0) > TOL_LOSS;
}

static int fixture_fail(fixture *f) {
    fprintf(stderr, "test_parity: %s\n", f->error);
    return -1;
}

/* Copies every fixture "param/<name>" tensor into params at the offset of the
 * layout tensor of that name. Fails on a missing tensor, a shape mismatch, or
 * a fixture tensor the layout does not have. */
static int load_params(fixture *f, const insitra_param_layout *layout, float *params) {
    for (int64_t i = 0; i < layout->num_tensors; i++) {
        const insitra_tensor_desc *t = &layout->tensors[i];
        char key[96];
        snprintf(key, sizeof(key), "param/%s", t->name);
        const float *src;
        if (fixture_get_f32(f, key, t->ndim, t->shape, &src) != 0) {
            return fixture_fail(f);
        }
        memcpy(params + t->offset, src, (size_t)t->numel * sizeof(float));
    }
    for (int64_t i = 0; i < f->num_records; i++) {
        const char *name = f->records[i].name;
        if (strncmp(name, "param/", 6) == 0 && insitra_param_layout_find(layout, name + 6) < 0) {
            fprintf(stderr, "test_parity: fixture tensor '%s' is not in the C layout\n", name);
            return -1;
        }
    }
    return 0;
}

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
    /* Line-buffered even into a pipe (CTest), so the log shows how far it
     * got if the library crashes. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURE\n", argv[0]);
        return 2;
    }
    if (!error_measure_works()) {
        fprintf(stderr, "test_parity: the error measure does not detect known mismatches\n");
        return 2;
    }
    fixture fx;
    if (fixture_load(&fx, argv[1]) != 0) {
        fprintf(stderr, "test_parity: %s\n", fx.error);
        return 2;
    }

    /* ---- dims and hyper-parameters, as the reference used them ---- */
    int64_t B, causal, steps;
    insitra_model_dims dims;
    insitra_adamw_hparams hp;
    double max_grad_norm;
    if (fixture_scalar_i64(&fx, "dims/batch", &B) ||
        fixture_scalar_i64(&fx, "dims/seq_len", &dims.seq_len) ||
        fixture_scalar_i64(&fx, "dims/in_features", &dims.in_features) ||
        fixture_scalar_i64(&fx, "dims/out_features", &dims.out_features) ||
        fixture_scalar_i64(&fx, "dims/d_model", &dims.d_model) ||
        fixture_scalar_i64(&fx, "dims/n_layers", &dims.n_layers) ||
        fixture_scalar_i64(&fx, "dims/n_heads", &dims.n_heads) ||
        fixture_scalar_i64(&fx, "dims/causal", &causal) ||
        fixture_scalar_f64(&fx, "hparams/lr", &hp.lr) ||
        fixture_scalar_f64(&fx, "hparams/min_lr", &hp.min_lr) ||
        fixture_scalar_i64(&fx, "hparams/warmup_steps", &hp.warmup_steps) ||
        fixture_scalar_i64(&fx, "hparams/decay_steps", &hp.decay_steps) ||
        fixture_scalar_f64(&fx, "hparams/beta1", &hp.beta1) ||
        fixture_scalar_f64(&fx, "hparams/beta2", &hp.beta2) ||
        fixture_scalar_f64(&fx, "hparams/eps", &hp.eps) ||
        fixture_scalar_f64(&fx, "hparams/weight_decay", &hp.weight_decay) ||
        fixture_scalar_f64(&fx, "hparams/max_grad_norm", &max_grad_norm) ||
        fixture_scalar_i64(&fx, "hparams/steps", &steps)) {
        fprintf(stderr, "test_parity: %s\n", fx.error);
        fixture_free(&fx);
        return 2;
    }
    if (B < 1 || steps < 1 || steps > MAX_STEPS || (causal != 0 && causal != 1)) {
        fprintf(stderr, "test_parity: implausible fixture: batch %lld, steps %lld, causal %lld\n",
                (long long)B, (long long)steps, (long long)causal);
        fixture_free(&fx);
        return 2;
    }
    dims.causal = causal != 0;
    const int64_t T = dims.seq_len, Fin = dims.in_features, Fout = dims.out_features;
    printf("test_parity: %s\n  B=%lld T=%lld F_in=%lld F_out=%lld C=%lld L=%lld H=%lld causal=%d, "
           "%lld AdamW steps\n", argv[1], (long long)B, (long long)T, (long long)Fin,
           (long long)Fout, (long long)dims.d_model, (long long)dims.n_layers,
           (long long)dims.n_heads, (int)dims.causal, (long long)steps);

    const float *x, *y, *out_ref, *grad_ref;
    const double *loss_series, *norm_series, *lr_series;
    double loss_ref;
    int64_t n_loss, n_norm, n_lr;
    if (fixture_get_f32(&fx, "x", 3, (const int64_t[]){B, T, Fin}, &x) ||
        fixture_get_f32(&fx, "y", 3, (const int64_t[]){B, T, Fout}, &y) ||
        fixture_get_f32(&fx, "out", 3, (const int64_t[]){B, T, Fout}, &out_ref) ||
        fixture_scalar_f64(&fx, "loss", &loss_ref) ||
        fixture_get_f64(&fx, "train/loss", &loss_series, &n_loss) ||
        fixture_get_f64(&fx, "train/grad_norm", &norm_series, &n_norm) ||
        fixture_get_f64(&fx, "train/lr", &lr_series, &n_lr)) {
        fprintf(stderr, "test_parity: %s\n", fx.error);
        fixture_free(&fx);
        return 2;
    }
    if (n_loss != steps || n_norm != steps || n_lr != steps) {
        fprintf(stderr, "test_parity: train series hold %lld/%lld/%lld values, expected %lld\n",
                (long long)n_loss, (long long)n_norm, (long long)n_lr, (long long)steps);
        fixture_free(&fx);
        return 2;
    }

    insitra_model m;
    insitra_status st = insitra_model_create(&m, &dims, B);
    if (st != INSITRA_STATUS_OK) {
        fprintf(stderr, "test_parity: insitra_model_create: %s: %s\n", insitra_status_name(st),
                insitra_last_error());
        fixture_free(&fx);
        return 2;
    }
    const insitra_param_layout *layout = &m.layout;
    const int64_t total = layout->total;
    float *adam_m = calloc((size_t)total, sizeof(float));
    float *adam_v = calloc((size_t)total, sizeof(float));
    double *loss_c = calloc((size_t)steps, sizeof(double));
    double *norm_c = calloc((size_t)steps, sizeof(double));
    double *lr_c = calloc((size_t)steps, sizeof(double));
    int rc = 2;
    if (!adam_m || !adam_v || !loss_c || !norm_c || !lr_c) {
        fprintf(stderr, "test_parity: out of memory\n");
        goto done;
    }
    printf("  %lld parameter tensors, %lld parameters\n", (long long)layout->num_tensors,
           (long long)total);
    if (check_layout_tiles(layout) != 0 || load_params(&fx, layout, (float *)m.params) != 0) {
        goto done;
    }

    tally t = {0};

    /* ---- forward ---- */
    printf("forward\n");
    double loss = insitra_model_forward_host(&m, B, x, y);
    report(&t, "out", normalized_error(m.a.out, out_ref, B * T * Fout), TOL_OUT);
    report(&t, "loss", relative_error(loss, loss_ref), TOL_LOSS);

    /* ---- backward: every gradient tensor, by name ---- */
    printf("backward\n");
    insitra_model_zero_grads(&m);
    insitra_model_backward_host(&m, B, 1.0f);
    int64_t grads_in_fixture = 0;
    for (int64_t i = 0; i < fx.num_records; i++) {
        grads_in_fixture += strncmp(fx.records[i].name, "grad/", 5) == 0;
    }
    if (grads_in_fixture != layout->num_tensors) {
        fprintf(stderr, "test_parity: fixture has %lld gradients, the layout %lld tensors\n",
                (long long)grads_in_fixture, (long long)layout->num_tensors);
        goto done;
    }
    for (int64_t i = 0; i < layout->num_tensors; i++) {
        const insitra_tensor_desc *d = &layout->tensors[i];
        char key[96];
        snprintf(key, sizeof(key), "grad/%s", d->name);
        if (fixture_get_f32(&fx, key, d->ndim, d->shape, &grad_ref) != 0) {
            fixture_fail(&fx);
            goto done;
        }
        report(&t, key, normalized_error(m.grads + d->offset, grad_ref, d->numel), TOL_GRAD);
    }

    /* ---- training: the reference's loop, step for step ---- */
    printf("training, %lld AdamW steps on the same batch from the initial parameters\n",
           (long long)steps);
    if (load_params(&fx, layout, (float *)m.params) != 0) {
        goto done;
    }
    for (int64_t s = 0; s < steps; s++) {
        insitra_model_zero_grads(&m);
        loss_c[s] = insitra_model_forward_host(&m, B, x, y);
        insitra_model_backward_host(&m, B, 1.0f);
        norm_c[s] = sqrt(insitra_sum_squares(m.grads, total));
        float scale = insitra_clip_factor(norm_c[s], max_grad_norm);
        lr_c[s] = insitra_lr_at(&hp, s);
        insitra_adamw_update_all((float *)m.params, m.grads, adam_m, adam_v, layout, s + 1, lr_c[s],
                                 scale, &hp);
    }
    double worst_loss = 0.0, worst_norm = 0.0, worst_lr = 0.0;
    printf("  step  loss (C)      loss (torch)  grad norm (C)  grad norm (torch)  lr\n");
    for (int64_t s = 0; s < steps; s++) {
        printf("  %4lld  %.8f  %.8f  %.8f     %.8f         %.6g\n", (long long)s, loss_c[s],
               loss_series[s], norm_c[s], norm_series[s], lr_c[s]);
        worst_loss = fmax(worst_loss, relative_error(loss_c[s], loss_series[s]));
        worst_norm = fmax(worst_norm, relative_error(norm_c[s], norm_series[s]));
        worst_lr = fmax(worst_lr, relative_error(lr_c[s], lr_series[s]));
        /* fmax drops a NaN operand; relative_error never returns NaN, only INFINITY. */
    }
    report(&t, "train/loss", worst_loss, TOL_TRAIN);
    report(&t, "train/grad_norm", worst_norm, TOL_TRAIN);
    report(&t, "train/lr", worst_lr, TOL_LR);

    if (t.failed == 0) {
        printf("test_parity: PASS, %d quantities within tolerance; closest to its tolerance: "
               "%s at %.2f of it\n", t.compared, t.worst_name, t.worst);
        rc = 0;
    } else {
        printf("test_parity: FAIL, %d of %d quantities over tolerance (first failure: %s)\n",
               t.failed, t.compared, t.worst_name);
        rc = 1;
    }

done:
    free(adam_m);
    free(adam_v);
    free(loss_c);
    free(norm_c);
    free(lr_c);
    insitra_model_free(&m);
    fixture_free(&fx);
    return rc;
}
