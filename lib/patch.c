/*
 * Patch tokens of a grid block (insitra.h): a copy between the field's
 * row-major layout and the token layout, one contiguous run of patch x
 * variables floats (a patch row along the last axis) at a time. Fewer axes
 * than three are the leading axes of a three-axis grid of extent 1, cut into
 * patches of extent 1, so one loop nest serves d = 1, 2, 3.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include "checked.h"
#include "error.h"
#include "insitra.h"

typedef struct grid3 {
    int64_t n[3];  /* points per axis */
    int64_t pe[3]; /* patch extent per axis */
    int64_t V;     /* variables */
} grid3;

static insitra_status grid_check(const char *fn, int32_t d, const int64_t *shape, int64_t variables,
                                 int64_t patch, const void *in, const void *out, grid3 *g)
{
    if (d < 1 || d > 3)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: d = %d axes, must be 1, 2 or 3", fn, (int)d);
    if (!shape || !in || !out)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                                 !shape ? "shape" : !in ? "the input array" : "the output array");
    if (variables < 1)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: variables = %" PRId64 ", must be at least 1", fn, variables);
    if (patch < 1)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: patch = %" PRId64 ", must be at least 1", fn, patch);
    int64_t total = variables;
    for (int k = 0; k < 3; k++) {
        const int axis = k - (3 - d); /* the caller's axis, or < 0 for a padded one */
        g->n[k] = axis < 0 ? 1 : shape[axis];
        g->pe[k] = axis < 0 ? 1 : patch;
        if (axis >= 0 && (g->n[k] < 1 || g->n[k] % patch != 0))
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "%s: shape[%d] = %" PRId64 " points is not a positive multiple of "
                                     "patch = %" PRId64,
                                     fn, axis, g->n[k], patch);
        total = insitra_size_mul(total, g->n[k]);
    }
    if (insitra_size_mul(total, (int64_t)sizeof(float)) == INSITRA_SIZE_OVERFLOW)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: the field holds more than 2^63 - 1 bytes", fn);
    g->V = variables;
    return INSITRA_STATUS_OK;
}

/* Copies every patch row from src to dst, in token order: field to tokens,
 * or with to_field the other way. */
static void grid_copy(const grid3 *g, const float *src, float *dst, bool to_field)
{
    const int64_t *n = g->n, *pe = g->pe, V = g->V, run = pe[2] * V;
    int64_t tok = 0; /* offset in tokens */
    for (int64_t P0 = 0; P0 < n[0] / pe[0]; P0++)
        for (int64_t P1 = 0; P1 < n[1] / pe[1]; P1++)
            for (int64_t P2 = 0; P2 < n[2] / pe[2]; P2++)
                for (int64_t a0 = 0; a0 < pe[0]; a0++)
                    for (int64_t a1 = 0; a1 < pe[1]; a1++) {
                        const int64_t i0 = P0 * pe[0] + a0, i1 = P1 * pe[1] + a1, i2 = P2 * pe[2];
                        const int64_t fld = ((i0 * n[1] + i1) * n[2] + i2) * V; /* offset in field */
                        if (to_field)
                            memcpy(dst + fld, src + tok, (size_t)run * sizeof(float));
                        else
                            memcpy(dst + tok, src + fld, (size_t)run * sizeof(float));
                        tok += run;
                    }
}

insitra_status insitra_field_to_patches(int32_t d, const int64_t *shape, int64_t variables,
                                        int64_t patch, const float *field, float *tokens)
{
    grid3 g;
    INSITRA_CHECK(grid_check("insitra_field_to_patches", d, shape, variables, patch, field, tokens, &g));
    grid_copy(&g, field, tokens, false);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_patches_to_field(int32_t d, const int64_t *shape, int64_t variables,
                                        int64_t patch, const float *tokens, float *field)
{
    grid3 g;
    INSITRA_CHECK(grid_check("insitra_patches_to_field", d, shape, variables, patch, tokens, field, &g));
    grid_copy(&g, tokens, field, true);
    return INSITRA_STATUS_OK;
}
