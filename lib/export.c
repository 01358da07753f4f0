/*
 * insitra_export_save: the trainer's model, alone, into an export file
 * (ckpt/ckpt_model.c writes it). The parameters are gathered whole on every
 * rank (ZeRO stage 3 holds slots) and rank 0 writes, with the feature
 * statistics as the trainer applies them now: samples pushed since the last
 * step are not counted in (the next step counts them), so an export leaves
 * the training as it was and predicts what insitra_predict does now.
 */
#include <inttypes.h>
#include <stdlib.h>

#include "ckpt_model.h"
#include "error.h"
#include "trainer.h"

insitra_status insitra_export_save(insitra_trainer *t, const char *path)
{
    if (!t) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "export_save: trainer is NULL");
    insitra_status local = INSITRA_STATUS_OK;
    if (!path || !path[0])
        local = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "export_save: path is %s", path ? "empty" : "NULL");
    const int64_t P = t->engine.model.layout.total;
    float *params = NULL;
    if (local == INSITRA_STATUS_OK && !(params = malloc((size_t)P * sizeof(float))))
        local = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "export_save: out of memory for %" PRId64
                                  " parameters", P);
    insitra_status s = insitra_comm_agree(&t->comm, local);
    if (s == INSITRA_STATUS_OK) s = insitra_comm_agree(&t->comm, insitra_zero_gather_params(&t->engine.zero, params));
    if (s == INSITRA_STATUS_OK) {
        local = t->comm.rank == 0 ? insitra_export_write(path, &t->cfg, &t->engine.model.layout, params, t->step,
                                                         &t->norm)
                                  : INSITRA_STATUS_OK;
        s = insitra_comm_agree(&t->comm, local);
    }
    free(params);
    return s;
}
