/*
 * The CPU backend: host memory, the fp32 OpenMP/BLAS kernels of layers.c,
 * and MPI collectives (non-blocking, progressed by the schedule's pokes).
 * Every operation runs when called, so "queued in order" holds trivially.
 */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "../checked.h"
#include "../error.h"
#include "../optimizer.h"
#include "../sample_store.h"
#include "attention.h"
#include "layers.h"

struct insitra_group {
    const insitra_comm *c;
};

/* ---- memory ---- */

static insitra_status cpu_alloc(insitra_backend *be, size_t bytes, const char *what, void **ptr)
{
    (void)be;
    *ptr = calloc(bytes ? bytes : 1, 1);
    if (!*ptr)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "cannot allocate %.1f MiB for %s",
                                 (double)bytes / 1048576.0, what);
    return INSITRA_STATUS_OK;
}

static void cpu_release(insitra_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

static insitra_status cpu_copy(insitra_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_fill_zero(insitra_backend *be, void *dst, size_t bytes)
{
    (void)be;
    memset(dst, 0, bytes);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_nothing(insitra_backend *be)
{
    (void)be;
    return INSITRA_STATUS_OK;
}

/* The kernels keep their tiles on the stack: nothing to reserve. */
static insitra_status cpu_reserve(insitra_backend *be, const insitra_model_dims *d, int64_t B)
{
    (void)be;
    (void)d;
    (void)B;
    return INSITRA_STATUS_OK;
}

static bool cpu_is_device_pointer(insitra_backend *be, const void *ptr)
{
    (void)be;
    (void)ptr;
    return false;
}

static insitra_status cpu_first_nonfinite(insitra_backend *be, const float *a, int64_t n, int64_t *index)
{
    (void)be;
    *index = insitra_first_nonfinite(a, n);
    return INSITRA_STATUS_OK;
}

/* ---- data ---- */

static insitra_status cpu_gather_batch(insitra_backend *be, float *x, float *y, const float *store_x,
                                       const float *store_y, const int64_t *slots, int64_t n,
                                       int64_t xs, int64_t ys)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * xs, store_x + slots[i] * xs, (size_t)xs * sizeof(float));
        memcpy(y + i * ys, store_y + slots[i] * ys, (size_t)ys * sizeof(float));
    }
    return INSITRA_STATUS_OK;
}

/* The host functions of lib/normalize.h: the CPU computes in fp32. */
static insitra_status cpu_normalize_forward(insitra_backend *be, void *x_hat, float *y, const float *x,
                                            const insitra_feature_norm *fm, int64_t N)
{
    (void)be;
    insitra_feature_norm_inputs(fm, N, x, x_hat);
    if (y) insitra_feature_norm_targets(fm, N, x, y);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_normalize_inverse(insitra_backend *be, float *out, const float *x,
                                            const insitra_feature_norm *fm, int64_t N)
{
    (void)be;
    insitra_feature_norm_outputs(fm, N, x, out);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_to_act(insitra_backend *be, void *out, const float *in, int64_t n)
{
    return cpu_copy(be, out, in, (size_t)n * sizeof(float));
}

/* ---- layers ---- */

static insitra_status cpu_linear_forward(insitra_backend *be, void *out, void *gelu_pre, const void *inp,
                                         const void *w, const void *b, const void *residual, int64_t N,
                                         int64_t IC, int64_t OC)
{
    (void)be;
    if (!gelu_pre) {
        insitra_linear_forward(out, inp, w, b, residual, N, IC, OC);
        return INSITRA_STATUS_OK;
    }
    insitra_linear_forward(gelu_pre, inp, w, b, residual, N, IC, OC);
    insitra_gelu_forward(out, gelu_pre, N * OC);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_linear_backward(insitra_backend *be, void *dinp, float *dw, float *db,
                                          const void *dout, const void *gelu_pre, const void *inp,
                                          const void *w, int64_t N, int64_t IC, int64_t OC)
{
    (void)be;
    insitra_linear_backward(dinp, dw, db, dout, inp, w, N, IC, OC);
    if (gelu_pre && dinp) insitra_gelu_backward(dinp, gelu_pre, dinp, N * IC);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_output_forward(insitra_backend *be, float *out, const void *inp, const void *w,
                                         const void *b, int64_t N, int64_t C, int64_t F)
{
    (void)be;
    insitra_linear_forward(out, inp, w, b, NULL, N, C, F);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_pos_forward(insitra_backend *be, void *out, const void *pos, int64_t B,
                                      int64_t T, int64_t C)
{
    (void)be;
    insitra_pos_embed_forward(out, pos, B, T, C);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_pos_backward(insitra_backend *be, float *dpos, const void *dout, int64_t B,
                                       int64_t T, int64_t C)
{
    (void)be;
    insitra_pos_embed_backward(dpos, dout, B, T, C);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_layernorm_forward(insitra_backend *be, void *out, float *mean, float *rstd,
                                            const void *inp, const void *w, const void *b, int64_t N,
                                            int64_t C)
{
    (void)be;
    insitra_layernorm_forward(out, mean, rstd, inp, w, b, N, C);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_layernorm_backward(insitra_backend *be, void *dinp, float *dw, float *db,
                                             const void *dout, const void *inp, const float *mean,
                                             const float *rstd, const void *w, int64_t N, int64_t C,
                                             bool accumulate)
{
    (void)be;
    if (!accumulate) memset(dinp, 0, (size_t)(N * C) * sizeof(float));
    insitra_layernorm_backward(dinp, dw, db, dout, inp, mean, rstd, w, N, C);
    return INSITRA_STATUS_OK;
}

/* The state is the row log-sum-exp of the scores (B,H,T) fp32. */
static insitra_status cpu_attention_forward(insitra_backend *be, void *out, void *state, const void *qkv,
                                            int64_t B, int64_t T, int64_t C, int64_t H, bool causal)
{
    (void)be;
    insitra_attention_forward(out, state, qkv, B, T, C, H, causal);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_attention_backward(insitra_backend *be, void *dqkv, const void *dout,
                                             const void *qkv, const void *out, const void *state,
                                             int64_t B, int64_t T, int64_t C, int64_t H, bool causal)
{
    (void)be;
    insitra_attention_backward(dqkv, dout, qkv, out, state, B, T, C, H, causal);
    return INSITRA_STATUS_OK;
}

/* ---- context parallelism: attention.h's block kernels on packed [k | v] ---- */

static insitra_status cpu_attention_kv_pack(insitra_backend *be, void *kv, const void *qkv, int64_t N, int64_t C)
{
    (void)be;
    for (int64_t i = 0; i < N; i++)
        memcpy((float *)kv + i * 2 * C, (const float *)qkv + i * 3 * C + C, (size_t)(2 * C) * sizeof(float));
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_attention_block_forward(insitra_backend *be, void *out, float *m, float *l,
                                                  const void *qkv, const void *kv, int64_t B, int64_t Tq,
                                                  int64_t Tk, int64_t C, int64_t H, int64_t q_pos,
                                                  int64_t k_pos, bool causal, bool first)
{
    (void)be;
    if (first) {
        memset(out, 0, (size_t)(B * Tq * C) * sizeof(float));
        for (int64_t i = 0; i < B * H * Tq; i++) m[i] = -INFINITY, l[i] = 0.0f;
    }
    insitra_attention_block_forward(out, m, l, qkv, kv, (const float *)kv + C, 2 * C, B, Tq, Tk, C, H, q_pos,
                                    k_pos, causal);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_attention_block_finish(insitra_backend *be, void *out, float *lse, const float *m,
                                                 const float *l, int64_t B, int64_t Tq, int64_t C, int64_t H)
{
    (void)be;
    insitra_attention_block_finish(out, lse, m, l, B, Tq, C, H);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_attention_block_backward(insitra_backend *be, void *dqkv, float *dkv, const void *dout,
                                                   const void *qkv, const void *kv, const void *out,
                                                   const float *lse, int64_t B, int64_t Tq, int64_t Tk,
                                                   int64_t C, int64_t H, int64_t q_pos, int64_t k_pos,
                                                   bool causal)
{
    (void)be;
    insitra_attention_block_backward(dqkv, dkv, dkv + C, dout, qkv, kv, (const float *)kv + C, 2 * C,
                                     out, lse, B, Tq, Tk, C, H, q_pos, k_pos, causal);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_attention_block_done(insitra_backend *be, void *dqkv, float *dkv, int64_t N, int64_t C,
                                               int64_t H)
{
    (void)be;
    float *q = dqkv, *kv = dkv;
    insitra_attention_block_scale(q, 3 * C, 1, N, C, H);
    insitra_attention_block_scale(kv, 2 * C, 1, N, C, H);
    for (int64_t i = 0; i < N; i++) memcpy(q + i * 3 * C + C, kv + i * 2 * C, (size_t)(2 * C) * sizeof(float));
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_mse_backward(insitra_backend *be, void *dout, const float *out, const float *y,
                                       int64_t n, float scale)
{
    (void)be;
    insitra_mse_backward(dout, out, y, n, scale);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_sum_squares(insitra_backend *be, double *acc, const float *a, const float *b,
                                      int64_t n, double scale)
{
    (void)be;
    double sum = 0.0;
    if (b) {
        for (int64_t i = 0; i < n; i++) {
            const double d = (double)a[i] - (double)b[i];
            sum += d * d;
        }
    } else {
        sum = insitra_sum_squares(a, n);
    }
    *acc += scale * sum;
    return INSITRA_STATUS_OK;
}

/* ---- optimizer and shards ---- */

static insitra_status cpu_adamw(insitra_backend *be, const insitra_update_segment *segs, int64_t n_segs,
                                int64_t max_count, float *params, void *copy, const float *grads,
                                float *m, float *v, const insitra_step_scalars *sc, const double *stats)
{
    (void)be;
    (void)max_count;
    const double scale = insitra_step_grad_scale(sc, stats);
    if (scale == 0.0) return INSITRA_STATUS_OK; /* non-finite loss or norm: the step reports it */
    for (int64_t k = 0; k < n_segs; k++) {
        const insitra_update_segment *s = &segs[k];
        insitra_adamw_apply(params + s->param, copy ? (float *)copy + s->copy : NULL, grads + s->grad,
                            m + s->state, v + s->state, s->count, (float)scale, s->decay != 0, sc);
    }
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_grad_sum_squares(insitra_backend *be, double *acc, const float *grads,
                                           const insitra_update_segment *segs, int64_t n_segs,
                                           int64_t max_count)
{
    (void)be;
    (void)max_count;
    double total = 0.0;
    for (int64_t k = 0; k < n_segs; k++)
        if (segs[k].count > 0) total += insitra_sum_squares(grads + segs[k].grad, segs[k].count);
    *acc += total;
    return INSITRA_STATUS_OK;
}

/* Elements of a tensor of numel with slot length len that rank r holds. */
static int64_t slot_count(const insitra_shard_copy *c, int64_t r)
{
    const int64_t rest = c->numel - r * c->len;
    return rest <= 0 ? 0 : rest < c->len ? rest : c->len;
}

static void shard_copy(char *packed, char *flat, const insitra_shard_copy *copies, int64_t n,
                       int64_t stride, int64_t first_rank, int64_t ranks, size_t es, bool pack)
{
    for (int64_t k = 0; k < ranks; k++) {
        const int64_t r = first_rank + k;
        for (int64_t i = 0; i < n; i++) {
            const insitra_shard_copy *c = &copies[i];
            const int64_t count = slot_count(c, r);
            char *f = flat + (size_t)(c->flat + r * c->len) * es;
            char *p = packed + (size_t)(k * stride + c->slot) * es;
            if (pack) {
                if (count > 0) memcpy(p, f, (size_t)count * es);
                memset(p + (size_t)count * es, 0, (size_t)(c->len - count) * es);
            } else if (count > 0) {
                memcpy(f, p, (size_t)count * es);
            }
        }
    }
}

static insitra_status cpu_shard_pack(insitra_backend *be, void *packed, const void *flat,
                                     const insitra_shard_copy *copies, int64_t n, int64_t stride,
                                     int64_t first_rank, int64_t ranks, int64_t max_numel, insitra_dtype t)
{
    (void)be;
    (void)max_numel;
    shard_copy(packed, (char *)flat, copies, n, stride, first_rank, ranks, insitra_dtype_size(t), true);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_shard_unpack(insitra_backend *be, void *flat, const void *packed,
                                       const insitra_shard_copy *copies, int64_t n, int64_t stride,
                                       int64_t first_rank, int64_t ranks, int64_t max_numel,
                                       insitra_dtype t)
{
    (void)be;
    (void)max_numel;
    shard_copy((char *)packed, flat, copies, n, stride, first_rank, ranks, insitra_dtype_size(t), false);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_bias_residual_forward(insitra_backend *be, void *out, const void *inp, const void *b,
                                                const void *residual, int64_t N, int64_t C)
{
    (void)be;
    float *o = out;
    const float *x = inp, *bias = b, *r = residual;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) o[i * C + c] = x[i * C + c] + bias[c] + r[i * C + c];
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_bias_backward(insitra_backend *be, float *db, const void *dout, int64_t N, int64_t C)
{
    (void)be;
    const float *d = dout;
    /* rows in order, like linear_backward's bias: the same sums at every thread count */
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) db[c] += d[i * C + c];
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_block_transpose(insitra_backend *be, void *out, const void *in, int64_t P, int64_t Q,
                                          int64_t n, insitra_dtype t)
{
    (void)be;
    const size_t bytes = (size_t)n * insitra_dtype_size(t);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t p = 0; p < P; p++)
        for (int64_t q = 0; q < Q; q++)
            memcpy((char *)out + (size_t)(q * P + p) * bytes, (const char *)in + (size_t)(p * Q + q) * bytes, bytes);
    return INSITRA_STATUS_OK;
}

static insitra_status cpu_add(insitra_backend *be, float *dst, const float *src, int64_t n)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
    return INSITRA_STATUS_OK;
}

/* ---- collectives ---- */

static insitra_status mpi_fail(int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "%s failed: %s", what, text);
}

static insitra_status cpu_group_create(insitra_backend *be, const insitra_comm *c, insitra_group **g)
{
    (void)be;
    *g = malloc(sizeof **g);
    if (!*g) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "out of memory for a process group");
    (*g)->c = c;
    return INSITRA_STATUS_OK;
}

static void cpu_group_free(insitra_backend *be, insitra_group *g)
{
    (void)be;
    free(g);
}

static MPI_Datatype mpi_type(insitra_dtype t) { return t == INSITRA_DTYPE_BF16 ? MPI_UINT16_T : MPI_FLOAT; }

static insitra_status cpu_reduce_scatter(insitra_backend *be, insitra_group *g, const void *send,
                                         void *recv, int64_t n, insitra_dtype t, insitra_coll *h)
{
    (void)be;
    if (t != INSITRA_DTYPE_F32) /* the CPU backend computes in fp32 (insitra_config_validate) */
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "reduce_scatter: the CPU backend sums fp32 only");
    const int rc = MPI_Ireduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, g->c->comm, &h->req);
    h->active = rc == MPI_SUCCESS;
    h->pair = false;
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK : mpi_fail(rc, "MPI_Ireduce_scatter_block");
}

static insitra_status cpu_all_gather(insitra_backend *be, insitra_group *g, const void *send, void *recv,
                                     int64_t n, insitra_dtype t, insitra_coll *h)
{
    (void)be;
    const int rc = MPI_Iallgather(send, (int)n, mpi_type(t), recv, (int)n, mpi_type(t), g->c->comm,
                                  &h->req);
    h->active = rc == MPI_SUCCESS;
    h->pair = false;
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK : mpi_fail(rc, "MPI_Iallgather");
}

/* A send to the next rank and a receive from the previous one: two requests
 * (MPICH 4.0 has no MPI_Isendrecv). */
static insitra_status cpu_ring_shift(insitra_backend *be, insitra_group *g, const void *send, void *recv,
                                     int64_t n, insitra_dtype t, insitra_coll *h)
{
    (void)be;
    if (n > INT_MAX)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "ring_shift: %" PRId64 " elements exceed one MPI message (INT_MAX)", n);
    const int rank = g->c->rank, size = g->c->size;
    int rc = MPI_Irecv(recv, (int)n, mpi_type(t), (rank + size - 1) % size, 0, g->c->comm, &h->recv_req);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Irecv");
    rc = MPI_Isend(send, (int)n, mpi_type(t), (rank + 1) % size, 0, g->c->comm, &h->req);
    h->active = h->pair = true;
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK : mpi_fail(rc, "MPI_Isend");
}

static insitra_status cpu_wait(insitra_backend *be, insitra_coll *h)
{
    if (!h->active) return INSITRA_STATUS_OK;
    const double t0 = MPI_Wtime();
    int rc = MPI_Wait(&h->req, MPI_STATUS_IGNORE);
    if (rc == MPI_SUCCESS && h->pair) rc = MPI_Wait(&h->recv_req, MPI_STATUS_IGNORE);
    be->wait_seconds += MPI_Wtime() - t0;
    h->active = h->pair = false;
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK : mpi_fail(rc, "MPI_Wait on a collective");
}

/* Tests requests one by one (MPI_Testall with MPI_STATUSES_IGNORE trips a
 * false GCC 12 warning on MPICH's declarations). Only pokes: every rank
 * starts collectives in the same order whatever has finished. */
static void cpu_progress(insitra_backend *be, insitra_coll *h, int n)
{
    (void)be;
    for (int i = 0; i < n; i++) {
        if (!h[i].active) continue;
        int flag, recv_flag = 1;
        MPI_Test(&h[i].req, &flag, MPI_STATUS_IGNORE);
        if (h[i].pair) MPI_Test(&h[i].recv_req, &recv_flag, MPI_STATUS_IGNORE);
        if (flag && recv_flag) h[i].active = h[i].pair = false;
    }
}

static insitra_status cpu_sum_ordered(insitra_backend *be, insitra_group *g, double *v, int n)
{
    (void)be;
    return insitra_comm_sum_ordered(g->c, v, n);
}

static void cpu_free(insitra_backend *be) { free(be); }

static const insitra_backend_i cpu_interface = {
    .name = "cpu",
    .free = cpu_free,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .fill_zero = cpu_fill_zero,
    .synchronize = cpu_nothing,
    .reserve = cpu_reserve,
    .is_device_pointer = cpu_is_device_pointer,
    .first_nonfinite = cpu_first_nonfinite,
    .gather_batch = cpu_gather_batch,
    .normalize_forward = cpu_normalize_forward,
    .normalize_inverse = cpu_normalize_inverse,
    .to_act = cpu_to_act,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .output_forward = cpu_output_forward,
    .pos_forward = cpu_pos_forward,
    .pos_backward = cpu_pos_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .mse_backward = cpu_mse_backward,
    .sum_squares = cpu_sum_squares,
    .adamw = cpu_adamw,
    .grad_sum_squares = cpu_grad_sum_squares,
    .shard_pack = cpu_shard_pack,
    .shard_unpack = cpu_shard_unpack,
    .add = cpu_add,
    .group_create = cpu_group_create,
    .group_free = cpu_group_free,
    .reduce_scatter = cpu_reduce_scatter,
    .all_gather = cpu_all_gather,
    .wait = cpu_wait,
    .chain = cpu_wait,
    .progress = cpu_progress,
    .sum_ordered = cpu_sum_ordered,
    .capture_begin = NULL,
    .capture_end = NULL,
    .replay = NULL,
    .attention_kv_pack = cpu_attention_kv_pack,
    .attention_block_forward = cpu_attention_block_forward,
    .attention_block_finish = cpu_attention_block_finish,
    .attention_block_backward = cpu_attention_block_backward,
    .attention_block_done = cpu_attention_block_done,
    .ring_shift = cpu_ring_shift,
    .bias_residual_forward = cpu_bias_residual_forward,
    .bias_backward = cpu_bias_backward,
    .block_transpose = cpu_block_transpose,
    .join_stream = NULL,
};

/* The row log-sum-exp, fp32 whatever the activations' type: linear in T. */
static int64_t cpu_attention_state_bytes(const insitra_model_dims *d, int64_t B, size_t act_size)
{
    (void)act_size;
    /* the row statistics (lse) of this rank's heads over the tokens its attention sees */
    return insitra_size_mul(insitra_size_mul(B, insitra_model_dims_heads(d)),
                            insitra_size_mul(insitra_model_dims_attn_tokens(d), (int64_t)sizeof(float)));
}

/* Attention tiles live on each thread's stack (lib/cpu/attention.h). */
static int64_t cpu_workspace_bytes(const insitra_model_dims *d, int64_t B, size_t act_size)
{
    (void)d;
    (void)B;
    (void)act_size;
    return 0;
}

const insitra_backend_desc insitra_backend_cpu_desc = {
    .device = INSITRA_DEVICE_CPU,
    .attention_state_bytes = cpu_attention_state_bytes,
    .workspace_bytes = cpu_workspace_bytes,
    .align = 64,
};

insitra_status insitra_backend_cpu_create(insitra_backend **out)
{
    insitra_backend *c = calloc(1, sizeof *c);
    if (!c) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "out of memory for the CPU backend");
    *c = (insitra_backend){
        .i = &cpu_interface,
        .desc = &insitra_backend_cpu_desc,
        .act = INSITRA_DTYPE_F32,
        .act_size = sizeof(float),
        .host_memory = true,
    };
    *out = c;
    return INSITRA_STATUS_OK;
}
