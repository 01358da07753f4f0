/*
 * Vectorisable math shared by the CPU kernels (layers.c, attention.c): an
 * e^x that GCC vectorises and row reductions with a fixed lane count, so a
 * kernel gives the same bits on every run, thread count and ISA clone.
 */
#ifndef INSITRA_CPU_VECTOR_MATH_H
#define INSITRA_CPU_VECTOR_MATH_H

#include <stdint.h>

/* Elementwise and row kernels are built twice, for AVX2 and for baseline
 * x86-64, and the loader picks one per machine (GCC function multiversioning),
 * so a distribution build runs at full width without -march=native. ISO C
 * mode forbids FMA contraction, and reductions use a fixed lane count, so
 * both versions compute bit-identical results. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* e^x to about 2 ulp, written so GCC vectorises loops that call it (glibc's
 * expf does not vectorise without -ffast-math, and softmax and GELU would
 * otherwise cost as much as the GEMMs on small models). Cody-Waite range
 * reduction x = n ln2 + r, then a degree-6 minimax polynomial for e^r. */
static inline float vexpf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln2) without a branch: adding 1.5 * 2^23 rounds to an integer. */
    const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)fn + 127) << 23};
    return p * scale.f;
}

static inline float vtanhf(float x) { return 1.0f - 2.0f / (vexpf(2.0f * x) + 1.0f); }

/* Row reductions in LANES independent partial sums, combined in a fixed
 * order: the compiler vectorises them without reassociating (no -ffast-math),
 * and the result is the same on every run and thread count. */
#define LANES 8

static inline float row_sum(const float *x, int64_t n)
{
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += x[j + k];
    for (int64_t k = 0; j + k < n; k++) acc[k] += x[j + k];
    float s = 0.0f;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

static inline float row_dot(const float *a, const float *b, int64_t n)
{
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += a[j + k] * b[j + k];
    for (int64_t k = 0; j + k < n; k++) acc[k] += a[j + k] * b[j + k];
    float s = 0.0f;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

static inline float row_max(const float *x, int64_t n)
{
    float acc[LANES];
    for (int k = 0; k < LANES; k++) acc[k] = x[0];
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
    for (int64_t k = 0; j + k < n; k++) acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
    float m = acc[0];
    for (int k = 1; k < LANES; k++) m = acc[k] > m ? acc[k] : m;
    return m;
}

#endif /* INSITRA_CPU_VECTOR_MATH_H */
