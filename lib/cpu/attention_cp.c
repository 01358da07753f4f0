/*
 * Ring attention over the cp group (attention_cp.h). Rank c receives from
 * c - 1 and sends to c + 1; at step s it holds the block of rank c - s.
 */
#include "attention_cp.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "../error.h"
#include "attention.h"

enum { TAG_KV = 1701, TAG_DKV = 1702 };

int64_t insitra_cp_attention_scratch_floats(int64_t B, int64_t Tc, int64_t C, int64_t H)
{
    return 4 * B * Tc * 2 * C + B * H * Tc;
}

static insitra_status mpi_failed(int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "context-parallel attention: %s failed: %s", what, text);
}

/* Sends send (n floats) to the next rank and receives recv from the
 * previous one, started now and finished by wait_pair. */
static insitra_status start_pair(MPI_Comm comm, const float *send, float *recv, int64_t n, int tag, int rank,
                                 int size, MPI_Request req[2])
{
    if (n > INT_MAX)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "context-parallel attention: a block of %" PRId64 " floats exceeds one MPI "
                                 "message (INT_MAX); use fewer samples per micro-batch",
                                 n);
    const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    int rc = MPI_Irecv(recv, (int)n, MPI_FLOAT, prev, tag, comm, &req[0]);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Irecv");
    rc = MPI_Isend(send, (int)n, MPI_FLOAT, next, tag, comm, &req[1]);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Isend");
    return INSITRA_STATUS_OK;
}

/* Two MPI_Wait calls: MPI_Waitall with MPI_STATUSES_IGNORE trips a false
 * GCC 12 warning on MPICH's declarations (as in backend_cpu.c). */
static insitra_status wait_pair(MPI_Request req[2])
{
    for (int i = 0; i < 2; i++) {
        const int rc = MPI_Wait(&req[i], MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_failed(rc, "MPI_Wait");
    }
    return INSITRA_STATUS_OK;
}

/* kv (B,Tc,2C) = the k and v columns of qkv (B,Tc,3C). */
static void pack_kv(float *kv, const float *qkv, int64_t n, int64_t C)
{
    for (int64_t i = 0; i < n; i++) memcpy(kv + i * 2 * C, qkv + i * 3 * C + C, (size_t)(2 * C) * sizeof(float));
}

insitra_status insitra_cp_attention_forward(MPI_Comm comm, float *out, float *lse, float *scratch,
                                            const float *qkv, int64_t B, int64_t Tc, int64_t C, int64_t H,
                                            bool causal)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    const int64_t n = B * Tc * 2 * C;
    float *kv[2] = {scratch, scratch + n}, *l = scratch + 4 * n;
    pack_kv(kv[0], qkv, B * Tc, C);
    memset(out, 0, (size_t)(B * Tc * C) * sizeof(float));
    for (int64_t i = 0; i < B * H * Tc; i++) lse[i] = -INFINITY, l[i] = 0.0f; /* lse holds m until finish */
    for (int s = 0; s < size; s++) {
        const int cur = s % 2, j = (rank - s + size) % size;
        MPI_Request req[2];
        /* the next block comes in while this one is folded */
        if (s + 1 < size) INSITRA_CHECK(start_pair(comm, kv[cur], kv[1 - cur], n, TAG_KV, rank, size, req));
        insitra_attention_block_forward(out, lse, l, qkv, kv[cur], kv[cur] + C, 2 * C, B, Tc, Tc, C, H,
                                        (int64_t)rank * Tc, (int64_t)j * Tc, causal);
        if (s + 1 < size) INSITRA_CHECK(wait_pair(req));
    }
    insitra_attention_block_finish(out, lse, lse, l, B, Tc, C, H);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_cp_attention_backward(MPI_Comm comm, float *dqkv, float *scratch, const float *dout,
                                             const float *qkv, const float *out, const float *lse, int64_t B,
                                             int64_t Tc, int64_t C, int64_t H, bool causal)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    const int64_t n = B * Tc * 2 * C;
    float *kv[2] = {scratch, scratch + n}, *dkv[2] = {scratch + 2 * n, scratch + 3 * n};
    pack_kv(kv[0], qkv, B * Tc, C);
    memset(dkv[0], 0, (size_t)n * sizeof(float));
    memset(dqkv, 0, (size_t)(B * Tc * 3 * C) * sizeof(float));
    for (int s = 0; s < size; s++) {
        const int cur = s % 2, j = (rank - s + size) % size;
        MPI_Request req[2], dreq[2];
        if (s + 1 < size) INSITRA_CHECK(start_pair(comm, kv[cur], kv[1 - cur], n, TAG_KV, rank, size, req));
        insitra_attention_block_backward(dqkv, dkv[cur], dkv[cur] + C, dout, qkv, kv[cur], kv[cur] + C, 2 * C,
                                         out, lse, B, Tc, Tc, C, H, (int64_t)rank * Tc, (int64_t)j * Tc,
                                         causal);
        /* this block's dk, dv move on with it; after the last step they reach home */
        INSITRA_CHECK(start_pair(comm, dkv[cur], dkv[1 - cur], n, TAG_DKV, rank, size, dreq));
        if (s + 1 < size) INSITRA_CHECK(wait_pair(req));
        INSITRA_CHECK(wait_pair(dreq));
    }
    /* dkv[size % 2] now holds this rank's own block's dk, dv from every rank */
    float *own = dkv[size % 2];
    insitra_attention_block_scale(dqkv, 3 * C, B, Tc, C, H);
    insitra_attention_block_scale(own, 2 * C, B, Tc, C, H);
    for (int64_t i = 0; i < B * Tc; i++)
        memcpy(dqkv + i * 3 * C + C, own + i * 2 * C, (size_t)(2 * C) * sizeof(float));
    return INSITRA_STATUS_OK;
}
