#include "zero.h"

#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "error.h"
#include "rng.h"

insitra_zero_sizes insitra_zero_sizes_for(int stage, const insitra_param_layout *l,
                                          const insitra_shard_layout *sl)
{
    const int64_t P = l->total, S = sl->total, U = sl->max_unit_len, N = sl->dp;
    const int64_t Pu = l->max_unit_numel;
    /* Saturating, like every size (lib/checked.h): the planner calls this for
     * any configuration and world size. */
    const int64_t NU2 = insitra_size_mul(2, insitra_size_mul(N, U)), U2 = insitra_size_mul(2, U);
    const int64_t S2 = insitra_size_mul(2, S), Pu2 = insitra_size_mul(2, Pu);
    /* Reduce-scatter send and receive pairs, double-buffered; stages 1-2 reuse
     * them for the parameter all-gather after the update. */
    const int64_t reduce = insitra_size_add(NU2, U2);
    switch (stage) {
    case 0: return (insitra_zero_sizes){.params = P, .grads = P, .moments = insitra_size_mul(2, P),
                                        .comm = reduce};
    case 1: return (insitra_zero_sizes){.params = P, .grads = P, .moments = S2,
                                        .comm = insitra_size_add(reduce, U2)};
    case 2: return (insitra_zero_sizes){.params = P, .grads = S, .moments = S2,
                                        .comm = insitra_size_add(insitra_size_add(reduce, U2), Pu)};
    default: /* stage 3: two gather slots, packed and unpacked, hold parameters */
        return (insitra_zero_sizes){.params = insitra_size_add(S, Pu2), .grads = S, .moments = S2,
                                    .comm = insitra_size_add(insitra_size_add(reduce, NU2), Pu)};
    }
}

static void record(insitra_zero *z, int rc, const char *what)
{
    if (rc == MPI_SUCCESS || z->error != INSITRA_STATUS_OK) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    z->error = insitra_error_set(INSITRA_STATUS_MPI_ERROR, "ZeRO stage %d: %s failed: %s", z->stage,
                                 what, text);
}

static void wait_request(insitra_zero *z, MPI_Request *req, const char *what)
{
    const double t0 = MPI_Wtime();
    record(z, MPI_Wait(req, MPI_STATUS_IGNORE), what);
    z->wait_seconds += MPI_Wtime() - t0;
}

/* Tests requests one by one (MPI_Testall with MPI_STATUSES_IGNORE trips a
 * false GCC 12 warning on MPICH's declarations). */
static void test_all(MPI_Request *req, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int flag;
        MPI_Test(&req[i], &flag, MPI_STATUS_IGNORE);
    }
}

/* MPI progresses non-blocking collectives only inside MPI calls: poke them.
 * (Only poke: every rank must start collectives in the same order, so what
 * happens next never depends on which requests happen to have finished.) */
static void progress(insitra_zero *z)
{
    test_all(z->reduce_req, 2);
    if (z->stage == 3) test_all(z->gather_req, 2);
}

/* ---- gradients: reduce-scatter one unit at a time ---- */

/* Stage 0's all-reduce is a reduce-scatter followed by an all-gather of the
 * summed slots: the same summation as stages 1-3, so every stage computes
 * bit-identical gradients. This starts the all-gather half, once the
 * reduce-scatter is complete. */
static void advance_reduce(insitra_zero *z, int k)
{
    wait_request(z, &z->reduce_req[k], "MPI_Ireduce_scatter_block");
    const int count = (int)z->sl.unit_len[z->reduce_id[k]];
    record(z,
           MPI_Iallgather(z->reduce_recv[k], count, MPI_FLOAT, z->reduce_packed[k], count, MPI_FLOAT,
                          z->dp->comm, &z->reduce_req[k]),
           "MPI_Iallgather");
    z->reduce_gathering[k] = true;
}

/* Completes whatever reduction slot k holds and files its result. */
static void finish_reduce(insitra_zero *z, int k)
{
    const int64_t u = z->reduce_id[k];
    if (u < 0) return;
    float *unit_grads = z->model->grads ? z->model->grads + z->layout->units[u].offset : NULL;
    if (z->stage == 0 && !z->reduce_gathering[k]) advance_reduce(z, k);
    wait_request(z, &z->reduce_req[k], z->reduce_gathering[k] ? "MPI_Iallgather"
                                                              : "MPI_Ireduce_scatter_block");
    if (z->stage == 0) {
        insitra_shard_unpack_unit(&z->sl, z->layout, u, z->reduce_packed[k], unit_grads);
    } else if (z->stage == 1) {
        /* The summed slots replace this rank's slots of the local gradients. */
        insitra_shard_insert_unit(&z->sl, z->layout, u, z->reduce_recv[k], unit_grads);
    } else {
        float *acc = z->grad_shard + z->sl.unit_offset[u];
        const float *add = z->reduce_recv[k];
        for (int64_t j = 0; j < z->sl.unit_len[u]; j++) acc[j] += add[j];
    }
    z->reduce_id[k] = -1;
    z->reduce_gathering[k] = false;
}

static void start_reduce(insitra_zero *z, int64_t u, const float *unit_grads)
{
    const int k = z->next_reduce;
    z->next_reduce ^= 1;
    finish_reduce(z, k);
    /* Stage 0: the previous unit's reduce-scatter has had this unit's backward
     * to finish in; its all-gather now overlaps the next unit's backward. */
    if (z->stage == 0 && z->reduce_id[k ^ 1] >= 0 && !z->reduce_gathering[k ^ 1])
        advance_reduce(z, k ^ 1);
    insitra_shard_pack_unit(&z->sl, z->layout, u, unit_grads, z->reduce_packed[k]);
    record(z,
           MPI_Ireduce_scatter_block(z->reduce_packed[k], z->reduce_recv[k], (int)z->sl.unit_len[u],
                                     MPI_FLOAT, MPI_SUM, z->dp->comm, &z->reduce_req[k]),
           "MPI_Ireduce_scatter_block");
    z->reduce_id[k] = u;
}

/* ---- parameters: gather one unit at a time (stage 3) ---- */

static void start_gather(insitra_zero *z, int64_t u, int k)
{
    if (z->gather_id[k] >= 0 && !z->gather_ready[k]) wait_request(z, &z->gather_req[k], "MPI_Iallgather");
    const int count = (int)z->sl.unit_len[u];
    record(z,
           MPI_Iallgather(z->param_shard + z->sl.unit_offset[u], count, MPI_FLOAT,
                          z->gather_packed[k], count, MPI_FLOAT, z->dp->comm, &z->gather_req[k]),
           "MPI_Iallgather");
    z->gather_id[k] = u;
    z->gather_ready[k] = false;
}

/* Makes unit u's parameters resident and points the views at them; starts
 * gathering `next` (-1: none) into the other slot meanwhile. */
static void acquire_unit(insitra_zero *z, int64_t u, int64_t next)
{
    int k = z->gather_id[0] == u ? 0 : z->gather_id[1] == u ? 1 : -1;
    if (k < 0) {
        k = z->gather_id[0] == next ? 1 : 0;
        start_gather(z, u, k);
    }
    if (!z->gather_ready[k]) {
        wait_request(z, &z->gather_req[k], "MPI_Iallgather");
        insitra_shard_unpack_unit(&z->sl, z->layout, u, z->gather_packed[k], z->gather_unit[k]);
        z->gather_ready[k] = true;
    }
    insitra_param_view_bind_unit(&z->model->p, z->layout, u, z->gather_unit[k]);
    if (next >= 0 && z->gather_id[1 - k] != next) start_gather(z, next, 1 - k);
}

/* ---- the model's hooks ---- */

static void unit_begin(void *ctx, int64_t u, insitra_pass pass)
{
    insitra_zero *z = ctx;
    const int64_t last = z->layout->num_units - 1;
    if (z->stage == 3) {
        const int64_t next = pass == INSITRA_PASS_FORWARD ? (u < last ? u + 1 : -1) : u - 1;
        acquire_unit(z, u, next);
    }
    if (pass == INSITRA_PASS_BACKWARD && z->stage >= 2) {
        memset(z->unit_grads, 0, (size_t)z->layout->units[u].numel * sizeof(float));
        insitra_param_view_bind_unit(&z->model->g, z->layout, u, z->unit_grads);
    }
    progress(z);
}

static void unit_end(void *ctx, int64_t u, insitra_pass pass)
{
    insitra_zero *z = ctx;
    if (pass == INSITRA_PASS_BACKWARD) {
        const insitra_param_unit *unit = &z->layout->units[u];
        /* On one rank the full local gradient already is the sum. */
        if (z->stage <= 1 && z->communicate && z->sl.dp > 1)
            start_reduce(z, u, z->model->grads + unit->offset);
        else if (z->stage >= 2)
            start_reduce(z, u, z->unit_grads);
    }
    progress(z);
}

/* ---- lifetime ---- */

insitra_status insitra_zero_create(insitra_zero *z, int stage, const insitra_comm *dp,
                                   insitra_model *model)
{
    memset(z, 0, sizeof *z);
    z->stage = stage;
    z->dp = dp;
    z->model = model;
    z->layout = &model->layout;
    for (int k = 0; k < 2; k++) {
        z->gather_req[k] = z->reduce_req[k] = MPI_REQUEST_NULL;
        z->gather_id[k] = z->reduce_id[k] = -1;
    }
    INSITRA_CHECK(insitra_shard_layout_create(&z->sl, z->layout, dp->size, dp->rank));
    const insitra_zero_sizes sz = insitra_zero_sizes_for(stage, z->layout, &z->sl);
    const int64_t S = z->sl.total, U = z->sl.max_unit_len, N = z->sl.dp;
    const int64_t Pu = z->layout->max_unit_numel;
    /* Everything the model does not own: shard buffers, moments, comm buffers. */
    const int64_t shards = insitra_size_add(stage == 3 ? sz.params : 0, stage >= 2 ? sz.grads : 0);
    const int64_t own = insitra_size_add(shards, insitra_size_add(sz.moments, sz.comm));
    z->memory = own == INSITRA_SIZE_OVERFLOW ? NULL : calloc((size_t)own, sizeof(float));
    if (!z->memory) {
        insitra_zero_free(z);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "ZeRO stage %d: cannot allocate %.1f MiB of optimizer and "
                                 "communication buffers",
                                 stage, (double)own * 4.0 / 1048576.0);
    }
    float *next = z->memory;
#define TAKE(ptr, count) do { (ptr) = next; next += (count); } while (0)
    const int64_t moment = stage == 0 ? z->layout->total : S;
    TAKE(z->m, moment);
    TAKE(z->v, moment);
    {
        for (int k = 0; k < 2; k++) {
            TAKE(z->reduce_packed[k], N * U);
            TAKE(z->reduce_recv[k], U);
        }
    }
    if (stage == 1 || stage == 2) {
        TAKE(z->send, 2 * U);
        z->gather_packed[0] = z->reduce_packed[0]; /* idle once backward is over */
        z->gather_packed[1] = z->reduce_packed[1];
    }
    if (stage >= 2) {
        TAKE(z->grad_shard, S);
        TAKE(z->unit_grads, Pu);
    }
    if (stage == 3) {
        TAKE(z->param_shard, S);
        for (int k = 0; k < 2; k++) {
            TAKE(z->gather_packed[k], N * U);
            TAKE(z->gather_unit[k], Pu);
        }
    }
#undef TAKE
    z->hooks = (insitra_model_hooks){.ctx = z, .unit_begin = unit_begin, .unit_end = unit_end};
    model->hooks = &z->hooks;
    return INSITRA_STATUS_OK;
}

void insitra_zero_free(insitra_zero *z)
{
    if (z->model) z->model->hooks = NULL;
    free(z->memory);
    insitra_shard_layout_free(&z->sl);
    memset(z, 0, sizeof *z);
}

void insitra_zero_init_params(insitra_zero *z, uint64_t seed, double std)
{
    insitra_rng rng;
    insitra_rng_seed(&rng, seed, 0);
    for (int64_t u = 0; u < z->layout->num_units; u++) {
        if (z->stage < 3) {
            insitra_param_init_unit(z->layout, u, z->model->dims.n_layers, std, &rng,
                                    z->model->params + z->layout->units[u].offset);
        } else {
            /* One unit at a time through a gather slot: no full copy ever exists. */
            insitra_param_init_unit(z->layout, u, z->model->dims.n_layers, std, &rng,
                                    z->gather_unit[0]);
            insitra_shard_extract_unit(&z->sl, z->layout, u, z->gather_unit[0],
                                       z->param_shard + z->sl.unit_offset[u]);
        }
    }
    z->gather_id[0] = z->gather_id[1] = -1;
}

/* ---- the step ---- */

void insitra_zero_begin_step(insitra_zero *z)
{
    z->error = INSITRA_STATUS_OK;
    z->wait_seconds = 0.0;
    if (z->stage <= 1)
        insitra_model_zero_grads(z->model);
    else
        memset(z->grad_shard, 0, (size_t)z->sl.total * sizeof(float));
}

void insitra_zero_set_last_micro_batch(insitra_zero *z, bool last) { z->communicate = last; }

insitra_status insitra_zero_finish_backward(insitra_zero *z)
{
    /* Oldest first, the order the reductions started. */
    finish_reduce(z, z->next_reduce);
    finish_reduce(z, z->next_reduce ^ 1);
    return z->error;
}

/* This rank's slot of tensor i in the summed gradient, and its length. */
static const float *grad_slot(const insitra_zero *z, int64_t i, int64_t *count)
{
    const insitra_tensor_desc *t = &z->layout->tensors[i];
    *count = insitra_shard_count(&z->sl, i, t->numel, z->sl.rank);
    if (z->stage <= 1) return z->model->grads + t->offset + z->sl.rank * z->sl.len[i];
    return z->grad_shard + z->sl.offset[i];
}

double insitra_zero_grad_sum_squares(const insitra_zero *z)
{
    double total = 0.0;
    for (int64_t i = 0; i < z->layout->num_tensors; i++) {
        int64_t count;
        const float *g = grad_slot(z, i, &count);
        if (count > 0) total += insitra_sum_squares(g, count);
    }
    return total;
}

/* Stages 1-2: every rank's updated slots into everyone's full parameters. */
static void allgather_params(insitra_zero *z)
{
    const insitra_param_layout *l = z->layout;
    for (int64_t u = 0; u < l->num_units + 2; u++) {
        const int k = (int)(u % 2);
        const int64_t done = u - 2; /* the unit whose gather used slot k before */
        if (done >= 0) {
            wait_request(z, &z->gather_req[k], "MPI_Iallgather");
            insitra_shard_unpack_unit(&z->sl, l, done, z->gather_packed[k],
                                      z->model->params + l->units[done].offset);
        }
        if (u >= l->num_units) continue;
        const int count = (int)z->sl.unit_len[u];
        float *send = z->send + k * z->sl.max_unit_len;
        insitra_shard_extract_unit(&z->sl, l, u, z->model->params + l->units[u].offset, send);
        record(z,
               MPI_Iallgather(send, count, MPI_FLOAT, z->gather_packed[k], count, MPI_FLOAT,
                              z->dp->comm, &z->gather_req[k]),
               "MPI_Iallgather");
    }
}

insitra_status insitra_zero_update(insitra_zero *z, int64_t t, double lr, float grad_scale,
                                   const insitra_adamw_hparams *hp)
{
    const insitra_param_layout *l = z->layout;
    if (z->stage == 0) {
        insitra_adamw_update_all(z->model->params, z->model->grads, z->m, z->v, l, t, lr,
                                 grad_scale, hp);
        return z->error;
    }
    for (int64_t i = 0; i < l->num_tensors; i++) {
        int64_t count;
        const float *g = grad_slot(z, i, &count);
        if (count == 0) continue;
        float *p = z->stage == 3 ? z->param_shard + z->sl.offset[i]
                                 : z->model->params + l->tensors[i].offset + z->sl.rank * z->sl.len[i];
        insitra_adamw_update(p, g, z->m + z->sl.offset[i], z->v + z->sl.offset[i], count, t, lr,
                             grad_scale, l->tensors[i].decay, hp);
    }
    if (z->stage <= 2 && z->sl.dp > 1)
        allgather_params(z);
    else
        z->gather_id[0] = z->gather_id[1] = -1; /* gathered copies are stale now */
    return z->error;
}

/* Every rank's slots of a shard-shaped buffer into a full one. */
static void gather_slots(insitra_zero *z, const float *slots, float *full)
{
    const insitra_param_layout *l = z->layout;
    for (int64_t u = 0; u < l->num_units; u++) {
        const int count = (int)z->sl.unit_len[u];
        record(z,
               MPI_Allgather(slots + z->sl.unit_offset[u], count, MPI_FLOAT, z->reduce_packed[0], count,
                             MPI_FLOAT, z->dp->comm),
               "MPI_Allgather");
        insitra_shard_unpack_unit(&z->sl, l, u, z->reduce_packed[0], full + l->units[u].offset);
    }
}

insitra_status insitra_zero_gather_state(insitra_zero *z, float *params, float *m, float *v)
{
    const size_t bytes = (size_t)z->layout->total * sizeof(float);
    z->error = INSITRA_STATUS_OK;
    if (params) {
        if (z->stage < 3) memcpy(params, z->model->params, bytes);
        else gather_slots(z, z->param_shard, params);
    }
    for (int k = 0; k < 2; k++) {
        float *out = k == 0 ? m : v;
        const float *mine = k == 0 ? z->m : z->v;
        if (!out) continue;
        if (z->stage == 0) memcpy(out, mine, bytes);
        else gather_slots(z, mine, out);
    }
    return z->error;
}

insitra_status insitra_zero_gather_params(insitra_zero *z, float *full)
{
    return insitra_zero_gather_state(z, full, NULL, NULL);
}
