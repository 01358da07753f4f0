#include "optimizer.h"

#include <math.h>
#include <string.h>

double insitra_lr_at(const insitra_adamw_hparams *hp, int64_t step)
{
    if (hp->warmup_steps > 0 && step < hp->warmup_steps)
        return hp->lr * (double)(step + 1) / (double)hp->warmup_steps;
    const int64_t span = hp->decay_steps - hp->warmup_steps;
    double progress = (double)(step - hp->warmup_steps) / (double)(span > 1 ? span : 1);
    progress = progress < 0.0 ? 0.0 : progress > 1.0 ? 1.0 : progress;
    return hp->min_lr + 0.5 * (hp->lr - hp->min_lr) * (1.0 + cos(3.141592653589793 * progress));
}

/* Fixed-size chunks, summed in order: the result does not depend on the
 * number of threads, and a sharded sum can reproduce it chunk by chunk. */
#define SUMSQ_CHUNK 65536

double insitra_sum_squares(const float *x, int64_t n)
{
    const int64_t nchunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    double total = 0.0;
#pragma omp parallel for ordered schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t lo = c * SUMSQ_CHUNK, hi = lo + SUMSQ_CHUNK < n ? lo + SUMSQ_CHUNK : n;
        double s = 0.0;
        for (int64_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
#pragma omp ordered
        total += s;
    }
    return total;
}

float insitra_clip_factor(double norm, double max_norm)
{
    if (max_norm <= 0.0) return 1.0f;
    const double f = max_norm / (norm + 1e-6);
    return f < 1.0 ? (float)f : 1.0f;
}

void insitra_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, int64_t t,
                          double lr, float grad_scale, bool decay, const insitra_adamw_hparams *hp)
{
    const insitra_step_scalars sc = insitra_step_scalars_make(hp, t, lr, 0.0, 1);
    insitra_adamw_apply(p, NULL, g, m, v, n, grad_scale, decay, &sc);
}

void insitra_adamw_update_all(float *params, const float *grads, float *m, float *v,
                              const insitra_param_layout *layout, int64_t t, double lr,
                              float grad_scale, const insitra_adamw_hparams *hp)
{
    for (int64_t i = 0; i < layout->num_tensors; i++) {
        const insitra_tensor_desc *d = &layout->tensors[i];
        insitra_adamw_update(params + d->offset, grads + d->offset, m + d->offset, v + d->offset,
                             d->numel, t, lr, grad_scale, d->decay, hp);
    }
}

insitra_step_scalars insitra_step_scalars_make(const insitra_adamw_hparams *hp, int64_t t, double lr,
                                               double max_norm, int64_t dp)
{
    return (insitra_step_scalars){
        .beta1 = (float)hp->beta1,
        .beta2 = (float)hp->beta2,
        .eps = (float)hp->eps,
        .step_size = (float)(lr / (1.0 - pow(hp->beta1, (double)t))),
        .inv_sqrt_bc2 = (float)(1.0 / sqrt(1.0 - pow(hp->beta2, (double)t))),
        .keep_decay = (float)(1.0 - lr * hp->weight_decay),
        .max_norm = max_norm,
        .dp = (double)dp,
    };
}

double insitra_step_grad_scale(const insitra_step_scalars *sc, const double *stats)
{
    const double norm = sqrt(stats[1]) / sc->dp;
    if (!isfinite(stats[0]) || !isfinite(norm)) return 0.0;
    return (double)insitra_clip_factor(norm, sc->max_norm) / sc->dp;
}

void insitra_adamw_apply(float *p, float *copy, const float *g, float *m, float *v, int64_t n,
                         float grad_scale, bool decay, const insitra_step_scalars *sc)
{
    const float b1 = sc->beta1, b2 = sc->beta2, eps = sc->eps;
    const float step_size = sc->step_size, inv_sqrt_bc2 = sc->inv_sqrt_bc2;
    const float keep = decay ? sc->keep_decay : 1.0f;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i] * grad_scale;
        const float mi = b1 * m[i] + (1.0f - b1) * gi;
        const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * keep - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
    if (copy && copy != p) memcpy(copy, p, (size_t)n * sizeof(float));
}
