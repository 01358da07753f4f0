/*
 * Kernels for lib/cuda/kernels.cuh. Memory-bound, so the shape of each is
 * about access: warp per row for the row-wise kernels (layernorm, softmax),
 * 32 consecutive columns per warp for column sums, grid-stride loops
 * elsewhere. Accumulation is in fp32 (double for the loss and the norm).
 */
#include "kernels.cuh"

#include <math.h>

namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

constexpr int kThreads = 256;

/* 16-byte vectors: 8 bf16 or 4 floats, converted to and from fp32 registers. */
template <typename T> struct vec16 { static constexpr int n = 16 / (int)sizeof(T); };
__device__ __forceinline__ void load16(float *f, const float *p)
{
    const float4 v = *(const float4 *)p;
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
}
__device__ __forceinline__ void load16(float *f, const bf16 *p)
{
    uint4 raw = *(const uint4 *)p;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&raw;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x, f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ void store16(float *p, const float *f)
{
    *(float4 *)p = make_float4(f[0], f[1], f[2], f[3]);
}
__device__ __forceinline__ void store16(bf16 *p, const float *f)
{
    uint4 raw;
    __nv_bfloat162 *h = (__nv_bfloat162 *)&raw;
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *(uint4 *)p = raw;
}
/* Rows up to kRowVecs x 32 vectors long are held in registers by one warp;
 * each kernel is built for K = 1, 2, 4, 8 vectors per lane and launched with
 * the smallest that holds the row, so short rows keep few registers and many
 * warps (and loads) in flight. */
constexpr int kRowVecs = 8;
#define ROW_DISPATCH(nv, kernel, T, grid, ...)                                        \
    do {                                                                              \
        const int64_t per_lane_ = ((nv) + 31) / 32;                                   \
        if (per_lane_ <= 1) kernel<T, 1><<<grid, kThreads, 0, s>>>(__VA_ARGS__);      \
        else if (per_lane_ <= 2) kernel<T, 2><<<grid, kThreads, 0, s>>>(__VA_ARGS__); \
        else if (per_lane_ <= 4) kernel<T, 4><<<grid, kThreads, 0, s>>>(__VA_ARGS__); \
        else kernel<T, 8><<<grid, kThreads, 0, s>>>(__VA_ARGS__);                     \
    } while (0)
bool aligned16(const void *a, const void *b = nullptr)
{
    return ((uintptr_t)a % 16) == 0 && ((uintptr_t)b % 16) == 0;
}
template <typename T> bool row_fits(int64_t cols, const void *a, const void *b = nullptr)
{
    const int V = vec16<T>::n;
    return cols % V == 0 && cols <= 32 * kRowVecs * V && ((uintptr_t)a % 16) == 0 &&
           ((uintptr_t)b % 16) == 0;
}

int grid_for(int64_t n)
{
    const int64_t b = (n + kThreads - 1) / kThreads;
    return (int)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

/* ---- data ---- */

template <typename T>
__global__ void gather_batch_k(T *x, float *y, const float *sx, const float *sy,
                               const int64_t *slots, int64_t n, int64_t xs, int64_t ys)
{
    const int64_t total = n * (xs + ys);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (i < n * xs) {
            const int64_t s = i / xs, e = i - s * xs;
            x[i] = from_f<T>(sx[slots[s] * xs + e]);
        } else {
            const int64_t k = i - n * xs, s = k / ys, e = k - s * ys;
            y[k] = sy[slots[s] * ys + e];
        }
    }
}

/* The same arithmetic as lib/normalize.c's host functions, in the same order. */
template <typename T>
__global__ void normalize_forward_k(T *x_hat, float *y, const float *x, insitra_feature_norm fm, int64_t N)
{
    const int64_t nx = N * fm.f_in, total = nx + (y ? N * fm.f_out : 0);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (i < nx) {
            const int64_t f = i % fm.f_in;
            x_hat[i] = from_f<T>((x[i] - fm.x_mean[f]) * fm.x_inv_std[f]);
        } else {
            const int64_t k = i - nx, t = k / fm.f_out, o = k - t * fm.f_out;
            const int32_t r = fm.residual[o];
            const float d = r >= 0 ? y[k] - x[t * fm.f_in + r] : y[k];
            y[k] = (d - fm.y_mean[o]) * fm.y_inv_std[o];
        }
    }
}

__global__ void normalize_inverse_k(float *out, const float *x, insitra_feature_norm fm, int64_t N)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < N * fm.f_out;
         k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = k / fm.f_out, o = k - t * fm.f_out;
        const int32_t r = fm.residual[o];
        const float d = __fadd_rn(__fmul_rn(out[k], fm.y_std[o]), fm.y_mean[o]);
        out[k] = r >= 0 ? x[t * fm.f_in + r] + d : d;
    }
}

template <typename To, typename Ti>
__global__ void convert_k(To *out, const Ti *in, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = from_f<To>(to_f(in[i]));
}

__global__ void add_f32_k(float *dst, const float *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] += src[i];
}

__global__ void find_nonfinite_k(const float *a, int64_t n, unsigned long long *first)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        if (!isfinite(a[i])) atomicMin(first, (unsigned long long)i);
}

/* ---- layers ---- */

template <typename T>
__global__ void pos_forward_k(T *enc, const T *pos, int64_t total, int64_t tc)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        enc[i] = from_f<T>(to_f(enc[i]) + to_f(pos[i % tc]));
}

template <typename T>
__global__ void bias_residual_k(T *out, const T *x, const T *b, const T *res, int64_t total, int64_t C)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(to_f(x[i]) + to_f(b[i % C]) + to_f(res[i]));
}

/* One warp per row; the row is read twice (mean, then variance) and once more to write. */
template <typename T>
__global__ void layernorm_forward_k(T *out, float *mean, float *rstd, const T *x, const T *w,
                                    const T *b, int64_t N, int64_t C)
{
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *xr = x + row * C;
    float s = 0.f;
    for (int64_t c = lane; c < C; c += 32) s += to_f(xr[c]);
    const float mu = warp_sum(s) / (float)C;
    float v = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
        const float d = to_f(xr[c]) - mu;
        v += d * d;
    }
    const float rs = rsqrtf(warp_sum(v) / (float)C + 1e-5f);
    T *o = out + row * C;
    for (int64_t c = lane; c < C; c += 32)
        o[c] = from_f<T>((to_f(xr[c]) - mu) * rs * to_f(w[c]) + to_f(b[c]));
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename T>
__global__ void layernorm_backward_dx_k(T *dx, const T *dy, const T *x, const float *mean,
                                        const float *rstd, const T *w, int64_t N, int64_t C,
                                        bool accumulate)
{
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *xr = x + row * C, *dyr = dy + row * C;
    const float mu = mean[row], rs = rstd[row];
    float sd = 0.f, sdx = 0.f; /* sums of dxhat and dxhat * xhat */
    for (int64_t c = lane; c < C; c += 32) {
        const float xh = (to_f(xr[c]) - mu) * rs, dxh = to_f(dyr[c]) * to_f(w[c]);
        sd += dxh;
        sdx += dxh * xh;
    }
    sd = warp_sum(sd) / (float)C;
    sdx = warp_sum(sdx) / (float)C;
    T *dxr = dx + row * C;
    for (int64_t c = lane; c < C; c += 32) {
        const float xh = (to_f(xr[c]) - mu) * rs, dxh = to_f(dyr[c]) * to_f(w[c]);
        const float g = rs * (dxh - sd - xh * sdx);
        dxr[c] = from_f<T>(accumulate ? to_f(dxr[c]) + g : g);
    }
}

/* Block (32 columns x 8 row lanes) over one split of the rows: partial sums
 * of dy * xhat and dy per column, written to partial[split][0|1][col]. */
template <typename T>
__global__ void column_partial_k(float *partial, const T *dy, const T *x, const float *mean,
                                 const float *rstd, int64_t rows, int64_t cols, int64_t per_split)
{
    __shared__ float sw[8][33], sb[8][33];
    const int64_t col = blockIdx.x * 32 + threadIdx.x;
    const int64_t r0 = blockIdx.y * per_split;
    const int64_t r1 = r0 + per_split < rows ? r0 + per_split : rows;
    float aw = 0.f, ab = 0.f;
    if (col < cols) {
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const float g = to_f(dy[r * cols + col]);
            ab += g;
            if (x) aw += g * (to_f(x[r * cols + col]) - mean[r]) * rstd[r];
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int k = 1; k < 8; k++) {
            aw += sw[k][threadIdx.x];
            ab += sb[k][threadIdx.x];
        }
        float *p = partial + blockIdx.y * 2 * cols;
        p[col] = aw;
        p[cols + col] = ab;
    }
}

/* The same with 8 (bf16) or 4 (fp32) consecutive columns per thread and
 * 16-byte loads: block = 32 column groups x 8 row lanes. */
template <typename T>
__global__ void column_partial_vk(float *partial, const T *dy, const T *x, const float *mean,
                                  const float *rstd, int64_t rows, int64_t cols, int64_t per_split)
{
    constexpr int V = vec16<T>::n;
    __shared__ float sw[8][32 * V + 1], sb[8][32 * V + 1];
    const int64_t col = (blockIdx.x * 32 + threadIdx.x) * V;
    const int64_t r0 = blockIdx.y * per_split;
    const int64_t r1 = r0 + per_split < rows ? r0 + per_split : rows;
    float aw[V] = {0}, ab[V] = {0};
    if (col < cols) {
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            float g[V];
            load16(g, dy + r * cols + col);
            if (x) {
                float xv[V];
                load16(xv, x + r * cols + col);
                const float mu = mean[r], rs = rstd[r];
#pragma unroll
                for (int e = 0; e < V; e++) aw[e] += g[e] * (xv[e] - mu) * rs;
            }
#pragma unroll
            for (int e = 0; e < V; e++) ab[e] += g[e];
        }
    }
#pragma unroll
    for (int e = 0; e < V; e++) {
        sw[threadIdx.y][threadIdx.x * V + e] = aw[e];
        sb[threadIdx.y][threadIdx.x * V + e] = ab[e];
    }
    __syncthreads();
    /* 256 threads sum the 8 row lanes of the block's 32 V columns, in order */
    const int t = threadIdx.y * 32 + threadIdx.x;
    for (int c = t; c < 32 * V; c += 256) {
        const int64_t gc = blockIdx.x * 32 * V + c;
        if (gc >= cols) continue;
        float w = 0.f, b = 0.f;
        for (int k = 0; k < 8; k++) {
            w += sw[k][c];
            b += sb[k][c];
        }
        float *p = partial + blockIdx.y * 2 * cols;
        p[gc] = w;
        p[cols + gc] = b;
    }
}

__global__ void column_finish_k(float *dw, float *db, const float *partial, int splits,
                                int64_t cols)
{
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)gridDim.x * blockDim.x) {
        float aw = 0.f, ab = 0.f;
        for (int k = 0; k < splits; k++) {
            aw += partial[k * 2 * cols + c];
            ab += partial[k * 2 * cols + cols + c];
        }
        if (dw) dw[c] += aw;
        db[c] += ab;
    }
}

__device__ __forceinline__ float gelu_inner(float x) { return 0.7978845608028654f * (x + 0.044715f * x * x * x); }

template <typename T>
__global__ void gelu_forward_k(T *out, const T *in, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float x = to_f(in[i]);
        out[i] = from_f<T>(0.5f * x * (1.f + tanhf(gelu_inner(x))));
    }
}

template <typename T>
__global__ void gelu_backward_k(T *d, const T *in, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float x = to_f(in[i]), th = tanhf(gelu_inner(x));
        const float dg = 0.5f * (1.f + th) +
                         0.5f * x * (1.f - th * th) * 0.7978845608028654f * (1.f + 3.f * 0.044715f * x * x);
        d[i] = from_f<T>(to_f(d[i]) * dg);
    }
}

/* i runs over (B,H,T,hd) */
template <typename T>
__global__ void heads_split_k(T *dst, const T *src, int64_t rs, int64_t B, int64_t Tn, int64_t H,
                              int64_t hd)
{
    const int64_t total = B * H * Tn * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t d = i % hd, t = (i / hd) % Tn, h = (i / (hd * Tn)) % H, b = i / (hd * Tn * H);
        dst[i] = src[(b * Tn + t) * rs + h * hd + d];
    }
}

template <typename T>
__global__ void heads_merge_k(T *dst, int64_t rs, const T *src, int64_t B, int64_t Tn, int64_t H,
                              int64_t hd)
{
    const int64_t total = B * H * Tn * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t d = i % hd, t = (i / hd) % Tn, h = (i / (hd * Tn)) % H, b = i / (hd * Tn * H);
        dst[(b * Tn + t) * rs + h * hd + d] = src[i];
    }
}

/* One warp per row; masked entries (causal, j > query) become exact zeros. */
template <typename T>
__global__ void softmax_forward_k(T *att, int64_t rows, int64_t Tn, bool causal)
{
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    T *a = att + row * Tn;
    const int64_t valid = causal ? row % Tn + 1 : Tn;
    float mx = -INFINITY;
    for (int64_t j = lane; j < valid; j += 32) mx = fmaxf(mx, to_f(a[j]));
    mx = warp_max(mx);
    float s = 0.f;
    for (int64_t j = lane; j < valid; j += 32) s += __expf(to_f(a[j]) - mx);
    const float inv = 1.f / warp_sum(s);
    for (int64_t j = lane; j < Tn; j += 32)
        a[j] = from_f<T>(j < valid ? __expf(to_f(a[j]) - mx) * inv : 0.f);
}

template <typename T>
__global__ void softmax_backward_k(T *datt, const T *att, int64_t rows, int64_t Tn, float scale)
{
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    T *d = datt + row * Tn;
    const T *p = att + row * Tn;
    float s = 0.f;
    for (int64_t j = lane; j < Tn; j += 32) s += to_f(p[j]) * to_f(d[j]);
    s = warp_sum(s);
    for (int64_t j = lane; j < Tn; j += 32)
        d[j] = from_f<T>(scale * to_f(p[j]) * (to_f(d[j]) - s));
}

template <typename T>
__global__ void bias_add_f32_k(float *out, const T *b, int64_t n, int64_t F)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] += to_f(b[i % F]);
}

template <typename T>
__global__ void mse_backward_k(T *dout, const float *out, const float *y, int64_t n, float scale)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dout[i] = from_f<T>(scale * (out[i] - y[i]));
}


/* ---- the row kernels with the row in registers (16-byte accesses) ---- */

template <typename T, int K>
__global__ void layernorm_forward_vk(T *out, float *mean, float *rstd, const T *x, const T *w,
                                     const T *b, int64_t N, int C)
{
    constexpr int V = vec16<T>::n;
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32, nv = C / V;
    if (row >= N) return;
    float r[K][V];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
            load16(r[k], x + row * C + c);
#pragma unroll
            for (int e = 0; e < V; e++) s += r[k][e];
        }
    }
    const float mu = warp_sum(s) / (float)C;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++)
        if (lane + 32 * k < nv)
#pragma unroll
            for (int e = 0; e < V; e++) v += (r[k][e] - mu) * (r[k][e] - mu);
    const float rs = rsqrtf(warp_sum(v) / (float)C + 1e-5f);
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
            float wv[V], bv[V], o[V];
            load16(wv, w + c);
            load16(bv, b + c);
#pragma unroll
            for (int e = 0; e < V; e++) o[e] = (r[k][e] - mu) * rs * wv[e] + bv[e];
            store16(out + row * C + c, o);
        }
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <typename T, int K>
__global__ void layernorm_backward_dx_vk(T *dx, const T *dy, const T *x, const float *mean,
                                         const float *rstd, const T *w, int64_t N, int C,
                                         bool accumulate)
{
    constexpr int V = vec16<T>::n;
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32, nv = C / V;
    if (row >= N) return;
    const float mu = mean[row], rs = rstd[row];
    float xh[K][V], g[K][V]; /* xhat and dxhat = dy * w */
    float sd = 0.f, sdx = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
            float wv[V];
            load16(xh[k], x + row * C + c);
            load16(g[k], dy + row * C + c);
            load16(wv, w + c);
#pragma unroll
            for (int e = 0; e < V; e++) {
                xh[k][e] = (xh[k][e] - mu) * rs;
                g[k][e] *= wv[e];
                sd += g[k][e];
                sdx += g[k][e] * xh[k][e];
            }
        }
    }
    sd = warp_sum(sd) / (float)C;
    sdx = warp_sum(sdx) / (float)C;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
            float o[V], prev[V];
            if (accumulate) load16(prev, dx + row * C + c);
#pragma unroll
            for (int e = 0; e < V; e++) {
                o[e] = rs * (g[k][e] - sd - xh[k][e] * sdx);
                if (accumulate) o[e] += prev[e];
            }
            store16(dx + row * C + c, o);
        }
    }
}

template <typename T, int K>
__global__ void softmax_forward_vk(T *att, int64_t rows, int Tn, bool causal)
{
    constexpr int V = vec16<T>::n;
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32, nv = Tn / V;
    if (row >= rows) return;
    T *a = att + row * Tn;
    const int valid = causal ? (int)(row % Tn) + 1 : Tn;
    float r[K][V];
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
            load16(r[k], a + c);
#pragma unroll
            for (int e = 0; e < V; e++)
                if (c + e < valid) mx = fmaxf(mx, r[k][e]);
        }
    }
    mx = warp_max(mx);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv)
#pragma unroll
            for (int e = 0; e < V; e++) {
                r[k][e] = c + e < valid ? __expf(r[k][e] - mx) : 0.f;
                s += r[k][e];
            }
    }
    const float inv = 1.f / warp_sum(s);
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
#pragma unroll
            for (int e = 0; e < V; e++) r[k][e] *= inv;
            store16(a + c, r[k]);
        }
    }
}

template <typename T, int K>
__global__ void softmax_backward_vk(T *datt, const T *att, int64_t rows, int Tn, float scale)
{
    constexpr int V = vec16<T>::n;
    const int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32, nv = Tn / V;
    if (row >= rows) return;
    T *d = datt + row * Tn;
    const T *p = att + row * Tn;
    float pr[K][V], dr[K][V];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
            load16(pr[k], p + c);
            load16(dr[k], d + c);
#pragma unroll
            for (int e = 0; e < V; e++) s += pr[k][e] * dr[k][e];
        }
    }
    s = warp_sum(s);
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = (lane + 32 * k) * V;
        if (lane + 32 * k < nv) {
#pragma unroll
            for (int e = 0; e < V; e++) dr[k][e] = scale * pr[k][e] * (dr[k][e] - s);
            store16(d + c, dr[k]);
        }
    }
}

/* One 16-byte vector per thread; i runs over the vectors of (B,H,T,hd). */
template <typename T, bool kSplit>
__global__ void heads_vk(T *bhtd, T *rows, int64_t rs, int B, int Tn, int H, int hd)
{
    constexpr int V = vec16<T>::n;
    const int hv = hd / V;
    const int64_t total = (int64_t)B * H * Tn * hv;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int dv = (int)(i % hv);
        const int64_t bht = i / hv;
        const int t = (int)(bht % Tn), h = (int)((bht / Tn) % H);
        const int64_t b = bht / ((int64_t)Tn * H);
        T *r = rows + (b * Tn + t) * rs + h * hd + dv * V;
        T *q = bhtd + bht * hd + dv * V;
        if (kSplit)
            *(uint4 *)q = *(const uint4 *)r;
        else
            *(uint4 *)r = *(const uint4 *)q;
    }
}

template <typename T>
__global__ void gelu_forward_vk(T *out, const T *in, int64_t nvec)
{
    constexpr int V = vec16<T>::n;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec;
         i += (int64_t)gridDim.x * blockDim.x) {
        float f[V];
        load16(f, in + i * V);
#pragma unroll
        for (int e = 0; e < V; e++) f[e] = 0.5f * f[e] * (1.f + tanhf(gelu_inner(f[e])));
        store16(out + i * V, f);
    }
}

template <typename T>
__global__ void gelu_backward_vk(T *d, const T *in, int64_t nvec)
{
    constexpr int V = vec16<T>::n;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nvec;
         i += (int64_t)gridDim.x * blockDim.x) {
        float x[V], g[V];
        load16(x, in + i * V);
        load16(g, d + i * V);
#pragma unroll
        for (int e = 0; e < V; e++) {
            const float th = tanhf(gelu_inner(x[e]));
            g[e] *= 0.5f * (1.f + th) + 0.5f * x[e] * (1.f - th * th) * 0.7978845608028654f *
                                            (1.f + 3.f * 0.044715f * x[e] * x[e]);
        }
        store16(d + i * V, g);
    }
}

/* ---- reductions ---- */

__global__ void sum_squares_partial_k(double *partial, const float *a, const float *b, int64_t n)
{
    __shared__ double sh[kThreads];
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const double d = b ? (double)a[i] - (double)b[i] : (double)a[i];
        acc += d * d;
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

__global__ void sum_finish_k(double *dst, const double *partial, int n, double scale,
                             bool accumulate)
{
    __shared__ double sh[kThreads];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) *dst = (accumulate ? *dst : 0.0) + scale * sh[0];
}

/* ---- optimizer ---- */

/* The scale AdamW applies to the summed gradients: clip / dp, or 0 when the
 * loss or norm is not finite (then nothing changes; the host reports it).
 * The same formula as insitra_step_grad_scale on the host. */
__device__ float grad_scale(const insitra_step_scalars *sc, const double *stats)
{
    const double norm = sqrt(stats[1]) / sc->dp;
    if (!isfinite(stats[0]) || !isfinite(norm)) return 0.f;
    float clip = 1.f;
    if (sc->max_norm > 0.0) {
        const double f = sc->max_norm / (norm + 1e-6);
        clip = f < 1.0 ? (float)f : 1.f;
    }
    return (float)((double)clip / sc->dp);
}

/* blockIdx.y picks the segment; blocks of x stride over it. */
template <typename T>
__global__ void adamw_k(const insitra_update_segment *segs, float *p, T *copy, const float *g, float *m,
                        float *v, const insitra_step_scalars *sc, const double *stats)
{
    const float scale = grad_scale(sc, stats);
    if (scale == 0.f) return;
    const insitra_update_segment seg = segs[blockIdx.y];
    const float b1 = sc->beta1, b2 = sc->beta2;
    const float keep = seg.decay ? sc->keep_decay : 1.f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < seg.count;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float gi = g[seg.grad + i] * scale;
        float *mi_p = m + seg.state + i, *vi_p = v + seg.state + i;
        const float mi = b1 * *mi_p + (1.f - b1) * gi;
        const float vi = b2 * *vi_p + (1.f - b2) * gi * gi;
        *mi_p = mi;
        *vi_p = vi;
        const float pi = p[seg.param + i] * keep - sc->step_size * mi / (sqrtf(vi) * sc->inv_sqrt_bc2 + sc->eps);
        p[seg.param + i] = pi;
        if (copy) copy[seg.copy + i] = from_f<T>(pi);
    }
}

/* Partial sums of squares: blockIdx.y the segment, kSegBlocks blocks each. */
__global__ void segment_squares_k(double *partial, const float *g, const insitra_update_segment *segs)
{
    __shared__ double sh[kThreads];
    const insitra_update_segment seg = segs[blockIdx.y];
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < seg.count;
         i += (int64_t)gridDim.x * blockDim.x) {
        const double x = g[seg.grad + i];
        acc += x * x;
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.y * gridDim.x + blockIdx.x] = sh[0];
}

/* v[j] = sum over ranks r in order of gathered[r * n + j]: the same bits everywhere. */
__global__ void sum_ranks_k(double *v, const double *gathered, int ranks, int n)
{
    const int j = threadIdx.x;
    if (j >= n) return;
    double acc = 0.0;
    for (int r = 0; r < ranks; r++) acc += gathered[r * n + j];
    v[j] = acc;
}

/* ---- shards ---- */

/* blockIdx.y picks the tensor; the blocks of x stride over each rank's slot
 * in turn, so no index is divided. */
template <typename T, bool kPack>
__global__ void shard_copy_k(T *packed, T *flat, const insitra_shard_copy *copies, int64_t stride,
                             int64_t first_rank, int64_t ranks)
{
    const insitra_shard_copy c = copies[blockIdx.y];
    for (int64_t k = 0; k < ranks; k++) {
        const int64_t first = (first_rank + k) * c.len;
        const int64_t rest = c.numel - first;
        const int64_t count = rest <= 0 ? 0 : rest < c.len ? rest : c.len;
        T *pk = packed + k * stride + c.slot;
        T *fl = flat + c.flat + first;
        for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < c.len;
             j += (int64_t)gridDim.x * blockDim.x) {
            if (kPack)
                pk[j] = j < count ? fl[j] : from_f<T>(0.f); /* padding zeroed, as on the CPU */
            else if (j < count)
                fl[j] = pk[j];
        }
    }
}

/* Blocks per tensor of a shard copy: enough for the largest slot, capped so
 * that many small tensors do not launch a grid of idle blocks. */
unsigned shard_blocks(int64_t max_numel)
{
    const int64_t b = (max_numel + kThreads - 1) / kThreads;
    return (unsigned)(b < 128 ? (b > 0 ? b : 1) : 128);
}

} // namespace

template <typename T>
void insitra_gather_batch(T *x, float *y, const float *sx, const float *sy, const int64_t *slots,
                          int64_t n, int64_t xs, int64_t ys, cudaStream_t s)
{
    gather_batch_k<T><<<grid_for(n * (xs + ys)), kThreads, 0, s>>>(x, y, sx, sy, slots, n, xs, ys);
}

template <typename T>
void insitra_normalize_forward(T *x_hat, float *y, const float *x, insitra_feature_norm fm, int64_t N,
                               cudaStream_t s)
{
    const int64_t total = N * (fm.f_in + (y ? fm.f_out : 0));
    normalize_forward_k<T><<<grid_for(total), kThreads, 0, s>>>(x_hat, y, x, fm, N);
}

void insitra_normalize_inverse(float *out, const float *x, insitra_feature_norm fm, int64_t N, cudaStream_t s)
{
    normalize_inverse_k<<<grid_for(N * fm.f_out), kThreads, 0, s>>>(out, x, fm, N);
}

template <typename To, typename Ti>
void insitra_convert(To *out, const Ti *in, int64_t n, cudaStream_t s)
{
    convert_k<To, Ti><<<grid_for(n), kThreads, 0, s>>>(out, in, n);
}

void insitra_add_f32(float *dst, const float *src, int64_t n, cudaStream_t s)
{
    add_f32_k<<<grid_for(n), kThreads, 0, s>>>(dst, src, n);
}

void insitra_find_nonfinite(const float *a, int64_t n, unsigned long long *first, cudaStream_t s)
{
    if (n > 0) find_nonfinite_k<<<grid_for(n), kThreads, 0, s>>>(a, n, first);
}

template <typename T>
void insitra_pos_forward(T *enc, const T *pos, int64_t B, int64_t Tn, int64_t C, cudaStream_t s)
{
    pos_forward_k<T><<<grid_for(B * Tn * C), kThreads, 0, s>>>(enc, pos, B * Tn * C, Tn * C);
}

template <typename T>
void insitra_bias_residual(T *out, const T *x, const T *b, const T *res, int64_t N, int64_t C, cudaStream_t s)
{
    if (N * C > 0) bias_residual_k<T><<<grid_for(N * C), kThreads, 0, s>>>(out, x, b, res, N * C, C);
}

template <typename T>
void insitra_layernorm_forward(T *out, float *mean, float *rstd, const T *x, const T *w,
                               const T *b, int64_t N, int64_t C, cudaStream_t s)
{
    if (row_fits<T>(C, out, x) && row_fits<T>(C, w, b))
        ROW_DISPATCH(C / vec16<T>::n, layernorm_forward_vk, T, (unsigned)((N + 7) / 8), out, mean, rstd, x,
                     w, b, N, (int)C);
    else
        layernorm_forward_k<T><<<(unsigned)((N + 7) / 8), kThreads, 0, s>>>(out, mean, rstd, x, w, b, N, C);
}

template <typename T>
void insitra_layernorm_backward_dx(T *dx, const T *dy, const T *x, const float *mean,
                                   const float *rstd, const T *w, int64_t N, int64_t C,
                                   bool accumulate, cudaStream_t s)
{
    if (row_fits<T>(C, dx, dy) && row_fits<T>(C, x, w))
        ROW_DISPATCH(C / vec16<T>::n, layernorm_backward_dx_vk, T, (unsigned)((N + 7) / 8), dx, dy, x, mean,
                     rstd, w, N, (int)C, accumulate);
    else
        layernorm_backward_dx_k<T><<<(unsigned)((N + 7) / 8), kThreads, 0, s>>>(dx, dy, x, mean, rstd, w,
                                                                              N, C, accumulate);
}

template <typename T>
void insitra_column_grads(float *dw, float *db, const T *dy, const T *x, const float *mean,
                          const float *rstd, int64_t rows, int64_t cols, float *partial,
                          cudaStream_t s)
{
    const int splits = (int)insitra_gpu_col_splits(rows);
    const int64_t per_split = (rows + splits - 1) / splits;
    constexpr int V = vec16<T>::n;
    if (cols % V == 0 && aligned16(dy, x)) {
        const dim3 grid((unsigned)((cols / V + 31) / 32), (unsigned)splits), block(32, 8);
        column_partial_vk<T><<<grid, block, 0, s>>>(partial, dy, x, mean, rstd, rows, cols, per_split);
    } else {
        const dim3 grid((unsigned)((cols + 31) / 32), (unsigned)splits), block(32, 8);
        column_partial_k<T><<<grid, block, 0, s>>>(partial, dy, x, mean, rstd, rows, cols, per_split);
    }
    column_finish_k<<<grid_for(cols), kThreads, 0, s>>>(x ? dw : nullptr, db, partial, splits, cols);
}

template <typename T>
void insitra_gelu_forward(T *out, const T *in, int64_t n, cudaStream_t s)
{
    constexpr int V = vec16<T>::n;
    if (n % V == 0 && row_fits<T>(V, out, in))
        gelu_forward_vk<T><<<grid_for(n / V), kThreads, 0, s>>>(out, in, n / V);
    else
        gelu_forward_k<T><<<grid_for(n), kThreads, 0, s>>>(out, in, n);
}

template <typename T>
void insitra_gelu_backward(T *d, const T *in, int64_t n, cudaStream_t s)
{
    constexpr int V = vec16<T>::n;
    if (n % V == 0 && row_fits<T>(V, d, in))
        gelu_backward_vk<T><<<grid_for(n / V), kThreads, 0, s>>>(d, in, n / V);
    else
        gelu_backward_k<T><<<grid_for(n), kThreads, 0, s>>>(d, in, n);
}

template <typename T>
void insitra_heads_split(T *dst, const T *src, int64_t rs, int64_t B, int64_t Tn, int64_t H,
                         int64_t hd, cudaStream_t s)
{
    constexpr int V = vec16<T>::n;
    if (hd % V == 0 && rs % V == 0 && row_fits<T>(V, dst, src))
        heads_vk<T, true><<<grid_for(B * Tn * H * hd / V), kThreads, 0, s>>>(
            dst, const_cast<T *>(src), rs, (int)B, (int)Tn, (int)H, (int)hd);
    else
        heads_split_k<T><<<grid_for(B * Tn * H * hd), kThreads, 0, s>>>(dst, src, rs, B, Tn, H, hd);
}

template <typename T>
void insitra_heads_merge(T *dst, int64_t rs, const T *src, int64_t B, int64_t Tn, int64_t H,
                         int64_t hd, cudaStream_t s)
{
    constexpr int V = vec16<T>::n;
    if (hd % V == 0 && rs % V == 0 && row_fits<T>(V, dst, src))
        heads_vk<T, false><<<grid_for(B * Tn * H * hd / V), kThreads, 0, s>>>(
            const_cast<T *>(src), dst, rs, (int)B, (int)Tn, (int)H, (int)hd);
    else
        heads_merge_k<T><<<grid_for(B * Tn * H * hd), kThreads, 0, s>>>(dst, rs, src, B, Tn, H, hd);
}

template <typename T>
void insitra_softmax_forward(T *att, int64_t rows, int64_t Tn, bool causal, cudaStream_t s)
{
    if (row_fits<T>(Tn, att))
        ROW_DISPATCH(Tn / vec16<T>::n, softmax_forward_vk, T, (unsigned)((rows + 7) / 8), att, rows, (int)Tn,
                     causal);
    else
        softmax_forward_k<T><<<(unsigned)((rows + 7) / 8), kThreads, 0, s>>>(att, rows, Tn, causal);
}

template <typename T>
void insitra_softmax_backward(T *datt, const T *att, int64_t rows, int64_t Tn, float scale,
                              cudaStream_t s)
{
    if (row_fits<T>(Tn, datt, att))
        ROW_DISPATCH(Tn / vec16<T>::n, softmax_backward_vk, T, (unsigned)((rows + 7) / 8), datt, att, rows,
                     (int)Tn, scale);
    else
        softmax_backward_k<T><<<(unsigned)((rows + 7) / 8), kThreads, 0, s>>>(datt, att, rows, Tn, scale);
}

template <typename T>
void insitra_bias_add_f32(float *out, const T *b, int64_t N, int64_t F, cudaStream_t s)
{
    bias_add_f32_k<T><<<grid_for(N * F), kThreads, 0, s>>>(out, b, N * F, F);
}

template <typename T>
void insitra_mse_backward(T *dout, const float *out, const float *y, int64_t n, float scale,
                          cudaStream_t s)
{
    mse_backward_k<T><<<grid_for(n), kThreads, 0, s>>>(dout, out, y, n, 2.f * scale / (float)n);
}

void insitra_sum_squares(double *dst, const float *a, const float *b, int64_t n, double scale,
                         bool accumulate, double *partial, cudaStream_t s)
{
    sum_squares_partial_k<<<INSITRA_GPU_REDUCE_BLOCKS, kThreads, 0, s>>>(partial, a, b, n);
    sum_finish_k<<<1, kThreads, 0, s>>>(dst, partial, INSITRA_GPU_REDUCE_BLOCKS, scale, accumulate);
}

template <typename T>
void insitra_adamw(const insitra_update_segment *segs, int64_t n_segs, int64_t max_count, float *p, T *copy,
                   const float *g, float *m, float *v, const insitra_step_scalars *sc, const double *stats,
                   cudaStream_t s)
{
    const dim3 grid(shard_blocks(max_count), (unsigned)n_segs);
    adamw_k<T><<<grid, kThreads, 0, s>>>(segs, p, copy, g, m, v, sc, stats);
}

void insitra_segment_squares(double *dst, const float *g, const insitra_update_segment *segs, int64_t n_segs,
                             double *partial, cudaStream_t s)
{
    const dim3 grid(INSITRA_GPU_SEGMENT_BLOCKS, (unsigned)n_segs);
    segment_squares_k<<<grid, kThreads, 0, s>>>(partial, g, segs);
    sum_finish_k<<<1, kThreads, 0, s>>>(dst, partial, (int)(n_segs * INSITRA_GPU_SEGMENT_BLOCKS), 1.0, true);
}

void insitra_sum_ranks(double *v, const double *gathered, int ranks, int n, cudaStream_t s)
{
    sum_ranks_k<<<1, 32, 0, s>>>(v, gathered, ranks, n);
}

template <typename T>
void insitra_shard_pack(T *packed, const T *flat, const insitra_shard_copy *copies, int64_t n, int64_t stride,
                        int64_t first_rank, int64_t ranks, int64_t max_numel, cudaStream_t s)
{
    const dim3 grid(shard_blocks(max_numel), (unsigned)n);
    shard_copy_k<T, true><<<grid, kThreads, 0, s>>>(packed, const_cast<T *>(flat), copies, stride, first_rank,
                                                    ranks);
}

template <typename T>
void insitra_shard_unpack(T *flat, const T *packed, const insitra_shard_copy *copies, int64_t n, int64_t stride,
                          int64_t first_rank, int64_t ranks, int64_t max_numel, cudaStream_t s)
{
    const dim3 grid(shard_blocks(max_numel), (unsigned)n);
    shard_copy_k<T, false><<<grid, kThreads, 0, s>>>(const_cast<T *>(packed), flat, copies, stride, first_rank,
                                                     ranks);
}

#define INSTANTIATE(T)                                                                            \
    template void insitra_gather_batch<T>(T *, float *, const float *, const float *,            \
                                          const int64_t *, int64_t, int64_t, int64_t, cudaStream_t); \
    template void insitra_convert<T, float>(T *, const float *, int64_t, cudaStream_t);          \
    template void insitra_normalize_forward<T>(T *, float *, const float *, insitra_feature_norm, \
                                               int64_t, cudaStream_t);                           \
    template void insitra_pos_forward<T>(T *, const T *, int64_t, int64_t, int64_t, cudaStream_t); \
    template void insitra_bias_residual<T>(T *, const T *, const T *, const T *, int64_t, int64_t, cudaStream_t); \
    template void insitra_layernorm_forward<T>(T *, float *, float *, const T *, const T *,      \
                                               const T *, int64_t, int64_t, cudaStream_t);       \
    template void insitra_layernorm_backward_dx<T>(T *, const T *, const T *, const float *,     \
                                                   const float *, const T *, int64_t, int64_t,   \
                                                   bool, cudaStream_t);                          \
    template void insitra_column_grads<T>(float *, float *, const T *, const T *, const float *, \
                                          const float *, int64_t, int64_t, float *, cudaStream_t); \
    template void insitra_gelu_forward<T>(T *, const T *, int64_t, cudaStream_t);                \
    template void insitra_gelu_backward<T>(T *, const T *, int64_t, cudaStream_t);               \
    template void insitra_heads_split<T>(T *, const T *, int64_t, int64_t, int64_t, int64_t,     \
                                         int64_t, cudaStream_t);                                 \
    template void insitra_heads_merge<T>(T *, int64_t, const T *, int64_t, int64_t, int64_t,     \
                                         int64_t, cudaStream_t);                                 \
    template void insitra_softmax_forward<T>(T *, int64_t, int64_t, bool, cudaStream_t);         \
    template void insitra_softmax_backward<T>(T *, const T *, int64_t, int64_t, float,           \
                                              cudaStream_t);                                     \
    template void insitra_bias_add_f32<T>(float *, const T *, int64_t, int64_t, cudaStream_t);   \
    template void insitra_mse_backward<T>(T *, const float *, const float *, int64_t, float,     \
                                          cudaStream_t);                                         \
    template void insitra_shard_pack<T>(T *, const T *, const insitra_shard_copy *, int64_t,     \
                                        int64_t, int64_t, int64_t, int64_t, cudaStream_t);       \
    template void insitra_shard_unpack<T>(T *, const T *, const insitra_shard_copy *, int64_t,   \
                                          int64_t, int64_t, int64_t, int64_t, cudaStream_t);     \
    template void insitra_adamw<T>(const insitra_update_segment *, int64_t, int64_t, float *, T *, \
                                   const float *, float *, float *, const insitra_step_scalars *, \
                                   const double *, cudaStream_t);

INSTANTIATE(float)
INSTANTIATE(bf16)
