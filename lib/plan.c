/*
 * The planner: memory per rank and traffic per step for a configuration at
 * each ZeRO stage, from the same layout and sizing code the trainer uses, so
 * a plan matches what insitra_memory_report says once the job runs.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "config.h"
#include "engine.h"
#include "error.h"
#include "model.h"
#include "shard.h"

/* Bytes one rank sends per step (ring algorithms: an all-reduce of n floats
 * sends 2 (N-1)/N n, a reduce-scatter or all-gather of N slots of s floats
 * sends (N-1) s), and the number of collective calls. */
static void traffic(int stage, const insitra_param_layout *l, const insitra_shard_layout *sl,
                    int64_t micro_steps, int64_t *bytes, int32_t *calls)
{
    const double N = (double)sl->dp, U = (double)l->num_units, NB = (double)sl->num_buckets;
    const double S = (double)sl->total; /* one rank's slots of every unit */
    double floats = 0, n = 0;
    /* Reductions and the stage 1-2 gathers go by bucket (lib/shard.h). */
    switch (stage) {
    case 0: floats = 2.0 * (N - 1) / N * (double)l->total; n = NB; break;
    case 1: floats = 2.0 * (N - 1) * S; n = 2 * NB; break;
    case 2: floats = (double)(micro_steps + 1) * (N - 1) * S; n = (double)(micro_steps + 1) * NB; break;
    case 3: {
        /* Forward gathers every unit, backward all but the head, which is
         * still resident; later micro-batches find the embedding resident too.
         * Every micro-batch reduce-scatters every bucket. Unit sizes are averaged. */
        const double gathers = U + (U - 1) + (double)(micro_steps - 1) * 2 * (U - 1);
        floats = (N - 1) * (S / U * gathers + (double)micro_steps * S);
        n = gathers + (double)micro_steps * NB;
        break;
    }
    }
    /* Converting a double beyond int64 is undefined: saturate. 2^20 micro-batches
     * of a 2^45-parameter model at stage 2 reach 2^67 bytes. */
    const double b = floats * sizeof(float);
    *bytes = sl->dp < 2 ? 0 : b < 0x1p63 ? (int64_t)b : INSITRA_SIZE_OVERFLOW;
    *calls = sl->dp < 2 ? 0 : n < 0x1p31 ? (int32_t)n : INT32_MAX;
}

/* A figure that does not fit 64 bits is an error, not a wrapped number. */
static insitra_status check_counted(const insitra_plan *p, const insitra_config *cfg)
{
    const insitra_memory_usage *m = &p->memory;
    const struct {
        const char *what;
        int64_t bytes;
    } figures[] = {{"parameters", m->parameter_bytes}, {"gradients", m->gradient_bytes},
                   {"optimizer state", m->optimizer_bytes}, {"activations", m->activation_bytes},
                   {"communication buffers", m->communication_bytes},
                   {"sample store", m->sample_store_bytes}, {"memory in all", m->total_bytes}};
    for (size_t i = 0; i < sizeof figures / sizeof *figures; i++)
        if (figures[i].bytes == INSITRA_SIZE_OVERFLOW)
            return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                     "plan_stage: the %s of one rank at ZeRO stage %d on %d ranks need "
                                     "more than 2^63 - 1 bytes, the most a 64-bit size holds (the "
                                     "model.* keys, training.micro_batch_size, data.capacity)",
                                     figures[i].what, p->zero_stage, p->world_size);
    if (p->comm_bytes_per_step == INSITRA_SIZE_OVERFLOW)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "plan_stage: the traffic of one step at ZeRO stage %d on %d ranks, "
                                 "%" PRId64 " micro-batches (training.batch_size / "
                                 "training.micro_batch_size) over the model's parameters, is more "
                                 "than 2^63 - 1 bytes, the most a 64-bit size holds",
                                 p->zero_stage, p->world_size,
                                 cfg->training.batch_size / insitra_config_micro_batch(cfg));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_plan_stage(const insitra_config *cfg, int32_t world_size, int32_t zero_stage,
                                  insitra_plan *plan)
{
    if (!cfg || !plan)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "plan_stage: %s is NULL",
                                 !cfg ? "cfg" : "plan");
    if (world_size < 1)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "plan_stage: world_size = %d, must be at least 1", world_size);
    if (zero_stage < 0 || zero_stage > 3)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "plan_stage: zero_stage = %d is outside [0, 3]", zero_stage);
    INSITRA_CHECK(insitra_config_validate(cfg));
    if (world_size % cfg->parallel.cp != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'parallel.cp': value %" PRId64
                                 " does not divide world_size = %d",
                                 cfg->parallel.cp, world_size);
    const insitra_model_dims dims = insitra_config_model_dims(cfg);
    /* ZeRO shards over every dp x cp rank; activations are for T / cp tokens (dims) */
    const int64_t dp = world_size / cfg->parallel.tp, mb = insitra_config_micro_batch(cfg);
    insitra_param_layout layout;
    insitra_shard_layout sl;
    INSITRA_CHECK(insitra_shard_layouts_for(&dims, dp, insitra_config_bucket_floats(cfg), &layout, &sl));
    memset(plan, 0, sizeof *plan);
    plan->world_size = world_size;
    plan->zero_stage = zero_stage;
    /* the same formula insitra_memory_report answers with */
    const insitra_status s = insitra_engine_bytes_for(cfg, zero_stage, dp, &plan->memory);
    if (s != INSITRA_STATUS_OK) {
        insitra_shard_layout_free(&sl);
        insitra_param_layout_free(&layout);
        return s;
    }
    traffic(zero_stage, &layout, &sl, cfg->training.batch_size / mb, &plan->comm_bytes_per_step,
            &plan->collectives_per_step);
    insitra_shard_layout_free(&sl);
    insitra_param_layout_free(&layout);
    return check_counted(plan, cfg);
}

/* Whether cfg with model.seq_len = T fits budget bytes per rank: 1 yes, 0 no,
 * -1 with the error set when the plan fails for another reason. A sequence
 * whose buffers cannot be counted in 64 bits (a CONFIG_ERROR of sizes) does
 * not fit. */
static int fits_at(insitra_config *c, int64_t T, int32_t world_size, int32_t stage, int64_t budget,
                   insitra_status *err)
{
    c->model.seq_len = T;
    insitra_plan p;
    *err = insitra_plan_stage(c, world_size, stage, &p);
    if (*err == INSITRA_STATUS_CONFIG_ERROR && T > 1) return 0;
    if (*err != INSITRA_STATUS_OK) return -1;
    return p.memory.total_bytes <= budget;
}

insitra_status insitra_plan_max_seq_len(const insitra_config *cfg, int32_t world_size, int32_t zero_stage,
                                        int64_t budget_bytes, int64_t *seq_len, int32_t *at_limit)
{
    if (!cfg || !seq_len)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "plan_max_seq_len: %s is NULL",
                                 !cfg ? "cfg" : "seq_len");
    if (budget_bytes < 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "plan_max_seq_len: budget_bytes = %" PRId64 ", must be at least 0",
                                 budget_bytes);
    *seq_len = 0;
    if (at_limit) *at_limit = 0;
    insitra_config c = *cfg;
    insitra_status err;
    /* Every byte count grows with T (positions, activations, workspace, sample
     * store, alignment), so a bisection finds the last T that fits; T runs
     * over the multiples of parallel.cp, the only ones it accepts. */
    const int64_t cp = cfg->parallel.cp;
    int f = fits_at(&c, cp, world_size, zero_stage, budget_bytes, &err);
    if (f <= 0) return f < 0 ? err : INSITRA_STATUS_OK;
    int64_t lo = 1, hi = INSITRA_SEQ_LEN_MAX / cp; /* lo cp fits */
    f = fits_at(&c, hi * cp, world_size, zero_stage, budget_bytes, &err);
    if (f < 0) return err;
    if (f) {
        *seq_len = hi * cp;
        if (at_limit) *at_limit = 1;
        return INSITRA_STATUS_OK;
    }
    while (hi - lo > 1) { /* lo cp fits, hi cp does not */
        const int64_t mid = lo + (hi - lo) / 2;
        f = fits_at(&c, mid * cp, world_size, zero_stage, budget_bytes, &err);
        if (f < 0) return err;
        *(f ? &lo : &hi) = mid;
    }
    *seq_len = lo * cp;
    return INSITRA_STATUS_OK;
}
