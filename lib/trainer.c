/*
 * The public trainer API: create/free, pushing samples, the training step,
 * predict and evaluate. The step reads top to bottom: draw a batch from this
 * rank's store -> forward/backward per micro-batch (the ZeRO hooks gather
 * parameters and reduce gradients unit by unit) -> global loss and gradient
 * norm -> AdamW on this rank's shard.
 */
#include "trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "error.h"
#include "log.h"
#include "optimizer.h"
#include "threads.h"
#include "trainer_ckpt.h"

/* Every rank must run the same configuration: compare with rank 0's, and
 * name the first key that differs. */
static insitra_status check_same_config(insitra_trainer *t)
{
    uint64_t h[2] = {insitra_config_hash(&t->cfg), 0};
    h[1] = ~h[0];
    int rc = MPI_Allreduce(MPI_IN_PLACE, h, 2, MPI_UINT64_T, MPI_MAX, t->comm.comm);
    if (rc != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "trainer_create: MPI_Allreduce failed");
    if (h[0] == ~h[1]) return INSITRA_STATUS_OK; /* max == min: all equal */
    insitra_config *root = malloc(sizeof *root);
    if (!root) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "trainer_create: out of memory");
    *root = t->cfg;
    MPI_Bcast(root, (int)sizeof *root, MPI_BYTE, 0, t->comm.comm);
    char mine[INSITRA_CONFIG_PATH_MAX + 32], theirs[INSITRA_CONFIG_PATH_MAX + 32];
    const char *key = insitra_config_first_difference(&t->cfg, root, mine, theirs, sizeof mine);
    insitra_status s = INSITRA_STATUS_OK;
    if (key)
        s = insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                              "the configuration differs between ranks: key '%s' is '%s' on rank "
                              "%d but '%s' on rank 0",
                              key, mine, t->comm.rank, theirs);
    free(root);
    return s;
}

/* parallel.dp x parallel.cp x parallel.tp must be the communicator's size. */
static insitra_status check_grid(insitra_trainer *t)
{
    const int64_t world = t->comm.size, tp = t->cfg.parallel.tp, cp = t->cfg.parallel.cp;
    if (world % cp != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'parallel.cp': value %" PRId64 " does not divide the "
                                 "communicator's %" PRId64 " ranks",
                                 cp, world);
    if (world % (cp * tp) != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'parallel.tp': value %" PRId64 " (x parallel.cp = %" PRId64
                                 ") does not divide the communicator's %" PRId64 " ranks",
                                 tp, cp, world);
    const int64_t dp = t->cfg.parallel.dp > 0 ? t->cfg.parallel.dp : world / (tp * cp);
    if (dp * cp * tp != world)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config keys 'parallel.dp' x 'parallel.cp' x 'parallel.tp' = %" PRId64
                                 " x %" PRId64 " x %" PRId64 " = %" PRId64 " does not match the "
                                 "communicator's %" PRId64 " ranks (parallel.dp = 0 picks world / (cp tp))",
                                 dp, cp, tp, dp * cp * tp, world);
    return INSITRA_STATUS_OK;
}

/* The process grid: rank = (dp_rank * cp + cp_rank) * tp + tp_rank, so
 * consecutive ranks of the communicator given to insitra_trainer_create
 * share a sample's tokens (a simulation picks the grouping by the rank
 * order of that communicator, docs/parallel.md). */
static insitra_status build_grid(insitra_trainer *t)
{
    const int tp = (int)t->cfg.parallel.tp, cp = (int)t->cfg.parallel.cp, rank = t->comm.rank;
    const int tp_rank = rank % tp, cp_rank = rank / tp % cp;
    INSITRA_CHECK(insitra_comm_split(&t->comm, tp_rank, rank, &t->grad));
    INSITRA_CHECK(insitra_comm_split(&t->comm, cp_rank * tp + tp_rank, rank, &t->dp));
    INSITRA_CHECK(insitra_comm_split(&t->comm, rank / (tp * cp) * tp + tp_rank, rank, &t->cp));
    INSITRA_CHECK(insitra_comm_split(&t->comm, rank / (tp * cp), rank, &t->slices));
    return insitra_comm_split(&t->comm, rank / tp, rank, &t->tp);
}

/* Everything but the communicators. */
static insitra_status allocate(insitra_trainer *t)
{
    const insitra_config *cfg = &t->cfg;
    const int64_t T = cfg->model.seq_len;
    t->batch_slots = calloc((size_t)cfg->training.batch_size, sizeof(int64_t));
    if (!t->batch_slots)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "trainer: cannot allocate the batch's slots");
    const int64_t Tc = T / insitra_config_token_slices(cfg); /* this rank's tokens of each sample */
    INSITRA_CHECK(insitra_sample_store_create(&t->store, cfg->data.capacity, Tc * cfg->model.in_features,
                                              Tc * cfg->model.out_features));
    const int64_t held = insitra_config_held_out_capacity(cfg);
    t->held_out = (insitra_sample_store){.x_numel = t->store.x_numel, .y_numel = t->store.y_numel};
    if (held > 0)
        INSITRA_CHECK(insitra_sample_store_create(&t->held_out, held, t->store.x_numel, t->store.y_numel));
    INSITRA_CHECK(insitra_normalize_create(&t->norm, cfg, t->comm.size));
    /* by the dp rank: the cp x tp ranks sharing samples draw the same slots, which hold slices of them */
    insitra_rng_seed(&t->sampler, (uint64_t)cfg->training.seed, 1 + (uint64_t)t->dp.rank);
    INSITRA_CHECK(
        insitra_engine_create(&t->engine, cfg, t->comm.comm, &t->grad, &t->cp, &t->tp, &t->store, &t->held_out));
    INSITRA_CHECK(insitra_engine_set_norm(&t->engine, &t->norm.coef));
    INSITRA_CHECK(insitra_preempt_setup(&t->preempt, cfg));
    if (t->comm.rank == 0 && cfg->log.jsonl[0] != '\0') {
        t->jsonl = fopen(cfg->log.jsonl, "a");
        if (!t->jsonl)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                     "config key 'log.jsonl': cannot open '%s' for appending: %s",
                                     cfg->log.jsonl, strerror(errno));
    }
    return INSITRA_STATUS_OK;
}

/* Frees what create made; safe on a partly built trainer. */
static void release(insitra_trainer *t)
{
    insitra_preempt_release(&t->preempt);
    insitra_engine_free(&t->engine);
    if (t->jsonl) fclose(t->jsonl);
    insitra_sample_store_free(&t->store);
    insitra_sample_store_free(&t->held_out);
    insitra_normalize_free(&t->norm);
    free(t->batch_slots);
    insitra_comm_free(&t->tp);
    insitra_comm_free(&t->slices);
    insitra_comm_free(&t->cp);
    insitra_comm_free(&t->grad);
    insitra_comm_free(&t->dp);
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
    t->comm.comm = t->dp.comm = t->cp.comm = t->slices.comm = t->grad.comm = t->tp.comm = MPI_COMM_NULL;
    t->cfg = *cfg;
    insitra_status s = insitra_comm_create(&t->comm, comm);
    if (s != INSITRA_STATUS_OK) {
        insitra_comm_free(&t->comm);
        free(t);
        return s;
    }
    /* From here on every failure is agreed, so all ranks fail together. */
    s = insitra_comm_agree(&t->comm, check_same_config(t));
    if (s == INSITRA_STATUS_OK) {
        insitra_status local = insitra_config_validate(&t->cfg);
        if (local == INSITRA_STATUS_OK) local = check_grid(t);
        s = insitra_comm_agree(&t->comm, local);
    }
    /* OpenMP threads per rank, from the ranks sharing each node (threads.h). */
    if (s == INSITRA_STATUS_OK)
        s = insitra_comm_agree(&t->comm, insitra_threads_setup(&t->cfg, t->comm.comm, t->comm.rank));
    if (s == INSITRA_STATUS_OK) s = insitra_comm_agree(&t->comm, build_grid(t));
    if (s == INSITRA_STATUS_OK) s = insitra_comm_agree(&t->comm, allocate(t));
    if (s == INSITRA_STATUS_OK) s = insitra_comm_agree(&t->comm, insitra_engine_connect(&t->engine));
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
    if (seq_len)
        *seq_len = t->cfg.model.seq_len / insitra_config_token_slices(&t->cfg); /* this rank's tokens */
    if (in_features) *in_features = t->cfg.model.in_features;
    if (out_features) *out_features = t->cfg.model.out_features;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_trainer_num_parameters(const insitra_trainer *t, int64_t *count)
{
    if (!t || !count)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "trainer_num_parameters: %s is NULL",
                                 !t ? "trainer" : "count");
    *count = t->engine.model.layout.global_total; /* the model's, not this rank's tp slices */
    return INSITRA_STATUS_OK;
}

/* n must fit the store: the check both pushes share. The store's byte count
 * was checked at creation, so n x sample size cannot overflow. */
static insitra_status check_push_count(const insitra_trainer *t, const char *fn, int64_t n)
{
    if (n < 0 || n > t->store.capacity)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: rank %d: n = %" PRId64 " is outside [0, %" PRId64
                                 "] (data.capacity)",
                                 fn, t->comm.rank, n, t->store.capacity);
    return INSITRA_STATUS_OK;
}

/* Whether the k-th sample this rank is pushed (from 0) is held out: with
 * data.validation_fraction f, when floor((k + 1) f) > floor(k f), so that
 * the held-out ones are spread evenly, f of every push sequence. */
static bool is_held_out(double f, int64_t k)
{
    return f > 0 && floor((double)(k + 1) * f) > floor((double)k * f);
}

/* How many of the n samples from the (t->pushes)-th on go to the same store as the first. */
static int64_t same_store_run(const insitra_trainer *t, int64_t n, bool *held)
{
    const double f = t->cfg.data.validation_fraction;
    *held = is_held_out(f, t->pushes);
    int64_t run = 1;
    while (run < n && is_held_out(f, t->pushes + run) == *held) run++;
    return run;
}

/* The training samples at host store slots [first, first + n) (wrapping) into the statistics. */
static void observe_slots(insitra_trainer *t, int64_t first, int64_t n)
{
    const insitra_sample_store *s = &t->store;
    const int64_t head = n < s->capacity - first ? n : s->capacity - first;
    insitra_normalize_observe(&t->norm, head, s->x + first * s->x_numel, s->y + first * s->y_numel);
    insitra_normalize_observe(&t->norm, n - head, s->x, s->y);
}

insitra_status insitra_push_samples(insitra_trainer *t, int64_t n, const float *x, const float *y)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "push_samples: trainer is NULL");
    INSITRA_CHECK(check_push_count(t, "push_samples", n));
    if (n > 0 && (!x || !y))
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "push_samples: rank %d: %s is NULL",
                                 t->comm.rank, !x ? "x" : "y");
    /* all checked first, so a rejected push stores nothing in either store */
    insitra_status s = insitra_sample_store_check(&t->store, n, x, y);
    for (int64_t done = 0; done < n && s == INSITRA_STATUS_OK;) {
        bool held;
        const int64_t run = same_store_run(t, n - done, &held);
        insitra_sample_store *st = held ? &t->held_out : &t->store;
        const float *xr = x + done * st->x_numel, *yr = y + done * st->y_numel;
        const int64_t first = st->next;
        s = insitra_sample_store_push(st, run, xr, yr);
        if (s == INSITRA_STATUS_OK)
            s = insitra_engine_store_samples(&t->engine, held ? INSITRA_STORE_HELD_OUT : INSITRA_STORE_TRAIN,
                                             first, run, xr, yr);
        if (!held) insitra_normalize_observe(&t->norm, run, xr, yr);
        t->pushes += run;
        done += run;
    }
    return s == INSITRA_STATUS_OK ? s : insitra_error_prefix(s, "rank %d: ", t->comm.rank);
}

insitra_status insitra_push_samples_device(insitra_trainer *t, int64_t n, const float *x, const float *y)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "push_samples_device: trainer is NULL");
    if (t->cfg.device != INSITRA_DEVICE_CUDA)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "push_samples_device: rank %d: the trainer runs on the CPU (config key "
                                 "'device' is 'cpu'); push host arrays with insitra_push_samples",
                                 t->comm.rank);
    insitra_backend *be = t->engine.be;
    INSITRA_CHECK(check_push_count(t, "push_samples_device", n));
    if (n == 0) return INSITRA_STATUS_OK;
    const float *arrays[2] = {x, y};
    const char *names[2] = {"x", "y"};
    const int64_t widths[2] = {t->store.x_numel, t->store.y_numel};
    for (int k = 0; k < 2; k++) {
        if (!arrays[k] || !be->i->is_device_pointer(be, arrays[k]))
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "push_samples_device: rank %d: %s is %s; pass device memory of "
                                     "this rank's GPU, or use insitra_push_samples for host arrays",
                                     t->comm.rank, names[k], arrays[k] ? "not a device pointer" : "NULL");
        int64_t bad = -1;
        INSITRA_CHECK(be->i->first_nonfinite(be, arrays[k], n * widths[k], &bad));
        if (bad >= 0)
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "push_samples_device: rank %d: %s of sample %" PRId64 " holds a "
                                     "non-finite value at element %" PRId64 " (flat index %" PRId64
                                     "); samples must be finite, nothing was stored",
                                     t->comm.rank, names[k], bad / widths[k], bad % widths[k], bad);
    }
    for (int64_t done = 0; done < n;) {
        bool held;
        const int64_t run = same_store_run(t, n - done, &held);
        insitra_sample_store *st = held ? &t->held_out : &t->store;
        const int which = held ? INSITRA_STORE_HELD_OUT : INSITRA_STORE_TRAIN;
        const int64_t first = insitra_sample_store_reserve(st, run);
        INSITRA_CHECK(insitra_engine_store_samples(&t->engine, which, first, run, x + done * widths[0],
                                                   y + done * widths[1]));
        /* the host copy, for checkpoints with checkpoint.include_samples and the statistics */
        INSITRA_CHECK(insitra_engine_fetch_samples(&t->engine, which, first, run, st->x, st->y));
        if (!held) observe_slots(t, first, run);
        t->pushes += run;
        done += run;
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_samples_stored(const insitra_trainer *t, int64_t *count)
{
    if (!t || !count)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "samples_stored: %s is NULL",
                                 !t ? "trainer" : "count");
    *count = t->store.count;
    return INSITRA_STATUS_OK;
}

/* Collective: every rank's new samples into the statistics (rank order),
 * and the maps into the backend while they still change. */
static insitra_status update_norm(insitra_trainer *t)
{
    const bool moving = t->norm.mode != INSITRA_NORMALIZE_OFF && !t->norm.frozen;
    if (!moving) return INSITRA_STATUS_OK;
    INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_normalize_combine(&t->norm, t->comm.comm, t->step)));
    return insitra_engine_set_norm(&t->engine, &t->norm.coef);
}

/* Collective: the mean squared error over every rank's held-out samples, in
 * the training loss's units; NaN while no rank holds one. */
static insitra_status validation_loss(insitra_trainer *t, double *loss)
{
    const int64_t mb = insitra_config_micro_batch(&t->cfg);
    int64_t chunks = (t->held_out.count + mb - 1) / mb;
    INSITRA_CHECK(insitra_comm_max_int64(&t->comm, &chunks));
    double acc[2] = {0.0, (double)(t->held_out.count * t->held_out.y_numel)}; /* squared errors, values */
    INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_engine_validate(&t->engine, chunks, t->batch_slots, &acc[0])));
    INSITRA_CHECK(insitra_comm_sum_ordered(&t->comm, acc, 2)); /* every rank's tokens */
    *loss = acc[1] > 0 ? acc[0] / acc[1] : NAN;
    return INSITRA_STATUS_OK;
}

/* Collective over the ranks holding slices of the same samples (cp x tp;
 * local otherwise): whether v, a count they must share, is the same on each;
 * the caller agrees on the result, so every rank stops. */
static insitra_status same_in_sample_group(insitra_trainer *t, const char *what, int64_t v)
{
    const insitra_comm *g = &t->slices;
    if (g->size == 1) return INSITRA_STATUS_OK;
    int64_t spread[2] = {v, -v};
    INSITRA_CHECK(insitra_comm_max_int64(g, &spread[0]));
    INSITRA_CHECK(insitra_comm_max_int64(g, &spread[1]));
    if (spread[0] == -spread[1]) return INSITRA_STATUS_OK;
    return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                             "%s = %" PRId64 " on this rank, but between %" PRId64 " and %" PRId64
                             " on the ranks sharing its samples' tokens (parallel.cp x parallel.tp = %d, ranks "
                             "%d..%d): each must pass its token slice of the same samples",
                             what, v, -spread[1], spread[0], g->size, t->comm.rank - g->rank,
                             t->comm.rank - g->rank + g->size - 1);
}

insitra_status insitra_train_step(insitra_trainer *t, insitra_metrics *metrics)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "train_step: trainer is NULL");
    /* the ranks sharing samples draw the same slots only from the same pushes */
    insitra_status local = same_in_sample_group(t, "train_step: samples pushed", t->pushes);
    if (t->store.count == 0)
        local = insitra_error_set(INSITRA_STATUS_NOT_READY,
                                  "train_step: the sample store is empty; push samples first");
    INSITRA_CHECK(insitra_comm_agree(&t->comm, local));

    const double t0 = MPI_Wtime();
    const insitra_config *cfg = &t->cfg;
    const int64_t B = cfg->training.batch_size, dp = t->dp.size;
    INSITRA_CHECK(update_norm(t));
    insitra_sample_store_draw(&t->store, cfg->data.sampler, &t->sampler, &t->sample_cursor, B,
                              t->batch_slots);
    const double lr = insitra_lr_at(&cfg->optimizer, t->step);
    double loss, norm;
    INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_engine_step(&t->engine, t->batch_slots, t->step + 1,
                                                                   lr, &loss, &norm)));
    /* A stop request (signal or deadline) on any rank stops every rank. */
    double stop_requested = insitra_preempt_requested(&t->preempt) ? 1.0 : 0.0;
    INSITRA_CHECK(insitra_comm_sum_ordered(&t->grad, &stop_requested, 1));
    if (!isfinite(loss) || !isfinite(norm))
        return insitra_error_set(INSITRA_STATUS_NUMERICAL_ERROR,
                                 "train_step %" PRId64 ": loss = %g, gradient norm = %g; the update "
                                 "was skipped (lower optimizer.lr or check the samples' scale)",
                                 t->step + 1, loss, norm);
    t->step++;

    const double seconds = MPI_Wtime() - t0;
    insitra_metrics out = {
        .step = t->step,
        .tokens = B * cfg->model.seq_len * dp,
        .loss = loss,
        .grad_norm = norm,
        .lr = lr,
        .step_seconds = seconds,
        .comm_wait_seconds = insitra_engine_wait_seconds(&t->engine),
        .ring_wait_seconds = insitra_engine_ring_wait_seconds(&t->engine),
    };
    out.tokens_per_second = seconds > 0 ? (double)out.tokens / seconds : 0.0;
    out.validation_loss = NAN;
    const int64_t every = cfg->log.every_steps;
    if (t->held_out.capacity > 0 && every > 0 && t->step % every == 0)
        INSITRA_CHECK(validation_loss(t, &out.validation_loss));
    insitra_log_step(cfg, t->comm.rank, t->jsonl, &out);
    if (metrics) *metrics = out;

    /* Checkpoints: every checkpoint.every_steps, and a final one on request. */
    const bool stop = stop_requested > 0;
    const bool periodic = cfg->checkpoint.every_steps > 0 && t->step % cfg->checkpoint.every_steps == 0;
    if (periodic || stop) {
        char path[4096];
        INSITRA_CHECK(insitra_trainer_ckpt_save(t, cfg->checkpoint.dir, path, sizeof path));
        insitra_log_checkpoint(cfg, t->comm.rank, t->step, path, stop);
        t->stop = stop;
    }
    return INSITRA_STATUS_OK;
}

/* The path a checkpoint call uses: the caller's, else checkpoint.dir; agreed,
 * so an empty one fails on every rank. */
static insitra_status checkpoint_path(insitra_trainer *t, const char *fn, const char *given,
                                      const char **path)
{
    *path = given && given[0] ? given : t->cfg.checkpoint.dir;
    insitra_status local = INSITRA_STATUS_OK;
    if ((*path)[0] == '\0')
        local = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                  "%s: no path given and config key 'checkpoint.dir' is empty", fn);
    return insitra_comm_agree(&t->comm, local);
}

insitra_status insitra_checkpoint_save(insitra_trainer *t, const char *dir, char *path_out,
                                       size_t path_size)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint_save: trainer is NULL");
    const char *target;
    INSITRA_CHECK(checkpoint_path(t, "checkpoint_save", dir, &target));
    return insitra_trainer_ckpt_save(t, target, path_out, path_size);
}

insitra_status insitra_checkpoint_load(insitra_trainer *t, const char *path, char *path_out,
                                       size_t path_size)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint_load: trainer is NULL");
    const char *source;
    INSITRA_CHECK(checkpoint_path(t, "checkpoint_load", path, &source));
    return insitra_trainer_ckpt_load(t, source, path_out, path_size);
}

insitra_status insitra_should_stop(const insitra_trainer *t, int32_t *stop)
{
    if (!t || !stop)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "should_stop: %s is NULL",
                                 !t ? "trainer" : "stop");
    *stop = t->stop ? 1 : 0;
    return INSITRA_STATUS_OK;
}

/* Local argument checks shared by predict and evaluate. The arrays' byte
 * counts must fit 64 bits: every offset into them is computed from n. */
static insitra_status check_batch_args(const insitra_trainer *t, const char *fn, int64_t n,
                                       const void *x, const void *y, const char *y_name)
{
    if (n < 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: n = %" PRId64 " is negative",
                                 fn, n);
    const int64_t widest = t->store.x_numel > t->store.y_numel ? t->store.x_numel : t->store.y_numel;
    if (insitra_size_mul(insitra_size_mul(n, widest), (int64_t)sizeof(float)) == INSITRA_SIZE_OVERFLOW)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "%s: rank %d: n = %" PRId64 " samples of %" PRId64 " floats need "
                                 "more than 2^63 - 1 bytes; no such array exists",
                                 fn, t->comm.rank, n, widest);
    if (n > 0 && (!x || !y))
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "%s: %s is NULL with n = %" PRId64,
                                 fn, !x ? "x" : y_name, n);
    return INSITRA_STATUS_OK;
}

/* Forward over n samples in micro-batches. Every rank runs as many forwards
 * as the rank with the most samples (empty ones where it has none), because
 * at ZeRO stage 3 each forward gathers parameters collectively. Returns the
 * sum of squared errors when y is given. */
static insitra_status forward_all(insitra_trainer *t, int64_t n, const float *x, const float *y,
                                  float *y_out, double *sse)
{
    const int64_t cap = insitra_config_micro_batch(&t->cfg);
    /* ranks holding slices of the same samples run the ring and the tp collectives: the same n on each */
    INSITRA_CHECK(insitra_comm_agree(&t->comm, same_in_sample_group(t, "predict/evaluate: n", n)));
    int64_t chunks = (n + cap - 1) / cap;
    INSITRA_CHECK(insitra_comm_max_int64(&t->comm, &chunks));
    return insitra_engine_forward(&t->engine, n, chunks, x, y, y_out, sse);
}

insitra_status insitra_predict(insitra_trainer *t, int64_t n, const float *x, float *y_out)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "predict: trainer is NULL");
    INSITRA_CHECK(insitra_comm_agree(&t->comm, check_batch_args(t, "predict", n, x, y_out, "y_out")));
    double unused;
    return forward_all(t, n, x, NULL, y_out, &unused);
}

insitra_status insitra_evaluate(insitra_trainer *t, int64_t n, const float *x, const float *y,
                                double *loss)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "evaluate: trainer is NULL");
    insitra_status local = check_batch_args(t, "evaluate", n, x, y, "y");
    if (local == INSITRA_STATUS_OK && !loss)
        local = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "evaluate: loss is NULL");
    INSITRA_CHECK(insitra_comm_agree(&t->comm, local));
    double acc[2] = {0.0, (double)(n * t->store.y_numel)}; /* squared errors, values */
    INSITRA_CHECK(forward_all(t, n, x, y, NULL, &acc[0]));
    INSITRA_CHECK(insitra_comm_sum_ordered(&t->comm, acc, 2)); /* every rank's tokens */
    if (acc[1] == 0.0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "evaluate: no rank passed any sample (n = 0 everywhere)");
    *loss = acc[0] / acc[1];
    return INSITRA_STATUS_OK;
}

insitra_status insitra_memory_report(const insitra_trainer *t, insitra_memory_usage *usage)
{
    if (!t || !usage)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "memory_report: %s is NULL",
                                 !t ? "trainer" : "usage");
    return insitra_engine_bytes_for(&t->cfg, (int)t->cfg.parallel.zero_stage, t->grad.size, usage);
}
