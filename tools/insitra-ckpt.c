/*
 * insitra-ckpt: looks into checkpoint files (docs/checkpoint.md) from a
 * login node or a laptop, without MPI.
 *
 *   insitra-ckpt list DIR          the checkpoints of a directory (attributes only)
 *   insitra-ckpt info FILE         root attributes, model, tensors, optimizer, samples
 *   insitra-ckpt verify FILE       completeness, metadata checksum, shapes, every CRC32C
 *   insitra-ckpt export FILE OUT   the model weights alone, for analysis or inference
 *   insitra-ckpt config FILE       the stored configuration, as YAML
 *
 * Names, attributes, shapes and the metadata checksum come from the library's
 * format module (ckpt/ckpt_format.h), so this tool and the loader judge a
 * file alike. Files are opened with HDF5's default (POSIX) driver: no
 * MPI_Init, no mpiexec. Data is read a piece at a time (CHUNK_BYTES), so a
 * checkpoint larger than memory verifies and exports too. Exit status: 0
 * success (a valid file for verify), 1 a problem with a file, 2 a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#include "ckpt_format.h"
#include "checked.h"
#include "config.h"
#include "crc32c.h"
#include "insitra.h"
#include "model.h"

enum { EXIT_VALID = 0, EXIT_PROBLEM = 1, EXIT_USAGE = 2 };
enum { CHUNK_BYTES = 4 << 20, PATH_LEN = 1024 };

static int usage(FILE *out)
{
    fprintf(out,
            "usage: insitra-ckpt list DIR\n"
            "       insitra-ckpt info FILE\n"
            "       insitra-ckpt verify FILE\n"
            "       insitra-ckpt export FILE OUT\n"
            "       insitra-ckpt config FILE\n"
            "\n"
            "  list    every step-*.h5 and step-*.h5.tmp file of a checkpoint directory:\n"
            "          step, size, whether `latest` names it, complete / incomplete / temporary\n"
            "  info    format, version, step, the writer's ranks and ZeRO stage, the model's\n"
            "          dimensions from the stored configuration, tensors and parameters,\n"
            "          optimizer state and stored samples\n"
            "  verify  the `complete` attribute, the metadata checksum (format 2), every tensor\n"
            "          the stored configuration implies (in /model, /optim/m, /optim/v, with\n"
            "          its shape), the per-rank tables, and the CRC32C of every dataset;\n"
            "          prints each problem; exit 0 if valid, 1 if not\n"
            "  export  writes OUT: /model/<name> (float32, CRC32C attributes), /normalize\n"
            "          (the normalisation statistics, when the checkpoint has them) and the\n"
            "          configuration, without optimizer state or samples; every tensor's\n"
            "          CRC32C is checked on the way\n"
            "  config  prints the configuration stored in the checkpoint (or an export) as\n"
            "          YAML: a file insitra_config_load_yaml and insitra-plan read\n"
            "\n"
            "Exit status: 0 success, 1 a problem with a file, 2 a usage error.\n");
    return out == stdout ? EXIT_VALID : EXIT_USAGE;
}

/* ------------------------------------------------------------------------ */
/* Opening a checkpoint: its root attributes and its stored configuration.   */
/* ------------------------------------------------------------------------ */

typedef struct ckpt_file {
    hid_t file;
    insitra_ckpt_meta meta;
    int exported; /* an export (weights only: insitra_export_save or this tool) */
} ckpt_file;

static void ckpt_close(ckpt_file *c)
{
    if (c->file >= 0) H5Fclose(c->file);
    insitra_ckpt_meta_free(&c->meta);
    c->file = -1;
}

/* Opens path read-only and reads its root attributes; with check_format,
 * also refuses a version this tool does not read. On failure *why says what
 * is wrong and nothing stays open. */
static int ckpt_open(ckpt_file *c, const char *path, int check_format, char *why, size_t why_len)
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
    insitra_ckpt_meta_read(c->file, &c->meta);
    c->exported = insitra_export_format_of(c->file) >= 0;
    if (!check_format || c->exported) return 1;
    const char *problem = NULL;
    if (c->meta.format < 0)
        problem = H5Lexists(c->file, "model", H5P_DEFAULT) > 0
                      ? "no insitra_format attribute: an interrupted save (the root attributes come last)"
                      : "not an insitra checkpoint (no insitra_format attribute)";
    else if (insitra_ckpt_format_check(c->meta.format) != INSITRA_STATUS_OK)
        problem = insitra_last_error();
    if (!problem) return 1;
    snprintf(why, why_len, "%s", problem);
    ckpt_close(c);
    return 0;
}

/* The stored configuration as a fresh insitra_config; NULL with *why set. */
static insitra_config *ckpt_config(const ckpt_file *c, char *why, size_t why_len)
{
    if (!c->meta.config) {
        snprintf(why, why_len, "no config attribute");
        return NULL;
    }
    insitra_config *cfg = NULL;
    if (insitra_config_create(&cfg) != INSITRA_STATUS_OK ||
        insitra_config_load_yaml_string(cfg, c->meta.config) != INSITRA_STATUS_OK) {
        snprintf(why, why_len, "stored config: %s", insitra_last_error());
        insitra_config_free(cfg);
        return NULL;
    }
    return cfg;
}

/* ------------------------------------------------------------------------ */
/* Datasets: every dataset of a group, and CRCs read piecewise.              */
/* ------------------------------------------------------------------------ */

typedef struct path_list {
    char **items;
    size_t n, cap;
    const char *prefix; /* the group listed, "" for the root */
} path_list;

static void path_list_free(path_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* H5Ovisit2 callback: the path of every dataset (HDF5 visits each object
 * once, so a file with a link cycle ends). */
static herr_t add_dataset(hid_t group, const char *name, const H5O_info_t *info, void *data)
{
    (void)group;
    path_list *l = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    if (l->n == l->cap) {
        const size_t cap = l->cap ? 2 * l->cap : 64;
        char **items = realloc(l->items, cap * sizeof *items);
        if (!items) return -1;
        l->items = items;
        l->cap = cap;
    }
    const size_t len = strlen(l->prefix) + strlen(name) + 2;
    if ((l->items[l->n] = malloc(len))) snprintf(l->items[l->n++], len, "%s/%s", l->prefix, name);
    return 0;
}

/* Every dataset under group path ("" for the whole file), in name order. */
static path_list list_datasets(hid_t file, const char *group_path)
{
    path_list list = {.prefix = group_path};
    hid_t g = H5Gopen2(file, group_path[0] ? group_path : "/", H5P_DEFAULT);
    if (g >= 0) {
        H5Ovisit2(g, H5_INDEX_NAME, H5_ITER_INC, add_dataset, &list, H5O_INFO_BASIC);
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

static hid_t open_dataset(hid_t file, const char *path)
{
    return H5Lexists(file, path[0] == '/' ? path + 1 : path, H5P_DEFAULT) > 0 ? H5Dopen2(file, path, H5P_DEFAULT)
                                                                               : -1;
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

/* The dataset at path exists, holds kind and has the shape (ndim, want). */
static void check_dataset(hid_t file, const char *path, int kind, int ndim, const hsize_t *want)
{
    hid_t dset;
    if (insitra_ckpt_open_dataset(file, path + 1, kind, ndim, want, &dset) != INSITRA_STATUS_OK)
        problem(path, "%s", strchr(insitra_last_error(), ' ') + 1);
    else
        H5Dclose(dset);
}

/* The CRC32C of a 1-D or 2-D dataset of floats or 64-bit integers, read as
 * the little-endian bytes the CRC is defined on, a piece of the flattened
 * data at a time (a checkpoint larger than memory verifies too); with dst >=
 * 0 each piece is also written there at the same place. 0 when the data
 * cannot be read (a truncated or corrupt file). */
static int dataset_crc(hid_t dset, hid_t dst, void *buf, uint32_t *crc)
{
    hid_t file_type = H5Dget_type(dset);
    const int is_signed = file_type >= 0 && H5Tget_sign(file_type) == H5T_SGN_2;
    if (file_type >= 0) H5Tclose(file_type);
    const int kind = insitra_ckpt_dataset_kind(dset);
    const hid_t type = kind == INSITRA_CKPT_FLOAT32   ? H5T_IEEE_F32LE
                       : kind == INSITRA_CKPT_FLOAT64 ? H5T_IEEE_F64LE /* the normalisation statistics */
                       : is_signed                    ? H5T_STD_I64LE
                                                      : H5T_STD_U64LE;
    const int64_t chunk = CHUNK_BYTES / (int64_t)H5Tget_size(type);
    hsize_t dims[4];
    const int ndim = insitra_ckpt_shape(dset, dims);
    const int64_t numel = ndim == 1 ? (int64_t)dims[0] : ndim == 2 ? (int64_t)(dims[0] * dims[1]) : -1;
    int ok = numel >= 0 && kind != INSITRA_CKPT_OTHER;
    *crc = 0;
    for (int64_t first = 0; ok && first < numel; first += chunk) {
        const int64_t count = numel - first < chunk ? numel - first : chunk;
        hid_t fspace = -1, mspace = -1;
        ok = insitra_ckpt_select(dset, first, count, &fspace, &mspace) == INSITRA_STATUS_OK &&
             H5Dread(dset, type, mspace, fspace, H5P_DEFAULT, buf) >= 0 &&
             (dst < 0 || H5Dwrite(dst, type, mspace, fspace, H5P_DEFAULT, buf) >= 0);
        if (fspace >= 0) H5Sclose(fspace);
        if (mspace >= 0) H5Sclose(mspace);
        *crc = insitra_crc32c(*crc, buf, (size_t)count * H5Tget_size(type));
    }
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

static void list_row(const char *dir, int64_t step, int temporary, const char *latest, int *latest_found)
{
    char name[64], path[PATH_LEN + 64], size[32] = "?", shown[32];
    insitra_ckpt_file_name(name, sizeof name, step);
    if (temporary) strcat(name, ".tmp");
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (stat(path, &st) == 0) human_size(size, sizeof size, (double)st.st_size);
    snprintf(shown, sizeof shown, "%" PRId64, step);
    const char *status = "temporary";
    if (!temporary) {
        /* Attributes only: step and complete, no data read. */
        ckpt_file c;
        char why[256];
        if (!ckpt_open(&c, path, 0, why, sizeof why)) {
            status = "unreadable";
        } else {
            if (c.meta.step >= 0) snprintf(shown, sizeof shown, "%" PRId64, c.meta.step);
            status = c.meta.complete == 1 ? "complete" : "incomplete";
            ckpt_close(&c);
        }
    }
    const int is_latest = !temporary && strcmp(latest, name) == 0;
    *latest_found |= is_latest;
    printf("%-26s %10s %10s %6s  %s\n", name, shown, size, is_latest ? "*" : "", status);
}

static int cmd_list(const char *dir)
{
    int64_t *steps = NULL, *tmps = NULL;
    const int64_t n = insitra_ckpt_list_steps(dir, ".h5", &steps);
    const int64_t nt = n < 0 ? 0 : insitra_ckpt_list_steps(dir, ".h5.tmp", &tmps);
    if (n < 0 || nt < 0) {
        fprintf(stderr, "insitra-ckpt: %s: cannot open directory: %s\n", dir, strerror(errno));
        free(steps);
        return EXIT_PROBLEM;
    }
    char latest[64];
    insitra_ckpt_read_latest(dir, latest, sizeof latest);
    printf("%-26s %10s %10s %6s  %s\n", "file", "step", "size", "latest", "status");
    int latest_found = 0;
    /* Oldest first, a step's temporary file after its checkpoint. */
    for (int64_t i = n - 1, j = nt - 1; i >= 0 || j >= 0;) {
        if (j < 0 || (i >= 0 && steps[i] <= tmps[j]))
            list_row(dir, steps[i--], 0, latest, &latest_found);
        else
            list_row(dir, tmps[j--], 1, latest, &latest_found);
    }
    if (n + nt == 0) printf("(no checkpoints in %s)\n", dir);
    if (latest[0] && !latest_found)
        printf("latest names '%s', which is not in %s\n", latest, dir);
    else if (!latest[0] && n > 0)
        printf("no `latest` file in %s\n", dir);
    free(steps);
    free(tmps);
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
        hid_t dset = open_dataset(file, l.items[i]);
        hsize_t dims[4];
        const int ndim = dset < 0 ? -1 : insitra_ckpt_shape(dset, dims);
        int64_t n = ndim < 0 ? 0 : 1;
        for (int k = 0; k < ndim; k++) n *= (int64_t)dims[k];
        numel += n;
        if (dset >= 0) H5Dclose(dset);
    }
    *count = (int64_t)l.n;
    path_list_free(&l);
    return numel;
}

static void info_model(const ckpt_file *c)
{
    char why[512];
    insitra_config *cfg = ckpt_config(c, why, sizeof why);
    if (!cfg) {
        printf("%-14s %s\n", "model", why);
        return;
    }
    const char *keys[] = {"model.d_model", "model.n_layers",     "model.n_heads",
                          "model.seq_len", "model.in_features", "model.out_features", "model.causal"};
    printf("%-14s", "model");
    char value[64];
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        if (insitra_config_get(cfg, keys[k], value, sizeof value) == INSITRA_STATUS_OK)
            printf(" %s=%s", strchr(keys[k], '.') + 1, value);
    printf("\n");
    const insitra_model_dims dims = insitra_config_model_dims(cfg);
    insitra_param_layout layout;
    if (insitra_param_layout_create(&layout, &dims) == INSITRA_STATUS_OK) {
        printf("%-14s %" PRId64 " tensors, %" PRId64 " parameters\n", "config implies", layout.num_tensors,
               layout.total);
        insitra_param_layout_free(&layout);
    }
    insitra_config_free(cfg);
}

static void info_samples(const ckpt_file *c)
{
    if (!group_exists(c->file, INSITRA_CKPT_SAMPLES_GROUP)) {
        printf("%-14s absent\n", "samples");
        return;
    }
    const char *path = insitra_ckpt_tables[INSITRA_CKPT_SAMPLE_COUNT].path;
    hid_t dset = open_dataset(c->file, path);
    hsize_t dims[4];
    const int ndim = dset < 0 ? -1 : insitra_ckpt_shape(dset, dims);
    int64_t *per_rank = ndim == 1 && dims[0] > 0 && dims[0] <= 1u << 24 ? malloc(dims[0] * sizeof *per_rank) : NULL;
    /* from format 3 the ranks sharing each sample's tokens store it once, whole */
    int64_t slices = 1, bad;
    char why[256];
    insitra_config *cfg =
        c->meta.format >= INSITRA_CKPT_FORMAT_GLOBAL_SAMPLES ? ckpt_config(c, why, sizeof why) : NULL;
    if (cfg) slices = insitra_config_token_slices(cfg);
    insitra_config_free(cfg);
    const int64_t total =
        per_rank && H5Dread(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, per_rank) >= 0
            ? insitra_ckpt_sample_rows(per_rank, (int64_t)dims[0], slices, &bad)
            : -1;
    if (total >= 0) {
        printf("%-14s %" PRId64 " stored (per rank:", "samples", total);
        for (hsize_t r = 0; r < dims[0] && r < 16; r++) printf(" %" PRId64, per_rank[r]);
        printf("%s)\n", dims[0] > 16 ? " ..." : "");
    } else {
        printf("%-14s present, /%s missing, malformed or unreadable\n", "samples", path);
    }
    free(per_rank);
    if (dset >= 0) H5Dclose(dset);
}

static int cmd_info(const char *path)
{
    ckpt_file c;
    char why[512];
    if (!ckpt_open(&c, path, 1, why, sizeof why)) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path, why);
        return EXIT_PROBLEM;
    }
    const insitra_ckpt_meta *m = &c.meta;
    printf("%-14s %s\n", "file", path);
    if (c.exported)
        printf("%-14s model export (weights only, made by insitra-ckpt export)\n", "kind");
    else
        printf("%-14s %" PRId64 "\n", "format", m->format);
    printf("%-14s %s\n", "written by", m->version ? m->version : "(absent)");
    print_attr("step", m->step);
    if (!c.exported) {
        if (m->world_size >= 0 && m->dp >= 0 && m->tp >= 0)
            printf("%-14s %" PRId64 " ranks (dp %" PRId64 " x tp %" PRId64 ")\n", "world", m->world_size, m->dp,
                   m->tp);
        else
            print_attr("world_size", m->world_size);
        print_attr("zero_stage", m->zero_stage);
        printf("%-14s %s\n", "complete", m->complete == 1 ? "yes" : "NO");
        printf("%-14s %s\n", "metadata crc",
               m->meta_crc < 0 ? "none (format 1)"
               : insitra_ckpt_meta_crc(m) == (uint32_t)m->meta_crc ? "right" : "WRONG");
    }
    info_model(&c);
    int64_t count;
    const int64_t params = group_numel(c.file, "/model", &count);
    printf("%-14s %" PRId64 " tensors in /model, %" PRId64 " parameters (%.1f MiB as float32)\n", "stored", count,
           params, (double)params * 4 / 1048576.0);
    if (!c.exported) {
        int64_t m_count = 0, v_count = 0;
        if (group_exists(c.file, "/optim/m") && group_exists(c.file, "/optim/v")) {
            group_numel(c.file, "/optim/m", &m_count);
            group_numel(c.file, "/optim/v", &v_count);
            printf("%-14s AdamW moments: %" PRId64 " tensors in /optim/m, %" PRId64 " in /optim/v\n", "optimizer",
                   m_count, v_count);
        } else {
            printf("%-14s absent\n", "optimizer");
        }
    }
    info_samples(&c);
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
        const hsize_t want[2] = {(hsize_t)d->global_shape[0], (hsize_t)d->global_shape[1]};
        snprintf(path, sizeof path, "/%s/%s", group, d->name);
        check_dataset(file, path, INSITRA_CKPT_FLOAT32, d->ndim, want);
    }
    snprintf(path, sizeof path, "/%s", group);
    path_list found = list_datasets(file, path);
    for (size_t k = 0; k < found.n; k++)
        if (insitra_param_layout_find(l, found.items[k] + strlen(path) + 1) < 0)
            problem(found.items[k], "not a tensor of the stored configuration's model");
    path_list_free(&found);
}

/* The per-rank tables against the writer's world size, and the samples'
 * shape against their counts: whole samples (dims->cp = 1), a row per group
 * of `slices` ranks (format 3), or before format 3 each rank's rows of its
 * own slice (dims->cp = parallel.cp, slices = 1). */
static void check_rank_tables(const ckpt_file *c, const insitra_model_dims *dims, int64_t slices)
{
    if (c->meta.world_size < 1) return; /* already a metadata problem */
    const hsize_t w = (hsize_t)c->meta.world_size;
    const int samples = group_exists(c->file, INSITRA_CKPT_SAMPLES_GROUP);
    char path[128];
    for (int k = 0; k < (samples ? INSITRA_CKPT_TABLES : INSITRA_CKPT_SAMPLE_COUNT); k++) {
        const insitra_ckpt_table *t = &insitra_ckpt_tables[k];
        const hsize_t want[2] = {w, (hsize_t)t->width};
        snprintf(path, sizeof path, "/%s", t->path);
        check_dataset(c->file, path, INSITRA_CKPT_INT64, t->width > 1 ? 2 : 1, want);
    }
    if (!samples || !dims) return;
    hid_t dset = open_dataset(c->file, insitra_ckpt_tables[INSITRA_CKPT_SAMPLE_COUNT].path);
    hsize_t cdims[4];
    int64_t *counts = dset >= 0 && insitra_ckpt_shape(dset, cdims) == 1 && cdims[0] == w ? malloc(w * sizeof *counts)
                                                                                       : NULL;
    int64_t total = -1, bad = -1;
    if (counts && H5Dread(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, counts) >= 0) {
        /* from the file: a negative count, a sum past 2^62 or a group's ranks disagreeing is damage */
        total = insitra_ckpt_sample_rows(counts, (int64_t)w, slices, &bad);
        if (total < 0)
            problem(
                insitra_ckpt_tables[INSITRA_CKPT_SAMPLE_COUNT].path,
                "rank %lld holds %lld samples, which no store holds (the counts must be non-negative, add "
                "up within 2^62, and be the same on the %lld ranks sharing each sample)",
                (long long)bad, bad >= 0 ? (long long)counts[bad] : -1LL, (long long)slices);
    }
    free(counts);
    if (dset >= 0) H5Dclose(dset);
    if (total < 0) return; /* a problem named above, or a CRC mismatch below */
    /* a row holds seq_len / dims->cp tokens */
    const hsize_t T = (hsize_t)insitra_model_dims_tokens(dims), n = (hsize_t)total;
    const hsize_t x[2] = {n, T * (hsize_t)dims->in_features}, y[2] = {n, T * (hsize_t)dims->out_features};
    check_dataset(c->file, "/" INSITRA_CKPT_SAMPLES_X, INSITRA_CKPT_FLOAT32, 2, x);
    check_dataset(c->file, "/" INSITRA_CKPT_SAMPLES_Y, INSITRA_CKPT_FLOAT32, 2, y);
}

/* The crc32c attribute of every dataset in the file against its data (the
 * integer tables carry one from format 2 on). Counts the float32 datasets
 * checked into *floats and the tables into *tables. */
static void check_crcs(hid_t file, int tables_have_crc, void *buf, int64_t *floats, int64_t *tables)
{
    path_list all = list_datasets(file, "");
    for (size_t i = 0; i < all.n; i++) {
        const char *path = all.items[i];
        hid_t dset = open_dataset(file, path);
        if (dset < 0) {
            problem(path, "cannot open the dataset");
            continue;
        }
        const int kind = insitra_ckpt_dataset_kind(dset);
        int64_t stored;
        uint32_t crc;
        if (kind == INSITRA_CKPT_OTHER || (kind == INSITRA_CKPT_INT64 && !tables_have_crc)) {
            /* not a checksummed dataset */
        } else if (insitra_ckpt_attr_read_i64(dset, INSITRA_CKPT_CRC_ATTR, &stored) != 1 || stored < 0 ||
                   stored > UINT32_MAX) {
            problem(path, "no crc32c attribute");
        } else if (!dataset_crc(dset, -1, buf, &crc)) {
            problem(path, "cannot read the data (truncated or corrupt file)");
        } else {
            ++*(kind == INSITRA_CKPT_FLOAT32 ? floats : tables);
            if (crc != (uint32_t)stored)
                problem(path, "crc32c mismatch: attribute 0x%08" PRIX32 ", data 0x%08" PRIX32, (uint32_t)stored, crc);
        }
        H5Dclose(dset);
    }
    path_list_free(&all);
}

/* The root metadata as the loader judges it, one problem at most. */
static void check_meta(const ckpt_file *c)
{
    if (c->exported) {
        if (c->meta.step < 0) problem("/", "no step attribute");
        return;
    }
    const char *warning = NULL;
    if (insitra_ckpt_meta_check(&c->meta, &warning) != INSITRA_STATUS_OK) problem("/", "%s", insitra_last_error());
    if (warning) printf("  NOTE: no metadata checksum (%s)\n", warning);
}

static int cmd_verify(const char *path)
{
    ckpt_file c;
    char why[512];
    printf("verify %s\n", path);
    problems = 0;
    if (!ckpt_open(&c, path, 1, why, sizeof why)) {
        problem(path, "%s", why);
        printf("INVALID: %s (1 problem)\n", path);
        return EXIT_PROBLEM;
    }
    check_meta(&c);
    insitra_config *cfg = ckpt_config(&c, why, sizeof why);
    insitra_model_dims dims = {0};
    insitra_param_layout layout = {0};
    int have_layout = 0;
    int64_t slices = 1;
    if (!cfg) {
        problem("/", "%s: the expected tensors are unknown", why);
    } else {
        dims = insitra_config_model_dims(cfg);
        /* format 3 stores whole samples, one row per group of ranks sharing them;
         * before, each rank its own slice's rows (docs/checkpoint.md) */
        if (c.meta.format >= INSITRA_CKPT_FORMAT_GLOBAL_SAMPLES)
            slices = insitra_config_token_slices(cfg);
        else
            dims.cp = cfg->parallel.cp;
        have_layout = insitra_param_layout_create(&layout, &dims) == INSITRA_STATUS_OK;
        if (!have_layout) problem("/", "stored config: %s", insitra_last_error());
        insitra_config_free(cfg);
    }
    for (int g = 0; have_layout && g < (c.exported ? 1 : INSITRA_CKPT_GROUPS); g++)
        check_tensors(c.file, insitra_ckpt_group[g], &layout);
    if (!c.exported) check_rank_tables(&c, have_layout ? &dims : NULL, slices);

    void *buf = malloc(CHUNK_BYTES);
    if (!buf) {
        fprintf(stderr, "insitra-ckpt: out of memory\n");
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    int64_t floats = 0, tables = 0;
    check_crcs(c.file, !c.exported && c.meta.format >= 2, buf, &floats, &tables);
    free(buf);
    if (have_layout) insitra_param_layout_free(&layout);
    ckpt_close(&c);
    if (problems) {
        printf("INVALID: %s (%d problem%s)\n", path, problems, problems == 1 ? "" : "s");
        return EXIT_PROBLEM;
    }
    printf("VALID: %s (%" PRId64 " float32 datasets and %" PRId64 " integer tables, every CRC32C right)\n", path,
           floats, tables);
    return EXIT_VALID;
}

/* ------------------------------------------------------------------------ */
/* export                                                                   */
/* ------------------------------------------------------------------------ */

/* Copies one float32 dataset into group dst_group under the same name,
 * checking its CRC on the way. */
static int export_tensor(hid_t src_file, const char *path, hid_t dst_group, void *buf, int64_t *numel)
{
    hid_t src = open_dataset(src_file, path);
    if (src < 0 || insitra_ckpt_dataset_kind(src) != INSITRA_CKPT_FLOAT32) {
        fprintf(stderr, "insitra-ckpt: %s: not a float32 dataset\n", path);
        if (src >= 0) H5Dclose(src);
        return 0;
    }
    hsize_t dims[4];
    const int ndim = insitra_ckpt_shape(src, dims);
    int64_t stored;
    const int has_crc = insitra_ckpt_attr_read_i64(src, INSITRA_CKPT_CRC_ATTR, &stored) == 1;
    hid_t space = ndim > 0 ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dst = H5Dcreate2(dst_group, strrchr(path, '/') + 1, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                           H5P_DEFAULT);
    H5Sclose(space);
    uint32_t crc = 0;
    int ok = dst >= 0 && dataset_crc(src, dst, buf, &crc);
    if (!ok) fprintf(stderr, "insitra-ckpt: %s: cannot copy (truncated or corrupt file?)\n", path);
    if (ok && has_crc && (uint32_t)stored != crc) {
        fprintf(stderr,
                "insitra-ckpt: %s: crc32c mismatch (attribute 0x%08" PRIX32 ", data 0x%08" PRIX32
                "): the checkpoint is corrupt\n",
                path, (uint32_t)stored, crc);
        ok = 0;
    }
    if (ok && insitra_ckpt_attr_write_u32(dst, INSITRA_CKPT_CRC_ATTR, crc) != INSITRA_STATUS_OK) {
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
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int cmd_export(const char *path, const char *out)
{
    ckpt_file c;
    char why[512];
    if (!ckpt_open(&c, path, 1, why, sizeof why)) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path, why);
        return EXIT_PROBLEM;
    }
    if (same_file(path, out)) {
        fprintf(stderr, "insitra-ckpt: %s: OUT is the checkpoint itself\n", out);
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    path_list tensors = list_datasets(c.file, "/model");
    if (!c.meta.config || tensors.n == 0) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path, c.meta.config ? "no tensors in /model" : "no config attribute");
        path_list_free(&tensors);
        ckpt_close(&c);
        return EXIT_PROBLEM;
    }
    void *buf = malloc(CHUNK_BYTES);
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
    /* the normalisation statistics, when the model was trained with them: without
     * them the weights' inputs and outputs have no physical meaning */
    if (ok && H5Lexists(c.file, INSITRA_CKPT_NORM_GROUP, H5P_DEFAULT) > 0 &&
        H5Ocopy(c.file, INSITRA_CKPT_NORM_GROUP, dst, INSITRA_CKPT_NORM_GROUP, H5P_DEFAULT, H5P_DEFAULT) < 0) {
        fprintf(stderr, "insitra-ckpt: %s: cannot copy /%s\n", path, INSITRA_CKPT_NORM_GROUP);
        ok = 0;
    }
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    /* the export format insitra_export_save writes (ckpt_format.h), and where it came from */
    insitra_config *stored = NULL;
    ok = ok && insitra_config_create(&stored) == INSITRA_STATUS_OK &&
         insitra_config_load_yaml_string(stored, c.meta.config) == INSITRA_STATUS_OK &&
         insitra_export_attrs_write(dst, stored, c.meta.config, c.meta.step) == INSITRA_STATUS_OK &&
         insitra_ckpt_attr_write_str(dst, "source", base) == INSITRA_STATUS_OK;
    insitra_config_free(stored);
    if (model >= 0) H5Gclose(model);
    if (dst >= 0 && H5Fclose(dst) < 0) ok = 0;
    free(buf);
    if (ok) {
        printf("exported %zu tensors (%" PRId64 " parameters, %.1f MiB) of step %" PRId64 " to %s\n", tensors.n,
               params, (double)params * 4 / 1048576.0, c.meta.step, out);
    } else {
        if (dst >= 0) unlink(out); /* never leave half an export behind */
        fprintf(stderr, "insitra-ckpt: export of %s failed\n", path);
    }
    path_list_free(&tensors);
    ckpt_close(&c);
    return ok ? EXIT_VALID : EXIT_PROBLEM;
}

/* The stored configuration, as the trainer wrote it (YAML). */
static int cmd_config(const char *path)
{
    ckpt_file c;
    char why[512];
    if (!ckpt_open(&c, path, 1, why, sizeof why)) {
        fprintf(stderr, "insitra-ckpt: %s: %s\n", path, why);
        return EXIT_PROBLEM;
    }
    const char *yaml = c.meta.config;
    if (yaml) fputs(yaml, stdout);
    if (yaml && yaml[0] != '\0' && yaml[strlen(yaml) - 1] != '\n') putchar('\n');
    if (!yaml) fprintf(stderr, "insitra-ckpt: %s: no config attribute\n", path);
    ckpt_close(&c);
    return yaml ? EXIT_VALID : EXIT_PROBLEM;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")))
        return usage(stdout);
    /* Problems are reported here, one line each, not as HDF5's error stack. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *cmd = argc >= 2 ? argv[1] : "";
    if (!strcmp(cmd, "list") && argc == 3) return cmd_list(argv[2]);
    if (!strcmp(cmd, "info") && argc == 3) return cmd_info(argv[2]);
    if (!strcmp(cmd, "verify") && argc == 3) return cmd_verify(argv[2]);
    if (!strcmp(cmd, "export") && argc == 4) return cmd_export(argv[2], argv[3]);
    if (!strcmp(cmd, "config") && argc == 3) return cmd_config(argv[2]);
    if (argc >= 2 && strcmp(cmd, "list") && strcmp(cmd, "info") && strcmp(cmd, "verify") && strcmp(cmd, "export") &&
        strcmp(cmd, "config"))
        fprintf(stderr, "insitra-ckpt: unknown command '%s'\n", cmd);
    else if (argc >= 2)
        fprintf(stderr, "insitra-ckpt: %s: wrong number of arguments\n", cmd);
    return usage(stderr);
}
