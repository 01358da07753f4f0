/*
 * Model layout: the tensor table, the activation workspace, and
 * initialisation. The layer sequence of forward and backward is in
 * model_step.c; the kernels are the backend's.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_ring.h"
#include "backend.h"
#include "checked.h"
#include "error.h"
#include "rng.h"

static const char *block_tensor_names[INSITRA_BLOCK_NUM_TENSORS] = {
    "ln1.weight",     "ln1.bias",     "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias", "ln2.weight",  "ln2.bias",
    "mlp.fc.weight",  "mlp.fc.bias",  "mlp.proj.weight", "mlp.proj.bias",
};

/* A tensor of global shape (rows, cols), this rank's part of it as split
 * over tp ranks. */
static void add_tensor(insitra_param_layout *l, const char *name, int64_t rows, int64_t cols, int32_t ndim,
                       insitra_tp_split split, int64_t tp)
{
    insitra_tensor_desc *t = &l->tensors[l->num_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->split = tp > 1 ? split : INSITRA_TP_REPLICATED;
    t->global_shape[0] = rows;
    t->global_shape[1] = cols;
    t->shape[0] = t->split == INSITRA_TP_ROWS || t->split == INSITRA_TP_HEADS ? rows / tp : rows;
    t->shape[1] = t->split == INSITRA_TP_COLS ? cols / tp : cols;
    /* Saturating: a total that does not fit stays INSITRA_SIZE_OVERFLOW, which
     * insitra_param_layout_create reports. */
    t->numel = insitra_size_mul(t->shape[0], t->shape[1]);
    t->offset = l->total;
    /* Linear weights decay; biases, LayerNorm and positions do not. */
    t->decay = ndim == 2 && strcmp(name, "pos_embed") != 0;
    l->total = insitra_size_add(l->total, t->numel);
    l->global_total = insitra_size_add(l->global_total, insitra_size_mul(rows, cols));
}

insitra_status insitra_param_layout_create(insitra_param_layout *l, const insitra_model_dims *d)
{
    const int64_t C = d->d_model, L = d->n_layers, tp = insitra_model_dims_tp(d);
    memset(l, 0, sizeof *l);
    l->tp = tp;
    l->tensors = calloc((size_t)insitra_param_layout_count(L), sizeof *l->tensors);
    if (!l->tensors)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "model: out of memory for the tensor table");
    add_tensor(l, "embed.weight", C, d->in_features, 2, INSITRA_TP_REPLICATED, tp);
    add_tensor(l, "embed.bias", C, 1, 1, INSITRA_TP_REPLICATED, tp);
    add_tensor(l, "pos_embed", d->seq_len, C, 2, INSITRA_TP_REPLICATED, tp);
    l->first_block_tensor = l->num_tensors;
    l->block_offset0 = l->total;
    const int64_t rows[INSITRA_BLOCK_NUM_TENSORS] = {C, C, 3 * C, 3 * C, C, C,
                                                     C, C, 4 * C, 4 * C, C, C};
    const int64_t cols[INSITRA_BLOCK_NUM_TENSORS] = {1, 1, C, 1, C, 1, 1, 1, C, 1, 4 * C, 1};
    /* Megatron's split: qkv and fc column-parallel (by heads, by rows of the
     * output), proj and mlp.proj row-parallel (by columns of the input);
     * LayerNorms and the row-parallel biases replicated */
    const insitra_tp_split split[INSITRA_BLOCK_NUM_TENSORS] = {
        INSITRA_TP_REPLICATED, INSITRA_TP_REPLICATED, INSITRA_TP_HEADS, INSITRA_TP_HEADS,
        INSITRA_TP_COLS,       INSITRA_TP_REPLICATED, INSITRA_TP_REPLICATED, INSITRA_TP_REPLICATED,
        INSITRA_TP_ROWS,       INSITRA_TP_ROWS,       INSITRA_TP_COLS,       INSITRA_TP_REPLICATED};
    for (int64_t b = 0; b < L; b++) {
        for (int i = 0; i < INSITRA_BLOCK_NUM_TENSORS; i++) {
            char name[48];
            snprintf(name, sizeof name, "blocks.%lld.%s", (long long)b, block_tensor_names[i]);
            add_tensor(l, name, rows[i], cols[i], cols[i] == 1 ? 1 : 2, split[i], tp);
        }
        if (b == 0) l->block_numel = l->total - l->block_offset0;
    }
    add_tensor(l, "ln_f.weight", C, 1, 1, INSITRA_TP_REPLICATED, tp);
    add_tensor(l, "ln_f.bias", C, 1, 1, INSITRA_TP_REPLICATED, tp);
    add_tensor(l, "head.weight", d->out_features, C, 2, INSITRA_TP_REPLICATED, tp);
    add_tensor(l, "head.bias", d->out_features, 1, 1, INSITRA_TP_REPLICATED, tp);
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

insitra_tp_window insitra_tensor_tp_window(const insitra_tensor_desc *t, int64_t r)
{
    const int64_t R = t->shape[0];
    insitra_tp_window w = {.n = 1, .rows = {R}};
    switch (t->split) {
    case INSITRA_TP_REPLICATED: break;
    case INSITRA_TP_ROWS: w.global_row[0] = r * R; break;
    case INSITRA_TP_COLS: w.col0 = r * t->shape[1]; break;
    case INSITRA_TP_HEADS: {
        /* rows [q | k | v] of C each; rank r's heads are rows [r C/tp, (r+1) C/tp) of each */
        const int64_t part = R / 3, C = t->global_shape[0] / 3;
        w.n = 3;
        for (int i = 0; i < 3; i++) {
            w.local_row[i] = i * part;
            w.global_row[i] = i * C + r * part;
            w.rows[i] = part;
        }
        break;
    }
    }
    return w;
}

void insitra_tensor_tp_runs(const insitra_tensor_desc *t, int64_t r,
                            void (*fn)(void *ctx, int64_t local, int64_t global, int64_t count), void *ctx)
{
    const insitra_tp_window w = insitra_tensor_tp_window(t, r);
    const int64_t K = t->shape[1], GK = t->global_shape[1];
    for (int i = 0; i < w.n; i++) {
        if (K == GK) { /* whole rows: one run */
            fn(ctx, w.local_row[i] * K, w.global_row[i] * GK, w.rows[i] * K);
            continue;
        }
        for (int64_t row = 0; row < w.rows[i]; row++)
            fn(ctx, (w.local_row[i] + row) * K, (w.global_row[i] + row) * GK + w.col0, K);
    }
}

int64_t insitra_param_layout_find(const insitra_param_layout *l, const char *name)
{
    for (int64_t i = 0; i < l->num_tensors; i++)
        if (strcmp(l->tensors[i].name, name) == 0) return i;
    return -1;
}

/* Carves the activation buffer: with base == NULL it only counts (the same
 * code sizes and binds, so they cannot disagree). Returns bytes used,
 * saturated at INSITRA_SIZE_OVERFLOW (lib/checked.h): B x T x C x L, or a
 * materialised attention's B x H x T x T, reaches 2^62 within the config's ranges. Callers bind only after the count
 * is known to fit. */
static int64_t carve_acts(insitra_acts *a, const insitra_model_dims *d, int64_t B, size_t es,
                          int64_t att_bytes, size_t align, char *base)
{
    const int64_t f = (int64_t)sizeof(float), e = (int64_t)es, C = d->d_model, tp = insitra_model_dims_tp(d);
    /* Nl residual-stream rows, Ng the tp group's rows; Cl, a rank's share of a width C */
    const int64_t Nl = insitra_size_mul(B, insitra_model_dims_tokens(d));
    const int64_t Ng = insitra_size_mul(B, insitra_model_dims_attn_tokens(d)), Cl = C / tp;
    const int64_t NC = insitra_size_mul(Nl, C), NgC = insitra_size_mul(Ng, C);
    const int64_t NgCl = insitra_size_mul(Ng, Cl), NgCl3 = insitra_size_mul(3, NgCl), NgCl4 = insitra_size_mul(4, NgCl);
    int64_t used = 0;
    /* every buffer on an `align` boundary: vector loads and cuBLASLt want it */
#define CARVE(ptr, count, elem)                                                                    \
    do {                                                                                           \
        used = insitra_size_align(used, (int64_t)align);                                           \
        if (base) (ptr) = (void *)(base + used);                                                   \
        used = insitra_size_add(used, insitra_size_mul((count), (elem)));                          \
    } while (0)
    insitra_acts scratch_a;
    insitra_acts *aa = a ? a : &scratch_a;
    CARVE(aa->x, insitra_size_mul(Nl, d->in_features), e);
    aa->x_f32 = NULL;
    if (es != sizeof(float)) CARVE(aa->x_f32, insitra_size_mul(Nl, d->in_features), f);
    CARVE(aa->y, insitra_size_mul(Nl, d->out_features), f);
    CARVE(aa->encoded, NC, e);
    /* A block's activations: every block's kept for backward, or (recompute)
     * one set that each block's forward and recomputation use in turn, and
     * only the blocks' outputs (the next blocks' inputs) kept. */
    insitra_block_acts shared = {0};
    for (int64_t l = 0; l < d->n_layers; l++) {
        insitra_block_acts scratch, *ba = a ? &a->blocks[l] : &scratch;
        if (d->recompute && l > 0) {
            void *res_out = NULL;
            CARVE(res_out, NC, e);
            *ba = shared;
            ba->res_out = res_out;
            continue;
        }
        CARVE(ba->ln1, NgC, e);
        CARVE(ba->ln1_mean, Nl, f);
        CARVE(ba->ln1_rstd, Nl, f);
        CARVE(ba->qkv, NgCl3, e);
        CARVE(ba->att, att_bytes, 1);
        CARVE(ba->atty, NgCl, e);
        CARVE(ba->res_att, NC, e);
        CARVE(ba->ln2, NgC, e);
        CARVE(ba->ln2_mean, Nl, f);
        CARVE(ba->ln2_rstd, Nl, f);
        CARVE(ba->fch, NgCl4, e);
        CARVE(ba->fch_gelu, NgCl4, e);
        CARVE(ba->res_out, NC, e);
        shared = *ba;
    }
    CARVE(aa->lnf, NC, e);
    CARVE(aa->lnf_mean, Nl, f);
    CARVE(aa->lnf_rstd, Nl, f);
    CARVE(aa->out, insitra_size_mul(Nl, d->out_features), f);
    aa->ring = NULL;
    if (d->cp > 1)
        CARVE(aa->ring,
              insitra_attention_ring_scratch_bytes(B, insitra_model_dims_attn_tokens(d), Cl,
                                                   insitra_model_dims_heads(d), es),
              1);
    aa->tp_local = aa->tp_part = aa->tp_pieces = NULL;
    if (tp > 1) {
        CARVE(aa->tp_local, NC, e);
        CARVE(aa->tp_part, NgC, e);
        CARVE(aa->tp_pieces, NgC, e);
    }
    CARVE(aa->dres, NC, e);
    CARVE(aa->dln, NgC, e);
    CARVE(aa->datty, NgCl, e);
    CARVE(aa->dqkv, NgCl3, e);
    CARVE(aa->dfch, NgCl4, e);
    CARVE(aa->dout, insitra_size_mul(Nl, d->out_features), e);
#undef CARVE
    return used;
}

int64_t insitra_model_act_bytes(const insitra_model_dims *d, int64_t max_batch, size_t act_size,
                                int64_t att_bytes, size_t align)
{
    return carve_acts(NULL, d, max_batch, act_size, att_bytes, align, NULL);
}

insitra_status insitra_model_create_on(insitra_model *m, insitra_backend *be,
                                       const insitra_model_dims *d, int64_t max_batch,
                                       bool full_params, bool full_grads)
{
    memset(m, 0, sizeof *m);
    m->dims = *d;
    m->be = be;
    m->max_batch = max_batch;
    INSITRA_CHECK(insitra_param_layout_create(&m->layout, d));
    m->a.blocks = calloc((size_t)(d->n_layers > 0 ? d->n_layers : 1), sizeof(insitra_block_acts));
    if (!m->a.blocks) {
        insitra_model_free(m);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "model: out of host memory");
    }
    const insitra_backend_desc *desc = be->desc;
    const int64_t att = desc->attention_state_bytes(d, max_batch, be->act_size);
    m->act_bytes = insitra_model_act_bytes(d, max_batch, be->act_size, att, desc->align);
    if (m->act_bytes == INSITRA_SIZE_OVERFLOW) {
        insitra_model_free(m);
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "model: the activations of %lld samples (config keys "
                                 "'training.micro_batch_size' or 'training.batch_size', with "
                                 "'model.seq_len', 'model.n_heads', 'model.d_model', 'model.n_layers') "
                                 "need more than 2^63 - 1 bytes, the most a 64-bit size holds",
                                 (long long)max_batch);
    }
    const int64_t P = m->layout.total;
    insitra_status s = be->i->alloc(be, (size_t)m->act_bytes, "activations", &m->act_memory);
    if (s == INSITRA_STATUS_OK && full_params)
        s = be->i->alloc(be, (size_t)P * be->act_size, "parameters", &m->params);
    if (s == INSITRA_STATUS_OK && full_grads)
        s = be->i->alloc(be, (size_t)P * sizeof(float), "gradients", (void **)&m->grads);
    if (s == INSITRA_STATUS_OK) s = be->i->reserve(be, d, max_batch);
    if (s != INSITRA_STATUS_OK) {
        insitra_model_free(m);
        return s;
    }
    carve_acts(&m->a, d, max_batch, be->act_size, att, desc->align, m->act_memory);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_model_create(insitra_model *m, const insitra_model_dims *d, int64_t max_batch)
{
    insitra_backend *be;
    INSITRA_CHECK(insitra_backend_cpu_create(&be));
    insitra_status s = insitra_model_create_on(m, be, d, max_batch, true, true);
    if (s != INSITRA_STATUS_OK) {
        insitra_backend_free(be);
        return s;
    }
    m->own_be = be;
    return INSITRA_STATUS_OK;
}

void insitra_model_free(insitra_model *m)
{
    if (m->be) {
        m->be->i->release(m->be, m->params);
        m->be->i->release(m->be, m->grads);
        m->be->i->release(m->be, m->act_memory);
    }
    free(m->a.blocks);
    insitra_param_layout_free(&m->layout);
    insitra_backend *own = m->own_be;
    memset(m, 0, sizeof *m);
    if (own) insitra_backend_free(own);
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

typedef struct slice_ctx {
    float *local;
    const float *global;
} slice_ctx;

static void slice_run(void *ctx, int64_t local, int64_t global, int64_t count)
{
    slice_ctx *c = ctx;
    memcpy(c->local + local, c->global + global, (size_t)count * sizeof(float));
}

void insitra_param_unit_slice(const insitra_param_layout *local, const insitra_param_layout *global, int64_t unit,
                              int64_t tp_rank, const float *global_unit, float *local_unit)
{
    const insitra_param_unit *lu = &local->units[unit], *gu = &global->units[unit];
    for (int64_t k = 0; k < lu->num_tensors; k++) {
        const insitra_tensor_desc *t = &local->tensors[lu->first_tensor + k];
        const insitra_tensor_desc *g = &global->tensors[gu->first_tensor + k];
        slice_ctx c = {local_unit + (t->offset - lu->offset), global_unit + (g->offset - gu->offset)};
        insitra_tensor_tp_runs(t, tp_rank, slice_run, &c);
    }
}

void insitra_param_init(const insitra_param_layout *l, int64_t n_layers, uint64_t seed, double std,
                        float *params)
{
    insitra_rng rng;
    insitra_rng_seed(&rng, seed, 0);
    for (int64_t u = 0; u < l->num_units; u++)
        insitra_param_init_unit(l, u, n_layers, std, &rng, params + l->units[u].offset);
}

void insitra_model_init_params(insitra_model *m, uint64_t seed, double std)
{
    insitra_param_init(&m->layout, m->dims.n_layers, seed, std, (float *)m->params);
}

void insitra_model_zero_grads(insitra_model *m)
{
    if (m->grads) memset(m->grads, 0, (size_t)m->layout.total * sizeof(float));
}
