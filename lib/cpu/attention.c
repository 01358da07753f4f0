/*
 * Blocked attention (attention.h). Forward runs one task per (sample, head,
 * query block): it walks the key blocks, keeps the running row maximum m and
 * sum l of the online softmax, and rescales its output rows when m grows.
 *
 * Backward recomputes P = exp(S - lse) and dS = P (dP - D), D = rowsum(dO O),
 * tile by tile. dK and dV of a key block sum over query blocks, dQ of a query
 * block over key blocks, so no finer task than a head owns all three. With
 * at least as many heads (B x H) as threads, one task per head walks key
 * blocks outside and query blocks inside (five tile products). With fewer,
 * two passes of independent tasks, per (sample, head, key block) for dK, dV
 * and per (sample, head, query block) for dQ, recompute the tiles once more
 * (seven products) to give every thread work. Every element is summed in the
 * same order either way, so the result is the same bits on any thread count;
 * no atomics, no per-thread partial sums.
 *
 * The tile products are single-threaded cblas_sgemm calls on 64 x 64 tiles
 * read in place from the fused buffers. A register-tiled kernel of our own
 * (GCC vector extensions, AVX2 multiply-then-add) lost to them on the
 * project's shared 2-core AMD EPYC box despite the per-call overhead: one
 * layer's forward + backward at bench_step's S shape took 1.5-1.8x the old
 * materialised attention's time with it, 1.05-1.25x with the BLAS tiles
 * (M: 2.0-2.2x and 1.2-1.35x; 1-2 threads, load average 18-21).
 */
#include "attention.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "vector_math.h"

enum { BQ = INSITRA_ATTENTION_BQ, BK = INSITRA_ATTENTION_BK };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* y (m,n) += w (m,k) @ x (k,n): element (i,j) of w at w[i wi + j wj] (one of
 * wi, wj is 1: w or its transpose is row-major), rows of x and y at strides
 * xs and ys. Inside the parallel loops the OpenMP build of OpenBLAS runs
 * single-threaded; the same call on the same shapes gives the same bits. */
static void tile_gemm(float *restrict y, int64_t ys, const float *restrict w, int64_t wi, int64_t wj,
                      const float *restrict x, int64_t xs, int64_t m, int64_t n, int64_t k)
{
    if (m == 0 || n == 0 || k == 0) return;
    const bool transposed = wj != 1;
    cblas_sgemm(CblasRowMajor, transposed ? CblasTrans : CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k,
                1.0f, w, (int)(transposed ? wj : wi), x, (int)xs, 1.0f, y, (int)ys);
}

/* s (na,nb), rows at stride BK, = scale * a (na,hs) @ b (nb,hs)^T, rows of a
 * and b at strides as and bs. Columns nb.. of s are not written. */
static void tile_scores(float *restrict s, const float *restrict a, int64_t as, const float *restrict b,
                        int64_t bs, int64_t na, int64_t nb, int64_t hs, float scale)
{
    if (na == 0 || nb == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)na, (int)nb, (int)hs, scale, a, (int)as, b, (int)bs,
                0.0f, s, BK);
}

/* Keys a query row of a tile sees: all nk, or with causal those at or before
 * it. query and key0 (the tile's first key) are global token positions. */
static inline int64_t visible_keys(bool causal, int64_t query, int64_t key0, int64_t nk)
{
    if (!causal) return nk;
    const int64_t n = query - key0 + 1;
    return n < 0 ? 0 : n < nk ? n : nk;
}

/* One head of one sample: queries, and the keys and values they attend to:
 * the same tokens in a plain attention, one rank's block of them in a
 * context-parallel one. Positions are global token indices (the causal
 * mask); the backward pointers may be NULL in forward. */
typedef struct head_view {
    const float *q, *k, *v;        /* rows at strides qs, kvs, kvs */
    const float *dout, *out, *lse; /* rows at stride os; lse (Tq) */
    float *dq, *dk, *dv;           /* rows at strides qs, kvs, kvs */
    int64_t qs, kvs, os, Tq, Tk, hs, q_pos, k_pos;
    float scale;
} head_view;

/* Keys of the view that queries q0..q0+nq-1 can see: with causal, none
 * after the last of them. */
static inline int64_t keys_seen(const head_view *hv, int64_t q0, int64_t nq, bool causal)
{
    if (!causal) return hv->Tk;
    const int64_t n = hv->q_pos + q0 + nq - hv->k_pos;
    return n < 0 ? 0 : n < hv->Tk ? n : hv->Tk;
}

/* Folds every key of hv into the running softmax of queries q0..q0+nq-1:
 * y (nq,hs), rows at stride ys, unnormalised; m, l (nq) the running row
 * maximum and sum (-inf and 0 before the first key). */
VECTOR_CLONES
static void forward_rows(const head_view *hv, int64_t q0, int64_t nq, float *y, int64_t ys, float *m, float *l,
                         bool causal)
{
    _Alignas(64) float s[BQ * BK];
    const int64_t hs = hv->hs, kend = keys_seen(hv, q0, nq, causal);
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        const int64_t nk = min64(BK, kend - k0);
        tile_scores(s, hv->q + q0 * hv->qs, hv->qs, hv->k + k0 * hv->kvs, hv->kvs, nq, nk, hs, hv->scale);
        for (int64_t r = 0; r < nq; r++) {
            float *sr = s + r * BK, *yr = y + r * ys;
            const int64_t len = visible_keys(causal, hv->q_pos + q0 + r, hv->k_pos + k0, nk);
            for (int64_t c = len; c < nk; c++) sr[c] = 0.0f;
            if (len == 0) continue;
            const float tile_max = row_max(sr, len);
            const float mx = tile_max > m[r] ? tile_max : m[r];
            /* the first tile a row sees has nothing to rescale */
            const float alpha = m[r] == -INFINITY ? 0.0f : vexpf(m[r] - mx);
            for (int64_t c = 0; c < len; c++) sr[c] = vexpf(sr[c] - mx);
            l[r] = l[r] * alpha + row_sum(sr, len);
            m[r] = mx;
            if (alpha != 1.0f)
                for (int64_t d = 0; d < hs; d++) yr[d] *= alpha;
        }
        /* y (nq,hs) += P (nq,nk) @ v (nk,hs) */
        tile_gemm(y, ys, s, BK, 1, hv->v + k0 * hv->kvs, hv->kvs, nq, hs, nk);
    }
}

/* y (n,hs) /= l, lse = m + log l: the end of the online softmax. */
VECTOR_CLONES
static void finish_rows(float *y, int64_t ys, float *lse, const float *m, const float *l, int64_t n, int64_t hs)
{
    for (int64_t r = 0; r < n; r++) {
        float *yr = y + r * ys;
        const float inv = 1.0f / l[r];
        for (int64_t d = 0; d < hs; d++) yr[d] *= inv;
        lse[r] = m[r] + logf(l[r]);
    }
}

/* The view of head h of sample b of a plain attention on a fused qkv (B,T,3C). */
static head_view head_at(float *dqkv, const float *dout, const float *qkv, const float *out,
                         const float *lse, int64_t b, int64_t h, int64_t T, int64_t C, int64_t H)
{
    const int64_t hs = C / H, C3 = 3 * C;
    head_view v = {.qs = C3, .kvs = C3, .os = C, .Tq = T, .Tk = T, .hs = hs,
                   .scale = 1.0f / sqrtf((float)hs)};
    v.q = qkv + b * T * C3 + h * hs;
    v.k = v.q + C;
    v.v = v.q + 2 * C;
    if (dqkv) {
        v.dq = dqkv + b * T * C3 + h * hs;
        v.dk = v.dq + C;
        v.dv = v.dq + 2 * C;
    }
    if (dout) v.dout = dout + b * T * C + h * hs;
    if (out) v.out = out + b * T * C + h * hs;
    v.lse = lse + (b * H + h) * T;
    return v;
}

/* One (sample, head, query block): out rows and lse of queries q0..q0+nq-1. */
static void forward_task(float *out, float *lse, const float *qkv, int64_t b, int64_t h, int64_t q0,
                         int64_t T, int64_t C, int64_t H, bool causal)
{
    float m[BQ], l[BQ];
    const head_view hv = head_at(NULL, NULL, qkv, NULL, lse, b, h, T, C, H);
    const int64_t nq = min64(BQ, T - q0);
    float *y = out + (b * T + q0) * C + h * hv.hs;
    for (int64_t r = 0; r < nq; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        memset(y + r * C, 0, (size_t)hv.hs * sizeof(float));
    }
    forward_rows(&hv, q0, nq, y, C, m, l, causal);
    finish_rows(y, C, lse + (b * H + h) * T + q0, m, l, nq, hv.hs);
}

void insitra_attention_forward(float *out, float *lse, const float *qkv, int64_t B, int64_t T,
                               int64_t C, int64_t H, bool causal)
{
    const int64_t nqb = (T + BQ - 1) / BQ;
    /* Causal query blocks differ in work: hand them out as threads free up
     * (the result does not depend on which thread runs a task). */
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t qb = 0; qb < nqb; qb++) forward_task(out, lse, qkv, b, h, qb * BQ, T, C, H, causal);
}

/* The probabilities and score gradients of one tile: s (nq,BK) holds the
 * scaled scores and becomes P = exp(s - lse); dp (nq,BK) holds dO V^T and
 * becomes dS = P (dP - D) (the 1/sqrt(hs) of the scores is left to the
 * caller). q0 and k0 are global positions; dout, out rows at stride os.
 * Entries a query does not see, and columns nk.., are zero. */
VECTOR_CLONES
static void tile_probabilities(float *restrict s, float *restrict dp, const float *lse, const float *dout,
                               const float *out, int64_t os, int64_t q0, int64_t nq, int64_t k0, int64_t nk,
                               int64_t hs, bool causal)
{
    for (int64_t r = 0; r < nq; r++) {
        float *sr = s + r * BK, *dr = dp + r * BK;
        const int64_t len = visible_keys(causal, q0 + r, k0, nk);
        const float D = row_dot(dout + r * os, out + r * os, hs), lr = lse[r];
        for (int64_t c = 0; c < len; c++) {
            const float p = vexpf(sr[c] - lr);
            sr[c] = p;
            dr[c] = p * (dr[c] - D);
        }
        for (int64_t c = len; c < BK; c++) sr[c] = dr[c] = 0.0f;
    }
}

/* a (n,hs) *= scale, rows at stride as. */
VECTOR_CLONES
static void scale_rows(float *a, int64_t as, int64_t n, int64_t hs, float scale)
{
    for (int64_t r = 0; r < n; r++)
        for (int64_t d = 0; d < hs; d++) a[r * as + d] *= scale;
}

/* Adds to dK, dV of keys k0..k0+nk-1 of the view their sums over every
 * query that sees them, and with dq the queries' dq from these keys; dk and
 * dq unscaled (the caller multiplies by hv->scale once all terms are in). */
VECTOR_CLONES
static void backward_keys_task(const head_view *hv, int64_t k0, bool causal, bool dq)
{
    _Alignas(64) float s[BQ * BK];
    _Alignas(64) float dp[BQ * BK];
    const int64_t qs = hv->qs, kvs = hv->kvs, os = hv->os, hs = hv->hs, nk = min64(BK, hv->Tk - k0);
    /* with causal, queries before the first of these keys see none of them */
    int64_t first = causal ? hv->k_pos + k0 - hv->q_pos : 0;
    first = first < 0 ? 0 : first / BQ * BQ;
    for (int64_t q0 = first; q0 < hv->Tq; q0 += BQ) {
        const int64_t nq = min64(BQ, hv->Tq - q0);
        tile_scores(s, hv->q + q0 * qs, qs, hv->k + k0 * kvs, kvs, nq, nk, hs, hv->scale);
        tile_scores(dp, hv->dout + q0 * os, os, hv->v + k0 * kvs, kvs, nq, nk, hs, 1.0f);
        tile_probabilities(s, dp, hv->lse + q0, hv->dout + q0 * os, hv->out + q0 * os, os, hv->q_pos + q0, nq,
                           hv->k_pos + k0, nk, hs, causal);
        /* dv (nk,hs) += P^T @ dO (nq,hs);  dk (nk,hs) += dS^T @ q */
        tile_gemm(hv->dv + k0 * kvs, kvs, s, 1, BK, hv->dout + q0 * os, os, nk, hs, nq);
        tile_gemm(hv->dk + k0 * kvs, kvs, dp, 1, BK, hv->q + q0 * qs, qs, nk, hs, nq);
        /* dq (nq,hs) += dS (nq,nk) @ k (nk,hs) */
        if (dq) tile_gemm(hv->dq + q0 * qs, qs, dp, BK, 1, hv->k + k0 * kvs, kvs, nq, hs, nk);
    }
}

/* Adds to dq of queries q0..q0+nq-1 (unscaled) their sums over every key of
 * the view they see: the same tiles, sums and order as backward_keys_task's
 * dq, so the same bits. */
VECTOR_CLONES
static void backward_queries_task(const head_view *hv, int64_t q0, bool causal)
{
    _Alignas(64) float s[BQ * BK];
    _Alignas(64) float dp[BQ * BK];
    const int64_t qs = hv->qs, kvs = hv->kvs, os = hv->os, hs = hv->hs, nq = min64(BQ, hv->Tq - q0);
    const int64_t kend = keys_seen(hv, q0, nq, causal);
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        const int64_t nk = min64(BK, kend - k0);
        tile_scores(s, hv->q + q0 * qs, qs, hv->k + k0 * kvs, kvs, nq, nk, hs, hv->scale);
        tile_scores(dp, hv->dout + q0 * os, os, hv->v + k0 * kvs, kvs, nq, nk, hs, 1.0f);
        tile_probabilities(s, dp, hv->lse + q0, hv->dout + q0 * os, hv->out + q0 * os, os, hv->q_pos + q0, nq,
                           hv->k_pos + k0, nk, hs, causal);
        tile_gemm(hv->dq + q0 * qs, qs, dp, BK, 1, hv->k + k0 * kvs, kvs, nq, hs, nk);
    }
}

/* ---- blocks of keys (context parallelism) ---- */

/* The view of head h of sample b: this rank's queries against one block. */
static head_view block_view(float *dqkv, float *dk, float *dv, const float *dout, const float *qkv,
                            const float *k, const float *v, int64_t kvs, const float *out,
                            const float *lse, int64_t b, int64_t h, int64_t Tq, int64_t Tk, int64_t C,
                            int64_t H, int64_t q_pos, int64_t k_pos)
{
    head_view hv = head_at(dqkv, dout, qkv, out, lse, b, h, Tq, C, H);
    hv.Tk = Tk;
    hv.kvs = kvs;
    hv.k = k + b * Tk * kvs + h * hv.hs;
    hv.v = v + b * Tk * kvs + h * hv.hs;
    if (dk) hv.dk = dk + b * Tk * kvs + h * hv.hs;
    if (dv) hv.dv = dv + b * Tk * kvs + h * hv.hs;
    hv.q_pos = q_pos;
    hv.k_pos = k_pos;
    return hv;
}

void insitra_attention_block_forward(float *out, float *m, float *l, const float *qkv, const float *k,
                                     const float *v, int64_t kvs, int64_t B, int64_t Tq, int64_t Tk,
                                     int64_t C, int64_t H, int64_t q_pos, int64_t k_pos, bool causal)
{
    const int64_t nqb = (Tq + BQ - 1) / BQ;
#pragma omp parallel for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t qb = 0; qb < nqb; qb++) {
                const head_view hv =
                    block_view(NULL, NULL, NULL, NULL, qkv, k, v, kvs, NULL, m, b, h, Tq, Tk, C, H, q_pos, k_pos);
                const int64_t q0 = qb * BQ, nq = min64(BQ, Tq - q0), row = (b * H + h) * Tq + q0;
                forward_rows(&hv, q0, nq, out + (b * Tq + q0) * C + h * hv.hs, C, m + row, l + row, causal);
            }
}

void insitra_attention_block_finish(float *out, float *lse, const float *m, const float *l, int64_t B,
                                    int64_t Tq, int64_t C, int64_t H)
{
    const int64_t hs = C / H;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t row = (b * H + h) * Tq;
            finish_rows(out + b * Tq * C + h * hs, C, lse + row, m + row, l + row, Tq, hs);
        }
}

void insitra_attention_block_backward(float *dqkv, float *dk, float *dv, const float *dout,
                                      const float *qkv, const float *k, const float *v, int64_t kvs,
                                      const float *out, const float *lse, int64_t B, int64_t Tq,
                                      int64_t Tk, int64_t C, int64_t H, int64_t q_pos, int64_t k_pos,
                                      bool causal)
{
    /* Enough heads for every thread: one task per head, which owns dq of its
     * queries and dk, dv of the block's keys. Otherwise, as in
     * insitra_attention_backward, a pass over key tiles (dk, dv) and one over
     * query tiles (dq), with T / 64 times as many tasks (a cp rank of a
     * 4-head model on 8 threads left half of them idle). Both add the same
     * terms in the same order: the same bits. */
    if (B * H >= omp_get_max_threads()) {
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++) {
                const head_view hv =
                    block_view(dqkv, dk, dv, dout, qkv, k, v, kvs, out, lse, b, h, Tq, Tk, C, H, q_pos, k_pos);
                for (int64_t k0 = 0; k0 < Tk; k0 += BK) backward_keys_task(&hv, k0, causal, true);
            }
        return;
    }
    const int64_t nkb = (Tk + BK - 1) / BK, nqb = (Tq + BQ - 1) / BQ;
#pragma omp parallel
    {
        /* the passes write disjoint rows (dk, dv; dq) and read only inputs */
#pragma omp for collapse(3) schedule(dynamic) nowait
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t kb = 0; kb < nkb; kb++) {
                    const head_view hv =
                        block_view(dqkv, dk, dv, dout, qkv, k, v, kvs, out, lse, b, h, Tq, Tk, C, H, q_pos, k_pos);
                    backward_keys_task(&hv, kb * BK, causal, false);
                }
#pragma omp for collapse(3) schedule(dynamic) nowait
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t qb = 0; qb < nqb; qb++) {
                    const head_view hv =
                        block_view(dqkv, dk, dv, dout, qkv, k, v, kvs, out, lse, b, h, Tq, Tk, C, H, q_pos, k_pos);
                    backward_queries_task(&hv, qb * BQ, causal);
                }
    }
}

void insitra_attention_block_scale(float *a, int64_t rs, int64_t B, int64_t n, int64_t C, int64_t H)
{
    const float scale = 1.0f / sqrtf((float)(C / H));
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; b++) scale_rows(a + b * n * rs, rs, n, C, scale);
}

/* The whole sample's attention is one block of keys at the queries' own
 * positions: its gradients are the block's, added into zeroed dq, dk, dv
 * and scaled once all terms are in (the same sums in the same order as a
 * cp rank's, so the two schedules of the block backward serve both). */
void insitra_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out,
                                const float *lse, int64_t B, int64_t T, int64_t C, int64_t H,
                                bool causal)
{
    memset(dqkv, 0, (size_t)(B * T * 3 * C) * sizeof(float));
    insitra_attention_block_backward(dqkv, dqkv + C, dqkv + 2 * C, dout, qkv, qkv + C, qkv + 2 * C, 3 * C, out,
                                     lse, B, T, T, C, H, 0, 0, causal);
    insitra_attention_block_scale(dqkv, 3 * C, B, T, C, H);     /* dq */
    insitra_attention_block_scale(dqkv + C, 3 * C, B, T, C, H); /* dk */
}
