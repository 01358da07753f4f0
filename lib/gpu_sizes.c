#include "gpu_sizes.h"

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

/* Appends a buffer of n bytes at the next aligned offset. */
static void take(int64_t *used, int64_t n)
{
    *used = *used > INSITRA_SIZE_OVERFLOW - INSITRA_GPU_ALIGN ? INSITRA_SIZE_OVERFLOW
                                                              : insitra_size_add(insitra_gpu_align(*used), n);
}

/* used - before, or saturated if used is. */
static int64_t since(int64_t used, int64_t before)
{
    return used == INSITRA_SIZE_OVERFLOW ? INSITRA_SIZE_OVERFLOW : used - before;
}

int64_t insitra_gpu_activation_bytes(const insitra_model_dims *d, int64_t Bm, int64_t es)
{
    const int64_t T = d->seq_len, C = d->d_model, H = d->n_heads, N = mul(Bm, T), f = 4;
    const int64_t NCe = mul(mul(N, C), es), Nf = mul(N, f);
    const int64_t att = mul(mul(mul(Bm, H), mul(T, T)), es);
    int64_t u = 0;
    for (int64_t l = 0; l < d->n_layers; l++) {
        /* ln1, mean, rstd, qkvr, att, atty, res_att, ln2, mean, rstd, fch, fch_gelu, res_out */
        const int64_t per_layer[] = {NCe, Nf, Nf, mul(3, NCe), att, NCe, NCe, NCe, Nf, Nf,
                                     mul(4, NCe), mul(4, NCe), NCe};
        for (size_t i = 0; i < sizeof per_layer / sizeof *per_layer; i++) take(&u, per_layer[i]);
    }
    const int64_t widest = 4 * C > d->out_features ? 4 * C : d->out_features;
    const int64_t col_a = mul(insitra_gpu_col_splits(N), 2 * widest);
    const int64_t col_b = mul(mul(insitra_gpu_col_splits(Bm), 2 * T), C);
    const int64_t out_f = mul(mul(N, d->out_features), f), in_f = mul(mul(N, d->in_features), f);
    /* encoded, lnf, mean, rstd, out, x, x_stage, y, then the shared scratch:
     * qkv, yr, dres, dln, datty, dyr, dqkvr, dqkv, dfch, datt, dout, partials */
    const int64_t shared[] = {NCe, NCe, Nf, Nf, out_f,
                              mul(mul(N, d->in_features), es), in_f, out_f,
                              mul(3, NCe), NCe, NCe, NCe, NCe,
                              NCe, mul(3, NCe), mul(3, NCe), mul(4, NCe),
                              att, mul(mul(N, d->out_features), es),
                              mul(col_a > col_b ? col_a : col_b, f), INSITRA_GPU_REDUCE_BLOCKS * 8};
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
    take(&u, mul(n_state, f));
    if (stage <= 2) take(&u, mul(P, es));
    if (stage >= 1) take(&u, mul(S, es));
    if (stage == 3) take(&u, mul(uni, es)), take(&u, mul(uni, es));
    b.params = u;
    if (stage <= 1) take(&u, mul(P, f));
    if (stage >= 1) take(&u, mul(S, f));
    if (stage >= 2) take(&u, mul(uni, f)), take(&u, mul(uni, f));
    b.grads = since(u, b.params);
    const int64_t before = u;
    take(&u, mul(n_state, f));
    take(&u, mul(n_state, f));
    take(&u, n_state);
    b.moments = since(u, before);

    u = 0;
    if (stage == 1 || stage == 2) take(&u, mul(mul(dp, S), es));
    if (stage == 3) take(&u, mul(mul(dp, U), es)), take(&u, mul(mul(dp, U), es));
    if (stage >= 1) take(&u, mul(mul(dp, U), f));
    if (stage >= 2) take(&u, mul(U, f));
    take(&u, l->num_tensors * 4 * 8); /* two tables of shard copies, 4 int64 each */
    take(&u, l->num_tensors * 4 * 8);
    take(&u, 40);                     /* AdamW hyperparameters */
    take(&u, 4 * 8);                  /* loss, norm, sse */
    take(&u, 8);                      /* first non-finite index */
    b.comm = u;

    const int64_t xs = mul(cfg->model.seq_len, cfg->model.in_features);
    const int64_t ys = mul(cfg->model.seq_len, cfg->model.out_features);
    u = 0;
    take(&u, mul(mul(cfg->data.capacity, xs), f));
    take(&u, mul(mul(cfg->data.capacity, ys), f));
    take(&u, mul(cfg->training.batch_size, 8));
    b.store = u;

    const insitra_model_dims dims = insitra_config_model_dims(cfg);
    b.activations = insitra_size_add(
        insitra_gpu_activation_bytes(&dims, insitra_config_micro_batch(cfg), es), INSITRA_GPU_GEMM_WORKSPACE);
    return b;
}
