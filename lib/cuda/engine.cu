/*
 * The GPU training engine behind lib/gpu.h: one device per rank, the model
 * of model_cuda.cu, AdamW on fp32 master weights, and the ZeRO stages over
 * NCCL with the shard layout of lib/shard.h (so checkpoints are the same
 * files as on the CPU).
 *
 * Two streams: compute, and comm for NCCL. Each unit's gradient reduction
 * (and at stage 3 each unit's parameter gather) is queued on comm as soon as
 * compute has produced what it needs (an event), so communication runs under
 * the backward of the next units. A step is one fork of comm from compute
 * and one join back; with cuda.graphs the whole step, NCCL calls included,
 * is captured once and replayed, so a small model pays one launch per step.
 *
 *   stage 0: full fp32 gradients, each unit all-reduced in place
 *   stage 1: full fp32 gradients, each unit reduce-scattered into the shard
 *   stage 2: one unit's gradients at a time (two buffers), reduce-scattered
 *            and added into the shard on every micro-batch
 *   stage 3: as 2, and parameters all-gathered per unit (bf16 when the
 *            compute type is), the next unit prefetched into a second buffer
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_util.h"
#include "model_cuda.cuh"

extern "C" {
#include "../gpu_sizes.h"
}

extern "C" {
#include "../gpu.h"
#include "../trainer.h"
}

struct insitra_gpu {
    const insitra_config *cfg;          /* the trainer's, which outlives the engine */
    int device, stage, dp, rank;
    bool bf16, graphs;
    size_t es;
    cudaDataType_t ab;
    ncclDataType_t nccl_t;
    cudaStream_t cs, ns;
    ncclComm_t nccl;
    insitra_matmul_ctx mm;
    insitra_dev_model model;
    const insitra_param_layout *layout;
    const insitra_shard_layout *sl;
    int64_t P, S, n_state, mb, batch, xs, ys, capacity, units;
    int64_t *unit_max_numel;            /* host, per unit: largest tensor */
    int64_t max_numel;

    /* state: master weights, moments, gradients, working parameters */
    void *state_mem;
    float *master, *m, *v, *grads, *grad_state, *unit_grads[2];
    uint8_t *decay;
    void *work, *send, *gather_unit[2];
    /* communication buffers */
    void *comm_mem;
    void *packed_all, *gather_packed[2];
    float *grad_packed, *grad_recv;
    /* sample store and small per-step values */
    void *store_mem;
    float *store_x, *store_y;
    int64_t *slots_dev;
    insitra_adamw_device *hp_dev;
    double *stats_dev;                  /* loss sum, gradient sum of squares, sse */
    unsigned long long *nonfinite_dev;
    insitra_shard_copy *copies_abs, *copies_unit;
    void *host_mem;                     /* pinned */
    int64_t *slots_host;
    insitra_adamw_device *hp_host;
    double *stats_host;
    unsigned long long *nonfinite_host;

    cudaEvent_t ev_fork, ev_join, ev_ready[2], ev_done[2], ev_gathered[2], ev_free[2];
    cudaGraphExec_t exec;

    /* per pass */
    bool last_micro, done_used[2], free_used[2], forward_only;
    int grad_slot;
    int64_t gather_pos, gather_total;
    int64_t bucket_end;                 /* stage 0: end (floats) of the gradients not yet all-reduced */
    size_t bytes_params, bytes_grads, bytes_moments, bytes_comm, bytes_store;
    insitra_gpu_bytes planned;          /* lib/gpu_sizes.c: what the planner predicts */
};

namespace {

/* ---- allocation ---- */

struct bump {
    char *base;
    size_t used;
    template <typename P> P *take(size_t count, size_t elem = sizeof(P))
    {
        used = (used + 255) & ~(size_t)255;
        P *p = base ? (P *)(base + used) : nullptr;
        used += count * elem;
        return p;
    }
};

insitra_status device_alloc(void **p, size_t bytes, const char *what)
{
    if (bytes == 0) bytes = 256;
    if (cudaMalloc(p, bytes) != cudaSuccess) {
        cudaGetLastError();
        *p = nullptr;
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "GPU: cannot allocate %.2f GiB for %s; lower the model size or raise "
                                 "parallel.zero_stage",
                                 (double)bytes / 1073741824.0, what);
    }
    CUDA_TRY(cudaMemset(*p, 0, bytes));
    return INSITRA_STATUS_OK;
}

/* Carves the state buffers (lib/gpu_sizes.c counts the same); with base == nullptr only counts. */
size_t carve_state(insitra_gpu *g, char *base)
{
    bump b{base, 0};
    const int64_t uni = g->layout->max_unit_numel;
    g->master = b.take<float>((size_t)g->n_state);
    g->work = g->stage <= 2 ? b.take<char>((size_t)g->P, g->es) : nullptr;
    g->send = g->stage >= 1 ? b.take<char>((size_t)g->S, g->es) : nullptr;
    for (int k = 0; k < 2; k++) g->gather_unit[k] = g->stage == 3 ? b.take<char>((size_t)uni, g->es) : nullptr;
    g->bytes_params = b.used;
    g->grads = g->stage <= 1 ? b.take<float>((size_t)g->P) : nullptr;
    g->grad_state = g->stage == 0 ? g->grads : b.take<float>((size_t)g->S);
    for (int k = 0; k < 2; k++) g->unit_grads[k] = g->stage >= 2 ? b.take<float>((size_t)uni) : nullptr;
    g->bytes_grads = b.used - g->bytes_params;
    const size_t before = b.used;
    g->m = b.take<float>((size_t)g->n_state);
    g->v = b.take<float>((size_t)g->n_state);
    g->decay = b.take<uint8_t>((size_t)g->n_state);
    g->bytes_moments = b.used - before;
    return b.used;
}

size_t carve_comm(insitra_gpu *g, char *base)
{
    bump b{base, 0};
    const int64_t U = g->sl->max_unit_len;
    g->packed_all = (g->stage == 1 || g->stage == 2) ? b.take<char>((size_t)(g->dp * g->S), g->es) : nullptr;
    for (int k = 0; k < 2; k++)
        g->gather_packed[k] = g->stage == 3 ? b.take<char>((size_t)(g->dp * U), g->es) : nullptr;
    g->grad_packed = g->stage >= 1 ? b.take<float>((size_t)(g->dp * U)) : nullptr;
    g->grad_recv = g->stage >= 2 ? b.take<float>((size_t)U) : nullptr;
    g->copies_abs = b.take<insitra_shard_copy>((size_t)g->layout->num_tensors);
    g->copies_unit = b.take<insitra_shard_copy>((size_t)g->layout->num_tensors);
    g->hp_dev = b.take<insitra_adamw_device>(1);
    g->stats_dev = b.take<double>(4);
    g->nonfinite_dev = b.take<unsigned long long>(1);
    return b.used;
}

size_t carve_store(insitra_gpu *g, char *base)
{
    bump b{base, 0};
    g->store_x = b.take<float>((size_t)(g->capacity * g->xs));
    g->store_y = b.take<float>((size_t)(g->capacity * g->ys));
    g->slots_dev = b.take<int64_t>((size_t)g->batch);
    return b.used;
}

/* ---- the units' hooks ---- */

int64_t unit_at(const insitra_gpu *g, int64_t pos)
{
    const int64_t U = g->units, period = g->forward_only ? U : 2 * U, q = pos % period;
    return q < U ? q : 2 * U - 1 - q;
}

template <typename T>
void pack(insitra_gpu *g, int64_t u, T *packed, const T *unit_flat, cudaStream_t s)
{
    const insitra_param_unit *pu = &g->layout->units[u];
    insitra_shard_pack<T>(packed, unit_flat, g->copies_unit + pu->first_tensor, pu->num_tensors,
                          g->sl->unit_len[u], g->unit_max_numel[u], s);
}

insitra_status issue_gather(insitra_gpu *g, int64_t pos)
{
    const int64_t u = unit_at(g, pos), slot = pos % 2;
    const insitra_param_unit *pu = &g->layout->units[u];
    if (g->free_used[slot]) CUDA_TRY(cudaStreamWaitEvent(g->ns, g->ev_free[slot], 0));
    NCCL_TRY(ncclAllGather((const char *)g->send + g->sl->unit_offset[u] * g->es, g->gather_packed[slot],
                           (size_t)g->sl->unit_len[u], g->nccl_t, g->nccl, g->ns));
    if (g->bf16)
        insitra_shard_unpack<bf16>((bf16 *)g->gather_unit[slot], (const bf16 *)g->gather_packed[slot],
                                   g->copies_unit + pu->first_tensor, pu->num_tensors, g->sl->unit_len[u],
                                   g->unit_max_numel[u], g->ns);
    else
        insitra_shard_unpack<float>((float *)g->gather_unit[slot], (const float *)g->gather_packed[slot],
                                    g->copies_unit + pu->first_tensor, pu->num_tensors,
                                    g->sl->unit_len[u], g->unit_max_numel[u], g->ns);
    LAUNCH_TRY();
    CUDA_TRY(cudaEventRecord(g->ev_gathered[slot], g->ns));
    return INSITRA_STATUS_OK;
}

/* Stage 0 all-reduces the gradients of consecutive units (contiguous in the
 * block-major layout) together once they reach this size: one NCCL call per
 * ~64 MiB instead of per unit keeps the per-call latency out of the way. */
#define STAGE0_BUCKET_FLOATS ((int64_t)16 << 20)

/* After unit u's backward (units run L+1 .. 0): all-reduce the bucket it completes. */
insitra_status stage0_unit_done(insitra_gpu *g, int64_t u, cudaStream_t s)
{
    const int64_t first = g->layout->units[u].offset;
    if (g->bucket_end - first < STAGE0_BUCKET_FLOATS && u > 0) return INSITRA_STATUS_OK;
    float *b = g->grads + first;
    NCCL_TRY(ncclAllReduce(b, b, (size_t)(g->bucket_end - first), ncclFloat, ncclSum, g->nccl, s));
    g->bucket_end = first;
    return INSITRA_STATUS_OK;
}

/* Stages 1-3: queues on s the reduction of unit u's gradients (unit_grads,
 * the unit's range of the flat layout) into this rank's shard: pack into the
 * rank-major slots, reduce-scatter, and at stages 2-3 add into the shard
 * (stage 1 reduces the step's summed gradients once, straight into it). */
insitra_status reduce_unit(insitra_gpu *g, int64_t u, const float *unit_grads, cudaStream_t s)
{
    const int64_t ulen = g->sl->unit_len[u];
    float *shard = g->grad_state + g->sl->unit_offset[u];
    pack<float>(g, u, g->grad_packed, unit_grads, s);
    LAUNCH_TRY();
    float *dst = g->stage == 1 ? shard : g->grad_recv;
    NCCL_TRY(ncclReduceScatter(g->grad_packed, dst, (size_t)ulen, ncclFloat, ncclSum, g->nccl, s));
    if (g->stage >= 2) {
        insitra_add_f32(shard, g->grad_recv, ulen, s);
        LAUNCH_TRY();
    }
    return INSITRA_STATUS_OK;
}

/* Stages 1-2: every rank's updated slots (compute type) all-gathered on s and
 * unpacked into the working weights. */
insitra_status gather_all_params(insitra_gpu *g, cudaStream_t s)
{
    NCCL_TRY(ncclAllGather(g->send, g->packed_all, (size_t)g->S, g->nccl_t, g->nccl, s));
    const int64_t nt = g->layout->num_tensors;
    if (g->bf16)
        insitra_shard_unpack<bf16>((bf16 *)g->work, (const bf16 *)g->packed_all, g->copies_abs, nt, g->S,
                                   g->max_numel, s);
    else
        insitra_shard_unpack<float>((float *)g->work, (const float *)g->packed_all, g->copies_abs, nt,
                                    g->S, g->max_numel, s);
    LAUNCH_TRY();
    return INSITRA_STATUS_OK;
}

insitra_status hook_begin(void *ctx, int64_t u, insitra_pass pass, const void **params, float **grads)
{
    insitra_gpu *g = (insitra_gpu *)ctx;
    const insitra_param_unit *pu = &g->layout->units[u];
    if (g->stage <= 2) {
        *params = (const char *)g->work + pu->offset * g->es;
    } else {
        const int64_t slot = g->gather_pos % 2;
        CUDA_TRY(cudaStreamWaitEvent(g->cs, g->ev_gathered[slot], 0));
        *params = g->gather_unit[slot];
        if (g->gather_pos + 1 < g->gather_total) INSITRA_CHECK(issue_gather(g, g->gather_pos + 1));
    }
    if (pass == INSITRA_PASS_BACKWARD) {
        if (g->stage <= 1) {
            *grads = g->grads + pu->offset;
        } else {
            const int k = g->grad_slot;
            if (g->done_used[k]) CUDA_TRY(cudaStreamWaitEvent(g->cs, g->ev_done[k], 0));
            CUDA_TRY(cudaMemsetAsync(g->unit_grads[k], 0, (size_t)pu->numel * sizeof(float), g->cs));
            *grads = g->unit_grads[k];
        }
    }
    return INSITRA_STATUS_OK;
}

insitra_status hook_end(void *ctx, int64_t u, insitra_pass pass)
{
    insitra_gpu *g = (insitra_gpu *)ctx;
    const insitra_param_unit *pu = &g->layout->units[u];
    if (g->stage == 3) {
        const int64_t slot = g->gather_pos % 2;
        CUDA_TRY(cudaEventRecord(g->ev_free[slot], g->cs));
        g->free_used[slot] = true;
        g->gather_pos++;
    }
    if (pass != INSITRA_PASS_BACKWARD) return INSITRA_STATUS_OK;
    if (g->stage <= 1) {
        /* the full gradient buffer accumulates the micro-batches: reduce once */
        if (!g->last_micro || (g->stage == 0 && g->dp == 1)) return INSITRA_STATUS_OK;
        CUDA_TRY(cudaEventRecord(g->ev_ready[0], g->cs));
        CUDA_TRY(cudaStreamWaitEvent(g->ns, g->ev_ready[0], 0));
        return g->stage == 0 ? stage0_unit_done(g, u, g->ns)
                             : reduce_unit(g, u, g->grads + pu->offset, g->ns);
    }
    const int k = g->grad_slot;
    CUDA_TRY(cudaEventRecord(g->ev_ready[k], g->cs));
    CUDA_TRY(cudaStreamWaitEvent(g->ns, g->ev_ready[k], 0));
    INSITRA_CHECK(reduce_unit(g, u, g->unit_grads[k], g->ns));
    CUDA_TRY(cudaEventRecord(g->ev_done[k], g->ns));
    g->done_used[k] = true;
    g->grad_slot ^= 1;
    return INSITRA_STATUS_OK;
}

/* Starts a pass of forwards (and backwards): comm joins compute's work. */
insitra_status pass_begin(insitra_gpu *g, bool forward_only, int64_t passes)
{
    g->forward_only = forward_only;
    g->gather_pos = 0;
    g->gather_total = passes * (forward_only ? g->units : 2 * g->units);
    g->grad_slot = 0;
    g->bucket_end = g->P;
    g->done_used[0] = g->done_used[1] = g->free_used[0] = g->free_used[1] = false;
    CUDA_TRY(cudaEventRecord(g->ev_fork, g->cs));
    CUDA_TRY(cudaStreamWaitEvent(g->ns, g->ev_fork, 0));
    if (g->stage == 3 && g->gather_total > 0) INSITRA_CHECK(issue_gather(g, 0));
    return INSITRA_STATUS_OK;
}

insitra_status pass_end(insitra_gpu *g)
{
    CUDA_TRY(cudaEventRecord(g->ev_join, g->ns));
    CUDA_TRY(cudaStreamWaitEvent(g->cs, g->ev_join, 0));
    return INSITRA_STATUS_OK;
}

/* The working parameters after an update (which wrote this rank's slots in
 * the compute type): stages 1-2 all-gather them; stage 0 has them already,
 * stage 3 gathers unit by unit when they are used. */
insitra_status redistribute(insitra_gpu *g)
{
    if (g->stage == 0 || g->stage == 3) return INSITRA_STATUS_OK;
    return gather_all_params(g, g->cs);
}

/* Everything one optimizer step does on the device, queued on g->cs. */
insitra_status enqueue_step(insitra_gpu *g)
{
    const int64_t micro = g->batch / g->mb;
    const insitra_dev_unit_hooks hooks = {g, hook_begin, hook_end};
    CUDA_TRY(cudaMemsetAsync(g->stats_dev, 0, 2 * sizeof(double), g->cs));
    CUDA_TRY(cudaMemsetAsync(g->stage <= 1 ? g->grads : g->grad_state, 0,
                             (size_t)(g->stage <= 1 ? g->P : g->S) * sizeof(float), g->cs));
    INSITRA_CHECK(pass_begin(g, false, micro));
    const double per_value = 1.0 / (double)(g->batch * g->ys);
    for (int64_t i = 0; i < micro; i++) {
        if (g->bf16)
            insitra_gather_batch<bf16>((bf16 *)g->model.x, g->model.y, g->store_x, g->store_y,
                                       g->slots_dev + i * g->mb, g->mb, g->xs, g->ys, g->cs);
        else
            insitra_gather_batch<float>((float *)g->model.x, g->model.y, g->store_x, g->store_y,
                                        g->slots_dev + i * g->mb, g->mb, g->xs, g->ys, g->cs);
        LAUNCH_TRY();
        g->last_micro = i == micro - 1;
        INSITRA_CHECK(insitra_dev_model_forward(&g->model, g->mb, &hooks, g->cs));
        insitra_sum_squares(&g->stats_dev[0], g->model.out, g->model.y, g->mb * g->ys, per_value, true,
                            g->model.reduce_partial, g->cs);
        LAUNCH_TRY();
        INSITRA_CHECK(insitra_dev_model_backward(&g->model, g->mb, (float)g->mb / (float)g->batch,
                                                 &hooks, g->cs));
    }
    INSITRA_CHECK(pass_end(g));
    /* At stage 0 every rank holds the same summed gradient: rank 0 counts it. */
    if (g->stage > 0 || g->rank == 0)
        insitra_sum_squares(&g->stats_dev[1], g->grad_state, nullptr, g->n_state, 1.0, false,
                            g->model.reduce_partial, g->cs);
    LAUNCH_TRY();
    if (g->dp > 1) NCCL_TRY(ncclAllReduce(g->stats_dev, g->stats_dev, 2, ncclDouble, ncclSum, g->nccl, g->cs));
    /* the update also refreshes the compute-type copy: the working weights
     * (stage 0) or this rank's slots to all-gather (stages 1-3) */
    void *copy = g->stage == 0 ? g->work : g->send;
    if (g->bf16)
        insitra_adamw<bf16>(g->master, (bf16 *)copy, g->grad_state, g->m, g->v, g->decay, g->n_state,
                            g->hp_dev, g->stats_dev, g->cs);
    else
        insitra_adamw<float>(g->master, (float *)copy, g->grad_state, g->m, g->v, g->decay, g->n_state,
                             g->hp_dev, g->stats_dev, g->cs);
    LAUNCH_TRY();
    INSITRA_CHECK(redistribute(g));
    CUDA_TRY(cudaMemcpyAsync(g->stats_host, g->stats_dev, 2 * sizeof(double), cudaMemcpyDeviceToHost, g->cs));
    return INSITRA_STATUS_OK;
}

insitra_status capture_step(insitra_gpu *g)
{
    cudaGraph_t graph = nullptr;
    CUDA_TRY(cudaStreamBeginCapture(g->cs, cudaStreamCaptureModeThreadLocal));
    insitra_status s = enqueue_step(g);
    const cudaError_t e = cudaStreamEndCapture(g->cs, &graph);
    if (s != INSITRA_STATUS_OK) {
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        return insitra_error_prefix(s, "capturing the training step as a CUDA graph (cuda.graphs = false avoids it): ");
    }
    if (e != cudaSuccess)
        return insitra_cuda_fail("cudaStreamEndCapture (cuda.graphs = false avoids graphs)",
                                 cudaGetErrorString(e), __FILE__, __LINE__);
    const cudaError_t ie = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (ie != cudaSuccess) {
        g->exec = nullptr;
        return insitra_cuda_fail("cudaGraphInstantiate", cudaGetErrorString(ie), __FILE__, __LINE__);
    }
    return INSITRA_STATUS_OK;
}

/* Host float -> compute type, for the working parameters. */
insitra_status upload_converted(insitra_gpu *g, void *dst, const float *src, int64_t n)
{
    if (!g->bf16) {
        CUDA_TRY(cudaMemcpy(dst, src, (size_t)n * 4, cudaMemcpyHostToDevice));
        return INSITRA_STATUS_OK;
    }
    bf16 *tmp = (bf16 *)malloc((size_t)n * sizeof(bf16));
    if (!tmp) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU upload: out of host memory");
    for (int64_t i = 0; i < n; i++) tmp[i] = __float2bfloat16(src[i]);
    const cudaError_t e = cudaMemcpy(dst, tmp, (size_t)n * sizeof(bf16), cudaMemcpyHostToDevice);
    free(tmp);
    CUDA_TRY(e);
    return INSITRA_STATUS_OK;
}

insitra_status pick_device(insitra_gpu *g, MPI_Comm comm)
{
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "config key 'device' is 'cuda' but no CUDA device is usable here (%s; "
                                 "CUDA_VISIBLE_DEVICES=%s); use device = cpu on this machine",
                                 e != cudaSuccess ? cudaGetErrorString(e) : "no devices",
                                 vis ? vis : "(unset)");
    }
    MPI_Comm node;
    int local = 0, local_size = 1;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "GPU: cannot find the node-local ranks");
    MPI_Comm_rank(node, &local);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    g->device = local % count;
    CUDA_TRY(cudaSetDevice(g->device));
    return INSITRA_STATUS_OK;
}

} // namespace

insitra_status insitra_gpu_create(insitra_gpu **out, insitra_trainer *t)
{
    *out = nullptr;
    insitra_gpu *g = (insitra_gpu *)calloc(1, sizeof *g);
    if (!g) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU: out of host memory");
    *out = g; /* freed by the caller with insitra_gpu_free on any failure below */
    const insitra_config *cfg = &t->cfg;
    g->cfg = cfg;
    g->stage = (int)cfg->parallel.zero_stage;
    g->dp = t->dp.size;
    g->rank = t->dp.rank;
    g->bf16 = cfg->precision == INSITRA_PRECISION_BF16;
    g->graphs = cfg->cuda.graphs;
    g->es = g->bf16 ? 2 : 4;
    g->ab = g->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    g->nccl_t = g->bf16 ? ncclBfloat16 : ncclFloat;
    g->layout = &t->model.layout;
    g->sl = &t->zero.sl;
    g->P = g->layout->total;
    g->S = g->sl->total;
    g->n_state = g->stage == 0 ? g->P : g->S;
    g->mb = insitra_config_micro_batch(cfg);
    g->batch = cfg->training.batch_size;
    g->xs = t->store.x_numel;
    g->ys = t->store.y_numel;
    g->capacity = t->store.capacity;
    g->units = g->layout->num_units;
    INSITRA_CHECK(pick_device(g, t->comm.comm));

    CUDA_TRY(cudaStreamCreateWithFlags(&g->cs, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&g->ns, cudaStreamNonBlocking));
    cudaEvent_t *evs[] = {&g->ev_fork, &g->ev_join, &g->ev_ready[0], &g->ev_ready[1], &g->ev_done[0],
                          &g->ev_done[1], &g->ev_gathered[0], &g->ev_gathered[1], &g->ev_free[0], &g->ev_free[1]};
    for (cudaEvent_t *e : evs) CUDA_TRY(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    INSITRA_CHECK(insitra_matmul_create(&g->mm));
    const insitra_model_dims dims = insitra_config_model_dims(cfg);
    INSITRA_CHECK(insitra_dev_model_create(&g->model, &dims, g->layout, g->mb, g->bf16, &g->mm));

    INSITRA_CHECK(device_alloc(&g->state_mem, carve_state(g, nullptr), "parameters, gradients and moments"));
    carve_state(g, (char *)g->state_mem);
    g->bytes_comm = carve_comm(g, nullptr);
    INSITRA_CHECK(device_alloc(&g->comm_mem, g->bytes_comm, "communication buffers"));
    carve_comm(g, (char *)g->comm_mem);
    g->bytes_store = carve_store(g, nullptr);
    INSITRA_CHECK(device_alloc(&g->store_mem, g->bytes_store, "the sample store (data.capacity)"));
    carve_store(g, (char *)g->store_mem);
    g->planned = insitra_gpu_bytes_for(cfg, g->layout, g->sl);
    if (g->planned.params != (int64_t)g->bytes_params || g->planned.grads != (int64_t)g->bytes_grads ||
        g->planned.moments != (int64_t)g->bytes_moments || g->planned.comm != (int64_t)g->bytes_comm ||
        g->planned.store != (int64_t)g->bytes_store)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "internal: the device buffers and lib/gpu_sizes.c disagree");
    CUDA_TRY(cudaMallocHost(&g->host_mem, 4096 + (size_t)g->batch * sizeof(int64_t)));
    g->hp_host = (insitra_adamw_device *)g->host_mem;
    g->stats_host = (double *)((char *)g->host_mem + 1024);
    g->nonfinite_host = (unsigned long long *)((char *)g->host_mem + 2048);
    g->slots_host = (int64_t *)((char *)g->host_mem + 4096);

    /* The shard copy tables (absolute and unit-relative), the decay mask, the unit sizes. */
    const insitra_param_layout *l = g->layout;
    const int64_t nt = l->num_tensors;
    insitra_shard_copy *abs_c = (insitra_shard_copy *)calloc((size_t)nt, sizeof *abs_c);
    insitra_shard_copy *unit_c = (insitra_shard_copy *)calloc((size_t)nt, sizeof *unit_c);
    uint8_t *mask = (uint8_t *)calloc((size_t)g->n_state, 1);
    g->unit_max_numel = (int64_t *)calloc((size_t)g->units, sizeof(int64_t));
    if (!abs_c || !unit_c || !mask || !g->unit_max_numel) {
        free(abs_c); free(unit_c); free(mask);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU: out of host memory");
    }
    for (int64_t u = 0; u < g->units; u++) {
        const insitra_param_unit *pu = &l->units[u];
        for (int64_t i = pu->first_tensor; i < pu->first_tensor + pu->num_tensors; i++) {
            const insitra_tensor_desc *d = &l->tensors[i];
            abs_c[i] = insitra_shard_copy{d->offset, d->numel, g->sl->len[i], g->sl->offset[i]};
            unit_c[i] = insitra_shard_copy{d->offset - pu->offset, d->numel, g->sl->len[i],
                                           g->sl->offset[i] - g->sl->unit_offset[u]};
            if (d->numel > g->unit_max_numel[u]) g->unit_max_numel[u] = d->numel;
            if (d->numel > g->max_numel) g->max_numel = d->numel;
            if (d->decay) {
                if (g->stage == 0) memset(mask + d->offset, 1, (size_t)d->numel);
                else memset(mask + g->sl->offset[i], 1, (size_t)g->sl->len[i]);
            }
        }
    }
    cudaError_t e = cudaMemcpy(g->copies_abs, abs_c, (size_t)nt * sizeof *abs_c, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(g->copies_unit, unit_c, (size_t)nt * sizeof *unit_c, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(g->decay, mask, (size_t)g->n_state, cudaMemcpyHostToDevice);
    free(abs_c);
    free(unit_c);
    free(mask);
    CUDA_TRY(e);
    return insitra_gpu_upload_state(g, t);
}

insitra_status insitra_gpu_connect(insitra_gpu *g, insitra_trainer *t)
{
    /* rank 0's id, or its failure, reaches every rank: none waits for an id that never comes */
    struct {
        ncclUniqueId id;
        int32_t result;
    } msg;
    memset(&msg, 0, sizeof msg);
    if (t->dp.rank == 0) msg.result = (int32_t)ncclGetUniqueId(&msg.id);
    if (MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, t->dp.comm) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "GPU: broadcasting the NCCL id failed");
    if (msg.result != (int32_t)ncclSuccess)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "GPU: ncclGetUniqueId failed on dp rank 0: %s",
                                 ncclGetErrorString((ncclResult_t)msg.result));
    const ncclUniqueId id = msg.id;
    CUDA_TRY(cudaSetDevice(g->device));
    NCCL_TRY(ncclCommInitRank(&g->nccl, t->dp.size, id, t->dp.rank));
    return INSITRA_STATUS_OK;
}

void insitra_gpu_free(insitra_gpu *g)
{
    if (!g) return;
    if (g->cs) cudaStreamSynchronize(g->cs);
    if (g->ns) cudaStreamSynchronize(g->ns);
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->nccl) ncclCommDestroy(g->nccl);
    cudaEvent_t evs[] = {g->ev_fork, g->ev_join, g->ev_ready[0], g->ev_ready[1], g->ev_done[0],
                         g->ev_done[1], g->ev_gathered[0], g->ev_gathered[1], g->ev_free[0], g->ev_free[1]};
    for (cudaEvent_t e : evs)
        if (e) cudaEventDestroy(e);
    insitra_dev_model_free(&g->model);
    insitra_matmul_free(&g->mm);
    if (g->state_mem) cudaFree(g->state_mem);
    if (g->comm_mem) cudaFree(g->comm_mem);
    if (g->store_mem) cudaFree(g->store_mem);
    if (g->host_mem) cudaFreeHost(g->host_mem);
    if (g->cs) cudaStreamDestroy(g->cs);
    if (g->ns) cudaStreamDestroy(g->ns);
    free(g->unit_max_numel);
    free(g);
}

insitra_status insitra_gpu_upload_state(insitra_gpu *g, insitra_trainer *t)
{
    CUDA_TRY(cudaSetDevice(g->device));
    CUDA_TRY(cudaDeviceSynchronize());
    const insitra_zero *z = &t->zero;
    const size_t state_bytes = (size_t)g->n_state * sizeof(float);
    if (g->stage == 0) {
        CUDA_TRY(cudaMemcpy(g->master, t->model.params, state_bytes, cudaMemcpyHostToDevice));
    } else if (g->stage <= 2) {
        float *slots = (float *)calloc((size_t)g->S, sizeof(float));
        if (!slots) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU upload: out of host memory");
        for (int64_t u = 0; u < g->units; u++)
            insitra_shard_extract_unit(g->sl, g->layout, u, t->model.params + g->layout->units[u].offset,
                                       slots + g->sl->unit_offset[u]);
        const cudaError_t e = cudaMemcpy(g->master, slots, state_bytes, cudaMemcpyHostToDevice);
        free(slots);
        CUDA_TRY(e);
    } else {
        CUDA_TRY(cudaMemcpy(g->master, z->param_shard, state_bytes, cudaMemcpyHostToDevice));
    }
    if (g->stage <= 2) INSITRA_CHECK(upload_converted(g, g->work, t->model.params, g->P));
    if (g->stage >= 1) {
        if (g->bf16) insitra_convert<bf16, float>((bf16 *)g->send, g->master, g->S, g->cs);
        else CUDA_TRY(cudaMemcpyAsync(g->send, g->master, (size_t)g->S * 4, cudaMemcpyDeviceToDevice, g->cs));
        LAUNCH_TRY();
    }
    CUDA_TRY(cudaMemcpy(g->m, z->m, state_bytes, cudaMemcpyHostToDevice));
    CUDA_TRY(cudaMemcpy(g->v, z->v, state_bytes, cudaMemcpyHostToDevice));
    /* the samples too: a checkpoint may have brought some */
    const insitra_sample_store *st = &t->store;
    CUDA_TRY(cudaMemcpy(g->store_x, st->x, (size_t)(st->capacity * st->x_numel) * 4, cudaMemcpyHostToDevice));
    CUDA_TRY(cudaMemcpy(g->store_y, st->y, (size_t)(st->capacity * st->y_numel) * 4, cudaMemcpyHostToDevice));
    CUDA_TRY(cudaStreamSynchronize(g->cs));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_gpu_download_state(insitra_gpu *g, insitra_trainer *t)
{
    CUDA_TRY(cudaSetDevice(g->device));
    CUDA_TRY(cudaDeviceSynchronize());
    insitra_zero *z = &t->zero;
    const size_t state_bytes = (size_t)g->n_state * sizeof(float);
    if (g->stage == 0) {
        CUDA_TRY(cudaMemcpy(t->model.params, g->master, state_bytes, cudaMemcpyDeviceToHost));
    } else if (g->stage <= 2) {
        float *slots = (float *)malloc(state_bytes);
        if (!slots) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "GPU download: out of host memory");
        const cudaError_t e = cudaMemcpy(slots, g->master, state_bytes, cudaMemcpyDeviceToHost);
        if (e == cudaSuccess)
            for (int64_t u = 0; u < g->units; u++)
                insitra_shard_insert_unit(g->sl, g->layout, u, slots + g->sl->unit_offset[u],
                                          t->model.params + g->layout->units[u].offset);
        free(slots);
        CUDA_TRY(e);
    } else {
        CUDA_TRY(cudaMemcpy(z->param_shard, g->master, state_bytes, cudaMemcpyDeviceToHost));
    }
    CUDA_TRY(cudaMemcpy(z->m, g->m, state_bytes, cudaMemcpyDeviceToHost));
    CUDA_TRY(cudaMemcpy(z->v, g->v, state_bytes, cudaMemcpyDeviceToHost));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_gpu_store_samples(insitra_gpu *g, int64_t first, int64_t n, const float *x,
                                         const float *y)
{
    CUDA_TRY(cudaSetDevice(g->device));
    for (int64_t done = 0; done < n;) {
        const int64_t slot = (first + done) % g->capacity;
        const int64_t run = n - done < g->capacity - slot ? n - done : g->capacity - slot;
        CUDA_TRY(cudaMemcpy(g->store_x + slot * g->xs, x + done * g->xs, (size_t)(run * g->xs) * 4, cudaMemcpyDefault));
        CUDA_TRY(cudaMemcpy(g->store_y + slot * g->ys, y + done * g->ys, (size_t)(run * g->ys) * 4, cudaMemcpyDefault));
        done += run;
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_gpu_first_nonfinite(insitra_gpu *g, const float *a, int64_t n, int64_t *index)
{
    CUDA_TRY(cudaSetDevice(g->device));
    *g->nonfinite_host = (unsigned long long)n;
    CUDA_TRY(cudaMemcpyAsync(g->nonfinite_dev, g->nonfinite_host, sizeof *g->nonfinite_host, cudaMemcpyHostToDevice, g->cs));
    insitra_find_nonfinite(a, n, g->nonfinite_dev, g->cs);
    LAUNCH_TRY();
    CUDA_TRY(cudaMemcpyAsync(g->nonfinite_host, g->nonfinite_dev, sizeof *g->nonfinite_host, cudaMemcpyDeviceToHost, g->cs));
    CUDA_TRY(cudaStreamSynchronize(g->cs));
    *index = *g->nonfinite_host < (unsigned long long)n ? (int64_t)*g->nonfinite_host : -1;
    return INSITRA_STATUS_OK;
}

bool insitra_gpu_is_device_pointer(const void *ptr)
{
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

insitra_status insitra_gpu_train_step(insitra_gpu *g, const int64_t *slots, int64_t t, double lr,
                                      double *loss, double *grad_norm)
{
    CUDA_TRY(cudaSetDevice(g->device));
    const insitra_adamw_hparams *hp = &g->cfg->optimizer;
    insitra_adamw_device *d = g->hp_host;
    d->beta1 = (float)hp->beta1;
    d->beta2 = (float)hp->beta2;
    d->eps = (float)hp->eps;
    d->step_size = (float)(lr / (1.0 - pow(hp->beta1, (double)t)));
    d->inv_sqrt_bc2 = (float)(1.0 / sqrt(1.0 - pow(hp->beta2, (double)t)));
    d->keep_decay = (float)(1.0 - lr * hp->weight_decay);
    d->max_norm = g->cfg->training.grad_clip;
    d->dp = (double)g->dp;
    memcpy(g->slots_host, slots, (size_t)g->batch * sizeof(int64_t));
    /* Inputs of the step go in before it (the graph reads them where they land). */
    CUDA_TRY(cudaMemcpyAsync(g->slots_dev, g->slots_host, (size_t)g->batch * sizeof(int64_t),
                             cudaMemcpyHostToDevice, g->cs));
    CUDA_TRY(cudaMemcpyAsync(g->hp_dev, g->hp_host, sizeof *g->hp_host, cudaMemcpyHostToDevice, g->cs));
    if (g->graphs) {
        if (!g->exec) INSITRA_CHECK(capture_step(g));
        CUDA_TRY(cudaGraphLaunch(g->exec, g->cs));
    } else {
        INSITRA_CHECK(enqueue_step(g));
    }
    CUDA_TRY(cudaStreamSynchronize(g->cs));
    *loss = g->stats_host[0] / (double)g->dp;
    *grad_norm = sqrt(g->stats_host[1]) / (double)g->dp;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_gpu_forward(insitra_gpu *g, int64_t n, int64_t chunks, const float *x,
                                   const float *y, float *y_out, double *sse)
{
    CUDA_TRY(cudaSetDevice(g->device));
    const insitra_dev_unit_hooks hooks = {g, hook_begin, hook_end};
    CUDA_TRY(cudaMemsetAsync(&g->stats_dev[2], 0, sizeof(double), g->cs));
    INSITRA_CHECK(pass_begin(g, true, chunks));
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t first = c * g->mb;
        const int64_t b = first >= n ? 0 : n - first < g->mb ? n - first : g->mb;
        if (b > 0) {
            CUDA_TRY(cudaMemcpyAsync(g->model.x_stage, x + first * g->xs, (size_t)(b * g->xs) * 4,
                                     cudaMemcpyDefault, g->cs));
            if (g->bf16) insitra_convert<bf16, float>((bf16 *)g->model.x, g->model.x_stage, b * g->xs, g->cs);
            else CUDA_TRY(cudaMemcpyAsync(g->model.x, g->model.x_stage, (size_t)(b * g->xs) * 4,
                                          cudaMemcpyDeviceToDevice, g->cs));
            LAUNCH_TRY();
        }
        INSITRA_CHECK(insitra_dev_model_forward(&g->model, b, &hooks, g->cs));
        if (b > 0 && y) {
            CUDA_TRY(cudaMemcpyAsync(g->model.y, y + first * g->ys, (size_t)(b * g->ys) * 4,
                                     cudaMemcpyDefault, g->cs));
            insitra_sum_squares(&g->stats_dev[2], g->model.out, g->model.y, b * g->ys, 1.0, true,
                                g->model.reduce_partial, g->cs);
            LAUNCH_TRY();
        }
        if (b > 0 && y_out)
            CUDA_TRY(cudaMemcpyAsync(y_out + first * g->ys, g->model.out, (size_t)(b * g->ys) * 4,
                                     cudaMemcpyDefault, g->cs));
    }
    INSITRA_CHECK(pass_end(g));
    CUDA_TRY(cudaMemcpyAsync(&g->stats_host[2], &g->stats_dev[2], sizeof(double), cudaMemcpyDeviceToHost, g->cs));
    CUDA_TRY(cudaStreamSynchronize(g->cs));
    *sse = g->stats_host[2];
    return INSITRA_STATUS_OK;
}

insitra_status insitra_gpu_memory(const insitra_gpu *g, insitra_memory_usage *u)
{
    *u = insitra_memory_usage{};
    u->parameter_bytes = g->planned.params;
    u->gradient_bytes = g->planned.grads;
    u->optimizer_bytes = g->planned.moments;
    u->activation_bytes = g->planned.activations;
    u->communication_bytes = g->planned.comm;
    u->sample_store_bytes = g->planned.store;
    u->total_bytes = u->parameter_bytes + u->gradient_bytes + u->optimizer_bytes + u->activation_bytes +
                     u->communication_bytes + u->sample_store_bytes;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_gpu_fetch_samples(insitra_gpu *g, int64_t first, int64_t n, float *store_x,
                                         float *store_y)
{
    CUDA_TRY(cudaSetDevice(g->device));
    for (int64_t done = 0; done < n;) {
        const int64_t slot = (first + done) % g->capacity;
        const int64_t run = n - done < g->capacity - slot ? n - done : g->capacity - slot;
        CUDA_TRY(cudaMemcpy(store_x + slot * g->xs, g->store_x + slot * g->xs, (size_t)(run * g->xs) * 4,
                            cudaMemcpyDeviceToHost));
        CUDA_TRY(cudaMemcpy(store_y + slot * g->ys, g->store_y + slot * g->ys, (size_t)(run * g->ys) * 4,
                            cudaMemcpyDeviceToHost));
        done += run;
    }
    return INSITRA_STATUS_OK;
}

namespace {

int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The communication a step issues, alone: every unit's gradient reduction
 * in backward order, then the parameter gathers. */
insitra_status enqueue_step_comm(insitra_gpu *g)
{
    const insitra_param_layout *l = g->layout;
    g->bucket_end = g->P;
    for (int64_t u = g->units - 1; u >= 0; u--) {
        if (g->stage == 0)
            INSITRA_CHECK(stage0_unit_done(g, u, g->ns));
        else
            INSITRA_CHECK(reduce_unit(g, u, g->stage == 1 ? g->grads + l->units[u].offset : g->unit_grads[0],
                                      g->ns));
    }
    if (g->stage == 1 || g->stage == 2) {
        INSITRA_CHECK(gather_all_params(g, g->ns));
    } else if (g->stage == 3) {
        /* forward's gathers, one per unit (backward gathers them again) */
        g->forward_only = true;
        g->free_used[0] = g->free_used[1] = false;
        for (int64_t pos = 0; pos < g->units; pos++) INSITRA_CHECK(issue_gather(g, pos));
    }
    return INSITRA_STATUS_OK;
}

/* The same bytes as whole-buffer NCCL calls; buf holds dp * S floats and
 * dp * S compute-type elements (allocated by the caller, for this only). */
insitra_status enqueue_raw_comm(insitra_gpu *g, char *buf)
{
    if (g->stage == 0) {
        NCCL_TRY(ncclAllReduce(g->grads, g->grads, (size_t)g->P, ncclFloat, ncclSum, g->nccl, g->ns));
        return INSITRA_STATUS_OK;
    }
    float *src = (float *)buf;
    void *gathered = buf + (size_t)(g->dp * g->S) * sizeof(float);
    NCCL_TRY(ncclReduceScatter(src, g->grad_state, (size_t)g->S, ncclFloat, ncclSum, g->nccl, g->ns));
    NCCL_TRY(ncclAllGather(g->send, gathered, (size_t)g->S, g->nccl_t, g->nccl, g->ns));
    return INSITRA_STATUS_OK;
}

} // namespace

insitra_status insitra_gpu_time_collectives(insitra_gpu *g, int reps, double *seconds,
                                            double *raw_seconds, int64_t *bytes)
{
    CUDA_TRY(cudaSetDevice(g->device));
    char *buf = nullptr;
    if (g->stage >= 1)
        INSITRA_CHECK(device_alloc((void **)&buf, (size_t)(g->dp * g->S) * (4 + g->es), "the raw comparison"));
    cudaEvent_t t0, t1;
    CUDA_TRY(cudaEventCreate(&t0));
    CUDA_TRY(cudaEventCreate(&t1));
    double *times = (double *)calloc((size_t)(2 * reps), sizeof(double));
    if (!times) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "time_collectives: out of memory");
    insitra_status s = INSITRA_STATUS_OK;
    for (int r = 0; r < reps + 2 && s == INSITRA_STATUS_OK; r++) { /* two warm-up rounds */
        for (int raw = 0; raw < 2 && s == INSITRA_STATUS_OK; raw++) {
            CUDA_TRY(cudaEventRecord(t0, g->ns));
            s = raw ? enqueue_raw_comm(g, buf) : enqueue_step_comm(g);
            CUDA_TRY(cudaEventRecord(t1, g->ns));
            CUDA_TRY(cudaEventSynchronize(t1));
            float ms = 0;
            CUDA_TRY(cudaEventElapsedTime(&ms, t0, t1));
            if (r >= 2) times[raw * reps + (r - 2)] = ms * 1e-3;
        }
    }
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    if (buf) cudaFree(buf);
    if (s == INSITRA_STATUS_OK) {
        qsort(times, (size_t)reps, sizeof(double), cmp_double);
        qsort(times + reps, (size_t)reps, sizeof(double), cmp_double);
        *seconds = times[reps / 2];
        *raw_seconds = times[reps + reps / 2];
        *bytes = g->stage == 0 ? g->P * 4 : g->S * g->dp * (4 + (int64_t)g->es);
    }
    free(times);
    return s;
}
