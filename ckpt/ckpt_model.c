/* The export file and the model reader (ckpt_model.h). */
#include "ckpt_model.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_format.h"
#include "ckpt_io.h"
#include "crc32c.h"
#include "error.h"

/* ---- writing ---- */

/* A dataset of dims holding data (bytes of it), with its crc32c. */
static insitra_status write_dataset(hid_t f, const char *path, hid_t file_type, hid_t mem_type, int ndim,
                                    const hsize_t *dims, const void *data, size_t bytes)
{
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dset = space < 0 ? -1 : H5Dcreate2(f, path, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    insitra_status s = INSITRA_STATUS_OK;
    if (dset < 0 || H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        s = insitra_ckpt_h5_error("cannot write '/%s'", path);
    if (s == INSITRA_STATUS_OK)
        s = insitra_ckpt_attr_write_u32(dset, INSITRA_CKPT_CRC_ATTR, insitra_crc32c(0, data, bytes));
    if (dset >= 0) H5Dclose(dset);
    if (space >= 0) H5Sclose(space);
    return s;
}

/* The statistics as a checkpoint holds them (ckpt_format.h). */
static insitra_status write_norm(hid_t f, const insitra_normalize *n)
{
    hid_t g = H5Gcreate2(f, INSITRA_CKPT_NORM_GROUP, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return insitra_ckpt_h5_error("cannot create group '/%s'", INSITRA_CKPT_NORM_GROUP);
    insitra_status s = insitra_ckpt_norm_attrs_write(g, n);
    H5Gclose(g);
    double *a[INSITRA_CKPT_NORM_DATASETS];
    int64_t len[INSITRA_CKPT_NORM_DATASETS];
    insitra_ckpt_norm_arrays(n, a, len);
    for (int k = 0; k < INSITRA_CKPT_NORM_DATASETS && s == INSITRA_STATUS_OK; k++) {
        const hsize_t dim = (hsize_t)len[k];
        s = write_dataset(f, insitra_ckpt_norm_datasets[k], H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &dim, a[k],
                          (size_t)len[k] * sizeof(double));
    }
    return s;
}

static insitra_status write_export(hid_t f, const insitra_config *cfg, const char *yaml,
                                   const insitra_param_layout *layout, const float *params, int64_t step,
                                   const insitra_normalize *norm)
{
    hid_t g = H5Gcreate2(f, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return insitra_ckpt_h5_error("cannot create group '/model'");
    H5Gclose(g);
    char path[128];
    for (int64_t i = 0; i < layout->num_tensors; i++) {
        const insitra_tensor_desc *d = &layout->tensors[i];
        snprintf(path, sizeof path, "model/%s", d->name);
        const hsize_t dims[2] = {(hsize_t)d->global_shape[0], (hsize_t)d->global_shape[1]};
        INSITRA_CHECK(write_dataset(f, path, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, d->ndim, dims, params + d->offset,
                                    (size_t)d->numel * sizeof(float)));
    }
    if (norm && norm->mode != INSITRA_NORMALIZE_OFF) INSITRA_CHECK(write_norm(f, norm));
    return insitra_export_attrs_write(f, cfg, yaml, step);
}

insitra_status insitra_export_write(const char *path, const insitra_config *cfg,
                                    const insitra_param_layout *layout, const float *params, int64_t step,
                                    const insitra_normalize *norm)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "export_save: path of %zu characters is too long",
                                 strlen(path));
    char *yaml = insitra_ckpt_stored_config(cfg);
    if (!yaml) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "export_save: out of memory");
    insitra_ckpt_quiet quiet;
    insitra_ckpt_quiet_begin(&quiet);
    insitra_status s = INSITRA_STATUS_OK;
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) s = insitra_ckpt_h5_error("cannot create '%s'", tmp);
    if (s == INSITRA_STATUS_OK) s = write_export(f, cfg, yaml, layout, params, step, norm);
    if (f >= 0 && H5Fclose(f) < 0 && s == INSITRA_STATUS_OK) s = insitra_ckpt_h5_error("cannot close '%s'", tmp);
    insitra_ckpt_quiet_end(&quiet);
    free(yaml);
    /* A reader never sees a half-written export under its name. */
    if (s == INSITRA_STATUS_OK && rename(tmp, path) != 0)
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "export_save: cannot rename '%s' to '%s': %s", tmp, path,
                              strerror(errno));
    if (s != INSITRA_STATUS_OK) remove(tmp);
    return s == INSITRA_STATUS_OK ? s : insitra_error_prefix(s, "export '%s': ", path);
}

/* ---- reading ---- */

/* A dataset of kind and shape into data (bytes), its crc32c checked when it
 * has one (required: the parameters). */
static insitra_status read_dataset(hid_t f, const char *path, int kind, hid_t mem_type, int ndim,
                                   const hsize_t *want, void *data, size_t bytes, bool crc_required)
{
    hid_t dset;
    INSITRA_CHECK(insitra_ckpt_open_dataset(f, path, kind, ndim, want, &dset));
    insitra_status s = INSITRA_STATUS_OK;
    if (H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        s = insitra_ckpt_h5_error("cannot read '/%s'", path);
    uint32_t stored = 0;
    if (s == INSITRA_STATUS_OK && (crc_required || H5Aexists(dset, INSITRA_CKPT_CRC_ATTR) > 0)) {
        s = insitra_ckpt_attr_read_crc(dset, path, &stored);
        const uint32_t crc = insitra_crc32c(0, data, bytes);
        if (s == INSITRA_STATUS_OK && crc != stored)
            s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/%s' is %08x, the file says %08x", path, crc,
                                  stored);
    }
    H5Dclose(dset);
    return s;
}

/* The kind of file, its stored configuration and step; checkpoints must be
 * complete and their metadata checksum right. */
static insitra_status read_header(hid_t f, insitra_model_file *out)
{
    const int64_t format = insitra_export_format_of(f);
    char *yaml = NULL;
    insitra_status s = INSITRA_STATUS_OK;
    if (format >= 0) { /* 0: insitra-ckpt's exports before format versions, read the same way */
        out->is_export = true;
        if (format > INSITRA_EXPORT_FORMAT)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "export format version %" PRId64
                                     "; this insitra reads versions 1 to %d", format, INSITRA_EXPORT_FORMAT);
        if (insitra_ckpt_attr_read_i64(f, "step", &out->step) != 1) out->step = -1;
        yaml = insitra_ckpt_attr_read_str(f, "config");
        if (!yaml) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "no config attribute");
    } else {
        insitra_ckpt_meta meta = {0};
        insitra_ckpt_meta_read(f, &meta);
        const char *warning;
        s = insitra_ckpt_meta_check(&meta, &warning);
        if (s != INSITRA_STATUS_OK && meta.format < 0)
            s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "neither an insitra export (no '%s' attribute) nor a "
                                  "checkpoint (no 'insitra_format' attribute)", INSITRA_EXPORT_FORMAT_ATTR);
        out->step = meta.step;
        yaml = meta.config;
        meta.config = NULL;
        insitra_ckpt_meta_free(&meta);
        if (s != INSITRA_STATUS_OK) {
            free(yaml);
            return s;
        }
    }
    insitra_config *cfg = NULL;
    s = insitra_config_create(&cfg);
    if (s == INSITRA_STATUS_OK) {
        s = insitra_config_load_yaml_string(cfg, yaml);
        if (s != INSITRA_STATUS_OK) s = insitra_error_prefix(INSITRA_STATUS_IO_ERROR, "stored configuration: ");
        else out->cfg = *cfg;
    }
    insitra_config_free(cfg);
    free(yaml);
    return s;
}

static insitra_status read_contents(hid_t f, insitra_model_file *out)
{
    INSITRA_CHECK(read_header(f, out));
    const insitra_model_dims dims = insitra_config_model_dims(&out->cfg);
    insitra_param_layout layout;
    INSITRA_CHECK(insitra_param_layout_create(&layout, &dims));
    insitra_status s = INSITRA_STATUS_OK;
    out->num_params = layout.total;
    out->params = malloc((size_t)layout.total * sizeof(float));
    if (!out->params)
        s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "out of memory for %" PRId64 " parameters", layout.total);
    char path[128];
    for (int64_t i = 0; i < layout.num_tensors && s == INSITRA_STATUS_OK; i++) {
        const insitra_tensor_desc *d = &layout.tensors[i];
        snprintf(path, sizeof path, "model/%s", d->name);
        const hsize_t want[2] = {(hsize_t)d->global_shape[0], (hsize_t)d->global_shape[1]};
        s = read_dataset(f, path, INSITRA_CKPT_FLOAT32, H5T_NATIVE_FLOAT, d->ndim, want, out->params + d->offset,
                         (size_t)d->numel * sizeof(float), true);
    }
    insitra_param_layout_free(&layout);
    /* the feature maps as the trainer that wrote the file made them: the
     * residual map from the stored configuration, the statistics from
     * /normalize, which data.normalize on requires */
    if (s == INSITRA_STATUS_OK) {
        s = insitra_normalize_create(&out->norm, &out->cfg, 1);
        if (s != INSITRA_STATUS_OK) s = insitra_error_prefix(INSITRA_STATUS_IO_ERROR, "stored configuration: ");
    }
    if (s == INSITRA_STATUS_OK && out->norm.mode != INSITRA_NORMALIZE_OFF)
        s = insitra_ckpt_norm_read(f, &out->norm, insitra_config_token_slices(&out->cfg));
    return s;
}

insitra_status insitra_model_file_read(const char *path, insitra_model_file *out)
{
    memset(out, 0, sizeof *out);
    insitra_ckpt_quiet quiet;
    insitra_ckpt_quiet_begin(&quiet);
    insitra_status s = INSITRA_STATUS_OK;
    hid_t f = H5Fis_hdf5(path) > 0 ? H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
    if (f < 0)
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot open it as HDF5 (%s)",
                              access(path, R_OK) == 0 ? "truncated, or not an HDF5 file" : strerror(errno));
    if (s == INSITRA_STATUS_OK) s = read_contents(f, out);
    if (f >= 0) H5Fclose(f);
    insitra_ckpt_quiet_end(&quiet);
    if (s != INSITRA_STATUS_OK) {
        insitra_model_file_free(out);
        return insitra_error_prefix(s, "'%s': ", path);
    }
    return INSITRA_STATUS_OK;
}

void insitra_model_file_free(insitra_model_file *f)
{
    free(f->params);
    insitra_normalize_free(&f->norm);
    f->params = NULL;
}
