/*
 * The ring of attention_ring.h, written once over the backend's operations.
 * Rank c receives from c - 1 and sends to c + 1; at step s it holds the
 * block of rank c - s.
 */
#include "attention_ring.h"

#include "checked.h"
#include "error.h"

/* The scratch carved: kv[2] act, dkv[2] f32, l f32. */
typedef struct ring_scratch {
    char *kv[2];
    float *dkv[2], *l;
} ring_scratch;

static ring_scratch carve(void *scratch, int64_t n, size_t act_size)
{
    char *p = scratch;
    ring_scratch r;
    r.kv[0] = p;
    r.kv[1] = p + (size_t)n * act_size;
    r.dkv[0] = (float *)(p + 2 * (size_t)n * act_size);
    r.dkv[1] = r.dkv[0] + n;
    r.l = r.dkv[1] + n;
    return r;
}

int64_t insitra_attention_ring_scratch_bytes(int64_t B, int64_t Tc, int64_t C, int64_t H, size_t act_size)
{
    /* saturating (lib/checked.h): the planner sizes configurations that do not fit 64 bits */
    const int64_t n = insitra_size_mul(insitra_size_mul(B, Tc), 2 * C);
    const int64_t blocks =
        insitra_size_mul(insitra_size_mul(2, n), (int64_t)act_size + (int64_t)sizeof(float));
    return insitra_size_add(blocks, insitra_size_mul(insitra_size_mul(B, H), Tc * (int64_t)sizeof(float)));
}

static insitra_status need_ops(const insitra_backend *be)
{
    const insitra_backend_i *i = be->i;
    if (i->attention_kv_pack && i->attention_block_forward && i->attention_block_finish &&
        i->attention_block_backward && i->attention_block_done && i->ring_shift)
        return INSITRA_STATUS_OK;
    return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                             "the %s backend has no context-parallel attention (parallel.cp must be 1)", i->name);
}

/* i->wait, its blocked time also counted as the ring's (insitra_metrics.ring_wait_seconds): two
 * reads of the backend's own clock total, no clock of its own. */
static insitra_status ring_wait(insitra_backend *be, insitra_coll *h)
{
    const double w0 = be->wait_seconds;
    const insitra_status s = be->i->wait(be, h);
    be->ring_wait_seconds += be->wait_seconds - w0;
    return s;
}

insitra_status insitra_attention_ring_forward(insitra_backend *be, insitra_group *g, int rank, int size,
                                              void *out, float *lse, void *scratch, const void *qkv, int64_t B,
                                              int64_t Tc, int64_t C, int64_t H, bool causal)
{
    INSITRA_CHECK(need_ops(be));
    const insitra_backend_i *i = be->i;
    const int64_t n = B * Tc * 2 * C;
    const ring_scratch r = carve(scratch, n, be->act_size);
    INSITRA_CHECK(i->attention_kv_pack(be, r.kv[0], qkv, B * Tc, C));
    for (int s = 0; s < size; s++) {
        const int cur = s % 2, j = (rank - s + size) % size;
        insitra_coll h = {.req = MPI_REQUEST_NULL, .event = -1};
        /* the next block comes in while this one is folded */
        if (s + 1 < size) INSITRA_CHECK(i->ring_shift(be, g, r.kv[cur], r.kv[1 - cur], n, be->act, &h));
        INSITRA_CHECK(i->attention_block_forward(be, out, lse, r.l, qkv, r.kv[cur], B, Tc, Tc, C, H,
                                                 (int64_t)rank * Tc, (int64_t)j * Tc, causal, s == 0));
        if (s + 1 < size) INSITRA_CHECK(ring_wait(be, &h));
    }
    return i->attention_block_finish(be, out, lse, lse, r.l, B, Tc, C, H); /* lse held m until now */
}

insitra_status insitra_attention_ring_backward(insitra_backend *be, insitra_group *g, int rank, int size,
                                               void *dqkv, void *scratch, const void *dout, const void *qkv,
                                               const void *out, const float *lse, int64_t B, int64_t Tc,
                                               int64_t C, int64_t H, bool causal)
{
    INSITRA_CHECK(need_ops(be));
    const insitra_backend_i *i = be->i;
    const int64_t n = B * Tc * 2 * C;
    const ring_scratch r = carve(scratch, n, be->act_size);
    INSITRA_CHECK(i->attention_kv_pack(be, r.kv[0], qkv, B * Tc, C));
    INSITRA_CHECK(i->fill_zero(be, r.dkv[0], (size_t)n * sizeof(float)));
    INSITRA_CHECK(i->fill_zero(be, dqkv, (size_t)(B * Tc * 3 * C) * be->act_size));
    for (int s = 0; s < size; s++) {
        const int cur = s % 2, j = (rank - s + size) % size;
        insitra_coll h = {.req = MPI_REQUEST_NULL, .event = -1}, dh = h;
        if (s + 1 < size) INSITRA_CHECK(i->ring_shift(be, g, r.kv[cur], r.kv[1 - cur], n, be->act, &h));
        INSITRA_CHECK(i->attention_block_backward(be, dqkv, r.dkv[cur], dout, qkv, r.kv[cur], out, lse, B, Tc,
                                                  Tc, C, H, (int64_t)rank * Tc, (int64_t)j * Tc, causal));
        /* this block's dk, dv move on with it; after the last step they reach home */
        INSITRA_CHECK(i->ring_shift(be, g, r.dkv[cur], r.dkv[1 - cur], n, INSITRA_DTYPE_F32, &dh));
        if (s + 1 < size) INSITRA_CHECK(ring_wait(be, &h));
        INSITRA_CHECK(ring_wait(be, &dh));
    }
    /* dkv[size % 2] holds this rank's own block's dk, dv from every rank */
    return i->attention_block_done(be, dqkv, r.dkv[size % 2], B * Tc, C, H);
}
