/*
 * Forward and backward of the whole model, top to bottom, once for every
 * backend: each line is one backend operation (lib/backend.h) with the shapes
 * it works on. Each unit (embedding, block, head) is bracketed by the hooks,
 * where a sharded trainer gathers parameters and reduces gradients; with
 * B = 0 only the hooks run, so every rank joins the same collectives.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_ring.h"
#include "backend.h"
#include "error.h"
#include "model.h"

/* The unit's parameters (compute type) and, in backward, gradients (fp32):
 * from the hooks, or the full buffers. */
static insitra_status unit_begin(insitra_model *m, int64_t u, insitra_pass pass, const void **params,
                                 float **grads)
{
    *grads = NULL;
    if (m->hooks) return m->hooks->unit_begin(m->hooks->ctx, u, pass, params, grads);
    const int64_t off = m->layout.units[u].offset;
    *params = (const char *)m->params + (size_t)off * m->be->act_size;
    if (pass == INSITRA_PASS_BACKWARD) *grads = m->grads + off;
    return INSITRA_STATUS_OK;
}

static insitra_status unit_end(insitra_model *m, int64_t u, insitra_pass pass)
{
    return m->hooks ? m->hooks->unit_end(m->hooks->ctx, u, pass) : INSITRA_STATUS_OK;
}

/* Tensor i of unit u inside the unit's parameter buffer (compute type)... */
static const void *param_at(const insitra_model *m, int64_t u, int64_t i, const void *base)
{
    const insitra_param_layout *l = &m->layout;
    return (const char *)base + (size_t)(l->tensors[i].offset - l->units[u].offset) * m->be->act_size;
}

/* ...and inside its gradient buffer (fp32). */
static float *grad_at(const insitra_model *m, int64_t u, int64_t i, float *base)
{
    const insitra_param_layout *l = &m->layout;
    return base + (l->tensors[i].offset - l->units[u].offset);
}

/* ---- tensor parallelism with sequence parallelism (Korthikanti et al. 2022) ----
 * At tp > 1 a rank's residual stream holds its own Nl = B Tl tokens
 * (Tl = T / (cp tp)); a column-parallel GEMM reads the group's Ng = tp Nl
 * tokens, gathered, and a row-parallel GEMM's partial sums over the group's
 * tokens are reduce-scattered back to each rank's own: the bytes of
 * Megatron's two all-reduces, the activations divided by tp. Collectives
 * carry rank-major pieces (tp, B, Tl, C); the layers see samples (B, tp Tl, C). */

/* out (B, tp Tl, C) = every tp rank's inp (B, Tl, C), rank r's at tokens [r Tl, (r+1) Tl) */
static insitra_status tp_gather(insitra_model *m, void *out, const void *inp, int64_t B, int64_t C)
{
    insitra_backend *be = m->be;
    const int64_t tp = m->dims.tp, n = B * insitra_model_dims_tokens(&m->dims) * C;
    insitra_coll h = {.req = MPI_REQUEST_NULL, .event = -1};
    void *pieces = B == 1 ? out : m->a.tp_pieces; /* one sample: rank-major is sample-major */
    INSITRA_CHECK(be->i->all_gather(be, m->tp_group, inp, pieces, n, be->act, &h));
    INSITRA_CHECK(be->i->wait(be, &h));
    return B == 1 ? INSITRA_STATUS_OK : be->i->block_transpose(be, out, pieces, tp, B, n / B, be->act);
}

/* out (B, Tl, C) = the sum over the tp group of their inp (B, tp Tl, C) at this rank's tokens */
static insitra_status tp_reduce(insitra_model *m, void *out, const void *inp, int64_t B, int64_t C)
{
    insitra_backend *be = m->be;
    const int64_t tp = m->dims.tp, n = B * insitra_model_dims_tokens(&m->dims) * C;
    insitra_coll h = {.req = MPI_REQUEST_NULL, .event = -1};
    const void *pieces = inp;
    if (B > 1) {
        INSITRA_CHECK(be->i->block_transpose(be, m->a.tp_pieces, inp, B, tp, n / B, be->act));
        pieces = m->a.tp_pieces;
    }
    INSITRA_CHECK(be->i->reduce_scatter(be, m->tp_group, pieces, out, n, be->act, &h));
    return be->i->wait(be, &h);
}

/* LayerNorm of this rank's tokens res (Nl,C); out (Ng,C) the tp group's outputs gathered
 * (out (N,C) itself at tp = 1): the input of a column-parallel GEMM */
static insitra_status ln_gathered_forward(insitra_model *m, void *out, float *mean, float *rstd, const void *res,
                                          const void *w, const void *b, int64_t B)
{
    insitra_backend *be = m->be;
    const int64_t C = m->dims.d_model, Nl = B * insitra_model_dims_tokens(&m->dims);
    if (m->dims.tp <= 1) return be->i->layernorm_forward(be, out, mean, rstd, res, w, b, Nl, C);
    INSITRA_CHECK(be->i->layernorm_forward(be, m->a.tp_local, mean, rstd, res, w, b, Nl, C));
    return tp_gather(m, out, m->a.tp_local, B, C);
}

/* dres (Nl,C) += d LN/d res from dln (Ng,C), the gradient of the gathered output: each
 * rank's part of it summed over the group first */
static insitra_status ln_gathered_backward(insitra_model *m, void *dres, float *dw, float *db, void *dln,
                                           const void *res, const float *mean, const float *rstd, const void *w,
                                           int64_t B)
{
    insitra_backend *be = m->be;
    const int64_t C = m->dims.d_model, Nl = B * insitra_model_dims_tokens(&m->dims);
    if (m->dims.tp > 1) {
        INSITRA_CHECK(tp_reduce(m, m->a.tp_local, dln, B, C));
        dln = m->a.tp_local;
    }
    return be->i->layernorm_backward(be, dres, dw, db, dln, res, mean, rstd, w, Nl, C, true);
}

/* out (Nl,C) = residual (Nl,C) + inp (Ng,IC) w^T + b, w (C,IC): at tp > 1 IC is this rank's
 * share of the input columns and the partial products are summed over the group
 * (row-parallel), the bias and residual added once after */
static insitra_status row_parallel_forward(insitra_model *m, void *out, const void *inp, const void *w,
                                           const void *b, const void *residual, int64_t B, int64_t IC)
{
    insitra_backend *be = m->be;
    const int64_t C = m->dims.d_model, Nl = B * insitra_model_dims_tokens(&m->dims);
    if (m->dims.tp <= 1) return be->i->linear_forward(be, out, NULL, inp, w, b, residual, Nl, IC, C);
    const int64_t Ng = B * insitra_model_dims_attn_tokens(&m->dims);
    INSITRA_CHECK(be->i->linear_forward(be, m->a.tp_part, NULL, inp, w, NULL, NULL, Ng, IC, C));
    INSITRA_CHECK(tp_reduce(m, out, m->a.tp_part, B, C));
    return be->i->bias_residual_forward(be, out, out, b, residual, Nl, C);
}

/* From dres (Nl,C), the gradient of row_parallel_forward's out: dinp (Ng,IC) (times
 * gelu'(gelu_pre) when given), dw (C,IC) +=, db (C) += */
static insitra_status row_parallel_backward(insitra_model *m, void *dinp, float *dw, float *db, const void *dres,
                                            const void *gelu_pre, const void *inp, const void *w, int64_t B,
                                            int64_t IC)
{
    insitra_backend *be = m->be;
    const int64_t C = m->dims.d_model, Nl = B * insitra_model_dims_tokens(&m->dims);
    if (m->dims.tp <= 1) return be->i->linear_backward(be, dinp, dw, db, dres, gelu_pre, inp, w, Nl, IC, C);
    const int64_t Ng = B * insitra_model_dims_attn_tokens(&m->dims);
    INSITRA_CHECK(tp_gather(m, m->a.tp_part, dres, B, C));
    INSITRA_CHECK(be->i->linear_backward(be, dinp, dw, NULL, m->a.tp_part, gelu_pre, inp, w, Ng, IC, C));
    return be->i->bias_backward(be, db, dres, Nl, C);
}

/* One block's forward: res_out (Nl,C) = res + attn(LN1(res)) + MLP(LN2(...)),
 * keeping in ba what its backward reads. w: the block's twelve tensors (this
 * rank's heads and MLP columns at tp > 1). */
static insitra_status block_forward(insitra_model *m, insitra_block_acts *ba, const void *const *w, const void *res,
                                    int64_t B)
{
    insitra_backend *be = m->be;
    const insitra_backend_i *op = be->i;
    const insitra_model_dims *d = &m->dims;
    /* Ta tokens a sample's attention sees here, Cl and Hl this rank's width and heads */
    const int64_t Ta = insitra_model_dims_attn_tokens(d), Ng = B * Ta, tp = insitra_model_dims_tp(d);
    const int64_t C = d->d_model, Cl = C / tp, Hl = insitra_model_dims_heads(d);
    /* ln1 (Ng,C) */
    INSITRA_CHECK(ln_gathered_forward(m, ba->ln1, ba->ln1_mean, ba->ln1_rstd, res, w[INSITRA_BLOCK_LN1_W],
                                      w[INSITRA_BLOCK_LN1_B], B));
    /* qkv (Ng,3Cl) */
    INSITRA_CHECK(op->linear_forward(be, ba->qkv, NULL, ba->ln1, w[INSITRA_BLOCK_QKV_W], w[INSITRA_BLOCK_QKV_B],
                                     NULL, Ng, C, 3 * Cl));
    /* atty (Ng,Cl); with cp > 1 the queries meet the other ranks' keys through the ring */
    if (d->cp > 1)
        INSITRA_CHECK(insitra_attention_ring_forward(be, m->cp_group, (int)m->cp_rank, (int)d->cp, ba->atty,
                                                     ba->att, m->a.ring, ba->qkv, B, Ta, Cl, Hl, d->causal));
    else
        INSITRA_CHECK(op->attention_forward(be, ba->atty, ba->att, ba->qkv, B, Ta, Cl, Hl, d->causal));
    /* res_att (Nl,C) = res + atty W_proj^T + b */
    INSITRA_CHECK(row_parallel_forward(m, ba->res_att, ba->atty, w[INSITRA_BLOCK_PROJ_W], w[INSITRA_BLOCK_PROJ_B],
                                       res, B, Cl));
    /* ln2 (Ng,C) */
    INSITRA_CHECK(ln_gathered_forward(m, ba->ln2, ba->ln2_mean, ba->ln2_rstd, ba->res_att, w[INSITRA_BLOCK_LN2_W],
                                      w[INSITRA_BLOCK_LN2_B], B));
    /* fch_gelu (Ng,4Cl) = gelu(fch), fch = ln2 W_fc^T + b */
    INSITRA_CHECK(op->linear_forward(be, ba->fch_gelu, ba->fch, ba->ln2, w[INSITRA_BLOCK_FC_W], w[INSITRA_BLOCK_FC_B],
                                     NULL, Ng, C, 4 * Cl));
    /* res_out (Nl,C) = res_att + fch_gelu W_fcproj^T + b */
    return row_parallel_forward(m, ba->res_out, ba->fch_gelu, w[INSITRA_BLOCK_FCPROJ_W], w[INSITRA_BLOCK_FCPROJ_B],
                                ba->res_att, B, 4 * Cl);
}

insitra_status insitra_model_forward(insitra_model *m, int64_t B, double *loss, double loss_scale)
{
    insitra_backend *be = m->be;
    const insitra_backend_i *op = be->i;
    const insitra_model_dims *d = &m->dims;
    const int64_t T = insitra_model_dims_tokens(d), C = d->d_model, N = B * T, L = d->n_layers;
    const int64_t pos_row0 = insitra_model_token_slice(m) * T; /* this rank's tokens' global positions */
    insitra_acts *a = &m->a;
    const void *base;
    float *unused;

    /* encoded (N,C) = x (N,F_in) W_e^T + b_e + pos */
    INSITRA_CHECK(unit_begin(m, 0, INSITRA_PASS_FORWARD, &base, &unused));
    if (N > 0) {
        INSITRA_CHECK(op->linear_forward(be, a->encoded, NULL, a->x, param_at(m, 0, 0, base),
                                         param_at(m, 0, 1, base), NULL, N, d->in_features, C));
        INSITRA_CHECK(op->pos_forward(
            be, a->encoded, (const char *)param_at(m, 0, 2, base) + (size_t)(pos_row0 * C) * be->act_size, B,
            T, C));
    }
    INSITRA_CHECK(unit_end(m, 0, INSITRA_PASS_FORWARD));

    const void *res = a->encoded; /* (N,C) residual stream entering the block */
    for (int64_t l = 0; l < L; l++) {
        INSITRA_CHECK(unit_begin(m, l + 1, INSITRA_PASS_FORWARD, &base, &unused));
        const int64_t t0 = m->layout.units[l + 1].first_tensor;
        const void *w[INSITRA_BLOCK_NUM_TENSORS];
        for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++) w[i] = param_at(m, l + 1, t0 + i, base);
        insitra_block_acts *ba = &a->blocks[l];
        if (N > 0) INSITRA_CHECK(block_forward(m, ba, w, res, B));
        res = ba->res_out;
        INSITRA_CHECK(unit_end(m, l + 1, INSITRA_PASS_FORWARD));
    }

    /* out (N,F_out) fp32 = LN_f(res) W_h^T + b_h */
    INSITRA_CHECK(unit_begin(m, L + 1, INSITRA_PASS_FORWARD, &base, &unused));
    if (N > 0) {
        const int64_t t0 = m->layout.units[L + 1].first_tensor;
        INSITRA_CHECK(op->layernorm_forward(be, a->lnf, a->lnf_mean, a->lnf_rstd, res,
                                            param_at(m, L + 1, t0, base), param_at(m, L + 1, t0 + 1, base),
                                            N, C));
        INSITRA_CHECK(op->output_forward(be, a->out, a->lnf, param_at(m, L + 1, t0 + 2, base),
                                         param_at(m, L + 1, t0 + 3, base), N, C, d->out_features));
        if (loss) INSITRA_CHECK(op->sum_squares(be, loss, a->out, a->y, N * d->out_features, loss_scale));
    }
    return unit_end(m, L + 1, INSITRA_PASS_FORWARD);
}

insitra_status insitra_model_backward(insitra_model *m, int64_t B, float loss_scale)
{
    insitra_backend *be = m->be;
    const insitra_backend_i *op = be->i;
    const insitra_model_dims *d = &m->dims;
    const int64_t T = insitra_model_dims_tokens(d), C = d->d_model, N = B * T;
    const int64_t L = d->n_layers, F_out = d->out_features;
    const int64_t Ta = insitra_model_dims_attn_tokens(d), Ng = B * Ta;
    const int64_t Cl = C / insitra_model_dims_tp(d), Hl = insitra_model_dims_heads(d);
    insitra_acts *a = &m->a;
    const void *res_final = L > 0 ? a->blocks[L - 1].res_out : a->encoded;
    const void *base;
    float *gbase;

    /* head and final LN: dres (N,C) receives the gradient of the residual stream */
    INSITRA_CHECK(unit_begin(m, L + 1, INSITRA_PASS_BACKWARD, &base, &gbase));
    if (N > 0) {
        const int64_t t0 = m->layout.units[L + 1].first_tensor;
        /* dout (N,F_out) */
        INSITRA_CHECK(op->mse_backward(be, a->dout, a->out, a->y, N * F_out, loss_scale));
        INSITRA_CHECK(op->linear_backward(be, a->dln, grad_at(m, L + 1, t0 + 2, gbase),
                                          grad_at(m, L + 1, t0 + 3, gbase), a->dout, NULL, a->lnf,
                                          param_at(m, L + 1, t0 + 2, base), N, C, F_out));
        INSITRA_CHECK(op->layernorm_backward(be, a->dres, grad_at(m, L + 1, t0, gbase),
                                             grad_at(m, L + 1, t0 + 1, gbase), a->dln, res_final,
                                             a->lnf_mean, a->lnf_rstd, param_at(m, L + 1, t0, base), N,
                                             C, false));
    }
    INSITRA_CHECK(unit_end(m, L + 1, INSITRA_PASS_BACKWARD));

    for (int64_t l = L - 1; l >= 0; l--) {
        INSITRA_CHECK(unit_begin(m, l + 1, INSITRA_PASS_BACKWARD, &base, &gbase));
        const int64_t t0 = m->layout.units[l + 1].first_tensor;
        const void *w[INSITRA_BLOCK_NUM_TENSORS];
        float *gw[INSITRA_BLOCK_NUM_TENSORS];
        for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++) {
            w[i] = param_at(m, l + 1, t0 + i, base);
            gw[i] = grad_at(m, l + 1, t0 + i, gbase);
        }
        insitra_block_acts *ba = &a->blocks[l];
        const void *res_in = l > 0 ? a->blocks[l - 1].res_out : a->encoded;
        /* training.recompute = block: the block's activations again, from its input */
        if (N > 0 && d->recompute) INSITRA_CHECK(block_forward(m, ba, w, res_in, B));
        if (N > 0) {
            /* MLP: dres holds d(res_out); the residual passes it to res_att unchanged.
             * dfch (Ng,4Cl) = (dres W_fcproj) gelu'(fch) */
            INSITRA_CHECK(row_parallel_backward(m, a->dfch, gw[INSITRA_BLOCK_FCPROJ_W], gw[INSITRA_BLOCK_FCPROJ_B],
                                                a->dres, ba->fch, ba->fch_gelu, w[INSITRA_BLOCK_FCPROJ_W], B,
                                                4 * Cl));
            /* dln (Ng,C): this rank's columns' part */
            INSITRA_CHECK(op->linear_backward(be, a->dln, gw[INSITRA_BLOCK_FC_W], gw[INSITRA_BLOCK_FC_B],
                                              a->dfch, NULL, ba->ln2, w[INSITRA_BLOCK_FC_W], Ng, C,
                                              4 * Cl));
            INSITRA_CHECK(ln_gathered_backward(m, a->dres, gw[INSITRA_BLOCK_LN2_W], gw[INSITRA_BLOCK_LN2_B], a->dln,
                                               ba->res_att, ba->ln2_mean, ba->ln2_rstd, w[INSITRA_BLOCK_LN2_W], B));
            /* attention: dres now holds d(res_att). datty (Ng,Cl), dqkv (Ng,3Cl) */
            INSITRA_CHECK(row_parallel_backward(m, a->datty, gw[INSITRA_BLOCK_PROJ_W], gw[INSITRA_BLOCK_PROJ_B],
                                                a->dres, NULL, ba->atty, w[INSITRA_BLOCK_PROJ_W], B, Cl));
            if (d->cp > 1)
                INSITRA_CHECK(insitra_attention_ring_backward(be, m->cp_group, (int)m->cp_rank, (int)d->cp,
                                                              a->dqkv, a->ring, a->datty, ba->qkv, ba->atty,
                                                              ba->att, B, Ta, Cl, Hl, d->causal));
            else
                INSITRA_CHECK(op->attention_backward(be, a->dqkv, a->datty, ba->qkv, ba->atty, ba->att, B, Ta,
                                                     Cl, Hl, d->causal));
            INSITRA_CHECK(op->linear_backward(be, a->dln, gw[INSITRA_BLOCK_QKV_W],
                                              gw[INSITRA_BLOCK_QKV_B], a->dqkv, NULL, ba->ln1,
                                              w[INSITRA_BLOCK_QKV_W], Ng, C, 3 * Cl));
            INSITRA_CHECK(ln_gathered_backward(m, a->dres, gw[INSITRA_BLOCK_LN1_W], gw[INSITRA_BLOCK_LN1_B], a->dln,
                                               res_in, ba->ln1_mean, ba->ln1_rstd, w[INSITRA_BLOCK_LN1_W], B));
        }
        INSITRA_CHECK(unit_end(m, l + 1, INSITRA_PASS_BACKWARD));
    }

    /* embedding: dres holds d(encoded) */
    INSITRA_CHECK(unit_begin(m, 0, INSITRA_PASS_BACKWARD, &base, &gbase));
    if (N > 0) {
        INSITRA_CHECK(
            op->pos_backward(be, grad_at(m, 0, 2, gbase) + insitra_model_token_slice(m) * T * C, a->dres, B, T, C));
        INSITRA_CHECK(op->linear_backward(be, NULL, grad_at(m, 0, 0, gbase), grad_at(m, 0, 1, gbase),
                                          a->dres, NULL, a->x, param_at(m, 0, 0, base), N,
                                          d->in_features, C));
    }
    return unit_end(m, 0, INSITRA_PASS_BACKWARD);
}

/* ---- host conveniences for insitra_model_create's models (fp32, host memory) ---- */

double insitra_model_forward_host(insitra_model *m, int64_t B, const float *x, const float *y)
{
    const int64_t T = m->dims.seq_len, n_out = B * T * m->dims.out_features;
    memcpy(m->a.x, x, (size_t)(B * T * m->dims.in_features) * sizeof(float));
    if (y) memcpy(m->a.y, y, (size_t)n_out * sizeof(float));
    double sse = 0.0;
    if (insitra_model_forward(m, B, y ? &sse : NULL, 1.0) != INSITRA_STATUS_OK) return NAN;
    return n_out > 0 ? sse / (double)n_out : 0.0;
}

void insitra_model_backward_host(insitra_model *m, int64_t B, float loss_scale)
{
    insitra_model_backward(m, B, loss_scale);
}
