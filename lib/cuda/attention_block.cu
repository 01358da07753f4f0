/*
 * Context-parallel attention blocks (attention_block.cuh), on the CUDA
 * cores in the manner of attention.cu's CUDA-core kernels, with two
 * differences: queries and keys are separate tensors at global positions
 * (the causal mask compares positions, shift = q_pos - k_pos), and forward
 * starts from and leaves the online softmax state (out, m, l) in memory so
 * that blocks can be folded in one call at a time.
 *
 *   forward:  grid (B*H, query blocks), a group per query walks the key tiles
 *   dK, dV:   grid (B*H, key blocks), a group per key walks the query tiles;
 *             delta = rowsum(dout * out) of each staged query row is made
 *             in the tile (no scratch buffer)
 *   dQ:       grid (B*H, query blocks), a group per query walks the key tiles
 *
 * Every output is summed by one group in a fixed order, so no atomics.
 * Probabilities use exp2 of (score - reference) * log2(e): the scores and
 * m, lse stay in natural units, as the CPU keeps them.
 */
#include "attention_block.cuh"

#include <cuda_bf16.h>
#include <math.h>

#include "cuda_util.h"

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
