/* Checkpoints of a trainer: the view, and the reset after a failed load. */
#include <string.h>

#include "ckpt.h"
#include "error.h"
#include "gpu.h"
#include "trainer_ckpt.h"

void insitra_trainer_ckpt_view(insitra_trainer *t, insitra_ckpt_state *view)
{
    insitra_zero *z = &t->zero;
    *view = (insitra_ckpt_state){
        .world = &t->comm,
        .dp = t->dp.size,
        .tp = t->tp.size,
        .cfg = &t->cfg,
        .layout = &t->model.layout,
        .shards = &z->sl,
        .zero_stage = z->stage,
        .params = z->stage <= 2 ? t->model.params : NULL,
        .param_shard = z->param_shard,
        .m = z->m,
        .v = z->v,
        .step = &t->step,
        .sampler = &t->sampler,
        .sample_cursor = &t->sample_cursor,
        .store = &t->store,
    };
}

insitra_status insitra_trainer_ckpt_save(insitra_trainer *t, const char *dir, char *path_out,
                                         size_t path_size)
{
    /* Checkpoints read the host copies of the state. */
    if (t->gpu) INSITRA_CHECK(insitra_comm_agree(&t->comm, insitra_gpu_download_state(t->gpu, t)));
    insitra_ckpt_state view;
    insitra_trainer_ckpt_view(t, &view);
    return insitra_ckpt_save(&view, dir, path_out, path_size);
}

/* No checkpoint loaded: back to the state trainer_create made, for what the
 * failed load wrote into. */
static void reset(insitra_trainer *t, insitra_ckpt_touched touched)
{
    insitra_zero *z = &t->zero;
    if (touched.state) {
        insitra_zero_init_params(z, (uint64_t)t->cfg.training.seed, t->cfg.model.init_std);
        const int64_t moments = z->stage == 0 ? t->model.layout.total : z->sl.total;
        memset(z->m, 0, (size_t)moments * sizeof(float));
        memset(z->v, 0, (size_t)moments * sizeof(float));
        t->step = 0;
        t->sample_cursor = 0;
        insitra_rng_seed(&t->sampler, (uint64_t)t->cfg.training.seed, 1 + (uint64_t)t->comm.rank);
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
    if (s == INSITRA_STATUS_OK)
        t->zero.gather_id[0] = t->zero.gather_id[1] = -1; /* stage 3: gathered copies are stale */
    else
        reset(t, touched); /* a half-read checkpoint must not pass for trained state */
    /* Loaded, or reset after a failed load: either way the host copies are what holds. */
    if (t->gpu) {
        insitra_status up = insitra_comm_agree(&t->comm, insitra_gpu_upload_state(t->gpu, t));
        if (s == INSITRA_STATUS_OK) s = up;
    }
    return s;
}
