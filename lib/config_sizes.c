/*
 * Whether the buffers a configuration implies can be counted at all. Each key
 * is inside its range, but products of several reach beyond 64 bits:
 * data.capacity (up to 2^53) x seq_len x features for the sample store, and
 * micro-batch x seq_len x d_model x n_layers for the activations (times
 * seq_len again where a backend materialises the attention scores). Such
 * a configuration is a CONFIG_ERROR here, at validation, naming the keys,
 * before any size is computed for an allocation. The counts come from the
 * functions that size the buffers (lib/checked.h saturates them), so this
 * check and the allocations cannot disagree.
 */
#include <inttypes.h>

#include "backend.h"
#include "checked.h"
#include "config.h"
#include "error.h"
#include "model.h"

static insitra_status check_store(const insitra_config *cfg)
{
    const int64_t per_sample = cfg->model.seq_len * (cfg->model.in_features + cfg->model.out_features);
    int64_t bytes;
    if (insitra_mul_i64(cfg->data.capacity, per_sample, &bytes) &&
        insitra_mul_i64(bytes, (int64_t)sizeof(float), &bytes))
        return INSITRA_STATUS_OK;
    return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                             "config key 'data.capacity' = %" PRId64 ": the sample store, data.capacity x "
                             "model.seq_len x (model.in_features + model.out_features) x 4 bytes = %.3g "
                             "bytes, is more than 2^63 - 1, the most a 64-bit size holds; at most %" PRId64
                             " samples of this shape can be held",
                             cfg->data.capacity,
                             (double)cfg->data.capacity * (double)per_sample * (double)sizeof(float),
                             INT64_MAX / ((int64_t)sizeof(float) * per_sample));
}

/* The activations of one micro-batch, as the backend that runs it sizes them. */
static insitra_status check_activations(const insitra_config *cfg)
{
    const insitra_model_dims dims = insitra_config_model_dims(cfg);
    const int64_t mb = insitra_config_micro_batch(cfg);
    const insitra_backend_desc *desc = insitra_backend_desc_for(cfg->device);
    const size_t es = cfg->precision == INSITRA_PRECISION_BF16 ? 2 : sizeof(float);
    const int64_t att = desc->attention_state_bytes(&dims, mb, es);
    const int64_t bytes = insitra_size_add(insitra_model_act_bytes(&dims, mb, es, att, desc->align),
                                           desc->workspace_bytes(&dims, mb, es));
    if (bytes != INSITRA_SIZE_OVERFLOW) return INSITRA_STATUS_OK;
    /* Two figures in double, which cannot wrap: what the device's attention
     * keeps (quadratic in seq_len where it materialises the scores, linear
     * where it is blocked) and the token activations. */
    const double state = (double)desc->attention_state_bytes(&dims, 1, es) * (double)mb * (double)dims.n_layers;
    const double tokens = (double)mb * (double)dims.seq_len * (double)dims.d_model * (double)dims.n_layers * 4.0;
    return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                             "config keys 'training.micro_batch_size' = %" PRId64
                             " ('training.batch_size' = %" PRId64 "), 'model.seq_len' = %" PRId64
                             ", 'model.n_heads' = %" PRId64 ", 'model.d_model' = %" PRId64
                             ", 'model.n_layers' = %" PRId64
                             ": the activations of one micro-batch need more than 2^63 - 1 bytes, "
                             "the most a 64-bit size holds (the attention state alone is %.3g bytes "
                             "on this device; micro-batch x seq_len x d_model x n_layers x 4 bytes "
                             "are %.3g)",
                             cfg->training.micro_batch_size, cfg->training.batch_size, dims.seq_len,
                             dims.n_heads, dims.d_model, dims.n_layers, state, tokens);
}

insitra_status insitra_config_check_sizes(const insitra_config *cfg)
{
    INSITRA_CHECK(check_store(cfg));
    return check_activations(cfg);
}
