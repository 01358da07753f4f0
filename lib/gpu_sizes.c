#include "gpu_sizes.h"

int64_t insitra_gpu_col_splits(int64_t rows)
{
    const int64_t s = (rows + 255) / 256;
    return s < 32 ? (s > 0 ? s : 1) : 32;
}

/* Appends a buffer of n bytes at the next aligned offset. */
static void take(int64_t *used, int64_t n) { *used = insitra_gpu_align(*used) + n; }

int64_t insitra_gpu_activation_bytes(const insitra_model_dims *d, int64_t Bm, int64_t es)
{
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads, N = Bm * T, f = 4;
    int64_t u = 0;
    for (int64_t l = 0; l < d->n_layers; l++) {
        /* ln1, mean, rstd, qkv, attention lse, atty, res_att, ln2, mean, rstd, fch,
         * fch_gelu, res_out */
        const int64_t per_layer[] = {N * C * es, N * f, N * f, 3 * N * C * es, Bm * H * T * f,
                                     N * C * es, N * C * es, N * C * es, N * f, N * f,
                                     4 * N * C * es, 4 * N * C * es, N * C * es};
        for (size_t i = 0; i < sizeof per_layer / sizeof *per_layer; i++) take(&u, per_layer[i]);
    }
    const int64_t widest = 4 * C > d->out_features ? 4 * C : d->out_features;
    const int64_t col_a = insitra_gpu_col_splits(N) * 2 * widest;
    const int64_t col_b = insitra_gpu_col_splits(Bm) * 2 * T * C;
    /* encoded, lnf, mean, rstd, out, x, x_stage, y, then the shared scratch:
     * dres, dln, datty, dqkv, dfch, attention delta, dout, partials */
    const int64_t shared[] = {N * C * es, N * C * es, N * f, N * f, N * d->out_features * f,
                              N * d->in_features * es, N * d->in_features * f, N * d->out_features * f,
                              N * C * es, N * C * es, N * C * es, 3 * N * C * es, 4 * N * C * es,
                              Bm * H * T * f, N * d->out_features * es,
                              (col_a > col_b ? col_a : col_b) * f, INSITRA_GPU_REDUCE_BLOCKS * 8};
    for (size_t i = 0; i < sizeof shared / sizeof *shared; i++) take(&u, shared[i]);
    return u;
}

insitra_gpu_bytes insitra_gpu_bytes_for(const insitra_config *cfg, const insitra_param_layout *l,
                                        const insitra_shard_layout *sl)
{
    const int stage = (int)cfg->parallel.zero_stage;
    const int64_t es = cfg->precision == INSITRA_PRECISION_BF16 ? 2 : 4, f = 4;
    const int64_t P = l->total, S = sl->total, dp = sl->dp, U = sl->max_unit_len;
    const int64_t uni = l->max_unit_numel, n_state = stage == 0 ? P : S;
    insitra_gpu_bytes b = {0};

    /* one allocation: parameters, then gradients, then moments (lib/cuda/engine.cu) */
    int64_t u = 0;
    take(&u, n_state * f);
    if (stage <= 2) take(&u, P * es);
    if (stage >= 1) take(&u, S * es);
    if (stage == 3) take(&u, uni * es), take(&u, uni * es);
    b.params = u;
    if (stage <= 1) take(&u, P * f);
    if (stage >= 1) take(&u, S * f);
    if (stage >= 2) take(&u, uni * f), take(&u, uni * f);
    b.grads = u - b.params;
    const int64_t before = u;
    take(&u, n_state * f);
    take(&u, n_state * f);
    take(&u, n_state);
    b.moments = u - before;

    u = 0;
    if (stage == 1 || stage == 2) take(&u, dp * S * es);
    if (stage == 3) take(&u, dp * U * es), take(&u, dp * U * es);
    if (stage >= 1) take(&u, dp * U * f);
    if (stage >= 2) take(&u, U * f);
    take(&u, l->num_tensors * 4 * 8); /* two tables of shard copies, 4 int64 each */
    take(&u, l->num_tensors * 4 * 8);
    take(&u, 40);                     /* AdamW hyperparameters */
    take(&u, 4 * 8);                  /* loss, norm, sse */
    take(&u, 8);                      /* first non-finite index */
    b.comm = u;

    const int64_t xs = cfg->model.seq_len * cfg->model.in_features;
    const int64_t ys = cfg->model.seq_len * cfg->model.out_features;
    u = 0;
    take(&u, cfg->data.capacity * xs * f);
    take(&u, cfg->data.capacity * ys * f);
    take(&u, cfg->training.batch_size * 8);
    b.store = u;

    const insitra_model_dims dims = insitra_config_model_dims(cfg);
    b.activations = insitra_gpu_activation_bytes(&dims, insitra_config_micro_batch(cfg), es) +
                    INSITRA_GPU_GEMM_WORKSPACE;
    return b;
}
