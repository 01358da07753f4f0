/*
 * The surrogate: the trained model alone, for predictions inside the
 * simulation's loop. It holds the parameters (compute type) and the
 * activations of max_batch samples on its backend, allocated at create, and
 * runs the one model forward (lib/model_step.c) with no hooks: no other rank
 * takes part in a prediction. Around it, the trainer's feature maps
 * (lib/normalize.h) through the same backend operations insitra_predict
 * uses, so a surrogate predicts what its trainer does, bit for bit.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>

#include "backend.h"
#include "checked.h"
#include "ckpt_model.h"
#include "comm.h"
#include "error.h"
#include "model.h"
#include "tp_params.h"
#include "trainer.h"

struct insitra_surrogate {
    insitra_config cfg;       /* the model's keys; device and precision from the caller's options */
    insitra_backend *be;
    insitra_model model;      /* full parameters, activations for max_batch samples, no gradients */
    int64_t max_batch, xs, ys;
    /* One backend allocation, as the engine keeps them: the feature maps
     * (lib/normalize.h; the identity with data.normalize off) and the raw
     * inputs of a chunk, which the maps read on the way in and out. */
    void *mem;
    insitra_feature_norm norm;
    float *x_raw;             /* (max_batch, T, F_in) f32 */
};

/* ---- create ---- */

static insitra_status check_create_args(insitra_surrogate **s, const insitra_config *opts, int64_t max_batch)
{
    if (!s) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "surrogate_create: surrogate is NULL");
    *s = NULL;
    if (max_batch < 1)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "surrogate_create: max_batch = %" PRId64 " must be at least 1", max_batch);
    if (opts && opts->precision == INSITRA_PRECISION_BF16 && opts->device != INSITRA_DEVICE_CUDA)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "surrogate_create: config key 'precision' is bf16, which is for device = cuda");
    return INSITRA_STATUS_OK;
}

/* The backend, the model and its parameters (params: layout total fp32, host). */
static insitra_status build(insitra_surrogate *s, const insitra_config *file_cfg, const insitra_config *opts,
                            int64_t max_batch, MPI_Comm comm, const float *params,
                            const insitra_feature_norm *coef)
{
    s->cfg = *file_cfg;
    s->cfg.device = opts ? opts->device : INSITRA_DEVICE_CPU;
    s->cfg.precision = opts ? opts->precision : INSITRA_PRECISION_FP32;
    s->cfg.cuda.graphs = false;
    /* whole samples and the whole model on this rank, whatever group trained it */
    s->cfg.parallel.cp = 1;
    s->cfg.parallel.tp = 1;
    s->max_batch = max_batch;
    insitra_model_dims dims = insitra_config_model_dims(&s->cfg);
    /* No backward: the layout training.recompute = block uses, one block's
     * activations shared by every block and only the blocks' outputs kept
     * (a forward reads nothing else; the model of 12 blocks holds 1/12 of a
     * trainer's per-block activations). */
    dims.recompute = true;
    s->xs = dims.seq_len * dims.in_features;
    s->ys = dims.seq_len * dims.out_features;
    INSITRA_CHECK(insitra_backend_create(&s->be, &s->cfg, comm));
    insitra_backend *be = s->be;
    INSITRA_CHECK(insitra_model_create_on(&s->model, be, &dims, max_batch, true, false));
    const int64_t P = s->model.layout.total;
    if (be->act == INSITRA_DTYPE_F32) {
        INSITRA_CHECK(be->i->upload(be, s->model.params, params, (size_t)P * sizeof(float)));
    } else {
        /* bf16: converted on the backend from an fp32 copy that lives only now */
        void *f32 = NULL;
        INSITRA_CHECK(be->i->alloc(be, (size_t)P * sizeof(float), "the parameters in fp32 (create only)", &f32));
        insitra_status st = be->i->upload(be, f32, params, (size_t)P * sizeof(float));
        if (st == INSITRA_STATUS_OK) st = be->i->to_act(be, s->model.params, f32, P);
        if (st == INSITRA_STATUS_OK) st = be->i->synchronize(be);
        be->i->release(be, f32);
        INSITRA_CHECK(st);
    }
    /* the maps first, then the chunk's inputs at the backend's alignment */
    const int64_t norm_bytes = insitra_feature_norm_bytes(dims.in_features, dims.out_features);
    const int64_t at = insitra_size_align(norm_bytes, (int64_t)be->desc->align);
    INSITRA_CHECK(be->i->alloc(be, (size_t)(at + max_batch * s->xs * (int64_t)sizeof(float)),
                               "the feature maps and a chunk's inputs", &s->mem));
    insitra_feature_norm_carve(&s->norm, s->mem, dims.in_features, dims.out_features);
    s->x_raw = (float *)((char *)s->mem + at);
    /* the host maps are contiguous in carve order, like these */
    INSITRA_CHECK(be->i->upload(be, s->norm.x_mean, coef->x_mean, (size_t)norm_bytes));
    return be->i->synchronize(be);
}

static void release(insitra_surrogate *s)
{
    if (s->be) s->be->i->synchronize(s->be);
    if (s->mem) s->be->i->release(s->be, s->mem);
    insitra_model_free(&s->model);
    insitra_backend_free(s->be);
    free(s);
}

/* MPI_Bcast of any byte count (MPI counts are int). */
static insitra_status bcast_bytes(void *buf, size_t bytes, const insitra_comm *c)
{
    for (size_t at = 0; at < bytes;) {
        const size_t run = bytes - at < (size_t)INT_MAX ? bytes - at : (size_t)INT_MAX;
        if (MPI_Bcast((char *)buf + at, (int)run, MPI_BYTE, 0, c->comm) != MPI_SUCCESS)
            return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "surrogate_create: MPI_Bcast of the model failed");
        at += run;
    }
    return INSITRA_STATUS_OK;
}

/* Rank 0 read the file into f; every other rank receives it: the
 * configuration, the parameters and the feature maps the statistics gave
 * (every rank makes its maps from the configuration, then takes rank 0's
 * values). Collective. */
static insitra_status share_file(insitra_model_file *f, const insitra_comm *c)
{
    int64_t num_params = f->num_params;
    INSITRA_CHECK(bcast_bytes(&num_params, sizeof num_params, c));
    INSITRA_CHECK(bcast_bytes(&f->cfg, sizeof f->cfg, c));
    insitra_status local = INSITRA_STATUS_OK;
    if (c->rank != 0) {
        f->num_params = num_params;
        f->params = malloc((size_t)num_params * sizeof(float));
        local = f->params ? insitra_normalize_create(&f->norm, &f->cfg, 1)
                          : insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "surrogate_create: out of memory for "
                                              "%" PRId64 " parameters", num_params);
    }
    INSITRA_CHECK(insitra_comm_agree(c, local));
    INSITRA_CHECK(bcast_bytes(f->params, (size_t)f->num_params * sizeof(float), c));
    const insitra_feature_norm *m = &f->norm.coef;
    return bcast_bytes(m->x_mean, (size_t)insitra_feature_norm_bytes(m->f_in, m->f_out), c);
}

insitra_status insitra_surrogate_create(insitra_surrogate **out, const char *path, const insitra_config *opts,
                                        int64_t max_batch, MPI_Comm comm)
{
    insitra_error_clear();
    insitra_comm c = {.comm = MPI_COMM_NULL};
    INSITRA_CHECK(insitra_comm_create(&c, comm));
    insitra_status local = check_create_args(out, opts, max_batch);
    if (local == INSITRA_STATUS_OK && !path)
        local = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "surrogate_create: path is NULL");
    insitra_model_file f = {0};
    if (local == INSITRA_STATUS_OK && c.rank == 0) {
        local = insitra_model_file_read(path, &f);
        if (local != INSITRA_STATUS_OK) local = insitra_error_prefix(local, "surrogate_create: ");
    }
    insitra_status s = insitra_comm_agree(&c, local);
    if (s == INSITRA_STATUS_OK) s = share_file(&f, &c);
    insitra_surrogate *sur = NULL;
    if (s == INSITRA_STATUS_OK) {
        sur = calloc(1, sizeof *sur);
        local = sur ? build(sur, &f.cfg, opts, max_batch, comm, f.params, &f.norm.coef)
                    : insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "surrogate_create: out of memory");
        s = insitra_comm_agree(&c, local);
    }
    insitra_model_file_free(&f);
    insitra_comm_free(&c);
    if (s != INSITRA_STATUS_OK) {
        if (sur) release(sur);
        return s;
    }
    *out = sur;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_surrogate_create_fcomm(insitra_surrogate **out, const char *path, const insitra_config *opts,
                                              int64_t max_batch, MPI_Fint comm)
{
    return insitra_surrogate_create(out, path, opts, max_batch, MPI_Comm_f2c(comm));
}

insitra_status insitra_surrogate_create_from_trainer(insitra_surrogate **out, insitra_trainer *t,
                                                     const insitra_config *opts, int64_t max_batch)
{
    insitra_error_clear();
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "surrogate_create_from_trainer: trainer is NULL");
    insitra_status s = insitra_comm_agree(&t->comm, check_create_args(out, opts, max_batch));
    /* the whole model (parallel.tp > 1: gathered from the tp group's parts) */
    insitra_param_layout whole;
    float *params = NULL;
    if (s == INSITRA_STATUS_OK) s = insitra_trainer_whole_params(t, &whole, &params);
    if (s == INSITRA_STATUS_OK) insitra_param_layout_free(&whole);
    insitra_status local = INSITRA_STATUS_OK;
    insitra_surrogate *sur = NULL;
    if (s == INSITRA_STATUS_OK) {
        sur = calloc(1, sizeof *sur);
        local = sur ? build(sur, &t->cfg, opts, max_batch, t->comm.comm, params,
                                &t->norm.coef)
                    : insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "surrogate_create_from_trainer: out of memory");
        s = insitra_comm_agree(&t->comm, local);
    }
    free(params);
    if (s != INSITRA_STATUS_OK) {
        if (sur) release(sur);
        return s;
    }
    *out = sur;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_surrogate_free(insitra_surrogate *s)
{
    if (s) release(s);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_surrogate_sample_shape(const insitra_surrogate *s, int64_t *seq_len, int64_t *in_features,
                                              int64_t *out_features)
{
    if (!s) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "surrogate_sample_shape: surrogate is NULL");
    if (seq_len) *seq_len = s->cfg.model.seq_len;
    if (in_features) *in_features = s->cfg.model.in_features;
    if (out_features) *out_features = s->cfg.model.out_features;
    return INSITRA_STATUS_OK;
}

/* ---- predict ---- */

static insitra_status check_predict_args(const insitra_surrogate *s, const char *fn, int64_t n, const float *x,
                                         const float *y)
{
    if (!s) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: surrogate is NULL", fn);
    if (n < 0) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: n = %" PRId64 " is negative", fn, n);
    const int64_t widest = s->xs > s->ys ? s->xs : s->ys;
    if (insitra_size_mul(insitra_size_mul(n, widest), (int64_t)sizeof(float)) == INSITRA_SIZE_OVERFLOW)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: n = %" PRId64 " samples of %" PRId64 " floats need more than 2^63 - 1 bytes",
                                 fn, n, widest);
    if (n > 0 && (!x || !y))
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: %s is NULL with n = %" PRId64, fn,
                                 !x ? "x" : "y_out", n);
    return INSITRA_STATUS_OK;
}

/* The prediction of b samples whose raw inputs are in x_raw, left in the
 * model's output buffer in physical units: the steps of insitra_predict
 * (lib/engine.c), maps in, forward, maps out. */
static insitra_status forward_chunk(insitra_surrogate *s, int64_t b)
{
    insitra_backend *be = s->be;
    insitra_model *m = &s->model;
    const int64_t tokens = b * s->cfg.model.seq_len;
    INSITRA_CHECK(be->i->normalize_forward(be, m->a.x, NULL, s->x_raw, &s->norm, tokens));
    INSITRA_CHECK(insitra_model_forward(m, b, NULL, 1.0));
    return be->i->normalize_inverse(be, m->a.out, s->x_raw, &s->norm, tokens);
}

insitra_status insitra_surrogate_predict(insitra_surrogate *s, int64_t n, const float *x, float *y)
{
    INSITRA_CHECK(check_predict_args(s, "surrogate_predict", n, x, y));
    insitra_backend *be = s->be;
    for (int64_t first = 0; first < n; first += s->max_batch) {
        const int64_t b = n - first < s->max_batch ? n - first : s->max_batch;
        INSITRA_CHECK(be->i->upload(be, s->x_raw, x + first * s->xs, (size_t)(b * s->xs) * sizeof(float)));
        INSITRA_CHECK(forward_chunk(s, b));
        INSITRA_CHECK(be->i->download(be, y + first * s->ys, s->model.a.out, (size_t)(b * s->ys) * sizeof(float)));
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_surrogate_predict_device(insitra_surrogate *s, int64_t n, const float *x, float *y,
                                                void *stream)
{
    INSITRA_CHECK(check_predict_args(s, "surrogate_predict_device", n, x, y));
    insitra_backend *be = s->be;
    if (s->cfg.device != INSITRA_DEVICE_CUDA)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "surrogate_predict_device: the surrogate runs on the CPU (option 'device' is "
                                 "'cpu'); pass host arrays to insitra_surrogate_predict");
    if (n == 0) return INSITRA_STATUS_OK;
    const float *arrays[2] = {x, y};
    for (int k = 0; k < 2; k++)
        if (!be->i->is_device_pointer(be, arrays[k]))
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "surrogate_predict_device: %s is not memory of this surrogate's GPU; pass "
                                     "host arrays to insitra_surrogate_predict", k ? "y_out" : "x");
    INSITRA_CHECK(be->i->join_stream(be, stream, true));
    for (int64_t first = 0; first < n; first += s->max_batch) {
        const int64_t b = n - first < s->max_batch ? n - first : s->max_batch;
        INSITRA_CHECK(be->i->copy(be, s->x_raw, x + first * s->xs, (size_t)(b * s->xs) * sizeof(float)));
        INSITRA_CHECK(forward_chunk(s, b));
        INSITRA_CHECK(be->i->copy(be, y + first * s->ys, s->model.a.out, (size_t)(b * s->ys) * sizeof(float)));
    }
    return be->i->join_stream(be, stream, false);
}
