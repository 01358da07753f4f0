#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "error.h"
#include "optimizer.h"

/* The model as this rank runs it: one sample's tokens spread over
 * parallel.cp x parallel.tp ranks, each block's tensors over parallel.tp
 * (insitra_config_model_dims describes a whole sample and whole tensors, as a
 * surrogate or an export reads them). */
static insitra_model_dims engine_dims(const insitra_config *cfg)
{
    insitra_model_dims d = insitra_config_model_dims(cfg);
    d.cp = cfg->parallel.cp;
    d.tp = cfg->parallel.tp;
    return d;
}

/* Where the parts of the engine's own buffer start. */
typedef struct engine_small_layout {
    int64_t scalars, slots, norm, x_raw, bytes;
} engine_small_layout;

/* The engine's own buffer: the step's stats (4 doubles), its scalars, the
 * batch's slots, the feature maps and a micro-batch's raw inputs. */
static engine_small_layout engine_small_bytes(const insitra_config *cfg, size_t align)
{
    const int64_t a = (int64_t)align, Fi = cfg->model.in_features, Fo = cfg->model.out_features;
    engine_small_layout l;
    l.scalars = insitra_size_align(4 * (int64_t)sizeof(double), a);
    l.slots = insitra_size_align(l.scalars + (int64_t)sizeof(insitra_step_scalars), a);
    l.norm = insitra_size_align(l.slots + cfg->training.batch_size * (int64_t)sizeof(int64_t), a);
    l.x_raw = insitra_size_align(l.norm + insitra_feature_norm_bytes(Fi, Fo), a);
    const insitra_model_dims dims = engine_dims(cfg);
    l.bytes = l.x_raw + insitra_config_micro_batch(cfg) * insitra_model_dims_tokens(&dims) * Fi *
                            (int64_t)sizeof(float);
    return l;
}

/* Floats of a store of capacity samples. */
static int64_t store_bytes(int64_t capacity, int64_t xs, int64_t ys)
{
    return insitra_size_mul(insitra_size_mul(capacity, xs + ys), (int64_t)sizeof(float));
}

insitra_status insitra_engine_bytes_for(const insitra_config *cfg, int stage, int64_t dp,
                                        insitra_memory_usage *usage)
{
    const insitra_backend_desc *desc = insitra_backend_desc_for(cfg->device);
    const insitra_model_dims dims = engine_dims(cfg);
    const bool separate = cfg->precision == INSITRA_PRECISION_BF16;
    const size_t es = separate ? 2 : sizeof(float);
    const int64_t mb = insitra_config_micro_batch(cfg);
    insitra_param_layout layout;
    insitra_shard_layout sl;
    INSITRA_CHECK(insitra_shard_layouts_for(&dims, dp, insitra_config_bucket_floats(cfg), &layout, &sl));
    const insitra_zero_bytes z = insitra_zero_bytes_for(stage, separate, es, desc->align, &layout, &sl);
    const int64_t att = desc->attention_state_bytes(&dims, mb, es);
    /* a rank holds its own T / (cp tp) tokens of every sample */
    const int64_t Tc = insitra_model_dims_tokens(&dims);
    const int64_t xs = Tc * dims.in_features, ys = Tc * dims.out_features;
    const engine_small_layout small = engine_small_bytes(cfg, desc->align);
    const int64_t slots_at = small.slots;
    *usage = (insitra_memory_usage){
        .parameter_bytes = z.params,
        .gradient_bytes = z.grads,
        .optimizer_bytes = z.moments,
        .activation_bytes = insitra_size_add(insitra_model_act_bytes(&dims, mb, es, att, desc->align),
                                             desc->workspace_bytes(&dims, mb, es)),
        .communication_bytes = insitra_size_add(z.comm, slots_at),
        .sample_store_bytes = insitra_size_add(
            insitra_size_add(store_bytes(cfg->data.capacity, xs, ys),
                             store_bytes(insitra_config_held_out_capacity(cfg), xs, ys)),
            small.bytes - slots_at),
    };
    const int64_t parts[] = {usage->parameter_bytes, usage->gradient_bytes, usage->optimizer_bytes,
                             usage->activation_bytes, usage->communication_bytes, usage->sample_store_bytes};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        usage->total_bytes = insitra_size_add(usage->total_bytes, parts[i]);
    insitra_shard_layout_free(&sl);
    insitra_param_layout_free(&layout);
    return INSITRA_STATUS_OK;
}

/* The backend's copy of a host store, unless the backend reads the host's in place. */
static insitra_status store_create(insitra_engine *e, insitra_engine_store *st, const insitra_sample_store *host)
{
    insitra_backend *be = e->be;
    st->host = host;
    if (be->host_memory || host->capacity == 0) {
        st->x = host->x;
        st->y = host->y;
        return INSITRA_STATUS_OK;
    }
    const size_t xb = (size_t)(host->capacity * e->xs) * sizeof(float);
    const size_t yb = (size_t)(host->capacity * e->ys) * sizeof(float);
    const size_t at = (xb + be->desc->align - 1) / be->desc->align * be->desc->align;
    INSITRA_CHECK(be->i->alloc(be, at + yb, "the sample store (data.capacity)", &st->mem));
    st->x = st->mem;
    st->y = (float *)((char *)st->mem + at);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_engine_create(insitra_engine *e, const insitra_config *cfg, MPI_Comm comm,
                                     const insitra_comm *dp, const insitra_comm *cp, const insitra_comm *tp,
                                     const insitra_sample_store *store, const insitra_sample_store *held_out)
{
    memset(e, 0, sizeof *e);
    e->cfg = cfg;
    e->batch = cfg->training.batch_size;
    e->mb = insitra_config_micro_batch(cfg);
    e->xs = store->x_numel;
    e->ys = store->y_numel;
    e->cp = cp;
    e->tp = tp;
    const insitra_model_dims dims = engine_dims(cfg);
    e->seq_len = insitra_model_dims_tokens(&dims);
    INSITRA_CHECK(insitra_backend_create(&e->be, cfg, comm));
    insitra_backend *be = e->be;
    INSITRA_CHECK(insitra_model_create_on(&e->model, be, &dims, e->mb, false, false));
    e->model.cp_rank = dims.cp > 1 ? cp->rank : 0;
    e->model.tp_rank = dims.tp > 1 ? tp->rank : 0;
    INSITRA_CHECK(insitra_zero_create(&e->zero, (int)cfg->parallel.zero_stage,
                                      cfg->precision == INSITRA_PRECISION_BF16, insitra_config_bucket_floats(cfg),
                                      dp, &e->model));
    const engine_small_layout l = engine_small_bytes(cfg, be->desc->align);
    INSITRA_CHECK(be->i->alloc(be, (size_t)l.bytes, "step values", &e->mem));
    e->stats = e->mem;
    e->scalars = (insitra_step_scalars *)((char *)e->mem + l.scalars);
    e->slots = (int64_t *)((char *)e->mem + l.slots);
    insitra_feature_norm_carve(&e->norm, (char *)e->mem + l.norm, cfg->model.in_features,
                               cfg->model.out_features);
    e->x_raw = (float *)((char *)e->mem + l.x_raw);
    INSITRA_CHECK(store_create(e, &e->stores[INSITRA_STORE_TRAIN], store));
    return store_create(e, &e->stores[INSITRA_STORE_HELD_OUT], held_out);
}

insitra_status insitra_engine_set_norm(insitra_engine *e, const insitra_feature_norm *fm)
{
    /* the host struct's arrays are contiguous in carve order, like the backend's */
    return e->be->i->upload(e->be, e->norm.x_mean, fm->x_mean,
                            (size_t)insitra_feature_norm_bytes(fm->f_in, fm->f_out));
}

insitra_status insitra_engine_connect(insitra_engine *e)
{
    INSITRA_CHECK(insitra_zero_connect(&e->zero));
    if (e->model.dims.cp > 1) INSITRA_CHECK(e->be->i->group_create(e->be, e->cp, &e->model.cp_group));
    if (e->model.dims.tp > 1) INSITRA_CHECK(e->be->i->group_create(e->be, e->tp, &e->model.tp_group));
    INSITRA_CHECK(insitra_zero_init_host(&e->zero, (uint64_t)e->cfg->training.seed, e->cfg->model.init_std));
    return insitra_zero_import(&e->zero);
}

void insitra_engine_free(insitra_engine *e)
{
    insitra_backend *be = e->be;
    if (!be) return;
    be->i->synchronize(be);
    if (e->model.cp_group) be->i->group_free(be, e->model.cp_group);
    if (e->model.tp_group) be->i->group_free(be, e->model.tp_group);
    insitra_zero_free(&e->zero);
    insitra_model_free(&e->model);
    be->i->release(be, e->mem);
    for (int k = 0; k < 2; k++) be->i->release(be, e->stores[k].mem);
    insitra_backend_free(be);
    memset(e, 0, sizeof *e);
}

/* Calls fn for the runs of n rows of store st from first on, wrapping around. */
static insitra_status for_each_run(insitra_engine *e, const insitra_engine_store *st, int64_t first, int64_t n,
                                   insitra_status (*fn)(insitra_engine *, const insitra_engine_store *,
                                                        int64_t slot, int64_t done, int64_t run, const void *ctx),
                                   const void *ctx)
{
    const int64_t cap = st->host->capacity;
    for (int64_t done = 0; done < n;) {
        const int64_t slot = (first + done) % cap;
        const int64_t run = n - done < cap - slot ? n - done : cap - slot;
        INSITRA_CHECK(fn(e, st, slot, done, run, ctx));
        done += run;
    }
    return INSITRA_STATUS_OK;
}

typedef struct { const float *x, *y; } sample_src;
typedef struct { float *x, *y; } sample_dst;

static insitra_status store_run(insitra_engine *e, const insitra_engine_store *st, int64_t slot, int64_t done,
                                int64_t run, const void *ctx)
{
    const sample_src *src = ctx;
    insitra_backend *be = e->be;
    INSITRA_CHECK(be->i->copy(be, st->x + slot * e->xs, src->x + done * e->xs,
                              (size_t)(run * e->xs) * sizeof(float)));
    return be->i->copy(be, st->y + slot * e->ys, src->y + done * e->ys,
                       (size_t)(run * e->ys) * sizeof(float));
}

static insitra_status fetch_run(insitra_engine *e, const insitra_engine_store *st, int64_t slot, int64_t done,
                                int64_t run, const void *ctx)
{
    (void)done;
    const sample_dst *dst = ctx;
    insitra_backend *be = e->be;
    INSITRA_CHECK(be->i->download(be, dst->x + slot * e->xs, st->x + slot * e->xs,
                                  (size_t)(run * e->xs) * sizeof(float)));
    return be->i->download(be, dst->y + slot * e->ys, st->y + slot * e->ys,
                           (size_t)(run * e->ys) * sizeof(float));
}

insitra_status insitra_engine_store_samples(insitra_engine *e, int which, int64_t first, int64_t n,
                                            const float *x, const float *y)
{
    const insitra_engine_store *st = &e->stores[which];
    /* A backend reading the host store in place got them with the push. */
    if (st->x == st->host->x && !e->be->i->is_device_pointer(e->be, x)) return INSITRA_STATUS_OK;
    const sample_src src = {x, y};
    INSITRA_CHECK(for_each_run(e, st, first, n, store_run, &src));
    return e->be->i->synchronize(e->be);
}

insitra_status insitra_engine_fetch_samples(insitra_engine *e, int which, int64_t first, int64_t n,
                                            float *store_x, float *store_y)
{
    const insitra_engine_store *st = &e->stores[which];
    if (st->x == store_x) return INSITRA_STATUS_OK;
    const sample_dst dst = {store_x, store_y};
    return for_each_run(e, st, first, n, fetch_run, &dst);
}

/* A micro-batch of b samples from store rows slots (backend memory) into
 * the model's units: a.x, and a.y the targets as the model learns them. */
static insitra_status gather_micro_batch(insitra_engine *e, const insitra_engine_store *st, const int64_t *slots,
                                         int64_t b)
{
    insitra_backend *be = e->be;
    insitra_model *m = &e->model;
    INSITRA_CHECK(be->i->gather_batch(be, e->x_raw, m->a.y, st->x, st->y, slots, b, e->xs, e->ys));
    return be->i->normalize_forward(be, m->a.x, m->a.y, e->x_raw, &e->norm, b * e->seq_len);
}

/* Everything one optimizer step does, queued on the backend. */
static insitra_status enqueue_step(insitra_engine *e)
{
    insitra_backend *be = e->be;
    insitra_model *m = &e->model;
    insitra_zero *z = &e->zero;
    const int64_t micro = e->batch / e->mb, tp = insitra_model_dims_tp(&m->dims);
    INSITRA_CHECK(be->i->fill_zero(be, e->stats, 2 * sizeof(double)));
    INSITRA_CHECK(insitra_zero_begin_step(z));
    /* each micro-batch's squared errors enter the loss as its share of this
     * rank's mean, a tp group's ranks' means averaged (their tokens differ) */
    const double per_value = 1.0 / (double)(e->batch * e->ys * tp);
    for (int64_t i = 0; i < micro; i++) {
        INSITRA_CHECK(gather_micro_batch(e, &e->stores[INSITRA_STORE_TRAIN], e->slots + i * e->mb, e->mb));
        insitra_zero_set_last_micro_batch(z, i == micro - 1);
        INSITRA_CHECK(insitra_model_forward(m, e->mb, &e->stats[0], per_value));
        INSITRA_CHECK(insitra_model_backward(m, e->mb, (float)e->mb / (float)(e->batch * tp)));
    }
    INSITRA_CHECK(insitra_zero_finish_backward(z));
    /* The global batch is every dp rank's batch: the loss and the gradient are
     * the means over ranks of the local means; the reductions above summed.
     * The tp ranks' sums differ (their tokens and tensor slices do) and add up. */
    INSITRA_CHECK(insitra_zero_grad_sum_squares(z, &e->stats[1]));
    INSITRA_CHECK(be->i->sum_ordered(be, z->group, e->stats, 2));
    if (tp > 1) INSITRA_CHECK(be->i->sum_ordered(be, m->tp_group, e->stats, 2));
    return insitra_zero_update(z, e->scalars, e->stats);
}

/* Runs the step: replays the recorded one where the backend records (the
 * first step records it), else queues it afresh. */
static insitra_status run_step(insitra_engine *e)
{
    insitra_backend *be = e->be;
    if (!e->cfg->cuda.graphs || !be->i->replay) return enqueue_step(e);
    if (!e->recorded) {
        INSITRA_CHECK(be->i->capture_begin(be));
        const insitra_status s = enqueue_step(e);
        const insitra_status c = be->i->capture_end(be);
        if (s != INSITRA_STATUS_OK)
            return insitra_error_prefix(s, "recording the training step for replay (cuda.graphs = false "
                                           "avoids it): ");
        INSITRA_CHECK(c);
        e->recorded = true;
    }
    bool replayed = false;
    INSITRA_CHECK(be->i->replay(be, &replayed));
    return replayed ? INSITRA_STATUS_OK
                    : insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "internal: the recorded step is gone");
}

insitra_status insitra_engine_step(insitra_engine *e, const int64_t *slots, int64_t t, double lr,
                                   double *loss, double *grad_norm)
{
    insitra_backend *be = e->be;
    const insitra_config *cfg = e->cfg;
    const insitra_step_scalars sc =
        insitra_step_scalars_make(&cfg->optimizer, t, lr, cfg->training.grad_clip, e->zero.sl.dp);
    be->wait_seconds = be->ring_wait_seconds = 0.0;
    /* The step's inputs go in before it: a replayed step reads them where they land. */
    INSITRA_CHECK(be->i->upload(be, e->slots, slots, (size_t)e->batch * sizeof(int64_t)));
    INSITRA_CHECK(be->i->upload(be, e->scalars, &sc, sizeof sc));
    INSITRA_CHECK(run_step(e));
    double stats[2];
    INSITRA_CHECK(be->i->download(be, stats, e->stats, sizeof stats));
    *loss = stats[0] / sc.dp;
    *grad_norm = sqrt(stats[1]) / sc.dp;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_engine_forward(insitra_engine *e, int64_t n, int64_t chunks, const float *x,
                                      const float *y, float *y_out, double *sse)
{
    insitra_backend *be = e->be;
    insitra_model *m = &e->model;
    insitra_zero_begin_pass(&e->zero);
    INSITRA_CHECK(be->i->fill_zero(be, &e->stats[2], sizeof(double)));
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t first = c * e->mb;
        const int64_t b = first >= n ? 0 : n - first < e->mb ? n - first : e->mb;
        if (b > 0) {
            INSITRA_CHECK(be->i->upload(be, e->x_raw, x + first * e->xs, (size_t)(b * e->xs) * sizeof(float)));
            INSITRA_CHECK(be->i->normalize_forward(be, m->a.x, NULL, e->x_raw, &e->norm, b * e->seq_len));
        }
        INSITRA_CHECK(insitra_model_forward(m, b, NULL, 1.0));
        if (b == 0) continue;
        /* the caller's units: the outputs back through the feature maps, compared there */
        INSITRA_CHECK(be->i->normalize_inverse(be, m->a.out, e->x_raw, &e->norm, b * e->seq_len));
        if (y) {
            INSITRA_CHECK(be->i->upload(be, m->a.y, y + first * e->ys, (size_t)(b * e->ys) * sizeof(float)));
            INSITRA_CHECK(be->i->sum_squares(be, &e->stats[2], m->a.out, m->a.y, b * e->ys, 1.0));
        }
        if (y_out)
            INSITRA_CHECK(be->i->download(be, y_out + first * e->ys, m->a.out, (size_t)(b * e->ys) * sizeof(float)));
    }
    return be->i->download(be, sse, &e->stats[2], sizeof(double));
}

insitra_status insitra_engine_validate(insitra_engine *e, int64_t chunks, int64_t *rows, double *sse)
{
    insitra_backend *be = e->be;
    const insitra_engine_store *st = &e->stores[INSITRA_STORE_HELD_OUT];
    const insitra_sample_store *h = st->host;
    insitra_zero_begin_pass(&e->zero);
    INSITRA_CHECK(be->i->fill_zero(be, &e->stats[2], sizeof(double)));
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t first = c * e->mb;
        const int64_t b = first >= h->count ? 0 : h->count - first < e->mb ? h->count - first : e->mb;
        if (b > 0) {
            for (int64_t i = 0; i < b; i++) rows[i] = first + i; /* the held samples in slot order */
            INSITRA_CHECK(be->i->upload(be, e->slots, rows, (size_t)b * sizeof(int64_t)));
            INSITRA_CHECK(gather_micro_batch(e, st, e->slots, b));
        }
        INSITRA_CHECK(insitra_model_forward(&e->model, b, b > 0 ? &e->stats[2] : NULL, 1.0));
    }
    return be->i->download(be, sse, &e->stats[2], sizeof(double));
}

double insitra_engine_wait_seconds(const insitra_engine *e) { return e->be->wait_seconds; }
double insitra_engine_ring_wait_seconds(const insitra_engine *e) { return e->be->ring_wait_seconds; }
