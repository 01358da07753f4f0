#include "layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "gemm.h"

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

/* Column blocks for reductions over rows: a thread owns whole columns and
 * adds rows in order, so sums never depend on the thread count. */
#define COL_BLOCK 64

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

/* acc (OC) += column sums of x (N,OC), rows in order. */
VECTOR_CLONES
static void column_sums_add(float *acc, const float *x, int64_t N, int64_t OC)
{
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < OC; j0 += COL_BLOCK) {
        const int64_t w = OC - j0 < COL_BLOCK ? OC - j0 : COL_BLOCK;
        float s[COL_BLOCK] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *row = x + n * OC + j0;
            for (int64_t j = 0; j < w; j++) s[j] += row[j];
        }
        for (int64_t j = 0; j < w; j++) acc[j0 + j] += s[j];
    }
}

VECTOR_CLONES
void insitra_linear_forward(float *out, const float *inp, const float *w, const float *b,
                            const float *residual, int64_t N, int64_t IC, int64_t OC)
{
    /* Seed out with residual + bias in one pass, then let the GEMM add onto it. */
    float beta = 0.0f;
    if (residual || b) {
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            float *o = out + n * OC;
            if (residual && b)
                for (int64_t j = 0; j < OC; j++) o[j] = residual[n * OC + j] + b[j];
            else if (residual)
                memcpy(o, residual + n * OC, (size_t)OC * sizeof(float));
            else
                memcpy(o, b, (size_t)OC * sizeof(float));
        }
        beta = 1.0f;
    }
    insitra_sgemm(false, true, N, OC, IC, 1.0f, inp, IC, w, IC, beta, out, OC);
}

void insitra_linear_backward(float *dinp, float *dw, float *db, const float *dout,
                             const float *inp, const float *w, int64_t N, int64_t IC, int64_t OC)
{
    if (dinp) insitra_sgemm(false, false, N, IC, OC, 1.0f, dout, OC, w, IC, 0.0f, dinp, IC);
    insitra_sgemm(true, false, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dw, IC);
    if (db) column_sums_add(db, dout, N, OC);
}

VECTOR_CLONES
void insitra_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                               const float *w, const float *b, int64_t N, int64_t C)
{
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float *o = out + n * C;
        const float m = row_sum(x, C) / (float)C;
        /* Two passes (mean, then squared deviations) keep the variance accurate. */
        float *dev = o; /* out doubles as scratch for x - mean */
        for (int64_t i = 0; i < C; i++) dev[i] = x[i] - m;
        const float v = row_dot(dev, dev, C) / (float)C;
        const float s = 1.0f / sqrtf(v + 1e-5f);
        for (int64_t i = 0; i < C; i++) o[i] = dev[i] * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
}

VECTOR_CLONES
void insitra_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                                const float *inp, const float *mean, const float *rstd,
                                const float *w, int64_t N, int64_t C)
{
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C, *g = dout + n * C;
        float *dx = dinp + n * C;
        const float m = mean[n], s = rstd[n];
        /* mean of dnorm = g * w, and of dnorm * xhat */
        float acc_dn[LANES] = {0}, acc_dnx[LANES] = {0};
        int64_t i0 = 0;
        for (; i0 + LANES <= C; i0 += LANES)
            for (int k = 0; k < LANES; k++) {
                const float dn = g[i0 + k] * w[i0 + k];
                acc_dn[k] += dn;
                acc_dnx[k] += dn * (x[i0 + k] - m) * s;
            }
        for (int k = 0; i0 + k < C; k++) {
            const float dn = g[i0 + k] * w[i0 + k];
            acc_dn[k] += dn;
            acc_dnx[k] += dn * (x[i0 + k] - m) * s;
        }
        float sum_dn = 0.0f, sum_dn_xhat = 0.0f;
        for (int k = 0; k < LANES; k++) {
            sum_dn += acc_dn[k];
            sum_dn_xhat += acc_dnx[k];
        }
        sum_dn /= (float)C;
        sum_dn_xhat /= (float)C;
        for (int64_t i = 0; i < C; i++) {
            const float xhat = (x[i] - m) * s;
            dx[i] += s * (g[i] * w[i] - sum_dn - xhat * sum_dn_xhat);
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < C; j0 += COL_BLOCK) {
        const int64_t wd = C - j0 < COL_BLOCK ? C - j0 : COL_BLOCK;
        float sw[COL_BLOCK] = {0}, sb[COL_BLOCK] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *x = inp + n * C + j0, *g = dout + n * C + j0;
            const float m = mean[n], s = rstd[n];
            for (int64_t j = 0; j < wd; j++) {
                sw[j] += g[j] * (x[j] - m) * s;
                sb[j] += g[j];
            }
        }
        for (int64_t j = 0; j < wd; j++) {
            dw[j0 + j] += sw[j];
            db[j0 + j] += sb[j];
        }
    }
}

/* Row-wise softmax of P (T,T) in place; with causal, row i keeps j <= i. */
VECTOR_CLONES
static void softmax_rows(float *P, int64_t T, bool causal)
{
    for (int64_t i = 0; i < T; i++) {
        float *row = P + i * T;
        const int64_t len = causal ? i + 1 : T;
        const float mx = row_max(row, len);
        for (int64_t j = 0; j < len; j++) row[j] = vexpf(row[j] - mx);
        const float sum = row_sum(row, len);
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < len; j++) row[j] *= inv;
        for (int64_t j = len; j < T; j++) row[j] = 0.0f;
    }
}

VECTOR_CLONES
void insitra_attention_forward(float *out, float *att, const float *qkv, int64_t B, int64_t T,
                               int64_t C, int64_t H, bool causal)
{
    const int64_t hs = C / H, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    /* One (sample, head) pair per task; the GEMMs inside run single-threaded
     * (OpenBLAS's OpenMP build does so inside a parallel region). */
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *q = qkv + b * T * C3 + h * hs;
            const float *k = q + C, *v = q + 2 * C;
            float *P = att + (b * H + h) * T * T;
            float *y = out + b * T * C + h * hs;
            /* P (T,T) = scale * q (T,hs) @ k^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)hs, scale, q,
                        (int)C3, k, (int)C3, 0.0f, P, (int)T);
            softmax_rows(P, T, causal);
            /* y (T,hs) = P @ v */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)hs, (int)T, 1.0f, P,
                        (int)T, v, (int)C3, 0.0f, y, (int)C);
        }
    }
}

VECTOR_CLONES
void insitra_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                                const float *att, int64_t B, int64_t T, int64_t C, int64_t H)
{
    const int64_t hs = C / H, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *q = qkv + b * T * C3 + h * hs;
            const float *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + b * T * C3 + h * hs;
            float *dk = dq + C, *dv = dq + 2 * C;
            const float *P = att + (b * H + h) * T * T;
            float *dS = datt + (b * H + h) * T * T;
            const float *dy = dout + b * T * C + h * hs;
            /* dP (T,T) = dy (T,hs) @ v^T;  dv (T,hs) = P^T @ dy */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)hs, 1.0f, dy,
                        (int)C, v, (int)C3, 0.0f, dS, (int)T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)hs, (int)T, 1.0f, P,
                        (int)T, dy, (int)C, 0.0f, dv, (int)C3);
            /* softmax backward, the 1/sqrt(hs) of the scores folded in:
             * dS = scale * P * (dP - sum_j P dP). Masked entries have P = 0. */
            for (int64_t i = 0; i < T; i++) {
                const float *p = P + i * T;
                float *d = dS + i * T;
                const float dot = row_dot(p, d, T);
                for (int64_t j = 0; j < T; j++) d[j] = scale * p[j] * (d[j] - dot);
            }
            /* dq (T,hs) = dS @ k;  dk (T,hs) = dS^T @ q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)hs, (int)T, 1.0f,
                        dS, (int)T, k, (int)C3, 0.0f, dq, (int)C3);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)hs, (int)T, 1.0f, dS,
                        (int)T, q, (int)C3, 0.0f, dk, (int)C3);
        }
    }
}

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_A 0.044715f

VECTOR_CLONES
void insitra_gelu_forward(float *out, const float *inp, int64_t n)
{
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = 0.5f * x * (1.0f + vtanhf(GELU_K * (x + GELU_A * x * x * x)));
    }
}

VECTOR_CLONES
void insitra_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n)
{
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float x = inp[i];
        const float t = vtanhf(GELU_K * (x + GELU_A * x * x * x));
        const float du = GELU_K * (1.0f + 3.0f * GELU_A * x * x);
        dinp[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
}

VECTOR_CLONES
void insitra_pos_embed_forward(float *out, const float *pos, int64_t B, int64_t T, int64_t C)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            float *o = out + (b * T + t) * C;
            const float *p = pos + t * C;
            for (int64_t i = 0; i < C; i++) o[i] += p[i];
        }
}

VECTOR_CLONES
void insitra_pos_embed_backward(float *dpos, const float *dout, int64_t B, int64_t T, int64_t C)
{
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float *d = dpos + t * C;
        for (int64_t b = 0; b < B; b++) {
            const float *g = dout + (b * T + t) * C;
            for (int64_t i = 0; i < C; i++) d[i] += g[i];
        }
    }
}

double insitra_mse_forward(const float *pred, const float *target, int64_t n)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)pred[i] - (double)target[i];
        sum += d * d;
    }
    return sum / (double)n;
}

VECTOR_CLONES
void insitra_mse_backward(float *dpred, const float *pred, const float *target, int64_t n,
                          float scale)
{
    const float k = 2.0f * scale / (float)n;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dpred[i] = k * (pred[i] - target[i]);
}
