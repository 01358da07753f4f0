/*
 * Writing a checkpoint: rank 0 reserves the file's space, every rank writes
 * its slot of every tensor into it by parallel HDF5, the ranks agree, and
 * rank 0 commits (ckpt_dir.c). docs/checkpoint.md is the contract.
 *
 * No rank may leave a collective HDF5 call out, or the others wait in it for
 * ever: a local failure is remembered and the rank goes on taking part in
 * every collective call (skipping only its own data writes) until the
 * agreement before H5Fclose. Running out of space is ruled out before the
 * first collective call by the reservation.
 */
#include <inttypes.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "ckpt_dir.h"
#include "ckpt_format.h"
#include "ckpt_io.h"
#include "ckpt_user.h"
#include "crc32c.h"
#include "error.h"

#define PATH_LEN 4200

/* Fault injection for the crash tests: INSITRA_CKPT_FAULT=<point>:<rank>
 * kills that rank with SIGKILL when the save reaches <point>. */
static void fault_point(const insitra_ckpt_state *st, const char *point)
{
    const char *spec = getenv("INSITRA_CKPT_FAULT");
    if (!spec) return;
    const char *colon = strchr(spec, ':');
    if (!colon || (size_t)(colon - spec) != strlen(point) || strncmp(spec, point, strlen(point)) != 0)
        return;
    if (atoi(colon + 1) == st->world->rank) raise(SIGKILL);
}

/* ---- the CRCs of this rank's tensor slots, on a helper thread ---- */

/* The slots are not modified during a save, so their CRCs are computed while
 * the writing thread waits on the file system (the CRC used to run after
 * each write, on the writing thread, adding its time to the save's). */
typedef struct crc_job {
    const insitra_ckpt_state *st;
    uint32_t *crc;   /* (3 nt) */
    uint64_t *bytes; /* (3 nt) */
    bool done;
} crc_job;

static void crc_slots(crc_job *j)
{
    const int64_t nt = j->st->layout->num_tensors;
    for (int g = 0; g < INSITRA_CKPT_GROUPS; g++) {
        float *full, *shard;
        insitra_ckpt_group_buffers(j->st, g, &full, &shard);
        for (int64_t i = 0; i < nt; i++) {
            const insitra_ckpt_piece p = insitra_ckpt_slot(j->st, i, full, shard);
            /* a share of the whole tensor's CRC, in place: combined by XOR (bytes 0) */
            j->bytes[g * nt + i] = 0;
            j->crc[g * nt + i] = insitra_ckpt_slot_written(j->st, i)
                                     ? insitra_ckpt_tensor_crc(&j->st->layout->tensors[i], j->st->tp_rank, p.first,
                                                               p.count, p.data)
                                     : 0;
        }
    }
    j->done = true;
}

/* ---- the file ---- */

/* One save's state: the first local failure, kept while collectives go on. */
typedef struct writer {
    const insitra_ckpt_state *st;
    hid_t file, dxpl;
    insitra_status error;
    int64_t data_end; /* the end of the last dataset's space in the file */
} writer;

static void note(writer *w, insitra_status s)
{
    if (w->error == INSITRA_STATUS_OK) w->error = s;
}

static hid_t create_dataset(writer *w, const char *path, hid_t type, int ndim, const hsize_t *dims)
{
    hid_t space = ndim > 0 ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* Every element is written: skip the fill pass. */
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    hid_t dset = H5Dcreate2(w->file, path, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    if (dset < 0) {
        note(w, insitra_ckpt_h5_error("cannot create dataset '/%s'", path));
        return dset;
    }
    /* The space is allocated at creation (H5D_ALLOC_TIME_EARLY). */
    const haddr_t at = H5Dget_offset(dset);
    const int64_t end = at == HADDR_UNDEF ? 0 : (int64_t)(at + H5Dget_storage_size(dset));
    if (end > w->data_end) w->data_end = end;
    return dset;
}

/* This rank's elements [first, first + count) of dset (independent I/O), of
 * its local tensor t when t is not NULL: skipped after an earlier failure on
 * this rank. */
static void write_piece(writer *w, hid_t dset, const char *path, hid_t mem_type, const insitra_tensor_desc *t,
                        int64_t first, int64_t count, const void *data)
{
    if (dset < 0 || w->error != INSITRA_STATUS_OK) return;
    hid_t fspace = -1, mspace = -1;
    insitra_status s = t ? insitra_ckpt_select_tensor(dset, t, w->st->tp_rank, first, count, &fspace, &mspace)
                         : insitra_ckpt_select(dset, first, count, &fspace, &mspace);
    if (s == INSITRA_STATUS_OK && H5Dwrite(dset, mem_type, mspace, fspace, w->dxpl, data) < 0)
        s = insitra_ckpt_h5_error("cannot write '/%s'", path);
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    note(w, s);
}

static void create_group(writer *w, const char *path)
{
    hid_t g = H5Gcreate2(w->file, path, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) note(w, insitra_ckpt_h5_error("cannot create group '/%s'", path));
    else H5Gclose(g);
}

/* The float32 tensors of one group, in their whole shapes: this rank's slot
 * of each (none of a replicated tensor but on tp rank 0). */
static void write_tensors(writer *w, int g)
{
    const insitra_ckpt_state *st = w->st;
    float *full, *shard;
    insitra_ckpt_group_buffers(st, g, &full, &shard);
    char path[128];
    for (int64_t i = 0; i < st->layout->num_tensors; i++) {
        const insitra_tensor_desc *d = &st->layout->tensors[i];
        snprintf(path, sizeof path, "%s/%s", insitra_ckpt_group[g], d->name);
        const hsize_t dims[2] = {(hsize_t)d->global_shape[0], (hsize_t)d->global_shape[1]};
        hid_t dset = create_dataset(w, path, H5T_IEEE_F32LE, d->ndim, dims);
        const insitra_ckpt_piece p = insitra_ckpt_slot(st, i, full, shard);
        write_piece(w, dset, path, H5T_NATIVE_FLOAT, d, p.first, insitra_ckpt_slot_written(st, i) ? p.count : 0,
                    p.data);
        if (dset >= 0) H5Dclose(dset);
        if (g == 0 && i == st->layout->num_tensors / 2) fault_point(st, "tensors");
    }
}

/* The integer tables, one row per rank; their CRCs go to crc[k], bytes[k]. */
static void write_tables(writer *w, int n, uint32_t *crc, uint64_t *bytes)
{
    const insitra_ckpt_state *st = w->st;
    const uint64_t rows[INSITRA_CKPT_TABLES][4] = {
        [INSITRA_CKPT_SAMPLER_STATE] = {st->sampler->s[0], st->sampler->s[1], st->sampler->s[2],
                                        st->sampler->s[3]},
        [INSITRA_CKPT_SAMPLE_CURSOR] = {(uint64_t)*st->sample_cursor},
        [INSITRA_CKPT_SAMPLES_PUSHED] = {(uint64_t)st->store->pushed},
        [INSITRA_CKPT_SAMPLE_COUNT] = {(uint64_t)st->store->count},
    };
    for (int k = 0; k < n; k++) {
        const insitra_ckpt_table *tb = &insitra_ckpt_tables[k];
        const hsize_t dims[2] = {(hsize_t)st->world->size, (hsize_t)tb->width};
        const hid_t type = tb->is_unsigned ? H5T_STD_U64LE : H5T_STD_I64LE;
        hid_t dset = create_dataset(w, tb->path, type, tb->width > 1 ? 2 : 1, dims);
        write_piece(w, dset, tb->path, tb->is_unsigned ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64, NULL,
                    st->world->rank * tb->width, tb->width, rows[k]);
        if (dset >= 0) H5Dclose(dset);
        bytes[k] = (uint64_t)tb->width * sizeof(uint64_t);
        crc[k] = insitra_crc32c(0, rows[k], (size_t)bytes[k]);
    }
}

/* This rank's elements of the block [row, row + rows) x [col, col + cols)
 * of a 2-D dataset (independent I/O), from rows x cols contiguous values. */
static void write_block(writer *w, hid_t dset, const char *path, int64_t row, int64_t rows, int64_t col,
                        int64_t cols, const float *data)
{
    if (dset < 0 || w->error != INSITRA_STATUS_OK) return;
    hid_t fspace = -1, mspace = -1;
    insitra_status s = insitra_ckpt_select_block(dset, row, rows, col, cols, &fspace, &mspace);
    if (s == INSITRA_STATUS_OK && H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, w->dxpl, data) < 0)
        s = insitra_ckpt_h5_error("cannot write '/%s'", path);
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    note(w, s);
}

/* The samples, whole: one row per sample of every token, (total, T F). The
 * ranks of a group (insitra_config_token_slices consecutive ranks) hold the
 * same samples, each rank its slice of tokens: rank r writes the columns of
 * slice r % slices of its group's rows [offset, offset + count), oldest
 * first. Its share of each dataset's CRC goes to crc[0..2) (bytes 0: the
 * shares are XORed, insitra_ckpt_crc_rows). */
static void write_samples(writer *w, int64_t total, int64_t offset, uint32_t *crc, uint64_t *bytes)
{
    const insitra_sample_store *sm = w->st->store;
    const int64_t slices = insitra_config_token_slices(w->st->cfg), slice = w->st->world->rank % slices;
    /* The ring holds the oldest samples from slot `oldest` to the end, then from 0. */
    const int64_t oldest = (sm->next - sm->count + sm->capacity) % sm->capacity;
    const int64_t first_run = sm->count < sm->capacity - oldest ? sm->count : sm->capacity - oldest;
    const int64_t run_start[2] = {oldest, 0}, run_len[2] = {first_run, sm->count - first_run};
    const char *paths[2] = {INSITRA_CKPT_SAMPLES_X, INSITRA_CKPT_SAMPLES_Y};
    const float *data[2] = {sm->x, sm->y};
    const int64_t width[2] = {sm->x_numel, sm->y_numel}; /* this rank's slice of a row */
    for (int p = 0; p < 2; p++) {
        const hsize_t dims[2] = {(hsize_t)total, (hsize_t)(slices * width[p])};
        hid_t dset = create_dataset(w, paths[p], H5T_IEEE_F32LE, 2, dims);
        const uint64_t piece = (uint64_t)width[p] * sizeof(float), row_bytes = (uint64_t)slices * piece;
        uint32_t acc = 0;
        for (int k = 0; k < 2; k++) { /* the ring's two runs */
            const float *src = data[p] + run_start[k] * width[p];
            write_block(w, dset, paths[p], offset + (k ? first_run : 0), run_len[k], slice * width[p],
                        width[p], src);
            acc = insitra_ckpt_crc_rows(acc, src, run_len[k], (size_t)piece, row_bytes);
        }
        /* what follows this rank's last piece: the rest of its row, then the later rows */
        const uint64_t after =
            (uint64_t)(slices - 1 - slice) * piece + (uint64_t)(total - offset - sm->count) * row_bytes;
        crc[p] = sm->count > 0 ? insitra_crc32c_combine(acc, 0, after) : 0;
        bytes[p] = 0;
        if (dset >= 0) H5Dclose(dset);
    }
}

static void write_crc_attr(writer *w, const char *path, uint32_t crc);

/* The statistics: every rank holds the same bits, so every rank computes the
 * same CRCs and rank 0 alone writes the data. */
static void write_normalize(writer *w)
{
    const insitra_normalize *n = w->st->norm;
    create_group(w, INSITRA_CKPT_NORM_GROUP);
    double *a[INSITRA_CKPT_NORM_DATASETS];
    int64_t len[INSITRA_CKPT_NORM_DATASETS];
    insitra_ckpt_norm_arrays(n, a, len);
    for (int k = 0; k < INSITRA_CKPT_NORM_DATASETS; k++) {
        const char *path = insitra_ckpt_norm_datasets[k];
        const hsize_t dims[1] = {(hsize_t)len[k]};
        hid_t dset = create_dataset(w, path, H5T_IEEE_F64LE, 1, dims);
        if (w->st->world->rank == 0 && dset >= 0 && w->error == INSITRA_STATUS_OK &&
            H5Dwrite(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, w->dxpl, a[k]) < 0)
            note(w, insitra_ckpt_h5_error("cannot write '/%s'", path));
        if (dset >= 0) H5Dclose(dset);
        write_crc_attr(w, path, insitra_crc32c(0, a[k], (size_t)len[k] * sizeof(double)));
    }
    hid_t g = H5Gopen2(w->file, INSITRA_CKPT_NORM_GROUP, H5P_DEFAULT);
    if (g < 0) {
        note(w, insitra_ckpt_h5_error("lost '/%s'", INSITRA_CKPT_NORM_GROUP));
        return;
    }
    const insitra_status s = insitra_ckpt_norm_attrs_write(g, n);
    if (s != INSITRA_STATUS_OK) note(w, s);
    H5Gclose(g);
}

/* The caller's arrays: every rank creates each dataset, writes its piece. */
static void write_arrays(writer *w)
{
    const insitra_ckpt_state *st = w->st;
    if (st->n_arrays > 0) create_group(w, INSITRA_CKPT_USER_GROUP);
    char path[128];
    for (int64_t k = 0; k < st->n_arrays; k++) {
        const insitra_ckpt_array *a = &st->arrays[k];
        snprintf(path, sizeof path, INSITRA_CKPT_USER_GROUP "/%s", a->name);
        hsize_t dims[INSITRA_ARRAY_MAX_DIMS];
        for (int d = 0; d < a->ndim; d++) dims[d] = (hsize_t)a->global[d];
        hid_t dset = create_dataset(w, path, insitra_ckpt_type_file(a->type), a->ndim, dims);
        if (dset < 0) continue;
        hid_t fspace = -1, mspace = -1;
        bool empty = true;
        insitra_status s = INSITRA_STATUS_OK;
        if (w->error == INSITRA_STATUS_OK)
            s = insitra_ckpt_array_select(a, dset, true, st->world->rank, &fspace, &mspace, &empty);
        if (s == INSITRA_STATUS_OK && w->error == INSITRA_STATUS_OK && !empty &&
            H5Dwrite(dset, insitra_ckpt_type_mem(a->type), mspace, fspace, w->dxpl, a->data) < 0)
            s = insitra_ckpt_h5_error("cannot write '/%s'", path);
        note(w, s);
        if (fspace >= 0) H5Sclose(fspace);
        if (mspace >= 0) H5Sclose(mspace);
        H5Dclose(dset);
    }
}

static void write_crc_attr(writer *w, const char *path, uint32_t crc)
{
    hid_t dset = H5Dopen2(w->file, path, H5P_DEFAULT);
    if (dset < 0) {
        note(w, insitra_ckpt_h5_error("lost '/%s'", path));
        return;
    }
    insitra_status s = insitra_ckpt_attr_write_u32(dset, INSITRA_CKPT_CRC_ATTR, crc);
    if (s != INSITRA_STATUS_OK) note(w, s);
    H5Dclose(dset);
}

/* What a save prepares before opening the file: every allocation, so that
 * running out of memory is agreed on before the first collective call. */
typedef struct save_plan {
    int64_t n;             /* CRC entries: 3 groups of tensors, the tables, samples x and y */
    uint32_t *crc;         /* (n) */
    uint64_t *bytes;       /* (n) */
    char *yaml;            /* the stored configuration */
    uint32_t *array_crc;   /* (n_arrays) the caller's arrays, checked before the file opens */
    int64_t total_samples; /* every rank's held samples (with include_samples) */
    int64_t sample_offset; /* the row this rank's samples start at */
} save_plan;

/* Everything inside the file, every collective call on every rank. */
static void write_contents(writer *w, const save_plan *plan)
{
    const insitra_ckpt_state *st = w->st;
    const int64_t nt = st->layout->num_tensors, at_tables = 3 * nt;
    const bool samples = st->cfg->checkpoint.include_samples;
    const int n_tables = samples ? INSITRA_CKPT_TABLES : INSITRA_CKPT_SAMPLE_COUNT;
    crc_job job = {.st = st, .crc = plan->crc, .bytes = plan->bytes, .done = false};
    /* Thread 0, the caller's thread (the one MPI_THREAD_FUNNELED lets call
     * MPI), makes every HDF5 and MPI call; a second thread, when OpenMP
     * grants one, checksums the slots meanwhile. */
#pragma omp parallel num_threads(2)
    {
        if (omp_get_thread_num() == 1) {
            crc_slots(&job);
        } else {
            const char *groups[] = {"model", "optim", "optim/m", "optim/v", "ranks"};
            for (size_t k = 0; k < sizeof groups / sizeof groups[0]; k++) create_group(w, groups[k]);
            if (samples) create_group(w, INSITRA_CKPT_SAMPLES_GROUP);
            for (int g = 0; g < INSITRA_CKPT_GROUPS; g++) write_tensors(w, g);
            write_tables(w, n_tables, plan->crc + at_tables, plan->bytes + at_tables);
            if (samples)
                write_samples(w, plan->total_samples, plan->sample_offset,
                              plan->crc + at_tables + INSITRA_CKPT_TABLES,
                              plan->bytes + at_tables + INSITRA_CKPT_TABLES);
            write_arrays(w);
        }
    }
    if (!job.done) crc_slots(&job);

    /* One all-gather combines every CRC, whatever failed locally. */
    insitra_status s = insitra_ckpt_combine_crcs(st->world, plan->crc, plan->bytes, plan->n);
    if (s != INSITRA_STATUS_OK) note(w, s);
    char path[128];
    for (int g = 0; g < INSITRA_CKPT_GROUPS; g++)
        for (int64_t i = 0; i < nt; i++) {
            snprintf(path, sizeof path, "%s/%s", insitra_ckpt_group[g], st->layout->tensors[i].name);
            write_crc_attr(w, path, plan->crc[g * nt + i]);
        }
    for (int k = 0; k < n_tables; k++) write_crc_attr(w, insitra_ckpt_tables[k].path, plan->crc[at_tables + k]);
    if (samples) {
        write_crc_attr(w, INSITRA_CKPT_SAMPLES_X, plan->crc[at_tables + INSITRA_CKPT_TABLES]);
        write_crc_attr(w, INSITRA_CKPT_SAMPLES_Y, plan->crc[at_tables + INSITRA_CKPT_TABLES + 1]);
    }
    if (st->norm) write_normalize(w);
    for (int64_t k = 0; k < st->n_arrays; k++) {
        snprintf(path, sizeof path, INSITRA_CKPT_USER_GROUP "/%s", st->arrays[k].name);
        write_crc_attr(w, path, plan->array_crc[k]);
    }
    fault_point(st, "before_complete");
    const insitra_ckpt_meta meta = {
        .format = INSITRA_CKPT_FORMAT, .step = *st->step, .world_size = st->world->size,
        .dp = st->dp, .tp = st->tp, .zero_stage = st->zero_stage,
        .version = (char *)insitra_version(), .config = plan->yaml,
    };
    s = insitra_ckpt_meta_write(w->file, &meta);
    if (s != INSITRA_STATUS_OK) note(w, s);
}

/* Bytes a save reserves before writing: an upper bound of the file's size
 * with total_samples stored samples (0 without checkpoint.include_samples). */
static int64_t reserve_bytes(const insitra_ckpt_state *st, int64_t total_samples)
{
    /* Data, plus what HDF5 adds: each dataset of 1 MiB or more starts on a
     * 1 MiB boundary (the alignment set in open_file), and an object header,
     * a crc32c attribute and a link per dataset take well under 4 KiB. The
     * root attributes hold the configuration (about 2 KiB); 1 MiB covers the
     * superblock, groups and heaps with room to spare. The save checks the
     * file's real end against this before closing. */
    const int64_t MiB = 1 << 20;
    int64_t bytes = MiB, datasets = 0;
    for (int64_t i = 0; i < st->layout->num_tensors; i++) {
        const insitra_tensor_desc *d = &st->layout->tensors[i];
        const int64_t b = d->global_shape[0] * d->global_shape[1] * (int64_t)sizeof(float); /* whole, at any tp */
        bytes += 3 * (b + (b >= MiB ? MiB : 0));
        datasets += 3;
    }
    /* the rows are whole samples: every token slice of the store's width */
    const int64_t row_floats = insitra_config_token_slices(st->cfg) * (int64_t)sizeof(float);
    const int64_t sample_bytes[2] = {total_samples * st->store->x_numel * row_floats,
                                     total_samples * st->store->y_numel * row_floats};
    for (int p = 0; p < 2; p++) bytes += sample_bytes[p] + (sample_bytes[p] >= MiB ? MiB : 0);
    bytes += (int64_t)st->world->size * 7 * (int64_t)sizeof(uint64_t) + MiB; /* the tables, each below or aligned */
    if (st->norm) { /* the statistics: four float64 arrays, each below or aligned */
        const int64_t widths[2] = {st->norm->x.width, st->norm->y.width};
        for (int k = 0; k < 2; k++) {
            const int64_t b = widths[k] * (int64_t)sizeof(double);
            bytes += 2 * (b + (b >= MiB ? MiB : 0));
        }
        datasets += INSITRA_CKPT_NORM_DATASETS;
    }
    for (int64_t k = 0; k < st->n_arrays; k++) {
        const int64_t b = insitra_ckpt_array_numel(&st->arrays[k]) * (int64_t)insitra_ckpt_type_size(st->arrays[k].type);
        bytes += b + (b >= MiB ? MiB : 0);
    }
    return bytes + (datasets + INSITRA_CKPT_TABLES + 2 + st->n_arrays) * 4096;
}

static insitra_status plan_save(const insitra_ckpt_state *st, save_plan *plan)
{
    const int64_t nt = st->layout->num_tensors;
    plan->n = 3 * nt + INSITRA_CKPT_TABLES + 2;
    plan->crc = calloc((size_t)plan->n, sizeof *plan->crc);
    plan->bytes = calloc((size_t)plan->n, sizeof *plan->bytes);
    plan->yaml = insitra_ckpt_stored_config(st->cfg);
    plan->array_crc = calloc((size_t)(st->n_arrays > 0 ? st->n_arrays : 1), sizeof *plan->array_crc);
    int64_t *counts = malloc((size_t)st->world->size * 2 * sizeof *counts); /* (size, 2): held, pushed */
    insitra_status s = INSITRA_STATUS_OK;
    if (!plan->crc || !plan->bytes || !plan->yaml || !plan->array_crc || !counts)
        s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory for %" PRId64 " CRCs", plan->n);
    /* Every rank takes part, whatever failed: the agreement comes after. */
    const int64_t mine[2] = {st->store->count, st->store->pushed};
    int64_t dummy[2] = {0, 0};
    const int rc = MPI_Allgather(mine, 2, MPI_INT64_T, counts ? counts : dummy, counts ? 2 : 0, MPI_INT64_T,
                                 st->world->comm);
    if (rc != MPI_SUCCESS && s == INSITRA_STATUS_OK)
        s = insitra_error_set(INSITRA_STATUS_MPI_ERROR, "checkpoint: MPI_Allgather of sample counts failed");
    /* A group's ranks (insitra_config_token_slices consecutive ranks) hold
     * slices of the same samples: one row of the file each, so the same
     * count and pushes on each (the same on every rank: it is agreed). */
    const int64_t slices = insitra_config_token_slices(st->cfg), size = st->world->size;
    plan->total_samples = plan->sample_offset = 0;
    for (int64_t r = 0; counts && rc == MPI_SUCCESS && s == INSITRA_STATUS_OK && r < size; r++) {
        const int64_t lead = r - r % slices;
        if (counts[2 * r] != counts[2 * lead] || counts[2 * r + 1] != counts[2 * lead + 1]) {
            s = insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                  "checkpoint_save: rank %" PRId64 " holds %" PRId64 " samples of %" PRId64
                                  " pushed but rank %" PRId64 " %" PRId64 " of %" PRId64
                                  "; the ranks %" PRId64 "..%" PRId64
                                  " share each sample's tokens (parallel.cp = %" PRId64
                                  ") and must be pushed their slices of the same samples",
                                  r, counts[2 * r], counts[2 * r + 1], lead, counts[2 * lead],
                                  counts[2 * lead + 1], lead, lead + slices - 1, slices);
            break;
        }
        if (r == st->world->rank - st->world->rank % slices) plan->sample_offset = plan->total_samples;
        if (r % slices == 0) plan->total_samples += counts[2 * r];
    }
    free(counts);
    if (!st->cfg->checkpoint.include_samples) plan->total_samples = 0;
    return s;
}

static void plan_free(save_plan *plan)
{
    free(plan->crc);
    free(plan->bytes);
    free(plan->yaml);
    free(plan->array_crc);
}

/* All ranks open the file rank 0 created and reserved. */
static hid_t open_file(const insitra_ckpt_state *st, const char *tmp)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, st->world->comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    H5Pset_coll_metadata_write(fapl, 1);
    /* Large datasets start on 1 MiB boundaries: whole file-system stripes. */
    H5Pset_alignment(fapl, 1 << 20, 1 << 20);
    hid_t file = H5Fopen(tmp, H5F_ACC_RDWR, fapl);
    H5Pclose(fapl);
    return file;
}

/* Writes the file's contents and closes it. The write errors of every rank,
 * and a reservation short of the file's real end, are agreed on before the
 * collective close: the returned status is the same on every rank. */
static insitra_status write_file(const insitra_ckpt_state *st, const save_plan *plan, const char *tmp,
                                 int64_t reserved)
{
    writer w = {.st = st, .file = open_file(st, tmp), .dxpl = -1, .error = INSITRA_STATUS_OK};
    insitra_status s = w.file >= 0 ? INSITRA_STATUS_OK : insitra_ckpt_h5_error("cannot open '%s'", tmp);
    INSITRA_CHECK(insitra_ckpt_agree(st->world, s));
    fault_point(st, "created");
    /* Every rank's slot of a tensor is one contiguous, disjoint byte range:
     * independent writes need no per-dataset synchronisation, which
     * otherwise costs a collective round per tensor. Metadata stays
     * collective (open_file). */
    w.dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(w.dxpl, H5FD_MPIO_INDEPENDENT);
    write_contents(&w, plan);
    H5Pclose(w.dxpl);
    /* What HDF5 writes while closing lies within the space it has allocated:
     * the datasets, and metadata of well under the reservation's 1 MiB of
     * slack beyond them (the estimate in reserve_bytes). Where
     * the estimate fell short, the reservation grows before the close. */
    const int64_t needed = w.data_end + (1 << 20);
    if (st->world->rank == 0 && needed > reserved) note(&w, insitra_ckpt_dir_extend(tmp, needed));
    s = insitra_ckpt_agree(st->world, w.error);
    insitra_status c = H5Fclose(w.file) < 0 ? insitra_ckpt_h5_error("cannot close '%s'", tmp) : INSITRA_STATUS_OK;
    fault_point(st, "closed");
    return s != INSITRA_STATUS_OK ? s : insitra_ckpt_agree(st->world, c);
}

insitra_status insitra_ckpt_save(const insitra_ckpt_state *st, const char *dir, char *path_out,
                                 size_t path_size)
{
    char tmp[PATH_LEN], name[64];
    if (strlen(dir) > 4000)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint_save: directory path of %zu characters is too long", strlen(dir));
    insitra_ckpt_file_name(name, sizeof name, *st->step);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
    const bool root = st->world->rank == 0;
    insitra_ckpt_quiet quiet; /* failures are reported as statuses, not printed by HDF5 */
    insitra_ckpt_quiet_begin(&quiet);
    save_plan plan = {0};
    insitra_status s = insitra_ckpt_agree(st->world, plan_save(st, &plan));
    /* The caller's arrays: the same on every rank and tiled, before anything is written. */
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_arrays_check(st, plan.array_crc);
    if (s == INSITRA_STATUS_OK && root) s = insitra_ckpt_dir_prepare(dir);
    const int64_t reserved = reserve_bytes(st, plan.total_samples);
    if (s == INSITRA_STATUS_OK && root) s = insitra_ckpt_dir_reserve(tmp, reserved);
    s = insitra_ckpt_agree(st->world, s);
    if (s == INSITRA_STATUS_OK) {
        s = write_file(st, &plan, tmp, reserved);
        if (s == INSITRA_STATUS_OK) {
            insitra_status c = INSITRA_STATUS_OK;
            if (root) {
                fault_point(st, "commit");
                c = insitra_ckpt_dir_commit(dir, tmp, name, *st->step, st->cfg->checkpoint.keep_last);
            }
            s = insitra_ckpt_agree(st->world, c);
        }
        if (s != INSITRA_STATUS_OK && root) unlink(tmp); /* a failed save never looks like a checkpoint */
    }
    insitra_ckpt_quiet_end(&quiet);
    plan_free(&plan);
    if (s == INSITRA_STATUS_OK && path_out && path_size > 0) snprintf(path_out, path_size, "%s/%s", dir, name);
    return s;
}
