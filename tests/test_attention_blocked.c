/*
 * The blocked CPU attention (lib/cpu/attention.c) against the materialised
 * math it replaced, computed here in double: scores S (T,T) = q k^T / sqrt(hs),
 * P = softmax(S) per row (causal: keys j <= i), out = P v, and backward
 * dP = dout v^T, dS = P (dP - rowsum(P dP)), dq = dS k / sqrt(hs),
 * dk = dS^T q / sqrt(hs), dv = P^T dout.
 *
 * Shapes cover T below, at and past the tile (64), not multiples of it
 * (1, 63, 65, 100, 130), head sizes below the unroll (3), odd (5) and past the
 * head-dimension slice (72), causal and bidirectional.
 *
 * Error: max |blocked - ref| / max |ref| per output (out, lse, dqkv). fp32
 * rounding over sums of at most 130 terms of order 1 stays near 1e-6; a
 * mis-indexed tile, a lost rescale or a wrong mask is off by O(1), so 2e-5
 * separates the two by an order of magnitude either way.
 *
 * Also: the same bits on one thread and on more threads than heads (the two
 * backward schedules), and state memory linear in T (the backend's
 * attention_state_bytes doubles when T doubles).
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/attention.h"
#include "gradcheck.h"
#include "test_util.h"

#define TOL 2e-5

typedef struct shape {
    int64_t B, T, H, hs;
    bool causal;
} shape;

/* The materialised reference for one (sample, head), in double. */
static void reference(double *out, double *lse, double *dqkv, const float *qkv, const float *dout,
                      const shape *sh, int64_t b, int64_t h)
{
    const int64_t T = sh->T, hs = sh->hs, C = sh->H * hs, C3 = 3 * C;
    const double scale = 1.0 / sqrt((double)hs);
    double *P = calloc((size_t)(T * T), sizeof(double)), *dS = calloc((size_t)(T * T), sizeof(double));
    const float *q = qkv + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    const float *dy = dout + b * T * C + h * hs;
    double *y = out + b * T * C + h * hs;
    double *dq = dqkv + b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
    for (int64_t i = 0; i < T; i++) {
        const int64_t len = sh->causal ? i + 1 : T;
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < len; j++) {
            double s = 0.0;
            for (int64_t d = 0; d < hs; d++) s += (double)q[i * C3 + d] * (double)k[j * C3 + d];
            P[i * T + j] = s * scale;
            mx = fmax(mx, s * scale);
        }
        for (int64_t j = 0; j < len; j++) sum += (P[i * T + j] = exp(P[i * T + j] - mx));
        for (int64_t j = 0; j < len; j++) P[i * T + j] /= sum;
        lse[(b * sh->H + h) * T + i] = mx + log(sum);
        for (int64_t d = 0; d < hs; d++) {
            double acc = 0.0;
            for (int64_t j = 0; j < len; j++) acc += P[i * T + j] * (double)v[j * C3 + d];
            y[i * C + d] = acc;
        }
        double dot = 0.0;
        for (int64_t j = 0; j < len; j++) {
            double dp = 0.0;
            for (int64_t d = 0; d < hs; d++) dp += (double)dy[i * C + d] * (double)v[j * C3 + d];
            dS[i * T + j] = dp;
            dot += P[i * T + j] * dp;
        }
        for (int64_t j = 0; j < len; j++) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - dot) * scale;
    }
    for (int64_t i = 0; i < T; i++)
        for (int64_t d = 0; d < hs; d++) {
            double aq = 0.0, ak = 0.0, av = 0.0;
            for (int64_t j = 0; j < T; j++) {
                aq += dS[i * T + j] * (double)k[j * C3 + d];
                ak += dS[j * T + i] * (double)q[j * C3 + d];
                av += P[j * T + i] * (double)dy[j * C + d];
            }
            dq[i * C3 + d] = aq;
            dk[i * C3 + d] = ak;
            dv[i * C3 + d] = av;
        }
    free(P);
    free(dS);
}

static double normalised_error(const float *got, const double *ref, int64_t n)
{
    double err = 0.0, top = 0.0;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double)got[i] - ref[i]));
        top = fmax(top, fabs(ref[i]));
    }
    return top > 0.0 ? err / top : err;
}

static void check_shape(insitra_test *t, const shape *sh, uint64_t seed)
{
    const int64_t B = sh->B, T = sh->T, H = sh->H, C = H * sh->hs, N = B * T;
    float *qkv = malloc(sizeof(float) * (size_t)(3 * N * C)), *dout = malloc(sizeof(float) * (size_t)(N * C));
    /* scale 2: scores of a few units, so rows are peaked and the running maximum moves */
    fill_uniform(qkv, 3 * N * C, seed, 2.0f);
    fill_uniform(dout, N * C, seed + 1, 1.0f);
    float *out = malloc(sizeof(float) * (size_t)(N * C)), *lse = malloc(sizeof(float) * (size_t)(B * H * T));
    float *dqkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    /* poison the outputs: every element must be written */
    for (int64_t i = 0; i < N * C; i++) out[i] = NAN;
    for (int64_t i = 0; i < 3 * N * C; i++) dqkv[i] = NAN;
    insitra_attention_forward(out, lse, qkv, B, T, C, H, sh->causal);
    insitra_attention_backward(dqkv, dout, qkv, out, lse, B, T, C, H, sh->causal);

    double *rout = calloc((size_t)(N * C), sizeof(double)), *rlse = calloc((size_t)(B * H * T), sizeof(double));
    double *rdqkv = calloc((size_t)(3 * N * C), sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) reference(rout, rlse, rdqkv, qkv, dout, sh, b, h);
    const double e_out = normalised_error(out, rout, N * C);
    const double e_lse = normalised_error(lse, rlse, B * H * T);
    const double e_dqkv = normalised_error(dqkv, rdqkv, 3 * N * C);
    EXPECT(t, e_out <= TOL && e_lse <= TOL && e_dqkv <= TOL,
           "B=%lld T=%lld H=%lld hs=%lld %s: normalised error out %.2e, lse %.2e, dqkv %.2e (tolerance %.0e)",
           (long long)B, (long long)T, (long long)H, (long long)sh->hs, sh->causal ? "causal" : "bidirectional",
           e_out, e_lse, e_dqkv, TOL);
    printf("T=%-4lld hs=%-3lld %-13s out %.2e  lse %.2e  dqkv %.2e\n", (long long)T, (long long)sh->hs,
           sh->causal ? "causal" : "bidirectional", e_out, e_lse, e_dqkv);

    /* The same bits on another thread count: one thread takes the per-head
     * backward, more threads than heads the two passes over blocks. */
    float *out2 = malloc(sizeof(float) * (size_t)(N * C)), *lse2 = malloc(sizeof(float) * (size_t)(B * H * T));
    float *dqkv2 = malloc(sizeof(float) * (size_t)(3 * N * C));
    const int threads = omp_get_max_threads(), other = threads > B * H ? 1 : (int)(B * H) + 1;
    omp_set_num_threads(other);
    insitra_attention_forward(out2, lse2, qkv, B, T, C, H, sh->causal);
    insitra_attention_backward(dqkv2, dout, qkv, out2, lse2, B, T, C, H, sh->causal);
    omp_set_num_threads(threads);
    EXPECT(t,
           memcmp(out, out2, sizeof(float) * (size_t)(N * C)) == 0 &&
               memcmp(lse, lse2, sizeof(float) * (size_t)(B * H * T)) == 0 &&
               memcmp(dqkv, dqkv2, sizeof(float) * (size_t)(3 * N * C)) == 0,
           "T=%lld hs=%lld: results differ between %d and %d threads", (long long)T, (long long)sh->hs,
           threads, other);
    free(qkv), free(dout), free(out), free(lse), free(dqkv), free(out2), free(lse2), free(dqkv2);
    free(rout), free(rlse), free(rdqkv);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "attention_blocked");
    const int64_t Ts[] = {1, 63, 65, 100, 130};
    const int64_t hss[] = {3, 5, 72};
    uint64_t seed = 100;
    for (size_t i = 0; i < sizeof Ts / sizeof *Ts; i++)
        for (size_t j = 0; j < sizeof hss / sizeof *hss; j++)
            for (int causal = 0; causal < 2; causal++) {
                const shape sh = {.B = 2, .T = Ts[i], .H = 2, .hs = hss[j], .causal = causal != 0};
                check_shape(&t, &sh, seed);
                seed += 2;
            }

    /* The state is per score row, not per score: linear in T. */
    insitra_model_dims d = {.seq_len = 1000, .n_heads = 4, .d_model = 64};
    const int64_t s1 = insitra_backend_cpu_desc.attention_state_bytes(&d, 3, sizeof(float));
    d.seq_len = 2000;
    const int64_t s2 = insitra_backend_cpu_desc.attention_state_bytes(&d, 3, sizeof(float));
    EXPECT(&t, s1 == 3 * 4 * 1000 * 4 && s2 == 2 * s1, "attention state bytes at T = 1000, 2000: %lld, %lld",
           (long long)s1, (long long)s2);
    EXPECT(&t, insitra_backend_cpu_desc.workspace_bytes(&d, 3, sizeof(float)) == 0,
           "the CPU attention needs no workspace");
    return insitra_test_end(&t);
}
