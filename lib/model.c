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

#include "checked.h"
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
    /* Saturating: a total that does not fit stays INSITRA_SIZE_OVERFLOW, which
     * insitra_param_layout_create reports. */
    t->numel = insitra_size_mul(rows, cols);
    t->offset = l->total;
    /* Linear weights decay; biases, LayerNorm and positions do not. */
    t->decay = ndim == 2 && strcmp(name, "pos_embed") != 0;
    l->total = insitra_size_add(l->total, t->numel);
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
    if (l->total == INSITRA_SIZE_OVERFLOW) {
        insitra_param_layout_free(l);
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "model: config keys 'model.d_model' = %lld, 'model.n_layers' = %lld, "
                                 "'model.in_features' = %lld, 'model.out_features' = %lld: more "
                                 "parameters than a 64-bit count holds",
                                 (long long)C, (long long)L, (long long)d->in_features,
                                 (long long)d->out_features);
    }

    l->num_units = L + 2;
    l->units = calloc((size_t)l->num_units, sizeof *l->units);
    if (!l->units) {
        insitra_param_layout_free(l);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "model: out of memory for the unit table");
    }
    for (int64_t u = 0; u < l->num_units; u++) {
        insitra_param_unit *unit = &l->units[u];
        unit->first_tensor = u == 0 ? 0 : l->first_block_tensor + (u - 1) * INSITRA_BLOCK_NUM_TENSORS;
        unit->num_tensors = u == 0 ? 3 : u <= L ? INSITRA_BLOCK_NUM_TENSORS : 4;
        const insitra_tensor_desc *last = &l->tensors[unit->first_tensor + unit->num_tensors - 1];
        unit->offset = l->tensors[unit->first_tensor].offset;
        unit->numel = last->offset + last->numel - unit->offset;
        if (unit->numel > l->max_unit_numel) l->max_unit_numel = unit->numel;
    }
    return INSITRA_STATUS_OK;
}

void insitra_param_layout_free(insitra_param_layout *l)
{
    free(l->tensors);
    free(l->units);
    memset(l, 0, sizeof *l);
}

int64_t insitra_param_layout_find(const insitra_param_layout *l, const char *name)
{
    for (int64_t i = 0; i < l->num_tensors; i++)
        if (strcmp(l->tensors[i].name, name) == 0) return i;
    return -1;
}

/* The view's pointer for tensor i of the layout. */
static float **view_slot(insitra_param_view *v, const insitra_param_layout *l, int64_t i)
{
    const int64_t n = l->num_tensors, fb = l->first_block_tensor;
    if (i == 0) return &v->embed_w;
    if (i == 1) return &v->embed_b;
    if (i == 2) return &v->pos;
    if (i == n - 4) return &v->lnf_w;
    if (i == n - 3) return &v->lnf_b;
    if (i == n - 2) return &v->head_w;
    if (i == n - 1) return &v->head_b;
    return &v->blocks[(i - fb) / INSITRA_BLOCK_NUM_TENSORS].tensor[(i - fb) % INSITRA_BLOCK_NUM_TENSORS];
}

void insitra_param_view_bind_unit(insitra_param_view *v, const insitra_param_layout *l,
                                  int64_t unit, float *unit_base)
{
    const insitra_param_unit *u = &l->units[unit];
    for (int64_t i = u->first_tensor; i < u->first_tensor + u->num_tensors; i++)
        *view_slot(v, l, i) = unit_base + (l->tensors[i].offset - u->offset);
}

/* Points every view at its tensor inside base, a whole parameter-shaped buffer. */
static void bind_view(insitra_param_view *v, const insitra_param_layout *l, float *base)
{
    for (int64_t u = 0; u < l->num_units; u++)
        insitra_param_view_bind_unit(v, l, u, base + l->units[u].offset);
}

/* Carves the workspace; with base == NULL it only counts (the same code sizes
 * and binds, so they cannot disagree). Returns floats used, saturated at
 * INSITRA_SIZE_OVERFLOW: B x H x T x T alone reaches 2^62 within the config's
 * ranges. Callers bind only after the count is known to fit. */
static int64_t bind_acts(insitra_acts *a, const insitra_model_dims *d, int64_t B, float *base)
{
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads;
    const int64_t N = insitra_size_mul(B, T), NC = insitra_size_mul(N, C);
    const int64_t att = insitra_size_mul(insitra_size_mul(B, H), insitra_size_mul(T, T));
    const int64_t out = insitra_size_mul(N, d->out_features);
    const int64_t NC3 = insitra_size_mul(3, NC), NC4 = insitra_size_mul(4, NC);
    int64_t used = 0;
#define CARVE(ptr, count)                                  \
    do {                                                   \
        if (base) (ptr) = base + used;                     \
        used = insitra_size_add(used, (count));            \
    } while (0)
    insitra_acts scratch_a, *aa = a ? a : &scratch_a;
    CARVE(aa->encoded, NC);
    for (int64_t l = 0; l < d->n_layers; l++) {
        insitra_block_acts scratch, *ba = a ? &a->blocks[l] : &scratch;
        CARVE(ba->ln1, NC);
        CARVE(ba->ln1_mean, N);
        CARVE(ba->ln1_rstd, N);
        CARVE(ba->qkv, NC3);
        CARVE(ba->att, att);
        CARVE(ba->atty, NC);
        CARVE(ba->res_att, NC);
        CARVE(ba->ln2, NC);
        CARVE(ba->ln2_mean, N);
        CARVE(ba->ln2_rstd, N);
        CARVE(ba->fch, NC4);
        CARVE(ba->fch_gelu, NC4);
        CARVE(ba->res_out, NC);
    }
    CARVE(aa->lnf, NC);
    CARVE(aa->lnf_mean, N);
    CARVE(aa->lnf_rstd, N);
    CARVE(aa->out, out);
    CARVE(aa->dres, NC);
    CARVE(aa->dln, NC);
    CARVE(aa->datty, NC);
    CARVE(aa->dqkv, NC3);
    CARVE(aa->dfch, NC4);
    CARVE(aa->datt, att);
    CARVE(aa->dout, out);
#undef CARVE
    return used;
}

int64_t insitra_model_act_numel(const insitra_model_dims *d, int64_t max_batch)
{
    return bind_acts(NULL, d, max_batch, NULL);
}

insitra_status insitra_model_create(insitra_model *m, const insitra_model_dims *d, int64_t max_batch)
{
    return insitra_model_create_partial(m, d, max_batch, true, true);
}

insitra_status insitra_model_create_partial(insitra_model *m, const insitra_model_dims *d,
                                            int64_t max_batch, bool full_params, bool full_grads)
{
    memset(m, 0, sizeof *m);
    m->dims = *d;
    m->max_batch = max_batch;
    INSITRA_CHECK(insitra_param_layout_create(&m->layout, d));
    const int64_t P = m->layout.total;
    m->act_numel = insitra_model_act_numel(d, max_batch);
    if (m->act_numel == INSITRA_SIZE_OVERFLOW) {
        insitra_model_free(m);
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "model: the activations of %lld samples (config keys "
                                 "'training.micro_batch_size' or 'training.batch_size', with "
                                 "'model.seq_len', 'model.n_heads', 'model.d_model', 'model.n_layers') "
                                 "need more than 2^63 - 1 floats, the most a 64-bit count holds",
                                 (long long)max_batch);
    }
    m->params = full_params ? calloc((size_t)P, sizeof(float)) : NULL;
    m->grads = full_grads ? calloc((size_t)P, sizeof(float)) : NULL;
    m->act_memory = calloc((size_t)m->act_numel, sizeof(float));
    m->p.blocks = calloc((size_t)d->n_layers, sizeof(insitra_block_view));
    m->g.blocks = calloc((size_t)d->n_layers, sizeof(insitra_block_view));
    m->a.blocks = calloc((size_t)d->n_layers, sizeof(insitra_block_acts));
    if ((full_params && !m->params) || (full_grads && !m->grads) || (m->act_numel > 0 && !m->act_memory) ||
        !m->p.blocks || !m->g.blocks || !m->a.blocks) {
        insitra_model_free(m);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "model: cannot allocate %lld parameters and %lld activation floats "
                                 "(%.1f MiB in all)",
                                 (long long)P, (long long)m->act_numel,
                                 (2.0 * (double)P + (double)m->act_numel) * 4.0 / 1048576.0);
    }
    if (m->params) bind_view(&m->p, &m->layout, m->params);
    if (m->grads) bind_view(&m->g, &m->layout, m->grads);
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

void insitra_param_init_unit(const insitra_param_layout *l, int64_t unit, int64_t n_layers,
                             double std, insitra_rng *rng, float *unit_base)
{
    /* GPT-2's scaling keeps the residual stream's variance from growing with depth. */
    const double proj_std = std / sqrt(2.0 * (double)n_layers);
    const insitra_param_unit *u = &l->units[unit];
    for (int64_t i = u->first_tensor; i < u->first_tensor + u->num_tensors; i++) {
        const insitra_tensor_desc *t = &l->tensors[i];
        float *p = unit_base + (t->offset - u->offset);
        const bool is_ln_gain = strstr(t->name, "ln") && strstr(t->name, ".weight");
        const bool is_proj = strstr(t->name, "proj.weight") != NULL;
        if (is_ln_gain) {
            for (int64_t j = 0; j < t->numel; j++) p[j] = 1.0f;
        } else if (t->ndim == 2) {
            const double s = is_proj ? proj_std : std;
            for (int64_t j = 0; j < t->numel; j++) p[j] = (float)(s * insitra_rng_normal(rng));
        } else {
            memset(p, 0, (size_t)t->numel * sizeof(float));
        }
    }
}

void insitra_model_init_params(insitra_model *m, uint64_t seed, double std)
{
    insitra_rng rng;
    insitra_rng_seed(&rng, seed, 0);
    for (int64_t u = 0; u < m->layout.num_units; u++)
        insitra_param_init_unit(&m->layout, u, m->dims.n_layers, std, &rng,
                                m->params + m->layout.units[u].offset);
}

void insitra_model_zero_grads(insitra_model *m)
{
    if (m->grads) memset(m->grads, 0, (size_t)m->layout.total * sizeof(float));
}
