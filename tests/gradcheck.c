#include "gradcheck.h"

#include <math.h>
#include <stdio.h>

#include "rng.h"

/* (f(x + h) - f(x - h)) / 2h, with the step actually taken in fp32. */
static double central_difference(float *x, double h, gradcheck_loss_fn f, void *ctx)
{
    const float saved = *x;
    *x = saved + (float)h;
    const double fp = f(ctx);
    *x = saved - (float)h;
    const double fm = f(ctx);
    *x = saved;
    return (fp - fm) / ((double)(saved + (float)h) - (double)(saved - (float)h));
}

int gradcheck(const char *name, float *x, const float *analytic, int64_t n, gradcheck_loss_fn f,
              void *ctx, int64_t max_points, double h, double atol, double rtol)
{
    const int64_t stride = n > max_points ? n / max_points : 1;
    int failures = 0;
    double worst_excess = -1.0, worst_fd = 0, worst_an = 0;
    int64_t worst_i = -1, checked = 0;
    for (int64_t i = 0; i < n; i += stride, checked++) {
        /* Richardson extrapolation of central differences at h and h/2
         * cancels the h^2 term, so curvature (softmax, GELU) does not pass
         * for a wrong gradient while h stays large against fp32 rounding. */
        const double fd = (4.0 * central_difference(x + i, h / 2, f, ctx) -
                           central_difference(x + i, h, f, ctx)) / 3.0;
        const double an = analytic[i];
        const double allowed = atol + rtol * fmax(fabs(fd), fabs(an));
        const double excess = fabs(fd - an) / allowed;
        if (excess > 1.0) failures++;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst_i = i;
            worst_fd = fd;
            worst_an = an;
        }
    }
    printf("%-28s %s: %lld points, worst at [%lld]: fd %+.6e analytic %+.6e (%.2f of tolerance)\n",
           name, failures ? "FAIL" : "ok", (long long)checked, (long long)worst_i, worst_fd, worst_an,
           worst_excess);
    return failures;
}

void fill_uniform(float *a, int64_t n, uint64_t seed, float scale)
{
    insitra_rng rng;
    insitra_rng_seed(&rng, seed, 99);
    for (int64_t i = 0; i < n; i++) a[i] = scale * (float)(2.0 * insitra_rng_uniform(&rng) - 1.0);
}
