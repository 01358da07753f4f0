/*
 * Forward and backward of the whole model on the GPU, in the order of
 * lib/cpu/model_cpu.c, with the shapes of each step in the comments.
 */
#include "model_cuda.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"
#include "cuda_util.h"

namespace {

/* Carves the activation buffer: with base == nullptr it only counts bytes. */
struct carver {
    char *base;
    size_t used;
    void *take(size_t bytes)
    {
        used = (used + 255) & ~(size_t)255; /* 256-byte alignment for vector access and cuBLASLt */
        void *p = base ? base + used : nullptr;
        used += bytes;
        return p;
    }
};

size_t carve(insitra_dev_model *m, const insitra_model_dims *d, int64_t Bm, size_t es, char *base)
{
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads, N = Bm * T, L = d->n_layers;
    carver c{base, 0};
    const size_t f = sizeof(float);
    insitra_dev_block_acts scratch_block;
    for (int64_t l = 0; l < L; l++) {
        insitra_dev_block_acts *b = m ? &m->blocks[l] : &scratch_block;
        b->ln1 = c.take(N * C * es);
        b->ln1_mean = (float *)c.take(N * f);
        b->ln1_rstd = (float *)c.take(N * f);
        b->qkv = c.take(3 * N * C * es);
        b->att_lse = (float *)c.take(Bm * H * T * f);
        b->atty = c.take(N * C * es);
        b->res_att = c.take(N * C * es);
        b->ln2 = c.take(N * C * es);
        b->ln2_mean = (float *)c.take(N * f);
        b->ln2_rstd = (float *)c.take(N * f);
        b->fch = c.take(4 * N * C * es);
        b->fch_gelu = c.take(4 * N * C * es);
        b->res_out = c.take(N * C * es);
    }
    insitra_dev_model dummy;
    insitra_dev_model *o = m ? m : &dummy;
    o->encoded = c.take(N * C * es);
    o->lnf = c.take(N * C * es);
    o->lnf_mean = (float *)c.take(N * f);
    o->lnf_rstd = (float *)c.take(N * f);
    o->out = (float *)c.take(N * d->out_features * f);
    o->x = c.take(N * d->in_features * es);
    o->x_stage = (float *)c.take(N * d->in_features * f);
    o->y = (float *)c.take(N * d->out_features * f);
    o->dres = c.take(N * C * es);
    o->dln = c.take(N * C * es);
    o->datty = c.take(N * C * es);
    o->dqkv = c.take(3 * N * C * es);
    o->dfch = c.take(4 * N * C * es);
    o->att_delta = (float *)c.take(Bm * H * T * f);
    o->dout = c.take(N * d->out_features * es);
    const int64_t widest = 4 * C > d->out_features ? 4 * C : d->out_features;
    const int64_t col_a = insitra_gpu_col_splits(N) * 2 * widest;
    const int64_t col_b = insitra_gpu_col_splits(Bm) * 2 * T * C;
    o->col_partial = (float *)c.take((size_t)(col_a > col_b ? col_a : col_b) * f);
    o->reduce_partial = (double *)c.take(INSITRA_GPU_REDUCE_BLOCKS * sizeof(double));
    return c.used;
}

/* Pointer to tensor i inside its unit's buffer. */
template <typename P>
P *tensor_at(const insitra_param_layout *l, int64_t unit, int64_t i, const void *base, size_t es)
{
    const int64_t rel = l->tensors[i].offset - l->units[unit].offset;
    return (P *)((const char *)base + (size_t)rel * es);
}

template <typename T>
struct gpu_pass {
    insitra_dev_model *m;
    cudaStream_t s;
    cudaDataType_t ab;

    insitra_status gemm(const insitra_gemm &g, cudaDataType_t d_type)
    {
        return insitra_matmul(m->mm, &g, ab, d_type, s);
    }

    /* out (N,OC) = inp (N,IC) W^T (+ bias) (+ residual); with gelu_pre, out =
     * gelu(inp W^T + bias) and gelu_pre the argument */
    insitra_status linear_forward(void *out, const void *inp, const T *w, const T *bias,
                                  const void *residual, int64_t N, int64_t IC, int64_t OC,
                                  cudaDataType_t d_type, void *gelu_pre = nullptr)
    {
        insitra_gemm g{};
        g.ta = true; g.tb = false;
        g.m = OC; g.n = N; g.k = IC;
        g.a = w; g.lda = IC;
        g.b = inp; g.ldb = IC;
        g.d = out; g.ldd = OC;
        g.c = residual;
        g.alpha = 1.f; g.beta = residual ? 1.f : 0.f;
        g.bias = bias;
        g.batch = 1;
        g.gelu = gelu_pre ? INSITRA_GELU_FORWARD : INSITRA_GELU_NONE;
        g.aux = gelu_pre;
        return gemm(g, d_type);
    }

    /* dinp (N,IC) = dout W (when dinp), times gelu'(gelu_pre) when given;
     * dW (OC,IC) += dout^T inp; db (OC) += sum dout */
    insitra_status linear_backward(void *dinp, float *dw, float *db, const T *dout, const void *inp,
                                   const T *w, int64_t N, int64_t IC, int64_t OC,
                                   const void *gelu_pre = nullptr)
    {
        if (dinp) {
            insitra_gemm g{};
            g.m = IC; g.n = N; g.k = OC;
            g.a = w; g.lda = IC;
            g.b = dout; g.ldb = OC;
            g.d = dinp; g.ldd = IC;
            g.alpha = 1.f; g.beta = 0.f; g.batch = 1;
            g.gelu = gelu_pre ? INSITRA_GELU_BACKWARD : INSITRA_GELU_NONE;
            g.aux = const_cast<void *>(gelu_pre);
            INSITRA_CHECK(gemm(g, ab));
        }
        insitra_gemm g{};
        g.ta = false; g.tb = true;
        g.m = IC; g.n = OC; g.k = N;
        g.a = inp; g.lda = IC;
        g.b = dout; g.ldb = OC;
        g.d = dw; g.ldd = IC;
        g.alpha = 1.f; g.beta = 1.f; g.batch = 1;
        INSITRA_CHECK(gemm(g, CUDA_R_32F));
        insitra_column_grads<T>(nullptr, db, dout, nullptr, nullptr, nullptr, N, OC, m->col_partial, s);
        LAUNCH_TRY();
        return INSITRA_STATUS_OK;
    }

    insitra_attention_shape attention_shape(int64_t B) const
    {
        const insitra_model_dims *d = &m->dims;
        return insitra_attention_shape{B, d->seq_len, d->d_model, d->n_heads, d->causal, m->bf16};
    }

    /* atty (B,T,C) = softmax(q k^T / sqrt(hd)) v per head, read from qkv (B,T,3C)
     * in place; lse (B,H,T) keeps each row's log-sum-exp for backward */
    insitra_status attention_forward(T *atty, float *lse, const T *qkv, int64_t B)
    {
        const insitra_attention_shape sh = attention_shape(B);
        return insitra_fused_attention_forward(atty, lse, qkv, &sh, s);
    }

    /* dqkv (B,T,3C) from datty (B,T,C), the block's qkv, atty and lse */
    insitra_status attention_backward(T *dqkv, const T *datty, const T *qkv, const T *atty,
                                      const float *lse, int64_t B)
    {
        const insitra_attention_shape sh = attention_shape(B);
        return insitra_fused_attention_backward(dqkv, m->att_delta, datty, qkv, atty, lse, &sh, s);
    }

    insitra_status forward(int64_t B, const insitra_dev_unit_hooks *h)
    {
        const insitra_model_dims *d = &m->dims;
        const insitra_param_layout *l = m->layout;
        const int64_t Tn = d->seq_len, C = d->d_model, N = B * Tn, L = d->n_layers;
        const size_t es = m->esize;
        const void *base;
        float *unused;

        /* encoded (N,C) = x (N,F_in) W_e^T + b_e + pos */
        INSITRA_CHECK(h->begin(h->ctx, 0, INSITRA_PASS_FORWARD, &base, &unused));
        if (N > 0) {
            const T *ew = tensor_at<T>(l, 0, 0, base, es), *eb = tensor_at<T>(l, 0, 1, base, es);
            const T *pos = tensor_at<T>(l, 0, 2, base, es);
            INSITRA_CHECK(linear_forward(m->encoded, m->x, ew, eb, nullptr, N, d->in_features, C, ab));
            insitra_pos_forward<T>((T *)m->encoded, pos, B, Tn, C, s);
            LAUNCH_TRY();
        }
        INSITRA_CHECK(h->end(h->ctx, 0, INSITRA_PASS_FORWARD));

        const T *res = (const T *)m->encoded;
        for (int64_t b = 0; b < L; b++) {
            INSITRA_CHECK(h->begin(h->ctx, b + 1, INSITRA_PASS_FORWARD, &base, &unused));
            const insitra_dev_block_acts *a = &m->blocks[b];
            const int64_t t0 = l->units[b + 1].first_tensor;
            const T *w[INSITRA_BLOCK_NUM_TENSORS];
            for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++) w[i] = tensor_at<T>(l, b + 1, t0 + i, base, es);
            if (N > 0) {
                insitra_layernorm_forward<T>((T *)a->ln1, a->ln1_mean, a->ln1_rstd, res,
                                             w[INSITRA_BLOCK_LN1_W], w[INSITRA_BLOCK_LN1_B], N, C, s);
                LAUNCH_TRY();
                INSITRA_CHECK(linear_forward(a->qkv, a->ln1, w[INSITRA_BLOCK_QKV_W],
                                             w[INSITRA_BLOCK_QKV_B], nullptr, N, C, 3 * C, ab));
                INSITRA_CHECK(attention_forward((T *)a->atty, a->att_lse, (const T *)a->qkv, B));
                INSITRA_CHECK(linear_forward(a->res_att, a->atty, w[INSITRA_BLOCK_PROJ_W],
                                             w[INSITRA_BLOCK_PROJ_B], res, N, C, C, ab));
                insitra_layernorm_forward<T>((T *)a->ln2, a->ln2_mean, a->ln2_rstd,
                                             (const T *)a->res_att, w[INSITRA_BLOCK_LN2_W],
                                             w[INSITRA_BLOCK_LN2_B], N, C, s);
                LAUNCH_TRY();
                if (m->fused_gelu) {
                    INSITRA_CHECK(linear_forward(a->fch_gelu, a->ln2, w[INSITRA_BLOCK_FC_W],
                                                 w[INSITRA_BLOCK_FC_B], nullptr, N, C, 4 * C, ab, a->fch));
                } else {
                    INSITRA_CHECK(linear_forward(a->fch, a->ln2, w[INSITRA_BLOCK_FC_W],
                                                 w[INSITRA_BLOCK_FC_B], nullptr, N, C, 4 * C, ab));
                    insitra_gelu_forward<T>((T *)a->fch_gelu, (const T *)a->fch, N * 4 * C, s);
                    LAUNCH_TRY();
                }
                INSITRA_CHECK(linear_forward(a->res_out, a->fch_gelu, w[INSITRA_BLOCK_FCPROJ_W],
                                             w[INSITRA_BLOCK_FCPROJ_B], a->res_att, N, 4 * C, C, ab));
            }
            res = (const T *)a->res_out;
            INSITRA_CHECK(h->end(h->ctx, b + 1, INSITRA_PASS_FORWARD));
        }

        /* out (N,F_out) fp32 = LN_f(res) W_h^T + b_h */
        INSITRA_CHECK(h->begin(h->ctx, L + 1, INSITRA_PASS_FORWARD, &base, &unused));
        if (N > 0) {
            const int64_t t0 = l->units[L + 1].first_tensor;
            const T *lw = tensor_at<T>(l, L + 1, t0, base, es), *lb = tensor_at<T>(l, L + 1, t0 + 1, base, es);
            const T *hw = tensor_at<T>(l, L + 1, t0 + 2, base, es), *hb = tensor_at<T>(l, L + 1, t0 + 3, base, es);
            insitra_layernorm_forward<T>((T *)m->lnf, m->lnf_mean, m->lnf_rstd, res, lw, lb, N, C, s);
            LAUNCH_TRY();
            INSITRA_CHECK(linear_forward(m->out, m->lnf, hw, nullptr, nullptr, N, C, d->out_features,
                                         CUDA_R_32F));
            insitra_bias_add_f32<T>(m->out, hb, N, d->out_features, s);
            LAUNCH_TRY();
        }
        return h->end(h->ctx, L + 1, INSITRA_PASS_FORWARD);
    }

    insitra_status backward(int64_t B, float loss_scale, const insitra_dev_unit_hooks *h)
    {
        const insitra_model_dims *d = &m->dims;
        const insitra_param_layout *l = m->layout;
        const int64_t Tn = d->seq_len, C = d->d_model, N = B * Tn, L = d->n_layers;
        const int64_t F_out = d->out_features;
        const size_t es = m->esize;
        const void *base;
        float *gbase;
        T *dres = (T *)m->dres, *dln = (T *)m->dln;
        const T *res_final = (const T *)(L > 0 ? m->blocks[L - 1].res_out : m->encoded);

        /* head and final LN: dres (N,C) receives the gradient of the residual stream */
        INSITRA_CHECK(h->begin(h->ctx, L + 1, INSITRA_PASS_BACKWARD, &base, &gbase));
        if (N > 0) {
            const int64_t t0 = l->units[L + 1].first_tensor;
            const T *lw = tensor_at<T>(l, L + 1, t0, base, es);
            const T *hw = tensor_at<T>(l, L + 1, t0 + 2, base, es);
            float *glw = tensor_at<float>(l, L + 1, t0, gbase, 4), *glb = tensor_at<float>(l, L + 1, t0 + 1, gbase, 4);
            float *ghw = tensor_at<float>(l, L + 1, t0 + 2, gbase, 4), *ghb = tensor_at<float>(l, L + 1, t0 + 3, gbase, 4);
            insitra_mse_backward<T>((T *)m->dout, m->out, m->y, N * F_out, loss_scale, s);
            LAUNCH_TRY();
            INSITRA_CHECK(linear_backward(dln, ghw, ghb, (const T *)m->dout, m->lnf, hw, N, C, F_out));
            insitra_layernorm_backward_dx<T>(dres, dln, res_final, m->lnf_mean, m->lnf_rstd, lw, N, C,
                                             false, s);
            insitra_column_grads<T>(glw, glb, dln, res_final, m->lnf_mean, m->lnf_rstd, N, C,
                                    m->col_partial, s);
            LAUNCH_TRY();
        }
        INSITRA_CHECK(h->end(h->ctx, L + 1, INSITRA_PASS_BACKWARD));

        for (int64_t b = L - 1; b >= 0; b--) {
            INSITRA_CHECK(h->begin(h->ctx, b + 1, INSITRA_PASS_BACKWARD, &base, &gbase));
            const insitra_dev_block_acts *a = &m->blocks[b];
            const T *res_in = (const T *)(b > 0 ? m->blocks[b - 1].res_out : m->encoded);
            const int64_t t0 = l->units[b + 1].first_tensor;
            const T *w[INSITRA_BLOCK_NUM_TENSORS];
            float *gw[INSITRA_BLOCK_NUM_TENSORS];
            for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++) {
                w[i] = tensor_at<T>(l, b + 1, t0 + i, base, es);
                gw[i] = tensor_at<float>(l, b + 1, t0 + i, gbase, 4);
            }
            if (N > 0) {
                T *dfch = (T *)m->dfch, *datty = (T *)m->datty, *dqkv = (T *)m->dqkv;
                /* MLP: dres holds d(res_out); the residual passes it to res_att unchanged */
                INSITRA_CHECK(linear_backward(dfch, gw[INSITRA_BLOCK_FCPROJ_W], gw[INSITRA_BLOCK_FCPROJ_B],
                                              dres, a->fch_gelu, w[INSITRA_BLOCK_FCPROJ_W], N, 4 * C, C,
                                              m->fused_gelu ? a->fch : nullptr));
                if (!m->fused_gelu) {
                    insitra_gelu_backward<T>(dfch, (const T *)a->fch, N * 4 * C, s);
                    LAUNCH_TRY();
                }
                INSITRA_CHECK(linear_backward(dln, gw[INSITRA_BLOCK_FC_W], gw[INSITRA_BLOCK_FC_B], dfch,
                                              a->ln2, w[INSITRA_BLOCK_FC_W], N, C, 4 * C));
                insitra_layernorm_backward_dx<T>(dres, dln, (const T *)a->res_att, a->ln2_mean,
                                                 a->ln2_rstd, w[INSITRA_BLOCK_LN2_W], N, C, true, s);
                insitra_column_grads<T>(gw[INSITRA_BLOCK_LN2_W], gw[INSITRA_BLOCK_LN2_B], dln,
                                        (const T *)a->res_att, a->ln2_mean, a->ln2_rstd, N, C,
                                        m->col_partial, s);
                LAUNCH_TRY();
                /* attention: dres now holds d(res_att) */
                INSITRA_CHECK(linear_backward(datty, gw[INSITRA_BLOCK_PROJ_W], gw[INSITRA_BLOCK_PROJ_B],
                                              dres, a->atty, w[INSITRA_BLOCK_PROJ_W], N, C, C));
                INSITRA_CHECK(attention_backward(dqkv, datty, (const T *)a->qkv, (const T *)a->atty,
                                                 a->att_lse, B));
                INSITRA_CHECK(linear_backward(dln, gw[INSITRA_BLOCK_QKV_W], gw[INSITRA_BLOCK_QKV_B],
                                              dqkv, a->ln1, w[INSITRA_BLOCK_QKV_W], N, C, 3 * C));
                insitra_layernorm_backward_dx<T>(dres, dln, res_in, a->ln1_mean, a->ln1_rstd,
                                                 w[INSITRA_BLOCK_LN1_W], N, C, true, s);
                insitra_column_grads<T>(gw[INSITRA_BLOCK_LN1_W], gw[INSITRA_BLOCK_LN1_B], dln, res_in,
                                        a->ln1_mean, a->ln1_rstd, N, C, m->col_partial, s);
                LAUNCH_TRY();
            }
            INSITRA_CHECK(h->end(h->ctx, b + 1, INSITRA_PASS_BACKWARD));
        }

        /* embedding: dres holds d(encoded) */
        INSITRA_CHECK(h->begin(h->ctx, 0, INSITRA_PASS_BACKWARD, &base, &gbase));
        if (N > 0) {
            const T *ew = tensor_at<T>(l, 0, 0, base, es);
            float *gew = tensor_at<float>(l, 0, 0, gbase, 4), *geb = tensor_at<float>(l, 0, 1, gbase, 4);
            float *gpos = tensor_at<float>(l, 0, 2, gbase, 4);
            /* dpos (T*C) += sum over the B samples */
            insitra_column_grads<T>(nullptr, gpos, dres, nullptr, nullptr, nullptr, B, Tn * C,
                                    m->col_partial, s);
            LAUNCH_TRY();
            INSITRA_CHECK(linear_backward(nullptr, gew, geb, dres, m->x, ew, N, d->in_features, C));
        }
        return h->end(h->ctx, 0, INSITRA_PASS_BACKWARD);
    }
};

/* The MLP's GELU rides in the GEMM epilogues when cuBLASLt has algorithms
 * for both directions at these shapes (the same tanh form as our kernels). */
bool probe_fused_gelu(insitra_dev_model *m)
{
    const int64_t C = m->dims.d_model, N = m->max_batch * m->dims.seq_len;
    const cudaDataType_t t = m->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const insitra_dev_block_acts *a = &m->blocks[0];
    insitra_gemm f{};
    f.ta = true; f.m = 4 * C; f.n = N; f.k = C;
    f.a = a->ln2; f.lda = C; f.b = a->ln2; f.ldb = C;
    f.d = a->fch_gelu; f.ldd = 4 * C; f.alpha = 1.f; f.batch = 1;
    f.bias = a->ln2; f.gelu = INSITRA_GELU_FORWARD; f.aux = a->fch;
    insitra_gemm b{};
    b.m = 4 * C; b.n = N; b.k = C;
    b.a = a->ln2; b.lda = 4 * C; b.b = a->ln2; b.ldb = C;
    b.d = m->dfch; b.ldd = 4 * C; b.alpha = 1.f; b.batch = 1;
    b.gelu = INSITRA_GELU_BACKWARD; b.aux = a->fch;
    return N > 0 && insitra_matmul_supported(m->mm, &f, t, t) && insitra_matmul_supported(m->mm, &b, t, t);
}

} // namespace

insitra_status insitra_dev_model_create(insitra_dev_model *m, const insitra_model_dims *d,
                                        const insitra_param_layout *layout, int64_t max_batch,
                                        bool bf16, insitra_matmul_ctx *mm)
{
    *m = insitra_dev_model{};
    /* a head size the attention kernels cannot run is a configuration error, found here */
    const insitra_attention_shape sh{max_batch, d->seq_len, d->d_model, d->n_heads, d->causal, bf16};
    INSITRA_CHECK(insitra_fused_attention_check(&sh));
    m->dims = *d;
    m->layout = layout;
    m->max_batch = max_batch;
    m->bf16 = bf16;
    m->esize = bf16 ? 2 : 4;
    m->mm = mm;
    m->blocks = (insitra_dev_block_acts *)calloc((size_t)d->n_layers, sizeof *m->blocks);
    if (!m->blocks) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "model: out of host memory");
    m->bytes = carve(nullptr, d, max_batch, m->esize, nullptr);
    /* the planner's figure (lib/gpu_sizes.c) must be what is allocated */
    if ((int64_t)m->bytes != insitra_gpu_activation_bytes(d, max_batch, (int64_t)m->esize))
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "internal: the activation buffer (%zu bytes) and lib/gpu_sizes.c "
                                 "(%lld bytes) disagree",
                                 m->bytes, (long long)insitra_gpu_activation_bytes(d, max_batch, (int64_t)m->esize));
    if (cudaMalloc(&m->memory, m->bytes) != cudaSuccess) {
        cudaGetLastError();
        m->memory = nullptr;
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "GPU: cannot allocate %.2f GiB of activations for micro-batches of "
                                 "%lld samples; lower training.micro_batch_size",
                                 (double)m->bytes / 1073741824.0, (long long)max_batch);
    }
    carve(m, d, max_batch, m->esize, (char *)m->memory);
    m->fused_gelu = d->n_layers > 0 && probe_fused_gelu(m);
    return INSITRA_STATUS_OK;
}

void insitra_dev_model_free(insitra_dev_model *m)
{
    if (m->memory) cudaFree(m->memory);
    free(m->blocks);
    *m = insitra_dev_model{};
}

insitra_status insitra_dev_model_forward(insitra_dev_model *m, int64_t B,
                                         const insitra_dev_unit_hooks *h, cudaStream_t s)
{
    if (m->bf16) return gpu_pass<bf16>{m, s, CUDA_R_16BF}.forward(B, h);
    return gpu_pass<float>{m, s, CUDA_R_32F}.forward(B, h);
}

insitra_status insitra_dev_model_backward(insitra_dev_model *m, int64_t B, float loss_scale,
                                          const insitra_dev_unit_hooks *h, cudaStream_t s)
{
    if (m->bf16) return gpu_pass<bf16>{m, s, CUDA_R_16BF}.backward(B, loss_scale, h);
    return gpu_pass<float>{m, s, CUDA_R_32F}.backward(B, loss_scale, h);
}
