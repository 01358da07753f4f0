/*
 * Checked size arithmetic. Buffer sizes are products of configuration values
 * (data.capacity x seq_len x features, B x H x T x T per layer, ...) whose
 * allowed ranges reach far beyond 64 bits; a wrapped product allocates a small
 * buffer that the first write overruns. Every size product goes through here.
 *
 * Sizes are non-negative int64 counts. A result that does not fit saturates
 * at INSITRA_SIZE_OVERFLOW (INT64_MAX, which no allocation can satisfy), and
 * saturation is sticky through further products and sums of non-negative
 * values, so a chain of operations needs one check at its end.
 */
#ifndef INSITRA_CHECKED_H
#define INSITRA_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

#define INSITRA_SIZE_OVERFLOW INT64_MAX

/* *out = a * b; false (and *out = INSITRA_SIZE_OVERFLOW) when it does not fit. */
static inline bool insitra_mul_i64(int64_t a, int64_t b, int64_t *out)
{
    if (__builtin_mul_overflow(a, b, out) || *out == INSITRA_SIZE_OVERFLOW) {
        *out = INSITRA_SIZE_OVERFLOW;
        return false;
    }
    return true;
}

/* *out = a + b; false (and *out = INSITRA_SIZE_OVERFLOW) when it does not fit. */
static inline bool insitra_add_i64(int64_t a, int64_t b, int64_t *out)
{
    if (__builtin_add_overflow(a, b, out) || *out == INSITRA_SIZE_OVERFLOW) {
        *out = INSITRA_SIZE_OVERFLOW;
        return false;
    }
    return true;
}

/* The same as values, for formulas: a * b and a + b, saturated. */
static inline int64_t insitra_size_mul(int64_t a, int64_t b)
{
    int64_t r;
    insitra_mul_i64(a, b, &r);
    return r;
}

static inline int64_t insitra_size_add(int64_t a, int64_t b)
{
    int64_t r;
    insitra_add_i64(a, b, &r);
    return r;
}

/* x rounded up to a multiple of a (> 0), saturated. */
static inline int64_t insitra_size_align(int64_t x, int64_t a)
{
    const int64_t r = insitra_size_add(x, a - 1);
    return r == INSITRA_SIZE_OVERFLOW ? r : r / a * a;
}

#endif /* INSITRA_CHECKED_H */
