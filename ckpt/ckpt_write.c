/*
 * Writing a checkpoint: every rank writes its slot of every tensor into one
 * file by collective parallel HDF5, then the ranks agree and rank 0 commits
 * (rename, fsync, `latest`, retention). docs/checkpoint.md is the contract.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "crc32c.h"
#include "error.h"

/* Fault injection for the crash tests: INSITRA_CKPT_FAULT=<point>:<rank>
 * kills that rank with SIGKILL when the save reaches <point>. */
static void fault_point(const insitra_trainer *t, const char *point)
{
    const char *spec = getenv("INSITRA_CKPT_FAULT");
    if (!spec) return;
    const char *colon = strchr(spec, ':');
    if (!colon || (size_t)(colon - spec) != strlen(point) || strncmp(spec, point, strlen(point)) != 0)
        return;
    if (atoi(colon + 1) == t->comm.rank) raise(SIGKILL);
}

static insitra_status posix_error(const char *what, const char *path)
{
    return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: %s '%s': %s", what, path,
                             strerror(errno));
}

static insitra_status fsync_path(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0) return posix_error("cannot open", path);
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? INSITRA_STATUS_OK : posix_error("cannot fsync", path);
}

/* "step-00000042.h5" -> 42; -1 for other names. suffix is ".h5" or ".h5.tmp". */
int64_t insitra_ckpt_step_of(const char *name, const char *suffix)
{
    long long step;
    int used = 0;
    if (sscanf(name, "step-%8lld%n", &step, &used) != 1 || used != 13) return -1;
    return strcmp(name + used, suffix) == 0 ? step : -1;
}

/* mkdir -p */
static insitra_status make_dirs(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *c = path + 1;; c++) {
        const char saved = *c;
        if (saved != '/' && saved != '\0') continue;
        *c = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) return posix_error("cannot create directory", path);
        *c = saved;
        if (saved == '\0') return INSITRA_STATUS_OK;
    }
}

/* Rank 0, before writing: the directory exists, no stale .tmp remains. */
static insitra_status prepare_dir(const char *dir)
{
    INSITRA_CHECK(make_dirs(dir));
    DIR *d = opendir(dir);
    if (!d) return posix_error("cannot open directory", dir);
    char path[4096];
    for (struct dirent *e; (e = readdir(d));) {
        if (insitra_ckpt_step_of(e->d_name, ".h5.tmp") < 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return INSITRA_STATUS_OK;
}

static int compare_desc(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

/* Rank 0, after the commit: the checkpoint just written and the keep - 1
 * newest before it stay. Files of later steps (a run that was abandoned, for
 * one, after resuming from an older checkpoint) are not this save's to delete. */
static void apply_retention(const char *dir, int64_t current, int64_t keep)
{
    DIR *d = opendir(dir);
    if (!d) return;
    int64_t steps[4096];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 4096;) {
        const int64_t s = insitra_ckpt_step_of(e->d_name, ".h5");
        if (s >= 0 && s < current) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof steps[0], compare_desc);
    char path[4096];
    for (int i = (int)keep - 1; i < n; i++) {
        snprintf(path, sizeof path, "%s/step-%08" PRId64 ".h5", dir, steps[i]);
        unlink(path);
    }
}

/* Rank 0: rename into place, then point `latest` at it, fsyncing each step. */
static insitra_status commit(const char *dir, const char *tmp, const char *final_path,
                             const char *final_name, int64_t step, int64_t keep)
{
    INSITRA_CHECK(fsync_path(tmp, O_RDONLY));
    if (rename(tmp, final_path) != 0) return posix_error("cannot rename", tmp);
    INSITRA_CHECK(fsync_path(dir, O_RDONLY | O_DIRECTORY));
    char latest_tmp[4096], latest[4096];
    snprintf(latest_tmp, sizeof latest_tmp, "%s/latest.tmp", dir);
    snprintf(latest, sizeof latest, "%s/latest", dir);
    FILE *f = fopen(latest_tmp, "w");
    if (!f) return posix_error("cannot create", latest_tmp);
    const int ok = fprintf(f, "%s\n", final_name) > 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0 || !ok) return posix_error("cannot write", latest_tmp);
    if (rename(latest_tmp, latest) != 0) return posix_error("cannot rename", latest_tmp);
    INSITRA_CHECK(fsync_path(dir, O_RDONLY | O_DIRECTORY));
    apply_retention(dir, step, keep);
    return INSITRA_STATUS_OK;
}

/* ---- the file ---- */

static hid_t create_dataset(hid_t loc, const char *name, hid_t type, int ndim, const hsize_t *dims)
{
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* Every element is written: skip the fill pass. */
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    hid_t dset = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    return dset;
}

/* Writes every tensor of one group (model, optim/m or optim/v): this rank's
 * slot of each, and returns the slots' CRCs and sizes for combining. */
static insitra_status write_tensors(insitra_trainer *t, hid_t group, hid_t dxpl, float *full,
                                    float *shard, uint32_t *crc, uint64_t *bytes)
{
    const insitra_param_layout *l = &t->engine.model.layout;
    for (int64_t i = 0; i < l->num_tensors; i++) {
        const insitra_tensor_desc *d = &l->tensors[i];
        const hsize_t dims[2] = {(hsize_t)d->shape[0], (hsize_t)d->shape[1]};
        hid_t dset = create_dataset(group, d->name, H5T_IEEE_F32LE, d->ndim, dims);
        if (dset < 0)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot create dataset '%s'",
                                     d->name);
        const insitra_ckpt_piece p = insitra_ckpt_slot(t, i, full, shard);
        hid_t fspace, mspace;
        insitra_status s = insitra_ckpt_select(dset, p.first, p.count, &fspace, &mspace);
        if (s == INSITRA_STATUS_OK &&
            H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, p.data) < 0)
            s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot write dataset '%s'",
                                  d->name);
        H5Sclose(fspace);
        H5Sclose(mspace);
        H5Dclose(dset);
        INSITRA_CHECK(s);
        bytes[i] = (uint64_t)p.count * sizeof(float);
        crc[i] = insitra_crc32c(0, p.data, bytes[i]);
        if (i == l->num_tensors / 2) fault_point(t, "tensors");
    }
    return INSITRA_STATUS_OK;
}

static insitra_status write_crc_attrs(hid_t group, const insitra_param_layout *l, const uint32_t *crc)
{
    for (int64_t i = 0; i < l->num_tensors; i++) {
        hid_t dset = H5Dopen2(group, l->tensors[i].name, H5P_DEFAULT);
        insitra_status s = dset < 0 ? insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: lost '%s'",
                                                        l->tensors[i].name)
                                    : insitra_ckpt_write_attr_u32(dset, "crc32c", crc[i]);
        if (dset >= 0) H5Dclose(dset);
        INSITRA_CHECK(s);
    }
    return INSITRA_STATUS_OK;
}

/* One row of a (world_size, width) table per rank. */
static insitra_status write_rank_row(insitra_trainer *t, hid_t group, hid_t dxpl, const char *name,
                                     hid_t type, int64_t width, const void *row)
{
    const hsize_t dims[2] = {(hsize_t)t->comm.size, (hsize_t)width};
    hid_t dset = create_dataset(group, name, type, width > 1 ? 2 : 1, dims);
    hid_t fspace = H5Dget_space(dset);
    const hsize_t start[2] = {(hsize_t)t->comm.rank, 0}, count[2] = {1, (hsize_t)width};
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL);
    const hsize_t n = (hsize_t)width;
    hid_t mspace = H5Screate_simple(1, &n, NULL);
    herr_t err = dset < 0 ? -1 : H5Dwrite(dset, type, mspace, fspace, dxpl, row);
    H5Sclose(mspace);
    H5Sclose(fspace);
    if (dset >= 0) H5Dclose(dset);
    return err < 0 ? insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot write '/ranks/%s'", name)
                   : INSITRA_STATUS_OK;
}

/* The samples: rank r's held samples, oldest first, at rows [offset_r, offset_r + count_r). */
static insitra_status write_samples(insitra_trainer *t, hid_t file, hid_t dxpl)
{
    const insitra_sample_store *st = &t->store;
    int64_t *counts = malloc((size_t)t->comm.size * sizeof(int64_t));
    if (!counts) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    MPI_Allgather(&st->count, 1, MPI_INT64_T, counts, 1, MPI_INT64_T, t->comm.comm);
    int64_t total = 0, offset = 0;
    for (int r = 0; r < t->comm.size; r++) {
        if (r == t->comm.rank) offset = total;
        total += counts[r];
    }
    free(counts);
    hid_t group = H5Gcreate2(file, "samples", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    INSITRA_CHECK(write_rank_row(t, group, dxpl, "count", H5T_NATIVE_INT64, 1, &st->count));
    /* The ring holds the oldest samples from slot `oldest` to the end, then from 0. */
    const int64_t oldest = (st->next - st->count + st->capacity) % st->capacity;
    const int64_t first_run = st->count < st->capacity - oldest ? st->count : st->capacity - oldest;
    const struct { const char *name; const float *data; int64_t width; } parts[2] = {
        {"x", st->x, st->x_numel}, {"y", st->y, st->y_numel}};
    uint32_t crc[2];
    uint64_t bytes[2];
    insitra_status s = INSITRA_STATUS_OK;
    for (int p = 0; p < 2 && s == INSITRA_STATUS_OK; p++) {
        const hsize_t dims[2] = {(hsize_t)total, (hsize_t)parts[p].width};
        hid_t dset = create_dataset(group, parts[p].name, H5T_IEEE_F32LE, 2, dims);
        crc[p] = 0;
        /* Two collective writes on every rank: the ring's two runs. */
        const int64_t run_start[2] = {oldest, 0}, run_len[2] = {first_run, st->count - first_run};
        for (int k = 0; k < 2; k++) {
            const float *src = parts[p].data + run_start[k] * parts[p].width;
            hid_t fspace, mspace;
            s = insitra_ckpt_select(dset, (offset + (k ? first_run : 0)) * parts[p].width,
                                    run_len[k] * parts[p].width, &fspace, &mspace);
            if (s == INSITRA_STATUS_OK &&
                H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, src) < 0)
                s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot write samples");
            H5Sclose(fspace);
            H5Sclose(mspace);
            crc[p] = insitra_crc32c(crc[p], src, (size_t)(run_len[k] * parts[p].width) * sizeof(float));
        }
        bytes[p] = (uint64_t)(st->count * parts[p].width) * sizeof(float);
        H5Dclose(dset);
    }
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_combine_crcs(&t->comm, crc, bytes, 2);
    for (int p = 0; p < 2 && s == INSITRA_STATUS_OK; p++) {
        hid_t dset = H5Dopen2(group, parts[p].name, H5P_DEFAULT);
        s = insitra_ckpt_write_attr_u32(dset, "crc32c", crc[p]);
        H5Dclose(dset);
    }
    H5Gclose(group);
    return s;
}

/* Everything inside the file; the caller opens and closes it. */
static insitra_status write_contents(insitra_trainer *t, hid_t file, hid_t dxpl)
{
    insitra_zero *z = &t->engine.zero;
    const insitra_param_layout *l = &t->engine.model.layout;
    const int64_t nt = l->num_tensors;
    uint32_t *crc = malloc((size_t)(3 * nt) * sizeof(uint32_t));
    uint64_t *bytes = malloc((size_t)(3 * nt) * sizeof(uint64_t));
    if (!crc || !bytes) {
        free(crc);
        free(bytes);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    }
    hid_t model = H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t optim = H5Gcreate2(file, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t gm = H5Gcreate2(optim, "m", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t gv = H5Gcreate2(optim, "v", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const bool full_moments = z->stage == 0;
    insitra_status s = write_tensors(t, model, dxpl, z->host_params_full ? z->host_params : NULL,
                                     z->host_params, crc, bytes);
    if (s == INSITRA_STATUS_OK)
        s = write_tensors(t, gm, dxpl, full_moments ? z->host_m : NULL, z->host_m, crc + nt, bytes + nt);
    if (s == INSITRA_STATUS_OK)
        s = write_tensors(t, gv, dxpl, full_moments ? z->host_v : NULL, z->host_v, crc + 2 * nt,
                          bytes + 2 * nt);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_combine_crcs(&t->comm, crc, bytes, 3 * nt);
    if (s == INSITRA_STATUS_OK) s = write_crc_attrs(model, l, crc);
    if (s == INSITRA_STATUS_OK) s = write_crc_attrs(gm, l, crc + nt);
    if (s == INSITRA_STATUS_OK) s = write_crc_attrs(gv, l, crc + 2 * nt);
    free(crc);
    free(bytes);
    H5Gclose(gv);
    H5Gclose(gm);
    H5Gclose(optim);
    H5Gclose(model);
    INSITRA_CHECK(s);

    hid_t ranks = H5Gcreate2(file, "ranks", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    s = write_rank_row(t, ranks, dxpl, "sampler_state", H5T_NATIVE_UINT64, 4, t->sampler.s);
    if (s == INSITRA_STATUS_OK)
        s = write_rank_row(t, ranks, dxpl, "sample_cursor", H5T_NATIVE_INT64, 1, &t->sample_cursor);
    if (s == INSITRA_STATUS_OK)
        s = write_rank_row(t, ranks, dxpl, "samples_pushed", H5T_NATIVE_INT64, 1, &t->store.pushed);
    H5Gclose(ranks);
    INSITRA_CHECK(s);
    if (t->cfg.checkpoint.include_samples) INSITRA_CHECK(write_samples(t, file, dxpl));

    /* Root attributes, `complete` last. */
    const size_t yaml_len = insitra_config_dump_yaml(&t->cfg, NULL, 0) + 1;
    char *yaml = malloc(yaml_len);
    if (!yaml) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    insitra_config_dump_yaml(&t->cfg, yaml, yaml_len);
    s = insitra_ckpt_write_attr_i64(file, "insitra_format", INSITRA_CKPT_FORMAT);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_str(file, "insitra_version", insitra_version());
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_i64(file, "step", t->step);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_i64(file, "world_size", t->comm.size);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_i64(file, "dp", t->dp.size);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_i64(file, "tp", t->tp.size);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_i64(file, "zero_stage", z->stage);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_str(file, "config", yaml);
    free(yaml);
    fault_point(t, "before_complete");
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_write_attr_i64(file, "complete", 1);
    return s;
}

insitra_status insitra_ckpt_save(insitra_trainer *t, const char *dir, char *path_out,
                                 size_t path_size)
{
    char tmp[4096 + 8], final_path[4096], final_name[64];
    if (strlen(dir) > 4000)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "checkpoint_save: directory path of %zu characters is too long", strlen(dir));
    snprintf(final_name, sizeof final_name, "step-%08" PRId64 ".h5", t->step);
    snprintf(final_path, sizeof final_path, "%s/%s", dir, final_name);
    snprintf(tmp, sizeof tmp, "%s.tmp", final_path);
    INSITRA_CHECK(insitra_comm_agree(&t->comm, t->comm.rank == 0 ? prepare_dir(dir) : INSITRA_STATUS_OK));

    insitra_ckpt_quiet quiet;
    insitra_ckpt_quiet_begin(&quiet);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, t->comm.comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    H5Pset_coll_metadata_write(fapl, 1);
    /* Large datasets start on 1 MiB boundaries: whole file-system stripes. */
    H5Pset_alignment(fapl, 1 << 20, 1 << 20);
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    insitra_status s = INSITRA_STATUS_OK;
    if (file < 0) {
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot create '%s': %s", tmp,
                              access(dir, W_OK) ? strerror(errno) : "HDF5/MPI-IO refused it");
    } else {
        fault_point(t, "created");
        /* Every rank's slot of a tensor is one contiguous, disjoint byte range:
         * independent writes need no per-dataset synchronisation, which
         * otherwise costs a collective round per tensor. Metadata stays
         * collective (the file access properties above). */
        hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
        H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT);
        s = write_contents(t, file, dxpl);
        H5Pclose(dxpl);
        if (H5Fclose(file) < 0 && s == INSITRA_STATUS_OK)
            s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: cannot close '%s'", tmp);
    }
    insitra_ckpt_quiet_end(&quiet);
    fault_point(t, "closed");

    s = insitra_comm_agree(&t->comm, s);
    if (s == INSITRA_STATUS_OK) {
        insitra_status c = INSITRA_STATUS_OK;
        if (t->comm.rank == 0) {
            fault_point(t, "commit");
            c = commit(dir, tmp, final_path, final_name, t->step, t->cfg.checkpoint.keep_last);
        }
        s = insitra_comm_agree(&t->comm, c);
    } else if (t->comm.rank == 0) {
        unlink(tmp); /* a failed save never looks like a checkpoint */
    }
    if (s == INSITRA_STATUS_OK && path_out && path_size > 0)
        snprintf(path_out, path_size, "%s", final_path);
    return s;
}
