/*
 * Forward and backward of the whole model on the CPU, top to bottom. Every
 * buffer is a view carved at create time (model.c); nothing is allocated here.
 * Each unit (embedding, block, head) is bracketed by the model's hooks, where
 * a sharded trainer gathers parameters and reduces gradients; with B = 0 only
 * the hooks run, so every rank takes part in the same collectives.
 */
#include <string.h>

#include "../model.h"
#include "layers.h"

static void unit_begin(const insitra_model *m, int64_t unit, insitra_pass pass)
{
    if (m->hooks && m->hooks->unit_begin) m->hooks->unit_begin(m->hooks->ctx, unit, pass);
}

static void unit_end(const insitra_model *m, int64_t unit, insitra_pass pass)
{
    if (m->hooks && m->hooks->unit_end) m->hooks->unit_end(m->hooks->ctx, unit, pass);
}

double insitra_model_forward(insitra_model *m, int64_t B, const float *x, const float *y)
{
    const insitra_model_dims *d = &m->dims;
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads, N = B * T, L = d->n_layers;
    const insitra_param_view *p = &m->p;
    insitra_acts *a = &m->a;

    /* encoded (N,C) = x (N,F_in) @ W_e^T + b_e + pos */
    unit_begin(m, 0, INSITRA_PASS_FORWARD);
    if (N > 0) {
        insitra_linear_forward(a->encoded, x, p->embed_w, p->embed_b, NULL, N, d->in_features, C);
        insitra_pos_embed_forward(a->encoded, p->pos, B, T, C);
    }
    unit_end(m, 0, INSITRA_PASS_FORWARD);

    const float *res = a->encoded; /* (N,C) residual stream entering the block */
    for (int64_t l = 0; l < L; l++) {
        unit_begin(m, l + 1, INSITRA_PASS_FORWARD);
        const insitra_block_view *w = &p->blocks[l];
        insitra_block_acts *ba = &a->blocks[l];
        if (N > 0) {
            insitra_layernorm_forward(ba->ln1, ba->ln1_mean, ba->ln1_rstd, res, w->ln1_w, w->ln1_b,
                                      N, C);
            insitra_linear_forward(ba->qkv, ba->ln1, w->qkv_w, w->qkv_b, NULL, N, C, 3 * C);
            insitra_attention_forward(ba->atty, ba->att, ba->qkv, B, T, C, H, d->causal);
            insitra_linear_forward(ba->res_att, ba->atty, w->proj_w, w->proj_b, res, N, C, C);
            insitra_layernorm_forward(ba->ln2, ba->ln2_mean, ba->ln2_rstd, ba->res_att, w->ln2_w,
                                      w->ln2_b, N, C);
            insitra_linear_forward(ba->fch, ba->ln2, w->fc_w, w->fc_b, NULL, N, C, 4 * C);
            insitra_gelu_forward(ba->fch_gelu, ba->fch, N * 4 * C);
            insitra_linear_forward(ba->res_out, ba->fch_gelu, w->fcproj_w, w->fcproj_b, ba->res_att,
                                   N, 4 * C, C);
        }
        res = ba->res_out;
        unit_end(m, l + 1, INSITRA_PASS_FORWARD);
    }

    unit_begin(m, L + 1, INSITRA_PASS_FORWARD);
    if (N > 0) {
        insitra_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, res, p->lnf_w, p->lnf_b, N, C);
        insitra_linear_forward(a->out, a->lnf, p->head_w, p->head_b, NULL, N, C, d->out_features);
    }
    unit_end(m, L + 1, INSITRA_PASS_FORWARD);
    return y && N > 0 ? insitra_mse_forward(a->out, y, N * d->out_features) : 0.0;
}

void insitra_model_backward(insitra_model *m, int64_t B, const float *x, const float *y,
                            float loss_scale)
{
    const insitra_model_dims *d = &m->dims;
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads, N = B * T;
    const int64_t L = d->n_layers, F_out = d->out_features;
    const insitra_param_view *p = &m->p;
    const insitra_param_view *g = &m->g;
    insitra_acts *a = &m->a;
    const float *res_final = L > 0 ? a->blocks[L - 1].res_out : a->encoded;

    /* head and final LN: dres (N,C) receives the gradient of the residual stream */
    unit_begin(m, L + 1, INSITRA_PASS_BACKWARD);
    if (N > 0) {
        insitra_mse_backward(a->dout, a->out, y, N * F_out, loss_scale);
        insitra_linear_backward(a->dln, g->head_w, g->head_b, a->dout, a->lnf, p->head_w, N, C,
                                F_out);
        memset(a->dres, 0, (size_t)(N * C) * sizeof(float));
        insitra_layernorm_backward(a->dres, g->lnf_w, g->lnf_b, a->dln, res_final, a->lnf_mean,
                                   a->lnf_rstd, p->lnf_w, N, C);
    }
    unit_end(m, L + 1, INSITRA_PASS_BACKWARD);

    for (int64_t l = L - 1; l >= 0; l--) {
        unit_begin(m, l + 1, INSITRA_PASS_BACKWARD);
        const insitra_block_view *w = &p->blocks[l];
        const insitra_block_view *gw = &g->blocks[l];
        const insitra_block_acts *ba = &a->blocks[l];
        const float *res_in = l > 0 ? a->blocks[l - 1].res_out : a->encoded;
        if (N > 0) {
            /* MLP: dres holds d(res_out); the residual passes it to res_att unchanged */
            insitra_linear_backward(a->dfch, gw->fcproj_w, gw->fcproj_b, a->dres, ba->fch_gelu,
                                    w->fcproj_w, N, 4 * C, C);
            insitra_gelu_backward(a->dfch, ba->fch, a->dfch, N * 4 * C);
            insitra_linear_backward(a->dln, gw->fc_w, gw->fc_b, a->dfch, ba->ln2, w->fc_w, N, C,
                                    4 * C);
            insitra_layernorm_backward(a->dres, gw->ln2_w, gw->ln2_b, a->dln, ba->res_att,
                                       ba->ln2_mean, ba->ln2_rstd, w->ln2_w, N, C);
            /* attention: dres now holds d(res_att) */
            insitra_linear_backward(a->datty, gw->proj_w, gw->proj_b, a->dres, ba->atty, w->proj_w,
                                    N, C, C);
            insitra_attention_backward(a->dqkv, a->datt, a->datty, ba->qkv, ba->att, B, T, C, H);
            insitra_linear_backward(a->dln, gw->qkv_w, gw->qkv_b, a->dqkv, ba->ln1, w->qkv_w, N, C,
                                    3 * C);
            insitra_layernorm_backward(a->dres, gw->ln1_w, gw->ln1_b, a->dln, res_in, ba->ln1_mean,
                                       ba->ln1_rstd, w->ln1_w, N, C);
        }
        unit_end(m, l + 1, INSITRA_PASS_BACKWARD);
    }

    /* embedding: dres holds d(encoded) */
    unit_begin(m, 0, INSITRA_PASS_BACKWARD);
    if (N > 0) {
        insitra_pos_embed_backward(g->pos, a->dres, B, T, C);
        insitra_linear_backward(NULL, g->embed_w, g->embed_b, a->dres, x, p->embed_w, N,
                                d->in_features, C);
    }
    unit_end(m, 0, INSITRA_PASS_BACKWARD);
}
