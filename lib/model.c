/*
 * Model layout: the tensor table, the named views into the parameter and
 * gradient buffers, the activation workspace, and initialisation. The math
 * of forward and backward is in cpu/model_cpu.c.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "rng.h"

static const char *block_tensor_names[INSITRA_BLOCK_NUM_TENSORS] = {
    "ln1.weight",     "ln1.bias",     "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias", "ln2.weight",  "ln2.bias",
    "mlp.fc.weight",  "mlp.fc.bias",  "mlp.proj.weight", "mlp.proj.bias",
};

static void add_tensor(insitra_param_layout *l, const char *name, int64_t rows, int64_t cols,
                       int32_t ndim)
{
    insitra_tensor_desc *t = &l->tensors[l->num_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = rows * cols;
    t->offset = l->total;
    /* Linear weights decay; biases, LayerNorm and positions do not. */
    t->decay = ndim == 2 && strcmp(name, "pos_embed") != 0;
    l->total += t->numel;
}

insitra_status insitra_param_layout_create(insitra_param_layout *l, const insitra_model_dims *d)
{
    const int64_t C = d->d_model, L = d->n_layers;
    memset(l, 0, sizeof *l);
    l->tensors = calloc((size_t)(3 + INSITRA_BLOCK_NUM_TENSORS * L + 4), sizeof *l->tensors);
    if (!l->tensors)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "model: out of memory for the tensor table");
    add_tensor(l, "embed.weight", C, d->in_features, 2);
    add_tensor(l, "embed.bias", C, 1, 1);
    add_tensor(l, "pos_embed", d->seq_len, C, 2);
    l->first_block_tensor = l->num_tensors;
    l->block_offset0 = l->total;
    const int64_t rows[INSITRA_BLOCK_NUM_TENSORS] = {C, C, 3 * C, 3 * C, C, C,
                                                     C, C, 4 * C, 4 * C, C, C};
    const int64_t cols[INSITRA_BLOCK_NUM_TENSORS] = {1, 1, C, 1, C, 1, 1, 1, C, 1, 4 * C, 1};
    for (int64_t b = 0; b < L; b++) {
        for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++) {
            char name[48];
            snprintf(name, sizeof name, "blocks.%lld.%s", (long long)b, block_tensor_names[i]);
            add_tensor(l, name, rows[i], cols[i], cols[i] == 1 ? 1 : 2);
        }
        if (b == 0) l->block_numel = l->total - l->block_offset0;
    }
    add_tensor(l, "ln_f.weight", C, 1, 1);
    add_tensor(l, "ln_f.bias", C, 1, 1);
    add_tensor(l, "head.weight", d->out_features, C, 2);
    add_tensor(l, "head.bias", d->out_features, 1, 1);
    return INSITRA_STATUS_OK;
}

void insitra_param_layout_free(insitra_param_layout *l)
{
    free(l->tensors);
    memset(l, 0, sizeof *l);
}

int64_t insitra_param_layout_find(const insitra_param_layout *l, const char *name)
{
    for (int64_t i = 0; i < l->num_tensors; i++)
        if (strcmp(l->tensors[i].name, name) == 0) return i;
    return -1;
}

/* Points every view at its tensor inside base; the table order is the layout. */
static void bind_view(insitra_param_view *v, const insitra_param_layout *l, float *base, int64_t L)
{
    const insitra_tensor_desc *t = l->tensors;
    v->embed_w = base + t[0].offset;
    v->embed_b = base + t[1].offset;
    v->pos = base + t[2].offset;
    for (int64_t b = 0; b < L; b++) {
        float *p[INSITRA_BLOCK_NUM_TENSORS];
        for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++)
            p[i] = base + t[l->first_block_tensor + b * INSITRA_BLOCK_NUM_TENSORS + i].offset;
        v->blocks[b] = (insitra_block_view){
            p[INSITRA_BLOCK_LN1_W],  p[INSITRA_BLOCK_LN1_B],  p[INSITRA_BLOCK_QKV_W],
            p[INSITRA_BLOCK_QKV_B],  p[INSITRA_BLOCK_PROJ_W], p[INSITRA_BLOCK_PROJ_B],
            p[INSITRA_BLOCK_LN2_W],  p[INSITRA_BLOCK_LN2_B],  p[INSITRA_BLOCK_FC_W],
            p[INSITRA_BLOCK_FC_B],   p[INSITRA_BLOCK_FCPROJ_W], p[INSITRA_BLOCK_FCPROJ_B],
        };
    }
    const int64_t n = l->num_tensors;
    v->lnf_w = base + t[n - 4].offset;
    v->lnf_b = base + t[n - 3].offset;
    v->head_w = base + t[n - 2].offset;
    v->head_b = base + t[n - 1].offset;
}

/* Carves the workspace; with base == NULL it only counts (the same code sizes
 * and binds, so they cannot disagree). Returns floats used. */
static int64_t bind_acts(insitra_acts *a, const insitra_model_dims *d, int64_t B, float *base)
{
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads, N = B * T;
    int64_t used = 0;
#define CARVE(ptr, count)                                  \
    do {                                                   \
        if (base) (ptr) = base + used;                     \
        used += (count);                                   \
    } while (0)
    insitra_acts scratch_a, *aa = a ? a : &scratch_a;
    CARVE(aa->encoded, N * C);
    for (int64_t l = 0; l < d->n_layers; l++) {
        insitra_block_acts scratch, *ba = a ? &a->blocks[l] : &scratch;
        CARVE(ba->ln1, N * C);
        CARVE(ba->ln1_mean, N);
        CARVE(ba->ln1_rstd, N);
        CARVE(ba->qkv, N * 3 * C);
        CARVE(ba->att, B * H * T * T);
        CARVE(ba->atty, N * C);
        CARVE(ba->res_att, N * C);
        CARVE(ba->ln2, N * C);
        CARVE(ba->ln2_mean, N);
        CARVE(ba->ln2_rstd, N);
        CARVE(ba->fch, N * 4 * C);
        CARVE(ba->fch_gelu, N * 4 * C);
        CARVE(ba->res_out, N * C);
    }
    CARVE(aa->lnf, N * C);
    CARVE(aa->lnf_mean, N);
    CARVE(aa->lnf_rstd, N);
    CARVE(aa->out, N * d->out_features);
    CARVE(aa->dres, N * C);
    CARVE(aa->dln, N * C);
    CARVE(aa->datty, N * C);
    CARVE(aa->dqkv, N * 3 * C);
    CARVE(aa->dfch, N * 4 * C);
    CARVE(aa->datt, B * H * T * T);
    CARVE(aa->dout, N * d->out_features);
#undef CARVE
    return used;
}

int64_t insitra_model_act_numel(const insitra_model_dims *d, int64_t max_batch)
{
    return bind_acts(NULL, d, max_batch, NULL);
}

insitra_status insitra_model_create(insitra_model *m, const insitra_model_dims *d, int64_t max_batch)
{
    memset(m, 0, sizeof *m);
    m->dims = *d;
    m->max_batch = max_batch;
    INSITRA_CHECK(insitra_param_layout_create(&m->layout, d));
    const int64_t P = m->layout.total;
    m->act_numel = insitra_model_act_numel(d, max_batch);
    m->params = calloc((size_t)P, sizeof(float));
    m->grads = calloc((size_t)P, sizeof(float));
    m->act_memory = calloc((size_t)m->act_numel, sizeof(float));
    m->p.blocks = calloc((size_t)d->n_layers, sizeof(insitra_block_view));
    m->g.blocks = calloc((size_t)d->n_layers, sizeof(insitra_block_view));
    m->a.blocks = calloc((size_t)d->n_layers, sizeof(insitra_block_acts));
    if (!m->params || !m->grads || !m->act_memory || !m->p.blocks || !m->g.blocks || !m->a.blocks) {
        insitra_model_free(m);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "model: cannot allocate %lld parameters and %lld activation floats "
                                 "(%.1f MiB in all)",
                                 (long long)P, (long long)m->act_numel,
                                 (double)(2 * P + m->act_numel) * 4.0 / 1048576.0);
    }
    bind_view(&m->p, &m->layout, m->params, d->n_layers);
    bind_view(&m->g, &m->layout, m->grads, d->n_layers);
    bind_acts(&m->a, d, max_batch, m->act_memory);
    return INSITRA_STATUS_OK;
}

void insitra_model_free(insitra_model *m)
{
    free(m->params);
    free(m->grads);
    free(m->act_memory);
    free(m->p.blocks);
    free(m->g.blocks);
    free(m->a.blocks);
    insitra_param_layout_free(&m->layout);
    memset(m, 0, sizeof *m);
}

void insitra_model_init_params(insitra_model *m, uint64_t seed, double std)
{
    insitra_rng rng;
    insitra_rng_seed(&rng, seed, 0);
    /* GPT-2's scaling keeps the residual stream's variance from growing with depth. */
    const double proj_std = std / sqrt(2.0 * (double)m->dims.n_layers);
    for (int64_t i = 0; i < m->layout.num_tensors; i++) {
        const insitra_tensor_desc *t = &m->layout.tensors[i];
        float *p = m->params + t->offset;
        const bool is_ln_gain = strstr(t->name, "ln") && strstr(t->name, ".weight");
        const bool is_proj = strstr(t->name, "proj.weight") != NULL;
        if (is_ln_gain) {
            for (int64_t j = 0; j < t->numel; j++) p[j] = 1.0f;
        } else if (t->ndim == 2) {
            const double s = is_proj ? proj_std : std;
            for (int64_t j = 0; j < t->numel; j++) p[j] = (float)(s * insitra_rng_normal(&rng));
        } else {
            memset(p, 0, (size_t)t->numel * sizeof(float));
        }
    }
}

void insitra_model_zero_grads(insitra_model *m)
{
    memset(m->grads, 0, (size_t)m->layout.total * sizeof(float));
}
