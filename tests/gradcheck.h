/* Finite-difference gradient checks shared by the layer and model tests. */
#ifndef INSITRA_TEST_GRADCHECK_H
#define INSITRA_TEST_GRADCHECK_H

#include <stdint.h>

/* Evaluates the scalar loss at the current values of the checked array. */
typedef double (*gradcheck_loss_fn)(void *ctx);

/* Central differences (Richardson-extrapolated from steps h and h/2) at up to
 * max_points entries of x[0..n) (evenly spread), against analytic[]. An entry passes when
 *   |fd - analytic| <= atol + rtol * max(|fd|, |analytic|).
 * Prints the worst entry; returns the number of failing entries. */
int gradcheck(const char *name, float *x, const float *analytic, int64_t n, gradcheck_loss_fn f,
              void *ctx, int64_t max_points, double h, double atol, double rtol);

/* Fills a with uniform values in [-scale, scale) from a fixed seed. */
void fill_uniform(float *a, int64_t n, uint64_t seed, float scale);

#endif
