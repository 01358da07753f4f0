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
 * The blocks of keys a context-parallel attention folds in one at a time
 * (cp = 2, 4 simulated in one process, blocks not multiples of the tile)
 * against the one attention of the whole sample, same tolerance, and their
 * composed gradient against finite differences at cp = 2 (layers_gradcheck's
 * tolerances). Also: the same bits on one thread and on more threads than heads (the two
 * backward schedules, of the whole attention and of the blocks), and state memory linear in T (the backend's
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

/* ---- context parallelism simulated in one process ----
 * cp "ranks" each hold T/cp tokens of every sample (qkv (B,T/cp,3C)); rank c
 * folds in its own block of keys, then the packed [k | v] (B,T/cp,2C) blocks
 * of the others in ring order, as the ring would deliver them; in backward
 * every rank adds its part to each block's travelling dk, dv, which then
 * belong to the block's owner. */
typedef struct cp_case {
    int64_t B, T, H, hs, cp;
    bool causal;
    float *qkv, *dout;          /* whole samples: (B,T,3C), (B,T,C) */
    float *lqkv, *ldout, *kv;   /* per rank: (cp,B,Tc,3C), (cp,B,Tc,C), (cp,B,Tc,2C) */
    float *out, *m, *l;         /* per rank: (cp,B,Tc,C), (cp,B,H,Tc) x 2 */
    float *dqkv, *dkv;          /* per rank: (cp,B,Tc,3C), (cp,B,Tc,2C) */
    float *r;                   /* (B,T,C) projection of the FD loss */
} cp_case;

static void cp_split(cp_case *k)
{
    const int64_t B = k->B, T = k->T, C = k->H * k->hs, Tc = T / k->cp;
    for (int64_t c = 0; c < k->cp; c++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < Tc; t++) {
                const float *src = k->qkv + (b * T + c * Tc + t) * 3 * C;
                const int64_t at = (c * B + b) * Tc + t;
                memcpy(k->lqkv + at * 3 * C, src, sizeof(float) * (size_t)(3 * C));
                memcpy(k->kv + at * 2 * C, src + C, sizeof(float) * (size_t)(2 * C));
                memcpy(k->ldout + at * C, k->dout + (b * T + c * Tc + t) * C, sizeof(float) * (size_t)C);
            }
}

static void cp_forward(cp_case *k)
{
    const int64_t B = k->B, H = k->H, C = H * k->hs, Tc = k->T / k->cp;
    cp_split(k);
    for (int64_t c = 0; c < k->cp; c++) {
        float *out = k->out + c * B * Tc * C, *m = k->m + c * B * H * Tc, *l = k->l + c * B * H * Tc;
        const float *qkv = k->lqkv + c * B * Tc * 3 * C;
        memset(out, 0, sizeof(float) * (size_t)(B * Tc * C));
        for (int64_t i = 0; i < B * H * Tc; i++) m[i] = -INFINITY, l[i] = 0.0f;
        for (int64_t s = 0; s < k->cp; s++) {
            const int64_t j = (c - s + k->cp) % k->cp;
            const float *kv = j == c ? qkv + C : k->kv + j * B * Tc * 2 * C;
            const int64_t kvs = j == c ? 3 * C : 2 * C;
            insitra_attention_block_forward(out, m, l, qkv, kv, kv + C, kvs, B, Tc, Tc, C, H, c * Tc, j * Tc,
                                            k->causal);
        }
        insitra_attention_block_finish(out, m, m, l, B, Tc, C, H); /* m becomes lse */
    }
}

static void cp_backward(cp_case *k)
{
    const int64_t B = k->B, H = k->H, C = H * k->hs, Tc = k->T / k->cp;
    memset(k->dqkv, 0, sizeof(float) * (size_t)(k->cp * B * Tc * 3 * C));
    memset(k->dkv, 0, sizeof(float) * (size_t)(k->cp * B * Tc * 2 * C));
    for (int64_t c = 0; c < k->cp; c++)
        for (int64_t s = 0; s < k->cp; s++) {
            const int64_t j = (c - s + k->cp) % k->cp;
            const float *kv = k->kv + j * B * Tc * 2 * C;
            float *dkv = k->dkv + j * B * Tc * 2 * C;
            insitra_attention_block_backward(k->dqkv + c * B * Tc * 3 * C, dkv, dkv + C, k->ldout + c * B * Tc * C,
                                             k->lqkv + c * B * Tc * 3 * C, kv, kv + C, 2 * C,
                                             k->out + c * B * Tc * C, k->m + c * B * H * Tc, B, Tc, Tc, C, H,
                                             c * Tc, j * Tc, k->causal);
        }
    for (int64_t c = 0; c < k->cp; c++) { /* the owner takes its block's dk, dv home */
        float *dqkv = k->dqkv + c * B * Tc * 3 * C, *dkv = k->dkv + c * B * Tc * 2 * C;
        insitra_attention_block_scale(dqkv, 3 * C, B, Tc, C, H);
        insitra_attention_block_scale(dkv, 2 * C, B, Tc, C, H);
        for (int64_t i = 0; i < B * Tc; i++)
            memcpy(dqkv + i * 3 * C + C, dkv + i * 2 * C, sizeof(float) * (size_t)(2 * C));
    }
}

static void cp_case_alloc(cp_case *k, uint64_t seed)
{
    const int64_t N = k->B * k->T, C = k->H * k->hs;
    k->qkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    k->dout = malloc(sizeof(float) * (size_t)(N * C));
    fill_uniform(k->qkv, 3 * N * C, seed, 2.0f);
    fill_uniform(k->dout, N * C, seed + 1, 1.0f);
    k->lqkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    k->ldout = malloc(sizeof(float) * (size_t)(N * C));
    k->kv = malloc(sizeof(float) * (size_t)(2 * N * C));
    k->out = malloc(sizeof(float) * (size_t)(N * C));
    k->m = malloc(sizeof(float) * (size_t)(k->B * k->H * k->T));
    k->l = malloc(sizeof(float) * (size_t)(k->B * k->H * k->T));
    k->dqkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    k->dkv = malloc(sizeof(float) * (size_t)(2 * N * C));
    k->r = NULL;
}

static void cp_case_free(cp_case *k)
{
    free(k->qkv), free(k->dout), free(k->lqkv), free(k->ldout), free(k->kv), free(k->out), free(k->m);
    free(k->l), free(k->dqkv), free(k->dkv), free(k->r);
}

/* max |a - b| / max |b| of rank c's rows of a per-rank (cp,B,Tc,w) array
 * against the rows of the whole (B,T,w) one, over every rank. */
static double cp_error(const cp_case *k, const float *ranks, const float *whole, int64_t w)
{
    const int64_t Tc = k->T / k->cp;
    double err = 0.0, top = 0.0;
    for (int64_t c = 0; c < k->cp; c++)
        for (int64_t b = 0; b < k->B; b++)
            for (int64_t t = 0; t < Tc; t++)
                for (int64_t i = 0; i < w; i++) {
                    const double x = ranks[((c * k->B + b) * Tc + t) * w + i];
                    const double y = whole[(b * k->T + c * Tc + t) * w + i];
                    err = fmax(err, fabs(x - y));
                    top = fmax(top, fabs(y));
                }
    return top > 0.0 ? err / top : err;
}

static void check_blocks(insitra_test *t, int64_t T, int64_t hs, int64_t cp, bool causal, uint64_t seed)
{
    cp_case k = {.B = 2, .T = T, .H = 2, .hs = hs, .cp = cp, .causal = causal};
    const int64_t N = k.B * T, C = k.H * hs, Tc = T / cp;
    cp_case_alloc(&k, seed);
    float *out = malloc(sizeof(float) * (size_t)(N * C)), *lse = malloc(sizeof(float) * (size_t)(k.B * k.H * T));
    float *dqkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    insitra_attention_forward(out, lse, k.qkv, k.B, T, C, k.H, causal);
    insitra_attention_backward(dqkv, k.dout, k.qkv, out, lse, k.B, T, C, k.H, causal);
    cp_forward(&k);
    cp_backward(&k);
    double e_lse = 0.0; /* lse is (cp,B,H,Tc) against (B,H,T) */
    for (int64_t c = 0; c < cp; c++)
        for (int64_t bh = 0; bh < k.B * k.H; bh++)
            for (int64_t i = 0; i < Tc; i++)
                e_lse = fmax(e_lse, fabs((double)k.m[(c * k.B * k.H + bh) * Tc + i] - lse[bh * T + c * Tc + i]));
    const double e_out = cp_error(&k, k.out, out, C), e_dqkv = cp_error(&k, k.dqkv, dqkv, 3 * C);
    EXPECT(t, e_out <= TOL && e_lse <= TOL && e_dqkv <= TOL,
           "cp=%lld T=%lld hs=%lld %s: blocks against one attention: out %.2e, lse %.2e (absolute), dqkv %.2e",
           (long long)cp, (long long)T, (long long)hs, causal ? "causal" : "bidirectional", e_out, e_lse, e_dqkv);
    printf("blocks cp=%lld T=%-4lld hs=%-3lld %-13s out %.2e  lse %.2e  dqkv %.2e\n", (long long)cp, (long long)T,
           (long long)hs, causal ? "causal" : "bidirectional", e_out, e_lse, e_dqkv);
    /* the block backward's two schedules (per head; key and query passes when
     * the threads outnumber the heads) give the same bits */
    float *dqkv_ranks = malloc(sizeof(float) * (size_t)(3 * N * C));
    float *dkv_ranks = malloc(sizeof(float) * (size_t)(2 * N * C));
    memcpy(dqkv_ranks, k.dqkv, sizeof(float) * (size_t)(3 * N * C));
    memcpy(dkv_ranks, k.dkv, sizeof(float) * (size_t)(2 * N * C));
    const int threads = omp_get_max_threads(), other = threads > k.B * k.H ? 1 : (int)(k.B * k.H) + 1;
    omp_set_num_threads(other);
    cp_backward(&k);
    omp_set_num_threads(threads);
    EXPECT(t,
           memcmp(dqkv_ranks, k.dqkv, sizeof(float) * (size_t)(3 * N * C)) == 0 &&
               memcmp(dkv_ranks, k.dkv, sizeof(float) * (size_t)(2 * N * C)) == 0,
           "cp=%lld T=%lld hs=%lld: the block backward differs between %d and %d threads", (long long)cp,
           (long long)T, (long long)hs, threads, other);
    free(dqkv_ranks), free(dkv_ranks);
    free(out), free(lse), free(dqkv);
    cp_case_free(&k);
}

/* Finite differences through the block composition at cp = 2: L = sum over
 * ranks of out . r, against the composed backward with dout = r. */
static double cp_loss(void *p)
{
    cp_case *k = p;
    cp_forward(k);
    double s = 0.0;
    const int64_t n = k->B * k->T * k->H * k->hs;
    for (int64_t i = 0; i < n; i++) s += (double)k->out[i] * (double)k->r[i];
    return s;
}

static int check_blocks_gradient(bool causal)
{
    cp_case k = {.B = 1, .T = 6, .H = 2, .hs = 3, .cp = 2, .causal = causal};
    const int64_t N = k.T, C = k.H * k.hs;
    cp_case_alloc(&k, causal ? 71 : 72);
    /* the loss projection r is per rank, (cp,B,Tc,C): the whole dout split the same way */
    k.r = malloc(sizeof(float) * (size_t)(N * C));
    cp_forward(&k);
    memcpy(k.r, k.ldout, sizeof(float) * (size_t)(N * C));
    cp_backward(&k);
    /* gradients of the whole qkv, from the ranks' dqkv */
    float *grad = malloc(sizeof(float) * (size_t)(3 * N * C));
    const int64_t Tc = k.T / k.cp;
    for (int64_t c = 0; c < k.cp; c++)
        memcpy(grad + c * Tc * 3 * C, k.dqkv + c * Tc * 3 * C, sizeof(float) * (size_t)(Tc * 3 * C));
    const int f = gradcheck(causal ? "cp=2 blocks (causal) dqkv" : "cp=2 blocks dqkv", k.qkv, grad, 3 * N * C,
                            cp_loss, &k, 200, 1e-2, 1e-3, 1e-2);
    free(grad);
    cp_case_free(&k);
    return f;
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

    /* Blocks of keys (context parallelism) against one attention. */
    const int64_t cps[][3] = {{100, 5, 2}, {100, 72, 4}, {130, 8, 2}, {256, 16, 4}, {8, 3, 4}};
    for (size_t i = 0; i < sizeof cps / sizeof *cps; i++)
        for (int causal = 0; causal < 2; causal++)
            check_blocks(&t, cps[i][0], cps[i][1], cps[i][2], causal != 0, seed += 2);
    for (int causal = 0; causal < 2; causal++)
        EXPECT(&t, check_blocks_gradient(causal != 0) == 0, "cp=2 blocks: finite differences disagree (lines above)");

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
