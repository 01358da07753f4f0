/*
 * Patch tokens of a grid block (insitra_field_to_patches and its inverse).
 * Every point's value encodes its grid index and variable, so each token
 * element is checked against the documented layout computed here
 * independently: token t = row-major index of the patch, feature
 * f = ((a_0 p + a_1) p + a_2) V + v for the in-patch offsets a and variable v.
 * Then the round trip is exact, and every bad argument is refused with a
 * message naming it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insitra.h"
#include "test_util.h"

/* The value at grid point (i0, i1, i2), variable v: exact in fp32 for these sizes. */
static float code(int64_t i0, int64_t i1, int64_t i2, int64_t v)
{
    return (float)(10000 * i0 + 100 * i1 + 10 * i2 + v);
}

/* Checks one case; shape has d entries, padded here to three as 1, 1, n. */
static void check_case(insitra_test *t, int32_t d, const int64_t *shape, int64_t V, int64_t p)
{
    int64_t n[3] = {1, 1, 1}, pe[3] = {1, 1, 1};
    for (int k = 0; k < d; k++) {
        n[3 - d + k] = shape[k];
        pe[3 - d + k] = p;
    }
    const int64_t points = n[0] * n[1] * n[2], total = points * V;
    const int64_t F = pe[0] * pe[1] * pe[2] * V;
    float *field = malloc(sizeof(float) * (size_t)total), *tokens = malloc(sizeof(float) * (size_t)total);
    float *back = malloc(sizeof(float) * (size_t)total);
    for (int64_t i0 = 0; i0 < n[0]; i0++)
        for (int64_t i1 = 0; i1 < n[1]; i1++)
            for (int64_t i2 = 0; i2 < n[2]; i2++)
                for (int64_t v = 0; v < V; v++) field[((i0 * n[1] + i1) * n[2] + i2) * V + v] = code(i0, i1, i2, v);
    memset(tokens, 0xff, sizeof(float) * (size_t)total); /* NaN: every element must be written */
    EXPECT_OK(t, insitra_field_to_patches(d, shape, V, p, field, tokens), "field_to_patches");
    int64_t wrong = 0, first = -1;
    const int64_t np1 = n[1] / pe[1], np2 = n[2] / pe[2];
    for (int64_t tok = 0; tok < points / (pe[0] * pe[1] * pe[2]); tok++) {
        const int64_t P0 = tok / (np1 * np2), P1 = tok / np2 % np1, P2 = tok % np2;
        for (int64_t f = 0; f < F; f++) {
            const int64_t v = f % V, a2 = f / V % pe[2], a1 = f / V / pe[2] % pe[1], a0 = f / V / pe[2] / pe[1];
            const float want = code(P0 * pe[0] + a0, P1 * pe[1] + a1, P2 * pe[2] + a2, v);
            if (tokens[tok * F + f] != want) {
                if (first < 0) first = tok * F + f;
                wrong++;
            }
        }
    }
    EXPECT(t, wrong == 0, "d=%d p=%lld V=%lld: %lld token elements wrong, the first at %lld (%g)", (int)d,
           (long long)p, (long long)V, (long long)wrong, (long long)first, first < 0 ? 0.0 : (double)tokens[first]);
    memset(back, 0xff, sizeof(float) * (size_t)total);
    EXPECT_OK(t, insitra_patches_to_field(d, shape, V, p, tokens, back), "patches_to_field");
    EXPECT(t, memcmp(back, field, sizeof(float) * (size_t)total) == 0, "d=%d p=%lld: the round trip differs",
           (int)d, (long long)p);
    free(field), free(tokens), free(back);
}

static void expect_refused(insitra_test *t, insitra_status s, const char *needle)
{
    EXPECT(t, s == INSITRA_STATUS_INVALID_ARGUMENT && strstr(insitra_last_error(), needle),
           "expected INVALID_ARGUMENT naming '%s', got %d: %s", needle, (int)s, insitra_last_error());
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "patch");
    const int64_t s1[] = {12}, s2[] = {4, 6}, s3[] = {4, 6, 2}, s2b[] = {9, 6};
    check_case(&t, 1, s1, 1, 3);
    check_case(&t, 1, s1, 2, 4);
    check_case(&t, 2, s2, 2, 2);
    check_case(&t, 2, s2, 1, 1);
    check_case(&t, 2, s2b, 3, 3);
    check_case(&t, 3, s3, 3, 2);
    check_case(&t, 3, s3, 1, 1);

    float a[72] = {0}, b[72];
    expect_refused(&t, insitra_field_to_patches(2, s2, 1, 4, a, b),
                   "shape[1] = 6 points is not a positive multiple of patch = 4");
    expect_refused(&t, insitra_patches_to_field(3, s3, 1, 4, a, b), "shape[1] = 6");
    expect_refused(&t, insitra_field_to_patches(4, s3, 1, 2, a, b), "d = 4");
    expect_refused(&t, insitra_field_to_patches(0, s3, 1, 2, a, b), "d = 0");
    expect_refused(&t, insitra_field_to_patches(2, s2, 0, 2, a, b), "variables = 0");
    expect_refused(&t, insitra_field_to_patches(2, s2, 1, 0, a, b), "patch = 0");
    expect_refused(&t, insitra_field_to_patches(2, NULL, 1, 2, a, b), "shape is NULL");
    expect_refused(&t, insitra_patches_to_field(2, s2, 1, 2, NULL, b), "input array is NULL");
    expect_refused(&t, insitra_patches_to_field(2, s2, 1, 2, a, NULL), "output array is NULL");
    return insitra_test_end(&t);
}
