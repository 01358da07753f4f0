/* The checkpoint format: names, root metadata and its checksum, shapes,
 * attributes, directory names (ckpt_format.h). */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_format.h"
#include "ckpt_io.h"
#include "config.h"
#include "crc32c.h"
#include "error.h"
#include "normalize.h"

const char *const insitra_ckpt_group[INSITRA_CKPT_GROUPS] = {"model", "optim/m", "optim/v"};

const char *const insitra_ckpt_norm_datasets[INSITRA_CKPT_NORM_DATASETS] = {
    "normalize/x_mean", "normalize/x_m2", "normalize/y_mean", "normalize/y_m2"};

const insitra_ckpt_table insitra_ckpt_tables[INSITRA_CKPT_TABLES] = {
    [INSITRA_CKPT_SAMPLER_STATE] = {"ranks/sampler_state", 4, true},
    [INSITRA_CKPT_SAMPLE_CURSOR] = {"ranks/sample_cursor", 1, false},
    [INSITRA_CKPT_SAMPLES_PUSHED] = {"ranks/samples_pushed", 1, false},
    [INSITRA_CKPT_SAMPLE_COUNT] = {"samples/count", 1, false},
};

#define META_CRC_ATTR "meta_crc32c"

char *insitra_ckpt_stored_config(const insitra_config *cfg)
{
    /* Without the paths and names of the environment (checkpoint.dir,
     * log.jsonl, checkpoint.deadline_env): they describe where a run writes,
     * not what it trains, and may hold any bytes a file name can; left out,
     * the stored YAML always reads back. */
    insitra_config *copy = malloc(sizeof *copy);
    if (!copy) return NULL;
    *copy = *cfg;
    copy->checkpoint.dir[0] = copy->log.jsonl[0] = copy->checkpoint.deadline_env[0] = '\0';
    const size_t len = insitra_config_dump_yaml(copy, NULL, 0) + 1;
    char *yaml = malloc(len);
    if (yaml) insitra_config_dump_yaml(copy, yaml, len);
    free(copy);
    return yaml;
}

/* ---- attributes ---- */

static insitra_status write_attr(hid_t obj, const char *name, hid_t file_type, hid_t mem_type,
                                 const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t err = attr < 0 ? -1 : H5Awrite(attr, mem_type, value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return err < 0 ? insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                       "checkpoint: cannot write attribute '%s'", name)
                   : INSITRA_STATUS_OK;
}

insitra_status insitra_ckpt_attr_write_i64(hid_t obj, const char *name, int64_t v)
{
    return write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

insitra_status insitra_ckpt_attr_write_u32(hid_t obj, const char *name, uint32_t v)
{
    return write_attr(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, &v);
}

insitra_status insitra_ckpt_attr_write_str(hid_t obj, const char *name, const char *text)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(text) + 1);
    H5Tset_strpad(type, H5T_STR_NULLTERM);
    insitra_status s = write_attr(obj, name, type, type, text);
    H5Tclose(type);
    return s;
}

static int is_scalar(hid_t attr)
{
    hid_t space = H5Aget_space(attr);
    const int ok = space >= 0 && H5Sget_simple_extent_npoints(space) == 1;
    if (space >= 0) H5Sclose(space);
    return ok;
}

int insitra_ckpt_attr_read_i64(hid_t obj, const char *name, int64_t *v)
{
    if (H5Aexists(obj, name) <= 0) return 0;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return -1;
    hid_t type = H5Aget_type(attr);
    /* HDF5 converts any integer width, signed or not, to the native int64. */
    const int ok = type >= 0 && H5Tget_class(type) == H5T_INTEGER && is_scalar(attr) &&
                   H5Aread(attr, H5T_NATIVE_INT64, v) >= 0;
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return ok ? 1 : -1;
}

char *insitra_ckpt_attr_read_str(hid_t obj, const char *name)
{
    if (H5Aexists(obj, name) <= 0) return NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return NULL;
    hid_t type = H5Aget_type(attr);
    char *text = NULL;
    if (type >= 0 && H5Tget_class(type) == H5T_STRING && is_scalar(attr)) {
        if (H5Tis_variable_str(type) > 0) {
            hid_t mem = H5Tcopy(H5T_C_S1);
            H5Tset_size(mem, H5T_VARIABLE);
            char *vl = NULL;
            if (H5Aread(attr, mem, &vl) >= 0 && vl) text = strdup(vl);
            if (vl) H5free_memory(vl);
            H5Tclose(mem);
        } else {
            const size_t size = H5Tget_size(type);
            text = size > 0 ? calloc(size + 1, 1) : NULL; /* +1: a terminator even if unpadded */
            if (text && H5Aread(attr, type, text) < 0) {
                free(text);
                text = NULL;
            }
        }
    }
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return text;
}

insitra_status insitra_ckpt_attr_read_crc(hid_t dset, const char *path, uint32_t *crc)
{
    int64_t v = -1;
    if (insitra_ckpt_attr_read_i64(dset, INSITRA_CKPT_CRC_ATTR, &v) != 1 || v < 0 || v > UINT32_MAX)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "'/%s' has no valid crc32c attribute",
                                 path[0] == '/' ? path + 1 : path);
    *crc = (uint32_t)v;
    return INSITRA_STATUS_OK;
}

/* ---- export files ---- */

int64_t insitra_export_format_of(hid_t file)
{
    int64_t v = -1;
    if (insitra_ckpt_attr_read_i64(file, INSITRA_EXPORT_FORMAT_ATTR, &v) == 1) return v >= 1 ? v : INT64_MAX;
    if (insitra_ckpt_attr_read_i64(file, "insitra_export", &v) == 1 && v == 1) return 0;
    return -1;
}

insitra_status insitra_export_attrs_write(hid_t file, const insitra_config *cfg, const char *yaml, int64_t step)
{
    /* int64, as every integer of a checkpoint; the dimensions spare a reader a YAML parser */
    const struct { const char *name; int64_t value; } ints[] = {
        {INSITRA_EXPORT_FORMAT_ATTR, INSITRA_EXPORT_FORMAT},
        {"step", step},
        {"seq_len", cfg->model.seq_len},
        {"in_features", cfg->model.in_features},
        {"out_features", cfg->model.out_features},
        {"d_model", cfg->model.d_model},
        {"n_layers", cfg->model.n_layers},
        {"n_heads", cfg->model.n_heads},
        {"causal", cfg->model.causal ? 1 : 0},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        INSITRA_CHECK(insitra_ckpt_attr_write_i64(file, ints[k].name, ints[k].value));
    INSITRA_CHECK(insitra_ckpt_attr_write_str(file, "insitra_version", insitra_version()));
    return insitra_ckpt_attr_write_str(file, "config", yaml);
}

/* ---- the root metadata ---- */

static const struct {
    const char *name;
    size_t offset;
} meta_ints[] = {
    {"insitra_format", offsetof(insitra_ckpt_meta, format)},
    {"step", offsetof(insitra_ckpt_meta, step)},
    {"world_size", offsetof(insitra_ckpt_meta, world_size)},
    {"dp", offsetof(insitra_ckpt_meta, dp)},
    {"tp", offsetof(insitra_ckpt_meta, tp)},
    {"zero_stage", offsetof(insitra_ckpt_meta, zero_stage)},
};
#define N_META_INTS (sizeof meta_ints / sizeof meta_ints[0])

static int64_t *meta_int(insitra_ckpt_meta *m, size_t k)
{
    return (int64_t *)((char *)m + meta_ints[k].offset);
}

uint32_t insitra_ckpt_meta_crc(const insitra_ckpt_meta *m)
{
    /* name=value lines, then the version and config with their lengths, so no
     * two different sets of attributes encode to the same bytes. */
    char line[128];
    uint32_t crc = 0;
    for (size_t k = 0; k < N_META_INTS; k++) {
        const int n = snprintf(line, sizeof line, "%s=%" PRId64 "\n", meta_ints[k].name,
                               *meta_int((insitra_ckpt_meta *)m, k));
        crc = insitra_crc32c(crc, line, (size_t)n);
    }
    const char *texts[2] = {m->version ? m->version : "", m->config ? m->config : ""};
    const char *names[2] = {"insitra_version", "config"};
    for (int k = 0; k < 2; k++) {
        const int n = snprintf(line, sizeof line, "%s=%zu\n", names[k], strlen(texts[k]));
        crc = insitra_crc32c(crc, line, (size_t)n);
        crc = insitra_crc32c(crc, texts[k], strlen(texts[k]));
    }
    return crc;
}

insitra_status insitra_ckpt_meta_write(hid_t file, const insitra_ckpt_meta *m)
{
    /* Attribute creation is collective in a parallel file: every attribute
     * is attempted even after a failure, and the first failure returned. */
    insitra_status first = INSITRA_STATUS_OK, s;
#define KEEP_FIRST(call) (s = (call), first = first == INSITRA_STATUS_OK ? s : first)
    for (size_t k = 0; k < N_META_INTS; k++)
        KEEP_FIRST(insitra_ckpt_attr_write_i64(file, meta_ints[k].name, *meta_int((insitra_ckpt_meta *)m, k)));
    KEEP_FIRST(insitra_ckpt_attr_write_str(file, "insitra_version", m->version));
    KEEP_FIRST(insitra_ckpt_attr_write_str(file, "config", m->config));
    KEEP_FIRST(insitra_ckpt_attr_write_u32(file, META_CRC_ATTR, insitra_ckpt_meta_crc(m)));
    /* Last: a file without it was not finished by its writer. */
    KEEP_FIRST(insitra_ckpt_attr_write_i64(file, "complete", 1));
#undef KEEP_FIRST
    return first;
}

void insitra_ckpt_meta_read(hid_t file, insitra_ckpt_meta *m)
{
    for (size_t k = 0; k < N_META_INTS; k++)
        if (insitra_ckpt_attr_read_i64(file, meta_ints[k].name, meta_int(m, k)) != 1)
            *meta_int(m, k) = -1;
    if (insitra_ckpt_attr_read_i64(file, "complete", &m->complete) != 1) m->complete = -1;
    if (insitra_ckpt_attr_read_i64(file, META_CRC_ATTR, &m->meta_crc) != 1 || m->meta_crc > UINT32_MAX)
        m->meta_crc = -1;
    m->version = insitra_ckpt_attr_read_str(file, "insitra_version");
    m->config = insitra_ckpt_attr_read_str(file, "config");
}

void insitra_ckpt_meta_free(insitra_ckpt_meta *m)
{
    free(m->version);
    free(m->config);
    m->version = m->config = NULL;
}

insitra_status insitra_ckpt_format_check(int64_t format)
{
    if (format >= INSITRA_CKPT_FORMAT_OLDEST && format <= INSITRA_CKPT_FORMAT) return INSITRA_STATUS_OK;
    return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint format version %" PRId64 "; this insitra reads "
                             "versions %d to %d", format, INSITRA_CKPT_FORMAT_OLDEST, INSITRA_CKPT_FORMAT);
}

insitra_status insitra_ckpt_meta_check(const insitra_ckpt_meta *m, const char **warning)
{
    *warning = NULL;
    if (m->format < 0)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "no insitra_format attribute: not an insitra "
                                                          "checkpoint, or a save interrupted early");
    INSITRA_CHECK(insitra_ckpt_format_check(m->format));
    if (m->complete != 1)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "incomplete: the 'complete' attribute is %s",
                                 m->complete < 0 ? "missing" : "not 1");
    if (m->format >= 2) {
        if (m->meta_crc < 0)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "no meta_crc32c attribute (format %" PRId64 ")",
                                     m->format);
        const uint32_t crc = insitra_ckpt_meta_crc(m);
        if (crc != (uint32_t)m->meta_crc)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                     "metadata checksum mismatch: the root attributes and stored "
                                     "configuration give %08" PRIx32 ", meta_crc32c says %08" PRIx32,
                                     crc, (uint32_t)m->meta_crc);
    } else {
        *warning = "format 1 checkpoint: no metadata checksum, so its step, rank layout and "
                   "configuration are unchecked";
    }
    for (size_t k = 1; k < N_META_INTS; k++)
        if (*meta_int((insitra_ckpt_meta *)m, k) < 0)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "attribute '%s' is missing or negative",
                                     meta_ints[k].name);
    if (m->world_size < 1 || m->dp < 1 || m->tp < 1 || m->dp * m->tp != m->world_size ||
        m->zero_stage > 3)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                 "inconsistent layout: world_size %" PRId64 ", dp %" PRId64 ", tp %" PRId64
                                 ", zero_stage %" PRId64,
                                 m->world_size, m->dp, m->tp, m->zero_stage);
    if (!m->config) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "no config attribute");
    return INSITRA_STATUS_OK;
}

/* ---- shapes ---- */

int insitra_ckpt_shape(hid_t dset, hsize_t dims[4])
{
    hid_t space = H5Dget_space(dset);
    const int n = space >= 0 && H5Sget_simple_extent_type(space) != H5S_NULL
                      ? H5Sget_simple_extent_ndims(space) : -1;
    if (n >= 0 && n <= 4) H5Sget_simple_extent_dims(space, dims, NULL);
    if (space >= 0) H5Sclose(space);
    return n >= 0 && n <= 4 ? n : -1;
}

/* ---- the feature statistics (/normalize) ---- */

void insitra_ckpt_norm_arrays(const insitra_normalize *n, double *a[INSITRA_CKPT_NORM_DATASETS],
                              int64_t len[INSITRA_CKPT_NORM_DATASETS])
{
    a[0] = n->x.mean, a[1] = n->x.m2, a[2] = n->y.mean, a[3] = n->y.m2;
    len[0] = len[1] = n->x.width;
    len[2] = len[3] = n->y.width;
}

insitra_status insitra_ckpt_norm_attrs_write(hid_t g, const insitra_normalize *n)
{
    INSITRA_CHECK(insitra_ckpt_attr_write_i64(g, INSITRA_CKPT_NORM_SAMPLES, n->samples));
    return insitra_ckpt_attr_write_i64(g, INSITRA_CKPT_NORM_FROZEN, n->frozen ? 1 : 0);
}

/* Every rank reads the whole group (the statistics are the same everywhere).
 * A file without it was written with data.normalize off, which the caller's
 * check of the stored configuration already refused. */
insitra_status insitra_ckpt_norm_read(hid_t f, insitra_normalize *n, int64_t file_slices)
{
    double *a[INSITRA_CKPT_NORM_DATASETS];
    int64_t len[INSITRA_CKPT_NORM_DATASETS];
    insitra_ckpt_norm_arrays(n, a, len);
    for (int k = 0; k < INSITRA_CKPT_NORM_DATASETS; k++) {
        const char *path = insitra_ckpt_norm_datasets[k];
        const hsize_t want[1] = {(hsize_t)len[k]};
        hid_t dset;
        INSITRA_CHECK(insitra_ckpt_open_dataset(f, path, INSITRA_CKPT_FLOAT64, 1, want, &dset));
        uint32_t stored = 0;
        insitra_status s = insitra_ckpt_attr_read_crc(dset, path, &stored);
        if (s == INSITRA_STATUS_OK && H5Dread(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, a[k]) < 0)
            s = insitra_ckpt_h5_error("cannot read '/%s'", path);
        H5Dclose(dset);
        INSITRA_CHECK(s);
        const uint32_t crc = insitra_crc32c(0, a[k], (size_t)len[k] * sizeof(double));
        if (crc != stored)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/%s' is %08x, the file says %08x", path,
                                     crc, stored);
    }
    hid_t g = H5Gopen2(f, INSITRA_CKPT_NORM_GROUP, H5P_DEFAULT);
    int64_t samples = -1, frozen = -1;
    if (g >= 0) {
        insitra_ckpt_attr_read_i64(g, INSITRA_CKPT_NORM_SAMPLES, &samples);
        insitra_ckpt_attr_read_i64(g, INSITRA_CKPT_NORM_FROZEN, &frozen);
        H5Gclose(g);
    }
    if (samples < 0 || (frozen != 0 && frozen != 1))
        return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                 "'/%s' lacks its attributes '%s' and '%s' (or they are out of range)",
                                 INSITRA_CKPT_NORM_GROUP, INSITRA_CKPT_NORM_SAMPLES, INSITRA_CKPT_NORM_FROZEN);
    /* each of the file_slices slices of a sample was counted: whole samples, then n's slices of them */
    if (file_slices < 1 || samples % file_slices != 0 || samples / file_slices > INT64_MAX / (n->slices * n->seq_len))
        return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                 "'/%s' counts %" PRId64
                                 " sample slices, not a whole number of samples of %" PRId64
                                 " slices (parallel.cp x parallel.tp) each",
                                 INSITRA_CKPT_NORM_GROUP, samples, file_slices);
    samples = samples / file_slices * n->slices;
    n->samples = samples;
    n->x.count = n->y.count = samples * n->seq_len;
    n->frozen = frozen == 1;
    /* what this process counted before the read is replaced by the file's state */
    insitra_normalize_clear(n, false);
    insitra_normalize_update_coef(n);
    return INSITRA_STATUS_OK;
}

int insitra_ckpt_dataset_kind(hid_t dset)
{
    hid_t type = H5Dget_type(dset);
    const H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    const size_t size = type >= 0 ? H5Tget_size(type) : 0;
    if (type >= 0) H5Tclose(type);
    return cls == H5T_FLOAT && size == 4     ? INSITRA_CKPT_FLOAT32
           : cls == H5T_FLOAT && size == 8   ? INSITRA_CKPT_FLOAT64
           : cls == H5T_INTEGER && size == 8 ? INSITRA_CKPT_INT64
           : cls == H5T_INTEGER && size == 4 ? INSITRA_CKPT_INT32
                                             : INSITRA_CKPT_OTHER;
}

const char *insitra_ckpt_kind_name(int kind)
{
    switch (kind) {
    case INSITRA_CKPT_FLOAT32: return "float32";
    case INSITRA_CKPT_FLOAT64: return "float64";
    case INSITRA_CKPT_INT64: return "a 64-bit integer";
    case INSITRA_CKPT_INT32: return "a 32-bit integer";
    default: return "another type";
    }
}

insitra_status insitra_ckpt_open_dataset(hid_t file, const char *path, int kind, int ndim, const hsize_t *want,
                                         hid_t *dset)
{
    /* H5Lexists fails on a missing intermediate group: test each level. */
    char prefix[256];
    *dset = -1;
    for (const char *slash = path;; slash++) {
        slash = strchr(slash, '/');
        snprintf(prefix, sizeof prefix, "%.*s", slash ? (int)(slash - path) : (int)strlen(path), path);
        if (H5Lexists(file, prefix, H5P_DEFAULT) <= 0)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "'/%s' is missing", path);
        if (!slash) break;
    }
    *dset = H5Dopen2(file, path, H5P_DEFAULT);
    if (*dset < 0) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "'/%s' is not a dataset", path);
    hsize_t dims[4] = {0};
    const int n = insitra_ckpt_shape(*dset, dims);
    insitra_status s = INSITRA_STATUS_OK;
    if (insitra_ckpt_dataset_kind(*dset) != kind) {
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "'/%s' type is not %s", path, insitra_ckpt_kind_name(kind));
    } else if (n != ndim || memcmp(dims, want, (size_t)ndim * sizeof *dims) != 0) {
        char have[96] = "", expect[96] = "";
        for (int k = 0, u = 0, v = 0; k < 4; k++) {
            if (k < n)
                u += snprintf(have + u, sizeof have - (size_t)u, "%s%llu", k ? ", " : "", (unsigned long long)dims[k]);
            if (k < ndim)
                v += snprintf(expect + v, sizeof expect - (size_t)v, "%s%llu", k ? ", " : "",
                              (unsigned long long)want[k]);
        }
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "'/%s' has shape (%s), expected (%s)", path, have, expect);
    }
    if (s != INSITRA_STATUS_OK) {
        H5Dclose(*dset);
        *dset = -1;
    }
    return s;
}

/* The rectangles of rank tp_rank's local elements [first, first + count) in
 * the whole tensor: the range cut into at most three rectangles of the local
 * tensor (a partial first row, whole rows, a partial last row), each cut
 * again by the window's row runs and moved to its global rows and columns.
 * Every split sends increasing local rows to increasing global rows and a
 * local row to one run of columns, so the rectangles come in the whole
 * tensor's row-major order, which is also the order of the local elements. */
void insitra_ckpt_tensor_rects(const insitra_tensor_desc *t, int64_t tp_rank, int64_t first, int64_t count,
                               void (*fn)(void *ctx, int64_t local, const int64_t start[2], const int64_t block[2]),
                               void *ctx)
{
    const int64_t K = t->shape[1], end = first + count;
    const insitra_tp_window w = insitra_tensor_tp_window(t, tp_rank);
    for (int64_t at = first; at < end;) {
        const int64_t row = at / K, col = at % K;
        const bool partial = col != 0 || end - at < K;
        const int64_t rows = partial ? 1 : (end - at) / K;
        const int64_t cols = partial ? (K - col < end - at ? K - col : end - at) : K;
        for (int i = 0; i < w.n; i++) {
            const int64_t a = row > w.local_row[i] ? row : w.local_row[i];
            const int64_t b = row + rows < w.local_row[i] + w.rows[i] ? row + rows : w.local_row[i] + w.rows[i];
            if (a >= b) continue;
            const int64_t start[2] = {w.global_row[i] + (a - w.local_row[i]), w.col0 + col};
            const int64_t block[2] = {b - a, cols};
            fn(ctx, a * K + col, start, block);
        }
        at += rows * cols;
    }
}

/* The selection being built: rectangles ORed into the file space. */
typedef struct select_ctx {
    hid_t space;
    int ndim;
    int64_t cols; /* of the whole tensor */
    H5S_seloper_t op;
    bool failed;
} select_ctx;

static void select_rect(void *ctx, int64_t local, const int64_t start[2], const int64_t block[2])
{
    (void)local;
    select_ctx *c = ctx;
    hsize_t s[2] = {(hsize_t)start[0], (hsize_t)start[1]}, b[2] = {(hsize_t)block[0], (hsize_t)block[1]};
    const hsize_t one[2] = {1, 1};
    if (c->ndim == 1) { /* a column vector: the rows are the elements */
        s[0] = (hsize_t)(start[0] * c->cols + start[1]);
        b[0] = (hsize_t)(block[0] * block[1]);
    }
    if (H5Sselect_hyperslab(c->space, c->op, s, NULL, one, b) < 0) c->failed = true;
    c->op = H5S_SELECT_OR;
}

insitra_status insitra_ckpt_select_tensor(hid_t dset, const insitra_tensor_desc *t, int64_t tp_rank, int64_t first,
                                          int64_t count, hid_t *file_space, hid_t *mem_space)
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
    select_ctx c = {.space = *file_space, .ndim = H5Sget_simple_extent_ndims(*file_space),
                    .cols = t->global_shape[1], .op = H5S_SELECT_SET};
    insitra_ckpt_tensor_rects(t, tp_rank, first, count, select_rect, &c);
    return c.failed ? insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot select a hyperslab")
                    : INSITRA_STATUS_OK;
}

insitra_status insitra_ckpt_select(hid_t dset, int64_t first, int64_t count, hid_t *file_space,
                                   hid_t *mem_space)
{
    /* the dataset as one whole, unsplit tensor */
    hsize_t dims[2] = {0, 1};
    hid_t space = H5Dget_space(dset);
    const int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (ndim == 1 || ndim == 2) H5Sget_simple_extent_dims(space, dims, NULL);
    if (space >= 0) H5Sclose(space);
    insitra_tensor_desc whole = {.ndim = ndim, .split = INSITRA_TP_REPLICATED};
    whole.shape[0] = whole.global_shape[0] = (int64_t)dims[0];
    whole.shape[1] = whole.global_shape[1] = (int64_t)dims[1];
    whole.numel = whole.shape[0] * whole.shape[1];
    return insitra_ckpt_select_tensor(dset, &whole, 0, first, count, file_space, mem_space);
}

/* The contribution being summed: a CRC register over the bytes up to `at`
 * (the whole tensor's), others' bytes counting as absent. */
typedef struct crc_ctx {
    const float *data; /* the local elements from first */
    int64_t first, cols;
    uint32_t crc;
    uint64_t at;
} crc_ctx;

static void crc_rect(void *ctx, int64_t local, const int64_t start[2], const int64_t block[2])
{
    crc_ctx *c = ctx;
    /* whole rows of the whole tensor are one contiguous run, else one run a
     * row, a row of the whole tensor apart */
    const bool whole_rows = block[1] == c->cols;
    const int64_t runs = whole_rows ? 1 : block[0], len = whole_rows ? block[0] * block[1] : block[1];
    const uint64_t begin = (uint64_t)(start[0] * c->cols + start[1]) * sizeof(float);
    const uint64_t bytes = (uint64_t)len * sizeof(float), stride = (uint64_t)c->cols * sizeof(float);
    const float *p = c->data + (local - c->first);
    c->crc = insitra_crc32c_combine(c->crc, insitra_crc32c(0, p, (size_t)bytes), begin + bytes - c->at);
    c->crc = insitra_ckpt_crc_rows(c->crc, p + len, runs - 1, (size_t)bytes, stride);
    c->at = begin + bytes + (uint64_t)(runs - 1) * stride;
}

uint32_t insitra_ckpt_tensor_crc(const insitra_tensor_desc *t, int64_t tp_rank, int64_t first, int64_t count,
                                 const float *data)
{
    crc_ctx c = {.data = data, .first = first, .cols = t->global_shape[1]};
    insitra_ckpt_tensor_rects(t, tp_rank, first, count, crc_rect, &c);
    const uint64_t total = (uint64_t)(t->global_shape[0] * t->global_shape[1]) * sizeof(float);
    return count > 0 ? insitra_crc32c_combine(c.crc, 0, total - c.at) : 0;
}

insitra_status insitra_ckpt_select_block(hid_t dset, int64_t row, int64_t rows, int64_t col, int64_t cols,
                                         hid_t *file_space, hid_t *mem_space)
{
    *file_space = H5Dget_space(dset);
    const hsize_t mem_dim = rows > 0 && cols > 0 ? (hsize_t)(rows * cols) : 1;
    *mem_space = H5Screate_simple(1, &mem_dim, NULL);
    if (*file_space < 0 || *mem_space < 0)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot create a dataspace");
    if (rows <= 0 || cols <= 0) {
        H5Sselect_none(*file_space);
        H5Sselect_none(*mem_space);
        return INSITRA_STATUS_OK;
    }
    /* HDF5 walks the block row by row, the order of the memory piece */
    const hsize_t start[2] = {(hsize_t)row, (hsize_t)col}, block[2] = {(hsize_t)rows, (hsize_t)cols};
    const hsize_t one[2] = {1, 1};
    if (H5Sselect_hyperslab(*file_space, H5S_SELECT_SET, start, NULL, one, block) < 0)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot select a hyperslab");
    return INSITRA_STATUS_OK;
}

int64_t insitra_ckpt_sample_rows(const int64_t *counts, int64_t world, int64_t slices, int64_t *bad_rank)
{
    *bad_rank = -1;
    if (slices < 1 || world % slices != 0) return -1;
    int64_t total = 0;
    for (int64_t r = 0; r < world; r++) {
        const int64_t lead = counts[r - r % slices];
        if (counts[r] < 0 || counts[r] != lead || counts[r] > (INT64_C(1) << 62) - total) {
            *bad_rank = r;
            return -1;
        }
        if (r % slices == 0) total += counts[r];
    }
    return total;
}

/* ---- the directory ---- */

int64_t insitra_ckpt_step_of(const char *name, const char *suffix)
{
    long long step;
    int used = 0;
    if (sscanf(name, "step-%8lld%n", &step, &used) != 1 || used != 13 || step < 0) return -1;
    return strcmp(name + used, suffix) == 0 ? step : -1;
}

void insitra_ckpt_file_name(char *out, size_t size, int64_t step)
{
    snprintf(out, size, "step-%08" PRId64 ".h5", step);
}

void insitra_ckpt_read_latest(const char *dir, char *out, size_t size)
{
    char path[4200];
    out[0] = '\0';
    snprintf(path, sizeof path, "%s/" INSITRA_CKPT_LATEST, dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(out, (int)size, f)) out[strcspn(out, "\r\n")] = '\0';
    fclose(f);
    if (insitra_ckpt_step_of(out, ".h5") < 0) out[0] = '\0';
}

static int compare_desc(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

int64_t insitra_ckpt_list_steps(const char *dir, const char *suffix, int64_t **steps)
{
    *steps = NULL;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int64_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const int64_t s = insitra_ckpt_step_of(e->d_name, suffix);
        if (s < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            int64_t *grown = realloc(*steps, (size_t)cap * sizeof **steps);
            if (!grown) {
                free(*steps);
                *steps = NULL;
                closedir(d);
                errno = ENOMEM;
                return -1;
            }
            *steps = grown;
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    if (n > 0) qsort(*steps, (size_t)n, sizeof **steps, compare_desc);
    return n;
}
