/*
 * Fused attention (attention.cuh): FlashAttention-2-style tiles over the
 * keys with an online softmax in forward, and in backward two kernels that
 * each recompute the probabilities from the saved log-sum-exp:
 *
 *   delta (B,H,T) = rowsum(dout * out)                 (one warp per row)
 *   dK, dV: a block owns 64 keys and walks the query tiles
 *   dQ:     a block owns 64 queries and walks the key tiles
 *
 * so every gradient row is summed by one block in a fixed order and no
 * floating-point atomics are needed (bit-identical reruns). The price is one
 * more recomputation of the scores than an atomic dQ would need.
 *
 * Two implementations of the same three passes:
 *   - tensor cores (bf16, hd = 32/64/128): 4 warps x 16 rows, tiles of 64
 *     keys staged by cp.async (double-buffered), mma.sync m16n8k16 with fp32
 *     accumulators, ldmatrix from shared rows padded by 16 bytes (so the 8
 *     rows one ldmatrix reads start in different banks). Probabilities are
 *     rounded to bf16 for the P V and dS products, as FlashAttention does.
 *   - CUDA cores (fp32, the reference precision, and bf16 with other hd): a
 *     group of G lanes holds one row, 8 of its dimensions per lane, and dot
 *     products are summed across the group with a fixed butterfly.
 *
 * Scores are kept in base 2: s2 = q.k * log2(e) / sqrt(hd), so exp2 is one
 * instruction and lse = max + log2(sum exp2(s2 - max)).
 */
#include "attention.cuh"

#include <cuda_bf16.h>
#include <math.h>

#include "cuda_util.h"
#include "mma_tiles.cuh"

namespace {

using namespace insitra_mma; /* bf16 and the tensor-core tile helpers */

__device__ __forceinline__ float load_f(const float *p) { return *p; }
__device__ __forceinline__ float load_f(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_f(bf16 *p, float v) { *p = __float2bfloat16(v); }

/* ======================= tensor-core kernels (bf16) ======================= */

constexpr int kThreads = 128; /* the CUDA-core kernels' blocks */

/* Whether accumulator element e of n-block n of this lane, in a tile of
 * query rows (the warp's first: row0) by keys (the tile's first: k0), is a
 * live pair: the key exists, and comes at or before the query when causal. */
template <bool CAUSAL>
__device__ __forceinline__ bool live_pair(int row0, int k0, int n, int e, int lane, int Tn)
{
    const int key = k0 + n * 8 + 2 * (lane % 4) + (e & 1);
    const int row = row0 + lane / 4 + 8 * (e / 2);
    return key < Tn && !(CAUSAL && key > row);
}

/* the query block of blockIdx.y; causal: the longest rows first */
template <bool CAUSAL> __device__ __forceinline__ int row_block()
{
    return CAUSAL ? (int)(gridDim.y - 1 - blockIdx.y) : (int)blockIdx.y;
}

/* grid (B*H, query blocks): out and lse of 16 NW query rows of one head */
template <int HD, bool CAUSAL, int NW, int MB>
__global__ void __launch_bounds__(32 * NW, MB) fwd_mma_k(bf16 *out, float *lse, const bf16 *qkv, int Tn,
                                                     int H, float sl2)
{
    constexpr int LD = HD + 8, NB = kTile / 8, NT = 32 * NW, BR = 16 * NW;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = (bf16 *)smem, *sK = sQ + BR * LD, *sV = sK + 2 * kTile * LD; /* K, V: 2 stages */
    const int C = H * HD, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t rs = 3 * (int64_t)C;
    const bf16 *q = qkv + (int64_t)b * Tn * rs + h * HD, *k = q + C, *v = q + 2 * C;
    const int q0 = row_block<CAUSAL>() * BR, row0 = q0 + warp * 16;
    const int n_kt = (min(Tn, CAUSAL ? q0 + BR : Tn) + kTile - 1) / kTile;

    load_tile<HD, NT, BR>(sQ, q, rs, q0, Tn);
    cp_async_commit();
    load_tile<HD, NT>(sK, k, rs, 0, Tn);
    load_tile<HD, NT>(sV, v, rs, 0, Tn);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) ldsm4(qf[kk], a_frag<LD>(sQ, warp * 16, kk * 16, lane));

    float o[HD / 8][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int kt = 0; kt < n_kt; kt++) {
        const bf16 *cK = sK + (kt & 1) * kTile * LD, *cV = sV + (kt & 1) * kTile * LD;
        const bool more = kt + 1 < n_kt;
        queue_pair<HD, NT>(more, sK + ((kt + 1) & 1) * kTile * LD, k, rs, sV + ((kt + 1) & 1) * kTile * LD, v, rs,
                           (kt + 1) * kTile, Tn);
        wait_current(more);
        float s[NB][4];
        tile_dot<HD>(s, qf, cK, lane);

        const int k0 = kt * kTile;
        const bool edge = k0 + kTile > Tn || (CAUSAL && k0 + kTile - 1 > q0);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] *= sl2;
                if (edge && !live_pair<CAUSAL>(row0, k0, n, e, lane, Tn)) s[n][e] = -INFINITY;
                mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
            }
        online_softmax_tile<HD>(s, mx, m, l, o);
        tile_accumulate<HD>(o, s, cV, lane);
        __syncthreads(); /* this stage is refilled next iteration */
    }

    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        inv[r] = 1.f / l[r];
        const int row = row0 + lane / 4 + 8 * r;
        if (lane % 4 == 0 && row < Tn) lse[(int64_t)bh * Tn + row] = m[r] + log2f(l[r]);
    }
    store_rows<HD>(out + (int64_t)b * Tn * C + h * HD, C, o, inv, row0, Tn, lane);
}

/* Loads the lse and delta of query rows q0 .. q0+63 into shared memory. */
__device__ __forceinline__ void load_row_stats(float *sl, float *sd, const float *lse,
                                               const float *delta, int q0, int Tn)
{
    for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
        const bool ok = q0 + i < Tn;
        sl[i] = ok ? lse[q0 + i] : 0.f;
        sd[i] = ok ? delta[q0 + i] : 0.f;
    }
}

/* grid (B*H, key blocks): dK and dV of 16 NW keys of one head, over all queries */
template <int HD, bool CAUSAL, int NW>
__global__ void __launch_bounds__(32 * NW) bwd_dkdv_mma_k(bf16 *dqkv, const bf16 *qkv, const bf16 *dout,
                                                          const float *lse, const float *delta,
                                                          int Tn, int H, float sl2, float scale)
{
    constexpr int LD = HD + 8, NB = kTile / 8, NT = 32 * NW, BR = 16 * NW;
    static_assert(BR <= 2 * kTile, "the block's rows are staged in the two stages of a tile");
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = (bf16 *)smem, *sO = sQ + 2 * kTile * LD; /* Q and dO tiles: 2 stages each */
    float *sL = (float *)(sO + 2 * kTile * LD), *sD = sL + 2 * kTile;
    const int C = H * HD, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t rs = 3 * (int64_t)C;
    const bf16 *q = qkv + (int64_t)b * Tn * rs + h * HD, *k = q + C, *v = q + 2 * C;
    const bf16 *dO = dout + (int64_t)b * Tn * C + h * HD;
    const float *L = lse + (int64_t)bh * Tn, *D = delta + (int64_t)bh * Tn;
    /* causal: the first key blocks see the most queries; they go first as they are */
    const int k0 = blockIdx.y * BR, krow0 = k0 + warp * 16;
    const int qt0 = CAUSAL ? k0 / kTile : 0, n_qt = (Tn + kTile - 1) / kTile;

    uint32_t kf[HD / 16][4], vf[HD / 16][4];
    rows_to_frags<HD, NW>(kf, vf, sQ, sO, k, rs, v, rs, k0, Tn);
    load_tile<HD, NT>(sQ, q, rs, qt0 * kTile, Tn);
    load_tile<HD, NT>(sO, dO, C, qt0 * kTile, Tn);
    cp_async_commit();
    load_row_stats(sL, sD, L, D, qt0 * kTile, Tn);

    float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
    for (int qt = qt0; qt < n_qt; qt++) {
        const int st = (qt - qt0) & 1, q0 = qt * kTile;
        const bf16 *cQ = sQ + st * kTile * LD, *cO = sO + st * kTile * LD;
        const float *cL = sL + st * kTile, *cD = sD + st * kTile;
        const bool more = qt + 1 < n_qt;
        queue_pair<HD, NT>(more, sQ + (st ^ 1) * kTile * LD, q, rs, sO + (st ^ 1) * kTile * LD, dO, C,
                           q0 + kTile, Tn);
        if (more) load_row_stats(sL + (st ^ 1) * kTile, sD + (st ^ 1) * kTile, L, D, q0 + kTile, Tn);
        wait_current(more);
        /* transposed scores and dP: rows are this warp's keys, columns the queries */
        float p[NB][4], ds[NB][4];
        tile_dot<HD>(p, kf, cQ, lane);
        tile_dot<HD>(ds, vf, cO, lane);
        const bool edge = q0 + kTile > Tn || (CAUSAL && q0 < k0 + BR - 1);
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qi = n * 8 + 2 * (lane % 4) + (e & 1);
                const int key = krow0 + lane / 4 + 8 * (e / 2);
                float pe = exp2f(p[n][e] * sl2 - cL[qi]);
                if (edge && (q0 + qi >= Tn || (CAUSAL && q0 + qi < key))) pe = 0.f;
                p[n][e] = pe;
                ds[n][e] = pe * (ds[n][e] - cD[qi]);
            }
        tile_accumulate<HD>(dv, p, cO, lane);
        tile_accumulate<HD>(dk, ds, cQ, lane);
        __syncthreads();
    }
    const float one[2] = {1.f, 1.f}, sc[2] = {scale, scale};
    bf16 *dk_out = dqkv + (int64_t)b * Tn * rs + C + h * HD;
    store_rows<HD>(dk_out, rs, dk, sc, krow0, Tn, lane);
    store_rows<HD>(dk_out + C, rs, dv, one, krow0, Tn, lane);
}

/* grid (B*H, query blocks): dQ of 16 NW query rows of one head, over all keys */
template <int HD, bool CAUSAL, int NW, int MB>
__global__ void __launch_bounds__(32 * NW, MB) bwd_dq_mma_k(bf16 *dqkv, const bf16 *qkv, const bf16 *dout,
                                                        const float *lse, const float *delta, int Tn,
                                                        int H, float sl2, float scale)
{
    constexpr int LD = HD + 8, NB = kTile / 8, NT = 32 * NW, BR = 16 * NW;
    static_assert(BR <= 2 * kTile, "the block's rows are staged in the two stages of a tile");
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sK = (bf16 *)smem, *sV = sK + 2 * kTile * LD; /* K and V tiles: 2 stages each */
    const int C = H * HD, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t rs = 3 * (int64_t)C;
    const bf16 *q = qkv + (int64_t)b * Tn * rs + h * HD, *k = q + C, *v = q + 2 * C;
    const bf16 *dO = dout + (int64_t)b * Tn * C + h * HD;
    const int q0 = row_block<CAUSAL>() * BR, row0 = q0 + warp * 16;
    const int n_kt = (min(Tn, CAUSAL ? q0 + BR : Tn) + kTile - 1) / kTile;

    uint32_t qf[HD / 16][4], of[HD / 16][4];
    rows_to_frags<HD, NW>(qf, of, sK, sV, q, rs, dO, C, q0, Tn);
    load_tile<HD, NT>(sK, k, rs, 0, Tn);
    load_tile<HD, NT>(sV, v, rs, 0, Tn);
    cp_async_commit();
    float lr[2], dr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + lane / 4 + 8 * r;
        lr[r] = row < Tn ? lse[(int64_t)bh * Tn + row] : 0.f;
        dr[r] = row < Tn ? delta[(int64_t)bh * Tn + row] : 0.f;
    }

    float dq[HD / 8][4] = {};
    for (int kt = 0; kt < n_kt; kt++) {
        const int st = kt & 1, k0 = kt * kTile;
        const bf16 *cK = sK + st * kTile * LD, *cV = sV + st * kTile * LD;
        const bool more = kt + 1 < n_kt;
        queue_pair<HD, NT>(more, sK + (st ^ 1) * kTile * LD, k, rs, sV + (st ^ 1) * kTile * LD, v, rs,
                           k0 + kTile, Tn);
        wait_current(more);
        float ds[NB][4], dp[NB][4];
        tile_dot<HD>(ds, qf, cK, lane);
        tile_dot<HD>(dp, of, cV, lane);
        const bool edge = k0 + kTile > Tn || (CAUSAL && k0 + kTile - 1 > q0);
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float pe = exp2f(ds[n][e] * sl2 - lr[e / 2]);
                if (edge && !live_pair<CAUSAL>(row0, k0, n, e, lane, Tn)) pe = 0.f;
                ds[n][e] = pe * (dp[n][e] - dr[e / 2]);
            }
        tile_accumulate<HD>(dq, ds, cK, lane);
        __syncthreads();
    }
    const float sc[2] = {scale, scale};
    store_rows<HD>(dqkv + (int64_t)b * Tn * rs + h * HD, rs, dq, sc, row0, Tn, lane);
}

/* ================== CUDA-core kernels (fp32, any hd <= 256) ================= */

/*
 * A group of G lanes (G divides 32) holds one row; lane j of the group keeps
 * dimensions j, j+G, .., j+7G (zeros past hd), so hd <= 8G. Blocks are 128
 * threads = 128/G rows; tiles of kGenTile rows of the other operand are
 * staged in shared memory as fp32.
 */
constexpr int kGenTile = 16;
constexpr int kPerLane = 8;

template <int G> __device__ __forceinline__ float group_sum(float v)
{
#pragma unroll
    for (int o = G / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* kGenTile rows from r0 (zeros past Tn, and past hd up to 8G) of a (T, hd)
 * matrix with row stride rs, as fp32 */
template <typename T, int G>
__device__ __forceinline__ void gen_load_tile(float (*dst)[kPerLane * G], const T *src, int64_t rs, int r0,
                                              int Tn, int hd)
{
    for (int e = threadIdx.x; e < kGenTile * kPerLane * G; e += kThreads) {
        const int r = e / (kPerLane * G), d = e % (kPerLane * G);
        dst[r][d] = r0 + r < Tn && d < hd ? load_f(src + (int64_t)(r0 + r) * rs + d) : 0.f;
    }
}

/* a row's dims of this lane (zeros past Tn or hd), times mul */
template <typename T, int G>
__device__ __forceinline__ void gen_load_row(float x[kPerLane], const T *src, int row, int Tn, int hd,
                                             int lg, float mul)
{
#pragma unroll
    for (int i = 0; i < kPerLane; i++) {
        const int d = lg + G * i;
        x[i] = row < Tn && d < hd ? load_f(src + d) * mul : 0.f;
    }
}

template <typename T, int G>
__device__ __forceinline__ void gen_store_row(T *dst, const float x[kPerLane], int row, int Tn, int hd,
                                              int lg, float mul)
{
    if (row >= Tn) return;
#pragma unroll
    for (int i = 0; i < kPerLane; i++)
        if (lg + G * i < hd) store_f(dst + lg + G * i, x[i] * mul);
}

/* the dot product of this lane's dims with a shared row, summed over the group */
template <int G> __device__ __forceinline__ float gen_dot(const float x[kPerLane], const float *srow, int lg)
{
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; i++) acc += x[i] * srow[lg + G * i];
    return group_sum<G>(acc);
}

/* grid (B*H, row blocks) */
template <typename T, int G>
__global__ void __launch_bounds__(kThreads) fwd_gen_k(T *out, float *lse, const T *qkv, int Tn, int H, int hd,
                                                      float sl2, bool causal)
{
    constexpr int R = kThreads / G;
    __shared__ float sK[kGenTile][kPerLane * G], sV[kGenTile][kPerLane * G];
    const int C = H * hd, bh = blockIdx.x, b = bh / H, h = bh % H, lg = threadIdx.x % G;
    const int row = blockIdx.y * R + threadIdx.x / G;
    const int64_t rs = 3 * (int64_t)C;
    const T *q = qkv + (int64_t)b * Tn * rs + h * hd;
    float qr[kPerLane], o[kPerLane] = {};
    gen_load_row<T, G>(qr, q + (int64_t)row * rs, row, Tn, hd, lg, sl2);
    float m = -INFINITY, l = 0.f;
    const int kend = causal ? min(Tn, (int)blockIdx.y * R + R) : Tn;
    for (int k0 = 0; k0 < kend; k0 += kGenTile) {
        __syncthreads();
        gen_load_tile<T, G>(sK, q + C, rs, k0, Tn, hd);
        gen_load_tile<T, G>(sV, q + 2 * C, rs, k0, Tn, hd);
        __syncthreads();
        float s[kGenTile], mx = m;
#pragma unroll
        for (int j = 0; j < kGenTile; j++) {
            s[j] = gen_dot<G>(qr, sK[j], lg);
            if (k0 + j >= Tn || (causal && k0 + j > row)) s[j] = -INFINITY;
            mx = fmaxf(mx, s[j]);
        }
        const float base = mx == -INFINITY ? 0.f : mx, alpha = exp2f(m - base);
        m = mx;
        l *= alpha;
#pragma unroll
        for (int i = 0; i < kPerLane; i++) o[i] *= alpha;
#pragma unroll
        for (int j = 0; j < kGenTile; j++) {
            const float p = exp2f(s[j] - base);
            l += p;
#pragma unroll
            for (int i = 0; i < kPerLane; i++) o[i] += p * sV[j][lg + G * i];
        }
    }
    gen_store_row<T, G>(out + ((int64_t)b * Tn + row) * C + h * hd, o, row, Tn, hd, lg, 1.f / l);
    if (lg == 0 && row < Tn) lse[(int64_t)bh * Tn + row] = m + log2f(l);
}

/* grid (B*H, key blocks): a group owns one key and walks the queries */
template <typename T, int G>
__global__ void __launch_bounds__(kThreads) bwd_dkdv_gen_k(T *dqkv, const T *qkv, const T *dout,
                                                           const float *lse, const float *delta, int Tn,
                                                           int H, int hd, float sl2, float scale, bool causal)
{
    constexpr int R = kThreads / G;
    __shared__ float sQ[kGenTile][kPerLane * G], sO[kGenTile][kPerLane * G], sL[kGenTile], sD[kGenTile];
    const int C = H * hd, bh = blockIdx.x, b = bh / H, h = bh % H, lg = threadIdx.x % G;
    const int key = blockIdx.y * R + threadIdx.x / G;
    const int64_t rs = 3 * (int64_t)C;
    const T *q = qkv + (int64_t)b * Tn * rs + h * hd, *dO = dout + (int64_t)b * Tn * C + h * hd;
    const float *L = lse + (int64_t)bh * Tn, *D = delta + (int64_t)bh * Tn;
    float kr[kPerLane], vr[kPerLane], dk[kPerLane] = {}, dv[kPerLane] = {};
    gen_load_row<T, G>(kr, q + (int64_t)key * rs + C, key, Tn, hd, lg, sl2);
    gen_load_row<T, G>(vr, q + (int64_t)key * rs + 2 * C, key, Tn, hd, lg, 1.f);
    for (int q0 = causal ? (int)blockIdx.y * R : 0; q0 < Tn; q0 += kGenTile) {
        __syncthreads();
        gen_load_tile<T, G>(sQ, q, rs, q0, Tn, hd);
        gen_load_tile<T, G>(sO, dO, C, q0, Tn, hd);
        if (threadIdx.x < kGenTile) {
            const bool ok = q0 + (int)threadIdx.x < Tn;
            sL[threadIdx.x] = ok ? L[q0 + threadIdx.x] : 0.f;
            sD[threadIdx.x] = ok ? D[q0 + threadIdx.x] : 0.f;
        }
        __syncthreads();
#pragma unroll 4
        for (int i = 0; i < kGenTile; i++) {
            const float s = gen_dot<G>(kr, sQ[i], lg), dp = gen_dot<G>(vr, sO[i], lg);
            const bool live = q0 + i < Tn && !(causal && q0 + i < key);
            const float p = live ? exp2f(s - sL[i]) : 0.f, ds = p * (dp - sD[i]);
#pragma unroll
            for (int e = 0; e < kPerLane; e++) {
                dv[e] += p * sO[i][lg + G * e];
                dk[e] += ds * sQ[i][lg + G * e];
            }
        }
    }
    T *dk_out = dqkv + ((int64_t)b * Tn + key) * rs + C + h * hd;
    gen_store_row<T, G>(dk_out, dk, key, Tn, hd, lg, scale);
    gen_store_row<T, G>(dk_out + C, dv, key, Tn, hd, lg, 1.f);
}

/* grid (B*H, row blocks): a group owns one query and walks the keys */
template <typename T, int G>
__global__ void __launch_bounds__(kThreads) bwd_dq_gen_k(T *dqkv, const T *qkv, const T *dout,
                                                         const float *lse, const float *delta, int Tn, int H,
                                                         int hd, float sl2, float scale, bool causal)
{
    constexpr int R = kThreads / G;
    __shared__ float sK[kGenTile][kPerLane * G], sV[kGenTile][kPerLane * G];
    const int C = H * hd, bh = blockIdx.x, b = bh / H, h = bh % H, lg = threadIdx.x % G;
    const int row = blockIdx.y * R + threadIdx.x / G;
    const int64_t rs = 3 * (int64_t)C;
    const T *q = qkv + (int64_t)b * Tn * rs + h * hd;
    float qr[kPerLane], orow[kPerLane], dq[kPerLane] = {};
    gen_load_row<T, G>(qr, q + (int64_t)row * rs, row, Tn, hd, lg, sl2);
    gen_load_row<T, G>(orow, dout + ((int64_t)b * Tn + row) * C + h * hd, row, Tn, hd, lg, 1.f);
    const float lr = row < Tn ? lse[(int64_t)bh * Tn + row] : 0.f;
    const float dr = row < Tn ? delta[(int64_t)bh * Tn + row] : 0.f;
    const int kend = causal ? min(Tn, (int)blockIdx.y * R + R) : Tn;
    for (int k0 = 0; k0 < kend; k0 += kGenTile) {
        __syncthreads();
        gen_load_tile<T, G>(sK, q + C, rs, k0, Tn, hd);
        gen_load_tile<T, G>(sV, q + 2 * C, rs, k0, Tn, hd);
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < kGenTile; j++) {
            const float s = gen_dot<G>(qr, sK[j], lg), dp = gen_dot<G>(orow, sV[j], lg);
            const bool live = k0 + j < Tn && !(causal && k0 + j > row);
            const float ds = live ? exp2f(s - lr) * (dp - dr) : 0.f;
#pragma unroll
            for (int e = 0; e < kPerLane; e++) dq[e] += ds * sK[j][lg + G * e];
        }
    }
    gen_store_row<T, G>(dqkv + ((int64_t)b * Tn + row) * rs + h * hd, dq, row, Tn, hd, lg, scale);
}

/* delta (B,H,T) = sum over the head's dims of dout * out; one warp per row */
template <typename T>
__global__ void delta_k(float *delta, const T *dout, const T *out, int64_t rows, int Tn, int H, int hd)
{
    const int64_t r = blockIdx.x * (int64_t)(kThreads / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const int t = (int)(r % Tn), h = (int)((r / Tn) % H);
    const int64_t b = r / ((int64_t)Tn * H), at = (b * Tn + t) * (int64_t)H * hd + (int64_t)h * hd;
    float acc = 0.f;
    for (int d = threadIdx.x % 32; d < hd; d += 32) acc += load_f(dout + at + d) * load_f(out + at + d);
    acc = group_sum<32>(acc);
    if (threadIdx.x % 32 == 0) delta[r] = acc;
}

/* ================================ launchers ================================ */

int64_t head_dim(const insitra_attention_shape *sh) { return sh->C / sh->H; }
float log2e_over_sqrt(int64_t hd) { return 1.4426950408889634f / sqrtf((float)hd); }

/* the tensor-core path: bf16, a head size it is built for, 16-byte rows */
bool use_mma(const insitra_attention_shape *sh, const void *a, const void *b, const void *c)
{
    const int64_t hd = head_dim(sh);
    const auto al = [](const void *p) { return (uintptr_t)p % 16 == 0; };
    return sh->bf16 && (hd == 32 || hd == 64 || hd == 128) && al(a) && al(b) && al(c);
}

/* G lanes per row for the CUDA-core kernels: the fewest with 8 dims each */
int lanes_per_row(int64_t hd) { return hd <= 32 ? 4 : hd <= 64 ? 8 : hd <= 128 ? 16 : 32; }

/* Raises the kernel's shared-memory limit once when it needs more than the
 * default 48 KiB (hd = 128). Not a stream operation: allowed while a graph
 * is being captured. */
template <typename K> cudaError_t allow_smem(K kernel, int bytes)
{
    if (bytes <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/* Warps per block of the tensor-core kernels (16 rows each), and the blocks
 * per SM asked of the compiler (it caps registers to fit them). Measured on
 * an H200 at B16 H12 T1024 hd64, forward + backward: 8 warps 1.23 ms, 4
 * warps 1.14 ms, 4 warps with 4 forward and 3 dQ blocks per SM (hd <= 64,
 * a few bytes of spills) 1.10 ms; at hd 128 that bound spills hundreds of
 * bytes, so it is left to the compiler there. */
constexpr int kMmaWarps = 4;
template <int HD> constexpr int fwd_min_blocks() { return HD <= 64 ? 4 : 1; }
template <int HD> constexpr int dq_min_blocks() { return HD <= 64 ? 3 : 1; }

template <int HD, bool CAUSAL>
insitra_status fwd_mma(bf16 *out, float *lse, const bf16 *qkv, const insitra_attention_shape *sh,
                       cudaStream_t s)
{
    constexpr int NW = kMmaWarps, MB = fwd_min_blocks<HD>();
    const int smem = (16 * NW + 4 * kTile) * (HD + 8) * (int)sizeof(bf16);
    static const cudaError_t once = allow_smem(fwd_mma_k<HD, CAUSAL, NW, MB>, smem);
    CUDA_TRY(once);
    const dim3 grid((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->T, 16 * NW));
    fwd_mma_k<HD, CAUSAL, NW, MB><<<grid, 32 * NW, smem, s>>>(out, lse, qkv, (int)sh->T, (int)sh->H,
                                                              log2e_over_sqrt(HD));
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

template <int HD, bool CAUSAL>
insitra_status bwd_mma(bf16 *dqkv, const bf16 *qkv, const bf16 *dout, const float *lse, const float *delta,
                       const insitra_attention_shape *sh, cudaStream_t s)
{
    constexpr int NW = kMmaWarps, MB = dq_min_blocks<HD>();
    const int tiles = 4 * kTile * (HD + 8) * (int)sizeof(bf16);
    const int smem_kv = tiles + 4 * kTile * (int)sizeof(float), smem_q = tiles;
    static const cudaError_t once_kv = allow_smem(bwd_dkdv_mma_k<HD, CAUSAL, NW>, smem_kv);
    static const cudaError_t once_q = allow_smem(bwd_dq_mma_k<HD, CAUSAL, NW, MB>, smem_q);
    CUDA_TRY(once_kv);
    CUDA_TRY(once_q);
    const dim3 grid((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->T, 16 * NW));
    const float sl2 = log2e_over_sqrt(HD), scale = 1.f / sqrtf((float)HD);
    bwd_dkdv_mma_k<HD, CAUSAL, NW><<<grid, 32 * NW, smem_kv, s>>>(dqkv, qkv, dout, lse, delta, (int)sh->T,
                                                                  (int)sh->H, sl2, scale);
    LAUNCH_TRY();
    bwd_dq_mma_k<HD, CAUSAL, NW, MB><<<grid, 32 * NW, smem_q, s>>>(dqkv, qkv, dout, lse, delta, (int)sh->T,
                                                                   (int)sh->H, sl2, scale);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

template <int HD>
insitra_status fwd_mma_any(bf16 *out, float *lse, const bf16 *qkv, const insitra_attention_shape *sh,
                           cudaStream_t s)
{
    return sh->causal ? fwd_mma<HD, true>(out, lse, qkv, sh, s) : fwd_mma<HD, false>(out, lse, qkv, sh, s);
}

template <int HD>
insitra_status bwd_mma_any(bf16 *dqkv, const bf16 *qkv, const bf16 *dout, const float *lse,
                           const float *delta, const insitra_attention_shape *sh, cudaStream_t s)
{
    return sh->causal ? bwd_mma<HD, true>(dqkv, qkv, dout, lse, delta, sh, s)
                      : bwd_mma<HD, false>(dqkv, qkv, dout, lse, delta, sh, s);
}

template <typename T, int G>
void fwd_gen(T *out, float *lse, const T *qkv, const insitra_attention_shape *sh, cudaStream_t s)
{
    const int64_t hd = head_dim(sh);
    const dim3 grid((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->T, kThreads / G));
    fwd_gen_k<T, G><<<grid, kThreads, 0, s>>>(out, lse, qkv, (int)sh->T, (int)sh->H, (int)hd,
                                             log2e_over_sqrt(hd), sh->causal);
}

template <typename T, int G>
void bwd_gen(T *dqkv, const T *qkv, const T *dout, const float *lse, const float *delta,
             const insitra_attention_shape *sh, cudaStream_t s)
{
    const int64_t hd = head_dim(sh);
    const dim3 grid((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->T, kThreads / G));
    const float sl2 = log2e_over_sqrt(hd), scale = 1.f / sqrtf((float)hd);
    bwd_dkdv_gen_k<T, G><<<grid, kThreads, 0, s>>>(dqkv, qkv, dout, lse, delta, (int)sh->T, (int)sh->H,
                                                  (int)hd, sl2, scale, sh->causal);
    bwd_dq_gen_k<T, G><<<grid, kThreads, 0, s>>>(dqkv, qkv, dout, lse, delta, (int)sh->T, (int)sh->H,
                                                (int)hd, sl2, scale, sh->causal);
}

template <typename T>
insitra_status forward_gen(T *out, float *lse, const T *qkv, const insitra_attention_shape *sh, cudaStream_t s)
{
    switch (lanes_per_row(head_dim(sh))) {
    case 4: fwd_gen<T, 4>(out, lse, qkv, sh, s); break;
    case 8: fwd_gen<T, 8>(out, lse, qkv, sh, s); break;
    case 16: fwd_gen<T, 16>(out, lse, qkv, sh, s); break;
    default: fwd_gen<T, 32>(out, lse, qkv, sh, s); break;
    }
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

template <typename T>
insitra_status backward_gen(T *dqkv, const T *qkv, const T *dout, const float *lse, const float *delta,
                            const insitra_attention_shape *sh, cudaStream_t s)
{
    switch (lanes_per_row(head_dim(sh))) {
    case 4: bwd_gen<T, 4>(dqkv, qkv, dout, lse, delta, sh, s); break;
    case 8: bwd_gen<T, 8>(dqkv, qkv, dout, lse, delta, sh, s); break;
    case 16: bwd_gen<T, 16>(dqkv, qkv, dout, lse, delta, sh, s); break;
    default: bwd_gen<T, 32>(dqkv, qkv, dout, lse, delta, sh, s); break;
    }
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

template <typename T>
insitra_status launch_delta(float *delta, const void *dout, const void *out, const insitra_attention_shape *sh,
                            cudaStream_t s)
{
    const int64_t rows = sh->B * sh->H * sh->T, per_block = kThreads / 32;
    delta_k<T><<<(unsigned)((rows + per_block - 1) / per_block), kThreads, 0, s>>>(
        delta, (const T *)dout, (const T *)out, rows, (int)sh->T, (int)sh->H, (int)head_dim(sh));
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

} // namespace

insitra_status insitra_fused_attention_check(const insitra_attention_shape *sh)
{
    if (sh->B < 0 || sh->T < 1 || sh->H < 1 || sh->C < 1 || sh->C % sh->H != 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "attention: shape B=%lld T=%lld C=%lld H=%lld is not valid (T >= 1, H "
                                 "divides C)",
                                 (long long)sh->B, (long long)sh->T, (long long)sh->C, (long long)sh->H);
    const int64_t hd = head_dim(sh);
    if (hd > INSITRA_ATTENTION_MAX_HEAD_DIM)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "GPU attention: head size model.d_model / model.n_heads = %lld / %lld = "
                                 "%lld exceeds the %d the CUDA kernels support; use more heads",
                                 (long long)sh->C, (long long)sh->H, (long long)hd,
                                 INSITRA_ATTENTION_MAX_HEAD_DIM);
    /* grid.y counts row blocks of at least 4 rows (model.seq_len <= 65536 stays far inside) */
    if (sh->T > 4 * 65535LL)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "GPU attention: T = %lld tokens exceeds the kernels' grid (at most %d)",
                                 (long long)sh->T, 4 * 65535);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_fused_attention_forward(void *out, float *lse, const void *qkv,
                                               const insitra_attention_shape *sh, cudaStream_t s)
{
    INSITRA_CHECK(insitra_fused_attention_check(sh));
    if (sh->B == 0) return INSITRA_STATUS_OK;
    if (use_mma(sh, out, qkv, qkv)) {
        bf16 *o = (bf16 *)out;
        const bf16 *x = (const bf16 *)qkv;
        switch (head_dim(sh)) {
        case 32: return fwd_mma_any<32>(o, lse, x, sh, s);
        case 64: return fwd_mma_any<64>(o, lse, x, sh, s);
        default: return fwd_mma_any<128>(o, lse, x, sh, s);
        }
    }
    if (sh->bf16) return forward_gen<bf16>((bf16 *)out, lse, (const bf16 *)qkv, sh, s);
    return forward_gen<float>((float *)out, lse, (const float *)qkv, sh, s);
}

insitra_status insitra_fused_attention_backward(void *dqkv, float *delta, const void *dout,
                                                const void *qkv, const void *out, const float *lse,
                                                const insitra_attention_shape *sh, cudaStream_t s)
{
    INSITRA_CHECK(insitra_fused_attention_check(sh));
    if (sh->B == 0) return INSITRA_STATUS_OK;
    if (sh->bf16) {
        INSITRA_CHECK(launch_delta<bf16>(delta, dout, out, sh, s));
        bf16 *d = (bf16 *)dqkv;
        const bf16 *x = (const bf16 *)qkv, *g = (const bf16 *)dout;
        if (use_mma(sh, dqkv, qkv, dout)) {
            switch (head_dim(sh)) {
            case 32: return bwd_mma_any<32>(d, x, g, lse, delta, sh, s);
            case 64: return bwd_mma_any<64>(d, x, g, lse, delta, sh, s);
            default: return bwd_mma_any<128>(d, x, g, lse, delta, sh, s);
            }
        }
        return backward_gen<bf16>(d, x, g, lse, delta, sh, s);
    }
    INSITRA_CHECK(launch_delta<float>(delta, dout, out, sh, s));
    return backward_gen<float>((float *)dqkv, (const float *)qkv, (const float *)dout, lse, delta, sh, s);
}
