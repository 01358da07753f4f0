/*
 * A backend: where the tensors live and how the layer kernels and the
 * collectives run. Each backend is one table of operations
 * (lib/cpu/backend_cpu.c, lib/cuda/backend_cuda.cu), in the manner of
 * ggml-backend: the model pass (lib/model_step.c), the ZeRO schedule
 * (lib/zero.c) and the engine (lib/engine.c) call through it and never ask
 * which backend they run on.
 *
 * Operations run in order on the backend's compute queue (the CPU runs each
 * at once; CUDA queues it on a stream). Memory belongs to the backend (host
 * memory on the CPU, device memory on CUDA) and is allocated at create time
 * only. Element types:
 *   act  the compute type (fp32, or bf16 with precision = bf16):
 *        activations and working parameters;
 *   f32  layer-norm statistics, parameter gradients, master weights, AdamW
 *        moments, model outputs and targets;
 *   f64  scalar accumulators (loss, gradient norm).
 * Collectives run beside the compute queue: started with a handle, then
 * either waited on (later compute sees the result) or chained (the next
 * collective starts after it), so communication overlaps compute.
 *
 * Adding an operation: a member here with its shapes in the comment, an
 * implementation in each backend, a row in tests/test_backend_ops.c.
 */
#ifndef INSITRA_BACKEND_H
#define INSITRA_BACKEND_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "config.h"
#include "insitra.h"
#include "model.h"
#include "normalize.h"

typedef enum { INSITRA_DTYPE_F32, INSITRA_DTYPE_BF16 } insitra_dtype;

static inline size_t insitra_dtype_size(insitra_dtype t) { return t == INSITRA_DTYPE_BF16 ? 2 : 4; }

/* A started collective. */
typedef struct insitra_coll {
    MPI_Request req; /* CPU */
    int32_t event;   /* CUDA: index of its completion event, -1 if none */
    bool active;
    bool pair;              /* CPU: a ring_shift, whose receive is recv_req */
    MPI_Request recv_req;
} insitra_coll;

/* A communicator as the backend runs collectives on it (MPI, or NCCL). */
typedef struct insitra_group insitra_group;

/* Where tensor i of a unit (or of the whole layout) sits in a flat buffer
 * and in a rank's shard slots (lib/shard.h): the shard pack/unpack tables. */
typedef struct insitra_shard_copy {
    int64_t flat;  /* first element of the tensor in the flat buffer */
    int64_t numel;
    int64_t len;   /* slot length: ceil(numel / dp) */
    int64_t slot;  /* first element of its slot among a rank's slots */
} insitra_shard_copy;

/* One contiguous run that AdamW updates: element offsets of the run in the
 * parameter, gradient, moment (m, v) and compute-copy buffers. */
typedef struct insitra_update_segment {
    int64_t param, grad, state, copy, count;
    int64_t decay; /* 1: weight decay applies */
} insitra_update_segment;


/* What a backend allocates besides the engine's buffers, as pure functions
 * of the configuration so the planner can answer for any backend in any
 * build (lib/backend.c). */
typedef struct insitra_backend_desc {
    int device;            /* INSITRA_DEVICE_* */
    /* bytes the attention keeps per block for backward, for B samples */
    int64_t (*attention_state_bytes)(const insitra_model_dims *d, int64_t B, size_t act_size);
    /* bytes of the backend's own workspace (kernel scratch, GEMM workspace): what reserve takes */
    int64_t (*workspace_bytes)(const insitra_model_dims *d, int64_t B, size_t act_size);
    size_t align;          /* every buffer starts at a multiple of this */
} insitra_backend_desc;

typedef struct insitra_backend insitra_backend;

typedef struct insitra_backend_i {
    const char *name;
    void (*free)(insitra_backend *be);

    /* ---- memory: create time only; zero-filled ---- */
    insitra_status (*alloc)(insitra_backend *be, size_t bytes, const char *what, void **ptr);
    void (*release)(insitra_backend *be, void *ptr);
    /* host -> backend, queued after earlier work; src may be reused on return */
    insitra_status (*upload)(insitra_backend *be, void *dst, const void *src, size_t bytes);
    /* backend -> host: waits for all queued work first */
    insitra_status (*download)(insitra_backend *be, void *dst, const void *src, size_t bytes);
    /* within the backend, or from any pointer it can read (e.g. the caller's device arrays) */
    insitra_status (*copy)(insitra_backend *be, void *dst, const void *src, size_t bytes);
    insitra_status (*fill_zero)(insitra_backend *be, void *dst, size_t bytes);
    insitra_status (*synchronize)(insitra_backend *be);
    /* sizes the kernels' own workspace for models of dims and micro-batches of B (create time) */
    insitra_status (*reserve)(insitra_backend *be, const insitra_model_dims *d, int64_t B);
    /* whether ptr is memory of this backend's device (for the caller's device arrays) */
    bool (*is_device_pointer)(insitra_backend *be, const void *ptr);
    /* index of the first non-finite a[i] (backend or device memory), or -1 */
    insitra_status (*first_nonfinite)(insitra_backend *be, const float *a, int64_t n, int64_t *index);

    /* ---- data ---- */
    /* x (n, xs) f32, y (n, ys) f32 from the store rows slots[0..n) (slots in backend memory) */
    insitra_status (*gather_batch)(insitra_backend *be, float *x, float *y, const float *store_x,
                                   const float *store_y, const int64_t *slots, int64_t n, int64_t xs,
                                   int64_t ys);
    /* Into the model's units (lib/normalize.h), N tokens, fm's arrays in backend memory:
     * x_hat (N, f_in) act from x (N, f_in) f32; y (N, f_out) f32 in place, when not NULL:
     * the target, ((y - x[residual]) - y_mean) y_inv_std */
    insitra_status (*normalize_forward)(insitra_backend *be, void *x_hat, float *y, const float *x,
                                        const insitra_feature_norm *fm, int64_t N);
    /* Back to physical units: out (N, f_out) f32 in place = out y_std + y_mean + x[residual],
     * x (N, f_in) f32 the same tokens' input */
    insitra_status (*normalize_inverse)(insitra_backend *be, float *out, const float *x,
                                        const insitra_feature_norm *fm, int64_t N);
    /* out (n) act = in (n) f32 */
    insitra_status (*to_act)(insitra_backend *be, void *out, const float *in, int64_t n);

    /* ---- layers (N rows of tokens; "+=" accumulates) ---- */
    /* out (N,OC) = residual (N,OC) + inp (N,IC) w^T + b; w (OC,IC), b (OC); residual, b may be
     * NULL. With gelu_pre: out = gelu(inp w^T + b) and gelu_pre (N,OC) the argument. */
    insitra_status (*linear_forward)(insitra_backend *be, void *out, void *gelu_pre, const void *inp,
                                     const void *w, const void *b, const void *residual, int64_t N,
                                     int64_t IC, int64_t OC);
    /* dinp (N,IC) = dout w (dinp may be NULL), times gelu'(gelu_pre (N,IC)) when given;
     * dw (OC,IC) += dout^T inp (f32); db (OC) += column sums of dout (f32, may be NULL) */
    insitra_status (*linear_backward)(insitra_backend *be, void *dinp, float *dw, float *db,
                                      const void *dout, const void *gelu_pre, const void *inp,
                                      const void *w, int64_t N, int64_t IC, int64_t OC);
    /* out (N,F) f32 = inp (N,C) w^T + b: the model's output head */
    insitra_status (*output_forward)(insitra_backend *be, float *out, const void *inp, const void *w,
                                     const void *b, int64_t N, int64_t C, int64_t F);
    /* out (B,T,C) += pos (T,C) */
    insitra_status (*pos_forward)(insitra_backend *be, void *out, const void *pos, int64_t B,
                                  int64_t T, int64_t C);
    /* dpos (T,C) f32 += sum over b of dout (B,T,C) */
    insitra_status (*pos_backward)(insitra_backend *be, float *dpos, const void *dout, int64_t B,
                                   int64_t T, int64_t C);
    /* out (N,C) = (inp - mean) rstd w + b; mean, rstd (N) f32 saved; eps 1e-5 */
    insitra_status (*layernorm_forward)(insitra_backend *be, void *out, float *mean, float *rstd,
                                        const void *inp, const void *w, const void *b, int64_t N,
                                        int64_t C);
    /* dinp (N,C) = (or += with accumulate) d LN/d inp; dw, db (C) f32 += */
    insitra_status (*layernorm_backward)(insitra_backend *be, void *dinp, float *dw, float *db,
                                         const void *dout, const void *inp, const float *mean,
                                         const float *rstd, const void *w, int64_t N, int64_t C,
                                         bool accumulate);
    /* Multi-head self-attention of a fused qkv (B,T,3C) = [q | k | v] per token into out
     * (B,T,C); state holds what backward needs (attention_state_bytes of the desc). */
    insitra_status (*attention_forward)(insitra_backend *be, void *out, void *state, const void *qkv,
                                        int64_t B, int64_t T, int64_t C, int64_t H, bool causal);
    /* dqkv (B,T,3C) from dout (B,T,C) */
    insitra_status (*attention_backward)(insitra_backend *be, void *dqkv, const void *dout,
                                         const void *qkv, const void *out, const void *state,
                                         int64_t B, int64_t T, int64_t C, int64_t H, bool causal);
    /* dout (n) act = scale * 2 (out - y) / n */
    insitra_status (*mse_backward)(insitra_backend *be, void *dout, const float *out, const float *y,
                                   int64_t n, float scale);
    /* *acc (f64, backend memory) += scale * sum (a - b)^2 over n; b may be NULL */
    insitra_status (*sum_squares)(insitra_backend *be, double *acc, const float *a, const float *b,
                                  int64_t n, double scale);

    /* ---- optimizer and shards (tables in backend memory) ---- */
    /* AdamW over every segment: params (f32) and, when copy is not NULL, the same values in the
     * compute type into copy; grads scaled by the clip factor from stats and sc. */
    insitra_status (*adamw)(insitra_backend *be, const insitra_update_segment *segs, int64_t n_segs,
                            int64_t max_count, float *params, void *copy, const float *grads,
                            float *m, float *v, const insitra_step_scalars *sc, const double *stats);
    /* *acc += sum of squares of grads over the segments' grad runs, segment by segment */
    insitra_status (*grad_sum_squares)(insitra_backend *be, double *acc, const float *grads,
                                       const insitra_update_segment *segs, int64_t n_segs,
                                       int64_t max_count);
    /* flat -> packed (ranks, stride): the slots of ranks first_rank .. first_rank + ranks - 1,
     * rank-major, padding zeroed (pack), and back (unpack). With ranks = dp: the send buffer of
     * a reduce-scatter / what an all-gather received; with ranks = 1 and this rank: its own
     * slots. copies: n tensors, flat and slot offsets relative to the buffers given. */
    insitra_status (*shard_pack)(insitra_backend *be, void *packed, const void *flat,
                                 const insitra_shard_copy *copies, int64_t n, int64_t stride,
                                 int64_t first_rank, int64_t ranks, int64_t max_numel, insitra_dtype t);
    insitra_status (*shard_unpack)(insitra_backend *be, void *flat, const void *packed,
                                   const insitra_shard_copy *copies, int64_t n, int64_t stride,
                                   int64_t first_rank, int64_t ranks, int64_t max_numel,
                                   insitra_dtype t);
    /* dst (n) f32 += src (n) */
    insitra_status (*add)(insitra_backend *be, float *dst, const float *src, int64_t n);

    /* ---- collectives ---- */
    /* collective over c */
    insitra_status (*group_create)(insitra_backend *be, const insitra_comm *c, insitra_group **g);
    void (*group_free)(insitra_backend *be, insitra_group *g);
    /* recv (n) = sum over ranks of their send[rank * n ..] (of t) */
    insitra_status (*reduce_scatter)(insitra_backend *be, insitra_group *g, const void *send,
                                     void *recv, int64_t n, insitra_dtype t, insitra_coll *h);
    /* recv (ranks, n) = every rank's send (n) */
    insitra_status (*all_gather)(insitra_backend *be, insitra_group *g, const void *send, void *recv,
                                 int64_t n, insitra_dtype t, insitra_coll *h);
    /* later compute sees h's result */
    insitra_status (*wait)(insitra_backend *be, insitra_coll *h);
    /* the next collective starts after h (the host need not block) */
    insitra_status (*chain)(insitra_backend *be, insitra_coll *h);
    /* lets the n outstanding collectives h advance (MPI progresses only inside MPI calls) */
    void (*progress)(insitra_backend *be, insitra_coll *h, int n);
    /* v (n <= 4 f64, backend memory) summed over the ranks in rank order, in the
     * queue: every rank gets the same bits */
    insitra_status (*sum_ordered)(insitra_backend *be, insitra_group *g, double *v, int n);

    /* ---- capture: replaying a recorded step (CUDA graphs); NULL where not supported ---- */
    insitra_status (*capture_begin)(insitra_backend *be);
    insitra_status (*capture_end)(insitra_backend *be);
    /* runs the recorded step; *replayed = false when nothing is recorded */
    insitra_status (*replay)(insitra_backend *be, bool *replayed);

    /* ---- context parallelism (lib/attention_ring.c, docs/parallel.md); NULL where not built ----
     * A rank holds Tq tokens of each sample at global positions q_pos.. (qkv (B,Tq,3C) act)
     * and meets the sample's keys and values one block at a time, kv (B,Tk,2C) act = [k | v]
     * of Tk tokens at positions k_pos.. (causal masks by position). */
    /* kv (N,2C) = the k and v columns of qkv (N,3C) */
    insitra_status (*attention_kv_pack)(insitra_backend *be, void *kv, const void *qkv, int64_t N,
                                        int64_t C);
    /* out (B,Tq,C) act += the block's part, unnormalised; m, l (B,H,Tq) f32 the running row
     * maximum and sum; first: out, m, l start from 0, -inf, 0 */
    insitra_status (*attention_block_forward)(insitra_backend *be, void *out, float *m, float *l,
                                              const void *qkv, const void *kv, int64_t B, int64_t Tq,
                                              int64_t Tk, int64_t C, int64_t H, int64_t q_pos,
                                              int64_t k_pos, bool causal, bool first);
    /* out /= l and lse (B,H,Tq) f32 = m + log l once every block is in; lse may be m */
    insitra_status (*attention_block_finish)(insitra_backend *be, void *out, float *lse, const float *m,
                                             const float *l, int64_t B, int64_t Tq, int64_t C, int64_t H);
    /* the block's part of the gradients from the finished out, lse and dout (B,Tq,C):
     * the q columns of dqkv (B,Tq,3C) act += dS k, dkv (B,Tk,2C) f32 += [dS^T q | P^T dout]; dq and dk
     * without the 1/sqrt(C/H), which attention_block_done applies */
    insitra_status (*attention_block_backward)(insitra_backend *be, void *dqkv, float *dkv, const void *dout,
                                               const void *qkv, const void *kv, const void *out,
                                               const float *lse, int64_t B, int64_t Tq, int64_t Tk,
                                               int64_t C, int64_t H, int64_t q_pos, int64_t k_pos,
                                               bool causal);
    /* dqkv (N,3C): dq scaled, and its k and v columns = dkv (N,2C) f32 of the rank's own block, dk scaled */
    insitra_status (*attention_block_done)(insitra_backend *be, void *dqkv, float *dkv, int64_t N, int64_t C,
                                           int64_t H);
    /* send (n of t) to the next rank of g, recv (n) from the previous one; finished by wait */
    insitra_status (*ring_shift)(insitra_backend *be, insitra_group *g, const void *send, void *recv,
                                 int64_t n, insitra_dtype t, insitra_coll *h);
    /* ---- the caller's queue (a cudaStream_t); NULL where the backend has none ---- */
    /* before: later work of the compute queue waits for what stream holds now; else work
     * queued on stream later waits for what the compute queue holds now. No host wait. */
    insitra_status (*join_stream)(insitra_backend *be, void *stream, bool before);
    /* ---- tensor parallelism (lib/model_step.c, docs/parallel.md); NULL where not built ---- */
    /* out (N,C) act = inp (N,C) act + b (C) act + residual (N,C) act; out may be inp: a
     * row-parallel layer's bias and residual, added once its partial sums are reduced */
    insitra_status (*bias_residual_forward)(insitra_backend *be, void *out, const void *inp, const void *b,
                                            const void *residual, int64_t N, int64_t C);
    /* db (C) f32 += column sums of dout (N,C) act */
    insitra_status (*bias_backward)(insitra_backend *be, float *db, const void *dout, int64_t N, int64_t C);
    /* out (Q,P,n) = in (P,Q,n), elements of t: a collective's rank-major pieces to sample-major
     * rows and back */
    insitra_status (*block_transpose)(insitra_backend *be, void *out, const void *in, int64_t P, int64_t Q,
                                      int64_t n, insitra_dtype t);
} insitra_backend_i;

struct insitra_backend {
    const insitra_backend_i *i;
    const insitra_backend_desc *desc;
    insitra_dtype act;     /* the compute type */
    size_t act_size;       /* its bytes */
    bool host_memory;      /* buffers are host memory the library reads in place */
    double wait_seconds;   /* host time blocked on collectives, for the step's metrics */
    double ring_wait_seconds; /* the part of wait_seconds in the cp attention ring (attention_ring.c) */
    void *impl;
};

const insitra_backend_desc *insitra_backend_desc_for(int device);

/* Makes the backend for cfg.device (local: picks the GPU from the node-local
 * rank of comm). cfg outlives the backend. */
insitra_status insitra_backend_create(insitra_backend **be, const insitra_config *cfg, MPI_Comm comm);
void insitra_backend_free(insitra_backend *be);

/* The constructors (lib/cpu/backend_cpu.c, lib/cuda/backend_cuda.cu or lib/backend_no_cuda.c). */
insitra_status insitra_backend_cpu_create(insitra_backend **be);
insitra_status insitra_backend_cuda_create(insitra_backend **be, const insitra_config *cfg,
                                           MPI_Comm comm);
extern const insitra_backend_desc insitra_backend_cpu_desc, insitra_backend_cuda_desc;

#endif /* INSITRA_BACKEND_H */
