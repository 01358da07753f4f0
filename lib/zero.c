#include "zero.h"

#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "error.h"
#include "rng.h"

/* ---- memory: one carving per category, counted (base NULL) or bound ---- */

typedef struct carver {
    char *base;
    int64_t used;
    int64_t align;
} carver;

/* Saturating (lib/checked.h): the planner sizes any configuration and world size. */
static void *take(carver *c, int64_t bytes)
{
    c->used = insitra_size_align(c->used, c->align);
    void *p = c->base ? c->base + c->used : NULL;
    c->used = insitra_size_add(c->used, bytes);
    return p;
}

static int64_t mul(int64_t a, int64_t b) { return insitra_size_mul(a, b); }

/* tp > 1: floats of the replicated tensors' gradients each rank sums over the
 * tp group once the dp x cp reduction is done: the whole tensors at stage 0
 * (every rank updates all of them), else its slots of them. */
static int64_t tp_replicated_floats(int stage, const insitra_param_layout *l, const insitra_shard_layout *sl)
{
    int64_t n = 0;
    for (int64_t i = 0; l->tp > 1 && i < l->num_tensors; i++)
        if (l->tensors[i].split == INSITRA_TP_REPLICATED)
            n = insitra_size_add(n, stage == 0 ? l->tensors[i].numel : sl->len[i]);
    return n;
}

/* What the stage keeps, by category, with z's pointers bound when base is given. */
static insitra_zero_bytes carve(insitra_zero *z, int stage, bool separate, size_t act_size, size_t align,
                                const insitra_param_layout *l, const insitra_shard_layout *sl,
                                char *const base[4])
{
    insitra_zero scratch;
    if (!z) z = &scratch;
    const int64_t P = l->total, S = sl->total, U = sl->max_unit_len, N = sl->dp;
    const int64_t Ub = sl->max_bucket_len, Pb = sl->max_bucket_numel;
    const int64_t Pu = l->max_unit_numel, es = (int64_t)act_size, f = (int64_t)sizeof(float);
    const int64_t nt = l->num_tensors;
    insitra_zero_bytes b;

    carver c = {base ? base[0] : NULL, 0, (int64_t)align};
    z->master = separate ? take(&c, mul(stage == 0 ? P : S, f)) : stage == 3 ? take(&c, mul(S, f)) : NULL;
    z->work = stage <= 2 ? take(&c, mul(P, es)) : NULL;
    if (!separate && stage <= 2) z->master = NULL; /* the working parameters are the master */
    z->send = separate && stage >= 1 ? take(&c, mul(S, es)) : NULL;
    for (int k = 0; k < 2; k++) z->gather_unit[k] = stage == 3 ? take(&c, mul(Pu, es)) : NULL;
    b.params = c.used;

    c = (carver){base ? base[1] : NULL, 0, (int64_t)align};
    z->grads = stage <= 1 ? take(&c, mul(P, f)) : NULL;
    z->grad_shard = stage >= 2 ? take(&c, mul(S, f)) : NULL;
    b.grads = c.used;

    c = (carver){base ? base[2] : NULL, 0, (int64_t)align};
    z->m = take(&c, mul(stage == 0 ? P : S, f));
    z->v = take(&c, mul(stage == 0 ? P : S, f));
    b.moments = c.used;

    /* On one rank stages 0-1 need no reduction: the local gradient is the sum;
     * stages 1-2 gather parameters through the packed buffers unless one
     * rank updates them in place. */
    const bool reduces = N > 1 || stage >= 2;
    const bool gathers = (stage == 1 || stage == 2) && (N > 1 || separate);
    c = (carver){base ? base[3] : NULL, 0, (int64_t)align};
    for (int k = 0; k < 2; k++) {
        z->reduce_packed[k] = reduces || gathers ? take(&c, mul(mul(N, Ub), f)) : NULL;
        z->reduce_recv[k] = reduces ? take(&c, mul(Ub, f)) : NULL;
    }
    if (!separate && (stage == 1 || stage == 2)) z->send = take(&c, mul(mul(2, Ub), f));
    for (int k = 0; k < 2; k++) /* stages 1-2 gather parameters into the idle reduce buffers */
        z->gather_packed[k] = stage == 3 ? take(&c, mul(mul(N, U), es)) : z->reduce_packed[k];
    z->unit_grads = stage >= 2 ? take(&c, mul(Pb, f)) : NULL;
    z->copies = take(&c, nt * (int64_t)sizeof(insitra_shard_copy));
    z->bucket_copies = take(&c, nt * (int64_t)sizeof(insitra_shard_copy));
    z->update_segs = take(&c, nt * (int64_t)sizeof(insitra_update_segment));
    z->norm_segs = take(&c, nt * (int64_t)sizeof(insitra_update_segment));
    const int64_t R = tp_replicated_floats(stage, l, sl);
    z->tp_send = R > 0 ? take(&c, mul(R, f)) : NULL;
    z->tp_recv = R > 0 ? take(&c, mul(mul(l->tp, R), f)) : NULL;
    b.comm = c.used;
    return b;
}

insitra_zero_bytes insitra_zero_bytes_for(int stage, bool master_separate, size_t act_size, size_t align,
                                          const insitra_param_layout *l, const insitra_shard_layout *sl)
{
    return carve(NULL, stage, master_separate, act_size, align, l, sl, NULL);
}

/* ---- tables ---- */

/* The per-tensor shard copies (relative to the tensor's unit, and to its
 * bucket), and the AdamW and norm segments. */
static insitra_status build_tables(insitra_zero *z)
{
    const insitra_param_layout *l = z->layout;
    const insitra_shard_layout *sl = &z->sl;
    const int64_t nt = l->num_tensors, r = sl->rank;
    insitra_shard_copy *copies = calloc((size_t)(2 * nt), sizeof *copies), *bucket_copies = copies + nt;
    insitra_update_segment *upd = calloc((size_t)nt, sizeof *upd), *norm = calloc((size_t)nt, sizeof *norm);
    z->tp_runs = calloc((size_t)nt, sizeof *z->tp_runs);
    z->n_tp_runs = 0;
    if (!copies || !upd || !norm || !z->tp_runs) {
        free(copies);
        free(upd);
        free(norm);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "ZeRO: out of memory for the shard tables");
    }
    z->max_seg = 0;
    for (int64_t u = 0; u < l->num_units; u++) {
        const insitra_param_unit *pu = &l->units[u];
        const int64_t b = sl->bucket_of[u], bucket_flat = l->units[sl->bucket_first[b]].offset;
        for (int64_t i = pu->first_tensor; i < pu->first_tensor + pu->num_tensors; i++) {
            const insitra_tensor_desc *t = &l->tensors[i];
            copies[i] = (insitra_shard_copy){t->offset - pu->offset, t->numel, sl->len[i],
                                             sl->offset[i] - sl->unit_offset[u]};
            bucket_copies[i] = (insitra_shard_copy){t->offset - bucket_flat, t->numel, sl->len[i],
                                                    sl->offset[i] - sl->bucket_offset[b]};
            if (t->numel > z->max_numel) z->max_numel = t->numel;
        }
    }
    for (int64_t i = 0; i < nt; i++) {
        const insitra_tensor_desc *t = &l->tensors[i];
        const int64_t mine = insitra_shard_count(sl, i, t->numel, r);
        const int64_t slot_in_full = t->offset + r * sl->len[i];
        insitra_update_segment *s = &upd[i];
        s->decay = t->decay;
        if (z->stage == 0) {
            *s = (insitra_update_segment){t->offset, t->offset, t->offset, t->offset, t->numel, t->decay};
        } else {
            s->count = mine;
            s->state = sl->offset[i];
            s->grad = z->stage == 1 ? slot_in_full : sl->offset[i];
            s->param = z->master ? sl->offset[i] : slot_in_full; /* fp32 stages 1-2: in place */
            s->copy = sl->offset[i];
        }
        norm[i] = (insitra_update_segment){0, z->stage <= 1 ? slot_in_full : sl->offset[i], 0, 0, mine, 0};
        if (s->count > z->max_seg) z->max_seg = s->count;
        if (l->tp > 1 && t->split == INSITRA_TP_REPLICATED) {
            /* summed over tp after the reduction (tp_sum_replicated); the norm counts a
             * replicated tensor once, on tp rank 0 */
            z->tp_runs[z->n_tp_runs++] = z->stage == 0 ? (insitra_update_segment){.grad = t->offset, .count = t->numel}
                                                       : norm[i];
            if (z->model->tp_rank != 0) norm[i].count = 0;
        }
    }
    z->n_segs = nt;
    insitra_backend *be = z->be;
    /* the unit-relative table, then the bucket-relative one */
    insitra_status s = be->i->upload(be, z->copies, copies, (size_t)nt * sizeof *copies);
    if (s == INSITRA_STATUS_OK)
        s = be->i->upload(be, z->bucket_copies, bucket_copies, (size_t)nt * sizeof *bucket_copies);
    if (s == INSITRA_STATUS_OK) s = be->i->upload(be, z->update_segs, upd, (size_t)nt * sizeof *upd);
    if (s == INSITRA_STATUS_OK) s = be->i->upload(be, z->norm_segs, norm, (size_t)nt * sizeof *norm);
    if (s == INSITRA_STATUS_OK) s = be->i->synchronize(be);
    free(copies);
    free(upd);
    free(norm);
    return s;
}

/* ---- failures inside hooks: the first one is kept and every later call is skipped ---- */

#define HOOK_TRY(z, call)                                                   \
    do {                                                                    \
        if ((z)->error == INSITRA_STATUS_OK) (z)->error = (call);           \
    } while (0)

static void progress(insitra_zero *z)
{
    z->be->i->progress(z->be, z->reduce_h, 2);
    if (z->stage == 3) z->be->i->progress(z->be, z->gather_h, 2);
}

/* Unit u's tensor table and where its slots sit among a rank's slots. */
static const insitra_shard_copy *unit_copies(const insitra_zero *z, int64_t u)
{
    return z->copies + z->layout->units[u].first_tensor;
}

static insitra_status unpack(insitra_zero *z, int64_t u, void *flat, const void *packed, int64_t first_rank,
                             int64_t ranks, insitra_dtype t)
{
    const insitra_param_unit *pu = &z->layout->units[u];
    return z->be->i->shard_unpack(z->be, flat, packed, unit_copies(z, u), pu->num_tensors,
                                  z->sl.unit_len[u], first_rank, ranks, z->max_numel, t);
}

/* Bucket b's tensors: the first one's index, and how many. */
static int64_t bucket_tensors(const insitra_zero *z, int64_t b, int64_t *n)
{
    const insitra_param_unit *first = &z->layout->units[z->sl.bucket_first[b]];
    const insitra_param_unit *last = first + z->sl.bucket_units[b] - 1;
    *n = last->first_tensor + last->num_tensors - first->first_tensor;
    return first->first_tensor;
}

/* Bucket b's tensors, flat (from its first unit's offset) <-> packed (ranks, bucket_len). */
static insitra_status pack_bucket(insitra_zero *z, int64_t b, void *packed, const void *flat, int64_t first_rank,
                                  int64_t ranks, insitra_dtype t)
{
    int64_t n;
    const int64_t first = bucket_tensors(z, b, &n);
    return z->be->i->shard_pack(z->be, packed, flat, z->bucket_copies + first, n, z->sl.bucket_len[b], first_rank,
                                ranks, z->max_numel, t);
}

static insitra_status unpack_bucket(insitra_zero *z, int64_t b, void *flat, const void *packed, int64_t first_rank,
                                    int64_t ranks, insitra_dtype t)
{
    int64_t n;
    const int64_t first = bucket_tensors(z, b, &n);
    return z->be->i->shard_unpack(z->be, flat, packed, z->bucket_copies + first, n, z->sl.bucket_len[b],
                                  first_rank, ranks, z->max_numel, t);
}

/* Where bucket b's first unit starts in the flat layout. */
static int64_t bucket_flat(const insitra_zero *z, int64_t b)
{
    return z->layout->units[z->sl.bucket_first[b]].offset;
}

/* ---- gradients: reduce-scatter one bucket of units at a time ---- */

/* Stage 0's all-reduce is a reduce-scatter followed by an all-gather of the
 * summed slots: the same summation as stages 1-3, so every stage computes
 * bit-identical gradients. This starts the all-gather half after the
 * reduce-scatter (chained: the host does not wait for it). */
static insitra_status advance_reduce(insitra_zero *z, int k)
{
    insitra_backend *be = z->be;
    INSITRA_CHECK(be->i->chain(be, &z->reduce_h[k]));
    z->reduce_gathering[k] = true;
    return be->i->all_gather(be, z->group, z->reduce_recv[k], z->reduce_packed[k],
                             z->sl.bucket_len[z->reduce_id[k]], INSITRA_DTYPE_F32, &z->reduce_h[k]);
}

/* Completes whatever reduction slot k holds and files its result. */
static insitra_status finish_reduce(insitra_zero *z, int k)
{
    const int64_t b = z->reduce_id[k];
    if (b < 0) return INSITRA_STATUS_OK;
    insitra_backend *be = z->be;
    if (z->stage == 0 && !z->reduce_gathering[k]) INSITRA_CHECK(advance_reduce(z, k));
    INSITRA_CHECK(be->i->wait(be, &z->reduce_h[k]));
    z->reduce_id[k] = -1;
    z->reduce_gathering[k] = false;
    if (z->stage == 0) /* every rank's summed slots back into the full gradients */
        return unpack_bucket(z, b, z->grads + bucket_flat(z, b), z->reduce_packed[k], 0, z->sl.dp,
                             INSITRA_DTYPE_F32);
    if (z->stage == 1) /* the summed slots replace this rank's slots of the local gradients */
        return unpack_bucket(z, b, z->grads + bucket_flat(z, b), z->reduce_recv[k], z->sl.rank, 1,
                             INSITRA_DTYPE_F32);
    return be->i->add(be, z->grad_shard + z->sl.bucket_offset[b], z->reduce_recv[k], z->sl.bucket_len[b]);
}

/* Packs bucket b's gradients (bucket_grads: from its first unit's flat offset)
 * and starts their reduce-scatter. */
static insitra_status start_reduce(insitra_zero *z, int64_t b, const float *bucket_grads)
{
    const int k = z->next_reduce;
    z->next_reduce ^= 1;
    INSITRA_CHECK(finish_reduce(z, k));
    /* Stage 0: the previous bucket's reduce-scatter has had this bucket's
     * backward to finish in; its all-gather now overlaps the next backward. */
    if (z->stage == 0 && z->reduce_id[k ^ 1] >= 0 && !z->reduce_gathering[k ^ 1])
        INSITRA_CHECK(advance_reduce(z, k ^ 1));
    INSITRA_CHECK(pack_bucket(z, b, z->reduce_packed[k], bucket_grads, 0, z->sl.dp, INSITRA_DTYPE_F32));
    z->reduce_id[k] = b;
    return z->be->i->reduce_scatter(z->be, z->group, z->reduce_packed[k], z->reduce_recv[k],
                                    z->sl.bucket_len[b], INSITRA_DTYPE_F32, &z->reduce_h[k]);
}

/* ---- parameters: gather one unit at a time (stage 3) ---- */

/* The slots every rank all-gathers: the compute-type copy, or the fp32 master itself. */
static const void *gather_source(const insitra_zero *z)
{
    return z->master_separate ? z->send : (const void *)z->master;
}

static insitra_status start_gather(insitra_zero *z, int64_t u, int k)
{
    insitra_backend *be = z->be;
    if (z->gather_id[k] >= 0 && !z->gather_ready[k]) INSITRA_CHECK(be->i->wait(be, &z->gather_h[k]));
    z->gather_id[k] = u;
    z->gather_ready[k] = false;
    const char *src = (const char *)gather_source(z) + (size_t)z->sl.unit_offset[u] * be->act_size;
    return be->i->all_gather(be, z->group, src, z->gather_packed[k], z->sl.unit_len[u], be->act,
                             &z->gather_h[k]);
}

/* Makes unit u's parameters resident in a gather slot, returned in *slot;
 * starts gathering `next` (-1: none) into the other slot meanwhile. */
static insitra_status acquire_unit(insitra_zero *z, int64_t u, int64_t next, int *slot)
{
    int k = z->gather_id[0] == u ? 0 : z->gather_id[1] == u ? 1 : -1;
    if (k < 0) {
        k = z->gather_id[0] == next ? 1 : 0;
        INSITRA_CHECK(start_gather(z, u, k));
    }
    if (!z->gather_ready[k]) {
        INSITRA_CHECK(z->be->i->wait(z->be, &z->gather_h[k]));
        INSITRA_CHECK(unpack(z, u, z->gather_unit[k], z->gather_packed[k], 0, z->sl.dp, z->be->act));
        z->gather_ready[k] = true;
    }
    *slot = k;
    if (next >= 0 && z->gather_id[1 - k] != next) INSITRA_CHECK(start_gather(z, next, 1 - k));
    return INSITRA_STATUS_OK;
}

/* ---- the model's hooks ---- */

static insitra_status unit_begin(void *ctx, int64_t u, insitra_pass pass, const void **params,
                                 float **grads)
{
    insitra_zero *z = ctx;
    insitra_backend *be = z->be;
    const insitra_param_unit *pu = &z->layout->units[u];
    const int64_t last = z->layout->num_units - 1;
    *params = NULL;
    *grads = NULL;
    if (z->stage <= 2) {
        *params = (const char *)z->work + (size_t)pu->offset * be->act_size;
    } else {
        const int64_t next = pass == INSITRA_PASS_FORWARD ? (u < last ? u + 1 : -1) : u - 1;
        int k = 0;
        HOOK_TRY(z, acquire_unit(z, u, next, &k));
        *params = z->gather_unit[k];
    }
    if (pass == INSITRA_PASS_BACKWARD) {
        if (z->stage <= 1) {
            *grads = z->grads + pu->offset;
        } else { /* the unit's place among its bucket's gradients */
            *grads = z->unit_grads + (pu->offset - bucket_flat(z, z->sl.bucket_of[u]));
            HOOK_TRY(z, be->i->fill_zero(be, *grads, (size_t)pu->numel * sizeof(float)));
        }
    }
    progress(z);
    return z->error;
}

static insitra_status unit_end(void *ctx, int64_t u, insitra_pass pass)
{
    insitra_zero *z = ctx;
    const int64_t b = z->sl.bucket_of[u];
    /* Backward runs from the last unit down: a bucket is complete at its first unit. */
    if (pass == INSITRA_PASS_BACKWARD && z->sl.bucket_first[b] == u) {
        /* On one rank stages 0-1 hold the sum already. */
        if (z->stage <= 1 && z->communicate && z->sl.dp > 1)
            HOOK_TRY(z, start_reduce(z, b, z->grads + bucket_flat(z, b)));
        else if (z->stage >= 2)
            HOOK_TRY(z, start_reduce(z, b, z->unit_grads));
    }
    progress(z);
    return z->error;
}

/* ---- lifetime ---- */

static void reset_flight(insitra_zero *z)
{
    for (int k = 0; k < 2; k++) {
        z->reduce_h[k] = z->gather_h[k] = (insitra_coll){.req = MPI_REQUEST_NULL, .event = -1};
        z->gather_id[k] = z->reduce_id[k] = -1;
        z->gather_ready[k] = z->reduce_gathering[k] = false;
    }
    z->next_reduce = 0;
}

insitra_status insitra_zero_create(insitra_zero *z, int stage, bool master_separate, int64_t bucket_floats,
                                   const insitra_comm *dp, insitra_model *model)
{
    memset(z, 0, sizeof *z);
    insitra_backend *be = model->be;
    z->stage = stage;
    z->master_separate = master_separate;
    z->be = be;
    z->dp = dp;
    z->model = model;
    z->layout = &model->layout;
    reset_flight(z);
    INSITRA_CHECK(insitra_shard_layout_create(&z->sl, z->layout, dp->size, dp->rank, bucket_floats));
    z->bytes = carve(NULL, stage, master_separate, be->act_size, be->desc->align, z->layout, &z->sl, NULL);
    const int64_t sizes[4] = {z->bytes.params, z->bytes.grads, z->bytes.moments, z->bytes.comm};
    void **mem[4] = {&z->mem_params, &z->mem_grads, &z->mem_moments, &z->mem_comm};
    static const char *what[4] = {"parameters", "gradients", "AdamW moments", "communication buffers"};
    for (int c = 0; c < 4; c++) {
        insitra_status s = be->i->alloc(be, (size_t)sizes[c], what[c], mem[c]);
        if (s != INSITRA_STATUS_OK)
            return insitra_error_prefix(s, "ZeRO stage %d: ", stage);
    }
    char *const base[4] = {z->mem_params, z->mem_grads, z->mem_moments, z->mem_comm};
    carve(z, stage, master_separate, be->act_size, be->desc->align, z->layout, &z->sl, base);
    INSITRA_CHECK(build_tables(z));

    /* The host copies of the state: the buffers themselves where they are host memory. */
    const int64_t P = z->layout->total, S = z->sl.total, moments = stage == 0 ? P : S;
    z->host_params_full = !master_separate ? stage <= 2 : stage == 0;
    const int64_t hp = z->host_params_full ? P : S;
    if (be->host_memory) {
        z->host_params = z->master ? z->master : (float *)z->work;
        z->host_m = z->m;
        z->host_v = z->v;
    } else {
        z->host_mirror = calloc((size_t)(hp + 2 * moments), sizeof(float));
        if (!z->host_mirror)
            return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                     "ZeRO: cannot allocate %.1f MiB of host copies for checkpoints",
                                     (double)(hp + 2 * moments) * 4.0 / 1048576.0);
        z->host_params = z->host_mirror;
        z->host_m = z->host_params + hp;
        z->host_v = z->host_m + moments;
    }
    z->hooks = (insitra_model_hooks){.ctx = z, .unit_begin = unit_begin, .unit_end = unit_end};
    model->hooks = &z->hooks;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_zero_connect(insitra_zero *z)
{
    return z->be->i->group_create(z->be, z->dp, &z->group);
}

void insitra_zero_free(insitra_zero *z)
{
    insitra_backend *be = z->be;
    if (be) {
        if (z->group) be->i->group_free(be, z->group);
        be->i->release(be, z->mem_params);
        be->i->release(be, z->mem_grads);
        be->i->release(be, z->mem_moments);
        be->i->release(be, z->mem_comm);
    }
    if (z->model) z->model->hooks = NULL;
    free(z->host_mirror);
    free(z->tp_runs);
    insitra_shard_layout_free(&z->sl);
    memset(z, 0, sizeof *z);
}

/* ---- state in and out ---- */

insitra_status insitra_zero_init_host(insitra_zero *z, uint64_t seed, double std)
{
    const insitra_param_layout *l = z->layout;
    const insitra_model_dims *d = &z->model->dims;
    const int64_t moments = z->stage == 0 ? l->total : z->sl.total;
    /* tp > 1: each unit drawn whole (the tensors of tp = 1) and sliced */
    insitra_model_dims whole_dims = *d;
    whole_dims.tp = 1;
    insitra_param_layout whole = {0};
    if (l->tp > 1) INSITRA_CHECK(insitra_param_layout_create(&whole, &whole_dims));
    const int64_t drawn = l->tp > 1 ? whole.max_unit_numel : 0;
    float *unit = malloc((size_t)(drawn + l->max_unit_numel) * sizeof(float)), *mine = unit ? unit + drawn : NULL;
    if (!unit) {
        insitra_param_layout_free(&whole);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "ZeRO: out of memory initialising the parameters");
    }
    insitra_rng rng;
    insitra_rng_seed(&rng, seed, 0);
    for (int64_t u = 0; u < l->num_units; u++) {
        float *out = z->host_params_full ? z->host_params + l->units[u].offset : mine;
        if (l->tp > 1) {
            insitra_param_init_unit(&whole, u, d->n_layers, std, &rng, unit);
            insitra_param_unit_slice(l, &whole, u, z->model->tp_rank, unit, out);
        } else {
            insitra_param_init_unit(l, u, d->n_layers, std, &rng, out);
        }
        /* one unit at a time: no full copy ever exists */
        if (!z->host_params_full) insitra_shard_extract_unit(&z->sl, l, u, out, z->host_params + z->sl.unit_offset[u]);
    }
    free(unit);
    insitra_param_layout_free(&whole);
    memset(z->host_m, 0, (size_t)moments * sizeof(float));
    memset(z->host_v, 0, (size_t)moments * sizeof(float));
    return INSITRA_STATUS_OK;
}

/* Stages 1-2: every rank's updated slots (compute type, in send, or extracted
 * from the fp32 working parameters) all-gathered into the working parameters,
 * bucket by bucket, two in flight. */
static insitra_status redistribute(insitra_zero *z)
{
    insitra_backend *be = z->be;
    const int64_t nb = z->sl.num_buckets;
    for (int64_t b = 0; b < nb + 2; b++) {
        const int k = (int)(b % 2);
        const int64_t done = b - 2; /* the bucket whose gather used slot k before */
        if (done >= 0) {
            INSITRA_CHECK(be->i->wait(be, &z->gather_h[k]));
            char *dst = (char *)z->work + (size_t)bucket_flat(z, done) * be->act_size;
            INSITRA_CHECK(unpack_bucket(z, done, dst, z->gather_packed[k], 0, z->sl.dp, be->act));
        }
        if (b >= nb) continue;
        const void *src;
        if (z->master_separate) {
            src = (const char *)z->send + (size_t)z->sl.bucket_offset[b] * be->act_size;
        } else {
            float *slots = (float *)z->send + k * z->sl.max_bucket_len;
            INSITRA_CHECK(pack_bucket(z, b, slots, (const float *)z->work + bucket_flat(z, b), z->sl.rank, 1,
                                      INSITRA_DTYPE_F32));
            src = slots;
        }
        INSITRA_CHECK(be->i->all_gather(be, z->group, src, z->gather_packed[k], z->sl.bucket_len[b], be->act,
                                        &z->gather_h[k]));
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_zero_import(insitra_zero *z)
{
    insitra_backend *be = z->be;
    const int64_t P = z->layout->total, S = z->sl.total, moments = z->stage == 0 ? P : S;
    const size_t hp = (size_t)(z->host_params_full ? P : S) * sizeof(float);
    reset_flight(z);
    float *master = z->master ? z->master : (float *)z->work;
    INSITRA_CHECK(be->i->upload(be, master, z->host_params, hp));
    INSITRA_CHECK(be->i->upload(be, z->m, z->host_m, (size_t)moments * sizeof(float)));
    INSITRA_CHECK(be->i->upload(be, z->v, z->host_v, (size_t)moments * sizeof(float)));
    if (z->master_separate) {
        /* the compute-type copy from the master */
        INSITRA_CHECK(be->i->to_act(be, z->stage == 0 ? z->work : z->send, z->master, z->stage == 0 ? P : S));
        if (z->stage == 1 || z->stage == 2) INSITRA_CHECK(redistribute(z));
    }
    return be->i->synchronize(be);
}

insitra_status insitra_zero_export(insitra_zero *z)
{
    insitra_backend *be = z->be;
    const int64_t P = z->layout->total, S = z->sl.total, moments = z->stage == 0 ? P : S;
    const float *master = z->master ? z->master : (const float *)z->work;
    INSITRA_CHECK(be->i->download(be, z->host_params, master,
                                  (size_t)(z->host_params_full ? P : S) * sizeof(float)));
    INSITRA_CHECK(be->i->download(be, z->host_m, z->m, (size_t)moments * sizeof(float)));
    return be->i->download(be, z->host_v, z->v, (size_t)moments * sizeof(float));
}

/* ---- the step ---- */

insitra_status insitra_zero_begin_step(insitra_zero *z)
{
    z->error = INSITRA_STATUS_OK;
    if (z->stage <= 1)
        return z->be->i->fill_zero(z->be, z->grads, (size_t)z->layout->total * sizeof(float));
    return z->be->i->fill_zero(z->be, z->grad_shard, (size_t)z->sl.total * sizeof(float));
}

void insitra_zero_begin_pass(insitra_zero *z) { z->error = INSITRA_STATUS_OK; }

void insitra_zero_set_last_micro_batch(insitra_zero *z, bool last) { z->communicate = last; }

/* tp > 1: the replicated tensors' gradients (reduced over dp x cp already)
 * summed over the tp group, whose ranks computed them from different tokens
 * (sequence parallelism). Every rank adds the pieces in rank order, so all
 * get the same bits and the tensors stay replicas after the update. */
static insitra_status tp_sum_replicated(insitra_zero *z)
{
    insitra_backend *be = z->be;
    float *grads = z->stage <= 1 ? z->grads : z->grad_shard;
    int64_t n = 0;
    for (int64_t k = 0; k < z->n_tp_runs; n += z->tp_runs[k++].count)
        INSITRA_CHECK(be->i->copy(be, z->tp_send + n, grads + z->tp_runs[k].grad,
                                  (size_t)z->tp_runs[k].count * sizeof(float)));
    insitra_coll h = {.req = MPI_REQUEST_NULL, .event = -1};
    INSITRA_CHECK(be->i->all_gather(be, z->model->tp_group, z->tp_send, z->tp_recv, n, INSITRA_DTYPE_F32, &h));
    INSITRA_CHECK(be->i->wait(be, &h));
    INSITRA_CHECK(be->i->copy(be, z->tp_send, z->tp_recv, (size_t)n * sizeof(float)));
    for (int64_t r = 1; r < z->layout->tp; r++) INSITRA_CHECK(be->i->add(be, z->tp_send, z->tp_recv + r * n, n));
    n = 0;
    for (int64_t k = 0; k < z->n_tp_runs; n += z->tp_runs[k++].count)
        INSITRA_CHECK(be->i->copy(be, grads + z->tp_runs[k].grad, z->tp_send + n,
                                  (size_t)z->tp_runs[k].count * sizeof(float)));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_zero_finish_backward(insitra_zero *z)
{
    /* Oldest first, the order the reductions started. */
    HOOK_TRY(z, finish_reduce(z, z->next_reduce));
    HOOK_TRY(z, finish_reduce(z, z->next_reduce ^ 1));
    if (z->layout->tp > 1) HOOK_TRY(z, tp_sum_replicated(z));
    return z->error;
}

insitra_status insitra_zero_grad_sum_squares(insitra_zero *z, double *acc)
{
    const float *g = z->stage <= 1 ? z->grads : z->grad_shard;
    return z->be->i->grad_sum_squares(z->be, acc, g, z->norm_segs, z->n_segs, z->max_seg);
}

insitra_status insitra_zero_update(insitra_zero *z, const insitra_step_scalars *sc, const double *stats)
{
    insitra_backend *be = z->be;
    float *params = z->master ? z->master : (float *)z->work;
    void *copy = !z->master_separate ? NULL : z->stage == 0 ? z->work : z->send;
    const float *grads = z->stage <= 1 ? z->grads : z->grad_shard;
    INSITRA_CHECK(be->i->adamw(be, z->update_segs, z->n_segs, z->max_seg, params, copy, grads, z->m, z->v,
                               sc, stats));
    /* Stages 1-2 all-gather the updated slots; on one rank too with a separate
     * master, whose compute-type copy must reach the working parameters. */
    if ((z->stage == 1 || z->stage == 2) && (z->sl.dp > 1 || z->master_separate)) return redistribute(z);
    z->gather_id[0] = z->gather_id[1] = -1; /* stage 3: gathered copies are stale now */
    return INSITRA_STATUS_OK;
}

/* ---- whole-state helpers (host side, collective over dp) ---- */

/* Every rank's slots of a shard-shaped host buffer into a full one. */
static insitra_status gather_slots(insitra_zero *z, const float *slots, float *full)
{
    const insitra_param_layout *l = z->layout;
    float *packed = malloc((size_t)(z->sl.dp * z->sl.max_unit_len) * sizeof(float));
    if (!packed) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "ZeRO: out of memory gathering the state");
    insitra_status s = INSITRA_STATUS_OK;
    for (int64_t u = 0; u < l->num_units && s == INSITRA_STATUS_OK; u++) {
        const int count = (int)z->sl.unit_len[u];
        if (MPI_Allgather(slots + z->sl.unit_offset[u], count, MPI_FLOAT, packed, count, MPI_FLOAT,
                          z->dp->comm) != MPI_SUCCESS)
            s = insitra_error_set(INSITRA_STATUS_MPI_ERROR, "ZeRO: MPI_Allgather of the state failed");
        else
            insitra_shard_unpack_unit(&z->sl, l, u, packed, full + l->units[u].offset);
    }
    free(packed);
    return s;
}

insitra_status insitra_zero_gather_state(insitra_zero *z, float *params, float *m, float *v)
{
    INSITRA_CHECK(insitra_zero_export(z));
    const size_t bytes = (size_t)z->layout->total * sizeof(float);
    if (params) {
        if (z->host_params_full) memcpy(params, z->host_params, bytes);
        else INSITRA_CHECK(gather_slots(z, z->host_params, params));
    }
    for (int k = 0; k < 2; k++) {
        float *out = k == 0 ? m : v;
        const float *mine = k == 0 ? z->host_m : z->host_v;
        if (!out) continue;
        if (z->stage == 0) memcpy(out, mine, bytes);
        else INSITRA_CHECK(gather_slots(z, mine, out));
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_zero_gather_params(insitra_zero *z, float *full)
{
    return insitra_zero_gather_state(z, full, NULL, NULL);
}

insitra_status insitra_zero_set_params(insitra_zero *z, const float *full)
{
    const insitra_param_layout *l = z->layout;
    INSITRA_CHECK(insitra_zero_export(z)); /* keeps the moments as they are */
    for (int64_t u = 0; u < l->num_units; u++) {
        if (z->host_params_full)
            memcpy(z->host_params + l->units[u].offset, full + l->units[u].offset,
                   (size_t)l->units[u].numel * sizeof(float));
        else
            insitra_shard_extract_unit(&z->sl, l, u, full + l->units[u].offset,
                                       z->host_params + z->sl.unit_offset[u]);
    }
    return insitra_zero_import(z);
}

/* ---- the benchmark of the collectives (bench/bench_gpu_comm.c) ---- */

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The communication one step issues, alone: every bucket's gradient reduction
 * in backward order, then the parameter gathers (stages 1-2 after the
 * update, stage 3 forward's). */
static insitra_status step_comm(insitra_zero *z)
{
    const insitra_param_layout *l = z->layout;
    z->communicate = true;
    for (int64_t b = z->sl.num_buckets - 1; b >= 0; b--)
        INSITRA_CHECK(start_reduce(z, b, z->stage <= 1 ? z->grads + bucket_flat(z, b) : z->unit_grads));
    INSITRA_CHECK(insitra_zero_finish_backward(z));
    if (z->stage == 1 || z->stage == 2) INSITRA_CHECK(redistribute(z));
    for (int64_t u = 0; z->stage == 3 && u < l->num_units; u++) {
        int k;
        INSITRA_CHECK(acquire_unit(z, u, u + 1 < l->num_units ? u + 1 : -1, &k));
    }
    z->gather_id[0] = z->gather_id[1] = -1;
    return INSITRA_STATUS_OK;
}

/* The same bytes as one reduce-scatter and one all-gather of whole buffers. */
static insitra_status raw_comm(insitra_zero *z, char *buf)
{
    insitra_backend *be = z->be;
    const int64_t S = z->sl.total;
    insitra_coll h[2] = {{.req = MPI_REQUEST_NULL, .event = -1}, {.req = MPI_REQUEST_NULL, .event = -1}};
    float *src = (float *)buf, *dst = src + z->sl.dp * S;
    void *gathered = dst + S;
    INSITRA_CHECK(be->i->reduce_scatter(be, z->group, src, dst, S, INSITRA_DTYPE_F32, &h[0]));
    INSITRA_CHECK(be->i->all_gather(be, z->group, dst, gathered, S, INSITRA_DTYPE_F32, &h[1]));
    INSITRA_CHECK(be->i->wait(be, &h[0]));
    return be->i->wait(be, &h[1]);
}

insitra_status insitra_zero_time_collectives(insitra_zero *z, int reps, double *seconds, double *raw_seconds,
                                             int64_t *bytes)
{
    insitra_backend *be = z->be;
    const int64_t S = z->sl.total, N = z->sl.dp;
    const size_t raw_bytes = (size_t)(N * S + S + N * S) * sizeof(float);
    void *buf = NULL;
    INSITRA_CHECK(be->i->alloc(be, raw_bytes, "the raw comparison", &buf));
    double *times = calloc((size_t)(2 * reps), sizeof(double));
    insitra_status s = times ? INSITRA_STATUS_OK
                             : insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "time_collectives: out of memory");
    for (int r = 0; r < reps + 2 && s == INSITRA_STATUS_OK; r++) { /* two warm-up rounds */
        for (int raw = 0; raw < 2 && s == INSITRA_STATUS_OK; raw++) {
            s = be->i->synchronize(be);
            MPI_Barrier(z->dp->comm);
            const double t0 = MPI_Wtime();
            if (s == INSITRA_STATUS_OK) s = raw ? raw_comm(z, buf) : step_comm(z);
            if (s == INSITRA_STATUS_OK) s = be->i->synchronize(be);
            if (r >= 2) times[raw * reps + (r - 2)] = MPI_Wtime() - t0;
        }
    }
    be->i->release(be, buf);
    if (s == INSITRA_STATUS_OK) {
        qsort(times, (size_t)reps, sizeof(double), cmp_double);
        qsort(times + reps, (size_t)reps, sizeof(double), cmp_double);
        *seconds = times[reps / 2];
        *raw_seconds = times[reps + reps / 2];
        *bytes = 2 * N * S * (int64_t)sizeof(float);
    }
    free(times);
    return s;
}
