/* Whole parameters from tp ranks' parts and back (tp_params.h). */
#include "tp_params.h"

#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "trainer.h"

/* A tensor's local runs copied into its whole storage. */
typedef struct run_copy {
    const float *from; /* the local tensor */
    float *to;         /* the whole one */
} run_copy;

static void copy_run(void *ctx, int64_t local, int64_t global, int64_t count)
{
    const run_copy *c = ctx;
    memcpy(c->to + global, c->from + local, (size_t)count * sizeof(float));
}

/* Rank r's parts (at part, local layout) into the whole buffer. */
static void place(const insitra_param_layout *local, const float *part, int64_t r, const insitra_param_layout *whole,
                  float *whole_params)
{
    for (int64_t i = 0; i < local->num_tensors; i++) {
        const insitra_tensor_desc *t = &local->tensors[i];
        if (t->split == INSITRA_TP_REPLICATED && r != 0) continue;
        run_copy c = {.from = part + t->offset, .to = whole_params + whole->tensors[i].offset};
        insitra_tensor_tp_runs(t, r, copy_run, &c);
    }
}

insitra_status insitra_tp_params_gather(const insitra_comm *tp, const insitra_param_layout *local,
                                        const float *local_params, float *scratch,
                                        const insitra_param_layout *whole, float *whole_params)
{
    int ok = 1;
    for (int r = 0; r < tp->size; r++) {
        /* rank r's parts, broadcast in runs an int counts; every rank makes
         * every call, whatever failed */
        float *part = r == tp->rank ? (float *)local_params : scratch;
        for (int64_t at = 0; tp->size > 1 && at < local->total;) {
            const int64_t n = local->total - at < INT_MAX ? local->total - at : INT_MAX;
            if (MPI_Bcast(part + at, (int)n, MPI_FLOAT, r, tp->comm) != MPI_SUCCESS) ok = 0;
            at += n;
        }
        if (ok) place(local, part, r, whole, whole_params);
    }
    /* an MPI failure may reach only some ranks: agreed, so none goes on alone */
    int all = ok;
    if (tp->size > 1 && MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, tp->comm) != MPI_SUCCESS) all = 0;
    return all ? INSITRA_STATUS_OK
               : insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                   "tensor parallelism: the broadcast of the parameters over the tp group (rank "
                                   "%d of %d) failed", tp->rank, tp->size);
}

void insitra_tp_params_slice(const insitra_param_layout *whole, const float *whole_params,
                             const insitra_param_layout *local, int64_t tp_rank, float *local_params)
{
    for (int64_t u = 0; u < local->num_units; u++)
        insitra_param_unit_slice(local, whole, u, tp_rank, whole_params + whole->units[u].offset,
                                 local_params + local->units[u].offset);
}

insitra_status insitra_trainer_whole_params(insitra_trainer *t, insitra_param_layout *whole, float **params)
{
    const insitra_param_layout *local = &t->engine.model.layout;
    const bool split = t->tp.size > 1;
    insitra_model_dims dims = t->engine.model.dims;
    dims.tp = 1;
    *params = NULL;
    float *local_params = NULL, *scratch = NULL;
    insitra_status s = insitra_param_layout_create(whole, &dims);
    bool made = s == INSITRA_STATUS_OK;
    if (made) {
        *params = malloc((size_t)whole->total * sizeof(float));
        /* at tp = 1 the local parameters are the whole ones: gathered in place */
        if (split) {
            local_params = malloc((size_t)local->total * sizeof(float));
            scratch = malloc((size_t)local->total * sizeof(float));
        }
        if (!*params || (split && (!local_params || !scratch)))
            s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                  "rank %d: out of memory for the whole model's %" PRId64 " parameters",
                                  t->comm.rank, whole->total);
    }
    s = insitra_comm_agree(&t->comm, s);
    if (s == INSITRA_STATUS_OK)
        s = insitra_comm_agree(&t->comm,
                               insitra_zero_gather_params(&t->engine.zero, split ? local_params : *params));
    if (s == INSITRA_STATUS_OK && split)
        s = insitra_comm_agree(&t->comm, insitra_tp_params_gather(&t->tp, local, local_params, scratch, whole,
                                                                  *params));
    free(local_params);
    free(scratch);
    if (s != INSITRA_STATUS_OK) {
        free(*params);
        *params = NULL;
        if (made) insitra_param_layout_free(whole);
    }
    return s;
}
