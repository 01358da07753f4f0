/*
 * The per-rank sample store: a fixed-capacity ring buffer of (x, y) samples
 * that evicts the oldest. A simulation rank's samples stay on that rank; the
 * trainer draws its micro-batches from here.
 */
#ifndef INSITRA_SAMPLE_STORE_H
#define INSITRA_SAMPLE_STORE_H

#include <stdint.h>

#include "insitra.h"
#include "rng.h"

typedef struct insitra_sample_store {
    int64_t capacity;   /* samples */
    int64_t x_numel;    /* floats per input sample, T * F_in */
    int64_t y_numel;    /* floats per target sample, T * F_out */
    float *x;           /* (capacity, T, F_in) */
    float *y;           /* (capacity, T, F_out) */
    int64_t count;      /* samples held, <= capacity */
    int64_t next;       /* slot the next pushed sample goes to */
    int64_t pushed;     /* samples ever pushed (for logs and checkpoints) */
} insitra_sample_store;

insitra_status insitra_sample_store_create(insitra_sample_store *s, int64_t capacity,
                                           int64_t x_numel, int64_t y_numel);
void insitra_sample_store_free(insitra_sample_store *s);

/* INVALID_ARGUMENT naming the first non-finite value of x (n, x_numel) or y (n, y_numel). */
insitra_status insitra_sample_store_check(const insitra_sample_store *s, int64_t n, const float *x,
                                          const float *y);

/* Checks every value first, so a rejected push changes nothing. x is
 * (n, x_numel), y is (n, y_numel); n <= capacity. */
insitra_status insitra_sample_store_push(insitra_sample_store *s, int64_t n, const float *x,
                                         const float *y);

/* Makes room for n <= capacity samples the caller writes itself (they come
 * from elsewhere, e.g. device memory already checked): returns the first
 * slot; the n slots run from there, wrapping around. */
int64_t insitra_sample_store_reserve(insitra_sample_store *s, int64_t n);

/* Picks n slots of held samples. INSITRA_SAMPLER_RANDOM draws uniformly with
 * replacement from rng; INSITRA_SAMPLER_SEQUENTIAL walks the held samples
 * oldest first from *cursor, wrapping around. *cursor counts samples drawn. */
void insitra_sample_store_draw(const insitra_sample_store *s, int sampler, insitra_rng *rng,
                               int64_t *cursor, int64_t n, int64_t *slots);
/* Copies the samples at slots[0..n) into contiguous x (n, x_numel), y (n, y_numel). */
void insitra_sample_store_gather(const insitra_sample_store *s, const int64_t *slots, int64_t n,
                                 float *x, float *y);

/* Index of the first non-finite value of a[0..n), or -1. */
int64_t insitra_first_nonfinite(const float *a, int64_t n);

#endif /* INSITRA_SAMPLE_STORE_H */
