/*
 * How ZeRO shards the flat parameter layout over the dp ranks: every tensor
 * is split into dp equal slots of ceil(numel / dp) elements (the last ones
 * padded), and rank r holds slot r of every tensor. A rank's slots, tensor by
 * tensor, form its shard buffer; a unit's slots are one contiguous run of it,
 * so a unit is all-gathered from a contiguous send range into a rank-major
 * receive buffer, and reduce-scattered from a rank-major packed buffer.
 *
 * Gradient reductions and the parameter gathers of stages 1-2 go by bucket:
 * consecutive units whose slots, over all ranks, come to at most
 * bucket_floats (parallel.bucket_mib; a larger unit is a bucket of its own,
 * and 0 makes every unit one), filled
 * from the last unit down, the order backward finishes them. A bucket's
 * slots are a contiguous run of the shard buffer too, so it packs in one
 * call and travels in one collective.
 */
#ifndef INSITRA_SHARD_H
#define INSITRA_SHARD_H

#include <stdint.h>

#include "model.h"

typedef struct insitra_shard_layout {
    int64_t dp, rank;
    int64_t *len;         /* per tensor: slot length ceil(numel / dp) */
    int64_t *offset;      /* per tensor: where its slot starts in the shard buffer */
    int64_t total;        /* floats in a shard buffer */
    int64_t *unit_offset; /* per unit: start of its slots in the shard buffer */
    int64_t *unit_len;    /* per unit: floats of its slots */
    int64_t max_unit_len;
    int64_t bucket_floats;    /* the most floats of all ranks' slots of a bucket of several units */
    int64_t num_buckets;
    int64_t *bucket_of;       /* per unit: its bucket */
    int64_t *bucket_first;    /* per bucket: its first (lowest) unit */
    int64_t *bucket_units;    /* per bucket: how many units */
    int64_t *bucket_offset;   /* per bucket: start of its slots in the shard buffer */
    int64_t *bucket_len;      /* per bucket: floats of its slots */
    int64_t max_bucket_len;
    int64_t max_bucket_numel; /* the most elements of one bucket's units */
} insitra_shard_layout;



insitra_status insitra_shard_layout_create(insitra_shard_layout *sl,
                                           const insitra_param_layout *layout, int64_t dp,
                                           int64_t rank, int64_t bucket_floats);
void insitra_shard_layout_free(insitra_shard_layout *sl);

/* The model's tensor layout for dims and its shard layout over dp ranks (as
 * rank 0 holds it), both or neither: what sizing a configuration needs. */
insitra_status insitra_shard_layouts_for(const insitra_model_dims *dims, int64_t dp, int64_t bucket_floats,
                                         insitra_param_layout *layout, insitra_shard_layout *sl);

/* Elements of tensor i (numel n) that rank r's slot holds: the flattened
 * tensor's [r * len, r * len + count). */
static inline int64_t insitra_shard_count(const insitra_shard_layout *sl, int64_t i, int64_t numel,
                                          int64_t r)
{
    const int64_t rest = numel - r * sl->len[i];
    return rest <= 0 ? 0 : rest < sl->len[i] ? rest : sl->len[i];
}

/* unit (the unit's range of the flat layout) -> packed (dp, unit_len), rank-major,
 * padding zeroed: the send buffer of a reduce-scatter. */
void insitra_shard_pack_unit(const insitra_shard_layout *sl, const insitra_param_layout *layout,
                             int64_t unit, const float *unit_src, float *packed);
/* packed (dp, unit_len), rank-major -> unit: after an all-gather. */
void insitra_shard_unpack_unit(const insitra_shard_layout *sl, const insitra_param_layout *layout,
                               int64_t unit, const float *packed, float *unit_dst);
/* slots (unit_len) -> this rank's slots of a unit; the rest of unit_dst is untouched. */
void insitra_shard_insert_unit(const insitra_shard_layout *sl, const insitra_param_layout *layout,
                               int64_t unit, const float *slots, float *unit_dst);
/* This rank's slots of a unit -> slots (unit_len), padding zeroed. */
void insitra_shard_extract_unit(const insitra_shard_layout *sl, const insitra_param_layout *layout,
                                int64_t unit, const float *unit_src, float *slots);

#endif /* INSITRA_SHARD_H */
