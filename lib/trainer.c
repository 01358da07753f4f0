/*
 * The public trainer API: create/free, pushing samples, the training step,
 * predict and evaluate. The step reads top to bottom: draw a batch from this
 * rank's store -> forward/backward per micro-batch -> average gradients over
 * ranks -> clip -> AdamW.
 */
#include "trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "optimizer.h"

static insitra_model_dims dims_of(const insitra_config *cfg)
{
    return (insitra_model_dims){
        .seq_len = cfg->model.seq_len,
        .in_features = cfg->model.in_features,
        .out_features = cfg->model.out_features,
        .d_model = cfg->model.d_model,
        .n_layers = cfg->model.n_layers,
        .n_heads = cfg->model.n_heads,
        .causal = cfg->model.causal,
    };
}

/* Everything but the communicator, which the caller set up already. */
static insitra_status allocate(insitra_trainer *t)
{
    const insitra_config *cfg = &t->cfg;
    const int64_t T = cfg->model.seq_len, mb = insitra_config_micro_batch(cfg);
    const insitra_model_dims dims = dims_of(cfg);
    INSITRA_CHECK(insitra_model_create(&t->model, &dims, mb));
    insitra_model_init_params(&t->model, (uint64_t)cfg->training.seed, cfg->model.init_std);
    const int64_t P = t->model.layout.total;
    t->opt_state = calloc((size_t)(2 * P), sizeof(float));
    t->batch_slots = calloc((size_t)cfg->training.batch_size, sizeof(int64_t));
    t->batch_x = calloc((size_t)(mb * T * cfg->model.in_features), sizeof(float));
    t->batch_y = calloc((size_t)(mb * T * cfg->model.out_features), sizeof(float));
    if (!t->opt_state || !t->batch_slots || !t->batch_x || !t->batch_y)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "trainer: cannot allocate optimizer state (%.1f MiB) and batch buffers",
                                 (double)(2 * P) * 4.0 / 1048576.0);
    t->opt_m = t->opt_state;
    t->opt_v = t->opt_state + P;
    INSITRA_CHECK(insitra_sample_store_create(&t->store, cfg->data.capacity,
                                              T * cfg->model.in_features,
                                              T * cfg->model.out_features));
    insitra_rng_seed(&t->sampler, (uint64_t)cfg->training.seed, 1 + (uint64_t)t->comm.rank);
    if (t->comm.rank == 0 && cfg->log.jsonl[0] != '\0') {
        t->jsonl = fopen(cfg->log.jsonl, "a");
        if (!t->jsonl)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                     "config key 'log.jsonl': cannot open '%s' for appending: %s",
                                     cfg->log.jsonl, strerror(errno));
    }
    return INSITRA_STATUS_OK;
}

/* Frees what allocate() made; safe on a partly built trainer. */
static void release(insitra_trainer *t)
{
    if (t->jsonl) fclose(t->jsonl);
    insitra_sample_store_free(&t->store);
    free(t->opt_state);
    free(t->batch_slots);
    free(t->batch_x);
    free(t->batch_y);
    insitra_model_free(&t->model);
    insitra_comm_free(&t->comm);
    free(t);
}

insitra_status insitra_trainer_create(insitra_trainer **trainer, const insitra_config *cfg,
                                      MPI_Comm comm)
{
    insitra_error_clear();
    if (!trainer || !cfg)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "trainer_create: %s is NULL",
                                 !trainer ? "trainer" : "cfg");
    *trainer = NULL;
    insitra_trainer *t = calloc(1, sizeof *t);
    if (!t) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "trainer_create: out of memory");
    t->comm.comm = MPI_COMM_NULL;
    t->cfg = *cfg;
    insitra_status s = insitra_comm_create(&t->comm, comm);
    if (s != INSITRA_STATUS_OK) {
        free(t);
        return s;
    }
    /* From here on every failure is agreed, so all ranks fail together. */
    s = insitra_comm_agree(&t->comm, insitra_config_validate(&t->cfg));
    if (s == INSITRA_STATUS_OK) s = insitra_comm_agree(&t->comm, allocate(t));
    if (s != INSITRA_STATUS_OK) {
        release(t);
        return s;
    }
    *trainer = t;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_trainer_create_fcomm(insitra_trainer **trainer, const insitra_config *cfg,
                                            MPI_Fint comm)
{
    return insitra_trainer_create(trainer, cfg, MPI_Comm_f2c(comm));
}

insitra_status insitra_trainer_free(insitra_trainer *trainer)
{
    if (trainer) release(trainer);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_trainer_sample_shape(const insitra_trainer *t, int64_t *seq_len,
                                            int64_t *in_features, int64_t *out_features)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "trainer_sample_shape: trainer is NULL");
    if (seq_len) *seq_len = t->cfg.model.seq_len;
    if (in_features) *in_features = t->cfg.model.in_features;
    if (out_features) *out_features = t->cfg.model.out_features;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_trainer_num_parameters(const insitra_trainer *t, int64_t *count)
{
    if (!t || !count)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "trainer_num_parameters: %s is NULL",
                                 !t ? "trainer" : "count");
    *count = t->model.layout.total;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_push_samples(insitra_trainer *t, int64_t n, const float *x, const float *y)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "push_samples: trainer is NULL");
    if (n < 0 || n > t->store.capacity)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "push_samples: rank %d: n = %" PRId64 " is outside [0, %" PRId64
                                 "] (data.capacity)",
                                 t->comm.rank, n, t->store.capacity);
    if (n > 0 && (!x || !y))
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "push_samples: rank %d: %s is NULL",
                                 t->comm.rank, !x ? "x" : "y");
    insitra_status s = insitra_sample_store_push(&t->store, n, x, y);
    return s == INSITRA_STATUS_OK ? s : insitra_error_prefix(s, "rank %d: ", t->comm.rank);
}

insitra_status insitra_samples_stored(const insitra_trainer *t, int64_t *count)
{
    if (!t || !count)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "samples_stored: %s is NULL",
                                 !t ? "trainer" : "count");
    *count = t->store.count;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_train_step(insitra_trainer *t, insitra_metrics *metrics)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "train_step: trainer is NULL");
    insitra_status local = INSITRA_STATUS_OK;
    if (t->store.count == 0)
        local = insitra_error_set(INSITRA_STATUS_NOT_READY,
                                  "train_step: the sample store is empty; push samples first");
    INSITRA_CHECK(insitra_comm_agree(&t->comm, local));

    const double t0 = MPI_Wtime();
    const insitra_config *cfg = &t->cfg;
    insitra_model *m = &t->model;
    const int64_t B = cfg->training.batch_size, mb = insitra_config_micro_batch(cfg);

    insitra_model_zero_grads(m);
    insitra_sample_store_draw(&t->store, &t->sampler, B, t->batch_slots);
    double loss_sum = 0.0; /* sum over micro-batches of (micro-batch mean) x samples */
    for (int64_t first = 0; first < B; first += mb) {
        insitra_sample_store_gather(&t->store, t->batch_slots + first, mb, t->batch_x, t->batch_y);
        loss_sum += insitra_model_forward(m, mb, t->batch_x, t->batch_y) * (double)mb;
        /* Each micro-batch contributes its share of this rank's batch mean. */
        insitra_model_backward(m, mb, t->batch_x, t->batch_y, (float)mb / (float)B);
    }

    /* Data parallel: the global batch is every rank's batch; average gradients. */
    const int64_t P = m->layout.total;
    double loss = loss_sum / (double)B;
    if (t->comm.size > 1) {
        INSITRA_CHECK(insitra_comm_sum_floats(&t->comm, m->grads, P));
        INSITRA_CHECK(insitra_comm_sum_doubles(&t->comm, &loss, 1));
        const float inv = 1.0f / (float)t->comm.size;
        for (int64_t i = 0; i < P; i++) m->grads[i] *= inv;
        loss /= (double)t->comm.size;
    }

    /* Every rank holds the same averaged gradient, so this verdict agrees by itself. */
    const double norm = sqrt(insitra_sum_squares(m->grads, P));
    if (!isfinite(loss) || !isfinite(norm))
        return insitra_error_set(INSITRA_STATUS_NUMERICAL_ERROR,
                                 "train_step %" PRId64 ": loss = %g, gradient norm = %g; the update "
                                 "was skipped (lower optimizer.lr or check the samples' scale)",
                                 t->step + 1, loss, norm);
    const double lr = insitra_lr_at(&cfg->optimizer, t->step);
    const float clip = insitra_clip_factor(norm, cfg->training.grad_clip);
    t->step++;
    insitra_adamw_update_all(m->params, m->grads, t->opt_m, t->opt_v, &m->layout, t->step, lr, clip,
                             &cfg->optimizer);

    const double seconds = MPI_Wtime() - t0;
    insitra_metrics out = {
        .step = t->step,
        .tokens = B * cfg->model.seq_len * t->comm.size,
        .loss = loss,
        .grad_norm = norm,
        .lr = lr,
        .step_seconds = seconds,
    };
    out.tokens_per_second = seconds > 0 ? (double)out.tokens / seconds : 0.0;
    insitra_log_step(t, &out);
    if (metrics) *metrics = out;
    return INSITRA_STATUS_OK;
}

/* Local argument checks shared by predict and evaluate. */
static insitra_status check_batch_args(const insitra_trainer *t, const char *fn, int64_t n,
                                       const void *x, const void *y, const char *y_name)
{
    if (n < 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: n = %" PRId64 " is negative",
                                 fn, n);
    if (n > 0 && (!x || !y))
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: %s is NULL with n = %" PRId64,
                                 fn, !x ? "x" : y_name, n);
    (void)t;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_predict(insitra_trainer *t, int64_t n, const float *x, float *y_out)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "predict: trainer is NULL");
    INSITRA_CHECK(insitra_comm_agree(&t->comm, check_batch_args(t, "predict", n, x, y_out, "y_out")));
    insitra_model *m = &t->model;
    const int64_t xs = t->store.x_numel, ys = t->store.y_numel;
    for (int64_t first = 0; first < n; first += m->max_batch) {
        const int64_t b = n - first < m->max_batch ? n - first : m->max_batch;
        insitra_model_forward(m, b, x + first * xs, NULL);
        memcpy(y_out + first * ys, m->a.out, (size_t)(b * ys) * sizeof(float));
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_evaluate(insitra_trainer *t, int64_t n, const float *x, const float *y,
                                double *loss)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "evaluate: trainer is NULL");
    insitra_status local = check_batch_args(t, "evaluate", n, x, y, "y");
    if (local == INSITRA_STATUS_OK && !loss)
        local = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "evaluate: loss is NULL");
    INSITRA_CHECK(insitra_comm_agree(&t->comm, local));
    insitra_model *m = &t->model;
    const int64_t xs = t->store.x_numel, ys = t->store.y_numel;
    double acc[2] = {0.0, (double)(n * ys)}; /* sum of squared errors, values */
    for (int64_t first = 0; first < n; first += m->max_batch) {
        const int64_t b = n - first < m->max_batch ? n - first : m->max_batch;
        acc[0] += insitra_model_forward(m, b, x + first * xs, y + first * ys) * (double)(b * ys);
    }
    INSITRA_CHECK(insitra_comm_sum_doubles(&t->comm, acc, 2));
    if (acc[1] == 0.0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "evaluate: no rank passed any sample (n = 0 everywhere)");
    *loss = acc[0] / acc[1];
    return INSITRA_STATUS_OK;
}
