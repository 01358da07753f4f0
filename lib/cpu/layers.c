#include "layers.h"
#include "vector_math.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "gemm.h"

/* Column blocks for reductions over rows: a thread owns whole columns and
 * adds rows in order, so sums never depend on the thread count. */
#define COL_BLOCK 64

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
