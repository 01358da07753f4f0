/* Checkpoints of a trainer: the view, and the reset after a failed load. */
#include <math.h>

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
