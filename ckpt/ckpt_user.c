/* The caller's arrays under /user (ckpt_user.h). */
#include "ckpt_user.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_format.h"
#include "ckpt_io.h"
#include "crc32c.h"
#include "error.h"

size_t insitra_ckpt_type_size(int type)
{
    return type == INSITRA_TYPE_FLOAT64 || type == INSITRA_TYPE_INT64 ? 8 : 4;
}

hid_t insitra_ckpt_type_file(int type)
{
    const hid_t t[] = {H5T_IEEE_F32LE, H5T_IEEE_F64LE, H5T_STD_I32LE, H5T_STD_I64LE};
    return t[type];
}

hid_t insitra_ckpt_type_mem(int type)
{
    const hid_t t[] = {H5T_NATIVE_FLOAT, H5T_NATIVE_DOUBLE, H5T_NATIVE_INT32, H5T_NATIVE_INT64};
    return t[type];
}

int insitra_ckpt_type_kind(int type)
{
    const int k[] = {INSITRA_CKPT_FLOAT32, INSITRA_CKPT_FLOAT64, INSITRA_CKPT_INT32, INSITRA_CKPT_INT64};
    return k[type];
}

int64_t insitra_ckpt_array_numel(const insitra_ckpt_array *a)
{
    int64_t n = 1;
    for (int k = 0; k < a->ndim; k++) n *= a->global[k];
    return n;
}

static int64_t piece_numel(const insitra_ckpt_array *a)
{
    int64_t n = 1;
    for (int k = 0; k < a->ndim; k++) n *= a->count[k];
    return n;
}

/* ---- every rank holds the same list ---- */

/* What must agree: names, types, shapes, in order (not the pieces). */
static uint64_t list_hash(const insitra_ckpt_state *st)
{
    uint64_t h = 1469598103934665603ull;
#define MIX(p, n) for (size_t i_ = 0; i_ < (n); i_++) h = (h ^ ((const unsigned char *)(p))[i_]) * 1099511628211ull
    MIX(&st->n_arrays, sizeof st->n_arrays);
    for (int64_t k = 0; k < st->n_arrays; k++) {
        const insitra_ckpt_array *a = &st->arrays[k];
        MIX(a->name, strlen(a->name) + 1);
        MIX(&a->type, sizeof a->type);
        MIX(&a->ndim, sizeof a->ndim);
        MIX(a->global, (size_t)a->ndim * sizeof a->global[0]);
    }
#undef MIX
    return h;
}

static void shape_text(const insitra_ckpt_array *a, char *out, size_t size)
{
    int used = snprintf(out, size, "(");
    for (int k = 0; k < a->ndim; k++)
        used += snprintf(out + used, size - (size_t)used, "%s%" PRId64, k ? ", " : "", a->global[k]);
    snprintf(out + used, size - (size_t)used, ")");
}

/* The first difference between this rank's list and rank 0's. */
static insitra_status compare_lists(const insitra_ckpt_state *st, const insitra_ckpt_array *root, int64_t n_root)
{
    const int rank = st->world->rank;
    for (int64_t k = 0; k < n_root && k < st->n_arrays; k++) {
        const insitra_ckpt_array *a = &st->arrays[k], *r = &root[k];
        if (strcmp(a->name, r->name) != 0)
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "checkpoint arrays: the %" PRId64 "th array added is '%s' on rank %d but "
                                     "'%s' on rank 0; every rank adds the same arrays in the same order",
                                     k + 1, a->name, rank, r->name);
        char mine[160], theirs[160];
        shape_text(a, mine, sizeof mine);
        shape_text(r, theirs, sizeof theirs);
        if (a->type != r->type || a->ndim != r->ndim || strcmp(mine, theirs) != 0)
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "checkpoint array '%s': type %d, global shape %s on rank %d but type %d, "
                                     "global shape %s on rank 0",
                                     a->name, a->type, mine, rank, r->type, theirs);
    }
    if (st->n_arrays == n_root) return INSITRA_STATUS_OK;
    return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                             "checkpoint arrays: rank %d added %" PRId64 " arrays, rank 0 %" PRId64, rank,
                             st->n_arrays, n_root);
}

static insitra_status check_lists(const insitra_ckpt_state *st)
{
    uint64_t h[2] = {list_hash(st), 0};
    h[1] = ~h[0];
    if (MPI_Allreduce(MPI_IN_PLACE, h, 2, MPI_UINT64_T, MPI_MAX, st->world->comm) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "checkpoint arrays: MPI_Allreduce failed");
    if (h[0] == ~h[1]) return INSITRA_STATUS_OK;
    int64_t n_root = st->n_arrays;
    MPI_Bcast(&n_root, 1, MPI_INT64_T, 0, st->world->comm);
    insitra_ckpt_array *root = malloc((size_t)(n_root > 0 ? n_root : 1) * sizeof *root);
    if (st->world->rank == 0 && root) memcpy(root, st->arrays, (size_t)n_root * sizeof *root);
    /* a rank out of memory still joins the broadcast (into a dummy), then fails */
    insitra_ckpt_array dummy;
    for (int64_t k = 0; k < n_root; k++)
        MPI_Bcast(root ? &root[k] : &dummy, (int)sizeof dummy, MPI_BYTE, 0, st->world->comm);
    insitra_status s = root ? compare_lists(st, root, n_root)
                            : insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint arrays: out of memory");
    free(root);
    /* rank 0 never differs from itself: some other rank names the difference */
    s = insitra_ckpt_agree(st->world, s);
    return s != INSITRA_STATUS_OK ? s
                                  : insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                                      "checkpoint arrays: the ranks added different arrays");
}

/* ---- the runs of a piece, their CRCs, the tiling ---- */

/* One contiguous run of a piece: its first element in the global array, its
 * length, its CRC32C, and the rank that holds it. */
typedef struct { int64_t at, len, crc, rank; } run;

static int64_t count_runs(const insitra_ckpt_array *a, int rank)
{
    if (a->ndim == 0) return rank == 0 ? 1 : 0;
    const int64_t n = piece_numel(a);
    return n == 0 ? 0 : n / a->count[a->ndim - 1];
}

/* The runs of this rank's piece (rows of the last dimension), in memory order. */
static void list_runs(const insitra_ckpt_array *a, int rank, run *out)
{
    const size_t es = insitra_ckpt_type_size(a->type);
    if (a->ndim == 0) {
        if (rank == 0) out[0] = (run){0, 1, insitra_crc32c(0, a->data, es), 0};
        return;
    }
    const int d = a->ndim;
    int64_t idx[INSITRA_ARRAY_MAX_DIMS] = {0};
    const int64_t n = count_runs(a, rank);
    for (int64_t r = 0; r < n; r++) {
        int64_t at = 0, mem = 0;
        for (int k = 0; k < d; k++) {
            at = at * a->global[k] + a->offset[k] + idx[k];
            mem = mem * a->mem_shape[k] + a->mem_offset[k] + idx[k];
        }
        const int64_t len = a->count[d - 1];
        out[r] = (run){at, len, insitra_crc32c(0, (const char *)a->data + (size_t)mem * es, (size_t)len * es), rank};
        for (int k = d - 2; k >= 0; k--) { /* the next row: an odometer over all but the last dimension */
            if (++idx[k] < a->count[k]) break;
            idx[k] = 0;
        }
    }
}

static int by_position(const void *x, const void *y)
{
    const run *a = x, *b = y;
    return (a->at > b->at) - (a->at < b->at);
}

/* Rank 0: the runs in order must tile [0, numel); their combined CRC. */
static insitra_status tile(const insitra_ckpt_array *a, run *runs, int64_t n, uint32_t *crc)
{
    qsort(runs, (size_t)n, sizeof *runs, by_position);
    const size_t es = insitra_ckpt_type_size(a->type);
    const int64_t numel = insitra_ckpt_array_numel(a);
    int64_t next = 0;
    uint32_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        if (runs[i].at < next)
            return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                     "checkpoint array '%s': the pieces of ranks %" PRId64 " and %" PRId64
                                     " overlap at element %" PRId64 " (row-major); check offsets and counts",
                                     a->name, runs[i - 1].rank, runs[i].rank, runs[i].at);
        if (runs[i].at > next) break;
        c = insitra_crc32c_combine(c, (uint32_t)runs[i].crc, (uint64_t)runs[i].len * es);
        next = runs[i].at + runs[i].len;
    }
    if (next != numel)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint array '%s': element %" PRId64 " (row-major) of %" PRId64
                                 " is in no rank's piece; the pieces must cover the global array",
                                 a->name, next, numel);
    *crc = c;
    return INSITRA_STATUS_OK;
}

/* Collective: the CRC32C of array a as the ranks' pieces hold it now. */
static insitra_status array_crc(const insitra_ckpt_state *st, const insitra_ckpt_array *a, uint32_t *crc)
{
    const insitra_comm *w = st->world;
    const int64_t mine = count_runs(a, w->rank);
    run *runs = malloc((size_t)(mine > 0 ? mine : 1) * sizeof *runs);
    int *counts = w->rank == 0 ? calloc((size_t)w->size, sizeof *counts) : NULL;
    int *displs = w->rank == 0 ? calloc((size_t)w->size, sizeof *displs) : NULL;
    insitra_status s = INSITRA_STATUS_OK;
    if (!runs || (w->rank == 0 && (!counts || !displs)))
        s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint array '%s': out of memory", a->name);
    else if (mine > INT_MAX / 4)
        s = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint array '%s': %" PRId64 " rows on rank %d "
                              "are more than one checksum gather takes", a->name, mine, w->rank);
    INSITRA_CHECK(insitra_ckpt_agree(w, s));
    list_runs(a, w->rank, runs);
    int words = (int)(4 * mine);
    MPI_Gather(&words, 1, MPI_INT, counts, 1, MPI_INT, 0, w->comm);
    int64_t total = 0;
    for (int r = 0; w->rank == 0 && r < w->size; r++) {
        displs[r] = (int)total;
        total += counts[r];
    }
    run *all = NULL;
    if (w->rank == 0 && total <= INT_MAX && !(all = malloc((size_t)(total > 0 ? total : 4) * sizeof(int64_t))))
        s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint array '%s': out of memory", a->name);
    else if (w->rank == 0 && total > INT_MAX)
        s = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "checkpoint array '%s': more rows than one "
                              "checksum gather takes", a->name);
    s = insitra_ckpt_agree(w, s);
    if (s == INSITRA_STATUS_OK &&
        MPI_Gatherv(runs, words, MPI_INT64_T, all, counts, displs, MPI_INT64_T, 0, w->comm) != MPI_SUCCESS)
        s = insitra_error_set(INSITRA_STATUS_MPI_ERROR, "checkpoint array '%s': MPI_Gatherv failed", a->name);
    uint32_t c = 0;
    insitra_status local = s;
    if (s == INSITRA_STATUS_OK && w->rank == 0) local = tile(a, all, total / 4, &c);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_agree(w, local);
    if (s == INSITRA_STATUS_OK) MPI_Bcast(&c, 1, MPI_UINT32_T, 0, w->comm);
    *crc = c;
    free(all);
    free(runs);
    free(counts);
    free(displs);
    return s;
}

insitra_status insitra_ckpt_arrays_check(const insitra_ckpt_state *st, uint32_t *crc)
{
    INSITRA_CHECK(check_lists(st)); /* also with no arrays: a rank with some must not wait alone */
    for (int64_t k = 0; k < st->n_arrays; k++) INSITRA_CHECK(array_crc(st, &st->arrays[k], &crc[k]));
    return INSITRA_STATUS_OK;
}

insitra_status insitra_ckpt_array_select(const insitra_ckpt_array *a, hid_t dset, bool writing, int rank,
                                         hid_t *file_space, hid_t *mem_space, bool *empty)
{
    *file_space = *mem_space = -1;
    *empty = a->ndim == 0 ? writing && rank != 0 : piece_numel(a) == 0;
    if (*empty) return INSITRA_STATUS_OK;
    *file_space = H5Dget_space(dset);
    if (a->ndim == 0) {
        *mem_space = H5Screate(H5S_SCALAR);
        return *file_space >= 0 && *mem_space >= 0
                   ? INSITRA_STATUS_OK
                   : insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot create a dataspace");
    }
    hsize_t fstart[INSITRA_ARRAY_MAX_DIMS], mdims[INSITRA_ARRAY_MAX_DIMS], mstart[INSITRA_ARRAY_MAX_DIMS],
        count[INSITRA_ARRAY_MAX_DIMS];
    for (int k = 0; k < a->ndim; k++) {
        fstart[k] = (hsize_t)a->offset[k];
        mdims[k] = (hsize_t)a->mem_shape[k];
        mstart[k] = (hsize_t)a->mem_offset[k];
        count[k] = (hsize_t)a->count[k];
    }
    *mem_space = H5Screate_simple(a->ndim, mdims, NULL);
    if (*file_space < 0 || *mem_space < 0 ||
        H5Sselect_hyperslab(*file_space, H5S_SELECT_SET, fstart, NULL, count, NULL) < 0 ||
        H5Sselect_hyperslab(*mem_space, H5S_SELECT_SET, mstart, NULL, count, NULL) < 0)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint array '%s': cannot select its piece", a->name);
    return INSITRA_STATUS_OK;
}

/* This rank's piece of array a from the file, and the stored CRC. */
static insitra_status read_piece(hid_t f, const insitra_ckpt_array *a, int rank, uint32_t *stored)
{
    char path[128];
    snprintf(path, sizeof path, INSITRA_CKPT_USER_GROUP "/%s", a->name);
    const hsize_t want[INSITRA_ARRAY_MAX_DIMS] = {(hsize_t)a->global[0], (hsize_t)a->global[1],
                                                  (hsize_t)a->global[2], (hsize_t)a->global[3]};
    hid_t dset;
    insitra_status s = insitra_ckpt_open_dataset(f, path, insitra_ckpt_type_kind(a->type), a->ndim, want, &dset);
    if (s != INSITRA_STATUS_OK) return insitra_error_prefix(s, "checkpoint array '%s': ", a->name);
    s = insitra_ckpt_attr_read_crc(dset, path, stored);
    hid_t fspace = -1, mspace = -1;
    bool empty = true;
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_array_select(a, dset, false, rank, &fspace, &mspace, &empty);
    if (s == INSITRA_STATUS_OK && !empty &&
        H5Dread(dset, insitra_ckpt_type_mem(a->type), mspace, fspace, H5P_DEFAULT, a->data) < 0)
        s = insitra_ckpt_h5_error("cannot read '/%s'", path);
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    H5Dclose(dset);
    return s;
}

insitra_status insitra_ckpt_arrays_read(const insitra_ckpt_state *st, hid_t f)
{
    for (int64_t k = 0; k < st->n_arrays; k++) {
        const insitra_ckpt_array *a = &st->arrays[k];
        uint32_t stored = 0, crc = 0;
        INSITRA_CHECK(insitra_ckpt_agree(st->world, read_piece(f, a, st->world->rank, &stored)));
        /* a scalar: every rank read the whole of it */
        insitra_status s = a->ndim == 0 ? (crc = insitra_crc32c(0, a->data, insitra_ckpt_type_size(a->type)),
                                           INSITRA_STATUS_OK)
                                        : array_crc(st, a, &crc);
        INSITRA_CHECK(s);
        s = crc == stored ? INSITRA_STATUS_OK
                          : insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/" INSITRA_CKPT_USER_GROUP
                                              "/%s' is %08x, the file says %08x", a->name, crc, stored);
        INSITRA_CHECK(insitra_ckpt_agree(st->world, s));
    }
    return INSITRA_STATUS_OK;
}
