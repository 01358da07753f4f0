/* Checkpoints of a trainer: the view, the caller's arrays, and the reset
 * after a failed load. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "ckpt.h"
#include "error.h"
#include "trainer_ckpt.h"

void insitra_trainer_ckpt_view(insitra_trainer *t, insitra_ckpt_state *view)
{
    insitra_zero *z = &t->engine.zero;
    *view = (insitra_ckpt_state){
        .world = &t->comm,
        .dp = t->grad.size, /* the ranks ZeRO shards over: dp x cp */
        .tp = t->tp.size,
        .tp_rank = t->tp.rank,
        .cfg = &t->cfg,
        .layout = &t->engine.model.layout,
        .shards = &z->sl,
        .zero_stage = z->stage,
        .params = z->host_params_full ? z->host_params : NULL,
        .param_shard = z->host_params_full ? NULL : z->host_params,
        .m = z->host_m,
        .v = z->host_v,
        .step = &t->step,
        .sampler = &t->sampler,
        .sample_cursor = &t->sample_cursor,
        .store = &t->store,
        .norm = t->norm.mode != INSITRA_NORMALIZE_OFF ? &t->norm : NULL,
        .arrays = t->arrays,
        .n_arrays = t->n_arrays,
    };
}

insitra_status insitra_trainer_ckpt_save(insitra_trainer *t, const char *dir, char *path_out,
                                         size_t path_size)
{
    /* Checkpoints read the host copies of the state: brought up to date first. */
    INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_zero_export(&t->engine.zero)));
    /* Samples pushed since the last step enter the statistics now, as the
     * next step would take them: the checkpoint holds everything this run
     * counted, and the run goes on with the same state as its resumption. */
    if (t->norm.mode != INSITRA_NORMALIZE_OFF && !t->norm.frozen) {
        INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_normalize_combine(&t->norm, t->comm.comm, t->step)));
        INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_engine_set_norm(&t->engine, &t->norm.coef)));
    }
    insitra_ckpt_state view;
    insitra_trainer_ckpt_view(t, &view);
    return insitra_ckpt_save(&view, dir, path_out, path_size);
}

/* No checkpoint loaded: back to the state trainer_create made, for what the
 * failed load wrote into. */
static void reset(insitra_trainer *t, insitra_ckpt_touched touched)
{
    if (touched.state) {
        insitra_zero_init_host(&t->engine.zero, (uint64_t)t->cfg.training.seed, t->cfg.model.init_std);
        t->step = 0;
        t->sample_cursor = 0;
        insitra_rng_seed(&t->sampler, (uint64_t)t->cfg.training.seed, 1 + (uint64_t)t->dp.rank);
        insitra_normalize_clear(&t->norm, true);
    }
    if (touched.samples) t->store.count = t->store.next = 0;
}

insitra_status insitra_trainer_ckpt_load(insitra_trainer *t, const char *path, char *path_out,
                                         size_t path_size)
{
    insitra_ckpt_state view;
    insitra_trainer_ckpt_view(t, &view);
    insitra_ckpt_touched touched;
    insitra_status s = insitra_ckpt_load(&view, path, path_out, path_size, &touched);
    if (s != INSITRA_STATUS_OK) reset(t, touched); /* a half-read checkpoint must not pass for trained state */
    /* Loaded, or reset after a failed load: either way the host copies are what holds. */
    /* The held-out split's index: the held-out store is not in a checkpoint,
     * so the pushes are counted again from the training store's, as if none
     * had been held out after the last training sample. */
    const double f = t->cfg.data.validation_fraction;
    t->pushes = t->store.pushed;
    while (f > 0 && t->pushes - (int64_t)floor((double)t->pushes * f) < t->store.pushed) t->pushes++;
    insitra_status up = insitra_zero_import(&t->engine.zero);
    if (up == INSITRA_STATUS_OK) up = insitra_engine_set_norm(&t->engine, &t->norm.coef);
    /* Samples read into the host store reach a backend with its own copy (the GPU's) here. */
    if (up == INSITRA_STATUS_OK && touched.samples && t->store.count > 0)
        up = insitra_engine_store_samples(&t->engine, INSITRA_STORE_TRAIN, 0, t->store.count, t->store.x,
                                          t->store.y);
    up = insitra_comm_agree(&t->comm, up);
    return s == INSITRA_STATUS_OK ? up : s;
}

/* ---- the caller's arrays ---- */

static insitra_status check_name(const insitra_trainer *t, const char *fn, const char *name, int type)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: trainer is NULL", fn);
    if (!name || !name[0] || strlen(name) > 63 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                             "0123456789_-.") != strlen(name) ||
        strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: rank %d: name '%s' is not 1-63 letters, digits, '_', '-' or '.'", fn,
                                 t->comm.rank, name ? name : "(NULL)");
    if (type < INSITRA_TYPE_FLOAT32 || type > INSITRA_TYPE_INT64)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: '%s': type %d is not an insitra_type (0-3)",
                                 fn, name, type);
    return INSITRA_STATUS_OK;
}

/* The piece's numbers: within the global shape, within the memory shape. */
static insitra_status check_piece(const insitra_trainer *t, const insitra_ckpt_array *a)
{
    for (int k = 0; k < a->ndim; k++) {
        const char *what = NULL;
        if (a->global[k] < 1) what = "global_shape is below 1";
        else if (a->offset[k] < 0 || a->count[k] < 0) what = "offset or count is negative";
        else if (a->offset[k] > a->global[k] - a->count[k]) what = "offset + count is beyond global_shape";
        else if (a->mem_offset[k] < 0 || a->mem_shape[k] < 1 || a->mem_offset[k] > a->mem_shape[k] - a->count[k])
            what = "mem_offset + count is beyond mem_shape";
        if (what)
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "checkpoint_add_array: rank %d: '%s' dimension %d: %s (global_shape %" PRId64
                                     ", offset %" PRId64 ", count %" PRId64 ", mem_shape %" PRId64 ", mem_offset %"
                                     PRId64 ")", t->comm.rank, a->name, k, what, a->global[k], a->offset[k],
                                     a->count[k], a->mem_shape[k], a->mem_offset[k]);
    }
    return INSITRA_STATUS_OK;
}

/* Puts a into the trainer's list: replacing the entry of its name, or added last. */
static insitra_status keep(insitra_trainer *t, const insitra_ckpt_array *a)
{
    for (int64_t k = 0; k < t->n_arrays; k++)
        if (strcmp(t->arrays[k].name, a->name) == 0) {
            t->arrays[k] = *a;
            return INSITRA_STATUS_OK;
        }
    if (t->n_arrays == INSITRA_CHECKPOINT_ARRAYS_MAX)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint_add_array: '%s': a trainer holds at most %d arrays and scalars",
                                 a->name, INSITRA_CHECKPOINT_ARRAYS_MAX);
    t->arrays[t->n_arrays++] = *a;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_checkpoint_add_array(insitra_trainer *t, const char *name, insitra_type type, int32_t ndim,
                                            const int64_t *global_shape, const int64_t *offset,
                                            const int64_t *count, const int64_t *mem_shape,
                                            const int64_t *mem_offset, void *data)
{
    INSITRA_CHECK(check_name(t, "checkpoint_add_array", name, (int)type));
    if (ndim < 1 || ndim > INSITRA_ARRAY_MAX_DIMS)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint_add_array: '%s': ndim = %d is outside [1, %d] (a scalar: "
                                 "insitra_checkpoint_add_scalar)", name, (int)ndim, INSITRA_ARRAY_MAX_DIMS);
    if (!global_shape || !offset || !count || (!mem_shape) != (!mem_offset))
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint_add_array: '%s': %s", name,
                                 !global_shape || !offset || !count ? "global_shape, offset and count are required"
                                                                    : "give mem_shape and mem_offset together");
    insitra_ckpt_array a = {.type = (int)type, .ndim = ndim, .data = data};
    snprintf(a.name, sizeof a.name, "%s", name);
    int64_t numel = 1;
    for (int k = 0; k < ndim; k++) {
        a.global[k] = global_shape[k];
        a.offset[k] = offset[k];
        a.count[k] = count[k];
        a.mem_shape[k] = mem_shape ? mem_shape[k] : count[k] > 0 ? count[k] : 1;
        a.mem_offset[k] = mem_offset ? mem_offset[k] : 0;
        numel *= count[k] > 0 ? count[k] : 0;
    }
    INSITRA_CHECK(check_piece(t, &a));
    if (numel > 0 && !data)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint_add_array: rank %d: '%s': data is NULL for a piece of %" PRId64
                                 " elements", t->comm.rank, name, numel);
    return keep(t, &a);
}

insitra_status insitra_checkpoint_add_scalar(insitra_trainer *t, const char *name, insitra_type type, void *data)
{
    INSITRA_CHECK(check_name(t, "checkpoint_add_scalar", name, (int)type));
    if (!data)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint_add_scalar: '%s': data is NULL", name);
    insitra_ckpt_array a = {.type = (int)type, .ndim = 0, .data = data};
    snprintf(a.name, sizeof a.name, "%s", name);
    return keep(t, &a);
}

insitra_status insitra_checkpoint_clear_arrays(insitra_trainer *t)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint_clear_arrays: trainer is NULL");
    t->n_arrays = 0;
    return INSITRA_STATUS_OK;
}
