#include "gpu_sizes.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checked.h"

/* Every count here saturates at INSITRA_SIZE_OVERFLOW (lib/checked.h): the
 * config's ranges allow sizes beyond 64 bits, and the planner and the config
 * check report a saturated figure instead of a wrapped one. */
static int64_t mul(int64_t a, int64_t b) { return insitra_size_mul(a, b); }

int64_t insitra_gpu_col_splits(int64_t rows)
{
    const int64_t s = rows / 256 + (rows % 256 != 0);
    return s < 32 ? (s > 0 ? s : 1) : 32;
}

/* Appends a buffer of n bytes at the next aligned offset; returns its offset. */
static int64_t take(int64_t *used, int64_t n)
{
    const int64_t at = insitra_size_align(*used, INSITRA_GPU_ALIGN);
    *used = insitra_size_add(at, n);
    return at;
}

insitra_gpu_sdpa insitra_gpu_sdpa_choice(const insitra_model_dims *d, int64_t B, size_t act_size)
{
#ifdef INSITRA_HAVE_CUDNN
    if (!insitra_gpu_attention_fused(act_size) || d->cp > 1) return INSITRA_GPU_SDPA_NONE;
    const char *want = getenv("INSITRA_GPU_ATTENTION");
    if (want && !strcmp(want, "fused")) return INSITRA_GPU_SDPA_NONE;
    if (want && !strcmp(want, "cudnn")) return INSITRA_GPU_SDPA_DETERMINISTIC;
    if (want && !strcmp(want, "cudnn-fast")) return INSITRA_GPU_SDPA_FAST;
    if (want && *want && strcmp(want, "auto")) return INSITRA_GPU_SDPA_NONE;
    /* this rank's heads (tp) over the whole sample (cp = 1 here) */
    const int64_t hd = d->n_heads > 0 ? d->d_model / d->n_heads : 0;
    const int64_t dp = insitra_gpu_sdpa_bytes(B, insitra_model_dims_heads(d), d->seq_len, hd,
                                              INSITRA_GPU_SDPA_DETERMINISTIC);
    return dp <= INSITRA_GPU_SDPA_AUTO_BYTES ? INSITRA_GPU_SDPA_DETERMINISTIC : INSITRA_GPU_SDPA_NONE;
#else
    (void)d, (void)B, (void)act_size;
    return INSITRA_GPU_SDPA_NONE;
#endif
}

int64_t insitra_gpu_sdpa_bytes(int64_t B, int64_t H, int64_t T, int64_t hd, insitra_gpu_sdpa mode)
{
    if (mode == INSITRA_GPU_SDPA_NONE) return 0;
    const int64_t rows = mul(mul(B, H), T), T128 = insitra_size_align(T, 128);
    int64_t u = 0;
    take(&u, mul(rows, (int64_t)sizeof(float)));
    if (mode == INSITRA_GPU_SDPA_DETERMINISTIC) take(&u, mul(mul(mul(B, H), mul(T128, T128)), 2));
    else take(&u, mul(mul(rows, hd), (int64_t)sizeof(float)));
    take(&u, INSITRA_GPU_SDPA_PLAN_MARGIN);
    return insitra_size_align(u, INSITRA_GPU_ALIGN);
}

insitra_gpu_workspace insitra_gpu_workspace_for(const insitra_model_dims *d, int64_t B, size_t act_size)
{
    /* the tokens a rank's attention sees (T / cp) and its heads (H / tp); with cp > 1 the
     * attention is the ring's (lib/attention_ring.h), which keeps its blocks in the
     * activations and takes none of the attention's buffers. Widths stay the whole
     * model's: an upper bound of a tp rank's. */
    const int64_t T = insitra_model_dims_attn_tokens(d), C = d->d_model, H = insitra_model_dims_heads(d);
    const int64_t N = mul(B, T);
    const int64_t es = (int64_t)act_size, NCe = mul(mul(N, C), es);
    const int64_t widest = 4 * C > d->out_features ? 4 * C : d->out_features;
    const int64_t col_a = mul(insitra_gpu_col_splits(N), 2 * widest);
    const int64_t col_b = mul(mul(insitra_gpu_col_splits(B), 2 * T), C);
    insitra_gpu_workspace w;
    int64_t u = 0;
    const bool ring = d->cp > 1, fused = !ring && insitra_gpu_attention_fused(act_size);
    const bool materialised = !ring && !fused;
    w.qkvr = take(&u, materialised ? mul(3, NCe) : 0);
    w.yr = take(&u, materialised ? NCe : 0);
    w.dyr = take(&u, materialised ? NCe : 0);
    w.dqkvr = take(&u, materialised ? mul(3, NCe) : 0);
    w.datt = take(&u, materialised ? mul(mul(mul(B, H), mul(T, T)), es) : 0);
    w.delta = take(&u, fused ? mul(mul(B, H), mul(T, (int64_t)sizeof(float))) : 0);
    w.col_partial = take(&u, mul(col_a > col_b ? col_a : col_b, (int64_t)sizeof(float)));
    w.reduce_partial = take(&u, INSITRA_GPU_REDUCE_BLOCKS * (int64_t)sizeof(double));
    w.segment_partial =
        take(&u, insitra_param_layout_count(d->n_layers) * INSITRA_GPU_SEGMENT_BLOCKS * (int64_t)sizeof(double));
    w.gemm = take(&u, INSITRA_GPU_GEMM_WORKSPACE);
    w.sdpa_bytes = insitra_gpu_sdpa_bytes(B, H, T, d->n_heads > 0 ? C / d->n_heads : 0,
                                          insitra_gpu_sdpa_choice(d, B, act_size));
    w.sdpa = take(&u, w.sdpa_bytes);
    w.total = u;
    return w;
}

/* Per block: the log-sum-exp of every row (B,H,T) fp32 (fused), or the
 * softmax probabilities (B,H,T,T) (materialised). */
static int64_t cuda_attention_state_bytes(const insitra_model_dims *d, int64_t B, size_t act_size)
{
    /* this rank's heads (tp) over the tokens its attention sees (cp) */
    const int64_t Ta = insitra_model_dims_attn_tokens(d), rows = mul(mul(B, insitra_model_dims_heads(d)), Ta);
    /* the ring (cp > 1) keeps the log-sum-exp too, of the rank's tokens */
    if (insitra_gpu_attention_fused(act_size) || d->cp > 1) return mul(rows, (int64_t)sizeof(float));
    return mul(mul(rows, Ta), (int64_t)act_size);
}

static int64_t cuda_workspace_bytes(const insitra_model_dims *d, int64_t B, size_t act_size)
{
    return insitra_gpu_workspace_for(d, B, act_size).total;
}

const insitra_backend_desc insitra_backend_cuda_desc = {
    .device = INSITRA_DEVICE_CUDA,
    .attention_state_bytes = cuda_attention_state_bytes,
    .workspace_bytes = cuda_workspace_bytes,
    .align = INSITRA_GPU_ALIGN,
};
