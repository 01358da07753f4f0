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
#include "gpu_sizes.h"
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

/* tp > 1: what the blocks' sequence-parallel collectives add (lib/model_step.c):
 * per block and micro-batch two all-gathers and two reduce-scatters of the
 * rank's B Tl C activations forward, as many backward, and the forward's
 * again when blocks are recomputed; then one all-gather of the replicated
 * tensors' reduced gradients per step. */
static void tp_traffic(const insitra_model_dims *d, const insitra_param_layout *l, const insitra_shard_layout *sl,
                       int stage, int64_t mb, size_t act_size, int64_t micro_steps, int64_t *bytes, int32_t *calls)
{
    const double tp = (double)insitra_model_dims_tp(d);
    if (tp < 2) return;
    const double rank_acts = (double)mb * (double)insitra_model_dims_tokens(d) * (double)d->d_model;
    const double per_block = (d->recompute ? 12.0 : 8.0) * (tp - 1) * rank_acts * (double)act_size;
    double replicated = 0;
    for (int64_t i = 0; i < l->num_tensors; i++)
        if (l->tensors[i].split == INSITRA_TP_REPLICATED)
            replicated += (double)(stage == 0 ? l->tensors[i].numel : sl->len[i]);
    const double b = (double)*bytes + (double)micro_steps * (double)d->n_layers * per_block +
                     (tp - 1) * replicated * sizeof(float);
    const double n = (double)*calls + (double)micro_steps * (double)d->n_layers * (d->recompute ? 12 : 8) + 1;
    *bytes = *bytes == INSITRA_SIZE_OVERFLOW || b >= 0x1p63 ? INSITRA_SIZE_OVERFLOW : (int64_t)b;
    *calls = n < 0x1p31 ? (int32_t)n : INT32_MAX;
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
    if (world_size % insitra_config_token_slices(cfg) != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config keys 'parallel.cp' x 'parallel.tp' = %" PRId64 " x %" PRId64
                                 " do not divide world_size = %d",
                                 cfg->parallel.cp, cfg->parallel.tp, world_size);
    insitra_model_dims dims = insitra_config_model_dims(cfg);
    dims.cp = cfg->parallel.cp;
    dims.tp = cfg->parallel.tp;
    /* ZeRO shards this rank's tp slices over every dp x cp rank; activations
     * are for T / (cp tp) tokens, or T / cp gathered (dims) */
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
    tp_traffic(&dims, &layout, &sl, zero_stage, mb, cfg->precision == INSITRA_PRECISION_BF16 ? 2 : sizeof(float),
               cfg->training.batch_size / mb, &plan->comm_bytes_per_step, &plan->collectives_per_step);
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

/* Whether the GPU attention leaves cuDNN's SDPA (and its (B,H,T,T) buffer)
 * at model.seq_len = T: the one place where a longer sequence can need less
 * memory. */
static bool leaves_sdpa(const insitra_config *cfg, int64_t T)
{
    insitra_config c = *cfg;
    c.model.seq_len = T;
    insitra_model_dims d = insitra_config_model_dims(&c);
    d.cp = c.parallel.cp; /* with cp > 1 the ring runs, never SDPA */
    const size_t act = c.precision == INSITRA_PRECISION_BF16 ? 2 : 4;
    return insitra_gpu_sdpa_choice(&d, insitra_config_micro_batch(&c), act) == INSITRA_GPU_SDPA_NONE;
}

/* The first k in [1, kmax] at which a GPU run leaves cuDNN's SDPA for the
 * fused kernels, whose memory is lower; 1 when it never runs SDPA (the CPU,
 * fp32, no cuDNN), kmax + 1 when it never leaves. T = k * parallel.cp. */
static int64_t sdpa_break(const insitra_config *cfg, int64_t kmax)
{
    const int64_t cp = cfg->parallel.cp;
    if (cfg->device != INSITRA_DEVICE_CUDA || leaves_sdpa(cfg, cp)) return 1;
    if (!leaves_sdpa(cfg, kmax * cp)) return kmax + 1;
    int64_t lo = 1, hi = kmax; /* lo runs SDPA, hi does not; SDPA's bytes grow with T */
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        *(leaves_sdpa(cfg, mid * cp) ? &hi : &lo) = mid;
    }
    return hi;
}

/* The largest k in [a, b] with k * cp fitting, given that a * cp fits and
 * that the bytes grow with k on [a, b]; -1 with *err on a failed plan. */
static int64_t last_fitting(insitra_config *c, int64_t a, int64_t b, int32_t world_size, int32_t stage,
                            int64_t budget, insitra_status *err)
{
    const int64_t cp = c->parallel.cp;
    int f = fits_at(c, b * cp, world_size, stage, budget, err);
    if (f != 0) return f < 0 ? -1 : b;
    int64_t lo = a, hi = b; /* lo fits, hi does not */
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        f = fits_at(c, mid * cp, world_size, stage, budget, err);
        if (f < 0) return -1;
        *(f ? &lo : &hi) = mid;
    }
    return lo;
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
    insitra_status err = INSITRA_STATUS_OK;
    /* Every byte count grows with T (positions, activations, workspace, sample
     * store, alignment) but one: a GPU run leaves cuDNN's SDPA, and its
     * (B,H,T,T) buffer, past a length (lib/gpu_sizes.c). So the lengths split
     * in two runs, each searched by bisection, the longer run first; T runs
     * over the multiples of parallel.cp, the only ones it accepts. */
    const int64_t cp = cfg->parallel.cp, kmax = INSITRA_SEQ_LEN_MAX / cp;
    const int64_t brk = sdpa_break(cfg, kmax);
    int64_t k = 0;
    if (brk <= kmax) {
        const int f = fits_at(&c, brk * cp, world_size, zero_stage, budget_bytes, &err);
        if (f < 0) return err;
        if (f) k = last_fitting(&c, brk, kmax, world_size, zero_stage, budget_bytes, &err);
    }
    if (k == 0 && brk > 1) {
        const int f = fits_at(&c, cp, world_size, zero_stage, budget_bytes, &err);
        if (f < 0) return err;
        if (f) k = last_fitting(&c, 1, brk - 1, world_size, zero_stage, budget_bytes, &err);
    }
    if (k < 0) return err;
    *seq_len = k * cp;
    if (at_limit) *at_limit = k == kmax;
    return INSITRA_STATUS_OK;
}

/* Whether grid a is preferred to b: fewer ranks per sample, then tp before
 * cp at the same count, then less traffic, then the lower stage. */
static bool grid_before(const insitra_plan_grid *a, const insitra_plan_grid *b)
{
    const int32_t sa = a->cp * a->tp, sb = b->cp * b->tp;
    if (sa != sb) return sa < sb;
    if (a->cp != b->cp) return a->cp < b->cp;
    if (a->plan.comm_bytes_per_step != b->plan.comm_bytes_per_step)
        return a->plan.comm_bytes_per_step < b->plan.comm_bytes_per_step;
    return a->plan.zero_stage < b->plan.zero_stage;
}

insitra_status insitra_plan_suggest_grid(const insitra_config *cfg, int32_t world_size, int64_t budget_bytes,
                                         insitra_plan_grid *best, int32_t *found)
{
    if (!cfg || !best || !found)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "plan_suggest_grid: %s is NULL",
                                 !cfg ? "cfg" : !best ? "best" : "found");
    if (world_size < 1 || budget_bytes < 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "plan_suggest_grid: world_size = %d (at least 1), budget_bytes = %" PRId64
                                 " (at least 0)",
                                 world_size, budget_bytes);
    *found = 0;
    insitra_config c = *cfg;
    for (int32_t cp = 1; cp <= world_size; cp++) {
        for (int32_t tp = 1; world_size % cp == 0 && tp <= world_size / cp; tp++) {
            if ((world_size / cp) % tp != 0) continue;
            c.parallel.cp = cp;
            c.parallel.tp = tp;
            c.parallel.dp = 0;
            for (int32_t stage = 0; stage < 4; stage++) {
                insitra_plan_grid g = {world_size / (cp * tp), cp, tp, {0}};
                const insitra_status s = insitra_plan_stage(&c, world_size, stage, &g.plan);
                if (s == INSITRA_STATUS_CONFIG_ERROR) break; /* a grid cfg does not allow */
                INSITRA_CHECK(s);
                if (g.plan.memory.total_bytes > budget_bytes) continue;
                if (!*found || grid_before(&g, best)) *best = g;
                *found = 1;
            }
        }
    }
    insitra_error_clear();
    return INSITRA_STATUS_OK;
}
