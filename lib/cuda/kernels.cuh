/*
 * The CUDA kernels of the model, the optimizer and the data path, as host
 * launchers on a stream. Templates take the compute type T: float, or
 * __nv_bfloat16 for mixed precision (activations and working parameters in
 * bf16, every reduction and every parameter gradient in fp32). Row-major
 * shapes as in lib/model.h: N = B*T tokens, C channels, H heads of hd = C/H.
 *
 * Every reduction is deterministic: fixed grids and fixed summation orders,
 * never atomics on floating point, so a rerun gives the same bits.
 */
#ifndef INSITRA_CUDA_KERNELS_CUH
#define INSITRA_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "../backend.h"   /* insitra_shard_copy, insitra_update_segment */
#include "../gpu_sizes.h" /* INSITRA_GPU_REDUCE_BLOCKS, insitra_gpu_col_splits */
#include "../optimizer.h" /* insitra_step_scalars */
}

typedef __nv_bfloat16 bf16;

/* ---- data ---- */
/* x (n, xs) in T and y (n, ys) in fp32 from the store rows slots[0..n). */
template <typename T>
void insitra_gather_batch(T *x, float *y, const float *store_x, const float *store_y,
                          const int64_t *slots, int64_t n, int64_t xs, int64_t ys, cudaStream_t s);
/* The feature maps of lib/normalize.h over N tokens (fm's arrays in device memory):
 * x_hat (N, f_in) in T from x (N, f_in); y (N, f_out) in place when not NULL (the target). */
template <typename T>
void insitra_normalize_forward(T *x_hat, float *y, const float *x, insitra_feature_norm fm, int64_t N,
                               cudaStream_t s);
/* out (N, f_out) in place = out y_std + y_mean + x[residual] */
void insitra_normalize_inverse(float *out, const float *x, insitra_feature_norm fm, int64_t N, cudaStream_t s);
/* out[i] = in[i], converting. */
template <typename To, typename Ti>
void insitra_convert(To *out, const Ti *in, int64_t n, cudaStream_t s);
/* dst[i] += src[i] */
void insitra_add_f32(float *dst, const float *src, int64_t n, cudaStream_t s);
/* *first = min(*first, index of a non-finite a[i]); *first starts at n. */
void insitra_find_nonfinite(const float *a, int64_t n, unsigned long long *first, cudaStream_t s);

/* ---- layers (forward/backward pairs) ---- */
/* enc (B,T,C) += pos (T,C) */
template <typename T>
void insitra_pos_forward(T *enc, const T *pos, int64_t B, int64_t Tn, int64_t C, cudaStream_t s);

/* out (N,C) = x (N,C) + b (C) + res (N,C), summed in fp32; out may be x */
template <typename T>
void insitra_bias_residual(T *out, const T *x, const T *b, const T *res, int64_t N, int64_t C, cudaStream_t s);

/* out (N,C) = LN(x) * w + b; mean, rstd (N) in fp32 for backward */
template <typename T>
void insitra_layernorm_forward(T *out, float *mean, float *rstd, const T *x, const T *w,
                               const T *b, int64_t N, int64_t C, cudaStream_t s);
/* dx (N,C) (+)= d LN / dx; accumulate = false overwrites dx */
template <typename T>
void insitra_layernorm_backward_dx(T *dx, const T *dy, const T *x, const float *mean,
                                   const float *rstd, const T *w, int64_t N, int64_t C,
                                   bool accumulate, cudaStream_t s);
/* Parameter gradients, in fp32, added to: dw[c] += sum_r dy*xhat, db[c] += sum_r dy
 * (layernorm: x, mean, rstd given), or only db[c] += sum_r dy[r,c] (a bias,
 * or the positions' gradient with rows = B). partial: splits x 2 x cols floats. */
template <typename T>
void insitra_column_grads(float *dw, float *db, const T *dy, const T *x, const float *mean,
                          const float *rstd, int64_t rows, int64_t cols, float *partial,
                          cudaStream_t s);

/* out = gelu_tanh(in); dinout = dinout * gelu_tanh'(in) */
template <typename T>
void insitra_gelu_forward(T *out, const T *in, int64_t n, cudaStream_t s);
template <typename T>
void insitra_gelu_backward(T *dinout, const T *in, int64_t n, cudaStream_t s);

/* dst (B,H,T,hd) <- src rows (B,T) of stride row_stride, channels [h*hd, (h+1)*hd) */
template <typename T>
void insitra_heads_split(T *dst, const T *src, int64_t row_stride, int64_t B, int64_t Tn,
                         int64_t H, int64_t hd, cudaStream_t s);
/* dst rows (B,T) of stride row_stride <- src (B,H,T,hd) */
template <typename T>
void insitra_heads_merge(T *dst, int64_t row_stride, const T *src, int64_t B, int64_t Tn,
                         int64_t H, int64_t hd, cudaStream_t s);
/* att (rows, Tn) = softmax over each row in place; row r is query r % Tn */
template <typename T>
void insitra_softmax_forward(T *att, int64_t rows, int64_t Tn, bool causal, cudaStream_t s);
/* datt (rows, Tn) <- scale * p * (datt - sum_j p_j datt_j), in place */
template <typename T>
void insitra_softmax_backward(T *datt, const T *att, int64_t rows, int64_t Tn, float scale,
                              cudaStream_t s);

/* out (N,F) += b (F) */
template <typename T>
void insitra_bias_add_f32(float *out, const T *b, int64_t N, int64_t F, cudaStream_t s);
/* dout = scale * 2 (out - y) / n, in T */
template <typename T>
void insitra_mse_backward(T *dout, const float *out, const float *y, int64_t n, float scale,
                          cudaStream_t s);

/* ---- reductions ---- */
/* *dst (+)= scale * sum_i (a_i - b_i)^2 (b may be NULL); partial holds
 * INSITRA_GPU_REDUCE_BLOCKS doubles. */
void insitra_sum_squares(double *dst, const float *a, const float *b, int64_t n, double scale,
                         bool accumulate, double *partial, cudaStream_t s);

/* *dst += sum over the segments' gradient runs of g^2, segment by segment
 * (partial: n_segs * INSITRA_GPU_SEGMENT_BLOCKS doubles). */
void insitra_segment_squares(double *dst, const float *g, const insitra_update_segment *segs, int64_t n_segs,
                             double *partial, cudaStream_t s);
/* v[j] = sum over r in rank order of gathered[r * n + j], n <= 32 */
void insitra_sum_ranks(double *v, const double *gathered, int ranks, int n, cudaStream_t s);

/* ---- optimizer ---- */
/* AdamW over the segments (lib/backend.h): p in fp32, and when copy is not
 * NULL the same values in the compute type. The clip factor comes from stats
 * (global loss sum, global gradient sum of squares) and sc; a non-finite
 * loss or norm leaves every parameter and moment as it was. */
template <typename T>
void insitra_adamw(const insitra_update_segment *segs, int64_t n_segs, int64_t max_count, float *p, T *copy,
                   const float *g, float *m, float *v, const insitra_step_scalars *sc, const double *stats,
                   cudaStream_t s);

/* ---- ZeRO shards (lib/shard.h, insitra_shard_copy in lib/backend.h) ---- */
/* flat -> packed (ranks, stride): the slots of ranks first_rank.., padding zeroed; unpack back */
template <typename T>
void insitra_shard_pack(T *packed, const T *flat, const insitra_shard_copy *copies, int64_t n, int64_t stride,
                        int64_t first_rank, int64_t ranks, int64_t max_numel, cudaStream_t s);
template <typename T>
void insitra_shard_unpack(T *flat, const T *packed, const insitra_shard_copy *copies, int64_t n, int64_t stride,
                          int64_t first_rank, int64_t ranks, int64_t max_numel, cudaStream_t s);

#endif /* INSITRA_CUDA_KERNELS_CUH */
