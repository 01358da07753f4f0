/*
 * Loading a checkpoint: verify and read one file, or walk a directory from
 * `latest` back to the newest checkpoint that verifies. Each rank reads what
 * its own layout needs, so any rank count, ZeRO stage, parallel.cp and
 * parallel.tp can resume any checkpoint (tensors are stored whole, and a
 * rank reads its tp part of them and its token slice of the stored samples);
 * CRC32Cs are checked piece by piece and combined across ranks.
 * Everything that decides what is read (the root attributes, the stored
 * configuration, the integer tables) is checked before the first byte of
 * the state is written.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "ckpt_dir.h"
#include "ckpt_format.h"
#include "ckpt_io.h"
#include "ckpt_user.h"
#include "crc32c.h"
#include "error.h"

#define PATH_LEN 4200
#define ANOTHER_MODEL "holds another model"

/* What the stored configuration says of the file's layout. */
typedef struct writer_layout {
    int64_t slices; /* token slices of a sample (insitra_config_token_slices) */
    int64_t cp;     /* parallel.cp (a format-2 file's samples are per cp rank) */
} writer_layout;

/* The stored configuration must describe the same model; its layout (any
 * parallel.cp and rank count) into *wl. */
static insitra_status check_model(const insitra_config *mine, const insitra_ckpt_meta *meta, const char *file,
                                  writer_layout *wl)
{
    /* what the weights mean: the shapes, and the units of the inputs and targets (an older
     * file reads as data.normalize off, model.residual false) */
    static const char *keys[] = {"model.seq_len", "model.in_features", "model.out_features",
                                 "model.d_model", "model.n_layers", "model.n_heads", "model.causal",
                                 "model.residual", "model.residual_inputs", "data.normalize"};
    insitra_config *stored = NULL;
    INSITRA_CHECK(insitra_config_create(&stored));
    insitra_status s = insitra_config_load_yaml_string(stored, meta->config);
    if (s != INSITRA_STATUS_OK) {
        insitra_config_free(stored);
        return insitra_error_prefix(INSITRA_STATUS_IO_ERROR, "stored configuration: ");
    }
    wl->slices = insitra_config_token_slices(stored);
    wl->cp = stored->parallel.cp;
    if (meta->world_size % wl->slices != 0)
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR,
                              "checkpoint '%s' was saved by %" PRId64 " ranks, which %" PRId64
                              " token slices (parallel.cp x parallel.tp) do not divide",
                              file, meta->world_size, wl->slices);
    for (size_t k = 0; k < sizeof keys / sizeof keys[0] && s == INSITRA_STATUS_OK; k++) {
        char theirs[INSITRA_CONFIG_PATH_MAX + 32], ours[INSITRA_CONFIG_PATH_MAX + 32];
        insitra_config_get(stored, keys[k], theirs, sizeof theirs);
        insitra_config_get(mine, keys[k], ours, sizeof ours);
        if (strcmp(theirs, ours) != 0)
            s = insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                  "checkpoint '%s' " ANOTHER_MODEL ": key '%s' is %s there but %s in this "
                                  "trainer's configuration",
                                  file, keys[k], theirs, ours);
    }
    insitra_config_free(stored);
    return s;
}

/* The integer tables, whole, on every rank (a few words per writer rank):
 * shapes against the writer count, CRCs (format 2), and the sample counts. */
typedef struct tables {
    uint64_t *row[INSITRA_CKPT_TABLES]; /* (writers, width) each; NULL if absent */
    int64_t total_samples;
} tables;

static void tables_free(tables *tb)
{
    for (int k = 0; k < INSITRA_CKPT_TABLES; k++) free(tb->row[k]);
}

static insitra_status read_table(hid_t f, int k, int64_t writers, bool check_crc, uint64_t **out)
{
    const insitra_ckpt_table *t = &insitra_ckpt_tables[k];
    const hsize_t want[2] = {(hsize_t)writers, (hsize_t)t->width};
    hid_t dset;
    INSITRA_CHECK(insitra_ckpt_open_dataset(f, t->path, INSITRA_CKPT_INT64, t->width > 1 ? 2 : 1, want, &dset));
    insitra_status s = INSITRA_STATUS_OK;
    const size_t bytes = (size_t)(writers * t->width) * sizeof(uint64_t);
    if (s == INSITRA_STATUS_OK && !(*out = malloc(bytes)))
        s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory for '/%s'", t->path);
    if (s == INSITRA_STATUS_OK &&
        H5Dread(dset, t->is_unsigned ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
        s = insitra_ckpt_h5_error("cannot read '/%s'", t->path);
    uint32_t stored = 0;
    if (s == INSITRA_STATUS_OK && check_crc) s = insitra_ckpt_attr_read_crc(dset, t->path, &stored);
    if (s == INSITRA_STATUS_OK && check_crc && insitra_crc32c(0, *out, bytes) != stored)
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/%s' is %08x, the file says %08x", t->path,
                              insitra_crc32c(0, *out, bytes), stored);
    H5Dclose(dset);
    return s;
}

static insitra_status read_tables(hid_t f, const insitra_ckpt_meta *meta, int64_t slices, tables *tb)
{
    const bool samples = H5Lexists(f, INSITRA_CKPT_SAMPLES_GROUP, H5P_DEFAULT) > 0;
    const int n = samples ? INSITRA_CKPT_TABLES : INSITRA_CKPT_SAMPLE_COUNT;
    for (int k = 0; k < n; k++)
        INSITRA_CHECK(read_table(f, k, meta->world_size, meta->format >= 2, &tb->row[k]));
    tb->total_samples = 0;
    if (!samples) return INSITRA_STATUS_OK;
    int64_t bad = -1;
    tb->total_samples = insitra_ckpt_sample_rows((const int64_t *)tb->row[INSITRA_CKPT_SAMPLE_COUNT],
                                                 meta->world_size, slices, &bad);
    if (tb->total_samples < 0)
        return insitra_error_set(
            INSITRA_STATUS_IO_ERROR,
            "'/samples/count' of rank %" PRId64 " is %" PRId64
            " (negative, too large, or not its group's: %" PRId64 " ranks share each sample)",
            bad, bad >= 0 ? (int64_t)tb->row[INSITRA_CKPT_SAMPLE_COUNT][bad] : -1, slices);
    return INSITRA_STATUS_OK;
}

/* Reads one group of tensors: whole tensors into full (when full != NULL) or
 * this rank's slots into shard; collects the slot CRCs. */
static insitra_status read_tensors(const insitra_ckpt_state *st, hid_t f, hid_t dxpl, int g, uint32_t *crc,
                                   uint64_t *bytes, uint32_t *stored)
{
    const insitra_param_layout *l = st->layout;
    float *full, *shard;
    insitra_ckpt_group_buffers(st, g, &full, &shard);
    char path[128];
    for (int64_t i = 0; i < l->num_tensors; i++) {
        const insitra_tensor_desc *d = &l->tensors[i];
        snprintf(path, sizeof path, "%s/%s", insitra_ckpt_group[g], d->name);
        /* the whole tensor, of which this rank reads its tp rank's part (at this run's tp) */
        const hsize_t want[2] = {(hsize_t)d->global_shape[0], (hsize_t)d->global_shape[1]};
        hid_t dset;
        INSITRA_CHECK(insitra_ckpt_open_dataset(f, path, INSITRA_CKPT_FLOAT32, d->ndim, want, &dset));
        insitra_status s = insitra_ckpt_attr_read_crc(dset, path, &stored[i]);
        const insitra_ckpt_piece p = insitra_ckpt_slot(st, i, full, shard);
        if (s == INSITRA_STATUS_OK) {
            /* all of the local tensor when it is held whole, else the slot */
            const int64_t first = full ? 0 : p.first, count = full ? d->numel : p.count;
            float *into = full ? full + d->offset : p.data;
            hid_t fspace = -1, mspace = -1;
            s = insitra_ckpt_select_tensor(dset, d, st->tp_rank, first, count, &fspace, &mspace);
            if (s == INSITRA_STATUS_OK && H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, into) < 0)
                s = insitra_ckpt_h5_error("cannot read '/%s'", path);
            if (fspace >= 0) H5Sclose(fspace);
            if (mspace >= 0) H5Sclose(mspace);
        }
        H5Dclose(dset);
        INSITRA_CHECK(s);
        /* the slot's share of the whole tensor's CRC, once per element: a
         * replicated tensor counted on tp rank 0 only (combined by XOR, bytes 0) */
        bytes[i] = 0;
        crc[i] = insitra_ckpt_slot_written(st, i) ? insitra_ckpt_tensor_crc(d, st->tp_rank, p.first, p.count, p.data)
                                                  : 0;
    }
    return INSITRA_STATUS_OK;
}

static insitra_status compare_crcs(const insitra_param_layout *l, int g, const uint32_t *crc,
                                   const uint32_t *stored)
{
    for (int64_t i = 0; i < l->num_tensors; i++)
        if (crc[i] != stored[i])
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/%s/%s' is %08x, the file says %08x",
                                     insitra_ckpt_group[g], l->tensors[i].name, crc[i], stored[i]);
    return INSITRA_STATUS_OK;
}

/* Parameters and moments, all ranks together; the CRCs compared once combined. */
static insitra_status read_state(const insitra_ckpt_state *st, hid_t f)
{
    const int64_t nt = st->layout->num_tensors;
    uint32_t *crc = calloc((size_t)(6 * nt), sizeof(uint32_t));
    uint64_t *bytes = calloc((size_t)(3 * nt), sizeof(uint64_t));
    insitra_status s = crc && bytes ? INSITRA_STATUS_OK
                                    : insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT); /* disjoint pieces: see ckpt_write.c */
    for (int g = 0; g < INSITRA_CKPT_GROUPS && s == INSITRA_STATUS_OK; g++)
        s = read_tensors(st, f, dxpl, g, crc + g * nt, bytes + g * nt, crc + 3 * nt + g * nt);
    H5Pclose(dxpl);
    s = insitra_comm_agree(st->world, s);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_combine_crcs(st->world, crc, bytes, 3 * nt);
    /* Every rank sees the same combined CRCs: a mismatch is the same everywhere. */
    for (int g = 0; g < INSITRA_CKPT_GROUPS && s == INSITRA_STATUS_OK; g++)
        s = compare_crcs(st->layout, g, crc + g * nt, crc + 3 * nt + g * nt);
    free(crc);
    free(bytes);
    return s;
}

/* The stored samples, whole rows of every token: each group of this run's
 * ranks (insitra_config_token_slices consecutive ranks) takes the rows of
 * the writer's group of its index when the number of groups (data
 * replicas) is the same, otherwise an even block of all of them; each rank
 * reads its slice's columns of those rows. The newest data.capacity are
 * kept, older ones only enter the CRC. The datasets' extents were checked
 * against the (checked) counts, so no selection reaches past them, and no
 * read is larger than the store. */
static insitra_status read_samples(const insitra_ckpt_state *st, hid_t f, int64_t writer_groups,
                                   int64_t writer_slices, const tables *tb)
{
    const int64_t slices = insitra_config_token_slices(st->cfg), slice = st->world->rank % slices;
    const int64_t groups = st->world->size / slices, group = st->world->rank / slices;
    const int64_t total = tb->total_samples;
    const uint64_t *counts = tb->row[INSITRA_CKPT_SAMPLE_COUNT];
    int64_t first = total * group / groups, n = total * (group + 1) / groups - first;
    if (writer_groups == groups) {
        first = 0;
        for (int64_t g = 0; g < group; g++) first += (int64_t)counts[g * writer_slices];
        n = (int64_t)counts[group * writer_slices];
    }
    insitra_sample_store *sm = st->store;
    const int64_t keep = n < sm->capacity ? n : sm->capacity;
    const char *paths[2] = {INSITRA_CKPT_SAMPLES_X, INSITRA_CKPT_SAMPLES_Y};
    float *bufs[2] = {sm->x, sm->y};
    const int64_t widths[2] = {sm->x_numel, sm->y_numel}; /* this rank's slice of a row */
    uint32_t crc[2] = {0, 0}, stored[2] = {0, 0};
    const uint64_t bytes[2] = {0, 0}; /* the shares are XORed (insitra_ckpt_crc_rows) */
    insitra_status s = INSITRA_STATUS_OK;
    for (int p = 0; p < 2 && s == INSITRA_STATUS_OK; p++) {
        const hsize_t want[2] = {(hsize_t)total, (hsize_t)(slices * widths[p])};
        hid_t dset;
        s = insitra_ckpt_open_dataset(f, paths[p], INSITRA_CKPT_FLOAT32, 2, want, &dset);
        if (s != INSITRA_STATUS_OK) break;
        s = insitra_ckpt_attr_read_crc(dset, paths[p], &stored[p]);
        const uint64_t piece = (uint64_t)widths[p] * sizeof(float), row_bytes = (uint64_t)slices * piece;
        uint32_t acc = 0;
        /* Older rows pass through the buffer for the CRC, then the kept ones stay. */
        for (int64_t at = first; at < first + n && s == INSITRA_STATUS_OK;) {
            const int64_t older = first + n - keep - at;
            const int64_t rows = older > 0 ? (older < keep ? older : keep) : first + n - at;
            hid_t fspace = -1, mspace = -1;
            s = insitra_ckpt_select_block(dset, at, rows, slice * widths[p], widths[p], &fspace, &mspace);
            if (s == INSITRA_STATUS_OK && H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, bufs[p]) < 0)
                s = insitra_ckpt_h5_error("cannot read '/%s'", paths[p]);
            if (fspace >= 0) H5Sclose(fspace);
            if (mspace >= 0) H5Sclose(mspace);
            acc = insitra_ckpt_crc_rows(acc, bufs[p], rows, (size_t)piece, row_bytes);
            at += rows;
        }
        const uint64_t after =
            (uint64_t)(slices - 1 - slice) * piece + (uint64_t)(total - first - n) * row_bytes;
        crc[p] = n > 0 ? insitra_crc32c_combine(acc, 0, after) : 0;
        H5Dclose(dset);
    }
    /* Every rank takes part in the combination, even after a local failure. */
    insitra_status c = insitra_ckpt_combine_crcs(st->world, crc, bytes, 2);
    INSITRA_CHECK(s);
    INSITRA_CHECK(c);
    for (int p = 0; p < 2; p++)
        if (crc[p] != stored[p])
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/%s' is %08x, the file says %08x",
                                     paths[p], crc[p], stored[p]);
    sm->count = keep;
    sm->next = keep % sm->capacity;
    return INSITRA_STATUS_OK;
}

/* The samplers: a group's (its ranks draw together) exact when the number
 * of groups matches, taken from the first rank of the writer's group of the
 * same index; else fresh streams, one per group. */
static void restore_sampler(const insitra_ckpt_state *st, const insitra_ckpt_meta *meta,
                            int64_t writer_slices, const tables *tb)
{
    const int64_t slices = insitra_config_token_slices(st->cfg), group = st->world->rank / slices;
    if (meta->world_size / writer_slices == st->world->size / slices) {
        const int64_t from = group * writer_slices;
        memcpy(st->sampler->s, tb->row[INSITRA_CKPT_SAMPLER_STATE] + 4 * from, sizeof st->sampler->s);
        *st->sample_cursor = (int64_t)tb->row[INSITRA_CKPT_SAMPLE_CURSOR][from];
        st->store->pushed = (int64_t)tb->row[INSITRA_CKPT_SAMPLES_PUSHED][from];
    } else {
        insitra_rng_seed(st->sampler,
                         (uint64_t)st->cfg->training.seed ^ (uint64_t)meta->step * 0x9e3779b97f4a7c15ull,
                         1 + (uint64_t)group);
        *st->sample_cursor = 0;
    }
}

/* One file, all ranks together. On failure the view may be partly
 * overwritten (*touched says what); the caller loads another or resets. */
static insitra_status try_load(const insitra_ckpt_state *st, const char *file, insitra_ckpt_touched *touched)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, st->world->comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot open it as HDF5 (truncated or not a checkpoint)");

    insitra_ckpt_meta meta = {0};
    insitra_ckpt_meta_read(f, &meta);
    const char *warning = NULL;
    tables tb = {0};
    insitra_status s = insitra_ckpt_meta_check(&meta, &warning);
    writer_layout wl = {1, 1};
    if (s == INSITRA_STATUS_OK) s = check_model(st->cfg, &meta, file, &wl);
    const bool samples = H5Lexists(f, INSITRA_CKPT_SAMPLES_GROUP, H5P_DEFAULT) > 0;
    /* before format 3, the samples of a cp > 1 run were rows of each rank's own slice */
    if (s == INSITRA_STATUS_OK && samples && wl.slices > 1 &&
        meta.format < INSITRA_CKPT_FORMAT_GLOBAL_SAMPLES)
        s = insitra_error_set(
            INSITRA_STATUS_IO_ERROR,
            "checkpoint '%s' (format %" PRId64 ", insitra %s) holds its samples as the token "
            "slices of its parallel.cp = %" PRId64 " ranks, which this version (format %d) does "
            "not read; resume it with the version that wrote it",
            file, meta.format, meta.version ? meta.version : "?", wl.cp, INSITRA_CKPT_FORMAT);
    if (s == INSITRA_STATUS_OK) s = read_tables(f, &meta, wl.slices, &tb);
    /* Collective reads need every rank: agree before starting them. */
    s = insitra_comm_agree(st->world, s);
    if (s == INSITRA_STATUS_OK) {
        if (warning && st->world->rank == 0) fprintf(stderr, "insitra: %s: %s\n", file, warning);
        touched->state = true; /* from here a failure leaves the state mixed */
        s = read_state(st, f);
    }
    if (s == INSITRA_STATUS_OK && st->norm)
        s = insitra_comm_agree(st->world, insitra_ckpt_norm_read(f, st->norm, wl.slices));
    if (s == INSITRA_STATUS_OK) restore_sampler(st, &meta, wl.slices, &tb);
    if (s == INSITRA_STATUS_OK && tb.row[INSITRA_CKPT_SAMPLE_COUNT]) {
        touched->samples = true;
        s = insitra_comm_agree(st->world, read_samples(st, f, meta.world_size / wl.slices, wl.slices, &tb));
    }
    if (s == INSITRA_STATUS_OK && st->n_arrays > 0) {
        touched->arrays = true;
        s = insitra_ckpt_arrays_read(st, f);
    }
    H5Fclose(f);
    if (s == INSITRA_STATUS_OK) *st->step = meta.step;
    tables_free(&tb);
    insitra_ckpt_meta_free(&meta);
    return s;
}

/* Rank 0: the files to try, best first: what `latest` names, then every
 * step-*.h5 from the newest down. */
static int list_candidates(const char *path, char (*out)[PATH_LEN], int max)
{
    struct stat stbuf;
    if (stat(path, &stbuf) != 0 || !S_ISDIR(stbuf.st_mode)) {
        snprintf(out[0], PATH_LEN, "%s", path);
        return 1;
    }
    insitra_ckpt_dir_prepare(path); /* stale .tmp files: never loaded, removed here */
    int n = 0;
    char latest[64], name[64];
    insitra_ckpt_read_latest(path, latest, sizeof latest);
    if (latest[0]) snprintf(out[n++], PATH_LEN, "%s/%s", path, latest);
    int64_t *steps = NULL;
    const int64_t ns = insitra_ckpt_list_steps(path, ".h5", &steps);
    for (int64_t i = 0; i < ns && n < max; i++) {
        insitra_ckpt_file_name(name, sizeof name, steps[i]);
        if (strcmp(name, latest) != 0) snprintf(out[n++], PATH_LEN, "%s/%s", path, name);
    }
    free(steps);
    return n;
}

insitra_status insitra_ckpt_load(const insitra_ckpt_state *st, const char *path, char *path_out,
                                 size_t path_size, insitra_ckpt_touched *touched)
{
    enum { MAX_CANDIDATES = 64 };
    *touched = (insitra_ckpt_touched){false, false, false};
    char (*cand)[PATH_LEN] = malloc(MAX_CANDIDATES * PATH_LEN);
    if (!cand) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    int n = st->world->rank == 0 ? list_candidates(path, cand, MAX_CANDIDATES) : 0;
    MPI_Bcast(&n, 1, MPI_INT, 0, st->world->comm);
    char failures[INSITRA_ERROR_MAX] = "";
    insitra_status s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "no checkpoint found in '%s'", path);
    insitra_ckpt_quiet quiet;
    insitra_ckpt_quiet_begin(&quiet);
    for (int i = 0; i < n; i++) {
        MPI_Bcast(cand[i], PATH_LEN, MPI_CHAR, 0, st->world->comm);
        s = try_load(st, cand[i], touched);
        if (s == INSITRA_STATUS_OK) {
            if (path_out && path_size) snprintf(path_out, path_size, "%s", cand[i]);
            if (failures[0] && st->world->rank == 0 && st->cfg->log.every_steps > 0)
                printf("insitra: loaded %s after skipping:%s\n", cand[i], failures);
            break;
        }
        /* Another model (its configuration checksummed and intact): no older file fits either. */
        if (strstr(insitra_last_error(), ANOTHER_MODEL)) break;
        size_t used = strlen(failures);
        snprintf(failures + used, sizeof failures - used, " %s (%s);", cand[i], insitra_last_error());
        /* MPI or memory failures are not the file's fault: trying older files would not help. */
        if (s == INSITRA_STATUS_MPI_ERROR || s == INSITRA_STATUS_OUT_OF_MEMORY) break;
    }
    insitra_ckpt_quiet_end(&quiet);
    free(cand);
    if (s != INSITRA_STATUS_OK && !strstr(insitra_last_error(), ANOTHER_MODEL) && n > 0)
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "no valid checkpoint in '%s'%s. Tried:%s", path,
                              touched->state ? "; the trainer is back at its initial state"
                                             : "; the trainer is unchanged",
                              failures);
    return s;
}
