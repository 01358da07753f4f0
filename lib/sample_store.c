#include "sample_store.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "config.h"
#include "error.h"

insitra_status insitra_sample_store_create(insitra_sample_store *s, int64_t capacity,
                                           int64_t x_numel, int64_t y_numel)
{
    memset(s, 0, sizeof *s);
    /* capacity reaches 2^53 and a sample 2^37 floats: count the bytes before
     * asking for them (a wrapped count once allocated nothing). */
    int64_t x_bytes, y_bytes, total; /* total: what memory reports add up */
    const bool counted = insitra_mul_i64(capacity, x_numel, &x_bytes) &&
                         insitra_mul_i64(x_bytes, (int64_t)sizeof(float), &x_bytes) &&
                         insitra_mul_i64(capacity, y_numel, &y_bytes) &&
                         insitra_mul_i64(y_bytes, (int64_t)sizeof(float), &y_bytes) &&
                         insitra_add_i64(x_bytes, y_bytes, &total);
    const double bytes = (double)capacity * (double)(x_numel + y_numel) * (double)sizeof(float);
    if (!counted)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "sample store: config key 'data.capacity' = %" PRId64
                                 " samples of %" PRId64 " floats (model.seq_len x (model.in_features + "
                                 "model.out_features)) need %.3g bytes, more than 2^63 - 1, the most "
                                 "a 64-bit size holds; lower data.capacity",
                                 capacity, x_numel + y_numel, bytes);
    s->capacity = capacity;
    s->x_numel = x_numel;
    s->y_numel = y_numel;
    s->x = malloc((size_t)x_bytes);
    s->y = malloc((size_t)y_bytes);
    if (!s->x || !s->y) {
        insitra_sample_store_free(s);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "sample store: cannot allocate %" PRId64 " samples (%.1f MiB); "
                                 "lower data.capacity",
                                 capacity, bytes / 1048576.0);
    }
    return INSITRA_STATUS_OK;
}

void insitra_sample_store_free(insitra_sample_store *s)
{
    free(s->x);
    free(s->y);
    memset(s, 0, sizeof *s);
}

int64_t insitra_first_nonfinite(const float *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return i;
    return -1;
}

/* "x[3][7][2] = nan": the index of a flat offset in (n, T, F) terms. */
static insitra_status nonfinite_error(const char *what, const float *a, int64_t flat,
                                      int64_t per_sample)
{
    return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                             "push_samples: %s of sample %" PRId64 " holds %g at element %" PRId64
                             " (flat index %" PRId64 "); samples must be finite, nothing was stored",
                             what, flat / per_sample, (double)a[flat], flat % per_sample, flat);
}

insitra_status insitra_sample_store_check(const insitra_sample_store *s, int64_t n, const float *x,
                                          const float *y)
{
    const int64_t bad_x = insitra_first_nonfinite(x, n * s->x_numel);
    if (bad_x >= 0) return nonfinite_error("input x", x, bad_x, s->x_numel);
    const int64_t bad_y = insitra_first_nonfinite(y, n * s->y_numel);
    if (bad_y >= 0) return nonfinite_error("target y", y, bad_y, s->y_numel);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_sample_store_push(insitra_sample_store *s, int64_t n, const float *x,
                                         const float *y)
{
    INSITRA_CHECK(insitra_sample_store_check(s, n, x, y));
    for (int64_t i = 0; i < n; i++) {
        memcpy(s->x + s->next * s->x_numel, x + i * s->x_numel, (size_t)s->x_numel * sizeof(float));
        memcpy(s->y + s->next * s->y_numel, y + i * s->y_numel, (size_t)s->y_numel * sizeof(float));
        s->next = (s->next + 1) % s->capacity;
    }
    s->count = s->count + n < s->capacity ? s->count + n : s->capacity;
    s->pushed += n;
    return INSITRA_STATUS_OK;
}

int64_t insitra_sample_store_reserve(insitra_sample_store *s, int64_t n)
{
    const int64_t first = s->next;
    s->next = (s->next + n) % s->capacity;
    s->count = s->count + n < s->capacity ? s->count + n : s->capacity;
    s->pushed += n;
    return first;
}

void insitra_sample_store_draw(const insitra_sample_store *s, int sampler, insitra_rng *rng,
                               int64_t *cursor, int64_t n, int64_t *slots)
{
    /* Both samplers pick a position among the held samples, oldest first,
     * so a store restored from a checkpoint (oldest first from slot 0) draws
     * the same samples as the one that was saved. */
    const int64_t oldest = (s->next - s->count + s->capacity) % s->capacity;
    for (int64_t i = 0; i < n; i++) {
        const int64_t pos = sampler == INSITRA_SAMPLER_SEQUENTIAL
                                ? (*cursor + i) % s->count
                                : (int64_t)insitra_rng_below(rng, (uint64_t)s->count);
        slots[i] = (oldest + pos) % s->capacity;
    }
    *cursor += n;
}

void insitra_sample_store_gather(const insitra_sample_store *s, const int64_t *slots, int64_t n,
                                 float *x, float *y)
{
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * s->x_numel, s->x + slots[i] * s->x_numel, (size_t)s->x_numel * sizeof(float));
        memcpy(y + i * s->y_numel, s->y + slots[i] * s->y_numel, (size_t)s->y_numel * sizeof(float));
    }
}
