/*
 * The CUDA backend: one device per rank (from the node-local rank), the
 * kernels of kernels.cu and cuBLASLt GEMMs (matmul.cu) on a compute stream,
 * NCCL collectives on a second stream. A collective forks the comm stream
 * from the compute stream's current point, so it runs under the compute that
 * follows; waiting on it joins the compute stream back behind its event.
 * Steps can be recorded as a CUDA graph (NCCL calls included) and replayed.
 *
 * Activations and working parameters are in the compute type T (fp32, or
 * bf16 with precision = bf16), parameter gradients, statistics and outputs in
 * fp32; every reduction has a fixed grid and order, so reruns are
 * bit-identical.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"
#include "attention_block.cuh"
#ifdef INSITRA_HAVE_CUDNN
#include "attention_cudnn.cuh"
#endif
#include "cuda_util.h"
#include "kernels.cuh"
#include "matmul.cuh"

extern "C" {
#include "../backend.h"
#include "../gpu_sizes.h"
}

namespace {

enum { kEvents = 16 }; /* collectives in flight at once, at most */

struct cuda_backend {
    insitra_backend base;
    int device;
    bool bf16;
    cudaDataType_t ab;
    cudaStream_t cs, ns;          /* compute, communication */
    insitra_matmul_ctx mm;
    bool fused_gelu;              /* GELU and its derivative in the GEMM epilogues (probed) */
    void *workspace;
    int64_t workspace_bytes;
    insitra_gpu_workspace ws;     /* offsets into workspace (lib/gpu_sizes.c) */
    cudaEvent_t ev_fork, ev[kEvents];
    cudaEvent_t ev_join;          /* orders the compute stream with a caller's stream */
    int next_event;
    cudaGraphExec_t exec;
    unsigned long long *nonfinite_dev, *nonfinite_host;
#ifdef INSITRA_HAVE_CUDNN
    /* cuDNN's SDPA for the reserved shape, when INSITRA_GPU_ATTENTION asks
     * for it and cuDNN takes the shape (attention_cudnn.cuh); else NULL and
     * the fused kernels run */
    insitra_cudnn_attention *sdpa;
    insitra_attention_shape sdpa_shape;
    char *sdpa_ws; /* the workspace region it was made with */
#endif
};

cuda_backend *cu(insitra_backend *be) { return (cuda_backend *)be; }

template <typename P> P *ws_at(cuda_backend *c, int64_t offset) { return (P *)((char *)c->workspace + offset); }

/* ---- memory ---- */

insitra_status cuda_alloc(insitra_backend *be, size_t bytes, const char *what, void **p)
{
    CUDA_TRY(cudaSetDevice(cu(be)->device));
    if (cudaMalloc(p, bytes ? bytes : 256) != cudaSuccess) {
        cudaGetLastError();
        *p = nullptr;
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "GPU: cannot allocate %.2f GiB for %s; lower the model size, "
                                 "training.micro_batch_size or data.capacity, or raise parallel.zero_stage",
                                 (double)bytes / 1073741824.0, what);
    }
    CUDA_TRY(cudaMemset(*p, 0, bytes ? bytes : 256));
    return INSITRA_STATUS_OK;
}

void cuda_release(insitra_backend *be, void *p)
{
    (void)be;
    if (p) cudaFree(p);
}

insitra_status cuda_upload(insitra_backend *be, void *dst, const void *src, size_t bytes)
{
    /* pageable host memory: the call returns once src is staged */
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu(be)->cs));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_download(insitra_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *c = cu(be);
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->cs));
    CUDA_TRY(cudaStreamSynchronize(c->cs));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_copy(insitra_backend *be, void *dst, const void *src, size_t bytes)
{
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cu(be)->cs));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_fill_zero(insitra_backend *be, void *dst, size_t bytes)
{
    CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, cu(be)->cs));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_synchronize(insitra_backend *be)
{
    cuda_backend *c = cu(be);
    CUDA_TRY(cudaStreamSynchronize(c->cs));
    CUDA_TRY(cudaStreamSynchronize(c->ns));
    return INSITRA_STATUS_OK;
}

/* The MLP's GELU rides in the GEMM epilogues when cuBLASLt has algorithms
 * for both directions at these shapes (the same tanh form as our kernels). */
bool probe_fused_gelu(cuda_backend *c, const insitra_model_dims *d, int64_t B)
{
    /* the MLP's fc at this rank's shape: the tp group's tokens, this rank's 4C / tp columns */
    const int64_t C = d->d_model, N = B * insitra_model_dims_attn_tokens(d), W = 4 * C / insitra_model_dims_tp(d);
    if (N == 0 || d->n_layers == 0) return false;
    void *any = c->workspace; /* 256-byte aligned stand-ins: nothing runs */
    insitra_gemm f{};
    f.ta = true; f.m = W; f.n = N; f.k = C;
    f.a = any; f.lda = C; f.b = any; f.ldb = C;
    f.d = any; f.ldd = W; f.alpha = 1.f; f.batch = 1;
    f.bias = any; f.gelu = INSITRA_GELU_FORWARD; f.aux = any;
    insitra_gemm b{};
    b.m = W; b.n = N; b.k = C;
    b.a = any; b.lda = W; b.b = any; b.ldb = C;
    b.d = any; b.ldd = W; b.alpha = 1.f; b.batch = 1;
    b.gelu = INSITRA_GELU_BACKWARD; b.aux = any;
    return insitra_matmul_supported(&c->mm, &f, c->ab, c->ab) && insitra_matmul_supported(&c->mm, &b, c->ab, c->ab);
}

#ifdef INSITRA_HAVE_CUDNN
/* cuDNN runs a layer only at the shape it was planned for (field by field:
 * the struct's padding bytes are not part of the shape). */
bool same_shape(const insitra_attention_shape &a, const insitra_attention_shape &b)
{
    return a.B == b.B && a.T == b.T && a.C == b.C && a.H == b.H && a.causal == b.causal && a.bf16 == b.bf16;
}

insitra_cudnn_attention *sdpa_for(cuda_backend *c, const insitra_attention_shape *sh)
{
    return c->sdpa && same_shape(c->sdpa_shape, *sh) ? c->sdpa : nullptr;
}

/* cuDNN's SDPA where insitra_gpu_sdpa_choice (lib/gpu_sizes.h) picks it, in
 * the workspace region the planner counts. A shape or a cuDNN that cuDNN
 * refuses falls back to the fused kernels, said once on stderr. */
insitra_status reserve_cudnn_attention(cuda_backend *c, const insitra_model_dims *d, int64_t B,
                                       const insitra_attention_shape *sh)
{
    const char *want = getenv("INSITRA_GPU_ATTENTION");
    if (want && *want && strcmp(want, "fused") && strcmp(want, "auto") && strcmp(want, "cudnn") &&
        strcmp(want, "cudnn-fast"))
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "INSITRA_GPU_ATTENTION=%s: expected auto, fused, cudnn or cudnn-fast", want);
    const insitra_gpu_sdpa mode = insitra_gpu_sdpa_choice(d, B, 2);
    if (c->sdpa && (mode == INSITRA_GPU_SDPA_NONE || !same_shape(c->sdpa_shape, *sh) ||
                    ws_at<char>(c, c->ws.sdpa) != c->sdpa_ws)) {
        insitra_cudnn_attention_free(c->sdpa);
        c->sdpa = nullptr;
    }
    if (mode == INSITRA_GPU_SDPA_NONE || c->sdpa) return INSITRA_STATUS_OK;
    static bool said;
    c->sdpa_ws = ws_at<char>(c, c->ws.sdpa);
    if (insitra_cudnn_attention_create(&c->sdpa, sh, mode == INSITRA_GPU_SDPA_DETERMINISTIC, c->sdpa_ws,
                                       c->ws.sdpa_bytes) != INSITRA_STATUS_OK) {
        if (!said) fprintf(stderr, "insitra: cuDNN attention not taken (%s); the fused kernels run\n",
                           insitra_last_error());
        said = true;
        insitra_error_clear();
        return INSITRA_STATUS_OK;
    }
    c->sdpa_shape = *sh;
    if (!said) fprintf(stderr, "insitra: attention: %s\n", insitra_cudnn_attention_describe(c->sdpa));
    said = true;
    return INSITRA_STATUS_OK;
}

#endif

insitra_status cuda_reserve(insitra_backend *be, const insitra_model_dims *d, int64_t B)
{
    cuda_backend *c = cu(be);
    const insitra_gpu_workspace w = insitra_gpu_workspace_for(d, B, be->act_size);
    if (w.total > c->workspace_bytes) {
        if (c->workspace) cudaFree(c->workspace);
        c->workspace = nullptr;
        c->workspace_bytes = 0;
        INSITRA_CHECK(cuda_alloc(be, (size_t)w.total, "the kernels' workspace", &c->workspace));
        c->workspace_bytes = w.total;
    }
    /* a head size the attention kernels cannot run is a configuration error, found here */
    const bool ring = d->cp > 1; /* the attention of lib/attention_ring.c, on blocks of a rank's tokens */
    /* the attention a rank runs: the tokens it sees (T / cp), its heads and their width (tp) */
    const int64_t Ta = insitra_model_dims_attn_tokens(d), Hl = insitra_model_dims_heads(d);
    const int64_t Cl = d->d_model / insitra_model_dims_tp(d);
    if (ring) {
        const insitra_attention_block_shape sh{B, Ta, Ta, Cl, Hl, 0, 0, false, c->bf16};
        INSITRA_CHECK(insitra_cuda_attention_block_check(&sh));
    } else if (insitra_gpu_attention_fused(be->act_size)) {
        const insitra_attention_shape sh{B, Ta, Cl, Hl, false, c->bf16};
        INSITRA_CHECK(insitra_fused_attention_check(&sh));
    }
    c->ws = w;
#ifdef INSITRA_HAVE_CUDNN
    if (!ring && insitra_gpu_attention_fused(be->act_size)) {
        const insitra_attention_shape run{B, Ta, Cl, Hl, d->causal, c->bf16};
        INSITRA_CHECK(reserve_cudnn_attention(c, d, B, &run));
    }
#endif
    c->mm.workspace = ws_at<char>(c, w.gemm);
    c->mm.workspace_bytes = (size_t)INSITRA_GPU_GEMM_WORKSPACE;
    c->fused_gelu = probe_fused_gelu(c, d, B);
    return INSITRA_STATUS_OK;
}

bool cuda_is_device_pointer(insitra_backend *be, const void *ptr)
{
    (void)be;
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

insitra_status cuda_first_nonfinite(insitra_backend *be, const float *a, int64_t n, int64_t *index)
{
    cuda_backend *c = cu(be);
    *c->nonfinite_host = (unsigned long long)n;
    CUDA_TRY(cudaMemcpyAsync(c->nonfinite_dev, c->nonfinite_host, sizeof *c->nonfinite_host,
                             cudaMemcpyHostToDevice, c->cs));
    insitra_find_nonfinite(a, n, c->nonfinite_dev, c->cs);
    LAUNCH_TRY();
    CUDA_TRY(cudaMemcpyAsync(c->nonfinite_host, c->nonfinite_dev, sizeof *c->nonfinite_host,
                             cudaMemcpyDeviceToHost, c->cs));
    CUDA_TRY(cudaStreamSynchronize(c->cs));
    *index = *c->nonfinite_host < (unsigned long long)n ? (int64_t)*c->nonfinite_host : -1;
    return INSITRA_STATUS_OK;
}

/* ---- the layers, in the compute type T ---- */

template <typename T>
struct ops {
    cuda_backend *c;
    cudaStream_t s;

    insitra_status gemm(const insitra_gemm &g, cudaDataType_t d_type)
    {
        return insitra_matmul(&c->mm, &g, c->ab, d_type, s);
    }

    /* out (N,OC) = inp (N,IC) W^T (+ bias) (+ residual); with gelu_pre, out =
     * gelu(inp W^T + bias) and gelu_pre the argument */
    insitra_status linear_forward(void *out, void *gelu_pre, const void *inp, const void *w, const void *bias,
                                  const void *residual, int64_t N, int64_t IC, int64_t OC, cudaDataType_t d_type)
    {
        const bool fuse = gelu_pre && c->fused_gelu;
        insitra_gemm g{};
        g.ta = true; g.tb = false;
        g.m = OC; g.n = N; g.k = IC;
        g.a = w; g.lda = IC;
        g.b = inp; g.ldb = IC;
        g.d = gelu_pre && !fuse ? gelu_pre : out; g.ldd = OC;
        g.c = residual;
        g.alpha = 1.f; g.beta = residual ? 1.f : 0.f;
        g.bias = bias;
        g.batch = 1;
        g.gelu = fuse ? INSITRA_GELU_FORWARD : INSITRA_GELU_NONE;
        g.aux = fuse ? gelu_pre : nullptr;
        INSITRA_CHECK(gemm(g, d_type));
        if (gelu_pre && !fuse) {
            insitra_gelu_forward<T>((T *)out, (const T *)gelu_pre, N * OC, s);
            LAUNCH_TRY();
        }
        return INSITRA_STATUS_OK;
    }

    /* dinp (N,IC) = dout W (when dinp), times gelu'(gelu_pre) when given;
     * dW (OC,IC) += dout^T inp; db (OC) += sum dout */
    insitra_status linear_backward(void *dinp, float *dw, float *db, const void *dout, const void *gelu_pre,
                                   const void *inp, const void *w, int64_t N, int64_t IC, int64_t OC)
    {
        if (dinp) {
            const bool fuse = gelu_pre && c->fused_gelu;
            insitra_gemm g{};
            g.m = IC; g.n = N; g.k = OC;
            g.a = w; g.lda = IC;
            g.b = dout; g.ldb = OC;
            g.d = dinp; g.ldd = IC;
            g.alpha = 1.f; g.beta = 0.f; g.batch = 1;
            g.gelu = fuse ? INSITRA_GELU_BACKWARD : INSITRA_GELU_NONE;
            g.aux = fuse ? const_cast<void *>(gelu_pre) : nullptr;
            INSITRA_CHECK(gemm(g, c->ab));
            if (gelu_pre && !fuse) {
                insitra_gelu_backward<T>((T *)dinp, (const T *)gelu_pre, N * IC, s);
                LAUNCH_TRY();
            }
        }
        insitra_gemm g{};
        g.ta = false; g.tb = true;
        g.m = IC; g.n = OC; g.k = N;
        g.a = inp; g.lda = IC;
        g.b = dout; g.ldb = OC;
        g.d = dw; g.ldd = IC;
        g.alpha = 1.f; g.beta = 1.f; g.batch = 1;
        INSITRA_CHECK(gemm(g, CUDA_R_32F));
        if (db) {
            insitra_column_grads<T>(nullptr, db, (const T *)dout, nullptr, nullptr, nullptr, N, OC,
                                    ws_at<float>(c, c->ws.col_partial), s);
            LAUNCH_TRY();
        }
        return INSITRA_STATUS_OK;
    }

    /* Batched over B*H heads of (T, hd) row-major, as cuBLASLt column-major calls. */
    insitra_status head_gemm(bool ta, bool tb, int64_t mm, int64_t nn, int64_t kk, const void *a, int64_t lda,
                             int64_t sa, const void *b, int64_t ldb, int64_t sb, void *d, int64_t ldd, int64_t sd,
                             float alpha, int64_t batch)
    {
        insitra_gemm g{};
        g.ta = ta; g.tb = tb;
        g.m = mm; g.n = nn; g.k = kk;
        g.a = a; g.lda = lda; g.stride_a = sa;
        g.b = b; g.ldb = ldb; g.stride_b = sb;
        g.d = d; g.ldd = ldd; g.stride_d = sd;
        g.alpha = alpha; g.beta = 0.f; g.batch = batch;
        return gemm(g, c->ab);
    }

    /* qkvr (3, B,H,T,hd) <- qkv (B,T,3C) */
    void split_heads(T *qkvr, const T *qkv, int64_t B, int64_t Tn, int64_t C, int64_t H)
    {
        const int64_t N = B * Tn, hd = C / H;
        for (int part = 0; part < 3; part++)
            insitra_heads_split<T>(qkvr + part * N * C, qkv + part * C, 3 * C, B, Tn, H, hd, s);
    }

    /* atty (B,T,C) = softmax(q k^T / sqrt(hd)) v per head; att (B,H,T,T) keeps the probabilities */
    insitra_status attention_forward(T *atty, T *att, const T *qkv, int64_t B, int64_t Tn, int64_t C, int64_t H,
                                     bool causal)
    {
        const int64_t hd = C / H, N = B * Tn;
        T *qkvr = ws_at<T>(c, c->ws.qkvr), *yr = ws_at<T>(c, c->ws.yr);
        T *q = qkvr, *k = qkvr + N * C, *v = qkvr + 2 * N * C;
        split_heads(qkvr, qkv, B, Tn, C, H);
        LAUNCH_TRY();
        const float scale = 1.f / sqrtf((float)hd);
        /* att (T_q, T_k) per head: column-major (T_k x T_q) = K Q^T */
        INSITRA_CHECK(head_gemm(true, false, Tn, Tn, hd, k, hd, Tn * hd, q, hd, Tn * hd, att, Tn, Tn * Tn, scale,
                                B * H));
        insitra_softmax_forward<T>(att, B * H * Tn, Tn, causal, s);
        LAUNCH_TRY();
        /* yr (T_q, hd) = att v: column-major (hd x T_q) = V att^T */
        INSITRA_CHECK(head_gemm(false, false, hd, Tn, Tn, v, hd, Tn * hd, att, Tn, Tn * Tn, yr, hd, Tn * hd, 1.f,
                                B * H));
        insitra_heads_merge<T>(atty, C, yr, B, Tn, H, hd, s);
        LAUNCH_TRY();
        return INSITRA_STATUS_OK;
    }

    /* dqkv (B,T,3C) from datty (B,T,C) */
    insitra_status attention_backward(T *dqkv, const T *datty, const T *qkv, const T *att, int64_t B, int64_t Tn,
                                      int64_t C, int64_t H)
    {
        const int64_t hd = C / H, N = B * Tn;
        T *qkvr = ws_at<T>(c, c->ws.qkvr);
        const T *q = qkvr, *k = qkvr + N * C, *v = qkvr + 2 * N * C;
        T *dyr = ws_at<T>(c, c->ws.dyr), *datt = ws_at<T>(c, c->ws.datt), *dq = ws_at<T>(c, c->ws.dqkvr);
        T *dk = dq + N * C, *dv = dq + 2 * N * C;
        split_heads(qkvr, qkv, B, Tn, C, H); /* the workspace is shared by every block */
        insitra_heads_split<T>(dyr, datty, C, B, Tn, H, hd, s);
        LAUNCH_TRY();
        /* datt (T_q, T_k) = dy v^T */
        INSITRA_CHECK(head_gemm(true, false, Tn, Tn, hd, v, hd, Tn * hd, dyr, hd, Tn * hd, datt, Tn, Tn * Tn, 1.f,
                                B * H));
        /* dv (T_k, hd) = att^T dy */
        INSITRA_CHECK(head_gemm(false, true, hd, Tn, Tn, dyr, hd, Tn * hd, att, Tn, Tn * Tn, dv, hd, Tn * hd, 1.f,
                                B * H));
        insitra_softmax_backward<T>(datt, att, B * H * Tn, Tn, 1.f / sqrtf((float)hd), s);
        LAUNCH_TRY();
        /* dq (T_q, hd) = datt k */
        INSITRA_CHECK(head_gemm(false, false, hd, Tn, Tn, k, hd, Tn * hd, datt, Tn, Tn * Tn, dq, hd, Tn * hd, 1.f,
                                B * H));
        /* dk (T_k, hd) = datt^T q */
        INSITRA_CHECK(head_gemm(false, true, hd, Tn, Tn, q, hd, Tn * hd, datt, Tn, Tn * Tn, dk, hd, Tn * hd, 1.f,
                                B * H));
        for (int part = 0; part < 3; part++)
            insitra_heads_merge<T>(dqkv + part * C, 3 * C, dq + part * N * C, B, Tn, H, hd, s);
        LAUNCH_TRY();
        return INSITRA_STATUS_OK;
    }
};

/* Runs f with ops<float> or ops<bf16> as the backend computes. */
template <typename F> insitra_status with_ops(insitra_backend *be, F f)
{
    cuda_backend *c = cu(be);
    if (c->bf16) return f(ops<bf16>{c, c->cs});
    return f(ops<float>{c, c->cs});
}


insitra_status cuda_gather_batch(insitra_backend *be, float *x, float *y, const float *store_x, const float *store_y,
                                 const int64_t *slots, int64_t n, int64_t xs, int64_t ys)
{
    insitra_gather_batch<float>(x, y, store_x, store_y, slots, n, xs, ys, cu(be)->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_normalize_forward(insitra_backend *be, void *x_hat, float *y, const float *x,
                                      const insitra_feature_norm *fm, int64_t N)
{
    cuda_backend *c = cu(be);
    if (c->bf16) insitra_normalize_forward<bf16>((bf16 *)x_hat, y, x, *fm, N, c->cs);
    else insitra_normalize_forward<float>((float *)x_hat, y, x, *fm, N, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_normalize_inverse(insitra_backend *be, float *out, const float *x,
                                      const insitra_feature_norm *fm, int64_t N)
{
    insitra_normalize_inverse(out, x, *fm, N, cu(be)->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_to_act(insitra_backend *be, void *out, const float *in, int64_t n)
{
    cuda_backend *c = cu(be);
    if (!c->bf16) return cuda_copy(be, out, in, (size_t)n * sizeof(float));
    insitra_convert<bf16, float>((bf16 *)out, in, n, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_linear_forward(insitra_backend *be, void *out, void *gelu_pre, const void *inp, const void *w,
                                   const void *b, const void *residual, int64_t N, int64_t IC, int64_t OC)
{
    return with_ops(be, [&](auto o) {
        return o.linear_forward(out, gelu_pre, inp, w, b, residual, N, IC, OC, cu(be)->ab);
    });
}

insitra_status cuda_linear_backward(insitra_backend *be, void *dinp, float *dw, float *db, const void *dout,
                                    const void *gelu_pre, const void *inp, const void *w, int64_t N, int64_t IC,
                                    int64_t OC)
{
    return with_ops(be, [&](auto o) { return o.linear_backward(dinp, dw, db, dout, gelu_pre, inp, w, N, IC, OC); });
}

insitra_status cuda_output_forward(insitra_backend *be, float *out, const void *inp, const void *w, const void *b,
                                   int64_t N, int64_t C, int64_t F)
{
    cuda_backend *c = cu(be);
    INSITRA_CHECK(with_ops(be, [&](auto o) {
        return o.linear_forward(out, nullptr, inp, w, nullptr, nullptr, N, C, F, CUDA_R_32F);
    }));
    if (c->bf16) insitra_bias_add_f32<bf16>(out, (const bf16 *)b, N, F, c->cs);
    else insitra_bias_add_f32<float>(out, (const float *)b, N, F, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_pos_forward(insitra_backend *be, void *out, const void *pos, int64_t B, int64_t T, int64_t C)
{
    cuda_backend *c = cu(be);
    if (c->bf16) insitra_pos_forward<bf16>((bf16 *)out, (const bf16 *)pos, B, T, C, c->cs);
    else insitra_pos_forward<float>((float *)out, (const float *)pos, B, T, C, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_pos_backward(insitra_backend *be, float *dpos, const void *dout, int64_t B, int64_t T, int64_t C)
{
    cuda_backend *c = cu(be);
    /* dpos (T*C) += sum over the B samples */
    float *partial = ws_at<float>(c, c->ws.col_partial);
    if (c->bf16)
        insitra_column_grads<bf16>(nullptr, dpos, (const bf16 *)dout, nullptr, nullptr, nullptr, B, T * C, partial, c->cs);
    else
        insitra_column_grads<float>(nullptr, dpos, (const float *)dout, nullptr, nullptr, nullptr, B, T * C, partial,
                                    c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* ---- tensor parallelism ---- */

insitra_status cuda_bias_residual_forward(insitra_backend *be, void *out, const void *inp, const void *b,
                                          const void *residual, int64_t N, int64_t C)
{
    cuda_backend *c = cu(be);
    if (c->bf16)
        insitra_bias_residual<bf16>((bf16 *)out, (const bf16 *)inp, (const bf16 *)b, (const bf16 *)residual, N, C,
                                    c->cs);
    else
        insitra_bias_residual<float>((float *)out, (const float *)inp, (const float *)b, (const float *)residual, N,
                                     C, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* db (C) += column sums of dout (N,C): pos_backward's reduction with one token per sample */
insitra_status cuda_bias_backward(insitra_backend *be, float *db, const void *dout, int64_t N, int64_t C)
{
    return cuda_pos_backward(be, db, dout, N, 1, C);
}

/* out (Q,P,n) = in (P,Q,n): P strided copies, one per p */
insitra_status cuda_block_transpose(insitra_backend *be, void *out, const void *in, int64_t P, int64_t Q, int64_t n,
                                    insitra_dtype t)
{
    cuda_backend *c = cu(be);
    const size_t row = (size_t)n * insitra_dtype_size(t);
    for (int64_t p = 0; p < P; p++)
        CUDA_TRY(cudaMemcpy2DAsync((char *)out + (size_t)p * row, (size_t)P * row,
                                   (const char *)in + (size_t)(p * Q) * row, row, row, (size_t)Q,
                                   cudaMemcpyDeviceToDevice, c->cs));
    return INSITRA_STATUS_OK;
}


insitra_status cuda_layernorm_forward(insitra_backend *be, void *out, float *mean, float *rstd, const void *inp,
                                      const void *w, const void *b, int64_t N, int64_t C)
{
    cuda_backend *c = cu(be);
    if (c->bf16)
        insitra_layernorm_forward<bf16>((bf16 *)out, mean, rstd, (const bf16 *)inp, (const bf16 *)w,
                                        (const bf16 *)b, N, C, c->cs);
    else
        insitra_layernorm_forward<float>((float *)out, mean, rstd, (const float *)inp, (const float *)w,
                                         (const float *)b, N, C, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_layernorm_backward(insitra_backend *be, void *dinp, float *dw, float *db, const void *dout,
                                       const void *inp, const float *mean, const float *rstd, const void *w,
                                       int64_t N, int64_t C, bool accumulate)
{
    cuda_backend *c = cu(be);
    float *partial = ws_at<float>(c, c->ws.col_partial);
    if (c->bf16) {
        insitra_layernorm_backward_dx<bf16>((bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp, mean, rstd,
                                            (const bf16 *)w, N, C, accumulate, c->cs);
        insitra_column_grads<bf16>(dw, db, (const bf16 *)dout, (const bf16 *)inp, mean, rstd, N, C, partial, c->cs);
    } else {
        insitra_layernorm_backward_dx<float>((float *)dinp, (const float *)dout, (const float *)inp, mean, rstd,
                                             (const float *)w, N, C, accumulate, c->cs);
        insitra_column_grads<float>(dw, db, (const float *)dout, (const float *)inp, mean, rstd, N, C, partial,
                                    c->cs);
    }
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_attention_forward(insitra_backend *be, void *out, void *state, const void *qkv, int64_t B,
                                      int64_t T, int64_t C, int64_t H, bool causal)
{
    cuda_backend *c = cu(be);
    if (insitra_gpu_attention_fused(be->act_size)) {
        /* state: the log-sum-exp of every row (B,H,T) */
        const insitra_attention_shape sh{B, T, C, H, causal, c->bf16};
#ifdef INSITRA_HAVE_CUDNN
        if (insitra_cudnn_attention *a = sdpa_for(c, &sh))
            return insitra_cudnn_attention_forward(a, out, (float *)state, qkv, c->cs);
#endif
        return insitra_fused_attention_forward(out, (float *)state, qkv, &sh, c->cs);
    }
    /* materialised (fp32): state holds the probabilities (B,H,T,T) */
    return ops<float>{c, c->cs}.attention_forward((float *)out, (float *)state, (const float *)qkv, B, T, C, H,
                                                  causal);
}

insitra_status cuda_attention_backward(insitra_backend *be, void *dqkv, const void *dout, const void *qkv,
                                       const void *out, const void *state, int64_t B, int64_t T, int64_t C,
                                       int64_t H, bool causal)
{
    cuda_backend *c = cu(be);
    if (insitra_gpu_attention_fused(be->act_size)) {
        const insitra_attention_shape sh{B, T, C, H, causal, c->bf16};
#ifdef INSITRA_HAVE_CUDNN
        if (insitra_cudnn_attention *a = sdpa_for(c, &sh))
            return insitra_cudnn_attention_backward(a, dqkv, dout, qkv, out, (const float *)state, c->cs);
#endif
        return insitra_fused_attention_backward(dqkv, ws_at<float>(c, c->ws.delta), dout, qkv, out,
                                                (const float *)state, &sh, c->cs);
    }
    /* materialised (fp32): the stored probabilities are zero above the diagonal already */
    return ops<float>{c, c->cs}.attention_backward((float *)dqkv, (const float *)dout, (const float *)qkv,
                                                   (const float *)state, B, T, C, H);
}

insitra_status cuda_mse_backward(insitra_backend *be, void *dout, const float *out, const float *y, int64_t n,
                                 float scale)
{
    cuda_backend *c = cu(be);
    if (c->bf16) insitra_mse_backward<bf16>((bf16 *)dout, out, y, n, scale, c->cs);
    else insitra_mse_backward<float>((float *)dout, out, y, n, scale, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_sum_squares(insitra_backend *be, double *acc, const float *a, const float *b, int64_t n,
                                double scale)
{
    cuda_backend *c = cu(be);
    insitra_sum_squares(acc, a, b, n, scale, true, ws_at<double>(c, c->ws.reduce_partial), c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* ---- optimizer and shards ---- */

insitra_status cuda_adamw(insitra_backend *be, const insitra_update_segment *segs, int64_t n_segs, int64_t max_count,
                          float *params, void *copy, const float *grads, float *m, float *v,
                          const insitra_step_scalars *sc, const double *stats)
{
    cuda_backend *c = cu(be);
    if (c->bf16)
        insitra_adamw<bf16>(segs, n_segs, max_count, params, (bf16 *)copy, grads, m, v, sc, stats, c->cs);
    else
        insitra_adamw<float>(segs, n_segs, max_count, params, (float *)copy, grads, m, v, sc, stats, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_grad_sum_squares(insitra_backend *be, double *acc, const float *grads,
                                     const insitra_update_segment *segs, int64_t n_segs, int64_t max_count)
{
    (void)max_count;
    cuda_backend *c = cu(be);
    insitra_segment_squares(acc, grads, segs, n_segs, ws_at<double>(c, c->ws.segment_partial), c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_shard_pack(insitra_backend *be, void *packed, const void *flat, const insitra_shard_copy *copies,
                               int64_t n, int64_t stride, int64_t first_rank, int64_t ranks, int64_t max_numel,
                               insitra_dtype t)
{
    cuda_backend *c = cu(be);
    if (t == INSITRA_DTYPE_BF16)
        insitra_shard_pack<bf16>((bf16 *)packed, (const bf16 *)flat, copies, n, stride, first_rank, ranks, max_numel,
                                 c->cs);
    else
        insitra_shard_pack<float>((float *)packed, (const float *)flat, copies, n, stride, first_rank, ranks,
                                  max_numel, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_shard_unpack(insitra_backend *be, void *flat, const void *packed, const insitra_shard_copy *copies,
                                 int64_t n, int64_t stride, int64_t first_rank, int64_t ranks, int64_t max_numel,
                                 insitra_dtype t)
{
    cuda_backend *c = cu(be);
    if (t == INSITRA_DTYPE_BF16)
        insitra_shard_unpack<bf16>((bf16 *)flat, (const bf16 *)packed, copies, n, stride, first_rank, ranks,
                                   max_numel, c->cs);
    else
        insitra_shard_unpack<float>((float *)flat, (const float *)packed, copies, n, stride, first_rank, ranks,
                                    max_numel, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status cuda_add(insitra_backend *be, float *dst, const float *src, int64_t n)
{
    insitra_add_f32(dst, src, n, cu(be)->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* ---- context parallelism (lib/attention_ring.c): attention_block.cuh's kernels ---- */

insitra_status cuda_attention_kv_pack(insitra_backend *be, void *kv, const void *qkv, int64_t N, int64_t C)
{
    return insitra_cuda_attention_kv_pack(kv, qkv, N, C, be->act_size, cu(be)->cs);
}

insitra_status cuda_attention_block_forward(insitra_backend *be, void *out, float *m, float *l,
                                            const void *qkv, const void *kv, int64_t B, int64_t Tq,
                                            int64_t Tk, int64_t C, int64_t H, int64_t q_pos, int64_t k_pos,
                                            bool causal, bool first)
{
    cuda_backend *c = cu(be);
    const insitra_attention_block_shape sh{B, Tq, Tk, C, H, q_pos, k_pos, causal, c->bf16};
    return insitra_cuda_attention_block_forward(out, m, l, qkv, kv, &sh, first, c->cs);
}

insitra_status cuda_attention_block_finish(insitra_backend *be, void *out, float *lse, const float *m,
                                           const float *l, int64_t B, int64_t Tq, int64_t C, int64_t H)
{
    cuda_backend *c = cu(be);
    return insitra_cuda_attention_block_finish(out, lse, m, l, B, Tq, C, H, c->bf16, c->cs);
}

insitra_status cuda_attention_block_backward(insitra_backend *be, void *dqkv, float *dkv, const void *dout,
                                             const void *qkv, const void *kv, const void *out,
                                             const float *lse, int64_t B, int64_t Tq, int64_t Tk, int64_t C,
                                             int64_t H, int64_t q_pos, int64_t k_pos, bool causal)
{
    cuda_backend *c = cu(be);
    const insitra_attention_block_shape sh{B, Tq, Tk, C, H, q_pos, k_pos, causal, c->bf16};
    return insitra_cuda_attention_block_backward(dqkv, dkv, dout, qkv, kv, out, lse, &sh, c->cs);
}

insitra_status cuda_attention_block_done(insitra_backend *be, void *dqkv, float *dkv, int64_t N, int64_t C,
                                         int64_t H)
{
    cuda_backend *c = cu(be);
    return insitra_cuda_attention_block_done(dqkv, dkv, N, C, H, c->bf16, c->cs);
}

} // namespace

/* ---- collectives: NCCL on the comm stream ---- */

struct insitra_group {
    ncclComm_t nccl;
    int size, rank;
    double *gathered; /* (size, 4) for the ordered sums */
};

namespace {

insitra_status cuda_group_create(insitra_backend *be, const insitra_comm *comm, insitra_group **out)
{
    cuda_backend *c = cu(be);
    *out = nullptr;
    insitra_group *g = (insitra_group *)calloc(1, sizeof *g);
    if (!g) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU: out of host memory for a process group");
    g->size = comm->size;
    g->rank = comm->rank;
    /* rank 0's id, or its failure, reaches every rank: none waits for an id that never comes */
    struct {
        ncclUniqueId id;
        int32_t result;
    } msg;
    memset(&msg, 0, sizeof msg);
    if (comm->rank == 0) msg.result = (int32_t)ncclGetUniqueId(&msg.id);
    insitra_status s = INSITRA_STATUS_OK;
    if (MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, comm->comm) != MPI_SUCCESS)
        s = insitra_error_set(INSITRA_STATUS_MPI_ERROR, "GPU: broadcasting the NCCL id failed");
    else if (msg.result != (int32_t)ncclSuccess)
        s = insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "GPU: ncclGetUniqueId failed on rank 0 of the group: %s",
                              ncclGetErrorString((ncclResult_t)msg.result));
    /* A group of one rank has no NCCL communicator: its collectives are copies,
     * and a communicator would hold device memory the planner does not count. */
    if (s == INSITRA_STATUS_OK && comm->size > 1) {
        const ncclResult_t r = ncclCommInitRank(&g->nccl, comm->size, msg.id, comm->rank);
        if (r != ncclSuccess)
            s = insitra_cuda_fail("ncclCommInitRank", ncclGetErrorString(r), __FILE__, __LINE__);
    }
    if (s == INSITRA_STATUS_OK)
        s = cuda_alloc(be, (size_t)comm->size * 4 * sizeof(double), "the ordered sums", (void **)&g->gathered);
    if (s != INSITRA_STATUS_OK) {
        if (g->nccl) ncclCommDestroy(g->nccl);
        free(g);
        return s;
    }
    (void)c;
    *out = g;
    return INSITRA_STATUS_OK;
}

void cuda_group_free(insitra_backend *be, insitra_group *g)
{
    (void)be;
    if (!g) return;
    if (g->nccl) ncclCommDestroy(g->nccl);
    if (g->gathered) cudaFree(g->gathered);
    free(g);
}

/* A one-rank collective: send to recv on stream st (nothing when in place). */
insitra_status copy_on(cudaStream_t st, void *recv, const void *send, size_t bytes)
{
    if (recv != send) CUDA_TRY(cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, st));
    return INSITRA_STATUS_OK;
}

/* The comm stream joins the compute stream's current point; h gets an event. */
insitra_status fork(cuda_backend *c, insitra_coll *h)
{
    CUDA_TRY(cudaEventRecord(c->ev_fork, c->cs));
    CUDA_TRY(cudaStreamWaitEvent(c->ns, c->ev_fork, 0));
    h->event = c->next_event;
    c->next_event = (c->next_event + 1) % kEvents;
    h->active = true;
    return INSITRA_STATUS_OK;
}

insitra_status done(cuda_backend *c, insitra_coll *h)
{
    CUDA_TRY(cudaEventRecord(c->ev[h->event], c->ns));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_reduce_scatter(insitra_backend *be, insitra_group *g, const void *send, void *recv, int64_t n,
                                   insitra_dtype t, insitra_coll *h)
{
    cuda_backend *c = cu(be);
    INSITRA_CHECK(fork(c, h));
    if (!g->nccl)
        INSITRA_CHECK(copy_on(c->ns, recv, send, (size_t)n * insitra_dtype_size(t)));
    else
        NCCL_TRY(ncclReduceScatter(send, recv, (size_t)n, t == INSITRA_DTYPE_BF16 ? ncclBfloat16 : ncclFloat, ncclSum,
                                   g->nccl, c->ns));
    return done(c, h);
}

insitra_status cuda_all_gather(insitra_backend *be, insitra_group *g, const void *send, void *recv, int64_t n,
                               insitra_dtype t, insitra_coll *h)
{
    cuda_backend *c = cu(be);
    INSITRA_CHECK(fork(c, h));
    if (!g->nccl)
        INSITRA_CHECK(copy_on(c->ns, recv, send, (size_t)n * (t == INSITRA_DTYPE_BF16 ? 2 : sizeof(float))));
    else
        NCCL_TRY(ncclAllGather(send, recv, (size_t)n, t == INSITRA_DTYPE_BF16 ? ncclBfloat16 : ncclFloat, g->nccl,
                               c->ns));
    return done(c, h);
}

/* Send to the next rank, receive from the previous one: one NCCL group, so
 * neither blocks the other. The group is always closed, even after a
 * failed call inside it. */
insitra_status cuda_ring_shift(insitra_backend *be, insitra_group *g, const void *send, void *recv, int64_t n,
                               insitra_dtype t, insitra_coll *h)
{
    cuda_backend *c = cu(be);
    INSITRA_CHECK(fork(c, h));
    if (!g->nccl) {
        INSITRA_CHECK(copy_on(c->ns, recv, send, (size_t)n * insitra_dtype_size(t)));
        return done(c, h);
    }
    const ncclDataType_t nt = t == INSITRA_DTYPE_BF16 ? ncclBfloat16 : ncclFloat;
    const int next = (g->rank + 1) % g->size, prev = (g->rank + g->size - 1) % g->size;
    NCCL_TRY(ncclGroupStart());
    const ncclResult_t rs = ncclSend(send, (size_t)n, nt, next, g->nccl, c->ns);
    const ncclResult_t rr = ncclRecv(recv, (size_t)n, nt, prev, g->nccl, c->ns);
    const ncclResult_t re = ncclGroupEnd();
    NCCL_TRY(rs);
    NCCL_TRY(rr);
    NCCL_TRY(re);
    return done(c, h);
}

insitra_status cuda_wait(insitra_backend *be, insitra_coll *h)
{
    if (!h->active) return INSITRA_STATUS_OK;
    cuda_backend *c = cu(be);
    CUDA_TRY(cudaStreamWaitEvent(c->cs, c->ev[h->event], 0));
    h->active = false;
    return INSITRA_STATUS_OK;
}

/* The comm stream runs collectives in the order they were started. */
insitra_status cuda_chain(insitra_backend *be, insitra_coll *h)
{
    (void)be;
    (void)h;
    return INSITRA_STATUS_OK;
}

void cuda_progress(insitra_backend *be, insitra_coll *h, int n)
{
    (void)be;
    (void)h;
    (void)n;
}

insitra_status cuda_sum_ordered(insitra_backend *be, insitra_group *g, double *v, int n)
{
    if (g->size == 1) return INSITRA_STATUS_OK;
    cuda_backend *c = cu(be);
    NCCL_TRY(ncclAllGather(v, g->gathered, (size_t)n, ncclDouble, g->nccl, c->cs));
    insitra_sum_ranks(v, g->gathered, g->size, n, c->cs);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

/* ---- recording a step ---- */

insitra_status cuda_capture_begin(insitra_backend *be)
{
    CUDA_TRY(cudaStreamBeginCapture(cu(be)->cs, cudaStreamCaptureModeThreadLocal));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_capture_end(insitra_backend *be)
{
    cuda_backend *c = cu(be);
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(c->cs, &graph);
    if (e != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        return insitra_cuda_fail("cudaStreamEndCapture (cuda.graphs = false avoids graphs)", cudaGetErrorString(e),
                                 __FILE__, __LINE__);
    }
    if (c->exec) cudaGraphExecDestroy(c->exec);
    c->exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&c->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (ie != cudaSuccess) {
        c->exec = nullptr;
        return insitra_cuda_fail("cudaGraphInstantiate", cudaGetErrorString(ie), __FILE__, __LINE__);
    }
    return INSITRA_STATUS_OK;
}

insitra_status cuda_replay(insitra_backend *be, bool *replayed)
{
    cuda_backend *c = cu(be);
    *replayed = c->exec != nullptr;
    if (c->exec) CUDA_TRY(cudaGraphLaunch(c->exec, c->cs));
    return INSITRA_STATUS_OK;
}

insitra_status cuda_join_stream(insitra_backend *be, void *stream, bool before)
{
    cuda_backend *c = cu(be);
    cudaStream_t theirs = (cudaStream_t)stream;
    CUDA_TRY(cudaSetDevice(c->device));
    CUDA_TRY(cudaEventRecord(c->ev_join, before ? theirs : c->cs));
    CUDA_TRY(cudaStreamWaitEvent(before ? c->cs : theirs, c->ev_join, 0));
    return INSITRA_STATUS_OK;
}

void cuda_free(insitra_backend *be)
{
    cuda_backend *c = cu(be);
    cudaSetDevice(c->device);
    if (c->cs) cudaStreamSynchronize(c->cs);
    if (c->ns) cudaStreamSynchronize(c->ns);
    if (c->exec) cudaGraphExecDestroy(c->exec);
    if (c->ev_fork) cudaEventDestroy(c->ev_fork);
    if (c->ev_join) cudaEventDestroy(c->ev_join);
    for (cudaEvent_t e : c->ev)
        if (e) cudaEventDestroy(e);
    insitra_matmul_free(&c->mm);
#ifdef INSITRA_HAVE_CUDNN
    insitra_cudnn_attention_free(c->sdpa);
#endif
    if (c->workspace) cudaFree(c->workspace);
    if (c->nonfinite_dev) cudaFree(c->nonfinite_dev);
    if (c->nonfinite_host) cudaFreeHost(c->nonfinite_host);
    if (c->cs) cudaStreamDestroy(c->cs);
    if (c->ns) cudaStreamDestroy(c->ns);
    free(c);
}

const insitra_backend_i cuda_interface = {
    /* .name = */ "cuda",
    /* .free = */ cuda_free,
    /* .alloc = */ cuda_alloc,
    /* .release = */ cuda_release,
    /* .upload = */ cuda_upload,
    /* .download = */ cuda_download,
    /* .copy = */ cuda_copy,
    /* .fill_zero = */ cuda_fill_zero,
    /* .synchronize = */ cuda_synchronize,
    /* .reserve = */ cuda_reserve,
    /* .is_device_pointer = */ cuda_is_device_pointer,
    /* .first_nonfinite = */ cuda_first_nonfinite,
    /* .gather_batch = */ cuda_gather_batch,
    /* .normalize_forward = */ cuda_normalize_forward,
    /* .normalize_inverse = */ cuda_normalize_inverse,
    /* .to_act = */ cuda_to_act,
    /* .linear_forward = */ cuda_linear_forward,
    /* .linear_backward = */ cuda_linear_backward,
    /* .output_forward = */ cuda_output_forward,
    /* .pos_forward = */ cuda_pos_forward,
    /* .pos_backward = */ cuda_pos_backward,
    /* .layernorm_forward = */ cuda_layernorm_forward,
    /* .layernorm_backward = */ cuda_layernorm_backward,
    /* .attention_forward = */ cuda_attention_forward,
    /* .attention_backward = */ cuda_attention_backward,
    /* .mse_backward = */ cuda_mse_backward,
    /* .sum_squares = */ cuda_sum_squares,
    /* .adamw = */ cuda_adamw,
    /* .grad_sum_squares = */ cuda_grad_sum_squares,
    /* .shard_pack = */ cuda_shard_pack,
    /* .shard_unpack = */ cuda_shard_unpack,
    /* .add = */ cuda_add,
    /* .group_create = */ cuda_group_create,
    /* .group_free = */ cuda_group_free,
    /* .reduce_scatter = */ cuda_reduce_scatter,
    /* .all_gather = */ cuda_all_gather,
    /* .wait = */ cuda_wait,
    /* .chain = */ cuda_chain,
    /* .progress = */ cuda_progress,
    /* .sum_ordered = */ cuda_sum_ordered,
    /* .capture_begin = */ cuda_capture_begin,
    /* .capture_end = */ cuda_capture_end,
    /* .replay = */ cuda_replay,
    /* .attention_kv_pack = */ cuda_attention_kv_pack,
    /* .attention_block_forward = */ cuda_attention_block_forward,
    /* .attention_block_finish = */ cuda_attention_block_finish,
    /* .attention_block_backward = */ cuda_attention_block_backward,
    /* .attention_block_done = */ cuda_attention_block_done,
    /* .ring_shift = */ cuda_ring_shift,
    /* .join_stream = */ cuda_join_stream,
    /* .bias_residual_forward = */ cuda_bias_residual_forward,
    /* .bias_backward = */ cuda_bias_backward,
    /* .block_transpose = */ cuda_block_transpose,
};

insitra_status pick_device(cuda_backend *c, MPI_Comm comm)
{
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "config key 'device' is 'cuda' but no CUDA device is usable here (%s; "
                                 "CUDA_VISIBLE_DEVICES=%s); use device = cpu on this machine",
                                 e != cudaSuccess ? cudaGetErrorString(e) : "no devices", vis ? vis : "(unset)");
    }
    MPI_Comm node;
    int local = 0;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "GPU: cannot find the node-local ranks");
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    c->device = local % count;
    CUDA_TRY(cudaSetDevice(c->device));
    return INSITRA_STATUS_OK;
}

insitra_status setup(cuda_backend *c, const insitra_config *cfg, MPI_Comm comm)
{
    INSITRA_CHECK(pick_device(c, comm));
    CUDA_TRY(cudaStreamCreateWithFlags(&c->cs, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&c->ns, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreateWithFlags(&c->ev_fork, cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&c->ev_join, cudaEventDisableTiming));
    for (cudaEvent_t &e : c->ev) CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    INSITRA_CHECK(insitra_matmul_create(&c->mm)); /* its workspace comes with reserve */
    CUDA_TRY(cudaMalloc(&c->nonfinite_dev, sizeof(unsigned long long)));
    CUDA_TRY(cudaMallocHost(&c->nonfinite_host, sizeof(unsigned long long)));
    (void)cfg;
    return INSITRA_STATUS_OK;
}

} // namespace

extern "C" insitra_status insitra_backend_cuda_create(insitra_backend **out, const insitra_config *cfg, MPI_Comm comm)
{
    *out = nullptr;
    cuda_backend *c = (cuda_backend *)calloc(1, sizeof *c);
    if (!c) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU: out of host memory");
    c->bf16 = cfg->precision == INSITRA_PRECISION_BF16;
    c->ab = c->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    c->base.i = &cuda_interface;
    c->base.desc = &insitra_backend_cuda_desc;
    c->base.act = c->bf16 ? INSITRA_DTYPE_BF16 : INSITRA_DTYPE_F32;
    c->base.act_size = c->bf16 ? 2 : 4;
    c->base.host_memory = false;
    const insitra_status s = setup(c, cfg, comm);
    if (s != INSITRA_STATUS_OK) {
        cuda_free(&c->base);
        return s;
    }
    *out = &c->base;
    return INSITRA_STATUS_OK;
}
