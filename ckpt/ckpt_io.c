/* Pieces of tensors, hyperslabs, CRC combination and attributes. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* The CRC32Cs cover the little-endian bytes a file holds, computed from memory. */
#error "insitra checkpoints are written on little-endian hosts only"
#endif
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "crc32c.h"
#include "error.h"

insitra_ckpt_piece insitra_ckpt_slot(const insitra_trainer *t, int64_t i, float *full, float *shard)
{
    const insitra_shard_layout *sl = &t->engine.zero.sl;
    const insitra_tensor_desc *d = &t->engine.model.layout.tensors[i];
    const int64_t first = sl->rank * sl->len[i];
    const int64_t count = insitra_shard_count(sl, i, d->numel, sl->rank);
    float *data = full ? full + d->offset + first : shard + sl->offset[i];
    return (insitra_ckpt_piece){.data = data, .first = count > 0 ? first : 0, .count = count};
}

insitra_status insitra_ckpt_select(hid_t dset, int64_t first, int64_t count, hid_t *file_space,
                                   hid_t *mem_space)
{
    *file_space = H5Dget_space(dset);
    const hsize_t mem_dim = count > 0 ? (hsize_t)count : 1;
    *mem_space = H5Screate_simple(1, &mem_dim, NULL);
    if (*file_space < 0 || *mem_space < 0)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot create a dataspace");
    if (count == 0) {
        H5Sselect_none(*file_space);
        H5Sselect_none(*mem_space);
        return INSITRA_STATUS_OK;
    }
    hsize_t dims[2] = {0, 1};
    const int ndim = H5Sget_simple_extent_ndims(*file_space);
    H5Sget_simple_extent_dims(*file_space, dims, NULL);
    const hsize_t cols = ndim == 2 ? dims[1] : 1;
    /* Up to three rectangles of rows: a partial first row, whole rows, a partial
     * last row. HDF5 walks a selection in file order, which is the order of the
     * flattened range, so it matches the contiguous memory piece. */
    const hsize_t end = (hsize_t)(first + count);
    hsize_t at = (hsize_t)first;
    H5S_seloper_t op = H5S_SELECT_SET;
    while (at < end) {
        const hsize_t row = at / cols, col = at % cols;
        hsize_t start[2], block[2], one[2] = {1, 1};
        if (col != 0 || end - at < cols) { /* within one row */
            const hsize_t n = (cols - col) < (end - at) ? cols - col : end - at;
            start[0] = row, start[1] = col, block[0] = 1, block[1] = n;
            at += n;
        } else { /* whole rows */
            const hsize_t rows = (end - at) / cols;
            start[0] = row, start[1] = 0, block[0] = rows, block[1] = cols;
            at += rows * cols;
        }
        if (ndim == 1) {
            start[0] = start[0] * cols + start[1];
            block[0] *= block[1];
        }
        if (H5Sselect_hyperslab(*file_space, op, start, NULL, one, block) < 0)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot select a hyperslab");
        op = H5S_SELECT_OR;
    }
    return INSITRA_STATUS_OK;
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

void insitra_ckpt_quiet_begin(insitra_ckpt_quiet *q)
{
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void insitra_ckpt_quiet_end(const insitra_ckpt_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->func, q->data); }

static insitra_status write_attr(hid_t obj, const char *name, hid_t type, const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t err = attr < 0 ? -1 : H5Awrite(attr, type, value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return err < 0 ? insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                       "checkpoint: cannot write attribute '%s'", name)
                   : INSITRA_STATUS_OK;
}

/* A scalar attribute converted to type. */
static insitra_status read_attr(hid_t obj, const char *name, hid_t type, void *v)
{
    hid_t attr = H5Aexists(obj, name) > 0 ? H5Aopen(obj, name, H5P_DEFAULT) : -1;
    herr_t err = attr < 0 ? -1 : H5Aread(attr, type, v);
    if (attr >= 0) H5Aclose(attr);
    return err < 0 ? insitra_error_set(INSITRA_STATUS_IO_ERROR, "attribute '%s' is missing or unreadable", name)
                   : INSITRA_STATUS_OK;
}

insitra_status insitra_ckpt_write_attr_i64(hid_t obj, const char *name, int64_t v)
{
    return write_attr(obj, name, H5T_NATIVE_INT64, &v);
}

insitra_status insitra_ckpt_write_attr_u32(hid_t obj, const char *name, uint32_t v)
{
    return write_attr(obj, name, H5T_NATIVE_UINT32, &v);
}

insitra_status insitra_ckpt_read_attr_u32(hid_t obj, const char *name, uint32_t *v)
{
    return read_attr(obj, name, H5T_NATIVE_UINT32, v);
}

insitra_status insitra_ckpt_write_attr_str(hid_t obj, const char *name, const char *text)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(text) + 1);
    insitra_status s = write_attr(obj, name, type, text);
    H5Tclose(type);
    return s;
}

insitra_status insitra_ckpt_read_attr_i64(hid_t obj, const char *name, int64_t *v)
{
    return read_attr(obj, name, H5T_NATIVE_INT64, v);
}

insitra_status insitra_ckpt_read_attr_str(hid_t obj, const char *name, char **text)
{
    *text = NULL;
    hid_t attr = H5Aexists(obj, name) > 0 ? H5Aopen(obj, name, H5P_DEFAULT) : -1;
    hid_t type = attr < 0 ? -1 : H5Aget_type(attr);
    const size_t size = type < 0 ? 0 : H5Tget_size(type);
    herr_t err = -1;
    if (size > 0 && H5Tget_class(type) == H5T_STRING && (*text = calloc(size + 1, 1)))
        err = H5Aread(attr, type, *text);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    if (err < 0) {
        free(*text);
        *text = NULL;
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "attribute '%s' is missing or unreadable", name);
    }
    return INSITRA_STATUS_OK;
}
