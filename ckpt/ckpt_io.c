/* Pieces of tensors, hyperslabs, CRC combination, error agreement (ckpt_io.h). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* The CRC32Cs cover the little-endian bytes a file holds, computed from memory. */
#error "insitra checkpoints are written on little-endian hosts only"
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_io.h"
#include "crc32c.h"
#include "error.h"

insitra_ckpt_piece insitra_ckpt_slot(const insitra_ckpt_state *st, int64_t i, float *full,
                                     float *shard)
{
    const insitra_shard_layout *sl = st->shards;
    const insitra_tensor_desc *d = &st->layout->tensors[i];
    const int64_t first = sl->rank * sl->len[i];
    const int64_t count = insitra_shard_count(sl, i, d->numel, sl->rank);
    float *data = full ? full + d->offset + first : shard + sl->offset[i];
    return (insitra_ckpt_piece){.data = data, .first = count > 0 ? first : 0, .count = count};
}

bool insitra_ckpt_slot_written(const insitra_ckpt_state *st, int64_t i)
{
    return st->tp_rank == 0 || st->layout->tensors[i].split != INSITRA_TP_REPLICATED;
}

void insitra_ckpt_group_buffers(const insitra_ckpt_state *st, int g, float **full, float **shard)
{
    /* Parameters are whole where the view says so; the moments at stage 0. */
    if (g == 0) {
        *full = st->params;
        *shard = st->param_shard;
    } else {
        float *moments = g == 1 ? st->m : st->v;
        *full = st->zero_stage == 0 ? moments : NULL;
        *shard = moments;
    }
}

insitra_status insitra_ckpt_combine_crcs(const insitra_comm *c, uint32_t *crc,
                                         const uint64_t *bytes, int64_t n)
{
    uint64_t *mine = calloc((size_t)(2 * n), sizeof(uint64_t));
    uint64_t *all = malloc((size_t)(2 * n * c->size) * sizeof(uint64_t));
    if (!mine || !all) {
        free(mine);
        free(all);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory for CRCs");
    }
    for (int64_t k = 0; k < n; k++) {
        mine[2 * k] = crc[k];
        mine[2 * k + 1] = bytes[k];
    }
    int rc = MPI_Allgather(mine, (int)(2 * n), MPI_UINT64_T, all, (int)(2 * n), MPI_UINT64_T,
                           c->comm);
    if (rc == MPI_SUCCESS) {
        for (int64_t k = 0; k < n; k++) {
            uint32_t total = 0;
            for (int r = 0; r < c->size; r++) {
                const uint64_t *e = all + (size_t)r * 2 * n + 2 * k;
                total = insitra_crc32c_combine(total, (uint32_t)e[0], e[1]);
            }
            crc[k] = total;
        }
    }
    free(mine);
    free(all);
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK
                             : insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                                 "checkpoint: MPI_Allgather of CRCs failed");
}

uint32_t insitra_ckpt_crc_rows(uint32_t acc, const void *rows, int64_t n, size_t piece, uint64_t stride)
{
    const unsigned char *at = rows;
    /* Horner's rule: each earlier row moves one stride further from the end */
    for (int64_t i = 0; i < n; i++, at += piece)
        acc = insitra_crc32c_combine(acc, insitra_crc32c(0, at, piece), stride);
    return acc;
}

void insitra_ckpt_quiet_begin(insitra_ckpt_quiet *q)
{
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void insitra_ckpt_quiet_end(const insitra_ckpt_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->func, q->data); }

insitra_status insitra_ckpt_agree(const insitra_comm *c, insitra_status local)
{
    insitra_status s = insitra_comm_agree(c, local);
    if (s == INSITRA_STATUS_OK || s == INSITRA_STATUS_MPI_ERROR) return s;
    /* Only the first failing rank holds a status other than REMOTE_ERROR. */
    int code = s == INSITRA_STATUS_REMOTE_ERROR ? 0 : (int)s;
    if (MPI_Allreduce(MPI_IN_PLACE, &code, 1, MPI_INT, MPI_MAX, c->comm) != MPI_SUCCESS || code == 0)
        return s;
    return s == INSITRA_STATUS_REMOTE_ERROR ? insitra_error_prefix((insitra_status)code, "%s", "") : s;
}

/* H5Ewalk2 callback, walking upward: the first entry is the innermost one,
 * where MPI-IO or the POSIX driver put the operating system's reason. */
static herr_t innermost(unsigned n, const H5E_error2_t *e, void *out)
{
    if (n == 0 && e->desc) snprintf(out, 512, "%s", e->desc);
    return 0;
}

insitra_status insitra_ckpt_h5_error(const char *fmt, ...)
{
    char what[512], reason[512] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, reason);
    return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: %s%s%s", what, reason[0] ? ": " : "",
                             reason);
}
