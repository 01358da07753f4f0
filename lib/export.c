/*
 * insitra_export_save: the trainer's model, alone, into an export file
 * (ckpt/ckpt_model.c writes it). The parameters are gathered whole on every
 * rank (ZeRO stage 3 holds slots, parallel.tp > 1 parts of tensors:
 * lib/tp_params.h) and rank 0 writes the whole tensors, with the feature
 * statistics as the trainer applies them now: samples pushed since the last
 * step are not counted in (the next step counts them), so an export leaves
 * the training as it was and predicts what insitra_predict does now.
 */
#include <stdlib.h>

#include "ckpt_model.h"
#include "error.h"
#include "tp_params.h"
#include "trainer.h"

insitra_status insitra_export_save(insitra_trainer *t, const char *path)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "export_save: trainer is NULL");
    insitra_status local = INSITRA_STATUS_OK;
    if (!path || !path[0])
        local = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "export_save: path is %s", path ? "empty" : "NULL");
    insitra_status s = insitra_comm_agree(&t->comm, local);
    insitra_param_layout whole;
    float *params = NULL;
    if (s == INSITRA_STATUS_OK) s = insitra_trainer_whole_params(t, &whole, &params);
    if (s == INSITRA_STATUS_OK) {
        local = t->comm.rank == 0 ? insitra_export_write(path, &t->cfg, &whole, params, t->step, &t->norm)
                                  : INSITRA_STATUS_OK;
        s = insitra_comm_agree(&t->comm, local);
        insitra_param_layout_free(&whole);
    }
    free(params);
    return s;
}
