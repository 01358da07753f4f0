#include "shard.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "error.h"

/* Buckets from the last unit down: a unit joins the bucket being filled while
 * all ranks' slots of both stay within sl->bucket_floats. Buckets are
 * numbered from unit 0 up. */
static void make_buckets(insitra_shard_layout *sl, const insitra_param_layout *l)
{
    int64_t n = 0, len = 0;
    for (int64_t u = l->num_units - 1; u >= 0; u--) {
        const int64_t joined = insitra_size_add(len, sl->unit_len[u]);
        if (n == 0 || insitra_size_mul(joined, sl->dp) > sl->bucket_floats) {
            n++;
            len = sl->unit_len[u];
        } else {
            len = joined;
        }
        sl->bucket_of[u] = n; /* counted from the top for now */
    }
    sl->num_buckets = n;
    for (int64_t u = 0; u < l->num_units; u++) {
        const int64_t b = n - sl->bucket_of[u];
        sl->bucket_of[u] = b;
        if (sl->bucket_units[b]++ == 0) {
            sl->bucket_first[b] = u;
            sl->bucket_offset[b] = sl->unit_offset[u];
        }
        sl->bucket_len[b] = insitra_size_add(sl->bucket_len[b], sl->unit_len[u]);
        if (sl->bucket_len[b] > sl->max_bucket_len) sl->max_bucket_len = sl->bucket_len[b];
        const int64_t numel = l->units[u].offset + l->units[u].numel - l->units[sl->bucket_first[b]].offset;
        if (numel > sl->max_bucket_numel) sl->max_bucket_numel = numel;
    }
}

insitra_status insitra_shard_layout_create(insitra_shard_layout *sl,
                                           const insitra_param_layout *l, int64_t dp, int64_t rank,
                                           int64_t bucket_floats)
{
    memset(sl, 0, sizeof *sl);
    sl->dp = dp;
    sl->rank = rank;
    sl->bucket_floats = bucket_floats;
    sl->len = calloc((size_t)l->num_tensors, sizeof(int64_t));
    sl->offset = calloc((size_t)l->num_tensors, sizeof(int64_t));
    sl->unit_offset = calloc((size_t)l->num_units, sizeof(int64_t));
    sl->unit_len = calloc((size_t)l->num_units, sizeof(int64_t));
    int64_t **per_unit[] = {&sl->bucket_of, &sl->bucket_first, &sl->bucket_units, &sl->bucket_offset,
                            &sl->bucket_len};
    bool lost = false;
    for (size_t k = 0; k < sizeof per_unit / sizeof *per_unit; k++) {
        *per_unit[k] = calloc((size_t)l->num_units, sizeof(int64_t));
        lost = lost || !*per_unit[k];
    }
    if (lost || !sl->len || !sl->offset || !sl->unit_offset || !sl->unit_len) {
        insitra_shard_layout_free(sl);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "shard layout: out of memory");
    }
    for (int64_t i = 0; i < l->num_tensors; i++) {
        sl->len[i] = (l->tensors[i].numel + dp - 1) / dp;
        sl->offset[i] = sl->total;
        sl->total = insitra_size_add(sl->total, sl->len[i]); /* saturating, like every size */
    }
    for (int64_t u = 0; u < l->num_units; u++) {
        const insitra_param_unit *unit = &l->units[u];
        const int64_t last = unit->first_tensor + unit->num_tensors - 1;
        sl->unit_offset[u] = sl->offset[unit->first_tensor];
        sl->unit_len[u] = sl->offset[last] + sl->len[last] - sl->unit_offset[u];
        if (sl->unit_len[u] > sl->max_unit_len) sl->max_unit_len = sl->unit_len[u];
    }
    make_buckets(sl, l);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_shard_layouts_for(const insitra_model_dims *dims, int64_t dp, int64_t bucket_floats,
                                         insitra_param_layout *layout, insitra_shard_layout *sl)
{
    INSITRA_CHECK(insitra_param_layout_create(layout, dims));
    const insitra_status s = insitra_shard_layout_create(sl, layout, dp, 0, bucket_floats);
    if (s != INSITRA_STATUS_OK) insitra_param_layout_free(layout);
    return s;
}

void insitra_shard_layout_free(insitra_shard_layout *sl)
{
    free(sl->len);
    free(sl->offset);
    free(sl->unit_offset);
    free(sl->unit_len);
    free(sl->bucket_of);
    free(sl->bucket_first);
    free(sl->bucket_units);
    free(sl->bucket_offset);
    free(sl->bucket_len);
    memset(sl, 0, sizeof *sl);
}

/* Copies slot r of every tensor of the unit between the unit's flat range and
 * a slot buffer; to_slots picks the direction. Padding is zeroed on the way in. */
static void copy_slots(const insitra_shard_layout *sl, const insitra_param_layout *l, int64_t unit,
                       int64_t r, float *flat, float *slots, int to_slots)
{
    const insitra_param_unit *u = &l->units[unit];
    for (int64_t i = u->first_tensor; i < u->first_tensor + u->num_tensors; i++) {
        const insitra_tensor_desc *t = &l->tensors[i];
        const int64_t count = insitra_shard_count(sl, i, t->numel, r);
        float *f = flat + (t->offset - u->offset) + r * sl->len[i];
        float *s = slots + (sl->offset[i] - sl->unit_offset[unit]);
        if (to_slots) {
            if (count > 0) memcpy(s, f, (size_t)count * sizeof(float));
            memset(s + count, 0, (size_t)(sl->len[i] - count) * sizeof(float));
        } else if (count > 0) {
            memcpy(f, s, (size_t)count * sizeof(float));
        }
    }
}

void insitra_shard_pack_unit(const insitra_shard_layout *sl, const insitra_param_layout *l,
                             int64_t unit, const float *unit_src, float *packed)
{
    for (int64_t r = 0; r < sl->dp; r++)
        copy_slots(sl, l, unit, r, (float *)unit_src, packed + r * sl->unit_len[unit], 1);
}

void insitra_shard_unpack_unit(const insitra_shard_layout *sl, const insitra_param_layout *l,
                               int64_t unit, const float *packed, float *unit_dst)
{
    for (int64_t r = 0; r < sl->dp; r++)
        copy_slots(sl, l, unit, r, unit_dst, (float *)packed + r * sl->unit_len[unit], 0);
}

void insitra_shard_extract_unit(const insitra_shard_layout *sl, const insitra_param_layout *l,
                                int64_t unit, const float *unit_src, float *slots)
{
    copy_slots(sl, l, unit, sl->rank, (float *)unit_src, slots, 1);
}

void insitra_shard_insert_unit(const insitra_shard_layout *sl, const insitra_param_layout *l,
                               int64_t unit, const float *slots, float *unit_dst)
{
    copy_slots(sl, l, unit, sl->rank, unit_dst, (float *)slots, 0);
}
