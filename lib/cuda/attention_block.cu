/*
 * Context-parallel attention blocks (attention_block.cuh), in the manner of
 * attention.cu's kernels (CUDA-core ones for fp32 and other head sizes,
 * tensor-core ones for bf16 at hd 32/64/128), with two differences: queries
 * and keys are separate tensors at global positions (the causal mask
 * compares positions, shift = q_pos - k_pos), and forward starts from and
 * leaves the online softmax state (out, m, l) in memory so that blocks can
 * be folded in one call at a time.
 *
 *   forward:  grid (B*H, query blocks): a block's queries walk the key tiles
 *   dK, dV:   grid (B*H, key blocks): a block's keys walk the query tiles;
 *             delta = rowsum(dout * out) of each staged query row is made
 *             with the tile (no scratch buffer)
 *   dQ:       grid (B*H, query blocks): a block's queries walk the key tiles
 *
 * Every output is summed by one owner in a fixed order, so no atomics.
 * Probabilities use exp2 of (score - reference) * log2(e): m and lse cross
 * the interface in natural units, as the CPU keeps them.
 */
#include "attention_block.cuh"

#include <cuda_bf16.h>
#include <math.h>

#include "cuda_util.h"
#include "mma_tiles.cuh"

namespace {

typedef __nv_bfloat16 bf16;

constexpr int kThreads = 128;                /* per block */
constexpr int kTile = 16;                    /* rows of the other operand per shared tile */
constexpr int kPerLane = 8;                  /* dimensions of a row per lane */
constexpr int kStatLanes = kThreads / kTile; /* lanes per staged row when its delta is summed */
constexpr float kLog2e = 1.4426950408889634f;
static_assert(32 % kStatLanes == 0, "a staged row's lanes sit in one warp");

__device__ __forceinline__ float load_f(const float *p) { return *p; }
__device__ __forceinline__ float load_f(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_f(bf16 *p, float v) { *p = __float2bfloat16(v); }

/* the sum over G consecutive lanes, the same butterfly on every lane */
template <int G>
__device__ __forceinline__ float group_sum(float v)
{
#pragma unroll
    for (int o = G / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* kTile rows from r0 of a (n, hd) matrix with row stride rs into shared
 * memory as fp32: zeros past n and past hd up to 8G */
template <typename T, int G>
__device__ __forceinline__ void load_tile(float (*dst)[kPerLane * G], const T *src, int64_t rs, int r0, int n,
                                          int hd)
{
    for (int e = threadIdx.x; e < kTile * kPerLane * G; e += kThreads) {
        const int r = e / (kPerLane * G), d = e % (kPerLane * G);
        dst[r][d] = r0 + r < n && d < hd ? load_f(src + (int64_t)(r0 + r) * rs + d) : 0.f;
    }
}

/* this lane's dims of a row (zeros past n or hd), times mul */
template <typename T, int G>
__device__ __forceinline__ void load_row(float x[kPerLane], const T *src, int row, int n, int hd, int lg,
                                         float mul)
{
#pragma unroll
    for (int i = 0; i < kPerLane; i++) {
        const int d = lg + G * i;
        x[i] = row < n && d < hd ? load_f(src + d) * mul : 0.f;
    }
}

template <typename T, int G>
__device__ __forceinline__ void store_row(T *dst, const float x[kPerLane], int row, int n, int hd, int lg)
{
    if (row >= n) return;
#pragma unroll
    for (int i = 0; i < kPerLane; i++)
        if (lg + G * i < hd) store_f(dst + lg + G * i, x[i]);
}

/* this lane's dims with a shared row, summed over the group */
template <int G>
__device__ __forceinline__ float dot(const float x[kPerLane], const float *srow, int lg)
{
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; i++) acc += x[i] * srow[lg + G * i];
    return group_sum<G>(acc);
}

/* Keys [0, end) of the block that some query of rows [r0, r0 + R) sees:
 * key j is seen by row i when j <= i + shift. */
__device__ __forceinline__ int keys_end(bool causal, int r0, int R, int shift, int Tk)
{
    if (!causal) return Tk;
    return max(0, min(Tk, r0 + R + shift));
}

/* grid (B*H, query blocks of R rows): folds the block's keys into out, m, l */
template <typename T, int G>
__global__ void __launch_bounds__(kThreads)
    block_fwd_k(T *out, float *m_, float *l_, const T *qkv, const T *kv, int Tq, int Tk, int H, int hd,
                int shift, float scale, bool causal, bool first)
{
    constexpr int R = kThreads / G;
    __shared__ float sK[kTile][kPerLane * G], sV[kTile][kPerLane * G];
    const int C = H * hd, bh = blockIdx.x, b = bh / H, h = bh % H, lg = threadIdx.x % G;
    const int r0 = blockIdx.y * R, row = r0 + threadIdx.x / G;
    const T *q = qkv + (int64_t)b * Tq * 3 * C + h * hd, *k = kv + (int64_t)b * Tk * 2 * C + h * hd;
    T *o_row = out + ((int64_t)b * Tq + row) * C + h * hd;
    const int64_t r = (int64_t)bh * Tq + row;
    float qr[kPerLane], o[kPerLane] = {};
    load_row<T, G>(qr, q + (int64_t)row * 3 * C, row, Tq, hd, lg, scale);
    float m = -INFINITY, l = 0.f;
    if (!first) {
        load_row<T, G>(o, o_row, row, Tq, hd, lg, 1.f);
        if (row < Tq) m = m_[r], l = l_[r];
    }
    const int kend = keys_end(causal, r0, R, shift, Tk);
    for (int k0 = 0; k0 < kend; k0 += kTile) {
        __syncthreads();
        load_tile<T, G>(sK, k, 2 * C, k0, Tk, hd);
        load_tile<T, G>(sV, k + C, 2 * C, k0, Tk, hd);
        __syncthreads();
        float s[kTile], mx = m;
#pragma unroll
        for (int j = 0; j < kTile; j++) {
            s[j] = dot<G>(qr, sK[j], lg);
            if (k0 + j >= Tk || (causal && k0 + j > row + shift)) s[j] = -INFINITY;
            mx = fmaxf(mx, s[j]);
        }
        /* a row that has seen no key yet keeps o = 0, l = 0 (alpha = 0, p = 0) */
        const float base = mx == -INFINITY ? 0.f : mx, alpha = exp2f((m - base) * kLog2e);
        m = mx;
        l *= alpha;
#pragma unroll
        for (int i = 0; i < kPerLane; i++) o[i] *= alpha;
#pragma unroll
        for (int j = 0; j < kTile; j++) {
            const float p = exp2f((s[j] - base) * kLog2e);
            l += p;
#pragma unroll
            for (int i = 0; i < kPerLane; i++) o[i] += p * sV[j][lg + G * i];
        }
    }
    store_row<T, G>(o_row, o, row, Tq, hd, lg);
    if (lg == 0 && row < Tq) m_[r] = m, l_[r] = l;
}

/* out (n = B*Tq*C) *= 1 / l of its row; lse (rows) = m + log l */
template <typename T>
__global__ void block_finish_k(T *out, float *lse, const float *m, const float *l, int64_t n, int64_t rows,
                               int Tq, int C, int H, int hd)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = (i / C) % Tq, b = i / ((int64_t)C * Tq), h = (i % C) / hd;
        const float inv = 1.f / l[(b * H + h) * Tq + t];
        store_f(out + i, load_f(out + i) * inv);
        if (i < rows) lse[i] = m[i] + logf(l[i]);
    }
}

/* grid (B*H, key blocks of R rows): dkv of a group's key += its sums over every query that sees it */
template <typename T, int G>
__global__ void __launch_bounds__(kThreads)
    block_dkdv_k(float *dkv, const T *qkv, const T *kv, const T *dout, const T *out, const float *lse, int Tq,
                 int Tk, int H, int hd, int shift, float scale, bool causal)
{
    constexpr int R = kThreads / G;
    __shared__ float sQ[kTile][kPerLane * G], sO[kTile][kPerLane * G], sL[kTile], sD[kTile];
    const int C = H * hd, bh = blockIdx.x, b = bh / H, h = bh % H, lg = threadIdx.x % G;
    const int k0 = blockIdx.y * R, key = k0 + threadIdx.x / G;
    const T *q = qkv + (int64_t)b * Tq * 3 * C + h * hd, *k = kv + (int64_t)b * Tk * 2 * C + h * hd;
    const T *dO = dout + (int64_t)b * Tq * C + h * hd, *O = out + (int64_t)b * Tq * C + h * hd;
    const float *L = lse + (int64_t)bh * Tq;
    float kr[kPerLane], vr[kPerLane], dk[kPerLane] = {}, dv[kPerLane] = {};
    load_row<T, G>(kr, k + (int64_t)key * 2 * C, key, Tk, hd, lg, scale);
    load_row<T, G>(vr, k + (int64_t)key * 2 * C + C, key, Tk, hd, lg, 1.f);
    /* rows before k0 - shift see none of these keys */
    const int q_first = causal ? max(0, k0 - shift) : 0;
    const int sr = threadIdx.x / kStatLanes, sl = threadIdx.x % kStatLanes;
    for (int q0 = q_first; q0 < Tq; q0 += kTile) {
        __syncthreads();
        load_tile<T, G>(sQ, q, 3 * C, q0, Tq, hd);
        load_tile<T, G>(sO, dO, C, q0, Tq, hd);
        { /* delta of staged row sr: kStatLanes lanes, then a butterfly */
            float acc = 0.f;
            if (q0 + sr < Tq)
                for (int d = sl; d < hd; d += kStatLanes)
                    acc += load_f(dO + (int64_t)(q0 + sr) * C + d) * load_f(O + (int64_t)(q0 + sr) * C + d);
            acc = group_sum<kStatLanes>(acc);
            if (sl == 0) {
                sD[sr] = acc;
                sL[sr] = q0 + sr < Tq ? L[q0 + sr] : 0.f;
            }
        }
        __syncthreads();
#pragma unroll 4
        for (int i = 0; i < kTile; i++) {
            const float s = dot<G>(kr, sQ[i], lg), dp = dot<G>(vr, sO[i], lg);
            const bool live = q0 + i < Tq && !(causal && key > q0 + i + shift);
            const float p = live ? exp2f((s - sL[i]) * kLog2e) : 0.f, ds = p * (dp - sD[i]);
#pragma unroll
            for (int e = 0; e < kPerLane; e++) {
                dv[e] += p * sO[i][lg + G * e];
                dk[e] += ds * sQ[i][lg + G * e];
            }
        }
    }
    if (key >= Tk) return;
    float *d = dkv + ((int64_t)b * Tk + key) * 2 * C + h * hd;
#pragma unroll
    for (int e = 0; e < kPerLane; e++)
        if (lg + G * e < hd) {
            d[lg + G * e] += dk[e];
            d[C + lg + G * e] += dv[e];
        }
}

/* grid (B*H, query blocks of R rows): the q columns of dqkv += the query's sum over the keys it sees */
template <typename T, int G>
__global__ void __launch_bounds__(kThreads)
    block_dq_k(T *dqkv, const T *qkv, const T *kv, const T *dout, const T *out, const float *lse, int Tq,
               int Tk, int H, int hd, int shift, float scale, bool causal)
{
    constexpr int R = kThreads / G;
    __shared__ float sK[kTile][kPerLane * G], sV[kTile][kPerLane * G];
    const int C = H * hd, bh = blockIdx.x, b = bh / H, h = bh % H, lg = threadIdx.x % G;
    const int r0 = blockIdx.y * R, row = r0 + threadIdx.x / G;
    const int64_t at = ((int64_t)b * Tq + row) * C + h * hd;
    const T *k = kv + (int64_t)b * Tk * 2 * C + h * hd;
    float qr[kPerLane], gr[kPerLane], orow[kPerLane], dq[kPerLane];
    load_row<T, G>(qr, qkv + ((int64_t)b * Tq + row) * 3 * C + h * hd, row, Tq, hd, lg, scale);
    load_row<T, G>(gr, dout + at, row, Tq, hd, lg, 1.f);
    load_row<T, G>(orow, out + at, row, Tq, hd, lg, 1.f);
    float D = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; i++) D += gr[i] * orow[i];
    D = group_sum<G>(D);
    const float lr = row < Tq ? lse[(int64_t)bh * Tq + row] : 0.f;
    T *dst = dqkv + ((int64_t)b * Tq + row) * 3 * C + h * hd;
    load_row<T, G>(dq, dst, row, Tq, hd, lg, 1.f);
    /* this block's part summed on its own, then added: the same bits whatever dq held */
    float acc[kPerLane] = {};
    const int kend = keys_end(causal, r0, R, shift, Tk);
    for (int k0 = 0; k0 < kend; k0 += kTile) {
        __syncthreads();
        load_tile<T, G>(sK, k, 2 * C, k0, Tk, hd);
        load_tile<T, G>(sV, k + C, 2 * C, k0, Tk, hd);
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < kTile; j++) {
            const float s = dot<G>(qr, sK[j], lg), dp = dot<G>(gr, sV[j], lg);
            const bool live = k0 + j < Tk && !(causal && k0 + j > row + shift);
            const float ds = live ? exp2f((s - lr) * kLog2e) * (dp - D) : 0.f;
#pragma unroll
            for (int e = 0; e < kPerLane; e++) acc[e] += ds * sK[j][lg + G * e];
        }
    }
#pragma unroll
    for (int e = 0; e < kPerLane; e++) dq[e] += acc[e];
    store_row<T, G>(dst, dq, row, Tq, hd, lg);
}

/* dqkv (N,3C): dq scaled; k, v columns from dkv (N,2C), dk scaled */
template <typename T>
__global__ void block_done_k(T *dqkv, const float *dkv, int64_t n, int C, float scale)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = i / (3 * C);
        const int c = (int)(i % (3 * C));
        if (c < C)
            store_f(dqkv + i, load_f(dqkv + i) * scale);
        else
            store_f(dqkv + i, dkv[row * 2 * C + c - C] * (c < 2 * C ? scale : 1.f));
    }
}

/* ==================== tensor-core kernels (bf16, hd 32/64/128) ==================== */

/*
 * attention.cu's tensor-core scheme (mma_tiles.cuh): a block of NW warps
 * owns 16 NW rows, tiles of 64 rows of the other operand double-buffered
 * through cp.async, probabilities rounded to bf16 for the P V and dS
 * products. Scores in base 2 inside (s2 = q.k log2(e) / sqrt(hd)); m and
 * lse cross the interface in natural units.
 */
namespace mm = insitra_mma;
constexpr int kMmaWarps = 4;
constexpr int kMt = mm::kTile;
constexpr float kLn2 = 0.6931471805599453f;

/* Where accumulator element e of n-block n of this lane sits: row row0 + lane/4 + 8(e/2),
 * column c0 + 8n + 2(lane%4) + (e&1) */
__device__ __forceinline__ int acc_row(int row0, int e, int lane) { return row0 + lane / 4 + 8 * (e / 2); }
__device__ __forceinline__ int acc_col(int c0, int n, int e, int lane)
{
    return c0 + n * 8 + 2 * (lane % 4) + (e & 1);
}

/* grid (B*H, query blocks of 16 NW rows): folds the block's keys into out, m, l */
template <int HD, int NW>
__global__ void __launch_bounds__(32 * NW)
    block_fwd_mma_k(bf16 *out, float *m_, float *l_, const bf16 *qkv, const bf16 *kv, int Tq, int Tk, int H,
                    int shift, float sl2, bool causal, bool first)
{
    constexpr int LD = HD + 8, NB = kMt / 8, NT = 32 * NW, BR = 16 * NW;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = (bf16 *)smem, *sK = sQ + BR * LD, *sV = sK + 2 * kMt * LD; /* K, V: 2 stages */
    const int C = H * HD, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bf16 *q = qkv + (int64_t)b * Tq * 3 * C + h * HD;
    const bf16 *k = kv + (int64_t)b * Tk * 2 * C + h * HD, *v = k + C;
    const int q0 = blockIdx.y * BR, row0 = q0 + warp * 16;
    const int n_kt = (keys_end(causal, q0, BR, shift, Tk) + kMt - 1) / kMt;

    mm::load_tile<HD, NT, BR>(sQ, q, 3 * C, q0, Tq);
    mm::cp_async_commit();
    if (n_kt > 0) {
        mm::load_tile<HD, NT>(sK, k, 2 * C, 0, Tk);
        mm::load_tile<HD, NT>(sV, v, 2 * C, 0, Tk);
        mm::cp_async_commit();
        mm::cp_async_wait<1>();
    } else {
        mm::cp_async_wait<0>();
    }
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) mm::ldsm4(qf[kk], mm::a_frag<LD>(sQ, warp * 16, kk * 16, lane));

    /* the carried state: o in the accumulator layout, m (base 2) on the row's four lanes, l on its first */
    float o[HD / 8][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, m_in[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int r = 0; r < 2 && !first; r++) {
        const int row = acc_row(row0, 2 * r, lane);
        if (row >= Tq) continue;
        const int64_t at = (int64_t)bh * Tq + row;
        m_in[r] = m_[at];
        m[r] = m_in[r] * kLog2e;
        if (lane % 4 == 0) l[r] = l_[at];
        const bf16 *src = out + ((int64_t)b * Tq + row) * C + h * HD + 2 * (lane % 4);
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            const __nv_bfloat162 p = *(const __nv_bfloat162 *)(src + 8 * n);
            o[n][2 * r] = __low2float(p), o[n][2 * r + 1] = __high2float(p);
        }
    }
    const float m_start[2] = {m[0], m[1]};
    for (int kt = 0; kt < n_kt; kt++) {
        const bf16 *cK = sK + (kt & 1) * kMt * LD, *cV = sV + (kt & 1) * kMt * LD;
        const bool more = kt + 1 < n_kt;
        mm::queue_pair<HD, NT>(more, sK + ((kt + 1) & 1) * kMt * LD, k, 2 * C, sV + ((kt + 1) & 1) * kMt * LD,
                               v, 2 * C, (kt + 1) * kMt, Tk);
        mm::wait_current(more);
        float s[NB][4];
        mm::tile_dot<HD>(s, qf, cK, lane);
        const int k0 = kt * kMt;
        const bool edge = k0 + kMt > Tk || (causal && k0 + kMt - 1 > q0 + shift);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] *= sl2;
                const int key = acc_col(k0, n, e, lane);
                if (edge && (key >= Tk || (causal && key > acc_row(row0, e, lane) + shift)))
                    s[n][e] = -INFINITY;
                mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
            }
        mm::online_softmax_tile<HD>(s, mx, m, l, o);
        mm::tile_accumulate<HD>(o, s, cV, lane);
        __syncthreads(); /* this stage is refilled next iteration */
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int row = acc_row(row0, 2 * r, lane);
        if (lane % 4 == 0 && row < Tq) {
            const int64_t at = (int64_t)bh * Tq + row;
            /* an unchanged maximum keeps its bits (no round trip through base 2) */
            m_[at] = m[r] == m_start[r] && !first ? m_in[r] : m[r] * kLn2;
            l_[at] = l[r];
        }
    }
    const float one[2] = {1.f, 1.f};
    mm::store_rows<HD>(out + (int64_t)b * Tq * C + h * HD, C, o, one, row0, Tq, lane);
}

/* lse (base 2) and delta = rowsum(dout * out) of query rows q0 .. q0 + kMt - 1 into shared
 * memory, NT / kMt threads per row summing bf16 pairs, then a butterfly */
template <int HD, int NT>
__device__ __forceinline__ void mma_row_stats(float *sl, float *sd, const float *L, const bf16 *dO,
                                              const bf16 *O, int64_t rs, int q0, int Tq)
{
    constexpr int per = NT / kMt;
    static_assert(NT % kMt == 0 && 32 % per == 0, "a row's threads sit in one warp");
    const int r = threadIdx.x / per, part = threadIdx.x % per;
    float acc = 0.f;
    if (q0 + r < Tq)
        for (int d = 2 * part; d < HD; d += 2 * per) {
            const __nv_bfloat162 a = *(const __nv_bfloat162 *)(dO + (int64_t)(q0 + r) * rs + d);
            const __nv_bfloat162 c = *(const __nv_bfloat162 *)(O + (int64_t)(q0 + r) * rs + d);
            acc += __low2float(a) * __low2float(c) + __high2float(a) * __high2float(c);
        }
    acc = group_sum<per>(acc);
    if (part == 0) {
        sd[r] = acc;
        sl[r] = q0 + r < Tq ? L[q0 + r] * kLog2e : 0.f;
    }
}

/* grid (B*H, key blocks of 16 NW rows): dkv of those keys += their sums over every query that sees them */
template <int HD, int NW>
__global__ void __launch_bounds__(32 * NW)
    block_dkdv_mma_k(float *dkv, const bf16 *qkv, const bf16 *kv, const bf16 *dout, const bf16 *out,
                     const float *lse, int Tq, int Tk, int H, int shift, float sl2, bool causal)
{
    constexpr int LD = HD + 8, NB = kMt / 8, NT = 32 * NW, BR = 16 * NW;
    static_assert(BR <= 2 * kMt, "the block's rows are staged in the two stages of a tile");
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = (bf16 *)smem, *sO = sQ + 2 * kMt * LD; /* Q and dO tiles: 2 stages each */
    float *sL = (float *)(sO + 2 * kMt * LD), *sD = sL + 2 * kMt;
    const int C = H * HD, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bf16 *q = qkv + (int64_t)b * Tq * 3 * C + h * HD;
    const bf16 *k = kv + (int64_t)b * Tk * 2 * C + h * HD, *v = k + C;
    const bf16 *dO = dout + (int64_t)b * Tq * C + h * HD, *O = out + (int64_t)b * Tq * C + h * HD;
    const float *L = lse + (int64_t)bh * Tq;
    const int k0 = blockIdx.y * BR, krow0 = k0 + warp * 16;
    /* query tiles before the first that sees key k0 add nothing */
    const int qt0 = causal ? max(0, k0 - shift) / kMt : 0, n_qt = (Tq + kMt - 1) / kMt;
    if (qt0 >= n_qt) return;

    uint32_t kf[HD / 16][4], vf[HD / 16][4];
    mm::rows_to_frags<HD, NW>(kf, vf, sQ, sO, k, 2 * C, v, 2 * C, k0, Tk);
    mm::load_tile<HD, NT>(sQ, q, 3 * C, qt0 * kMt, Tq);
    mm::load_tile<HD, NT>(sO, dO, C, qt0 * kMt, Tq);
    mm::cp_async_commit();
    mma_row_stats<HD, NT>(sL, sD, L, dO, O, C, qt0 * kMt, Tq);

    float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
    for (int qt = qt0; qt < n_qt; qt++) {
        const int st = (qt - qt0) & 1, q0 = qt * kMt;
        const bf16 *cQ = sQ + st * kMt * LD, *cO = sO + st * kMt * LD;
        const float *cL = sL + st * kMt, *cD = sD + st * kMt;
        const bool more = qt + 1 < n_qt;
        mm::queue_pair<HD, NT>(more, sQ + (st ^ 1) * kMt * LD, q, 3 * C, sO + (st ^ 1) * kMt * LD, dO, C,
                               q0 + kMt, Tq);
        if (more) mma_row_stats<HD, NT>(sL + (st ^ 1) * kMt, sD + (st ^ 1) * kMt, L, dO, O, C, q0 + kMt, Tq);
        mm::wait_current(more);
        /* transposed scores and dP: rows are this warp's keys, columns the queries */
        float p[NB][4], ds[NB][4];
        mm::tile_dot<HD>(p, kf, cQ, lane);
        mm::tile_dot<HD>(ds, vf, cO, lane);
        const bool edge = q0 + kMt > Tq || (causal && q0 + shift < k0 + BR - 1);
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qi = acc_col(0, n, e, lane), key = acc_row(krow0, e, lane);
                float pe = exp2f(p[n][e] * sl2 - cL[qi]);
                if (edge && (q0 + qi >= Tq || (causal && q0 + qi + shift < key))) pe = 0.f;
                p[n][e] = pe;
                ds[n][e] = pe * (ds[n][e] - cD[qi]);
            }
        mm::tile_accumulate<HD>(dv, p, cO, lane);
        mm::tile_accumulate<HD>(dk, ds, cQ, lane);
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = acc_row(krow0, 2 * r, lane);
        if (key >= Tk) continue;
        float *d = dkv + ((int64_t)b * Tk + key) * 2 * C + h * HD + 2 * (lane % 4);
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            d[8 * n] += dk[n][2 * r], d[8 * n + 1] += dk[n][2 * r + 1];
            d[C + 8 * n] += dv[n][2 * r], d[C + 8 * n + 1] += dv[n][2 * r + 1];
        }
    }
}

/* grid (B*H, query blocks of 16 NW rows): the q columns of dqkv += each query's sum over the keys it sees */
template <int HD, int NW>
__global__ void __launch_bounds__(32 * NW)
    block_dq_mma_k(bf16 *dqkv, const bf16 *qkv, const bf16 *kv, const bf16 *dout, const bf16 *out,
                   const float *lse, int Tq, int Tk, int H, int shift, float sl2, bool causal)
{
    constexpr int LD = HD + 8, NB = kMt / 8, NT = 32 * NW, BR = 16 * NW;
    static_assert(BR <= 2 * kMt, "the block's rows are staged in the two stages of a tile");
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sK = (bf16 *)smem, *sV = sK + 2 * kMt * LD; /* K and V tiles: 2 stages each */
    const int C = H * HD, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bf16 *q = qkv + (int64_t)b * Tq * 3 * C + h * HD;
    const bf16 *k = kv + (int64_t)b * Tk * 2 * C + h * HD, *v = k + C;
    const bf16 *dO = dout + (int64_t)b * Tq * C + h * HD, *O = out + (int64_t)b * Tq * C + h * HD;
    const int q0 = blockIdx.y * BR, row0 = q0 + warp * 16;
    const int n_kt = (keys_end(causal, q0, BR, shift, Tk) + kMt - 1) / kMt;
    if (n_kt == 0) return;

    uint32_t qf[HD / 16][4], of[HD / 16][4];
    mm::rows_to_frags<HD, NW>(qf, of, sK, sV, q, 3 * C, dO, C, q0, Tq);
    mm::load_tile<HD, NT>(sK, k, 2 * C, 0, Tk);
    mm::load_tile<HD, NT>(sV, v, 2 * C, 0, Tk);
    mm::cp_async_commit();
    /* each row's lse (base 2) and delta, the latter summed by its four lanes */
    float lr[2], dr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = acc_row(row0, 2 * r, lane);
        float acc = 0.f;
        if (row < Tq)
            for (int d = 2 * (lane % 4); d < HD; d += 8) {
                const __nv_bfloat162 a = *(const __nv_bfloat162 *)(dO + (int64_t)row * C + d);
                const __nv_bfloat162 c = *(const __nv_bfloat162 *)(O + (int64_t)row * C + d);
                acc += __low2float(a) * __low2float(c) + __high2float(a) * __high2float(c);
            }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        acc += __shfl_xor_sync(0xffffffffu, acc, 2);
        dr[r] = acc;
        lr[r] = row < Tq ? lse[(int64_t)bh * Tq + row] * kLog2e : 0.f;
    }

    float dq[HD / 8][4] = {};
    for (int kt = 0; kt < n_kt; kt++) {
        const int st = kt & 1, k0 = kt * kMt;
        const bf16 *cK = sK + st * kMt * LD, *cV = sV + st * kMt * LD;
        const bool more = kt + 1 < n_kt;
        mm::queue_pair<HD, NT>(more, sK + (st ^ 1) * kMt * LD, k, 2 * C, sV + (st ^ 1) * kMt * LD, v, 2 * C,
                               k0 + kMt, Tk);
        mm::wait_current(more);
        float ds[NB][4], dp[NB][4];
        mm::tile_dot<HD>(ds, qf, cK, lane);
        mm::tile_dot<HD>(dp, of, cV, lane);
        const bool edge = k0 + kMt > Tk || (causal && k0 + kMt - 1 > q0 + shift);
#pragma unroll
        for (int n = 0; n < NB; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float pe = exp2f(ds[n][e] * sl2 - lr[e / 2]);
                const int key = acc_col(k0, n, e, lane);
                if (edge && (key >= Tk || (causal && key > acc_row(row0, e, lane) + shift))) pe = 0.f;
                ds[n][e] = pe * (dp[n][e] - dr[e / 2]);
            }
        mm::tile_accumulate<HD>(dq, ds, cK, lane);
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = acc_row(row0, 2 * r, lane);
        if (row >= Tq) continue;
        bf16 *d = dqkv + ((int64_t)b * Tq + row) * 3 * C + h * HD + 2 * (lane % 4);
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            const __nv_bfloat162 old = *(const __nv_bfloat162 *)(d + 8 * n);
            *(__nv_bfloat162 *)(d + 8 * n) =
                __floats2bfloat162_rn(__low2float(old) + dq[n][2 * r], __high2float(old) + dq[n][2 * r + 1]);
        }
    }
}

/* ================================ launchers ================================ */

/* G lanes per row: the fewest with 8 dims each */
int lanes_per_row(int64_t hd) { return hd <= 32 ? 4 : hd <= 64 ? 8 : hd <= 128 ? 16 : 32; }

/* blocks of an elementwise grid-stride loop over n */
unsigned elementwise_blocks(int64_t n)
{
    const int64_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

/* The causal shift q_pos - k_pos, clamped into int where it makes no
 * difference: at Tk every key is seen by every query, at -(Tq + kThreads)
 * none is (and the kernels' block bounds stay negative). */
int clamped_shift(const insitra_attention_block_shape *sh)
{
    int64_t s = sh->q_pos - sh->k_pos;
    if (s > sh->Tk) s = sh->Tk;
    if (s < -(sh->Tq + kThreads)) s = -(sh->Tq + kThreads);
    return (int)s;
}

/* the pieces every launch takes, from the shape */
struct launch {
    int Tq, Tk, H, hd, shift;
    float scale;
    bool causal;
    dim3 q_grid, k_grid;

    template <int G>
    static launch make(const insitra_attention_block_shape *sh)
    {
        constexpr int R = kThreads / G;
        launch a;
        a.Tq = (int)sh->Tq, a.Tk = (int)sh->Tk, a.H = (int)sh->H, a.hd = (int)(sh->C / sh->H);
        a.shift = clamped_shift(sh);
        a.scale = 1.f / sqrtf((float)a.hd);
        a.causal = sh->causal;
        a.q_grid = dim3((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->Tq, R));
        a.k_grid = dim3((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->Tk, R));
        return a;
    }
};

template <typename T, int G>
void forward_g(T *out, float *m, float *l, const T *qkv, const T *kv, const insitra_attention_block_shape *sh,
               bool first, cudaStream_t s)
{
    const launch a = launch::make<G>(sh);
    block_fwd_k<T, G><<<a.q_grid, kThreads, 0, s>>>(out, m, l, qkv, kv, a.Tq, a.Tk, a.H, a.hd, a.shift,
                                                    a.scale, a.causal, first);
}

template <typename T, int G>
void backward_g(T *dqkv, float *dkv, const T *dout, const T *qkv, const T *kv, const T *out, const float *lse,
                const insitra_attention_block_shape *sh, cudaStream_t s)
{
    const launch a = launch::make<G>(sh);
    block_dkdv_k<T, G><<<a.k_grid, kThreads, 0, s>>>(dkv, qkv, kv, dout, out, lse, a.Tq, a.Tk, a.H, a.hd,
                                                     a.shift, a.scale, a.causal);
    block_dq_k<T, G><<<a.q_grid, kThreads, 0, s>>>(dqkv, qkv, kv, dout, out, lse, a.Tq, a.Tk, a.H, a.hd,
                                                   a.shift, a.scale, a.causal);
}

template <typename T>
insitra_status forward_t(void *out, float *m, float *l, const void *qkv, const void *kv,
                         const insitra_attention_block_shape *sh, bool first, cudaStream_t s)
{
    T *o = (T *)out;
    const T *x = (const T *)qkv, *y = (const T *)kv;
    switch (lanes_per_row(sh->C / sh->H)) {
    case 4: forward_g<T, 4>(o, m, l, x, y, sh, first, s); break;
    case 8: forward_g<T, 8>(o, m, l, x, y, sh, first, s); break;
    case 16: forward_g<T, 16>(o, m, l, x, y, sh, first, s); break;
    default: forward_g<T, 32>(o, m, l, x, y, sh, first, s); break;
    }
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

template <typename T>
insitra_status backward_t(void *dqkv, float *dkv, const void *dout, const void *qkv, const void *kv,
                          const void *out, const float *lse, const insitra_attention_block_shape *sh,
                          cudaStream_t s)
{
    T *d = (T *)dqkv;
    const T *g = (const T *)dout, *x = (const T *)qkv, *y = (const T *)kv, *o = (const T *)out;
    switch (lanes_per_row(sh->C / sh->H)) {
    case 4: backward_g<T, 4>(d, dkv, g, x, y, o, lse, sh, s); break;
    case 8: backward_g<T, 8>(d, dkv, g, x, y, o, lse, sh, s); break;
    case 16: backward_g<T, 16>(d, dkv, g, x, y, o, lse, sh, s); break;
    default: backward_g<T, 32>(d, dkv, g, x, y, o, lse, sh, s); break;
    }
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* Raises a kernel's shared-memory limit once when it needs more than the
 * default 48 KiB (hd = 128). Not a stream operation: allowed while a graph
 * is being captured. */
template <typename K>
cudaError_t allow_smem(K kernel, int bytes)
{
    if (bytes <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/* the tensor-core path: bf16, a head size it is built for, 16-byte aligned tensors (nullptr: none) */
bool use_mma(const insitra_attention_block_shape *sh, const void *a, const void *b, const void *c,
             const void *d = nullptr, const void *e = nullptr)
{
    const int64_t hd = sh->C / sh->H;
    const auto al = [](const void *p) { return (uintptr_t)p % 16 == 0; };
    return sh->bf16 && (hd == 32 || hd == 64 || hd == 128) && al(a) && al(b) && al(c) && al(d) && al(e);
}

template <int HD>
insitra_status forward_mma(void *out, float *m, float *l, const void *qkv, const void *kv,
                           const insitra_attention_block_shape *sh, bool first, cudaStream_t s)
{
    constexpr int NW = kMmaWarps;
    const int smem = (16 * NW + 4 * kMt) * (HD + 8) * (int)sizeof(bf16);
    static const cudaError_t once = allow_smem(block_fwd_mma_k<HD, NW>, smem);
    CUDA_TRY(once);
    const dim3 grid((unsigned)(sh->B * sh->H), (unsigned)insitra_ceil_div(sh->Tq, 16 * NW));
    block_fwd_mma_k<HD, NW><<<grid, 32 * NW, smem, s>>>(
        (bf16 *)out, m, l, (const bf16 *)qkv, (const bf16 *)kv, (int)sh->Tq, (int)sh->Tk, (int)sh->H,
        clamped_shift(sh), kLog2e / sqrtf((float)HD), sh->causal, first);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

template <int HD>
insitra_status backward_mma(void *dqkv, float *dkv, const void *dout, const void *qkv, const void *kv,
                            const void *out, const float *lse, const insitra_attention_block_shape *sh,
                            cudaStream_t s)
{
    constexpr int NW = kMmaWarps;
    const int tiles = 4 * kMt * (HD + 8) * (int)sizeof(bf16);
    const int smem_kv = tiles + 4 * kMt * (int)sizeof(float), smem_q = tiles;
    static const cudaError_t once_kv = allow_smem(block_dkdv_mma_k<HD, NW>, smem_kv);
    static const cudaError_t once_q = allow_smem(block_dq_mma_k<HD, NW>, smem_q);
    CUDA_TRY(once_kv);
    CUDA_TRY(once_q);
    const unsigned bh = (unsigned)(sh->B * sh->H);
    const int Tq = (int)sh->Tq, Tk = (int)sh->Tk, H = (int)sh->H, shift = clamped_shift(sh);
    const float sl2 = kLog2e / sqrtf((float)HD);
    const bf16 *g = (const bf16 *)dout, *x = (const bf16 *)qkv, *y = (const bf16 *)kv, *o = (const bf16 *)out;
    block_dkdv_mma_k<HD, NW><<<dim3(bh, (unsigned)insitra_ceil_div(Tk, 16 * NW)), 32 * NW, smem_kv, s>>>(
        dkv, x, y, g, o, lse, Tq, Tk, H, shift, sl2, sh->causal);
    LAUNCH_TRY();
    block_dq_mma_k<HD, NW><<<dim3(bh, (unsigned)insitra_ceil_div(Tq, 16 * NW)), 32 * NW, smem_q, s>>>(
        (bf16 *)dqkv, x, y, g, o, lse, Tq, Tk, H, shift, sl2, sh->causal);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* The largest head size a group of 32 lanes holds. */
constexpr int64_t kMaxHeadDim = 8 * 32;

} // namespace

insitra_status insitra_cuda_attention_block_check(const insitra_attention_block_shape *sh)
{
    if (sh->B < 0 || sh->Tq < 1 || sh->Tk < 1 || sh->H < 1 || sh->C < 1 || sh->C % sh->H != 0)
        return insitra_error_set(
            INSITRA_STATUS_INVALID_ARGUMENT,
            "GPU attention block: shape B=%lld Tq=%lld Tk=%lld C=%lld H=%lld is not valid "
            "(Tq, Tk >= 1, H divides C)",
            (long long)sh->B, (long long)sh->Tq, (long long)sh->Tk, (long long)sh->C, (long long)sh->H);
    const int64_t hd = sh->C / sh->H;
    if (hd > kMaxHeadDim)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "GPU context-parallel attention: head size model.d_model / model.n_heads = "
                                 "%lld exceeds the %lld the kernels support; use more heads",
                                 (long long)hd, (long long)kMaxHeadDim);
    /* grid.y counts blocks of at least 4 rows; B*H is grid.x */
    const int64_t rows = sh->Tq > sh->Tk ? sh->Tq : sh->Tk;
    if (rows > 4 * 65535LL || sh->B * sh->H > 2147483647LL)
        return insitra_error_set(
            INSITRA_STATUS_INVALID_ARGUMENT,
            "GPU context-parallel attention: %lld tokens per rank or %lld heads exceed the "
            "kernels' grid",
            (long long)rows, (long long)(sh->B * sh->H));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_cuda_attention_kv_pack(void *kv, const void *qkv, int64_t N, int64_t C, size_t es,
                                              cudaStream_t s)
{
    if (N <= 0) return INSITRA_STATUS_OK;
    const size_t row = (size_t)C * es;
    CUDA_TRY(cudaMemcpy2DAsync(kv, 2 * row, (const char *)qkv + row, 3 * row, 2 * row, (size_t)N,
                               cudaMemcpyDeviceToDevice, s));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_cuda_attention_block_forward(void *out, float *m, float *l, const void *qkv,
                                                    const void *kv, const insitra_attention_block_shape *sh,
                                                    bool first, cudaStream_t s)
{
    INSITRA_CHECK(insitra_cuda_attention_block_check(sh));
    if (sh->B == 0) return INSITRA_STATUS_OK;
    if (use_mma(sh, out, qkv, kv)) switch (sh->C / sh->H) {
        case 32: return forward_mma<32>(out, m, l, qkv, kv, sh, first, s);
        case 64: return forward_mma<64>(out, m, l, qkv, kv, sh, first, s);
        default: return forward_mma<128>(out, m, l, qkv, kv, sh, first, s);
        }
    if (sh->bf16) return forward_t<bf16>(out, m, l, qkv, kv, sh, first, s);
    return forward_t<float>(out, m, l, qkv, kv, sh, first, s);
}

insitra_status insitra_cuda_attention_block_finish(void *out, float *lse, const float *m, const float *l,
                                                   int64_t B, int64_t Tq, int64_t C, int64_t H, bool is_bf16,
                                                   cudaStream_t s)
{
    const int64_t n = B * Tq * C, rows = B * H * Tq;
    if (n == 0) return INSITRA_STATUS_OK;
    /* every row has C / H >= 1 elements, so the n threads cover the rows too */
    if (is_bf16)
        block_finish_k<bf16><<<elementwise_blocks(n), kThreads, 0, s>>>(
            (bf16 *)out, lse, m, l, n, rows, (int)Tq, (int)C, (int)H, (int)(C / H));
    else
        block_finish_k<float><<<elementwise_blocks(n), kThreads, 0, s>>>(
            (float *)out, lse, m, l, n, rows, (int)Tq, (int)C, (int)H, (int)(C / H));
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status insitra_cuda_attention_block_backward(void *dqkv, float *dkv, const void *dout,
                                                     const void *qkv, const void *kv, const void *out,
                                                     const float *lse,
                                                     const insitra_attention_block_shape *sh, cudaStream_t s)
{
    INSITRA_CHECK(insitra_cuda_attention_block_check(sh));
    /* causal, with every key of the block after every query: nothing to add */
    if (sh->B == 0 || (sh->causal && sh->k_pos > sh->q_pos + sh->Tq - 1)) return INSITRA_STATUS_OK;
    if (use_mma(sh, dqkv, dout, qkv, kv, out)) switch (sh->C / sh->H) {
        case 32: return backward_mma<32>(dqkv, dkv, dout, qkv, kv, out, lse, sh, s);
        case 64: return backward_mma<64>(dqkv, dkv, dout, qkv, kv, out, lse, sh, s);
        default: return backward_mma<128>(dqkv, dkv, dout, qkv, kv, out, lse, sh, s);
        }
    if (sh->bf16) return backward_t<bf16>(dqkv, dkv, dout, qkv, kv, out, lse, sh, s);
    return backward_t<float>(dqkv, dkv, dout, qkv, kv, out, lse, sh, s);
}

insitra_status insitra_cuda_attention_block_done(void *dqkv, const float *dkv, int64_t N, int64_t C,
                                                 int64_t H, bool is_bf16, cudaStream_t s)
{
    const int64_t n = N * 3 * C;
    if (n == 0) return INSITRA_STATUS_OK;
    const float scale = 1.f / sqrtf((float)(C / H));
    if (is_bf16)
        block_done_k<bf16><<<elementwise_blocks(n), kThreads, 0, s>>>((bf16 *)dqkv, dkv, n, (int)C, scale);
    else
        block_done_k<float><<<elementwise_blocks(n), kThreads, 0, s>>>((float *)dqkv, dkv, n, (int)C, scale);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}
