/*
 * insitra-ckpt: looks into checkpoint files (docs/checkpoint.md) from a
 * login node or a laptop, without MPI.
 *
 *   insitra-ckpt list DIR          the checkpoints of a directory (attributes only)
 *   insitra-ckpt info FILE         root attributes, model, tensors, optimizer, samples
 *   insitra-ckpt verify FILE       completeness, shapes and every CRC32C
 *   insitra-ckpt export FILE OUT   the model weights alone, for analysis or inference
 *
 * Files are opened with HDF5's default (POSIX) driver: no MPI_Init, no
 * mpiexec. Data is read a piece at a time (CHUNK_FLOATS), so a checkpoint
 * larger than memory verifies and exports too. Exit status: 0 success (a
 * valid file for verify), 1 a problem with a file, 2 a usage error.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "config.h"
#include "crc32c.h"
#include "insitra.h"
#include "model.h"

enum { EXIT_VALID = 0, EXIT_PROBLEM = 1, EXIT_USAGE = 2 };
enum { FORMAT_VERSION = 1, CHUNK_FLOATS = 1 << 20, MAX_DEPTH = 16, PATH_LEN = 1024 };

static int usage(FILE *out)
{
    fprintf(out,
            "usage: insitra-ckpt list DIR\n"
            "       insitra-ckpt info FILE\n"
            "       insitra-ckpt verify FILE\n"
            "       insitra-ckpt export FILE OUT\n"
            "\n"
            "  list    every step-*.h5 and *.tmp file of a checkpoint directory: step, size,\n"
            "          whether `latest` names it, complete / incomplete / temporary\n"
            "  info    format, version, step, the writer's ranks and ZeRO stage, the model's\n"
            "          dimensions from the stored configuration, tensors and parameters,\n"
            "          optimizer state and stored samples\n"
            "  verify  the `complete` attribute, every tensor the stored configuration implies\n"
            "          (in /model, /optim/m, /optim/v, with its shape) and the CRC32C of every\n"
            "          float32 dataset; prints each problem; exit 0 if valid, 1 if not\n"
            "  export  writes OUT: /model/<name> (float32, CRC32C attributes) and the\n"
            "          configuration, without optimizer state or samples; every tensor's\n"
            "          CRC32C is checked on the way\n"
            "\n"
            "Exit status: 0 success, 1 a problem with a file, 2 a usage error.\n");
    return out == stdout ? EXIT_VALID : EXIT_USAGE;
}

/* ------------------------------------------------------------------------ */
/* Attributes: scalar integers of any width, strings fixed or variable.      */
/* ------------------------------------------------------------------------ */

static int is_scalar(hid_t attr)
{
    hid_t space = H5Aget_space(attr);
    const int ok = space >= 0 && H5Sget_simple_extent_npoints(space) == 1;
    if (space >= 0) H5Sclose(space);
    return ok;
}

/* 1 read into *v, 0 absent, -1 present but not one integer. */
static int attr_int(hid_t obj, const char *name, int64_t *v)
{
    if (H5Aexists(obj, name) <= 0) return 0;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return -1;
    hid_t type = H5Aget_type(attr);
    /* HDF5 converts int32 or int64, signed or not, to the native int64. */
    const int ok = type >= 0 && H5Tget_class(type) == H5T_INTEGER && is_scalar(attr) &&
                   H5Aread(attr, H5T_NATIVE_INT64, v) >= 0;
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return ok ? 1 : -1;
}

/* A malloc'd copy of a scalar string attribute; NULL if absent or not one. */
static char *attr_string(hid_t obj, const char *name)
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

static int write_attr(hid_t obj, const char *name, hid_t file_type, hid_t mem_type,
                      const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    const int ok = attr >= 0 && H5Awrite(attr, mem_type, value) >= 0;
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    return ok;
}

static int write_attr_string(hid_t obj, const char *name, const char *text)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, strlen(text) + 1);
    H5Tset_strpad(type, H5T_STR_NULLTERM);
    const int ok = write_attr(obj, name, type, type, text);
    H5Tclose(type);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Opening a checkpoint: its root attributes and its stored configuration.   */
/* ------------------------------------------------------------------------ */

typedef struct ckpt_file {
    hid_t file;
    /* Root attributes; -1 when absent. An export (weights only, written by
     * this tool) has insitra_export instead of insitra_format. */
    int64_t format, exported, step, world_size, dp, tp, zero_stage, complete;
    char *version, *config;
} ckpt_file;

static void ckpt_close(ckpt_file *c)
{
    if (c->file >= 0) H5Fclose(c->file);
    free(c->version);
    free(c->config);
    c->file = -1;
    c->version = c->config = NULL;
}

/* Opens path read-only and reads its root attributes. On failure *why says
 * what is wrong and nothing stays open. */
static int ckpt_open(ckpt_file *c, const char *path, char *why, size_t why_len)
{
    memset(c, 0, sizeof *c);
    c->file = -1;
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(why, why_len, "cannot open: %s", strerror(errno));
        return 0;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(why, why_len, "is a directory (insitra-ckpt list DIR shows its checkpoints)");
        return 0;
    }
    if (H5Fis_hdf5(path) <= 0) {
        snprintf(why, why_len, "not an HDF5 file");
        return 0;
    }
    c->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (c->file < 0) {
        snprintf(why, why_len, "HDF5 cannot open it: truncated or corrupt");
        return 0;
    }
    int64_t *fields[] = {&c->format,     &c->exported, &c->step,       &c->world_size,
                         &c->dp,         &c->tp,       &c->zero_stage, &c->complete};
    const char *names[] = {"insitra_format", "insitra_export", "step",       "world_size",
                           "dp",             "tp",             "zero_stage", "complete"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (attr_int(c->file, names[i], fields[i]) != 1) *fields[i] = -1;
    c->version = attr_string(c->file, "insitra_version");
    c->config = attr_string(c->file, "config");
    return 1;
}

/* An insitra checkpoint of the format this tool reads, or an export of one. */
static int ckpt_check_format(const ckpt_file *c, char *why, size_t why_len)
{
    if (c->exported == 1) return 1;
    if (c->format < 0) {
        const int has_model = H5Lexists(c->file, "model", H5P_DEFAULT) > 0;
        snprintf(why, why_len, "%s",
                 has_model ? "no insitra_format attribute: an interrupted save (the root "
                             "attributes come last)"
                           : "not an insitra checkpoint (no insitra_format attribute)");
        return 0;
    }
    if (c->format != FORMAT_VERSION) {
        snprintf(why, why_len,
                 "checkpoint format version %" PRId64 "; this insitra-ckpt reads version %d",
                 c->format, FORMAT_VERSION);
        return 0;
    }
    return 1;
}

/* The stored configuration as a fresh insitra_config; NULL with *why set. */
static insitra_config *ckpt_config(const ckpt_file *c, char *why, size_t why_len)
{
    if (!c->config) {
        snprintf(why, why_len, "no config attribute");
        return NULL;
    }
    insitra_config *cfg = NULL;
    if (insitra_config_create(&cfg) != INSITRA_STATUS_OK ||
        insitra_config_load_yaml_string(cfg, c->config) != INSITRA_STATUS_OK) {
        snprintf(why, why_len, "stored config: %s", insitra_last_error());
        insitra_config_free(cfg);
        return NULL;
    }
    return cfg;
}

/* ------------------------------------------------------------------------ */
/* Datasets: every dataset of a group, shapes, and CRCs read piecewise.      */
/* ------------------------------------------------------------------------ */

typedef struct path_list {
    char **items;
    size_t n, cap;
} path_list;

static void path_list_free(path_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

typedef struct walk_ctx {
    path_list *list;
    char prefix[PATH_LEN];
    int depth;
} walk_ctx;

/* H5Literate callback: datasets are recorded, groups entered (hard links
 * only, and no deeper than MAX_DEPTH, so a file with a link cycle ends). */
static herr_t walk_link(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    walk_ctx *w = data;
    if (info->type != H5L_TYPE_HARD) return 0;
    walk_ctx sub = {.list = w->list, .depth = w->depth + 1};
    if (snprintf(sub.prefix, sizeof sub.prefix, "%s/%s", w->prefix, name) >= (int)sizeof sub.prefix)
        return 0; /* no insitra path is that long */
    hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
    if (obj < 0) return 0;
    const H5I_type_t type = H5Iget_type(obj);
    if (type == H5I_GROUP && sub.depth < MAX_DEPTH) {
        H5Literate(obj, H5_INDEX_NAME, H5_ITER_INC, NULL, walk_link, &sub);
    } else if (type == H5I_DATASET) {
        path_list *l = w->list;
        if (l->n == l->cap) {
            const size_t cap = l->cap ? 2 * l->cap : 64;
            char **items = realloc(l->items, cap * sizeof *items);
            if (!items) {
                H5Oclose(obj);
                return -1;
            }
            l->items = items;
            l->cap = cap;
        }
        if ((l->items[l->n] = strdup(sub.prefix))) l->n++;
    }
    H5Oclose(obj);
    return 0;
}

/* Every dataset under group path ("" for the whole file), in name order. */
static path_list list_datasets(hid_t file, const char *group_path)
{
    path_list list = {0};
    walk_ctx w = {.list = &list, .depth = 0};
    snprintf(w.prefix, sizeof w.prefix, "%s", group_path);
    hid_t g = H5Gopen2(file, group_path[0] ? group_path : "/", H5P_DEFAULT);
    if (g >= 0) {
        H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, walk_link, &w);
        H5Gclose(g);
    }
    return list;
}

static int group_exists(hid_t file, const char *path)
{
    if (H5Lexists(file, path, H5P_DEFAULT) <= 0) return 0;
    hid_t obj = H5Oopen(file, path, H5P_DEFAULT);
    const int ok = obj >= 0 && H5Iget_type(obj) == H5I_GROUP;
    if (obj >= 0) H5Oclose(obj);
    return ok;
}

/* "(3, 4)" */
static void shape_text(char *out, size_t len, int ndim, const hsize_t *dims)
{
    size_t used = (size_t)snprintf(out, len, "(");
    for (int k = 0; k < ndim && used < len; k++)
        used += (size_t)snprintf(out + used, len - used, "%s%llu", k ? ", " : "",
                                 (unsigned long long)dims[k]);
    if (used < len) snprintf(out + used, len - used, ndim == 1 ? ",)" : ")");
}

enum { KIND_FLOAT32, KIND_INT64 }; /* what a dataset must hold */

/* Opens a dataset and reads its shape: ndim (0 to 4) and dims; -1 if absent
 * or not a simple dataset. kind_ok: its type is the expected kind. */
static hid_t open_dataset(hid_t file, const char *path, int *ndim, hsize_t dims[4], int kind,
                          int *kind_ok)
{
    *ndim = -1;
    if (H5Lexists(file, path, H5P_DEFAULT) <= 0) return -1;
    hid_t dset = H5Dopen2(file, path, H5P_DEFAULT);
    if (dset < 0) return -1;
    hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
    const int n = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (n >= 0 && n <= 4) {
        *ndim = n;
        H5Sget_simple_extent_dims(space, dims, NULL);
    }
    const H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    const size_t size = type >= 0 ? H5Tget_size(type) : 0;
    *kind_ok = size == (kind == KIND_FLOAT32 ? 4 : 8) &&
               cls == (kind == KIND_FLOAT32 ? H5T_FLOAT : H5T_INTEGER);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (*ndim < 0) {
        H5Dclose(dset);
        return -1;
    }
    return dset;
}

static int problems; /* found by verify so far */

static void problem(const char *where, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("  PROBLEM %s: ", where);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    problems++;
}

/* The dataset at path exists, holds kind and has one of the expected shapes
 * (want_b may be NULL; its ndim is nb). Counts a problem otherwise. */
static void check_dataset(hid_t file, const char *path, int kind, int na, const hsize_t *want_a,
                          int nb, const hsize_t *want_b)
{
    int ndim, kind_ok;
    hsize_t dims[4];
    hid_t dset = open_dataset(file, path, &ndim, dims, kind, &kind_ok);
    if (dset < 0) {
        problem(path, "missing");
        return;
    }
    H5Dclose(dset);
    if (!kind_ok)
        problem(path, "type is not %s", kind == KIND_FLOAT32 ? "float32" : "64-bit integer");
    const int match_a = ndim == na && !memcmp(dims, want_a, (size_t)na * sizeof *dims);
    const int match_b = want_b && ndim == nb && !memcmp(dims, want_b, (size_t)nb * sizeof *dims);
    if (!match_a && !match_b) {
        char have[96], want[96];
        shape_text(have, sizeof have, ndim, dims);
        shape_text(want, sizeof want, na, want_a);
        problem(path, "shape %s, expected %s", have, want);
    }
}

/* Reads a dataset (any shape) a piece at a time, in row-major order, as
 * little-endian float32 (the byte order the CRC is defined on), chaining the
 * pieces' CRC; with dst >= 0 each piece is also written there at the same
 * place. The pieces are whole hyperslabs of the leading dimensions: rows of
 * at most CHUNK_FLOATS elements, or, where one row is larger, the same
 * applied inside that row. */
typedef struct piece_walk {
    hid_t src, dst, src_space;
    int ndim;
    hsize_t dims[4], start[4], count[4];
    float *buf;
    uint32_t crc;
} piece_walk;

static int walk_pieces(piece_walk *p, int depth)
{
    hsize_t inner = 1; /* elements per index of dimension depth */
    for (int k = depth + 1; k < p->ndim; k++) inner *= p->dims[k];
    if (inner > CHUNK_FLOATS) {
        p->count[depth] = 1;
        for (hsize_t i = 0; i < p->dims[depth]; i++) {
            p->start[depth] = i;
            if (!walk_pieces(p, depth + 1)) return 0;
        }
        return 1;
    }
    const hsize_t step = CHUNK_FLOATS / inner;
    for (int k = depth + 1; k < p->ndim; k++) {
        p->start[k] = 0;
        p->count[k] = p->dims[k];
    }
    for (hsize_t i = 0; i < p->dims[depth]; i += step) {
        p->start[depth] = i;
        p->count[depth] = p->dims[depth] - i < step ? p->dims[depth] - i : step;
        const hsize_t n = p->count[depth] * inner;
        hid_t mem = H5Screate_simple(1, &n, NULL);
        int ok = mem >= 0 && H5Sselect_hyperslab(p->src_space, H5S_SELECT_SET, p->start, NULL,
                                                 p->count, NULL) >= 0 &&
                 H5Dread(p->src, H5T_IEEE_F32LE, mem, p->src_space, H5P_DEFAULT, p->buf) >= 0;
        if (ok && p->dst >= 0) {
            hid_t dst_space = H5Dget_space(p->dst);
            ok = dst_space >= 0 &&
                 H5Sselect_hyperslab(dst_space, H5S_SELECT_SET, p->start, NULL, p->count, NULL) >=
                     0 &&
                 H5Dwrite(p->dst, H5T_IEEE_F32LE, mem, dst_space, H5P_DEFAULT, p->buf) >= 0;
            if (dst_space >= 0) H5Sclose(dst_space);
        }
        if (mem >= 0) H5Sclose(mem);
        if (!ok) return 0;
        p->crc = insitra_crc32c(p->crc, p->buf, (size_t)n * sizeof(float));
    }
    return 1;
}

/* The CRC32C of a float32 dataset's data (copied into dst when dst >= 0).
 * 0 when the data cannot be read (a truncated or corrupt file). */
static int dataset_crc(hid_t dset, hid_t dst, float *buf, uint32_t *crc)
{
    piece_walk p = {.src = dset, .dst = dst, .buf = buf, .crc = 0};
    p.src_space = H5Dget_space(dset);
    const int nd = p.src_space >= 0 ? H5Sget_simple_extent_ndims(p.src_space) : -1;
    int ok = nd >= 0 && nd <= 4;
    if (ok) {
        p.ndim = nd;
        H5Sget_simple_extent_dims(p.src_space, p.dims, NULL);
        hsize_t total = 1;
        for (int k = 0; k < nd; k++) total *= p.dims[k];
        if (nd == 0) { /* a scalar: one element */
            ok = H5Dread(dset, H5T_IEEE_F32LE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
            if (ok && dst >= 0)
                ok = H5Dwrite(dst, H5T_IEEE_F32LE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
            p.crc = ok ? insitra_crc32c(0, buf, sizeof(float)) : 0;
        } else if (total > 0) {
            ok = walk_pieces(&p, 0);
        }
    }
    if (p.src_space >= 0) H5Sclose(p.src_space);
    *crc = p.crc;
    return ok;
}

/* ------------------------------------------------------------------------ */
/* list                                                                     */
/* ------------------------------------------------------------------------ */

static void human_size(char *out, size_t len, double bytes)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, len, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmd_list(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "insitra-ckpt: %s: cannot open directory: %s\n", dir, strerror(errno));
        return EXIT_PROBLEM;
    }
    path_list names = {0};
    for (struct dirent *e; (e = readdir(d));) {
        const char *n = e->d_name;
        const int step_file = strncmp(n, "step-", 5) == 0 && ends_with(n, ".h5");
        if (!step_file && !ends_with(n, ".tmp")) continue;
        if (names.n == names.cap) {
            names.cap = names.cap ? 2 * names.cap : 64;
            char **items = realloc(names.items, names.cap * sizeof *items);
            if (!items) break;
            names.items = items;
        }
        if ((names.items[names.n] = strdup(n))) names.n++;
    }
    closedir(d);
    qsort(names.items, names.n, sizeof *names.items, compare_names);

    /* `latest`: one line, the newest complete checkpoint's file name. */
    char path[PATH_LEN], latest[256] = "";
    snprintf(path, sizeof path, "%s/latest", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(latest, sizeof latest, f)) latest[0] = '\0';
        latest[strcspn(latest, "\r\n")] = '\0';
        fclose(f);
    }

    printf("%-26s %10s %10s %6s  %s\n", "file", "step", "size", "latest", "status");
    int latest_found = 0;
    for (size_t i = 0; i < names.n; i++) {
        const char *name = names.items[i];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        struct stat st;
        char size[32] = "?", step[32] = "-";
        if (stat(path, &st) == 0) human_size(size, sizeof size, (double)st.st_size);
        long long from_name;
        if (sscanf(name, "step-%lld", &from_name) == 1)
            snprintf(step, sizeof step, "%lld", from_name);
        const char *status = "temporary";
        if (!ends_with(name, ".tmp")) {
            /* Attributes only: step and complete, no data read. */
            ckpt_file c;
            char why[256];
            if (!ckpt_open(&c, path, why, sizeof why)) {
                status = "unreadable";
            } else {
                if (c.step >= 0) snprintf(step, sizeof step, "%" PRId64, c.step);
                status = c.complete == 1 ? "complete" : "incomplete";
                ckpt_close(&c);
            }
        }
        const int is_latest = latest[0] && strcmp(latest, name) == 0;
        latest_found |= is_latest;
        printf("%-26s %10s %10s %6s  %s\n", name, step, size, is_latest ? "*" : "", status);
    }
    if (!names.n) printf("(no checkpoints in %s)\n", dir);
    if (latest[0] && !latest_found)
        printf("latest names '%s', which is not in %s\n", latest, dir);
    else if (!latest[0] && names.n)
        printf("no `latest` file in %s\n", dir);
    path_list_free(&names);
    return EXIT_VALID;
}

/* ------------------------------------------------------------------------ */
/* info                                                                     */
/* ------------------------------------------------------------------------ */

static void print_attr(const char *label, int64_t v)
{
    if (v >= 0)
        printf("%-14s %" PRId64 "\n", label, v);
    else
        printf("%-14s (absent)\n", label);
}

/* Elements and dataset count under a group. */
static int64_t group_numel(hid_t file, const char *group, int64_t *count)
{
    path_list l = list_datasets(file, group);
    int64_t numel = 0;
    for (size_t i = 0; i < l.n; i++) {
        int ndim, kind_ok;
        hsize_t dims[4];
        hid_t dset = open_dataset(file, l.items[i], &ndim, dims, KIND_FLOAT32, &kind_ok);
        if (dset < 0) continue;
        int64_t n = 1;
        for (int k = 0; k < ndim; k++) n *= (int64_t)dims[k];
        numel += n;
        H5Dclose(dset);
    }
    *count = (int64_t)l.n;
    path_list_free(&l);
    return numel;
}

static int cmd_info(const char *path)
{
    ckpt_file c;
    char why[512];
    if (!ckpt_open(&c, path, why, sizeof why) || !ckpt_check_format(&c, why, sizeof why)) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path, why);
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    printf("%-14s %s\n", "file", path);
    if (c.exported == 1)
        printf("%-14s model export (weights only, made by insitra-ckpt export)\n", "kind");
    else
        printf("%-14s %" PRId64 "\n", "format", c.format);
    printf("%-14s %s\n", "written by", c.version ? c.version : "(absent)");
    print_attr("step", c.step);
    if (c.exported != 1) {
        if (c.world_size >= 0 && c.dp >= 0 && c.tp >= 0)
            printf("%-14s %" PRId64 " ranks (dp %" PRId64 " x tp %" PRId64 ")\n", "world",
                   c.world_size, c.dp, c.tp);
        else
            print_attr("world_size", c.world_size);
        print_attr("zero_stage", c.zero_stage);
        printf("%-14s %s\n", "complete", c.complete == 1 ? "yes" : "NO");
    }

    insitra_config *cfg = ckpt_config(&c, why, sizeof why);
    if (cfg) {
        const char *keys[] = {"model.d_model",     "model.n_layers",     "model.n_heads",
                              "model.seq_len",     "model.in_features", "model.out_features",
                              "model.causal"};
        printf("%-14s", "model");
        char value[64];
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            if (insitra_config_get(cfg, keys[k], value, sizeof value) == INSITRA_STATUS_OK)
                printf(" %s=%s", strchr(keys[k], '.') + 1, value);
        printf("\n");
        const insitra_model_dims dims = insitra_config_model_dims(cfg);
        insitra_param_layout layout;
        if (insitra_param_layout_create(&layout, &dims) == INSITRA_STATUS_OK) {
            printf("%-14s %" PRId64 " tensors, %" PRId64 " parameters\n", "config implies",
                   layout.num_tensors, layout.total);
            insitra_param_layout_free(&layout);
        }
        insitra_config_free(cfg);
    } else {
        printf("%-14s %s\n", "model", why);
    }

    int64_t count;
    const int64_t params = group_numel(c.file, "/model", &count);
    printf("%-14s %" PRId64 " tensors in /model, %" PRId64 " parameters (%.1f MiB as float32)\n",
           "stored", count, params, (double)params * 4 / 1048576.0);
    if (c.exported != 1) {
        int64_t m_count = 0, v_count = 0;
        const int has_optim = group_exists(c.file, "/optim/m") && group_exists(c.file, "/optim/v");
        if (has_optim) {
            group_numel(c.file, "/optim/m", &m_count);
            group_numel(c.file, "/optim/v", &v_count);
            printf("%-14s AdamW moments: %" PRId64 " tensors in /optim/m, %" PRId64
                   " in /optim/v\n",
                   "optimizer", m_count, v_count);
        } else {
            printf("%-14s absent\n", "optimizer");
        }
    }
    if (group_exists(c.file, "/samples")) {
        int ndim, kind_ok;
        hsize_t dims[4];
        hid_t dset = open_dataset(c.file, "/samples/count", &ndim, dims, KIND_INT64, &kind_ok);
        if (dset >= 0 && ndim == 1 && kind_ok && dims[0] > 0 && dims[0] <= 1u << 24) {
            int64_t *per_rank = malloc(dims[0] * sizeof *per_rank);
            if (per_rank &&
                H5Dread(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, per_rank) >= 0) {
                int64_t total = 0;
                for (hsize_t r = 0; r < dims[0]; r++) total += per_rank[r];
                printf("%-14s %" PRId64 " stored (per rank:", "samples", total);
                for (hsize_t r = 0; r < dims[0] && r < 16; r++) printf(" %" PRId64, per_rank[r]);
                printf("%s)\n", dims[0] > 16 ? " ..." : "");
            } else {
                printf("%-14s present, /samples/count unreadable\n", "samples");
            }
            free(per_rank);
        } else {
            printf("%-14s present, /samples/count missing or malformed\n", "samples");
        }
        if (dset >= 0) H5Dclose(dset);
    } else {
        printf("%-14s absent\n", "samples");
    }
    ckpt_close(&c);
    return EXIT_VALID;
}

/* ------------------------------------------------------------------------ */
/* verify                                                                   */
/* ------------------------------------------------------------------------ */

/* Every tensor of the layout in group (exists, float32, its shape), and no
 * dataset there that the layout lacks. */
static void check_tensors(hid_t file, const char *group, const insitra_param_layout *l)
{
    char path[PATH_LEN];
    for (int64_t i = 0; i < l->num_tensors; i++) {
        const insitra_tensor_desc *d = &l->tensors[i];
        const hsize_t want[2] = {(hsize_t)d->shape[0], (hsize_t)d->shape[1]};
        snprintf(path, sizeof path, "%s/%s", group, d->name);
        check_dataset(file, path, KIND_FLOAT32, d->ndim, want, 0, NULL);
    }
    path_list found = list_datasets(file, group);
    for (size_t k = 0; k < found.n; k++)
        if (insitra_param_layout_find(l, found.items[k] + strlen(group) + 1) < 0)
            problem(found.items[k], "not a tensor of the stored configuration's model");
    path_list_free(&found);
}

/* /ranks and /samples against the writer's world size and the sample shape. */
static void check_rank_tables(const ckpt_file *c, const insitra_model_dims *dims)
{
    if (c->world_size < 1) {
        problem("/", "world_size attribute missing or not positive");
        return;
    }
    const hsize_t w = (hsize_t)c->world_size;
    const hsize_t state[2] = {w, 4}, one[1] = {w};
    check_dataset(c->file, "/ranks/sampler_state", KIND_INT64, 2, state, 0, NULL);
    check_dataset(c->file, "/ranks/sample_cursor", KIND_INT64, 1, one, 0, NULL);
    check_dataset(c->file, "/ranks/samples_pushed", KIND_INT64, 1, one, 0, NULL);
    if (!group_exists(c->file, "/samples")) return;
    check_dataset(c->file, "/samples/count", KIND_INT64, 1, one, 0, NULL);
    int ndim, kind_ok;
    hsize_t cdims[4];
    hid_t dset = open_dataset(c->file, "/samples/count", &ndim, cdims, KIND_INT64, &kind_ok);
    if (dset < 0) return;
    int64_t *counts = ndim == 1 && cdims[0] == w ? malloc(w * sizeof *counts) : NULL;
    int64_t total = -1;
    if (counts && H5Dread(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, counts) >= 0) {
        total = 0;
        for (hsize_t r = 0; r < w; r++) total += counts[r] > 0 ? counts[r] : 0;
    }
    free(counts);
    H5Dclose(dset);
    if (total < 0) {
        problem("/samples/count", "unreadable");
        return;
    }
    if (!dims) return;
    /* (total, T, F) as docs/checkpoint.md gives it; the same bytes stored as
     * (total, T * F) are accepted too. */
    const hsize_t T = (hsize_t)dims->seq_len, n = (hsize_t)total;
    const hsize_t x3[3] = {n, T, (hsize_t)dims->in_features}, x2[2] = {n, T * x3[2]};
    const hsize_t y3[3] = {n, T, (hsize_t)dims->out_features}, y2[2] = {n, T * y3[2]};
    check_dataset(c->file, "/samples/x", KIND_FLOAT32, 3, x3, 2, x2);
    check_dataset(c->file, "/samples/y", KIND_FLOAT32, 3, y3, 2, y2);
}

/* The CRC32C attribute of every float32 dataset in the file against its data. */
static int64_t check_crcs(hid_t file, float *buf)
{
    path_list all = list_datasets(file, "");
    int64_t checked = 0;
    for (size_t i = 0; i < all.n; i++) {
        const char *path = all.items[i];
        int ndim, is_float;
        hsize_t dims[4];
        hid_t dset = open_dataset(file, path, &ndim, dims, KIND_FLOAT32, &is_float);
        if (dset < 0) {
            problem(path, "cannot open the dataset");
            continue;
        }
        int64_t stored;
        uint32_t crc;
        if (!is_float) {
            /* Integer tables carry no CRC. */
        } else if (attr_int(dset, "crc32c", &stored) != 1 || stored < 0 || stored > UINT32_MAX) {
            problem(path, "no crc32c attribute");
        } else if (!dataset_crc(dset, -1, buf, &crc)) {
            problem(path, "cannot read the data (truncated or corrupt file)");
        } else {
            checked++;
            if (crc != (uint32_t)stored)
                problem(path, "crc32c mismatch: attribute 0x%08" PRIX32 ", data 0x%08" PRIX32,
                        (uint32_t)stored, crc);
        }
        H5Dclose(dset);
    }
    path_list_free(&all);
    return checked;
}

static int cmd_verify(const char *path)
{
    ckpt_file c;
    char why[512];
    printf("verify %s\n", path);
    problems = 0;
    if (!ckpt_open(&c, path, why, sizeof why) || !ckpt_check_format(&c, why, sizeof why)) {
        problem(path, "%s", why);
        ckpt_close(&c);
        printf("INVALID: %s (1 problem)\n", path);
        return EXIT_PROBLEM;
    }
    const int exported = c.exported == 1;
    if (!exported && c.complete != 1)
        problem("/", "not complete (the 'complete' attribute is %s)",
                c.complete < 0 ? "missing" : "not 1");
    if (c.step < 0) problem("/", "no step attribute");

    insitra_config *cfg = ckpt_config(&c, why, sizeof why);
    insitra_model_dims dims;
    insitra_param_layout layout = {0};
    int have_layout = 0;
    if (!cfg) {
        problem("/", "%s: the expected tensors are unknown", why);
    } else {
        dims = insitra_config_model_dims(cfg);
        have_layout = insitra_param_layout_create(&layout, &dims) == INSITRA_STATUS_OK;
        if (!have_layout) problem("/", "stored config: %s", insitra_last_error());
        insitra_config_free(cfg);
    }
    if (have_layout) {
        check_tensors(c.file, "/model", &layout);
        if (!exported) {
            check_tensors(c.file, "/optim/m", &layout);
            check_tensors(c.file, "/optim/v", &layout);
        }
    }
    if (!exported) check_rank_tables(&c, have_layout ? &dims : NULL);

    float *buf = malloc((size_t)CHUNK_FLOATS * sizeof(float));
    if (!buf) {
        fprintf(stderr, "insitra-ckpt: out of memory\n");
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    const int64_t crcs = check_crcs(c.file, buf);
    free(buf);
    if (have_layout) insitra_param_layout_free(&layout);
    ckpt_close(&c);
    if (problems) {
        printf("INVALID: %s (%d problem%s)\n", path, problems, problems == 1 ? "" : "s");
        return EXIT_PROBLEM;
    }
    printf("VALID: %s (%" PRId64 " float32 datasets, every CRC32C right)\n", path, crcs);
    return EXIT_VALID;
}

/* ------------------------------------------------------------------------ */
/* export                                                                   */
/* ------------------------------------------------------------------------ */

/* Copies one float32 dataset into group dst_group under the same name,
 * checking its CRC on the way. */
static int export_tensor(hid_t src_file, const char *path, hid_t dst_group, float *buf,
                         int64_t *numel)
{
    int ndim, is_float;
    hsize_t dims[4];
    hid_t src = open_dataset(src_file, path, &ndim, dims, KIND_FLOAT32, &is_float);
    if (src < 0 || !is_float) {
        fprintf(stderr, "insitra-ckpt: %s: not a float32 dataset\n", path);
        if (src >= 0) H5Dclose(src);
        return 0;
    }
    int64_t stored;
    const int has_crc = attr_int(src, "crc32c", &stored) == 1;
    hid_t space = ndim > 0 ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    const char *name = strrchr(path, '/') + 1;
    hid_t dst = H5Dcreate2(dst_group, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                           H5P_DEFAULT);
    H5Sclose(space);
    uint32_t crc = 0;
    int ok = dst >= 0 && dataset_crc(src, dst, buf, &crc);
    if (!ok)
        fprintf(stderr, "insitra-ckpt: %s: cannot copy (truncated or corrupt file?)\n", path);
    if (ok && has_crc && (uint32_t)stored != crc) {
        fprintf(stderr,
                "insitra-ckpt: %s: crc32c mismatch (attribute 0x%08" PRIX32 ", data 0x%08" PRIX32
                "): the checkpoint is corrupt\n",
                path, (uint32_t)stored, crc);
        ok = 0;
    }
    if (ok && !write_attr(dst, "crc32c", H5T_STD_U32LE, H5T_NATIVE_UINT32, &crc)) {
        fprintf(stderr, "insitra-ckpt: %s: cannot write its crc32c attribute\n", path);
        ok = 0;
    }
    *numel = 1;
    for (int k = 0; k < ndim; k++) *numel *= (int64_t)dims[k];
    if (dst >= 0) H5Dclose(dst);
    H5Dclose(src);
    return ok;
}

static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

static int cmd_export(const char *path, const char *out)
{
    ckpt_file c;
    char why[512];
    if (!ckpt_open(&c, path, why, sizeof why) || !ckpt_check_format(&c, why, sizeof why)) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path, why);
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    if (same_file(path, out)) {
        fprintf(stderr, "insitra-ckpt: %s: OUT is the checkpoint itself\n", out);
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    path_list tensors = list_datasets(c.file, "/model");
    if (!c.config || tensors.n == 0) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path,
                c.config ? "no tensors in /model" : "no config attribute");
        path_list_free(&tensors);
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    float *buf = malloc((size_t)CHUNK_FLOATS * sizeof(float));
    hid_t dst = buf ? H5Fcreate(out, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT) : -1;
    hid_t model = dst >= 0 ? H5Gcreate2(dst, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    int ok = model >= 0;
    if (!ok) fprintf(stderr, "insitra-ckpt: %s: cannot create the file\n", out);
    int64_t params = 0;
    for (size_t i = 0; ok && i < tensors.n; i++) {
        int64_t numel = 0;
        ok = export_tensor(c.file, tensors.items[i], model, buf, &numel);
        params += numel;
    }
    const int32_t one = 1;
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    ok = ok && write_attr(dst, "insitra_export", H5T_STD_I32LE, H5T_NATIVE_INT32, &one) &&
         write_attr(dst, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, &c.step) &&
         write_attr_string(dst, "insitra_version", c.version ? c.version : "") &&
         write_attr_string(dst, "config", c.config) && write_attr_string(dst, "source", base);
    if (model >= 0) H5Gclose(model);
    if (dst >= 0 && H5Fclose(dst) < 0) ok = 0;
    free(buf);
    if (ok) {
        printf("exported %zu tensors (%" PRId64 " parameters, %.1f MiB) of step %" PRId64
               " to %s\n",
               tensors.n, params, (double)params * 4 / 1048576.0, c.step, out);
    } else {
        if (dst >= 0) unlink(out); /* never leave half an export behind */
        fprintf(stderr, "insitra-ckpt: export of %s failed\n", path);
    }
    path_list_free(&tensors);
    ckpt_close(&c);
    return ok ? EXIT_VALID : EXIT_PROBLEM;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
                      !strcmp(argv[1], "help")))
        return usage(stdout);
    /* Problems are reported here, one line each, not as HDF5's error stack. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *cmd = argc >= 2 ? argv[1] : "";
    if (!strcmp(cmd, "list") && argc == 3) return cmd_list(argv[2]);
    if (!strcmp(cmd, "info") && argc == 3) return cmd_info(argv[2]);
    if (!strcmp(cmd, "verify") && argc == 3) return cmd_verify(argv[2]);
    if (!strcmp(cmd, "export") && argc == 4) return cmd_export(argv[2], argv[3]);
    if (argc >= 2 && strcmp(cmd, "list") && strcmp(cmd, "info") && strcmp(cmd, "verify") &&
        strcmp(cmd, "export"))
        fprintf(stderr, "insitra-ckpt: unknown command '%s'\n", cmd);
    else if (argc >= 2)
        fprintf(stderr, "insitra-ckpt: %s: wrong number of arguments\n", cmd);
    return usage(stderr);
}
